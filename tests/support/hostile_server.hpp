// Test helper for tests/support/hostile_server: an HTTPS server on loopback that misbehaves per
// rule (trickles, stays silent, closes, sends huge generated bodies, edits a proxied answer's
// headers, ...), started as a real process and stopped by PID. docs/testing.md describes the rules.
//
//   auto server = HostileServer::Start(R"([{"method": "GET", "path": "^/slow",
//                                           "action": {"body": "x", "trickle_ms": 500}}])"_json);
//   ... point the client at server->origin(), trust server->ca_file() ...
//   CHECK(server->Requests().size() == 1);
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"

namespace ctagent::test {

struct HostileOptions {
  std::string listen_host = "127.0.0.1";  // any 127.0.0.0/8 address; the certificate covers 127.0.0.1, 127.0.0.2, localhost
  std::string upstream;                    // "http://127.0.0.1:PORT": unmatched requests are forwarded there
  bool plain_http = false;                 // serve plain HTTP instead of HTTPS
  std::string tls_max;                     // "1.1": offer only TLS 1.0/1.1
  // The server's certificate, by name in the PKI folder (tests/support/make_pki.sh): "expired",
  // "not-yet-valid"... all signed by ca_file().
  std::string certificate = "hostile-server";
  std::filesystem::path work_dir;          // where rules, log and port file go (a temp dir by default)
};

class HostileServer {
 public:
  // Starts the server with `rules` (a JSON array, first match wins); REQUIREs that it started.
  static std::unique_ptr<HostileServer> Start(const nlohmann::json& rules, HostileOptions options = {});
  ~HostileServer();  // SIGTERM by PID, waits (SIGKILL after 5 s)
  HostileServer(const HostileServer&) = delete;
  HostileServer& operator=(const HostileServer&) = delete;

  std::uint16_t port() const { return port_; }
  pid_t pid() const { return process_ ? process_->pid() : -1; }
  std::string origin() const;               // "https://127.0.0.1:PORT" (http:// with plain_http)
  std::filesystem::path ca_file() const;    // the CA that signed the server's certificate
  std::filesystem::path log_file() const;   // the server's own stderr (for failure messages)
  // Every request received so far, in order: {"method", "path", "headers": {lower-case name: value},
  // "body_bytes", "rule" (index or -1), "origin_host" (the Host header)} and "error" if it failed.
  std::vector<nlohmann::json> Requests() const;
  // Replaces the rules while the server runs; the next request uses them (counters start again).
  void SetRules(const nlohmann::json& rules);
  // SIGTERM by PID now; the exit code (0 when it stopped by itself within 5 s, else 137: killed).
  int Stop();

 private:
  HostileServer() = default;
  std::unique_ptr<TempDir> temp_;
  std::filesystem::path dir_;
  std::filesystem::path pki_;
  HostileOptions options_;
  std::uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace ctagent::test
