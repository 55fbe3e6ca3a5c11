// AsyncHttp (libcurl multi on the event loop) against real peers on loopback: the reference tus
// server (many uploads in flight at once on one thread, bodies from memory and from a file), the
// fault proxy (a reset mid-body), the hostile server (an answer that trickles past the caller's
// deadline), a listener that never answers (stall, cancel), and TLS failures (unknown CA,
// expired certificate, pin mismatch) with the same classes and messages as HttpClient.
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/links/proxy_support.hpp"
#include "tests/support/hostile_server.hpp"
#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "tests/transport/test_http.hpp"
#include "transport/http.hpp"
#include "transport/http_async.hpp"
#include "transport/tus.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::Expected;
using ctagent::transport::AsyncHttp;
using ctagent::transport::AsyncHttpLimits;
using ctagent::transport::AsyncRequest;
using ctagent::transport::FailureClass;
using ctagent::transport::FileBody;
using ctagent::transport::HttpOptions;
using ctagent::transport::HttpResponse;
namespace fs = std::filesystem;

using ctagent::test::RandomBytes;

using ctagent::test::RunUntil;

struct Outcome {
  std::optional<Expected<HttpResponse>> result;
  FailureClass failure = FailureClass::kNone;
  std::thread::id thread;
  bool done() const { return result.has_value(); }
};

// A completion that records into *out.
ctagent::transport::AsyncCompletion Record(Outcome* out) {
  return [out](Expected<HttpResponse> result) {
    // The class the error carries (the one failure model): no side channel.
    out->failure = result ? FailureClass::kNone : result.error().failure();
    out->result = std::move(result);
    out->thread = std::this_thread::get_id();
  };
}

std::string UploadId(const std::string& url) { return url.substr(url.rfind('/') + 1); }

std::vector<std::uint8_t> ReadBytes(const fs::path& path) {
  const std::string text = ctagent::test::ReadText(path);
  return {text.begin(), text.end()};
}

struct TusFixture {
  ctagent::test::TempDir dir{"transport-async"};
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

AsyncRequest Creation(const std::string& endpoint, std::uint64_t length) {
  AsyncRequest r;
  r.request.method = "POST";
  r.request.url = endpoint;
  r.request.headers = {{"Tus-Resumable", "1.0.0"}, {"Upload-Length", std::to_string(length)}};
  r.max_response_bytes = 64 << 10;
  return r;
}

AsyncRequest Patch(const std::string& url, std::uint64_t offset) {
  AsyncRequest r;
  r.request.method = "PATCH";
  r.request.url = url;
  r.request.headers = {{"Tus-Resumable", "1.0.0"},
                       {"Upload-Offset", std::to_string(offset)},
                       {"Content-Type", "application/offset+octet-stream"}};
  r.max_response_bytes = 64 << 10;
  return r;
}

// A TCP listener on loopback that never accepts: connections complete in the kernel, then
// nothing is ever sent back.
class SilentListener {
 public:
  SilentListener() : fd_(ctagent::test::ListenOnLoopback(&port_, 16)) {}
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/files/"; }

 private:
  std::uint16_t port_ = 0;  // before fd_: set by fd_'s initializer
  int fd_ = -1;
};

HttpOptions PlainOptions(std::uint32_t stall_s) {
  HttpOptions options;
  options.allow_plain_http = true;
  options.connect_timeout_s = 5;
  options.stall_timeout_s = stall_s;
  options.request_timeout_s = 60;
  return options;
}

}  // namespace

