// The tus Location must stay on the configured upload origin (issue 18): a creation answer that
// sends the upload to another origin gets neither chunk nor manifest bytes, unless
// cloud.upload_origins_allowed names that origin; the error names both origins. Server-given
// URLs with user:password@ or control characters never reach the log or the journal raw.
// Against two in-process fake servers (two origins: same host, different ports).
#include <catch2/catch.hpp>

#include <optional>
#include <string>
#include <vector>

#include "tests/transport/fake_tus_server.hpp"
#include "tests/transport/tus_scan_fixture.hpp"
#include "transport/tus.hpp"

namespace {

using namespace ctagent;
using ctagent::test::FakeRequest;
using ctagent::test::FakeResponse;
using ctagent::test::FakeTusServer;
namespace tus = transport::tus;

config::CloudConfig PlainCloud(const std::string& endpoint) {
  config::CloudConfig cloud;
  cloud.upload_url = endpoint;
  cloud.allow_plain_http = true;
  cloud.parallel_uploads = 2;
  cloud.patch_bytes = 64 * 1024;
  cloud.connect_timeout_s = 5;
  cloud.stall_timeout_s = 10;
  return cloud;
}

// "http://127.0.0.1:PORT" of a fake server.
std::string OriginOf(const FakeTusServer& fake) {
  const std::string endpoint = fake.endpoint();
  return endpoint.substr(0, endpoint.find('/', std::string("http://").size()));
}

// The resolved URL, or "error: <message>".
std::string Resolved(const std::string& endpoint, const std::string& location) {
  auto url = tus::ResolveUploadLocation(endpoint, location, {});
  return url ? *url : "error: " + url.error().message();
}

}  // namespace

TEST_CASE("tus origins: parsed with default ports and compared by scheme, host and port", "[transport][tus][origin]") {
  auto a = tus::ParseOrigin("HTTPS://Uploads.Example/files/");
  REQUIRE(a);
  CHECK(a->ToString() == "https://uploads.example:443");
  CHECK(tus::ParseOrigin("https://uploads.example:443/x") == a);
  CHECK(tus::ParseOrigin("http://uploads.example/files/") != a);
  CHECK(tus::ParseOrigin("https://uploads.example:8443/files/") != a);
  CHECK(tus::ParseOrigin("https://[::1]:8443/f")->host == "[::1]");
  CHECK_FALSE(tus::ParseOrigin("ftp://uploads.example/"));
  CHECK_FALSE(tus::ParseOrigin("https:///files/"));
  CHECK_FALSE(tus::ParseOrigin("https://h:99999/"));
  CHECK_FALSE(tus::ParseOrigin("/files/x"));
  CHECK(tus::ParseOriginList("https://a.example:1 http://b.example").size() == 2);
}

TEST_CASE("tus Location: resolved on the endpoint's origin, refused elsewhere, malformed ones named redacted",
          "[transport][tus][origin]") {
  const std::string endpoint = "https://127.0.0.1:8443/files/";
  CHECK(Resolved(endpoint, "/files/abc") == "https://127.0.0.1:8443/files/abc");
  CHECK(Resolved(endpoint, "abc") == "https://127.0.0.1:8443/files/abc");
  CHECK(Resolved(endpoint, "//127.0.0.1:8443/files//abc") == "https://127.0.0.1:8443/files//abc");

  auto foreign = tus::ResolveUploadLocation(endpoint, "https://127.0.0.2:8443/files/abc", {});
  REQUIRE_FALSE(foreign);
  CHECK(foreign.error().kind() == ErrorKind::kPermission);
  CHECK_THAT(foreign.error().message(), Catch::Contains("https://127.0.0.2:8443") &&
                                            Catch::Contains("https://127.0.0.1:8443") &&
                                            Catch::Contains("cloud.upload_origins_allowed"));
  CHECK_FALSE(tus::ResolveUploadLocation(endpoint, "http://127.0.0.1:8443/files/abc", {}));  // scheme differs
  CHECK_FALSE(tus::ResolveUploadLocation(endpoint, "https://127.0.0.1:8444/files/abc", {}));  // port differs
  CHECK(tus::ResolveUploadLocation(endpoint, "https://127.0.0.2:8443/files/abc",
                                   tus::ParseOriginList("https://127.0.0.2:8443")));

  auto userinfo = tus::ResolveUploadLocation(endpoint, "https://user:s3cret@127.0.0.1:8443/files/abc", {});
  REQUIRE_FALSE(userinfo);
  CHECK(userinfo.error().kind() == ErrorKind::kProtocol);
  CHECK_THAT(userinfo.error().message(), Catch::Contains("***@") && !Catch::Contains("s3cret"));

  auto crlf = tus::ResolveUploadLocation(endpoint, "/files/abc\r\nSet-Cookie: x", {});
  REQUIRE_FALSE(crlf);
  CHECK(crlf.error().message().find('\r') == std::string::npos);
  CHECK(crlf.error().message().find('\n') == std::string::npos);
  CHECK_THAT(crlf.error().message(), Catch::Contains("\\x0d\\x0a"));
  CHECK_FALSE(tus::ResolveUploadLocation(endpoint, "", {}));
  CHECK_FALSE(tus::ResolveUploadLocation(endpoint, "/files/a b", {}));
}

