// Results path: poll the imaging center's DICOMweb (QIDO-RS) for the scan's study with
// backoff, retrieve new instances (WADO-RS), validate each with DCMTK, store it durably in the
// spool, and deliver the set to the console by C-STORE. The requests run on the event loop
// (dicomweb::AsyncClient on AsyncHttp); the blocking steps run on one worker thread that posts
// back.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "agent/results/result_set.hpp"
#include "agent/results/results.hpp"
#include "agent/spool/spool.hpp"
#include "base/retry.hpp"
#include "config/config.hpp"
#include "transport/dicomweb.hpp"
#include "transport/http.hpp"
#include "transport/http_async.hpp"

namespace ctagent::core {

// What one FetchAndDeliver did for its scan.
struct ResultsOutcome {
  Status status = Ok();
  std::uint32_t instances_received = 0;   // distinct instances validated and stored in the spool by this call
  std::uint32_t instances_delivered = 0;  // distinct instances sent to the console by this call
  // Instances refused by this call: invalid, of another study, or not the instance QIDO listed.
  // Never stored or delivered; when any were, `status` is an error that names the first.
  std::uint32_t instances_refused = 0;
  // The AI result set as recorded in the scan's findings.json (docs/results.md): whether an SR
  // came and was accepted, its category, lesion count and involvement, and what the console
  // refused. A refused set or a console refusal also makes `status` an error that says so.
  results::ScanFindings findings;
};

// One fetcher serves any number of scans at once on one event loop: each FetchAndDeliver is an
// independent job (its own backoff and deadline). The QIDO-RS and WADO-RS requests of all jobs
// run on the loop through one AsyncHttp engine; the blocking steps (reading the privacy mapping
// and stored results, the DCMTK check of each download, durable storage, the record update and
// C-STORE) take turns on one worker thread, which posts each result back to the loop. One batch
// of downloads (of any job) is in flight at a time, kParallelFetches requests at once.
class ResultsFetcher {
 public:
  using Done = std::function<void(const ResultsOutcome&)>;

  // Fails (kInvalidInput) when the DICOMweb password file cannot be read. `retry`: how failed
  // polls are retried (the agent's one policy, as for uploads; tests scale its delays).
  static Expected<std::unique_ptr<ResultsFetcher>> Create(boost::asio::io_context& io, spool::Spool& spool,
                                                          const config::AgentConfig& config,
                                                          RetryPolicy retry = RetryPolicy::Shared());
  ~ResultsFetcher();

  // Polls until the result set is complete (or results.timeout_s passed), then delivers it to
  // the console if enabled. Complete: the SR has arrived and every instance its evidence lists
  // is stored and checked (result_set.hpp); the CT series is then delivered with the SR, SEG and
  // report. A result set whose references are foreign or broken is refused whole: only the CT
  // series (checked on its own) is delivered. A center that sends no SR: once a CT series is
  // complete and no SR came within the report wait (SetReportWait), the CT series is delivered
  // alone and the findings say "none". `done` runs on the io_context. Every DICOMweb request of the job
  // ends by the job's deadline (results.timeout_s from now) and when Stop() is called, so a
  // server that trickles its answers cannot hold the scan longer. Each downloaded instance must
  // be the one its QIDO-RS entry names (SOP instance, series and study UIDs); an instance listed
  // twice counts once; results count against the spool budget (Spool::ResultsRoom).
  // A set not complete yet is asked for again at the poll interval (results.poll_interval_ms
  // doubling to results.poll_max_interval_ms): that is waiting, not a failure. A failed poll is
  // retried by the error's class (RetryPolicy: backoff with jitter, at most max_attempts failed
  // polls in a row); a permanent class (a rejected certificate, 401/403, a missing endpoint, a
  // local error) ends the job at once with an error that says what to do.
  // Call on the io_context's thread (or before it runs).
  void FetchAndDeliver(const std::string& scan_uid, const std::string& study_uid, Done done);

  // No new step starts; requests in flight end with kCancelled (at once when called on the loop's
  // thread, else at their next progress check, within about a second of the loop running) and
  // the worker's step under way is waited for. A job whose request ended so completes with
  // kCancelled while the loop runs; one waiting for the worker does not complete. Destroy the
  // fetcher on the loop's thread or once the loop no longer runs.
  void Stop();

  // How long to wait for the SR once a CT series is complete (default kDefaultReportWait).
  // Call before FetchAndDeliver.
  void SetReportWait(std::chrono::milliseconds wait) { report_wait_ = wait; }
  static constexpr std::chrono::milliseconds kDefaultReportWait{20000};

  // Where to count failed polls that are retried, by failure class (ToString(FailureClass), the
  // names the uploader counts by): the daemon's metrics. Changed on the io_context's thread; must
  // outlive the fetcher. Call before FetchAndDeliver.
  void SetRetryCounts(std::map<std::string, std::uint64_t>* counts) { retry_counts_ = counts; }

