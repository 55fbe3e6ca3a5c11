// The results fetcher (agent/core/results_fetch.hpp) against the hostile-server harness over HTTPS
// on loopback (tests/support/hostile_server): QIDO-RS answers and WADO-RS instances are static
// rules, the instances real DICOM built here with DCMTK. Each case is a defect of issue 18:
// an instance listed twice, a WADO-RS answer carrying another instance than asked, downloads
// past the spool budget, and a QIDO-RS answer trickled a byte at a time. Then the AI result set
// delivered to a real DCMTK storescp, and (issue 15) a worklist scan's set re-identified from the
// scan's mapping.json before it is stored or sent.
#include <vector>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "base/durable_file.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/core/results_fetch.hpp"
#include "agent/core/uploader.hpp"
#include "base/retry.hpp"
#include "agent/privacy/privacy.hpp"
#include "agent/results/result_set.hpp"
#include "agent/spool/simulated_disk.hpp"
#include "agent/spool/spool.hpp"
#include "tests/results/result_objects.hpp"
#include "tests/support/hostile_server.hpp"
#include "tests/support/process.hpp"
#include "tests/worklist/worklist_server.hpp"

namespace fs = std::filesystem;
using namespace ctagent;
using test::HostileServer;
using test::TempDir;

namespace {

constexpr const char* kBoundary = "ctagent-test-boundary";

// A 64x64 CT slice of `series` in `study` whose series is complete at `images_in_acquisition`
// instances, as DICOM Part 10 bytes.
std::vector<std::uint8_t> MakeCt(const std::string& study, const std::string& series, const std::string& sop,
                                 int images_in_acquisition, int seed, const fs::path& scratch) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  REQUIRE(ds.putAndInsertString(DCM_SOPClassUID, UID_CTImageStorage).good());
  REQUIRE(ds.putAndInsertString(DCM_SOPInstanceUID, sop.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_StudyInstanceUID, study.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesInstanceUID, series.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_Modality, "CT").good());
  REQUIRE(ds.putAndInsertString(DCM_ImagesInAcquisition, std::to_string(images_in_acquisition).c_str()).good());
  REQUIRE(ds.putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
  REQUIRE(ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
  REQUIRE(ds.putAndInsertUint16(DCM_Rows, 64).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Columns, 64).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsAllocated, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsStored, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_HighBit, 15).good());
  REQUIRE(ds.putAndInsertUint16(DCM_PixelRepresentation, 1).good());
  std::vector<Uint16> pixels(64 * 64);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>(i * 7 + static_cast<std::size_t>(seed) * 131);
  REQUIRE(ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  const fs::path path = scratch / (sop + ".dcm");
  REQUIRE(file.saveFile(OFFilename(path.c_str()), EXS_LittleEndianExplicit).good());
  const std::string text = test::ReadText(path);
  return {text.begin(), text.end()};
}

// A UID as a regular expression that matches only itself.
std::string Re(const std::string& uid) {
  std::string out;
  for (char c : uid) {
    if (c == '.') out += '\\';
    out += c;
  }
  return out;
}

nlohmann::json Attribute(const char* vr, const std::string& value) { return {{"vr", vr}, {"Value", {value}}}; }

// The imaging center as static rules: one series of `study`, its instance list `listed` (in that
// order, repeats allowed), and for each instance UID the file its WADO-RS answer sends.
struct Cloud {
  std::string study = MintDicomUid();
  std::string series = MintDicomUid();
  std::vector<std::string> listed;
  std::map<std::string, std::vector<std::uint8_t>> answers;  // asked-for UID -> Part 10 bytes sent

  nlohmann::json Rules(const fs::path& dir) const {
    const std::string base = "^/dicom-web/studies/" + Re(study) + "/series";
    nlohmann::json series_answer = nlohmann::json::array(
        {{{"0020000E", Attribute("UI", series)}, {"00080060", Attribute("CS", "CT")}}});
    nlohmann::json instances_answer = nlohmann::json::array();
    for (const auto& uid : listed) {
      instances_answer.push_back({{"00080018", Attribute("UI", uid)}, {"00080016", Attribute("UI", UID_CTImageStorage)}});
    }
    const nlohmann::json json_headers = {{"Content-Type", "application/dicom+json"}};
    nlohmann::json rules = nlohmann::json::array();
    rules.push_back({{"method", "GET"}, {"path", base + "(\\?.*)?$"},
                     {"action", {{"status", 200}, {"headers", json_headers}, {"body", series_answer.dump()}}}});
    rules.push_back({{"method", "GET"}, {"path", base + "/" + Re(series) + "/instances(\\?.*)?$"},
                     {"action", {{"status", 200}, {"headers", json_headers}, {"body", instances_answer.dump()}}}});
    for (const auto& [uid, bytes] : answers) {
      const fs::path file = dir / ("wado-" + uid + ".multipart");
      std::ofstream out(file, std::ios::binary);
      out << "--" << kBoundary << "\r\nContent-Type: application/dicom\r\n\r\n";
      out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      out << "\r\n--" << kBoundary << "--\r\n";
      REQUIRE(out);
      rules.push_back(
          {{"method", "GET"},
           {"path", base + "/" + Re(series) + "/instances/" + Re(uid) + "$"},
           {"action",
            {{"status", 200},
             {"headers", {{"Content-Type", std::string("multipart/related; type=\"application/dicom\"; boundary=") + kBoundary}}},
             {"body_file", file.string()}}}});
    }
    return rules;
  }

  // How many WADO-RS requests asked for `uid`.
  static std::size_t Retrievals(const HostileServer& server, const std::string& uid) {
    std::size_t n = 0;
    for (const auto& r : server.Requests()) {
      if (r.value("path", "").ends_with("/instances/" + uid)) ++n;
    }
    return n;
  }
};

// A spool holding one uploaded scan of `study` with one chunk, as the results phase finds it.
struct ScanInSpool {
  std::unique_ptr<spool::Spool> spool;
  spool::ScanRecord record;
  std::vector<std::uint8_t> chunk = test::RandomBytes(4096, 18);

  ScanInSpool(FileStore& files, const spool::SpoolOptions& options, const std::string& study) {
    auto opened = spool::Spool::Open(options, files);
    REQUIRE(opened);
    spool = std::move(*opened);
    record.scan_uid = MintDicomUid();
    record.study_uid = study;
    record.created_utc = "2026-12-05T04:00:00Z";
    REQUIRE(spool->BeginScan(record, 0));
    const codec::ManifestChunk c{0, 0, 16, chunk.size() * 2, chunk.size(), Sha256Of(chunk), Sha256Of(chunk)};
    REQUIRE(spool->AddChunk(record.scan_uid, c, chunk));
    REQUIRE(spool->Update(record.scan_uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kUploaded; }));
  }

  spool::ScanRecord Now() const {
    auto r = spool->Get(record.scan_uid);
    REQUIRE(r);
    return *r;
  }
  // The scan's raw data is still there and intact.
  void CheckDataKept() const {
    auto back = spool->ReadChunk(record.scan_uid, 0);
    REQUIRE(back);
    CHECK(*back == chunk);
  }
};

config::AgentConfig ConfigFor(const HostileServer& server, std::uint32_t timeout_s) {
  config::AgentConfig config;
  config.cloud.dicomweb_url = server.origin() + "/dicom-web";
  config.cloud.tls.ca_file = server.ca_file();
  config.cloud.connect_timeout_s = 5;
  config.cloud.stall_timeout_s = 30;
  config.results.poll_interval_ms = 100;
  config.results.poll_max_interval_ms = 200;
  config.results.timeout_s = timeout_s;
  config.console.enabled = false;
  return config;
}

