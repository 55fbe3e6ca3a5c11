#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <ctime>
#include <optional>
#include <thread>

#include "agent/codec/chunk.hpp"
#include "agent/codec/chunk_stage.hpp"
#include "agent/codec/manifest.hpp"
#include "agent/common/clock.hpp"
#include "agent/common/log.hpp"
#include "agent/common/uid.hpp"
#include "agent/core/agent.hpp"
#include "agent/core/http_options.hpp"
#include "agent/core/links.hpp"
#include "agent/core/results_fetch.hpp"
#include "agent/core/uploader.hpp"
#include "agent/spool/batched_ingest.hpp"
#include "drivers/detector.hpp"
#include "drivers/replay/recording.hpp"

namespace ctagent::core {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// One scan's journey on one event loop. Handlers named On* run on the io_context only, so the
// members they touch need no locks; the acquisition thread and the pools talk to them by post.
struct Agent::Run {
  boost::asio::io_context io;  // declared first: destroyed last, after the pools joined
  config::AgentConfig config;
  spool::Spool& spool;
  Progress* progress;
  std::unique_ptr<Uploader> uploader;
  std::unique_ptr<ResultsFetcher> results;
  // Declared before the chunk stage, whose workers feed it: destroyed after them.
  std::unique_ptr<spool::BatchedIngest> ingest;
  std::unique_ptr<codec::ChunkStage> chunk_stage;
  drivers::Detector* detector = nullptr;  // aborted when the spool cannot take more chunks

  std::string scan_uid;
  std::string study_uid;
  std::vector<codec::ManifestChunk> stored_chunks;
  std::uint32_t chunks_expected = 0;
  std::uint32_t chunks_uploaded = 0;
  std::uint32_t chunks_failed = 0;        // uploads that failed (the chunk stays spooled)
  std::uint32_t chunks_not_stored = 0;    // chunks the spool refused (full disk, I/O error)
  bool acquisition_done = false;
  bool manifest_written = false;
  // ResumeAll's upload pass: the loop stops once the manifest is uploaded; the results come in
  // its second pass, after every pending scan's upload.
  bool results_later = false;
  std::uint64_t uploaded_bytes = 0;  // the uploader's count, kept when it is released
  std::uint32_t results_received = 0;
  std::uint32_t results_delivered = 0;
  std::uint64_t views = 0;
  std::string incomplete_reason;
  Status acquisition_failure = Ok();  // the spool could not store what the driver gave
  Status upload_failure = Ok();       // the data is safe; the upload stopped for now
  Status results_failure = Ok();
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point upload_started{};
  double acquisition_seconds = 0;
  double upload_seconds = 0;

  Run(config::AgentConfig cfg, spool::Spool& s, Progress* p) : config(std::move(cfg)), spool(s), progress(p) {}

  void SetPhase(int phase) {
    if (progress) progress->phase = phase;
  }

  void Stop() { io.stop(); }

  void OnChunkStored(Expected<codec::ManifestChunk> chunk) {
    if (!chunk) {
      // The spool refused a chunk (a full disk, an I/O error). Views after it would meet the same
      // fate, so acquisition stops; what was stored stays valid and is uploaded, and the scan
      // says why it is incomplete, durably (the journal keeps room for such records).
      ++chunks_not_stored;
      if (chunks_not_stored == 1) {
        incomplete_reason = "a chunk could not be stored in the spool, so acquisition was stopped: " +
                            chunk.error().message() + "; the chunks stored before it are kept and sent";
        log::Error("scan", "scan " + scan_uid + ": " + incomplete_reason);
        if (detector) detector->Abort();
        if (auto st = spool.Update(scan_uid, [&](spool::ScanRecord& r) { r.incomplete_reason = incomplete_reason; });
            !st) {
          log::Error("scan", "scan " + scan_uid + ": could not record why it is incomplete: " + st.error().message());
        }
      }
      return;
    }
    stored_chunks.push_back(*chunk);
    if (progress) ++progress->chunks_stored;
    StartChunkUpload(chunk->index);
  }

  void StartChunkUpload(std::uint32_t index) {
    if (upload_started == std::chrono::steady_clock::time_point{}) upload_started = std::chrono::steady_clock::now();
    uploader->UploadChunk(scan_uid, index, [this](Status st) {
      if (!st) {
        if (upload_failure) upload_failure = st;
        ++chunks_failed;
      } else {
        ++chunks_uploaded;
        if (progress) ++progress->chunks_uploaded;
      }
      MaybeUploadManifest();
    });
  }