TEST_CASE("async http: 24 tus uploads in flight at once on one thread, over at most 8 connections, arrive bit-exact",
          "[transport][async][integration]") {
  TusFixture f;
  boost::asio::io_context io;
  AsyncHttpLimits limits;
  limits.max_host_connections = 8;
  AsyncHttp http(io, f.Options(), limits);

  constexpr int kUploads = 24;
  struct Upload {
    std::shared_ptr<const std::vector<std::uint8_t>> data;
    std::string url;
    long patch_status = 0;
    std::thread::id thread;
    std::string error;
  };
  std::vector<Upload> uploads(kUploads);
  int finished = 0;
  std::size_t most_in_flight = 0;
  for (int i = 0; i < kUploads; ++i) {
    uploads[static_cast<std::size_t>(i)].data = std::make_shared<const std::vector<std::uint8_t>>(
        RandomBytes(256 * 1024 + static_cast<std::size_t>(i) * 4099, static_cast<std::uint64_t>(i) + 7));
  }
  for (int i = 0; i < kUploads; ++i) {
    Upload& upload = uploads[static_cast<std::size_t>(i)];
    http.Start(Creation(f.server.endpoint, upload.data->size()),
               [&, i](Expected<HttpResponse> created) {
                 Upload& u = uploads[static_cast<std::size_t>(i)];
                 if (!created || created->status != 201) {
                   u.error = created ? "creation answered " + std::to_string(created->status) : created.error().message();
                   ++finished;
                   return;
                 }
                 u.url = ctagent::transport::ResolveUrl(f.server.endpoint, created->Header("location"));
                 AsyncRequest patch = Patch(u.url, 0);
                 patch.request.body = *u.data;
                 patch.keep_alive = u.data;
                 http.Start(std::move(patch), [&, i](Expected<HttpResponse> answer) {
                   Upload& v = uploads[static_cast<std::size_t>(i)];
                   v.thread = std::this_thread::get_id();
                   if (answer) v.patch_status = answer->status;
                   else v.error = answer.error().message();
                   ++finished;
                 });
                 most_in_flight = std::max(most_in_flight, http.in_flight());
               });
    most_in_flight = std::max(most_in_flight, http.in_flight());
  }
  REQUIRE(RunUntil(io, [&] { return finished == kUploads; }));
  CHECK(http.in_flight() == 0);
  CHECK(most_in_flight >= kUploads / 2);  // really concurrent, not one after another
  CHECK(http.connections_opened() >= 1);
  CHECK(http.connections_opened() <= 8);  // the limit held, and connections were reused
  for (const Upload& u : uploads) {
    INFO(u.error);
    REQUIRE(u.patch_status == 204);
    CHECK(u.thread == std::this_thread::get_id());  // every completion on the loop's one thread
    CHECK(ReadBytes(f.store / UploadId(u.url)) == *u.data);
  }
}

TEST_CASE("async http: a PATCH body streamed from a byte range of a file arrives bit-exact",
          "[transport][async][integration]") {
  TusFixture f;
  boost::asio::io_context io;
  AsyncHttp http(io, f.Options());
  const auto data = RandomBytes(3 * 1024 * 1024 + 333, 11);
  const fs::path file = f.dir.path() / "body.bin";
  {
    std::ofstream out(file, std::ios::binary);
    const std::string prefix(1000, 'p');
    out << prefix;
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    out << "trailing bytes not part of the body";
  }
  Outcome created;
  http.Start(Creation(f.server.endpoint, data.size()), Record(&created));
  REQUIRE(RunUntil(io, [&] { return created.done(); }));
  REQUIRE(*created.result);
  REQUIRE((*created.result)->status == 201);
  const std::string url = ctagent::transport::ResolveUrl(f.server.endpoint, (*created.result)->Header("location"));

  AsyncRequest patch = Patch(url, 0);
  patch.file_body = FileBody{file, 1000, data.size()};
  std::uint64_t progress = 0;
  patch.request.on_upload_progress = [&](std::uint64_t sent) { progress = sent; };
  Outcome patched;
  http.Start(std::move(patch), Record(&patched));
  REQUIRE(RunUntil(io, [&] { return patched.done(); }));
  INFO((*patched.result ? std::string("answered") : patched.result->error().message()));
  REQUIRE(*patched.result);
  CHECK((*patched.result)->status == 204);
  CHECK((*patched.result)->Header("upload-offset") == std::to_string(data.size()));
  CHECK(progress == data.size());
  CHECK(ReadBytes(f.store / UploadId(url)) == data);

  SECTION("a body file that does not exist is a local error naming it, and nothing is sent") {
    AsyncRequest missing = Patch(url, 0);
    missing.file_body = FileBody{f.dir.path() / "no-such-file", 0, 10};
    Outcome out;
    http.Start(std::move(missing), Record(&out));
    REQUIRE(RunUntil(io, [&] { return out.done(); }));
    REQUIRE_FALSE(*out.result);
    CHECK(out.failure == FailureClass::kLocal);
    CHECK_THAT(out.result->error().message(), Catch::Contains("no-such-file"));
  }
}

