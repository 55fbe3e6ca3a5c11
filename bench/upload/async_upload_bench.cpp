// The uploader's protocol on AsyncHttp, timed: what the agent's transfers do once they run on the
// event loop (issue 13 item 3), for run.sh's --agent-b column. Same spool, same bytes, same
// contract as upload_bench (core::Uploader): discovery first; per chunk one tus upload, its URL
// journaled durably before its first byte, its bytes read back from the spool (SHA-256 checked)
// on a worker, one PATCH, completion journaled; the manifest created ahead and sent last. What
// differs: every request is on one event loop thread (AsyncHttp: libcurl multi, no thread per
// upload), journal records are group-committed by one worker, and the number of uploads in
// flight is not fixed but follows the measured rate x round trip, between --parallel and
// --max-in-flight (see NoteConfirmed: a floor of 2 x rate x RTT / mean chunk + 2, and a probe that
// grows the window while that raises the rate). No retries: a failure ends the run (the bench measures the good path).
// Prints the same line as upload_bench plus the window: "seconds=... bytes=... uploads=...
// cpu_seconds=... max_window=N".
//
//   upload_bench_async --url https://HOST:PORT/files/ --dir CHUNKS --ca CA.pem
//                      [--parallel N] [--max-in-flight N] [--patch-bytes N] [--spool DIR] [--log debug]
// (--patch-bytes is accepted for run.sh and ignored: a chunk goes in one PATCH, as with the
// default 4 MiB patch_bytes and ~1 MiB chunks.)
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/allocator.hpp"
#include "base/log.hpp"
#include "base/sha256.hpp"
#include "bench/upload/bench_spool.hpp"
#include "transport/http_async.hpp"
#include "transport/tus.hpp"

using namespace ctagent;
namespace fs = std::filesystem;
namespace tus = transport::tus;
using Clock = std::chrono::steady_clock;

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "upload_bench_async: %s\n", what.c_str());
  return 1;
}

class AsyncUploads {
 public:
  AsyncUploads(boost::asio::io_context& io, spool::Spool& spool, const codec::Manifest& manifest, std::string endpoint,
               transport::HttpOptions options, std::uint32_t min_window, std::uint32_t max_window)
      : io_(io),
        spool_(spool),
        manifest_(manifest),
        endpoint_(std::move(endpoint)),
        http_(io, std::move(options), Limits(max_window)),
        min_window_(min_window),
        max_window_(max_window),
        window_(min_window) {}

  // Runs on the loop; `done` gets the first error or Ok once the manifest is confirmed.
  void Run(std::function<void(Status)> done) {
    done_ = std::move(done);
    for (const auto& c : manifest_.chunks) {
      pending_.push_back(c.index);
      chunk_bytes_ += c.compressed_bytes;
    }
    transport::AsyncRequest discovery;
    discovery.request.method = "OPTIONS";
    discovery.request.url = endpoint_;
    discovery.request.headers = {{"Tus-Resumable", "1.0.0"}};
    discovery.max_response_bytes = 64 << 10;
    http_.Start(std::move(discovery), [this](Expected<transport::HttpResponse> answer) {
      if (!answer) return End(MakeError(answer.error()));
      transport::FailureClass failure{};
      std::string label;
      auto capabilities = tus::ParseDiscovery(answer->status, answer->headers, endpoint_, &failure, &label);
      if (!capabilities) return End(MakeError(capabilities.error()));
      checksum_ = capabilities->Has("checksum") ? capabilities->ChecksumAlgorithm() : "";
      PrepareManifest();
      Pump();
    });
  }

  std::uint32_t max_window_seen() const { return max_window_seen_; }

 private:
  struct Upload {
    bool manifest = false;
    std::uint32_t index = 0;
    std::uint64_t length = 0;
    std::string sha256;
    std::string url;
    std::shared_ptr<const std::vector<std::uint8_t>> bytes;
    std::string checksum_header;
    Clock::time_point posted{};
  };

  static transport::AsyncHttpLimits Limits(std::uint32_t max_window) {
    transport::AsyncHttpLimits limits;
    limits.max_host_connections = max_window + 1;  // the manifest's creation besides the window
    limits.max_cached_connections = max_window + 1;
    return limits;
  }

  void End(Status status) {
    if (ended_) return;
    ended_ = true;
    http_.CancelAll();
    done_(std::move(status));
  }

