// The agent: runs scans through the pipeline
//   driver -> chunker -> codec pool -> spool -> uploader -> results -> console
// on one Boost.Asio event loop, with the driver on its own acquisition thread and compression
// on a bounded pool. It also resumes every unfinished scan found in the spool, and (Serve, the
// daemon) takes every scan the detector announces while earlier ones upload and await results.
#pragma once

#include <boost/asio/io_context.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/byte_budget.hpp"
#include "base/durable_file.hpp"
#include "agent/core/exam_context.hpp"
#include "agent/core/heartbeat.hpp"
#include "agent/core/uploader.hpp"
#include "agent/codec/chunk_stage.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "drivers/detector.hpp"

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
  std::uint64_t uploaded_bytes = 0;  // bytes the server confirmed for this scan in this run
  // From the end of acquisition to the results stored and delivered (when this process
  // acquired the scan and its results came): the scan end -> images latency.
  std::optional<double> images_seconds;
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

// What the daemon is doing, for its service manager's status line.
struct ServiceStatus {
  std::string acquiring;       // UID of the scan being acquired; empty when the detector is idle
  std::size_t in_progress = 0;  // other scans uploading, awaiting results or being delivered
};

// What the daemon did since it started, for its metrics (docs/metrics.md). Owned by the caller of
// Serve() for the process's life, so counts go on across passes (ServiceHooks::counters).
struct ServiceCounters {
  std::atomic<std::uint64_t> acquired_bytes{0};  // raw bytes of the chunks made durable in the spool
  std::atomic<std::uint64_t> spooled_bytes{0};   // the same chunks compressed
  UploadCounters upload;                          // the uploader's: bytes confirmed, retries by class
  // Results polls retried after a transient error, by ErrorKind name; loop thread only.
  std::map<std::string, std::uint64_t> results_retries_by_class;
};

struct ServiceHooks {
  std::function<void()> on_ready;                          // the loop runs and has resumed the spool
  std::function<void(const ScanSummary&)> on_scan_end;     // a scan ended (done, or stopped for now)
  std::function<void(const ServiceStatus&)> on_status;     // when what the daemon does changes
  // Scans whose upload or results failed for now are taken up again this often.
  std::chrono::milliseconds retry_every{30000};
  // Called on the serving thread before the loop runs; what it returns (e.g. the control
  // socket's server, on this loop) is released on that thread once the loop has stopped.
  std::function<std::shared_ptr<void>(boost::asio::io_context&)> on_loop;
  // Where Serve() counts (may be null); must outlive Serve().
  ServiceCounters* counters = nullptr;
};

// A scan the daemon works on right now (Agent::ActiveScans).
struct ActiveScan {
  std::string scan_uid;
  std::string phase;  // "acquiring", "uploading", "waiting for images"
  std::uint32_t chunks_stored = 0;
  std::uint32_t chunks_uploaded = 0;
};

// A scan asked for by a person (the control socket's take_scan) rather than announced.
struct TakeScanOrder {
  std::optional<drivers::ScanProtocol> protocol;  // empty: the configured one
  ExamIdentity exam;
  // Called once, from any thread: the scan's UID once the detector is armed, or why not.
  std::function<void(Expected<std::string>)> armed;
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
  // soon as each chunk is written, whatever happens later. The scan's patient comes from `exam`
  // (ResolveExam, before the detector is armed).
  Expected<ScanSummary> RunScan(Progress* progress = nullptr, const ExamIdentity& exam = {});

  // Continues every unfinished scan in the spool: first the upload of every scan with bytes
  // still to send, then results and delivery for every uploaded scan, all of them at once (so
  // no scan's upload or images wait for another scan's results).
  std::vector<ScanSummary> ResumeAll(Progress* progress = nullptr);

