// The uploader's retry policy per failure class and its link leases, against the in-process
// fake tus server with a real spool: a 401 is not retried, a 423 is, and a lease revoked in the
// middle of a PATCH aborts it and the next attempt resumes from the server's offset.
#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/durable_file.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/core/link_provider.hpp"
#include "base/retry.hpp"
#include "agent/core/uploader.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"
#include "tests/transport/fake_tus_server.hpp"

namespace {

using namespace ctagent;
using ctagent::test::FakeRequest;
using ctagent::test::FakeResponse;
using ctagent::test::FakeTusServer;
using transport::FailureClass;

using ctagent::test::RandomBytes;

// A spool under `dir` with one scan begun (`reserve` bytes), as acquisition leaves it.
std::unique_ptr<spool::Spool> SpoolWithScan(const test::TempDir& dir, PosixFileStore& files, const std::string& scan_uid,
                                            std::uint64_t reserve) {
  spool::SpoolOptions options;
  options.directory = dir.path() / "spool";
  options.max_bytes = 1ull << 30;
  options.min_free_bytes = 0;
  auto opened = spool::Spool::Open(options, files);
  REQUIRE(opened);
  spool::ScanRecord record;
  record.scan_uid = scan_uid;
  record.study_uid = MintDicomUid();
  record.created_utc = "2026-11-23T10:00:00Z";
  REQUIRE((*opened)->BeginScan(record, reserve));
  return std::move(*opened);
}

// Cloud settings for the fake server: plain HTTP on loopback, short timeouts.
config::CloudConfig FakeCloud(const FakeTusServer& fake, std::uint32_t parallel, std::uint64_t patch_bytes) {
  config::CloudConfig cloud;
  cloud.upload_url = fake.endpoint();
  cloud.allow_plain_http = true;
  cloud.parallel_uploads = parallel;
  // A fixed count, as these tests' request and connection counts assume; the admission by
  // rate x round trip has its own tests (core_admission_test, upload_admission_test).
  cloud.max_uploads_in_flight = parallel;
  cloud.patch_bytes = patch_bytes;
  cloud.connect_timeout_s = 5;
  cloud.stall_timeout_s = 10;
  return cloud;
}

// A spool holding one scan with one chunk, and an uploader pointed at the fake server.
struct Fixture {
  test::TempDir dir{"uploader"};
  PosixFileStore files;
  std::unique_ptr<spool::Spool> spool;
  FakeTusServer fake;
  config::CloudConfig cloud;
  std::string scan_uid = MintDicomUid();
  std::vector<std::uint8_t> chunk = RandomBytes(500000, 21);
  boost::asio::io_context io;

  Fixture() {
    spool = SpoolWithScan(dir, files, scan_uid, 1 << 20);
    const codec::ManifestChunk meta{0, 0, 10, chunk.size() * 2, chunk.size(), Sha256Of(chunk), Sha256Of(chunk)};
    REQUIRE(spool->AddChunk(scan_uid, meta, chunk));
    cloud = FakeCloud(fake, 1, 64 * 1024);
  }

  static RetryPolicy FastRetries() {
    RetryPolicy retry;
    retry.delay_scale = 0.001;  // the table's classes and attempt caps, with delays in ms not s
    return retry;
  }

  // Uploads chunk 0 and runs the event loop until done (bounded).
  std::optional<Status> Upload(core::Uploader& uploader) {
    std::optional<Status> result;
    uploader.UploadChunk(scan_uid, 0, [&](Status s) { result = s; });
    auto guard = boost::asio::make_work_guard(io);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!result && std::chrono::steady_clock::now() < deadline) io.run_for(std::chrono::milliseconds(20));
    return result;
  }

  std::string Uploaded() {
    for (const auto& r : fake.Requests()) {
      if (r.method == "POST") return fake.Data("/files/u1");
    }
    return "";
  }
};

// A link manager stand-in: hands out leases on link "5g" bound to 127.0.0.1, counts the bytes
// each lease paced, and revokes the first lease after `revoke_after` bytes.
class FakeLinks : public core::LinkProvider {
 public:
  explicit FakeLinks(std::size_t revoke_after) : revoke_after_(revoke_after) {}

