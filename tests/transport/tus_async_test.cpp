// tus::AsyncClient (the tus client on AsyncHttp) against the real @tus/server over HTTPS on
// loopback, and against the in-process fake for what the real server cannot produce (checksum,
// 460, 409). Every request runs on one io_context thread; the answers are read by the same
// tus::Protocol as the blocking Client, so the same situation gives the same error, class and
// label through both (checked side by side).
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/process.hpp"
#include "tests/transport/fake_tus_server.hpp"
#include "tests/transport/shared_pki.hpp"
#include "tests/transport/test_http.hpp"
#include "transport/http.hpp"
#include "transport/http_async.hpp"
#include "transport/tus.hpp"
#include "transport/tus_async.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::Expected;
using ctagent::Status;
using ctagent::transport::AsyncHttp;
using ctagent::transport::FailureClass;
using ctagent::transport::FileBody;
using ctagent::transport::HttpOptions;
namespace tus = ctagent::transport::tus;
namespace fs = std::filesystem;

using ctagent::test::RunUntil;

// A completion's result, failure and thread, recorded for the test to read.
template <typename T>
struct Got {
  std::optional<Expected<T>> result;
  tus::Failure failure;
  std::thread::id thread;
  bool done() const { return result.has_value(); }
  tus::AsyncDone<T> Record() {
    return [this](Expected<T> r, tus::Failure f) {
      result = std::move(r);
      failure = std::move(f);
      thread = std::this_thread::get_id();
    };
  }
};

std::vector<std::uint8_t> ReadBytes(const fs::path& path) {
  const std::string text = ctagent::test::ReadText(path);
  return {text.begin(), text.end()};
}

void WriteFile(const fs::path& path, const std::string& prefix, const std::vector<std::uint8_t>& data) {
  std::ofstream out(path, std::ios::binary);
  out << prefix;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  out << "trailing bytes that are not part of the upload";
}

std::string UploadId(const std::string& url) { return url.substr(url.rfind('/') + 1); }

struct TusFixture {
  ctagent::test::TempDir dir{"transport-tus-async"};
  fs::path pki = ctagent::test::SharedTransportPki();
  fs::path store = dir.path() / "store";
  ctagent::test::TusServer server = ctagent::test::StartTusServer(pki, store, dir.path() / "tus-server.log");
  boost::asio::io_context io;

  HttpOptions Options() const {
    return ctagent::test::TestHttpOptions(pki / "ca.pem");
  }
};

const tus::Metadata kMetadata = {{"kind", "chunk"}, {"filename", "chunk-0.ctc"}};

}  // namespace

