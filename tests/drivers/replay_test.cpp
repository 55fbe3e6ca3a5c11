// Record and replay: a scan recorded from sim plays back identical views (ctagent format, and
// DICOM-CT-PD with line-integral samples) or the same views up to 16-bit line-integral
// quantisation (DICOM-CT-PD with counts); the replay driver
// refuses a protocol of another shape, reports a damaged recording with file and offset, and
// paces at the recorded rate when asked.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <cstring>
#include <fstream>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dctk.h>

#include "drivers/record.hpp"
#include "drivers/replay/recording.hpp"
#include "drivers/replay/replay_detector.hpp"
#include "tests/drivers/read_views.hpp"
#include "tests/support/process.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;
using ctagent::drivers::testing::ReadAll;

namespace {

ScanProtocol Small() {
  ScanProtocol p;
  p.views_per_rotation = 30;
  p.rotations = 2;
  p.rows = 2;
  p.channels = 48;
  p.channel_pitch_mm = 8.0;
  p.table_speed_mm_per_rotation = 10.0;
  p.seed = 3;
  return p;
}

}  // namespace

#ifdef CTAGENT_DRIVER_SIM
TEST_CASE("replay: a scan recorded from sim plays back identical views") {
  ctagent::test::TempDir dir("replay");
  const auto recording = dir.path() / "scan1";
  const ScanProtocol p = Small();
  auto sim = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(sim);
  auto recorded = RecordScan(**sim, p, recording);
  REQUIRE(recorded);
  CHECK(*recorded == p.TotalViews());
  CHECK(std::filesystem::file_size(recording / "views.bin") == p.TotalViews() * (replay::kViewHeaderBytes + p.BytesPerView()));

  auto fresh = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(fresh);
  const std::vector<View> expected = ReadAll(**fresh, p);

  auto replayer = MakeDetector("replay", nlohmann::json{{"path", recording.string()}});
  REQUIRE(replayer);
  CHECK((*replayer)->Info().name == "replay");
  for (int pass = 0; pass < 2; ++pass) {  // re-arming starts again from view 0
    const std::vector<View> got = ReadAll(**replayer, p);
    REQUIRE(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].sequence == expected[i].sequence);
      CHECK(got[i].gantry_angle_deg == expected[i].gantry_angle_deg);
      CHECK(got[i].table_position_mm == expected[i].table_position_mm);
      CHECK(got[i].timestamp_us == expected[i].timestamp_us);
      CHECK(got[i].status_flags == expected[i].status_flags);
      CHECK(got[i].samples == expected[i].samples);
    }
  }

  // A directory that is not empty is not overwritten.
  auto again = RecordScan(**fresh, p, recording);
  REQUIRE_FALSE(again);
  CHECK(again.error().message().find("exists and is not empty") != std::string::npos);
}

TEST_CASE("replay: refuses another shape, reports damage, paces in real time, aborts") {
  ctagent::test::TempDir dir("replay-errors");
  const auto recording = dir.path() / "scan";
  ScanProtocol p = Small();
  auto sim = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(sim);
  REQUIRE(RecordScan(**sim, p, recording));

  auto d = replay::ReplayDetector::Create(nlohmann::json{{"path", recording.string()}});
  REQUIRE(d);
  ScanProtocol other = p;
  other.channels = 64;
  auto refused = (*d)->Arm(other);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("has 2 rows x 48 channels") != std::string::npos);
  CHECK(refused.error().message().find("asks for 2 rows x 64 channels") != std::string::npos);

  // Real time: 60 views at 30 views per 1 s rotation: view 59 is due 59/30 s after view 0.
  ScanProtocol paced = p;
  paced.real_time = true;
  const auto start = std::chrono::steady_clock::now();
  CHECK(ReadAll(**d, paced).size() == p.TotalViews());
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(elapsed > 0.9 * 59.0 / 30.0);
  CHECK(elapsed < 59.0 / 30.0 + 1.0);

  REQUIRE((*d)->Arm(paced));
  REQUIRE((*d)->NextView());
  (*d)->Abort();
  auto aborted = (*d)->NextView();
  REQUIRE_FALSE(aborted);
  CHECK(aborted.error().kind() == ErrorKind::kCancelled);

  // Damage the magic of view 3: the error names the file, the byte offset and the view.
  {
    std::fstream f(recording / "views.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(3 * (replay::kViewHeaderBytes + p.BytesPerView())));
    f.write("XXXX", 4);
  }
  REQUIRE((*d)->Arm(p));
  for (int i = 0; i < 3; ++i) REQUIRE((*d)->NextView());
  auto bad = (*d)->NextView();
  REQUIRE_FALSE(bad);
  CHECK(bad.error().kind() == ErrorKind::kCorrupt);
  CHECK(bad.error().message().find("views.bin at byte " + std::to_string(3 * (replay::kViewHeaderBytes + p.BytesPerView())) +
                                   " (view 3): bad view magic") != std::string::npos);
}
#endif

