// The agent: runs scans through the pipeline
//   driver -> chunker -> codec pool -> spool -> uploader -> results -> console
// on one Boost.Asio event loop, with the driver on its own acquisition thread and compression
// on a bounded pool. It also resumes every unfinished scan found in the spool.
#pragma once

#include <boost/asio/io_context.hpp>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/common/durable_file.hpp"
#include "agent/core/heartbeat.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"

namespace ctagent::core {

class LinkManager;

struct ScanSummary {
  std::string scan_uid;
  std::string study_uid;
  std::uint64_t views = 0;
  std::uint32_t chunks = 0;
  std::uint64_t raw_bytes = 0;
  std::uint64_t compressed_bytes = 0;
  double acquisition_seconds = 0;
  double upload_seconds = 0;         // from the first upload to the manifest's confirmation
  std::uint64_t uploaded_bytes = 0;  // bytes the server confirmed in this run
  std::uint32_t results_received = 0;
  std::uint32_t results_delivered = 0;
  std::filesystem::path results_dir;
  std::string state;                 // spool::ScanState as text
  std::string problem;               // empty when everything finished
};

// Live figures for a progress display, read from another thread.
struct Progress {
  std::atomic<std::uint64_t> views_acquired{0};
  std::atomic<std::uint64_t> views_total{0};
  std::atomic<std::uint32_t> chunks_stored{0};
  std::atomic<std::uint32_t> chunks_uploaded{0};
  std::atomic<std::uint64_t> bytes_uploaded{0};
  std::atomic<std::uint32_t> results_received{0};
  std::atomic<int> phase{0};  // 0 acquiring, 1 uploading, 2 waiting for results, 3 delivering, 4 done
};

class Agent {
 public:
  Agent(config::AgentConfig config, FileStore& files);
  ~Agent();

  // Opens the spool for writing (one process at a time: kBusy while another holds it), starts
  // the link manager and applies retention. With read_only (status displays) the spool is only
  // read, alongside any writer, and nothing else starts: no scan or resume may run then.
  Status Open(bool read_only = false);

  // Arms the configured driver with the configured protocol, acquires one scan, and carries it
  // as far as it can: spool, upload, results, console. The raw data is safe in the spool as
  // soon as each chunk is written, whatever happens later.
  Expected<ScanSummary> RunScan(Progress* progress = nullptr);

  // Continues every unfinished scan in the spool: first the upload of every scan with bytes
  // still to send, then results and delivery for every uploaded scan, all of them at once (so
  // no scan's upload or images wait for another scan's results).
  std::vector<ScanSummary> ResumeAll(Progress* progress = nullptr);

  // Stops the event loop from a signal handler's thread.
  void RequestStop();

  // A service watchdog's beat (the daemon under systemd): given from every event loop this agent
  // runs, and from the spool's recovery as it verifies files in Open(). Set before Open().
  void SetHeartbeat(HeartbeatSettings heartbeat) { heartbeat_ = std::move(heartbeat); }

  spool::Spool& spool() { return *spool_; }

 private:
  struct Run;
  Expected<ScanSummary> Finish(Run& run);
  // Runs `io` until it stops; meanwhile RequestStop() stops it from another thread.
  void RunLoop(boost::asio::io_context& io);
  // ResumeAll's second pass: results for every uploaded scan, all scans at once.
  void AwaitResults(std::vector<std::unique_ptr<Run>>& runs, std::vector<ScanSummary>& summaries);
  void ApplyRetention();

  config::AgentConfig config_;
  FileStore& files_;
  std::unique_ptr<spool::Spool> spool_;
  std::unique_ptr<LinkManager> links_;  // null when cloud.links is empty (the system's routing)
  std::atomic<bool> stop_requested_{false};
  std::function<void()> stop_hook_;
  std::mutex stop_mutex_;
  HeartbeatSettings heartbeat_;
};

}  // namespace ctagent::core
