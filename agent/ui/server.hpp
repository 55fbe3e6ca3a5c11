// The operator's page: a small HTTP/1.1 server (Boost.Beast) on the daemon's io_context, with no
// thread of its own, that serves the page's embedded files (assets.hpp) and its live data:
//   GET /            the page (index.html)          GET /app.js, /app.css   its script and style
//   GET /api/status  the status object, as the control socket's `status` (docs/control-protocol.md)
//   GET /api/events  server-sent events: that status object whenever it changed (checked every
//                    event_interval, so at most one snapshot per interval), a comment line as a
//                    keep-alive otherwise
//   GET /api/token   {"token": "..."}: a random token made when the server opens (each daemon
//                    start), which the routes below require in the X-CTAgent-Token header
//   GET /api/patients  (token) the real patient of each scan (OnPatients): only on this page,
//                    never in /api/status, in a URL or in a log
//   POST /api/scans/<scan uid>/confirm  (token, and an Origin header of this very page) confirms
//                    the scan's high-risk finding (OnConfirm); no request body. A page of another
//                    origin cannot read the token (same-origin policy; no CORS header is ever
//                    sent) nor send a same-origin Origin, so it cannot confirm (CSRF); anything
//                    else is 403 with a one-line body.
//   GET /api/scans/… a scan's view (images, overlay, report), answered by the optional
//                    ScanRoutes (agent/ui/scan_view.hpp); 404 without them
// Plain HTTP without a password by default: then it listens on loopback only, and it answers only
// requests whose Host is a loopback name, so a web page elsewhere cannot reach it through DNS
// rebinding. With a TLS certificate every connection is TLS 1.2 or later (the handshake within
// request_timeout) and responses carry Strict-Transport-Security; with a password file every
// request, the assets and the event stream included, needs HTTP Basic authentication with that
// password (401 otherwise; a wrong one is answered only after wrong_password_delay, and the
// PBKDF2 check runs on a thread of its own, never on the loop; a credential once verified is
// remembered, as a digest, for later requests); with a client CA every connection must present
// a certificate it signed. Any address but loopback needs TLS and a password or a client CA
// (Open refuses it otherwise); there, Host must name that address or server_name. Every response carries a strict Content-Security-Policy (nothing but this
// server's own script and style, no inline code) and X-Content-Type-Options: nosniff; /api is
// never cached.
// Bounded: at most max_connections at once (one more is answered 503), a request head of at most
// max_request_bytes (431), no request body (413), one request per connection, a request head
// that must arrive within request_timeout; at most max_event_clients event streams (503 beyond),
// each with at most max_event_backlog_bytes waiting to be sent: a client that reads slower than
// that is dropped, never buffered without bound, as is one whose write stalls for request_timeout.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace ctagent::ui {

struct ServerSettings {
  std::string address = "127.0.0.1";  // an IPv4 or IPv6 literal; loopback unless TLS and a password or client CA
  std::uint16_t port = 0;             // 0: a free port chosen by the system (Server::port() says which)
  std::size_t max_connections = 16;
  std::size_t max_request_bytes = 8192;  // request line and headers
  std::chrono::milliseconds request_timeout{10000};
  std::size_t max_event_clients = 4;
  std::size_t max_event_backlog_bytes = 1024 * 1024;
  std::chrono::milliseconds event_interval{500};   // how often the status is checked for a change
  std::chrono::milliseconds event_keepalive{15000};  // a comment line after this long without an event
  // HTTPS (config /ui/tls): empty tls_cert_file is plain HTTP. The key file and the password file
  // must not be readable by other users.
  // (Each with an initializer: designated initializers may leave them out.)
  std::filesystem::path tls_cert_file{};
  std::filesystem::path tls_key_file{};
  std::filesystem::path tls_client_ca_file{};  // empty: no client certificate asked for
  std::filesystem::path password_file{};       // empty: no password (agent/ui/password.hpp)
  std::string server_name{};                   // off loopback: a Host name answered besides the address
  std::chrono::milliseconds wrong_password_delay{1000};
};

class Server {
 public:
  // The status object; called on the io_context's thread, for each GET /api/status, for each new
  // event stream, and every event_interval while an event stream is open.
  using StatusSource = std::function<nlohmann::json()>;

  // A whole answer to a GET under /api/scans/.
  struct Reply {
    int code = 200;
    std::string content_type = "application/json";
    std::string body;
  };
  // Called on the io_context's thread with the request's path (no query); it must call `done`
  // exactly once, on the io_context's thread (it may do its work elsewhere first).
  using ScanRoutes = std::function<void(const std::string& path, std::function<void(Reply)> done)>;

  // Listens at once. Errors (kInvalidInput: not an IP address, or not loopback without TLS and a
  // password or client CA; kIo: bind refused, e.g. the port is in use; a certificate, key or
  // password file that cannot be used) name the file or address and the configuration key.
  static Expected<std::unique_ptr<Server>> Open(boost::asio::io_context& io, const ServerSettings& settings,
                                                StatusSource status, ScanRoutes scan_routes = {});
  ~Server();  // closes (on the io_context's thread, or with the loop stopped)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // What POST /api/scans/<uid>/confirm does: called on the io_context's thread, it answers
  // through `done` (at once or later, from any thread: the server answers on the io_context's
  // thread) with the answer's JSON, or an error (kNotFound: 404, kInvalidInput: 409, others 500).
  // Not set: 404. The daemon records a confirmation durably off the loop, hence the callback.
  using ConfirmDone = std::function<void(Expected<nlohmann::json>)>;
  using ConfirmAction = std::function<void(const std::string& scan_uid, ConfirmDone done)>;
  void OnConfirm(ConfirmAction confirm);
  // What GET /api/patients answers: {"<scan uid>": {"name", "id"}}, through `done` as above (the
  // daemon reads the mapping files off the loop). Not set: {}.
  using PatientsDone = std::function<void(nlohmann::json)>;
  using PatientsSource = std::function<void(PatientsDone done)>;
  void OnPatients(PatientsSource patients);
  // The token GET /api/token gives the page (64 hex digits; new at each Open).
  const std::string& token() const;

  // Stops accepting and ends every connection and event stream.
  void Close();
  std::uint16_t port() const;
  std::size_t open_connections() const;  // event streams included
  std::size_t event_clients() const;
  std::uint64_t dropped_event_clients() const;  // since Open: too slow, or their write stalled

  class Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace ctagent::ui
