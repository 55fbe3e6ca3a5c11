// The daemon's metrics (docs/metrics.md): the page for GET /metrics, built at each scrape on the
// event loop from the spool, the counters Serve() keeps (core::ServiceCounters), the link manager
// and the upload rate measured here. Lives for the daemon's life, so its counters and the scan
// end -> images histogram go on across the daemon's passes (a yield to a standalone scan). No
// scan UID, patient or study in any label.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "agent/core/agent.hpp"
#include "agent/core/links.hpp"
#include "agent/metrics/http_server.hpp"
#include "agent/metrics/metrics.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"

namespace ctagent::daemon {

class MetricsCollector {
 public:
  using Clock = std::chrono::steady_clock;

  MetricsCollector();

  // What Serve() counts into (ServiceHooks::counters).
  core::ServiceCounters& counters() { return counters_; }

  // A scan ended (ServiceHooks::on_scan_end): its scan end -> images latency, if it has one.
  void OnScanEnd(const core::ScanSummary& summary);

  // Records the uploaded byte count now, for the rate; call about once a second on the loop.
  void SampleRate(Clock::time_point now);
  // Bytes per second confirmed by the cloud over the last kRateWindow (0 until two samples).
  double UploadRate() const;

  // The exposition text. On the loop thread: it reads the spool and the loop-only counters.
  // `chunk_buffers`: the agent's chunk-buffer budget (none when codec.buffer_bytes is 0).
  std::string Page(spool::Spool& spool, core::LinkManager* links,
                   const std::optional<ByteBudget::Usage>& chunk_buffers);

  static constexpr std::chrono::seconds kRateWindow{30};

 private:
  core::ServiceCounters counters_;
  metrics::Histogram images_latency_;
  std::deque<std::pair<Clock::time_point, std::uint64_t>> rate_samples_;  // at most kRateWindow + 1
};

// The metrics endpoint of one daemon pass on `io` (ServiceHooks::on_loop): the HTTP server and a
// once-a-second rate sampler. Null, after a logged warning, when the server cannot listen (the
// daemon's work goes on without metrics).
std::shared_ptr<void> StartMetricsEndpoint(boost::asio::io_context& io, const config::MetricsConfig& config,
                                           MetricsCollector& collector, core::Agent& agent);

}  // namespace ctagent::daemon
