// A scan's patient comes from the hospital's worklist and only pseudonyms leave the terminal
// (issue 15): the agent's real scan path (sim driver -> spool -> uploader) against a real
// worklist peer (DCMTK wlmscpfs, entries written with dump2dcm) and the real tus server over
// HTTPS. Every byte the tus server holds (chunk files, the manifest, the upload metadata in its
// .json info files, its log) is searched for the patient's name, ID, birth date, accession and
// study UID, in UTF-8 and GB18030; the mapping record stays on the terminal, owner-only; worklist
// errors stop the scan before anything is stored; the agent's output names no patient.
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <fstream>
#include <memory>
#include <set>

#include "agent/codec/manifest.hpp"
#include "base/log.hpp"
#include "agent/control/status.hpp"
#include "agent/core/agent.hpp"
#include "agent/privacy/privacy.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "tests/support/process.hpp"
#include "tests/worklist/worklist_server.hpp"

using namespace ctagent;
using namespace ctagent::test::worklist_peer;
namespace fs = std::filesystem;

namespace {

nlohmann::json ScanConfig(const fs::path& spool_dir, const std::string& upload_url, const fs::path& ca_file,
                          const WorklistNode& node) {
  return {
      {"terminal_id", "privacy-test"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", 64}, {"rotations", 1}, {"rows", 4}, {"channels", 128},
        {"channel_pitch_mm", 3.2}, {"row_pitch_mm", 5.0}, {"rotation_time_s", 2.0}, {"dose_fraction", 1.0},
        {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"unattenuated_counts", 60000},
        {"sample_type", "uint16"}, {"seed", 5}, {"real_time", false}}},
      {"codec", {{"zstd_level", 3}, {"filter", "predict"}, {"views_per_chunk", 16}, {"threads", 2}}},
      {"spool", {{"directory", spool_dir.string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud",
       {{"upload_url", upload_url},
        {"tls", {{"ca_file", ca_file.string()}}},
        {"parallel_uploads", 2},
        {"connect_timeout_s", 5},
        {"stall_timeout_s", 10}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}},
      {"worklist", WorklistSection(node)},
      {"privacy", {{"age_band", true}, {"sex", true}}}};
}

std::string Bytes(const fs::path& file) { return ReadText(file); }

// Every file under `root` (recursively) that contains any of `needles`, with the needle's index.
std::vector<std::string> Hits(const fs::path& root, const std::vector<std::string>& needles) {
  std::vector<std::string> hits;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    const std::string bytes = Bytes(e.path());
    for (std::size_t i = 0; i < needles.size(); ++i) {
      if (bytes.find(needles[i]) != std::string::npos) hits.push_back(e.path().string() + " holds needle " + std::to_string(i));
    }
  }
  return hits;
}

// The identity of `entry` in every encoding the test uses.
std::vector<std::string> Needles(const Entry& entry) {
  return {entry.patient_name, Encode(entry.patient_name, "GB18030"), entry.patient_id, entry.birth_date,
          entry.accession, entry.study_uid};
}

struct Site {
  TempDir dir{"privacy-scan"};
  test::TusServer tus;
  WorklistServer worklist;
  Site() {
    test::MakeTestPki(dir.path() / "pki");
    fs::create_directories(dir.path() / "store");
    tus = test::StartTusServer(dir.path() / "pki", dir.path() / "store", dir.path() / "tus.log");
  }
  config::AgentConfig Config() {
    auto config = config::ParseConfig(
        ScanConfig(dir.path() / "spool", tus.endpoint, dir.path() / "pki" / "ca.pem", worklist.Node()).dump(),
        "privacy_scan_test.json");
    REQUIRE(config);
    return *config;
  }
};

Entry ChineseEntry() {
  Entry e;
  e.patient_name = kChineseName;
  e.patient_id = "PID-ZH-8812";
  e.birth_date = "19580611";
  e.sex = "M";
  e.accession = "ACCZH0042";
  e.study_uid = "1.2.826.0.1.3680043.2.1125.77.4242";
  return e;
}

}  // namespace

