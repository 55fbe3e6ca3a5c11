// Spool: durable records, checksum-guarded reads, and space reservation before arming.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <fstream>
#include <map>

#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/spool/journal.hpp"
#include "agent/spool/simulated_disk.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;

namespace {

spool::ScanRecord NewRecord() {
  spool::ScanRecord r;
  r.scan_uid = MintDicomUid();
  r.study_uid = MintDicomUid();
  r.created_utc = "2026-11-23T10:00:00Z";
  return r;
}

codec::ManifestChunk ChunkFor(std::uint32_t index, const std::vector<std::uint8_t>& bytes) {
  return {index, index * 10ull, 10, bytes.size() * 2, bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
}

}  // namespace

TEST_CASE("a scan's chunks and state survive reopening the spool", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto record = NewRecord();
  const std::vector<std::uint8_t> a(1000, 1), b(2000, 2);
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    REQUIRE((*s)->BeginScan(record, 1 << 20));
    // Out of order, as the codec pool may finish them.
    REQUIRE((*s)->AddChunk(record.scan_uid, ChunkFor(1, b), b));
    REQUIRE((*s)->AddChunk(record.scan_uid, ChunkFor(0, a), a));
    REQUIRE((*s)->Update(record.scan_uid, [](spool::ScanRecord& r) {
      r.chunks[0].upload.url = "https://example.invalid/files/x";
      r.chunks[0].upload.confirmed_offset = 500;
    }));
  }
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto back = (*s)->Get(record.scan_uid);
  REQUIRE(back);
  REQUIRE(back->chunks.size() == 2);
  CHECK(back->chunks[0].chunk.index == 0);
  CHECK(back->chunks[0].upload.confirmed_offset == 500);
  CHECK(back->state == spool::ScanState::kAcquiring);
  CHECK(back->reserved_bytes == (1u << 20));
  auto read = (*s)->ReadChunk(record.scan_uid, 1);
  REQUIRE(read);
  CHECK(*read == b);
  CHECK((*s)->AllScans().size() == 1);
}

TEST_CASE("a chunk file damaged on disk is reported, never returned", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto record = NewRecord();
  REQUIRE((*s)->BeginScan(record, 1 << 20));
  const std::vector<std::uint8_t> a(4096, 7);
  REQUIRE((*s)->AddChunk(record.scan_uid, ChunkFor(0, a), a));
  const auto path = dir.path() / "scans" / record.scan_uid / "chunks" / "000000.ctc";
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x42');
  }
  auto read = (*s)->ReadChunk(record.scan_uid, 0);
  REQUIRE_FALSE(read);
  CHECK(read.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(read.error().message(), Catch::Contains("000000.ctc") && Catch::Contains("will not be uploaded"));
}

TEST_CASE("a scan that does not fit the budget is refused before arming, with the numbers", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 10ull << 20, 0}, files);
  REQUIRE(s);
  REQUIRE((*s)->BeginScan(NewRecord(), 6ull << 20));
  // The first scan's reservation counts against the budget until it is acquired.
  auto refused = (*s)->BeginScan(NewRecord(), 6ull << 20);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().kind() == ErrorKind::kNoSpace);
  CHECK_THAT(refused.error().message(), Catch::Contains("refused before arming") && Catch::Contains("spool.max_bytes"));
}

TEST_CASE("min_free_bytes larger than the disk refuses every scan", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), ~0ull >> 1, ~0ull >> 2}, files);
  REQUIRE(s);
  auto refused = (*s)->BeginScan(NewRecord(), 1);
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error().message(), Catch::Contains("free disk space"));
}

TEST_CASE("finishing acquisition writes the manifest and releases the reservation", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto record = NewRecord();
  REQUIRE((*s)->BeginScan(record, 1 << 20));
  codec::Manifest m;
  m.scan_uid = record.scan_uid;
  m.study_uid = record.study_uid;
  m.views_acquired = 42;
  m.acquisition_end_utc = "2026-12-05T10:19:30Z";
  REQUIRE((*s)->FinishAcquisition(record.scan_uid, m));
  auto back = (*s)->Get(record.scan_uid);
  REQUIRE(back);
  CHECK(back->state == spool::ScanState::kAcquired);
  CHECK(back->reserved_bytes == 0);
  CHECK(back->manifest_written);
  // The record keeps the acquisition end (retention deletes manifest.json; the operator's page
  // times scan end -> report from it), also after a reopen.
  CHECK(back->manifest_base.value("acquisition_end_utc", "") == "2026-12-05T10:19:30Z");
  auto text = (*s)->ReadManifest(record.scan_uid);
  REQUIRE(text);
  auto parsed = codec::ManifestFromJson(nlohmann::json::parse(text->begin(), text->end()));
  REQUIRE(parsed);
  CHECK(parsed->views_acquired == 42);
  s->reset();
  auto reopened = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(reopened);
  auto again = (*reopened)->Get(record.scan_uid);
  REQUIRE(again);
  CHECK(again->manifest_base.value("acquisition_end_utc", "") == "2026-12-05T10:19:30Z");
}

TEST_CASE("names that are not UIDs never become paths", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto r = NewRecord();
  r.scan_uid = "../../etc";
  CHECK_FALSE((*s)->BeginScan(r, 1));
  CHECK_FALSE((*s)->Get("../x"));
  CHECK_FALSE((*s)->StoreResult(NewRecord().scan_uid, "../evil", std::vector<std::uint8_t>{1}));
}

// ---- Journal, recovery, retention, faults ----------------------------------------------------

namespace {

const std::filesystem::path kSim = "/disk/spool";
const auto kT0 = std::chrono::system_clock::time_point(std::chrono::seconds(1795000000));

spool::SpoolOptions SimOptions(spool::RetentionPolicy policy = spool::RetentionPolicy::kAfterUpload,
                               std::chrono::system_clock::time_point* now = nullptr) {
  spool::SpoolOptions o{kSim, 1ull << 30, 0};
  o.retention = policy;
  o.keep_days = 7;
  o.clock = [now] { return now ? *now : kT0; };
  return o;
}

std::uint64_t FileSize(const std::filesystem::path& p) { return std::filesystem::file_size(p); }

// A scan with `chunks` chunks; when `confirm` is set, the cloud confirmed all and the manifest.
spool::ScanRecord AddScan(spool::Spool& s, int chunks, bool confirm) {
  auto record = NewRecord();
  REQUIRE(s.BeginScan(record, 1 << 20));
  for (int i = 0; i < chunks; ++i) {
    const std::vector<std::uint8_t> bytes(500 + static_cast<std::size_t>(i), static_cast<std::uint8_t>(i + 1));
    REQUIRE(s.AddChunk(record.scan_uid, ChunkFor(static_cast<std::uint32_t>(i), bytes), bytes));
  }
  codec::Manifest m;
  m.scan_uid = record.scan_uid;
  m.study_uid = record.study_uid;
  REQUIRE(s.FinishAcquisition(record.scan_uid, m));
  if (confirm) {
    REQUIRE(s.Update(record.scan_uid, [](spool::ScanRecord& r) {
      for (auto& c : r.chunks) c.upload = {"https://cloud.invalid/files/x", c.chunk.compressed_bytes, true};
      r.manifest_upload = {"https://cloud.invalid/files/m", 10, true};
      r.state = spool::ScanState::kUploaded;
    }));
  }
  return record;
}

}  // namespace

