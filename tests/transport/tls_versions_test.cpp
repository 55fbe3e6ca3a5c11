// TLS versions: the agent's HTTP client offers TLS 1.2 and later only. A server that offers only
// TLS 1.0/1.1 (tests/support/hostile_server with tls_max "1.1") is refused before any request is
// sent, as a failure that needs a person (not retried), with a message that says why; and the same
// server offering TLS 1.2+ is used normally (issue 18).
#include <catch2/catch.hpp>

#include <string>

#include "tests/support/hostile_server.hpp"
#include "transport/http.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::test::HostileOptions;
using ctagent::test::HostileServer;
using ctagent::transport::FailureClass;
using ctagent::transport::HttpClient;
using ctagent::transport::HttpOptions;
using ctagent::transport::HttpRequest;

const nlohmann::json kRules = nlohmann::json::parse(R"([{"path": "^/files/", "action": {"status": 204, "headers": {"Tus-Resumable": "1.0.0", "Tus-Version": "1.0.0"}}}])");

HttpOptions Options(const HostileServer& server) {
  HttpOptions options;
  options.tls.ca_file = server.ca_file();
  options.connect_timeout_s = 5;
  options.request_timeout_s = 30;
  return options;
}

}  // namespace

TEST_CASE("a server offering only TLS 1.0/1.1 is refused before any request, with a message naming TLS 1.2 as the minimum", "[tls]") {
  HostileOptions old_tls;
  old_tls.tls_max = "1.1";
  auto server = HostileServer::Start(kRules, old_tls);
  HttpClient http(Options(*server));
  HttpRequest request;
  request.method = "OPTIONS";
  request.url = server->origin() + "/files/";
  auto answer = http.Perform(request);
  REQUIRE_FALSE(answer);
  const std::string message = answer.error().message();
  INFO(message);
  CHECK(answer.error().kind() == ErrorKind::kTls);
  // Needs a person (the server's TLS configuration), not a retry.
  CHECK(answer.error().failure() == FailureClass::kTlsRejected);
  // The message names the server and says what is wrong and what the server must do: its TLS
  // versions are older than 1.2, the minimum, and it must enable TLS 1.2 or 1.3 (before a9a9415
  // it said only OpenSSL's "alert protocol version" and "the server may require TLS settings
  // this terminal does not offer", which pointed the wrong way).
  CHECK(message.find(server->origin()) != std::string::npos);
  CHECK(message.find("older than TLS 1.2") != std::string::npos);
  CHECK(message.find("must enable TLS 1.2 or 1.3") != std::string::npos);
  // No request got through the handshake.
  CHECK(server->Requests().empty());
}

TEST_CASE("the same server offering TLS 1.2 and later is used normally", "[tls]") {
  auto server = HostileServer::Start(kRules);
  HttpClient http(Options(*server));
  HttpRequest request;
  request.method = "OPTIONS";
  request.url = server->origin() + "/files/";
  auto answer = http.Perform(request);
  INFO((answer ? std::string() : answer.error().message()));
  REQUIRE(answer);
  CHECK(answer->status == 204);
  CHECK(answer->Header("Tus-Version") == "1.0.0");
  // The harness speaks HTTP/1.1 only (no ALPN), so the client falls back from h2.
  CHECK(answer->http_version == 11);
  REQUIRE(server->Requests().size() == 1);
  CHECK(server->Requests()[0]["method"] == "OPTIONS");
}
