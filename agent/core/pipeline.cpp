#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <condition_variable>
#include <set>

#include <chrono>
#include <ctime>
#include <optional>
#include <thread>

#include "agent/codec/chunk.hpp"
#include "agent/codec/chunk_stage.hpp"
#include "agent/codec/manifest.hpp"
#include "base/clock.hpp"
#include "base/log.hpp"
#include "base/uid.hpp"
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

// One scan's journey on an event loop: its own (RunScan, ResumeAll), or the daemon's, shared by
// every scan (Serve). Handlers named On* run on the io_context only, so the members they touch
// need no locks; the acquisition thread and the pools talk to them by post.
struct Agent::Run {
  // Declared first: destroyed last, after the pools joined. Null on the daemon's shared loop.
  std::unique_ptr<boost::asio::io_context> own_io;
  boost::asio::io_context& io;
  config::AgentConfig config;
  spool::Spool& spool;
  Progress* progress;
  // A Run's own uploader and fetcher, or (the daemon) the ones every scan shares.
  std::unique_ptr<Uploader> uploader;
  std::unique_ptr<ResultsFetcher> results;
  Uploader* shared_uploader = nullptr;
  ResultsFetcher* shared_results = nullptr;
  // On the shared loop the scan's end is reported here (once) instead of stopping the loop.
  std::function<void()> on_end;
  bool ended = false;
  // Uploads and results fetches whose completion handler will still touch this Run: the daemon
  // frees an ended Run only when none is left.
  int in_flight = 0;
  // Declared before the chunk stage, whose workers feed it: destroyed after them.
  std::unique_ptr<spool::BatchedIngest> ingest;
  std::unique_ptr<codec::ChunkStage> chunk_stage;
  drivers::Detector* detector = nullptr;  // aborted when the spool cannot take more chunks

  std::string scan_uid;
  std::string study_uid;
  // How many chunks reached the spool. The chunks themselves (indices, sizes, checksums) are in
  // the spool's record, where the manifest takes them from at scan end: a second list here held
  // ~0.25 KiB a chunk for the whole scan (docs/configuration.md, "Memory").
  std::uint32_t stored_chunks = 0;
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
  // Set when this process saw the scan's acquisition end (not for a scan resumed from the spool).
  std::optional<std::chrono::steady_clock::time_point> acquisition_ended;
  std::optional<double> images_seconds;
  ServiceCounters* counters = nullptr;  // the daemon's, or null
  double acquisition_seconds = 0;
  double upload_seconds = 0;

  Run(config::AgentConfig cfg, spool::Spool& s, Progress* p)
      : own_io(std::make_unique<boost::asio::io_context>()), io(*own_io), config(std::move(cfg)), spool(s), progress(p) {}
  Run(config::AgentConfig cfg, spool::Spool& s, boost::asio::io_context& shared)
      : io(shared), config(std::move(cfg)), spool(s), progress(nullptr) {}

  void SetPhase(int phase) {
    if (progress) progress->phase = phase;
  }

  Uploader& Up() { return uploader ? *uploader : *shared_uploader; }
  ResultsFetcher* Results() { return results ? results.get() : shared_results; }

