// The CLI's side of the control socket: plain blocking POSIX calls bounded by poll timeouts (the
// CLI has no event loop and talks to one daemon at a time).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/control/control.hpp"
#include "agent/control/unix_path.hpp"

namespace ctagent::control {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Waits until `fd` is ready for `events` or `deadline` passes.
Status WaitReady(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return MakeError(ErrorKind::kNetwork, "the daemon did not answer " + what + " in time");
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (n > 0) return Ok();
    if (n < 0 && errno != EINTR) return MakeError(ErrorKind::kIo, "poll on the control socket: " + std::string(std::strerror(errno)));
  }
}

}  // namespace

Expected<Client> Client::Connect(const std::filesystem::path& socket_path, std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const UnixPath address(socket_path);
  if (!address.fits()) {
    return MakeError(ErrorKind::kNotFound, "no daemon: the directory of the control socket " + socket_path.string() +
                                               " cannot be opened");
  }
  std::memcpy(addr.sun_path, address.str().c_str(), address.str().size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return MakeError(ErrorKind::kIo, "socket(AF_UNIX): " + std::string(std::strerror(errno)));
  Client client(fd);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    if (err == EAGAIN || err == EINPROGRESS) {
      // The daemon's backlog is full: wait for room, bounded.
      if (auto st = WaitReady(fd, POLLOUT, Clock::now() + timeout, "the connection"); !st) return MakeError(st.error());
      int so_error = 0;
      socklen_t len = sizeof so_error;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
      if (so_error == 0) return client;
    }
    const std::string where = "the control socket " + socket_path.string();
    if (err == ENOENT) return MakeError(ErrorKind::kNotFound, "no daemon: " + where + " does not exist");
    if (err == ECONNREFUSED) return MakeError(ErrorKind::kNetwork, "no daemon answers on " + where + " (left over from one that stopped?)");
    if (err == EACCES || err == EPERM) {
      return MakeError(ErrorKind::kPermission, "this user may not use " + where +
                                                   ": run as root or as a member of the group in control.group");
    }
    return MakeError(ErrorKind::kIo, "connecting to " + where + ": " + std::strerror(err));
  }
  return client;
}

Client::Client(int fd) : fd_(fd) {}
Client::Client(Client&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), next_id_(other.next_id_), buffer_(std::move(other.buffer_)) {}
Client& Client::operator=(Client&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    next_id_ = other.next_id_;
    buffer_ = std::move(other.buffer_);
  }
  return *this;
}
Client::~Client() {
  if (fd_ >= 0) ::close(fd_);
}

Result Client::Call(const std::string& cmd, const nlohmann::json& args, std::chrono::milliseconds timeout) {
  if (fd_ < 0) return MakeError(ErrorKind::kInternal, "control client is not connected");
  const auto deadline = Clock::now() + timeout;
  const long long id = next_id_++;
  Json request = args.is_object() ? args : Json::object();
  request["v"] = kProtocolVersion;
  request["id"] = id;
  request["cmd"] = cmd;
  const std::string line = request.dump() + "\n";
  for (std::size_t sent = 0; sent < line.size();) {
    const ssize_t n = ::send(fd_, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (auto st = WaitReady(fd_, POLLOUT, deadline, cmd); !st) return MakeError(st.error());
    } else {
      // Closed on us: a refused connection is closed right after its answer, which may be
      // waiting to be read.
      break;
    }
  }
  // Bounded like the server's requests: an answer is at most a few MiB (a status of many scans).
  constexpr std::size_t kMaxResponseBytes = 64u << 20;
  for (;;) {
    const auto newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      const std::string text = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      const Json response = Json::parse(text, nullptr, false);
      if (response.is_discarded() || !response.is_object() || !response.contains("ok")) {
        return MakeError(ErrorKind::kProtocol, "the daemon's answer is not a control response: " + text.substr(0, 200));
      }
      const Json rid = response.contains("id") ? response["id"] : Json(nullptr);
      // An answer with no id is about the connection itself (refused, too many, too long).
      if (!rid.is_null() && rid != Json(id)) continue;  // an answer to an earlier, timed-out call
      if (response["ok"] == true) {
        if (response.contains("result") && response["result"].is_object()) return response["result"];
        return MakeError(ErrorKind::kProtocol, "the daemon's answer to " + cmd + " carries no result object");
      }
      const Json error = response.contains("error") && response["error"].is_object() ? response["error"] : Json::object();
      const auto field = [&](const char* key, const std::string& fallback) {
        return error.contains(key) && error[key].is_string() ? error[key].get<std::string>() : fallback;
      };
      return MakeError(KindFromWire(field("kind", "internal")), field("message", "the daemon refused " + cmd));
    }
    if (buffer_.size() > kMaxResponseBytes) return MakeError(ErrorKind::kProtocol, "the daemon's answer is too long");
    if (auto st = WaitReady(fd_, POLLIN, deadline, cmd); !st) return MakeError(st.error());
    char chunk[65536];
    const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n > 0) {
      buffer_.append(chunk, static_cast<std::size_t>(n));
    } else if (n == 0) {
      return MakeError(ErrorKind::kNetwork, "the daemon closed the control connection before answering " + cmd);
    } else if (errno != EAGAIN && errno != EINTR) {
      return MakeError(ErrorKind::kNetwork, "reading the daemon's answer: " + std::string(std::strerror(errno)));
    }
  }
}

}  // namespace ctagent::control