  void PrepareManifest() {
    auto upload = std::make_shared<Upload>();
    upload->manifest = true;
    // Read and hashed on a worker like every body; the creation follows on the loop.
    boost::asio::post(readers_, [this, upload] {
      auto bytes = spool_.ReadManifest(manifest_.scan_uid);
      boost::asio::post(io_, [this, upload, bytes = std::move(bytes)]() mutable {
        if (!bytes) return End(MakeError(bytes.error()));
        upload->length = bytes->size();
        upload->sha256 = Sha256Hex(*bytes);
        upload->bytes = std::make_shared<const std::vector<std::uint8_t>>(std::move(*bytes));
        Create(upload, [this, upload] {
          manifest_ready_ = upload;
          MaybeSendManifest();
        });
      });
    });
  }

  void MaybeSendManifest() {
    if (ended_ || !manifest_ready_ || ChunksLeft() > 0) return;
    auto upload = std::move(manifest_ready_);
    manifest_ready_.reset();
    SendBody(upload);
  }

  std::size_t ChunksLeft() const { return pending_.size() + in_flight_; }

  void Pump() {
    while (!ended_ && in_flight_ < window_ && !pending_.empty()) {
      const std::uint32_t index = pending_.front();
      pending_.pop_front();
      ++in_flight_;
      auto upload = std::make_shared<Upload>();
      upload->index = index;
      for (const auto& c : manifest_.chunks) {
        if (c.index == index) {
          upload->length = c.compressed_bytes;
          upload->sha256 = c.sha256.Hex();
        }
      }
      Create(upload, [this, upload] { Read(upload); });
    }
  }

  // POST, then the URL journaled durably, then `next`.
  void Create(const std::shared_ptr<Upload>& upload, std::function<void()> next) {
    tus::Metadata metadata = {{"kind", upload->manifest ? "manifest" : "chunk"},
                              {"scan_uid", manifest_.scan_uid},
                              {"sha256", upload->sha256},
                              {"filename", upload->manifest ? "manifest.json" : "chunk-" + std::to_string(upload->index) + ".ctc"}};
    if (!upload->manifest) metadata.push_back({"chunk_index", std::to_string(upload->index)});
    transport::AsyncRequest post;
    post.request.method = "POST";
    post.request.url = endpoint_;
    post.request.headers = {{"Tus-Resumable", "1.0.0"},
                            {"Upload-Length", std::to_string(upload->length)},
                            {"Upload-Metadata", tus::EncodeMetadata(metadata)}};
    post.max_response_bytes = 64 << 10;
    upload->posted = Clock::now();
    http_.Start(std::move(post), [this, upload, next = std::move(next)](Expected<transport::HttpResponse> answer) {
      if (!answer) return End(MakeError(answer.error()));
      if (answer->status != 201) {
        return End(MakeError(ErrorKind::kProtocol, "creation answered " + std::to_string(answer->status)));
      }
      NoteRoundTrip(Clock::now() - upload->posted);
      auto url = tus::ResolveUploadLocation(endpoint_, answer->Header("location"), {});
      if (!url) return End(MakeError(url.error()));
      upload->url = *url;
      spool::UploadState state;
      state.url = upload->url;
      Journal(*upload, state, next);
    });
  }

  // The chunk's bytes from the spool (checked against its SHA-256) and the PATCH checksum, on a
  // worker: the loop never waits for the disk or hashes.
  void Read(const std::shared_ptr<Upload>& upload) {
    boost::asio::post(readers_, [this, upload] {
      auto bytes = spool_.ReadChunk(manifest_.scan_uid, upload->index);
      std::string checksum;
      if (bytes && !checksum_.empty()) checksum = tus::ChecksumHeader(checksum_, *bytes);
      boost::asio::post(io_, [this, upload, bytes = std::move(bytes), checksum = std::move(checksum)]() mutable {
        if (!bytes) return End(MakeError(bytes.error()));
        upload->bytes = std::make_shared<const std::vector<std::uint8_t>>(std::move(*bytes));
        upload->checksum_header = std::move(checksum);
        SendBody(upload);
      });
    });
  }

