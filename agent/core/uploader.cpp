#include "agent/core/uploader.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <utility>

#include "agent/common/log.hpp"
#include "agent/common/sha256.hpp"
#include "agent/common/url.hpp"
#include "transport/tus.hpp"

namespace ctagent::core {
namespace {

using transport::FailureClass;

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

// What the operator reads when a class is not retried.
std::string PermanentAdvice(FailureClass failure) {
  switch (failure) {
    case FailureClass::kTlsRejected:
      return "TLS was refused (certificate, host name, pin or client certificate): fix the certificate or "
             "cloud.tls settings";
    case FailureClass::kAuth:
      return "the imaging center refused this terminal: fix its credentials or client certificate";
    case FailureClass::kVersion:
      return "the server does not speak tus 1.0.0: the imaging center must update its endpoint";
    case FailureClass::kTooLarge:
      return "the upload is larger than the server accepts: raise the server's limit or lower the chunk size";
    case FailureClass::kEndpoint:
      return "the upload endpoint does not exist or is not a tus endpoint: fix cloud.upload_url";
    default:
      return "";
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
  upload.sha256 = std::move(chunk->chunk.sha256);
  upload.length = chunk->chunk.compressed_bytes;  // the chunk file's size
  return upload;
}

}  // namespace

struct Uploader::Job {
  std::string scan_uid;
  bool manifest = false;
  std::uint32_t index = 0;
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