TEST_CASE("tus async: discovery, creation and a multi-PATCH upload from a file range on the loop thread arrive "
          "bit-exact",
          "[transport][tus][async][integration]") {
  TusFixture f;
  AsyncHttp http(f.io, f.Options());
  tus::AsyncClient client(f.io, http, f.server.endpoint);

  Got<tus::ServerCapabilities> discovered;
  client.Discover(discovered.Record());
  REQUIRE(RunUntil(f.io, [&] { return discovered.done(); }));
  REQUIRE(*discovered.result);
  CHECK(discovered.failure.failure == FailureClass::kNone);
  CHECK(discovered.thread == std::this_thread::get_id());
  CHECK((*discovered.result)->Has("creation"));
  REQUIRE(client.protocol().capabilities());  // kept for what follows

  const auto data = ctagent::test::RandomBytes(2 * 1024 * 1024 + 4321, 7);
  const fs::path file = f.dir.path() / "chunk.bin";
  WriteFile(file, std::string(777, 'p'), data);

  Got<tus::Created> created;
  client.Create(data.size(), kMetadata, created.Record());
  REQUIRE(RunUntil(f.io, [&] { return created.done(); }));
  REQUIRE(*created.result);
  const std::string url = (*created.result)->url;
  CHECK(url.starts_with(f.server.endpoint));
  CHECK((*created.result)->offset == 0);

  std::vector<std::uint64_t> progress;
  std::uint64_t body_bytes = 0;
  std::uint64_t gate_bytes = 0;
  tus::AsyncUploadOptions options;
  options.on_progress = [&](std::uint64_t offset) { progress.push_back(offset); };
  options.on_body_bytes = [&](std::uint64_t n) { body_bytes += n; };
  options.before_send = [&](std::size_t n) {
    gate_bytes += n;
    return true;
  };
  Got<std::uint64_t> uploaded;
  const std::uint64_t patch_bytes = 512 * 1024;
  client.UploadFile(url, FileBody{file, 777, data.size()}, 0, patch_bytes, options, uploaded.Record());
  REQUIRE(RunUntil(f.io, [&] { return uploaded.done(); }));
  INFO((*uploaded.result ? std::string("uploaded") : uploaded.result->error().message()));
  REQUIRE(*uploaded.result);
  CHECK(**uploaded.result == data.size());
  CHECK(uploaded.thread == std::this_thread::get_id());
  // One PATCH per 512 KiB: 5 requests, each confirmed offset reported once.
  REQUIRE(progress.size() == 5);
  CHECK(progress.front() == patch_bytes);
  CHECK(progress.back() == data.size());
  CHECK(body_bytes == data.size());
  CHECK(gate_bytes >= data.size());  // every body byte passed the gate
  CHECK(ReadBytes(f.store / UploadId(url)) == data);

  Got<tus::UploadInfo> queried;
  client.Query(url, queried.Record());
  REQUIRE(RunUntil(f.io, [&] { return queried.done(); }));
  REQUIRE(*queried.result);
  CHECK((*queried.result)->offset == data.size());
  REQUIRE((*queried.result)->length);
  CHECK(*(*queried.result)->length == data.size());

  Got<void> terminated;
  client.Terminate(url, terminated.Record());
  REQUIRE(RunUntil(f.io, [&] { return terminated.done(); }));
  CHECK(*terminated.result);
  Got<tus::UploadInfo> gone;
  client.Query(url, gone.Record());
  REQUIRE(RunUntil(f.io, [&] { return gone.done(); }));
  REQUIRE_FALSE(*gone.result);
  CHECK(gone.failure.failure == FailureClass::kUploadGone);
  CHECK(gone.result->error().failure() == FailureClass::kUploadGone);  // the error carries it too
}

TEST_CASE("tus async: a refusing gate ends the PATCH (kLinkDown, as HttpClient), and the upload resumes from the "
          "server's offset",
          "[transport][tus][async][integration]") {
  TusFixture f;
  AsyncHttp http(f.io, f.Options());
  tus::AsyncClient client(f.io, http, f.server.endpoint);
  const auto data = ctagent::test::RandomBytes(3 * 1024 * 1024, 8);
  const fs::path file = f.dir.path() / "chunk.bin";
  WriteFile(file, "", data);

  Got<tus::Created> created;
  client.Create(data.size(), kMetadata, created.Record());
  REQUIRE(RunUntil(f.io, [&] { return created.done(); }));
  REQUIRE(*created.result);
  const std::string url = (*created.result)->url;

  // The gate lets the first PATCH through, then refuses: the second PATCH ends at once.
  std::uint64_t confirmed = 0;
  tus::AsyncUploadOptions options;
  options.on_progress = [&](std::uint64_t offset) { confirmed = offset; };
  options.before_send = [&](std::size_t) { return confirmed == 0; };
  Got<std::uint64_t> stopped;
  client.UploadFile(url, FileBody{file, 0, data.size()}, 0, 1024 * 1024, options, stopped.Record());
  REQUIRE(RunUntil(f.io, [&] { return stopped.done(); }));
  REQUIRE_FALSE(*stopped.result);
  // A refused gate is a revoked lease or a stop: the link's failure class, never retried as a
  // transfer error by PatchRecovery (one PATCH through, one refused).
  CHECK(stopped.failure.failure == FailureClass::kLinkDown);
  CHECK(stopped.result->error().kind() == ErrorKind::kCancelled);
  CHECK(confirmed == 1024 * 1024);

  Got<tus::UploadInfo> queried;
  client.Query(url, queried.Record());
  REQUIRE(RunUntil(f.io, [&] { return queried.done(); }));
  REQUIRE(*queried.result);
  REQUIRE((*queried.result)->offset == confirmed);

  Got<std::uint64_t> resumed;
  client.UploadFile(url, FileBody{file, 0, data.size()}, (*queried.result)->offset, 1024 * 1024, {},
                    resumed.Record());
  REQUIRE(RunUntil(f.io, [&] { return resumed.done(); }));
  REQUIRE(*resumed.result);
  CHECK(ReadBytes(f.store / UploadId(url)) == data);

  SECTION("Cancel() ends the request in flight with kCancelled") {
    Got<tus::Created> second;
    client.Create(data.size(), kMetadata, second.Record());
    REQUIRE(RunUntil(f.io, [&] { return second.done(); }));
    REQUIRE(*second.result);
    bool first_block = false;
    tus::AsyncUploadOptions gated;
    gated.before_send = [&](std::size_t n) {
      if (n > 0) first_block = true;
      return true;
    };
    Got<std::uint64_t> cancelled;
    auto upload = client.UploadFile((*second.result)->url, FileBody{file, 0, data.size()}, 0, data.size(), gated,
                                    cancelled.Record());
    REQUIRE(RunUntil(f.io, [&] { return first_block || cancelled.done(); }));
    upload->Cancel();
    REQUIRE(RunUntil(f.io, [&] { return cancelled.done(); }));
    REQUIRE_FALSE(*cancelled.result);
    CHECK(cancelled.failure.failure == FailureClass::kCancelled);
  }
}