TEST_CASE("a confirmed-offset update appends a small journal record, not the whole scan", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto record = AddScan(**s, 40, false);
  const auto journal = dir.path() / "journal.log";
  const auto before = FileSize(journal);
  REQUIRE((*s)->Update(record.scan_uid, [](spool::ScanRecord& r) {
    r.chunks[17].upload = {"https://cloud.invalid/files/0123456789abcdef", 4 << 20, false};
  }));
  const auto grew = FileSize(journal) - before;
  CHECK(grew > 0);
  CHECK(grew < 250);  // a 40-chunk scan record is several KiB
  CHECK(spool::ToJson(*(*s)->Get(record.scan_uid)).dump().size() > 8 * grew);
}

TEST_CASE("UpdateFields changes a scan's fields in a small record, keeps its chunks, confirms it and refuses a chunk change",
          "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    auto record = AddScan(**s, 40, false);
    // The manifest lists the record's chunks, by index, though the caller gave none.
    auto manifest = codec::ManifestFromJson(nlohmann::json::parse(test::ReadText(
        (*s)->MappingPath(record.scan_uid).parent_path() / "manifest.json")));
    REQUIRE(manifest);
    REQUIRE(manifest->chunks.size() == 40);
    for (std::uint32_t i = 0; i < 40; ++i) CHECK(manifest->chunks[i].index == i);
    CHECK(manifest->chunks[39].compressed_bytes == (*s)->GetChunk(record.scan_uid, 39)->chunk.compressed_bytes);

    const auto journal = dir.path() / "journal.log";
    const auto before = FileSize(journal);
    REQUIRE((*s)->UpdateFields(record.scan_uid, [](spool::ScanRecord& r) {
      CHECK(r.chunks.empty());  // not copied
      r.acknowledged_utc = "2026-12-06T12:00:00Z";
    }));
    CHECK(FileSize(journal) - before < 250);  // a "set" of one field, not the whole record
    auto changed = (*s)->Get(record.scan_uid);
    REQUIRE(changed);
    CHECK(changed->acknowledged_utc == "2026-12-06T12:00:00Z");
    CHECK(changed->chunks.size() == 40);

    const auto refused = (*s)->UpdateFields(record.scan_uid, [](spool::ScanRecord& r) { r.chunks.emplace_back(); });
    REQUIRE_FALSE(refused);
    CHECK_THAT(refused.error().message(), Catch::Contains("use Update"));
    CHECK((*s)->Get(record.scan_uid)->chunks.size() == 40);

    // Every chunk confirmed; the manifest's confirmation through UpdateFields confirms the scan.
    std::vector<spool::Spool::UploadChange> chunks_done;
    for (std::uint32_t i = 0; i < 40; ++i) chunks_done.push_back({i, {"https://cloud.invalid/files/c", 1, true}});
    REQUIRE((*s)->SetUploads(record.scan_uid, chunks_done));
    CHECK((*s)->Get(record.scan_uid)->confirmed_unix_s == 0);
    REQUIRE((*s)->UpdateFields(record.scan_uid, [](spool::ScanRecord& r) {
      r.manifest_upload = {"https://cloud.invalid/files/m", 10, true};
    }));
    CHECK((*s)->Get(record.scan_uid)->confirmed_unix_s > 0);
  }
  // All of it journaled: a reopened spool reads the same.
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  const auto scans = (*s)->AllScans();
  REQUIRE(scans.size() == 1);
  CHECK(scans[0].acknowledged_utc == "2026-12-06T12:00:00Z");
  CHECK(scans[0].chunks.size() == 40);
  CHECK(scans[0].manifest_upload.complete);
  CHECK(scans[0].confirmed_unix_s > 0);
}

TEST_CASE("SetUploads journals upload states like Update, survives reopening, and confirms the scan with its last upload",
          "[spool]") {
  SimulatedDisk disk;
  auto now = kT0;
  std::string uid;
  {
    auto s = spool::Spool::Open(SimOptions(spool::RetentionPolicy::kKeepDays, &now), disk);
    REQUIRE(s);
    const auto record = AddScan(**s, 3, false);
    uid = record.scan_uid;
    using Change = spool::Spool::UploadChange;
    // The last change of an upload wins, as if applied in order.
    REQUIRE((*s)->SetUploads(uid, {Change{1, {"https://cloud.invalid/files/1", 100, false}},
                                   Change{1, {"https://cloud.invalid/files/1", 0, false}},
                                   Change{-1, {"https://cloud.invalid/files/m", 0, false}}}));
    auto back = (*s)->Get(uid);
    REQUIRE(back);
    CHECK(back->chunks[1].upload.url == "https://cloud.invalid/files/1");
    CHECK(back->chunks[1].upload.confirmed_offset == 0);
    CHECK(back->manifest_upload.url == "https://cloud.invalid/files/m");
    // A chunk the scan does not have: refused, and nothing of the batch is written.
    const auto refused = (*s)->SetUploads(uid, {Change{0, {"https://cloud.invalid/files/0", 5, false}},
                                                Change{7, {"https://cloud.invalid/files/7", 0, false}}});
    REQUIRE_FALSE(refused);
    CHECK(refused.error().kind() == ErrorKind::kNotFound);
    CHECK((*s)->GetChunk(uid, 0)->upload.url.empty());
    // Every upload complete but one: not confirmed yet; the last one confirms it in the same record.
    for (std::int64_t i = 0; i < 3; ++i) {
      REQUIRE((*s)->SetUploads(uid, {Change{i, {"https://cloud.invalid/files/c", 500 + static_cast<std::uint64_t>(i), true}}}));
    }
    CHECK((*s)->Get(uid)->confirmed_unix_s == 0);
    now = kT0 + std::chrono::seconds(90);
    REQUIRE((*s)->SetUploads(uid, {Change{-1, {"https://cloud.invalid/files/m", 10, true}}}));
  }
  auto s = spool::Spool::Open(SimOptions(spool::RetentionPolicy::kKeepDays, &now), disk);
  REQUIRE(s);
  auto back = (*s)->Get(uid);
  REQUIRE(back);
  for (const auto& c : back->chunks) {
    CHECK(c.upload.complete);
    CHECK(c.upload.confirmed_offset == c.chunk.compressed_bytes);
  }
  CHECK(back->manifest_upload.complete);
  CHECK(back->confirmed_unix_s ==
        std::chrono::duration_cast<std::chrono::seconds>((kT0 + std::chrono::seconds(90)).time_since_epoch()).count());
}

