#include "agent/core/results_fetch.hpp"

#include "agent/privacy/privacy.hpp"
#include "agent/results/reidentify.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "base/log.hpp"
#include "agent/core/http_options.hpp"
#include "transport/dicomweb_async.hpp"

namespace ctagent::core {

namespace {

std::int64_t UnixMsNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Why a fetched instance is refused, or empty when it is kept. Refused: it failed validation,
// or it is not the instance that was asked for (filed under another UID it could replace a
// result already kept, or be counted and delivered twice), or, for a scan with a privacy mapping,
// it cannot be given the real identity back (an object of another scan). A kept instance of such
// a scan has its bytes re-identified in place, before anything stores them.
std::string RefusalOf(const Expected<results::InstanceInfo>& info, const std::string& sop_instance_uid,
                      const std::string& series_uid, const std::optional<privacy::MappingRecord>& mapping,
                      std::vector<std::uint8_t>& bytes) {
  if (!info) return "instance " + sop_instance_uid + ": " + info.error().message();
  if (info->sop_instance_uid != sop_instance_uid || info->series_uid != series_uid) {
    return "instance " + sop_instance_uid + " of series " + series_uid + ": the imaging center answered with instance " +
           info->sop_instance_uid + " of series " + info->series_uid +
           " instead (WADO-RS answer does not match its QIDO-RS entry)";
  }
  if (mapping) {
    auto reidentified = results::ReidentifyPart10(bytes, *mapping);
    if (!reidentified) return "instance " + sop_instance_uid + ": " + reidentified.error().message();
    bytes = std::move(*reidentified);
  }
  return {};
}

// One connection per retrieve in flight and two for QIDO-RS searches besides: every scan's
// requests share these; more wait in libcurl's queue for a free one.
transport::AsyncHttpLimits EngineLimits() {
  transport::AsyncHttpLimits limits;
  limits.max_host_connections = static_cast<std::uint32_t>(ResultsFetcher::kParallelFetches) + 2;
  limits.max_cached_connections = limits.max_host_connections;
  limits.multiplex = false;
  return limits;
}

// Runs `work` on the worker and `then` with its result on the loop: how the loop hands a blocking
// step (a file, DCMTK, an fsync) away without waiting for it.
template <typename Work, typename Then>
void OnWorker(boost::asio::thread_pool& worker, boost::asio::io_context& io, Work work, Then then) {
  boost::asio::post(worker, [&io, work = std::move(work), then = std::move(then)]() mutable {
    auto result = work();
    boost::asio::post(io, [then = std::move(then), result = std::move(result)]() mutable { then(std::move(result)); });
  });
}

}  // namespace

struct ResultsFetcher::Job {
  std::string scan_uid;
  std::string study_uid;  // the one the imaging center knows (pseudonymous for a worklist scan)
  // The scan's privacy mapping (a worklist or emergency scan), read at the first round: every
  // object is re-identified with it before it is stored, and stored objects carry the real study
  // UID (local_study_uid); without one both are study_uid.
  bool mapping_read = false;
  std::optional<privacy::MappingRecord> mapping;
  std::string local_study_uid;
  std::chrono::steady_clock::time_point deadline;
  std::chrono::milliseconds interval{1000};
  Done done;
  // The job's requests, on the loop, each ending by `deadline` or when the fetcher stops.
  std::unique_ptr<transport::dicomweb::AsyncClient> dicomweb;
  // The fields below are used by one step at a time: a step on the loop or the worker hands the
  // job on (posts) and does not touch it afterwards.
  std::uint32_t received = 0;
  std::uint32_t delivered = 0;
  // Instances refused by this job (by the UID QIDO listed): not downloaded again while the job
  // runs, so a server that keeps sending the wrong bytes costs one download per instance.
  std::set<std::string> refused;
  std::string first_refusal;  // the first refusal's message, for the outcome
  std::string last_problem;   // the last transient error, for the timeout message
  std::uint32_t failed_polls = 0;  // failed polls in a row (RetryPolicy's max_attempts bounds them)
  std::set<std::string> duplicates_logged;  // instances listed twice, logged once per job
  bool progress = false;                    // the last round stored something new
  // When a CT series was first seen complete without an SR (the report wait counts from here).
  std::optional<std::chrono::steady_clock::time_point> ct_complete_at;
  // Parsed SRs and SEG references, by SOP instance UID (files in the spool do not change).
  std::map<std::string, results::SrSummary> reports;
  std::map<std::string, results::SegReferences> segs;
  std::set<std::string> to_deliver;  // SOP instance UIDs chosen when the set was complete
  results::ScanFindings findings;
  // Milestones of the results phase (kept apart from `findings`, which each evaluation rebuilds).
  results::ScanFindings::Timeline timeline;
  std::string set_refusal;  // why the AI result set was refused (logged once)
  std::string console_refusal;  // what the console refused, for the outcome
};

// One poll round: the series QIDO-RS listed, read one after the other.
struct ResultsFetcher::Round {
  std::vector<transport::dicomweb::SeriesRef> series;
  std::size_t index = 0;  // the series being read
  std::set<std::string> have;     // stored results of the scan
  std::set<std::string> have_ct;  // stored CT images: only they carry ImagesInAcquisition
  std::set<std::string> series_seen;
  std::set<std::string> listed;
  bool any_complete = false;
  // The series being read: stored and expected images, what is new (in the order listed) and
  // where its next batch starts.
  std::uint32_t stored = 0;
  std::uint32_t expected = 0;
  std::vector<std::string> to_fetch;
  std::size_t next_batch = 0;
};

struct ResultsFetcher::Download {
  std::optional<Expected<std::vector<std::uint8_t>>> bytes;
  bool over_limit = false;
  std::optional<Expected<results::InstanceInfo>> info;
};

// Up to kBatchInstances instances of one series, downloaded kParallelFetches at a time.
struct ResultsFetcher::Batch {
  std::string series_uid;
  std::vector<std::string> uids;
  std::uint64_t cap = 0;  // per download: its share of max_instance_bytes, within the room left
  std::vector<Download> downloads;  // sized once before the first download starts
  std::size_t next = 0;      // the next download to start
  std::size_t finished = 0;  // downloads ended (and, when they brought bytes, checked)
};

void ResultsFetcher::Complete(Job& job, Status status) {
  if (!job.set_refusal.empty()) {
    const std::string refused = "the AI result set was refused and not delivered (only the CT series was): " +
                                job.set_refusal;
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + refused)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + refused));
  }
  if (!job.console_refusal.empty()) {
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + job.console_refusal)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + job.console_refusal));
  }
  if (!job.refused.empty()) {
    const std::string refused = std::to_string(job.refused.size()) +
                                " result instance(s) refused and not delivered; first: " + job.first_refusal;
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + refused)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + refused));
  }
  job.done(ResultsOutcome{std::move(status), job.received, job.delivered,
                          static_cast<std::uint32_t>(job.refused.size()), job.findings});
}

