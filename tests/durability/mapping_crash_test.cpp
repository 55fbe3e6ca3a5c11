// A crash between a scan's mapping record and its spool record (issue 15): the real `ctagent
// scan --emergency` is killed (SIGKILL, CTAGENT_FAULT_KILL_AT_OP) before each of its mutating
// file operations in turn, from its start through the site key's creation, the mapping record's
// durable write and BeginScan, until its first chunks are stored. After every kill the spool is
// opened as the agent opens it (its recovery runs) and must hold no half state:
//  - every scan it lists has its mapping record: whole, mode 0600, for that scan, under the key
//    on disk, and the record carries the mapping's pseudonyms and "emergency" as patient source;
//  - a mapping written before the kill whose scan was never recorded is removed with its
//    directory (the scan was never accepted: the detector was not armed);
//  - the site key is absent or whole (64 hex digits, 0600); no file of the key or a mapping,
//    temporary or not, is readable by group or others.
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <set>

#include "base/durable_file.hpp"
#include "agent/privacy/privacy.hpp"
#include "agent/spool/spool.hpp"
#include "tests/durability/harness.hpp"

using namespace ctagent;
using namespace ctagent::test::durability;

namespace {

unsigned ModeOf(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

// Scan directories that hold a mapping record (or its temporary), before recovery runs.
std::set<std::string> ScanDirsWithMapping(const fs::path& spool_dir) {
  std::set<std::string> uids;
  std::error_code ec;
  for (fs::directory_iterator it(spool_dir / "scans", ec), end; !ec && it != end; it.increment(ec)) {
    for (fs::directory_iterator f(it->path(), ec), fend; !ec && f != fend; f.increment(ec)) {
      if (f->path().filename().string().starts_with("mapping.json")) uids.insert(it->path().filename().string());
    }
  }
  return uids;
}

}  // namespace

TEST_CASE("a kill at any file operation between the site key, the mapping record and BeginScan leaves a whole "
          "pair or nothing",
          "[durability][privacy]") {
  test::TempDir work("mapping-crash");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  // Nothing listens there: the scan never gets past its first upload attempts, which is after
  // the window this test is about.
  const std::string dead_url = "https://127.0.0.1:" + std::to_string(test::FreeLoopbackPort()) + "/files/";

  int killed_before_record = 0;   // kills that left no accepted scan
  int orphan_mappings_removed = 0;  // ... of which a mapping had been written (the window)
  int killed_with_record = 0;     // kills after BeginScan
  bool reached_chunks = false;
  // Bounded: the scan stores its first chunk well before 400 operations (about 25 here).
  for (int kill_at = 1; kill_at <= 400 && !reached_chunks; ++kill_at) {
    INFO("killed before mutating file operation " << kill_at);
    const fs::path spool_dir = work.path() / ("spool-" + std::to_string(kill_at));
    const fs::path cfg_path = work.path() / ("ctagent-" + std::to_string(kill_at) + ".json");
    WriteJson(cfg_path, SmallScanConfig(spool_dir, dead_url, pki / "ca.pem", 7));
    const fs::path log = work.path() / ("agent-" + std::to_string(kill_at) + ".log");
    {
      auto command = ScanCommand(cfg_path);
      command.push_back("--emergency");
      command.insert(command.begin(), {"env", "CTAGENT_FAULT_KILL_AT_OP=" + std::to_string(kill_at)});
      test::ChildProcess child(command, log);
      const int code = child.Wait(std::chrono::seconds(60));
      INFO(test::ReadText(log));
      REQUIRE(code == 128 + 9);  // every kill point up to the first chunk is reached
    }

    // What the kill left, before the agent's recovery looks at it.
    const auto written = ScanDirsWithMapping(spool_dir);
    const fs::path key_file = spool_dir / "site.key";
    std::error_code ec;
    for (fs::recursive_directory_iterator it(spool_dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.starts_with("site.key") && name != "site.key.lock") {
        INFO(it->path());
        CHECK((ModeOf(it->path()) & 077) == 0);
      }
      if (name.starts_with("mapping.json")) {
        INFO(it->path());
        CHECK((ModeOf(it->path()) & 077) == 0);
      }
    }
    std::optional<privacy::SiteKey> key;
    if (fs::exists(key_file)) {
      auto loaded = privacy::SiteKey::Load(key_file);
      INFO((loaded ? "" : loaded.error().message()));
      REQUIRE(loaded);  // never a torn key: it is written to a temporary and renamed
      key = *loaded;
    }

    PosixFileStore files;
    auto spool = OpenSpool(spool_dir, files);
    if (!spool) {
      // Killed before the spool directory existed: nothing was ever written.
      INFO(spool.error().message());
      CHECK(written.empty());
      CHECK_FALSE(key);
      ++killed_before_record;
      continue;
    }
    CHECK((*spool)->recovery().damaged.empty());
    const auto scans = (*spool)->AllScans();
    REQUIRE(scans.size() <= 1);
    std::set<std::string> recorded;
    for (const auto& scan : scans) {
      INFO("scan " << scan.scan_uid);
      recorded.insert(scan.scan_uid);
      const fs::path mapping_path = (*spool)->MappingPath(scan.scan_uid);
      auto mapping = privacy::ReadMapping(files, mapping_path);
      INFO((mapping ? "" : mapping.error().message()));
      REQUIRE(mapping);
      CHECK(ModeOf(mapping_path) == 0600);
      CHECK(mapping->scan_uid == scan.scan_uid);
      CHECK(mapping->reconcile);
      CHECK(scan.patient_source == "emergency");
      CHECK(scan.study_uid == mapping->study_instance_uid.pseudonymous);
      const auto patient = scan.manifest_base.value("patient", nlohmann::json::object());
      CHECK(patient.value("id", "") == mapping->patient_id.pseudonymous);
      CHECK(patient.value("name", "?") == "");
      REQUIRE(key);
      CHECK(mapping->key_fingerprint == key->Fingerprint());
      if (!scan.chunks.empty()) reached_chunks = true;
    }
    // A mapping whose scan was never recorded went with its directory.
    for (const auto& uid : written) {
      if (recorded.count(uid)) continue;
      INFO("unrecorded scan " << uid);
      CHECK_FALSE(fs::exists(spool_dir / "scans" / uid));
      ++orphan_mappings_removed;
    }
    // And no other scan directory is left (one made for the mapping, then killed).
    for (fs::directory_iterator it(spool_dir / "scans", ec), end; !ec && it != end; it.increment(ec)) {
      INFO("left in the spool: " << it->path());
      CHECK(recorded.count(it->path().filename().string()) == 1);
    }
    if (scans.empty()) {
      ++killed_before_record;
    } else {
      ++killed_with_record;
    }
  }
  INFO("kills before the record " << killed_before_record << " (mapping written, removed: " << orphan_mappings_removed
                                  << "), after it " << killed_with_record);
  CHECK(reached_chunks);
  // The kills did land in the window between the mapping and the record, and after it.
  CHECK(orphan_mappings_removed >= 2);  // at least: mapping written but not renamed, and renamed
  CHECK(killed_with_record >= 1);
}
