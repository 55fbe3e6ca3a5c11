#include "agent/core/heartbeat.hpp"

#include <utility>

namespace ctagent::core {

LoopHeartbeat::LoopHeartbeat(boost::asio::io_context& io, HeartbeatSettings settings)
    : timer_(io), settings_(std::move(settings)) {
  if (settings_.period.count() <= 0 || !settings_.beat) return;
  settings_.beat();  // entering the loop: the work before it may have taken a while
  Arm();
}

LoopHeartbeat::~LoopHeartbeat() { timer_.cancel(); }

void LoopHeartbeat::Arm() {
  timer_.expires_after(settings_.period);
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled: the heartbeat is being destroyed
    settings_.beat();
    Arm();
  });
}

void ThrottledBeat::operator()() {
  if (settings_.period.count() <= 0 || !settings_.beat) return;
  const auto now = std::chrono::steady_clock::now();
  if (last_ && now - *last_ < settings_.period) return;
  last_ = now;
  settings_.beat();
}

}  // namespace ctagent::core