TEST_CASE("tus async: refusals before sending (foreign URL, metadata, Tus-Max-Size) complete on the loop with the "
          "blocking client's error, class and label",
          "[transport][tus][async][integration]") {
  TusFixture f;
  AsyncHttp http(f.io, f.Options());
  tus::AsyncClient client(f.io, http, f.server.endpoint);
  ctagent::transport::HttpClient blocking_http(f.Options());
  tus::Client blocking(blocking_http, f.server.endpoint);

  // An upload URL on another origin: no request at all, kLocal "foreign-location".
  const std::string foreign = "https://elsewhere.example:8443/files/abc";
  Got<tus::UploadInfo> async_query;
  client.Query(foreign, async_query.Record());
  CHECK_FALSE(async_query.done());  // never completed inside the call
  REQUIRE(RunUntil(f.io, [&] { return async_query.done(); }));
  const auto blocking_query = blocking.Query(foreign);
  REQUIRE_FALSE(*async_query.result);
  REQUIRE_FALSE(blocking_query);
  CHECK(async_query.result->error().message() == blocking_query.error().message());
  CHECK(async_query.failure.failure == FailureClass::kLocal);
  CHECK(async_query.failure.Label() == "foreign-location");
  CHECK(blocking.last_failure_label() == "foreign-location");

  Got<std::uint64_t> async_patch;
  client.Patch(foreign, 0, FileBody{f.dir.path() / "none", 0, 1}, {}, async_patch.Record());
  REQUIRE(RunUntil(f.io, [&] { return async_patch.done(); }));
  REQUIRE_FALSE(*async_patch.result);
  CHECK(async_patch.failure.Label() == "foreign-location");

  // Invalid metadata: refused before sending.
  Got<tus::Created> bad_metadata;
  client.Create(10, {{"has space", "x"}}, bad_metadata.Record());
  REQUIRE(RunUntil(f.io, [&] { return bad_metadata.done(); }));
  REQUIRE_FALSE(*bad_metadata.result);
  CHECK(bad_metadata.failure.failure == FailureClass::kLocal);
  CHECK_THAT(bad_metadata.result->error().message(), Catch::Contains("has space"));

  // An upload URL the server does not know: kUploadGone, same message both ways.
  const std::string unknown = f.server.endpoint + "0123456789abcdef";
  Got<tus::UploadInfo> async_unknown;
  client.Query(unknown, async_unknown.Record());
  REQUIRE(RunUntil(f.io, [&] { return async_unknown.done(); }));
  const auto blocking_unknown = blocking.Query(unknown);
  REQUIRE_FALSE(*async_unknown.result);
  REQUIRE_FALSE(blocking_unknown);
  CHECK(async_unknown.failure.failure == FailureClass::kUploadGone);
  CHECK(blocking_unknown.error().failure() == FailureClass::kUploadGone);
  CHECK(async_unknown.result->error().message() == blocking_unknown.error().message());

  // No files were made by any of this (the store holds nothing).
  CHECK((!fs::exists(f.store) || fs::is_empty(f.store)));
}