Expected<std::unique_ptr<ResultsFetcher>> ResultsFetcher::Create(boost::asio::io_context& io, spool::Spool& spool,
                                                                  const config::AgentConfig& config, RetryPolicy retry) {
  auto options = MakeDicomWebHttpOptions(config.cloud);
  if (!options) return MakeError(options.error());
  options->request_timeout_s = 300;
  return std::unique_ptr<ResultsFetcher>(
      new ResultsFetcher(io, spool, config, std::move(*options), std::move(retry)));
}

ResultsFetcher::ResultsFetcher(boost::asio::io_context& io, spool::Spool& spool, const config::AgentConfig& config,
                               transport::HttpOptions http_options, RetryPolicy retry)
    : io_(io),
      spool_(spool),
      results_(config.results),
      console_(config.console),
      dicomweb_url_(config.cloud.dicomweb_url),
      http_options_(std::move(http_options)),
      http_(std::make_unique<transport::AsyncHttp>(io, http_options_, EngineLimits())),
      retry_(std::move(retry)) {}

ResultsFetcher::~ResultsFetcher() { Stop(); }

void ResultsFetcher::Stop() {
  stopping_ = true;
  // On the loop, the requests in flight end now; otherwise at their next progress check (within
  // about a second of the loop running), or with the engine once the loop no longer runs.
  if (io_.get_executor().running_in_this_thread()) http_->CancelAll();
  worker_.join();  // the blocking step under way ends; no new one starts
}

void ResultsFetcher::FetchAndDeliver(const std::string& scan_uid, const std::string& study_uid, Done done) {
  auto job = std::make_shared<Job>();
  job->scan_uid = scan_uid;
  job->study_uid = study_uid;
  job->deadline = std::chrono::steady_clock::now() + std::chrono::seconds(results_.timeout_s);
  job->interval = std::chrono::milliseconds(results_.poll_interval_ms);
  job->done = std::move(done);
  job->dicomweb = std::make_unique<transport::dicomweb::AsyncClient>(io_, *http_, dicomweb_url_);
  // Each request ends by the job's deadline or when the fetcher stops, whatever the server does.
  job->dicomweb->SetDeadline(job->deadline, [this] { return !stopping_.load(); });
  Poll(std::move(job));
}

