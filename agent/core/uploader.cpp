#include "agent/core/uploader.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <optional>
#include <utility>

#include "base/allocator.hpp"
#include "base/log.hpp"
#include "base/sha256.hpp"
#include "base/url.hpp"
#include "transport/tus.hpp"
#include "transport/tus_async.hpp"

namespace ctagent::core {
namespace {

using transport::FailureClass;

constexpr std::uint32_t kUploadBufferBytes = 256u << 10;

// Failures that say something about the network link (reported against it to the link manager);
// HTTP answers and local problems say the link works.
bool IsLinkFailure(FailureClass failure) {
  switch (failure) {
    case FailureClass::kDns:
    case FailureClass::kConnect:
    case FailureClass::kTlsHandshake:
    case FailureClass::kStall:
    case FailureClass::kTimeout:
    case FailureClass::kConnectionLost:
    case FailureClass::kLinkDown:
      return true;
    default:
      return false;
  }
}

// Where an upload stands in the spool's record: its tus state and, for a chunk, the SHA-256 and
// size recorded when it was written (a manifest's come from its bytes).
struct SpooledUpload {
  spool::UploadState state;
  std::string sha256;
  std::uint64_t length = 0;
};

Expected<SpooledUpload> SpooledUploadOf(spool::Spool& spool, const std::string& scan_uid, bool manifest,
                                        std::uint32_t index) {
  // Only this upload's part of the record: a copy of the whole record grows with the scan, and
  // every attempt of every upload asks (docs/configuration.md, "Memory").
  SpooledUpload upload;
  if (manifest) {
    auto state = spool.GetManifestUpload(scan_uid);
    if (!state) return MakeError(state.error());
    upload.state = std::move(*state);
    return upload;
  }
  auto chunk = spool.GetChunk(scan_uid, index);
  if (!chunk) {
    // A chunk the record does not list has no upload yet (the caller then finds no file).
    if (chunk.error().kind() == ErrorKind::kNotFound && spool.GetManifestUpload(scan_uid)) return upload;
    return MakeError(chunk.error());
  }
  upload.state = std::move(chunk->upload);
  upload.sha256 = chunk->chunk.sha256.Hex();
  upload.length = chunk->chunk.compressed_bytes;  // the chunk file's size
  return upload;
}

}  // namespace

struct Uploader::Job {
  std::string scan_uid;
  bool manifest = false;
  std::uint32_t index = 0;
  bool prepare_only = false;  // PrepareManifest: the creation stage alone, no `done`
  std::uint32_t attempt = 0;
  FailureClass failure = FailureClass::kNone;  // class of the last attempt's error
  // What happened, as the tus client names it ("http-412" only for a real 412, "tus-version",
  // "foreign-location"...); empty: the class's own name.
  std::string label;
  Status last_status = Ok();
  Done done;
  // PATCH body bytes sent over every attempt, and attempts that sent bytes: what resumes cost.
  std::uint64_t body_bytes_sent = 0;
  std::uint32_t sending_attempts = 0;
  // The last attempt was cut short by a pause (not a failure): it is held, not retried.
  bool paused_out = false;
  // Holds one of the byte stage's admitted places (counted in sending_).
  bool sending_place = false;

  // This attempt's lease (leased: Report() is owed) and what its stages carry between requests.
  LinkLease lease;
  bool leased = false;
  transport::tus::AsyncClient* client = nullptr;
  // What is sent: a chunk from its spool file, checked just before (`file`), or the manifest
  // from memory (`bytes`); `size` is its length either way.
  std::optional<transport::FileBody> file;
  std::shared_ptr<const std::vector<std::uint8_t>> bytes;
  std::uint64_t size = 0;
  spool::UploadState state;
  std::string sha256;
  std::uint64_t offset = 0;
  std::uint64_t start_offset = 0;
  std::uint64_t last_journaled = 0;
  std::uint64_t attempt_body_bytes = 0;
  std::shared_ptr<transport::tus::AsyncUpload> upload;  // the PATCHes in flight

  std::string Name() const {
    return manifest ? "manifest of scan " + scan_uid : "chunk " + std::to_string(index) + " of scan " + scan_uid;
  }
  // Ends this attempt with the tus client's error (its class) and the client's label for it.
  void Fail(const Error& error, const transport::tus::Failure& why) {
    failure = error.failure() == FailureClass::kNone ? FailureClass::kProtocol : error.failure();
    label = why.label;
    last_status = MakeError(error);
  }
  void FailLocal(const Error& error) {
    failure = FailureClass::kLocal;
    label.clear();
    last_status = MakeError(error);
  }
};

Uploader::Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
                   RetryPolicy retry, LinkProvider* links, UploadCounters* counters)
    : io_(io),
      spool_(spool),
      cloud_(cloud),
      retry_(std::move(retry)),
      links_(links),
      share_(std::make_shared<transport::HttpShare>()),
      allowed_origins_(transport::tus::ParseOriginList(cloud.upload_origins_allowed)),
      admitted_(cloud.parallel_uploads),
      counters_(counters != nullptr ? *counters : own_counters_) {}

