// One simulated scan carried end to end against the real peers, all on loopback:
//   ctagent (sim driver) -> tus server over HTTPS -> reconstruction worker -> Orthanc (DICOMweb)
//   -> ctagent (QIDO/WADO, validation) -> storescp as the scanner console.
// Asserts that every chunk the server holds decodes to exactly the bytes the driver produced,
// and that the console received a CT series of the scan's study whose CT numbers in the
// phantom's regions are within the stated tolerance of the phantom's values.
#include <catch2/catch.hpp>

#include <dcmtk/dcmdata/dctk.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/durable_file.hpp"
#include "base/sha256.hpp"
#include "config/config.hpp"
#include "drivers/detector.hpp"
#include "drivers/sim/phantom.hpp"
#include "tests/e2e/imaging_center.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

// Tolerance on the mean CT number of each region of interest [HU]. The reconstruction is plain
// FBP of a noisy scan; the region means are within a few HU in practice, the bound leaves room
// for partial-volume at region edges and noise at this dose.
constexpr double kHuTolerance = 40.0;

struct RoiStats {
  double mean = 0;
  double stddev = 0;
  int pixels = 0;
};

// One scan shape for RunScanEndToEnd: the `scan` object (keys left out take the defaults),
// and what must arrive.
struct ScanCase {
  nlohmann::json scan;
  std::uint64_t views = 0;
  std::uint32_t views_per_chunk = 32;
  std::uint64_t patch_bytes = 65536;
  std::size_t images = 0;
  // The agent's default codec (filter predict, coder context_rans: codec 2) instead of shuffle +
  // zstd, so that the reference center decodes codec 2 chunks end to end.
  bool default_codec = false;
};

