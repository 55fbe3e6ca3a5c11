#include "drivers/plugin/isolated_driver.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "drivers/abi/c_abi.hpp"
#include "drivers/host/host_wire.hpp"

namespace ctagent::drivers::plugin {
namespace {

using Clock = std::chrono::steady_clock;
using host::Op;
using host::ReplyHeader;
using host::RequestHeader;

constexpr auto kOpenTimeout = std::chrono::seconds(30);     // a real detector may take a while to open
constexpr auto kControlTimeout = std::chrono::seconds(10);  // arm, start, stop, self_test, health
constexpr auto kAbortAnswer = std::chrono::seconds(1);      // ABI: 100 ms; generous for loaded machines
constexpr auto kExitWait = std::chrono::seconds(2);
constexpr auto kPollSlice = std::chrono::milliseconds(50);  // how soon a wait notices abort()

std::string Seconds(double s) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", s);
  return text;
}

std::string SignalText(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return std::to_string(sig) + " (" + (abbrev != nullptr ? std::string("SIG") + abbrev : std::string("unknown")) + ")";
}

std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// The client side of one ctagent-driver-host process; the C table's handle.
class RemoteDriver {
 public:
  RemoteDriver(pid_t pid, int calls_fd, int abort_fd, std::string driver, double stall_timeout_s)
      : pid_(pid), calls_fd_(calls_fd), abort_fd_(abort_fd), driver_(std::move(driver)),
        configured_stall_s_(stall_timeout_s) {}
  ~RemoteDriver() { Shutdown(); }
  RemoteDriver(const RemoteDriver&) = delete;
  RemoteDriver& operator=(const RemoteDriver&) = delete;

  ctagent_status Open(const std::string& options) {
    return Call(Op::kOpen, options.data(), options.size(), nullptr, 0, "open", kOpenTimeout);
  }

  ctagent_status Call(Op op, const void* payload, std::size_t size, void* out, std::size_t out_size, const char* what,
                      Clock::duration timeout) {
    if (dead_) return dead_status_;
    if (op == Op::kArm) {
      views_ = 0;
      ctagent_protocol p{};
      std::memcpy(&p, payload, std::min(size, sizeof p));
      view_rate_hz_ = p.rotation_time_s > 0 ? p.views_per_rotation / p.rotation_time_s : 0;
    }
    if (auto st = Send(op, payload, size); st != CTAGENT_OK) return st;
    ReplyHeader reply;
    if (auto st = AwaitReply(&reply, timeout, what); st != CTAGENT_OK) return st;
    if (reply.status < 0) return ReceiveErrorText(reply.status, reply.payload_bytes);
    if (reply.payload_bytes != (out != nullptr ? out_size : 0)) {
      return Fault(CTAGENT_E_INTERNAL, std::string("the driver host answered ") + what + "() with " +
                                           std::to_string(reply.payload_bytes) + " bytes, expected " +
                                           std::to_string(out != nullptr ? out_size : 0) +
                                           "; is ctagent-driver-host from the same build as the agent?");
    }
    if (out != nullptr && !host::RecvAll(calls_fd_, out, out_size)) return Died();
    return reply.status;
  }

  ctagent_status NextView(ctagent_view* view, void* samples, std::uint64_t capacity) {
    if (view == nullptr || view->struct_size < sizeof *view) {
      return Fail(CTAGENT_E_INVALID, "next_view: view is NULL or its struct_size too small");
    }
    if (dead_) return dead_status_;
    if (auto st = Send(Op::kNextView, &capacity, sizeof capacity); st != CTAGENT_OK) return st;
    ReplyHeader reply;
    const auto stall = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(StallTimeout()));
    if (auto st = AwaitReply(&reply, stall, nullptr); st != CTAGENT_OK) return st;
    if (reply.payload_bytes < sizeof(ctagent_view)) {
      return Fault(CTAGENT_E_INTERNAL, "the driver host's next_view reply is too short; is ctagent-driver-host "
                                       "from the same build as the agent?");
    }
    ctagent_view got{};
    if (!host::RecvAll(calls_fd_, &got, sizeof got)) return Died();
    const std::uint64_t tail = reply.payload_bytes - sizeof got;
    const std::uint32_t caller_size = view->struct_size;
    *view = got;
    view->struct_size = caller_size;
    if (reply.status < 0) return ReceiveErrorText(reply.status, tail);
    if (reply.status == CTAGENT_OK) {
      if (tail > capacity) return Fault(CTAGENT_E_INTERNAL, "the driver host sent more samples than the buffer holds");
      if (tail > 0 && !host::RecvAll(calls_fd_, samples, tail)) return Died();
      ++views_;
    } else if (tail != 0) {
      return Fault(CTAGENT_E_INTERNAL, "the driver host sent samples with END_OF_SCAN");
    }
    return reply.status;
  }