Uploader::~Uploader() {
  Stop();
  alive_.reset();
  clients_.clear();  // ends what is left in flight without completions
}

void Uploader::Post(std::function<void()> fn) {
  boost::asio::post(io_, [weak = std::weak_ptr<char>(alive_), fn = std::move(fn)] {
    if (weak.lock()) fn();
  });
}

void Uploader::Stop() {
  if (!stopping_) {
    stopping_ = true;
    // Jobs not started: cancelled now. Jobs in flight: their requests end with kCancelled and
    // their completions finish them (the loop may run no more: then nothing is called).
    std::vector<JobPtr> waiting(to_create_.begin(), to_create_.end());
    waiting.insert(waiting.end(), to_send_.begin(), to_send_.end());
    to_create_.clear();
    to_send_.clear();
    for (auto& job : waiting) {
      job->failure = FailureClass::kCancelled;
      job->last_status = MakeError(ErrorKind::kCancelled, "agent is stopping");
      Finish(job);
    }
    for (const auto& job : std::vector<JobPtr>(in_flight_.begin(), in_flight_.end())) {
      if (job->upload) job->upload->Cancel();
    }
    for (auto& [name, client] : clients_) client.http->CancelAll();
  }
  journal_worker_.join();
  read_worker_.join();
}

void Uploader::UploadChunk(const std::string& scan_uid, std::uint32_t index, Done done) {
  auto job = std::make_shared<Job>();
  job->scan_uid = scan_uid;
  job->index = index;
  job->done = std::move(done);
  Start(std::move(job));
}

void Uploader::UploadManifest(const std::string& scan_uid, Done done) {
  auto job = std::make_shared<Job>();
  job->scan_uid = scan_uid;
  job->manifest = true;
  job->done = std::move(done);
  Start(std::move(job));
}

void Uploader::SetPaused(bool paused) {
  paused_ = paused;
  if (paused) {
    // Not started yet: held. Sending: cancelled (the completion holds them, see Finish).
    // Creations in flight finish their POST and journal, then are held (Prepared).
    for (auto& job : to_send_) {
      --ahead_;
      held_.push_back(std::move(job));
    }
    for (auto& job : to_create_) held_.push_back(std::move(job));
    to_send_.clear();
    to_create_.clear();
    for (const auto& job : std::vector<JobPtr>(in_flight_.begin(), in_flight_.end())) {
      if (job->upload) {
        job->paused_out = true;
        job->upload->Cancel();
      }
    }
    return;
  }
  std::vector<JobPtr> held;
  held.swap(held_);
  for (auto& job : held) Start(std::move(job));  // in the order they were held
}

void Uploader::PrepareManifest(const std::string& scan_uid) {
  // Optional (UploadManifest creates the upload when it is not there): skipped while paused.
  if (paused_ || stopping_) return;
  auto job = std::make_shared<Job>();
  job->scan_uid = scan_uid;
  job->manifest = true;
  job->prepare_only = true;
  // Its creation waits for discovery like every other: start the warm-ups that do it.
  StartWarmUp();
  // Not counted against the creations ahead: it has no byte stage.
  Prepare(std::move(job));
}

void Uploader::Start(JobPtr job) {
  // Paused: the job waits in held_ for SetPaused(false).
  if (paused_) {
    held_.push_back(std::move(job));
    return;
  }
  if (stopping_) {
    job->failure = FailureClass::kCancelled;
    job->last_status = MakeError(ErrorKind::kCancelled, "agent is stopping");
    Finish(job);
    return;
  }
  StartWarmUp();
  to_create_.push_back(std::move(job));
  Pump();
}

void Uploader::Pump() {
  // Two stages, so the creation round trip of the next uploads overlaps the PATCHes in flight
  // instead of leaving a connection idle for it; each bounded by the admitted count.
  // Each round takes one job off a queue, so the loops end.
  while (!paused_ && !stopping_ && sending_ < admitted_ && !to_send_.empty()) {
    JobPtr job = std::move(to_send_.front());
    to_send_.pop_front();
    --ahead_;
    ++sending_;
    job->sending_place = true;
    most_sending_ = std::max(most_sending_, sending_);
    Transfer(std::move(job));
  }
  while (!paused_ && !stopping_ && ahead_ < admitted_ && !to_create_.empty()) {
    JobPtr job = std::move(to_create_.front());
    to_create_.pop_front();
    ++ahead_;
    Prepare(std::move(job));
  }
}