TEST_CASE("privacy scan: a worklist patient's scan uploads only pseudonyms and the mapping stays on the terminal",
          "[core][privacy]") {
  Site site;
  const bool gb18030 = GENERATE(false, true);
  Entry entry = ChineseEntry();
  Entry other;  // a second step today: the accession picks the one
  other.accession = "ACC-OTHER-1";
  if (gb18030) {
    entry.charset = "GB18030";
    site.worklist.Write("patient", entry, "GB18030");
  } else {
    site.worklist.Write("patient", entry);
  }
  site.worklist.Write("other", other);
  site.worklist.Start();
  INFO((gb18030 ? "GB18030 entry" : "UTF-8 entry"));

  const auto config = site.Config();
  PosixFileStore files;
  auto agent_owner = std::make_unique<core::Agent>(config, files);
  core::Agent& agent = *agent_owner;
  REQUIRE(agent.Open());
  core::ExamIdentity exam;
  exam.accession_number = entry.accession;
  Expected<core::ScanSummary> summary = MakeError(ErrorKind::kInternal, "not run");
  log::SetLevel(log::Level::kInfo);
  const std::string output =
      CaptureOutput(site.dir.path() / "agent-output.txt", [&] { summary = agent.RunScan(nullptr, exam); });
  log::SetLevel(log::Level::kWarn);
  REQUIRE(summary);
  INFO(summary->problem);
  CHECK(summary->state == "uploaded");

  // What the center holds: chunk files, the manifest, every upload's metadata, the server's log.
  const auto needles = Needles(entry);
  CHECK(Hits(site.dir.path() / "store", needles).empty());
  for (std::size_t i = 0; i < needles.size(); ++i) {
    INFO("needle " << i);
    CHECK(Bytes(site.dir.path() / "tus.log").find(needles[i]) == std::string::npos);
    CHECK(output.find(needles[i]) == std::string::npos);
  }
  CHECK(output.find("patient from the worklist") != std::string::npos);  // the capture saw the scan's log

  // The mapping: on the terminal, owner-only, the real identity of the worklist's entry.
  auto record = agent.spool().Get(summary->scan_uid);
  REQUIRE(record);
  const fs::path mapping_path = agent.spool().MappingPath(summary->scan_uid);
  struct stat st{};
  REQUIRE(::stat(mapping_path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  auto mapping = privacy::ReadMapping(files, mapping_path);
  REQUIRE(mapping);
  CHECK(mapping->patient_name == entry.patient_name);  // UTF-8, whatever the worklist's charset
  CHECK(mapping->patient_id.real == entry.patient_id);
  CHECK(mapping->patient_birth_date == entry.birth_date);
  CHECK(mapping->accession_number.real == entry.accession);
  CHECK(mapping->study_instance_uid.real == entry.study_uid);
  CHECK_FALSE(mapping->reconcile);
  // The results are searched by the pseudonymous study UID, the one the center knows.
  CHECK(record->study_uid == mapping->study_instance_uid.pseudonymous);
  CHECK(summary->study_uid == mapping->study_instance_uid.pseudonymous);

  // The manifest the center received carries the pseudonyms and the coarsened extras only.
  auto manifest_bytes = agent.spool().ReadManifest(summary->scan_uid);
  REQUIRE(manifest_bytes);
  auto manifest = codec::ManifestFromJson(nlohmann::json::parse(manifest_bytes->begin(), manifest_bytes->end()));
  REQUIRE(manifest);
  CHECK(manifest->patient_id == mapping->patient_id.pseudonymous);
  CHECK(manifest->patient_name.empty());
  CHECK(manifest->accession_number == mapping->accession_number.pseudonymous);
  CHECK(manifest->study_uid == mapping->study_instance_uid.pseudonymous);
  CHECK(manifest->patient_sex == "M");
  CHECK(manifest->patient_age.size() == 4);
  CHECK(manifest->patient_age.back() == 'Y');
  CHECK(Hits(site.dir.path() / "store", {mapping->patient_id.pseudonymous}).size() >= 1);  // the search can hit

  // A restart's spool recovery keeps the mapping of a scan it knows (and removes nothing of it).
  const std::string scan_uid = summary->scan_uid;
  agent_owner.reset();  // lets go of the spool, as a stopped agent does
  {
    core::Agent restarted(config, files);
    REQUIRE(restarted.Open());
    auto again = privacy::ReadMapping(files, restarted.spool().MappingPath(scan_uid));
    REQUIRE(again);
    CHECK(again->patient_id.real == entry.patient_id);
  }
}

TEST_CASE("privacy scan: worklist errors stop the scan before anything is stored, naming no patient",
          "[core][privacy]") {
  Site site;
  Entry first = ChineseEntry();
  Entry second;
  second.accession = "ACC-SECOND";
  second.patient_id = "PID-SECOND";
  site.worklist.Write("first", first);
  site.worklist.Write("second", second);
  site.worklist.Start();
  const auto config = site.Config();
  PosixFileStore files;
  core::Agent agent(config, files);
  REQUIRE(agent.Open());

  SECTION("an accession the worklist does not have") {
    core::ExamIdentity exam;
    exam.accession_number = "ACC-NOT-THERE";
    auto summary = agent.RunScan(nullptr, exam);
    REQUIRE_FALSE(summary);
    CHECK(summary.error().kind() == ErrorKind::kNotFound);
    INFO(summary.error().message());
    CHECK(summary.error().message().find("the scan's patient") != std::string::npos);
  }
  SECTION("no accession, and two steps scheduled today") {
    auto summary = agent.RunScan(nullptr, {});
    REQUIRE_FALSE(summary);
    INFO(summary.error().message());
    CHECK(summary.error().message().find("2 CT steps scheduled today") != std::string::npos);
    CHECK(summary.error().message().find("--accession") != std::string::npos);
    for (const auto& needle : Needles(first)) CHECK(summary.error().message().find(needle) == std::string::npos);
  }
  CHECK(agent.spool().AllScans().empty());
  CHECK(fs::is_empty(site.dir.path() / "store"));
}

TEST_CASE("privacy scan: the one step of today binds without an accession and an emergency gets a flagged identity",
          "[core][privacy]") {
  Site site;
  const Entry only = ChineseEntry();
  site.worklist.Write("only", only);
  site.worklist.Start();
  const auto config = site.Config();
  PosixFileStore files;
  core::Agent agent(config, files);
  REQUIRE(agent.Open());

  auto scheduled = agent.RunScan(nullptr, {});
  REQUIRE(scheduled);
  auto mapping = privacy::ReadMapping(files, agent.spool().MappingPath(scheduled->scan_uid));
  REQUIRE(mapping);
  CHECK(mapping->patient_id.real == only.patient_id);

  core::ExamIdentity emergency;
  emergency.emergency = true;
  auto urgent = agent.RunScan(nullptr, emergency);
  REQUIRE(urgent);
  auto minted = privacy::ReadMapping(files, agent.spool().MappingPath(urgent->scan_uid));
  REQUIRE(minted);
  CHECK(minted->reconcile);
  CHECK(minted->patient_id.real.rfind("EMERGENCY-", 0) == 0);
  CHECK(minted->patient_id.real != only.patient_id);
  CHECK(urgent->study_uid == minted->study_instance_uid.pseudonymous);
  CHECK(Hits(site.dir.path() / "store", Needles(only)).empty());
  CHECK(Hits(site.dir.path() / "store", {minted->patient_id.real, minted->patient_name}).empty());

  // `ctagent status` (and the daemon's status) flags the emergency scan for reconciliation, and
  // only it; it names where the patient came from, never who.
  const auto status = control::StatusFromSpool(agent.spool(), {"spool", 0});
  int flagged = 0;
  for (const auto& scan : status["scans"]) {
    INFO(scan.dump());
    if (scan["scan_uid"] == urgent->scan_uid) {
      CHECK(scan["patient_source"] == "emergency");
      CHECK(scan["reconcile"] == true);
      ++flagged;
    } else if (scan["scan_uid"] == scheduled->scan_uid) {
      CHECK(scan["patient_source"] == "worklist");
      CHECK(scan["reconcile"] == false);
    }
  }
  CHECK(flagged == 1);
  CHECK_THAT(status.dump(), !Catch::Contains(minted->patient_id.real) && !Catch::Contains(only.patient_id));
}