TEST_CASE("the journal stays bounded: compaction writes a snapshot and starts a new journal", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  spool::SpoolOptions o{dir.path(), 1ull << 30, 0};
  o.journal_compact_bytes = 4096;
  auto s = spool::Spool::Open(o, files);
  REQUIRE(s);
  auto record = AddScan(**s, 2, false);
  std::uint64_t largest = 0;
  for (std::uint64_t off = 1; off <= 500; ++off) {
    REQUIRE((*s)->Update(record.scan_uid, [&](spool::ScanRecord& r) { r.chunks[0].upload = {"u", off, false}; }));
    largest = std::max<std::uint64_t>(largest, FileSize(dir.path() / "journal.log"));
  }
  CHECK(largest < 4096 + 300);
  s->reset();
  auto again = spool::Spool::Open(o, files);
  REQUIRE(again);
  CHECK((*again)->Get(record.scan_uid)->chunks[0].upload.confirmed_offset == 500);
}

// A spool in `dir` holding one finished scan of two chunks whose chunk 1 was uploaded to "u1",
// its confirmed offset journaled once for each of `offsets` in turn; closed again.
spool::ScanRecord ScanWithChunkOneUploadedTo(const std::filesystem::path& dir, PosixFileStore& files,
                                             std::initializer_list<std::uint64_t> offsets) {
  auto s = spool::Spool::Open({dir, 1ull << 30, 0}, files);
  REQUIRE(s);
  const spool::ScanRecord record = AddScan(**s, 2, false);
  for (const std::uint64_t offset : offsets) {
    REQUIRE((*s)->Update(record.scan_uid, [&](spool::ScanRecord& r) { r.chunks[1].upload = {"u1", offset, false}; }));
  }
  return record;
}

TEST_CASE("a torn journal tail is cut at start-up and the records before it are intact", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  const spool::ScanRecord record = ScanWithChunkOneUploadedTo(dir.path(), files, {77, 99});
  // The last record loses its end (a write cut by power loss), then garbage follows.
  const auto journal = dir.path() / "journal.log";
  const auto size = FileSize(journal);
  std::filesystem::resize_file(journal, size - 5);
  {
    std::ofstream f(journal, std::ios::binary | std::ios::app);
    f << "\x13\x37garbage";
  }
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  CHECK((*s)->recovery().torn_tail_bytes > 0);
  auto back = (*s)->Get(record.scan_uid);
  REQUIRE(back);
  CHECK(back->chunks[1].upload.confirmed_offset == 77);  // the torn record is gone, never misread
  CHECK(back->manifest_written);
  CHECK((*s)->recovery().damaged.empty());
}

TEST_CASE("a record with a bad checksum ends the journal, and nothing after it is applied", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  spool::ScanRecord record;
  std::uint64_t size_before_last = 0;
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    record = AddScan(**s, 1, false);
    size_before_last = FileSize(dir.path() / "journal.log");
    REQUIRE((*s)->Update(record.scan_uid, [](spool::ScanRecord& r) { r.chunks[0].upload = {"u", 5, false}; }));
  }
  {
    std::fstream f(dir.path() / "journal.log", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size_before_last + 12));
    f.put('#');
  }
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  CHECK((*s)->Get(record.scan_uid)->chunks[0].upload.url.empty());
  CHECK((*s)->recovery().torn_tail_bytes > 0);
}

TEST_CASE("a journal operation whose count is not an integer that fits is skipped, never cast", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  const spool::ScanRecord record = ScanWithChunkOneUploadedTo(dir.path(), files, {77});
  // Records with a good CRC that this code never writes: an offset beyond uint64_t (a cast of
  // it is undefined behaviour), a fraction, a negative one, and a chunk index past uint32_t
  // (2^32 + 1 would wrap to chunk 1).
  for (const nlohmann::json& op : {
           nlohmann::json{{"op", "up"}, {"uid", record.scan_uid}, {"i", 1}, {"url", "u1"}, {"off", 1e300}, {"done", false}},
           nlohmann::json{{"op", "up"}, {"uid", record.scan_uid}, {"i", 1}, {"url", "u1"}, {"off", 88.5}, {"done", false}},
           nlohmann::json{{"op", "up"}, {"uid", record.scan_uid}, {"i", 1}, {"url", "u1"}, {"off", -5}, {"done", false}},
           nlohmann::json{{"op", "up"}, {"uid", record.scan_uid}, {"i", 4294967297LL}, {"url", "u2"}, {"off", 99}, {"done", true}},
       }) {
    const auto framed = spool::journal::Frame(nlohmann::json{{"ops", nlohmann::json::array({op})}});
    std::ofstream(dir.path() / "journal.log", std::ios::binary | std::ios::app)
        .write(reinterpret_cast<const char*>(framed.data()), static_cast<std::streamsize>(framed.size()));
  }
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  const auto back = (*s)->Get(record.scan_uid);
  REQUIRE(back);
  CHECK(back->chunks[1].upload.url == "u1");
  CHECK(back->chunks[1].upload.confirmed_offset == 77);
  CHECK_FALSE(back->chunks[1].upload.complete);
  CHECK(back->chunks[0].upload.url.empty());
}

TEST_CASE("a snapshot whose header lacks its generation is reported as damage, not thrown", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    AddScan(**s, 1, false);
  }
  const auto framed = spool::journal::Frame(nlohmann::json{{"type", "snapshot"}, {"format", 2}});
  std::ofstream(dir.path() / "state.snapshot", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(framed.data()), static_cast<std::streamsize>(framed.size()));
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE_FALSE(s);
  CHECK(s.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(s.error().message(), Catch::Contains("state.snapshot") && Catch::Contains("generation"));
}