// What a round's outcome leads to: delivery, the end of the job, or the next round after the
// backoff. On the io_context.
void ResultsFetcher::RoundDone(std::shared_ptr<Job> job, Expected<bool> complete) {
  if (complete && *complete) {
    Deliver(job);
    return;
  }
  // A failed poll: retried by its class, as uploads are (one policy, base/retry.hpp).
  std::chrono::milliseconds wait = job->interval;
  if (!complete) {
    const Error& error = complete.error();
    const FailureClass failure = error.failure();
    const ClassRetry rule = retry_.For(failure);
    const std::string context = "fetching results of scan " + job->scan_uid;
    if (failure == FailureClass::kCancelled) {
      Complete(*job, MakeError(error.WithContext(context)));
      return;
    }
    if (rule.permanent || job->failed_polls + 1 >= rule.max_attempts) {
      const std::string advice = PermanentAdvice(failure);
      const std::string why =
          rule.permanent ? (advice.empty() ? std::string("not retried") : "not retried: " + advice)
                         : "gave up after " + std::to_string(job->failed_polls + 1) +
                               " failed polls in a row; the agent asks again on its next run";
      const Error ended = error.WithContext(context + " [" + ToString(failure) + ", " + why + "]");
      log::Error("results", ended.message());
      Complete(*job, MakeError(ended));
      return;
    }
    wait = retry_.Delay(failure, job->failed_polls, rng_);
    ++job->failed_polls;
    job->last_problem = error.message();
    log::Warn("results", "scan " + job->scan_uid + ": " + job->last_problem + " [" + ToString(failure) +
                             "]; retry " + std::to_string(job->failed_polls) + " in " +
                             std::to_string(wait.count()) + " ms");
    if (retry_counts_ != nullptr) ++(*retry_counts_)[ToString(failure)];
  } else {
    job->failed_polls = 0;
  }
  if (std::chrono::steady_clock::now() + wait > job->deadline) {
    const std::string problem = job->last_problem.empty() ? "" : " (last problem: " + job->last_problem + ")";
    Complete(*job, MakeError(ErrorKind::kNetwork,
                             "no complete result series for scan " + job->scan_uid + " within " +
                                 std::to_string(results_.timeout_s) + " s (results.timeout_s)" + problem +
                                 "; the raw data is safe in the spool and the agent keeps asking on its "
                                 "next run"));
    return;
  }
  if (complete) {
    // Not complete yet: wait the poll interval. Something new arrived: the rest of the set is
    // likely close behind, so the interval starts over (the SR follows the CT series within
    // seconds).
    if (job->progress) job->interval = std::chrono::milliseconds(results_.poll_interval_ms);
    wait = job->interval;
    job->interval = std::min(job->interval * 2, std::chrono::milliseconds(results_.poll_max_interval_ms));
  }
  auto timer = std::make_shared<boost::asio::steady_timer>(io_, wait);
  timer->async_wait([this, job, timer](const boost::system::error_code&) { Poll(job); });
}

void ResultsFetcher::AcquireBatchSlot(std::function<void()> start) {
  if (!batch_running_) {
    batch_running_ = true;
    start();
    return;
  }
  batch_waiting_.push_back(std::move(start));  // at most one per job: a job waits for one batch at a time
}

void ResultsFetcher::ReleaseBatchSlot() {
  if (batch_waiting_.empty()) {
    batch_running_ = false;
    return;
  }
  auto next = std::move(batch_waiting_.front());
  batch_waiting_.pop_front();
  boost::asio::post(io_, std::move(next));  // the slot passes on, never re-entered from a completion
}

void ResultsFetcher::Poll(std::shared_ptr<Job> job) {
  if (stopping_) {
    RoundDone(std::move(job), MakeError(ErrorKind::kCancelled, "agent is stopping"));
    return;
  }
  // The mapping is a file: read on the worker, once per job.
  OnWorker(
      worker_, io_, [this, job] { return ReadMappingOnce(*job); },
      [this, job](Status mapping) {
        if (!mapping) {
          RoundDone(job, MakeError(mapping.error()));
          return;
        }
        job->dicomweb->SearchSeries(job->study_uid, [this, job](Expected<std::vector<transport::dicomweb::SeriesRef>> series) {
          if (!series) {
            RoundDone(job, MakeError(series.error()));
            return;
          }
          // When the SR was first seen listed (its series' modality, or its instance's SOP class below).
          if (job->timeline.discovered == 0 &&
              std::any_of(series->begin(), series->end(), [](const auto& s) { return s.modality == "SR"; })) {
            job->timeline.discovered = UnixMsNow();
          }
          auto round = std::make_shared<Round>();
          round->series = std::move(*series);
          OnWorker(
              worker_, io_, [this, job, round] { return StartRound(*job, *round); },
              [this, job, round](Status started) {
                if (!started) {
                  RoundDone(job, MakeError(started.error()));
                  return;
                }
                NextSeries(job, round);
              });
        });
      });
}

Status ResultsFetcher::ReadMappingOnce(Job& job) {
  if (job.mapping_read) return Ok();
  const auto path = spool_.MappingPath(job.scan_uid);
  job.local_study_uid = job.study_uid;
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    const auto file_store = MakeProcessFileStore();
    FileStore& files = *file_store;
    auto mapping = privacy::ReadMapping(files, path);
    if (!mapping) return MakeError(mapping.error().WithContext("scan " + job.scan_uid + "'s results"));
    job.local_study_uid = mapping->study_instance_uid.real;
    job.mapping = std::move(*mapping);
  }
  job.mapping_read = true;
  return Ok();
}

