// The control socket's server: Boost.Asio local stream sockets on the daemon's io_context.
// One request is handled at a time per connection (the next line is read only after the answer
// is written), so a connection holds at most one line of max_request_bytes and one answer.
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "base/log.hpp"
#include "agent/control/control.hpp"
#include "agent/control/unix_path.hpp"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59  // Linux 4.13; older headers lack the name
#endif

namespace ctagent::control {
namespace {

using boost::asio::local::stream_protocol;
using Json = nlohmann::json;

std::string ErrnoText(int err) { return std::strerror(err); }

Json ErrorResponse(const Json& id, ErrorKind kind, const std::string& message) {
  return Json{{"v", kProtocolVersion}, {"id", id}, {"ok", false}, {"error", {{"kind", WireKind(kind)}, {"message", message}}}};
}

// Who is on the other end of an accepted connection, as the kernel saw it at connect time.
struct Peer {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  pid_t pid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

Expected<Peer> PeerOf(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return MakeError(ErrorKind::kIo, "reading the peer's credentials (SO_PEERCRED): " + ErrnoText(errno));
  }
  Peer peer{cred.uid, cred.gid, cred.pid, {}};
  std::array<gid_t, 256> groups{};
  socklen_t glen = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
    peer.groups.assign(groups.begin(), groups.begin() + glen / sizeof(gid_t));
  }
  // A peer with more than 256 groups (ERANGE) is judged by its uid and primary group alone.
  return peer;
}

}  // namespace

class Connection;

class Server::Impl : public std::enable_shared_from_this<Server::Impl> {
 public:
  Impl(boost::asio::io_context& io, ServerSettings settings, Handler& handler, std::optional<gid_t> group)
      : io_(io), settings_(std::move(settings)), handler_(handler), group_(group), acceptor_(io) {}

  Status Listen();
  void Accept();
  void Close();
  bool Allowed(const Peer& peer) const;

