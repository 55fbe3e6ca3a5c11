// tus against the hostile-server harness (tests/support/hostile_server, HTTPS on loopback), issue 18:
// - the real @tus/server behind the harness with Tus-Version removed from its OPTIONS answer (a
//   legacy server) receives a scan bit for bit;
// - a server that speaks another tus version gets no upload created and an accurate error;
// - a creation answer whose Location is on another host (127.0.0.2, a second harness) sends it
//   nothing, unless cloud.upload_origins_allowed names that origin, and then the scan arrives there.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/hostile_server.hpp"
#include "tests/support/process.hpp"
#include "tests/transport/tus_scan_fixture.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using namespace ctagent;
using nlohmann::json;
using test::HostileOptions;
using test::HostileServer;
namespace fs = std::filesystem;
namespace tus = transport::tus;

// The reference @tus/server (cloud/tus-server) over plain HTTP on a free loopback port, as the
// harness's upstream; stopped by PID when this goes.
struct PlainTusServer {
  test::TempDir dir{"tus-hostile-upstream"};
  fs::path store = dir.path() / "store";
  fs::path log = dir.path() / "tus-server.log";
  std::unique_ptr<test::ChildProcess> process;
  std::uint16_t port = 0;

  PlainTusServer() {
    const fs::path ready = dir.path() / "port";
    process = std::make_unique<test::ChildProcess>(
        std::vector<std::string>{"node", std::string(CTAGENT_SOURCE_DIR) + "/cloud/tus-server/server.mjs", "--port", "0",
                                 "--dir", store.string(), "--plain-http-for-tests", "--ready-file", ready.string()},
        log);
    const bool started = test::WaitFor([&] { return !test::ReadText(ready).empty() || !process->Running(); },
                                       std::chrono::seconds(20));
    INFO(test::ReadText(log));
    REQUIRE(started);
    REQUIRE_FALSE(test::ReadText(ready).empty());
    port = static_cast<std::uint16_t>(std::stoi(test::ReadText(ready)));
  }
  ~PlainTusServer() { process->Stop(); }
  std::string origin() const { return "http://127.0.0.1:" + std::to_string(port); }
  std::string Stored(const std::string& url) const { return test::ReadText(store / url.substr(url.rfind('/') + 1)); }
};

config::CloudConfig HarnessCloud(const HostileServer& server, std::uint32_t parallel) {
  config::CloudConfig cloud;
  cloud.upload_url = server.origin() + "/files/";
  cloud.tls.ca_file = server.ca_file();
  cloud.parallel_uploads = parallel;
  cloud.patch_bytes = 64 * 1024;
  cloud.connect_timeout_s = 5;
  cloud.stall_timeout_s = 10;
  return cloud;
}