Status ResultsFetcher::StartRound(Job& job, Round& round) {
  auto record = spool_.Get(job.scan_uid);
  if (!record) return MakeError(record.error());
  for (const auto& r : record->results) {
    round.have.insert(r.sop_instance_uid);
    if (results::IsCtImage(r.sop_class_uid)) round.have_ct.insert(r.sop_instance_uid);
  }
  job.progress = false;
  return Ok();
}

void ResultsFetcher::NextSeries(std::shared_ptr<Job> job, std::shared_ptr<Round> round) {
  // Distinct UIDs only: a series listed twice is one series.
  while (round->index < round->series.size() && !round->series_seen.insert(round->series[round->index].series_uid).second) {
    ++round->index;
  }
  if (round->index == round->series.size()) {
    OnWorker(
        worker_, io_, [this, job, round] { return EndRound(*job, *round); },
        [this, job](Expected<bool> complete) { RoundDone(job, std::move(complete)); });
    return;
  }
  const std::string& series_uid = round->series[round->index].series_uid;
  job->dicomweb->SearchInstances(
      job->study_uid, series_uid, [this, job, round](Expected<std::vector<transport::dicomweb::InstanceRef>> instances) {
        if (!instances) {
          RoundDone(job, MakeError(instances.error()));
          return;
        }
        if (job->timeline.discovered == 0 &&
            std::any_of(instances->begin(), instances->end(),
                        [](const auto& inst) { return results::IsStructuredReport(inst.sop_class_uid); })) {
          job->timeline.discovered = UnixMsNow();
        }
        auto listed = std::make_shared<std::vector<transport::dicomweb::InstanceRef>>(std::move(*instances));
        OnWorker(
            worker_, io_, [this, job, round, listed] { return SortInstances(*job, *round, *listed); },
            [this, job, round](Status sorted) {
              if (!sorted) {
                RoundDone(job, MakeError(sorted.error()));
                return;
              }
              NextBatch(job, round);
            });
      });
}

Status ResultsFetcher::SortInstances(Job& job, Round& round,
                                     const std::vector<transport::dicomweb::InstanceRef>& instances) {
  // Distinct UIDs only: an instance listed twice is one image, so completeness and the counts
  // never rest on a repeated entry.
  round.stored = 0;
  round.expected = 0;
  round.to_fetch.clear();
  round.next_batch = 0;
  for (const auto& inst : instances) {
    if (!round.listed.insert(inst.sop_instance_uid).second) {
      if (job.duplicates_logged.insert(inst.sop_instance_uid).second) {
        log::Warn("results", "scan " + job.scan_uid + ": instance " + inst.sop_instance_uid +
                                 " is listed more than once by the imaging center; counted once");
      }
      continue;
    }
    if (job.refused.count(inst.sop_instance_uid)) continue;
    if (!round.have.count(inst.sop_instance_uid)) {
      round.to_fetch.push_back(inst.sop_instance_uid);
      continue;
    }
    if (round.expected == 0 && round.have_ct.count(inst.sop_instance_uid)) {
      auto info = results::ValidateInstanceFile(spool_.ResultPath(job.scan_uid, inst.sop_instance_uid),
                                                job.local_study_uid, results::DefaultAllowedSopClasses());
      if (info) round.expected = info->images_in_acquisition;
    }
    ++round.stored;
  }
  return Ok();
}

void ResultsFetcher::Kept(Job& job, Round& round, const results::InstanceInfo& info) {
  round.have.insert(info.sop_instance_uid);
  ++job.received;
  job.progress = true;
  round.expected = std::max(round.expected, info.images_in_acquisition);
  ++round.stored;
}

void ResultsFetcher::NextBatch(std::shared_ptr<Job> job, std::shared_ptr<Round> round) {
  if (round->next_batch >= round->to_fetch.size()) {
    if (round->expected > 0 && round->stored >= round->expected) round->any_complete = true;
    ++round->index;
    NextSeries(std::move(job), std::move(round));
    return;
  }
  auto batch = std::make_shared<Batch>();
  batch->series_uid = round->series[round->index].series_uid;
  const std::size_t first = round->next_batch;
  batch->uids.assign(round->to_fetch.begin() + static_cast<std::ptrdiff_t>(first),
                     round->to_fetch.begin() + static_cast<std::ptrdiff_t>(std::min(round->to_fetch.size(), first + kBatchInstances)));
  round->next_batch += kBatchInstances;
  AcquireBatchSlot([this, job, round, batch] {
    OnWorker(
        worker_, io_, [this, job, batch] { return BatchCap(*job, *batch); },
        [this, job, round, batch](Status room) {
          if (!room) {
            ReleaseBatchSlot();
            RoundDone(job, MakeError(room.error()));
            return;
          }
          batch->downloads.resize(batch->uids.size());
          const std::size_t parallel = std::min(kParallelFetches, batch->uids.size());
          for (std::size_t i = 0; i < parallel; ++i) StartDownload(job, round, batch);
        });
  });
}