TEST_CASE("replay: options and incomplete recordings are refused with a reason") {
  ctagent::test::TempDir dir("replay-options");
  auto no_path = MakeDetector("replay", nlohmann::json::object());
  REQUIRE_FALSE(no_path);
  CHECK(no_path.error().message().find("{\"path\"") != std::string::npos);
  auto extra = MakeDetector("replay", nlohmann::json{{"path", dir.path().string()}, {"speed", 2}});
  REQUIRE_FALSE(extra);
  CHECK(extra.error().message().find("/speed: unknown key") != std::string::npos);
  auto empty = MakeDetector("replay", nlohmann::json{{"path", dir.path().string()}});
  REQUIRE_FALSE(empty);
  CHECK(empty.error().kind() == ErrorKind::kNotFound);
  CHECK(empty.error().message().find("no readable protocol.json") != std::string::npos);
  CHECK(RecordCommand({"--out"}) == 2);
}

#ifdef CTAGENT_DRIVER_SIM
TEST_CASE("replay: sim -> DICOM-CT-PD writer -> replay gives the same views") {
  ctagent::test::TempDir dir("dicom-ct-pd");
  const auto out = dir.path() / "ctpd";
  const ScanProtocol p = Small();
  auto sim = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(sim);
  REQUIRE(RecordScan(**sim, p, out, RecordFormat::kDicomCtPd));
  CHECK(std::filesystem::exists(out / "view_000059.dcm"));

  // The standard DICOM-CT-PD tags are there, with the geometry in their units.
  DcmFileFormat format;
  REQUIRE(format.loadFile((out / "view_000015.dcm").c_str()).good());
  DcmDataset* ds = format.getDataset();
  Uint16 rows = 0;
  Uint16 columns = 0;
  Float32 angle_rad = 0;
  OFString patient_name;
  CHECK(ds->findAndGetUint16(DcmTagKey(0x7029, 0x1010), rows).good());
  CHECK(ds->findAndGetUint16(DcmTagKey(0x7029, 0x1011), columns).good());
  CHECK(ds->findAndGetFloat32(DcmTagKey(0x7031, 0x1001), angle_rad).good());
  CHECK(rows == p.rows);
  CHECK(columns == p.channels);
  CHECK(static_cast<double>(angle_rad) == Approx(15.0 * 3.14159265358979 / 30.0).epsilon(1e-6));
  ds->findAndGetOFString(DCM_PatientName, patient_name);
  CHECK(patient_name.empty());

  auto fresh = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(fresh);
  const std::vector<View> expected = ReadAll(**fresh, p);
  auto replayer = MakeDetector("replay", nlohmann::json{{"path", out.string()}, {"format", "dicom-ct-pd"}});
  REQUIRE(replayer);
  const std::vector<View> got = ReadAll(**replayer, p);
  REQUIRE(got.size() == expected.size());
  std::size_t exact = 0;
  std::size_t samples = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].sequence == expected[i].sequence);
    CHECK(got[i].gantry_angle_deg == expected[i].gantry_angle_deg);
    CHECK(got[i].table_position_mm == expected[i].table_position_mm);
    CHECK(got[i].timestamp_us == expected[i].timestamp_us);
    CHECK(got[i].status_flags == expected[i].status_flags);
    REQUIRE(got[i].samples.size() == expected[i].samples.size());
    for (std::size_t k = 0; k < got[i].samples.size(); k += 2) {
      std::uint16_t a = 0;
      std::uint16_t b = 0;
      std::memcpy(&a, got[i].samples.data() + k, 2);
      std::memcpy(&b, expected[i].samples.data() + k, 2);
      // 16-bit line integrals: about 1e-4 relative, exact for low counts.
      const double allowed = 0.5 + 1.5e-4 * b;
      if (std::abs(static_cast<double>(a) - static_cast<double>(b)) > allowed) FAIL("view " << i << " byte " << k << ": " << a << " vs " << b);
      exact += a == b;
      ++samples;
    }
  }
  CHECK(exact > samples / 4);  // most rays through the body have counts low enough to be exact

  auto wrong = MakeDetector("replay", nlohmann::json{{"path", out.string()}, {"format", "dicom"}});
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().message().find("/format: unknown key or value") != std::string::npos);
}

