// The seam fault injection uses in the production file store: PosixFileStore tells its
// FileStepObserver about every primitive step, in order, before taking it, so a test build's
// FaultInjectingFileStore can stop a process between any two (base/durable_file.hpp). And the
// decorator's read faults, in process (its kills are tested in a real process by
// spool_fault_hook_test and the durability soak).
#include <catch2/catch.hpp>

#include <fstream>
#include <utility>
#include <vector>

#include "base/durable_file.hpp"
#include "base/fault_injecting_file_store.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

struct RecordingObserver final : FileStepObserver {
  std::vector<std::pair<FileStep, std::string>> steps;
  void BeforeStep(FileStep step, const fs::path& path) override { steps.emplace_back(step, path.filename().string()); }
};

using Steps = std::vector<std::pair<FileStep, std::string>>;

}  // namespace

TEST_CASE("PosixFileStore reports each primitive step of a durable write, an append and a batch before taking it",
          "[spool][faulthook]") {
  test::TempDir dir("file-steps");
  RecordingObserver observer;
  PosixFileStore store(PosixFileStore::Sync::kDurable, &observer);

  REQUIRE(store.WriteDurably(dir.path() / "a.json", AsBytes("hello")));
  CHECK(observer.steps == Steps{{FileStep::kCreate, "a.json.tmp"},
                                {FileStep::kWrite, "a.json.tmp"},
                                {FileStep::kSync, "a.json.tmp"},
                                {FileStep::kRename, "a.json"},
                                {FileStep::kSyncDirectory, dir.path().filename().string()}});

  observer.steps.clear();
  REQUIRE(store.AppendDurably(dir.path() / "a.json", AsBytes(" world")));
  CHECK(observer.steps == Steps{{FileStep::kWrite, "a.json"}, {FileStep::kSync, "a.json"}});

  observer.steps.clear();
  REQUIRE(store.WriteUnsynced(dir.path() / "c1", AsBytes("1")));
  REQUIRE(store.WriteUnsynced(dir.path() / "c2", AsBytes("2")));
  REQUIRE(store.SyncBatch({dir.path() / "c1", dir.path() / "c2"}, {dir.path()}));
  CHECK(observer.steps == Steps{{FileStep::kCreate, "c1"},
                                {FileStep::kWrite, "c1"},
                                {FileStep::kCreate, "c2"},
                                {FileStep::kWrite, "c2"},
                                {FileStep::kSync, "c1"},
                                {FileStep::kSync, "c2"},
                                {FileStep::kSyncDirectory, dir.path().filename().string()}});

  observer.steps.clear();
  REQUIRE(store.Truncate(dir.path() / "a.json", 2));
  REQUIRE(store.Remove(dir.path() / "c1"));
  CHECK(observer.steps == Steps{{FileStep::kTruncate, "a.json"},
                                {FileStep::kSync, "a.json"},
                                {FileStep::kRemove, "c1"},
                                {FileStep::kSyncDirectory, dir.path().filename().string()}});
  // Reads are not steps.
  observer.steps.clear();
  REQUIRE(store.ReadAll(dir.path() / "a.json", 100));
  CHECK(observer.steps.empty());
}

TEST_CASE("FaultInjectingFileStore fails reads of matching paths with EIO and passes everything else through",
          "[spool][faulthook]") {
  test::TempDir dir("file-faults");
  FaultInjectingFileStore store(FileFaults{.kill_at_step = 0, .eio_read_substring = "chunks/000001"});
  REQUIRE(store.CreateDirectories(dir.path() / "chunks"));
  REQUIRE(store.WriteDurably(dir.path() / "chunks/000001.ctc", AsBytes("bad")));
  REQUIRE(store.WriteDurably(dir.path() / "chunks/000002.ctc", AsBytes("good")));

  auto bad = store.ReadAll(dir.path() / "chunks/000001.ctc", 100);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().kind() == ErrorKind::kIo);
  CHECK_THAT(bad.error().message(), Catch::Contains("000001.ctc") && Catch::Contains("Input/output error"));
  CHECK_FALSE(store.ReadRange(dir.path() / "chunks/000001.ctc", 0, 2));

  auto good = store.ReadAll(dir.path() / "chunks/000002.ctc", 100);
  REQUIRE(good);
  CHECK(std::string(good->begin(), good->end()) == "good");
  // The file itself is intact: only reading through the decorator fails.
  std::ifstream in(dir.path() / "chunks/000001.ctc");
  std::string text;
  in >> text;
  CHECK(text == "bad");
}
