// The scan types every part of the agent shares: a scan's protocol (geometry, size, sample type,
// dose), its views, a detector's description and a scan a detector announces, with the
// protocol's JSON form. Their own library (ctagent_scan_types), apart from the driver library:
// the codec, the configuration and the reference imaging center use these types without
// linking the drivers, the C ABI glue or DCMTK.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"

namespace ctagent::drivers {

enum class SampleType : std::uint8_t { kUint16 = 1, kFloat32 = 2 };

std::size_t SampleSize(SampleType type);
const char* ToString(SampleType type);

// Scan geometry. `parallel`: rays of one view are parallel, channel c sits at
// (c - (channels-1)/2) * channel_pitch_mm from the rotation axis; views cover 180 degrees per
// "rotation". `fan`: third-generation fan beam, a point source at source_to_isocenter_mm from
// the axis and an arc detector (equiangular channels) centred on the source at
// source_to_detector_mm; channel c has fan angle (c - (channels-1)/2) * channel_pitch_mm /
// source_to_isocenter_mm (pitches are given at isocenter); views cover 360 degrees per rotation.
enum class GeometryKind : std::uint8_t { kParallel = 1, kFan = 2 };

const char* ToString(GeometryKind kind);

// What a uint16 sample means. `counts`: detected photons. `line_integral`: what DICOM-CT-PD
// scanners deliver, the log-normalised projection p = ln(I0 / counts) quantised as
// p = line_integral_slope * sample + line_integral_intercept.
enum class SampleEncoding : std::uint8_t { kCounts = 1, kLineIntegral = 2 };

const char* ToString(SampleEncoding encoding);

struct ScanProtocol {
  GeometryKind geometry = GeometryKind::kParallel;
  std::uint32_t views_per_rotation = 360;  // views over one rotation (180 deg for parallel beam)
  std::uint32_t rotations = 1;
  std::uint32_t rows = 4;                  // detector rows (slices)
  std::uint32_t channels = 256;            // detector channels per row
  double channel_pitch_mm = 1.6;           // at isocenter
  double row_pitch_mm = 5.0;               // slice thickness at isocenter [mm]
  double rotation_time_s = 1.0;            // wall time of one rotation when paced in real time
  double table_start_mm = 0.0;             // table position of the first view [mm]
  double table_speed_mm_per_rotation = 0;  // 0: axial
  double dose_fraction = 1.0;              // 1, 0.2, 0.1 ... of the standard dose
  double unattenuated_counts = 60000;      // mean counts of an unattenuated ray at full dose
  SampleType sample_type = SampleType::kUint16;
  std::uint64_t seed = 1;                  // noise seed: a given seed gives identical views
  bool real_time = false;                  // pace views at the protocol's view rate
  // Fan beam only (a 16-slice scanner's typical distances) [mm].
  double source_to_isocenter_mm = 570.0;
  double source_to_detector_mm = 1040.0;
  SampleEncoding sample_encoding = SampleEncoding::kCounts;
  double line_integral_slope = 1.0 / 4096;   // line_integral encoding: p per sample unit
  double line_integral_intercept = -1.0;     // line_integral encoding: p of sample 0

  // Degrees the gantry turns per "rotation": 180 for parallel beam, 360 for fan beam.
  double DegreesPerRotation() const { return geometry == GeometryKind::kFan ? 360.0 : 180.0; }
  // Detector spacings at the detector itself (the protocol gives them at isocenter) [mm].
  double DetectorChannelPitchMm() const {
    return geometry == GeometryKind::kFan ? channel_pitch_mm * source_to_detector_mm / source_to_isocenter_mm
                                          : channel_pitch_mm;
  }
  double DetectorRowPitchMm() const {
    return geometry == GeometryKind::kFan ? row_pitch_mm * source_to_detector_mm / source_to_isocenter_mm
                                          : row_pitch_mm;
  }

  std::uint64_t TotalViews() const { return std::uint64_t{views_per_rotation} * rotations; }
  std::uint64_t BytesPerView() const { return std::uint64_t{rows} * channels * SampleSize(sample_type); }
  std::uint64_t RawBytes() const { return TotalViews() * BytesPerView(); }
  double ViewRateHz() const { return views_per_rotation / rotation_time_s; }
};

nlohmann::json ToJson(const ScanProtocol& protocol);

// One axial rotation of a 16-slice county-hospital scanner in fan beam: SID 570 mm, SDD
// 1040 mm, 16 rows of 0.75 mm and 896 channels of 0.55 mm at isocenter (a 493 mm field, a
// 49-degree fan), 1160 views per 0.5 s rotation, table at 0. The agent's default scan
// (config::DefaultScanProtocol) and the base of the sim's helical SixteenSliceFanProtocol().
inline ScanProtocol SixteenSliceAxialProtocol() {
  ScanProtocol p;
  p.geometry = GeometryKind::kFan;
  p.source_to_isocenter_mm = 570.0;
  p.source_to_detector_mm = 1040.0;
  p.rows = 16;
  p.row_pitch_mm = 0.75;
  p.channels = 896;
  p.channel_pitch_mm = 0.55;
  p.views_per_rotation = 1160;
  p.rotation_time_s = 0.5;
  p.rotations = 1;
  p.table_speed_mm_per_rotation = 0;
  return p;
}
Expected<ScanProtocol> ProtocolFromJson(const nlohmann::json& j);

// Per-view status flags.
enum ViewFlags : std::uint32_t {
  kViewOk = 0,
  kViewSaturated = 1u << 0,   // at least one sample hit the ADC ceiling
  kViewDeadChannel = 1u << 1, // at least one channel is known dead
};

struct View {
  std::uint64_t sequence = 0;        // 0-based, consecutive within a scan
  double gantry_angle_deg = 0;       // [deg]
  double table_position_mm = 0;      // [mm]
  std::int64_t timestamp_us = 0;     // [us] since the scan started
  std::uint32_t status_flags = kViewOk;
  // rows * channels samples, row-major (row 0's channels first), in the protocol's sample
  // type, host byte order (little-endian on every supported target).
  std::vector<std::uint8_t> samples;
};

struct DetectorInfo {
  std::string name;
  std::string model;
  std::uint32_t max_rows = 0;
  std::uint32_t max_channels = 0;
  double max_view_rate_hz = 0;
  std::vector<SampleType> sample_types{SampleType::kUint16};  // sample types Arm() accepts
};

// A scan the scanner armed and started by itself (driver ABI 1.2): the operator started it on
// the console, so the agent takes it as it comes, with the scanner's protocol.
struct ScanAnnouncement {
  ScanProtocol protocol;
  std::string accession_number;   // DICOM (0008,0050) of the exam, empty when the scanner has none
  std::string procedure_step_id;  // DICOM (0040,0009) Scheduled Procedure Step ID, or empty
};

}  // namespace ctagent::drivers
