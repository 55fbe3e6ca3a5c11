// Record and replay: a scan recorded from sim plays back identical views (ctagent format, and
// DICOM-CT-PD with line-integral samples) or the same views up to 16-bit line-integral
// quantisation (DICOM-CT-PD with counts); the replay driver
// refuses a protocol of another shape, reports a damaged recording with file and offset, and
// paces at the recorded rate when asked.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dctk.h>

#include "drivers/record.hpp"
#include "drivers/replay/dicom_ct_pd.hpp"
#include "drivers/replay/recording.hpp"
#include "drivers/replay/replay_detector.hpp"
#include "tests/drivers/read_views.hpp"
#include "tests/support/process.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;
using ctagent::drivers::testing::ReadAll;

namespace {

ScanProtocol SmallReplayProtocol() {
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
  const ScanProtocol p = SmallReplayProtocol();
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

TEST_CASE("replay: a ctagent recording sets the whole protocol, the config only real_time, other drivers keep theirs") {
  ctagent::test::TempDir dir("replay-protocol");
  const auto recording = dir.path() / "scan";
  ScanProtocol p = SmallReplayProtocol();
  p.dose_fraction = 0.25;
  p.rotation_time_s = 0.8;
  auto sim = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(sim);
  REQUIRE(RecordScan(**sim, p, recording));

  ScanProtocol configured = SixteenSliceAxialProtocol();
  configured.real_time = true;
  const nlohmann::json options = {{"path", recording.string()}};
  auto adopted = replay::ScanProtocolFor("replay", options, configured);
  REQUIRE(adopted);
  ScanProtocol expected = p;
  expected.real_time = true;
  CHECK(ToJson(adopted->protocol) == ToJson(expected));
  CHECK(std::find(adopted->changes.begin(), adopted->changes.end(), "geometry parallel (the config says fan)") !=
        adopted->changes.end());
  CHECK(std::find(adopted->changes.begin(), adopted->changes.end(), "dose_fraction 0.25 (the config says 1)") !=
        adopted->changes.end());
  auto replayer = MakeDetector("replay", options);
  REQUIRE(replayer);
  CHECK((*replayer)->Arm(adopted->protocol));
  CHECK((*replayer)->Info().model == "ctagent recording, 2 rows x 48 channels, 60 views");

  auto other = replay::ScanProtocolFor("sim", options, configured);
  REQUIRE(other);
  CHECK(ToJson(other->protocol) == ToJson(configured));
  CHECK(other->changes.empty());
  auto missing = replay::ScanProtocolFor("replay", {{"path", (dir.path() / "none").string()}}, configured);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message().find("cannot read the recording directory " + (dir.path() / "none").string() +
                                      ": No such file or directory") != std::string::npos);
}

TEST_CASE("replay: refuses another shape, reports damage, paces in real time, aborts") {
  ctagent::test::TempDir dir("replay-errors");
  const auto recording = dir.path() / "scan";
  ScanProtocol p = SmallReplayProtocol();
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

  // Real time: 60 views at 30 views per 1 s rotation. Each view is delivered at its recorded
  // spacing from the first (view 59 is due 59/30 s after view 0): none may come early. How late
  // they come depends on the machine, so the whole scan is held only to a bound a pacing bug
  // would break (sleeping a rotation per view would take a minute), not to the schedule.
  ScanProtocol paced = p;
  paced.real_time = true;
  const auto before_first = std::chrono::steady_clock::now();  // before Arm(): no later than pacing starts
  std::optional<std::int64_t> first_timestamp_us;
  int early = 0;
  double elapsed = 0;
  double last_due = 0;
  const auto views = ReadAll(**d, paced, [&](const View& v) {
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - before_first).count();
    if (!first_timestamp_us) first_timestamp_us = v.timestamp_us;
    last_due = static_cast<double>(v.timestamp_us - *first_timestamp_us) / 1e6;
    if (elapsed < last_due) ++early;
  });
  CHECK(views.size() == p.TotalViews());
  INFO("the last view after " << elapsed << " s");
  CHECK(early == 0);
  CHECK(std::abs(last_due - 59.0 / 30.0) < 0.001);  // the recording's spacing, to its microseconds
  CHECK(elapsed < 20.0);

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
  CHECK(empty.error().message().find("holds neither protocol.json") != std::string::npos);
  auto named = MakeDetector("replay", nlohmann::json{{"path", dir.path().string()}, {"format", "ctagent"}});
  REQUIRE_FALSE(named);
  CHECK(named.error().message().find("no readable protocol.json") != std::string::npos);
  CHECK(RecordCommand({"--out"}) == 2);
}

