// ctagent-driver-host: runs one untrusted C-ABI detector driver in its own process, so that a
// crash or a wild write in the driver cannot take the agent or its spool with it.
//
//   ctagent-driver-host DRIVER.so      (started by the agent, plugin::IsolatedDriverApi())
//
// It serves the driver's calls over fd 3 and takes abort requests on fd 4 (drivers/host/
// host_wire.hpp); it is not meant to be run by hand. It exits when the agent sends kClose or
// closes either socket.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "drivers/abi/c_abi.hpp"
#include "drivers/host/host_wire.hpp"
#include "drivers/include/ctagent_driver.h"
#include "drivers/plugin/plugin_detector.hpp"

namespace ctagent::drivers::host {
namespace {

// Fatal signals go back to their default action: a crash in the driver must end this process
// with the signal itself, which the agent reports by name (a sanitizer runtime would otherwise
// turn it into an exit code). Signals the agent blocks or ignores are inherited across exec.
void ResetSignals() {
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGPIPE, SIGINT, SIGTERM}) {
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, nullptr);
}

class Host {
 public:
  explicit Host(std::string driver_path) : driver_path_(std::move(driver_path)) {}

  int Run() {
    // The abort listener: abort() may come while the main thread is blocked in the driver.
    std::thread([this] { AbortLoop(); }).detach();
    for (;;) {  // bounded by the agent: it ends with kClose or by closing the socket
      RequestHeader request;
      if (!RecvAll(kCallsFd, &request, sizeof request)) return 0;  // the agent went away
      if (request.magic != kRequestMagic || request.payload_bytes > kMaxPayload) {
        std::fprintf(stderr, "ctagent-driver-host: malformed request from the agent; exiting\n");
        return 3;
      }
      std::vector<std::uint8_t> payload(request.payload_bytes);
      if (!payload.empty() && !RecvAll(kCallsFd, payload.data(), payload.size())) return 0;
      if (!Serve(static_cast<Op>(request.op), payload)) return 0;
      if (static_cast<Op>(request.op) == Op::kClose) return 0;
    }
  }

 private:
  void AbortLoop() {
    for (;;) {  // bounded by the agent: EOF when it closes the socket or dies
      std::uint8_t byte = 0;
      if (!RecvAll(kAbortFd, &byte, 1)) {
        // The agent is gone (or done). A driver stuck in a call would keep us alive forever.
        _exit(0);
      }
      std::lock_guard lock(handle_mutex_);
      if (handle_ != nullptr) api_->abort(handle_);
    }
  }

  bool Reply(ctagent_status status, const void* payload, std::size_t size) {
    ReplyHeader header;
    header.status = status;
    header.payload_bytes = size;
    if (!SendAll(kCallsFd, &header, sizeof header)) return false;
    return size == 0 || SendAll(kCallsFd, payload, size).has_value();
  }

  bool ReplyStatus(ctagent_status status) {
    if (status >= 0) return Reply(status, nullptr, 0);
    const std::string text = LastError();
    return Reply(status, text.data(), text.size());
  }

  std::string LastError() {
    char text[1024] = {};
    if (handle_ != nullptr) api_->last_error(handle_, text, sizeof text);
    return text;
  }

  bool Serve(Op op, const std::vector<std::uint8_t>& payload) {
    if (op == Op::kOpen) return Open(payload);
    if (op == Op::kClose) {
      std::lock_guard lock(handle_mutex_);
      if (handle_ != nullptr) api_->close(handle_);
      handle_ = nullptr;
      return Reply(CTAGENT_OK, nullptr, 0);
    }
    if (handle_ == nullptr) {
      const std::string text = "the driver is not open";
      return Reply(CTAGENT_E_INVALID, text.data(), text.size());
    }
    switch (op) {
      case Op::kCapabilities: {
        ctagent_capabilities caps{};
        caps.struct_size = sizeof caps;
        const ctagent_status st = api_->get_capabilities(handle_, &caps);
        return st == CTAGENT_OK ? Reply(st, &caps, sizeof caps) : ReplyStatus(st);
      }
      case Op::kArm: {
        ctagent_protocol protocol{};
        if (payload.size() != sizeof protocol) return ReplyBad("arm");
        std::memcpy(&protocol, payload.data(), sizeof protocol);
        // The agent's table here says the current minor version; the driver's own table says
        // whether it knows the ABI 1.1 protocol fields.
        if (auto converted = abi::FromC(&protocol); converted) {
          if (auto st = abi::CheckDriverTakes(*api_, *converted, driver_path_); !st) {
            const std::string text = st.error().message();
            return Reply(CTAGENT_E_UNSUPPORTED, text.data(), text.size());
          }
        }
        return ReplyStatus(api_->arm(handle_, &protocol));
      }
      case Op::kStart: return ReplyStatus(api_->start(handle_));
      case Op::kStop: return ReplyStatus(api_->stop(handle_));
      case Op::kSelfTest: return ReplyStatus(api_->self_test(handle_));
      case Op::kHealth: {
        ctagent_health health{};
        health.struct_size = sizeof health;
        const ctagent_status st = api_->get_health(handle_, &health);
        return st == CTAGENT_OK ? Reply(st, &health, sizeof health) : ReplyStatus(st);
      }
      case Op::kNextView: return NextView(payload);
      case Op::kWaitScan: return WaitScan(payload);
      default: return ReplyBad("an unknown call");
    }
  }

