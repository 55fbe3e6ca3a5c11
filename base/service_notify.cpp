#include "base/service_notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "base/log.hpp"

namespace ctagent::service {

ServiceNotifier::ServiceNotifier(std::string socket, std::chrono::microseconds watchdog)
    : socket_(std::move(socket)), watchdog_(watchdog) {}

ServiceNotifier ServiceNotifier::FromEnvironment() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  const char* usec = std::getenv("WATCHDOG_USEC");
  const char* pid = std::getenv("WATCHDOG_PID");
  std::string socket_name = socket != nullptr ? socket : "";
  std::chrono::microseconds watchdog{0};
  if (usec != nullptr) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long value = std::strtoull(usec, &end, 10);
    const bool ours = pid == nullptr || std::strtoll(pid, nullptr, 10) == static_cast<long long>(getpid());
    if (errno == 0 && end != usec && *end == '\0' && value > 0 && ours) {
      watchdog = std::chrono::microseconds(value);
    }
  }
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
  return ServiceNotifier(std::move(socket_name), watchdog);
}

Status ServiceNotifier::Send(std::string_view message) const {
  if (socket_.empty()) return Ok();
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  // Only absolute paths and abstract names are valid here (sd_notify(3)); anything else is a
  // manager's misconfiguration, not a place to write to.
  if ((socket_[0] != '/' && socket_[0] != '@') || socket_.size() >= sizeof(address.sun_path)) {
    return MakeError(ErrorKind::kInvalidInput, "NOTIFY_SOCKET=\"" + socket_ +
                                                   "\" is neither an absolute path nor an abstract socket name");
  }
  std::memcpy(address.sun_path, socket_.data(), socket_.size());
  if (socket_[0] == '@') address.sun_path[0] = '\0';
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_.size());

  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return MakeError(ErrorKind::kIo, std::string("notify socket: ") + std::strerror(errno));
  }
  const ssize_t sent =
      ::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&address), length);
  const int error = errno;
  ::close(fd);
  if (sent < 0 || static_cast<std::size_t>(sent) != message.size()) {
    return MakeError(ErrorKind::kIo, "notify socket " + socket_ + ": " +
                                         (sent < 0 ? std::strerror(error) : std::string("short send")));
  }
  return Ok();
}

namespace {
void SendOrLog(const ServiceNotifier& notifier, std::string_view message) {
  if (auto st = notifier.Send(message); !st) log::Warn("service", st.error().message());
}
}  // namespace

void ServiceNotifier::Ready() const { SendOrLog(*this, "READY=1"); }
void ServiceNotifier::Watchdog() const { SendOrLog(*this, "WATCHDOG=1"); }
void ServiceNotifier::Stopping() const { SendOrLog(*this, "STOPPING=1"); }

void ServiceNotifier::SetStatus(std::string_view text) const {
  if (!enabled()) return;
  std::string line = "STATUS=";
  for (const char c : text) line += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
  SendOrLog(*this, line);
}

}  // namespace ctagent::service
