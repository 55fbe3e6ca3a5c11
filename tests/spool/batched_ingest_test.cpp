// Batched durable ingest (agent/spool/batched_ingest.hpp) on the real file store and on the
// simulated disk: chunks are accepted only after their batch was synced (files, directory,
// then one journal record), by bytes, by time and at Flush; a failed batch is never accepted;
// a slow disk holds back the writers instead of letting the unsynced backlog grow.
#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <set>

#include "base/log.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/spool/batched_ingest.hpp"
#include "agent/spool/simulated_disk.hpp"
#include "agent/spool/spool.hpp"
#include "tests/spool/recording_store.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;

namespace {

codec::ManifestChunk ChunkFor(std::uint32_t index, const std::vector<std::uint8_t>& bytes) {
  return {index, index * 10ull, 10, bytes.size() * 2, bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
}

spool::ScanRecord NewScan() {
  spool::ScanRecord r;
  r.scan_uid = MintDicomUid();
  r.study_uid = MintDicomUid();
  r.created_utc = "2026-11-23T10:00:00Z";
  return r;
}

std::unique_ptr<spool::Spool> OpenSpool(FileStore& files, const std::filesystem::path& dir) {
  auto sp = spool::Spool::Open({dir, 1ull << 40, 0}, files);
  REQUIRE(sp);
  return std::move(*sp);
}

// What the `done` callback saw, for the test thread.
struct Accepted {
  std::mutex mutex;
  std::vector<std::uint32_t> chunks;
  std::vector<std::size_t> batch_sizes;
  std::vector<std::string> errors;
  spool::BatchDone Callback() {
    return [this](const spool::Spool::SyncedBatch& batch) {
      std::lock_guard lock(mutex);
      if (!batch.status) {
        errors.push_back(batch.status.error().message());
        return;
      }
      batch_sizes.push_back(batch.chunks.size());
      for (const auto& [uid, c] : batch.chunks) chunks.push_back(c.index);
    };
  }
  std::size_t count() {
    std::lock_guard lock(mutex);
    return chunks.size();
  }
};

}  // namespace

TEST_CASE("batched ingest: chunks become visible only after their batch's files, directory and journal record are synced",
          "[spool][batch]") {
  test::TempDir dir("batched-ingest");
  PosixFileStore posix;
  test::RecordingStore files(posix);
  auto sp = OpenSpool(files, dir.path() / "spool");
  const auto scan = NewScan();
  REQUIRE(sp->BeginScan(scan, 1 << 20));

  Accepted accepted;
  std::map<std::uint32_t, std::vector<std::uint8_t>> sent;
  {
    spool::BatchOptions options;
    options.batch_bytes = 64 * 1024;  // about 3 chunks of 20 KiB
    options.interval = 60s;           // never by time in this test
    // Add waits once 128 KiB are unsynced, so at least one batch is synced before the last
    // chunks arrive however the threads are scheduled (the default, 4 x batch_bytes, let a
    // writer outrun a sync thread that had no CPU yet, e.g. under qemu on a busy host, and all
    // ten chunks went in one batch at Flush).
    options.max_pending_bytes = 128 * 1024;
    spool::BatchedIngest ingest(*sp, options, accepted.Callback());
    for (std::uint32_t i = 0; i < 10; ++i) {
      sent[i] = test::RandomBytes(20 * 1024, 100 + i);
      REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(i, sent[i]), sent[i]));
    }
    ingest.Flush();
    CHECK(accepted.count() == 10);
    const auto counters = ingest.counters();
    CHECK(counters.chunks == 10);
    CHECK(counters.bytes == 10 * 20 * 1024);
    CHECK(counters.batches >= 2);
    CHECK(counters.batches <= 5);  // by bytes: 200 KiB in 64 KiB batches, plus the flush
  }
  {
    std::lock_guard lock(accepted.mutex);
    CHECK(accepted.errors.empty());
    for (std::size_t n : accepted.batch_sizes) CHECK(n >= 1);
  }
  std::size_t syncs = 0, chunk_files = 0;
  const std::string order = test::CheckBatchedOrder(files.events(), &syncs, &chunk_files);
  INFO(order);
  CHECK(order.empty());
  CHECK(chunk_files == 10);
  CHECK(syncs <= 5);

  // The bytes that left are the bytes that are there, also after a restart.
  sp.reset();
  sp = OpenSpool(posix, dir.path() / "spool");
  const auto record = sp->Get(scan.scan_uid);
  REQUIRE(record);
  REQUIRE(record->chunks.size() == 10);
  for (const auto& [index, bytes] : sent) {
    auto back = sp->ReadChunk(scan.scan_uid, index);
    REQUIRE(back);
    CHECK(*back == bytes);
  }
}

TEST_CASE("batched ingest: a slow trickle is synced by time, a lone chunk waits at most the interval", "[spool][batch]") {
  test::TempDir dir("batched-ingest-time");
  PosixFileStore files;
  auto sp = OpenSpool(files, dir.path() / "spool");
  const auto scan = NewScan();
  REQUIRE(sp->BeginScan(scan, 1 << 20));
  const auto bytes = test::RandomBytes(4096, 7);

  SECTION("a long interval: nothing is accepted until Flush") {
    Accepted accepted;
    spool::BatchOptions options;
    options.batch_bytes = 1ull << 30;
    options.interval = 60s;
    spool::BatchedIngest ingest(*sp, options, accepted.Callback());
    REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(0, bytes), bytes));
    std::this_thread::sleep_for(300ms);
    CHECK(accepted.count() == 0);
    CHECK(sp->Get(scan.scan_uid)->chunks.empty());
    ingest.Flush();
    CHECK(accepted.count() == 1);
    CHECK(sp->Get(scan.scan_uid)->chunks.size() == 1);
  }
  SECTION("a short interval: accepted without a Flush") {
    Accepted accepted;
    spool::BatchOptions options;
    options.batch_bytes = 1ull << 30;
    options.interval = 100ms;
    spool::BatchedIngest ingest(*sp, options, accepted.Callback());
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(0, bytes), bytes));
    REQUIRE(test::WaitFor([&] { return accepted.count() == 1; }, 10s));
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= 90ms);
    CHECK(sp->Get(scan.scan_uid)->chunks.size() == 1);
    // A second chunk after the first batch starts its own clock.
    REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(1, bytes), bytes));
    REQUIRE(test::WaitFor([&] { return accepted.count() == 2; }, 10s));
  }
}