  void SendBody(const std::shared_ptr<Upload>& upload) {
    transport::AsyncRequest patch;
    patch.request.method = "PATCH";
    patch.request.url = upload->url;
    patch.request.headers = {{"Tus-Resumable", "1.0.0"},
                             {"Upload-Offset", "0"},
                             {"Content-Type", "application/offset+octet-stream"}};
    if (!upload->checksum_header.empty()) patch.request.headers.emplace_back("Upload-Checksum", upload->checksum_header);
    patch.request.body = *upload->bytes;
    patch.keep_alive = upload->bytes;
    patch.max_response_bytes = 1 << 20;
    http_.Start(std::move(patch), [this, upload](Expected<transport::HttpResponse> answer) {
      if (!answer) return End(MakeError(answer.error()));
      if (answer->status != 204 || tus::ParseUploadOffset(answer->Header("upload-offset")) != upload->length) {
        return End(MakeError(ErrorKind::kProtocol, "PATCH answered " + std::to_string(answer->status) + " offset " +
                                                      answer->Header("upload-offset")));
      }
      upload->bytes.reset();  // the memory goes now, not after the journal
      spool::UploadState state;
      state.url = upload->url;
      state.confirmed_offset = upload->length;
      state.complete = true;
      Journal(*upload, state, [this, upload] {
        if (upload->manifest) return End(Ok());
        --in_flight_;
        NoteConfirmed(upload->length);
        Pump();
        MaybeSendManifest();
      });
    });
  }

  // Group commit: every change queued while a batch syncs goes in the next batch, one spool
  // Update (one synced record) on the journal worker; callbacks run on the loop once durable.
  void Journal(const Upload& upload, const spool::UploadState& state, std::function<void()> durable) {
    const bool manifest = upload.manifest;
    const std::uint32_t index = upload.index;
    journal_queue_.push_back({[manifest, index, state](spool::ScanRecord& r) {
                                if (manifest) {
                                  r.manifest_upload = state;
                                  return;
                                }
                                for (auto& c : r.chunks) {
                                  if (c.chunk.index == index) c.upload = state;
                                }
                              },
                              std::move(durable)});
    FlushJournal();
  }

  void FlushJournal() {
    if (journal_busy_ || journal_queue_.empty() || ended_) return;
    journal_busy_ = true;
    auto batch = std::make_shared<std::vector<PendingChange>>(std::move(journal_queue_));
    journal_queue_.clear();
    boost::asio::post(journal_, [this, batch] {
      Status st = spool_.Update(manifest_.scan_uid, [&](spool::ScanRecord& r) {
        for (auto& change : *batch) change.apply(r);
      });
      boost::asio::post(io_, [this, batch, st = std::move(st)] {
        journal_busy_ = false;
        if (!st) return End(MakeError(st.error()));
        for (auto& change : *batch) change.durable();
        FlushJournal();
      });
    });
  }

  void NoteRoundTrip(Clock::duration rtt) {
    if (rtt_ == Clock::duration::zero() || rtt < rtt_) rtt_ = rtt;
  }

  // The window follows the measured rate x round trip. Two parts: a floor from the shortest
  // POST round trip (each upload waits two: its POST and its PATCH answer), and a probe, because
  // a window too small for the path also caps the measured rate (and the cycle of an upload holds
  // more than the round trips: journal syncs, reads, the server's work): while there is work
  // waiting and the last step up raised the rate by 5 % or more, the window grows by half; when
  // the rate falls below 85 % of the best seen, it returns to the best window.
  void NoteConfirmed(std::uint64_t bytes) {
    const auto now = Clock::now();
    confirmed_ += bytes;
    if (mark_time_ == Clock::time_point{}) {
      mark_time_ = now;
      mark_bytes_ = confirmed_;
      return;
    }
    const double span = std::chrono::duration<double>(now - mark_time_).count();
    if (span < 0.25) return;
    const double rate = static_cast<double>(confirmed_ - mark_bytes_) / span;  // bytes/s
    mark_time_ = now;
    mark_bytes_ = confirmed_;
    const double mean_chunk = manifest_.chunks.empty() ? 1.0 : static_cast<double>(chunk_bytes_) / static_cast<double>(manifest_.chunks.size());
    const double rtt_s = std::chrono::duration<double>(rtt_).count();
    const double floor = std::ceil(2.0 * rate * rtt_s / mean_chunk) + 2.0;
    double window = window_;
    if (!pending_.empty()) {
      if (rate >= best_rate_ * 1.05) {
        best_rate_ = rate;
        best_window_ = window_;
        window = std::ceil(window * 1.5);
      } else if (rate < best_rate_ * 0.85 && window_ > best_window_) {
        window = best_window_;
      }
    }
    window = std::max(window, floor);
    window_ = static_cast<std::uint32_t>(std::clamp(window, static_cast<double>(min_window_), static_cast<double>(max_window_)));
    max_window_seen_ = std::max(max_window_seen_, window_);
    log::Debug("upload", "rate " + std::to_string(rate * 8 / 1e6) + " Mbit/s, RTT " + std::to_string(rtt_s * 1e3) +
                             " ms: window " + std::to_string(window_));
    Pump();
  }

