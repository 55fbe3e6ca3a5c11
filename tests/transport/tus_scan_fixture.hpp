// For the tus interoperability tests (tus_*_test.cpp): a real spool holding one finished scan
// (chunks + manifest), the uploader driven the way the agent drives it (every chunk, then the
// manifest), and a capture of the agent's log (stderr) so tests can read what it printed.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/durable_file.hpp"
#include "base/log.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "base/retry.hpp"
#include "agent/core/uploader.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"

namespace ctagent::test {

// A spool with one scan of `chunk_count` chunks whose acquisition has ended (manifest written).
struct TusScan {
  TempDir dir{"tus-interop"};
  PosixFileStore files;
  std::unique_ptr<spool::Spool> spool;
  std::string scan_uid = MintDicomUid();
  std::vector<std::vector<std::uint8_t>> chunks;
  boost::asio::io_context io;

  explicit TusScan(std::uint32_t chunk_count, std::size_t chunk_bytes = 100000) {
    spool::SpoolOptions options;
    options.directory = dir.path() / "spool";
    options.max_bytes = 1ull << 30;
    options.min_free_bytes = 0;
    auto opened = spool::Spool::Open(options, files);
    REQUIRE(opened);
    spool = std::move(*opened);
    spool::ScanRecord record;
    record.scan_uid = scan_uid;
    record.study_uid = MintDicomUid();
    record.created_utc = "2026-12-05T03:00:00Z";
    REQUIRE(spool->BeginScan(record, 64ull << 20));
    codec::Manifest manifest;
    manifest.scan_uid = scan_uid;
    manifest.study_uid = record.study_uid;
    for (std::uint32_t i = 0; i < chunk_count; ++i) {
      chunks.push_back(RandomBytes(chunk_bytes + 1000 * i, 500 + i));
      const auto& bytes = chunks.back();
      const codec::ManifestChunk meta{i, i * 10, 10, bytes.size() * 2, bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
      REQUIRE(spool->AddChunk(scan_uid, meta, bytes));
      manifest.chunks.push_back(meta);
      manifest.views_acquired += 10;
    }
    REQUIRE(spool->FinishAcquisition(scan_uid, manifest));
  }

  // The uploads' settings for the tus server on loopback: 4 uploads at once, short timeouts.
  static config::CloudConfig LoopbackCloud(const std::string& endpoint, const std::filesystem::path& pki) {
    config::CloudConfig cloud;
    cloud.upload_url = endpoint;
    cloud.tls.ca_file = pki / "ca.pem";
    cloud.parallel_uploads = 4;
    cloud.connect_timeout_s = 5;
    cloud.stall_timeout_s = 10;
    return cloud;
  }

  static RetryPolicy FastRetries() {
    RetryPolicy retry;
    retry.delay_scale = 0.001;  // the table's classes and attempt caps, with delays in ms not s
    return retry;
  }

  // Runs the event loop until `done` or 90 s.
  void RunUntil(const std::function<bool()>& done) {
    io.restart();
    auto guard = boost::asio::make_work_guard(io);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (!done() && std::chrono::steady_clock::now() < deadline) io.run_for(std::chrono::milliseconds(10));
  }

  // The agent's order: the manifest's upload prepared, every chunk, then (once all succeeded)
  // the manifest. The first failure ends it.
  std::optional<Status> Upload(core::Uploader& uploader) {
    std::optional<Status> result;
    std::size_t left = chunks.size();
    uploader.PrepareManifest(scan_uid);
    for (std::uint32_t i = 0; i < chunks.size(); ++i) {
      uploader.UploadChunk(scan_uid, i, [&](Status st) {
        if (!st && !result) result = st;
        if (--left == 0 && !result) uploader.UploadManifest(scan_uid, [&](Status m) { result = m; });
      });
    }
    RunUntil([&] { return result.has_value() && left == 0; });
    return result;
  }

  // Each upload URL journaled in the spool, with the bytes that left for it.
  struct Sent {
    std::string url;
    std::string bytes;
  };
  std::vector<Sent> SentUploads() {
    std::vector<Sent> out;
    auto record = spool->Get(scan_uid);
    REQUIRE(record);
    for (const auto& c : record->chunks) {
      CHECK(c.upload.complete);
      const auto& bytes = chunks.at(c.chunk.index);
      out.push_back({c.upload.url, std::string(bytes.begin(), bytes.end())});
    }
    auto manifest = spool->ReadManifest(scan_uid);
    REQUIRE(manifest);
    CHECK(record->manifest_upload.complete);
    out.push_back({record->manifest_upload.url, std::string(manifest->begin(), manifest->end())});
    return out;
  }

  // Every byte of the spool's files (records and journal) as text, for "never written" checks.
  std::string SpoolText() const {
    std::string all;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.path() / "spool")) {
      if (entry.is_regular_file() && entry.path().extension() != ".ctc") all += ReadText(entry.path());
    }
    return all;
  }
};

// Sends this process's stderr (where the agent logs) to a file while alive; text() reads it.
class StderrCapture {
 public:
  explicit StderrCapture(const std::filesystem::path& file) : file_(file) {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    ::dup2(fd, 2);
    ::close(fd);
    previous_level_ = log::GetLevel();
    log::SetLevel(log::Level::kDebug);
  }
  ~StderrCapture() { Restore(); }
  StderrCapture(const StderrCapture&) = delete;
  StderrCapture& operator=(const StderrCapture&) = delete;

  // Stops capturing and returns everything logged.
  std::string text() {
    Restore();
    return ReadText(file_);
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
    log::SetLevel(previous_level_);
  }
  std::filesystem::path file_;
  int saved_ = -1;
  log::Level previous_level_ = log::Level::kInfo;
};

}  // namespace ctagent::test