void Uploader::Finish(JobPtr job) {
  // Posted: `done` never runs inside the call that ended the job (SetPaused, Stop, Start).
  Post([this, job] {
    const Status status = job->last_status;
    if (status) {
      job->done(status);
      return;
    }
    if (job->paused_out && !stopping_) {
      // Cut short by a pause, not failed: held until the resume (or started again at once if
      // the resume already came); the server's offset says where it goes on.
      job->paused_out = false;
      log::Info("upload", job->Name() + ": paused in flight; it continues from the server's offset on resume");
      Start(job);
      return;
    }
    const ClassRetry rule = retry_.For(job->failure);
    const std::string label = job->label.empty() ? std::string(transport::ToString(job->failure)) : job->label;
    if (rule.permanent || stopping_ || job->attempt + 1 >= rule.max_attempts) {
      const std::string advice = PermanentAdvice(job->failure);
      const std::string why =
          rule.permanent ? (advice.empty() ? std::string("not retried") : "not retried: " + advice)
                         : "gave up after " + std::to_string(job->attempt + 1) + " attempts";
      const Error error = status.error().WithContext(job->Name() + " [" + label + ", " +
                                                     why + "; the data stays spooled and resumes on the next run]");
      log::Error("upload", error.message());
      job->done(MakeError(error));
      return;
    }
    const auto delay = retry_.Delay(job->failure, job->attempt, rng_);
    ++job->attempt;
    ++counters_.retries;
    ++counters_.retries_by_class[transport::ToString(job->failure)];
    log::Warn("upload", job->Name() + ": " + status.error().message() + " [" + label + "]; retry " +
                            std::to_string(job->attempt) + " in " + std::to_string(delay.count()) + " ms");
    if (delay.count() <= 0) {  // posted, not an expired timer (see AsyncHttp's curl timer)
      Post([this, job] { Start(job); });
      return;
    }
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, delay);
    timer->async_wait([this, weak = std::weak_ptr<char>(alive_), job, timer](const boost::system::error_code&) {
      if (weak.lock()) Start(job);
    });
  });
}

void Uploader::CountConfirmed(const Job& job, std::uint64_t bytes) {
  if (bytes == 0) return;
  counters_.bytes_sent += bytes;
  if (job.manifest) counters_.manifest_bytes_sent += bytes;
  scan_bytes_[job.scan_uid] += bytes;
  EstimatorFor(job.lease.link_name).NoteConfirmed(bytes, AdmissionEstimator::Clock::now());
  UpdateAdmission(job.lease.link_name);
}

AdmissionEstimator& Uploader::EstimatorFor(const std::string& link) { return estimators_[link]; }

void Uploader::UpdateAdmission(const std::string& link) {
  const std::uint32_t before = admitted_;
  const AdmissionEstimator& estimator = EstimatorFor(link);
  admitted_ = estimator.Admit(cloud_.parallel_uploads, cloud_.max_uploads_in_flight);
  if (admitted_ == before) return;
  log::Debug("upload", "uploads admitted at once: " + std::to_string(admitted_) + " (link rate " +
                           std::to_string(static_cast<std::uint64_t>(estimator.rate_bytes_per_s() * 8 / 1e6)) +
                           " Mbit/s, round trip " +
                           std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(estimator.round_trip())
                                              .count()) + " us)");
  // Posted: this runs inside completions, which end their own job first.
  if (admitted_ > before) Post([this] { Pump(); });
}

std::uint64_t Uploader::TakeScanBytes(const std::string& scan_uid) {
  const auto it = scan_bytes_.find(scan_uid);
  if (it == scan_bytes_.end()) return 0;
  const std::uint64_t bytes = it->second;
  scan_bytes_.erase(it);
  return bytes;
}

void Uploader::LogVersionInferred() const {
  log::Info("upload", "the tus server at " + RedactUrl(cloud_.upload_url) +
                          " sends no Tus-Version; using tus 1.0.0, which its Tus-Resumable names");
}

bool Uploader::TakeFresh(const std::string& url, std::uint64_t length) {
  const auto it = fresh_uploads_.find(url);
  if (it == fresh_uploads_.end()) return false;
  const bool fresh = it->second == length;
  fresh_uploads_.erase(it);
  return fresh;
}

transport::tus::AsyncClient& Uploader::ClientFor(const LinkLease& lease) {
  LinkClient& client = clients_[lease.link_name];
  if (!client.http) {
    auto options = MakeHttpOptions(cloud_);
    options.interface_name = lease.interface_name;
    options.source_address = lease.source_address;
    options.share = share_;
    // libcurl's buffer for a PATCH body, one per request sending (a ~1 MiB chunk filled 2 MiB
    // buffers to its length): 256 KiB refills are as cheap per byte and keep it off the bound
    // of docs/configuration.md, "Memory".
    options.upload_buffer_bytes = kUploadBufferBytes;
    // A connection per request in flight: both stages at the most admitted, and a manifest's.
    transport::AsyncHttpLimits limits;
    const std::uint32_t most = std::max(cloud_.parallel_uploads, cloud_.max_uploads_in_flight);
    limits.max_host_connections = std::max(limits.max_host_connections, 2 * most + 1);
    limits.max_cached_connections = std::max(limits.max_cached_connections, 2 * most + 1);
    client.http = std::make_unique<transport::AsyncHttp>(io_, std::move(options), limits);
    client.tus = std::make_unique<transport::tus::AsyncClient>(io_, *client.http, cloud_.upload_url);
    client.tus->protocol().SetAllowedOrigins(allowed_origins_);
  }
  if (capabilities_) client.tus->protocol().SetCapabilities(*capabilities_);
  return *client.tus;
}