TEST_CASE("recovery removes temp files and chunk files no record refers to", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  spool::ScanRecord record;
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    record = AddScan(**s, 1, false);
  }
  const auto scan = dir.path() / "scans" / record.scan_uid;
  const auto stray_chunk = scan / "chunks" / "000007.ctc";
  const auto tmp = scan / "chunks" / "000001.ctc.tmp";
  const auto stray_scan = dir.path() / "scans" / "1.2.3.4.5";
  std::filesystem::create_directories(stray_scan / "chunks");
  for (const auto& p : {stray_chunk, tmp, stray_scan / "chunks" / "000000.ctc"}) std::ofstream(p) << "never accepted";
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  CHECK((*s)->recovery().orphans_removed == 3);
  CHECK_FALSE(std::filesystem::exists(stray_chunk));
  CHECK_FALSE(std::filesystem::exists(tmp));
  CHECK_FALSE(std::filesystem::exists(stray_scan));
  CHECK(std::filesystem::exists(scan / "chunks" / "000000.ctc"));
  CHECK((*s)->ReadChunk(record.scan_uid, 0));
}

TEST_CASE("a chunk damaged while the agent was down flags its scan at start-up, other scans recover", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  spool::ScanRecord bad, good;
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    bad = AddScan(**s, 3, false);
    good = AddScan(**s, 3, false);
  }
  std::filesystem::remove(dir.path() / "scans" / bad.scan_uid / "chunks" / "000002.ctc");
  {
    std::fstream f(dir.path() / "scans" / bad.scan_uid / "chunks" / "000001.ctc",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x01');
  }
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  REQUIRE((*s)->recovery().damaged.size() == 2);
  CHECK_THAT((*s)->recovery().damaged[0], Catch::Contains(bad.scan_uid) && Catch::Contains("chunk 1") &&
                                              Catch::Contains("expected SHA-256") && Catch::Contains("found"));
  auto b = (*s)->Get(bad.scan_uid);
  CHECK(b->state == spool::ScanState::kFailed);
  CHECK_THAT(b->failure_reason, Catch::Contains("chunk 1"));
  CHECK(b->chunks[1].damaged);
  CHECK(b->chunks[2].damaged);
  CHECK_FALSE(b->chunks[0].damaged);
  CHECK_FALSE((*s)->ReadChunk(bad.scan_uid, 1));
  auto g = (*s)->Get(good.scan_uid);
  CHECK(g->state == spool::ScanState::kAcquired);
  CHECK((*s)->ReadChunk(good.scan_uid, 2));
  // The flag is journaled: it survives another start.
  s->reset();
  auto again = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(again);
  CHECK((*again)->Get(bad.scan_uid)->state == spool::ScanState::kFailed);
}

TEST_CASE("EIO reading a chunk: a clear error, the scan flagged, other scans fine", "[spool]") {
  SimulatedDisk disk;
  auto s = spool::Spool::Open(SimOptions(), disk);
  REQUIRE(s);
  auto bad = AddScan(**s, 2, false);
  auto good = AddScan(**s, 2, false);
  disk.FailReadsContaining(bad.scan_uid + "/chunks/000001");
  auto read = (*s)->ReadChunk(bad.scan_uid, 1);
  REQUIRE_FALSE(read);
  CHECK(read.error().kind() == ErrorKind::kIo);
  CHECK_THAT(read.error().message(), Catch::Contains("000001.ctc") && Catch::Contains("Input/output error") &&
                                         Catch::Contains("will not be uploaded"));
  CHECK((*s)->Get(bad.scan_uid)->state == spool::ScanState::kFailed);
  CHECK((*s)->Get(bad.scan_uid)->chunks[1].damaged);
  CHECK((*s)->ReadChunk(good.scan_uid, 0));
  CHECK((*s)->ReadChunk(good.scan_uid, 1));
  CHECK((*s)->Get(good.scan_uid)->state == spool::ScanState::kAcquired);
}

TEST_CASE("ENOSPC writing a chunk: kNoSpace naming the spool, nothing half-recorded", "[spool]") {
  SimulatedDisk disk;
  auto s = spool::Spool::Open(SimOptions(), disk);
  REQUIRE(s);
  auto record = AddScan(**s, 1, false);
  const auto before = spool::ToJson(*(*s)->Get(record.scan_uid)).dump();
  disk.SetNoSpace(true);
  const std::vector<std::uint8_t> bytes(4000, 9);
  auto st = (*s)->AddChunk(record.scan_uid, ChunkFor(1, bytes), bytes);
  REQUIRE_FALSE(st);
  CHECK(st.error().kind() == ErrorKind::kNoSpace);
  CHECK_THAT(st.error().message(), Catch::Contains(kSim.string()) && Catch::Contains("chunk 1"));
  // A journal write that runs out of space part-way is cut back, not left as garbage.
  auto journaled = (*s)->Update(record.scan_uid, [](spool::ScanRecord& r) { r.chunks[0].upload = {"u", 1, false}; });
  REQUIRE_FALSE(journaled);
  CHECK(journaled.error().kind() == ErrorKind::kNoSpace);
  CHECK(spool::ToJson(*(*s)->Get(record.scan_uid)).dump() == before);
  disk.SetNoSpace(false);
  for (const auto& f : disk.AllFiles(kSim)) CHECK(f.find(".tmp") == std::string::npos);
  REQUIRE((*s)->AddChunk(record.scan_uid, ChunkFor(1, bytes), bytes));
  s->reset();
  auto again = spool::Spool::Open(SimOptions(), disk);
  REQUIRE(again);
  CHECK((*again)->recovery().torn_tail_bytes == 0);
  auto back = (*again)->Get(record.scan_uid);
  REQUIRE(back->chunks.size() == 2);
  CHECK(back->chunks[0].upload.url.empty());
  CHECK((*again)->ReadChunk(record.scan_uid, 1));
}

