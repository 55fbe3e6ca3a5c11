#include "drivers/replay/dicom_ct_pd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numbers>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dctk.h>

namespace ctagent::drivers::replay {

namespace fs = std::filesystem;

namespace {

constexpr std::uint16_t kCtPdRows[2] = {0x7029, 0x1010};
constexpr std::uint16_t kCtPdColumns[2] = {0x7029, 0x1011};
const DcmTagKey kRowsKey(0x7029, 0x1010);
const DcmTagKey kColumnsKey(0x7029, 0x1011);
const DcmTagKey kAngularPositionKey(0x7031, 0x1001);
const DcmTagKey kAxialPositionKey(0x7031, 0x1002);
const DcmTagKey kTimestampKey(0x0019, 0x1001);
const DcmTagKey kFlagsKey(0x0019, 0x1002);
const DcmTagKey kI0Key(0x0019, 0x1003);
const DcmTagKey kAngleDegKey(0x0019, 0x1004);
const DcmTagKey kTableKey(0x0019, 0x1005);
const DcmTagKey kEncodingKey(0x0019, 0x1006);
const DcmTagKey kSlopeKey(0x0019, 0x1007);
const DcmTagKey kInterceptKey(0x0019, 0x1008);
constexpr const char* kEncodingCounts = "COUNTS";
constexpr const char* kEncodingLineIntegral = "LINE_INTEGRAL";
constexpr double kMaxPixel = 65535.0;

Unexpected DicomError(const fs::path& file, const std::string& what, const OFCondition& cond) {
  return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": " + what + ": " + cond.text());
}

// Every put below targets a fresh dataset, so a failure means a bug or no memory.
Status Check(const OFCondition& cond, const fs::path& file, const char* what) {
  if (cond.bad()) return MakeError(ErrorKind::kInternal, "DICOM-CT-PD " + file.string() + ": " + what + ": " + cond.text());
  return Ok();
}

std::string NewUid() {
  char uid[100];
  dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
  return uid;
}

// DS text for v: the shortest of %.10g .. %.16g that reads back as v and fits DS's 16
// characters, else %.10g (the exact value is kept in the ctagent block anyway).
std::string Decimal(double v) {
  char text[40];
  for (int digits = 10; digits <= 16; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, v);
    if (std::strlen(text) > 16) break;
    if (std::strtod(text, nullptr) == v) return text;
  }
  std::snprintf(text, sizeof text, "%.10g", v);
  return text;
}

std::uint16_t Code(double line_integral, double slope, double intercept) {
  return static_cast<std::uint16_t>(std::clamp(std::round((line_integral - intercept) / slope), 0.0, kMaxPixel));
}

}  // namespace

Expected<std::unique_ptr<DicomCtPdWriter>> DicomCtPdWriter::Create(const fs::path& directory,
                                                                   const ScanProtocol& protocol) {
  if (protocol.sample_type != SampleType::kUint16) {
    return MakeError(ErrorKind::kUnsupported, "DICOM-CT-PD writer: only uint16 counts can be written");
  }
  std::error_code ec;
  if (fs::exists(directory, ec) && !fs::is_empty(directory, ec)) {
    return MakeError(ErrorKind::kInvalidInput,
                     "DICOM-CT-PD " + directory.string() + ": the directory exists and is not empty; choose a new one");
  }
  fs::create_directories(directory, ec);
  if (ec) return MakeError(ErrorKind::kIo, "DICOM-CT-PD " + directory.string() + ": cannot create: " + ec.message());
  std::unique_ptr<DicomCtPdWriter> w(new DicomCtPdWriter);
  w->directory_ = directory;
  w->protocol_ = protocol;
  w->study_uid_ = NewUid();
  w->series_uid_ = NewUid();
  return w;
}

