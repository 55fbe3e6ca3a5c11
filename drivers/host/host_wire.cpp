#include "drivers/host/host_wire.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace ctagent::drivers::host {

Status SendAll(int fd, std::span<const std::uint8_t> bytes) { return SendAll(fd, bytes.data(), bytes.size()); }

Status SendAll(int fd, const void* data, std::size_t size) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::size_t sent = 0;
  while (sent < size) {  // bounded: each pass sends at least one byte or fails
    const ssize_t n = ::send(fd, p + sent, size - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return MakeError(ErrorKind::kIo, std::string("driver host socket: send failed: ") + std::strerror(errno));
    }
    sent += static_cast<std::size_t>(n);
  }
  return Ok();
}

Status RecvAll(int fd, void* data, std::size_t size) {
  auto* p = static_cast<std::uint8_t*>(data);
  std::size_t got = 0;
  while (got < size) {  // bounded: each pass receives at least one byte or fails
    const ssize_t n = ::recv(fd, p + got, size - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      return MakeError(got == 0 ? ErrorKind::kNotFound : ErrorKind::kIo,
                       "driver host socket: the peer closed the connection after " + std::to_string(got) + " of " +
                           std::to_string(size) + " bytes");
    }
    if (n < 0) return MakeError(ErrorKind::kIo, std::string("driver host socket: recv failed: ") + std::strerror(errno));
    got += static_cast<std::size_t>(n);
  }
  return Ok();
}

Expected<bool> WaitReadable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  const int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (rc < 0 && errno != EINTR) {
    return MakeError(ErrorKind::kIo, std::string("driver host socket: poll failed: ") + std::strerror(errno));
  }
  return rc > 0;  // readable, or hung up (the next recv says which)
}

}  // namespace ctagent::drivers::host
