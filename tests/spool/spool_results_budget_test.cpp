// Results count against the spool budget: ResultsRoom() and StoreResult() keep spool.max_bytes
// and spool.min_free_bytes (an acquiring scan's reservation included), refuse with kNoSpace and a
// message naming the setting, and write nothing when they refuse.
#include <catch2/catch.hpp>

#include "base/uid.hpp"
#include "agent/spool/simulated_disk.hpp"
#include "agent/spool/spool.hpp"

using namespace ctagent;

namespace {

const std::filesystem::path kDir = "/spool";

spool::ScanRecord NewRecord() {
  spool::ScanRecord r;
  r.scan_uid = MintDicomUid();
  r.study_uid = MintDicomUid();
  r.created_utc = "2026-12-05T04:00:00Z";
  return r;
}

std::uint64_t UsedBytes(spool::Spool& s) { return s.Space().used_bytes; }

}  // namespace

TEST_CASE("spool: results stop at spool.max_bytes and nothing is written past it", "[spool][results]") {
  SimulatedDisk disk(1ull << 30);
  auto s = spool::Spool::Open({kDir, 64 * 1024, 0}, disk);
  REQUIRE(s);
  spool::Spool& sp = **s;
  const auto record = NewRecord();
  REQUIRE(sp.BeginScan(record, 0));
  REQUIRE(sp.Update(record.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kUploaded; }));

  const std::uint64_t room = sp.ResultsRoom();
  REQUIRE(room > 0);
  CHECK(room == 64 * 1024 - UsedBytes(sp));  // the journal and marker count too

  // Exactly the room fits; one byte more does not.
  const std::string a = MintDicomUid();
  const std::string b = MintDicomUid();
  auto too_big = sp.StoreResult(record.scan_uid, a, std::vector<std::uint8_t>(room + 1, 1));
  REQUIRE_FALSE(too_big);
  CHECK(too_big.error().kind() == ErrorKind::kNoSpace);
  CHECK_THAT(too_big.error().message(), Catch::Contains("spool.max_bytes") && Catch::Contains(a) &&
                                            Catch::Contains("fetched again"));
  CHECK_FALSE(disk.Exists(sp.ResultPath(record.scan_uid, a)));

  const std::uint64_t half = room / 2;
  REQUIRE(sp.StoreResult(record.scan_uid, a, std::vector<std::uint8_t>(half, 1)));
  CHECK(sp.ResultsRoom() == room - half);
  CHECK_FALSE(sp.StoreResult(record.scan_uid, b, std::vector<std::uint8_t>(room - half + 1, 2)));
  CHECK_FALSE(disk.Exists(sp.ResultPath(record.scan_uid, b)));
  CHECK(sp.CheckResultsRoom(room - half, "test"));
  REQUIRE(sp.StoreResult(record.scan_uid, b, std::vector<std::uint8_t>(room - half, 2)));
  CHECK(sp.ResultsRoom() == 0);
  CHECK(UsedBytes(sp) == 64 * 1024);
  auto full = sp.CheckResultsRoom(1, "result instance x");
  REQUIRE_FALSE(full);
  CHECK(full.error().kind() == ErrorKind::kNoSpace);
}

TEST_CASE("spool: results keep spool.min_free_bytes and acquiring scans' reservations free", "[spool][results]") {
  SimulatedDisk disk(1 << 20);  // a 1 MiB disk
  auto s = spool::Spool::Open({kDir, 1ull << 30, 256 * 1024}, disk);
  REQUIRE(s);
  spool::Spool& sp = **s;
  const auto done = NewRecord();
  REQUIRE(sp.BeginScan(done, 0));
  const auto acquiring = NewRecord();
  REQUIRE(sp.BeginScan(acquiring, 300 * 1024));  // reserved, not yet written

  const std::uint64_t free = *disk.FreeBytes(kDir);
  const std::uint64_t room = sp.ResultsRoom();
  CHECK(room == free - 300 * 1024 - 256 * 1024);

  const std::string uid = MintDicomUid();
  auto refused = sp.StoreResult(done.scan_uid, uid, std::vector<std::uint8_t>(room + 1, 3));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().kind() == ErrorKind::kNoSpace);
  CHECK_THAT(refused.error().message(), Catch::Contains("spool.min_free_bytes") && Catch::Contains("reserved"));
  CHECK_FALSE(disk.Exists(sp.ResultPath(done.scan_uid, uid)));
  REQUIRE(sp.StoreResult(done.scan_uid, uid, std::vector<std::uint8_t>(room, 3)));
  CHECK(sp.ResultsRoom() == 0);
}