TEST_CASE("replay: sim line-integral samples -> DICOM-CT-PD -> replay is bit-identical (parallel and fan helical)") {
  // In the line_integral encoding sim delivers what DICOM-CT-PD stores (uint16 codes with the
  // protocol's rescale), so the round trip guarantees identical bytes, angles, table positions,
  // timestamps, flags and sequence numbers.
  for (const GeometryKind geometry : {GeometryKind::kParallel, GeometryKind::kFan}) {
    ctagent::test::TempDir dir("dicom-ct-pd-exact");
    const auto out = dir.path() / "ctpd";
    ScanProtocol p = Small();
    p.geometry = geometry;
    p.sample_encoding = SampleEncoding::kLineIntegral;
    p.line_integral_slope = 1.0 / 3000;  // needs 17 digits: DS (16 characters) rounds it, the FD copy does not
    p.line_integral_intercept = -0.5;
    p.dose_fraction = 0.25;
    if (geometry == GeometryKind::kFan) p.channel_pitch_mm = 7.0;  // a 336 mm field at isocenter
    INFO("geometry " << ToString(geometry));
    const nlohmann::json options = {{"dead_channels", {3}}, {"channel_gain_sd", 0.02}};
    auto sim = MakeDetector("sim", options);
    REQUIRE(sim);
    REQUIRE(RecordScan(**sim, p, out, RecordFormat::kDicomCtPd));

    DcmFileFormat format;
    REQUIRE(format.loadFile((out / "view_000007.dcm").c_str()).good());
    OFString slope_text;
    REQUIRE(format.getDataset()->findAndGetOFString(DCM_RescaleSlope, slope_text).good());
    CHECK(std::strtod(slope_text.c_str(), nullptr) == Approx(p.line_integral_slope).epsilon(1e-9));
    CHECK(slope_text.length() <= 16);
    Float64 exact_slope = 0;
    REQUIRE(format.getDataset()->findAndGetFloat64(DcmTagKey(0x0019, 0x1007), exact_slope).good());
    CHECK(exact_slope == p.line_integral_slope);

    auto fresh = MakeDetector("sim", options);
    REQUIRE(fresh);
    const std::vector<View> expected = ReadAll(**fresh, p);
    auto replayer = MakeDetector("replay", nlohmann::json{{"path", out.string()}, {"format", "dicom-ct-pd"}});
    REQUIRE(replayer);
    const std::vector<View> got = ReadAll(**replayer, p);
    REQUIRE(got.size() == expected.size());
    REQUIRE(got.size() == p.TotalViews());
    for (std::size_t i = 0; i < got.size(); ++i) {
      INFO("view " << i);
      CHECK(got[i].sequence == expected[i].sequence);
      CHECK(got[i].gantry_angle_deg == expected[i].gantry_angle_deg);
      CHECK(got[i].table_position_mm == expected[i].table_position_mm);
      CHECK(got[i].timestamp_us == expected[i].timestamp_us);
      CHECK(got[i].status_flags == expected[i].status_flags);
      CHECK(got[i].samples == expected[i].samples);
    }
    CHECK((expected.front().status_flags & kViewDeadChannel) != 0);

    // Read with a protocol of another rescale, the codes are re-quantised to it.
    ScanProtocol coarse = p;
    coarse.line_integral_slope = 2.0 / 3000;
    auto reader = replay::DicomCtPdReader::Open(out, coarse);
    REQUIRE(reader);
    auto first = (*reader)->Next();
    REQUIRE(first);
    REQUIRE(first->has_value());
    for (std::size_t k = 0; k < expected[0].samples.size(); k += 2) {
      std::uint16_t a = 0;
      std::uint16_t b = 0;
      std::memcpy(&a, (**first).samples.data() + k, 2);
      std::memcpy(&b, expected[0].samples.data() + k, 2);
      const double p_read = coarse.line_integral_slope * a + coarse.line_integral_intercept;
      const double p_sim = p.line_integral_slope * b + p.line_integral_intercept;
      if (std::abs(p_read - p_sim) > coarse.line_integral_slope / 2 + 1e-12 && a != 0 && a != 65535) {
        FAIL("sample " << k / 2 << ": " << p_read << " vs " << p_sim);
      }
    }
  }
}
#endif