  void Stop() {
    if (!own_io) {
      if (ended) return;
      ended = true;
      if (on_end) on_end();
      return;
    }
    io.stop();
  }

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
        if (auto st = spool.UpdateFields(scan_uid, [&](spool::ScanRecord& r) { r.incomplete_reason = incomplete_reason; });
            !st) {
          log::Error("scan", "scan " + scan_uid + ": could not record why it is incomplete: " + st.error().message());
        }
      }
      return;
    }
    ++stored_chunks;
    if (progress) ++progress->chunks_stored;
    if (counters != nullptr) {
      counters->acquired_bytes += chunk->raw_bytes;
      counters->spooled_bytes += chunk->compressed_bytes;
    }
    StartChunkUpload(chunk->index);
  }

  void StartChunkUpload(std::uint32_t index) {
    if (upload_started == std::chrono::steady_clock::time_point{}) upload_started = std::chrono::steady_clock::now();
    ++in_flight;
    Up().UploadChunk(scan_uid, index, [this](Status st) {
      --in_flight;
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

  // The acquisition thread's result, on the loop.
  void OnAcquired(std::uint64_t views_acquired, const std::string& reason, std::uint32_t chunks_submitted) {
    views = views_acquired;
    // A storage failure already said why acquisition stopped; the driver's view of it
    // ("aborted") would only hide the cause.
    if (incomplete_reason.empty()) incomplete_reason = reason;
    OnAcquisitionDone(chunks_submitted);
  }

  void OnAcquisitionDone(std::uint32_t chunks_submitted) {
    acquisition_done = true;
    chunks_expected = chunks_submitted;
    acquisition_seconds = SecondsSince(started);
    acquisition_ended = std::chrono::steady_clock::now();
    SetPhase(1);
    MaybeWriteManifest();
  }

  // Called whenever a chunk lands: once acquisition has ended and every chunk is on disk, the
  // manifest is written (closing the scan in the spool).
  void MaybeWriteManifest() {
    if (!acquisition_done || manifest_written || stored_chunks + chunks_not_stored < chunks_expected) return;
    if (!acquisition_failure) {
      Stop();
      return;
    }
    // Only the manifest's head: the spool writes the chunk list from its record (a copy of the
    // record and of the list would be ~4 MiB at the end of an 8 GiB scan).
    auto base = spool.GetManifestBase(scan_uid);
    if (!base) {
      acquisition_failure = MakeError(base.error());
      Stop();
      return;
    }
    auto manifest = codec::ManifestFromJson(*base);
    if (!manifest) {
      acquisition_failure = MakeError(manifest.error());
      Stop();
      return;
    }
    manifest->views_acquired = views;
    manifest->acquisition_end_utc = UtcNowIso8601();
    manifest->complete = incomplete_reason.empty();
    manifest->incomplete_reason = incomplete_reason;
    if (!incomplete_reason.empty()) {
      // The record says it too, so `ctagent status` can show it without reading the manifest.
      (void)spool.UpdateFields(scan_uid, [&](spool::ScanRecord& r) { r.incomplete_reason = incomplete_reason; });
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
    if (manifest_written && chunks_uploaded + chunks_failed < stored_chunks) Up().PrepareManifest(scan_uid);
  }

  void MaybeUploadManifest() {
    if (!manifest_written) {
      MaybeWriteManifest();
      return;
    }
    if (chunks_uploaded + chunks_failed < stored_chunks) return;  // uploads still running
    if (chunks_failed > 0) {
      Stop();  // the data stays in the spool; the next run resumes these uploads
      return;
    }
    ++in_flight;
    Up().UploadManifest(scan_uid, [this](Status st) {
      --in_flight;
      upload_seconds = SecondsSince(upload_started);
      if (!st) {
        upload_failure = st;
        Stop();
        return;
      }
      (void)spool.UpdateFields(scan_uid, [](spool::ScanRecord& r) {
        if (r.state == spool::ScanState::kAcquired) r.state = spool::ScanState::kUploaded;
      });
      if (results_later) {
        Stop();
        return;
      }
      FetchResults();
    });
  }

  // A spooled scan taken up again (ResumeAll, the daemon): what the spool has of it.
  void ContinueFrom(const spool::ScanRecord& record) {
    scan_uid = record.scan_uid;
    study_uid = record.study_uid;
    for (const auto& c : record.chunks) views += c.chunk.view_count;
    stored_chunks = static_cast<std::uint32_t>(record.chunks.size());
    chunks_expected = static_cast<std::uint32_t>(record.chunks.size());
    acquisition_done = true;
    manifest_written = record.manifest_written;
    if (record.state == spool::ScanState::kAcquiring) {
      // The agent stopped during acquisition: what reached the spool is kept and sent, and the
      // manifest says the scan is incomplete and why.
      incomplete_reason = !record.incomplete_reason.empty()
                              ? record.incomplete_reason
                              : "the agent stopped during acquisition; " + std::to_string(views) +
                                    " views were stored before it stopped";
    }
  }

  // Continues a spooled scan's upload: every chunk not yet complete, then the manifest.
  void ResumeUpload(const spool::ScanRecord& record) {
    SetPhase(1);
    for (const auto& c : record.chunks) {
      if (c.upload.complete) {
        ++chunks_uploaded;
      } else {
        StartChunkUpload(c.chunk.index);
      }
    }
    MaybePrepareManifest();
    MaybeUploadManifest();
  }

  // Stops the uploader and keeps only its count: a stopped uploader still holds its idle
  // connections, which a Run waiting for its results pass must not keep open.
  void ReleaseUploader() {
    if (!uploader) return;
    uploader->Stop();
    uploaded_bytes += uploader->TakeScanBytes(scan_uid);
    uploader.reset();
  }

  void FetchResults() {
    if (!config.results.enabled || Results() == nullptr) {
      Stop();
      return;
    }
    SetPhase(2);
    ++in_flight;
    Results()->FetchAndDeliver(scan_uid, study_uid, [this](const ResultsOutcome& outcome) {
      --in_flight;
      OnResults(outcome);
      SetPhase(4);
      Stop();
    });
  }

  void OnResults(const ResultsOutcome& outcome) {
    results_failure = outcome.status;
    results_received = outcome.instances_received;
    results_delivered = outcome.instances_delivered;
    if (outcome.status && outcome.instances_received > 0 && acquisition_ended) {
      images_seconds = SecondsSince(*acquisition_ended);
    }
  }
};

Agent::Agent(config::AgentConfig config, FileStore& files)
    : config_(std::move(config)),
      files_(files),
      chunk_memory_(config_.codec.buffer_bytes > 0 ? ByteBudget::Make(config_.codec.buffer_bytes) : nullptr) {}
Agent::~Agent() = default;

std::unique_ptr<Uploader> Agent::NewUploader(boost::asio::io_context& io, UploadCounters* counters) {
  return std::make_unique<Uploader>(io, *spool_, config_.cloud, RetryPolicy::Shared(), links_.get(), counters);
}

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

Expected<ScanSummary> Agent::RunScan(Progress* progress, const ExamIdentity& exam) {
  // A stop that came before the scan (SIGTERM while `ctagent scan` waited for the spool).
  if (stop_requested_) {
    return MakeError(ErrorKind::kCancelled, "stopped on request before the detector was armed; nothing was acquired");
  }
  // A replayed recording sets the scan's shape and geometry (the config needs none); each field
  // it changes is logged, so a config written for another scanner is not silently ignored.
  auto protocol = ConfiguredProtocol();
  if (!protocol) return MakeError(protocol.error());
  auto detector = drivers::MakeDetector(config_.driver.name, config_.driver.options);
  if (!detector) return MakeError(detector.error().WithContext("driver \"" + config_.driver.name + "\""));

  auto run = std::make_unique<Run>(config_, *spool_, progress);
  // Everything that can be refused is checked before space is reserved and the detector armed.
  if (config_.results.enabled) {
    auto fetcher = ResultsFetcher::Create(run->io, *spool_, config_, RetryPolicy::Shared());
    if (!fetcher) return MakeError(fetcher.error());
    run->results = std::move(*fetcher);
  }
  if (auto st = BeginAcquisition(*run, *protocol, **detector, /*armed=*/false, exam); !st) return MakeError(st.error());

  run->uploader = NewUploader(run->io);
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

  // Acquisition thread: the only caller of the driver's blocking NextView().
  std::thread acquisition([this, r = run.get(), det = detector->get(), p = *protocol] {
    auto acquired = Acquire(*r, *det, p);
    boost::asio::post(r->io, [r, acquired] { r->OnAcquired(acquired.views, acquired.incomplete_reason, acquired.chunks); });
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

Expected<drivers::ScanProtocol> Agent::ConfiguredProtocol() const {
  auto adopted = drivers::replay::ScanProtocolFor(config_.driver.name, config_.driver.options, config_.protocol);
  if (!adopted) return MakeError(adopted.error().WithContext("driver \"" + config_.driver.name + "\""));
  for (const std::string& change : adopted->changes) log::Info("scan", "from the recording: " + change);
  return adopted->protocol;
}

// A new scan in the spool: its UIDs, its record with the space it needs reserved, the detector
// armed (unless the detector armed itself: an announced scan), and the chunk stage and batched
// ingest that carry its views to the spool. On failure nothing is left reserved.
Status Agent::BeginAcquisition(Run& run, const drivers::ScanProtocol& protocol, drivers::Detector& detector,
                               bool armed, const ExamIdentity& exam) {
  auto filter = codec::FilterFromString(config_.codec.filter);
  if (!filter) return MakeError(filter.error());
  auto coder = codec::CodecFromString(config_.codec.coder);
  if (!coder) return MakeError(coder.error());
  run.scan_uid = MintDicomUid();
  // The patient first (the worklist's C-FIND blocks; this runs on the acquisition thread or
  // before RunScan's loop, never on the event loop): no identity, no scan.
  auto context = ResolveExam(config_, exam, std::chrono::system_clock::now());
  if (!context) {
    if (armed) detector.Abort();
    return MakeError(context.error().WithContext("the scan's patient"));
  }

  codec::Manifest base;
  base.scan_uid = run.scan_uid;
  std::optional<std::filesystem::path> mapping_path;
  if (context->pseudonymise()) {
    // Only pseudonyms leave the terminal (docs/privacy.md); the mapping back is written durably,
    // owner-only, before anything of the scan exists, so every later step can re-identify.
    auto key = privacy::SiteKey::LoadOrCreate(config::SiteKeyPath(config_), files_);
    if (!key) {
      if (armed) detector.Abort();
      return MakeError(key.error().WithContext("the site key for pseudonymisation"));
    }
    privacy::MappingRecord mapping = privacy::Pseudonymise(*key, run.scan_uid, context->identity);
    mapping.reconcile = context->reconcile;
    mapping_path = spool_->MappingPath(run.scan_uid);
    Status written = files_.CreateDirectories(mapping_path->parent_path());
    if (written) written = privacy::WriteMapping(files_, *mapping_path, mapping);
    if (!written) {
      if (armed) detector.Abort();
      (void)files_.Remove(mapping_path->parent_path());  // the new scan's own directory
      return MakeError(written.error().WithContext("writing the scan's mapping record"));
    }
    run.study_uid = mapping.study_instance_uid.pseudonymous;
    base.patient_id = mapping.patient_id.pseudonymous;
    if (!mapping.accession_number.real.empty()) base.accession_number = mapping.accession_number.pseudonymous;
    const privacy::DisclosureOptions disclose{config_.privacy.age_band, config_.privacy.sex};
    if (disclose.age_band) {
      if (auto band = privacy::CoarsenAge(context->identity.patient_birth_date, context->local_date)) {
        base.patient_age = band->ToAgeString();
      }
    }
    base.patient_sex = privacy::DisclosedSex(disclose, context->identity.patient_sex);
  } else {
    run.study_uid = context->identity.study_instance_uid;
    base.patient_id = context->identity.patient_id;
    base.patient_name = context->identity.patient_name;
  }
  base.study_uid = run.study_uid;
  base.study_description = config_.study.study_description;
  base.terminal_id = config_.terminal_id;
  base.acquisition_start_utc = UtcNowIso8601();
  base.protocol = protocol;

  // Space first: a scan that cannot be stored is refused before the detector is armed.
  spool::ScanRecord record;
  record.scan_uid = run.scan_uid;
  record.study_uid = run.study_uid;
  record.created_utc = base.acquisition_start_utc;
  record.patient_source = context->reconcile ? "emergency" : context->from_worklist ? "worklist" : "configuration";
  record.manifest_base = codec::ToJson(base);
  const std::uint64_t reserve = protocol.RawBytes() + protocol.RawBytes() / 64 + (1 << 20);
  if (auto st = spool_->BeginScan(record, reserve); !st) {
    if (armed) detector.Abort();  // the scanner's scan cannot be taken; the driver returns to idle
    if (mapping_path) (void)files_.Remove(mapping_path->parent_path());  // the new scan's own directory
    return MakeError(st.error());
  }
  if (!armed) {
    if (auto st = detector.Arm(protocol); !st) {
      (void)spool_->UpdateFields(run.scan_uid, [&](spool::ScanRecord& r) {
        r.state = spool::ScanState::kFailed;
        r.failure_reason = "the driver refused to arm: " + st.error().message();
        r.reserved_bytes = 0;
      });
      return MakeError(st.error().WithContext("arming the detector"));
    }
  }
  // No patient data in logs: how the patient was found, never who it is (nor the accession).
  std::string exam_text = context->reconcile        ? ", emergency identity (to be reconciled)"
                          : context->from_worklist ? ", patient from the worklist"
                                                   : ", patient from the configuration";
  log::Info("scan", "scan " + run.scan_uid + (armed ? " announced by the detector" : " armed") + ": " +
                        std::to_string(protocol.TotalViews()) + " views of " + std::to_string(protocol.rows) + " x " +
                        std::to_string(protocol.channels) + " samples, dose " + std::to_string(protocol.dose_fraction) +
                        exam_text);
  if (run.progress) run.progress->views_total = protocol.TotalViews();
  run.detector = &detector;

  // Compression and spool writes run on the chunk stage's threads (agent/codec/chunk_stage.hpp):
  // the acquisition thread only queues raw chunks, and when the workers fall behind the queue's
  // bound, chunks go to a cheap encoder thread instead, so NextView() is never held up by them.
  // The workers write chunk files unsynced; the batch's sync thread makes them durable several
  // MiB at a time (agent/spool/batched_ingest.hpp) and only then reports them stored, which
  // starts their upload: nothing is uploaded or counted before it is on stable storage.
  spool::BatchOptions batch_options;
  batch_options.batch_bytes = config_.spool.sync_batch_bytes;
  batch_options.interval = std::chrono::milliseconds(config_.spool.sync_interval_ms);
  run.ingest = std::make_unique<spool::BatchedIngest>(*spool_, batch_options, [r = &run](const spool::Spool::SyncedBatch& batch) {
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
  stage_options.memory = chunk_memory_;
  stage_options.encode = {*filter, config_.codec.zstd_level, *coder};
  run.chunk_stage = std::make_unique<codec::ChunkStage>(
      stage_options, [r = &run](const codec::RawChunk& raw, Expected<std::span<const std::uint8_t>> bytes) {
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
  return Ok();
}

// On the acquisition thread: every view of the armed scan into the chunk stage, then (scan end)
// every chunk compressed and written and the last batch synced, so every chunk is reported
// (stored or not) before the caller reports acquisition done and the manifest is written.
codec::ChunkStage::AcquireResult Agent::Acquire(Run& r, drivers::Detector& detector,
                                                const drivers::ScanProtocol& protocol) {
  const codec::ChunkInfo info = codec::ScanChunkInfo(r.scan_uid, protocol);
  auto acquired = r.chunk_stage->Acquire(detector, protocol, info, r.progress ? &r.progress->views_acquired : nullptr);
  if (!acquired.incomplete_reason.empty()) log::Error("scan", "scan " + r.scan_uid + ": " + acquired.incomplete_reason);
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
                          " times acquisition waited for storage or for room in codec.buffer_bytes; more codec.threads, a faster spool disk or a larger codec.buffer_bytes help");
  }
  return acquired;
}

Expected<ScanSummary> Agent::Finish(Run& run) {
  ScanSummary s;
  s.scan_uid = run.scan_uid;
  s.study_uid = run.study_uid;
  s.acquisition_seconds = run.acquisition_seconds;
  s.upload_seconds = run.upload_seconds;
  // The daemon's shared uploader counted this scan's bytes apart (a Run's own does too; it
  // hands them over in ReleaseUploader).
  if (!run.uploader && run.shared_uploader != nullptr) run.uploaded_bytes += run.shared_uploader->TakeScanBytes(run.scan_uid);
  run.ReleaseUploader();
  s.images_seconds = run.images_seconds;
  s.uploaded_bytes = run.uploaded_bytes;
  s.results_received = run.results_received;
  s.results_delivered = run.results_delivered;
  auto record = spool_->Get(run.scan_uid);
  if (record) {
    s.views = record->views_acquired;
    // Totals, not the list: another scan's retention may have dropped this one's list already.
    const spool::ChunkTotals totals = spool::TotalsOf(*record);
    s.chunks = totals.count;
    s.raw_bytes = totals.raw_bytes;
    s.compressed_bytes = totals.compressed_bytes;
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
bool Agent::NeedsWork(const spool::ScanRecord& record) const {
  if (record.state == spool::ScanState::kDelivered || record.state == spool::ScanState::kFailed) return false;
  if (record.state == spool::ScanState::kResultsReceived && !config_.console.enabled) return false;
  if (record.state == spool::ScanState::kUploaded && !config_.results.enabled) return false;
  return true;
}

std::vector<std::string> Agent::ScansNeedingWork() {
  std::vector<std::pair<std::string, std::string>> found;  // created, UID
  spool_->VisitScans([&](const spool::ScanRecord& r) {
    if (NeedsWork(r)) found.emplace_back(r.created_utc, r.scan_uid);
  });
  std::stable_sort(found.begin(), found.end());  // oldest first, as they were taken up before
  std::vector<std::string> uids;
  uids.reserve(found.size());
  for (auto& [created, uid] : found) uids.push_back(std::move(uid));
  return uids;
}

std::vector<ScanSummary> Agent::ResumeAll(Progress* progress) {
  std::vector<ScanSummary> summaries;
  std::vector<std::unique_ptr<Run>> awaiting_results;
  // The records of the scans with work left, each copied whole (with its chunk list) only then.
  for (const std::string& uid : ScansNeedingWork()) {
    if (stop_requested_) break;
    auto full = spool_->Get(uid);
    if (!full || !NeedsWork(*full)) continue;
    const spool::ScanRecord& record = *full;
    log::Info("resume", "scan " + record.scan_uid + " is " + spool::ToString(record.state) + "; continuing it");
    auto run = std::make_unique<Run>(config_, *spool_, progress);
    run->ContinueFrom(record);
    if (record.state == spool::ScanState::kUploaded || record.state == spool::ScanState::kResultsReceived) {
      awaiting_results.push_back(std::move(run));
      continue;
    }
    run->uploader = NewUploader(run->io);
    run->results_later = true;
    boost::asio::post(run->io, [r = run.get(), &record] { r->ResumeUpload(record); });
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
  auto fetcher = ResultsFetcher::Create(io, *spool_, config_, RetryPolicy::Shared());
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

// The daemon's one event loop and what hangs off it: one uploader (one set of connections) and
// one results fetcher for every scan, the detector held open for announcements, and an
// acquisition thread that takes each scan as it comes while the loop uploads the earlier ones
// and waits for their results.
struct Agent::Service {
  Agent& agent;
  const ServiceHooks& hooks;
  boost::asio::io_context io;  // declared first: destroyed last, after everything posting to it
  std::unique_ptr<drivers::Detector> detector;  // null when the driver cannot be opened
  std::unique_ptr<Uploader> uploader;
  std::unique_ptr<ResultsFetcher> results;
  boost::asio::steady_timer retry_timer{io};

  // Loop thread only.
  std::set<Run*> active;      // started, not yet ended
  std::string acquiring;      // UID of the scan being acquired, if any
  std::string last_status;

  // Shared with the acquisition thread and TakeScan() callers.
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::optional<TakeScanOrder> order;  // at most one take_scan waits for the detector
  bool acquisition_busy = false;
  std::vector<std::unique_ptr<Run>> runs;  // every Run of this service: freed once ended and idle
  std::set<std::string> claimed;           // scan UIDs a Run works on (acquisition or resume)
  std::thread acquisition;

  Service(Agent& a, const ServiceHooks& h) : agent(a), hooks(h) {}

  Run* NewRun() {
    auto run = std::make_unique<Run>(agent.config_, *agent.spool_, io);
    run->shared_uploader = uploader.get();
    run->shared_results = results.get();
    run->counters = hooks.counters;
    Run* raw = run.get();
    // Stop() is called on the loop; the end is handled after the handler that ended the scan.
    raw->on_end = [this, raw] { boost::asio::post(io, [this, raw] { OnRunEnded(raw); }); };
    std::lock_guard lock(mutex);
    runs.push_back(std::move(run));
    return raw;
  }

  // Frees ended Runs that no completion handler can reach any more (bounded memory over a
  // daemon's life). Loop thread.
  void Collect() {
    std::lock_guard lock(mutex);
    std::erase_if(runs, [this](const std::unique_ptr<Run>& r) {
      if (!r->ended || r->in_flight > 0) return false;
      claimed.erase(r->scan_uid);
      return true;
    });
  }

  void OnRunEnded(Run* run) {
    active.erase(run);
    auto summary = agent.Finish(*run);
    if (summary && hooks.on_scan_end) hooks.on_scan_end(*summary);
    Collect();
    UpdateStatus();
  }

  void UpdateStatus() {
    if (!hooks.on_status) return;
    ServiceStatus st;
    st.acquiring = acquiring;
    st.in_progress = active.size() - (acquiring.empty() ? 0 : 1);
    std::string key = st.acquiring + "/" + std::to_string(st.in_progress);
    if (key == last_status) return;
    last_status = key;
    hooks.on_status(st);
  }

  // Every unfinished scan of the spool that no Run works on: at start, and every retry period
  // for scans whose upload or results failed for now. Loop thread.
  void ResumeUnfinished() {
    for (const std::string& uid : agent.ScansNeedingWork()) {
      {
        std::lock_guard lock(mutex);
        if (claimed.count(uid) > 0) continue;
      }
      auto full = agent.spool_->Get(uid);  // the whole record (its chunk list) only for these
      if (!full || !agent.NeedsWork(*full)) continue;
      const spool::ScanRecord& record = *full;
      {
        std::lock_guard lock(mutex);
        if (!claimed.insert(uid).second) continue;
      }
      log::Info("resume", "scan " + record.scan_uid + " is " + spool::ToString(record.state) + "; continuing it");
      Run* run = NewRun();
      run->ContinueFrom(record);
      active.insert(run);
      if (record.state == spool::ScanState::kUploaded || record.state == spool::ScanState::kResultsReceived) {
        run->FetchResults();
      } else {
        run->ResumeUpload(record);
      }
    }
    UpdateStatus();
    retry_timer.expires_after(hooks.retry_every);
    retry_timer.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) ResumeUnfinished();
    });
  }

  // The acquisition thread: waits for the detector's announcements and for take_scan orders,
  // one scan at a time (one detector), each handed to the loop as soon as its views are spooled.
  void AcquisitionLoop() {
    bool announces = detector != nullptr && detector->AnnouncesScans();
    for (;;) {  // bounded by stopping (RequestStop)
      std::optional<TakeScanOrder> taken;
      {
        std::unique_lock lock(mutex);
        if (stopping) return;
        if (order) {
          taken = std::move(order);
          order.reset();
          acquisition_busy = true;
        } else if (!announces) {
          // Nothing to wait for but orders: sleep until one comes (or the service stops).
          wake.wait_for(lock, std::chrono::seconds(1), [this] { return stopping || order.has_value(); });
          continue;
        }
      }
      if (taken) {
        auto protocol = taken->protocol ? Expected<drivers::ScanProtocol>(*taken->protocol) : agent.ConfiguredProtocol();
        if (!protocol) {
          Done(std::move(taken->armed), MakeError(protocol.error()));
          continue;
        }
        AcquireOne(*protocol, /*armed=*/false, taken->exam, std::move(taken->armed));
        continue;
      }
      auto announced = detector->WaitForScan(kAnnouncementWait);
      if (!announced) {
        if (announced.error().kind() == ErrorKind::kUnsupported) {
          log::Info("agent", announced.error().message());
          announces = false;
        } else if (announced.error().kind() != ErrorKind::kCancelled) {
          log::Warn("agent", "waiting for the scanner to announce a scan: " + announced.error().message() +
                                 "; trying again in a second");
          std::unique_lock lock(mutex);
          wake.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; });
        }
        continue;
      }
      if (!announced->has_value()) continue;
      {
        std::lock_guard lock(mutex);
        acquisition_busy = true;
      }
      ExamIdentity exam{(*announced)->accession_number, (*announced)->procedure_step_id, false};
      AcquireOne((*announced)->protocol, /*armed=*/true, exam, nullptr);
    }
  }

  static void Done(std::function<void(Expected<std::string>)> armed, Expected<std::string> result) {
    if (armed) armed(std::move(result));
  }

  // Acquisition thread: one scan from arming to its last chunk in the spool; its upload and
  // results then go on on the loop while this thread waits for the next scan.
  void AcquireOne(const drivers::ScanProtocol& protocol, bool armed, const ExamIdentity& exam,
                  std::function<void(Expected<std::string>)> on_armed) {
    Run* run = NewRun();
    if (auto st = agent.BeginAcquisition(*run, protocol, *detector, armed, exam); !st) {
      log::Error("scan", "a scan could not start: " + st.error().message());
      Done(std::move(on_armed), MakeError(st.error()));
      std::lock_guard lock(mutex);
      acquisition_busy = false;
      run->ended = true;  // never reached the loop; freed by the next Collect()
      return;
    }
    {
      std::lock_guard lock(mutex);
      claimed.insert(run->scan_uid);
      // A stop that came while the scan was armed (Arm clears an earlier abort): what is
      // acquired stays spooled and resumes on the next start.
      if (stopping) detector->Abort();
    }
    boost::asio::post(io, [this, run] {
      active.insert(run);
      acquiring = run->scan_uid;
      UpdateStatus();
    });
    Done(std::move(on_armed), run->scan_uid);
    auto acquired = agent.Acquire(*run, *detector, protocol);
    // Nothing of the scan's acquisition is left running once its done is posted.
    run->chunk_stage.reset();
    run->ingest.reset();
    boost::asio::post(io, [this, run, acquired] {
      if (acquiring == run->scan_uid) acquiring.clear();
      run->OnAcquired(acquired.views, acquired.incomplete_reason, acquired.chunks);
      UpdateStatus();
    });
    std::lock_guard lock(mutex);
    acquisition_busy = false;
  }

  // How long one WaitForScan() may block: how soon a take_scan order or a stop is seen.
  static constexpr std::chrono::milliseconds kAnnouncementWait{500};
};

Status Agent::Serve(const ServiceHooks& hooks) {
  if (stop_requested_) return Ok();
  auto service = std::make_unique<Service>(*this, hooks);
  Service& sv = *service;
  auto detector = drivers::MakeDetector(config_.driver.name, config_.driver.options);
  if (detector) {
    sv.detector = std::move(*detector);
  } else {
    // Uploads and results go on; scans need the detector, and say so when asked for.
    log::Error("agent", "the detector cannot be opened, so no scan can be acquired until the daemon restarts: " +
                            detector.error().WithContext("driver \"" + config_.driver.name + "\"").message());
  }
  sv.uploader = NewUploader(sv.io, hooks.counters != nullptr ? &hooks.counters->upload : nullptr);
  sv.uploader->SetPaused(uploads_paused_);  // before any scan is resumed: a recorded pause holds from the start
  if (config_.results.enabled) {
    auto fetcher = ResultsFetcher::Create(sv.io, *spool_, config_, RetryPolicy::Shared());
    if (!fetcher) return MakeError(fetcher.error());
    sv.results = std::move(*fetcher);
    if (hooks.counters != nullptr) sv.results->SetRetryCounts(&hooks.counters->results_retries_by_class);
  }
  {
    std::lock_guard lock(stop_mutex_);
    stop_hook_ = [&sv] {
      {
        std::lock_guard service_lock(sv.mutex);
        sv.stopping = true;
      }
      sv.wake.notify_all();
      if (sv.detector) sv.detector->Abort();
      boost::asio::post(sv.io, [&sv] { sv.io.stop(); });
    };
    if (stop_requested_) stop_hook_();
    service_ = &sv;
  }
  std::shared_ptr<void> loop_attachment;
  if (hooks.on_loop) loop_attachment = hooks.on_loop(sv.io);
  if (sv.detector) sv.acquisition = std::thread([&sv] { sv.AcquisitionLoop(); });
  boost::asio::post(sv.io, [&sv] {
    sv.ResumeUnfinished();
    if (sv.hooks.on_ready) sv.hooks.on_ready();
  });
  {
    auto guard = boost::asio::make_work_guard(sv.io);
    LoopHeartbeat heartbeat(sv.io, heartbeat_);
    sv.io.run();
  }
  loop_attachment.reset();  // on this thread, with the loop stopped
  {
    std::lock_guard lock(stop_mutex_);
    stop_hook_ = nullptr;
    service_ = nullptr;
  }
  // The loop has stopped: stop acquisition (what was spooled stays, and resumes on the next
  // start), then every transfer and fetch; the scans not finished are summed up as stopped.
  {
    std::lock_guard lock(sv.mutex);
    sv.stopping = true;
    if (sv.order) Service::Done(std::move(sv.order->armed), MakeError(ErrorKind::kCancelled, "the daemon is stopping"));
    sv.order.reset();
  }
  sv.wake.notify_all();
  if (sv.detector) sv.detector->Abort();
  if (sv.acquisition.joinable()) sv.acquisition.join();
  sv.retry_timer.cancel();
  sv.uploader->Stop();
  if (sv.results) sv.results->Stop();
  for (Run* run : sv.active) {
    if (run->ended) continue;
    run->ended = true;
    auto summary = Finish(*run);
    if (summary && hooks.on_scan_end) hooks.on_scan_end(*summary);
  }
  return Ok();
}

std::vector<ActiveScan> Agent::ActiveScans() const {
  std::vector<ActiveScan> scans;
  if (service_ == nullptr) return scans;
  for (const Run* run : service_->active) {
    ActiveScan a;
    a.scan_uid = run->scan_uid;
    a.phase = run->scan_uid == service_->acquiring ? "acquiring"
              : run->chunks_uploaded < run->stored_chunks || !run->manifest_written ? "uploading"
                                                                                          : "waiting for images";
    a.chunks_stored = run->stored_chunks;
    a.chunks_uploaded = run->chunks_uploaded;
    scans.push_back(std::move(a));
  }
  return scans;
}

void Agent::SetUploadsPaused(bool paused) {
  uploads_paused_ = paused;
  if (service_ != nullptr) service_->uploader->SetPaused(paused);
  log::Info("upload", paused ? "uploads paused: no upload request starts until they are resumed; acquisition and results go on"
                             : "uploads resumed");
}

void Agent::TakeScan(TakeScanOrder take) {
  std::unique_lock lock(stop_mutex_);
  if (service_ == nullptr || service_->detector == nullptr) {
    lock.unlock();
    Service::Done(std::move(take.armed),
                  MakeError(ErrorKind::kBusy, service_ == nullptr
                                                         ? "the daemon is not serving scans right now"
                                                         : "the detector could not be opened; see the daemon's log"));
    return;
  }
  Service& sv = *service_;
  std::unique_lock service_lock(sv.mutex);
  if (sv.stopping || sv.order || sv.acquisition_busy) {
    service_lock.unlock();
    lock.unlock();
    Service::Done(std::move(take.armed),
                  MakeError(ErrorKind::kBusy, sv.stopping ? "the daemon is stopping"
                                                          : "the detector is acquiring another scan; try again when it ends"));
    return;
  }
  sv.order = std::move(take);
  service_lock.unlock();
  sv.wake.notify_all();
}

}  // namespace ctagent::core
