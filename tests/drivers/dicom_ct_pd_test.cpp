// DICOM-CT-PD data we did not write (issue 18): the one real third-party projection file
// (../shared/data/dicom-ct-pd/batelle.dcm, an early-format, implicit-VR Siemens view; provenance
// and tag notes in its README.md) is read with its published geometry and line integrals, and
// replays through the real `ctagent check` and `ctagent record` with no shape in the config, as
// 32 rows x 736 channels. The cases skip, saying why, when the file is not there.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dctk.h>
#include <nlohmann/json.hpp>

#include "drivers/replay/dicom_ct_pd.hpp"
#include "drivers/replay/recording.hpp"
#include "tests/support/process.hpp"

using namespace ctagent::drivers;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const fs::path kRealDir = CTAGENT_DICOM_CT_PD_DIR;
const fs::path kRealFile = kRealDir / "batelle.dcm";

// A directory holding only a link to the real file (the shared directory also holds README.md,
// and tests must not write there).
fs::path LinkRealFile(const fs::path& dir) {
  const fs::path recording = dir / "recording";
  fs::create_directories(recording);
  fs::create_symlink(kRealFile, recording / "batelle.dcm");
  return recording;
}

// Absent file: "SKIPPED: <why>", which ctest reports as a skip (SKIP_REGULAR_EXPRESSION).
bool RealFileMissing() {
  if (fs::exists(kRealFile)) return false;
  std::printf("SKIPPED: the real DICOM-CT-PD file is not at %s (configure with -DCTAGENT_SHARED_DATA_DIR=<folder holding dicom-ct-pd/>)\n", kRealFile.c_str());
  std::fflush(stdout);
  WARN("SKIPPED: no " << kRealFile.string());
  return true;
}

std::vector<std::uint16_t> Codes(const View& v) {
  std::vector<std::uint16_t> codes(v.samples.size() / 2);
  std::memcpy(codes.data(), v.samples.data(), v.samples.size());
  return codes;
}

}  // namespace

TEST_CASE("dicom-ct-pd: the real file's geometry as its tags give it (32 rows x 736 channels, transposed pixels)") {
  if (RealFileMissing()) return;
  ctagent::test::TempDir dir("ctpd-real");
  const fs::path recording = LinkRealFile(dir.path());
  auto info = replay::ReadDicomCtPdInfo(recording);
  REQUIRE(info);
  CHECK(info->creator == replay::kCreatorEarly);
  CHECK(info->rows == 32);
  CHECK(info->channels == 736);
  CHECK(info->views == 1);
  CHECK(info->transposed);  // DICOM Rows 736, Columns 32
  CHECK(info->manufacturer == "SIEMENS");
  CHECK(info->detector_shape == "CYLINDRICAL");
  CHECK(info->beam == "FANBEAM");
  CHECK(info->scan_type == "HELICAL");
  CHECK(info->flying_focal_spot == "FFSNONE");
  CHECK(info->angular_steps == 1152);
  CHECK(info->transverse_spacing_mm == Approx(1.2858).margin(1e-4));
  CHECK(info->axial_spacing_mm == Approx(2.1894).margin(1e-4));
  CHECK(info->first.phi0_rad == Approx(-1.5217).margin(1e-4));
  CHECK(info->first.z0_mm == Approx(-764.31).margin(1e-2));
  CHECK(info->first.rho0_mm == Approx(595.0).margin(1e-3));
  CHECK(info->source_to_detector_mm == Approx(1085.6).margin(1e-1));
  CHECK(info->central_channel == Approx(369.625));
  CHECK(info->central_row == Approx(16.5));
  CHECK(std::abs(info->first.dphi_rad) < 1e-3);
  CHECK(info->rescale_slope == Approx(9.866502822e-05).epsilon(1e-9));
  CHECK(info->rescale_intercept == Approx(-0.1440767036792).epsilon(1e-9));
  CHECK_FALSE(info->ctagent_encoding.has_value());

  // In the agent's terms: a fan beam, pitches at isocenter, one view of a 1152-view rotation
  // replayed as a rotation of its own, the file's line integrals as they are.
  const ScanProtocol configured;  // the parallel-beam defaults of ScanProtocol
  const replay::AdoptedProtocol adopted = replay::ProtocolFromDicomCtPd(*info, configured);
  const ScanProtocol& p = adopted.protocol;
  CHECK(p.geometry == GeometryKind::kFan);
  CHECK(p.rows == 32);
  CHECK(p.channels == 736);
  CHECK(p.views_per_rotation == 1);
  CHECK(p.rotations == 1);
  CHECK(p.source_to_isocenter_mm == Approx(595.0).margin(1e-3));
  CHECK(p.source_to_detector_mm == Approx(1085.6).margin(1e-1));
  CHECK(p.DetectorChannelPitchMm() == Approx(1.2858).margin(1e-4));
  CHECK(p.DetectorRowPitchMm() == Approx(2.1894).margin(1e-4));
  CHECK(p.table_start_mm == Approx(-764.31).margin(1e-2));
  CHECK(p.sample_encoding == SampleEncoding::kLineIntegral);
  CHECK(p.line_integral_slope == info->rescale_slope);
  CHECK(p.line_integral_intercept == info->rescale_intercept);
  // Every change from the config is said, and the partial rotation too.
  auto said = [&](const std::string& what) {
    return std::any_of(adopted.changes.begin(), adopted.changes.end(),
                       [&](const std::string& c) { return c.find(what) != std::string::npos; });
  };
  CHECK(said("rows 32 (the config says 4)"));
  CHECK(said("channels 736 (the config says 256)"));
  CHECK(said("geometry fan (the config says parallel)"));
  CHECK(said("not whole rotations of 1152 views"));
}