bool Uploader::Lease(Job& job) {
  job.lease = LinkLease{};
  job.leased = false;
  if (links_ != nullptr) {
    auto acquired = links_->Acquire();
    if (!acquired) {
      job.failure = FailureClass::kLinkDown;
      job.label.clear();
      job.last_status = MakeError(acquired.error());
      return false;
    }
    job.lease = std::move(*acquired);
    job.leased = true;
  }
  job.client = &ClientFor(job.lease);
  job.failure = FailureClass::kNone;
  job.label.clear();
  job.last_status = Ok();
  return true;
}

void Uploader::Report(Job& job) {
  if (!job.leased || links_ == nullptr) return;
  job.leased = false;
  // HTTP answers and local problems say the link works; only network failures count against it.
  links_->Report(job.lease.link_name, job.last_status || !IsLinkFailure(job.failure) ? Ok() : job.last_status);
}

void Uploader::StartWarmUp() {
  if (warm_up_started_) return;
  warm_up_started_ = true;
  // Paused: no OPTIONS either; the first job after the resume asks the server itself.
  if (paused_ || stopping_) return;
  for (std::uint32_t i = 0; i < cloud_.parallel_uploads; ++i) {
    LinkLease lease;
    std::string link_name;
    if (links_ != nullptr) {
      auto acquired = links_->Acquire();
      if (!acquired) continue;  // the jobs' own attempts report it
      lease = std::move(*acquired);
      link_name = lease.link_name;
    }
    ++discoveries_in_flight_;
    ClientFor(lease).Discover([this, weak = std::weak_ptr<char>(alive_), link_name](
                                  Expected<transport::tus::ServerCapabilities> answer, transport::tus::Failure failure) {
      if (!weak.lock()) return;  // completions run on the loop; the Uploader may be gone
      if (links_ != nullptr) {
        links_->Report(link_name, answer || !IsLinkFailure(failure.failure) ? Ok() : Status(MakeError(answer.error())));
      }
      if (answer && !capabilities_) {
        if (answer->version_inferred) LogVersionInferred();
        capabilities_ = *answer;
      }
      --discoveries_in_flight_;
      DiscoveryEnded();
    });
  }
}

void Uploader::DiscoveryEnded() {
  if (!capabilities_ && discoveries_in_flight_ > 0) return;
  std::vector<std::function<void()>> waiters;
  waiters.swap(capability_waiters_);
  for (auto& waiter : waiters) waiter();
}

void Uploader::WithCapabilities(
    transport::tus::AsyncClient& client,
    std::function<void(Expected<transport::tus::ServerCapabilities>, transport::tus::Failure)> then) {
  if (capabilities_) {
    client.protocol().SetCapabilities(*capabilities_);
    then(*capabilities_, {});
    return;
  }
  if (discoveries_in_flight_ > 0) {
    // Bounded: every warm-up ends (each request has connect and stall timeouts) and counts down.
    capability_waiters_.push_back([this, &client, then = std::move(then)]() mutable {
      WithCapabilities(client, std::move(then));
    });
    return;
  }
  // No upload is created, and no byte sent, before discovery said the server speaks tus 1.0.0:
  // a failure here ends the attempt (the tus client says what the answer really was).
  ++discoveries_in_flight_;
  client.Discover([this, weak = std::weak_ptr<char>(alive_), then = std::move(then)](
                      Expected<transport::tus::ServerCapabilities> answer, transport::tus::Failure failure) {
    if (!weak.lock()) return;
    --discoveries_in_flight_;
    if (answer && !capabilities_) {
      if (answer->version_inferred) LogVersionInferred();
      capabilities_ = *answer;
    }
    then(std::move(answer), std::move(failure));
    DiscoveryEnded();
  });
}

void Uploader::Journal(const std::string& scan_uid, spool::Spool::UploadChange change,
                       std::function<void(Status)> then) {
  if (stopping_) {  // the worker is joined: nothing more is journaled
    if (then) Post([then] { then(MakeError(ErrorKind::kCancelled, "agent is stopping")); });
    return;
  }
  if (!then) {
    // Progress only: a queued progress record of the same upload is superseded by this one.
    for (auto& pending : journal_queue_) {
      if (!pending.then && pending.scan_uid == scan_uid && pending.change.chunk_index == change.chunk_index) {
        pending.change = std::move(change);
        return;
      }
    }
  }
  journal_queue_.push_back({scan_uid, std::move(change), std::move(then)});
  CommitJournal();
}

