// Integration tests of the tus client against the real tus server (@tus/server) over HTTPS on
// loopback: the bytes the server stored are compared with the bytes that left.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "tests/transport/test_http.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::transport::HttpClient;
using ctagent::transport::HttpOptions;
using ctagent::transport::HttpRequest;
namespace tus = ctagent::transport::tus;
namespace fs = std::filesystem;

using ctagent::test::RandomBytes;

std::vector<std::uint8_t> ReadBytes(const fs::path& path) {
  const std::string text = ctagent::test::ReadText(path);
  return {text.begin(), text.end()};
}

// The file store names an upload's data file after the last segment of its URL.
std::string UploadId(const std::string& url) { return url.substr(url.rfind('/') + 1); }

struct TusFixture {
  ctagent::test::TempDir dir{"transport-tus"};
  fs::path pki = ctagent::test::SharedTransportPki();
  fs::path store = dir.path() / "store";
  ctagent::test::TusServer server;

  explicit TusFixture(const std::string& cert_name = "server") {
    server = ctagent::test::StartTusServer(pki, store, dir.path() / "tus-server.log", cert_name);
  }

  HttpOptions Options() const {
    return ctagent::test::TestHttpOptions(pki / "ca.pem");
  }
};

}  // namespace

TEST_CASE("tus: create and upload a few MiB in several PATCHes over HTTPS", "[transport][tus][integration]") {
  TusFixture f;
  HttpClient http(f.Options());
  tus::Client client(http, f.server.endpoint);

  const auto data = RandomBytes(3 * 1024 * 1024 + 12345, 1);
  auto url = client.Create(data.size(), {{"scan_uid", "1.2.826.0.1.3680043.10.1"}, {"kind", "chunk"},
                                         {"chunk_index", "3"}, {"sha256", "abc123"}});
  REQUIRE(url);
  CHECK(url->starts_with(f.server.endpoint));  // the relative Location was resolved

  auto start = client.QueryOffset(*url);
  REQUIRE(start);
  CHECK(*start == 0);

  std::vector<std::uint64_t> progress;
  auto done = client.UploadFrom(*url, data, 0, 1024 * 1024 + 7, [&](std::uint64_t o) { progress.push_back(o); });
  REQUIRE(done);
  CHECK(*done == data.size());
  REQUIRE(progress.size() == 4);  // ceil(3 MiB + 12345 / (1 MiB + 7))
  CHECK(std::is_sorted(progress.begin(), progress.end()));
  CHECK(progress.back() == data.size());

  const auto stored = ReadBytes(f.store / UploadId(*url));
  REQUIRE(stored.size() == data.size());
  CHECK(stored == data);

  // The server decoded our Upload-Metadata into the same key/value pairs.
  const auto info = nlohmann::json::parse(ctagent::test::ReadText(f.store / (UploadId(*url) + ".json")));
  CHECK(info["metadata"]["scan_uid"] == "1.2.826.0.1.3680043.10.1");
  CHECK(info["metadata"]["kind"] == "chunk");
  CHECK(info["metadata"]["chunk_index"] == "3");
  CHECK(info["metadata"]["sha256"] == "abc123");

  auto final_offset = client.QueryOffset(*url);
  REQUIRE(final_offset);
  CHECK(*final_offset == data.size());
}

TEST_CASE("tus: resume a partial upload with a new client", "[transport][tus][integration]") {
  TusFixture f;
  const auto data = RandomBytes(2 * 1024 * 1024 + 999, 2);
  const std::size_t half = data.size() / 2;
  std::string url;
  {
    HttpClient http(f.Options());
    tus::Client client(http, f.server.endpoint);
    auto created = client.Create(data.size(), {{"kind", "chunk"}});
    REQUIRE(created);
    url = *created;
    auto sent = client.UploadFrom(url, std::span(data).first(half), 0, 256 * 1024);
    REQUIRE(sent);
    CHECK(*sent == half);
  }
  // As after a restart: a fresh connection asks the server where to continue.
  HttpClient http(f.Options());
  tus::Client client(http, f.server.endpoint);
  auto offset = client.QueryOffset(url);
  REQUIRE(offset);
  REQUIRE(*offset == half);
  auto done = client.UploadFrom(url, data, *offset, 512 * 1024);
  REQUIRE(done);
  CHECK(*done == data.size());
  CHECK(ReadBytes(f.store / UploadId(url)) == data);
}