TEST_CASE("uploader: a Location on another origin receives nothing, and the error names both origins",
          "[transport][tus][origin][upload][fake]") {
  FakeTusServer configured;
  FakeTusServer other;
  configured.SetIntercept([&other](const FakeRequest& r) -> std::optional<FakeResponse> {
    if (r.method == "POST") {
      return FakeResponse{201, {{"Tus-Resumable", "1.0.0"}, {"Location", OriginOf(other) + "/files/stolen"}}, ""};
    }
    return std::nullopt;
  });
  test::TusScan scan(3, 20000);
  core::Uploader uploader(scan.io, *scan.spool, PlainCloud(configured.endpoint()), test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  REQUIRE_FALSE(*result);
  uploader.Stop();
  const std::string message = result->error().message();
  INFO(message);
  CHECK_THAT(message, Catch::Contains("[foreign-location") && Catch::Contains(OriginOf(other)) &&
                          Catch::Contains(OriginOf(configured)) && Catch::Contains("cloud.upload_origins_allowed") &&
                          Catch::Contains("not retried"));
  CHECK(other.Requests().empty());  // not a byte of any chunk or of the manifest, not even a HEAD
  CHECK(configured.Count("PATCH") == 0);
  // Nothing of the foreign URL was journaled: a restart does not go there either.
  CHECK(scan.SpoolText().find("stolen") == std::string::npos);
}

TEST_CASE("uploader: with the other origin in cloud.upload_origins_allowed the scan goes there, bit for bit",
          "[transport][tus][origin][upload][fake]") {
  FakeTusServer configured;
  FakeTusServer other;
  configured.SetIntercept([&other](const FakeRequest& r) -> std::optional<FakeResponse> {
    if (r.method == "POST") {
      const std::string path = other.CreateUpload(std::stoull(r.Header("upload-length")));
      return FakeResponse{201, {{"Tus-Resumable", "1.0.0"}, {"Location", OriginOf(other) + path}}, ""};
    }
    return std::nullopt;
  });
  test::TusScan scan(3, 20000);
  auto cloud = PlainCloud(configured.endpoint());
  cloud.upload_origins_allowed = "https://unrelated.example " + OriginOf(other);
  core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  INFO((*result ? std::string("ok") : result->error().message()));
  REQUIRE(*result);
  for (const auto& sent : scan.SentUploads()) {
    CHECK(sent.url.rfind(OriginOf(other) + "/files/", 0) == 0);
    CHECK(other.Data(sent.url) == sent.bytes);
  }
  CHECK(configured.Count("PATCH") == 0);
  CHECK(other.Count("PATCH") == 4);
}

TEST_CASE("uploader: a journaled upload URL off the upload origin is created again on it, and gets no request",
          "[transport][tus][origin][upload][fake]") {
  FakeTusServer configured;
  FakeTusServer other;
  test::TusScan scan(1, 20000);
  // As a run before the origin check left it: chunk 0's upload journaled on the other origin.
  REQUIRE(scan.spool->Update(scan.scan_uid, [&](spool::ScanRecord& r) {
    r.chunks.at(0).upload.url = OriginOf(other) + "/files/u1";
    r.chunks.at(0).upload.confirmed_offset = 0;
  }));
  core::Uploader uploader(scan.io, *scan.spool, PlainCloud(configured.endpoint()), test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  INFO((*result ? std::string("ok") : result->error().message()));
  REQUIRE(*result);
  uploader.Stop();
  CHECK(other.Requests().empty());
  for (const auto& sent : scan.SentUploads()) CHECK(configured.Data(sent.url) == sent.bytes);
}

TEST_CASE("uploader: a Location with user:password@ or CR/LF never appears raw in the log or the journal",
          "[transport][tus][origin][redact][upload][fake]") {
  struct Case {
    const char* name;
    std::string location_suffix;  // after http://
  };
  FakeTusServer fake;
  const std::string host_port = OriginOf(fake).substr(std::string("http://").size());
  const std::vector<Case> cases = {
      {"userinfo", "admin:s3cret-pw@" + host_port + "/files/u1"},
      {"a bare CR", host_port + "/files/u1\rInjected: s3cret-pw"},
      {"a CR/LF pair", host_port + "/files/u1\r\nInjected: s3cret-pw"},  // two header lines on the wire
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      const std::string location = "http://" + c.location_suffix;
      fake.SetIntercept([location](const FakeRequest& r) -> std::optional<FakeResponse> {
        if (r.method == "POST") return FakeResponse{201, {{"Tus-Resumable", "1.0.0"}, {"Location", location}}, ""};
        return std::nullopt;
      });
      test::TusScan scan(1, 20000);
      std::string log;
      {
        test::StderrCapture capture(scan.dir.path() / "agent.log");
        core::Uploader uploader(scan.io, *scan.spool, PlainCloud(fake.endpoint()), test::TusScan::FastRetries());
        (void)scan.Upload(uploader);
        uploader.Stop();
        log = capture.text();
      }
      INFO(log);
      CHECK(log.find("s3cret-pw@") == std::string::npos);
      CHECK(log.find('\r') == std::string::npos);
      // Every log line starts with its timestamp: a CR/LF in a URL did not start a line of its own.
      std::size_t pos = 0;
      while ((pos = log.find('\n', pos)) != std::string::npos && pos + 1 < log.size()) {
        ++pos;
        CHECK(log.compare(pos, 2, "20") == 0);
      }
      const std::string journal = scan.SpoolText();
      CHECK(journal.find("s3cret-pw") == std::string::npos);
      CHECK(journal.find("Injected") == std::string::npos);
    }
  }
}
