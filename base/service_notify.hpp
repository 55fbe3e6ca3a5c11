// Tells a service manager (systemd) how the daemon is doing, by the sd_notify protocol: one
// datagram per message on the AF_UNIX socket named by $NOTIFY_SOCKET (sd_notify(3)):
//   READY=1     the daemon serves (its spool is open, or it waits for a scan that holds it)
//   WATCHDOG=1  the daemon's event loop is alive; sent from the loop itself (core/heartbeat.hpp)
//   STOPPING=1  a stop was asked for; what is accepted stays in the spool
//   STATUS=...  one line for `systemctl status`
// Written here rather than linking libsystemd: the protocol is a stable, documented datagram, and
// firmware without systemd should not need the library. Without $NOTIFY_SOCKET every call is a
// no-op, so the same binary runs under systemd, another supervisor or a terminal.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "base/error.hpp"

namespace ctagent::service {

class ServiceNotifier {
 public:
  // Not connected: every call does nothing.
  ServiceNotifier() = default;
  // `socket` as in $NOTIFY_SOCKET: a path, or "@name" for Linux's abstract namespace.
  // `watchdog` is the manager's WatchdogSec (zero: no watchdog).
  ServiceNotifier(std::string socket, std::chrono::microseconds watchdog);

  // Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (a watchdog meant for another
  // process is not ours), then removes them from the environment so that children (the driver
  // host) do not talk to the manager in our name.
  static ServiceNotifier FromEnvironment();

  bool enabled() const { return !socket_.empty(); }
  // The manager's watchdog timeout (zero when it set none). Ping at half of it, as systemd advises.
  std::chrono::microseconds watchdog_timeout() const { return watchdog_; }

  // Sends one message ("READY=1", "STATUS=...", several joined by '\n'). Thread-safe: each call
  // is one datagram on its own socket. Errors are returned, never thrown; a manager that went
  // away is not the daemon's failure, so callers log and carry on.
  Status Send(std::string_view message) const;

  void Ready() const;
  void Watchdog() const;
  void Stopping() const;
  // Control characters in `text` become spaces: a newline would start another assignment.
  void SetStatus(std::string_view text) const;

 private:
  std::string socket_;
  std::chrono::microseconds watchdog_{0};
};

}  // namespace ctagent::service