Status ResultsFetcher::BatchCap(Job& job, Batch& batch) {
  const std::uint64_t room = spool_.ResultsRoom();
  if (room == 0) {
    const std::string label = "result instance " + batch.uids.front() + " of scan " + job.scan_uid;
    auto st = spool_.CheckResultsRoom(1, label);
    return MakeError(st ? Error(ErrorKind::kNoSpace, label + " not downloaded: the spool has no room left") : st.error());
  }
  // Each download of the batch gets its share of max_instance_bytes (so the batch holds no more
  // than one download at a time did) and no more than the room left; one past its cap is fetched
  // again alone after the batch, where KeepInstance tells a too-large instance from a full spool.
  batch.cap = std::min<std::uint64_t>(results_.max_instance_bytes / kBatchInstances, room);
  return Ok();
}

void ResultsFetcher::StartDownload(std::shared_ptr<Job> job, std::shared_ptr<Round> round, std::shared_ptr<Batch> batch) {
  const std::size_t i = batch->next++;
  job->dicomweb->RetrieveInstance(
      job->study_uid, batch->series_uid, batch->uids[i], batch->cap,
      [this, job, round, batch, i](Expected<std::vector<std::uint8_t>> bytes, bool over_limit) {
        Download& d = batch->downloads[i];
        d.over_limit = over_limit;
        d.bytes = std::move(bytes);
        if (batch->next < batch->uids.size()) StartDownload(job, round, batch);
        if (!*d.bytes) {
          DownloadChecked(job, round, batch);
          return;
        }
        // DCMTK's check on the worker while the next download runs; it touches only this entry.
        OnWorker(
            worker_, io_,
            [job, batch, i] {
              Download& mine = batch->downloads[i];
              mine.info = results::ValidateInstance(**mine.bytes, job->study_uid, results::DefaultAllowedSopClasses());
              return Ok();
            },
            [this, job, round, batch](Status) { DownloadChecked(job, round, batch); });
      });
}

void ResultsFetcher::DownloadChecked(std::shared_ptr<Job> job, std::shared_ptr<Round> round, std::shared_ptr<Batch> batch) {
  if (++batch->finished < batch->uids.size()) return;
  auto alone = std::make_shared<std::vector<std::string>>();
  auto kept = std::make_shared<std::vector<results::InstanceInfo>>();
  OnWorker(
      worker_, io_, [this, job, batch, alone, kept] { return KeepBatch(*job, *batch, *kept, *alone); },
      [this, job, round, batch, alone, kept](Status stored) {
        // Counted also when the batch ended in an error: they are stored and in the record.
        for (const auto& info : *kept) Kept(*job, *round, info);
        batch->downloads.clear();  // the batch's bytes are freed before one is fetched alone
        batch->downloads.shrink_to_fit();
        if (!stored) {
          ReleaseBatchSlot();
          RoundDone(job, MakeError(stored.error()));
          return;
        }
        FetchAlone(job, round, batch->series_uid, alone, 0);
      });
}

void ResultsFetcher::FetchAlone(std::shared_ptr<Job> job, std::shared_ptr<Round> round, std::string series_uid,
                                std::shared_ptr<std::vector<std::string>> alone, std::size_t k) {
  if (k == alone->size()) {
    ReleaseBatchSlot();
    NextBatch(std::move(job), std::move(round));
    return;
  }
  const std::string uid = (*alone)[k];
  const std::string label = "result instance " + uid + " of scan " + job->scan_uid;
  // The spool budget bounds the download: none starts without room, and one larger than the
  // room left stops there (nothing of it reaches the disk).
  OnWorker(
      worker_, io_,
      [this, label]() -> Expected<std::uint64_t> {
        const std::uint64_t room = spool_.ResultsRoom();
        if (room == 0) {
          auto st = spool_.CheckResultsRoom(1, label);
          return MakeError(st ? Error(ErrorKind::kNoSpace, label + " not downloaded: the spool has no room left")
                              : st.error());
        }
        return std::min<std::uint64_t>(results_.max_instance_bytes, room);
      },
      [this, job, round, series_uid, alone, k, uid](Expected<std::uint64_t> cap) {
        if (!cap) {
          ReleaseBatchSlot();
          RoundDone(job, MakeError(cap.error()));
          return;
        }
        job->dicomweb->RetrieveInstance(
            job->study_uid, series_uid, uid, *cap,
            [this, job, round, series_uid, alone, k, uid, cap = *cap](Expected<std::vector<std::uint8_t>> bytes,
                                                                      bool over_limit) {
              auto downloaded = std::make_shared<Expected<std::vector<std::uint8_t>>>(std::move(bytes));
              OnWorker(
                  worker_, io_,
                  [this, job, series_uid, uid, cap, over_limit, downloaded] {
                    return KeepInstance(*job, series_uid, uid, cap, over_limit, *downloaded);
                  },
                  [this, job, round, series_uid, alone, k](Expected<std::optional<results::InstanceInfo>> info) {
                    if (!info) {
                      ReleaseBatchSlot();
                      RoundDone(job, MakeError(info.error()));
                      return;
                    }
                    if (*info) Kept(*job, *round, **info);
                    FetchAlone(job, round, series_uid, alone, k + 1);
                  });
            });
      });
}