  boost::asio::io_context& io_;
  const ServerSettings settings_;
  Handler& handler_;
  const std::optional<gid_t> group_;
  stream_protocol::acceptor acceptor_;
  std::set<std::shared_ptr<Connection>> connections_;
  bool closed_ = false;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(stream_protocol::socket socket, std::weak_ptr<Server::Impl> server, const ServerSettings& settings)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), server_(std::move(server)),
        max_request_bytes_(settings.max_request_bytes), idle_timeout_(settings.idle_timeout) {}

  void Start() {
    ArmIdleTimer();
    Read();
  }

  // Answers and closes: for a refused peer or one connection too many.
  void RefuseAndClose(const Json& response) {
    closing_ = true;
    Write(response);
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    timer_.cancel();
    socket_.shutdown(stream_protocol::socket::shutdown_both, ignored);
    socket_.close(ignored);
    if (auto server = server_.lock()) server->connections_.erase(shared_from_this());
  }

 private:
  void ArmIdleTimer() {
    timer_.expires_after(idle_timeout_);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->closed_) return;
      if (self->busy_) {  // a request is being answered (a check takes a while): not idle
        self->ArmIdleTimer();
        return;
      }
      self->Close();
    });
  }

  // Reads while nothing waits in the buffer, also while a request is with the handler, so a
  // client that leaves is seen at once (its answer is then dropped). A complete line waiting
  // stops the reading: a connection holds at most one request beyond the one being answered.
  void Read() {
    if (reading_ || closed_ || closing_ || buffer_.find('\n') != std::string::npos) return;
    if (buffer_.size() > max_request_bytes_) {
      if (busy_ || writing_) return Close();  // no answer can be written now
      closing_ = true;
      return Write(ErrorResponse(nullptr, ErrorKind::kInvalidInput,
                                 "request longer than " + std::to_string(max_request_bytes_) +
                                     " bytes without a newline; closing the connection"));
    }
    reading_ = true;
    socket_.async_read_some(boost::asio::buffer(read_buffer_),
                            [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
                              self->reading_ = false;
                              if (self->closed_) return;
                              if (ec) return self->Close();  // the client went away, or we closed
                              self->buffer_.append(self->read_buffer_.data(), n);
                              self->ArmIdleTimer();
                              self->Next();
                            });
  }

  // Handles the next complete line in the buffer when nothing is being answered; reads more.
  void Next() {
    if (closed_ || closing_) return;
    if (!busy_ && !writing_) {
      const auto newline = buffer_.find('\n');
      if (newline != std::string::npos) {
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) return Next();
        Handle(line);
      }
    }
    Read();
  }

  void Handle(const std::string& line) {
    if (line.size() > max_request_bytes_) {
      closing_ = true;
      return Write(ErrorResponse(nullptr, ErrorKind::kInvalidInput,
                                 "request of " + std::to_string(line.size()) + " bytes is longer than the " +
                                     std::to_string(max_request_bytes_) + " allowed; closing the connection"));
    }
    const Json request = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded() || !request.is_object()) {
      return Write(ErrorResponse(nullptr, ErrorKind::kInvalidInput,
                                 "a request is one JSON object on one line, e.g. {\"v\":1,\"id\":1,\"cmd\":\"status\"}"));
    }
    const Json id = request.contains("id") ? request["id"] : Json(nullptr);
    if (!id.is_null() && !id.is_number_integer() && !id.is_string()) {
      return Write(ErrorResponse(nullptr, ErrorKind::kInvalidInput, "\"id\" must be an integer or a string"));
    }
    if (!request.contains("v") || !request["v"].is_number_integer() || request["v"].get<long long>() != kProtocolVersion) {
      const std::string got = request.contains("v") ? request["v"].dump() : "none";
      return Write(ErrorResponse(id, ErrorKind::kUnsupported,
                                 "protocol version " + got + " is not supported; this daemon speaks version " +
                                     std::to_string(kProtocolVersion) + " (\"v\":" + std::to_string(kProtocolVersion) +
                                     ")"));
    }
    if (!request.contains("cmd") || !request["cmd"].is_string()) {
      return Write(ErrorResponse(id, ErrorKind::kInvalidInput, "\"cmd\" (a string) is missing"));
    }
    auto server = server_.lock();
    if (!server) return Close();
    const std::string cmd = request["cmd"].get<std::string>();
    busy_ = true;
    Reply reply = MakeReply(id);
    Handler& handler = server->handler_;
    if (cmd == "status") return handler.Status(std::move(reply));
    if (cmd == "check") return handler.Check(std::move(reply));
    if (cmd == "pause") return handler.Pause(std::move(reply));
    if (cmd == "resume") return handler.Resume(std::move(reply));
    if (cmd == "acknowledge") {
      if (!request.contains("scan_uid") || !request["scan_uid"].is_string() ||
          request["scan_uid"].get<std::string>().empty()) {
        return reply(MakeError(ErrorKind::kInvalidInput, "acknowledge needs \"scan_uid\" (a string)"));
      }
      return handler.Acknowledge(request["scan_uid"].get<std::string>(), std::move(reply));
    }
    if (cmd == "confirm") {
      if (!request.contains("scan_uid") || !request["scan_uid"].is_string() ||
          request["scan_uid"].get<std::string>().empty()) {
        return reply(MakeError(ErrorKind::kInvalidInput, "confirm needs \"scan_uid\" (a string)"));
      }
      std::string by;
      if (request.contains("by") && !request["by"].is_null()) {
        if (!request["by"].is_string() || request["by"].get<std::string>().size() > kMaxConfirmedByBytes) {
          return reply(MakeError(ErrorKind::kInvalidInput, "confirm: \"by\" must be a string of at most " +
                                                               std::to_string(kMaxConfirmedByBytes) + " bytes"));
        }
        by = request["by"].get<std::string>();
      }
      return handler.Confirm(request["scan_uid"].get<std::string>(), by, std::move(reply));
    }
    if (cmd == "take_scan") {
      TakeScanRequest take;
      if (request.contains("protocol") && !request["protocol"].is_null()) {
        if (!request["protocol"].is_object()) {
          return reply(MakeError(ErrorKind::kInvalidInput, "take_scan: \"protocol\" must be an object like the config's \"scan\" section"));
        }
        take.protocol = request["protocol"];
      }
      for (const char* key : {"accession_number", "procedure_step_id"}) {
        if (!request.contains(key) || request[key].is_null()) continue;
        if (!request[key].is_string()) {
          return reply(MakeError(ErrorKind::kInvalidInput, std::string("take_scan: \"") + key + "\" must be a string"));
        }
        (std::string(key) == "accession_number" ? take.accession_number : take.procedure_step_id) =
            request[key].get<std::string>();
      }
      if (request.contains("emergency") && !request["emergency"].is_null()) {
        if (!request["emergency"].is_boolean()) {
          return reply(MakeError(ErrorKind::kInvalidInput, "take_scan: \"emergency\" must be true or false"));
        }
        take.emergency = request["emergency"].get<bool>();
      }
      return handler.TakeScan(take, std::move(reply));
    }
    return reply(MakeError(ErrorKind::kUnsupported,
                           "unknown command \"" + cmd +
                               "\"; version 1 knows status, check, take_scan, acknowledge, confirm, pause, resume"));
  }

  // Exactly once, from any thread: the answer is posted to the loop; dropped if the connection
  // is gone by then.
  Reply MakeReply(const Json& id) {
    auto answered = std::make_shared<std::atomic<bool>>(false);
    std::weak_ptr<Connection> weak = shared_from_this();
    auto executor = socket_.get_executor();
    return [weak, executor, answered, id](Result result) {
      if (answered->exchange(true)) return;
      Json response;
      if (result) {
        response = Json{{"v", kProtocolVersion}, {"id", id}, {"ok", true}, {"result", std::move(*result)}};
      } else {
        response = ErrorResponse(id, result.error().kind(), result.error().message());
      }
      boost::asio::post(executor, [weak, response = std::move(response)] {
        if (auto self = weak.lock(); self && !self->closed_) {
          self->busy_ = false;
          self->Write(response);
        }
      });
    };
  }

  void Write(const Json& response) {
    out_ = response.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
    writing_ = true;
    boost::asio::async_write(socket_, boost::asio::buffer(out_),
                             [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                               self->writing_ = false;
                               if (self->closed_) return;
                               if (ec || self->closing_) return self->Close();
                               self->Next();
                             });
  }

  stream_protocol::socket socket_;
  boost::asio::steady_timer timer_;
  std::weak_ptr<Server::Impl> server_;
  const std::size_t max_request_bytes_;
  const std::chrono::milliseconds idle_timeout_;
  std::array<char, 4096> read_buffer_{};
  std::string buffer_;  // received, not yet handled (at most max_request_bytes_ + one read)
  std::string out_;
  bool busy_ = false;     // a request is with the handler
  bool reading_ = false;  // a read is outstanding
  bool writing_ = false;  // an answer is being written
  bool closing_ = false;  // close once the pending answer is written
  bool closed_ = false;
};