  void OnAcquisitionDone(std::uint32_t chunks_submitted) {
    acquisition_done = true;
    chunks_expected = chunks_submitted;
    acquisition_seconds = SecondsSince(started);
    SetPhase(1);
    MaybeWriteManifest();
  }

  // Called whenever a chunk lands: once acquisition has ended and every chunk is on disk, the
  // manifest is written (closing the scan in the spool).
  void MaybeWriteManifest() {
    if (!acquisition_done || manifest_written || stored_chunks.size() + chunks_not_stored < chunks_expected) return;
    if (!acquisition_failure) {
      Stop();
      return;
    }
    auto record = spool.Get(scan_uid);
    if (!record) {
      acquisition_failure = MakeError(record.error());
      Stop();
      return;
    }
    auto manifest = codec::ManifestFromJson(record->manifest_base);
    if (!manifest) {
      acquisition_failure = MakeError(manifest.error());
      Stop();
      return;
    }
    std::sort(stored_chunks.begin(), stored_chunks.end(),
              [](const auto& a, const auto& b) { return a.index < b.index; });
    manifest->chunks = stored_chunks;
    manifest->views_acquired = views;
    manifest->acquisition_end_utc = UtcNowIso8601();
    manifest->complete = incomplete_reason.empty();
    manifest->incomplete_reason = incomplete_reason;
    if (!incomplete_reason.empty()) {
      // The record says it too, so `ctagent status` can show it without reading the manifest.
      (void)spool.Update(scan_uid, [&](spool::ScanRecord& r) { r.incomplete_reason = incomplete_reason; });
    }
    if (auto st = spool.FinishAcquisition(scan_uid, *manifest); !st) {
      acquisition_failure = st;
      Stop();
      return;
    }
    manifest_written = true;
    MaybePrepareManifest();
    MaybeUploadManifest();
  }

  // While chunk uploads still run, the manifest's upload is created ahead, so that the scan's
  // last request (the manifest, which must wait for every chunk) is a PATCH, not a POST + PATCH.
  void MaybePrepareManifest() {
    if (manifest_written && chunks_uploaded + chunks_failed < stored_chunks.size()) uploader->PrepareManifest(scan_uid);
  }

  void MaybeUploadManifest() {
    if (!manifest_written) {
      MaybeWriteManifest();
      return;
    }
    if (chunks_uploaded + chunks_failed < stored_chunks.size()) return;  // uploads still running
    if (chunks_failed > 0) {
      Stop();  // the data stays in the spool; the next run resumes these uploads
      return;
    }
    uploader->UploadManifest(scan_uid, [this](Status st) {
      upload_seconds = SecondsSince(upload_started);
      if (!st) {
        upload_failure = st;
        Stop();
        return;
      }
      (void)spool.Update(scan_uid, [](spool::ScanRecord& r) {
        if (r.state == spool::ScanState::kAcquired) r.state = spool::ScanState::kUploaded;
      });
      if (results_later) {
        Stop();
        return;
      }
      FetchResults();
    });
  }

  // Stops the uploader and keeps only its count: a stopped uploader still holds its idle
  // connections, which a Run waiting for its results pass must not keep open.
  void ReleaseUploader() {
    if (!uploader) return;
    uploader->Stop();
    uploaded_bytes = uploader->counters().bytes_sent;
    uploader.reset();
  }

  void FetchResults() {
    if (!config.results.enabled || !results) {
      Stop();
      return;
    }
    SetPhase(2);
    results->FetchAndDeliver(scan_uid, study_uid, [this](const ResultsOutcome& outcome) {
      OnResults(outcome);
      SetPhase(4);
      Stop();
    });
  }

