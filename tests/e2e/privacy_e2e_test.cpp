// Issue 15's "Done when", end to end: two patients on a real worklist (DCMTK wlmscpfs; one entry
// in GB18030, one in ISO_IR 192, both with Chinese names), scanned back to back by the real
// `ctagent run` daemon (`ctagent scan --accession` asks it) through the reference imaging center
// (tus server, reconstruction worker, Orthanc + DICOMweb behind TLS) to a DCMTK storescp console.
// Then:
//   - every byte the center holds (each file under its run directory: tus store, worker
//     directories, Orthanc's storage and index, all logs; its start log) and everything Orthanc's
//     REST API and DICOMweb answer about its patients, studies, series and instances is searched
//     for each patient's name (UTF-8 and GB18030, the DICOM form with ^, without it, the family
//     and the given name alone), patient ID, birth date, accession and worklist study UID: zero
//     hits; and the same search must find each scan's pseudonymous patient ID there, so it reads
//     the bytes that matter;
//   - every object the console received (CT, SEG, SR, report pages) carries its own scan's real
//     identity, equal to the worklist's (DCMTK, and dcmdump for one CT each), and nothing of the
//     other patient;
//   - all agent output (the daemon's log, each `ctagent scan` and `ctagent status` output, any
//     *.log file in the spool) names neither patient.
// The refusal of a returned object under an unknown pseudonym is tested in
// tests/results/results_fetch_test.cpp.
#include <catch2/catch.hpp>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/privacy/privacy.hpp"
#include "tests/e2e/imaging_center.hpp"
#include "tests/support/process.hpp"
#include "tests/worklist/worklist_server.hpp"

using namespace ctagent;
using namespace ctagent::test::worklist_peer;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// One patient of the worklist and the parts of the name searched for on their own.
struct Patient {
  Entry entry;
  const char* encoding;     // how its worklist file is written: "GB18030" or "UTF-8"
  std::string family_name;  // UTF-8
  std::string given_name;   // UTF-8
};

// Compound family names on purpose: the family name alone is searched in GB18030 too, and a
// one-character name is 2 bytes there, which chance alone finds in megabytes of pixel data.
// 欧阳^小明 (Ouyang Xiaoming) and 司马^秀英 (Sima Xiuying), as UTF-8.
const std::string kOuyang = "\xE6\xAC\xA7\xE9\x98\xB3";
const std::string kXiaoming = "\xE5\xB0\x8F\xE6\x98\x8E";
const std::string kSima = "\xE5\x8F\xB8\xE9\xA9\xAC";
const std::string kXiuying = "\xE7\xA7\x80\xE8\x8B\xB1";

std::vector<Patient> Patients() {
  Patient a;
  a.entry.charset = "GB18030";
  a.entry.patient_name = kOuyang + "^" + kXiaoming;
  a.entry.patient_id = "PID-ZH-8812";
  a.entry.birth_date = "19580611";
  a.entry.sex = "M";
  a.entry.accession = "ACCZH0042";
  a.entry.study_uid = "1.2.826.0.1.3680043.2.1125.77.4242";
  a.encoding = "GB18030";
  a.family_name = kOuyang;
  a.given_name = kXiaoming;
  Patient b;
  b.entry.charset = "ISO_IR 192";
  b.entry.patient_name = kSima + "^" + kXiuying;
  b.entry.patient_id = "PID-ZH-3377";
  b.entry.birth_date = "19710923";
  b.entry.sex = "F";
  b.entry.accession = "ACCZH0043";
  b.entry.study_uid = "1.2.826.0.1.3680043.2.1125.77.4343";
  b.entry.step_id = "SPS-43";
  b.encoding = "UTF-8";
  b.family_name = kSima;
  b.given_name = kXiuying;
  return {a, b};
}

// A value searched for, and what to call it when it is found.
struct Term {
  std::string label;
  std::string bytes;
};

