// tus discovery (issue 18): a server that leaves Tus-Version out of its OPTIONS answer but labels
// it Tus-Resumable: 1.0.0 is used; a server that is not tus 1.0.0 is refused with an error that
// says what it really answered (no "http-412" when no 412 came), and the uploader creates no
// upload on it. Against the in-process fake server (plain HTTP on loopback) and a real spool.
#include <catch2/catch.hpp>

#include <optional>
#include <string>
#include <vector>

#include "tests/transport/fake_tus_server.hpp"
#include "tests/transport/tus_scan_fixture.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using namespace ctagent;
using ctagent::test::FakeRequest;
using ctagent::test::FakeResponse;
using ctagent::test::FakeTusServer;
using transport::FailureClass;
namespace tus = transport::tus;

config::CloudConfig PlainCloud(const std::string& endpoint, std::uint32_t parallel) {
  config::CloudConfig cloud;
  cloud.upload_url = endpoint;
  cloud.allow_plain_http = true;
  cloud.parallel_uploads = parallel;
  cloud.patch_bytes = 64 * 1024;
  cloud.connect_timeout_s = 5;
  cloud.stall_timeout_s = 10;
  return cloud;
}

// ParseDiscovery on a header list; the label and class land in the out-parameters.
struct Parsed {
  Expected<tus::ServerCapabilities> caps;
  FailureClass failure;
  std::string label;
};
Parsed Parse(long status, const transport::HeaderList& headers) {
  FailureClass failure = FailureClass::kCancelled;  // never set by ParseDiscovery: shows it wrote one
  std::string label = "unset";
  auto caps = tus::ParseDiscovery(status, headers, "https://tus.example/files/", &failure, &label);
  return {std::move(caps), failure, label};
}

}  // namespace

TEST_CASE("tus discovery parse: Tus-Resumable: 1.0.0 without Tus-Version is a usable 1.0.0 server",
          "[transport][tus][discovery]") {
  auto legacy = Parse(204, {{"tus-resumable", "1.0.0"}, {"tus-extension", "creation,termination"},
                            {"tus-max-size", "1000"}});
  REQUIRE(legacy.caps);
  CHECK(legacy.caps->versions == std::vector<std::string>{"1.0.0"});
  CHECK(legacy.caps->version_inferred);
  CHECK(legacy.caps->Has("termination"));
  CHECK(legacy.caps->max_size == 1000);

  auto modern = Parse(200, {{"tus-version", "1.0.0,0.2.2"}, {"tus-resumable", "1.0.0"}});
  REQUIRE(modern.caps);
  CHECK_FALSE(modern.caps->version_inferred);
  CHECK(modern.caps->versions == std::vector<std::string>{"1.0.0", "0.2.2"});

  // A tus server without OPTIONS support that still labels its answer: core protocol only.
  auto no_options = Parse(405, {{"tus-resumable", "1.0.0"}});
  REQUIRE(no_options.caps);
  CHECK(no_options.caps->Has("creation"));
}

TEST_CASE("tus discovery parse: servers that are not tus 1.0.0 are refused with what they said, never as a 412",
          "[transport][tus][discovery]") {
  SECTION("other versions only") {
    auto other = Parse(204, {{"tus-version", "2.0.0,1.1.0"}, {"tus-resumable", "2.0.0"}});
    REQUIRE_FALSE(other.caps);
    CHECK(other.failure == FailureClass::kVersion);
    CHECK(other.label == "tus-version");
    CHECK_THAT(other.caps.error().message(), Catch::Contains("2.0.0,1.1.0") && Catch::Contains("HTTP 204") &&
                                                 !Catch::Contains("HTTP 412") && !Catch::Contains("http-412"));
  }
  SECTION("another Tus-Resumable and no Tus-Version") {
    auto other = Parse(200, {{"tus-resumable", "0.2.2"}});
    REQUIRE_FALSE(other.caps);
    CHECK(other.failure == FailureClass::kVersion);
    CHECK(other.label == "tus-version");
    CHECK_THAT(other.caps.error().message(), Catch::Contains("0.2.2") && !Catch::Contains("HTTP 412") && !Catch::Contains("http-412"));
  }
  SECTION("no tus header at all: a web server, not a tus endpoint") {
    auto web = Parse(200, {{"content-type", "text/html"}});
    REQUIRE_FALSE(web.caps);
    CHECK(web.failure == FailureClass::kEndpoint);
    CHECK(web.label == "not-tus");
    CHECK_THAT(web.caps.error().message(), Catch::Contains("HTTP 200") && Catch::Contains("not a tus upload endpoint") &&
                                               Catch::Contains("cloud.upload_url") && !Catch::Contains("HTTP 412") && !Catch::Contains("http-412"));
  }
  SECTION("a non-tus error status") {
    auto moved = Parse(301, {{"location", "https://elsewhere.example/"}});
    REQUIRE_FALSE(moved.caps);
    CHECK(moved.failure == FailureClass::kEndpoint);
    CHECK(moved.label == "http-301");
    CHECK_THAT(moved.caps.error().message(), Catch::Contains("HTTP 301"));
  }
  SECTION("a bad Tus-Max-Size") {
    auto bad = Parse(204, {{"tus-version", "1.0.0"}, {"tus-max-size", "-5"}});
    REQUIRE_FALSE(bad.caps);
    CHECK(bad.failure == FailureClass::kProtocol);
    CHECK_THAT(bad.caps.error().message(), Catch::Contains("Tus-Max-Size"));
  }
}