TEST_CASE("async http: a paced body is held by timers, not waits: the loop runs meanwhile, a hold longer than the "
          "stall timeout is no stall, and the body arrives bit-exact",
          "[transport][async][pace][integration]") {
  TusFixture f;
  boost::asio::io_context io;
  HttpOptions options = f.Options();
  options.stall_timeout_s = 1;
  options.upload_buffer_bytes = 64 * 1024;  // blocks of at most 64 KiB: several holds per body
  AsyncHttp http(io, options);
  const auto data = RandomBytes(512 * 1024 + 77, 21);
  Outcome created;
  http.Start(Creation(f.server.endpoint, data.size()), Record(&created));
  REQUIRE(RunUntil(io, [&] { return created.done(); }));
  REQUIRE(*created.result);
  REQUIRE((*created.result)->status == 201);
  const std::string url = ctagent::transport::ResolveUrl(f.server.endpoint, (*created.result)->Header("location"));

  // The pacer holds the 2nd block 300 ms and the 4th 1500 ms (longer than the 1 s stall
  // timeout); a 20 ms timer on the same loop counts its ticks while the 4th block is held.
  int blocks = 0;
  std::uint64_t booked = 0;
  bool holding = false;
  int ticks_while_holding = 0;
  std::thread::id pace_thread;
  AsyncRequest patch = Patch(url, 0);
  patch.request.body = data;
  patch.pace = [&](std::size_t n) -> std::chrono::nanoseconds {
    pace_thread = std::this_thread::get_id();
    holding = false;
    ++blocks;
    booked += n;
    if (blocks == 2) return std::chrono::milliseconds(300);
    if (blocks == 4) {
      holding = true;
      return std::chrono::milliseconds(1500);
    }
    return std::chrono::nanoseconds(0);
  };
  Outcome patched;
  http.Start(std::move(patch), Record(&patched));
  boost::asio::steady_timer ticker(io);
  std::function<void(const boost::system::error_code&)> tick = [&](const boost::system::error_code& ec) {
    if (ec || patched.done()) return;
    if (holding) ++ticks_while_holding;
    ticker.expires_after(std::chrono::milliseconds(20));
    ticker.async_wait(tick);
  };
  ticker.expires_after(std::chrono::milliseconds(20));
  ticker.async_wait(tick);
  REQUIRE(RunUntil(io, [&] { return patched.done(); }));
  ticker.cancel();
  INFO((*patched.result ? std::string("answered") : patched.result->error().message()));
  REQUIRE(*patched.result);
  CHECK(patched.failure == FailureClass::kNone);  // the holds were not stalls
  CHECK((*patched.result)->status == 204);
  CHECK(blocks >= 5);
  CHECK(booked == data.size());  // each block booked once: a resumed block is not asked for again
  CHECK(pace_thread == std::this_thread::get_id());
  CHECK(ticks_while_holding > 0);  // the loop ran other work while the block was held
  CHECK(ReadBytes(f.store / UploadId(url)) == data);

  SECTION("a refusing gate ends a held request (kLinkDown) without waiting for the hold") {
    Outcome second;
    http.Start(Creation(f.server.endpoint, data.size()), Record(&second));
    REQUIRE(RunUntil(io, [&] { return second.done(); }));
    REQUIRE(*second.result);
    const std::string url2 = ctagent::transport::ResolveUrl(f.server.endpoint, (*second.result)->Header("location"));
    bool held = false;
    AsyncRequest paced = Patch(url2, 0);
    paced.request.body = data;
    paced.pace = [&](std::size_t) -> std::chrono::nanoseconds {
      held = true;
      return std::chrono::seconds(120);  // longer than the loop's bound below
    };
    paced.request.before_send = [&](std::size_t) { return !held; };
    Outcome refused;
    http.Start(std::move(paced), Record(&refused));
    REQUIRE(RunUntil(io, [&] { return refused.done(); }, std::chrono::seconds(30)));
    REQUIRE_FALSE(*refused.result);
    CHECK(refused.failure == FailureClass::kLinkDown);
  }
}