TEST_CASE("tus async: a checksum server gets Upload-Checksum over the file range: a 460 resends, a 409 resyncs by "
          "HEAD, each bounded",
          "[transport][tus][async]") {
  ctagent::test::FakeTusServer server;
  server.SetExtensions("creation,checksum,termination", "sha1,sha256");
  ctagent::test::TempDir dir("transport-tus-async-fake");
  boost::asio::io_context io;
  HttpOptions options;
  options.allow_plain_http = true;
  options.connect_timeout_s = 5;
  options.stall_timeout_s = 10;
  options.request_timeout_s = 30;
  AsyncHttp http(io, options);
  tus::AsyncClient client(io, http, server.endpoint());
  const auto data = ctagent::test::RandomBytes(300 * 1024 + 5, 9);
  const fs::path file = dir.path() / "chunk.bin";
  WriteFile(file, "xyz", data);

  Got<tus::ServerCapabilities> discovered;
  client.Discover(discovered.Record());
  REQUIRE(RunUntil(io, [&] { return discovered.done(); }));
  REQUIRE(*discovered.result);
  CHECK((*discovered.result)->ChecksumAlgorithm() == "sha256");

  Got<tus::Created> created;
  client.Create(data.size(), kMetadata, created.Record());
  REQUIRE(RunUntil(io, [&] { return created.done(); }));
  REQUIRE(*created.result);
  const std::string url = (*created.result)->url;

  // The first PATCH is answered 460 once; the second PATCH gets a 409 once (the server then
  // holds 100 KiB, which HEAD reports).
  int patches = 0;
  server.SetIntercept([&](const ctagent::test::FakeRequest& r) -> std::optional<ctagent::test::FakeResponse> {
    if (r.method != "PATCH") return std::nullopt;
    ++patches;
    if (patches == 1) return ctagent::test::FakeResponse{460, {{"Tus-Resumable", "1.0.0"}}, ""};
    if (patches == 3) return ctagent::test::FakeResponse{409, {{"Tus-Resumable", "1.0.0"}}, ""};
    return std::nullopt;
  });
  std::vector<std::uint64_t> progress;
  tus::AsyncUploadOptions upload_options;
  upload_options.on_progress = [&](std::uint64_t offset) { progress.push_back(offset); };
  Got<std::uint64_t> uploaded;
  client.UploadFile(url, FileBody{file, 3, data.size()}, 0, 100 * 1024, upload_options, uploaded.Record());
  REQUIRE(RunUntil(io, [&] { return uploaded.done(); }));
  INFO((*uploaded.result ? std::string("uploaded") : uploaded.result->error().message()));
  REQUIRE(*uploaded.result);
  CHECK(server.Data(url) == std::string(data.begin(), data.end()));
  CHECK(server.Count("HEAD") == 1);  // the 409's resync
  // 460 resent; then 100 KiB, 409 -> HEAD (100 KiB again), 200, 300 KiB, 5 bytes.
  CHECK(progress == std::vector<std::uint64_t>{100 * 1024, 100 * 1024, 200 * 1024, 300 * 1024, data.size()});
  for (const auto& r : server.Requests()) {
    if (r.method == "PATCH") CHECK(r.Header("upload-checksum").starts_with("sha256 "));
  }

  SECTION("a server that always answers 460 ends it after the bounded resends with kChecksum") {
    server.SetIntercept([&](const ctagent::test::FakeRequest& r) -> std::optional<ctagent::test::FakeResponse> {
      if (r.method != "PATCH") return std::nullopt;
      return ctagent::test::FakeResponse{460, {{"Tus-Resumable", "1.0.0"}}, ""};
    });
    Got<tus::Created> second;
    client.Create(data.size(), kMetadata, second.Record());
    REQUIRE(RunUntil(io, [&] { return second.done(); }));
    REQUIRE(*second.result);
    const std::size_t before = server.Count("PATCH");
    Got<std::uint64_t> failed;
    client.UploadFile((*second.result)->url, FileBody{file, 3, data.size()}, 0, 100 * 1024, {}, failed.Record());
    REQUIRE(RunUntil(io, [&] { return failed.done(); }));
    REQUIRE_FALSE(*failed.result);
    CHECK(failed.failure.failure == FailureClass::kChecksum);
    CHECK(failed.result->error().failure() == FailureClass::kChecksum);
    CHECK(server.Count("PATCH") - before == 1 + tus::PatchRecovery::kMaxChecksumResends);
  }
}