TEST_CASE("retention after_upload deletes only what the cloud confirmed", "[spool]") {
  SimulatedDisk disk;
  auto s = spool::Spool::Open(SimOptions(spool::RetentionPolicy::kAfterUpload), disk);
  REQUIRE(s);
  auto confirmed = AddScan(**s, 2, true);
  auto pending = AddScan(**s, 2, false);
  auto failed = AddScan(**s, 1, true);
  REQUIRE((*s)->Update(failed.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kFailed; }));
  auto report = (*s)->ApplyRetention(kT0);
  REQUIRE(report);
  REQUIRE(report->raw_deleted == std::vector<std::string>{confirmed.scan_uid});
  CHECK(report->scans_removed.empty());
  CHECK_FALSE(disk.Exists(kSim / "scans" / confirmed.scan_uid / "chunks" / "000000.ctc"));
  CHECK_FALSE(disk.Exists(kSim / "scans" / confirmed.scan_uid / "manifest.json"));
  CHECK((*s)->Get(confirmed.scan_uid)->raw_deleted);
  CHECK((*s)->ReadChunk(pending.scan_uid, 1));
  CHECK((*s)->ReadChunk(failed.scan_uid, 0));
  // Once delivered, the record and the local images stay keep_days (7), then the whole scan goes.
  REQUIRE((*s)->Update(confirmed.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }));
  report = (*s)->ApplyRetention(kT0 + std::chrono::hours(24 * 6));
  REQUIRE(report);
  CHECK(report->scans_removed.empty());
  CHECK((*s)->Get(confirmed.scan_uid));
  report = (*s)->ApplyRetention(kT0 + std::chrono::hours(24 * 7));
  REQUIRE(report);
  CHECK(report->scans_removed == std::vector<std::string>{confirmed.scan_uid});
  CHECK_FALSE((*s)->Get(confirmed.scan_uid));
  CHECK_FALSE(disk.Exists(kSim / "scans" / confirmed.scan_uid));
}

TEST_CASE("retention keeps a scan's mapping record while its results may come, and deletes it with the scan",
          "[spool][privacy]") {
  // The mapping from pseudonyms back to the patient (docs/privacy.md) lives in the scan's
  // directory: raw-data retention must keep it (the results still to come are re-identified from
  // it), and removing the delivered scan must remove it (nothing of the patient stays behind).
  test::TempDir dir("spool-retention-mapping");
  PosixFileStore files;
  auto now = kT0;
  spool::SpoolOptions options{dir.path(), 1ull << 30, 0};
  options.retention = spool::RetentionPolicy::kAfterUpload;
  options.keep_days = 7;
  options.clock = [&now] { return now; };
  auto s = spool::Spool::Open(options, files);
  REQUIRE(s);
  auto WriteMappingFor = [&](const std::string& uid) {
    const std::string text = "{\"version\": 1, \"scan_uid\": \"" + uid + "\"}";
    REQUIRE(files.WriteDurablyOwnerOnly((*s)->MappingPath(uid),
                                        {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}));
  };
  auto done = AddScan(**s, 2, true);
  auto pending = AddScan(**s, 2, false);
  WriteMappingFor(done.scan_uid);
  WriteMappingFor(pending.scan_uid);

  // Uploaded: the raw data goes, the mapping stays (the results are not back yet); also across
  // a restart, whose recovery must not take it for an orphan.
  auto report = (*s)->ApplyRetention(now);
  REQUIRE(report);
  REQUIRE(report->raw_deleted == std::vector<std::string>{done.scan_uid});
  CHECK_FALSE(std::filesystem::exists(dir.path() / "scans" / done.scan_uid / "chunks"));
  CHECK(std::filesystem::exists((*s)->MappingPath(done.scan_uid)));
  s->reset();
  s = spool::Spool::Open(options, files);
  REQUIRE(s);
  CHECK(std::filesystem::exists((*s)->MappingPath(done.scan_uid)));
  CHECK(std::filesystem::exists((*s)->MappingPath(pending.scan_uid)));

  // Delivered, and keep_days later: the whole scan goes, its mapping with it; the pending scan's stays.
  REQUIRE((*s)->Update(done.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }));
  now = kT0 + std::chrono::hours(24 * 7);
  report = (*s)->ApplyRetention(now);
  REQUIRE(report);
  CHECK(report->scans_removed == std::vector<std::string>{done.scan_uid});
  CHECK_FALSE(std::filesystem::exists((*s)->MappingPath(done.scan_uid)));
  CHECK_FALSE(std::filesystem::exists(dir.path() / "scans" / done.scan_uid));
  CHECK(std::filesystem::exists((*s)->MappingPath(pending.scan_uid)));
  s->reset();
  s = spool::Spool::Open(options, files);
  REQUIRE(s);
  CHECK_FALSE((*s)->Get(done.scan_uid));
  CHECK(std::filesystem::exists((*s)->MappingPath(pending.scan_uid)));
}

TEST_CASE("retention after_results and after_delivery wait for the results", "[spool]") {
  SimulatedDisk disk;
  for (auto policy : {spool::RetentionPolicy::kAfterResults, spool::RetentionPolicy::kAfterDelivery}) {
    spool::SpoolOptions o = SimOptions(policy);
    o.directory = kSim / spool::ToString(policy);
    auto s = spool::Spool::Open(o, disk);
    REQUIRE(s);
    auto scan = AddScan(**s, 1, true);
    CHECK((*s)->ApplyRetention(kT0)->raw_deleted.empty());
    REQUIRE((*s)->Update(scan.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kResultsReceived; }));
    CHECK((*s)->ApplyRetention(kT0)->raw_deleted.size() == (policy == spool::RetentionPolicy::kAfterResults ? 1u : 0u));
    REQUIRE((*s)->Update(scan.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }));
    auto delivered = (*s)->ApplyRetention(kT0);
    REQUIRE(delivered);
    CHECK(delivered->raw_deleted.size() == (policy == spool::RetentionPolicy::kAfterDelivery ? 1u : 0u));
    CHECK(delivered->scans_removed.empty());  // the images stay keep_days
    CHECK((*s)->ApplyRetention(kT0 + std::chrono::hours(24 * 7))->scans_removed.size() == 1);
  }
}

