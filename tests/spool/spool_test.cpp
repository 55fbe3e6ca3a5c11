// Spool: durable records, checksum-guarded reads, and space reservation before arming.
#include <catch2/catch.hpp>

#include <fstream>

#include "agent/common/sha256.hpp"
#include "agent/common/uid.hpp"
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
  return {index, index * 10ull, 10, bytes.size() * 2, bytes.size(), Sha256Hex(bytes), Sha256Hex(bytes)};
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
  REQUIRE((*s)->FinishAcquisition(record.scan_uid, m));
  auto back = (*s)->Get(record.scan_uid);
  REQUIRE(back);
  CHECK(back->state == spool::ScanState::kAcquired);
  CHECK(back->reserved_bytes == 0);
  CHECK(back->manifest_written);
  auto text = (*s)->ReadManifest(record.scan_uid);
  REQUIRE(text);
  auto parsed = codec::ManifestFromJson(nlohmann::json::parse(text->begin(), text->end()));
  REQUIRE(parsed);
  CHECK(parsed->views_acquired == 42);
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