  // A 1.1 driver (or a 1.2 one with wait_scan NULL) does not announce scans: said as
  // CTAGENT_E_UNSUPPORTED, which the agent takes as "scans start from ctagent scan only".
  bool WaitScan(const std::vector<std::uint8_t>& payload) {
    std::uint32_t timeout_ms = 0;
    if (payload.size() != sizeof timeout_ms) return ReplyBad("wait_scan");
    std::memcpy(&timeout_ms, payload.data(), sizeof timeout_ms);
    const auto wait_scan = abi::WaitScanOf(*api_);
    if (wait_scan == nullptr) {
      const std::string text = "the driver (ABI " + std::to_string(api_->abi_major) + "." +
                               std::to_string(api_->abi_minor) + ") does not announce scans (no wait_scan)";
      return Reply(CTAGENT_E_UNSUPPORTED, text.data(), text.size());
    }
    WireAnnouncement wire{};
    wire.protocol.struct_size = sizeof wire.protocol;
    ctagent_scan_announcement announcement{};
    announcement.struct_size = sizeof announcement;
    announcement.protocol = &wire.protocol;
    const ctagent_status st = wait_scan(handle_, timeout_ms, &announcement);
    if (st < 0) return ReplyStatus(st);
    if (st == CTAGENT_OK) {
      std::memcpy(wire.accession_number, announcement.accession_number, sizeof wire.accession_number);
      std::memcpy(wire.procedure_step_id, announcement.procedure_step_id, sizeof wire.procedure_step_id);
    } else {
      wire = WireAnnouncement{};
    }
    return Reply(st, &wire, sizeof wire);
  }

  bool ReplyBad(const char* what) {
    const std::string text = std::string("ctagent-driver-host: malformed request for ") + what;
    return Reply(CTAGENT_E_INTERNAL, text.data(), text.size());
  }

  bool Open(const std::vector<std::uint8_t>& payload) {
    if (handle_ != nullptr) return ReplyBad("open (already open)");
    if (!library_) {
      auto loaded = plugin::DriverLibrary::Load(driver_path_);
      if (!loaded) {
        const std::string& text = loaded.error().message();
        return Reply(abi::StatusOf(loaded.error().kind()), text.data(), text.size());
      }
      library_ = std::move(loaded).value();
      api_ = &library_->api();
    }
    const std::string options(payload.begin(), payload.end());
    char error[1024] = {};
    ctagent_driver* handle = nullptr;
    const ctagent_status st = api_->open(options.c_str(), &handle, error, sizeof error);
    if (st != CTAGENT_OK || handle == nullptr) {
      if (handle != nullptr) api_->close(handle);
      const std::string text = error;
      return Reply(st == CTAGENT_OK ? CTAGENT_E_INTERNAL : st, text.data(), text.size());
    }
    std::lock_guard lock(handle_mutex_);
    handle_ = handle;
    return Reply(CTAGENT_OK, nullptr, 0);
  }

  // The reply is [ReplyHeader][ctagent_view][samples or error text], sent from one buffer the
  // driver writes its samples into, so a view is copied once on this side.
  bool NextView(const std::vector<std::uint8_t>& payload) {
    std::uint64_t capacity = 0;
    if (payload.size() != sizeof capacity) return ReplyBad("next_view");
    std::memcpy(&capacity, payload.data(), sizeof capacity);
    if (capacity > kMaxPayload) return ReplyBad("next_view (capacity too large)");
    constexpr std::size_t kHead = sizeof(ReplyHeader) + sizeof(ctagent_view);
    if (buffer_.size() < kHead + capacity) buffer_.resize(kHead + capacity);
    ctagent_view view{};
    view.struct_size = sizeof view;
    std::uint8_t* samples = buffer_.data() + kHead;
    const ctagent_status st = api_->next_view(handle_, &view, samples, capacity);
    std::size_t tail = 0;
    if (st == CTAGENT_OK) {
      tail = static_cast<std::size_t>(std::min(view.sample_bytes, capacity));
    } else if (st < 0) {
      const std::string text = LastError();
      if (buffer_.size() < kHead + text.size()) buffer_.resize(kHead + text.size());
      std::memcpy(buffer_.data() + kHead, text.data(), text.size());
      tail = text.size();
    }
    ReplyHeader header;
    header.status = st;
    header.payload_bytes = sizeof view + tail;
    std::memcpy(buffer_.data(), &header, sizeof header);
    std::memcpy(buffer_.data() + sizeof header, &view, sizeof view);
    return SendAll(kCallsFd, buffer_.data(), kHead + tail).has_value();
  }

  std::string driver_path_;
  std::shared_ptr<plugin::DriverLibrary> library_;
  const ctagent_driver_api* api_ = nullptr;
  std::mutex handle_mutex_;  // abort() only between open and close: the listener checks handle_
  ctagent_driver* handle_ = nullptr;
  std::vector<std::uint8_t> buffer_;
};

}  // namespace
}  // namespace ctagent::drivers::host

int main(int argc, char** argv) {
  ctagent::drivers::host::ResetSignals();
  if (argc != 2 || ::isatty(ctagent::drivers::host::kCallsFd) != 0) {
    std::fprintf(stderr,
                 "usage: ctagent-driver-host DRIVER.so\n"
                 "Runs a detector driver for the ctagent agent, which starts it with its sockets on fds 3 and 4;\n"
                 "not meant to be run by hand (set driver.options.isolation in the agent's config instead).\n");
    return 2;
  }
  // Descriptors the agent did not mean to pass (files, sockets) are none of the driver's business.
  ::close_range(ctagent::drivers::host::kAbortFd + 1, ~0u, 0);
  return ctagent::drivers::host::Host(argv[1]).Run();
}