TEST_CASE("async http: requests to a peer that never answers end as stalled, each with kStall",
          "[transport][async][integration]") {
  SilentListener silent;
  boost::asio::io_context io;
  AsyncHttp http(io, PlainOptions(1));
  std::vector<Outcome> outcomes(4);
  for (auto& out : outcomes) {
    AsyncRequest request;
    request.request.url = silent.url();
    http.Start(std::move(request), Record(&out));
  }
  REQUIRE(RunUntil(io, [&] { return std::all_of(outcomes.begin(), outcomes.end(), [](const Outcome& o) { return o.done(); }); },
                   std::chrono::seconds(30)));
  for (const auto& out : outcomes) {
    REQUIRE_FALSE(*out.result);
    CHECK(out.failure == FailureClass::kStall);
    CHECK(out.result->error().kind() == ErrorKind::kNetwork);
    CHECK_THAT(out.result->error().message(), Catch::Contains("stalled: no progress for 1 s"));
  }
}

TEST_CASE("async http: Cancel and the cancel hook end a request with kCancelled, and the others go on",
          "[transport][async][integration]") {
  SilentListener silent;
  TusFixture f;
  HttpOptions options = f.Options();
  options.allow_plain_http = true;
  options.stall_timeout_s = 60;  // only the cancellation can end the silent requests here
  boost::asio::io_context io;
  AsyncHttp http(io, options);

  Outcome by_id, by_hook, unrelated;
  AsyncRequest silent_request;
  silent_request.request.url = silent.url();
  const auto id = http.Start(silent_request, Record(&by_id));
  bool stop = false;
  AsyncRequest hooked = silent_request;
  hooked.request.cancel = [&stop] { return stop; };
  http.Start(std::move(hooked), Record(&by_hook));
  AsyncRequest discovery;
  discovery.request.method = "OPTIONS";
  discovery.request.url = f.server.endpoint;
  http.Start(std::move(discovery), Record(&unrelated));

  boost::asio::steady_timer later(io, std::chrono::milliseconds(300));
  later.async_wait([&](const boost::system::error_code&) {
    http.Cancel(id);
    stop = true;
  });
  REQUIRE(RunUntil(io, [&] { return by_id.done() && by_hook.done() && unrelated.done(); }, std::chrono::seconds(30)));
  REQUIRE_FALSE(*by_id.result);
  CHECK(by_id.failure == FailureClass::kCancelled);
  CHECK(by_id.result->error().kind() == ErrorKind::kCancelled);
  REQUIRE_FALSE(*by_hook.result);
  CHECK(by_hook.failure == FailureClass::kCancelled);
  REQUIRE(*unrelated.result);
  CHECK((*unrelated.result)->status == 204);
  CHECK(http.in_flight() == 0);
  http.Cancel(id);  // finished: ignored
}

TEST_CASE("async http: an answer that trickles in ends at the caller's deadline with kTimeout",
          "[transport][async][integration][deadline]") {
  auto server = ctagent::test::HostileServer::Start(nlohmann::json::array(
      {{{"method", "GET"}, {"path", "^/slow"}, {"action", {{"status", 200}, {"body", std::string(200, 'x')}, {"trickle_ms", 300}}}}}));
  HttpOptions options;
  options.tls.ca_file = server->ca_file();
  options.connect_timeout_s = 5;
  options.stall_timeout_s = 30;
  boost::asio::io_context io;
  AsyncHttp http(io, options);
  AsyncRequest request;
  request.request.url = server->origin() + "/slow";
  request.request.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  Outcome out;
  http.Start(std::move(request), Record(&out));
  REQUIRE(RunUntil(io, [&] { return out.done(); }, std::chrono::seconds(40)));
  REQUIRE_FALSE(*out.result);
  INFO(out.result->error().message());
  CHECK(out.failure == FailureClass::kTimeout);
  CHECK_THAT(out.result->error().message(), Catch::Contains("the caller's deadline"));
}

