// The contract between the uploader and the link manager: which network link a transfer uses,
// and how fast it may send on it. The uploader asks for a lease before each request and reports
// how the request went; the link manager (agent/core/links.hpp) owns health probes, priority,
// failover and fail-back, and the per-link bandwidth cap.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>

#include "base/error.hpp"

namespace ctagent::core {

struct LinkLease {
  std::string link_name;       // for logs and the operator ("wired", "5g")
  std::string interface_name;  // HttpOptions::interface_name for this link ("" : any)
  std::string source_address;  // HttpOptions::source_address for this link ("" : any)
  // The link's token bucket: blocks until `bytes` may be sent; false when the lease was revoked
  // (the link went down or the agent is stopping). Empty when the link is not capped.
  std::function<bool(std::size_t bytes)> before_send;
  // The same token bucket for a caller on the event loop, which must not wait: books `bytes`
  // and returns at once how long to hold them before sending (0: now), or nullopt when the
  // lease was revoked; reserve(0) only asks whether the lease still holds. For
  // transport::AsyncRequest::pace and before_send. Empty when the link is not capped.
  std::function<std::optional<std::chrono::nanoseconds>(std::size_t bytes)> reserve;
};

class LinkProvider {
 public:
  virtual ~LinkProvider() = default;
  // The link to use for the next request: the best healthy one. kNetwork, with the state of
  // every configured link in the message, when none is usable now (retry later).
  virtual Expected<LinkLease> Acquire() = 0;
  // How a request on that link ended. A network-class failure (kNetwork) counts against the
  // link's health; success and HTTP-level answers count for it.
  virtual void Report(const std::string& link_name, const Status& outcome) = 0;
};

}  // namespace ctagent::core
