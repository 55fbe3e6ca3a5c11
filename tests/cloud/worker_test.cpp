// The reference imaging center end to end: a small phantom scan is encoded with the codec,
// uploaded chunk by chunk to the REAL tus server (curl, the tus 1.0 protocol by hand), the
// manifest last; ctcloud-worker --once reconstructs it and stores the series in a REAL Orthanc
// (cloud/orthanc/start-orthanc.sh). The test then reads the series back from Orthanc.
#include <catch2/catch.hpp>

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>

#include <csignal>
#include <cmath>
#include <algorithm>
#include <fstream>
#include <set>
#include <numbers>
#include <sstream>

#include <nlohmann/json.hpp>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/durable_file.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "drivers/sim/phantom.hpp"
#include "tests/support/process.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ctagent::test::ChildProcess;

std::string Base64(const std::string& in) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const auto n = (std::uint32_t{static_cast<std::uint8_t>(in[i])} << 16) |
                   (std::uint32_t{static_cast<std::uint8_t>(in[i + 1])} << 8) | static_cast<std::uint8_t>(in[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(n >> shift) & 63];
  }
  if (i < in.size()) {
    std::uint32_t n = std::uint32_t{static_cast<std::uint8_t>(in[i])} << 16;
    if (i + 1 < in.size()) n |= std::uint32_t{static_cast<std::uint8_t>(in[i + 1])} << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

void WriteFile(const fs::path& path, std::span<const std::uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// Runs a command to completion (bounded); output appended to `log`. Returns the exit code.
int Run(const std::vector<std::string>& argv, const fs::path& log, std::chrono::milliseconds timeout = 60s) {
  ChildProcess child(argv, log);
  const int code = child.Wait(timeout);
  if (code == -1) child.Stop();
  return code;
}

// The imaging center of the test: tus server, Orthanc behind TLS, PKI, scratch space.
struct Center {
  ctagent::test::TempDir root{"cloud-worker"};
  fs::path pki = root.path() / "pki";
  fs::path store = root.path() / "store";
  fs::path work = root.path() / "work";
  fs::path orthanc_dir = root.path() / "orthanc";
  fs::path log = root.path() / "test.log";
  ctagent::test::TusServer tus;
  std::unique_ptr<ChildProcess> orthanc;
  std::uint16_t orthanc_port = 0;
  std::string orthanc_url;

  Center() {
    ctagent::test::MakeTestPki(pki);
    fs::create_directories(store);
    tus = ctagent::test::StartTusServer(pki, store, root.path() / "tus.log");
    orthanc_port = ctagent::test::FreeLoopbackPort();
    // Orthanc binds its own port on every interface: FreeWildcardPort.
    std::uint16_t internal_port = ctagent::test::FreeWildcardPort();
    for (int i = 0; i < 10 && internal_port == orthanc_port; ++i) internal_port = ctagent::test::FreeWildcardPort();
    orthanc = std::make_unique<ChildProcess>(
        std::vector<std::string>{"bash", std::string(CTAGENT_SOURCE_DIR) + "/cloud/orthanc/start-orthanc.sh",
                                 orthanc_dir.string(), std::to_string(orthanc_port), pki.string(),
                                 std::to_string(internal_port)},
        root.path() / "orthanc.log");
    orthanc_url = "https://127.0.0.1:" + std::to_string(orthanc_port);
    const bool up = ctagent::test::WaitFor(
        [&] { return !orthanc->Running() || Get("/system").first == 200; }, 30s);
    INFO(ctagent::test::ReadText(root.path() / "orthanc.log"));
    REQUIRE(up);
    REQUIRE(orthanc->Running());
  }

  std::string Password(const std::string& user) const {
    std::string text = ctagent::test::ReadText(orthanc_dir / ("orthanc-" + user + "-password"));
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return text;
  }

  // GET from Orthanc as the terminal user, verified against the test CA: (status, body).
  std::pair<int, std::string> Get(const std::string& path) const {
    const fs::path body = root.path() / "get.body";
    const fs::path status = root.path() / "get.status";
    fs::remove(body);
    fs::remove(status);
    const std::string password = Password("ctagent");
    if (password.empty()) return {0, ""};
    Run({"curl", "-sS", "--max-time", "10", "--cacert", (pki / "ca.pem").string(), "-u", "ctagent:" + password,
         "-o", body.string(), "-w", "%{http_code}", "--stderr", "-", orthanc_url + path},
        status, 20s);
    const std::string code = ctagent::test::ReadText(status);
    return {code.size() >= 3 ? std::atoi(code.substr(code.size() - 3).c_str()) : 0, ctagent::test::ReadText(body)};
  }

  // One tus upload: create (POST) then send every byte (PATCH). Returns the upload URL.
  std::string Upload(std::span<const std::uint8_t> bytes, const std::vector<std::pair<std::string, std::string>>& meta) {
    const fs::path data = root.path() / "upload.bin";
    const fs::path headers = root.path() / "upload.headers";
    WriteFile(data, bytes);
    std::string metadata;
    for (const auto& [k, v] : meta) metadata += (metadata.empty() ? "" : ",") + k + " " + Base64(v);
    fs::remove(headers);
    REQUIRE(Run({"curl", "-sS", "--max-time", "20", "--cacert", (pki / "ca.pem").string(), "-X", "POST", "-D",
                 headers.string(), "-o", "/dev/null", "-H", "Tus-Resumable: 1.0.0", "-H",
                 "Upload-Length: " + std::to_string(bytes.size()), "-H", "Upload-Metadata: " + metadata, tus.endpoint},
                log) == 0);
    std::istringstream lines(ctagent::test::ReadText(headers));
    std::string line, location;
    while (std::getline(lines, line)) {
      if (line.size() > 9 && (line.rfind("Location:", 0) == 0 || line.rfind("location:", 0) == 0)) {
        location = line.substr(9);
        location.erase(0, location.find_first_not_of(' '));
        while (!location.empty() && (location.back() == '\r' || location.back() == ' ')) location.pop_back();
      }
    }
    INFO(ctagent::test::ReadText(headers));
    REQUIRE(!location.empty());
    const std::string url = location[0] == '/' ? "https://127.0.0.1:" + std::to_string(tus.port) + location : location;
    fs::remove(headers);
    REQUIRE(Run({"curl", "-sS", "--max-time", "30", "--cacert", (pki / "ca.pem").string(), "-X", "PATCH", "-D",
                 headers.string(), "-o", "/dev/null", "-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0", "-H",
                 "Content-Type: application/offset+octet-stream", "--data-binary", "@" + data.string(), url},
                log) == 0);
    const std::string answer = ctagent::test::ReadText(headers);
    INFO(answer);
    REQUIRE(answer.find(" 204") != std::string::npos);
    return url;
  }

  // One pass of the worker. Its log (every pass so far) goes with the next assertion whenever the
  // pass did not end well, so a failure in CI says why the worker gave up, not only its exit code.
  int RunWorker() const {
    const fs::path worker_log = root.path() / "worker.log";
    const int code =
        Run({CTCLOUD_WORKER_PATH, "--store", store.string(), "--work", work.string(), "--orthanc", orthanc_url,
             "--orthanc-user", "ctcloud", "--orthanc-password-file", (orthanc_dir / "orthanc-ctcloud-password").string(),
             "--ca", (pki / "ca.pem").string(), "--once", "--image-size", "128"},
            worker_log, 120s);
    if (code != 0) UNSCOPED_INFO("ctcloud-worker --once exited " << code << "; worker.log:\n" << ctagent::test::ReadText(worker_log));
    return code;
  }
};

// A small axial phantom scan: `rows` rows x 128 channels at 3.2 mm, 180 views over 180 degrees,
// noiseless counts, in 4 chunks of 45 views. Every row sees the same (2-D) phantom, so 24 rows
// make a 120 mm stack of the same chest slice: enough for the lung analysis (it needs 100 mm).
struct Scan {
  ctagent::codec::Manifest manifest;
  std::vector<std::vector<std::uint8_t>> chunks;
};

Scan MakeScan(std::uint32_t rows = 2) {
  Scan scan;
  auto& m = scan.manifest;
  m.scan_uid = ctagent::MintDicomUid();
  m.study_uid = ctagent::MintDicomUid();
  m.patient_id = "PSEUDO-42";
  m.patient_name = "Phantom^Chest";
  m.study_description = "ctagent worker test";
  m.terminal_id = "test-terminal";
  m.acquisition_start_utc = "2024-05-01T10:20:30Z";
  m.acquisition_end_utc = "2024-05-01T10:20:31Z";
  auto& p = m.protocol;
  p.views_per_rotation = 180;
  p.rows = rows;
  p.channels = 128;
  p.channel_pitch_mm = 3.2;
  p.row_pitch_mm = 5;
  p.table_start_mm = 100;
  p.unattenuated_counts = 60000;
  m.views_acquired = p.TotalViews();
  constexpr std::uint32_t kViewsPerChunk = 45;
  for (std::uint32_t first = 0, index = 0; first < p.TotalViews(); first += kViewsPerChunk, ++index) {
    ctagent::codec::ChunkInfo info;
    info.scan_uid = m.scan_uid;
    info.chunk_index = index;
    info.rows = p.rows;
    info.channels = p.channels;
    info.descriptor = ctagent::drivers::ToJson(p);
    std::vector<std::uint16_t> samples;
    for (std::uint32_t v = first; v < first + kViewsPerChunk; ++v) {
      ctagent::codec::ViewRecord view;
      view.sequence = v;
      view.gantry_angle_deg = 180.0 * v / p.views_per_rotation;
      view.table_position_mm = p.table_start_mm;
      info.views.push_back(view);
      for (std::uint32_t r = 0; r < p.rows; ++r) {
        for (std::uint32_t c = 0; c < p.channels; ++c) {
          const double s = (c - (p.channels - 1) / 2.0) * p.channel_pitch_mm;
          const double line = ctagent::drivers::sim::PhantomLineIntegral(view.gantry_angle_deg * std::numbers::pi / 180, s);
          samples.push_back(static_cast<std::uint16_t>(std::lround(p.unattenuated_counts * std::exp(-line))));
        }
      }
    }
    const std::span<const std::uint8_t> raw(reinterpret_cast<const std::uint8_t*>(samples.data()), samples.size() * 2);
    // Codec 2 (predict, context_rans) on even chunks, the overflow path's
    // (filter none, zstd -1) on odd ones: one scan mixes both codecs, as a busy agent's may.
    ctagent::codec::EncodeOptions options{ctagent::codec::Filter::kNone, 1};
    if (index % 2 == 0) options = {ctagent::codec::Filter::kPredict, 3, ctagent::codec::Codec::kContextRans};
    auto encoded = ctagent::codec::EncodeChunk(info, raw, options);
    REQUIRE(encoded);
    REQUIRE(ctagent::codec::ParseChunkHeader(*encoded)->codec ==
            (index % 2 == 0 ? ctagent::codec::Codec::kContextRans : ctagent::codec::Codec::kZstd));
    ctagent::codec::ManifestChunk entry;
    entry.index = index;
    entry.first_view = first;
    entry.view_count = kViewsPerChunk;
    entry.raw_bytes = raw.size();
    entry.compressed_bytes = encoded->size();
    entry.raw_sha256 = ctagent::Sha256Of(raw);
    entry.sha256 = ctagent::Sha256Of(*encoded);
    m.chunks.push_back(entry);
    scan.chunks.push_back(std::move(*encoded));
  }
  return scan;
}

void UploadScan(Center& center, const Scan& scan, bool manifest_too = true) {
  for (std::size_t i = 0; i < scan.chunks.size(); ++i) {
    center.Upload(scan.chunks[i], {{"kind", "chunk"},
                                   {"scan_uid", scan.manifest.scan_uid},
                                   {"chunk_index", std::to_string(i)},
                                   {"sha256", ctagent::Sha256Hex(scan.chunks[i])},
                                   {"filename", "chunk-" + std::to_string(i) + ".ctc"}});
  }
  if (!manifest_too) return;
  const std::string manifest = ctagent::codec::ToJson(scan.manifest).dump();
  center.Upload(ctagent::AsBytes(manifest), {{"kind", "manifest"},
                                             {"scan_uid", scan.manifest.scan_uid},
                                             {"sha256", ctagent::Sha256Hex(ctagent::AsBytes(manifest))},
                                             {"filename", "manifest.json"}});
}

int OrthancInstanceCount(const Center& center) {
  const auto [status, body] = center.Get("/statistics");
  REQUIRE(status == 200);
  return nlohmann::json::parse(body).at("CountInstances").get<int>();
}

double RoiMean(DcmDataset* ds, double x_mm, double y_mm, double radius_mm) {
  Uint16 size = 0;
  REQUIRE(ds->findAndGetUint16(DCM_Rows, size).good());
  Float64 spacing = 0;
  REQUIRE(ds->findAndGetFloat64(DCM_PixelSpacing, spacing).good());
  const Uint16* words = nullptr;
  unsigned long count = 0;
  REQUIRE(ds->findAndGetUint16Array(DCM_PixelData, words, &count).good());
  REQUIRE(count == std::size_t{size} * size);
  double sum = 0;
  int n = 0;
  for (int row = 0; row < size; ++row) {
    for (int col = 0; col < size; ++col) {
      const double x = (col - (size - 1) / 2.0) * spacing;
      const double y = ((size - 1) / 2.0 - row) * spacing;
      if ((x - x_mm) * (x - x_mm) + (y - y_mm) * (y - y_mm) <= radius_mm * radius_mm) {
        sum += static_cast<std::int16_t>(words[static_cast<std::size_t>(row) * size + static_cast<std::size_t>(col)]);
        ++n;
      }
    }
  }
  REQUIRE(n > 0);
  return sum / n;
}

}  // namespace

TEST_CASE("cloud worker: a complete scan is reconstructed and stored in Orthanc exactly once", "[cloud][worker]") {
  Center center;
  const Scan scan = MakeScan();

  // Chunks without their manifest: nothing to do yet.
  UploadScan(center, scan, /*manifest_too=*/false);
  CHECK(center.RunWorker() == 0);
  CHECK(OrthancInstanceCount(center) == 0);

  UploadScan(center, scan);  // the chunks again (a retry creates new uploads) and the manifest
  REQUIRE(center.RunWorker() == 0);

  const fs::path done = center.work / "done" / (scan.manifest.scan_uid + ".json");
  REQUIRE(fs::exists(done));
  const auto record = nlohmann::json::parse(ctagent::test::ReadText(done));
  CHECK(record.at("instance_count") == 2);
  // Two 5 mm slices are too short a volume for the lung analysis: its result set is a FAILED SR
  // and the summary page (no SEG).
  CHECK(record.at("result_instance_count") == 2);
  CHECK(record.at("analysis").at("category") == "FAILED");
  const std::string series_uid = record.at("series_uid");

  // Orthanc holds the study's series with both slices (DICOMweb QIDO-RS as the terminal).
  const auto [status, body] = center.Get("/dicom-web/studies/" + scan.manifest.study_uid + "/series");
  REQUIRE(status == 200);
  const auto series = nlohmann::json::parse(body);
  REQUIRE(series.size() == 3);  // CT, report, SR
  bool ct_found = false;
  for (const auto& one : series) {
    if (one.at("0020000E").at("Value")[0] != series_uid) continue;
    ct_found = true;
    CHECK(one.at("0008103E").at("Value")[0] == "Reference FBP reconstruction - not for diagnosis");
  }
  CHECK(ct_found);
  CHECK(OrthancInstanceCount(center) == 4);

  // The instance Orthanc serves is byte for byte the one the worker wrote, and it is right.
  const std::string orthanc_id = record.at("orthanc_instance_ids")[0];
  const auto [file_status, file_bytes] = center.Get("/instances/" + orthanc_id + "/file");
  REQUIRE(file_status == 200);
  const fs::path written = center.work / "series" / scan.manifest.scan_uid / "slice-001.dcm";
  CHECK(file_bytes == ctagent::test::ReadText(written));
  DcmFileFormat file;
  REQUIRE(file.loadFile(written.c_str()).good());
  DcmDataset* ds = file.getDataset();
  OFString value;
  REQUIRE(ds->findAndGetOFString(DCM_StudyInstanceUID, value).good());
  CHECK(value == scan.manifest.study_uid.c_str());
  REQUIRE(ds->findAndGetOFString(DCM_AcquisitionUID, value).good());
  CHECK(value == scan.manifest.scan_uid.c_str());
  REQUIRE(ds->findAndGetOFString(DCM_PatientID, value).good());
  CHECK(value == "PSEUDO-42");
  REQUIRE(ds->findAndGetOFString(DCM_SliceLocation, value).good());
  CHECK(value == "97.5");  // table 100 mm, row 0 of 2 at -2.5 mm
  // Coarse (128 channels, 3.2 mm pixels) but clearly the phantom: lung and soft tissue.
  CHECK(std::abs(RoiMean(ds, 65, 10, 15) - (-850)) < 60);
  CHECK(std::abs(RoiMean(ds, 0, 90, 10) - 40) < 60);

  // No patient data in the worker's log.
  const std::string worker_log = ctagent::test::ReadText(center.root.path() / "worker.log");
  CHECK(worker_log.find("PSEUDO-42") == std::string::npos);
  CHECK(worker_log.find("Phantom^Chest") == std::string::npos);
  CHECK(worker_log.find("stored: 2 instances") != std::string::npos);

  // A second pass (a restart) stores nothing again.
  CHECK(center.RunWorker() == 0);
  CHECK(OrthancInstanceCount(center) == 4);
  CHECK(nlohmann::json::parse(ctagent::test::ReadText(done)).at("series_uid") == series_uid);
}

TEST_CASE("cloud worker: a chunk whose bytes do not match the manifest marks the scan failed", "[cloud][worker]") {
  Center center;
  Scan scan = MakeScan();
  // Chunk 2 arrives altered in flight: one payload byte flipped after the manifest was made.
  scan.chunks[2].back() ^= 0x5a;
  UploadScan(center, scan);

  CHECK(center.RunWorker() == 3);
  const fs::path failed = center.work / "failed" / (scan.manifest.scan_uid + ".json");
  INFO(ctagent::test::ReadText(center.root.path() / "worker.log"));
  REQUIRE(fs::exists(failed));
  const auto record = nlohmann::json::parse(ctagent::test::ReadText(failed));
  CHECK_THAT(record.at("reason").get<std::string>(), Catch::Contains("chunk 2") && Catch::Contains("SHA-256"));
  CHECK_FALSE(fs::exists(center.work / "done" / (scan.manifest.scan_uid + ".json")));
  CHECK(OrthancInstanceCount(center) == 0);
  CHECK_THAT(ctagent::test::ReadText(center.root.path() / "worker.log"), Catch::Contains("FAILED"));

  // It stays failed: a later pass neither reconstructs nor stores it.
  CHECK(center.RunWorker() == 0);
  CHECK(OrthancInstanceCount(center) == 0);
}

TEST_CASE("cloud worker: the polling worker picks a scan up when its manifest arrives and stops on SIGTERM",
          "[cloud][worker]") {
  Center center;
  const Scan scan = MakeScan();
  ChildProcess worker({CTCLOUD_WORKER_PATH, "--store", center.store.string(), "--work", center.work.string(),
                       "--orthanc", center.orthanc_url, "--orthanc-user", "ctcloud", "--orthanc-password-file",
                       (center.orthanc_dir / "orthanc-ctcloud-password").string(), "--ca",
                       (center.pki / "ca.pem").string(), "--poll-ms", "200", "--image-size", "64"},
                      center.root.path() / "worker.log");
  UploadScan(center, scan);
  const fs::path done = center.work / "done" / (scan.manifest.scan_uid + ".json");
  const bool ended = ctagent::test::WaitFor([&] { return fs::exists(done) || !worker.Running(); }, 60s);
  INFO(ctagent::test::ReadText(center.root.path() / "worker.log"));  // read once the worker had its time
  REQUIRE(ended);
  REQUIRE(fs::exists(done));
  CHECK(OrthancInstanceCount(center) == 4);

  worker.Kill(SIGTERM);
  CHECK(worker.Wait(5s) == 0);
  CHECK_THAT(ctagent::test::ReadText(center.root.path() / "worker.log"), Catch::Contains("stopped"));
}

TEST_CASE("cloud worker: a chest volume gets its result set stored after the CT, the SR last, once",
          "[cloud][worker][results]") {
  Center center;
  const Scan scan = MakeScan(24);  // 120 mm of chest: the analysis runs
  UploadScan(center, scan);
  REQUIRE(center.RunWorker() == 0);
  const fs::path done = center.work / "done" / (scan.manifest.scan_uid + ".json");
  REQUIRE(fs::exists(done));
  const auto record = nlohmann::json::parse(ctagent::test::ReadText(done));
  INFO(record.at("analysis").dump());
  CHECK(record.at("instance_count") == 24);
  const std::string category = record.at("analysis").at("category");
  CHECK(category != "FAILED");
  const auto& results = record.at("results");
  REQUIRE(results.size() >= 3);
  CHECK(results[0].at("kind") == "seg");
  CHECK(results[1].at("kind") == "report");
  CHECK(results.back().at("kind") == "sr");
  for (const char* stage : {"decode", "reconstruct", "dicom", "analysis", "encoding", "store"}) {
    CHECK(record.at("timings_ms").at(stage).get<double>() >= 0);
  }
  CHECK(record.at("unix_ms").at("stored").get<std::int64_t>() >= record.at("unix_ms").at("picked_up").get<std::int64_t>());
  const int total = 24 + static_cast<int>(results.size());
  CHECK(OrthancInstanceCount(center) == total);

  // QIDO-RS as the terminal: the study holds the CT, SEG, report (OT) and SR series.
  const auto [status, body] = center.Get("/dicom-web/studies/" + scan.manifest.study_uid + "/series");
  REQUIRE(status == 200);
  std::multiset<std::string> modalities;
  for (const auto& one : nlohmann::json::parse(body)) modalities.insert(one.at("00080060").at("Value")[0].get<std::string>());
  CHECK(modalities == std::multiset<std::string>{"CT", "OT", "SEG", "SR"});

  // The SR reached Orthanc after every other instance of the scan.
  const auto [changes_status, changes_body] = center.Get("/changes?limit=10000");
  REQUIRE(changes_status == 200);
  const std::string sr_id = record.at("orthanc_instance_ids").back();
  std::int64_t sr_seq = -1, last_other_seq = -1;
  const auto changes = nlohmann::json::parse(changes_body);
  for (const auto& change : changes.at("Changes")) {
    if (change.at("ChangeType") != "NewInstance") continue;
    const std::int64_t seq = change.at("Seq");
    if (change.at("ID") == sr_id) sr_seq = seq;
    else last_other_seq = std::max(last_other_seq, seq);
  }
  CHECK(sr_seq > last_other_seq);

  // The SR Orthanc serves parses with dsrdump and says the category.
  const auto [sr_status, sr_bytes] = center.Get("/instances/" + sr_id + "/file");
  REQUIRE(sr_status == 200);
  const fs::path sr_file = center.root.path() / "sr.dcm";
  WriteFile(sr_file, ctagent::AsBytes(sr_bytes));
  REQUIRE(Run({"dsrdump", sr_file.string()}, center.root.path() / "dsrdump.txt") == 0);
  CHECK_THAT(ctagent::test::ReadText(center.root.path() / "dsrdump.txt"), Catch::Contains(category));

  // A kill after storing but before the done marker, and a lost work directory: the worker stores
  // again, and Orthanc still holds one copy of each instance (UIDs derived from the scan UID).
  fs::remove(done);
  REQUIRE(center.RunWorker() == 0);
  CHECK(OrthancInstanceCount(center) == total);
  fs::remove(done);
  fs::remove_all(center.work / "series" / scan.manifest.scan_uid);
  REQUIRE(center.RunWorker() == 0);
  CHECK(OrthancInstanceCount(center) == total);
  const auto again = nlohmann::json::parse(ctagent::test::ReadText(done));
  CHECK(again.at("results").back().at("sop_instance_uid") == results.back().at("sop_instance_uid"));
}