TEST_CASE("a delivered scan whose raw data is gone keeps its chunk totals, not its list, across restarts and a compaction",
          "[spool]") {
  SimulatedDisk disk;
  const spool::SpoolOptions o = SimOptions(spool::RetentionPolicy::kAfterDelivery);
  std::string done_uid, pending_uid;
  spool::ChunkTotals expected;
  std::size_t record_text_before = 0;
  {
    auto s = spool::Spool::Open(o, disk);
    REQUIRE(s);
    done_uid = AddScan(**s, 40, true).scan_uid;
    pending_uid = AddScan(**s, 3, false).scan_uid;
    expected = spool::TotalsOf(*(*s)->Get(done_uid));
    REQUIRE(expected.count == 40);
    CHECK(expected.compressed_bytes == 40 * 500 + 39 * 40 / 2);  // chunk i holds 500 + i bytes
    record_text_before = spool::ToJson(*(*s)->Get(done_uid)).dump().size();
    REQUIRE((*s)->Update(done_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kResultsReceived; }));
    CHECK((*s)->Get(done_uid)->chunks.size() == 40);  // kept until delivered and its raw data gone
    REQUIRE((*s)->Update(done_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }));
    CHECK((*s)->Get(done_uid)->chunks.size() == 40);
    REQUIRE((*s)->ApplyRetention(kT0)->raw_deleted == std::vector<std::string>{done_uid});
  }
  const auto check = [&](spool::Spool& s, const char* when) {
    INFO(when);
    const auto done = s.Get(done_uid);
    REQUIRE(done);
    CHECK(done->chunks.empty());
    CHECK(done->raw_deleted);
    const spool::ChunkTotals totals = spool::TotalsOf(*done);
    CHECK(totals.count == expected.count);
    CHECK(totals.views == expected.views);
    CHECK(totals.raw_bytes == expected.raw_bytes);
    CHECK(totals.compressed_bytes == expected.compressed_bytes);
    // What every snapshot and every AllScans() copy carries of it: a few hundred bytes, not 40 chunks.
    CHECK(spool::ToJson(*done).dump().size() * 4 < record_text_before);
    const auto pending = s.Get(pending_uid);
    REQUIRE(pending);
    CHECK(pending->chunks.size() == 3);  // a scan still being uploaded keeps its list
    CHECK(pending->dropped_chunks.count == 0);
  };
  {
    auto s = spool::Spool::Open(o, disk);  // the journal replayed
    REQUIRE(s);
    check(**s, "after a restart (journal)");
    // A later change of the delivered scan (a person confirming its finding) keeps it so.
    REQUIRE((*s)->UpdateFields(done_uid, [](spool::ScanRecord& r) { r.high_risk_confirmed_utc = "2026-12-07T10:00:00Z"; }));
    REQUIRE((*s)->Update(done_uid, [](spool::ScanRecord& r) { r.acknowledged_utc = "2026-12-07T10:01:00Z"; }));
    check(**s, "after two more changes");
    REQUIRE((*s)->Compact());
  }
  {
    auto s = spool::Spool::Open(o, disk);  // the snapshot read back
    REQUIRE(s);
    check(**s, "after a compaction and a restart (snapshot)");
    CHECK((*s)->Get(done_uid)->high_risk_confirmed_utc == "2026-12-07T10:00:00Z");
    // keep_days later the record goes as before.
    CHECK((*s)->ApplyRetention(kT0 + std::chrono::hours(24 * 7))->scans_removed == std::vector<std::string>{done_uid});
    CHECK_FALSE((*s)->Get(done_uid));
  }
}

TEST_CASE("ScanHeads gives every scan without its chunk list, with the list's sums, oldest first", "[spool]") {
  SimulatedDisk disk;
  auto s = spool::Spool::Open(SimOptions(), disk);
  REQUIRE(s);
  auto first = NewRecord();
  first.created_utc = "2026-12-07T09:00:00Z";
  REQUIRE((*s)->BeginScan(first, 1 << 20));
  auto second = AddScan(**s, 6, false);  // created 2026-11-23: the older one
  // Chunk 1 confirmed, chunk 4 half confirmed (chunk i holds 500 + i bytes).
  REQUIRE((*s)->Update(second.scan_uid, [](spool::ScanRecord& r) {
    r.chunks[1].upload = {"https://cloud.invalid/files/1", r.chunks[1].chunk.compressed_bytes, true};
    r.chunks[4].upload = {"https://cloud.invalid/files/4", 250, false};
  }));
  const auto heads = (*s)->ScanHeads();
  REQUIRE(heads.size() == 2);
  CHECK(heads[0].record.scan_uid == second.scan_uid);
  CHECK(heads[1].record.scan_uid == first.scan_uid);
  const spool::ScanHead& h = heads[0];
  CHECK(h.record.chunks.empty());
  CHECK(h.record.study_uid == second.study_uid);
  CHECK(h.totals.count == 6);
  CHECK(h.totals.compressed_bytes == 6 * 500 + 15);
  CHECK(h.totals.views == 60);
  CHECK(h.chunks_uploaded == 1);
  CHECK(h.chunk_bytes_to_upload == 6 * 500 + 15 - 501 - 250);
  CHECK(heads[1].totals.count == 0);
  CHECK((*s)->Get(second.scan_uid)->chunks.size() == 6);  // the spool's record keeps its list
}

TEST_CASE("keep_days: a clock jumping back deletes nothing early, a jump forward deletes only confirmed data",
          "[spool]") {
  SimulatedDisk disk;
  auto now = kT0;
  auto s = spool::Spool::Open(SimOptions(spool::RetentionPolicy::kKeepDays, &now), disk);
  REQUIRE(s);
  auto confirmed = AddScan(**s, 2, true);  // confirmed at kT0 by the spool's clock
  auto pending = AddScan(**s, 2, false);
  CHECK((*s)->Get(confirmed.scan_uid)->confirmed_unix_s == std::chrono::duration_cast<std::chrono::seconds>(kT0.time_since_epoch()).count());
  // Six days later: not yet.
  CHECK((*s)->ApplyRetention(kT0 + std::chrono::hours(24 * 6))->raw_deleted.empty());
  // The wall clock jumps back a year: still nothing (the age is negative, not huge).
  CHECK((*s)->ApplyRetention(kT0 - std::chrono::hours(24 * 365))->raw_deleted.empty());
  CHECK((*s)->ReadChunk(confirmed.scan_uid, 0));
  // The clock jumps forward ten years: the confirmed scan's raw data may go, the pending scan never.
  auto report = (*s)->ApplyRetention(kT0 + std::chrono::hours(24 * 3650));
  REQUIRE(report);
  CHECK(report->raw_deleted == std::vector<std::string>{confirmed.scan_uid});
  CHECK((*s)->ReadChunk(pending.scan_uid, 0));
  CHECK((*s)->ReadChunk(pending.scan_uid, 1));
  CHECK_FALSE((*s)->Get(pending.scan_uid)->raw_deleted);
}

TEST_CASE("a spool written by the previous version (format 1) is refused with a clear message", "[spool]") {
  test::TempDir dir("spool");
  std::ofstream(dir.path() / "spool.json") << R"({"format": 1, "created_by": "ctagent"})";
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE_FALSE(s);
  CHECK(s.error().kind() == ErrorKind::kUnsupported);
  CHECK_THAT(s.error().message(), Catch::Contains("format 1") && Catch::Contains("spool.directory"));
}

