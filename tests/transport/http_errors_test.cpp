// HTTP client failure modes, each against a real peer on loopback, and the retry class each error
// carries: TLS certificate problems (unknown CA, wrong host, expired, not yet valid), a name that
// does not resolve, plain http:// refused or allowed, connection refused, stall,
// a kept-alive connection closed by the server as a request goes out on it, an answer that
// trickles in (overall deadline, the caller's deadline and cancel check; issue 18).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::FailureClass;
using ctagent::transport::HttpClient;
using ctagent::transport::HttpOptions;
using ctagent::transport::HttpRequest;
namespace tus = ctagent::transport::tus;
namespace fs = std::filesystem;

// Creates an upload on a tus server that presents certificate `cert_name`; returns the error.
ctagent::Error TlsFailure(const std::string& cert_name) {
  ctagent::test::TempDir dir("transport-tls");
  const fs::path pki = ctagent::test::SharedTransportPki();
  auto server = ctagent::test::StartTusServer(pki, dir.path() / "store", dir.path() / "tus-server.log", cert_name);
  HttpOptions options;
  options.tls.ca_file = pki / "ca.pem";
  options.connect_timeout_s = 5;
  options.request_timeout_s = 30;
  HttpClient http(options);
  tus::Client client(http, server.endpoint);
  auto created = client.Create(10, {});
  REQUIRE_FALSE(created);
  // Nothing reached the store: the handshake failed before any request.
  CHECK(fs::is_empty(dir.path() / "store"));
  return created.error();
}

// A TCP listener on loopback that never accepts: the kernel completes the handshake, then
// nothing is ever sent back.
class SilentListener {
 public:
  SilentListener() : fd_(ctagent::test::ListenOnLoopback(&port_, 4)) {}
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;
  std::uint16_t port() const { return port_; }

 private:
  std::uint16_t port_ = 0;  // before fd_: set by fd_'s initializer
  int fd_ = -1;
};

// A plain-HTTP peer that answers the first request on a connection and then closes that kept-alive
// connection (RST) as soon as the next request on it starts to arrive: the race of a server's
// idle-connection timeout with a client reusing the connection. Later connections are served.
// Records the body of each request it answered.
class ClosingKeepAliveServer {
 public:
  ClosingKeepAliveServer() : fd_(ctagent::test::ListenOnLoopback(&port_, 4)) { thread_ = std::thread([this] { Serve(); }); }
  ~ClosingKeepAliveServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  ClosingKeepAliveServer(const ClosingKeepAliveServer&) = delete;
  ClosingKeepAliveServer& operator=(const ClosingKeepAliveServer&) = delete;
  std::uint16_t port() const { return port_; }
  int connections() const { return connections_; }
  // Bodies answered, in order ("" for a request without one).
  std::vector<std::string> bodies() {
    std::lock_guard lock(mutex_);
    return bodies_;
  }

 private:
  // Waits (bounded by the stop flag) until `fd` is readable; false when stopping.
  bool WaitReadable(int fd) {
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 100) > 0) return true;
    }
    return false;
  }
  // Reads one request (headers, then Content-Length bytes of body); false on EOF or stop.
  bool ReadRequest(int fd, std::string* body) {
    std::string data;
    std::vector<char> buf(65536);
    std::size_t header_end = std::string::npos;
    while (header_end == std::string::npos) {
      if (!WaitReadable(fd)) return false;
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n <= 0) return false;
      data.append(buf.data(), static_cast<std::size_t>(n));
      header_end = data.find("\r\n\r\n");
    }
    std::size_t length = 0;
    const auto at = data.find("Content-Length: ");
    if (at != std::string::npos && at < header_end) length = std::stoul(data.substr(at + 16));
    *body = data.substr(header_end + 4);
    while (body->size() < length) {
      if (!WaitReadable(fd)) return false;
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n <= 0) return false;
      body->append(buf.data(), static_cast<std::size_t>(n));
    }
    return true;
  }
  void Serve() {
    while (!stop_) {
      if (!WaitReadable(fd_)) return;
      const int conn = ::accept(fd_, nullptr, nullptr);
      if (conn < 0) continue;
      const bool first = ++connections_ == 1;
      std::string body;
      // Bounded: at most two requests per connection in this test.
      for (int request = 0; request < 2 && ReadRequest(conn, &body); ++request) {
        {
          std::lock_guard lock(mutex_);
          bodies_.push_back(body);
        }
        const std::string answer = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
        if (::send(conn, answer.data(), answer.size(), MSG_NOSIGNAL) < 0) break;
        if (first && WaitReadable(conn)) {
          // The next request is arriving on the kept-alive connection: drop it, with a reset.
          linger reset{1, 0};
          ::setsockopt(conn, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
          break;
        }
      }
      ::close(conn);
    }
  }

  std::uint16_t port_ = 0;  // before fd_: set by fd_'s initializer
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::mutex mutex_;
  std::vector<std::string> bodies_;
  std::thread thread_;
};