bool Server::Impl::Allowed(const Peer& peer) const {
  if (peer.uid == 0 || peer.uid == ::geteuid()) return true;
  if (!group_) return false;
  return peer.gid == *group_ || std::find(peer.groups.begin(), peer.groups.end(), *group_) != peer.groups.end();
}

Status Server::Impl::Listen() {
  const auto& path = settings_.socket_path;
  const UnixPath address(path);
  if (!address.fits()) {
    return MakeError(ErrorKind::kInvalidInput, "control socket path " + path.string() + " is longer than the " +
                                                   std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                                   " bytes a Unix socket allows and its directory cannot be opened; "
                                                   "set control.socket to a shorter path");
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return MakeError(ErrorKind::kInvalidInput, "control socket path " + path.string() +
                                                     " exists and is not a socket; move it away or set control.socket");
    }
    // A socket file: a live daemon answers on it, or it is left over from one that died.
    stream_protocol::socket probe(io_);
    boost::system::error_code ec;
    probe.connect(stream_protocol::endpoint(address.str()), ec);
    if (!ec) {
      return MakeError(ErrorKind::kBusy, "another ctagent daemon answers on the control socket " + path.string() +
                                             "; stop it first (systemctl stop ctagent)");
    }
    ::unlink(path.c_str());
  }
  boost::system::error_code ec;
  acceptor_.open(stream_protocol(), ec);
  if (!ec) acceptor_.bind(stream_protocol::endpoint(address.str()), ec);
  if (ec) {
    return MakeError(ErrorKind::kIo, "cannot create the control socket " + path.string() + ": " + ec.message() +
                                         " (does its directory exist and is it writable by this user?)");
  }
  if (group_ && ::chown(path.c_str(), static_cast<uid_t>(-1), *group_) != 0) {
    const int err = errno;
    acceptor_.close(ec);
    ::unlink(path.c_str());
    return MakeError(ErrorKind::kPermission, "cannot give the control socket " + path.string() + " to group " +
                                                 settings_.group + ": " + ErrnoText(err) +
                                                 " (the daemon must run as root or be a member of that group)");
  }
  if (::chmod(path.c_str(), settings_.mode) != 0) {
    const int err = errno;
    acceptor_.close(ec);
    ::unlink(path.c_str());
    return MakeError(ErrorKind::kIo, "cannot set the mode of the control socket " + path.string() + ": " + ErrnoText(err));
  }
  acceptor_.listen(static_cast<int>(settings_.max_connections), ec);
  if (ec) {
    acceptor_.close(ec);
    ::unlink(path.c_str());
    return MakeError(ErrorKind::kIo, "cannot listen on the control socket " + path.string() + ": " + ec.message());
  }
  return Ok();
}