  // The daemon's work, until RequestStop(): one event loop with one uploader and one results
  // fetcher for every scan; every unfinished scan of the spool is resumed (and retried every
  // hooks.retry_every); the detector stays open, and an acquisition thread takes every scan it
  // announces (drivers::Detector::WaitForScan) or TakeScan() asks for, one after the other,
  // while the loop uploads earlier scans and awaits their results. The calling thread runs the
  // loop (and its heartbeat). Fails only when the results fetcher cannot be set up.
  Status Serve(const ServiceHooks& hooks);
  // From any thread, while Serve() runs: acquire one scan as soon as the detector is free.
  // order.armed gets the scan's UID, or kBusy (a scan is being acquired, or none is served).
  void TakeScan(TakeScanOrder order);
  // The scans Serve() works on; on its loop's thread only (the control socket's handlers).
  std::vector<ActiveScan> ActiveScans() const;
  // Pauses or resumes the daemon's uploads (Uploader::SetPaused): before Serve() (a pause the
  // daemon recorded before a restart) or on its loop's thread. Acquisition into the spool and
  // results fetches go on while paused.
  void SetUploadsPaused(bool paused);
  bool uploads_paused() const { return uploads_paused_; }

  // Stops the event loop from a signal handler's thread.
  void RequestStop();

  // A service watchdog's beat (the daemon under systemd): given from every event loop this agent
  // runs, and from the spool's recovery as it verifies files in Open(). Set before Open().
  void SetHeartbeat(HeartbeatSettings heartbeat) { heartbeat_ = std::move(heartbeat); }

  spool::Spool& spool() { return *spool_; }
  // The chunk-buffer budget's use now (codec.buffer_bytes; docs/configuration.md, "Memory"):
  // acquisition takes with ByteBudget::Take (its waits: blocked_takes). Uploads take nothing:
  // they send each chunk from its spool file. Empty when the budget is off. Any thread.
  std::optional<ByteBudget::Usage> chunk_buffer_usage() const {
    if (chunk_memory_ == nullptr) return std::nullopt;
    return chunk_memory_->usage();
  }
  // The link manager (cloud.links), or null with the system's routing. After Open().
  LinkManager* link_manager() { return links_.get(); }

 private:
  struct Run;
  struct Service;
  Expected<ScanSummary> Finish(Run& run);
  // An uploader on `io` with the agent's spool, cloud settings, retry policy, links and chunk-
  // buffer budget; `counters` as Uploader's.
  std::unique_ptr<Uploader> NewUploader(boost::asio::io_context& io, UploadCounters* counters = nullptr);
  // The configured protocol (a replayed recording's own shape, with its changes logged).
  Expected<drivers::ScanProtocol> ConfiguredProtocol() const;
  // A new scan: its patient resolved (blocking on the worklist: never on the event loop) and
  // pseudonymised with its mapping record written, spool record and reservation, the detector
  // armed (unless it armed itself), and the chunk stage and ingest that carry its views to the spool.
  Status BeginAcquisition(Run& run, const drivers::ScanProtocol& protocol, drivers::Detector& detector, bool armed,
                          const ExamIdentity& exam);
  // On the acquisition thread: every view into the spool, ending with the last batch synced.
  codec::ChunkStage::AcquireResult Acquire(Run& run, drivers::Detector& detector, const drivers::ScanProtocol& protocol);
  bool NeedsWork(const spool::ScanRecord& record) const;  // unfinished, and this config finishes it
  // The UIDs of the spool's scans that NeedsWork(), oldest first, found without copying any
  // record (the caller copies the few it takes up; delivered ones are most of a spool).
  std::vector<std::string> ScansNeedingWork();
  // Runs `io` until it stops; meanwhile RequestStop() stops it from another thread.
  void RunLoop(boost::asio::io_context& io);
  // ResumeAll's second pass: results for every uploaded scan, all scans at once.
  void AwaitResults(std::vector<std::unique_ptr<Run>>& runs, std::vector<ScanSummary>& summaries);
  void ApplyRetention();

  config::AgentConfig config_;
  FileStore& files_;
  // One budget for every chunk buffer of every scan: acquisition's raw chunks and the
  // uploader's read-backs (config codec.buffer_bytes; null when 0).
  std::shared_ptr<ByteBudget> chunk_memory_;
  std::unique_ptr<spool::Spool> spool_;
  std::unique_ptr<LinkManager> links_;  // null when cloud.links is empty (the system's routing)
  std::atomic<bool> stop_requested_{false};
  std::function<void()> stop_hook_;
  std::mutex stop_mutex_;
  Service* service_ = nullptr;  // while Serve() runs; guarded by stop_mutex_
  bool uploads_paused_ = false;  // before Serve(), or on its loop's thread
  HeartbeatSettings heartbeat_;
};

}  // namespace ctagent::core
