// The wire between the agent and ctagent-driver-host, the child process that runs an untrusted
// C-ABI driver (docs/drivers.md, "Crash isolation"). Two AF_UNIX stream sockets:
//   calls  (host fd 3): one request, one reply, in order; the agent's acquisition thread only.
//   abort  (host fd 4): one byte per abort(), from any agent thread; EOF tells the host the
//                       agent is gone, so a host stuck in the driver still exits.
// Both sides run on the same machine and binary ABI, so structs travel as raw bytes; every
// message starts with a magic so a desynchronised stream is caught, not misread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::host {

inline constexpr int kCallsFd = 3;
inline constexpr int kAbortFd = 4;
inline constexpr std::uint32_t kRequestMagic = 0x51485443;  // "CTHQ"
inline constexpr std::uint32_t kReplyMagic = 0x52485443;    // "CTHR"
inline constexpr std::uint64_t kMaxPayload = 1ull << 30;     // a view is far below; guards a bad length

// One per function of the C ABI that goes through the calls socket (abort goes its own way).
enum class Op : std::uint32_t {
  kOpen = 1,          // payload: options JSON text; reply payload on failure: open()'s error text
  kCapabilities = 2,  // reply payload: ctagent_capabilities
  kArm = 3,           // payload: ctagent_protocol
  kStart = 4,
  kNextView = 5,      // payload: uint64 samples capacity; reply payload: ctagent_view, then its samples
  kStop = 6,
  kSelfTest = 7,
  kHealth = 8,        // reply payload: ctagent_health
  kClose = 9,         // the host closes the handle, replies, and exits 0
  kWaitScan = 10,     // ABI 1.2; payload: uint32 timeout_ms; reply payload unless failed: WireAnnouncement
};

// wait_scan's answer on the wire: the announcement without its pointer (zeroed for NO_SCAN).
struct WireAnnouncement {
  ctagent_protocol protocol;
  char accession_number[sizeof(ctagent_scan_announcement::accession_number)];
  char procedure_step_id[sizeof(ctagent_scan_announcement::procedure_step_id)];
};

struct RequestHeader {
  std::uint32_t magic = kRequestMagic;
  std::uint32_t op = 0;
  std::uint64_t payload_bytes = 0;
};

// A reply's status is the driver's ctagent_status; for a failed call (status < 0) the payload
// is the driver's last_error() text.
struct ReplyHeader {
  std::uint32_t magic = kReplyMagic;
  std::int32_t status = 0;
  std::uint64_t payload_bytes = 0;
};

// Blocking whole-buffer send/receive on a stream socket (MSG_NOSIGNAL: a dead peer is an
// error, not SIGPIPE). Errors say which side hung up.
Status SendAll(int fd, std::span<const std::uint8_t> bytes);
Status SendAll(int fd, const void* data, std::size_t size);
// kNotFound when the peer closed the socket before the first byte (a clean EOF).
Status RecvAll(int fd, void* data, std::size_t size);

// Waits until `fd` is readable or `timeout` passes; false on timeout.
Expected<bool> WaitReadable(int fd, std::chrono::milliseconds timeout);

}  // namespace ctagent::drivers::host
