// A second, independent tus server (issue 18): the tus handler of @uploadx/core
// (tests/peers/uploadx-tus-server), not @tus/server, started over HTTPS on a free loopback port
// and stopped by PID. It sends no Tus-Version (only Tus-Resumable: 1.0.0), answers scheme-relative
// Locations, offers sha256 checksums and answers the completing PATCH with 200: the agent's
// uploader must get a scan onto it byte for byte. docs/tus-conformance.md lists the differences.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "tests/transport/test_http.hpp"
#include "tests/transport/tus_scan_fixture.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using namespace ctagent;
namespace fs = std::filesystem;
namespace tus = transport::tus;
using transport::FailureClass;

struct UploadxServer {
  test::TempDir dir{"tus-uploadx"};
  fs::path pki = test::SharedTransportPki();
  fs::path store = dir.path() / "store";
  fs::path log = dir.path() / "uploadx.log";
  std::unique_ptr<test::ChildProcess> process;
  std::string endpoint;  // https://127.0.0.1:PORT/files

  UploadxServer() {
    const fs::path ready = dir.path() / "port";
    const std::string script = std::string(CTAGENT_SOURCE_DIR) + "/tests/peers/uploadx-tus-server/server.mjs";
    process = std::make_unique<test::ChildProcess>(
        std::vector<std::string>{"node", script, "--port", "0", "--dir", store.string(), "--cert",
                                 (pki / "server.pem").string(), "--key", (pki / "server.key").string(),
                                 "--ready-file", ready.string()},
        log);
    const bool started = test::WaitFor([&] { return !test::ReadText(ready).empty() || !process->Running(); },
                                       std::chrono::seconds(20));
    INFO("uploadx-tus-server log (run scripts/bootstrap if its node_modules are missing):\n" << test::ReadText(log));
    REQUIRE(started);
    REQUIRE_FALSE(test::ReadText(ready).empty());
    // No trailing slash: this server makes the Location by appending "/<id>" to the request path,
    // and refuses the "/files//<id>" URLs that a creation at "/files/" would get (HTTP 403).
    endpoint = "https://127.0.0.1:" + test::ReadText(ready) + "/files";
  }
  ~UploadxServer() { process->Stop(); }  // SIGTERM by PID, bounded wait, SIGKILL

  // What the server stored for an upload URL: DIR/<last path segment>.
  std::string Stored(const std::string& url) const { return test::ReadText(store / url.substr(url.rfind('/') + 1)); }

  transport::HttpOptions Options() const {
    return ctagent::test::TestHttpOptions(pki / "ca.pem");
  }
  config::CloudConfig Cloud(std::uint32_t parallel, std::uint64_t patch_bytes) const {
    config::CloudConfig cloud;
    cloud.upload_url = endpoint;
    cloud.tls.ca_file = pki / "ca.pem";
    cloud.parallel_uploads = parallel;
    cloud.patch_bytes = patch_bytes;
    cloud.connect_timeout_s = 5;
    cloud.stall_timeout_s = 10;
    return cloud;
  }
};

std::string AsText(const std::vector<std::uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

}  // namespace

TEST_CASE("uploadx tus server: discovery without Tus-Version is read as 1.0.0 with its extensions and checksums",
          "[transport][tus][uploadx][integration]") {
  UploadxServer server;
  transport::HttpClient http(server.Options());
  tus::Client client(http, server.endpoint);
  auto caps = client.Discover();
  INFO((caps ? std::string("ok") : caps.error().message()));
  REQUIRE(caps);
  CHECK(caps->version_inferred);  // this server sends no Tus-Version
  CHECK(caps->versions == std::vector<std::string>{"1.0.0"});
  CHECK(caps->Has("creation"));
  CHECK(caps->Has("creation-with-upload"));
  CHECK(caps->Has("termination"));
  CHECK(caps->Has("checksum"));
  CHECK(caps->ChecksumAlgorithm() == "sha256");
}

TEST_CASE("uploadx tus server: a scan uploaded by the agent's uploader arrives byte for byte",
          "[transport][tus][uploadx][upload][integration]") {
  UploadxServer server;
  test::TusScan scan(5, 300000);
  // 64 KiB PATCHes: several per chunk, each with an Upload-Checksum the server verifies.
  core::Uploader uploader(scan.io, *scan.spool, server.Cloud(2, 64 * 1024), test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  INFO((*result ? std::string("ok") : result->error().message()) << "\nserver log:\n" << test::ReadText(server.log));
  REQUIRE(*result);
  const auto sent = scan.SentUploads();
  REQUIRE(sent.size() == 6);  // 5 chunks + the manifest
  for (const auto& upload : sent) {
    CHECK(upload.url.rfind(server.endpoint + "/", 0) == 0);
    CHECK(server.Stored(upload.url) == upload.bytes);
  }
  CHECK(uploader.counters().retries == 0);
}

TEST_CASE("uploadx tus server: an interrupted upload resumes from the offset HEAD reports, and DELETE ends it",
          "[transport][tus][uploadx][integration]") {
  UploadxServer server;
  const auto data = test::RandomBytes(500000, 77);
  std::string url;
  {
    transport::HttpClient http(server.Options());
    tus::Client first(http, server.endpoint);
    REQUIRE(first.Discover());
    auto created = first.Create(data.size(), {{"kind", "chunk"}, {"filename", "resume.ctc"}});
    REQUIRE(created);
    url = *created;
    auto offset = first.Patch(url, 0, std::span(data).subspan(0, 123457));
    REQUIRE(offset);
    CHECK(*offset == 123457);
  }
  // A new connection and client, as after a restart: HEAD, then the rest.
  transport::HttpClient http(server.Options());
  tus::Client second(http, server.endpoint);
  REQUIRE(second.Discover());
  auto info = second.Query(url);
  REQUIRE(info);
  CHECK(info->offset == 123457);
  CHECK(info->length == data.size());
  auto done = second.UploadFrom(url, data, info->offset, 100000);
  INFO((done ? std::string("ok") : done.error().message()));
  REQUIRE(done);
  CHECK(*done == data.size());
  CHECK(server.Stored(url) == AsText(data));

  REQUIRE(second.Terminate(url));
  auto gone = second.Query(url);
  REQUIRE_FALSE(gone);
  CHECK(gone.error().failure() == FailureClass::kUploadGone);
}