// The identity of `p` in every form the center or a log could hold it.
std::vector<Term> IdentityTerms(const Patient& p) {
  const std::string who = p.entry.patient_id + "'s ";
  std::vector<Term> terms;
  for (const char* encoding : {"UTF-8", "GB18030"}) {
    auto in = [&](const std::string& utf8) {
      return std::string(encoding) == "UTF-8" ? utf8 : Encode(utf8, encoding);
    };
    const std::string e = std::string(" (") + encoding + ")";
    terms.push_back({who + "name, DICOM PN with ^" + e, in(p.entry.patient_name)});
    terms.push_back({who + "name without ^" + e, in(p.family_name + p.given_name)});
    terms.push_back({who + "family name" + e, in(p.family_name)});
    terms.push_back({who + "given name" + e, in(p.given_name)});
  }
  terms.push_back({who + "patient ID", p.entry.patient_id});
  terms.push_back({who + "birth date", p.entry.birth_date});
  terms.push_back({who + "accession number", p.entry.accession});
  terms.push_back({who + "worklist study UID", p.entry.study_uid});
  return terms;
}

// Every regular file under each root (recursively; a root may be a file), read whole.
std::vector<fs::path> FilesUnder(const std::vector<fs::path>& roots) {
  std::vector<fs::path> files;
  for (const auto& root : roots) {
    if (fs::is_regular_file(root)) {
      files.push_back(root);
      continue;
    }
    if (!fs::is_directory(root)) continue;
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
  }
  return files;
}

// "FILE holds TERM" for every term found in every file. A search that must find nothing prints
// each hit, so a failure says which file holds which term.
enum class Expect { kNothing, kSomething };
std::vector<std::string> Hits(const std::vector<fs::path>& files, const std::vector<Term>& terms,
                              Expect expect = Expect::kNothing) {
  std::vector<std::string> hits;
  for (const auto& file : files) {
    const std::string bytes = test::ReadText(file);
    for (const auto& term : terms) {
      if (bytes.find(term.bytes) != std::string::npos) {
        hits.push_back(file.string() + " holds " + term.label);
        if (expect == Expect::kNothing) std::printf("privacy e2e: LEAK: %s\n", hits.back().c_str());
      }
    }
  }
  return hits;
}

// What a search that must find nothing is compared with, so a failure lists the hits.
const std::vector<std::string> kNone;

// The terms of `terms` that `Hits` finds nowhere in `files`.
std::vector<std::string> Unfound(const std::vector<fs::path>& files, const std::vector<Term>& terms) {
  std::vector<std::string> missing;
  for (const auto& term : terms) {
    if (Hits(files, {term}, Expect::kSomething).empty()) missing.push_back(term.label);
  }
  return missing;
}

std::uint64_t TotalBytes(const std::vector<fs::path>& files) {
  std::uint64_t total = 0;
  for (const auto& f : files) total += fs::file_size(f);
  return total;
}

// GET `path` from Orthanc (REST or DICOMweb) as the terminal's user, over TLS verified against
// the center's CA; the body is written to `out`. Returns curl's exit code (22: HTTP >= 400).
int OrthancGet(const std::map<std::string, std::string>& env, const std::string& path, const fs::path& out,
               const fs::path& log) {
  std::string base = env.at("DICOMWEB_URL");  // https://127.0.0.1:PORT/dicom-web/
  base = base.substr(0, base.find("/dicom-web"));
  std::string password = test::ReadText(env.at("AGENT_PASSWORD_FILE"));
  while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) password.pop_back();
  test::ChildProcess curl({"curl", "-sS", "--fail", "--max-time", "30", "--cacert", env.at("CA_FILE"), "-u",
                           env.at("AGENT_USER") + ":" + password, "-o", out.string(), base + path},
                          log);
  return curl.Wait(60s);
}

// Orthanc's /patients?expand answer as (Orthanc's ID, Patient ID) pairs.
std::vector<std::pair<std::string, std::string>> OrthancPatients(const std::string& answer) {
  const auto parsed = nlohmann::json::parse(answer, nullptr, false);
  INFO("/patients?expand answered " << answer);
  REQUIRE(parsed.is_array());
  std::vector<std::pair<std::string, std::string>> patients;
  for (const auto& p : parsed) {
    const auto id = p.find("ID");
    const auto tags = p.find("MainDicomTags");
    REQUIRE((id != p.end() && id->is_string() && tags != p.end() && tags->is_object()));
    const auto patient_id = tags->find("PatientID");
    REQUIRE((patient_id != tags->end() && patient_id->is_string()));
    patients.emplace_back(id->get<std::string>(), patient_id->get<std::string>());
  }
  return patients;
}

