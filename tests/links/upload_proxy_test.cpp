// The real uploader path through the fault proxy: `ctagent scan` (sim driver) uploads to the
// real tus server over HTTPS via tests/support/fault_proxy, which stalls or resets the
// connection mid-PATCH. Asserts the scan arrives bit-exact, the stall is detected within the
// configured stall timeout (plus 1.5 s, see below), and the bytes the
// server had to receive again stay within one in-flight request per interrupted upload (so the
// upload resumed from the server's offset, not from zero). Prints the figures.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "tests/links/proxy_support.hpp"
#include "tests/links/scan_support.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

constexpr std::uint32_t kStallTimeoutS = 2;
// Small requests (the smallest the config allows), so a fault lands in a PATCH most of the time
// and a restart from zero (about 330 KB per chunk) would exceed the bound below.
constexpr std::uint64_t kPatchBytes = 65536;
// The transport checks the time since a byte last moved about once a second; the rest of the
// margin covers the kernel buffers that still absorb bytes after the proxy went silent, and
// scheduling on a loaded machine.
constexpr std::int64_t kStallDetectionSlackMs = 1500;
// TLS handshakes, HEAD and POST requests of the retried attempts: generous, still far below a
// PATCH's worth.
constexpr std::uint64_t kOverheadPerRetry = 16 * 1024;

struct ScanRun {
  int rc = -1;
  std::string log;
  std::uint64_t payload = 0;    // bytes in all uploads on the server (complete or not)
  std::uint64_t up_bytes = 0;   // bytes the proxy forwarded to the server
  std::int64_t fault_unix_ms = 0;
};