struct FetchRun {
  std::optional<core::ResultsOutcome> outcome;
  std::chrono::steady_clock::duration took{};
  std::int64_t started_unix_ms = 0;  // wall clock around the fetch, for the findings' timeline
  std::int64_t finished_unix_ms = 0;
};

std::int64_t UnixMsNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Runs one FetchAndDeliver to its end, or until `bound` passes (then `outcome` is empty).
// `report_wait`: how long the fetcher waits for an SR after a complete CT series; 0 for the cases
// whose imaging center sends CT only.
// `retry`: the policy failed polls follow; `retries`: where they are counted by class.
FetchRun Fetch(spool::Spool& sp, const config::AgentConfig& config, const spool::ScanRecord& scan,
               std::chrono::seconds bound, std::chrono::milliseconds report_wait = std::chrono::milliseconds(0),
               const RetryPolicy& retry = RetryPolicy::Shared(),
               std::map<std::string, std::uint64_t>* retries = nullptr) {
  boost::asio::io_context io;
  auto fetcher = core::ResultsFetcher::Create(io, sp, config, retry);
  REQUIRE(fetcher);
  (*fetcher)->SetReportWait(report_wait);
  if (retries != nullptr) (*fetcher)->SetRetryCounts(retries);
  FetchRun run;
  const auto started = std::chrono::steady_clock::now();
  run.started_unix_ms = UnixMsNow();
  (*fetcher)->FetchAndDeliver(scan.scan_uid, scan.study_uid, [&](const core::ResultsOutcome& outcome) {
    run.outcome = outcome;
    run.took = std::chrono::steady_clock::now() - started;
    run.finished_unix_ms = UnixMsNow();
    io.stop();
  });
  boost::asio::steady_timer guard(io, bound);
  guard.async_wait([&](const boost::system::error_code& ec) {
    if (!ec) io.stop();
  });
  auto work = boost::asio::make_work_guard(io);
  io.run();
  (*fetcher)->Stop();
  return run;
}

std::string Message(const core::ResultsOutcome& outcome) {
  return outcome.status ? std::string("OK") : outcome.status.error().message();
}

}  // namespace

TEST_CASE("results fetch: an instance QIDO lists twice counts once, so a series is not complete early",
          "[results][fetch][hostile]") {
  TempDir dir("results-fetch-dup");
  Cloud cloud;
  const std::string a = MintDicomUid();
  const std::string b = MintDicomUid();
  // The series will hold 3 images; the cloud has 2 so far and lists the first one twice.
  cloud.listed = {a, a, b};
  cloud.answers[a] = MakeCt(cloud.study, cloud.series, a, 3, 1, dir.path());
  cloud.answers[b] = MakeCt(cloud.study, cloud.series, b, 3, 2, dir.path());
  auto server = HostileServer::Start(cloud.Rules(dir.path()));
  PosixFileStore files;
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, cloud.study);

  const auto run = Fetch(*scan.spool, ConfigFor(*server, 2), scan.record, std::chrono::seconds(60));
  REQUIRE(run.outcome);
  INFO(Message(*run.outcome));
  // Two distinct images of three: still waiting when results.timeout_s ends the phase.
  CHECK_FALSE(run.outcome->status);
  CHECK_THAT(Message(*run.outcome), Catch::Contains("no complete result series"));
  CHECK(run.outcome->instances_received == 2);
  const auto record = scan.Now();
  CHECK(record.state == spool::ScanState::kUploaded);
  REQUIRE(record.results.size() == 2);
  CHECK(std::set<std::string>{record.results[0].sop_instance_uid, record.results[1].sop_instance_uid} ==
        std::set<std::string>{a, b});
  CHECK(Cloud::Retrievals(*server, a) == 1);
  scan.CheckDataKept();

  SECTION("once the third image is listed, the series completes with three distinct instances") {
    const std::string c = MintDicomUid();
    cloud.listed = {a, b, a, c, b};
    cloud.answers[c] = MakeCt(cloud.study, cloud.series, c, 3, 3, dir.path());
    server->SetRules(cloud.Rules(dir.path()));
    const auto second = Fetch(*scan.spool, ConfigFor(*server, 20), scan.record, std::chrono::seconds(60));
    REQUIRE(second.outcome);
    INFO(Message(*second.outcome));
    REQUIRE(second.outcome->status);
    CHECK(second.outcome->instances_received == 1);
    const auto done = scan.Now();
    CHECK(done.state == spool::ScanState::kResultsReceived);
    CHECK(done.results.size() == 3);
    const auto stored = scan.spool->ResultPath(scan.record.scan_uid, c);
    const std::string text = test::ReadText(stored);
    CHECK(std::vector<std::uint8_t>(text.begin(), text.end()) == cloud.answers[c]);
  }
}

TEST_CASE("results fetch: a WADO-RS answer that is not the instance QIDO listed is refused",
          "[results][fetch][hostile]") {
  TempDir dir("results-fetch-wrong");
  Cloud cloud;
  const std::string a = MintDicomUid();
  const std::string b = MintDicomUid();
  const std::string c = MintDicomUid();
  cloud.listed = {a, b, c};
  cloud.answers[a] = MakeCt(cloud.study, cloud.series, a, 3, 1, dir.path());
  // Asked for b, the server sends a again; asked for c, it sends a c of another series.
  cloud.answers[b] = cloud.answers[a];
  cloud.answers[c] = MakeCt(cloud.study, MintDicomUid(), c, 3, 3, dir.path());
  auto server = HostileServer::Start(cloud.Rules(dir.path()));
  PosixFileStore files;
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, cloud.study);

  const auto run = Fetch(*scan.spool, ConfigFor(*server, 2), scan.record, std::chrono::seconds(60));
  REQUIRE(run.outcome);
  const std::string message = Message(*run.outcome);
  INFO(message);
  REQUIRE_FALSE(run.outcome->status);
  CHECK(run.outcome->instances_received == 1);
  CHECK(run.outcome->instances_refused == 2);
  CHECK(run.outcome->instances_delivered == 0);
  CHECK_THAT(message, Catch::Contains("refused") && Catch::Contains(b) && Catch::Contains("answered with instance " + a));
  // Only a is kept, under its own name and with its own bytes; b and c are nowhere.
  const auto record = scan.Now();
  CHECK(record.state == spool::ScanState::kUploaded);
  REQUIRE(record.results.size() == 1);
  CHECK(record.results[0].sop_instance_uid == a);
  const std::string kept = test::ReadText(scan.spool->ResultPath(scan.record.scan_uid, a));
  CHECK(std::vector<std::uint8_t>(kept.begin(), kept.end()) == cloud.answers[a]);
  CHECK_FALSE(fs::exists(scan.spool->ResultPath(scan.record.scan_uid, b)));
  CHECK_FALSE(fs::exists(scan.spool->ResultPath(scan.record.scan_uid, c)));
  // A refused instance is not downloaded again by the same job, however often it polls.
  CHECK(Cloud::Retrievals(*server, b) == 1);
  CHECK(Cloud::Retrievals(*server, c) == 1);
  scan.CheckDataKept();
}