Status DicomCtPdWriter::Append(const View& view) {
  const ScanProtocol& p = protocol_;
  char name[32];
  std::snprintf(name, sizeof name, "view_%06llu.dcm", static_cast<unsigned long long>(view.sequence));
  const fs::path file = directory_ / name;
  if (view.samples.size() != p.BytesPerView()) {
    return MakeError(ErrorKind::kInvalidInput, "DICOM-CT-PD writer: view " + std::to_string(view.sequence) + " has " +
                                                   std::to_string(view.samples.size()) + " bytes, expected " +
                                                   std::to_string(p.BytesPerView()));
  }
  // Line integrals from -ln(65536 / I0) (counts above I0: noise in air) to ln(4 I0) (count 0)
  // span the pixel range; quantised with the decimal values the file carries.
  const double i0 = p.unattenuated_counts * p.dose_fraction;
  const bool line_integrals = p.sample_encoding == SampleEncoding::kLineIntegral;
  const std::size_t count = std::size_t{p.rows} * p.channels;
  std::vector<Uint16> pixels(count);
  std::string intercept_text;
  std::string slope_text;
  double slope = p.line_integral_slope;
  double intercept = p.line_integral_intercept;
  if (line_integrals) {
    // Already DICOM-CT-PD pixels: stored as they are.
    intercept_text = Decimal(intercept);
    slope_text = Decimal(slope);
    std::memcpy(pixels.data(), view.samples.data(), count * 2);
  } else {
    intercept_text = Decimal(-std::log(std::max(2.0, 65536.0 / i0)));
    intercept = std::stod(intercept_text);
    slope_text = Decimal((std::log(4.0 * i0) - intercept) / kMaxPixel);
    slope = std::stod(slope_text);
    for (std::size_t i = 0; i < count; ++i) {
      std::uint16_t c = 0;
      std::memcpy(&c, view.samples.data() + 2 * i, 2);
      const double line_integral = c == 0 ? slope * kMaxPixel + intercept : std::log(i0 / c);
      pixels[i] = Code(line_integral, slope, intercept);
    }
  }

  DcmFileFormat format;
  DcmDataset* ds = format.getDataset();
  const std::string sop_uid = NewUid();
  const double angle_rad = view.gantry_angle_deg * std::numbers::pi / 180.0;
  Status s = Ok();
  auto put = [&](const OFCondition& cond, const char* what) {
    if (s) s = Check(cond, file, what);
  };
  put(ds->putAndInsertString(DCM_SOPClassUID, UID_CTImageStorage), "SOPClassUID");
  put(ds->putAndInsertString(DCM_SOPInstanceUID, sop_uid.c_str()), "SOPInstanceUID");
  put(ds->putAndInsertString(DCM_StudyInstanceUID, study_uid_.c_str()), "StudyInstanceUID");
  put(ds->putAndInsertString(DCM_SeriesInstanceUID, series_uid_.c_str()), "SeriesInstanceUID");
  put(ds->putAndInsertString(DCM_Modality, "CT"), "Modality");
  put(ds->putAndInsertString(DCM_ImageType, "ORIGINAL\\PRIMARY\\AXIAL"), "ImageType");
  put(ds->putAndInsertString(DCM_PatientName, ""), "PatientName");  // no patient data in projections we write
  put(ds->putAndInsertString(DCM_PatientID, ""), "PatientID");
  put(ds->putAndInsertString(DCM_InstanceNumber, std::to_string(view.sequence + 1).c_str()), "InstanceNumber");
  put(ds->putAndInsertUint16(DCM_SamplesPerPixel, 1), "SamplesPerPixel");
  put(ds->putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2"), "PhotometricInterpretation");
  put(ds->putAndInsertUint16(DCM_Rows, static_cast<Uint16>(p.rows)), "Rows");
  put(ds->putAndInsertUint16(DCM_Columns, static_cast<Uint16>(p.channels)), "Columns");
  put(ds->putAndInsertUint16(DCM_BitsAllocated, 16), "BitsAllocated");
  put(ds->putAndInsertUint16(DCM_BitsStored, 16), "BitsStored");
  put(ds->putAndInsertUint16(DCM_HighBit, 15), "HighBit");
  put(ds->putAndInsertUint16(DCM_PixelRepresentation, 0), "PixelRepresentation");
  put(ds->putAndInsertString(DCM_RescaleIntercept, intercept_text.c_str()), "RescaleIntercept");
  put(ds->putAndInsertString(DCM_RescaleSlope, slope_text.c_str()), "RescaleSlope");
  put(ds->putAndInsertString(DCM_RescaleType, "US"), "RescaleType");
  // DICOM-CT-PD geometry (private groups; the creator reserves block 0x10 of each group).
  for (Uint16 group : {Uint16{0x7029}, Uint16{0x7031}, Uint16{0x7033}}) {
    put(ds->putAndInsertString(DcmTag(group, 0x0010, EVR_LO), "DICOM-CT-PD CTAGENT"), "private creator");
  }
  put(ds->putAndInsertUint16(DcmTag(kCtPdRows[0], kCtPdRows[1], EVR_US), static_cast<Uint16>(p.rows)), "rows");
  put(ds->putAndInsertUint16(DcmTag(kCtPdColumns[0], kCtPdColumns[1], EVR_US), static_cast<Uint16>(p.channels)),
      "columns");
  put(ds->putAndInsertFloat32(DcmTag(0x7029, 0x1002, EVR_FL), static_cast<float>(p.channel_pitch_mm)), "spacing");
  put(ds->putAndInsertFloat32(DcmTag(0x7029, 0x1006, EVR_FL), static_cast<float>(p.row_pitch_mm)), "axial spacing");
  put(ds->putAndInsertString(DcmTag(0x7029, 0x100B, EVR_CS), "FLAT"), "detector shape");
  put(ds->putAndInsertFloat32(DcmTag(0x7031, 0x1001, EVR_FL), static_cast<float>(angle_rad)), "angular position");
  put(ds->putAndInsertFloat32(DcmTag(0x7031, 0x1002, EVR_FL), static_cast<float>(view.table_position_mm)),
      "axial position");
  put(ds->putAndInsertUint16(DcmTag(0x7033, 0x1013, EVR_US), static_cast<Uint16>(std::min(2u * p.views_per_rotation, 65535u))),
      "angular steps");
  // The exact values, for a lossless round trip of the metadata.
  put(ds->putAndInsertString(DcmTag(0x0019, 0x0010, EVR_LO), "CTAGENT 1"), "ctagent creator");
  put(ds->putAndInsertFloat64(DcmTag(0x0019, 0x1001, EVR_FD), static_cast<double>(view.timestamp_us)), "timestamp");
  put(ds->putAndInsertUint32(DcmTag(0x0019, 0x1002, EVR_UL), view.status_flags), "flags");
  put(ds->putAndInsertFloat64(DcmTag(0x0019, 0x1003, EVR_FD), i0), "I0");
  put(ds->putAndInsertFloat64(DcmTag(0x0019, 0x1004, EVR_FD), view.gantry_angle_deg), "angle");
  put(ds->putAndInsertFloat64(DcmTag(0x0019, 0x1005, EVR_FD), view.table_position_mm), "table");
  put(ds->putAndInsertString(DcmTag(0x0019, 0x1006, EVR_CS), line_integrals ? kEncodingLineIntegral : kEncodingCounts),
      "encoding");
  put(ds->putAndInsertFloat64(DcmTag(0x0019, 0x1007, EVR_FD), slope), "slope");
  put(ds->putAndInsertFloat64(DcmTag(0x0019, 0x1008, EVR_FD), intercept), "intercept");
  put(ds->putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())), "PixelData");
  if (!s) return s;
  const OFCondition saved = format.saveFile(file.c_str(), EXS_LittleEndianExplicit);
  if (saved.bad()) return MakeError(ErrorKind::kIo, "DICOM-CT-PD " + file.string() + ": cannot write: " + saved.text());
  return Ok();
}

