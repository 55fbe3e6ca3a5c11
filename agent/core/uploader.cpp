#include "agent/core/uploader.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "agent/common/log.hpp"
#include "agent/common/sha256.hpp"
#include "transport/tus.hpp"

namespace ctagent::core {

struct Uploader::Job {
  std::string scan_uid;
  bool manifest = false;
  std::uint32_t index = 0;
  std::uint32_t attempt = 0;
  Done done;

  std::string Name() const {
    return manifest ? "manifest of scan " + scan_uid : "chunk " + std::to_string(index) + " of scan " + scan_uid;
  }
};

Uploader::Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
                   RetryPolicy retry)
    : io_(io), spool_(spool), cloud_(cloud), retry_(retry), transfers_(cloud.parallel_uploads) {}

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

std::unique_ptr<transport::HttpClient> Uploader::TakeClient() {
  std::lock_guard lock(clients_mutex_);
  if (idle_clients_.empty()) return std::make_unique<transport::HttpClient>(MakeHttpOptions(cloud_));
  auto client = std::move(idle_clients_.back());
  idle_clients_.pop_back();
  return client;
}

void Uploader::ReturnClient(std::unique_ptr<transport::HttpClient> client) {
  std::lock_guard lock(clients_mutex_);
  idle_clients_.push_back(std::move(client));
}

void Uploader::Start(std::shared_ptr<Job> job) {
  // The transfer blocks in libcurl, so it runs on a transfer thread; its outcome is handled on
  // the event loop, which also owns the retry timers.
  boost::asio::post(transfers_, [this, job] {
    Status status = Ok();
    if (stopping_) {
      status = MakeError(ErrorKind::kCancelled, "agent is stopping");
    } else {
      auto client = TakeClient();
      status = Transfer(*job, *client);
      ReturnClient(std::move(client));
    }
    boost::asio::post(io_, [this, job, status] {
      if (status || !status.error().IsTransient() || stopping_ || job->attempt + 1 >= retry_.max_attempts) {
        if (!status) log::Error("upload", job->Name() + ": " + status.error().message());
        job->done(status);
        return;
      }
      const auto delay = retry_.Delay(job->attempt, rng_);
      ++job->attempt;
      ++counters_.retries;
      log::Warn("upload", job->Name() + ": " + status.error().message() + "; retry " + std::to_string(job->attempt) +
                              " in " + std::to_string(delay.count()) + " ms");
      auto timer = std::make_shared<boost::asio::steady_timer>(io_, delay);
      timer->async_wait([this, job, timer](const boost::system::error_code&) { Start(job); });
    });
  });
}

Status Uploader::Transfer(Job& job, transport::HttpClient& http) {
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
  std::uint64_t offset = 0;
  if (!state.url.empty()) {
    auto server_offset = tus.QueryOffset(state.url);
    if (server_offset) {
      offset = *server_offset;
      if (offset < state.confirmed_offset) {
        log::Warn("upload", job.Name() + ": server has " + std::to_string(offset) + " bytes, fewer than the " +
                                std::to_string(state.confirmed_offset) + " it confirmed before; continuing from its offset");
      }
      if (offset > bytes->size()) {
        return MakeError(ErrorKind::kProtocol, "server reports offset " + std::to_string(offset) + " beyond the " +
                                                   std::to_string(bytes->size()) + " bytes of " + job.Name());
      }
    } else if (server_offset.error().kind() == ErrorKind::kNotFound) {
      log::Warn("upload", job.Name() + ": the server no longer knows " + state.url + "; creating the upload again");
      state = {};
    } else {
      return MakeError(server_offset.error());
    }
  }
  if (state.url.empty()) {
    transport::tus::Metadata metadata = {{"kind", job.manifest ? "manifest" : "chunk"},
                                         {"scan_uid", job.scan_uid},
                                         {"sha256", sha256},
                                         {"filename", job.manifest ? "manifest.json"
                                                                   : "chunk-" + std::to_string(job.index) + ".ctc"}};
    if (!job.manifest) metadata.push_back({"chunk_index", std::to_string(job.index)});
    auto url = tus.Create(bytes->size(), metadata);
    if (!url) return MakeError(url.error());
    state.url = *url;
    state.confirmed_offset = 0;
    // Journal the URL before sending a byte, so a restart resumes this upload, not a new one.
    if (auto st = journal(state); !st) return st;
    offset = 0;
  }
  const std::uint64_t start_offset = offset;
  std::uint64_t last_journaled = offset;
  auto final_offset = tus.UploadFrom(state.url, *bytes, offset, cloud_.patch_bytes, [&](std::uint64_t confirmed) {
    counters_.bytes_sent += confirmed - last_journaled;
    last_journaled = confirmed;
    state.confirmed_offset = confirmed;
    (void)journal(state);  // progress only; the server's offset stays the authority on resume
  });
  if (!final_offset) return MakeError(final_offset.error());
  state.confirmed_offset = *final_offset;
  state.complete = true;
  if (auto st = journal(state); !st) return st;
  ++counters_.uploads_done;
  log::Debug("upload", job.Name() + ": complete (" + std::to_string(bytes->size() - start_offset) + " bytes sent)");
  return Ok();
}

}  // namespace ctagent::core
