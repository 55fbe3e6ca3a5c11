// Stall detection on a real request: a PATCH to the real tus server over HTTPS through the
// fault proxy, which stops forwarding mid-body and keeps the connection open (a dead route).
// The request must fail as a stall once no byte has moved for stall_timeout_s, within a small
// margin: the transport checks the time since the last byte moved about once a second, not
// curl's low-speed average. A behaviour bound, not a benchmark.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <vector>

#include "tests/links/proxy_support.hpp"
#include "tests/support/process.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

using namespace ctagent;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

constexpr std::uint32_t kStallTimeoutS = 2;
// The progress check runs about once a second; the rest is scheduling on a loaded machine.
constexpr auto kMargin = std::chrono::milliseconds(1500);
// Larger than what the proxy and the loopback socket buffers absorb once it goes silent.
constexpr std::size_t kBodyBytes = 64u << 20;

struct StallRun {
  bool failed = false;
  transport::FailureClass failure = transport::FailureClass::kNone;
  std::string message;
  Clock::duration silent_for{};  // from the last upload progress to the failure
  std::uint64_t sent_before = 0; // body bytes curl had handed to the connection
};

StallRun PatchThroughStall(const fs::path& dir, const std::string& proxy_control) {
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  auto tus = test::StartTusServer(pki, dir / "store", dir / "tus.log");
  test::FaultProxy proxy(dir, "proxy", tus.port);
  transport::HttpOptions options;
  options.tls.ca_file = pki / "ca.pem";
  options.stall_timeout_s = kStallTimeoutS;
  options.request_timeout_s = 60;  // far above the bound asserted: only the stall check may end it
  transport::HttpClient http(options);
  transport::tus::Client tus_client(http, "https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/");
  std::vector<std::uint8_t> body(kBodyBytes);
  for (std::size_t i = 0; i < body.size(); ++i) body[i] = static_cast<std::uint8_t>(i * 2654435761u >> 24);
  auto url = tus_client.Create(body.size(), {{"filename", "stall.bin"}});
  REQUIRE(url);
  proxy.Control(proxy_control);

  transport::HttpRequest request;
  request.method = "PATCH";
  request.url = *url;
  request.headers = {{"Tus-Resumable", "1.0.0"},
                     {"Upload-Offset", "0"},
                     {"Content-Type", "application/offset+octet-stream"}};
  request.body = body;
  Clock::time_point last_progress = Clock::now();
  std::uint64_t sent = 0;
  request.on_upload_progress = [&](std::uint64_t n) {
    sent = n;
    last_progress = Clock::now();
  };
  auto response = http.Perform(request);
  StallRun run;
  run.silent_for = Clock::now() - last_progress;
  run.sent_before = sent;
  run.failed = !response;
  run.failure = response ? transport::FailureClass::kNone : response.error().failure();
  if (!response) run.message = response.error().message();
  return run;
}

}  // namespace

TEST_CASE("stall: a PATCH whose connection goes silent mid-body fails as a stall within the stall timeout + 1.5 s",
          "[links][stall]") {
  test::TempDir dir("links-stall-patch");
  // After 1 MB of this connection the proxy stops forwarding for 60 s but keeps it open.
  const StallRun run = PatchThroughStall(dir.path(), "stall_after_bytes=1000000\nstall_s=60\n");
  const auto silent_ms = std::chrono::duration_cast<std::chrono::milliseconds>(run.silent_for).count();
  std::printf("stall: %llu body bytes handed to the connection, then silent; failed after %lld ms of silence "
              "(stall timeout %u s)\n",
              static_cast<unsigned long long>(run.sent_before), static_cast<long long>(silent_ms), kStallTimeoutS);
  INFO(run.message);
  REQUIRE(run.failed);
  CHECK(run.failure == transport::FailureClass::kStall);
  CHECK_THAT(run.message, Catch::Contains("stalled: no progress for 2 s"));
  // Not before the timeout (a silent second or two is not yet a stall) and not much after it.
  CHECK(run.silent_for >= std::chrono::seconds(kStallTimeoutS));
  CHECK(run.silent_for <= std::chrono::seconds(kStallTimeoutS) + kMargin);
  CHECK(run.sent_before >= 1000000);
  CHECK(run.sent_before < kBodyBytes);  // mid-body, not while waiting for the answer
}