TEST_CASE("results fetch: downloads stop at spool.max_bytes and the rest is fetched once there is room",
          "[results][fetch][hostile]") {
  TempDir dir("results-fetch-budget");
  Cloud cloud;
  constexpr int kImages = 8;  // about 8.5 KiB each
  for (int i = 0; i < kImages; ++i) {
    const std::string uid = MintDicomUid();
    cloud.listed.push_back(uid);
    cloud.answers[uid] = MakeCt(cloud.study, cloud.series, uid, kImages, i, dir.path());
  }
  auto server = HostileServer::Start(cloud.Rules(dir.path()));
  PosixFileStore files;
  const fs::path spool_dir = dir.path() / "spool";
  constexpr std::uint64_t kBudget = 48 * 1024;  // room for some of the images, not all
  std::string scan_uid;
  {
    ScanInSpool scan(files, {spool_dir, kBudget, 0}, cloud.study);
    scan_uid = scan.record.scan_uid;
    const auto run = Fetch(*scan.spool, ConfigFor(*server, 20), scan.record, std::chrono::seconds(60));
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    CHECK(run.outcome->status.error().kind() == ErrorKind::kNoSpace);
    CHECK_THAT(message, Catch::Contains("spool.max_bytes") && Catch::Contains("fetched again"));
    CHECK(run.outcome->instances_received > 0);
    CHECK(run.outcome->instances_received < kImages);
    CHECK(scan.spool->Space().used_bytes <= kBudget);
    const auto record = scan.Now();
    CHECK(record.state == spool::ScanState::kUploaded);  // not failed: the results stay fetchable
    CHECK(record.results.size() == run.outcome->instances_received);
    scan.CheckDataKept();
  }
  // With room (the operator raised spool.max_bytes), the next run fetches the rest.
  auto reopened = spool::Spool::Open({spool_dir, 1ull << 30, 0}, files);
  REQUIRE(reopened);
  auto record = (*reopened)->Get(scan_uid);
  REQUIRE(record);
  const auto run = Fetch(**reopened, ConfigFor(*server, 20), *record, std::chrono::seconds(60));
  REQUIRE(run.outcome);
  INFO(Message(*run.outcome));
  REQUIRE(run.outcome->status);
  auto after = (*reopened)->Get(scan_uid);
  REQUIRE(after);
  CHECK(after->state == spool::ScanState::kResultsReceived);
  CHECK(after->results.size() == kImages);
  for (const auto& uid : cloud.listed) CHECK(Cloud::Retrievals(*server, uid) >= 1);
}

TEST_CASE("results fetch: downloads keep spool.min_free_bytes free on the spool's file system",
          "[results][fetch][hostile]") {
  TempDir dir("results-fetch-free");
  Cloud cloud;
  for (int i = 0; i < 6; ++i) {
    const std::string uid = MintDicomUid();
    cloud.listed.push_back(uid);
    cloud.answers[uid] = MakeCt(cloud.study, cloud.series, uid, 6, i, dir.path());
  }
  auto server = HostileServer::Start(cloud.Rules(dir.path()));
  // A 1 MiB disk of which all but about 20 KiB must stay free.
  SimulatedDisk disk(1 << 20);
  constexpr std::uint64_t kMinFree = (1 << 20) - 20 * 1024;
  ScanInSpool scan(disk, {"/spool", 1ull << 30, kMinFree}, cloud.study);
  const auto run = Fetch(*scan.spool, ConfigFor(*server, 20), scan.record, std::chrono::seconds(60));
  REQUIRE(run.outcome);
  const std::string message = Message(*run.outcome);
  INFO(message);
  REQUIRE_FALSE(run.outcome->status);
  CHECK(run.outcome->status.error().kind() == ErrorKind::kNoSpace);
  CHECK_THAT(message, Catch::Contains("spool.min_free_bytes"));
  CHECK(run.outcome->instances_received < 6);
  CHECK(*disk.FreeBytes("/spool") >= kMinFree);
  CHECK(scan.Now().state == spool::ScanState::kUploaded);
}

TEST_CASE("results fetch: a power cut anywhere in a fetch leaves every instance the record lists on disk, intact",
          "[results][fetch][hostile][durability]") {
  // Instances are downloaded several at once and kept in batches (files synced together, the
  // record updated once per batch): the record must never list a file that is not yet durable.
  TempDir dir("results-fetch-crash");
  Cloud cloud;
  // A full batch and a partial one.
  constexpr int kImages = static_cast<int>(core::ResultsFetcher::kBatchInstances) + 3;
  for (int i = 0; i < kImages; ++i) {
    const std::string uid = MintDicomUid();
    cloud.listed.push_back(uid);
    cloud.answers[uid] = MakeCt(cloud.study, cloud.series, uid, kImages, i, dir.path());
  }
  auto server = HostileServer::Start(cloud.Rules(dir.path()));
  const spool::SpoolOptions options{"/spool", 1ull << 30, 0};
  std::size_t crashes = 0;
  std::size_t recovered_with_results = 0;
  bool completed = false;
  for (std::uint64_t op = 1; op <= 200 && !completed; ++op) {
    INFO("crash at mutating operation " << op << " of the fetch");
    SimulatedDisk disk;
    ScanInSpool scan(disk, options, cloud.study);
    disk.CrashAtOp(op);
    const auto run = Fetch(*scan.spool, ConfigFor(*server, 20), scan.record, std::chrono::seconds(60));
    REQUIRE(run.outcome);
    if (!disk.crashed()) {
      // The whole fetch ran before the crash point: all of it is kept.
      REQUIRE(run.outcome->status);
      CHECK(scan.Now().results.size() == kImages);
      completed = true;
      break;
    }
    ++crashes;
    CHECK_FALSE(run.outcome->status);
    disk.Reboot(op);
    auto reopened = spool::Spool::Open(options, disk);
    REQUIRE(reopened);
    auto record = (*reopened)->Get(scan.record.scan_uid);
    REQUIRE(record);
    for (const auto& r : record->results) {
      auto bytes = disk.ReadAll((*reopened)->ResultPath(scan.record.scan_uid, r.sop_instance_uid), 1 << 20);
      REQUIRE(bytes);
      CHECK(*bytes == cloud.answers.at(r.sop_instance_uid));
    }
    if (!record->results.empty()) ++recovered_with_results;
    auto chunk = (*reopened)->ReadChunk(scan.record.scan_uid, 0);
    REQUIRE(chunk);
    CHECK(*chunk == scan.chunk);
  }
  CHECK(completed);
  // The crash points covered the batches' writes, syncs and record updates.
  CHECK(crashes >= 6);
  CHECK(recovered_with_results >= 1);
}