void Server::Impl::Accept() {
  acceptor_.async_accept([weak = weak_from_this()](const boost::system::error_code& ec, stream_protocol::socket socket) {
    auto self = weak.lock();
    if (!self || self->closed_) return;
    if (ec) {
      if (ec == boost::asio::error::operation_aborted) return;
      // EMFILE and the like: logged, and accepting goes on (the kernel keeps the backlog).
      log::Warn("control", "accepting a control connection failed: " + ec.message());
      return self->Accept();
    }
    const auto peer = PeerOf(socket.native_handle());
    auto connection = std::make_shared<Connection>(std::move(socket), weak, self->settings_);
    self->connections_.insert(connection);
    if (!peer) {
      connection->RefuseAndClose(ErrorResponse(nullptr, ErrorKind::kPermission, peer.error().message()));
    } else if (!self->Allowed(*peer)) {
      log::Warn("control", "refused a control connection from uid " + std::to_string(peer->uid) + " (pid " +
                               std::to_string(peer->pid) + "): not root, the daemon's user or in group " +
                               (self->settings_.group.empty() ? std::string("(none configured)") : self->settings_.group));
      connection->RefuseAndClose(ErrorResponse(
          nullptr, ErrorKind::kPermission,
          "uid " + std::to_string(peer->uid) + " may not use this control socket: it is for root, the daemon's user" +
              (self->settings_.group.empty() ? std::string() : " and members of group " + self->settings_.group)));
    } else if (self->connections_.size() > self->settings_.max_connections) {
      connection->RefuseAndClose(ErrorResponse(nullptr, ErrorKind::kBusy,
                                               "the daemon already serves " +
                                                   std::to_string(self->settings_.max_connections) +
                                                   " control connections; try again in a moment"));
    } else {
      connection->Start();
    }
    self->Accept();
  });
}

void Server::Impl::Close() {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  auto connections = std::move(connections_);
  connections_.clear();
  for (const auto& c : connections) c->Close();
  ::unlink(settings_.socket_path.c_str());
}

const char* WireKind(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidInput: return "invalid_input";
    case ErrorKind::kIo: return "io";
    case ErrorKind::kCorrupt: return "corrupt";
    case ErrorKind::kNoSpace: return "no_space";
    case ErrorKind::kNetwork: return "network";
    case ErrorKind::kTls: return "tls";
    case ErrorKind::kProtocol: return "protocol";
    case ErrorKind::kNotFound: return "not_found";
    case ErrorKind::kPermission: return "permission";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kCancelled: return "cancelled";
    case ErrorKind::kBusy: return "busy";
    case ErrorKind::kInternal: return "internal";
  }
  return "internal";
}

ErrorKind KindFromWire(const std::string& name) {
  for (ErrorKind kind : {ErrorKind::kInvalidInput, ErrorKind::kIo, ErrorKind::kCorrupt, ErrorKind::kNoSpace,
                         ErrorKind::kNetwork, ErrorKind::kTls, ErrorKind::kProtocol, ErrorKind::kNotFound,
                         ErrorKind::kPermission, ErrorKind::kUnsupported, ErrorKind::kCancelled, ErrorKind::kBusy}) {
    if (name == WireKind(kind)) return kind;
  }
  return ErrorKind::kInternal;
}

Expected<std::unique_ptr<Server>> Server::Open(boost::asio::io_context& io, const ServerSettings& settings,
                                               Handler& handler) {
  std::optional<gid_t> gid;
  if (!settings.group.empty()) {
    std::vector<char> buf(16384);
    group entry{};
    group* found = nullptr;
    const int err = ::getgrnam_r(settings.group.c_str(), &entry, buf.data(), buf.size(), &found);
    if (err != 0 || found == nullptr) {
      return MakeError(ErrorKind::kInvalidInput, "control.group \"" + settings.group +
                                                     "\" is not a group on this machine; create it (groupadd) or "
                                                     "change control.group");
    }
    gid = found->gr_gid;
  }
  auto impl = std::make_shared<Impl>(io, settings, handler, gid);
  if (auto st = impl->Listen(); !st) return MakeError(st.error());
  impl->Accept();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Close(); }
void Server::Close() { impl_->Close(); }
const std::filesystem::path& Server::socket_path() const { return impl_->settings_.socket_path; }
std::size_t Server::open_connections() const { return impl_->connections_.size(); }

}  // namespace ctagent::control