#ifdef CTAGENT_DRIVER_SIM
TEST_CASE("replay: sim -> DICOM-CT-PD writer -> replay gives the same views") {
  ctagent::test::TempDir dir("dicom-ct-pd");
  const auto out = dir.path() / "ctpd";
  const ScanProtocol p = SmallReplayProtocol();
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
    ScanProtocol p = SmallReplayProtocol();
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

TEST_CASE("replay: the DICOM-CT-PD writer writes the geometry the reader reads back (fan and parallel)") {
  // Fan beam: a CYLINDRICAL detector (the agent's arc), focal distances, spacings at the
  // detector, one view per 360/views_per_rotation degrees; parallel: a FLAT detector and twice
  // the views per rotation (the tag counts a full turn, a parallel rotation is half of one).
  // The old writer wrote FLAT, spacings at isocenter and twice the views per rotation for both.
  for (const GeometryKind geometry : {GeometryKind::kFan, GeometryKind::kParallel}) {
    INFO("geometry " << ToString(geometry));
    ctagent::test::TempDir dir("dicom-ct-pd-geometry");
    const auto out = dir.path() / "ctpd";
    ScanProtocol p = SmallReplayProtocol();
    p.geometry = geometry;
    if (geometry == GeometryKind::kFan) p.channel_pitch_mm = 7.0;
    p.row_pitch_mm = 3.0;
    p.rotation_time_s = 0.75;
    p.table_start_mm = -20.0;
    auto sim = MakeDetector("sim", nlohmann::json::object());
    REQUIRE(sim);
    REQUIRE(RecordScan(**sim, p, out, RecordFormat::kDicomCtPd));

    auto info = replay::ReadDicomCtPdInfo(out);
    REQUIRE(info);
    CHECK(info->creator == replay::kCreatorLater);
    CHECK(info->rows == p.rows);
    CHECK(info->channels == p.channels);
    CHECK(info->views == p.TotalViews());
    CHECK(info->transposed);  // the published layout: one DICOM row per channel
    CHECK(info->scan_type == "HELICAL");
    CHECK(info->flying_focal_spot == "FFSNONE");
    CHECK(info->transverse_spacing_mm == Approx(p.DetectorChannelPitchMm()).epsilon(1e-6));
    CHECK(info->axial_spacing_mm == Approx(p.DetectorRowPitchMm()).epsilon(1e-6));
    CHECK(info->central_channel == Approx(24.5));
    CHECK(info->central_row == Approx(1.5));
    if (geometry == GeometryKind::kFan) {
      CHECK(info->detector_shape == "CYLINDRICAL");
      CHECK(info->beam == "FANBEAM");
      CHECK(info->angular_steps == p.views_per_rotation);
      CHECK(info->first.rho0_mm == Approx(p.source_to_isocenter_mm));
      CHECK(info->source_to_detector_mm == Approx(p.source_to_detector_mm));
    } else {
      CHECK(info->detector_shape == "FLAT");
      CHECK(info->beam == "PARALLEL");
      CHECK(info->angular_steps == 2 * p.views_per_rotation);
      CHECK(info->first.rho0_mm == 0);
    }
    DcmFileFormat format;
    REQUIRE(format.loadFile((out / "view_000000.dcm").c_str()).good());
    Uint16 image_rows = 0;
    Uint16 image_columns = 0;
    REQUIRE(format.getDataset()->findAndGetUint16(DCM_Rows, image_rows).good());
    REQUIRE(format.getDataset()->findAndGetUint16(DCM_Columns, image_columns).good());
    CHECK(image_rows == p.channels);
    CHECK(image_columns == p.rows);

    // The protocol the agent takes from the recording is the recorded one, whatever the config
    // says (here the 16-slice fan-beam default).
    const ScanProtocol configured = SixteenSliceAxialProtocol();
    auto adopted = replay::ProtocolForReplay(nlohmann::json{{"path", out.string()}}, configured);
    REQUIRE(adopted);
    const ScanProtocol& q = adopted->protocol;
    CHECK(q.geometry == p.geometry);
    CHECK(q.rows == p.rows);
    CHECK(q.channels == p.channels);
    CHECK(q.views_per_rotation == p.views_per_rotation);
    CHECK(q.rotations == p.rotations);
    CHECK(q.channel_pitch_mm == Approx(p.channel_pitch_mm).epsilon(1e-6));
    CHECK(q.row_pitch_mm == Approx(p.row_pitch_mm).epsilon(1e-6));
    CHECK(q.table_start_mm == Approx(p.table_start_mm).epsilon(1e-6));
    CHECK(q.table_speed_mm_per_rotation == Approx(p.table_speed_mm_per_rotation).epsilon(1e-5));
    CHECK(q.rotation_time_s == p.rotation_time_s);
    CHECK(q.sample_encoding == SampleEncoding::kCounts);
    CHECK(q.unattenuated_counts * q.dose_fraction == Approx(p.unattenuated_counts * p.dose_fraction));
    if (geometry == GeometryKind::kFan) {
      CHECK(q.source_to_isocenter_mm == Approx(p.source_to_isocenter_mm));
      CHECK(q.source_to_detector_mm == Approx(p.source_to_detector_mm));
    }
    CHECK(std::find(adopted->changes.begin(), adopted->changes.end(), "rows 2 (the config says 16)") !=
          adopted->changes.end());

    // {"path"} alone replays it (the directory says it is DICOM-CT-PD), with that protocol.
    auto replayer = MakeDetector("replay", nlohmann::json{{"path", out.string()}});
    REQUIRE(replayer);
    CHECK((*replayer)->Info().max_rows == p.rows);
    CHECK((*replayer)->Info().max_channels == p.channels);
    const std::vector<View> got = ReadAll(**replayer, q);
    REQUIRE(got.size() == p.TotalViews());
    CHECK(got.back().gantry_angle_deg == Approx((p.TotalViews() - 1) * p.DegreesPerRotation() / p.views_per_rotation));
    auto refused = (*replayer)->Arm(configured);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message().find("has 2 rows x 48 channels, uint16, 60 views") != std::string::npos);
    CHECK(refused.error().message().find("scan.views_per_rotation 30, scan.rotations 2") != std::string::npos);
  }
}