// What one received file says, read with DCMTK (text converted to UTF-8 from its character set).
struct ReceivedObject {
  fs::path file;
  std::string sop_class, study_uid, charset, name, id, birth_date, sex, accession;
};

ReceivedObject ReadReceived(const fs::path& file) {
  DcmFileFormat dicom;
  INFO("received file " << file);
  REQUIRE(dicom.loadFile(OFFilename(file.c_str())).good());
  DcmDataset* ds = dicom.getDataset();
  ReceivedObject r;
  r.file = file;
  auto get = [&](const DcmTagKey& tag) {
    OFString value;
    return ds->findAndGetOFStringArray(tag, value).good() ? std::string(value.c_str()) : std::string();
  };
  r.charset = get(DCM_SpecificCharacterSet);
  REQUIRE(ds->convertToUTF8().good());
  r.sop_class = get(DCM_SOPClassUID);
  r.study_uid = get(DCM_StudyInstanceUID);
  r.name = get(DCM_PatientName);
  r.id = get(DCM_PatientID);
  r.birth_date = get(DCM_PatientBirthDate);
  r.sex = get(DCM_PatientSex);
  r.accession = get(DCM_AccessionNumber);
  return r;
}

std::string Kind(const std::string& sop_class) {
  if (sop_class == UID_CTImageStorage) return "CT";
  if (sop_class == UID_SegmentationStorage) return "SEG";
  if (sop_class == UID_SecondaryCaptureImageStorage) return "report page";
  if (sop_class == UID_EnhancedSRStorage || sop_class == UID_ComprehensiveSRStorage ||
      sop_class == UID_Comprehensive3DSRStorage) {
    return "SR";
  }
  return "other (" + sop_class + ")";
}

}  // namespace