namespace {

Expected<std::vector<fs::path>> ListFiles(const fs::path& directory) {
  std::error_code ec;
  std::vector<fs::path> files;
  for (fs::directory_iterator it(directory, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file() && (it->path().extension() == ".dcm" || it->path().extension() == ".DCM")) {
      files.push_back(it->path());
    }
  }
  if (ec) return MakeError(ErrorKind::kNotFound, "DICOM-CT-PD " + directory.string() + ": cannot list: " + ec.message());
  if (files.empty()) {
    return MakeError(ErrorKind::kNotFound, "DICOM-CT-PD " + directory.string() + ": no .dcm files; one file per view expected");
  }
  std::sort(files.begin(), files.end());
  return files;
}

Expected<DicomCtPdInfo> ShapeOf(const fs::path& file, std::uint64_t views) {
  DcmFileFormat format;
  if (const OFCondition c = format.loadFile(file.c_str()); c.bad()) return DicomError(file, "cannot read", c);
  DcmDataset* ds = format.getDataset();
  Uint16 rows = 0;
  Uint16 columns = 0;
  if (ds->findAndGetUint16(kRowsKey, rows).bad() && ds->findAndGetUint16(DCM_Rows, rows).bad()) {
    return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": no (7029,1010) number of detector rows");
  }
  if (ds->findAndGetUint16(kColumnsKey, columns).bad() && ds->findAndGetUint16(DCM_Columns, columns).bad()) {
    return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": no (7029,1011) number of detector columns");
  }
  return DicomCtPdInfo{rows, columns, views};
}

}  // namespace