// One scan through a fresh tus server and proxy; `control` arms the proxy's fault.
ScanRun RunScan(const fs::path& dir, const std::string& control) {
  fs::create_directories(dir);
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  auto tus = test::StartTusServer(pki, dir / "store", dir / "tus.log");
  test::FaultProxy proxy(dir, "proxy", tus.port);
  proxy.Control(control);
  const std::string url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/";
  const fs::path cfg_path = dir / "agent.json";
  std::ofstream(cfg_path) << test::ScanConfig(dir / "spool", url, pki / "ca.pem", kStallTimeoutS, kPatchBytes).dump(2);

  test::ChildProcess agent({(fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(), "scan", "--config",
                            cfg_path.string(), "--quiet", "--no-results"},
                           dir / "agent.log");
  ScanRun run;
  run.rc = agent.Wait(std::chrono::seconds(180));
  run.log = test::ReadText(dir / "agent.log");
  INFO("agent log:\n" << run.log << "\nproxy log:\n" << test::ReadText(proxy.log()));
  REQUIRE(run.rc == 0);
  run.payload = test::CheckScanArrivedBitExact(dir / "store", cfg_path);
  const auto stats = proxy.FreshStats();
  run.up_bytes = stats.at("up_bytes");
  run.fault_unix_ms = static_cast<std::int64_t>(stats.at("last_fault_unix_ms"));
  return run;
}

std::size_t Count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("upload via proxy: a stalled PATCH is detected within the stall timeout and the scan resumes bit-exact",
          "[links][proxy]") {
  test::TempDir dir("links-stall");
  const ScanRun clean = RunScan(dir.path() / "clean", "");
  // Mid-PATCH: the connections open after 1.5 MB go silent but stay open (a dead route).
  const ScanRun stalled = RunScan(dir.path() / "stalled", "half_open_after_bytes=1500000\n");
  REQUIRE(stalled.fault_unix_ms > 0);

  const std::string line = test::FirstLineWith(stalled.log, "stalled");
  INFO("agent log:\n" << stalled.log);
  REQUIRE(!line.empty());
  const std::int64_t detected_after_ms = test::LogLineUnixMs(line) - stalled.fault_unix_ms;
  const std::int64_t extra = static_cast<std::int64_t>(stalled.up_bytes) - static_cast<std::int64_t>(clean.up_bytes);
  const std::size_t uploads_hit = Count(stalled.log, "stalled");
  std::printf("stall: payload %llu bytes; through the proxy clean %llu, with stall %llu; re-sent %lld bytes over %zu "
              "interrupted upload(s); stall detected %lld ms after it began (stall timeout %u s)\n",
              static_cast<unsigned long long>(stalled.payload), static_cast<unsigned long long>(clean.up_bytes),
              static_cast<unsigned long long>(stalled.up_bytes), static_cast<long long>(extra), uploads_hit,
              static_cast<long long>(detected_after_ms), kStallTimeoutS);
  // Never before the stall timeout (a slow but moving transfer is not a stall); within the
  // timeout plus the margin.
  CHECK(detected_after_ms >= static_cast<std::int64_t>(kStallTimeoutS) * 1000 - 1000);
  CHECK(detected_after_ms <= static_cast<std::int64_t>(kStallTimeoutS) * 1000 + kStallDetectionSlackMs);
  // Nothing the server kept is sent again beyond the interrupted requests.
  CHECK(extra <= static_cast<std::int64_t>(uploads_hit * (kPatchBytes + kOverheadPerRetry)));
}

TEST_CASE("upload via proxy: a reset mid-PATCH resumes from the server's offset and the scan arrives bit-exact",
          "[links][proxy]") {
  test::TempDir dir("links-reset");
  const ScanRun clean = RunScan(dir.path() / "clean", "");
  const ScanRun reset = RunScan(dir.path() / "reset", "reset_after_bytes=1500000\n");
  REQUIRE(reset.fault_unix_ms > 0);
  const std::int64_t extra = static_cast<std::int64_t>(reset.up_bytes) - static_cast<std::int64_t>(clean.up_bytes);
  // Every connection open at the reset (one per parallel transfer) lost its request.
  const std::uint64_t interrupted = 2;
  std::printf("reset: payload %llu bytes; through the proxy clean %llu, with reset %llu; re-sent %lld bytes for %llu "
              "interrupted upload(s)\n",
              static_cast<unsigned long long>(reset.payload), static_cast<unsigned long long>(clean.up_bytes),
              static_cast<unsigned long long>(reset.up_bytes), static_cast<long long>(extra),
              static_cast<unsigned long long>(interrupted));
  // A reset of an idle kept-alive connection is retried inside libcurl without a log line; a
  // reset mid-request shows as a retry.
  std::printf("reset: %zu request(s) retried by the uploader\n", Count(reset.log, "; retry "));
  CHECK(extra <= static_cast<std::int64_t>(interrupted * (kPatchBytes + kOverheadPerRetry)));
}

TEST_CASE("check via proxy: the link line gives the path's round trip apart from the connection set-up",
          "[links][proxy]") {
  test::TempDir dir("links-check-rtt");
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  auto tus = test::StartTusServer(pki, dir.path() / "store", dir.path() / "tus.log");
  // 80 ms round trip added by the proxy, 40 ms each way.
  test::FaultProxy proxy(dir.path(), "proxy", tus.port, "latency_up_ms=40\nlatency_down_ms=40\n");
  const std::string url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/";
  const fs::path cfg_path = dir.path() / "agent.json";
  std::ofstream(cfg_path) << test::ScanConfig(dir.path() / "spool", url, pki / "ca.pem", kStallTimeoutS, kPatchBytes)
                                 .dump(2);
  test::ChildProcess check({(fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(), "check", "--config",
                            cfg_path.string(), "--only", "link"},
                           dir.path() / "check.log");
  REQUIRE(check.Wait(std::chrono::seconds(60)) == 0);
  const std::string line = test::FirstLineWith(test::ReadText(dir.path() / "check.log"), "OK    link");
  INFO(line);
  REQUIRE(!line.empty());
  long long first_ms = -1, round_trip_ms = -1;
  REQUIRE(std::sscanf(line.substr(line.find(") in ")).c_str(), ") in %lld ms with connection set-up, round trip %lld ms",
                      &first_ms, &round_trip_ms) == 2);
  std::printf("check: first answer %lld ms (TLS set-up included), round trip %lld ms (80 ms added)\n", first_ms,
              round_trip_ms);
  // No request beats the added delay; the first one also carries the TLS handshake (one more
  // round trip at least), so the round trip reported is not the set-up's time.
  CHECK(round_trip_ms >= 80);
  CHECK(first_ms >= 160);
  CHECK(round_trip_ms < first_ms);
}