TEST_CASE("tus: an unknown upload URL is kNotFound", "[transport][tus][integration]") {
  TusFixture f;
  HttpClient http(f.Options());
  tus::Client client(http, f.server.endpoint);
  const std::string unknown = f.server.endpoint + "0123456789abcdef0123456789abcdef";
  auto offset = client.QueryOffset(unknown);
  REQUIRE_FALSE(offset);
  CHECK(offset.error().kind() == ErrorKind::kNotFound);
  CHECK_THAT(offset.error().message(), Catch::Contains("create it again") && Catch::Contains(unknown));

  const std::vector<std::uint8_t> bytes(10, 1);
  auto patched = client.Patch(unknown, 0, bytes);
  REQUIRE_FALSE(patched);
  CHECK(patched.error().kind() == ErrorKind::kNotFound);
}

TEST_CASE("tus: a PATCH at the wrong offset is the 409 protocol error", "[transport][tus][integration]") {
  TusFixture f;
  HttpClient http(f.Options());
  tus::Client client(http, f.server.endpoint);
  const auto data = RandomBytes(1000, 3);
  auto url = client.Create(data.size(), {});
  REQUIRE(url);
  auto patched = client.Patch(*url, 10, std::span(data).subspan(10));
  REQUIRE_FALSE(patched);
  CHECK(patched.error().kind() == ErrorKind::kProtocol);
  CHECK_THAT(patched.error().message(), Catch::Contains("409") && Catch::Contains("Upload-Offset 10") &&
                                            Catch::Contains("HEAD"));
  // Nothing was stored, and the upload still completes from the server's offset.
  auto offset = client.QueryOffset(*url);
  REQUIRE(offset);
  CHECK(*offset == 0);
  auto done = client.UploadFrom(*url, data, *offset, 400);
  REQUIRE(done);
  CHECK(ReadBytes(f.store / UploadId(*url)) == data);
}

TEST_CASE("http: GET, upload progress, lower-cased headers and the response size cap",
          "[transport][http][integration]") {
  TusFixture f;
  HttpClient http(f.Options());
  tus::Client client(http, f.server.endpoint);
  const auto data = RandomBytes(300 * 1024, 4);
  auto url = client.Create(data.size(), {});
  REQUIRE(url);

  // A raw PATCH reports upload progress up to the whole body.
  HttpRequest patch;
  patch.method = "PATCH";
  patch.url = *url;
  patch.headers = {{"Tus-Resumable", "1.0.0"}, {"Upload-Offset", "0"},
                   {"Content-Type", "application/offset+octet-stream"}};
  patch.body = data;
  std::uint64_t last_progress = 0;
  patch.on_upload_progress = [&](std::uint64_t sent) { last_progress = sent; };
  auto patched = http.Perform(patch);
  REQUIRE(patched);
  CHECK(patched->status == 204);
  CHECK(last_progress == data.size());
  CHECK(patched->Header("UPLOAD-OFFSET") == std::to_string(data.size()));
  CHECK(std::any_of(patched->headers.begin(), patched->headers.end(),
                    [](const auto& h) { return h.first == "tus-resumable"; }));

  // The server serves a finished upload on GET: the same bytes come back.
  HttpRequest get;
  get.url = *url;
  auto got = http.Perform(get);
  REQUIRE(got);
  CHECK(got->status == 200);
  CHECK(got->body == std::string(data.begin(), data.end()));

  auto capped = http.Perform(get, 1000);
  REQUIRE_FALSE(capped);
  CHECK_THAT(capped.error().message(), Catch::Contains("exceeds the limit of 1000 bytes"));
}