TEST_CASE("results fetch: an instance larger than a parallel download's share of max_instance_bytes is still fetched",
          "[results][fetch][hostile]") {
  TempDir dir("results-fetch-share");
  Cloud cloud;
  constexpr int kImages = 5;  // about 8.5 KiB each
  for (int i = 0; i < kImages; ++i) {
    const std::string uid = MintDicomUid();
    cloud.listed.push_back(uid);
    cloud.answers[uid] = MakeCt(cloud.study, cloud.series, uid, kImages, i, dir.path());
  }
  auto server = HostileServer::Start(cloud.Rules(dir.path()));
  PosixFileStore files;
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, cloud.study);
  auto config = ConfigFor(*server, 20);
  // Each download of a batch may hold 16 KiB / kBatchInstances: every image is past its share
  // and within the limit, so each is fetched again alone, with the whole limit.
  config.results.max_instance_bytes = 16 * 1024;
  static_assert(16 * 1024 / core::ResultsFetcher::kBatchInstances < 8 * 1024);
  const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(60));
  REQUIRE(run.outcome);
  INFO(Message(*run.outcome));
  REQUIRE(run.outcome->status);
  CHECK(run.outcome->instances_received == kImages);
  CHECK(run.outcome->instances_refused == 0);
  const auto record = scan.Now();
  CHECK(record.state == spool::ScanState::kResultsReceived);
  REQUIRE(record.results.size() == kImages);
  for (const auto& r : record.results) {
    const std::string kept = test::ReadText(scan.spool->ResultPath(scan.record.scan_uid, r.sop_instance_uid));
    CHECK(std::vector<std::uint8_t>(kept.begin(), kept.end()) == cloud.answers.at(r.sop_instance_uid));
    CHECK(Cloud::Retrievals(*server, r.sop_instance_uid) == 2);
  }

  SECTION("one past max_instance_bytes itself is not kept, and the round says why") {
    TempDir dir2("results-fetch-share-over");
    PosixFileStore files2;
    ScanInSpool other(files2, {dir2.path() / "spool", 1ull << 30, 0}, cloud.study);
    config.results.max_instance_bytes = 8 * 1024;  // below every image
    config.results.timeout_s = 3;
    const auto over = Fetch(*other.spool, config, other.record, std::chrono::seconds(60));
    REQUIRE(over.outcome);
    INFO(Message(*over.outcome));
    CHECK_FALSE(over.outcome->status);
    CHECK(over.outcome->instances_received == 0);
    CHECK(other.Now().results.empty());
  }
}

TEST_CASE("results fetch: a trickled QIDO-RS answer ends the results phase at results.timeout_s, data kept",
          "[results][fetch][hostile]") {
  TempDir dir("results-fetch-trickle");
  Cloud cloud;
  // A valid answer (about 150 bytes) sent one byte every 500 ms: over a minute, never a stall.
  const nlohmann::json series_answer = nlohmann::json::array(
      {{{"0020000E", Attribute("UI", cloud.series)}, {"00080060", Attribute("CS", "CT")}}});
  const nlohmann::json rules = nlohmann::json::array(
      {{{"method", "GET"},
        {"path", "/series"},
        {"action",
         {{"status", 200}, {"headers", {{"Content-Type", "application/dicom+json"}}}, {"body", series_answer.dump()},
          {"trickle_ms", 500}}}}});
  auto server = HostileServer::Start(rules);
  PosixFileStore files;
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, cloud.study);

  SECTION("untouched, it ends by itself at the deadline") {
    // Bounded wait only to keep a regression from hanging the suite; the answer alone would take
    // over a minute, and the stall check never fires on it.
    const auto run = Fetch(*scan.spool, ConfigFor(*server, 3), scan.record, std::chrono::seconds(40));
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    CHECK_THAT(message, Catch::Contains("within 3 s (results.timeout_s)") && Catch::Contains("deadline"));
    CHECK(run.outcome->instances_received == 0);
    CHECK(scan.Now().state == spool::ScanState::kUploaded);
    scan.CheckDataKept();
  }
  SECTION("Stop() ends the request in flight") {
    // The request runs on the loop: the loop runs until the server has it, then Stop() is
    // called and the job must end (its completion says the agent is stopping) long before the
    // trickled answer could.
    boost::asio::io_context io;
    auto fetcher = core::ResultsFetcher::Create(io, *scan.spool, ConfigFor(*server, 600));
    REQUIRE(fetcher);
    std::optional<core::ResultsOutcome> outcome;
    (*fetcher)->FetchAndDeliver(scan.record.scan_uid, scan.record.study_uid,
                                [&](const core::ResultsOutcome& done) { outcome = done; });
    const auto run_until = [&](const std::function<bool()>& done, std::chrono::seconds bound) {
      const auto give_up = std::chrono::steady_clock::now() + bound;
      while (!done() && std::chrono::steady_clock::now() < give_up) {
        io.restart();
        io.run_for(std::chrono::milliseconds(50));
      }
      return done();
    };
    REQUIRE(run_until([&] { return !server->Requests().empty(); }, std::chrono::seconds(20)));
    const auto asked = std::chrono::steady_clock::now();
    (*fetcher)->Stop();
    REQUIRE(run_until([&] { return outcome.has_value(); }, std::chrono::seconds(20)));
    const auto took = std::chrono::steady_clock::now() - asked;
    INFO("the job ended " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                          << " ms after Stop()");
    CHECK(took < std::chrono::seconds(10));  // the answer alone would take over a minute
    REQUIRE_FALSE(outcome->status);
    CHECK(outcome->status.error().kind() == ErrorKind::kCancelled);
    CHECK_THAT(Message(*outcome), Catch::Contains("stopping"));
    scan.CheckDataKept();
  }
}

TEST_CASE("results fetch: failures follow the one retry policy: a clock behind is retried, a rejected certificate "
          "ends the job at once",
          "[results][fetch][hostile][retry]") {
  TempDir dir("results-fetch-retry");
  Cloud cloud;
  PosixFileStore files;
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, cloud.study);
  RetryPolicy fast;
  fast.delay_scale = 0.001;  // the table's classes and attempt caps, with delays in ms not s
  std::map<std::string, std::uint64_t> retries;
  test::HostileOptions options;

  SECTION("a server certificate not yet valid (this terminal's clock is behind) is retried as clock-skew") {
    // The uploads retry the same class the same way (tests/transport: uploader and TLS tests).
    options.certificate = "not-yet-valid";
    auto server = HostileServer::Start(cloud.Rules(dir.path()), options);
    const auto run = Fetch(*scan.spool, ConfigFor(*server, 600), scan.record, std::chrono::seconds(120),
                           std::chrono::milliseconds(0), fast, &retries);
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    const auto attempts = fast.For(FailureClass::kClockSkew).max_attempts;
    // Every failed poll but the last was retried, counted under the uploads' class name.
    CHECK(retries == std::map<std::string, std::uint64_t>{{"clock-skew", attempts - 1}});
    CHECK(run.outcome->status.error().failure() == FailureClass::kClockSkew);
    CHECK_THAT(message, Catch::Contains("[clock-skew, gave up after " + std::to_string(attempts) +
                                        " failed polls in a row") &&
                            Catch::Contains("not yet valid") && Catch::Contains("clock"));
    CHECK(scan.Now().state == spool::ScanState::kUploaded);
    scan.CheckDataKept();
  }
  SECTION("an expired server certificate is tls-rejected: not retried, and the error says what to fix") {
    options.certificate = "expired";
    auto server = HostileServer::Start(cloud.Rules(dir.path()), options);
    const auto run = Fetch(*scan.spool, ConfigFor(*server, 600), scan.record, std::chrono::seconds(120),
                           std::chrono::milliseconds(0), fast, &retries);
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    CHECK(retries.empty());
    CHECK(run.outcome->status.error().failure() == FailureClass::kTlsRejected);
    CHECK_FALSE(run.outcome->status.error().IsTransient());
    CHECK_THAT(message, Catch::Contains("[tls-rejected, not retried: TLS was refused") &&
                            Catch::Contains("cloud.tls") && Catch::Contains("has expired"));
    CHECK(scan.Now().state == spool::ScanState::kUploaded);
    scan.CheckDataKept();
  }
}