void Uploader::CommitJournal() {
  if (journal_committing_ || journal_queue_.empty()) return;
  journal_committing_ = true;
  auto batch = std::make_shared<std::vector<PendingChange>>();
  batch->swap(journal_queue_);
  // On the worker: one Spool::SetUploads (one synced record) per scan for the whole batch.
  boost::asio::post(journal_worker_, [this, weak = std::weak_ptr<char>(alive_), batch] {
    std::map<std::string, std::vector<spool::Spool::UploadChange>> by_scan;
    for (const auto& p : *batch) by_scan[p.scan_uid].push_back(p.change);
    auto results = std::make_shared<std::map<std::string, Status>>();
    for (const auto& [uid, changes] : by_scan) results->emplace(uid, spool_.SetUploads(uid, changes));
    boost::asio::post(io_, [this, weak, batch, results] {
      if (!weak.lock()) return;
      journal_committing_ = false;
      for (auto& p : *batch) {
        if (p.then) p.then(results->at(p.scan_uid));
      }
      CommitJournal();  // what was queued meanwhile
    });
  });
}

bool Uploader::NeedsCreation(const Job& job) {
  auto upload = SpooledUploadOf(spool_, job.scan_uid, job.manifest, job.index);
  if (!upload) return true;  // Prepare() reports the spool's error
  return upload->state.url.empty() && !upload->state.complete;
}

void Uploader::CreateUpload(JobPtr job, std::uint64_t length, const std::string& sha256,
                            std::function<void(Expected<spool::UploadState>)> then) {
  transport::tus::Metadata metadata = {{"kind", job->manifest ? "manifest" : "chunk"},
                                       {"scan_uid", job->scan_uid},
                                       {"sha256", sha256},
                                       {"filename", job->manifest ? "manifest.json"
                                                                  : "chunk-" + std::to_string(job->index) + ".ctc"}};
  if (!job->manifest) metadata.push_back({"chunk_index", std::to_string(job->index)});
  const auto asked = AdmissionEstimator::Clock::now();
  // No creation-with-upload here, even when offered: the contract is to journal the URL
  // before sending any byte. Bytes in the POST would make a crash between the POST and the
  // journal leave a second, complete copy of the chunk on the server (the soak test sees it).
  job->client->Create(length, metadata, [this, weak = std::weak_ptr<char>(alive_), job, asked,
                                         then = std::move(then)](Expected<transport::tus::Created> created,
                                                                 transport::tus::Failure why) {
    if (!weak.lock()) return;
    if (!created) {
      job->Fail(created.error(), why);
      then(MakeError(created.error()));
      return;
    }
    // A request without a body: its answer time is the path's round trip (plus the server's
    // work, and a connection's set-up the first time, which the estimator's minimum drops).
    const auto answered = AdmissionEstimator::Clock::now();
    EstimatorFor(job->lease.link_name).NoteRoundTrip(answered - asked, answered);
    UpdateAdmission(job->lease.link_name);
    spool::UploadState state;
    state.url = created->url;
    state.confirmed_offset = created->offset;
    // Journal the URL before sending (more) bytes, so a restart resumes this upload, not a new one.
    Journal(job->scan_uid, {job->manifest ? -1 : static_cast<std::int64_t>(job->index), state},
            [job, state, then](Status st) {
              if (!st) {
                job->FailLocal(st.error());
                then(MakeError(st.error()));
                return;
              }
              then(state);
            });
  });
}

