// The spool's per-chunk paths allocate the same whatever the length of the scan: reading a chunk
// back for its upload, looking up one chunk's upload state, or journaling it (SetUploads, the
// uploader's group commit) must not copy the scan's whole
// record (it grows ~0.25 KiB a chunk, and up to cloud.parallel_uploads of these run at once;
// docs/configuration.md, "Memory"). Bytes are counted by replacing operator new for this test
// binary, on the test's thread only; not under AddressSanitizer, whose own operator new would
// meet this one's delete, so there the test says so and checks nothing (the release suite runs it).
#include <catch2/catch.hpp>

#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <new>

#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"
#include "tests/support/counts_allocations.hpp"


namespace {
thread_local bool counting = false;
thread_local std::uint64_t counted_bytes = 0;
// Live bytes (malloc_usable_size) of blocks allocated and freed on this thread while counting,
// and their highest value: a block allocated before counting began and freed during it only
// lowers `live`, so `peak_live` is an upper bound of how far the call raised the heap.
thread_local std::int64_t live = 0;
thread_local std::int64_t peak_live = 0;
}  // namespace

#if CTAGENT_COUNTS_ALLOCATIONS
// The replacements pair malloc with free, as the standard allows; GCC 12 -O2 inlines them into
// callers and then reports free() of a pointer "returned from operator new" (a false
// -Wmismatched-new-delete that only the release build sees).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (void* p = std::malloc(size == 0 ? 1 : size)) {
    if (counting) {
      counted_bytes += size;
      live += static_cast<std::int64_t>(malloc_usable_size(p));
      peak_live = std::max(peak_live, live);
    }
    return p;
  }
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  if (counting && p != nullptr) live -= static_cast<std::int64_t>(malloc_usable_size(p));
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
#endif

using namespace ctagent;

namespace {

// Bytes operator new handed out while `f` ran on this thread (an upper bound of its peak).
template <typename F>
std::uint64_t BytesAllocatedBy(F&& f) {
  counted_bytes = 0;
  counting = true;
  f();
  counting = false;
  return counted_bytes;
}

// The most the heap grew (live bytes) while `f` ran on this thread.
template <typename F>
std::uint64_t PeakHeapGrowthOf(F&& f) {
  live = 0;
  peak_live = 0;
  counting = true;
  f();
  counting = false;
  return static_cast<std::uint64_t>(peak_live);
}

struct Allocations {
  std::uint64_t read_chunk = 0;
  std::uint64_t get_chunk = 0;
  std::uint64_t manifest_upload = 0;
  std::uint64_t set_uploads = 0;
  std::uint64_t whole_record = 0;
  std::uint64_t update_fields = 0;   // peak heap growth, as are the three below
  std::uint64_t manifest_base = 0;
  std::uint64_t finish_acquisition = 0;
  std::uint64_t manifest_file_bytes = 0;
  std::uint64_t compaction = 0;
  std::uint64_t snapshot_file_bytes = 0;
};

// A scan of `chunks` chunk records with upload URLs, of which chunk 0 has a real file.
Allocations MeasureWith(std::uint32_t chunks) {
  test::TempDir dir("spool-memory");
  PosixFileStore files;
  spool::SpoolOptions options{dir.path(), 1ull << 30, 0};
  // No compaction inside a measured call: it writes every record whole, by design.
  options.journal_compact_bytes = 1ull << 30;
  auto s = spool::Spool::Open(options, files);
  REQUIRE(s);
  spool::ScanRecord record;
  record.scan_uid = MintDicomUid();
  record.study_uid = MintDicomUid();
  record.created_utc = "2026-12-05T07:00:00Z";
  const std::vector<std::uint8_t> bytes(64 << 10, 7);
  const Sha256Digest hash = Sha256Of(bytes);
  for (std::uint32_t i = 0; i < chunks; ++i) {
    spool::ChunkRecord c;
    c.chunk = {i, i * 64ull, 64, bytes.size() * 2, bytes.size(), hash, hash};
    c.upload.url = "https://imaging.example.org/files/" + std::string(32, 'a') + std::to_string(i);
    record.chunks.push_back(c);
  }
  REQUIRE((*s)->BeginScan(record, 1 << 20));
  REQUIRE((*s)->AddChunk(record.scan_uid, record.chunks[0].chunk, bytes));  // the file of chunk 0
  spool::Spool& sp = **s;

  // Catch's assertions allocate (under -s every passing one is recorded), so none runs while
  // counting: each measured call keeps whether it succeeded, checked once counting is off.
  Allocations a;
  bool ok = false;
  std::size_t read_size = 0;
  a.read_chunk = BytesAllocatedBy([&] {
    auto read = sp.ReadChunk(record.scan_uid, 0);
    ok = static_cast<bool>(read);
    if (ok) read_size = read->size();
  });
  REQUIRE(ok);
  CHECK(read_size == bytes.size());
  std::uint32_t chunk_index = 0;
  a.get_chunk = BytesAllocatedBy([&] {
    auto chunk = sp.GetChunk(record.scan_uid, chunks - 1);
    ok = static_cast<bool>(chunk);
    if (ok) chunk_index = chunk->chunk.index;
  });
  REQUIRE(ok);
  CHECK(chunk_index == chunks - 1);
  a.manifest_upload = BytesAllocatedBy([&] { ok = static_cast<bool>(sp.GetManifestUpload(record.scan_uid)); });
  REQUIRE(ok);
  // The uploader's journal path: a confirmed offset, then done, for the scan's last chunk.
  const std::vector<spool::Spool::UploadChange> changes{
      {chunks - 1, {record.chunks.back().upload.url, 1000, false}},
      {chunks - 1, {record.chunks.back().upload.url, bytes.size(), true}}};
  a.set_uploads = BytesAllocatedBy([&] { ok = static_cast<bool>(sp.SetUploads(record.scan_uid, changes)); });
  REQUIRE(ok);
  CHECK(sp.GetChunk(record.scan_uid, chunks - 1)->upload.complete);
  a.whole_record = BytesAllocatedBy([&] { ok = static_cast<bool>(sp.Get(record.scan_uid)); });
  REQUIRE(ok);
  // A state change of the scan (acknowledged, results, ...): not a copy of its chunk list.
  a.update_fields = PeakHeapGrowthOf([&] {
    ok = static_cast<bool>(
        sp.UpdateFields(record.scan_uid, [](spool::ScanRecord& r) { r.acknowledged_utc = "2026-12-06T12:00:00Z"; }));
  });
  REQUIRE(ok);
  CHECK(sp.Get(record.scan_uid)->chunks.size() == chunks);  // and the chunks are all still there
  a.manifest_base = PeakHeapGrowthOf([&] { ok = static_cast<bool>(sp.GetManifestBase(record.scan_uid)); });
  REQUIRE(ok);
  // The scan's end: manifest.json of every chunk, written from the record.
  codec::Manifest head;
  head.scan_uid = record.scan_uid;
  head.study_uid = record.study_uid;
  a.finish_acquisition = PeakHeapGrowthOf([&] { ok = static_cast<bool>(sp.FinishAcquisition(record.scan_uid, head)); });
  REQUIRE(ok);
  a.manifest_file_bytes = std::filesystem::file_size(sp.MappingPath(record.scan_uid).parent_path() / "manifest.json");
  // A compaction writes the whole record, by design: once, not as a tree, a string and a frame.
  a.compaction = PeakHeapGrowthOf([&] { ok = static_cast<bool>(sp.Compact()); });
  REQUIRE(ok);
  a.snapshot_file_bytes = std::filesystem::file_size(dir.path() / "state.snapshot");
  return a;
}

}  // namespace

