// The operator's page's server (agent/ui) with a made-up status for bench/ui/page.mjs: SCANS
// delivered scans from today (half normal, half high risk) and one scan acquiring whose stored
// parts go up by one every second, from the start time it prints. Runs for SECONDS.
// Usage: ui_bench_server SCANS SECONDS   -> prints "port P start_unix_ms T" and serves on 127.0.0.1:P
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "base/clock.hpp"
#include "agent/ui/server.hpp"

namespace {

std::int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: ui_bench_server SCANS SECONDS\n");
    return 2;
  }
  const int scans = std::atoi(argv[1]);
  const int seconds = std::atoi(argv[2]);
  const std::int64_t start_ms = UnixMs();
  const std::string created = ctagent::UtcNowIso8601();
  nlohmann::json base = {{"source", "daemon"}, {"daemon", {{"pid", 1}, {"uploads_paused", false}}},
                         {"backlog", {{"rate_bytes_per_second", 10e6}}}, {"scans", nlohmann::json::array()}};
  for (int i = 0; i < scans; ++i) {
    base["scans"].push_back({{"scan_uid", "2.25.1000" + std::to_string(i)},
                             {"state", "delivered"},
                             {"created_utc", created},
                             {"chunks_total", 37},
                             {"chunks_uploaded", 37},
                             {"findings",
                              {{"category", i % 2 == 0 ? "NORMAL" : "HIGH-RISK"},
                               {"lesion_count", i % 2 == 0 ? 0 : 2}}}});
  }
  boost::asio::io_context io;
  auto server = ctagent::ui::Server::Open(io, {.address = "127.0.0.1", .port = 0}, [&] {
    nlohmann::json status = base;
    const auto parts = static_cast<std::uint32_t>((UnixMs() - start_ms) / 1000);
    status["scans"].push_back({{"scan_uid", "2.25.2000"},
                               {"state", "acquiring"},
                               {"progress", {{"phase", "acquiring"}, {"chunks_stored", parts}, {"chunks_uploaded", 0}}}});
    return status;
  });
  if (!server) {
    std::fprintf(stderr, "%s\n", server.error().message().c_str());
    return 1;
  }
  std::printf("port %u start_unix_ms %lld\n", static_cast<unsigned>((*server)->port()),
              static_cast<long long>(start_ms));
  std::fflush(stdout);
  boost::asio::steady_timer stop(io, std::chrono::seconds(seconds));
  stop.async_wait([&](const boost::system::error_code&) { (*server)->Close(); });
  io.run();
  return 0;
}