  struct PendingChange {
    std::function<void(spool::ScanRecord&)> apply;
    std::function<void()> durable;
  };

  boost::asio::io_context& io_;
  spool::Spool& spool_;
  const codec::Manifest& manifest_;
  std::string endpoint_;
  transport::AsyncHttp http_;
  boost::asio::thread_pool readers_{2};
  boost::asio::thread_pool journal_{1};
  std::function<void(Status)> done_;
  bool ended_ = false;
  std::string checksum_;
  std::deque<std::uint32_t> pending_;
  std::uint64_t chunk_bytes_ = 0;
  std::size_t in_flight_ = 0;
  std::shared_ptr<Upload> manifest_ready_;
  std::vector<PendingChange> journal_queue_;
  bool journal_busy_ = false;
  const std::uint32_t min_window_;
  const std::uint32_t max_window_;
  std::uint32_t window_;
  std::uint32_t max_window_seen_ = 0;
  Clock::duration rtt_{};
  double best_rate_ = 0;
  std::uint32_t best_window_ = 0;
  std::uint64_t confirmed_ = 0;
  Clock::time_point mark_time_{};
  std::uint64_t mark_bytes_ = 0;

 public:
  ~AsyncUploads() {
    readers_.join();
    journal_.join();
  }
};

}  // namespace

int main(int argc, char** argv) {
  KeepLargeBuffersInHeap();  // as ctagent's main does
  fs::path dir, spool_dir;
  std::string url;
  transport::HttpOptions options;
  std::uint32_t min_window = 8;
  std::uint32_t max_window = 32;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--url") url = argv[i + 1];
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--ca") options.tls.ca_file = argv[i + 1];
    else if (a == "--parallel") min_window = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    else if (a == "--max-in-flight") max_window = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    else if (a == "--patch-bytes") continue;
    else if (a == "--spool") spool_dir = argv[i + 1];
    else if (a == "--log") {
      log::Level level;
      if (!log::ParseLevel(argv[i + 1], &level)) return Fail(std::string("unknown log level ") + argv[i + 1]);
      log::SetLevel(level);
    } else {
      std::fprintf(stderr, "upload_bench_async: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (url.empty() || dir.empty() || min_window == 0 || max_window < min_window) {
    std::fprintf(stderr, "usage: upload_bench_async --url URL --dir CHUNKS --ca CA.pem [--parallel N] "
                         "[--max-in-flight N >= parallel] [--spool DIR]\n");
    return 2;
  }
  if (spool_dir.empty()) spool_dir = dir / "bench-spool";
  PosixFileStore files;
  auto filled = bench::FillSpool(dir, spool_dir, files);
  if (!filled) return Fail(filled.error().message());

  boost::asio::io_context io;
  int failed = 0;
  std::uint32_t max_window_seen = 0;
  const double cpu0 = bench::CpuSeconds();
  const auto t0 = Clock::now();
  {
    AsyncUploads uploads(io, *filled->spool, filled->manifest(), url, options, min_window, max_window);
    uploads.Run([&](Status st) {
      if (!st) {
        ++failed;
        std::fprintf(stderr, "upload_bench_async: %s\n", st.error().message().c_str());
      }
      io.stop();
    });
    io.run();
    max_window_seen = std::max(uploads.max_window_seen(), min_window);
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu_seconds = bench::CpuSeconds() - cpu0;
  filled->spool.reset();
  fs::remove_all(spool_dir);
  if (failed > 0) return 1;
  std::printf("seconds=%.4f bytes=%llu uploads=%zu cpu_seconds=%.3f max_window=%u\n", seconds,
              static_cast<unsigned long long>(filled->total_bytes()), filled->manifest().chunks.size() + 1, cpu_seconds,
              max_window_seen);
  return 0;
}