void RunScanEndToEnd(const ScanCase& scan_case) {
  test::TempDir work("e2e");
  const fs::path logs = work.path() / "logs";
  fs::create_directories(logs);
  auto center = test::StartImagingCenter(work.path() / "center");

  // The console: DCMTK's storescp on a free port.
  const auto console = test::StartConsole(work.path() / "console", logs / "storescp.log");
  const fs::path console_dir = console.dir;
  const auto console_port = console.port;

  nlohmann::json cfg = {
      {"terminal_id", "e2e-terminal"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan", scan_case.scan},
      {"study", {{"patient_id", "E2E-1"}, {"patient_name", "E2E^TEST"}, {"study_description", "E2E"}}},
      {"codec", scan_case.default_codec
                    ? nlohmann::json{{"views_per_chunk", scan_case.views_per_chunk}}
                    : nlohmann::json{{"zstd_level", 3}, {"filter", "shuffle"}, {"views_per_chunk", scan_case.views_per_chunk},
                                     {"threads", 2}}},
      {"spool", {{"directory", (work.path() / "spool").string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud", center->CloudSection({{"parallel_uploads", 2}, {"patch_bytes", scan_case.patch_bytes}})},
      {"results", {{"enabled", true}, {"poll_interval_ms", 300}, {"poll_max_interval_ms", 2000}, {"timeout_s", 240}}},
      {"console",
       {{"enabled", true}, {"host", "127.0.0.1"}, {"port", console_port}, {"called_ae", "CONSOLE"},
        {"calling_ae", "CTAGENT"}}}};
  const fs::path cfg_path = work.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);
  auto config = config::LoadConfig(cfg_path);
  REQUIRE(config);

  test::ChildProcess agent({(fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(), "scan", "--config",
                            cfg_path.string(), "--quiet"},
                           logs / "agent.log");
  const int agent_rc = agent.Wait(std::chrono::seconds(600));
  const std::string agent_log = test::ReadText(logs / "agent.log");
  INFO("agent output:\n" << agent_log);
  INFO("worker log:\n" << test::ReadText(work.path() / "center/logs/worker.log"));
  REQUIRE(agent_rc == 0);
  CHECK_THAT(agent_log, Catch::Contains("images delivered"));

  // --- 1. Every chunk the server holds decodes to exactly the bytes the driver produced. ---
  const auto uploads = test::ListUploads(center->env["TUS_STORE"]);
  const test::StoredUpload* manifest_upload = nullptr;
  for (const auto& u : uploads) {
    if (u.metadata.value("kind", "") == "manifest") manifest_upload = &u;
  }
  REQUIRE(manifest_upload != nullptr);
  auto manifest = codec::ManifestFromJson(nlohmann::json::parse(test::ReadText(manifest_upload->data)));
  REQUIRE(manifest);
  CHECK(manifest->complete);
  CHECK(manifest->views_acquired == scan_case.views);
  REQUIRE(manifest->chunks.size() == (scan_case.views + scan_case.views_per_chunk - 1) / scan_case.views_per_chunk);

  // Regenerate the views with the same driver and seed, independently of the agent.
  auto detector = drivers::MakeDetector("sim", nlohmann::json::object());
  REQUIRE(detector);
  REQUIRE((*detector)->Arm(config->protocol));
  std::vector<std::vector<std::uint8_t>> driver_views;
  while (true) {
    auto v = (*detector)->NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    driver_views.push_back(std::move((*v)->samples));
  }
  REQUIRE(driver_views.size() == scan_case.views);

  std::set<std::uint32_t> seen;
  for (const auto& u : uploads) {
    if (u.metadata.value("kind", "") != "chunk") continue;
    const auto bytes = test::ReadBytes(u.data);
    REQUIRE(bytes.size() == u.size);  // the upload is complete on the server
    auto decoded = codec::DecodeChunk(bytes);
    REQUIRE(decoded);
    const auto& info = decoded->info;
    CHECK(info.scan_uid == manifest->scan_uid);
    Sha256 expected;
    for (const auto& view : info.views) expected.Update(driver_views.at(view.sequence));
    INFO("chunk " << info.chunk_index);
    CHECK(Sha256Hex(decoded->samples) == expected.FinalHex());
    CHECK(Sha256Hex(bytes) == manifest->chunks.at(info.chunk_index).sha256);
    seen.insert(info.chunk_index);
  }
  CHECK(seen.size() == manifest->chunks.size());

  // --- 2. The console received the reconstructed series of the scan's study, and the AI result
  // set beside it (this short scan covers too little of the lungs for the analysis: the report
  // page and an SR that says FAILED, no SEG; docs/results.md "The AI result set"). ---
  std::vector<fs::path> received;  // the CT images
  std::size_t result_objects = 0, srs = 0;
  for (const auto& entry : fs::recursive_directory_iterator(console_dir)) {
    if (!entry.is_regular_file()) continue;
    DcmFileFormat file;
    INFO("received file " << entry.path());
    REQUIRE(file.loadFile(entry.path().c_str()).good());
    OFString sop_class, study;
    REQUIRE(file.getDataset()->findAndGetOFString(DCM_SOPClassUID, sop_class).good());
    if (std::string(sop_class.c_str()) == UID_CTImageStorage) {
      received.push_back(entry.path());
      continue;
    }
    ++result_objects;
    REQUIRE(file.getDataset()->findAndGetOFString(DCM_StudyInstanceUID, study).good());
    CHECK(std::string(study.c_str()) == manifest->study_uid);
    const std::string cls = sop_class.c_str();
    CHECK((cls == UID_EnhancedSRStorage || cls == UID_SecondaryCaptureImageStorage || cls == UID_SegmentationStorage));
    if (cls == UID_EnhancedSRStorage) ++srs;
  }
  REQUIRE(received.size() == scan_case.images);
  CHECK(srs == 1);
  CHECK(result_objects >= 2);  // the SR and at least the report's first page

  const auto& rois = drivers::sim::ChestPhantomRois();
  std::set<std::string> sop_uids;
  for (const auto& path : received) {
    INFO("received file " << path);
    DcmFileFormat file;
    REQUIRE(file.loadFile(path.c_str()).good());
    DcmDataset* ds = file.getDataset();
    OFString value;
    REQUIRE(ds->findAndGetOFString(DCM_SOPClassUID, value).good());
    CHECK(std::string(value.c_str()) == UID_CTImageStorage);
    REQUIRE(ds->findAndGetOFString(DCM_StudyInstanceUID, value).good());
    CHECK(std::string(value.c_str()) == manifest->study_uid);
    REQUIRE(ds->findAndGetOFString(DCM_SOPInstanceUID, value).good());
    sop_uids.insert(value.c_str());
    Uint16 rows = 0, cols = 0;
    REQUIRE(ds->findAndGetUint16(DCM_Rows, rows).good());
    REQUIRE(ds->findAndGetUint16(DCM_Columns, cols).good());
    Float64 dx = 0, dy = 0, slope = 1, intercept = 0;
    REQUIRE(ds->findAndGetFloat64(DCM_PixelSpacing, dy, 0).good());
    REQUIRE(ds->findAndGetFloat64(DCM_PixelSpacing, dx, 1).good());
    ds->findAndGetFloat64(DCM_RescaleSlope, slope);
    ds->findAndGetFloat64(DCM_RescaleIntercept, intercept);
    Uint16 pixel_representation = 0;
    ds->findAndGetUint16(DCM_PixelRepresentation, pixel_representation);
    const Uint16* pixels = nullptr;
    unsigned long count = 0;
    REQUIRE(ds->findAndGetUint16Array(DCM_PixelData, pixels, &count).good());
    REQUIRE(count == static_cast<unsigned long>(rows) * cols);

    // Image geometry: centred on the rotation axis, row 0 anterior (+y in phantom coordinates),
    // columns along +x.
    for (const auto& roi : rois) {
      RoiStats s;
      double sum = 0, sum2 = 0;
      for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) {
          const double x = (c - (cols - 1) / 2.0) * dx;
          const double y = ((rows - 1) / 2.0 - r) * dy;
          if (std::hypot(x - roi.center_x_mm, y - roi.center_y_mm) > roi.radius_mm) continue;
          const Uint16 raw = pixels[static_cast<std::size_t>(r) * cols + static_cast<std::size_t>(c)];
          const double stored = pixel_representation ? static_cast<double>(static_cast<Sint16>(raw)) : raw;
          const double hu = stored * slope + intercept;
          sum += hu;
          sum2 += hu * hu;
          ++s.pixels;
        }
      }
      REQUIRE(s.pixels > 10);
      s.mean = sum / s.pixels;
      s.stddev = std::sqrt(std::max(0.0, sum2 / s.pixels - s.mean * s.mean));
      INFO("ROI " << roi.name << ": mean " << s.mean << " HU, sd " << s.stddev << " over " << s.pixels
                  << " pixels, expected " << roi.expected_hu << " +- " << kHuTolerance);
      std::printf("e2e: %s ROI %-22s mean %8.1f HU (expected %6.0f +- %.0f), sd %5.1f, %d pixels\n",
                  path.filename().c_str(), roi.name.c_str(), s.mean, roi.expected_hu, kHuTolerance, s.stddev, s.pixels);
      CHECK(std::abs(s.mean - roi.expected_hu) <= kHuTolerance);
    }
  }
  CHECK(sop_uids.size() == received.size());

  // --- 3. The agent kept the validated results in its spool too. ---
  std::size_t spooled = 0;
  for (const auto& entry : fs::recursive_directory_iterator(work.path() / "spool")) {
    if (entry.path().extension() == ".dcm") ++spooled;
  }
  CHECK(spooled == received.size() + result_objects);

  // --- 4. The field diagnostics see every peer healthy and the queue empty. ---
  test::ChildProcess check({(fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(), "check", "--config",
                            cfg_path.string()},
                           logs / "check.log");
  const int check_rc = check.Wait(std::chrono::seconds(120));
  const std::string check_out = test::ReadText(logs / "check.log");
  INFO("ctagent check:\n" << check_out);
  CHECK(check_rc == 0);
  for (const char* line : {"OK    detector", "OK    disk", "OK    queue        0 scan(s) in progress", "OK    certificates",
                           "OK    link", "OK    pacs", "OK    console", "verdict: OK"}) {
    CHECK_THAT(check_out, Catch::Contains(line));
  }
}

}  // namespace

TEST_CASE("a simulated scan travels to the imaging center and its images come back to the console", "[e2e]") {
  // A small parallel-beam scan, quick under sanitizers: 360 views, one slice per detector row.
  ScanCase c;
  c.scan = {{"geometry", "parallel"}, {"views_per_rotation", 360}, {"rotations", 1}, {"rows", 4}, {"channels", 256},
            {"channel_pitch_mm", 1.6}, {"row_pitch_mm", 5.0}, {"rotation_time_s", 0.5}, {"dose_fraction", 1.0},
            {"unattenuated_counts", 60000}, {"sample_type", "uint16"}, {"seed", 77}, {"real_time", false}};
  c.views = 360;
  c.images = 4;
  RunScanEndToEnd(c);
}

TEST_CASE("the default 16-slice fan-beam scan travels end to end and its images show the chest's CT numbers",
          "[e2e][fan]") {
  // Every scan key but the seed and the pacing is the default (config/config.hpp): fan beam,
  // 16 x 896 channels, 1160 views in one axial rotation -> 16 slices 0.75 mm apart around
  // z = 0, each checked in every ROI of the chest. The codec is the default too (codec 2).
  ScanCase c;
  c.default_codec = true;
  c.scan = {{"seed", 78}, {"real_time", false}};
  c.views = 1160;
  c.views_per_chunk = 64;
  c.patch_bytes = 4u << 20;
  c.images = 16;
  RunScanEndToEnd(c);
}

TEST_CASE("field diagnostics name each unreachable peer", "[e2e]") {
  test::TempDir work("check");
  const auto dead_port = test::FreeLoopbackPort();  // nothing listens here
  test::MakeTestPki(work.path() / "pki");
  nlohmann::json cfg = {
      {"spool", {{"directory", (work.path() / "spool").string()}, {"min_free_bytes", 0}}},
      {"cloud",
       {{"upload_url", "https://127.0.0.1:" + std::to_string(dead_port) + "/files/"},
        {"dicomweb_url", "https://127.0.0.1:" + std::to_string(dead_port) + "/dicom-web"},
        {"tls", {{"ca_file", (work.path() / "pki/expired.pem").string()}}},
        {"connect_timeout_s", 2}}},
      {"console", {{"port", dead_port}}}};
  const fs::path cfg_path = work.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);
  test::ChildProcess check({(fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(), "check", "--config",
                            cfg_path.string()},
                           work.path() / "check.log");
  const int rc = check.Wait(std::chrono::seconds(120));
  const std::string out = test::ReadText(work.path() / "check.log");
  INFO(out);
  CHECK(rc == 1);
  CHECK_THAT(out, Catch::Contains("FAIL  certificates") && Catch::Contains("EXPIRED"));
  CHECK_THAT(out, Catch::Contains("FAIL  link"));
  CHECK_THAT(out, Catch::Contains("FAIL  pacs"));
  CHECK_THAT(out, Catch::Contains("FAIL  console") && Catch::Contains("not reachable"));
  CHECK_THAT(out, Catch::Contains("OK    disk"));
  CHECK_THAT(out, Catch::Contains("verdict: FAIL"));
}