  Expected<core::LinkLease> Acquire() override {
    std::lock_guard lock(mutex_);
    const std::size_t lease = paced_.size();
    paced_.push_back(0);
    core::LinkLease out;
    out.link_name = "5g";
    out.source_address = "127.0.0.1";
    out.before_send = [this, lease](std::size_t bytes) {
      std::lock_guard inner(mutex_);
      // The first lease that carries body bytes is revoked after revoke_after_ of them.
      if (!sending_lease_) sending_lease_ = lease;
      if (lease == *sending_lease_ && paced_[lease] + bytes > revoke_after_) return false;
      paced_[lease] += bytes;
      return true;
    };
    return out;
  }
  void Report(const std::string& link_name, const Status& outcome) override {
    std::lock_guard lock(mutex_);
    reports_.emplace_back(link_name, outcome ? ErrorKind::kInternal : outcome.error().kind());
    report_ok_.push_back(static_cast<bool>(outcome));
  }
  std::vector<std::size_t> paced() {
    std::lock_guard lock(mutex_);
    return paced_;
  }
  std::vector<bool> report_ok() {
    std::lock_guard lock(mutex_);
    return report_ok_;
  }

 private:
  std::mutex mutex_;
  std::size_t revoke_after_;
  std::optional<std::size_t> sending_lease_;
  std::vector<std::size_t> paced_;
  std::vector<std::pair<std::string, ErrorKind>> reports_;
  std::vector<bool> report_ok_;
};

}  // namespace

TEST_CASE("retry table: permanent classes are never retried, transient ones back off within their caps",
          "[transport][upload][retry]") {
  const RetryPolicy policy;
  for (auto permanent : {FailureClass::kTlsRejected, FailureClass::kAuth, FailureClass::kVersion,
                         FailureClass::kTooLarge, FailureClass::kEndpoint, FailureClass::kLocal}) {
    INFO(transport::ToString(permanent));
    CHECK(policy.For(permanent).permanent);
  }
  std::mt19937_64 rng(1);
  for (auto transient : {FailureClass::kDns, FailureClass::kConnect, FailureClass::kTlsHandshake, FailureClass::kStall,
                         FailureClass::kConnectionLost, FailureClass::kServerError, FailureClass::kConflict,
                         FailureClass::kLocked, FailureClass::kChecksum, FailureClass::kLinkDown}) {
    INFO(transport::ToString(transient));
    const auto rule = policy.For(transient);
    CHECK_FALSE(rule.permanent);
    CHECK(rule.max_attempts >= 3);
    CHECK(rule.max_attempts <= 20);  // capped even for the patient classes
    for (std::uint32_t attempt = 0; attempt < 30; ++attempt) {
      const auto delay = policy.Delay(transient, attempt, rng);
      CHECK(delay.count() >= 0);
      CHECK(delay <= rule.max);
    }
  }
}

TEST_CASE("uploader: a 401 is surfaced at once, not retried, and names what to do", "[transport][upload][fake]") {
  Fixture f;
  f.fake.SetIntercept([](const FakeRequest& r) -> std::optional<FakeResponse> {
    if (r.method == "POST") return FakeResponse{401, {{"Tus-Resumable", "1.0.0"}}, "who are you"};
    return std::nullopt;
  });
  core::Uploader uploader(f.io, *f.spool, f.cloud, Fixture::FastRetries());
  const auto result = f.Upload(uploader);
  REQUIRE(result);
  REQUIRE_FALSE(*result);
  CHECK(result->error().kind() == ErrorKind::kPermission);
  CHECK_THAT(result->error().message(), Catch::Contains("not retried") && Catch::Contains("credentials") &&
                                            Catch::Contains("stays spooled"));
  CHECK(f.fake.Count("POST") == 1);
  CHECK(uploader.counters().retries == 0);
  // Nothing was journaled as complete: the next run starts over.
  auto record = f.spool->Get(f.scan_uid);
  REQUIRE(record);
  CHECK_FALSE(record->chunks.at(0).upload.complete);
}

TEST_CASE("uploader: a 423 is retried after a backoff and the upload completes byte for byte",
          "[transport][upload][fake]") {
  Fixture f;
  int locked = 0;
  f.fake.SetIntercept([&](const FakeRequest& r) -> std::optional<FakeResponse> {
    if (r.method == "PATCH" && locked < 2) {
      ++locked;
      return FakeResponse{423, {{"Tus-Resumable", "1.0.0"}}, "locked"};
    }
    return std::nullopt;
  });
  core::Uploader uploader(f.io, *f.spool, f.cloud, Fixture::FastRetries());
  const auto result = f.Upload(uploader);
  REQUIRE(result);
  REQUIRE(*result);
  CHECK(locked == 2);
  CHECK(uploader.counters().retries == 2);
  // Counted by class, for the daemon's metrics (ctagent_retries_total{stage="upload",class=...}).
  CHECK(uploader.counters().retries_by_class == std::map<std::string, std::uint64_t>{{"http-423", 2}});
  // The chunk's confirmed bytes, once, for the scan's summary; none of them a manifest's.
  CHECK(uploader.TakeScanBytes(f.scan_uid) == f.chunk.size());
  CHECK(uploader.TakeScanBytes(f.scan_uid) == 0);
  CHECK(uploader.counters().bytes_sent == f.chunk.size());
  CHECK(uploader.counters().manifest_bytes_sent == 0);
  CHECK(f.fake.Count("POST") == 1);  // the upload was resumed, never created twice
  CHECK(f.fake.Count("OPTIONS") == 1);  // discovery once per uploader
  CHECK(f.fake.Data("/files/u1") == std::string(f.chunk.begin(), f.chunk.end()));
  auto record = f.spool->Get(f.scan_uid);
  REQUIRE(record);
  CHECK(record->chunks.at(0).upload.complete);
}