TEST_CASE("replay: damaged DICOM-CT-PD files are refused naming the file and what is wrong") {
  ctagent::test::TempDir dir("dicom-ct-pd-damaged");
  const auto out = dir.path() / "ctpd";
  const ScanProtocol p = SmallReplayProtocol();
  auto sim = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(sim);
  REQUIRE(RecordScan(**sim, p, out, RecordFormat::kDicomCtPd));
  auto edit = [&](const char* name, const std::function<void(DcmDataset&)>& change) {
    DcmFileFormat format;
    REQUIRE(format.loadFile((out / name).c_str()).good());
    change(*format.getDataset());
    REQUIRE(format.saveFile((out / name).c_str(), EXS_LittleEndianExplicit).good());
  };
  // View 10's image no longer has the first file's shape; view 20 is not DICOM at all.
  edit("view_000010.dcm", [](DcmDataset& ds) { REQUIRE(ds.putAndInsertUint16(DCM_Rows, 47).good()); });
  std::ofstream(out / "view_000020.dcm", std::ios::trunc) << "not a DICOM file";
  auto reader = replay::DicomCtPdReader::Open(out, p);
  // View 20 has no InstanceNumber to order by: refused at open, naming it.
  REQUIRE_FALSE(reader);
  CHECK(reader.error().message().find("view_000020.dcm") != std::string::npos);
  std::filesystem::remove(out / "view_000020.dcm");
  ScanProtocol fewer = p;
  fewer.views_per_rotation = 59;
  fewer.rotations = 1;
  reader = replay::DicomCtPdReader::Open(out, fewer);
  REQUIRE(reader);
  for (int i = 0; i < 10; ++i) REQUIRE((*reader)->Next());
  auto bad = (*reader)->Next();
  REQUIRE_FALSE(bad);
  CHECK(bad.error().kind() == ErrorKind::kCorrupt);
  CHECK(bad.error().message().find("view_000010.dcm: the image is 47 x 2 pixels (Rows x Columns); the first file's "
                                   "is 48 x 2") != std::string::npos);

  // Without the format's private creator the first file is not DICOM-CT-PD to us, even with the
  // tags at their usual numbers.
  edit("view_000000.dcm", [](DcmDataset& ds) {
    REQUIRE(ds.putAndInsertString(DcmTag(0x7029, 0x0010, EVR_LO), "SOMEONE ELSE").good());
  });
  auto info = replay::ReadDicomCtPdInfo(out);
  REQUIRE_FALSE(info);
  CHECK(info.error().message().find("view_000000.dcm: no DICOM-CT-PD private creator") != std::string::npos);
  // And an image that fits the detector neither way is refused at once.
  edit("view_000000.dcm", [](DcmDataset& ds) {
    REQUIRE(ds.putAndInsertString(DcmTag(0x7029, 0x0010, EVR_LO), replay::kCreatorLater).good());
    REQUIRE(ds.putAndInsertUint16(DCM_Columns, 3).good());
  });
  info = replay::ReadDicomCtPdInfo(out);
  REQUIRE_FALSE(info);
  CHECK(info.error().message().find("the image is 48 x 3 pixels (Rows x Columns), which fits neither way the "
                                    "detector's 2 rows x 48 channels") != std::string::npos);
}
#endif