void Uploader::Prepare(JobPtr job) {
  if (job->manifest) {
    const auto it = manifest_creations_.find(job->scan_uid);
    if (it != manifest_creations_.end()) {
      // Its creation is under way (PrepareManifest or another attempt): decide once it ended.
      it->second.push_back(std::move(job));
      return;
    }
  }
  job->failure = FailureClass::kNone;
  job->label.clear();
  job->last_status = Ok();
  if (!NeedsCreation(*job)) {
    // Done, or an upload of an earlier attempt or run: Transfer() asks the server where it stands
    // (or, for one created ahead and not yet sent, starts its PATCH).
    Prepared(std::move(job));
    return;
  }
  if (job->manifest) manifest_creations_[job->scan_uid];
  in_flight_.insert(job);
  if (!Lease(*job)) {
    Prepared(std::move(job));
    return;
  }
  job->failure = FailureClass::kLocal;  // until the spool answered
  auto upload = SpooledUploadOf(spool_, job->scan_uid, job->manifest, job->index);
  if (!upload) {
    job->FailLocal(upload.error());
    Prepared(std::move(job));
    return;
  }
  if (upload->state.complete || !upload->state.url.empty()) {
    job->failure = FailureClass::kNone;
    Prepared(std::move(job));
    return;
  }
  std::string sha256 = upload->sha256;
  std::uint64_t length = upload->length;
  if (job->manifest) {
    // A manifest is small (a few KiB per chunk): read on the loop.
    auto bytes = spool_.ReadManifest(job->scan_uid);
    if (!bytes) {
      job->FailLocal(bytes.error());
      Prepared(std::move(job));
      return;
    }
    sha256 = Sha256Hex(*bytes);
    length = bytes->size();
  }
  // No upload is created before discovery said the server is usable: a server that is not tus
  // 1.0.0 must not be left with empty uploads. The warm-ups' OPTIONS are usually answered by
  // now; otherwise this waits for them (or asks itself).
  WithCapabilities(*job->client, [this, job, length, sha256](Expected<transport::tus::ServerCapabilities> caps,
                                                             transport::tus::Failure why) {
    if (!caps) {
      job->Fail(caps.error(), why);
      Prepared(job);
      return;
    }
    CreateUpload(job, length, sha256, [this, job, length](Expected<spool::UploadState> created) {
      if (created) {
        // Entries are taken by the upload's transfer; one left by a scan that stopped early is
        // only a missed shortcut, so the map is simply cleared if it ever grows large.
        if (fresh_uploads_.size() >= 4096) fresh_uploads_.clear();
        fresh_uploads_[created->url] = length;
        job->failure = FailureClass::kNone;
        job->last_status = Ok();
      }
      Prepared(job);
    });
  });
}

void Uploader::Prepared(JobPtr job) {
  in_flight_.erase(job);
  Report(*job);
  if (job->manifest) {
    const auto it = manifest_creations_.find(job->scan_uid);
    if (it != manifest_creations_.end()) {
      std::vector<JobPtr> waiting = std::move(it->second);
      manifest_creations_.erase(it);
      for (auto& other : waiting) Prepare(std::move(other));
    }
  }
  if (job->prepare_only) {
    if (!job->last_status) {
      log::Debug("upload", job->Name() + ": not created ahead (" + job->last_status.error().message() +
                               "); it is created when it is sent");
    }
    return;
  }
  if (!job->last_status) {
    --ahead_;
    Finish(std::move(job));
    Pump();
    return;
  }
  if (paused_ || stopping_) {
    --ahead_;
    Start(std::move(job));  // held (paused) or cancelled (stopping)
    return;
  }
  to_send_.push_back(std::move(job));
  Pump();
}

void Uploader::Transfer(JobPtr job) {
  in_flight_.insert(job);
  job->paused_out = false;
  job->attempt_body_bytes = 0;
  if (!Lease(*job)) {
    Transferred(std::move(job));
    return;
  }
  job->failure = FailureClass::kLocal;  // until the spool answered
  TransferCheck(std::move(job));
}

void Uploader::TransferCheck(JobPtr job) {
  // On the worker: a chunk file checked against its recorded size and SHA-256 (read in pieces,
  // then sent from the file: an upload in flight holds no copy of its chunk), or the manifest
  // read and hashed (it is sent from memory); and where the upload stands.
  boost::asio::post(read_worker_, [this, weak = std::weak_ptr<char>(alive_), job] {
    struct Checked {
      Expected<std::vector<std::uint8_t>> manifest = std::vector<std::uint8_t>();
      Expected<spool::Spool::CheckedChunkFile> chunk = spool::Spool::CheckedChunkFile();
      Expected<SpooledUpload> upload = SpooledUpload();
      std::string manifest_sha256;
    };
    auto checked = std::make_shared<Checked>();
    Status read = Ok();
    if (job->manifest) {
      checked->manifest = spool_.ReadManifest(job->scan_uid);
      if (!checked->manifest) read = MakeError(checked->manifest.error());
    } else {
      checked->chunk = spool_.CheckChunkFile(job->scan_uid, job->index);
      if (!checked->chunk) read = MakeError(checked->chunk.error());
    }
    checked->upload = read ? SpooledUploadOf(spool_, job->scan_uid, job->manifest, job->index)
                           : Expected<SpooledUpload>(MakeError(read.error()));
    if (read && checked->upload && job->manifest) checked->manifest_sha256 = Sha256Hex(*checked->manifest);
    boost::asio::post(io_, [this, weak, job, checked] {
      if (!weak.lock()) return;
      if (!checked->upload) {
        job->FailLocal(checked->upload.error());
        Transferred(job);
        return;
      }
      if (job->manifest) {
        job->bytes = std::make_shared<const std::vector<std::uint8_t>>(std::move(*checked->manifest));
        job->size = job->bytes->size();
        job->sha256 = checked->manifest_sha256;
      } else {
        job->file = transport::FileBody{std::move(checked->chunk->path), 0, checked->chunk->length};
        job->size = checked->chunk->length;
        job->sha256 = checked->upload->sha256;
      }
      job->state = checked->upload->state;
      TransferRead(job);
    });
  });
}

