// The uploader: moves spooled chunks and manifests to the imaging center with tus, and
// journals progress in the spool so that any interruption resumes from the server's offset.
// Every request runs on the event loop (tus::AsyncClient on one AsyncHttp per link: libcurl's
// multi interface, no thread per upload): up to N uploads are created ahead (POST, URL
// journaled) while up to N others send their bytes (PATCH), N following the link's measured
// rate x round trip between cloud.parallel_uploads and cloud.max_uploads_in_flight
// (agent/core/admission.hpp). What may
// wait for a disk runs on two one-thread workers that post back: the journal's synced records
// (group-committed) and reading and checking a chunk or manifest before it is sent.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "agent/core/admission.hpp"
#include "agent/core/http_options.hpp"
#include "agent/core/link_provider.hpp"
#include "agent/spool/spool.hpp"
#include "base/retry.hpp"
#include "config/config.hpp"
#include "transport/http.hpp"
#include "transport/http_async.hpp"
#include "transport/tus.hpp"
#include "transport/tus_async.hpp"

namespace ctagent::core {

struct UploadCounters {
  std::atomic<std::uint64_t> bytes_sent{0};       // payload bytes the server confirmed
  std::atomic<std::uint32_t> uploads_done{0};
  std::atomic<std::uint32_t> retries{0};
  // PATCH body bytes handed to the connection, including requests that failed: the excess over
  // bytes_sent is what interruptions cost.
  std::atomic<std::uint64_t> body_bytes_sent{0};
  std::atomic<std::uint64_t> manifest_bytes_sent{0};  // the part of bytes_sent that were manifests
  // Retries by failure class (ToString(FailureClass) names: "connect", "stall", ...); changed and
  // read on the io_context's thread only.
  std::map<std::string, std::uint64_t> retries_by_class;
};

class Uploader {
 public:
  using Done = std::function<void(Status)>;

  // `links`: the link manager that picks the network link for each transfer attempt and paces
  // its bytes; nullptr: the system's routing, no pacing. It must outlive the Uploader.
  // `counters`: where to count (the daemon's, kept across its Uploaders for its metrics);
  // nullptr: this Uploader's own. It must outlive the Uploader.
  // Everything but Stop() and the destructor is called on the io_context's thread.
  Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
           RetryPolicy retry = {}, LinkProvider* links = nullptr, UploadCounters* counters = nullptr);
  ~Uploader();

  // Both run the upload's requests on the event loop and call `done` there, after retrying with
  // the backoff of the failure's class (RetryPolicy). Permanent failures (certificate rejected,
  // 401/403, 412, 413, corrupt spool file) are not retried: `done` gets an error naming the
  // problem and what to do; the data stays spooled.
  void UploadChunk(const std::string& scan_uid, std::uint32_t index, Done done);
  // The policy its retries follow (the agent passes RetryPolicy::Shared(), as to the results fetch).
  const RetryPolicy& retry_policy() const { return retry_; }
  void UploadManifest(const std::string& scan_uid, Done done);
  // Creates the manifest's upload ahead of time (POST, URL journaled, no byte sent), so that
  // UploadManifest, which must wait until every chunk is uploaded, starts with its PATCH and the
  // scan's last round trip is not a creation. Call once the manifest is in the spool. Optional:
  // a failure here is only logged; UploadManifest creates the upload then and reports errors.
  void PrepareManifest(const std::string& scan_uid);

  const UploadCounters& counters() const { return counters_; }
  // The bytes the server confirmed for this scan's uploads (chunks and manifest) since the last
  // call for it; the scan's entry is then forgotten (a scan's summary takes it once, at its end).
  std::uint64_t TakeScanBytes(const std::string& scan_uid);
  // Ends every request in flight and fails the jobs not started with kCancelled (their `done`
  // runs on the loop if it still runs); waits for the workers. On the loop's thread, or once
  // the loop no longer runs.
  void Stop();

  // Pausing (the daemon's `ctagent pause`): no request of an upload starts while paused. Jobs
  // asked for, retried, or waiting for their turn are held (one small record each, no bytes)
  // until SetPaused(false) starts them again; a PATCH in flight is cancelled at once (the server
  // keeps what it received, and the resumed job asks it for the offset, so nothing is lost and
  // nothing but that request's unconfirmed bytes is re-sent).
  void SetPaused(bool paused);
  bool paused() const { return paused_; }

  // How many uploads may send at once now (and be created ahead): the admission rule's answer
  // for the link in use, from its measured rate and round trip (agent/core/admission.hpp).
  std::uint32_t admitted() const { return admitted_; }
  // The most uploads that were in the byte stage at once so far.
  std::uint32_t most_sending() const { return most_sending_; }