namespace {

// A DICOM-CT-PD view as the early MATLAB writer made them, but harder: implicit VR (the private
// values arrive as raw bytes), its creator in block 0x11 with another creator's block 0x10
// holding decoy values at the element numbers a fixed-number reader would use, and the pixel
// matrix in detector order (Rows = detector rows), not transposed.
void WriteEarlyView(const std::filesystem::path& file, int instance, double phi, double z, double dz,
                    const std::vector<Uint16>& pixels) {
  DcmFileFormat format;
  DcmDataset* ds = format.getDataset();
  REQUIRE(ds->putAndInsertString(DCM_SOPClassUID, UID_CTImageStorage).good());
  REQUIRE(ds->putAndInsertString(DCM_SOPInstanceUID, ("2.25.1818" + std::to_string(instance)).c_str()).good());
  REQUIRE(ds->putAndInsertString(DCM_InstanceNumber, std::to_string(instance).c_str()).good());
  REQUIRE(ds->putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
  REQUIRE(ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
  REQUIRE(ds->putAndInsertUint16(DCM_Rows, 3).good());
  REQUIRE(ds->putAndInsertUint16(DCM_Columns, 5).good());
  REQUIRE(ds->putAndInsertUint16(DCM_BitsAllocated, 16).good());
  REQUIRE(ds->putAndInsertUint16(DCM_BitsStored, 16).good());
  REQUIRE(ds->putAndInsertUint16(DCM_HighBit, 15).good());
  REQUIRE(ds->putAndInsertUint16(DCM_PixelRepresentation, 0).good());
  REQUIRE(ds->putAndInsertString(DCM_RescaleSlope, "0.001").good());
  REQUIRE(ds->putAndInsertString(DCM_RescaleIntercept, "-0.5").good());
  for (Uint16 group : {Uint16{0x7029}, Uint16{0x7031}, Uint16{0x7033}, Uint16{0x7037}}) {
    REQUIRE(ds->putAndInsertString(DcmTag(group, 0x0010, EVR_LO), "SOMEONE ELSE").good());
    REQUIRE(ds->putAndInsertString(DcmTag(group, 0x0011, EVR_LO), replay::kCreatorEarly).good());
  }
  REQUIRE(ds->putAndInsertUint16(DcmTag(0x7029, 0x1010, EVR_US), 99).good());  // decoys
  REQUIRE(ds->putAndInsertUint16(DcmTag(0x7029, 0x1011, EVR_US), 99).good());
  REQUIRE(ds->putAndInsertUint16(DcmTag(0x7029, 0x1110, EVR_US), 3).good());
  REQUIRE(ds->putAndInsertUint16(DcmTag(0x7029, 0x1111, EVR_US), 5).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7029, 0x1102, EVR_FL), 1.25f).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7029, 0x1106, EVR_FL), 1.5f).good());
  REQUIRE(ds->putAndInsertString(DcmTag(0x7029, 0x110B, EVR_CS), "FLAT").good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7031, 0x1101, EVR_FL), static_cast<Float32>(phi)).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7031, 0x1102, EVR_FL), static_cast<Float32>(z)).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7031, 0x1103, EVR_FL), 500.0f).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7031, 0x1131, EVR_FL), 1000.0f).good());
  const Float32 central[2] = {3.0f, 2.0f};
  REQUIRE(ds->putAndInsertFloat32Array(DcmTag(0x7031, 0x1133, EVR_FL), central, 2).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7033, 0x110B, EVR_FL), 0.001f).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7033, 0x110C, EVR_FL), static_cast<Float32>(dz)).good());
  REQUIRE(ds->putAndInsertFloat32(DcmTag(0x7033, 0x110D, EVR_FL), 0.0f).good());
  REQUIRE(ds->putAndInsertString(DcmTag(0x7033, 0x110E, EVR_CS), "FFSZ").good());
  REQUIRE(ds->putAndInsertUint16(DcmTag(0x7033, 0x1113, EVR_US), 4).good());
  REQUIRE(ds->putAndInsertString(DcmTag(0x7037, 0x110A, EVR_CS), "FANBEAM").good());
  REQUIRE(ds->putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  REQUIRE(format.saveFile(file.c_str(), EXS_LittleEndianImplicit).good());
}

}  // namespace