Expected<DicomCtPdInfo> ReadDicomCtPdInfo(const fs::path& directory) {
  auto files = ListFiles(directory);
  if (!files) return MakeError(files.error());
  return ShapeOf(files->front(), files->size());
}

Expected<std::unique_ptr<DicomCtPdReader>> DicomCtPdReader::Open(const fs::path& directory, double fallback_i0,
                                                                 double view_rate_hz) {
  auto files = ListFiles(directory);
  if (!files) return MakeError(files.error());
  auto info = ShapeOf(files->front(), files->size());
  if (!info) return MakeError(info.error());
  // Order by InstanceNumber (file names of other writers need not sort).
  std::vector<std::pair<long, fs::path>> numbered;
  for (const fs::path& f : *files) {
    DcmFileFormat format;
    if (const OFCondition c = format.loadFile(f.c_str(), EXS_Unknown, EGL_noChange, 256, ERM_autoDetect); c.bad()) {
      return DicomError(f, "cannot read", c);
    }
    Sint32 number = 0;
    if (format.getDataset()->findAndGetSint32(DCM_InstanceNumber, number).bad()) {
      return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + f.string() + ": no InstanceNumber to order the views by");
    }
    numbered.emplace_back(number, f);
  }
  std::stable_sort(numbered.begin(), numbered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::unique_ptr<DicomCtPdReader> r(new DicomCtPdReader);
  for (auto& [number, f] : numbered) r->files_.push_back(std::move(f));
  r->info_ = *info;
  r->fallback_i0_ = fallback_i0;
  r->view_rate_hz_ = view_rate_hz;
  return r;
}

Expected<std::unique_ptr<DicomCtPdReader>> DicomCtPdReader::Open(const fs::path& directory,
                                                                 const ScanProtocol& protocol) {
  auto r = Open(directory, protocol.unattenuated_counts * protocol.dose_fraction, protocol.ViewRateHz());
  if (r) (*r)->target_ = protocol;
  return r;
}

