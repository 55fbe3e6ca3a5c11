// The uploader admits uploads by the link's measured rate x round trip (agent/core/admission.hpp):
// the same scan to the real tus server over HTTPS, once directly and once through the fault proxy
// adding 200 ms of round trip. With parallel_uploads 2 and max_uploads_in_flight 16, the long path
// must get more uploads sending at once than the short one, within the maximum, and both scans
// arrive bit-exact. (No figure of time is asserted: only how many uploads were let in.)
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "agent/core/uploader.hpp"
#include "tests/links/proxy_support.hpp"
#include "tests/transport/tus_scan_fixture.hpp"

using namespace ctagent;  // NOLINT(google-build-using-namespace): test file
namespace fs = std::filesystem;

namespace {

struct Outcome {
  std::uint32_t most_sending = 0;
  std::uint32_t admitted = 0;
};

// Uploads a scan of 40 chunks of ~400 KB to `url` and checks every upload arrived bit-exact in
// `store` (the tus server's directory).
Outcome UploadScan(const std::string& url, const fs::path& pki, const fs::path& store) {
  test::TusScan scan(40, 400000);
  config::CloudConfig cloud;
  cloud.upload_url = url;
  cloud.tls.ca_file = pki / "ca.pem";
  cloud.parallel_uploads = 2;
  cloud.max_uploads_in_flight = 16;
  cloud.connect_timeout_s = 10;
  cloud.stall_timeout_s = 30;
  Outcome outcome;
  core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  INFO((*result ? std::string("uploaded") : result->error().message()));
  REQUIRE(*result);
  for (const auto& sent : scan.SentUploads()) {
    const std::string id = sent.url.substr(sent.url.rfind('/') + 1);
    CHECK(test::ReadText(store / id) == sent.bytes);
  }
  outcome.most_sending = uploader.most_sending();
  outcome.admitted = uploader.admitted();
  return outcome;
}

}  // namespace

TEST_CASE("upload admission: a link with a longer round trip gets more uploads in flight, within the maximum",
          "[links][proxy][upload]") {
  test::TempDir dir("upload-admission");
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  const fs::path store = dir.path() / "store";
  auto tus = test::StartTusServer(pki, store, dir.path() / "tus.log");

  const Outcome direct = UploadScan(tus.endpoint, pki, store);
  // 200 ms of round trip added, 100 ms each way.
  test::FaultProxy proxy(dir.path(), "proxy", tus.port, "latency_up_ms=100\nlatency_down_ms=100\n");
  const Outcome delayed = UploadScan("https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/", pki, store);
  std::printf("uploads sending at once, most: direct %u, 200 ms round trip %u (admitted at the end: %u, %u)\n",
              direct.most_sending, delayed.most_sending, direct.admitted, delayed.admitted);
  // Never beyond the configured maximum, never below the minimum.
  CHECK(direct.most_sending >= 2);
  CHECK(delayed.most_sending <= 16);
  CHECK(direct.most_sending <= 16);
  // The long path needs rate x 200 ms / 400 KB more than 2 even at 2 uploads' rate
  // (2 x 400 KB / 0.2 s = 4 MB/s: 4 x 4e6 x 0.2 / 4e5 + 1 = 9).
  CHECK(delayed.most_sending >= 6);
  CHECK(delayed.most_sending > direct.most_sending);
}