TEST_CASE("retry policy: uploads and results retry by the same table, and Error::IsTransient reads it",
          "[results][fetch][retry]") {
  TempDir dir("results-fetch-policy");
  PosixFileStore files;
  auto opened = spool::Spool::Open({dir.path() / "spool", 1ull << 30, 0}, files);
  REQUIRE(opened);
  boost::asio::io_context io;
  config::AgentConfig config;
  config.cloud.upload_url = "https://127.0.0.1:9/files/";
  config.cloud.dicomweb_url = "https://127.0.0.1:9/dicom-web";
  auto fetcher = core::ResultsFetcher::Create(io, **opened, config);
  REQUIRE(fetcher);
  core::Uploader uploader(io, **opened, config.cloud);
  // One type (base/retry.hpp), and by default both hold the process's one policy.
  static_assert(std::is_same_v<std::remove_cvref_t<decltype(uploader.retry_policy())>,
                               std::remove_cvref_t<decltype((*fetcher)->retry_policy())>>);
  const RetryPolicy& shared = RetryPolicy::Shared();
  CHECK(uploader.retry_policy().table == shared.table);
  CHECK((*fetcher)->retry_policy().table == shared.table);
  CHECK(uploader.retry_policy().delay_scale == shared.delay_scale);
  CHECK((*fetcher)->retry_policy().delay_scale == shared.delay_scale);
  CHECK(shared.table == DefaultRetryTable());
  // Every class has its row, and an error of that class is transient exactly when the row
  // retries it: there is no second rule.
  for (int c = static_cast<int>(FailureClass::kNone); c <= static_cast<int>(FailureClass::kLocal); ++c) {
    const auto failure = static_cast<FailureClass>(c);
    INFO(ToString(failure));
    CHECK(shared.table.count(failure) == 1);
    CHECK(Error(ErrorKind::kNetwork, "x", failure).IsTransient() == !shared.For(failure).permanent);
  }
  // The ones the two paths used to disagree on, and the defaults by kind.
  CHECK(Error(ErrorKind::kTls, "x", FailureClass::kClockSkew).IsTransient());
  CHECK_FALSE(Error(ErrorKind::kTls, "x").IsTransient());
  CHECK(Error(ErrorKind::kNetwork, "x").failure() == FailureClass::kConnectionLost);
  CHECK(Error(ErrorKind::kIo, "x").failure() == FailureClass::kLocal);
  CHECK(Error(ErrorKind::kIo, "x", FailureClass::kStall).WithContext("ctx").failure() == FailureClass::kStall);
  uploader.Stop();
  (*fetcher)->Stop();
}

namespace {

namespace objects = test::result_objects;

// An imaging center with the whole AI result set (docs/results.md, "The AI result set"): a CT
// series of two slices, the SEG, one report page and the SR, each in its own series, served as
// QIDO-RS / WADO-RS rules.
struct AiCloud {
  std::string study = MintDicomUid();
  std::string ct_series = MintDicomUid();
  std::vector<std::string> ct = {MintDicomUid(), MintDicomUid()};
  std::string seg_series = MintDicomUid(), seg = MintDicomUid();
  std::string report_series = MintDicomUid(), report = MintDicomUid();
  std::string sr_series = MintDicomUid(), sr = MintDicomUid();
  struct Instance {
    std::string series;
    std::string sop_class;
    std::vector<std::uint8_t> bytes;
  };
  std::map<std::string, Instance> instances;  // served, by SOP instance UID

  objects::SrSpec Sr() const {
    objects::SrSpec spec;
    spec.study = study;
    spec.series = sr_series;
    spec.sop = sr;
    spec.image_refs = ct;
    for (const auto& uid : ct) spec.evidence.push_back({study, ct_series, UID_CTImageStorage, uid});
    spec.evidence.push_back({study, seg_series, UID_SegmentationStorage, seg});
    spec.evidence.push_back({study, report_series, UID_SecondaryCaptureImageStorage, report});
    return spec;
  }

  // The CT series; with `ai` also the SEG, the report page and the SR built from `sr_spec`.
  void Build(const fs::path& dir, bool ai, std::optional<objects::SrSpec> sr_spec = std::nullopt) {
    for (const auto& uid : ct) {
      instances[uid] = {ct_series, UID_CTImageStorage,
                        objects::MakeCt(study, ct_series, uid, static_cast<int>(ct.size()), dir / (uid + ".dcm"))};
    }
    if (!ai) return;
    instances[seg] = {seg_series, UID_SegmentationStorage,
                      objects::MakeSeg({study, seg_series, seg, ct_series, ct}, dir / "seg.dcm")};
    instances[report] = {report_series, UID_SecondaryCaptureImageStorage,
                         objects::MakeReportPage(study, report_series, report, dir / "report.dcm")};
    instances[sr] = {sr_series, UID_ComprehensiveSRStorage, objects::MakeSr(sr_spec ? *sr_spec : Sr(), dir / "sr.dcm")};
  }

  nlohmann::json Rules(const fs::path& dir) const {
    const std::string base = "^/dicom-web/studies/" + Re(study) + "/series";
    const nlohmann::json json_headers = {{"Content-Type", "application/dicom+json"}};
    std::map<std::string, nlohmann::json> by_series;
    for (const auto& [uid, inst] : instances) {
      by_series[inst.series].push_back(
          {{"00080018", Attribute("UI", uid)}, {"00080016", Attribute("UI", inst.sop_class)}});
    }
    nlohmann::json series_answer = nlohmann::json::array();
    for (const auto& [series, list] : by_series) series_answer.push_back({{"0020000E", Attribute("UI", series)}});
    nlohmann::json rules = nlohmann::json::array();
    rules.push_back({{"method", "GET"}, {"path", base + "(\\?.*)?$"},
                     {"action", {{"status", 200}, {"headers", json_headers}, {"body", series_answer.dump()}}}});
    for (const auto& [series, list] : by_series) {
      rules.push_back({{"method", "GET"}, {"path", base + "/" + Re(series) + "/instances(\\?.*)?$"},
                       {"action", {{"status", 200}, {"headers", json_headers}, {"body", list.dump()}}}});
    }
    for (const auto& [uid, inst] : instances) {
      const fs::path file = dir / ("wado-" + uid + ".multipart");
      std::ofstream out(file, std::ios::binary);
      out << "--" << kBoundary << "\r\nContent-Type: application/dicom\r\n\r\n";
      out.write(reinterpret_cast<const char*>(inst.bytes.data()), static_cast<std::streamsize>(inst.bytes.size()));
      out << "\r\n--" << kBoundary << "--\r\n";
      REQUIRE(out);
      rules.push_back(
          {{"method", "GET"},
           {"path", base + "/" + Re(inst.series) + "/instances/" + Re(uid) + "$"},
           {"action",
            {{"status", 200},
             {"headers", {{"Content-Type", std::string("multipart/related; type=\"application/dicom\"; boundary=") + kBoundary}}},
             {"body_file", file.string()}}}});
    }
    return rules;
  }
};

// The console: DCMTK storescp on a free loopback port, optionally with an association profile.
struct Console {
  fs::path out;
  std::uint16_t port = test::FreeLoopbackPort();
  std::unique_ptr<test::ChildProcess> process;