TEST_CASE("uploader: a lease revoked mid-PATCH aborts it, and the next lease resumes from the server's offset",
          "[transport][upload][links][fake]") {
  Fixture f;
  FakeLinks links(200000);
  core::Uploader uploader(f.io, *f.spool, f.cloud, Fixture::FastRetries(), &links);
  const auto result = f.Upload(uploader);
  REQUIRE(result);
  REQUIRE(*result);
  CHECK(f.fake.Data("/files/u1") == std::string(f.chunk.begin(), f.chunk.end()));
  CHECK(f.fake.Count("POST") == 1);
  CHECK(f.fake.Count("HEAD") == 1);  // the resume asked the server's offset

  // One lease per stage: the transfer thread's warm-up (OPTIONS) and the creation (POST, no
  // body), in either order and without body bytes, then the PATCHes, then the resume.
  const auto paced = links.paced();
  REQUIRE(paced.size() == 4);
  CHECK(paced[0] == 0);
  CHECK(paced[1] == 0);
  // The PATCH lease: whole 64 KiB blocks until the one that would cross 200000 bytes was
  // refused; the server kept the completed PATCHes.
  const std::size_t kept = 3 * 64 * 1024;
  CHECK(paced[2] <= 200000);
  // The resume: exactly the bytes the server did not have; nothing was sent twice.
  CHECK(paced[3] == f.chunk.size() - kept);
  CHECK(links.report_ok() == std::vector<bool>{true, true, false, true});
  CHECK(uploader.counters().retries == 1);
  CHECK(uploader.counters().retries_by_class == std::map<std::string, std::uint64_t>{{"link-down", 1}});
}

namespace {

// A spool holding one scan of `chunks` chunks whose acquisition has ended (manifest written).
struct ScanFixture {
  test::TempDir dir{"uploader-scan"};
  PosixFileStore files;
  std::unique_ptr<spool::Spool> spool;
  FakeTusServer fake;
  config::CloudConfig cloud;
  std::string scan_uid = MintDicomUid();
  std::vector<std::vector<std::uint8_t>> chunks;
  boost::asio::io_context io;

  ScanFixture(std::uint32_t chunk_count, std::uint32_t parallel) {
    spool = SpoolWithScan(dir, files, scan_uid, 16 << 20);
    codec::Manifest manifest;
    manifest.scan_uid = scan_uid;
    manifest.study_uid = spool->Get(scan_uid)->study_uid;
    for (std::uint32_t i = 0; i < chunk_count; ++i) {
      chunks.push_back(RandomBytes(100000 + 1000 * i, 40 + i));
      const auto& bytes = chunks.back();
      const codec::ManifestChunk meta{i, i * 10, 10, bytes.size() * 2, bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
      REQUIRE(spool->AddChunk(scan_uid, meta, bytes));
      manifest.chunks.push_back(meta);
      manifest.views_acquired += 10;
    }
    REQUIRE(spool->FinishAcquisition(scan_uid, manifest));
    cloud = FakeCloud(fake, parallel, 1 << 20);  // one PATCH per upload
  }

  // Runs the event loop until `done` or 60 s.
  void RunUntil(const std::function<bool()>& done) {
    io.restart();  // an earlier RunUntil may have let it run out of work, which stops it
    auto guard = boost::asio::make_work_guard(io);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done() && std::chrono::steady_clock::now() < deadline) io.run_for(std::chrono::milliseconds(10));
  }

  // The agent's order: every chunk, then (once all succeeded) the manifest.
  std::optional<Status> UploadScan(core::Uploader& uploader) {
    std::optional<Status> result;
    std::size_t left = chunks.size();
    for (std::uint32_t i = 0; i < chunks.size(); ++i) {
      uploader.UploadChunk(scan_uid, i, [&](Status st) {
        if (!st) result = st;
        if (--left == 0 && !result) uploader.UploadManifest(scan_uid, [&](Status m) { result = m; });
      });
    }
    RunUntil([&] { return result.has_value(); });
    return result;
  }