TEST_CASE("replay: DICOM-CT-PD tags are found through their private creator, in implicit VR, either pixel layout") {
  ctagent::test::TempDir dir("dicom-ct-pd-early");
  const auto recording = dir.path() / "early";
  std::filesystem::create_directories(recording);
  // Four views named against their order (the reader goes by InstanceNumber), the focal spot
  // jumping +-0.25 mm in z (FFSZ).
  for (int k = 0; k < 4; ++k) {
    std::vector<Uint16> pixels(15);
    for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>(1000 * k + 100 * i);
    WriteEarlyView(recording / ("z" + std::to_string(9 - k) + ".dcm"), k + 1, 0.5 + k * 1.5707963, 12.5 + k,
                   k % 2 == 0 ? 0.25 : -0.25, pixels);
  }
  auto info = replay::ReadDicomCtPdInfo(recording);
  REQUIRE(info);
  CHECK(info->creator == replay::kCreatorEarly);
  CHECK(info->rows == 3);
  CHECK(info->channels == 5);
  CHECK_FALSE(info->transposed);
  CHECK(info->detector_shape == "FLAT");
  CHECK(info->flying_focal_spot == "FFSZ");
  CHECK(info->angular_steps == 4);
  CHECK(info->transverse_spacing_mm == 1.25);
  CHECK(info->central_channel == 3.0);
  CHECK(info->first.z0_mm == 12.5);
  CHECK(info->last.z0_mm == 15.5);

  const replay::AdoptedProtocol adopted = replay::ProtocolFromDicomCtPd(*info, ScanProtocol{});
  CHECK(adopted.protocol.geometry == GeometryKind::kFan);
  CHECK(adopted.protocol.views_per_rotation == 4);
  CHECK(adopted.protocol.rotations == 1);
  CHECK(adopted.protocol.source_to_isocenter_mm == 500.0);
  CHECK(adopted.protocol.channel_pitch_mm == Approx(0.625));
  CHECK(adopted.protocol.table_speed_mm_per_rotation == Approx(4.0));
  CHECK(adopted.protocol.line_integral_slope == 0.001);
  CHECK(adopted.protocol.line_integral_intercept == -0.5);
  auto noted = [&](const std::string& what) {
    return std::any_of(adopted.changes.begin(), adopted.changes.end(),
                       [&](const std::string& c) { return c.find(what) != std::string::npos; });
  };
  CHECK(noted("FLAT detector"));
  CHECK(noted("flying focal spot FFSZ"));

  auto reader = replay::DicomCtPdReader::Open(recording, adopted.protocol);
  REQUIRE(reader);
  for (int k = 0; k < 4; ++k) {
    INFO("view " << k);
    auto view = (*reader)->Next();
    REQUIRE(view);
    REQUIRE(view->has_value());
    CHECK((**view).sequence == static_cast<std::uint64_t>(k));
    CHECK((**view).gantry_angle_deg == Approx((0.5 + k * 1.5707963) * 180.0 / 3.14159265358979).epsilon(1e-6));
    CHECK((**view).table_position_mm == 12.5 + k);
    CHECK((*reader)->last_geometry().dz_mm == (k % 2 == 0 ? 0.25 : -0.25));
    CHECK((*reader)->last_geometry().dphi_rad == Approx(0.001));
    REQUIRE((**view).samples.size() == 30);
    for (std::size_t i = 0; i < 15; ++i) {
      std::uint16_t sample = 0;
      std::memcpy(&sample, (**view).samples.data() + 2 * i, 2);
      CHECK(std::size_t{sample} == 1000 * static_cast<std::size_t>(k) + 100 * i);  // the stored codes, in detector order
    }
  }
}
