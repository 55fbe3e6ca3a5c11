// The uploader: moves spooled chunks and manifests to the imaging center with tus, and
// journals progress in the spool so that any interruption resumes from the server's offset.
// Two bounded pools of threads (one HTTPS connection each): creators make the next uploads
// (POST, URL journaled) while transfer threads send the bytes of earlier ones (PATCH).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "agent/core/http_options.hpp"
#include "agent/core/link_provider.hpp"
#include "agent/core/retry.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace ctagent::core {

struct UploadCounters {
  std::atomic<std::uint64_t> bytes_sent{0};       // payload bytes the server confirmed
  std::atomic<std::uint32_t> uploads_done{0};
  std::atomic<std::uint32_t> retries{0};
  // PATCH body bytes handed to the connection, including requests that failed: the excess over
  // bytes_sent is what interruptions cost.
  std::atomic<std::uint64_t> body_bytes_sent{0};
  std::atomic<std::uint64_t> manifest_bytes_sent{0};  // the part of bytes_sent that were manifests
  // Retries by failure class (transport::ToString names: "connect", "stall", ...); changed and
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
  Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
           RetryPolicy retry = {}, LinkProvider* links = nullptr, UploadCounters* counters = nullptr);
  ~Uploader();

  // Both run the blocking transfer on a transfer thread and call `done` on the io_context,
  // after retrying with the backoff of the failure's class (RetryPolicy). Permanent failures
  // (certificate rejected, 401/403, 412, 413, corrupt spool file) are not retried: `done` gets
  // an error naming the problem and what to do; the data stays spooled.
  void UploadChunk(const std::string& scan_uid, std::uint32_t index, Done done);
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
  void Stop();

  // Pausing (the daemon's `ctagent pause`; on the io_context's thread only): no request of an
  // upload starts while paused. Jobs asked for, retried, or waiting for a thread are held (one
  // small record each, no bytes) until SetPaused(false) starts them again; a PATCH in flight is
  // cancelled at its next block or progress tick (the server keeps what it received, and the
  // resumed job asks it for the offset, so nothing is lost and nothing but that block is re-sent).
  void SetPaused(bool paused);
  bool paused() const { return paused_; }

 private:
  struct Job;
  void Start(std::shared_ptr<Job> job);
  void Finish(std::shared_ptr<Job> job);
  // From a pool thread that found the uploader paused: hands the job back to the loop, where
  // Start() holds it (or starts it again if a resume came in between).
  void Requeue(std::shared_ptr<Job> job);
  // Blocks a creator until fewer than parallel_uploads prepared jobs wait for a transfer thread;
  // false when stopping.
  bool WaitForRoomAhead();
  void LeaveAhead();
  // One attempt on a leased link: the creation stage (Prepare) or the byte stage (Transfer).
  void Attempt(Job& job, bool prepare);
  bool NeedsCreation(const Job& job);  // no upload URL journaled yet, not complete
  // Before the first job's transfer: each transfer thread opens its connection with an OPTIONS
  // request while the creators POST, so neither the TLS handshake nor discovery is a round trip
  // in front of the first PATCH.
  void WarmUp();
  void StartWarmUp();  // posts the warm-ups, once per Uploader
  void LogVersionInferred() const;  // once, when a server without Tus-Version is first used
  Status Prepare(Job& job, transport::HttpClient& http);
  Status Transfer(Job& job, transport::HttpClient& http, const std::function<bool(std::size_t)>& before_send);
  // POST for a new upload, then its URL journaled (before any of its bytes is sent).
  Expected<spool::UploadState> CreateUpload(Job& job, transport::tus::Client& tus, std::uint64_t length,
                                            const std::string& sha256);
  Status JournalUpload(const Job& job, const spool::UploadState& state);
  // Bytes the server confirmed for `job`: counters (with manifests apart) and the scan's share.
  void CountConfirmed(const Job& job, std::uint64_t bytes);
  // The server's capabilities: known, or learned by a warm-up in flight (waited for), or asked
  // for now with OPTIONS.
  Expected<transport::tus::ServerCapabilities> Capabilities(transport::tus::Client& tus);
  // An upload Prepare() created and journaled whose bytes nobody has started sending: the
  // server holds 0 of them, so its PATCH needs no HEAD first. Removes the entry (true if it was
  // one, of `length` bytes).
  bool TakeFresh(const std::string& url, std::uint64_t length);
  std::unique_ptr<transport::HttpClient> TakeClient(const LinkLease& lease);
  // Sets an upload's new state in the scan's record durably. Concurrent calls from transfer
  // threads are group-committed: one Spool::SetUploads (one synced journal record) per scan for
  // all changes queued while the previous batch was syncing. Returns once this change is durable.
  Status Journal(const std::string& scan_uid, spool::Spool::UploadChange change);
  void ReturnClient(const std::string& link_name, std::unique_ptr<transport::HttpClient> client);

  boost::asio::io_context& io_;
  spool::Spool& spool_;
  config::CloudConfig cloud_;
  RetryPolicy retry_;
  LinkProvider* links_;
  // TLS sessions and DNS answers shared by every transfer client.
  std::shared_ptr<transport::HttpShare> share_;
  // Origins besides upload_url's that a tus Location may name (cloud.upload_origins_allowed).
  std::vector<transport::tus::Origin> allowed_origins_;
  std::mutex clients_mutex_;
  // Idle clients per link name ("" without a link manager): a client is bound to its link.
  std::map<std::string, std::vector<std::unique_ptr<transport::HttpClient>>> idle_clients_;
  std::optional<transport::tus::ServerCapabilities> capabilities_;  // guarded by clients_mutex_
  std::uint32_t discoveries_in_flight_ = 0;                         // guarded by clients_mutex_
  std::condition_variable capabilities_changed_;
  bool warm_up_started_ = false;  // guarded by clients_mutex_
  std::mutex fresh_mutex_;
  std::map<std::string, std::uint64_t> fresh_uploads_;  // URL -> length; see TakeFresh
  // Held while a manifest's upload is created, so that PrepareManifest and UploadManifest never
  // both create one for the same scan.
  std::mutex manifest_creation_mutex_;
  struct PendingChange {
    std::uint64_t ticket = 0;
    std::string scan_uid;
    spool::Spool::UploadChange change;
  };
  std::mutex journal_queue_mutex_;  // guards the three below
  std::vector<PendingChange> journal_queue_;
  std::uint64_t journal_next_ticket_ = 0;
  std::map<std::uint64_t, Status> journal_results_;  // of changes another thread committed
  std::mutex journal_commit_mutex_;  // held by the thread committing a batch
  std::mutex ahead_mutex_;
  std::condition_variable ahead_changed_;
  std::uint32_t ahead_ = 0;  // jobs prepared or being prepared, not yet on a transfer thread
  boost::asio::thread_pool creators_;   // POST + journal (parallel_uploads threads)
  boost::asio::thread_pool transfers_;  // PATCH (parallel_uploads threads)
  UploadCounters own_counters_;
  UploadCounters& counters_;  // own_counters_ or the caller's
  // Confirmed bytes per scan not yet taken by TakeScanBytes (transfer threads add to it).
  std::mutex scan_bytes_mutex_;
  std::map<std::string, std::uint64_t> scan_bytes_;
  std::mt19937_64 rng_{std::random_device{}()};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> paused_{false};         // written on the loop; read by the pools' threads
  std::vector<std::shared_ptr<Job>> held_;  // loop thread only: jobs waiting for SetPaused(false)
};

}  // namespace ctagent::core