TEST_CASE("reading a chunk back and journaling its upload allocate the same for a scan of 8 chunks as for one of 8000",
          "[spool][memory]") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked (run the release build)");
    return;
  }
  const Allocations small = MeasureWith(8);
  const Allocations large = MeasureWith(8000);
  // The counter sees a whole-record copy: it grows with the chunks (so the checks below can fail).
  CHECK(large.whole_record > small.whole_record + 8000ull * 128);
  // The per-chunk paths: at most a few strings more (longer numbers in paths and messages).
  CHECK(large.read_chunk <= small.read_chunk + 256);
  CHECK(large.get_chunk <= small.get_chunk + 256);
  CHECK(large.manifest_upload <= small.manifest_upload + 256);
  CHECK(large.set_uploads <= small.set_uploads + 256);
  // And none of them is anywhere near a record's size.
  CHECK(large.read_chunk < (64u << 10) + (8u << 10));  // the chunk's bytes, its paths and checksums (5.5 KiB)
  CHECK(large.get_chunk < 1024);
  CHECK(large.set_uploads < 8 * 1024);  // the journal record (JSON and its frame), not the scan's
  // A change of the scan's fields and its manifest's head: the same for 8 chunks as for 8000.
  CHECK(large.update_fields <= small.update_fields + 1024);
  CHECK(large.manifest_base <= small.manifest_base + 256);
  // The scan's end holds manifest.json's text (and a pointer a chunk), not a copy of the record
  // and a JSON tree of every chunk besides (~3 times the text, as it was).
  INFO("manifest.json " << large.manifest_file_bytes << " bytes, peak heap growth " << large.finish_acquisition);
  CHECK(large.manifest_file_bytes > 8000u * 256);
  CHECK(large.finish_acquisition < large.manifest_file_bytes * 3 / 2);
  // A compaction holds the snapshot's bytes once (a record of ~0.35 KiB a chunk; 0.5 KiB reserved).
  INFO("snapshot " << large.snapshot_file_bytes << " bytes, peak heap growth " << large.compaction);
  CHECK(large.snapshot_file_bytes > 8000u * 256);
  CHECK(large.compaction < large.snapshot_file_bytes * 3 / 2);
}