Expected<bool> ResultsFetcher::EndRound(Job& job, const Round& round) {
  std::set<std::string> pending;
  for (const auto& uid : round.listed) {
    if (!round.have.count(uid) && !job.refused.count(uid)) pending.insert(uid);
  }
  const std::int64_t retrieved = UnixMsNow();
  auto updated = spool_.Get(job.scan_uid);
  if (!updated) return MakeError(updated.error());
  auto complete = EvaluateSet(job, *updated, pending, round.any_complete);
  if (!complete || !*complete) return complete;
  job.timeline.retrieved = retrieved;
  job.timeline.validated = UnixMsNow();
  job.findings.timeline_unix_ms = job.timeline;
  if (auto st = spool_.UpdateFields(job.scan_uid, [](spool::ScanRecord& r) {
        if (r.state == spool::ScanState::kUploaded) r.state = spool::ScanState::kResultsReceived;
      });
      !st) {
    return MakeError(st.error());
  }
  if (Status st = results::WriteScanFindings(spool_.ResultPath(job.scan_uid, "x").parent_path(), job.findings); !st) {
    log::Warn("results", "scan " + job.scan_uid + ": findings not recorded for status: " + st.error().message());
  }
  return true;
}

Expected<bool> ResultsFetcher::EvaluateSet(Job& job, const spool::ScanRecord& record,
                                           const std::set<std::string>& pending, bool ct_complete) {
  std::map<std::string, results::StoredInstance> stored;
  std::vector<std::string> report_uids;
  for (const auto& r : record.results) {
    stored[r.sop_instance_uid] = {r.series_uid, r.sop_class_uid};
    const auto path = spool_.ResultPath(job.scan_uid, r.sop_instance_uid);
    if (results::IsStructuredReport(r.sop_class_uid)) {
      report_uids.push_back(r.sop_instance_uid);
      if (!job.reports.count(r.sop_instance_uid)) {
        auto summary = results::ReadSrSummary(path);
        if (!summary) return MakeError(summary.error().WithContext("scan " + job.scan_uid));
        job.reports[r.sop_instance_uid] = std::move(*summary);
      }
    } else if (results::IsSegmentation(r.sop_class_uid) && !job.segs.count(r.sop_instance_uid)) {
      auto refs = results::ReadSegReferences(path);
      if (!refs) return MakeError(refs.error().WithContext("scan " + job.scan_uid));
      job.segs[r.sop_instance_uid] = std::move(*refs);
    }
  }
  const auto all_ct = [&] {
    std::set<std::string> uids;
    for (const auto& [uid, inst] : stored) {
      if (results::IsCtImage(inst.sop_class_uid)) uids.insert(uid);
    }
    return uids;
  };

  if (report_uids.empty()) {
    // No SR (yet): a center that sends CT only gets its series delivered as before, once the
    // report wait has passed without an SR.
    if (!ct_complete) return false;
    const auto now = std::chrono::steady_clock::now();
    if (!job.ct_complete_at) job.ct_complete_at = now;
    if (now - *job.ct_complete_at < report_wait_) return false;
    job.findings = {};
    if (!job.refused.empty()) {
      // Something was refused (it may have been the SR): nothing but the CT images is vouched
      // for, so a SEG or report page without its SR does not reach the console.
      job.findings.report = "refused";
      job.findings.refused_reason = job.first_refusal;
      job.to_deliver = all_ct();
      log::Warn("results", "scan " + job.scan_uid + ": no usable AI report (an instance was refused); delivering the CT only");
      return true;
    }
    job.findings.report = "none";
    job.to_deliver.clear();
    for (const auto& [uid, inst] : stored) job.to_deliver.insert(uid);
    log::Info("results", "scan " + job.scan_uid + ": no AI report (SR) within " +
                             std::to_string(report_wait_.count()) + " ms of a complete CT series; delivering the CT");
    return true;
  }

  std::vector<results::SegReferences> segs;
  for (const auto& [uid, refs] : job.segs) segs.push_back(refs);
  std::set<std::string> members;
  std::string waiting;
  for (const auto& uid : report_uids) {
    const results::SrSummary& sr = job.reports.at(uid);
    auto verdict = results::CheckResultSet(job.local_study_uid, sr, stored, pending, job.refused, segs);
    if (verdict.state == results::ResultSetVerdict::State::kRefused) {
      if (job.set_refusal.empty()) {
        job.set_refusal = verdict.reason;
        log::Error("results", "scan " + job.scan_uid + ": AI result set refused, nothing of it is delivered: " +
                                  verdict.reason);
      }
      if (!ct_complete) return false;  // the CT series is still delivered once it is complete
      job.findings = {};
      job.findings.report = "refused";
      job.findings.refused_reason = job.set_refusal;
      job.to_deliver = all_ct();
      return true;
    }
    if (verdict.state == results::ResultSetVerdict::State::kWaiting) {
      waiting = verdict.reason;
      continue;
    }
    members.insert(verdict.members.begin(), verdict.members.end());
  }
  if (!waiting.empty()) {
    log::Debug("results", "scan " + job.scan_uid + ": " + waiting);
    return false;
  }
  job.findings = {};
  job.findings.report = "received";
  job.findings.findings = job.reports.at(report_uids.back()).findings;
  job.to_deliver = all_ct();
  job.to_deliver.insert(members.begin(), members.end());
  return true;
}

