// HTTP client failure modes, each against a real peer on loopback: TLS certificate problems
// (unknown CA, wrong host, expired), plain http:// refused or allowed, connection refused, stall.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using ctagent::ErrorKind;
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
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 4) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;
  std::uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  std::uint16_t port_ = 0;
};

}  // namespace

TEST_CASE("TLS: a server certificate from an unknown CA is kTls naming the CA", "[transport][tls][integration]") {
  const auto error = TlsFailure("other-ca-server");
  CHECK(error.kind() == ErrorKind::kTls);
  CHECK_THAT(error.message(), Catch::Contains("not signed by a trusted CA") && Catch::Contains("ca.pem"));
}

TEST_CASE("TLS: a certificate for another host is kTls naming the host mismatch", "[transport][tls][integration]") {
  const auto error = TlsFailure("wrong-host");
  CHECK(error.kind() == ErrorKind::kTls);
  CHECK_THAT(error.message(), Catch::Contains("host name mismatch"));
  CHECK_THAT(error.message(), !Catch::Contains("expired") && !Catch::Contains("trusted CA"));
}

TEST_CASE("TLS: an expired server certificate is kTls saying it expired", "[transport][tls][integration]") {
  const auto error = TlsFailure("expired");
  CHECK(error.kind() == ErrorKind::kTls);
  CHECK_THAT(error.message(), Catch::Contains("has expired"));
  CHECK_THAT(error.message(), !Catch::Contains("host name mismatch") && !Catch::Contains("trusted CA"));
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
    CHECK(http.last_failure() == ctagent::transport::FailureClass::kStall);
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(10));
  }
}
