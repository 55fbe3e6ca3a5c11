// DICOM-CT-PD (Chen et al., Med. Phys. 42(12), 2015; tag table in Med. Phys. 48(2):902, 2020,
// Table IV; the AAPM/Mayo low-dose CT projection format): one DICOM file per view, uint16 pixels
// that rescale to line integrals (p = RescaleSlope * pixel + RescaleIntercept), geometry in
// private groups 7029-7041.
//
// Private tags are found through their private creator, never by fixed element numbers: in each
// group the creator element (gggg,0010-00FF) whose value is `CT IMG ACQUISITION` (the early
// files, e.g. MATLAB-written Siemens data) or `CtProjectionData-MayoClinc-v1` (the later ones,
// spelled so) reserves a block xx, and the tag (gggg,10yy) of the table is read as (gggg,xxyy).
// Values are decoded by the table's VR (FL, US, CS), whether the file is explicit VR or implicit
// VR, where a reader without a private dictionary sees them as raw bytes.
//
// Tags read (at the detector, mm and rad):
//   (7029,1010) detector rows US, (7029,1011) detector columns (channels) US,
//   (7029,1002) transverse spacing FL, (7029,1006) axial spacing FL, (7029,100B) detector shape CS
//   (CYLINDRICAL | SPHERICAL | FLAT); (7031,1001) focal-centre angle phi0 FL, (7031,1002) its z0
//   FL, (7031,1003) its radial distance rho0 FL, (7031,1031) source-to-detector d0 FL,
//   (7031,1033) central element (column, row) FL[2], 1-based; (7033,100B/100C/100D) flying
//   focal spot shifts dphi, dz, drho FL, (7033,100E) flying focal spot mode CS, (7033,1013)
//   projections per full 360-degree turn US; (7037,1009) scan type CS (AXIAL | HELICAL),
//   (7037,100A) beam type CS (FANBEAM; ctagent writes PARALLEL for parallel beams).
//
// Pixel orientation: the published files store the pixel matrix transposed, one DICOM row per
// detector channel (Rows = detector columns, Columns = detector rows). The reader compares
// Rows/Columns with (7029,1010)/(7029,1011) and accepts either layout (a square detector is
// taken as transposed, the published layout); views come out row-major like View::samples.
//
// Writer: files view_000000.dcm, ... (explicit VR little endian, CT Image Storage, no patient
// data), creator `CtProjectionData-MayoClinc-v1` in block 0x10, in the published (transposed)
// layout. Fan beam: a CYLINDRICAL detector centred on the focal spot (the agent's equiangular
// arc), rho0 = source to isocenter, d0 = source to detector, spacings at the detector, beam
// type FANBEAM, (7033,1013) = views per rotation (a rotation is 360 degrees). Parallel beam: a
// FLAT detector, no focal distances, beam type PARALLEL, (7033,1013) = 2 x views per rotation
// (the agent's parallel "rotation" is 180 degrees; the tag counts a full turn). No flying focal
// spot (FFSNONE, zero shifts).
// Two sample encodings (ScanProtocol::sample_encoding):
//   line_integral  the samples already are DICOM-CT-PD pixels: written unchanged with the
//                  protocol's slope and intercept as RescaleSlope / RescaleIntercept, so
//                  writer -> reader gives the identical bytes back.
//   counts         c becomes p = ln(I0 / c), quantised over [-ln(65536 / I0), ln(4 I0)]
//                  (c = 0 -> top of the range): a replayed count differs from the recorded one
//                  by at most ~1e-4 relative (exact for low counts).
// A ctagent block (group 0019, creator "CTAGENT 1", found through its creator too) keeps the
// exact values: (0019,xx01) timestamp_us FD, (0019,xx02) status flags UL, (0019,xx03) I0 FD,
// (0019,xx04) gantry angle [deg] FD, (0019,xx05) table position FD, (0019,xx06) sample encoding
// CS "COUNTS" | "LINE_INTEGRAL", (0019,xx07) slope FD, (0019,xx08) intercept FD (the exact
// rescale; the DS text may round), (0019,xx09) dose fraction FD, (0019,xx0A) rotation time [s] FD.
//
// Reader: any DICOM-CT-PD directory (files sorted by InstanceNumber). Samples it returns:
// opened with a protocol, in the protocol's encoding (pixels copied when the file's rescale is
// the protocol's, else re-quantised; counts from I0 = unattenuated counts x dose); opened
// without one, line-integral recordings are returned as recorded and ctagent's counts
// recordings as counts. ProtocolFromDicomCtPd() turns the files' geometry into a ScanProtocol.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/replay/recording.hpp"

namespace ctagent::drivers::replay {

inline constexpr const char* kCreatorEarly = "CT IMG ACQUISITION";
inline constexpr const char* kCreatorLater = "CtProjectionData-MayoClinc-v1";

class DicomCtPdWriter {
 public:
  // `directory` is created; it must not exist yet or be empty. uint16 protocols only.
  static Expected<std::unique_ptr<DicomCtPdWriter>> Create(const std::filesystem::path& directory,
                                                           const ScanProtocol& protocol);
  Status Append(const View& view);