  // ABI 1.2: waits in the host's driver; the reply may take the whole timeout, so the call's
  // own deadline is the timeout plus the control allowance (abort() still ends it early).
  ctagent_status WaitScan(std::uint32_t timeout_ms, ctagent_scan_announcement* out) {
    if (out == nullptr || out->struct_size < sizeof *out || out->protocol == nullptr ||
        out->protocol->struct_size < CTAGENT_PROTOCOL_SIZE_1_0) {
      return Fail(CTAGENT_E_INVALID, "wait_scan: out is NULL, too small, or has no protocol buffer");
    }
    host::WireAnnouncement wire{};
    const ctagent_status st = Call(Op::kWaitScan, &timeout_ms, sizeof timeout_ms, &wire, sizeof wire, "wait_scan",
                                   std::chrono::milliseconds(timeout_ms) + kControlTimeout);
    if (st != CTAGENT_OK) return st;
    views_ = 0;
    view_rate_hz_ = wire.protocol.rotation_time_s > 0 ? wire.protocol.views_per_rotation / wire.protocol.rotation_time_s : 0;
    const std::uint32_t caller_size = out->protocol->struct_size;
    std::memcpy(out->protocol, &wire.protocol, std::min<std::size_t>(caller_size, sizeof wire.protocol));
    out->protocol->struct_size = static_cast<std::uint32_t>(std::min<std::size_t>(caller_size, sizeof wire.protocol));
    std::memcpy(out->accession_number, wire.accession_number, sizeof out->accession_number);
    std::memcpy(out->procedure_step_id, wire.procedure_step_id, sizeof out->procedure_step_id);
    out->accession_number[sizeof out->accession_number - 1] = '\0';
    out->procedure_step_id[sizeof out->procedure_step_id - 1] = '\0';
    return st;
  }

