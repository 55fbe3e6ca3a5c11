#include "agent/core/uploader.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "agent/common/log.hpp"
#include "agent/common/sha256.hpp"
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
      return "the upload endpoint does not exist: fix cloud.upload_url";
    default:
      return "";
  }
}

}  // namespace

struct Uploader::Job {
  std::string scan_uid;
  bool manifest = false;
  std::uint32_t index = 0;
  std::uint32_t attempt = 0;
  FailureClass failure = FailureClass::kNone;  // class of the last attempt's error
  Status last_status = Ok();
  Done done;

  std::string Name() const {
    return manifest ? "manifest of scan " + scan_uid : "chunk " + std::to_string(index) + " of scan " + scan_uid;
  }
};

Uploader::Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
                   RetryPolicy retry, LinkProvider* links)
    : io_(io),
      spool_(spool),
      cloud_(cloud),
      retry_(std::move(retry)),
      links_(links),
      share_(std::make_shared<transport::HttpShare>()),
      transfers_(cloud.parallel_uploads) {}

Uploader::~Uploader() { Stop(); }

void Uploader::Stop() {
  stopping_ = true;
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

void Uploader::Attempt(Job& job) {
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
  job.last_status = Transfer(job, *client, lease.before_send);
  ReturnClient(lease.link_name, std::move(client));
  if (links_ != nullptr) {
    // HTTP answers and local problems say the link works; only network failures count against it.
    links_->Report(lease.link_name, job.last_status || !IsLinkFailure(job.failure) ? Ok() : job.last_status);
  }
}

void Uploader::Start(std::shared_ptr<Job> job) {
  // The transfer blocks in libcurl, so it runs on a transfer thread; its outcome is handled on
  // the event loop, which also owns the retry timers.
  boost::asio::post(transfers_, [this, job] {
    if (stopping_) {
      job->failure = FailureClass::kCancelled;
      job->last_status = MakeError(ErrorKind::kCancelled, "agent is stopping");
    } else {
      Attempt(*job);
    }
    boost::asio::post(io_, [this, job] {
      const Status status = job->last_status;
      if (status) {
        job->done(status);
        return;
      }
      const ClassRetry rule = retry_.For(job->failure);
      if (rule.permanent || stopping_ || job->attempt + 1 >= rule.max_attempts) {
        const std::string advice = PermanentAdvice(job->failure);
        const std::string why =
            rule.permanent ? (advice.empty() ? std::string("not retried") : "not retried: " + advice)
                           : "gave up after " + std::to_string(job->attempt + 1) + " attempts";
        const Error error = status.error().WithContext(job->Name() + " [" + transport::ToString(job->failure) + ", " +
                                                       why + "; the data stays spooled and resumes on the next run]");
        log::Error("upload", error.message());
        job->done(MakeError(error));
        return;
      }
      const auto delay = retry_.Delay(job->failure, job->attempt, rng_);
      ++job->attempt;
      ++counters_.retries;
      log::Warn("upload", job->Name() + ": " + status.error().message() + " [" + transport::ToString(job->failure) +
                              "]; retry " + std::to_string(job->attempt) + " in " + std::to_string(delay.count()) +
                              " ms");
      auto timer = std::make_shared<boost::asio::steady_timer>(io_, delay);
      timer->async_wait([this, job, timer](const boost::system::error_code&) { Start(job); });
    });
  });
}

Expected<transport::tus::ServerCapabilities> Uploader::Capabilities(transport::tus::Client& tus) {
  {
    std::lock_guard lock(clients_mutex_);
    if (capabilities_) return *capabilities_;
  }
  auto discovered = tus.Discover();
  if (!discovered) {
    // A server without OPTIONS (or a proxy that eats it) still gets the core protocol; a
    // missing version or a network failure stops here.
    if (tus.last_failure() != FailureClass::kProtocol) return discovered;
    log::Warn("upload", "tus discovery failed (" + discovered.error().message() + "); using the core protocol only");
    discovered = transport::tus::ServerCapabilities{{"1.0.0"}, {"creation"}, {}, 0};
  }
  std::lock_guard lock(clients_mutex_);
  capabilities_ = *discovered;
  return *discovered;
}

Status Uploader::Transfer(Job& job, transport::HttpClient& http, const std::function<bool(std::size_t)>& before_send) {
  job.failure = FailureClass::kLocal;  // until the spool answered
  // What to send: a chunk file (checked against its recorded SHA-256) or the manifest.
  auto bytes = job.manifest ? spool_.ReadManifest(job.scan_uid) : spool_.ReadChunk(job.scan_uid, job.index);
  if (!bytes) return MakeError(bytes.error());
  auto record = spool_.Get(job.scan_uid);
  if (!record) return MakeError(record.error());

  spool::UploadState state;
  std::string sha256;
  if (job.manifest) {
    state = record->manifest_upload;
  } else {
    for (const auto& c : record->chunks) {
      if (c.chunk.index == job.index) {
        state = c.upload;
        sha256 = c.chunk.sha256;
      }
    }
  }
  if (state.complete) return Ok();
  if (job.manifest) sha256 = Sha256Hex(*bytes);

  auto journal = [&](const spool::UploadState& s) {
    return spool_.Update(job.scan_uid, [&](spool::ScanRecord& r) {
      if (job.manifest) {
        r.manifest_upload = s;
        return;
      }
      for (auto& c : r.chunks) {
        if (c.chunk.index == job.index) c.upload = s;
      }
    });
  };

  transport::tus::Client tus(http, cloud_.upload_url);
  tus.SetBeforeSend(before_send);
  // Every failure below comes from the tus client, which knows its class.
  auto fail = [&](const Error& error) -> Status {
    job.failure = tus.last_failure() == FailureClass::kNone ? FailureClass::kProtocol : tus.last_failure();
    return MakeError(error);
  };
  auto capabilities = Capabilities(tus);
  if (!capabilities) return fail(capabilities.error());
  tus.SetCapabilities(*capabilities);

  std::uint64_t offset = 0;
  if (!state.url.empty()) {
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
        log::Warn("upload", job.Name() + ": the server's upload " + state.url + " does not match the spooled " +
                                std::to_string(bytes->size()) + " bytes; terminating it and creating it again");
        if (capabilities->Has("termination")) {
          if (auto st = tus.Terminate(state.url); !st) {
            log::Warn("upload", job.Name() + ": " + st.error().message() + " (continuing with a new upload)");
          }
        }
        state = {};
      }
    } else if (tus.last_failure() == FailureClass::kUploadGone) {
      log::Warn("upload", job.Name() + ": the server no longer knows " + state.url +
                              " (expired or removed); creating the upload again");
      state = {};
    } else {
      return fail(server.error());
    }
  }
  if (state.url.empty()) {
    transport::tus::Metadata metadata = {{"kind", job.manifest ? "manifest" : "chunk"},
                                         {"scan_uid", job.scan_uid},
                                         {"sha256", sha256},
                                         {"filename", job.manifest ? "manifest.json"
                                                                   : "chunk-" + std::to_string(job.index) + ".ctc"}};
    if (!job.manifest) metadata.push_back({"chunk_index", std::to_string(job.index)});
    // No creation-with-upload here, even when offered: the contract is to journal the URL
    // before sending any byte. Bytes in the POST would make a crash between the POST and the
    // journal leave a second, complete copy of the chunk on the server (the soak test sees it).
    auto created = tus.CreateWithUpload(bytes->size(), metadata, {});
    if (!created) return fail(created.error());
    state.url = created->url;
    state.confirmed_offset = created->offset;
    // Journal the URL before sending (more) bytes, so a restart resumes this upload, not a new one.
    if (auto st = journal(state); !st) {
      job.failure = FailureClass::kLocal;
      return st;
    }
    offset = created->offset;
    counters_.bytes_sent += created->offset;
  }
  const std::uint64_t start_offset = offset;
  std::uint64_t last_journaled = offset;
  auto final_offset = tus.UploadFrom(state.url, *bytes, offset, cloud_.patch_bytes, [&](std::uint64_t confirmed) {
    // After a 409 the server's offset may be lower than what we counted.
    if (confirmed > last_journaled) counters_.bytes_sent += confirmed - last_journaled;
    last_journaled = confirmed;
    state.confirmed_offset = confirmed;
    (void)journal(state);  // progress only; the server's offset stays the authority on resume
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
  log::Debug("upload", job.Name() + ": complete (" + std::to_string(bytes->size() - start_offset) + " bytes sent)");
  return Ok();
}

}  // namespace ctagent::core