TEST_CASE("async http: TLS failures have HttpClient's classes and messages", "[transport][async][tls][integration]") {
  const auto failure_with = [](const std::string& cert_name, const std::string& pin) {
    TusFixture f(cert_name);
    HttpOptions options = f.Options();
    options.tls.pinned_public_key = pin;
    boost::asio::io_context io;
    AsyncHttp http(io, options);
    Outcome out;
    http.Start(Creation(f.server.endpoint, 10), Record(&out));
    REQUIRE(RunUntil(io, [&] { return out.done(); }, std::chrono::seconds(30)));
    REQUIRE_FALSE(*out.result);
    CHECK(fs::is_empty(f.store));  // the handshake failed before any request
    return std::make_pair(out.result->error(), out.failure);
  };
  SECTION("unknown CA") {
    const auto [error, failure] = failure_with("other-ca-server", "");
    CHECK(failure == FailureClass::kTlsRejected);
    CHECK(error.kind() == ErrorKind::kTls);
    CHECK_THAT(error.message(), Catch::Contains("not signed by a trusted CA") && Catch::Contains("ca.pem"));
  }
  SECTION("expired certificate") {
    const auto [error, failure] = failure_with("expired", "");
    CHECK(failure == FailureClass::kTlsRejected);
    CHECK_THAT(error.message(), Catch::Contains("has expired"));
  }
  SECTION("public key pin mismatch") {
    const auto [error, failure] = failure_with("server", "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    CHECK(failure == FailureClass::kTlsRejected);
    CHECK_THAT(error.message(), Catch::Contains("public key pin mismatch"));
  }
}

namespace {

// An upload of `size` bytes created through `http` at the proxy's `endpoint`; its URL.
std::string CreateUpload(boost::asio::io_context& io, AsyncHttp& http, const std::string& endpoint, std::uint64_t size) {
  Outcome created;
  http.Start(Creation(endpoint, size), Record(&created));
  REQUIRE(RunUntil(io, [&] { return created.done(); }));
  REQUIRE(*created.result);
  REQUIRE((*created.result)->status == 201);
  return ctagent::transport::ResolveUrl(endpoint, (*created.result)->Header("location"));
}

// A PATCH of all of `data` at offset 0 through `http`, cut by the proxy's reset after 1 MB.
Outcome PatchThroughReset(boost::asio::io_context& io, AsyncHttp& http, ctagent::test::FaultProxy& proxy,
                          const std::string& url, const std::shared_ptr<const std::vector<std::uint8_t>>& data) {
  proxy.Control("reset_after_bytes=1000000\n");
  AsyncRequest patch = Patch(url, 0);
  patch.request.body = *data;
  patch.keep_alive = data;
  Outcome patched;
  http.Start(std::move(patch), Record(&patched));
  REQUIRE(RunUntil(io, [&] { return patched.done(); }));
  return patched;
}

// The upload's offset on the server, asked through `http` (a new connection after a reset).
std::uint64_t ServerOffset(boost::asio::io_context& io, AsyncHttp& http, const std::string& url) {
  AsyncRequest head;
  head.request.method = "HEAD";
  head.request.url = url;
  head.request.headers = {{"Tus-Resumable", "1.0.0"}};
  Outcome queried;
  http.Start(std::move(head), Record(&queried));
  REQUIRE(RunUntil(io, [&] { return queried.done(); }));
  REQUIRE(*queried.result);
  CHECK((*queried.result)->status == 200);
  const auto offset = ctagent::transport::tus::ParseUploadOffset((*queried.result)->Header("upload-offset"));
  REQUIRE(offset);
  return *offset;
}

}  // namespace

TEST_CASE("async http: a connection reset mid-body is kConnectionLost, and the next request works on a new connection",
          "[transport][async][integration]") {
  TusFixture f;
  ctagent::test::FaultProxy proxy(f.dir.path(), "proxy", f.server.port);
  const std::string endpoint = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/";
  boost::asio::io_context io;
  const auto data = std::make_shared<const std::vector<std::uint8_t>>(RandomBytes(8 * 1024 * 1024, 3));
  std::string url;
  {
    AsyncHttp creator(io, f.Options());
    url = CreateUpload(io, creator, endpoint, data->size());
  }
  // The PATCH goes out on a connection of its own (a new engine has none to reuse): on a reused
  // connection that fails before any answer, the engine sends a request once more on a new one
  // (the next test case), which would answer this reset with the server's verdict on the re-send.
  AsyncHttp http(io, f.Options());
  const Outcome patched = PatchThroughReset(io, http, proxy, url, data);
  if (*patched.result) {
    FAIL("the PATCH got an answer through a reset: HTTP " << (*patched.result)->status << ", proxy stats "
                                                          << nlohmann::json(proxy.FreshStats()).dump() << ", proxy log:\n"
                                                          << ctagent::test::ReadText(proxy.log()));
  }
  INFO(patched.result->error().message());
  CHECK(patched.failure == FailureClass::kConnectionLost);
  CHECK(patched.result->error().kind() == ErrorKind::kNetwork);
  CHECK(proxy.FreshStats()["resets"] >= 1);

  // The server kept part of the body at most; a HEAD through the same engine says how much.
  CHECK(ServerOffset(io, http, url) < data->size());
}

TEST_CASE("async http: a reset of a reused connection mid-body is never a success, and the request goes again at most "
          "once",
          "[transport][async][integration]") {
  // On a kept-alive connection that fails before any answer, the engine (like HttpClient) sends
  // the request once more on a new connection, since that is what a server closing an idle
  // connection as it is reused looks like. Mid-body the server may already have kept part of it:
  // a tus PATCH sent again at its old offset is then refused (409), never stored twice. Which of
  // the two a reset turns into depends on whether libcurl sees it while sending or receiving.
  TusFixture f;
  ctagent::test::FaultProxy proxy(f.dir.path(), "proxy", f.server.port);
  const std::string endpoint = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/";
  boost::asio::io_context io;
  AsyncHttp http(io, f.Options());
  const auto data = std::make_shared<const std::vector<std::uint8_t>>(RandomBytes(8 * 1024 * 1024, 4));
  const std::string url = CreateUpload(io, http, endpoint, data->size());  // the connection the PATCH reuses
  const Outcome patched = PatchThroughReset(io, http, proxy, url, data);
  const auto stats = proxy.FreshStats();
  INFO("proxy stats " << nlohmann::json(stats).dump());
  CHECK(stats.at("resets") >= 1);
  CHECK(stats.at("accepted") <= 2);  // the creation's connection, and at most one for a re-send
  if (*patched.result) {
    CHECK((*patched.result)->status == 409);  // the re-sent PATCH, refused: the server kept a part
  } else {
    INFO(patched.result->error().message());
    CHECK(patched.failure == FailureClass::kConnectionLost);
  }
  const std::uint64_t offset = ServerOffset(io, http, url);
  CHECK(offset < data->size());
  if (*patched.result) CHECK(offset > 0);
}

TEST_CASE("async http: destroying the engine with requests in flight calls no completion", "[transport][async]") {
  SilentListener silent;
  boost::asio::io_context io;
  int called = 0;
  {
    AsyncHttp http(io, PlainOptions(30));
    for (int i = 0; i < 3; ++i) {
      AsyncRequest request;
      request.request.url = silent.url();
      http.Start(std::move(request), [&](Expected<HttpResponse>) { ++called; });
    }
    // Let the connections open and the requests go out.
    io.run_for(std::chrono::milliseconds(300));
    CHECK(http.in_flight() == 3);
  }
  io.restart();
  io.run_for(std::chrono::milliseconds(200));  // whatever was queued runs, and finds the engine gone
  CHECK(called == 0);
}

TEST_CASE("async http: plain http:// is refused unless allowed, through the completion", "[transport][async]") {
  boost::asio::io_context io;
  AsyncHttp http(io, HttpOptions{});
  AsyncRequest request;
  request.request.url = "http://127.0.0.1:1/files/";
  Outcome out;
  http.Start(std::move(request), Record(&out));
  CHECK_FALSE(out.done());  // never from inside Start
  REQUIRE(RunUntil(io, [&] { return out.done(); }, std::chrono::seconds(5)));
  REQUIRE_FALSE(*out.result);
  CHECK(out.failure == FailureClass::kLocal);
  CHECK(out.result->error().kind() == ErrorKind::kInvalidInput);
  CHECK_THAT(out.result->error().message(), Catch::Contains("refusing plain http://"));
}
