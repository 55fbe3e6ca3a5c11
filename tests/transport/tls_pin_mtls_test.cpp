// TLS identity checks against the real tus server: public-key pinning (match and mismatch) and
// mTLS (a server that requires a client certificate: accepted, missing, from an unknown CA).
// Together with http_errors_test.cpp (unknown CA, wrong host, expired) every refusal has its own
// message; the last case checks that the five are distinct.
#include <catch2/catch.hpp>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>
#include <string>
#include <vector>

#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::transport::FailureClass;
using ctagent::transport::HttpClient;
using ctagent::transport::HttpOptions;
namespace tus = ctagent::transport::tus;
namespace fs = std::filesystem;

// "sha256//<base64>" of the certificate's SubjectPublicKeyInfo, as CURLOPT_PINNEDPUBLICKEY wants.
std::string PinOf(const fs::path& cert_pem) {
  FILE* file = std::fopen(cert_pem.c_str(), "r");
  REQUIRE(file != nullptr);
  X509* cert = PEM_read_X509(file, nullptr, nullptr, nullptr);
  std::fclose(file);
  REQUIRE(cert != nullptr);
  unsigned char* der = nullptr;
  const int der_size = i2d_PUBKEY(X509_get0_pubkey(cert), &der);
  REQUIRE(der_size > 0);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  EVP_Digest(der, static_cast<std::size_t>(der_size), digest, &digest_size, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  X509_free(cert);
  return "sha256//" + tus::Base64Encode(std::span<const std::uint8_t>(digest, digest_size));
}

struct Server {
  ctagent::test::TempDir dir{"transport-tls-id"};
  fs::path pki = ctagent::test::SharedTransportPki();
  ctagent::test::TusServer server;
  explicit Server(const std::vector<std::string>& extra = {}) {
    server = ctagent::test::StartTusServer(pki, dir.path() / "store", dir.path() / "tus-server.log", "server", extra);
  }
  HttpOptions Options() const {
    HttpOptions options;
    options.tls.ca_file = pki / "ca.pem";
    options.connect_timeout_s = 5;
    options.request_timeout_s = 30;
    return options;
  }
  // Creates an upload; returns the error (or nullopt on success) and the class it carries.
  std::pair<std::optional<ctagent::Error>, FailureClass> Try(const HttpOptions& options) const {
    HttpClient http(options);
    tus::Client client(http, server.endpoint);
    auto created = client.Create(10, {});
    if (created) return {std::nullopt, FailureClass::kNone};
    return {created.error(), created.error().failure()};
  }
};

std::string PinMismatchMessage() {
  Server s;
  auto options = s.Options();
  options.tls.pinned_public_key = PinOf(s.pki / "other-ca-server.pem");
  auto [error, failure] = s.Try(options);
  REQUIRE(error);
  CHECK(failure == FailureClass::kTlsRejected);
  return error->message();
}

std::string MissingClientCertMessage() {
  Server s({"--client-ca", (ctagent::test::SharedTransportPki() / "ca.pem").string()});
  auto [error, failure] = s.Try(s.Options());
  REQUIRE(error);
  CHECK(error->kind() == ErrorKind::kTls);
  CHECK(failure == FailureClass::kTlsRejected);
  return error->message();
}

}  // namespace

TEST_CASE("TLS pinning: the server's own key passes, any other key is a pin mismatch", "[transport][tls][integration]") {
  Server s;
  auto options = s.Options();
  options.tls.pinned_public_key = PinOf(s.pki / "server.pem");
  CHECK_FALSE(s.Try(options).first);
  // One of several pins matching is enough (key rotation).
  options.tls.pinned_public_key = PinOf(s.pki / "other-ca-server.pem") + ";" + PinOf(s.pki / "server.pem");
  CHECK_FALSE(s.Try(options).first);

  const std::string message = PinMismatchMessage();
  CHECK_THAT(message, Catch::Contains("public key pin mismatch") && Catch::Contains("pinned_public_key"));
}

TEST_CASE("mTLS: a server that requires a client certificate accepts ours and names the missing or refused one",
          "[transport][tls][mtls][integration]") {
  Server s({"--client-ca", (ctagent::test::SharedTransportPki() / "ca.pem").string()});
  auto options = s.Options();
  options.tls.client_cert_file = s.pki / "client.pem";
  options.tls.client_key_file = s.pki / "client.key";
  auto [ok, ok_class] = s.Try(options);
  CHECK_FALSE(ok);
  if (ok) FAIL_CHECK(ok->message());

  const std::string missing = MissingClientCertMessage();
  CHECK_THAT(missing, Catch::Contains("requires a client certificate and none is configured") &&
                          Catch::Contains("client_cert_file"));

  // A certificate from a CA the server does not trust: under TLS 1.3 node closes the connection
  // after the handshake without an alert curl can read, so the message names our certificate
  // as the likely cause but the class stays retryable (a crashing server looks the same).
  options.tls.client_cert_file = s.pki / "other-ca-server.pem";
  options.tls.client_key_file = s.pki / "other-ca-server.key";
  auto [refused, refused_class] = s.Try(options);
  REQUIRE(refused);
  CHECK_THAT(refused->message(), Catch::Contains("client certificate") && Catch::Contains("other-ca-server.pem"));
  CHECK((refused_class == FailureClass::kTlsRejected || refused_class == FailureClass::kConnectionLost));
}

TEST_CASE("TLS: expired, wrong host, unknown CA, missing client certificate and pin mismatch read differently",
          "[transport][tls][integration]") {
  std::vector<std::string> messages;
  for (const std::string cert : {"expired", "wrong-host", "other-ca-server"}) {
    Server s;
    ctagent::test::TempDir dir("transport-tls-distinct");
    auto server = ctagent::test::StartTusServer(s.pki, dir.path() / "store", dir.path() / "log", cert);
    HttpClient http(s.Options());
    tus::Client client(http, server.endpoint);
    auto created = client.Create(10, {});
    REQUIRE_FALSE(created);
    CHECK(created.error().failure() == FailureClass::kTlsRejected);
    messages.push_back(created.error().message());
  }
  messages.push_back(MissingClientCertMessage());
  messages.push_back(PinMismatchMessage());
  const std::vector<std::string> phrases = {"has expired", "host name mismatch", "not signed by a trusted CA",
                                            "requires a client certificate", "public key pin mismatch"};
  for (std::size_t i = 0; i < messages.size(); ++i) {
    for (std::size_t j = 0; j < phrases.size(); ++j) {
      INFO("message " << i << ": " << messages[i] << " / phrase " << phrases[j]);
      CHECK((messages[i].find(phrases[j]) != std::string::npos) == (i == j));
    }
  }
}