  const RetryPolicy& retry_policy() const { return retry_; }

 private:
  struct Job;
  struct Round;
  struct Download;
  struct Batch;
  ResultsFetcher(boost::asio::io_context& io, spool::Spool& spool, const config::AgentConfig& config,
                 transport::HttpOptions http_options, RetryPolicy retry);
  static void Complete(Job& job, Status status);  // on the io_context

  // On the loop: the steps of one round, each starting the next from its completion.
  void Poll(std::shared_ptr<Job> job);  // starts a round: QIDO-RS of the study's series
  void NextSeries(std::shared_ptr<Job> job, std::shared_ptr<Round> round);  // QIDO-RS of its instances
  void NextBatch(std::shared_ptr<Job> job, std::shared_ptr<Round> round);   // its new instances, a batch at a time
  void StartDownload(std::shared_ptr<Job> job, std::shared_ptr<Round> round, std::shared_ptr<Batch> batch);
  void DownloadChecked(std::shared_ptr<Job> job, std::shared_ptr<Round> round, std::shared_ptr<Batch> batch);
  // Instances past their share of a batch's memory, one at a time once the batch's bytes are freed.
  void FetchAlone(std::shared_ptr<Job> job, std::shared_ptr<Round> round, std::string series_uid,
                  std::shared_ptr<std::vector<std::string>> alone, std::size_t k);
  // The round's outcome: delivery, the job's end, or the next round after the backoff.
  void RoundDone(std::shared_ptr<Job> job, Expected<bool> complete);
  void Deliver(std::shared_ptr<Job> job);
  static void Kept(Job& job, Round& round, const results::InstanceInfo& info);
  // One batch of downloads in flight at a time over all jobs (memory: max_instance_bytes); the
  // others wait in order, at most one per job.
  void AcquireBatchSlot(std::function<void()> start);
  void ReleaseBatchSlot();

  // On the worker (blocking):
  Status ReadMappingOnce(Job& job);
  Status StartRound(Job& job, Round& round);  // what is stored already
  // What of a series' listed instances is stored (and how many images it expects) and what is new.
  Status SortInstances(Job& job, Round& round, const std::vector<transport::dicomweb::InstanceRef>& instances);
  Status BatchCap(Job& job, Batch& batch);  // refuses a batch when the spool has no room
  // The checked downloads of a batch: refusals recorded, the accepted ones stored as one durable
  // batch and the record updated once. What was kept is appended to `kept` also when an error
  // ends the round; downloads past their cap go to `alone`.
  Status KeepBatch(Job& job, Batch& batch, std::vector<results::InstanceInfo>& kept, std::vector<std::string>& alone);
  // Checks and stores one instance fetched alone. Empty when it was refused (recorded in the
  // job); an error ends the round (kNoSpace: the spool budget is exhausted).
  Expected<std::optional<results::InstanceInfo>> KeepInstance(Job& job, const std::string& series_uid,
                                                              const std::string& sop_instance_uid, std::uint64_t cap,
                                                              bool over_limit,
                                                              Expected<std::vector<std::uint8_t>>& bytes);
  // True when the result set (or, without an SR, a CT series) is complete and stored locally;
  // the job then knows what to deliver.
  Expected<bool> EndRound(Job& job, const Round& round);
  // Decides from what is stored whether the set is complete (see FetchAndDeliver).
  Expected<bool> EvaluateSet(Job& job, const spool::ScanRecord& record, const std::set<std::string>& pending,
                             bool ct_complete);

 public:
  // Downloads in flight at once, and instances kept per durable batch (one sync of their files
  // and folder, one record update). Memory: the one batch in flight holds at most
  // max_instance_bytes (each of its downloads is capped at its share), as one download at a time
  // did.
  static constexpr std::size_t kParallelFetches = 4;
  static constexpr std::size_t kBatchInstances = 16;

 private:

  boost::asio::io_context& io_;
  spool::Spool& spool_;
  config::ResultsConfig results_;
  config::ConsoleConfig console_;
  std::string dicomweb_url_;
  transport::HttpOptions http_options_;
  std::unique_ptr<transport::AsyncHttp> http_;  // every job's requests, on the loop
  boost::asio::thread_pool worker_{1};
  bool batch_running_ = false;  // on the loop
  std::deque<std::function<void()>> batch_waiting_;
  std::atomic<bool> stopping_{false};
  std::chrono::milliseconds report_wait_ = kDefaultReportWait;
  std::map<std::string, std::uint64_t>* retry_counts_ = nullptr;
  RetryPolicy retry_;
  std::mt19937_64 rng_{std::random_device{}()};  // the retries' jitter; used on the io_context's thread
};

}  // namespace ctagent::core