namespace {

// Every file under `dir` with its bytes, to prove that an open changed nothing.
std::map<std::string, std::string> Contents(const std::filesystem::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    out[std::filesystem::relative(e.path(), dir).string()] = test::ReadText(e.path());
  }
  return out;
}

}  // namespace

TEST_CASE("one process at a time writes a spool, a second writer is refused and told who holds it",
          "[spool][lock]") {
  test::TempDir dir("spool-lock");
  PosixFileStore files;
  auto writer = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(writer);
  auto second = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(!second);
  CHECK(second.error().kind() == ErrorKind::kBusy);
  CHECK_THAT(second.error().message(), Catch::Contains("in use by another ctagent process (pid " +
                                                       std::to_string(::getpid()) + ":") &&
                                           Catch::Contains("only one process writes a spool at a time"));
  // The lock goes with its holder.
  writer->reset();
  CHECK(spool::Spool::Open({dir.path(), 1ull << 30, 0}, files));
}

TEST_CASE("a read-only open beside a writer sees its scans and changes nothing, not even its unjournaled files",
          "[spool][lock]") {
  test::TempDir dir("spool-ro");
  PosixFileStore files;
  auto writer = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(writer);
  auto record = NewRecord();
  const std::vector<std::uint8_t> a(1000, 1), b(2000, 2);
  REQUIRE((*writer)->BeginScan(record, 1 << 20));
  REQUIRE((*writer)->AddChunk(record.scan_uid, ChunkFor(0, a), a));
  // Written but not yet synced and journaled (a batch in progress): to a writer's recovery
  // this file is an orphan, which it would remove.
  REQUIRE((*writer)->AddChunkDeferred(record.scan_uid, ChunkFor(1, b), b));
  const auto before = Contents(dir.path());
  REQUIRE(before.count("scans/" + record.scan_uid + "/chunks/000001.ctc") == 1);

  spool::SpoolOptions options{dir.path(), 1ull << 30, 0};
  options.read_only = true;
  auto reader = spool::Spool::Open(options, files);
  REQUIRE(reader);
  auto seen = (*reader)->Get(record.scan_uid);
  REQUIRE(seen);
  CHECK(seen->chunks.size() == 1);  // the journaled chunk; the pending one is not accepted yet
  CHECK((*reader)->AllScans().size() == 1);
  // Nothing on disk changed: no orphan removed, no torn tail cut, no compaction.
  CHECK(Contents(dir.path()) == before);
  // And it refuses every change.
  CHECK(!(*reader)->Update(record.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kFailed; }));
  CHECK(!(*reader)->BeginScan(NewRecord(), 1));
  CHECK(!(*reader)->AddChunk(record.scan_uid, ChunkFor(2, a), a));
  CHECK(!(*reader)->ApplyRetention(std::chrono::system_clock::now()));
  CHECK(Contents(dir.path()) == before);

  // The writer carries on: its pending chunk is accepted once synced, as if nobody had looked.
  const auto batch = (*writer)->SyncPending();
  REQUIRE(batch.status);
  auto after = (*writer)->Get(record.scan_uid);
  REQUIRE(after);
  CHECK(after->chunks.size() == 2);
  auto bytes = (*writer)->ReadChunk(record.scan_uid, 1);
  REQUIRE(bytes);
  CHECK(*bytes == b);
}

TEST_CASE("a read-only open of a spool that does not exist yet is empty and creates nothing", "[spool][lock]") {
  test::TempDir dir("spool-ro-new");
  PosixFileStore files;
  spool::SpoolOptions options{dir.path() / "not-yet", 1ull << 30, 0};
  options.read_only = true;
  auto reader = spool::Spool::Open(options, files);
  REQUIRE(reader);
  CHECK((*reader)->AllScans().empty());
  CHECK(!std::filesystem::exists(dir.path() / "not-yet"));
}

TEST_CASE("a failed scan's acknowledgement is kept with its record across reopening and compaction", "[spool]") {
  test::TempDir dir("spool-ack");
  PosixFileStore files;
  auto failed = NewRecord();
  auto other = NewRecord();
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    REQUIRE((*s)->BeginScan(failed, 1 << 20));
    REQUIRE((*s)->BeginScan(other, 1 << 20));
    REQUIRE((*s)->Update(failed.scan_uid, [](spool::ScanRecord& r) {
      r.state = spool::ScanState::kFailed;
      r.failure_reason = "spool file damaged: chunk 0";
    }));
    auto before = (*s)->Get(failed.scan_uid);
    REQUIRE(before);
    CHECK(before->acknowledged_utc.empty());
    REQUIRE((*s)->Update(failed.scan_uid, [](spool::ScanRecord& r) { r.acknowledged_utc = "2026-11-23T10:05:00Z"; }));
  }
  {  // from the journal
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    auto back = (*s)->Get(failed.scan_uid);
    REQUIRE(back);
    CHECK(back->state == spool::ScanState::kFailed);
    CHECK(back->acknowledged_utc == "2026-11-23T10:05:00Z");
    auto untouched = (*s)->Get(other.scan_uid);
    REQUIRE(untouched);
    CHECK(untouched->acknowledged_utc.empty());
    REQUIRE((*s)->Compact());
  }
  // From the snapshot compaction wrote (the journal after it is empty).
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto back = (*s)->Get(failed.scan_uid);
  REQUIRE(back);
  CHECK(back->acknowledged_utc == "2026-11-23T10:05:00Z");
  // The record's JSON carries it, and a record without the field (written before it existed) reads as not acknowledged.
  nlohmann::json j = spool::ToJson(*back);
  CHECK(j.dump().find("2026-11-23T10:05:00Z") != std::string::npos);
  auto old = spool::ToJson(*back);
  old.erase("acknowledged_utc");
  auto parsed = spool::ScanRecordFromJson(old);
  REQUIRE(parsed);
  CHECK(parsed->acknowledged_utc.empty());
}