TEST_CASE("privacy e2e: two worklist patients with Chinese names scanned back to back, the center holds no "
          "identity and the console gets each scan under its own",
          "[e2e][privacy]") {
  const auto started = std::chrono::steady_clock::now();
  const auto patients = Patients();
  test::TempDir work("privacy-e2e");
  const fs::path logs = work.path() / "logs";  // the agent's output and the test's peers'
  fs::create_directories(logs);

  // --- The hospital: a worklist with both patients scheduled today for this station. ---
  WorklistServer worklist;
  worklist.Write("ouyang", patients[0].entry, patients[0].encoding);
  worklist.Write("sima", patients[1].entry, patients[1].encoding);
  worklist.Start();

  auto center = test::StartImagingCenter(work.path() / "center", "--image-size 256");
  const fs::path center_dir = center->run_dir;
  const auto center_env = center->env;

  auto console = test::StartConsole(work.path() / "console", work.path() / "storescp.log");
  const fs::path console_dir = console.dir;
  const auto console_port = console.port;

  // --- The terminal: worklist and privacy configured, no patient in the configuration. ---
  const auto node = worklist.Node();
  // The AI results test's short low-dose chest protocol (the lung analysis needs 100 mm along z
  // to make a SEG), reconstructed at 256 x 256 to stay fast. Both scans run it with the same seed
  // (`ctagent scan` takes the configured protocol): their pixels are alike, so only the identity
  // the agent gives each returned object tells the two apart at the console.
  const nlohmann::json scan = {{"geometry", "fan"},        {"views_per_rotation", 480},
                               {"rotations", 5},           {"rows", 8},
                               {"row_pitch_mm", 5},        {"channels", 256},
                               {"channel_pitch_mm", 1.5},  {"table_start_mm", -75},
                               {"table_speed_mm_per_rotation", 30}, {"dose_fraction", 0.2},
                               {"sample_type", "uint16"},  {"seed", 611},
                               {"real_time", false}};
  const fs::path spool_dir = work.path() / "spool";
  nlohmann::json cfg = {
      {"terminal_id", "privacy-e2e"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan", scan},
      {"codec", {{"zstd_level", 3}, {"filter", "shuffle"}, {"views_per_chunk", 64}, {"threads", 2}}},
      {"spool", {{"directory", spool_dir.string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud",
       {{"upload_url", center_env.at("TUS_URL")},
        {"dicomweb_url", center_env.at("DICOMWEB_URL")},
        {"username", center_env.at("AGENT_USER")},
        {"password_file", center_env.at("AGENT_PASSWORD_FILE")},
        {"tls", {{"ca_file", center_env.at("CA_FILE")}}},
        {"parallel_uploads", 2},
        {"patch_bytes", 1u << 20}}},
      {"results", {{"enabled", true}, {"poll_interval_ms", 300}, {"poll_max_interval_ms", 2000}, {"timeout_s", 240}}},
      {"console",
       {{"enabled", true}, {"host", "127.0.0.1"}, {"port", console_port}, {"called_ae", "CONSOLE"},
        {"calling_ae", "CTAGENT"}}},
      {"worklist", WorklistSection(node)},
      {"privacy", {{"age_band", true}, {"sex", true}}}};
  REQUIRE_FALSE(cfg.contains("study"));
  const fs::path cfg_path = work.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);

  // --- The daemon takes both scans, asked for by accession, one right after the other. ---
  const fs::path daemon_log = logs / "daemon.log";
  test::ChildProcess daemon({test::CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log);
  REQUIRE(test::WaitFor([&] { return fs::is_socket(spool_dir / "control.sock") || !daemon.Running(); }, 60s));
  INFO("daemon log:\n" << test::ReadText(daemon_log));
  REQUIRE(daemon.Running());

  std::vector<std::string> scan_uids;
  for (std::size_t i = 0; i < patients.size(); ++i) {
    // The first is followed until it is uploaded only, so the second is acquired while the
    // first still waits for its images: both identities are in flight at once.
    const fs::path out = logs / ("scan-" + std::to_string(i) + ".log");
    std::vector<std::string> argv = {test::CtagentBinary(), "scan", "--config", cfg_path.string(), "--accession",
                                     patients[i].entry.accession, "--quiet"};
    if (i == 0) argv.push_back("--no-results");
    test::ChildProcess client(argv, out);
    const int rc = client.Wait(300s);
    const std::string text = test::ReadText(out);
    INFO("ctagent scan output:\n" << text);
    REQUIRE(rc == 0);
    REQUIRE_THAT(text, Catch::Contains("taken by the background agent"));
    std::smatch m;
    REQUIRE(std::regex_search(text, m, std::regex(R"(scan id\s+(\S+))")));
    scan_uids.push_back(m[1]);
  }
  REQUIRE(scan_uids[0] != scan_uids[1]);
  const bool delivered = test::WaitFor(
      [&] {
        const std::string log = test::ReadText(daemon_log);
        int n = 0;
        for (const auto& uid : scan_uids) n += log.find("scan " + uid + ": delivered") != std::string::npos ? 1 : 0;
        return n == 2 || !daemon.Running();
      },
      300s);
  INFO("worker log:\n" << test::ReadText(center_dir / "logs/worker.log"));
  REQUIRE(delivered);
  {
    const fs::path out = logs / "status.log";
    test::ChildProcess status({test::CtagentBinary(), "status", "--config", cfg_path.string(), "--json"}, out);
    CHECK(status.Wait(60s) == 0);
  }
  daemon.Kill(SIGTERM);
  CHECK(daemon.Wait(30s) == 0);

  // The pseudonymous patient IDs, computed here from the site key the daemon made.
  auto key = privacy::SiteKey::Load(spool_dir / "site.key");
  INFO((key ? std::string() : key.error().message()));
  REQUIRE(key);
  std::vector<std::string> pseudonyms;
  for (const auto& p : patients) pseudonyms.push_back(privacy::PseudonymousPatientId(*key, p.entry.patient_id));
  std::vector<Term> identity;
  for (const auto& p : patients) {
    for (auto& t : IdentityTerms(p)) identity.push_back(std::move(t));
  }

  // --- What Orthanc answers through its REST API and DICOMweb, saved to be searched. ---
  const fs::path rest = work.path() / "orthanc-rest";
  fs::create_directories(rest);
  int rest_files = 0;
  auto get = [&](const std::string& path) {
    const fs::path out = rest / (std::to_string(rest_files++) + ".json");
    INFO("GET " << path << "\n" << test::ReadText(work.path() / "curl.log"));
    REQUIRE(OrthancGet(center_env, path, out, work.path() / "curl.log") == 0);
    // Orthanc's JSON writes text beyond ASCII as \uXXXX escapes, where a raw search would never
    // find a Chinese name: each answer is also searched decoded, as UTF-8.
    const auto parsed = nlohmann::json::parse(test::ReadText(out), nullptr, false);
    INFO("GET " << path << " answered " << test::ReadText(out));
    REQUIRE_FALSE(parsed.is_discarded());
    std::ofstream(out.string() + ".utf8", std::ios::binary)
        << parsed.dump(1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::strict);
    return out;
  };
  for (const char* path : {"/patients?expand", "/studies?expand", "/series?expand", "/instances?expand",
                           "/dicom-web/studies?includefield=all", "/dicom-web/series?includefield=all",
                           "/dicom-web/instances?includefield=all"}) {
    get(path);
  }
  const auto orthanc_patients = OrthancPatients(test::ReadText(get("/patients?expand")));
  std::set<std::string> orthanc_patient_ids;
  for (const auto& [id, patient_id] : orthanc_patients) orthanc_patient_ids.insert(patient_id);
  // Orthanc knows two patients, by their pseudonyms and nothing else.
  CHECK(orthanc_patient_ids == std::set<std::string>(pseudonyms.begin(), pseudonyms.end()));
  const auto instance_ids = nlohmann::json::parse(test::ReadText(get("/instances")));
  REQUIRE(instance_ids.is_array());
  CHECK(instance_ids.size() >= 2 * 5);  // per scan: CT slices, SEG, SR, report pages
  for (const auto& id : instance_ids) {
    get("/instances/" + id.get<std::string>() + "/simplified-tags");
    get("/instances/" + id.get<std::string>() + "/tags");
  }
  for (const auto& [id, patient_id] : orthanc_patients) get("/patients/" + id + "/shared-tags");

  // --- Every byte the center holds: stopped first, so every log and index is flushed. ---
  center.reset();
  const auto center_files = FilesUnder({center_dir, center_dir.string() + "-start.log"});
  const auto rest_answers = FilesUnder({rest});
  std::printf("privacy e2e: searched %zu files (%llu bytes) the center holds and %zu REST/DICOMweb answers "
              "(%llu bytes) for %zu identity terms\n",
              center_files.size(), static_cast<unsigned long long>(TotalBytes(center_files)), rest_answers.size(),
              static_cast<unsigned long long>(TotalBytes(rest_answers)), identity.size());
  CHECK(Hits(center_files, identity) == kNone);
  CHECK(Hits(rest_answers, identity) == kNone);
  // The search reads the bytes that matter: each pseudonym is in the tus store (the manifest),
  // the worker's directories, Orthanc's storage on disk and its REST answers.
  for (std::size_t i = 0; i < pseudonyms.size(); ++i) {
    const std::vector<Term> pseudonym = {{"pseudonymous patient ID of " + patients[i].entry.patient_id, pseudonyms[i]}};
    INFO("pseudonym " << pseudonyms[i]);
    CHECK(Unfound(FilesUnder({center_env.at("TUS_STORE")}), pseudonym) == kNone);
    CHECK(Unfound(FilesUnder({center_env.at("WORK_DIR")}), pseudonym) == kNone);
    CHECK(Unfound(FilesUnder({center_dir / "orthanc/storage"}), pseudonym) == kNone);
    CHECK(Unfound(FilesUnder({center_dir / "orthanc/index"}), pseudonym) == kNone);
    CHECK(Unfound(rest_answers, pseudonym) == kNone);
  }

  // --- The console: each scan's objects under its real identity, the worklist's. ---
  console.process->Stop();
  // The terms are the bytes a holder would have: the UTF-8 ones are in what the console got, the
  // GB18030 ones in the GB18030 worklist file (all but the name without ^, which nothing holds).
  for (const auto& p : patients) {
    std::vector<Term> utf8, gb18030;
    for (const auto& t : IdentityTerms(p)) {
      if (t.label.find("without ^") != std::string::npos) continue;
      (t.label.find("GB18030") == std::string::npos ? utf8 : gb18030).push_back(t);
    }
    INFO("patient " << p.entry.patient_id);
    CHECK(Unfound(FilesUnder({console_dir}), utf8) == kNone);
    if (std::string(p.encoding) == "GB18030") CHECK(Unfound(FilesUnder({worklist.folder()}), gb18030) == kNone);
  }
  std::map<std::string, const Patient*> by_study;
  for (const auto& p : patients) by_study[p.entry.study_uid] = &p;
  std::map<std::string, std::map<std::string, int>> kinds;  // study UID -> kind -> count
  std::map<std::string, fs::path> a_ct;                     // study UID -> one CT file
  for (const auto& file : FilesUnder({console_dir})) {
    const ReceivedObject r = ReadReceived(file);
    INFO("received " << file << " (" << Kind(r.sop_class) << ")");
    REQUIRE(by_study.count(r.study_uid) == 1);  // under a worklist study UID, never a pseudonym
    const Patient& p = *by_study.at(r.study_uid);
    CHECK(r.charset == "ISO_IR 192");
    CHECK(r.name == p.entry.patient_name);  // exact UTF-8
    CHECK(r.id == p.entry.patient_id);
    CHECK(r.birth_date == p.entry.birth_date);
    CHECK(r.sex == p.entry.sex);
    CHECK(r.accession == p.entry.accession);
    ++kinds[r.study_uid][Kind(r.sop_class)];
    if (r.sop_class == UID_CTImageStorage) a_ct[r.study_uid] = file;
    // Nothing of the other patient, nor any pseudonym, in the file's bytes.
    std::vector<Term> foreign = {{"a pseudonymous patient ID", pseudonyms[0]}, {"a pseudonymous patient ID", pseudonyms[1]}};
    for (const auto& other : patients) {
      if (&other == &p) continue;
      for (auto& t : IdentityTerms(other)) foreign.push_back(std::move(t));
    }
    CHECK(Hits({file}, foreign) == kNone);
  }
  for (const auto& p : patients) {
    INFO("patient " << p.entry.patient_id << ", study " << p.entry.study_uid);
    auto& k = kinds[p.entry.study_uid];
    std::printf("privacy e2e: console got for %s: %d CT, %d SEG, %d SR, %d report page(s), %zu object(s) in all\n",
                p.entry.patient_id.c_str(), k["CT"], k["SEG"], k["SR"], k["report page"], k.size());
    CHECK(k["CT"] >= 20);  // the 125 mm covered in 5 mm slices
    CHECK(k["SEG"] == 1);
    CHECK(k["SR"] == 1);
    CHECK(k["report page"] >= 1);
    // dcmdump, as a person at the console would look: the worklist's name in UTF-8.
    REQUIRE(a_ct.count(p.entry.study_uid));
    const fs::path dump = work.path() / ("dcmdump-" + p.entry.patient_id + ".txt");
    test::ChildProcess dcmdump({"dcmdump", "+U8", "+P", "0010,0010", "+P", "0010,0020", "+P", "0008,0050", "+P",
                                "0010,0030", a_ct.at(p.entry.study_uid).string()},
                               dump);
    REQUIRE(dcmdump.Wait(20s) == 0);
    const std::string dumped = test::ReadText(dump);
    INFO("dcmdump: " << dumped);
    CHECK_THAT(dumped, Catch::Contains("[" + p.entry.patient_name + "]"));
    CHECK_THAT(dumped, Catch::Contains("[" + p.entry.patient_id + "]"));
    CHECK_THAT(dumped, Catch::Contains("[" + p.entry.accession + "]"));
    CHECK_THAT(dumped, Catch::Contains("[" + p.entry.birth_date + "]"));
  }

  // --- All agent output: the daemon's log, each command's output, any log file in the spool. ---
  std::vector<fs::path> agent_output = FilesUnder({logs});
  for (const auto& f : FilesUnder({spool_dir})) {
    if (f.extension() == ".log") agent_output.push_back(f);
  }
  CHECK(Hits(agent_output, identity) == kNone);
  // The search saw the scans' log lines (it can hit): where each patient came from, and the
  // pseudonymous study UIDs `ctagent status` shows.
  const std::string daemon_text = test::ReadText(daemon_log);
  CHECK_THAT(daemon_text, Catch::Contains("patient from the worklist"));
  for (const auto& uid : scan_uids) CHECK_THAT(daemon_text, Catch::Contains(uid));

  std::printf("privacy e2e: the test took %.0f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
}