// A plain-HTTP peer that reads each request and then trickles its answer: the status line and
// headers at once, then a 1,000,000-byte body one byte every `interval`, so bytes keep moving
// (no stall) and the answer never ends in a test's lifetime. One connection at a time.
class TricklingServer {
 public:
  explicit TricklingServer(std::chrono::milliseconds interval)
      : interval_(interval), fd_(ctagent::test::ListenOnLoopback(&port_, 4)) {
    thread_ = std::thread([this] { Serve(); });
  }
  ~TricklingServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  TricklingServer(const TricklingServer&) = delete;
  TricklingServer& operator=(const TricklingServer&) = delete;
  std::uint16_t port() const { return port_; }
  int body_bytes_sent() const { return sent_; }

 private:
  bool WaitReadable(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, timeout_ms) > 0;
  }
  void Serve() {
    while (!stop_) {
      if (!WaitReadable(fd_, 100)) continue;
      const int conn = ::accept(fd_, nullptr, nullptr);
      if (conn < 0) continue;
      std::string request;
      char buf[4096];
      // The request's headers (the tests send small bodies that come with them).
      while (!stop_ && request.find("\r\n\r\n") == std::string::npos) {
        if (!WaitReadable(conn, 100)) continue;
        const ssize_t n = ::recv(conn, buf, sizeof buf, 0);
        if (n <= 0) break;
        request.append(buf, static_cast<std::size_t>(n));
      }
      const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
      bool open = ::send(conn, head.data(), head.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(head.size());
      // Bounded by stop_ and by the client closing the connection.
      while (open && !stop_) {
        std::this_thread::sleep_for(interval_);
        open = ::send(conn, "x", 1, MSG_NOSIGNAL) == 1;
        if (open) ++sent_;
      }
      ::close(conn);
    }
  }

  std::chrono::milliseconds interval_;
  std::uint16_t port_ = 0;  // before fd_: set by fd_'s initializer
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> sent_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("http: a request whose kept-alive connection the server closed as it went out is sent again on a new one",
          "[transport][http][integration]") {
  ClosingKeepAliveServer server;
  HttpOptions options;
  options.allow_plain_http = true;
  options.connect_timeout_s = 5;
  options.request_timeout_s = 60;
  HttpClient http(options);
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) + "/files/x";
  HttpRequest first;
  first.method = "OPTIONS";
  first.url = url;
  REQUIRE(http.Perform(first));
  // A body far larger than the sockets' buffers, so the reset meets the send of the body.
  std::string payload(32u << 20, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>((i * 2654435761u) >> 13);
  HttpRequest patch;
  patch.method = "PATCH";
  patch.url = url;
  patch.body = std::span(reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size());
  auto answer = http.Perform(patch);
  INFO((answer ? std::string("answered") : answer.error().message()));
  REQUIRE(answer);
  CHECK(answer->status == 204);
  // Sent again on a second connection, where the whole body arrived, once.
  CHECK(server.connections() == 2);
  const auto bodies = server.bodies();
  REQUIRE(bodies.size() == 2);
  CHECK(bodies[0].empty());
  CHECK(bodies[1] == payload);
}

TEST_CASE("TLS: a server certificate from an unknown CA is kTls naming the CA", "[transport][tls][integration]") {
  const auto error = TlsFailure("other-ca-server");
  CHECK(error.kind() == ErrorKind::kTls);
  // The error carries its retry class: a person must act, no retry.
  CHECK(error.failure() == FailureClass::kTlsRejected);
  CHECK_FALSE(error.IsTransient());
  CHECK_THAT(error.message(), Catch::Contains("not signed by a trusted CA") && Catch::Contains("ca.pem"));
}

TEST_CASE("TLS: a certificate for another host is kTls naming the host mismatch", "[transport][tls][integration]") {
  const auto error = TlsFailure("wrong-host");
  CHECK(error.kind() == ErrorKind::kTls);
  CHECK(error.failure() == FailureClass::kTlsRejected);
  CHECK_FALSE(error.IsTransient());
  CHECK_THAT(error.message(), Catch::Contains("host name mismatch"));
  CHECK_THAT(error.message(), !Catch::Contains("expired") && !Catch::Contains("trusted CA"));
}

TEST_CASE("TLS: an expired server certificate is kTls saying it expired", "[transport][tls][integration]") {
  const auto error = TlsFailure("expired");
  CHECK(error.kind() == ErrorKind::kTls);
  CHECK(error.failure() == FailureClass::kTlsRejected);
  CHECK_FALSE(error.IsTransient());
  CHECK_THAT(error.message(), Catch::Contains("has expired"));
  CHECK_THAT(error.message(), !Catch::Contains("host name mismatch") && !Catch::Contains("trusted CA"));
}

TEST_CASE("TLS: a server certificate not yet valid is clock skew, retried, saying to check the clock",
          "[transport][tls][integration]") {
  // A certificate valid from 2099 is what a terminal whose clock is far behind sees.
  const auto error = TlsFailure("not-yet-valid");
  CHECK(error.kind() == ErrorKind::kTls);
  CHECK(error.failure() == FailureClass::kClockSkew);
  CHECK(error.IsTransient());  // NTP or the operator may correct the clock: the same policy retries it
  CHECK_THAT(error.message(), Catch::Contains("not yet valid") && Catch::Contains("clock"));
}

TEST_CASE("http: a host name that does not resolve is the dns class, retried", "[transport][http][integration]") {
  HttpOptions options;
  options.connect_timeout_s = 5;
  options.request_timeout_s = 30;
  HttpClient http(options);
  HttpRequest request;
  request.url = "https://no-such-host.invalid/files/";  // .invalid never resolves (RFC 6761)
  auto response = http.Perform(request);
  REQUIRE_FALSE(response);
  INFO(response.error().message());
  CHECK(response.error().kind() == ErrorKind::kNetwork);
  CHECK(response.error().failure() == FailureClass::kDns);
  CHECK(response.error().IsTransient());
}

TEST_CASE("TLS: a CA file that does not exist is named in the error", "[transport][tls][integration]") {
  ctagent::test::TempDir dir("transport-tls");
  const fs::path pki = ctagent::test::SharedTransportPki();
  auto server = ctagent::test::StartTusServer(pki, dir.path() / "store", dir.path() / "tus-server.log");
  HttpOptions options;
  options.tls.ca_file = dir.path() / "no-such-ca.pem";
  HttpClient http(options);
  HttpRequest request;
  request.url = server.endpoint;
  auto response = http.Perform(request);
  REQUIRE_FALSE(response);
  CHECK((response.error().kind() == ErrorKind::kInvalidInput || response.error().kind() == ErrorKind::kTls));
  CHECK_THAT(response.error().message(), Catch::Contains("no-such-ca.pem"));
}

TEST_CASE("http: plain http:// URLs are refused unless allowed", "[transport][http][integration]") {
  HttpClient strict({});
  tus::Client refused(strict, "http://127.0.0.1:9/files/");
  auto error = refused.Create(10, {});
  REQUIRE_FALSE(error);
  CHECK(error.error().kind() == ErrorKind::kInvalidInput);
  CHECK(error.error().failure() == FailureClass::kLocal);
  CHECK_FALSE(error.error().IsTransient());
  CHECK_THAT(error.error().message(), Catch::Contains("development-only") && Catch::Contains("http://127.0.0.1:9/files/"));

  HttpRequest ftp;
  ftp.url = "ftp://127.0.0.1/x";
  auto unsupported = strict.Perform(ftp);
  REQUIRE_FALSE(unsupported);
  CHECK(unsupported.error().kind() == ErrorKind::kInvalidInput);

  // With the development flag, an upload over plain HTTP works end to end.
  ctagent::test::TempDir dir("transport-plain");
  const auto port = ctagent::test::FreeLoopbackPort();
  const fs::path store = dir.path() / "store";
  ctagent::test::ChildProcess server({"node", std::string(CTAGENT_SOURCE_DIR) + "/cloud/tus-server/server.mjs",
                                      "--port", std::to_string(port), "--dir", store.string(),
                                      "--plain-http-for-tests"},
                                     dir.path() / "tus-server.log");
  REQUIRE(ctagent::test::WaitFor([&] { return ctagent::test::PortAcceptsConnections(port); }, std::chrono::seconds(20)));
  HttpOptions options;
  options.allow_plain_http = true;
  options.request_timeout_s = 30;
  HttpClient http(options);
  tus::Client client(http, "http://127.0.0.1:" + std::to_string(port) + "/files/");
  const std::string text = "plain bytes for a development setup";
  const std::vector<std::uint8_t> data(text.begin(), text.end());
  auto url = client.Create(data.size(), {});
  REQUIRE(url);
  auto done = client.UploadFrom(*url, data, 0, 8);
  REQUIRE(done);
  CHECK(ctagent::test::ReadText(store / url->substr(url->rfind('/') + 1)) == text);
}

TEST_CASE("http: connection refused is kNetwork", "[transport][http][integration]") {
  const auto port = ctagent::test::FreeLoopbackPort();  // nothing listens there
  HttpOptions options;
  options.connect_timeout_s = 5;
  HttpClient http(options);
  HttpRequest request;
  request.url = "https://127.0.0.1:" + std::to_string(port) + "/files/";
  auto response = http.Perform(request);
  REQUIRE_FALSE(response);
  CHECK(response.error().kind() == ErrorKind::kNetwork);
  CHECK(response.error().failure() == FailureClass::kConnect);
  CHECK(response.error().IsTransient());
  CHECK_THAT(response.error().message(), Catch::Contains("cannot connect") && Catch::Contains(request.url));
}

TEST_CASE("http: a peer that stops answering is reported as stalled", "[transport][http][integration]") {
  SilentListener silent;
  HttpOptions options;
  options.allow_plain_http = true;  // plain HTTP so the stall happens after the request is sent
  options.stall_timeout_s = 1;
  options.request_timeout_s = 20;
  HttpClient http(options);
  HttpRequest request;
  request.url = "http://user:secret@127.0.0.1:" + std::to_string(silent.port()) + "/files/";
  const auto started = std::chrono::steady_clock::now();
  auto response = http.Perform(request);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(response);
  CHECK(response.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(response.error().message(), Catch::Contains("stalled: no progress for 1 s"));
  CHECK_THAT(response.error().message(), !Catch::Contains("secret"));  // credentials never in messages
  CHECK(elapsed < std::chrono::seconds(10));
}

TEST_CASE("http: every method is bounded by the stall timeout (HEAD, OPTIONS, DELETE, PATCH)",
          "[transport][http][integration]") {
  SilentListener silent;
  HttpOptions options;
  options.allow_plain_http = true;
  options.stall_timeout_s = 1;
  options.request_timeout_s = 20;
  HttpClient http(options);
  const std::vector<std::uint8_t> body(100, 7);
  for (const std::string method : {"HEAD", "OPTIONS", "DELETE", "PATCH"}) {
    INFO(method);
    HttpRequest request;
    request.method = method;
    request.url = "http://127.0.0.1:" + std::to_string(silent.port()) + "/files/x";
    if (method == "PATCH") request.body = body;
    const auto started = std::chrono::steady_clock::now();
    auto response = http.Perform(request);
    REQUIRE_FALSE(response);
    CHECK(response.error().failure() == ctagent::transport::FailureClass::kStall);
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(10));
  }
}

TEST_CASE("http: an answer that trickles in ends at the request's size-derived deadline with kTimeout",
          "[transport][http][integration][deadline]") {
  TricklingServer server(std::chrono::milliseconds(200));
  HttpOptions options;
  options.allow_plain_http = true;
  options.connect_timeout_s = 1;
  options.stall_timeout_s = 1;              // a byte every 0.2 s is never a stall
  options.floor_rate_bits_per_s = 8000;     // 1000 bytes of response cap at 8000 bit/s: 1 s
  HttpClient http(options);
  HttpRequest request;
  request.url = "http://user:secret@127.0.0.1:" + std::to_string(server.port()) + "/qido?study=1";
  const auto started = std::chrono::steady_clock::now();
  auto response = http.Perform(request, 1000);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(response);
  CHECK(response.error().failure() == ctagent::transport::FailureClass::kTimeout);
  CHECK(response.error().kind() == ErrorKind::kNetwork);  // transient: retried, the data stays spooled
  const std::string message = response.error().message();
  INFO(message);
  // Names the URL (credentials redacted), the deadline and how it was derived.
  CHECK_THAT(message, Catch::Contains("127.0.0.1:" + std::to_string(server.port()) + "/qido"));
  CHECK_THAT(message, !Catch::Contains("secret"));
  CHECK_THAT(message, Catch::Contains("deadline: 3.0 s = connect_timeout_s 1 s + stall_timeout_s 1 s + 0 body bytes "
                                      "and a 1000-byte response cap at floor_rate_bits_per_s 8000 (1.0 s)"));
  // It was the deadline, not a stall and not the end of the answer: bytes kept coming.
  CHECK(server.body_bytes_sent() >= 5);
  CHECK(elapsed >= std::chrono::milliseconds(2900));
  CHECK(elapsed < std::chrono::seconds(20));  // generous bound: the request did end
}

TEST_CASE("http: the request body counts in the deadline, and without a floor rate only the stall check is left",
          "[transport][http][integration][deadline]") {
  TricklingServer server(std::chrono::milliseconds(200));
  HttpOptions options;
  options.allow_plain_http = true;
  options.connect_timeout_s = 1;
  options.stall_timeout_s = 1;
  options.floor_rate_bits_per_s = 8000;
  const std::vector<std::uint8_t> body(1000, 7);  // 1000 bytes + 1000-byte cap at 8000 bit/s: 2 s
  HttpClient http(options);
  HttpRequest request;
  request.method = "PATCH";
  request.url = "http://127.0.0.1:" + std::to_string(server.port()) + "/files/x";
  request.body = body;
  auto response = http.Perform(request, 1000);
  REQUIRE_FALSE(response);
  CHECK(response.error().failure() == ctagent::transport::FailureClass::kTimeout);
  CHECK_THAT(response.error().message(), Catch::Contains("deadline: 4.0 s = ") && Catch::Contains("1000 body bytes"));
}

TEST_CASE("http: a caller's deadline ends a trickling request before the size-derived one",
          "[transport][http][integration][deadline]") {
  TricklingServer server(std::chrono::milliseconds(200));
  HttpOptions options;
  options.allow_plain_http = true;
  options.stall_timeout_s = 1;
  HttpClient http(options);  // default floor rate: a 256 MiB cap gives a deadline of over half an hour
  HttpRequest request;
  request.url = "http://127.0.0.1:" + std::to_string(server.port()) + "/studies";
  const auto started = std::chrono::steady_clock::now();
  request.deadline = started + std::chrono::milliseconds(1500);
  auto response = http.Perform(request);
  const auto elapsed = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(response);
  CHECK(response.error().failure() == ctagent::transport::FailureClass::kTimeout);
  CHECK_THAT(response.error().message(), Catch::Contains("the caller's deadline, 1.5 s after it started"));
  CHECK(elapsed < std::chrono::seconds(20));

  // A deadline already past fails at once, before any byte is sent.
  request.deadline = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  auto late = http.Perform(request);
  REQUIRE_FALSE(late);
  CHECK(late.error().failure() == ctagent::transport::FailureClass::kTimeout);
}

TEST_CASE("http: a cancel check ends a trickling request with kCancelled", "[transport][http][integration][deadline]") {
  TricklingServer server(std::chrono::milliseconds(200));
  HttpOptions options;
  options.allow_plain_http = true;
  options.stall_timeout_s = 30;
  HttpClient http(options);
  std::atomic<bool> stop{false};
  HttpRequest request;
  request.url = "http://127.0.0.1:" + std::to_string(server.port()) + "/files/";
  request.cancel = [&stop] { return stop.load(); };
  std::thread stopper([&] {
    // Bounded: stops the request once it has received a few trickled bytes.
    ctagent::test::WaitFor([&] { return server.body_bytes_sent() >= 3; }, std::chrono::seconds(20));
    stop = true;
  });
  auto response = http.Perform(request);
  stopper.join();
  REQUIRE_FALSE(response);
  CHECK(response.error().failure() == ctagent::transport::FailureClass::kCancelled);
  CHECK(response.error().kind() == ErrorKind::kCancelled);
  CHECK_THAT(response.error().message(), Catch::Contains("cancelled: the agent is stopping"));
  // Ended by the check, not by the answer: the server was still trickling.
  CHECK(server.body_bytes_sent() < 1000);
}