  Console(const fs::path& dir, std::vector<std::string> extra = {}) : out(dir / "console") {
    fs::create_directories(out);
    std::vector<std::string> argv = {"storescp", "-aet", "CONSOLE", "-od", out.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back(std::to_string(port));
    const fs::path log = dir / "storescp.log";
    process = std::make_unique<test::ChildProcess>(argv, log);
    INFO("storescp log: " << test::ReadText(log));
    REQUIRE(test::WaitFor([&] { return test::PortAcceptsConnections(port) || !process->Running(); },
                          std::chrono::seconds(10)));
    REQUIRE(process->Running());
  }

  void Configure(config::AgentConfig& config) const {
    config.console.enabled = true;
    config.console.host = "127.0.0.1";
    config.console.port = port;
    config.console.called_ae = "CONSOLE";
    config.console.calling_ae = "CTAGENT";
  }

  // SOP instance UIDs of what the console stored.
  std::set<std::string> Received() const {
    std::set<std::string> uids;
    for (const auto& entry : fs::directory_iterator(out)) {
      DcmFileFormat file;
      if (file.loadFile(OFFilename(entry.path().c_str())).bad()) continue;
      OFString uid;
      (void)file.getDataset()->findAndGetOFString(DCM_SOPInstanceUID, uid);
      uids.insert(uid.c_str());
    }
    return uids;
  }
};

}  // namespace

TEST_CASE("results fetch: the AI result set is fetched whole, checked, delivered and its findings recorded",
          "[results][fetch][aiset]") {
  TempDir dir("results-fetch-aiset");
  AiCloud cloud;
  PosixFileStore files;
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, cloud.study);
  const std::set<std::string> ct(cloud.ct.begin(), cloud.ct.end());
  const std::set<std::string> all = {cloud.ct[0], cloud.ct[1], cloud.seg, cloud.report, cloud.sr};
  const fs::path spool_dir = dir.path() / "spool";

  SECTION("complete set: the console gets CT, SEG, report and SR; status shows the findings") {
    cloud.Build(dir.path(), true);
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    // A long report wait: the SR is there, so the set completes without waiting for it.
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90), std::chrono::minutes(10));
    REQUIRE(run.outcome);
    INFO(Message(*run.outcome));
    REQUIRE(run.outcome->status);
    CHECK(run.outcome->instances_received == 5);
    CHECK(run.outcome->instances_delivered == 5);
    CHECK(run.outcome->findings.report == "received");
    CHECK(run.outcome->findings.findings.category == "HIGH-RISK");
    CHECK(console.Received() == all);
    CHECK(scan.Now().state == spool::ScanState::kDelivered);
    auto findings = results::ReadScanFindings(spool_dir, scan.record.scan_uid);
    REQUIRE(findings);
    CHECK(results::DescribeFindings(*findings) == "AI: HIGH-RISK, 2 lesion(s), involvement right 4.5 %, left 1.2 %");
    // The results phase's milestones (what bench/latency reads), in order, within this run.
    const auto& t = findings->timeline_unix_ms;
    INFO("discovered " << t.discovered << " retrieved " << t.retrieved << " validated " << t.validated
                       << " delivered " << t.delivered << " fetch started " << run.started_unix_ms);
    CHECK(t.discovered >= run.started_unix_ms);
    CHECK(t.retrieved >= t.discovered);
    CHECK(t.validated >= t.retrieved);
    CHECK(t.delivered >= t.validated);
    CHECK(t.delivered <= run.finished_unix_ms);
  }
  SECTION("a foreign SR: the set is refused, only the CT series reaches the console") {
    auto spec = cloud.Sr();
    const std::string other_study = MintDicomUid();
    spec.evidence.push_back({other_study, MintDicomUid(), UID_CTImageStorage, MintDicomUid()});
    cloud.Build(dir.path(), true, spec);
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90));
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    CHECK_THAT(message, Catch::Contains("the AI result set was refused and not delivered (only the CT series was)") &&
                            Catch::Contains("of study " + other_study) && Catch::Contains("a foreign report"));
    CHECK(run.outcome->instances_delivered == 2);
    CHECK(console.Received() == ct);
    CHECK(run.outcome->findings.report == "refused");
    CHECK(scan.Now().state == spool::ScanState::kDelivered);
    auto findings = results::ReadScanFindings(spool_dir, scan.record.scan_uid);
    REQUIRE(findings);
    CHECK(findings->report == "refused");
    CHECK_THAT(findings->refused_reason, Catch::Contains("structured report " + cloud.sr));
  }
  SECTION("an SR of another study listed under this one: refused at validation, SEG and report not delivered") {
    auto spec = cloud.Sr();
    spec.study = MintDicomUid();
    cloud.Build(dir.path(), true, spec);
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90));
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    CHECK_THAT(message, Catch::Contains("instance " + cloud.sr + " belongs to study " + spec.study));
    CHECK(run.outcome->instances_refused == 1);
    CHECK(console.Received() == ct);
    CHECK(run.outcome->findings.report == "refused");
  }
  SECTION("a SEG that refers to images not of this scan: the set is refused, only the CT is delivered") {
    cloud.Build(dir.path(), true);
    cloud.instances[cloud.seg].bytes =
        objects::MakeSeg({cloud.study, cloud.seg_series, cloud.seg, cloud.ct_series, {cloud.ct[0], MintDicomUid()}},
                         dir.path() / "seg-foreign.dcm");
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90));
    REQUIRE(run.outcome);
    INFO(Message(*run.outcome));
    REQUIRE_FALSE(run.outcome->status);
    CHECK_THAT(Message(*run.outcome), Catch::Contains("segmentation " + cloud.seg + " refers to instance"));
    CHECK(console.Received() == ct);
  }
  SECTION("a center that sends CT only: after the report wait the CT series is delivered, findings 'none'") {
    cloud.Build(dir.path(), false);
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90), std::chrono::milliseconds(300));
    REQUIRE(run.outcome);
    INFO(Message(*run.outcome));
    REQUIRE(run.outcome->status);
    CHECK(run.outcome->findings.report == "none");
    CHECK(console.Received() == ct);
    auto findings = results::ReadScanFindings(spool_dir, scan.record.scan_uid);
    REQUIRE(findings);
    CHECK(results::DescribeFindings(*findings) == "AI: no report (the imaging center sent CT only)");
  }
  SECTION("the SR not there yet at the end of results.timeout_s: nothing delivered, the scan waits") {
    cloud.Build(dir.path(), false);
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 2);
    console.Configure(config);
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(60), std::chrono::minutes(10));
    REQUIRE(run.outcome);
    INFO(Message(*run.outcome));
    REQUIRE_FALSE(run.outcome->status);
    CHECK_THAT(Message(*run.outcome), Catch::Contains("within 2 s (results.timeout_s)"));
    CHECK(console.Received().empty());
    CHECK(scan.Now().state == spool::ScanState::kUploaded);
  }
  SECTION("a console without SR storage gets the rest; the outcome and the findings name the refused class") {
    cloud.Build(dir.path(), true);
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    const fs::path cfg = dir.path() / "no-sr.cfg";
    std::ofstream(cfg) << "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\n"
                          "TransferSyntax2 = LittleEndianImplicit\n"
                          "[[PresentationContexts]]\n[NoSR]\n"
                          "PresentationContext1 = VerificationSOPClass\\Uncompressed\n"
                          "PresentationContext2 = CTImageStorage\\Uncompressed\n"
                          "PresentationContext3 = SegmentationStorage\\Uncompressed\n"
                          "PresentationContext4 = SecondaryCaptureImageStorage\\Uncompressed\n"
                          "[[Profiles]]\n[NoSR]\nPresentationContexts = NoSR\n";
    Console console(dir.path(), {"-xf", cfg.string(), "NoSR"});
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    const auto run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90));
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    REQUIRE_FALSE(run.outcome->status);
    CHECK_THAT(message, Catch::Contains("the console (CONSOLE) did not take ComprehensiveSRStorage (" +
                                        std::string(UID_ComprehensiveSRStorage) + "): 1 instance(s)") &&
                            Catch::Contains("the other 4 instance(s) were delivered"));
    auto expected = all;
    expected.erase(cloud.sr);
    CHECK(console.Received() == expected);
    CHECK(run.outcome->instances_delivered == 4);
    const auto record = scan.Now();
    CHECK(record.state == spool::ScanState::kDelivered);
    for (const auto& r : record.results) CHECK(r.delivered == (r.sop_instance_uid != cloud.sr));
    auto findings = results::ReadScanFindings(spool_dir, scan.record.scan_uid);
    REQUIRE(findings);
    REQUIRE(findings->console_refused.size() == 1);
    CHECK_THAT(findings->console_refused[0], Catch::Contains("ComprehensiveSRStorage"));
    CHECK(findings->findings.category == "HIGH-RISK");
  }
}