  // From any thread. The host's listener calls the driver's abort(); the waiting call kills the
  // host if no answer comes within kAbortAnswer.
  void Abort() {
    if (dead_) return;
    abort_at_ns_ = NowNs();
    const std::uint8_t byte = 1;
    (void)::send(abort_fd_, &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  std::size_t LastError(char* buffer, std::size_t capacity) {
    std::lock_guard lock(error_mutex_);
    return abi::CopyText(last_error_, buffer, capacity);
  }

 private:
  double StallTimeout() const {
    return configured_stall_s_ > 0 ? configured_stall_s_ : DefaultStallTimeoutS(view_rate_hz_);
  }

  ctagent_status Fail(ctagent_status status, std::string text) {
    std::lock_guard lock(error_mutex_);
    last_error_ = std::move(text);
    return status;
  }

  // The host is unusable from here on: killed if still running, every later call fails alike.
  ctagent_status Fault(ctagent_status status, std::string text) {
    KillAndReap();
    dead_status_ = status;
    dead_ = true;
    return Fail(status, std::move(text));
  }

  ctagent_status Send(Op op, const void* payload, std::size_t size) {
    RequestHeader request;
    request.op = static_cast<std::uint32_t>(op);
    request.payload_bytes = size;
    if (!host::SendAll(calls_fd_, &request, sizeof request) || (size > 0 && !host::SendAll(calls_fd_, payload, size))) {
      return Died();
    }
    return CTAGENT_OK;
  }

  // Waits for a reply header, bounded by `timeout` and, once abort() was called during the
  // wait, by kAbortAnswer. `what` names a control call; nullptr means next_view.
  ctagent_status AwaitReply(ReplyHeader* reply, Clock::duration timeout, const char* what) {
    const std::int64_t started_ns = NowNs();
    const auto deadline = Clock::now() + timeout;
    for (;;) {  // bounded: ends by the deadline at the latest
      auto limit = deadline;
      const std::int64_t abort_ns = abort_at_ns_;
      const bool aborting = abort_ns >= started_ns;
      if (aborting) {
        const auto abort_deadline = Clock::time_point(std::chrono::nanoseconds(abort_ns)) + kAbortAnswer;
        limit = std::min(limit, abort_deadline);
      }
      const auto now = Clock::now();
      if (now >= limit) {
        const std::string pid = std::to_string(pid_);
        if (aborting && limit < deadline) {
          return Fault(CTAGENT_E_ABORTED, "the driver did not answer abort() within " +
                                              Seconds(std::chrono::duration<double>(kAbortAnswer).count()) +
                                              " s; its process (PID " + pid + ") was killed");
        }
        const std::string waited = Seconds(std::chrono::duration<double>(timeout).count());
        if (what == nullptr) {
          return Fault(CTAGENT_E_IO, "the driver delivered no view for " + waited + " s after " +
                                         std::to_string(views_) + " views (stall timeout: driver.options."
                                         "stall_timeout_s, default max(2 s, 50 view periods)); its process (PID " +
                                         pid + ") was killed");
        }
        return Fault(CTAGENT_E_IO, std::string("the driver did not answer ") + what + "() within " + waited +
                                       " s; its process (PID " + pid + ") was killed");
      }
      auto readable = host::WaitReadable(
          calls_fd_, std::chrono::duration_cast<std::chrono::milliseconds>(std::min<Clock::duration>(limit - now, kPollSlice)) +
                         std::chrono::milliseconds(1));
      if (!readable) return Fault(CTAGENT_E_IO, readable.error().message());
      if (*readable) break;
    }
    if (auto st = host::RecvAll(calls_fd_, reply, sizeof *reply); !st) return Died();
    if (reply->magic != host::kReplyMagic || reply->payload_bytes > host::kMaxPayload) {
      return Fault(CTAGENT_E_INTERNAL, "the driver host sent a malformed reply; is ctagent-driver-host from the "
                                       "same build as the agent?");
    }
    return CTAGENT_OK;
  }

  ctagent_status ReceiveErrorText(ctagent_status status, std::uint64_t bytes) {
    std::string text(bytes, '\0');
    if (bytes > 0 && !host::RecvAll(calls_fd_, text.data(), text.size())) return Died();
    return Fail(status, text);
  }

  // The calls socket closed: the host is dying or dead. Reap it (bounded) and say how it ended.
  ctagent_status Died() {
    if (dead_) return dead_status_;
    int status = 0;
    bool reaped = false;
    const auto give_up = Clock::now() + kExitWait;
    while (Clock::now() < give_up) {  // bounded by kExitWait
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno != EINTR)) {
        reaped = r == pid_;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const std::string who = "the driver process (PID " + std::to_string(pid_) + ")";
    const std::string after = " after " + std::to_string(views_) + " views";
    std::string text;
    if (!reaped) {
      text = who + " closed its connection but did not exit" + after + "; it was killed";
    } else if (WIFSIGNALED(status)) {
      text = who + " died with signal " + SignalText(WTERMSIG(status)) + after;
    } else {
      text = who + " exited with status " + std::to_string(WEXITSTATUS(status)) + after;
    }
    if (reaped) pid_ = -1;
    return Fault(CTAGENT_E_INTERNAL, text + " (its output, if any, is on the agent's stderr)");
  }

  void KillAndReap() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  void Shutdown() {
    if (pid_ > 0 && !dead_) {
      // A polite close first, so the driver closes its device; bounded, then SIGKILL.
      RequestHeader request;
      request.op = static_cast<std::uint32_t>(Op::kClose);
      if (host::SendAll(calls_fd_, &request, sizeof request)) {
        auto readable = host::WaitReadable(calls_fd_, std::chrono::duration_cast<std::chrono::milliseconds>(kExitWait));
        ReplyHeader reply;
        if (readable && *readable) (void)host::RecvAll(calls_fd_, &reply, sizeof reply);
      }
    }
    // Closing both sockets ends the host even if its main thread is stuck in the driver.
    ::close(calls_fd_);
    ::close(abort_fd_);
    if (pid_ > 0) {
      const auto give_up = Clock::now() + kExitWait;
      int status = 0;
      while (Clock::now() < give_up) {  // bounded by kExitWait
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_ || (r < 0 && errno != EINTR)) {
          pid_ = -1;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      KillAndReap();
    }
  }

  pid_t pid_;
  int calls_fd_;
  int abort_fd_;
  std::string driver_;
  double configured_stall_s_;
  double view_rate_hz_ = 0;
  std::uint64_t views_ = 0;  // delivered in the current scan
  std::atomic<bool> dead_{false};
  ctagent_status dead_status_ = CTAGENT_OK;
  std::atomic<std::int64_t> abort_at_ns_{-1};
  std::mutex error_mutex_;  // last_error may be read from another thread than the failing call
  std::string last_error_;
};

RemoteDriver* Remote(ctagent_driver* d) { return reinterpret_cast<RemoteDriver*>(d); }

ctagent_status OpenError(char* error, std::size_t capacity, ctagent_status status, const std::string& text) {
  abi::CopyText(text, error, capacity);
  return status;
}

// Starts the host with the child ends of both sockets on fds 3 and 4, nothing else inherited
// but stdout/stderr, signals at their defaults and unblocked, in its own process group (a
// Ctrl-C at the terminal reaches the agent, which then aborts the driver in order).
ctagent_status Spawn(const std::string& host_path, const std::string& driver_path, pid_t* pid, int* calls_fd,
                     int* abort_fd, std::string* error) {
  int calls[2] = {-1, -1};
  int aborts[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, calls) != 0 ||
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, aborts) != 0) {
    *error = std::string("cannot create the driver host's sockets: ") + std::strerror(errno);
    for (int fd : {calls[0], calls[1], aborts[0], aborts[1]}) {
      if (fd >= 0) ::close(fd);
    }
    return CTAGENT_E_IO;
  }
  // Above the target numbers, so each dup2 in the child is a real copy (which clears CLOEXEC).
  const int child_calls = ::fcntl(calls[1], F_DUPFD_CLOEXEC, 10);
  const int child_abort = ::fcntl(aborts[1], F_DUPFD_CLOEXEC, 10);
  ::close(calls[1]);
  ::close(aborts[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, child_calls, host::kCallsFd);
  posix_spawn_file_actions_adddup2(&actions, child_abort, host::kAbortFd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);

  std::string arg0 = host_path;
  std::string arg1 = driver_path;
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  const int rc = ::posix_spawn(pid, host_path.c_str(), &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(child_calls);
  ::close(child_abort);
  if (rc != 0) {
    ::close(calls[0]);
    ::close(aborts[0]);
    *error = "cannot start the driver host " + host_path + ": " + std::strerror(rc) +
             " (set driver.options.host to a ctagent-driver-host of this build)";
    return CTAGENT_E_IO;
  }
  *calls_fd = calls[0];
  *abort_fd = aborts[0];
  return CTAGENT_OK;
}

ctagent_status IsolatedOpen(const char* options_json, ctagent_driver** out, char* error, std::size_t capacity) {
  if (out == nullptr) return CTAGENT_E_INVALID;
  *out = nullptr;
  const auto options = nlohmann::json::parse(options_json != nullptr ? options_json : "", nullptr, false);
  if (!options.is_object() || !options.contains("path") || !options["path"].is_string() || !options.contains("host") ||
      !options["host"].is_string()) {
    return OpenError(error, capacity, CTAGENT_E_INVALID,
                     "isolated driver: options must be {\"path\": driver .so, \"host\": ctagent-driver-host, ...}");
  }
  const std::string path = options["path"].get<std::string>();
  const std::string host_path = options["host"].get<std::string>();
  const double stall = options.contains("stall_timeout_s") && options["stall_timeout_s"].is_number()
                           ? options["stall_timeout_s"].get<double>()
                           : 0.0;
  const std::string driver_options = options.value("driver_options", nlohmann::json::object()).dump();
  pid_t pid = -1;
  int calls_fd = -1;
  int abort_fd = -1;
  std::string why;
  if (auto st = Spawn(host_path, path, &pid, &calls_fd, &abort_fd, &why); st != CTAGENT_OK) {
    return OpenError(error, capacity, st, why);
  }
  auto remote = std::make_unique<RemoteDriver>(pid, calls_fd, abort_fd, path, stall);
  if (const ctagent_status st = remote->Open(driver_options); st != CTAGENT_OK) {
    char text[1024] = {};
    remote->LastError(text, sizeof text);
    return OpenError(error, capacity, st < 0 ? st : CTAGENT_E_INTERNAL, text);
  }
  *out = reinterpret_cast<ctagent_driver*>(remote.release());
  return CTAGENT_OK;
}

const ctagent_driver_api kIsolatedApi = {
    sizeof(ctagent_driver_api),
    CTAGENT_DRIVER_ABI_MAJOR,
    CTAGENT_DRIVER_ABI_MINOR,
    IsolatedOpen,
    [](ctagent_driver* d) { delete Remote(d); },
    [](ctagent_driver* d, ctagent_capabilities* out) -> ctagent_status {
      if (d == nullptr || out == nullptr || out->struct_size < sizeof *out) return CTAGENT_E_INVALID;
      ctagent_capabilities caps{};
      const ctagent_status st =
          Remote(d)->Call(Op::kCapabilities, nullptr, 0, &caps, sizeof caps, "get_capabilities", kControlTimeout);
      if (st == CTAGENT_OK) {
        caps.struct_size = out->struct_size;
        *out = caps;
      }
      return st;
    },
    [](ctagent_driver* d, const ctagent_protocol* p) -> ctagent_status {
      if (d == nullptr || p == nullptr || p->struct_size < sizeof *p) return CTAGENT_E_INVALID;
      return Remote(d)->Call(Op::kArm, p, sizeof *p, nullptr, 0, "arm", kControlTimeout);
    },
    [](ctagent_driver* d) -> ctagent_status {
      return d == nullptr ? CTAGENT_E_INVALID : Remote(d)->Call(Op::kStart, nullptr, 0, nullptr, 0, "start", kControlTimeout);
    },
    [](ctagent_driver* d, ctagent_view* view, void* samples, std::uint64_t capacity) -> ctagent_status {
      return d == nullptr ? CTAGENT_E_INVALID : Remote(d)->NextView(view, samples, capacity);
    },
    [](ctagent_driver* d) -> ctagent_status {
      return d == nullptr ? CTAGENT_E_INVALID : Remote(d)->Call(Op::kStop, nullptr, 0, nullptr, 0, "stop", kControlTimeout);
    },
    [](ctagent_driver* d) {
      if (d != nullptr) Remote(d)->Abort();
    },
    [](ctagent_driver* d) -> ctagent_status {
      return d == nullptr ? CTAGENT_E_INVALID
                          : Remote(d)->Call(Op::kSelfTest, nullptr, 0, nullptr, 0, "self_test", kControlTimeout);
    },
    [](ctagent_driver* d, ctagent_health* out) -> ctagent_status {
      if (d == nullptr || out == nullptr || out->struct_size < sizeof *out) return CTAGENT_E_INVALID;
      ctagent_health health{};
      const ctagent_status st = Remote(d)->Call(Op::kHealth, nullptr, 0, &health, sizeof health, "get_health", kControlTimeout);
      if (st == CTAGENT_OK) {
        health.struct_size = out->struct_size;
        *out = health;
      }
      return st;
    },
    [](ctagent_driver* d, char* buffer, std::size_t capacity) -> std::size_t {
      return d == nullptr ? 0 : Remote(d)->LastError(buffer, capacity);
    },
    [](ctagent_driver* d, std::uint32_t timeout_ms, ctagent_scan_announcement* out) -> ctagent_status {
      return d == nullptr ? CTAGENT_E_INVALID : Remote(d)->WaitScan(timeout_ms, out);
    },
};

}  // namespace

const ctagent_driver_api* IsolatedDriverApi() { return &kIsolatedApi; }

double DefaultStallTimeoutS(double view_rate_hz) {
  return view_rate_hz > 0 ? std::max(2.0, 50.0 / view_rate_hz) : 2.0;
}

Expected<std::filesystem::path> FindDriverHost(const nlohmann::json& options) {
  std::error_code ec;
  if (options.is_object() && options.contains("host")) {
    if (!options["host"].is_string()) {
      return MakeError(ErrorKind::kInvalidInput, "driver.options.host: expected the path of ctagent-driver-host");
    }
    const std::filesystem::path configured = options["host"].get<std::string>();
    if (!std::filesystem::is_regular_file(configured, ec) || ::access(configured.c_str(), X_OK) != 0) {
      return MakeError(ErrorKind::kNotFound, "driver.options.host: no executable at " + configured.string() +
                                                 "; point it at the ctagent-driver-host of this build");
    }
    return configured;
  }
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::filesystem::path candidate = ec ? std::filesystem::path(kDriverHostName)
                                             : self.parent_path() / kDriverHostName;
  if (!std::filesystem::is_regular_file(candidate, ec) || ::access(candidate.c_str(), X_OK) != 0) {
    return MakeError(ErrorKind::kNotFound,
                     std::string("the plugin driver runs in a separate process, but ") + kDriverHostName +
                         " was not found next to this program (looked for " + candidate.string() +
                         "); install it there, set driver.options.host to its path, or set "
                         "driver.options.isolation to \"in_process\" (a driver crash then ends the agent)");
  }
  return candidate;
}

}  // namespace ctagent::drivers::plugin