TEST_CASE("dicom-ct-pd: the real file's line integrals are in the published range, air near 0") {
  if (RealFileMissing()) return;
  ctagent::test::TempDir dir("ctpd-real-values");
  const fs::path recording = LinkRealFile(dir.path());
  auto reader = replay::DicomCtPdReader::Open(recording, 0.0, 0.0);  // no protocol: as recorded
  REQUIRE(reader);
  auto view = (*reader)->Next();
  REQUIRE(view);
  REQUIRE(view->has_value());
  const View& v = **view;
  CHECK(v.gantry_angle_deg == Approx(-1.5217 * 180.0 / 3.14159265358979).margin(1e-2));
  CHECK(v.table_position_mm == Approx(-764.31).margin(1e-2));
  const std::vector<std::uint16_t> codes = Codes(v);
  REQUIRE(codes.size() == 32u * 736u);
  const double slope = (*reader)->info().rescale_slope;
  const double intercept = (*reader)->info().rescale_intercept;
  auto p = [&](std::uint32_t row, std::uint32_t channel) { return slope * codes[row * 736u + channel] + intercept; };

  // The same pixels as DCMTK gives them: DICOM row = detector channel, column = detector row.
  DcmFileFormat format;
  REQUIRE(format.loadFile(kRealFile.c_str()).good());
  const Uint16* pixels = nullptr;
  unsigned long count = 0;
  REQUIRE(format.getDataset()->findAndGetUint16Array(DCM_PixelData, pixels, &count).good());
  REQUIRE(count == 32u * 736u);
  for (std::uint32_t row : {0u, 7u, 31u}) {
    for (std::uint32_t channel : {0u, 100u, 368u, 735u}) {
      CHECK(codes[row * 736u + channel] == pixels[channel * 32u + row]);
    }
  }

  // Line integrals: the published -0.011 .. 5.35 (stored 1346 .. 55716).
  const auto [low, high] = std::minmax_element(codes.begin(), codes.end());
  CHECK(*low == 1346);
  CHECK(*high == 55716);
  CHECK(slope * *low + intercept == Approx(-0.0113).margin(1e-3));
  CHECK(slope * *high + intercept == Approx(5.353).margin(1e-2));

  // Air at both ends of every detector row, the patient in the middle: only the right
  // orientation puts the channels along the row this way.
  double air_worst = 0;
  double middle_sum = 0;
  for (std::uint32_t row = 0; row < 32; ++row) {
    for (std::uint32_t c = 0; c < 20; ++c) {
      air_worst = std::max({air_worst, std::abs(p(row, c)), std::abs(p(row, 735 - c))});
    }
    for (std::uint32_t c = 318; c < 418; ++c) middle_sum += p(row, c);
  }
  INFO("largest |line integral| over the 20 outer channels of each side: " << air_worst);
  CHECK(air_worst < 0.02);
  INFO("mean line integral over the middle 100 channels: " << middle_sum / (32 * 100));
  CHECK(middle_sum / (32 * 100) > 0.5);

  auto end = (*reader)->Next();
  REQUIRE(end);
  CHECK_FALSE(end->has_value());
}