namespace {

// A worklist scan (issue 15): the patient's real identity, as the worklist gave it.
const std::string kRealName = "\xE7\x8E\x8B^\xE5\xB0\x8F\xE6\x98\x8E";  // 王小明, UTF-8
const std::string kRealId = "PID-ZH-8812";
const std::string kRealBirthDate = "19580611";
const std::string kRealAccession = "ACCZH0042";
const std::string kRealStudy = "1.2.826.0.1.3680043.2.1125.77.4242";
// A UID of the scan the agent remapped besides the study (the acquisition's frame of reference),
// which the center's CT and SEG carry on.
const std::string kRealFrame = "1.2.826.0.1.3680043.2.1125.77.4243";

privacy::SiteKey TestSiteKey() {
  std::array<std::uint8_t, privacy::SiteKey::kBytes> bytes{};
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 29 + 7);
  return privacy::SiteKey::FromBytes(bytes);
}

DcmDataset& LoadInto(DcmFileFormat& file, const fs::path& path) {
  const OFCondition loaded = file.loadFile(OFFilename(path.c_str()));
  INFO(path << ": " << loaded.text());
  REQUIRE(loaded.good());
  return *file.getDataset();
}

std::string Value(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  item.findAndGetOFStringArray(tag, value);
  return value.c_str();
}

// What the center makes of a pseudonymised upload: each object of `cloud` carries the patient
// pseudonym `patient_id`, the accession pseudonym, no name, an age band, text in ISO_IR 100, and
// (CT and SEG) the remapped frame of reference.
void AsFromCenter(AiCloud& cloud, const std::string& patient_id, const privacy::MappingRecord& mapping,
                  const std::string& frame_pseudonym, const fs::path& dir) {
  for (auto& [uid, inst] : cloud.instances) {
    const fs::path path = dir / ("center-" + uid + ".dcm");
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(inst.bytes.data()), static_cast<std::streamsize>(inst.bytes.size()));
    DcmFileFormat file;
    DcmDataset& ds = LoadInto(file, path);
    REQUIRE(ds.putAndInsertString(DCM_SpecificCharacterSet, "ISO_IR 100").good());
    REQUIRE(ds.putAndInsertString(DCM_PatientName, "").good());
    REQUIRE(ds.putAndInsertString(DCM_PatientID, patient_id.c_str()).good());
    REQUIRE(ds.putAndInsertString(DCM_PatientAge, "065Y").good());
    REQUIRE(ds.putAndInsertString(DCM_AccessionNumber, mapping.accession_number.pseudonymous.c_str()).good());
    REQUIRE(ds.putAndInsertString(DCM_StudyDescription, "Thorax, \xDC" "bersicht").good());
    if (inst.sop_class == UID_CTImageStorage || inst.sop_class == UID_SegmentationStorage) {
      REQUIRE(ds.putAndInsertString(DCM_FrameOfReferenceUID, frame_pseudonym.c_str()).good());
    }
    inst.bytes = objects::SaveBytes(file, path);
  }
}

// Every needle that is found in `haystack`, for a message.
std::string Found(const std::string& haystack, const std::vector<std::string>& needles) {
  std::string found;
  for (const auto& n : needles) {
    if (haystack.find(n) != std::string::npos) found += " [" + n + "]";
  }
  return found;
}

}  // namespace

