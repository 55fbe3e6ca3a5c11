// DICOM-CT-PD (Chen et al., Med. Phys. 42(12), 2015; the AAPM/Mayo low-dose CT projection
// format): one DICOM file per view, uint16 pixels that rescale to line integrals
// (p = RescaleSlope * pixel + RescaleIntercept), geometry in private groups 7029-7041.
//
// Writer: files view_000000.dcm, ... (explicit VR little endian, CT Image Storage, no patient
// data), Rows = detector rows, Columns = channels, pixels row-major like View::samples.
// Two sample encodings (ScanProtocol::sample_encoding):
//   line_integral  the samples already are DICOM-CT-PD pixels: written unchanged with the
//                  protocol's slope and intercept as RescaleSlope / RescaleIntercept, so
//                  writer -> reader gives the identical bytes back.
//   counts         c becomes p = ln(I0 / c), quantised over [-ln(65536 / I0), ln(4 I0)]
//                  (c = 0 -> top of the range): a replayed count differs from the recorded one
//                  by at most ~1e-4 relative (exact for low counts).
// Standard tags written: (7029,1010) rows US, (7029,1011) columns US, (7029,1002) transverse
// spacing FL [mm], (7029,1006) axial spacing FL [mm], (7029,100B) detector shape CS "FLAT",
// (7031,1001) focal-centre angular position FL [rad], (7031,1002) axial position FL [mm],
// (7033,1013) source angular steps per 360 deg US. A ctagent block (group 0019, creator
// "CTAGENT 1") keeps the exact values: (0019,1001) timestamp_us FD, (0019,1002) status flags
// UL, (0019,1003) I0 FD, (0019,1004) gantry angle [deg] FD, (0019,1005) table position FD,
// (0019,1006) sample encoding CS "COUNTS" | "LINE_INTEGRAL", (0019,1007) slope FD,
// (0019,1008) intercept FD (the exact rescale; the DS text may round).
//
// Reader: any DICOM-CT-PD directory (files sorted by InstanceNumber); metadata from the ctagent
// block when present, else from the standard tags (timestamps then from the view rate).
// Samples it returns: opened with a protocol, in the protocol's encoding (pixels copied when
// the file's rescale is the protocol's, else re-quantised; counts from I0 = unattenuated
// counts x dose); opened without one, line-integral recordings of ctagent are returned as
// recorded and every other file as counts from `fallback_i0`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/common/error.hpp"
#include "drivers/detector.hpp"

namespace ctagent::drivers::replay {

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

struct DicomCtPdInfo {
  std::uint32_t rows = 0;
  std::uint32_t channels = 0;
  std::uint64_t views = 0;
};

class DicomCtPdReader {
 public:
  // Lists and orders the files; reads the shape from the first one. `fallback_i0` converts
  // line integrals to counts for files without the ctagent block; `view_rate_hz` gives their
  // timestamps.
  static Expected<std::unique_ptr<DicomCtPdReader>> Open(const std::filesystem::path& directory, double fallback_i0,
                                                         double view_rate_hz);
  // Returns samples in `protocol`'s encoding (and rescale); timestamps from its view rate when
  // the files carry none.
  static Expected<std::unique_ptr<DicomCtPdReader>> Open(const std::filesystem::path& directory,
                                                         const ScanProtocol& protocol);
  const DicomCtPdInfo& info() const { return info_; }
  Expected<std::optional<View>> Next();

 private:
  DicomCtPdReader() = default;
  std::vector<std::filesystem::path> files_;
  DicomCtPdInfo info_;
  double fallback_i0_ = 0;
  double view_rate_hz_ = 0;
  std::optional<ScanProtocol> target_;  // the encoding to deliver; unset: as described above
  std::uint64_t next_ = 0;
};

// Shape of a DICOM-CT-PD directory (reads the first file only).
Expected<DicomCtPdInfo> ReadDicomCtPdInfo(const std::filesystem::path& directory);

}  // namespace ctagent::drivers::replay