void Uploader::TransferRead(JobPtr job) {
  if (job->state.complete) {
    job->failure = FailureClass::kNone;
    job->last_status = Ok();
    Transferred(std::move(job));
    return;
  }
  if (EndedByPauseOrStop(job)) return;
  WithCapabilities(*job->client, [this, job](Expected<transport::tus::ServerCapabilities> caps,
                                             transport::tus::Failure why) {
    if (!caps) {
      job->Fail(caps.error(), why);
      Transferred(job);
      return;
    }
    auto& protocol = job->client->protocol();
    // A URL journaled off the upload origin (by a run before the origin check, or before
    // cloud.upload_origins_allowed lost that origin) gets nothing: the upload is created again here.
    if (!job->state.url.empty() && !protocol.OriginAllowed(job->state.url)) {
      log::Warn("upload", job->Name() + ": the journaled upload URL " + RedactUrl(job->state.url) +
                              " is not on the upload origin nor allowed by cloud.upload_origins_allowed; creating the "
                              "upload again at " + RedactUrl(cloud_.upload_url));
      job->state = {};
    }
    const std::uint64_t size = job->size;
    job->offset = 0;
    // Created by Prepare() for exactly these bytes and not sent since: the server holds none yet.
    const bool fresh =
        !job->state.url.empty() && TakeFresh(job->state.url, size) && job->state.confirmed_offset == 0;
    if (job->state.url.empty() || fresh) {
      TransferCreated(job);
      return;
    }
    const bool can_terminate = caps->Has("termination");
    const auto asked = AdmissionEstimator::Clock::now();
    job->client->Query(job->state.url, [this, weak = std::weak_ptr<char>(alive_), job, size, can_terminate, asked](
                                           Expected<transport::tus::UploadInfo> server,
                                           transport::tus::Failure query_failure) {
      if (!weak.lock()) return;
      if (server) {
        const auto answered = AdmissionEstimator::Clock::now();
        EstimatorFor(job->lease.link_name).NoteRoundTrip(answered - asked, answered);
      }
      if (!server) {
        if (query_failure.failure == FailureClass::kUploadGone) {
          log::Warn("upload", job->Name() + ": the server no longer knows " + RedactUrl(job->state.url) +
                                  " (expired or removed); creating the upload again");
          job->state = {};
          TransferCreated(job);
          return;
        }
        job->Fail(server.error(), query_failure);
        Transferred(job);
        return;
      }
      job->offset = server->offset;
      if (job->offset < job->state.confirmed_offset) {
        log::Warn("upload", job->Name() + ": server has " + std::to_string(job->offset) + " bytes, fewer than the " +
                                std::to_string(job->state.confirmed_offset) +
                                " it confirmed before; continuing from its offset");
      }
      // An upload that cannot be this data (other length, or more bytes than we have) is
      // superseded: free it on the server (termination) and create the upload again.
      if (job->offset > size || (server->length && *server->length != size)) {
        log::Warn("upload", job->Name() + ": the server's upload " + RedactUrl(job->state.url) +
                                " does not match the spooled " + std::to_string(size) +
                                " bytes; terminating it and creating it again");
        const std::string old_url = job->state.url;
        job->state = {};
        job->offset = 0;
        if (!can_terminate) {
          TransferCreated(job);
          return;
        }
        job->client->Terminate(old_url, [this, weak, job](Status st, transport::tus::Failure) {
          if (!weak.lock()) return;
          if (!st) log::Warn("upload", job->Name() + ": " + st.error().message() + " (continuing with a new upload)");
          TransferCreated(job);
        });
        return;
      }
      TransferCreated(job);
    });
  });
}

void Uploader::TransferCreated(JobPtr job) {
  if (!job->state.url.empty()) {
    TransferSend(std::move(job));
    return;
  }
  CreateUpload(job, job->size, job->sha256, [this, job](Expected<spool::UploadState> created) {
    if (!created) {
      Transferred(job);
      return;
    }
    job->state = *created;
    job->offset = job->state.confirmed_offset;
    CountConfirmed(*job, job->offset);
    TransferSend(job);
  });
}

bool Uploader::EndedByPauseOrStop(JobPtr& job) {
  if (!paused_ && !stopping_) return false;
  job->paused_out = paused_ && !stopping_;
  job->failure = FailureClass::kCancelled;
  job->last_status = MakeError(ErrorKind::kCancelled, paused_ ? "uploads are paused" : "agent is stopping");
  Transferred(std::move(job));
  return true;
}