// Checks and stores one instance fetched alone (past its share of a batch's memory). Empty when
// it was refused (recorded in the job); an error ends the round (kNoSpace: the spool budget is
// exhausted, or the instance is larger than the room left).
Expected<std::optional<results::InstanceInfo>> ResultsFetcher::KeepInstance(Job& job, const std::string& series_uid,
                                                                            const std::string& sop_instance_uid,
                                                                            std::uint64_t cap, bool over_limit,
                                                                            Expected<std::vector<std::uint8_t>>& bytes) {
  const std::string label = "result instance " + sop_instance_uid + " of scan " + job.scan_uid;
  if (!bytes && over_limit && cap < results_.max_instance_bytes) {
    auto st = spool_.CheckResultsRoom(cap + 1, label);
    return MakeError(ErrorKind::kNoSpace,
                     (st ? label + " does not fit the " + std::to_string(cap) + " bytes the spool has left"
                         : st.error().message()) +
                         " (download stopped at that size)");
  }
  if (!bytes) return MakeError(bytes.error());
  // A bad instance from the cloud is refused: never stored, never delivered, and it does not
  // count towards a complete series.
  const auto refuse = [&](const std::string& why) -> Expected<std::optional<results::InstanceInfo>> {
    log::Error("results", "scan " + job.scan_uid + ": refused " + why);
    if (job.refused.empty()) job.first_refusal = why;
    job.refused.insert(sop_instance_uid);
    return std::optional<results::InstanceInfo>();
  };
  auto info = results::ValidateInstance(*bytes, job.study_uid, results::DefaultAllowedSopClasses());
  if (const std::string why = RefusalOf(info, sop_instance_uid, series_uid, job.mapping, *bytes); !why.empty()) {
    return refuse(why);
  }
  auto stored_path = spool_.StoreResult(job.scan_uid, sop_instance_uid, *bytes);
  if (!stored_path) return MakeError(stored_path.error());
  if (auto st = spool_.UpdateFields(job.scan_uid, [&](spool::ScanRecord& r) {
        for (const auto& existing : r.results) {
          if (existing.sop_instance_uid == sop_instance_uid) return;
        }
        r.results.push_back({sop_instance_uid, info->series_uid, info->sop_class_uid, false});
      });
      !st) {
    return MakeError(st.error());
  }
  return std::optional<results::InstanceInfo>(std::move(*info));
}


// The checked downloads of a batch: refusals recorded, the accepted ones stored as one durable
// batch and the scan record updated once. What was kept (stored and recorded) is appended to
// `kept` also when an error ends the round; instances past their share of memory go to `alone`.
Status ResultsFetcher::KeepBatch(Job& job, Batch& batch, std::vector<results::InstanceInfo>& kept,
                                 std::vector<std::string>& alone) {
  // In the order listed: refusals recorded, the accepted ones kept together, the first
  // download error returned once they are.
  Status first_error = Ok();
  std::vector<std::size_t> accepted;
  for (std::size_t i = 0; i < batch.downloads.size(); ++i) {
    const std::string& uid = batch.uids[i];
    Download& d = batch.downloads[i];
    if (!*d.bytes) {
      if (d.over_limit) {
        alone.push_back(uid);
      } else if (first_error) {
        first_error = MakeError(d.bytes->error());
      }
      continue;
    }
    // A bad instance from the cloud is refused: never stored, never delivered, and it does not
    // count towards a complete series.
    const std::string refusal = RefusalOf(*d.info, uid, batch.series_uid, job.mapping, **d.bytes);
    if (!refusal.empty()) {
      log::Error("results", "scan " + job.scan_uid + ": refused " + refusal);
      if (job.refused.empty()) job.first_refusal = refusal;
      job.refused.insert(uid);
      continue;
    }
    accepted.push_back(i);
  }

  // Files first, durably as one batch, then the record once: what the record lists is on disk.
  std::vector<std::size_t> stored;
  Status store_error = Ok();
  if (!accepted.empty()) {
    std::vector<spool::Spool::ResultToStore> items;
    for (std::size_t i : accepted) items.push_back({batch.uids[i], **batch.downloads[i].bytes});
    auto paths = spool_.StoreResults(job.scan_uid, items);
    if (paths) {
      stored = accepted;
    } else if (paths.error().kind() == ErrorKind::kNoSpace) {
      // Not all of them fit: one at a time, as many as there is room for.
      for (std::size_t i : accepted) {
        auto path = spool_.StoreResult(job.scan_uid, batch.uids[i], **batch.downloads[i].bytes);
        if (!path) {
          store_error = MakeError(path.error());
          break;
        }
        stored.push_back(i);
      }
    } else {
      store_error = MakeError(paths.error());
    }
  }
  if (!stored.empty()) {
    if (auto st = spool_.UpdateFields(job.scan_uid, [&](spool::ScanRecord& r) {
          for (std::size_t i : stored) {
            const results::InstanceInfo& info = **batch.downloads[i].info;
            const bool known = std::any_of(r.results.begin(), r.results.end(), [&](const spool::ResultRecord& e) {
              return e.sop_instance_uid == info.sop_instance_uid;
            });
            if (!known) r.results.push_back({info.sop_instance_uid, info.series_uid, info.sop_class_uid, false});
          }
        });
        !st) {
      return MakeError(st.error());
    }
    for (std::size_t i : stored) kept.push_back(std::move(**batch.downloads[i].info));
  }
  if (!store_error) return store_error;
  if (!first_error) return first_error;
  return Ok();
}