TEST_CASE("tus header parsing: offsets are plain decimals and lists are trimmed and bounded",
          "[transport][tus][discovery]") {
  CHECK(tus::ParseUploadOffset("0") == 0u);
  CHECK(tus::ParseUploadOffset("18446744073709551615") == 18446744073709551615ull);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "1,2", "18446744073709551616", "0x10", "1e3", "123456789012345678901"}) {
    INFO(bad);
    CHECK_FALSE(tus::ParseUploadOffset(bad));
  }
  CHECK(tus::ParseList(" 1.0.0 ,\t0.2.2,, ") == std::vector<std::string>{"1.0.0", "0.2.2"});
  CHECK(tus::ParseList("").empty());
  std::string many;
  for (int i = 0; i < 10000; ++i) many += "x,";
  CHECK(tus::ParseList(many).size() == tus::kMaxListItems);
}

TEST_CASE("uploader: a legacy server without Tus-Version (Tus-Resumable: 1.0.0) receives the scan bit for bit",
          "[transport][tus][discovery][upload][fake]") {
  // Before: discovery refused it for good as "http-412 ... does not speak tus 1.0.0".
  FakeTusServer fake;
  fake.SetIntercept([](const FakeRequest& r) -> std::optional<FakeResponse> {
    if (r.method == "OPTIONS") {
      return FakeResponse{204, {{"Tus-Resumable", "1.0.0"}, {"Tus-Extension", "creation,termination"}}, ""};
    }
    return std::nullopt;
  });
  test::TusScan scan(4);
  core::Uploader uploader(scan.io, *scan.spool, PlainCloud(fake.endpoint(), 2), test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  INFO((*result ? std::string("ok") : result->error().message()));
  REQUIRE(*result);
  for (const auto& sent : scan.SentUploads()) CHECK(fake.Data(sent.url) == sent.bytes);
  CHECK(fake.Count("POST") == 5);  // 4 chunks + the manifest, each created once
  CHECK(fake.UploadCount() == 5);
}

TEST_CASE("uploader: a server that is not tus 1.0.0 gets no upload created, and the error says what it answered",
          "[transport][tus][discovery][upload][fake]") {
  struct Case {
    const char* name;
    FakeResponse options;
    const char* label;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"other versions", FakeResponse{204, {{"Tus-Resumable", "2.0.0"}, {"Tus-Version", "2.0.0"}}, ""}, "[tus-version,",
       "offers tus versions \"2.0.0\""},
      {"a plain web server", FakeResponse{200, {{"Content-Type", "text/html"}}, "<html>hello</html>"}, "[not-tus,",
       "not a tus upload endpoint"},
      {"a 405 without tus headers", FakeResponse{405, {{"Allow", "GET"}}, ""}, "[http-405,", "HTTP 405"},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      FakeTusServer fake;
      const FakeResponse options = c.options;
      fake.SetIntercept([options](const FakeRequest& r) -> std::optional<FakeResponse> {
        if (r.method == "OPTIONS") return options;
        return std::nullopt;  // POST would create an upload, as a lenient server does
      });
      test::TusScan scan(7, 20000);
      core::Uploader uploader(scan.io, *scan.spool, PlainCloud(fake.endpoint(), 4), test::TusScan::FastRetries());
      const auto result = scan.Upload(uploader);
      REQUIRE(result);
      REQUIRE_FALSE(*result);
      const std::string message = result->error().message();
      INFO(message);
      CHECK_THAT(message, Catch::Contains(c.label) && Catch::Contains(c.says) && Catch::Contains("not retried") &&
                              !Catch::Contains("HTTP 412") && !Catch::Contains("http-412"));
      uploader.Stop();  // every creator and transfer has finished: the request log is complete
      CHECK(fake.Count("POST") == 0);
      CHECK(fake.Count("PATCH") == 0);
      CHECK(fake.UploadCount() == 0);
      CHECK(fake.Count("OPTIONS") >= 1);
      auto record = scan.spool->Get(scan.scan_uid);
      REQUIRE(record);
      for (const auto& chunk : record->chunks) CHECK(chunk.upload.url.empty());
    }
  }
}
