// The operator's page over TLS (agent/ui/server.hpp) on 127.0.0.1 with the throwaway PKI of
// tests/support/make_pki.sh, an OpenSSL client verifying the server against the test CA:
// HTTP Basic authentication on every route (the page, the status, the event stream), a wrong
// password answered late, plain HTTP to the TLS port refused, client-certificate mode, what Open
// refuses, the password file's format, and `ctagent ui-password`.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/ui/password.hpp"
#include "agent/ui/server.hpp"
#include "tests/support/loopback_http.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr const char* kPassword = "correct horse battery staple";

// A TLS client on 127.0.0.1:port that trusts only the test CA; with `cert`, it presents that
// client certificate.
class TlsClient {
 public:
  TlsClient(std::uint16_t port, const fs::path& pki, const std::string& cert = "") {
    ctx_ = SSL_CTX_new(TLS_client_method());
    REQUIRE(ctx_ != nullptr);
    REQUIRE(SSL_CTX_load_verify_locations(ctx_, (pki / "ca.pem").c_str(), nullptr) == 1);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    if (!cert.empty()) {
      REQUIRE(SSL_CTX_use_certificate_chain_file(ctx_, (pki / (cert + ".pem")).c_str()) == 1);
      REQUIRE(SSL_CTX_use_PrivateKey_file(ctx_, (pki / (cert + ".key")).c_str(), SSL_FILETYPE_PEM) == 1);
    }
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    // 30 s, not a few: a new password is checked with PBKDF2 (200,000 rounds) before any byte of
    // the answer, and under the sanitizers OpenSSL's many small allocations go through ASan's
    // allocator: 0.3 to 1.9 s each on an idle machine, several times that beside other tests (a
    // 5 s timeout read an empty answer in a clean-clone CI run). The test asserts what is
    // answered, not how fast.
    timeval tv{30, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    SSL_set1_host(ssl_, "127.0.0.1");
    handshake_ok_ = SSL_connect(ssl_) == 1;
  }
  ~TlsClient() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
    ::close(fd_);
  }
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  bool handshake_ok() const { return handshake_ok_; }
  bool Send(const std::string& data) {
    return handshake_ok_ && SSL_write(ssl_, data.data(), static_cast<int>(data.size())) == static_cast<int>(data.size());
  }
  // Reads until `text` is in what came (or the server closed, or 30 s without a byte).
  std::string ReadUntil(const std::string& text = "") {
    std::string out;
    for (int i = 0; i < 10000 && handshake_ok_ && (text.empty() || out.find(text) == std::string::npos); ++i) {
      char buffer[4096];
      const int n = SSL_read(ssl_, buffer, sizeof buffer);
      if (n <= 0) break;
      out.append(buffer, static_cast<std::size_t>(n));
    }
    return out;
  }

 private:
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool handshake_ok_ = false;
};

