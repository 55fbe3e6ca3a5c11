// The control socket: how the CLI (`ctagent status|check|scan|pause|resume|acknowledge|confirm`) talks to
// a running `ctagent run`. A Unix stream socket carrying newline-delimited JSON, one request and
// one response per line, versioned (docs/control-protocol.md has the commands, fields, errors and
// permissions; docs/schemas/ the JSON Schemas of the status and check results).
//
//   request   {"v":1,"id":7,"cmd":"status"}
//   response  {"v":1,"id":7,"ok":true,"result":{...}}
//             {"v":1,"id":7,"ok":false,"error":{"kind":"unsupported","message":"..."}}
//
// The server runs on the daemon's io_context and has no thread of its own. The daemon implements
// Handler; each handler call answers through its Reply, at once or later from any thread (a check
// takes seconds of network I/O and must not run on the loop).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace ctagent::control {

// The protocol version this build speaks. A request with another "v" is answered with an
// "unsupported" error naming the versions this build accepts; fields are only ever added within
// a version, and a reader ignores fields it does not know.
inline constexpr int kProtocolVersion = 1;
// The longest `by` a `confirm` may carry (a console user's name).
inline constexpr std::size_t kMaxConfirmedByBytes = 64;

struct ServerSettings {
  std::filesystem::path socket_path;     // created by the server; an old file there is replaced
  // Members of this group may use the socket (with root and the daemon's own user); the socket
  // file is given this group. Empty: only root and the daemon's user.
  std::string group;
  unsigned mode = 0660;                  // the socket file's permission bits
  std::size_t max_request_bytes = 64 * 1024;  // a longer line is answered with an error, then closed
  std::size_t max_connections = 8;       // more are accepted, answered with a "busy" error, closed
  std::chrono::milliseconds idle_timeout{30'000};  // a connection silent this long is closed
};

// What `take_scan` may carry. Every field is optional: absent, the daemon uses its configured
// protocol and no exam identity.
struct TakeScanRequest {
  std::optional<nlohmann::json> protocol;         // a "scan" section as in the config, for this scan only
  std::optional<std::string> accession_number;    // the exam's accession number (DICOM 0008,0050)
  std::optional<std::string> procedure_step_id;   // scheduled procedure step ID (DICOM 0040,0009)
  // No worklist entry: a temporary identity flagged for reconciliation (docs/privacy.md).
  bool emergency = false;
};

// The answer to one request: a JSON object (the "result") or an error, whose kind becomes the
// response's error.kind (WireKind) and whose message is shown to the person at the CLI.
using Result = Expected<nlohmann::json>;
// Called exactly once per request, from any thread. Calling it after the client went away or the
// server stopped is harmless (the answer is dropped); the io_context itself must still exist (it
// posts the answer to it), so a daemon joins its workers before destroying its loop.
using Reply = std::function<void(Result)>;

// Implemented by the daemon. Every method is called on the io_context's thread.
class Handler {
 public:
  virtual ~Handler() = default;
  // The status object of docs/schemas/status.schema.json (see StatusFromSpool in status.hpp).
  virtual void Status(Reply reply) = 0;
  // The check object of docs/schemas/check.schema.json (see RunChecks in check.hpp).
  virtual void Check(Reply reply) = 0;
  // Takes one scan now. Answers once the scan is armed, with {"scan_uid": "..."}, so the caller
  // can follow it in Status; a scan that cannot start is an error (busy: another is being
  // acquired; no_space; ...).
  virtual void TakeScan(const TakeScanRequest& request, Reply reply) = 0;
  // A person has seen a failed scan: {"scan_uid": ..., "state": ...}; not_found for an unknown UID.
  virtual void Acknowledge(const std::string& scan_uid, Reply reply) = 0;
  // A person confirmed having seen a scan's HIGH-RISK finding; `by` names them (empty: the
  // daemon's default, its configured console user). Answers {"scan_uid", "high_risk_confirmed_utc",
  // "high_risk_confirmed_by"} (ConfirmHighRisk in status.hpp). Not overridden: unsupported.
  virtual void Confirm(const std::string& scan_uid, const std::string& by, Reply reply) {
    (void)scan_uid;
    (void)by;
    reply(MakeError(ErrorKind::kUnsupported, "this daemon does not record confirmations of high-risk findings"));
  }
  // Pause and resume uploads (acquisition and results go on). Answer {"paused": true|false}.
  virtual void Pause(Reply reply) = 0;
  virtual void Resume(Reply reply) = 0;
};

// The lowercase, stable name of an error kind on the wire ("invalid_input", "no_space", ...), and
// back (unknown names read as kInternal).
const char* WireKind(ErrorKind kind);
ErrorKind KindFromWire(const std::string& name);

// The socket server. Listening starts in Open; closing (destructor or Close) stops accepting,
// ends every connection and removes the socket file. Peers are checked with SO_PEERCRED: root,
// the daemon's own uid, or a member of settings.group (primary or supplementary); anyone else
// gets a "permission" error and is disconnected.
class Server {
 public:
  // Errors: the socket path is too long for sun_path, its directory is missing or not writable,
  // another live daemon answers on it (busy), the group does not exist (invalid_input).
  static Expected<std::unique_ptr<Server>> Open(boost::asio::io_context& io, const ServerSettings& settings,
                                                Handler& handler);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void Close();
  const std::filesystem::path& socket_path() const;
  std::size_t open_connections() const;

  class Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// The blocking client the CLI uses (one connection, requests in turn).
class Client {
 public:
  // not_found: no socket file (no daemon configured or running there); network: nobody answers
  // (a stale file, or the daemon is starting); permission: the socket refuses this user.
  static Expected<Client> Connect(const std::filesystem::path& socket_path,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(2));
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  // Sends {"v":1,"id":N,"cmd":cmd,...args} and waits at most `timeout` for its response. The
  // result object on success; the daemon's error (its kind from error.kind) otherwise.
  Result Call(const std::string& cmd, const nlohmann::json& args = nlohmann::json::object(),
              std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  explicit Client(int fd);
  int fd_ = -1;
  long long next_id_ = 1;
  std::string buffer_;  // bytes received past the last response line
};

}  // namespace ctagent::control