TEST_CASE("a high-risk finding's confirmation (when, by whom) is kept with its record across reopening and compaction",
          "[spool]") {
  test::TempDir dir("spool-confirm");
  PosixFileStore files;
  auto scan = NewRecord();
  auto other = NewRecord();
  {
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    REQUIRE((*s)->BeginScan(scan, 1 << 20));
    REQUIRE((*s)->BeginScan(other, 1 << 20));
    REQUIRE((*s)->Update(scan.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }));
    auto before = (*s)->Get(scan.scan_uid);
    REQUIRE(before);
    CHECK(before->high_risk_confirmed_utc.empty());
    CHECK(before->high_risk_confirmed_by.empty());
    REQUIRE((*s)->Update(scan.scan_uid, [](spool::ScanRecord& r) {
      r.high_risk_confirmed_utc = "2026-12-05T10:05:00Z";
      r.high_risk_confirmed_by = "Nurse Wang";
    }));
  }
  {  // from the journal
    auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
    REQUIRE(s);
    auto back = (*s)->Get(scan.scan_uid);
    REQUIRE(back);
    CHECK(back->high_risk_confirmed_utc == "2026-12-05T10:05:00Z");
    CHECK(back->high_risk_confirmed_by == "Nurse Wang");
    auto untouched = (*s)->Get(other.scan_uid);
    REQUIRE(untouched);
    CHECK(untouched->high_risk_confirmed_utc.empty());
    REQUIRE((*s)->Compact());
  }
  // From the snapshot compaction wrote.
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto back = (*s)->Get(scan.scan_uid);
  REQUIRE(back);
  CHECK(back->high_risk_confirmed_utc == "2026-12-05T10:05:00Z");
  CHECK(back->high_risk_confirmed_by == "Nurse Wang");
  // A record written before the fields existed reads as not confirmed.
  auto old = spool::ToJson(*back);
  old.erase("high_risk_confirmed_utc");
  old.erase("high_risk_confirmed_by");
  auto parsed = spool::ScanRecordFromJson(old);
  REQUIRE(parsed);
  CHECK(parsed->high_risk_confirmed_utc.empty());
  CHECK(parsed->high_risk_confirmed_by.empty());
}

TEST_CASE("CheckChunkFile: a chunk checked in pieces against its recorded size and SHA-256, without reading it "
          "whole, and a file changed after it was stored is recorded damaged", "[spool]") {
  test::TempDir dir("spool");
  PosixFileStore files;
  auto s = spool::Spool::Open({dir.path(), 1ull << 30, 0}, files);
  REQUIRE(s);
  auto record = NewRecord();
  REQUIRE((*s)->BeginScan(record, 64ull << 20));
  // Chunks of ~700 KiB: three pieces of the check's 256 KiB each.
  std::vector<std::vector<std::uint8_t>> chunks;
  for (std::uint32_t i = 0; i < 5; ++i) {
    chunks.push_back(test::RandomBytes((700u << 10) + i, 70 + i));
    REQUIRE((*s)->AddChunk(record.scan_uid, ChunkFor(i, chunks.back()), chunks.back()));
  }
  const auto chunk_dir = dir.path() / "scans" / record.scan_uid / "chunks";
  auto path_of = [&](int i) { return chunk_dir / ("00000" + std::to_string(i) + ".ctc"); };

  // Intact: its path and length, and the bytes there are the chunk's.
  auto ok = (*s)->CheckChunkFile(record.scan_uid, 0);
  REQUIRE(ok);
  CHECK(ok->path == path_of(0));
  CHECK(ok->length == chunks[0].size());
  CHECK(test::ReadText(ok->path) == std::string(chunks[0].begin(), chunks[0].end()));

  // One bit flipped in the last piece; cut short; one byte longer.
  {
    std::fstream f(path_of(1), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(chunks[1].size() - 3));
    f.put(static_cast<char>(chunks[1][chunks[1].size() - 3] ^ 0x10));
  }
  std::filesystem::resize_file(path_of(2), 512u << 10);
  {
    std::ofstream f(path_of(3), std::ios::binary | std::ios::app);
    f.put('x');
  }
  auto flipped = (*s)->CheckChunkFile(record.scan_uid, 1);
  REQUIRE_FALSE(flipped);
  CHECK(flipped.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(flipped.error().message(), Catch::Contains("000001.ctc") && Catch::Contains("expected SHA-256") &&
                                            Catch::Contains("will not be uploaded"));
  auto cut = (*s)->CheckChunkFile(record.scan_uid, 2);
  REQUIRE_FALSE(cut);
  CHECK(cut.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(cut.error().message(),
             Catch::Contains("expected " + std::to_string(chunks[2].size()) + " bytes, found " + std::to_string(512u << 10)));
  auto longer = (*s)->CheckChunkFile(record.scan_uid, 3);
  REQUIRE_FALSE(longer);
  CHECK_THAT(longer.error().message(), Catch::Contains("expected " + std::to_string(chunks[3].size()) + " bytes, found " +
                                                        std::to_string(chunks[3].size() + 1)));

  // Each is recorded damaged: asked again, it is refused without reading, as ReadChunk refuses it.
  for (std::uint32_t i = 1; i <= 3; ++i) {
    INFO("chunk " << i);
    CHECK((*s)->GetChunk(record.scan_uid, i)->damaged);
    auto again = (*s)->CheckChunkFile(record.scan_uid, i);
    REQUIRE_FALSE(again);
    CHECK_THAT(again.error().message(), Catch::Contains("was found damaged"));
    CHECK_FALSE((*s)->ReadChunk(record.scan_uid, i));
  }
  // Missing: an error naming the file, recorded damaged too.
  std::filesystem::remove(path_of(4));
  auto missing = (*s)->CheckChunkFile(record.scan_uid, 4);
  REQUIRE_FALSE(missing);
  CHECK_THAT(missing.error().message(), Catch::Contains("000004.ctc"));
  CHECK((*s)->GetChunk(record.scan_uid, 4)->damaged);
  // A chunk the scan does not have.
  auto none = (*s)->CheckChunkFile(record.scan_uid, 9);
  REQUIRE_FALSE(none);
  CHECK(none.error().kind() == ErrorKind::kNotFound);
}

TEST_CASE("CheckChunkFile: EIO on a piece is the read's error, the chunk recorded damaged", "[spool]") {
  SimulatedDisk disk;
  auto s = spool::Spool::Open(SimOptions(), disk);
  REQUIRE(s);
  auto bad = AddScan(**s, 2, false);
  disk.FailReadsContaining(bad.scan_uid + "/chunks/000001");
  auto checked = (*s)->CheckChunkFile(bad.scan_uid, 1);
  REQUIRE_FALSE(checked);
  CHECK(checked.error().kind() == ErrorKind::kIo);
  CHECK_THAT(checked.error().message(), Catch::Contains("000001.ctc") && Catch::Contains("Input/output error"));
  CHECK((*s)->Get(bad.scan_uid)->chunks[1].damaged);
  auto good = (*s)->CheckChunkFile(bad.scan_uid, 0);
  REQUIRE(good);
  CHECK(good->length == 500);
}