 private:
  struct Job;
  using JobPtr = std::shared_ptr<Job>;
  void Start(JobPtr job);
  // Starts what the limits allow: creations while fewer than parallel_uploads jobs are created
  // or being created ahead of a transfer, transfers while fewer than parallel_uploads send.
  void Pump();
  void Finish(JobPtr job);
  // The creation stage: POST and the URL journaled, unless the upload exists already.
  void Prepare(JobPtr job);
  void Prepared(JobPtr job);
  // The byte stage: read and check the data (worker), ask the server's offset unless the upload
  // is fresh, create it again if it was forgotten, PATCH the rest, journal completion.
  void Transfer(JobPtr job);
  void TransferCheck(JobPtr job);  // on the read worker, then TransferRead on the loop
  void TransferRead(JobPtr job);
  void TransferCreated(JobPtr job);
  void TransferSend(JobPtr job);
  // Between the byte stage's steps: when paused or stopping, ends the job's attempt as cancelled
  // (a paused one is held for SetPaused(false)) and returns true; `job` is then moved from.
  bool EndedByPauseOrStop(JobPtr& job);
  void Transferred(JobPtr job);
  // Gives back the job's place in the byte stage (once; a no-op after): at the server's final
  // answer, before the completion is journaled, or when the attempt ends otherwise.
  void ReleaseSendingPlace(Job& job);
  bool NeedsCreation(const Job& job);  // no upload URL journaled yet, not complete
  // Before the first job: parallel_uploads OPTIONS requests open connections and learn the
  // server's capabilities while the first creations wait for them.
  void StartWarmUp();
  void LogVersionInferred() const;  // once, when a server without Tus-Version is first used
  // Calls `then` with the server's capabilities: known, or learned by a warm-up in flight
  // (waited for), or asked for now with OPTIONS through `client`.
  void WithCapabilities(transport::tus::AsyncClient& client,
                        std::function<void(Expected<transport::tus::ServerCapabilities>, transport::tus::Failure)> then);
  void DiscoveryEnded();
  // POST for a new upload, then its URL journaled (before any of its bytes is sent).
  void CreateUpload(JobPtr job, std::uint64_t length, const std::string& sha256,
                    std::function<void(Expected<spool::UploadState>)> then);
  // The link lease for this attempt and its client; false (job failed with kLinkDown) when no
  // link is usable.
  bool Lease(Job& job);
  void Report(Job& job);  // how the attempt went, to the link manager
  transport::tus::AsyncClient& ClientFor(const LinkLease& lease);
  // Bytes the server confirmed for `job`: counters (with manifests apart) and the scan's share.
  void CountConfirmed(const Job& job, std::uint64_t bytes);
  // A measurement of `link` changed: the admitted count follows (and more jobs start if it grew).
  AdmissionEstimator& EstimatorFor(const std::string& link);
  void UpdateAdmission(const std::string& link);
  // An upload Prepare() created and journaled whose bytes nobody has started sending: the
  // server holds 0 of them, so its PATCH needs no HEAD first. Removes the entry (true if it was
  // one, of `length` bytes).
  bool TakeFresh(const std::string& url, std::uint64_t length);
  // Sets an upload's new state in the scan's record durably, on the journal worker: changes
  // queued while a batch syncs go together in the next (one Spool::SetUploads, one synced
  // record, per scan). `then` (optional) runs on the loop once the change is durable. A change
  // without `then` (progress) replaces a queued one for the same upload, so the queue holds at
  // most one entry per upload.
  void Journal(const std::string& scan_uid, spool::Spool::UploadChange change, std::function<void(Status)> then);
  void CommitJournal();
  // Posts `fn` to the loop; it does not run once the Uploader is gone.
  void Post(std::function<void()> fn);

  boost::asio::io_context& io_;
  spool::Spool& spool_;
  config::CloudConfig cloud_;
  RetryPolicy retry_;
  LinkProvider* links_;
  // TLS sessions and DNS answers shared by every link's engine.
  std::shared_ptr<transport::HttpShare> share_;
  // Origins besides upload_url's that a tus Location may name (cloud.upload_origins_allowed).
  std::vector<transport::tus::Origin> allowed_origins_;
  // One engine and tus client per link name ("" without a link manager): a link's binding is an
  // engine option, so its connections stay on that link.
  struct LinkClient {
    std::unique_ptr<transport::AsyncHttp> http;
    std::unique_ptr<transport::tus::AsyncClient> tus;
  };
  std::map<std::string, LinkClient> clients_;
  std::optional<transport::tus::ServerCapabilities> capabilities_;
  std::uint32_t discoveries_in_flight_ = 0;
  std::vector<std::function<void()>> capability_waiters_;
  bool warm_up_started_ = false;
  std::map<std::string, std::uint64_t> fresh_uploads_;  // URL -> length; see TakeFresh
  // Scans whose manifest upload is being created, and the jobs waiting for that, so that
  // PrepareManifest and UploadManifest never both create one for the same scan.
  std::map<std::string, std::vector<JobPtr>> manifest_creations_;
  struct PendingChange {
    std::string scan_uid;
    spool::Spool::UploadChange change;
    std::function<void(Status)> then;
  };
  std::vector<PendingChange> journal_queue_;
  bool journal_committing_ = false;
  std::deque<JobPtr> to_create_;  // waiting for a creation slot
  std::deque<JobPtr> to_send_;    // created, waiting for a transfer slot
  std::uint32_t ahead_ = 0;       // jobs created or being created, not yet sending
  std::uint32_t sending_ = 0;     // jobs in the byte stage (holding a place: Job::sending_place)
  std::uint32_t most_sending_ = 0;
  // Both stages' bound (see admitted()); the estimator of each link measured so far, and the
  // link whose estimate sets it (the one most recently measured: one link is in use at a time).
  std::uint32_t admitted_;
  std::map<std::string, AdmissionEstimator> estimators_;
  std::set<JobPtr> in_flight_;    // jobs with a request or worker task under way
  UploadCounters own_counters_;
  UploadCounters& counters_;  // own_counters_ or the caller's
  std::map<std::string, std::uint64_t> scan_bytes_;  // confirmed bytes per scan not yet taken
  std::mt19937_64 rng_{std::random_device{}()};
  bool stopping_ = false;
  bool paused_ = false;
  std::vector<JobPtr> held_;  // jobs waiting for SetPaused(false)
  // Disk work off the loop: the journal's synced records, and reading and checking the data.
  boost::asio::thread_pool journal_worker_{1};
  boost::asio::thread_pool read_worker_{1};
  // Posted work holds a weak reference: it does nothing once the Uploader is gone.
  std::shared_ptr<char> alive_ = std::make_shared<char>();
};

}  // namespace ctagent::core