 private:
  DicomCtPdWriter() = default;
  std::filesystem::path directory_;
  ScanProtocol protocol_;
  std::string study_uid_;
  std::string series_uid_;
};

// Where one view's focal spot was (DICOM-CT-PD's per-view geometry). View carries only the
// gantry angle (phi0) and table position (z0); the rest, the flying focal spot's offsets
// included, has no field in the driver ABI's view, so the reader keeps it here.
struct DicomCtPdViewGeometry {
  double phi0_rad = 0;   // (7031,1001) angle of the detector's focal centre
  double z0_mm = 0;      // (7031,1002) its axial position
  double rho0_mm = 0;    // (7031,1003) its distance from the isocenter (0: absent, parallel beam)
  double dphi_rad = 0;   // (7033,100B) focal spot - focal centre, angle
  double dz_mm = 0;      // (7033,100C) ... axial
  double drho_mm = 0;    // (7033,100D) ... radial
};

// What a DICOM-CT-PD directory holds, from its first (and, for the table feed, last) file.
struct DicomCtPdInfo {
  std::uint32_t rows = 0;        // detector rows, (7029,1010)
  std::uint32_t channels = 0;    // detector columns, (7029,1011)
  std::uint64_t views = 0;       // files
  bool transposed = false;       // one DICOM row per channel (the published layout)
  std::string creator;           // the private creator the tags were found under
  std::string manufacturer;      // (0008,0070), may be empty
  std::string detector_shape;    // (7029,100B): CYLINDRICAL | SPHERICAL | FLAT ("" if absent)
  std::string beam;              // (7037,100A): FANBEAM | PARALLEL | ... ("" if absent)
  std::string scan_type;         // (7037,1009): AXIAL | HELICAL ("" if absent)
  std::string flying_focal_spot; // (7033,100E): FFSNONE | FFSZ | FFSXY | FFSXYZ ("" if absent)
  std::uint32_t angular_steps = 0;      // (7033,1013) views per 360 degrees (0 if absent)
  double transverse_spacing_mm = 0;     // (7029,1002), at the detector
  double axial_spacing_mm = 0;          // (7029,1006), at the detector
  double source_to_detector_mm = 0;     // (7031,1031) d0 (0 if absent)
  double central_channel = 0;           // (7031,1033) column, 1-based (0 if absent)
  double central_row = 0;               // (7031,1033) row, 1-based (0 if absent)
  double rescale_slope = 1;             // line integral per pixel unit (first file)
  double rescale_intercept = 0;         // line integral of pixel 0 (first file)
  DicomCtPdViewGeometry first;          // the first view's focal spot
  DicomCtPdViewGeometry last;           // the last view's
  // The ctagent block, when the files were written by ctagent (empty optionals otherwise).
  std::optional<SampleEncoding> ctagent_encoding;
  std::optional<double> ctagent_i0;
  std::optional<double> ctagent_dose_fraction;
  std::optional<double> ctagent_rotation_time_s;
};

// The scan a DICOM-CT-PD directory describes, in the agent's terms, starting from `configured`
// (which keeps what the files do not say: real_time, seed, and without a ctagent block the
// dose, unattenuated counts and rotation time). Fan beam when the files give a focal distance
// (rho0) or say FANBEAM, else parallel; pitches at isocenter (fan: the detector's scaled by
// rho0 / d0); views per rotation from (7033,1013) (parallel: half of it); a recording that is
// not a whole number of rotations (one view, say) becomes one rotation of all its views, with
// the rotation time scaled to keep the view rate. Samples: the files' line integrals
// (line_integral encoding with the first file's rescale), or counts for ctagent's counts files.
AdoptedProtocol ProtocolFromDicomCtPd(const DicomCtPdInfo& info, const ScanProtocol& configured);

class DicomCtPdReader {
 public:
  // Lists and orders the files; reads the geometry from the first and last. `fallback_i0`
  // converts line integrals to counts for counts files without an I0; `view_rate_hz` gives
  // timestamps to files without them.
  static Expected<std::unique_ptr<DicomCtPdReader>> Open(const std::filesystem::path& directory, double fallback_i0,
                                                         double view_rate_hz);
  // Returns samples in `protocol`'s encoding (and rescale); timestamps from its view rate when
  // the files carry none.
  static Expected<std::unique_ptr<DicomCtPdReader>> Open(const std::filesystem::path& directory,
                                                         const ScanProtocol& protocol);
  const DicomCtPdInfo& info() const { return info_; }
  Expected<std::optional<View>> Next();
  // The focal spot of the view Next() returned last.
  const DicomCtPdViewGeometry& last_geometry() const { return last_geometry_; }

 private:
  DicomCtPdReader() = default;
  std::vector<std::filesystem::path> files_;
  DicomCtPdInfo info_;
  double fallback_i0_ = 0;
  double view_rate_hz_ = 0;
  std::optional<ScanProtocol> target_;  // the encoding to deliver; unset: as described above
  std::uint64_t next_ = 0;
  DicomCtPdViewGeometry last_geometry_;
};

// What a DICOM-CT-PD directory holds (reads its first and last file, and every file's
// InstanceNumber to know which are first and last).
Expected<DicomCtPdInfo> ReadDicomCtPdInfo(const std::filesystem::path& directory);

}  // namespace ctagent::drivers::replay