TEST_CASE("batched ingest: a batch whose journal record cannot be written is never accepted", "[spool][batch]") {
  log::SetLevel(log::Level::kError);
  SimulatedDisk disk;
  const std::filesystem::path spool_dir = "/disk/spool";
  auto sp = OpenSpool(disk, spool_dir);
  const auto scan = NewScan();
  REQUIRE(sp->BeginScan(scan, 1 << 20));
  Accepted accepted;
  {
    spool::BatchOptions options;
    options.batch_bytes = 1ull << 30;
    options.interval = 60s;
    spool::BatchedIngest ingest(*sp, options, accepted.Callback());
    const auto good = test::RandomBytes(3000, 1);
    REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(0, good), good));
    ingest.Flush();
    REQUIRE(accepted.count() == 1);
    const auto doomed = test::RandomBytes(3000, 2);
    REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(1, doomed), doomed));
    disk.SetNoSpace(true);  // the file is written; its batch's journal append fails
    ingest.Flush();
    disk.SetNoSpace(false);
  }
  {
    std::lock_guard lock(accepted.mutex);
    REQUIRE(accepted.errors.size() == 1);
    CHECK_THAT(accepted.errors[0], Catch::Contains("No space left") && Catch::Contains(spool_dir.string()));
    CHECK(accepted.chunks == std::vector<std::uint32_t>{0});
  }
  // Not accepted, not visible, its file gone; the journal took the next change fine.
  CHECK(sp->Get(scan.scan_uid)->chunks.size() == 1);
  CHECK_FALSE(disk.Exists(spool_dir / "scans" / scan.scan_uid / "chunks" / "000001.ctc"));
  REQUIRE(sp->Update(scan.scan_uid, [](spool::ScanRecord& r) { r.views_acquired = 10; }));
  sp.reset();
  sp = OpenSpool(disk, spool_dir);
  CHECK(sp->Get(scan.scan_uid)->chunks.size() == 1);
  CHECK(sp->Get(scan.scan_uid)->views_acquired == 10);
  CHECK(sp->recovery().torn_tail_bytes == 0);
  CHECK(sp->recovery().damaged.empty());
}

TEST_CASE("batched ingest: a disk that flushes slowly holds back the writers, the backlog stays bounded",
          "[spool][batch]") {
  test::TempDir dir("batched-ingest-slow");
  PosixFileStore posix;
  test::RecordingStore files(posix);
  files.SetSyncDelay(150ms);
  auto sp = OpenSpool(files, dir.path() / "spool");
  const auto scan = NewScan();
  REQUIRE(sp->BeginScan(scan, 1 << 20));
  Accepted accepted;
  spool::BatchOptions options;
  options.batch_bytes = 64 * 1024;
  options.max_pending_bytes = 128 * 1024;
  options.interval = 60s;
  constexpr std::size_t kChunk = 32 * 1024;
  std::uint64_t most_pending = 0;
  {
    spool::BatchedIngest ingest(*sp, options, accepted.Callback());
    const auto bytes = test::RandomBytes(kChunk, 3);
    for (std::uint32_t i = 0; i < 24; ++i) {
      REQUIRE(ingest.Add(scan.scan_uid, ChunkFor(i, bytes), bytes));
      most_pending = std::max(most_pending, sp->pending_bytes());
    }
    ingest.Flush();
    CHECK(ingest.counters().add_waits > 0);
  }
  CHECK(accepted.count() == 24);
  CHECK(most_pending <= options.max_pending_bytes + kChunk);
  CHECK(sp->Get(scan.scan_uid)->chunks.size() == 24);
}

TEST_CASE("the manifest is refused while chunks of its scan wait for their batch sync, and a chunk is queued once", "[spool][batch]") {
  SimulatedDisk disk;
  auto sp = OpenSpool(disk, "/disk/spool");
  const auto scan = NewScan();
  REQUIRE(sp->BeginScan(scan, 1 << 20));
  const auto bytes = test::RandomBytes(1000, 4);
  REQUIRE(sp->AddChunkDeferred(scan.scan_uid, ChunkFor(0, bytes), bytes));
  CHECK_FALSE(sp->AddChunkDeferred(scan.scan_uid, ChunkFor(0, bytes), bytes));  // one chunk, one batch
  codec::Manifest m;
  m.scan_uid = scan.scan_uid;
  m.study_uid = scan.study_uid;
  const auto refused = sp->FinishAcquisition(scan.scan_uid, m);
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error().message(), Catch::Contains("batch sync"));
  const auto batch = sp->SyncPending();
  REQUIRE(batch.status);
  REQUIRE(batch.chunks.size() == 1);
  // A stored chunk is never overwritten by unsynced bytes.
  const auto other = test::RandomBytes(1000, 5);
  CHECK_FALSE(sp->AddChunkDeferred(scan.scan_uid, ChunkFor(0, other), other));
  CHECK(*sp->ReadChunk(scan.scan_uid, 0) == bytes);
  REQUIRE(sp->FinishAcquisition(scan.scan_uid, m));
  CHECK(sp->Get(scan.scan_uid)->manifest_written);
}