TEST_CASE("a delivered scan whose raw data is gone gives its chunk records back, AllScans() stops copying them, and VisitScans() and ScanHeads() never do",
          "[spool][memory]") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked (run the release build)");
    return;
  }
  // A 16-slice chest scan is ~550 chunks; scans stay keep_days (7) after delivery, so a terminal
  // doing 100 a day keeps ~700 records. One of 8,000 chunks here, every upload confirmed.
  test::TempDir dir("spool-memory");
  PosixFileStore files;
  spool::SpoolOptions options{dir.path(), 1ull << 30, 0};
  options.retention = spool::RetentionPolicy::kAfterDelivery;
  options.journal_compact_bytes = 1ull << 30;
  auto s = spool::Spool::Open(options, files);
  REQUIRE(s);
  spool::Spool& sp = **s;
  constexpr std::uint32_t kChunks = 8000;
  spool::ScanRecord record;
  record.scan_uid = MintDicomUid();
  record.study_uid = MintDicomUid();
  record.created_utc = "2026-12-07T07:00:00Z";
  const Sha256Digest hash = Sha256Of(std::vector<std::uint8_t>(16, 1));
  for (std::uint32_t i = 0; i < kChunks; ++i) {
    spool::ChunkRecord c;
    c.chunk = {i, i * 64ull, 64, 1835008, 950000, hash, hash};
    c.upload = {"https://imaging.example.org/files/" + std::string(32, 'a') + std::to_string(i), 950000, true};
    record.chunks.push_back(c);
  }
  REQUIRE(sp.BeginScan(record, 1 << 20));
  REQUIRE(sp.Update(record.scan_uid, [](spool::ScanRecord& r) {
    r.manifest_written = true;
    r.manifest_upload = {"https://imaging.example.org/files/m", 4000, true};
    r.state = spool::ScanState::kDelivered;
  }));
  bool copied = false;
  const std::uint64_t copy_before = BytesAllocatedBy([&] { copied = sp.AllScans().size() == 1; });
  REQUIRE(copied);
  // What the metrics page's counts, the daemon's failed-scan count and the page's lists use: no copy at all.
  std::uint64_t chunks_seen = 0;
  const std::uint64_t visit_bytes = BytesAllocatedBy([&] {
    sp.VisitScans([&](const spool::ScanRecord& r) { chunks_seen += r.chunks.size(); });
  });
  CHECK(chunks_seen == kChunks);
  CHECK(visit_bytes == 0);
  // What a status answer takes (every 500 ms while the operator's page is open): the record
  // without its list, and the list's sums.
  std::vector<spool::ScanHead> heads;
  const std::uint64_t heads_bytes = BytesAllocatedBy([&] { heads = sp.ScanHeads(); });
  REQUIRE(heads.size() == 1);
  CHECK(heads_bytes < 16u << 10);
  CHECK(heads[0].record.chunks.empty());
  CHECK(heads[0].totals.count == kChunks);
  CHECK(heads[0].chunks_uploaded == kChunks);
  CHECK(heads[0].chunk_bytes_to_upload == 0);
  CHECK(sp.Get(record.scan_uid)->chunks.size() == kChunks);  // the record keeps its list
  bool retained = false;
  live = 0;
  counting = true;
  {
    auto report = sp.ApplyRetention(std::chrono::system_clock::now());
    retained = report && report->raw_deleted.size() == 1;
  }
  counting = false;
  const std::int64_t heap_change = live;  // negative: what the record gave back
  REQUIRE(retained);
  const std::uint64_t copy_after = BytesAllocatedBy([&] { copied = sp.AllScans().size() == 1; });
  REQUIRE(copied);
  INFO("AllScans() before " << copy_before << " bytes, after " << copy_after << "; retention changed the heap by "
                            << heap_change << " bytes");
  // ~0.25 KiB a chunk: sizes, the upload URL and both SHA-256, as 32 bytes each (as 64 hex
  // characters on the heap the record took ~0.36 KiB a chunk: 2.89 MB here).
  CHECK(copy_before > kChunks * 200ull);
  CHECK(copy_before < kChunks * 300ull);
  CHECK(copy_after < 16u << 10);
  CHECK(heap_change < -static_cast<std::int64_t>(kChunks) * 200);
  CHECK(spool::TotalsOf(*sp.Get(record.scan_uid)).count == kChunks);
}