TEST_CASE("results fetch: a worklist scan's result set reaches the console and the spool under the real identity",
          "[results][fetch][aiset][privacy]") {
  TempDir dir("results-fetch-reid");
  const auto key = TestSiteKey();
  const std::string pseudonymous_study = privacy::RemapUid(key, kRealStudy);
  AiCloud cloud;
  cloud.study = pseudonymous_study;  // the center only knows the remapped study
  PosixFileStore files;
  // The spool as a worklist scan leaves it: the record's study UID is the pseudonymous one (the
  // one results are searched by) and mapping.json holds the way back.
  ScanInSpool scan(files, {dir.path() / "spool", 1ull << 30, 0}, pseudonymous_study);
  privacy::RealIdentity real;
  real.patient_name = kRealName;
  real.patient_id = kRealId;
  real.patient_birth_date = kRealBirthDate;
  real.patient_sex = "M";
  real.accession_number = kRealAccession;
  real.study_instance_uid = kRealStudy;
  auto mapping = privacy::Pseudonymise(key, scan.record.scan_uid, real);
  const std::string frame_pseudonym = privacy::RemapAndRecord(key, mapping, kRealFrame);
  REQUIRE(mapping.study_instance_uid.pseudonymous == pseudonymous_study);
  REQUIRE(privacy::WriteMapping(files, scan.spool->MappingPath(scan.record.scan_uid), mapping));
  const std::vector<std::string> pseudonyms = {mapping.patient_id.pseudonymous, mapping.accession_number.pseudonymous,
                                               pseudonymous_study, frame_pseudonym};
  const std::vector<std::string> real_values = {kRealName, kRealId, kRealBirthDate, kRealAccession, kRealStudy};
  const std::set<std::string> ct(cloud.ct.begin(), cloud.ct.end());
  const std::set<std::string> all = {cloud.ct[0], cloud.ct[1], cloud.seg, cloud.report, cloud.sr};

  SECTION("the console (storescp) and the spool get CT, SEG, report and SR with the real patient, study and references") {
    cloud.Build(dir.path(), true);
    AsFromCenter(cloud, mapping.patient_id.pseudonymous, mapping, frame_pseudonym, dir.path());
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 30);
    console.Configure(config);
    FetchRun run;
    const std::string output = test::worklist_peer::CaptureOutput(dir.path() / "agent-output.txt", [&] {
      run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(90), std::chrono::minutes(10));
    });
    REQUIRE(run.outcome);
    INFO(Message(*run.outcome));
    REQUIRE(run.outcome->status);
    CHECK(run.outcome->instances_received == 5);
    CHECK(run.outcome->instances_refused == 0);
    CHECK(run.outcome->instances_delivered == 5);
    CHECK(run.outcome->findings.findings.category == "HIGH-RISK");
    CHECK(console.Received() == all);
    CHECK(scan.Now().state == spool::ScanState::kDelivered);
    // The agent's own output names no patient (it runs with the real identity in memory).
    CHECK(Found(output, real_values).empty());

    // What storescp wrote, read back with DCMTK: every object is the real patient's, in UTF-8.
    std::set<std::string> delivered_ct;
    std::string ct_series;
    fs::path sr_file, seg_file, any_ct;
    std::size_t files_seen = 0;
    for (const auto& entry : fs::directory_iterator(console.out)) {
      ++files_seen;
      INFO("delivered " << entry.path());
      DcmFileFormat file;
      DcmDataset& ds = LoadInto(file, entry.path());
      CHECK(Value(ds, DCM_SpecificCharacterSet) == "ISO_IR 192");
      CHECK(Value(ds, DCM_PatientName) == kRealName);
      CHECK(Value(ds, DCM_PatientID) == kRealId);
      CHECK(Value(ds, DCM_PatientBirthDate) == kRealBirthDate);
      CHECK(Value(ds, DCM_PatientSex) == "M");
      CHECK(Value(ds, DCM_AccessionNumber) == kRealAccession);
      CHECK(Value(ds, DCM_StudyInstanceUID) == kRealStudy);
      CHECK(Value(ds, DCM_StudyDescription) == "Thorax, \xC3\x9C" "bersicht");  // Latin-1 became UTF-8
      const std::string sop_class = Value(ds, DCM_SOPClassUID);
      if (sop_class == UID_CTImageStorage || sop_class == UID_SegmentationStorage) {
        CHECK(Value(ds, DCM_FrameOfReferenceUID) == kRealFrame);
      }
      if (sop_class == UID_CTImageStorage) {
        delivered_ct.insert(Value(ds, DCM_SOPInstanceUID));
        ct_series = Value(ds, DCM_SeriesInstanceUID);
        any_ct = entry.path();
      }
      if (sop_class == UID_ComprehensiveSRStorage) sr_file = entry.path();
      if (sop_class == UID_SegmentationStorage) seg_file = entry.path();
      // No pseudonym is left anywhere in the object's bytes.
      CHECK(Found(test::ReadText(entry.path()), pseudonyms).empty());
    }
    CHECK(files_seen == 5);
    CHECK(delivered_ct == ct);
    // The SR's study, evidence and image references resolve to the delivered objects' real UIDs.
    REQUIRE_FALSE(sr_file.empty());
    auto sr = results::ReadSrSummary(sr_file);
    INFO((sr ? "" : sr.error().message()));
    REQUIRE(sr);
    CHECK(sr->study_uid == kRealStudy);
    REQUIRE(sr->evidence.size() == 4);
    for (const auto& ref : sr->evidence) {
      CHECK(ref.study_uid == kRealStudy);
      CHECK(all.count(ref.sop_instance_uid) == 1);
      if (ref.sop_class_uid == UID_CTImageStorage) {
        CHECK(ref.series_uid == ct_series);
        CHECK(delivered_ct.count(ref.sop_instance_uid) == 1);
      }
    }
    REQUIRE(sr->image_references.size() == 2);
    for (const auto& ref : sr->image_references) CHECK(delivered_ct.count(ref.sop_instance_uid) == 1);
    // The SEG's referenced series and source images are the delivered CT.
    REQUIRE_FALSE(seg_file.empty());
    auto seg = results::ReadSegReferences(seg_file);
    INFO((seg ? "" : seg.error().message()));
    REQUIRE(seg);
    CHECK(seg->referenced_series == std::vector<std::string>{ct_series});
    // (Each CT image is named twice: in the Referenced Series Sequence and as a frame's source.)
    std::set<std::string> seg_sources;
    for (const auto& ref : seg->referenced_instances) seg_sources.insert(ref.sop_instance_uid);
    CHECK(seg_sources == delivered_ct);
    // dcmdump, as a person at the terminal would look, shows the real name in UTF-8.
    const fs::path dump = dir.path() / "dcmdump.txt";
    REQUIRE_FALSE(any_ct.empty());
    test::ChildProcess dcmdump({"dcmdump", "+P", "0010,0010", "+P", "0010,0020", "+P", "0008,0005", any_ct.string()}, dump);
    REQUIRE(test::WaitFor([&] { return !dcmdump.Running(); }, std::chrono::seconds(20)));
    const std::string dumped = test::ReadText(dump);
    INFO("dcmdump: " << dumped);
    CHECK(dumped.find("[" + kRealName + "]") != std::string::npos);
    CHECK(dumped.find("[" + kRealId + "]") != std::string::npos);
    CHECK(dumped.find("[ISO_IR 192]") != std::string::npos);

    // What the spool keeps (the results the record lists, re-sent from there on a later retry) is
    // the re-identified object too, never the center's pseudonymous one.
    const auto record = scan.Now();
    REQUIRE(record.results.size() == 5);
    for (const auto& r : record.results) {
      const auto path = scan.spool->ResultPath(scan.record.scan_uid, r.sop_instance_uid);
      INFO("kept " << path);
      DcmFileFormat file;
      DcmDataset& ds = LoadInto(file, path);
      CHECK(Value(ds, DCM_PatientName) == kRealName);
      CHECK(Value(ds, DCM_PatientID) == kRealId);
      CHECK(Value(ds, DCM_StudyInstanceUID) == kRealStudy);
      CHECK(Found(test::ReadText(path), pseudonyms).empty());
    }
  }

  SECTION("a set under another patient's pseudonym is refused: nothing reaches the console or the spool") {
    cloud.Build(dir.path(), true);
    const std::string other_patient = privacy::PseudonymousPatientId(key, "PID-OTHER-0001");
    AsFromCenter(cloud, other_patient, mapping, frame_pseudonym, dir.path());
    auto server = HostileServer::Start(cloud.Rules(dir.path()));
    Console console(dir.path());
    auto config = ConfigFor(*server, 3);
    console.Configure(config);
    FetchRun run;
    const std::string output = test::worklist_peer::CaptureOutput(dir.path() / "agent-output.txt", [&] {
      run = Fetch(*scan.spool, config, scan.record, std::chrono::seconds(60), std::chrono::milliseconds(300));
    });
    REQUIRE(run.outcome);
    const std::string message = Message(*run.outcome);
    INFO(message);
    INFO("agent output: " << output);
    REQUIRE_FALSE(run.outcome->status);
    CHECK(run.outcome->instances_received == 0);
    CHECK(run.outcome->instances_refused == 5);
    CHECK(run.outcome->instances_delivered == 0);
    CHECK(console.Received().empty());
    CHECK(scan.Now().results.empty());
    for (const auto& uid : all) CHECK_FALSE(fs::exists(scan.spool->ResultPath(scan.record.scan_uid, uid)));
    // Refused once: the job does not download them again, however often it polls.
    for (const auto& uid : all) CHECK(Cloud::Retrievals(*server, uid) == 1);
    CHECK(scan.Now().state == spool::ScanState::kUploaded);
    scan.CheckDataKept();
    // Why, in the outcome and the agent's output: the Patient ID is not this scan's pseudonym; never whose it is.
    const std::string why = "refused to re-identify: its Patient ID (0010,0020) is not the pseudonym of scan " +
                            scan.record.scan_uid;
    CHECK_THAT(message, Catch::Contains("5 result instance(s) refused and not delivered") && Catch::Contains(why));
    CHECK_THAT(output, Catch::Contains(why));
    CHECK(Found(message, real_values).empty());
    CHECK(Found(output, real_values).empty());
  }
}