std::size_t CountMethod(const std::vector<json>& requests, const std::string& method) {
  std::size_t n = 0;
  for (const auto& r : requests) n += r.value("method", "") == method ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("hostile: the real tus server without Tus-Version on OPTIONS (a legacy server) gets the scan bit for bit",
          "[transport][tus][hostile][discovery][integration]") {
  PlainTusServer upstream;
  HostileOptions options;
  options.upstream = upstream.origin();
  auto harness = HostileServer::Start(
      json::parse(R"([{"method": "OPTIONS", "path": ".*", "action": {"proxy": true, "remove_headers": ["Tus-Version"]}}])"),
      options);
  test::TusScan scan(4, 150000);
  core::Uploader uploader(scan.io, *scan.spool, HarnessCloud(*harness, 2), test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  INFO((*result ? std::string("ok") : result->error().message()));
  REQUIRE(*result);
  for (const auto& sent : scan.SentUploads()) {
    CHECK(sent.url.rfind(harness->origin() + "/files/", 0) == 0);
    CHECK(upstream.Stored(sent.url) == sent.bytes);
  }
  const auto requests = harness->Requests();
  CHECK(CountMethod(requests, "POST") == 5);  // 4 chunks + manifest, each created once
  // Every OPTIONS went through the rule that removed Tus-Version.
  for (const auto& r : requests) {
    if (r.value("method", "") == "OPTIONS") CHECK(r.value("rule", -1) == 0);
  }
}

TEST_CASE("hostile: a server that speaks another tus version gets no upload, and the error says what it answered",
          "[transport][tus][hostile][discovery][integration]") {
  auto harness = HostileServer::Start(json::parse(R"([
      {"method": "OPTIONS", "path": ".*",
       "action": {"status": 204, "headers": {"Tus-Resumable": "2.0.0", "Tus-Version": "2.0.0,0.2.2"}}},
      {"method": "POST", "path": ".*", "action": {"status": 201, "headers": {"Location": "/files/would-be-empty"}}}
  ])"));
  test::TusScan scan(7, 20000);
  core::Uploader uploader(scan.io, *scan.spool, HarnessCloud(*harness, 4), test::TusScan::FastRetries());
  const auto result = scan.Upload(uploader);
  REQUIRE(result);
  REQUIRE_FALSE(*result);
  uploader.Stop();
  const std::string message = result->error().message();
  INFO(message);
  CHECK_THAT(message, Catch::Contains("[tus-version") && Catch::Contains("2.0.0,0.2.2") &&
                          Catch::Contains("not retried") && !Catch::Contains("HTTP 412") && !Catch::Contains("http-412"));
  const auto requests = harness->Requests();
  CHECK(CountMethod(requests, "POST") == 0);  // before: one empty upload per chunk and the manifest
  CHECK(CountMethod(requests, "PATCH") == 0);
  CHECK(CountMethod(requests, "OPTIONS") >= 1);
}

TEST_CASE("hostile: a Location on another host gets nothing, and once allowed by cloud.upload_origins_allowed the scan goes there",
          "[transport][tus][hostile][origin][integration]") {
  PlainTusServer upstream;
  HostileOptions other_options;
  other_options.listen_host = "127.0.0.2";  // another loopback host: another origin
  other_options.upstream = upstream.origin();
  auto other = HostileServer::Start(json::array(), other_options);
  REQUIRE(other->origin().rfind("https://127.0.0.2:", 0) == 0);

  SECTION("not allowed: the creation fails naming both origins, and the other host receives no request") {
    auto harness = HostileServer::Start(json::array({{{"method", "POST"},
                                                      {"path", ".*"},
                                                      {"action",
                                                       {{"status", 201},
                                                        {"headers", {{"Tus-Resumable", "1.0.0"},
                                                                     {"Location", other->origin() + "/files/stolen"}}}}}},
                                                     {{"method", "OPTIONS"},
                                                      {"path", ".*"},
                                                      {"action",
                                                       {{"status", 204},
                                                        {"headers", {{"Tus-Resumable", "1.0.0"}, {"Tus-Version", "1.0.0"},
                                                                     {"Tus-Extension", "creation"}}}}}}}));
    test::TusScan scan(3, 20000);
    core::Uploader uploader(scan.io, *scan.spool, HarnessCloud(*harness, 2), test::TusScan::FastRetries());
    const auto result = scan.Upload(uploader);
    REQUIRE(result);
    REQUIRE_FALSE(*result);
    uploader.Stop();
    const std::string message = result->error().message();
    INFO(message);
    CHECK_THAT(message, Catch::Contains("[foreign-location") && Catch::Contains(other->origin()) &&
                            Catch::Contains(harness->origin()) && Catch::Contains("cloud.upload_origins_allowed"));
    CHECK(other->Requests().empty());  // no chunk, no manifest, not even a HEAD
    CHECK(CountMethod(harness->Requests(), "PATCH") == 0);
  }

  SECTION("allowed: every chunk and the manifest go to the other host and arrive bit for bit") {
    test::TusScan scan(3, 20000);
    // The uploads the configured server hands out, made on the real server behind the other host
    // beforehand, in the order one creator thread asks for them: the manifest (PrepareManifest
    // comes first), then chunks 0, 1, 2.
    transport::HttpOptions plain;
    plain.allow_plain_http = true;
    transport::HttpClient http(plain);
    tus::Client creator(http, upstream.origin() + "/files/");
    std::vector<std::uint64_t> lengths = {scan.spool->ReadManifest(scan.scan_uid)->size()};
    for (const auto& chunk : scan.chunks) lengths.push_back(chunk.size());
    json rules = json::array();
    for (const auto length : lengths) {
      auto url = creator.Create(length, {});
      REQUIRE(url);
      const std::string path = url->substr(url->find("/files/"));
      rules.push_back({{"method", "POST"},
                       {"path", ".*"},
                       {"times", 1},
                       {"action", {{"status", 201}, {"headers", {{"Tus-Resumable", "1.0.0"}, {"Location", other->origin() + path}}}}}});
    }
    HostileOptions options;
    options.upstream = upstream.origin();  // OPTIONS answered by the real server
    auto harness = HostileServer::Start(rules, options);
    auto cloud = HarnessCloud(*harness, 1);
    cloud.upload_origins_allowed = other->origin();
    core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
    const auto result = scan.Upload(uploader);
    REQUIRE(result);
    INFO((*result ? std::string("ok") : result->error().message()));
    REQUIRE(*result);
    for (const auto& sent : scan.SentUploads()) {
      CHECK(sent.url.rfind(other->origin() + "/files/", 0) == 0);
      CHECK(upstream.Stored(sent.url) == sent.bytes);
    }
    CHECK(CountMethod(harness->Requests(), "PATCH") == 0);
    CHECK(CountMethod(other->Requests(), "PATCH") == 4);
  }
}
