// A liveness beat for a service watchdog, given from the event loop itself: a timer on the
// io_context calls `beat` every `period`. A handler that holds the loop (a hang, a deadlock, a
// blocking call where none belongs) therefore also holds back the beats, and the service manager
// restarts the daemon; a separate pinging thread would keep a hung daemon looking alive.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <utility>

namespace ctagent::core {

struct HeartbeatSettings {
  std::chrono::milliseconds period{0};  // zero: no heartbeat
  std::function<void()> beat;           // called on the loop's thread (or the thread doing the work)
};

// Beats on `io` from construction (a first beat at once) until destruction or until the loop
// stops. Construct and destroy it on the thread that runs `io`, around io.run().
class LoopHeartbeat {
 public:
  LoopHeartbeat(boost::asio::io_context& io, HeartbeatSettings settings);
  ~LoopHeartbeat();
  LoopHeartbeat(const LoopHeartbeat&) = delete;
  LoopHeartbeat& operator=(const LoopHeartbeat&) = delete;

 private:
  void Arm();

  boost::asio::steady_timer timer_;
  HeartbeatSettings settings_;
};

// For work outside the loop that reports its own progress (the spool's recovery hashes files one
// by one): beats at most once per period, so a long but progressing job is not taken for a hang.
class ThrottledBeat {
 public:
  explicit ThrottledBeat(HeartbeatSettings settings) : settings_(std::move(settings)) {}
  void operator()();

 private:
  HeartbeatSettings settings_;
  std::optional<std::chrono::steady_clock::time_point> last_;
};

}  // namespace ctagent::core