  void OnResults(const ResultsOutcome& outcome) {
    results_failure = outcome.status;
    results_received = outcome.instances_received;
    results_delivered = outcome.instances_delivered;
  }
};

Agent::Agent(config::AgentConfig config, FileStore& files) : config_(std::move(config)), files_(files) {}
Agent::~Agent() = default;

Status Agent::Open(bool read_only) {
  spool::SpoolOptions options{config_.spool.directory, config_.spool.max_bytes, config_.spool.min_free_bytes};
  options.read_only = read_only;
  auto retention = spool::ParseRetentionPolicy(config_.spool.retention);
  if (!retention) return MakeError(retention.error().WithContext("config /spool/retention"));
  options.retention = *retention;
  options.keep_days = config_.spool.keep_days;
  if (!read_only && heartbeat_.beat) options.on_recovery_progress = ThrottledBeat(heartbeat_);
  auto spool = spool::Spool::Open(options, files_);
  if (!spool) return MakeError(spool.error());
  spool_ = std::move(*spool);
  if (read_only) return Ok();
  if (!config_.cloud.links.empty()) {
    auto links = ParseLinks(config_.cloud.links);
    if (!links) return MakeError(links.error().WithContext("config /cloud/links"));
    links_ = std::make_unique<LinkManager>(std::move(*links),
                                           MakeHttpProber(config_.cloud.upload_url, MakeHttpOptions(config_.cloud)));
    links_->Start();
  }
  ApplyRetention();
  return Ok();
}

void Agent::ApplyRetention() {
  auto report = spool_->ApplyRetention(std::chrono::system_clock::now());
  if (!report) log::Warn("spool", "retention: " + report.error().message());
}

void Agent::RequestStop() {
  stop_requested_ = true;
  std::lock_guard lock(stop_mutex_);
  if (stop_hook_) stop_hook_();
}

Expected<ScanSummary> Agent::RunScan(Progress* progress) {
  // A stop that came before the scan (SIGTERM while `ctagent scan` waited for the spool).
  if (stop_requested_) {
    return MakeError(ErrorKind::kCancelled, "stopped on request before the detector was armed; nothing was acquired");
  }
  // A replayed recording sets the scan's shape and geometry (the config needs none); each field
  // it changes is logged, so a config written for another scanner is not silently ignored.
  auto adopted = drivers::replay::ScanProtocolFor(config_.driver.name, config_.driver.options, config_.protocol);
  if (!adopted) return MakeError(adopted.error().WithContext("driver \"" + config_.driver.name + "\""));
  for (const std::string& change : adopted->changes) log::Info("scan", "from the recording: " + change);
  const drivers::ScanProtocol& protocol = adopted->protocol;
  auto detector = drivers::MakeDetector(config_.driver.name, config_.driver.options);
  if (!detector) return MakeError(detector.error().WithContext("driver \"" + config_.driver.name + "\""));
  auto filter = codec::FilterFromString(config_.codec.filter);
  if (!filter) return MakeError(filter.error());

  auto run = std::make_unique<Run>(config_, *spool_, progress);
  run->scan_uid = MintDicomUid();
  run->study_uid = config_.study.study_uid.empty() ? MintDicomUid() : config_.study.study_uid;

  codec::Manifest base;
  base.scan_uid = run->scan_uid;
  base.study_uid = run->study_uid;
  base.patient_id = config_.study.patient_id;
  base.patient_name = config_.study.patient_name;
  base.study_description = config_.study.study_description;
  base.terminal_id = config_.terminal_id;
  base.acquisition_start_utc = UtcNowIso8601();
  base.protocol = protocol;

  // Everything that can be refused is checked before space is reserved and the detector armed.
  if (config_.results.enabled) {
    auto fetcher = ResultsFetcher::Create(run->io, *spool_, config_);
    if (!fetcher) return MakeError(fetcher.error());
    run->results = std::move(*fetcher);
  }

  // Space first: a scan that cannot be stored is refused before the detector is armed.
  spool::ScanRecord record;
  record.scan_uid = run->scan_uid;
  record.study_uid = run->study_uid;
  record.created_utc = base.acquisition_start_utc;
  record.manifest_base = codec::ToJson(base);
  const std::uint64_t reserve = protocol.RawBytes() + protocol.RawBytes() / 64 + (1 << 20);
  if (auto st = spool_->BeginScan(record, reserve); !st) return MakeError(st.error());
  if (auto st = (*detector)->Arm(protocol); !st) {
    (void)spool_->Update(run->scan_uid, [&](spool::ScanRecord& r) {
      r.state = spool::ScanState::kFailed;
      r.failure_reason = "the driver refused to arm: " + st.error().message();
      r.reserved_bytes = 0;
    });
    return MakeError(st.error().WithContext("arming the detector"));
  }
  log::Info("scan", "scan " + run->scan_uid + " armed: " + std::to_string(protocol.TotalViews()) + " views of " +
                        std::to_string(protocol.rows) + " x " + std::to_string(protocol.channels) + " samples, dose " +
                        std::to_string(protocol.dose_fraction));
  if (progress) progress->views_total = protocol.TotalViews();

  run->uploader = std::make_unique<Uploader>(run->io, *spool_, config_.cloud, RetryPolicy{}, links_.get());
  run->detector = detector->get();
  {
    std::lock_guard lock(stop_mutex_);
    Run* raw = run.get();
    drivers::Detector* det = detector->get();
    stop_hook_ = [raw, det] {
      det->Abort();
      boost::asio::post(raw->io, [raw] { raw->Stop(); });
    };
    // RequestStop() sets the flag before it takes this lock: a stop since the check above is
    // seen here (or it found the hook), never lost. What was acquired so far stays spooled.
    if (stop_requested_) stop_hook_();
  }

  // Compression and spool writes run on the chunk stage's threads (agent/codec/chunk_stage.hpp):
  // the acquisition thread only queues raw chunks, and when the workers fall behind the queue's
  // bound, chunks go to a cheap encoder thread instead, so NextView() is never held up by them.
  // The workers write chunk files unsynced; the batch's sync thread makes them durable several
  // MiB at a time (agent/spool/batched_ingest.hpp) and only then reports them stored, which
  // starts their upload: nothing is uploaded or counted before it is on stable storage.
  spool::BatchOptions batch_options;
  batch_options.batch_bytes = config_.spool.sync_batch_bytes;
  batch_options.interval = std::chrono::milliseconds(config_.spool.sync_interval_ms);
  run->ingest = std::make_unique<spool::BatchedIngest>(*spool_, batch_options, [r = run.get()](const spool::Spool::SyncedBatch& batch) {
    std::vector<Expected<codec::ManifestChunk>> results;
    for (const auto& [uid, chunk] : batch.chunks) {
      if (uid != r->scan_uid) continue;
      if (batch.status) {
        results.emplace_back(chunk);
      } else {
        results.emplace_back(MakeError(batch.status.error()));
      }
    }
    boost::asio::post(r->io, [r, results = std::move(results)] {
      for (const auto& result : results) r->OnChunkStored(result);
      r->MaybeWriteManifest();
    });
  });
  codec::ChunkStageOptions stage_options;
  stage_options.views_per_chunk = config_.codec.views_per_chunk;
  stage_options.threads = config_.codec.threads;
  stage_options.queue_bytes = config_.codec.queue_bytes;
  stage_options.encode = {*filter, config_.codec.zstd_level};
  run->chunk_stage = std::make_unique<codec::ChunkStage>(
      stage_options, [r = run.get()](const codec::RawChunk& raw, Expected<std::vector<std::uint8_t>> bytes) {
        Status st = Ok();
        if (!bytes) {
          st = MakeError(bytes.error());
        } else {
          // Stored means queued for the next batch sync; the batch reports it (above).
          st = r->ingest->Add(r->scan_uid, codec::DescribeEncoded(raw, *bytes), *bytes);
        }
        if (st) return;
        boost::asio::post(r->io, [r, error = Expected<codec::ManifestChunk>(MakeError(st.error()))] {
          r->OnChunkStored(error);
          r->MaybeWriteManifest();
        });
      });

  // Acquisition thread: the only caller of the driver's blocking NextView().
  std::thread acquisition([&, run_ptr = run.get(), det = detector->get()] {
    Run& r = *run_ptr;
    const codec::ChunkInfo info = codec::ScanChunkInfo(r.scan_uid, protocol);
    auto acquired = r.chunk_stage->Acquire(*det, protocol, info, r.progress ? &r.progress->views_acquired : nullptr);
    if (!acquired.incomplete_reason.empty()) log::Error("scan", "scan " + r.scan_uid + ": " + acquired.incomplete_reason);
    // Scan end: every chunk compressed and written, then the last batch synced, so every chunk
    // is reported (stored or not) before acquisition is reported done and the manifest written.
    r.chunk_stage->Drain();
    r.ingest->Flush();
    const auto synced = r.ingest->counters();
    log::Info("scan", "scan " + r.scan_uid + ": " + std::to_string(synced.chunks) + " chunks (" +
                          std::to_string(synced.bytes >> 20) + " MiB) made durable in " +
                          std::to_string(synced.batches) + " batch syncs, longest " +
                          std::to_string(static_cast<int>(synced.max_sync_seconds * 1000)) + " ms" +
                          (synced.failed_batches > 0 ? ", " + std::to_string(synced.failed_batches) + " failed" : ""));
    const auto counters = r.chunk_stage->counters();
    if (counters.overflow_chunks > 0 || counters.stalls > 0) {
      log::Warn("scan", "scan " + r.scan_uid + ": compression fell behind acquisition; " +
                            std::to_string(counters.overflow_chunks) + " of " + std::to_string(counters.chunks) +
                            " chunks were stored with the cheap setting (none + zstd -1), " +
                            std::to_string(counters.stalls) +
                            " times acquisition waited for storage; more codec.threads or a faster spool disk help");
    }
    boost::asio::post(r.io, [&r, acquired] {
      r.views = acquired.views;
      // A storage failure already said why acquisition stopped; the driver's view of it
      // ("aborted") would only hide the cause.
      if (r.incomplete_reason.empty()) r.incomplete_reason = acquired.incomplete_reason;
      r.OnAcquisitionDone(acquired.chunks);
    });
  });

  auto guard = boost::asio::make_work_guard(run->io);
  run->io.run();
  // Whatever ended the loop, stop acquisition and let every worker finish before the Run goes.
  if (!run->acquisition_done) (*detector)->Abort();
  acquisition.join();
  run->chunk_stage->Drain();
  run->ingest.reset();  // flushes what is left; its reports go to the stopped loop and are dropped
  run->uploader->Stop();
  if (run->results) run->results->Stop();
  {
    std::lock_guard lock(stop_mutex_);
    stop_hook_ = nullptr;
  }
  return Finish(*run);
}

Expected<ScanSummary> Agent::Finish(Run& run) {
  ScanSummary s;
  s.scan_uid = run.scan_uid;
  s.study_uid = run.study_uid;
  s.acquisition_seconds = run.acquisition_seconds;
  s.upload_seconds = run.upload_seconds;
  run.ReleaseUploader();
  s.uploaded_bytes = run.uploaded_bytes;
  s.results_received = run.results_received;
  s.results_delivered = run.results_delivered;
  auto record = spool_->Get(run.scan_uid);
  if (record) {
    s.views = record->views_acquired;
    s.chunks = static_cast<std::uint32_t>(record->chunks.size());
    for (const auto& c : record->chunks) {
      s.raw_bytes += c.chunk.raw_bytes;
      s.compressed_bytes += c.chunk.compressed_bytes;
    }
    s.state = spool::ToString(record->state);
    if (!record->results.empty()) s.results_dir = spool_->ResultPath(run.scan_uid, "x").parent_path();
  }
  if (!run.acquisition_failure) {
    s.problem = "acquisition: " + run.acquisition_failure.error().message();
    if (!run.incomplete_reason.empty()) s.problem += " (scan incomplete: " + run.incomplete_reason + ")";
  } else if (!run.incomplete_reason.empty()) {
    s.problem = "scan incomplete: " + run.incomplete_reason;
  } else if (!run.upload_failure) {
    s.problem = "upload pending (data safe in the spool): " + run.upload_failure.error().message();
  } else if (!run.results_failure) {
    s.problem = "results: " + run.results_failure.error().message();
  } else if (stop_requested_ && s.state != "delivered" && !(s.state == "uploaded" && !config_.results.enabled)) {
    s.problem = "stopped on request before the scan finished; it resumes on the next start";
  }
  ApplyRetention();  // a scan that just reached the cloud (or the console) may free its raw data
  return s;
}

// Two passes. First every scan with bytes still to send is uploaded, then the results of every
// uploaded scan are fetched and delivered. A scan's results can take minutes (reconstruction and
// AI reading in the cloud; up to results.timeout_s), and the scans behind it must not wait for
// them with their raw data on this disk only and the link idle; the cloud meanwhile works on
// every scan it has.
std::vector<ScanSummary> Agent::ResumeAll(Progress* progress) {
  std::vector<ScanSummary> summaries;
  std::vector<std::unique_ptr<Run>> awaiting_results;
  for (const spool::ScanRecord& record : spool_->AllScans()) {
    if (stop_requested_) break;
    if (record.state == spool::ScanState::kDelivered || record.state == spool::ScanState::kFailed) continue;
    if (record.state == spool::ScanState::kResultsReceived && !config_.console.enabled) continue;
    if (record.state == spool::ScanState::kUploaded && !config_.results.enabled) continue;
    log::Info("resume", "scan " + record.scan_uid + " is " + spool::ToString(record.state) + "; continuing it");
    auto run = std::make_unique<Run>(config_, *spool_, progress);
    run->scan_uid = record.scan_uid;
    run->study_uid = record.study_uid;
    for (const auto& c : record.chunks) {
      run->stored_chunks.push_back(c.chunk);
      run->views += c.chunk.view_count;
    }
    run->chunks_expected = static_cast<std::uint32_t>(record.chunks.size());
    run->acquisition_done = true;
    run->manifest_written = record.manifest_written;
    if (record.state == spool::ScanState::kUploaded || record.state == spool::ScanState::kResultsReceived) {
      awaiting_results.push_back(std::move(run));
      continue;
    }
    if (record.state == spool::ScanState::kAcquiring) {
      // The agent stopped during acquisition: what reached the spool is kept and sent, and the
      // manifest says the scan is incomplete and why.
      run->incomplete_reason = !record.incomplete_reason.empty()
                                   ? record.incomplete_reason
                                   : "the agent stopped during acquisition; " + std::to_string(run->views) +
                                         " views were stored before it stopped";
    }
    run->uploader = std::make_unique<Uploader>(run->io, *spool_, config_.cloud, RetryPolicy{}, links_.get());
    run->results_later = true;
    boost::asio::post(run->io, [r = run.get(), &record] {
      r->SetPhase(1);
      for (const auto& c : record.chunks) {
        if (c.upload.complete) {
          ++r->chunks_uploaded;
        } else {
          r->StartChunkUpload(c.chunk.index);
        }
      }
      r->MaybePrepareManifest();
      r->MaybeUploadManifest();
    });
    RunLoop(run->io);
    run->ReleaseUploader();
    auto after = spool_->Get(run->scan_uid);
    const bool uploaded = after && after->state == spool::ScanState::kUploaded && config_.results.enabled;
    if (uploaded && !stop_requested_) {
      awaiting_results.push_back(std::move(run));
    } else if (auto s = Finish(*run)) {
      summaries.push_back(*s);
    }
  }
  if (!awaiting_results.empty() && !stop_requested_) AwaitResults(awaiting_results, summaries);
  for (auto& run : awaiting_results) {
    if (auto s = Finish(*run)) summaries.push_back(*s);
  }
  return summaries;
}

// Every uploaded scan waits for its results at the same time, on one loop and one fetcher: a
// scan whose results never come (a failed reconstruction) holds up no other scan's images.
void Agent::AwaitResults(std::vector<std::unique_ptr<Run>>& runs, std::vector<ScanSummary>& summaries) {
  boost::asio::io_context io;
  auto fetcher = ResultsFetcher::Create(io, *spool_, config_);
  if (!fetcher) {
    for (auto& run : runs) {
      ScanSummary s;
      s.scan_uid = run->scan_uid;
      s.problem = fetcher.error().message();
      summaries.push_back(s);
    }
    runs.clear();
    return;
  }
  std::size_t waiting = runs.size();
  for (auto& run : runs) {
    run->SetPhase(2);
    (*fetcher)->FetchAndDeliver(run->scan_uid, run->study_uid,
                                [&io, &waiting, r = run.get()](const ResultsOutcome& outcome) {
                                  r->OnResults(outcome);
                                  if (--waiting == 0) io.stop();
                                });
  }
  RunLoop(io);
  (*fetcher)->Stop();
  for (auto& run : runs) run->SetPhase(4);
}

void Agent::RunLoop(boost::asio::io_context& io) {
  {
    std::lock_guard lock(stop_mutex_);
    stop_hook_ = [&io] { boost::asio::post(io, [&io] { io.stop(); }); };
  }
  if (!stop_requested_) {  // a stop that came before the hook was set
    auto guard = boost::asio::make_work_guard(io);
    LoopHeartbeat heartbeat(io, heartbeat_);
    io.run();
  }
  std::lock_guard lock(stop_mutex_);
  stop_hook_ = nullptr;
}

}  // namespace ctagent::core