  // Each upload on the server holds exactly the spooled bytes.
  void CheckArrived() {
    auto record = spool->Get(scan_uid);
    REQUIRE(record);
    for (const auto& c : record->chunks) {
      CHECK(c.upload.complete);
      const auto& bytes = chunks.at(c.chunk.index);
      CHECK(fake.Data(c.upload.url) == std::string(bytes.begin(), bytes.end()));
    }
    auto manifest = spool->ReadManifest(scan_uid);
    REQUIRE(manifest);
    CHECK(record->manifest_upload.complete);
    CHECK(fake.Data(record->manifest_upload.url) == std::string(manifest->begin(), manifest->end()));
  }
};

}  // namespace

TEST_CASE("uploader: a manifest created ahead is sent with one PATCH, never created twice",
          "[transport][upload][fake]") {
  ScanFixture f(3, 2);
  core::Uploader uploader(f.io, *f.spool, f.cloud, Fixture::FastRetries());
  uploader.PrepareManifest(f.scan_uid);
  // Created and journaled before any chunk is sent, and no byte of it sent yet.
  std::string manifest_url;
  f.RunUntil([&] {
    auto record = f.spool->Get(f.scan_uid);
    if (record) manifest_url = record->manifest_upload.url;
    return !manifest_url.empty();
  });
  REQUIRE_FALSE(manifest_url.empty());
  CHECK(f.fake.Count("POST") == 1);
  CHECK(f.fake.Count("PATCH") == 0);

  const auto result = f.UploadScan(uploader);
  REQUIRE(result);
  REQUIRE(*result);
  f.CheckArrived();
  CHECK(f.spool->Get(f.scan_uid)->manifest_upload.url == manifest_url);  // the upload created ahead
  CHECK(f.fake.Count("POST") == 4);   // 3 chunks + 1 manifest
  CHECK(f.fake.Count("PATCH") == 4);  // one each
  CHECK(f.fake.Count("HEAD") == 0);   // an upload created by this uploader and not sent needs no HEAD
  CHECK(f.fake.UploadCount() == 4);
}

TEST_CASE("uploader: PrepareManifest racing UploadManifest still creates one manifest upload",
          "[transport][upload][fake]") {
  for (int round = 0; round < 5; ++round) {
    ScanFixture f(1, 4);
    core::Uploader uploader(f.io, *f.spool, f.cloud, Fixture::FastRetries());
    std::optional<Status> chunk;
    uploader.UploadChunk(f.scan_uid, 0, [&](Status st) { chunk = st; });
    f.RunUntil([&] { return chunk.has_value(); });
    REQUIRE(chunk);
    REQUIRE(*chunk);
    std::optional<Status> manifest;
    uploader.PrepareManifest(f.scan_uid);
    uploader.UploadManifest(f.scan_uid, [&](Status st) { manifest = st; });
    f.RunUntil([&] { return manifest.has_value(); });
    REQUIRE(manifest);
    REQUIRE(*manifest);
    f.CheckArrived();
    CHECK(f.fake.Count("POST") == 2);
    CHECK(f.fake.UploadCount() == 2);
  }
}

TEST_CASE("uploader: each transfer and creation thread keeps one connection for all its requests",
          "[transport][upload][fake]") {
  // 40 uploads with 4 creations and 4 transfers at once. libcurl's shared connection cache (5
  // slots for all handles) once closed a connection after nearly every request (~80 for the 86
  // requests here); now connections are kept and reused, so no more are opened than requests are
  // ever in flight at once: both stages full and the manifest's creation, which PrepareManifest
  // starts beside them (Uploader::ClientFor's limit, 2 x 4 + 1). Under load that creation was
  // seen still in flight as both stages filled (9 connections, once in 80 runs).
  ScanFixture f(40, 4);
  core::Uploader uploader(f.io, *f.spool, f.cloud, Fixture::FastRetries());
  uploader.PrepareManifest(f.scan_uid);
  const auto result = f.UploadScan(uploader);
  REQUIRE(result);
  REQUIRE(*result);
  f.CheckArrived();
  CHECK(f.fake.Count("POST") == 41);
  CHECK(f.fake.Count("PATCH") == 41);
  CHECK(f.fake.Count("OPTIONS") == 4);  // one warm-up per transfer thread
  CHECK(f.fake.ConnectionCount() <= 2 * 4 + 1);
}