std::string Basic(const std::string& user_password) {
  std::string out(4 * ((user_password.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(user_password.data()),
                                static_cast<int>(user_password.size()));
  out.resize(static_cast<std::size_t>(n));
  return "Authorization: Basic " + out + "\r\n";
}

std::string Request(const std::string& path, std::uint16_t port, const std::string& extra = "") {
  return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n" + extra + "\r\n";
}

// One request over a new TLS connection, its whole answer.
std::string Get(std::uint16_t port, const fs::path& pki, const std::string& path, const std::string& extra = "",
                const std::string& cert = "") {
  TlsClient c(port, pki, cert);
  if (!c.Send(Request(path, port, extra))) return "";
  return c.ReadUntil();
}

struct Pki {
  test::TempDir dir{"ui_tls"};
  fs::path pki = dir.path() / "pki";
  Pki() { test::MakeTestPki(pki); }
};

ui::ServerSettings TlsSettings(const Pki& p) {
  ui::ServerSettings s;
  s.address = "127.0.0.1";
  s.port = 0;
  s.tls_cert_file = p.pki / "server.pem";
  s.tls_key_file = p.pki / "server.key";
  return s;
}

std::string OpenError(const ui::ServerSettings& settings) {
  boost::asio::io_context io;
  auto server = ui::Server::Open(io, settings, [] { return nlohmann::json::object(); });
  REQUIRE_FALSE(server.has_value());
  return server.error().message();
}

}  // namespace

TEST_CASE("ui tls: with a password every route needs it, a wrong one is answered late, and plain HTTP gets nothing") {
  Pki p;
  auto settings = TlsSettings(p);
  settings.password_file = p.dir.path() / "ui.password";
  auto line = ui::HashPassword(kPassword);
  REQUIRE(line.has_value());
  REQUIRE(ui::WritePasswordFile(settings.password_file, *line));
  test::ServerOnLoop<ui::Server> server([&](boost::asio::io_context& io) {
    return ui::Server::Open(io, settings, [] { return nlohmann::json{{"version", 3}}; });
  });
  const auto port = server.port();

  // No credentials: 401 asking for Basic, with HSTS, for the page, an asset, the status and the
  // event stream alike.
  for (const char* path : {"/", "/app.js", "/api/status", "/api/events", "/api/token"}) {
    INFO(path);
    const std::string answer = Get(port, p.pki, path);
    CHECK(answer.rfind("HTTP/1.1 401 Unauthorized\r\n", 0) == 0);
    CHECK(answer.find("WWW-Authenticate: Basic realm=\"ctagent\", charset=\"UTF-8\"\r\n") != std::string::npos);
    CHECK(answer.find("Strict-Transport-Security: max-age=31536000\r\n") != std::string::npos);
    CHECK(answer.find("version") == std::string::npos);
  }
  // A wrong password: 401 too, and not before the configured delay (1 s).
  const auto before = std::chrono::steady_clock::now();
  const std::string wrong = Get(port, p.pki, "/api/status", Basic("operator:not the password"));
  CHECK(std::chrono::steady_clock::now() - before >= 1s);
  CHECK(wrong.rfind("HTTP/1.1 401 Unauthorized\r\n", 0) == 0);
  CHECK(wrong.find("version") == std::string::npos);
  CHECK(Get(port, p.pki, "/", "Authorization: Basic !!!\r\n").rfind("HTTP/1.1 401 ", 0) == 0);

  // The right one (any user name): 200 for the page, the status (twice: the second from the
  // remembered credential) and the event stream.
  const std::string right = Basic(std::string("operator:") + kPassword);
  const std::string page = Get(port, p.pki, "/", right);
  CHECK(page.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(page.find("Strict-Transport-Security: max-age=31536000\r\n") != std::string::npos);
  CHECK(page.find("<script src=\"/app.js\"") != std::string::npos);
  for (int i = 0; i < 2; ++i) {
    const std::string status = Get(port, p.pki, "/api/status", right);
    REQUIRE(status.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(nlohmann::json::parse(test::BodyOf(status))["version"] == 3);
  }
  CHECK(Get(port, p.pki, "/api/status", Basic(std::string("someone else:") + kPassword)).rfind("HTTP/1.1 200 ", 0) == 0);
  {
    TlsClient events(port, p.pki);
    REQUIRE(events.Send(Request("/api/events", port, right)));
    const std::string stream = events.ReadUntil("data: {\"version\":3}\n\n");
    CHECK(stream.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(stream.find("Content-Type: text/event-stream") != std::string::npos);
    CHECK(stream.find("Strict-Transport-Security: max-age=31536000\r\n") != std::string::npos);
    CHECK(stream.find("data: {\"version\":3}\n\n") != std::string::npos);
  }
  // On loopback the Host must still be a loopback name.
  {
    TlsClient c(port, p.pki);
    REQUIRE(c.Send("GET / HTTP/1.1\r\nHost: evil.example\r\n" + right + "\r\n"));
    CHECK(c.ReadUntil().rfind("HTTP/1.1 421 ", 0) == 0);
  }
  // Plain HTTP to the TLS port: no HTTP answer, no page.
  test::LoopbackClient plain(port);
  plain.Send(Request("/", port, right));
  const std::string garbage = plain.ReadAll();
  CHECK(garbage.find("HTTP/1.1") == std::string::npos);
  CHECK(garbage.find("<script") == std::string::npos);
}

TEST_CASE("ui tls: with a client CA a connection without a certificate fails, one with the test CA's client "
          "certificate is answered") {
  Pki p;
  auto settings = TlsSettings(p);
  settings.tls_client_ca_file = p.pki / "ca.pem";
  test::ServerOnLoop<ui::Server> server([&](boost::asio::io_context& io) {
    return ui::Server::Open(io, settings, [] { return nlohmann::json{{"version", 5}}; });
  });
  // Without a certificate the handshake fails (in TLS 1.3 the client learns it at its first read).
  {
    TlsClient c(server.port(), p.pki);
    const bool sent = c.Send(Request("/api/status", server.port()));
    const std::string answer = sent ? c.ReadUntil() : "";
    CHECK(answer.find("HTTP/1.1") == std::string::npos);
  }
  // A certificate of another CA's making is refused too (the server's own, signed by other-ca).
  CHECK(Get(server.port(), p.pki, "/api/status", "", "other-ca-server").find("HTTP/1.1") == std::string::npos);
  const std::string answer = Get(server.port(), p.pki, "/api/status", "", "client");
  CHECK(answer.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(nlohmann::json::parse(test::BodyOf(answer))["version"] == 5);
}

TEST_CASE("ui tls: Open refuses an address off loopback without TLS and a password or client CA, and secret files "
          "other users may read") {
  Pki p;
  ui::ServerSettings open;
  open.address = "0.0.0.0";
  CHECK(OpenError(open).find("/ui/tls/cert_file") != std::string::npos);
  auto tls_only = TlsSettings(p);
  tls_only.address = "0.0.0.0";
  CHECK(OpenError(tls_only).find("/ui/password_file") != std::string::npos);

  const fs::path readable = p.dir.path() / "readable.key";
  fs::copy_file(p.pki / "server.key", readable);
  ::chmod(readable.c_str(), 0644);
  auto bad_key = TlsSettings(p);
  bad_key.tls_key_file = readable;
  const std::string key_error = OpenError(bad_key);
  CHECK(key_error.find("/ui/tls/key_file") != std::string::npos);
  CHECK(key_error.find("may be read by other users (mode 0644)") != std::string::npos);

  auto bad_password = TlsSettings(p);
  bad_password.password_file = p.dir.path() / "readable.password";
  REQUIRE(ui::WritePasswordFile(bad_password.password_file, *ui::HashPassword(kPassword)));
  ::chmod(bad_password.password_file.c_str(), 0604);
  CHECK(OpenError(bad_password).find("/ui/password_file") != std::string::npos);
  bad_password.password_file = p.dir.path() / "missing.password";
  CHECK(OpenError(bad_password).find("ctagent ui-password") != std::string::npos);
}

TEST_CASE("ui password: the hash line verifies its password only, and short passwords are refused") {
  auto line = ui::HashPassword(kPassword, 2000);
  REQUIRE(line.has_value());
  CHECK(line->rfind("pbkdf2-sha256$2000$", 0) == 0);
  CHECK(line->find(kPassword) == std::string::npos);
  auto hash = ui::ParsePasswordHash(*line + "\n");
  REQUIRE(hash.has_value());
  CHECK(ui::VerifyPassword(*hash, kPassword));
  CHECK_FALSE(ui::VerifyPassword(*hash, "correct horse battery stapl"));
  CHECK_FALSE(ui::VerifyPassword(*hash, ""));
  CHECK(*ui::HashPassword(kPassword, 2000) != *line);  // a new salt each time
  const auto short_one = ui::HashPassword("elevenchars");
  REQUIRE_FALSE(short_one.has_value());
  CHECK(short_one.error().message().find("at least 12 characters") != std::string::npos);
  for (const char* bad : {"", "pbkdf2-sha256$2000$00", "md5$2000$0011223344556677$00112233445566778899aabbccddeeff",
                          "pbkdf2-sha256$x$0011223344556677$00112233445566778899aabbccddeeff"}) {
    INFO(bad);
    CHECK_FALSE(ui::ParsePasswordHash(bad).has_value());
  }
}

TEST_CASE("ui password: `ctagent ui-password` writes a 0600 file whose hash verifies, and refuses a short password") {
  Pki p;
  const fs::path key = p.dir.path() / "page.key";
  fs::copy_file(p.pki / "server.key", key);
  ::chmod(key.c_str(), 0600);
  const fs::path password_file = p.dir.path() / "ui.password";
  const nlohmann::json config = {
      {"spool", {{"directory", (p.dir.path() / "spool").string()}}},
      {"cloud", {{"upload_url", "https://127.0.0.1:1/files/"}, {"dicomweb_url", "https://127.0.0.1:1/dicom-web"}}},
      {"ui",
       {{"enabled", true},
        {"tls", {{"cert_file", (p.pki / "server.pem").string()}, {"key_file", key.string()}}},
        {"password_file", password_file.string()}}}};
  const fs::path config_file = p.dir.path() / "agent.json";
  std::ofstream(config_file) << config.dump(2);
  auto run = [&](const std::string& input, const fs::path& log) {
    test::ChildProcess c({"sh", "-c", "printf '%s\\n' \"$1\" | \"$2\" ui-password --config \"$3\"", "sh", input,
                          test::CtagentBinary(), config_file.string()},
                         log);
    return c.Wait(30s);
  };
  CHECK(run("short", p.dir.path() / "short.log") == 2);
  CHECK(test::ReadText(p.dir.path() / "short.log").find("at least 12 characters") != std::string::npos);
  CHECK_FALSE(fs::exists(password_file));

  REQUIRE(run(kPassword, p.dir.path() / "ok.log") == 0);
  const std::string said = test::ReadText(p.dir.path() / "ok.log");
  CHECK(said.find(password_file.string()) != std::string::npos);
  CHECK(said.find(kPassword) == std::string::npos);
  struct stat st {};
  REQUIRE(::stat(password_file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto hash = ui::ReadPasswordFile(password_file);
  REQUIRE(hash.has_value());
  CHECK(ui::VerifyPassword(*hash, kPassword));
  CHECK_FALSE(ui::VerifyPassword(*hash, "correct horse battery staplE"));
  CHECK(test::ReadText(password_file).find(kPassword) == std::string::npos);
}