#ifdef CTAGENT_AGENT_BIN
namespace {

struct Run {
  int exit_code = -1;
  std::string output;
};

Run Ctagent(const fs::path& dir, const std::vector<std::string>& args) {
  static int serial = 0;
  const fs::path log = dir / ("ctagent-" + std::to_string(++serial) + ".log");
  std::vector<std::string> argv{CTAGENT_AGENT_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  Run run;
  {
    ctagent::test::ChildProcess child(argv, log);
    run.exit_code = child.Wait(60s);
  }
  run.output = ctagent::test::ReadText(log);
  return run;
}

// A config with the replay driver on `recording` and no scan section: no shape at all.
fs::path WriteConfig(const fs::path& dir, const fs::path& recording, const nlohmann::json& scan = nullptr,
                     const std::string& name = "ctagent.json", const std::string& format = "") {
  nlohmann::json options = {{"path", recording.string()}};
  if (!format.empty()) options["format"] = format;
  nlohmann::json cfg = {{"terminal_id", "ctpd-test"},
                        {"driver", {{"name", "replay"}, {"options", options}}},
                        {"spool", {{"directory", (dir / "spool").string()}, {"min_free_bytes", 0}}},
                        {"cloud", {{"upload_url", "https://127.0.0.1:9/files/"}}},
                        {"results", {{"enabled", false}}},
                        {"console", {{"enabled", false}}}};
  if (!scan.is_null()) cfg["scan"] = scan;
  const fs::path path = dir / name;
  std::ofstream(path) << cfg.dump(2);
  return path;
}

}  // namespace

TEST_CASE("dicom-ct-pd: the real file replays through ctagent check and record as 32 rows x 736 channels") {
  if (RealFileMissing()) return;
  ctagent::test::TempDir dir("ctpd-cli");
  const fs::path recording = LinkRealFile(dir.path());
  const fs::path config = WriteConfig(dir.path(), recording);

  // check: the detector accepts the scan with the recording's shape, never the transposed one
  // (before the fix: "has 736 rows x 32 channels"), and no shape in the config.
  const Run check = Ctagent(dir.path(), {"check", "--config", config.string(), "--only", "detector"});
  INFO(check.output);
  CHECK(check.exit_code == 0);
  CHECK(check.output.find("OK    detector") != std::string::npos);
  CHECK(check.output.find("from the recording: rows 32 (the config says 16)") != std::string::npos);
  CHECK(check.output.find("32 rows x 736 channels") != std::string::npos);
  CHECK(check.output.find("736 rows x 32 channels") == std::string::npos);
  // The same with the format named, as the issue found it.
  const fs::path named = WriteConfig(dir.path(), recording, nullptr, "ctagent-named.json", "dicom-ct-pd");
  const Run named_check = Ctagent(dir.path(), {"check", "--config", named.string(), "--only", "detector"});
  INFO(named_check.output);
  CHECK(named_check.output.find("OK    detector") != std::string::npos);
  CHECK(named_check.output.find("32 rows x 736 channels") != std::string::npos);
  CHECK(named_check.output.find("736 rows x 32 channels") == std::string::npos);
  // With the shape the detector line asks for, the detector accepts the scan.
  const fs::path shaped = WriteConfig(dir.path(), recording,
                                      {{"rows", 32}, {"channels", 736}, {"views_per_rotation", 1}, {"rotations", 1}},
                                      "ctagent-shaped.json");
  const Run shaped_check = Ctagent(dir.path(), {"check", "--config", shaped.string(), "--only", "detector"});
  INFO(shaped_check.output);
  CHECK(shaped_check.output.find("OK    detector") != std::string::npos);
  CHECK(shaped_check.output.find("32 rows x 736 channels") != std::string::npos);

  // record, with no shape in the config: the recording's shape, said.
  const fs::path out = dir.path() / "recorded";
  const Run record = Ctagent(dir.path(), {"record", "--config", config.string(), "--out", out.string()});
  INFO(record.output);
  REQUIRE(record.exit_code == 0);
  CHECK(record.output.find("recorded 1 view of 32 rows x 736 channels (fan beam") != std::string::npos);
  CHECK(record.output.find("from the recording: rows 32 (the config says 16)") != std::string::npos);
  CHECK(record.output.find("from the recording: channels 736 (the config says 896)") != std::string::npos);
  auto recorded = replay::ReadRecordingInfo(out);
  REQUIRE(recorded);
  CHECK(recorded->protocol.rows == 32);
  CHECK(recorded->protocol.channels == 736);
  CHECK(recorded->views == 1);
  CHECK(recorded->protocol.geometry == GeometryKind::kFan);

  // The same into DICOM-CT-PD again: the file's line-integral codes come back bit for bit.
  const fs::path again = dir.path() / "recorded-ctpd";
  const Run record_ctpd = Ctagent(dir.path(), {"record", "--config", config.string(), "--out", again.string(),
                                               "--format", "dicom-ct-pd"});
  INFO(record_ctpd.output);
  REQUIRE(record_ctpd.exit_code == 0);
  auto original = replay::DicomCtPdReader::Open(recording, 0.0, 0.0);
  auto rewritten = replay::DicomCtPdReader::Open(again, 0.0, 0.0);
  REQUIRE(original);
  REQUIRE(rewritten);
  CHECK((*rewritten)->info().rows == 32);
  CHECK((*rewritten)->info().channels == 736);
  CHECK((*rewritten)->info().detector_shape == "CYLINDRICAL");
  CHECK((*rewritten)->info().angular_steps == 1);
  auto a = (*original)->Next();
  auto b = (*rewritten)->Next();
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(a->has_value());
  REQUIRE(b->has_value());
  CHECK((**a).samples == (**b).samples);
}

TEST_CASE("record: a configuration that cannot be read or is invalid exits 3, naming the file", "[replay][cli]") {
  ctagent::test::TempDir dir("record-config");
  const fs::path out = dir.path() / "recorded";
  const fs::path missing = dir.path() / "no-such-agent.json";
  const Run absent = Ctagent(dir.path(), {"record", "--config", missing.string(), "--out", out.string()});
  INFO(absent.output);
  CHECK(absent.exit_code == 3);
  CHECK(absent.output.find(missing.string()) != std::string::npos);

  const fs::path broken = dir.path() / "broken-agent.json";
  std::ofstream(broken) << "{ \"spool\": ";
  const Run invalid = Ctagent(dir.path(), {"record", "--config", broken.string(), "--out", out.string()});
  INFO(invalid.output);
  CHECK(invalid.exit_code == 3);
  CHECK(invalid.output.find(broken.string()) != std::string::npos);
  CHECK_FALSE(fs::exists(out));  // nothing recorded
}
#endif