  std::string Name() const {
    return manifest ? "manifest of scan " + scan_uid : "chunk " + std::to_string(index) + " of scan " + scan_uid;
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
      creators_(cloud.parallel_uploads),
      transfers_(cloud.parallel_uploads),
      counters_(counters != nullptr ? *counters : own_counters_) {}

Uploader::~Uploader() { Stop(); }

void Uploader::Stop() {
  {
    std::lock_guard lock(ahead_mutex_);
    stopping_ = true;
  }
  ahead_changed_.notify_all();
  creators_.join();  // before the transfers: a creator may still hand a job to them
  transfers_.join();
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
  if (paused) return;
  std::vector<std::shared_ptr<Job>> held;
  held.swap(held_);
  for (auto& job : held) Start(std::move(job));  // in the order they were held
}

void Uploader::Requeue(std::shared_ptr<Job> job) {
  boost::asio::post(io_, [this, job = std::move(job)] { Start(job); });
}

void Uploader::PrepareManifest(const std::string& scan_uid) {
  // Optional (UploadManifest creates the upload when it is not there): skipped while paused.
  if (paused_) return;
  auto job = std::make_shared<Job>();
  job->scan_uid = scan_uid;
  job->manifest = true;
  // Its creation waits for discovery like every other: start the warm-ups that do it.
  StartWarmUp();
  // Not counted against the creators' lead (WaitForRoomAhead): it has no transfer stage.
  boost::asio::post(creators_, [this, job] {
    if (stopping_ || paused_) return;
    Attempt(*job, /*prepare=*/true);
    if (!job->last_status) {
      log::Debug("upload", job->Name() + ": not created ahead (" + job->last_status.error().message() +
                               "); it is created when it is sent");
    }
  });
}

void Uploader::WarmUp() {
  std::optional<transport::tus::ServerCapabilities> discovered;
  LinkLease lease;
  // Paused: no OPTIONS either; the first job after the resume asks the server itself.
  bool leased = !stopping_ && !paused_;
  if (leased && links_ != nullptr) {
    auto acquired = links_->Acquire();
    leased = acquired.has_value();  // if not, the jobs' own attempts report it
    if (leased) lease = std::move(*acquired);
  }
  if (leased) {
    auto client = TakeClient(lease);
    transport::tus::Client tus(*client, cloud_.upload_url);
    auto answer = tus.Discover();
    if (answer) discovered = *answer;
    ReturnClient(lease.link_name, std::move(client));
    if (links_ != nullptr) {
      links_->Report(lease.link_name, answer || !IsLinkFailure(tus.last_failure()) ? Ok() : Status(MakeError(answer.error())));
    }
  }
  {
    std::lock_guard lock(clients_mutex_);
    if (discovered && !capabilities_) {
      if (discovered->version_inferred) LogVersionInferred();
      capabilities_ = std::move(discovered);
    }
    --discoveries_in_flight_;
  }
  capabilities_changed_.notify_all();
}

void Uploader::LogVersionInferred() const {
  log::Info("upload", "the tus server at " + RedactUrl(cloud_.upload_url) +
                          " sends no Tus-Version; using tus 1.0.0, which its Tus-Resumable names");
}

bool Uploader::TakeFresh(const std::string& url, std::uint64_t length) {
  std::lock_guard lock(fresh_mutex_);
  const auto it = fresh_uploads_.find(url);
  if (it == fresh_uploads_.end()) return false;
  const bool fresh = it->second == length;
  fresh_uploads_.erase(it);
  return fresh;
}

std::unique_ptr<transport::HttpClient> Uploader::TakeClient(const LinkLease& lease) {
  std::lock_guard lock(clients_mutex_);
  auto& idle = idle_clients_[lease.link_name];
  if (!idle.empty()) {
    auto client = std::move(idle.back());
    idle.pop_back();
    return client;
  }
  auto options = MakeHttpOptions(cloud_);
  options.interface_name = lease.interface_name;
  options.source_address = lease.source_address;
  options.share = share_;
  return std::make_unique<transport::HttpClient>(std::move(options));
}

void Uploader::ReturnClient(const std::string& link_name, std::unique_ptr<transport::HttpClient> client) {
  std::lock_guard lock(clients_mutex_);
  idle_clients_[link_name].push_back(std::move(client));
}

Status Uploader::Journal(const std::string& scan_uid, spool::Spool::UploadChange change) {
  std::uint64_t ticket = 0;
  {
    std::lock_guard lock(journal_queue_mutex_);
    ticket = ++journal_next_ticket_;
    journal_queue_.push_back({ticket, scan_uid, std::move(change)});
  }
  std::lock_guard commit(journal_commit_mutex_);
  std::vector<PendingChange> batch;
  {
    std::lock_guard lock(journal_queue_mutex_);
    if (const auto it = journal_results_.find(ticket); it != journal_results_.end()) {
      Status done = it->second;  // committed by another thread's batch while we waited
      journal_results_.erase(it);
      return done;
    }
    batch.swap(journal_queue_);  // holds our change: nobody took it
  }
  std::map<std::string, std::vector<const PendingChange*>> by_scan;
  for (const auto& p : batch) by_scan[p.scan_uid].push_back(&p);
  Status mine = Ok();
  std::map<std::uint64_t, Status> others;
  for (const auto& [uid, changes] : by_scan) {
    std::vector<spool::Spool::UploadChange> upload_changes;
    upload_changes.reserve(changes.size());
    for (const auto* p : changes) upload_changes.push_back(p->change);
    const Status st = spool_.SetUploads(uid, upload_changes);
    for (const auto* p : changes) {
      if (p->ticket == ticket) {
        mine = st;
      } else {
        others.emplace(p->ticket, st);
      }
    }
  }
  std::lock_guard lock(journal_queue_mutex_);
  journal_results_.merge(others);
  return mine;
}

bool Uploader::NeedsCreation(const Job& job) {
  auto upload = SpooledUploadOf(spool_, job.scan_uid, job.manifest, job.index);
  if (!upload) return true;  // Prepare() reports the spool's error
  return upload->state.url.empty() && !upload->state.complete;
}

void Uploader::Attempt(Job& job, bool prepare) {
  std::unique_lock<std::mutex> manifest_creation;
  if (prepare && job.manifest) manifest_creation = std::unique_lock(manifest_creation_mutex_);
  if (prepare && !NeedsCreation(job)) {
    // Done, or an upload of an earlier attempt or run: Transfer() asks the server where it stands
    // (or, for one created ahead and not yet sent, starts its PATCH).
    job.failure = FailureClass::kNone;
    job.last_status = Ok();
    return;
  }
  LinkLease lease;
  if (links_ != nullptr) {
    auto acquired = links_->Acquire();
    if (!acquired) {
      job.failure = FailureClass::kLinkDown;
      job.last_status = MakeError(acquired.error());
      return;
    }
    lease = std::move(*acquired);
  }
  auto client = TakeClient(lease);
  job.failure = FailureClass::kNone;
  job.label.clear();
  // Stop() ends a PATCH in flight at its next block instead of waiting for all its bytes (a
  // shutdown, or a daemon pausing for a scan): the server keeps what it got, the next run resumes.
  // A pause ends it the same way; the job is then held, not failed (Finish).
  job.paused_out = false;
  const std::function<bool(std::size_t)> before_send = [this, &lease, &job](std::size_t n) {
    if (paused_) job.paused_out = true;
    return !stopping_ && !paused_ && (!lease.before_send || lease.before_send(n));
  };
  job.last_status = prepare ? Prepare(job, *client) : Transfer(job, *client, before_send);
  ReturnClient(lease.link_name, std::move(client));
  if (links_ != nullptr) {
    // HTTP answers and local problems say the link works; only network failures count against it.
    links_->Report(lease.link_name, job.last_status || !IsLinkFailure(job.failure) ? Ok() : job.last_status);
  }
}

void Uploader::StartWarmUp() {
  bool warm_up = false;
  {
    std::lock_guard lock(clients_mutex_);
    if (!warm_up_started_) {
      warm_up_started_ = true;
      warm_up = true;
      discoveries_in_flight_ = cloud_.parallel_uploads;
    }
  }
  // Posted before any job, so every transfer thread runs its warm-up before any transfer.
  for (std::uint32_t i = 0; warm_up && i < cloud_.parallel_uploads; ++i) boost::asio::post(transfers_, [this] { WarmUp(); });
}

void Uploader::Start(std::shared_ptr<Job> job) {
  // Two stages, each on its own threads because they block in libcurl: a creator makes the
  // upload (POST) and journals its URL, then a transfer thread sends the bytes (PATCH). So the
  // creation round trip of the next uploads overlaps the PATCHes in flight instead of leaving
  // a transfer connection idle for it. Creators stay at most `parallel_uploads` uploads ahead.
  // Paused (on the loop, like every caller of Start): the job waits in held_ for SetPaused(false).
  if (paused_) {
    held_.push_back(std::move(job));
    return;
  }
  StartWarmUp();
  boost::asio::post(creators_, [this, job] {
    if (!WaitForRoomAhead()) {
      job->failure = FailureClass::kCancelled;
      job->last_status = MakeError(ErrorKind::kCancelled, "agent is stopping");
      Finish(job);
      return;
    }
    if (paused_) {  // paused while it waited for a creator: no POST
      LeaveAhead();
      Requeue(job);
      return;
    }
    Attempt(*job, /*prepare=*/true);
    if (!job->last_status) {
      LeaveAhead();
      Finish(job);
      return;
    }
    boost::asio::post(transfers_, [this, job] {
      LeaveAhead();
      if (paused_ && !stopping_) {  // paused while it waited for a transfer thread: no HEAD, no PATCH
        Requeue(job);
        return;
      }
      if (stopping_) {
        job->failure = FailureClass::kCancelled;
        job->last_status = MakeError(ErrorKind::kCancelled, "agent is stopping");
      } else {
        Attempt(*job, /*prepare=*/false);
      }
      Finish(job);
    });
  });
}

bool Uploader::WaitForRoomAhead() {
  std::unique_lock lock(ahead_mutex_);
  // Bounded by Stop(), which sets stopping_ under this mutex and wakes every waiter.
  ahead_changed_.wait(lock, [this] { return stopping_ || ahead_ < cloud_.parallel_uploads; });
  if (stopping_) return false;
  ++ahead_;
  return true;
}

void Uploader::LeaveAhead() {
  {
    std::lock_guard lock(ahead_mutex_);
    --ahead_;
  }
  ahead_changed_.notify_one();
}

void Uploader::Finish(std::shared_ptr<Job> job) {
  // The outcome is handled on the event loop, which also owns the retry timers.
  boost::asio::post(io_, [this, job] {
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
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, delay);
    timer->async_wait([this, job, timer](const boost::system::error_code&) { Start(job); });
  });
}

void Uploader::CountConfirmed(const Job& job, std::uint64_t bytes) {
  if (bytes == 0) return;
  counters_.bytes_sent += bytes;
  if (job.manifest) counters_.manifest_bytes_sent += bytes;
  std::lock_guard lock(scan_bytes_mutex_);
  scan_bytes_[job.scan_uid] += bytes;
}

std::uint64_t Uploader::TakeScanBytes(const std::string& scan_uid) {
  std::lock_guard lock(scan_bytes_mutex_);
  const auto it = scan_bytes_.find(scan_uid);
  if (it == scan_bytes_.end()) return 0;
  const std::uint64_t bytes = it->second;
  scan_bytes_.erase(it);
  return bytes;
}

Expected<transport::tus::ServerCapabilities> Uploader::Capabilities(transport::tus::Client& tus) {
  {
    std::unique_lock lock(clients_mutex_);
    // Bounded: every warm-up ends (each request has connect and stall timeouts) and counts down.
    capabilities_changed_.wait(lock, [this] { return capabilities_.has_value() || discoveries_in_flight_ == 0; });
    if (capabilities_) return *capabilities_;
  }
  // No upload is created, and no byte sent, before discovery said the server speaks tus 1.0.0:
  // a failure here ends the attempt (the tus client says what the answer really was).
  auto discovered = tus.Discover();
  if (!discovered) return discovered;
  std::lock_guard lock(clients_mutex_);
  if (discovered->version_inferred && !capabilities_) LogVersionInferred();
  capabilities_ = *discovered;
  return *discovered;
}

Expected<spool::UploadState> Uploader::CreateUpload(Job& job, transport::tus::Client& tus, std::uint64_t length,
                                                    const std::string& sha256) {
  transport::tus::Metadata metadata = {{"kind", job.manifest ? "manifest" : "chunk"},
                                       {"scan_uid", job.scan_uid},
                                       {"sha256", sha256},
                                       {"filename", job.manifest ? "manifest.json"
                                                                 : "chunk-" + std::to_string(job.index) + ".ctc"}};
  if (!job.manifest) metadata.push_back({"chunk_index", std::to_string(job.index)});
  // No creation-with-upload here, even when offered: the contract is to journal the URL
  // before sending any byte. Bytes in the POST would make a crash between the POST and the
  // journal leave a second, complete copy of the chunk on the server (the soak test sees it).
  auto created = tus.CreateWithUpload(length, metadata, {});
  if (!created) {
    job.failure = tus.last_failure() == FailureClass::kNone ? FailureClass::kProtocol : tus.last_failure();
    job.label = tus.last_failure_label();
    return MakeError(created.error());
  }
  spool::UploadState state;
  state.url = created->url;
  state.confirmed_offset = created->offset;
  // Journal the URL before sending (more) bytes, so a restart resumes this upload, not a new one.
  if (auto st = JournalUpload(job, state); !st) {
    job.failure = FailureClass::kLocal;
    return MakeError(st.error());
  }
  return state;
}

Status Uploader::JournalUpload(const Job& job, const spool::UploadState& state) {
  return Journal(job.scan_uid, {job.manifest ? -1 : static_cast<std::int64_t>(job.index), state});
}

Status Uploader::Prepare(Job& job, transport::HttpClient& http) {
  job.failure = FailureClass::kLocal;  // until the spool answered
  auto upload = SpooledUploadOf(spool_, job.scan_uid, job.manifest, job.index);
  if (!upload) return MakeError(upload.error());
  const spool::UploadState& state = upload->state;
  std::string sha256 = upload->sha256;
  std::uint64_t length = upload->length;
  // Done, or an upload of an earlier attempt or run: Transfer() asks the server where it stands.
  if (state.complete || !state.url.empty()) {
    job.failure = FailureClass::kNone;
    return Ok();
  }
  if (job.manifest) {
    auto bytes = spool_.ReadManifest(job.scan_uid);
    if (!bytes) return MakeError(bytes.error());
    sha256 = Sha256Hex(*bytes);
    length = bytes->size();
  }
  transport::tus::Client tus(http, cloud_.upload_url);
  tus.SetAllowedOrigins(allowed_origins_);
  // No upload is created before discovery said the server is usable: a server that is not tus
  // 1.0.0 must not be left with empty uploads. The warm-ups' OPTIONS are usually answered by
  // now; otherwise this waits for them (or asks itself).
  auto capabilities = Capabilities(tus);
  if (!capabilities) {
    job.failure = tus.last_failure() == FailureClass::kNone ? FailureClass::kProtocol : tus.last_failure();
    job.label = tus.last_failure_label();
    return MakeError(capabilities.error());
  }
  tus.SetCapabilities(*capabilities);
  auto created = CreateUpload(job, tus, length, sha256);
  if (!created) return MakeError(created.error());
  {
    std::lock_guard lock(fresh_mutex_);
    // Entries are taken by the upload's transfer; one left by a scan that stopped early is only
    // a missed shortcut, so the map is simply cleared if it ever grows large.
    if (fresh_uploads_.size() >= 4096) fresh_uploads_.clear();
    fresh_uploads_[created->url] = length;
  }
  job.failure = FailureClass::kNone;
  return Ok();
}

Status Uploader::Transfer(Job& job, transport::HttpClient& http, const std::function<bool(std::size_t)>& before_send) {
  job.failure = FailureClass::kLocal;  // until the spool answered
  // What to send: a chunk file (checked against its recorded SHA-256) or the manifest.
  auto bytes = job.manifest ? spool_.ReadManifest(job.scan_uid) : spool_.ReadChunk(job.scan_uid, job.index);
  if (!bytes) return MakeError(bytes.error());
  auto upload = SpooledUploadOf(spool_, job.scan_uid, job.manifest, job.index);
  if (!upload) return MakeError(upload.error());
  spool::UploadState state = upload->state;
  std::string sha256 = upload->sha256;
  if (state.complete) return Ok();
  if (job.manifest) sha256 = Sha256Hex(*bytes);

  auto journal = [&](const spool::UploadState& s) { return JournalUpload(job, s); };

  transport::tus::Client tus(http, cloud_.upload_url);
  tus.SetBeforeSend(before_send);
  tus.SetAllowedOrigins(allowed_origins_);
  // Every failure below comes from the tus client, which knows its class.
  auto fail = [&](const Error& error) -> Status {
    job.failure = tus.last_failure() == FailureClass::kNone ? FailureClass::kProtocol : tus.last_failure();
    job.label = tus.last_failure_label();
    return MakeError(error);
  };
  auto capabilities = Capabilities(tus);
  if (!capabilities) return fail(capabilities.error());
  tus.SetCapabilities(*capabilities);

  // A URL journaled off the upload origin (by a run before the origin check, or before
  // cloud.upload_origins_allowed lost that origin) gets nothing: the upload is created again here.
  if (!state.url.empty() && !tus.OriginAllowed(state.url)) {
    log::Warn("upload", job.Name() + ": the journaled upload URL " + RedactUrl(state.url) +
                            " is not on the upload origin nor allowed by cloud.upload_origins_allowed; creating the "
                            "upload again at " + RedactUrl(cloud_.upload_url));
    state = {};
  }
  std::uint64_t offset = 0;
  // Created by Prepare() for exactly these bytes and not sent since: the server holds none yet.
  const bool fresh = !state.url.empty() && TakeFresh(state.url, bytes->size()) && state.confirmed_offset == 0;
  if (!state.url.empty() && !fresh) {
    auto server = tus.Query(state.url);
    if (server) {
      offset = server->offset;
      if (offset < state.confirmed_offset) {
        log::Warn("upload", job.Name() + ": server has " + std::to_string(offset) + " bytes, fewer than the " +
                                std::to_string(state.confirmed_offset) + " it confirmed before; continuing from its offset");
      }
      // An upload that cannot be this data (other length, or more bytes than we have) is
      // superseded: free it on the server (termination) and create the upload again.
      if (offset > bytes->size() || (server->length && *server->length != bytes->size())) {
        log::Warn("upload", job.Name() + ": the server's upload " + RedactUrl(state.url) + " does not match the spooled " +
                                std::to_string(bytes->size()) + " bytes; terminating it and creating it again");
        if (capabilities->Has("termination")) {
          if (auto st = tus.Terminate(state.url); !st) {
            log::Warn("upload", job.Name() + ": " + st.error().message() + " (continuing with a new upload)");
          }
        }
        state = {};
      }
    } else if (tus.last_failure() == FailureClass::kUploadGone) {
      log::Warn("upload", job.Name() + ": the server no longer knows " + RedactUrl(state.url) +
                              " (expired or removed); creating the upload again");
      state = {};
    } else {
      return fail(server.error());
    }
  }
  if (state.url.empty()) {
    auto created = CreateUpload(job, tus, bytes->size(), sha256);
    if (!created) return MakeError(created.error());
    state = *created;
    offset = state.confirmed_offset;
    CountConfirmed(job, offset);
  }
  const std::uint64_t start_offset = offset;
  std::uint64_t last_journaled = offset;
  // Counted however the attempt ends: an interrupted PATCH's bytes may be sent again.
  struct CountBodyBytes {
    Job& job;
    transport::tus::Client& tus;
    UploadCounters& counters;
    ~CountBodyBytes() {
      if (tus.body_bytes_sent() == 0) return;
      job.body_bytes_sent += tus.body_bytes_sent();
      ++job.sending_attempts;
      counters.body_bytes_sent += tus.body_bytes_sent();
    }
  } count_body_bytes{job, tus, counters_};
  auto final_offset = tus.UploadFrom(state.url, *bytes, offset, cloud_.patch_bytes, [&](std::uint64_t confirmed) {
    // After a 409 the server's offset may be lower than what we counted.
    if (confirmed > last_journaled) CountConfirmed(job, confirmed - last_journaled);
    last_journaled = confirmed;
    state.confirmed_offset = confirmed;
    // Progress only (the server's offset stays the authority on resume), and not after the last
    // PATCH: the completion record follows at once, and every synced record costs a disk sync.
    if (confirmed < bytes->size()) (void)journal(state);
  });
  if (!final_offset) return fail(final_offset.error());
  state.confirmed_offset = *final_offset;
  state.complete = true;
  if (auto st = journal(state); !st) {
    job.failure = FailureClass::kLocal;
    return st;
  }
  job.failure = FailureClass::kNone;
  ++counters_.uploads_done;
  const std::uint64_t body_sent = job.body_bytes_sent + tus.body_bytes_sent();
  if (job.sending_attempts > 0) {
    // Resumed after an interruption: say what it cost (the bound is one request's worth).
    log::Info("upload", job.Name() + ": complete after " + std::to_string(job.sending_attempts + 1) +
                            " sending attempts; " + std::to_string(body_sent) + " body bytes sent for " +
                            std::to_string(bytes->size()) + ", re-sent " +
                            std::to_string(body_sent > bytes->size() ? body_sent - bytes->size() : 0) + " bytes");
  } else {
    log::Debug("upload", job.Name() + ": complete (" + std::to_string(bytes->size() - start_offset) + " bytes sent)");
  }
  return Ok();
}

}  // namespace ctagent::core
