// The test-only fault injection of the file store (base/fault_injecting_file_store.hpp), in a
// real process: CTAGENT_FAULT_KILL_AT_OP kills it deterministically before its N-th file step,
// and the spool it leaves behind recovers every chunk it reported; CTAGENT_FAULT_EIO_READ fails
// reads by path.
#include <catch2/catch.hpp>

#include <set>
#include <sstream>

#include "base/uid.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;

namespace {

const std::string kChild = CTAGENT_BINARY_DIR "/tests/spool/spool_fault_child";

std::set<std::uint32_t> ReportedChunks(const std::string& log) {
  std::set<std::uint32_t> ok;
  std::istringstream in(log);
  std::string word;
  std::uint32_t index = 0;
  while (in >> word) {
    if (word == "ok" && in >> index) ok.insert(index);
  }
  return ok;
}

}  // namespace

TEST_CASE("CTAGENT_FAULT_KILL_AT_OP kills before the N-th mutating operation, and recovery keeps what was reported",
          "[spool][faulthook]") {
  // Kill points spread over start-up, scan creation and the chunk writes (each chunk is
  // several operations: write, fsync, rename, directory fsync, journal write, journal fsync).
  for (int kill_at : {1, 3, 9, 17, 23, 30, 41, 52, 66, 75}) {
    INFO("kill at mutating operation " << kill_at);
    test::TempDir dir("spool-kill");
    const auto log = dir.path() / "child.log";
    const std::string uid = MintDicomUid();
    test::ChildProcess child({"env", "CTAGENT_FAULT_KILL_AT_OP=" + std::to_string(kill_at), kChild,
                              (dir.path() / "spool").string(), "write", uid, "8"},
                             log);
    const int code = child.Wait(std::chrono::seconds(30));
    CHECK(code == 128 + 9);  // SIGKILL, before finishing 8 chunks
    const auto reported = ReportedChunks(test::ReadText(log));
    PosixFileStore files;
    auto s = spool::Spool::Open({dir.path() / "spool", 1ull << 30, 0}, files);
    REQUIRE(s);
    CHECK((*s)->recovery().damaged.empty());
    auto record = (*s)->Get(uid);
    if (!reported.empty()) REQUIRE(record);
    for (std::uint32_t index : reported) {
      INFO("chunk " << index << " was reported ok");
      auto bytes = (*s)->ReadChunk(uid, index);
      REQUIRE(bytes);
      CHECK(bytes->size() == 3000 + index);
    }
  }
}

TEST_CASE("CTAGENT_FAULT_EIO_READ fails reads of matching paths with EIO", "[spool][faulthook]") {
  test::TempDir dir("spool-eio");
  const auto log = dir.path() / "child.log";
  const std::string uid = MintDicomUid();
  {
    test::ChildProcess writer({kChild, (dir.path() / "spool").string(), "write", uid, "2"}, log);
    REQUIRE(writer.Wait(std::chrono::seconds(30)) == 0);
  }
  test::ChildProcess reader({"env", "CTAGENT_FAULT_EIO_READ=chunks/000001", kChild, (dir.path() / "spool").string(),
                             "read", uid, "1"},
                            log);
  CHECK(reader.Wait(std::chrono::seconds(30)) == 1);
  CHECK_THAT(test::ReadText(log), Catch::Contains("Input/output error") && Catch::Contains("000001.ctc"));
  test::ChildProcess healthy({"env", "CTAGENT_FAULT_EIO_READ=chunks/000001", kChild, (dir.path() / "spool").string(),
                              "read", uid, "0"},
                             log);
  CHECK(healthy.Wait(std::chrono::seconds(30)) == 0);
}