void ResultsFetcher::Deliver(std::shared_ptr<Job> job) {
  if (!console_.enabled) {
    Complete(*job, Ok());
    return;
  }
  boost::asio::post(worker_, [this, job] {
    Status status = Ok();
    auto record = spool_.Get(job->scan_uid);
    if (!record) {
      status = MakeError(record.error());
    } else {
      // Only what the set check chose: instances outside an accepted set stay in the spool.
      std::vector<std::filesystem::path> files;
      std::map<std::string, std::string> uid_by_file;
      for (const auto& r : record->results) {
        if (r.delivered || !job->to_deliver.count(r.sop_instance_uid)) continue;
        files.push_back(spool_.ResultPath(job->scan_uid, r.sop_instance_uid));
        uid_by_file[files.back().string()] = r.sop_instance_uid;
      }
      results::ConsoleNode node{console_.host, console_.port, console_.called_ae, console_.calling_ae, 30};
      auto report = results::DeliverToConsole(node, files);
      if (report) job->findings.timeline_unix_ms.delivered = UnixMsNow();
      if (!report) {
        status = MakeError(report.error());
      } else {
        std::set<std::string> delivered;
        for (const auto& path : report->delivered) delivered.insert(uid_by_file[path.string()]);
        job->delivered += static_cast<std::uint32_t>(delivered.size());
        // A class the console does not take will not be taken on a retry either: the operator
        // is told (outcome, log, findings) and the rest counts as delivered. A failure status
        // (e.g. out of resources) may pass: the scan stays undelivered and is retried.
        std::map<std::string, std::size_t> refused_by_class;
        std::string failed_status;
        for (const auto& refusal : report->refused) {
          const bool by_class = std::find(report->refused_sop_classes.begin(), report->refused_sop_classes.end(),
                                          refusal.sop_class_uid) != report->refused_sop_classes.end();
          if (by_class) {
            ++refused_by_class[refusal.sop_class_uid];
          } else if (failed_status.empty()) {
            failed_status = refusal.reason;
          }
        }
        for (const auto& [sop_class, count] : refused_by_class) {
          const std::string entry = results::SopClassName(sop_class) + ": " + std::to_string(count) +
                                    " instance(s) not accepted by the console";
          job->findings.console_refused.push_back(entry);
          log::Warn("results", "scan " + job->scan_uid + ": console " + console_.called_ae + " refused " + entry);
        }
        if (!refused_by_class.empty()) {
          std::string classes;
          for (const auto& entry : job->findings.console_refused) classes += (classes.empty() ? "" : "; ") + entry;
          job->console_refusal = "the console (" + console_.called_ae + ") did not take " + classes +
                                 "; the other " + std::to_string(delivered.size()) +
                                 " instance(s) were delivered; check the console's storage configuration";
        }
        // Again after the delivery: what the console refused, and when it acknowledged.
        if (Status st = results::WriteScanFindings(spool_.ResultPath(job->scan_uid, "x").parent_path(), job->findings);
            !st) {
          log::Warn("results", "scan " + job->scan_uid + ": findings not recorded for status: " + st.error().message());
        }
        const bool all_done = failed_status.empty();
        status = spool_.UpdateFields(job->scan_uid, [&](spool::ScanRecord& r) {
          for (auto& res : r.results) {
            if (delivered.count(res.sop_instance_uid)) res.delivered = true;
          }
          if (all_done) r.state = spool::ScanState::kDelivered;
        });
        if (status && !all_done) status = MakeError(ErrorKind::kProtocol, failed_status);
      }
    }
    boost::asio::post(io_, [job, status] { Complete(*job, status); });
  });
}

}  // namespace ctagent::core