Expected<std::optional<View>> DicomCtPdReader::Next() {
  if (next_ >= files_.size()) return std::optional<View>{};
  const fs::path& file = files_[next_];
  DcmFileFormat format;
  if (const OFCondition c = format.loadFile(file.c_str()); c.bad()) return DicomError(file, "cannot read", c);
  DcmDataset* ds = format.getDataset();
  const Uint16* pixels = nullptr;
  unsigned long count = 0;
  const std::size_t expected = std::size_t{info_.rows} * info_.channels;
  if (const OFCondition c = ds->findAndGetUint16Array(DCM_PixelData, pixels, &count); c.bad()) {
    return DicomError(file, "no 16-bit PixelData", c);
  }
  if (count != expected) {
    return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": " + std::to_string(count) +
                                              " pixels, the first file's shape needs " + std::to_string(expected));
  }
  Float64 slope = 1.0;
  Float64 intercept = 0.0;
  // The exact rescale of a ctagent recording, else the (decimal) standard one.
  if (ds->findAndGetFloat64(kSlopeKey, slope).bad()) ds->findAndGetFloat64(DCM_RescaleSlope, slope);
  if (ds->findAndGetFloat64(kInterceptKey, intercept).bad()) ds->findAndGetFloat64(DCM_RescaleIntercept, intercept);
  if (!(slope > 0) || !std::isfinite(intercept)) {
    return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": RescaleSlope " + std::to_string(slope) +
                                              " must be positive and RescaleIntercept finite");
  }
  Float64 i0 = target_ ? target_->unattenuated_counts * target_->dose_fraction : fallback_i0_;
  if (!target_) ds->findAndGetFloat64(kI0Key, i0);
  OFString encoding;
  ds->findAndGetOFString(kEncodingKey, encoding);
  const bool file_is_line_integral = encoding == kEncodingLineIntegral;
  const bool want_line_integral =
      target_ ? target_->sample_encoding == SampleEncoding::kLineIntegral : file_is_line_integral;

  View v;
  v.sequence = next_;
  Float64 exact = 0;
  if (ds->findAndGetFloat64(kAngleDegKey, exact).good()) {
    v.gantry_angle_deg = exact;
  } else {
    Float32 rad = 0;
    ds->findAndGetFloat32(kAngularPositionKey, rad);
    v.gantry_angle_deg = static_cast<double>(rad) * 180.0 / std::numbers::pi;
  }
  if (ds->findAndGetFloat64(kTableKey, exact).good()) {
    v.table_position_mm = exact;
  } else {
    Float32 z = 0;
    ds->findAndGetFloat32(kAxialPositionKey, z);
    v.table_position_mm = static_cast<double>(z);
  }
  if (ds->findAndGetFloat64(kTimestampKey, exact).good()) {
    v.timestamp_us = std::llround(exact);
  } else {
    v.timestamp_us = std::llround(static_cast<double>(next_) * 1e6 / view_rate_hz_);
  }
  Uint32 flags = 0;
  ds->findAndGetUint32(kFlagsKey, flags);
  v.status_flags = flags;

  v.samples.resize(expected * 2);
  if (want_line_integral) {
    const double out_slope = target_ ? target_->line_integral_slope : slope;
    const double out_intercept = target_ ? target_->line_integral_intercept : intercept;
    if (out_slope == slope && out_intercept == intercept) {
      std::memcpy(v.samples.data(), pixels, expected * 2);  // the recorded codes, bit for bit
    } else {
      for (std::size_t i = 0; i < expected; ++i) {
        const std::uint16_t c = Code(slope * pixels[i] + intercept, out_slope, out_intercept);
        std::memcpy(v.samples.data() + 2 * i, &c, 2);
      }
    }
  } else {
    for (std::size_t i = 0; i < expected; ++i) {
      const double line_integral = slope * pixels[i] + intercept;
      const double counts = std::min(i0 * std::exp(-line_integral), kMaxPixel);
      const auto c = static_cast<std::uint16_t>(std::lround(counts));
      std::memcpy(v.samples.data() + 2 * i, &c, 2);
    }
  }
  ++next_;
  return std::optional<View>(std::move(v));
}

}  // namespace ctagent::drivers::replay