void Uploader::TransferSend(JobPtr job) {
  if (EndedByPauseOrStop(job)) return;
  job->start_offset = job->offset;
  job->last_journaled = job->offset;
  if (!job->manifest) {  // a scan's one small manifest says nothing of the chunks' PATCHes
    EstimatorFor(job->lease.link_name)
        .NotePatch(std::min<std::uint64_t>(job->size - std::min<std::uint64_t>(job->offset, job->size), cloud_.patch_bytes));
  }
  transport::tus::AsyncUploadOptions options;
  // The gate, asked before each block and at each progress check, answers at once: a pause or
  // a stop ends the PATCH (the server keeps what it got), and so does a revoked lease. A capped
  // link's pacing is a hold the engine times, never a wait here.
  const LinkLease& lease = job->lease;
  options.before_send = [this, job](std::size_t n) {
    if (paused_) job->paused_out = true;
    if (stopping_ || paused_) return false;
    if (job->lease.reserve) return job->lease.reserve(0).has_value();
    return !job->lease.before_send || job->lease.before_send(n);
  };
  if (lease.reserve) {
    options.pace = [job](std::size_t n) {
      const auto hold = job->lease.reserve(n);
      return hold ? *hold : std::chrono::nanoseconds(0);  // revoked: the gate ends the request
    };
  }
  options.on_body_bytes = [this, job](std::uint64_t n) {
    // Counted however the PATCH ends: an interrupted PATCH's bytes may be sent again.
    job->attempt_body_bytes += n;
    counters_.body_bytes_sent += n;
  };
  options.on_progress = [this, job](std::uint64_t confirmed) {
    // After a 409 the server's offset may be lower than what we counted.
    if (confirmed > job->last_journaled) CountConfirmed(*job, confirmed - job->last_journaled);
    job->last_journaled = confirmed;
    job->state.confirmed_offset = confirmed;
    // Progress only (the server's offset stays the authority on resume), and not after the last
    // PATCH: the completion record follows at once, and every synced record costs a disk sync.
    if (confirmed < job->size) {
      Journal(job->scan_uid, {job->manifest ? -1 : static_cast<std::int64_t>(job->index), job->state}, {});
    }
  };
  auto sent = [this, weak = std::weak_ptr<char>(alive_), job](Expected<std::uint64_t> final_offset,
                                                              transport::tus::Failure why) {
    if (!weak.lock()) return;
    job->upload.reset();
    if (!final_offset) {
      job->Fail(final_offset.error(), why);
      Transferred(job);
      return;
    }
    job->state.confirmed_offset = *final_offset;
    job->state.complete = true;
    // The server has every byte: the next upload may send while this completion is journaled.
    // Holding the place through the journal's disk sync made each upload's cycle that much
    // longer, and at cloud.max_uploads_in_flight on a long fat path the link then went idle
    // (a crash before the record only means the next run asks the server, which says complete).
    ReleaseSendingPlace(*job);
    Post([this] { Pump(); });
    Journal(job->scan_uid, {job->manifest ? -1 : static_cast<std::int64_t>(job->index), job->state},
            [this, job](Status st) {
              if (!st) {
                job->FailLocal(st.error());
                Transferred(job);
                return;
              }
              job->failure = FailureClass::kNone;
              job->last_status = Ok();
              ++counters_.uploads_done;
              const std::uint64_t size = job->size;
              const std::uint64_t body_sent = job->body_bytes_sent + job->attempt_body_bytes;
              if (job->sending_attempts > 0) {
                // Resumed after an interruption: say what it cost (the bound is one request's worth).
                log::Info("upload", job->Name() + ": complete after " + std::to_string(job->sending_attempts + 1) +
                                        " sending attempts; " + std::to_string(body_sent) + " body bytes sent for " +
                                        std::to_string(size) + ", re-sent " +
                                        std::to_string(body_sent > size ? body_sent - size : 0) + " bytes");
              } else {
                log::Debug("upload", job->Name() + ": complete (" + std::to_string(size - job->start_offset) +
                                         " bytes sent)");
              }
              Transferred(job);
            });
  };
  // A chunk's bytes are read from its file as libcurl sends them (the page cache has them: the
  // check just read them); the manifest's from memory.
  job->upload = job->file ? job->client->UploadFile(job->state.url, *job->file, job->offset, cloud_.patch_bytes,
                                                    std::move(options), std::move(sent))
                          : job->client->UploadBytes(job->state.url, job->bytes, job->offset, cloud_.patch_bytes,
                                                     std::move(options), std::move(sent));
}

void Uploader::Transferred(JobPtr job) {
  in_flight_.erase(job);
  job->upload.reset();
  job->file.reset();
  if (job->bytes) {
    job->bytes.reset();  // a manifest (up to a few MB for a long scan)
    ReleaseFreeHeapPages();
  }
  if (job->attempt_body_bytes > 0) {
    job->body_bytes_sent += job->attempt_body_bytes;
    ++job->sending_attempts;
    job->attempt_body_bytes = 0;
  }
  Report(*job);
  ReleaseSendingPlace(*job);
  Finish(std::move(job));
  Pump();
}

void Uploader::ReleaseSendingPlace(Job& job) {
  if (!job.sending_place) return;
  job.sending_place = false;
  --sending_;
}

}  // namespace ctagent::core
