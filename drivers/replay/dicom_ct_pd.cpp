#include "drivers/replay/dicom_ct_pd.hpp"

#include <algorithm>
#include <array>
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

// Elements of the published table, as (group, low byte of the element); the high byte is the
// block the file's private creator reserved (0x10 in every file seen so far, but not promised).
struct PrivateTag {
  Uint16 group;
  Uint8 element;
  const char* name;
};
constexpr PrivateTag kDetectorRows{0x7029, 0x10, "NumberofDetectorRows"};
constexpr PrivateTag kDetectorColumns{0x7029, 0x11, "NumberofDetectorColumns"};
constexpr PrivateTag kTransverseSpacing{0x7029, 0x02, "DetectorElementTransverseSpacing"};
constexpr PrivateTag kAxialSpacing{0x7029, 0x06, "DetectorElementAxialSpacing"};
constexpr PrivateTag kDetectorShape{0x7029, 0x0B, "DetectorShape"};
constexpr PrivateTag kFocalAngle{0x7031, 0x01, "DetectorFocalCenterAngularPosition"};
constexpr PrivateTag kFocalZ{0x7031, 0x02, "DetectorFocalCenterAxialPosition"};
constexpr PrivateTag kFocalRadius{0x7031, 0x03, "DetectorFocalCenterRadialDistance"};
constexpr PrivateTag kConstantRadial{0x7031, 0x31, "ConstantRadialDistance"};
constexpr PrivateTag kCentralElement{0x7031, 0x33, "DetectorCentralElement"};
constexpr PrivateTag kShiftAngle{0x7033, 0x0B, "SourceAngularPositionShift"};
constexpr PrivateTag kShiftZ{0x7033, 0x0C, "SourceAxialPositionShift"};
constexpr PrivateTag kShiftRadius{0x7033, 0x0D, "SourceRadialDistanceShift"};
constexpr PrivateTag kFlyingFocalSpot{0x7033, 0x0E, "FlyingFocalSpotMode"};
constexpr PrivateTag kAngularSteps{0x7033, 0x13, "NumberofSourceAngularSteps"};
constexpr PrivateTag kScanType{0x7037, 0x09, "scan type (AXIAL, HELICAL)"};
constexpr PrivateTag kBeamType{0x7037, 0x0A, "beam type (FANBEAM)"};
constexpr std::array<Uint16, 4> kCtPdGroups{0x7029, 0x7031, 0x7033, 0x7037};

// The ctagent block (group 0019, creator "CTAGENT 1").
constexpr const char* kCtagentCreator = "CTAGENT 1";
constexpr Uint16 kCtagentGroup = 0x0019;
constexpr PrivateTag kTimestamp{kCtagentGroup, 0x01, "timestamp"};
constexpr PrivateTag kFlags{kCtagentGroup, 0x02, "status flags"};
constexpr PrivateTag kI0{kCtagentGroup, 0x03, "I0"};
constexpr PrivateTag kAngleDeg{kCtagentGroup, 0x04, "gantry angle"};
constexpr PrivateTag kTable{kCtagentGroup, 0x05, "table position"};
constexpr PrivateTag kEncoding{kCtagentGroup, 0x06, "sample encoding"};
constexpr PrivateTag kSlope{kCtagentGroup, 0x07, "slope"};
constexpr PrivateTag kIntercept{kCtagentGroup, 0x08, "intercept"};
constexpr PrivateTag kDose{kCtagentGroup, 0x09, "dose fraction"};
constexpr PrivateTag kRotationTime{kCtagentGroup, 0x0A, "rotation time"};
constexpr const char* kEncodingCounts = "COUNTS";
constexpr const char* kEncodingLineIntegral = "LINE_INTEGRAL";
constexpr double kMaxPixel = 65535.0;
constexpr Uint8 kWriteBlock = 0x10;

Unexpected DicomError(const fs::path& file, const std::string& what, const OFCondition& cond) {
  return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": " + what + ": " + cond.text());
}

Unexpected Corrupt(const fs::path& file, const std::string& what) {
  return MakeError(ErrorKind::kCorrupt, "DICOM-CT-PD " + file.string() + ": " + what);
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

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  std::size_t start = 0;
  while (start < s.size() && s[start] == ' ') ++start;
  return s.substr(start);
}

// The private blocks of one file: for each group, the block its creator reserved (0: none).
class PrivateBlocks {
 public:
  // Looks at the creator elements (gggg,0010-00FF) of `groups` for one of `creators`.
  PrivateBlocks(DcmDataset& ds, std::initializer_list<Uint16> groups, std::initializer_list<const char*> creators)
      : ds_(ds) {
    // One pass over the top-level elements (bounded by the dataset), not 240 look-ups a group.
    const unsigned long count = ds.card();
    for (unsigned long i = 0; i < count; ++i) {
      DcmElement* element = ds.getElement(i);
      if (element == nullptr) continue;
      const DcmTagKey key = element->getTag();
      if (key.getElement() < 0x10 || key.getElement() > 0xFF) continue;
      if (std::find(groups.begin(), groups.end(), key.getGroup()) == groups.end()) continue;
      OFString value;
      if (element->getOFString(value, 0).bad()) continue;
      const std::string creator = Trim(value.c_str());
      for (const char* wanted : creators) {
        if (creator == wanted && Block(key.getGroup()) == 0) {
          blocks_.push_back({key.getGroup(), static_cast<Uint8>(key.getElement())});
          if (creator_.empty()) creator_ = creator;
        }
      }
    }
  }

  Uint8 Block(Uint16 group) const {
    for (const auto& [g, b] : blocks_) {
      if (g == group) return b;
    }
    return 0;
  }
  const std::string& creator() const { return creator_; }

  // The element of `tag`, or null when its group has no block or the file lacks it.
  DcmElement* Find(const PrivateTag& tag) const {
    const Uint8 block = Block(tag.group);
    if (block == 0) return nullptr;
    DcmElement* element = nullptr;
    const DcmTagKey key(tag.group, static_cast<Uint16>((block << 8) | tag.element));
    if (ds_.findAndGetElement(key, element).bad()) return nullptr;
    return element;
  }

  // Numbers of a tag whose table VR is FL, FD, US or UL, decoded from whatever VR the file gives it:
  // the VR itself (explicit VR, or a reader with a dictionary), or raw little-endian bytes (UN,
  // or implicit VR without a dictionary). Empty when absent or not decodable.
  std::vector<double> Numbers(const PrivateTag& tag, DcmEVR table_vr) const {
    std::vector<double> out;
    DcmElement* e = Find(tag);
    if (e == nullptr) return out;
    const unsigned long vm = std::min<unsigned long>(e->getVM(), 16);  // the table's VMs are 1 or 2
    switch (e->ident()) {
      case EVR_FL:
        for (unsigned long i = 0; i < vm; ++i) {
          Float32 v = 0;
          if (e->getFloat32(v, i).good()) out.push_back(static_cast<double>(v));
        }
        return out;
      case EVR_FD:
      case EVR_DS:
        for (unsigned long i = 0; i < vm; ++i) {
          Float64 v = 0;
          if (e->getFloat64(v, i).good()) out.push_back(v);
        }
        return out;
      case EVR_US:
        for (unsigned long i = 0; i < vm; ++i) {
          Uint16 v = 0;
          if (e->getUint16(v, i).good()) out.push_back(v);
        }
        return out;
      case EVR_UL:
        for (unsigned long i = 0; i < vm; ++i) {
          Uint32 v = 0;
          if (e->getUint32(v, i).good()) out.push_back(v);
        }
        return out;
      default:
        break;
    }
    Uint8* bytes = nullptr;
    if (e->getUint8Array(bytes).bad() || bytes == nullptr) return out;
    const std::size_t length = std::min<std::size_t>(e->getLength(), 64);
    const std::size_t size = table_vr == EVR_US ? 2 : table_vr == EVR_FD ? 8 : 4;
    for (std::size_t at = 0; at + size <= length; at += size) {
      // Little endian on disk (both transfer syntaxes read here are); host order is little
      // endian on every supported target.
      if (size == 2) {
        std::uint16_t v = 0;
        std::memcpy(&v, bytes + at, 2);
        out.push_back(v);
      } else if (size == 8) {
        double v = 0;
        std::memcpy(&v, bytes + at, 8);
        out.push_back(v);
      } else if (table_vr == EVR_UL) {
        std::uint32_t v = 0;
        std::memcpy(&v, bytes + at, 4);
        out.push_back(static_cast<double>(v));
      } else {
        float v = 0;
        std::memcpy(&v, bytes + at, 4);
        out.push_back(static_cast<double>(v));
      }
    }
    return out;
  }

  std::optional<double> Number(const PrivateTag& tag, DcmEVR table_vr) const {
    const std::vector<double> v = Numbers(tag, table_vr);
    if (v.empty() || !std::isfinite(v.front())) return std::nullopt;
    return v.front();
  }

  // Text of a CS/LO tag, from its VR or raw bytes, trimmed; "" when absent.
  std::string Text(const PrivateTag& tag) const {
    DcmElement* e = Find(tag);
    if (e == nullptr) return "";
    switch (e->ident()) {
      case EVR_CS:
      case EVR_LO:
      case EVR_SH:
      case EVR_ST:
      case EVR_LT: {
        OFString value;
        if (e->getOFStringArray(value).bad()) return "";
        return Trim(value.c_str());
      }
      default:
        break;
    }
    Uint8* bytes = nullptr;
    if (e->getUint8Array(bytes).bad() || bytes == nullptr) return "";
    const std::size_t length = std::min<std::size_t>(e->getLength(), 256);
    return Trim(std::string(reinterpret_cast<const char*>(bytes), length));
  }

 private:
  DcmDataset& ds_;
  std::vector<std::pair<Uint16, Uint8>> blocks_;
  std::string creator_;
};

PrivateBlocks CtPdBlocks(DcmDataset& ds) {
  return PrivateBlocks(ds, {0x7029, 0x7031, 0x7033, 0x7037}, {kCreatorEarly, kCreatorLater});
}

PrivateBlocks CtagentBlock(DcmDataset& ds) { return PrivateBlocks(ds, {kCtagentGroup}, {kCtagentCreator}); }

DicomCtPdViewGeometry ViewGeometry(const PrivateBlocks& tags) {
  DicomCtPdViewGeometry g;
  g.phi0_rad = tags.Number(kFocalAngle, EVR_FL).value_or(0);
  g.z0_mm = tags.Number(kFocalZ, EVR_FL).value_or(0);
  g.rho0_mm = tags.Number(kFocalRadius, EVR_FL).value_or(0);
  g.dphi_rad = tags.Number(kShiftAngle, EVR_FL).value_or(0);
  g.dz_mm = tags.Number(kShiftZ, EVR_FL).value_or(0);
  g.drho_mm = tags.Number(kShiftRadius, EVR_FL).value_or(0);
  return g;
}

// The line-integral rescale of one file: the ctagent block's exact one, else the DS values.
Expected<std::pair<double, double>> Rescale(DcmDataset& ds, const PrivateBlocks& ctagent, const fs::path& file) {
  Float64 slope = 1.0;
  Float64 intercept = 0.0;
  if (auto exact = ctagent.Number(kSlope, EVR_FD)) {
    slope = *exact;
  } else {
    ds.findAndGetFloat64(DCM_RescaleSlope, slope);
  }
  if (auto exact = ctagent.Number(kIntercept, EVR_FD)) {
    intercept = *exact;
  } else {
    ds.findAndGetFloat64(DCM_RescaleIntercept, intercept);
  }
  if (!(slope > 0) || !std::isfinite(slope) || !std::isfinite(intercept)) {
    return Corrupt(file, "RescaleSlope " + std::to_string(slope) +
                             " must be positive and RescaleIntercept finite (they encode the line integrals)");
  }
  return std::pair<double, double>{slope, intercept};
}

Expected<std::vector<fs::path>> ListFiles(const fs::path& directory) {
  std::error_code ec;
  std::vector<fs::path> files;
  for (fs::directory_iterator it(directory, ec), end; !ec && it != end; it.increment(ec)) {
    // is_regular_file follows symbolic links: a directory of links to the files is a recording.
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

// The files in acquisition order (InstanceNumber; file names of other writers need not sort).
Expected<std::vector<fs::path>> OrderedFiles(const fs::path& directory) {
  auto files = ListFiles(directory);
  if (!files) return MakeError(files.error());
  std::vector<std::pair<long, fs::path>> numbered;
  for (const fs::path& f : *files) {
    DcmFileFormat format;
    // Elements above 256 bytes (the pixels) stay on disk: only the header is needed here.
    if (const OFCondition c = format.loadFile(f.c_str(), EXS_Unknown, EGL_noChange, 256, ERM_autoDetect); c.bad()) {
      return DicomError(f, "cannot read", c);
    }
    Sint32 number = 0;
    if (format.getDataset()->findAndGetSint32(DCM_InstanceNumber, number).bad()) {
      return Corrupt(f, "no InstanceNumber to order the views by");
    }
    numbered.emplace_back(number, f);
  }
  std::stable_sort(numbered.begin(), numbered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<fs::path> out;
  out.reserve(numbered.size());
  for (auto& [number, f] : numbered) out.push_back(std::move(f));
  return out;
}

Expected<DicomCtPdInfo> InfoOf(const std::vector<fs::path>& files) {
  const fs::path& file = files.front();
  DcmFileFormat format;
  if (const OFCondition c = format.loadFile(file.c_str(), EXS_Unknown, EGL_noChange, 256, ERM_autoDetect); c.bad()) {
    return DicomError(file, "cannot read", c);
  }
  DcmDataset& ds = *format.getDataset();
  const PrivateBlocks tags = CtPdBlocks(ds);
  if (tags.Block(0x7029) == 0) {
    return Corrupt(file, std::string("no DICOM-CT-PD private creator (\"") + kCreatorEarly + "\" or \"" + kCreatorLater +
                             "\") in group 7029; is it a DICOM-CT-PD projection file?");
  }
  DicomCtPdInfo info;
  info.creator = tags.creator();
  info.views = files.size();
  const auto rows = tags.Number(kDetectorRows, EVR_US);
  const auto channels = tags.Number(kDetectorColumns, EVR_US);
  if (!rows || !channels || *rows < 1 || *channels < 1) {
    return Corrupt(file, "no (7029,1010) NumberofDetectorRows or (7029,1011) NumberofDetectorColumns under creator \"" +
                             info.creator + "\"");
  }
  info.rows = static_cast<std::uint32_t>(*rows);
  info.channels = static_cast<std::uint32_t>(*channels);
  // Which way the pixel matrix lies: DICOM Rows/Columns against the detector's.
  Uint16 image_rows = 0;
  Uint16 image_columns = 0;
  ds.findAndGetUint16(DCM_Rows, image_rows);
  ds.findAndGetUint16(DCM_Columns, image_columns);
  if (image_rows == info.channels && image_columns == info.rows) {
    info.transposed = true;  // the published layout (also taken for a square detector)
  } else if (image_rows == info.rows && image_columns == info.channels) {
    info.transposed = false;
  } else {
    return Corrupt(file, "the image is " + std::to_string(image_rows) + " x " + std::to_string(image_columns) +
                             " pixels (Rows x Columns), which fits neither way the detector's " +
                             std::to_string(info.rows) + " rows x " + std::to_string(info.channels) +
                             " channels of (7029,1010)/(7029,1011)");
  }
  OFString manufacturer;
  if (ds.findAndGetOFString(DCM_Manufacturer, manufacturer).good()) info.manufacturer = Trim(manufacturer.c_str());
  info.detector_shape = tags.Text(kDetectorShape);
  info.beam = tags.Text(kBeamType);
  info.scan_type = tags.Text(kScanType);
  info.flying_focal_spot = tags.Text(kFlyingFocalSpot);
  info.angular_steps = static_cast<std::uint32_t>(tags.Number(kAngularSteps, EVR_US).value_or(0));
  info.transverse_spacing_mm = tags.Number(kTransverseSpacing, EVR_FL).value_or(0);
  info.axial_spacing_mm = tags.Number(kAxialSpacing, EVR_FL).value_or(0);
  info.source_to_detector_mm = tags.Number(kConstantRadial, EVR_FL).value_or(0);
  const std::vector<double> central = tags.Numbers(kCentralElement, EVR_FL);
  if (central.size() >= 2) {
    info.central_channel = central[0];
    info.central_row = central[1];
  }
  info.first = ViewGeometry(tags);
  const PrivateBlocks ctagent = CtagentBlock(ds);
  auto rescale = Rescale(ds, ctagent, file);
  if (!rescale) return MakeError(rescale.error());
  info.rescale_slope = rescale->first;
  info.rescale_intercept = rescale->second;
  const std::string encoding = ctagent.Text(kEncoding);
  if (encoding == kEncodingCounts) info.ctagent_encoding = SampleEncoding::kCounts;
  if (encoding == kEncodingLineIntegral) info.ctagent_encoding = SampleEncoding::kLineIntegral;
  info.ctagent_i0 = ctagent.Number(kI0, EVR_FD);
  info.ctagent_dose_fraction = ctagent.Number(kDose, EVR_FD);
  info.ctagent_rotation_time_s = ctagent.Number(kRotationTime, EVR_FD);

  info.last = info.first;
  if (files.size() > 1) {
    DcmFileFormat last;
    if (const OFCondition c = last.loadFile(files.back().c_str(), EXS_Unknown, EGL_noChange, 256, ERM_autoDetect);
        c.bad()) {
      return DicomError(files.back(), "cannot read", c);
    }
    info.last = ViewGeometry(CtPdBlocks(*last.getDataset()));
  }
  return info;
}

}  // namespace

Expected<std::unique_ptr<DicomCtPdWriter>> DicomCtPdWriter::Create(const fs::path& directory,
                                                                   const ScanProtocol& protocol) {
  if (protocol.sample_type != SampleType::kUint16) {
    return MakeError(ErrorKind::kUnsupported, "DICOM-CT-PD writer: only uint16 counts can be written");
  }
  // (7029,1010/1011) and (7033,1013) are US: what does not fit cannot be written truthfully.
  const std::uint64_t steps = std::uint64_t{protocol.views_per_rotation} * (protocol.geometry == GeometryKind::kFan ? 1 : 2);
  if (protocol.rows > 65535 || protocol.channels > 65535 || steps > 65535) {
    return MakeError(ErrorKind::kUnsupported,
                     "DICOM-CT-PD writer: " + std::to_string(protocol.rows) + " rows, " +
                         std::to_string(protocol.channels) + " channels and " + std::to_string(steps) +
                         " views per 360 degrees must each fit DICOM-CT-PD's 16-bit fields (at most 65535); "
                         "record in the ctagent format instead");
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
  std::string intercept_text;
  std::string slope_text;
  double slope = p.line_integral_slope;
  double intercept = p.line_integral_intercept;
  if (line_integrals) {
    intercept_text = Decimal(intercept);
    slope_text = Decimal(slope);
  } else {
    intercept_text = Decimal(-std::log(std::max(2.0, 65536.0 / i0)));
    intercept = std::stod(intercept_text);
    slope_text = Decimal((std::log(4.0 * i0) - intercept) / kMaxPixel);
    slope = std::stod(slope_text);
  }
  // The published layout: one DICOM row per detector channel (pixel [channel][row]).
  std::vector<Uint16> pixels(count);
  for (std::uint32_t r = 0; r < p.rows; ++r) {
    for (std::uint32_t c = 0; c < p.channels; ++c) {
      std::uint16_t sample = 0;
      std::memcpy(&sample, view.samples.data() + 2 * (std::size_t{r} * p.channels + c), 2);
      if (!line_integrals) {
        // Already DICOM-CT-PD pixels in the line_integral encoding; counts are log-normalised.
        const double line_integral = sample == 0 ? slope * kMaxPixel + intercept : std::log(i0 / sample);
        sample = Code(line_integral, slope, intercept);
      }
      pixels[std::size_t{c} * p.rows + r] = sample;
    }
  }

  DcmFileFormat format;
  DcmDataset* ds = format.getDataset();
  const std::string sop_uid = NewUid();
  const double angle_rad = view.gantry_angle_deg * std::numbers::pi / 180.0;
  const bool fan = p.geometry == GeometryKind::kFan;
  Status s = Ok();
  auto put = [&](const OFCondition& cond, const char* what) {
    if (s) s = Check(cond, file, what);
  };
  auto tag = [](const PrivateTag& t, DcmEVR vr) {
    return DcmTag(t.group, static_cast<Uint16>((kWriteBlock << 8) | t.element), vr);
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
  put(ds->putAndInsertUint16(DCM_Rows, static_cast<Uint16>(p.channels)), "Rows");
  put(ds->putAndInsertUint16(DCM_Columns, static_cast<Uint16>(p.rows)), "Columns");
  put(ds->putAndInsertUint16(DCM_BitsAllocated, 16), "BitsAllocated");
  put(ds->putAndInsertUint16(DCM_BitsStored, 16), "BitsStored");
  put(ds->putAndInsertUint16(DCM_HighBit, 15), "HighBit");
  put(ds->putAndInsertUint16(DCM_PixelRepresentation, 0), "PixelRepresentation");
  put(ds->putAndInsertString(DCM_RescaleIntercept, intercept_text.c_str()), "RescaleIntercept");
  put(ds->putAndInsertString(DCM_RescaleSlope, slope_text.c_str()), "RescaleSlope");
  put(ds->putAndInsertString(DCM_RescaleType, "US"), "RescaleType");
  // The published tag table, under the later format's creator in block 0x10 (readers that go
  // by fixed element numbers find them too).
  for (Uint16 group : kCtPdGroups) {
    put(ds->putAndInsertString(DcmTag(group, kWriteBlock, EVR_LO), kCreatorLater), "private creator");
  }
  put(ds->putAndInsertUint16(tag(kDetectorRows, EVR_US), static_cast<Uint16>(p.rows)), "rows");
  put(ds->putAndInsertUint16(tag(kDetectorColumns, EVR_US), static_cast<Uint16>(p.channels)), "columns");
  // Spacings at the detector, as the table defines them (the protocol's are at isocenter).
  put(ds->putAndInsertFloat32(tag(kTransverseSpacing, EVR_FL), static_cast<Float32>(p.DetectorChannelPitchMm())),
      "transverse spacing");
  put(ds->putAndInsertFloat32(tag(kAxialSpacing, EVR_FL), static_cast<Float32>(p.DetectorRowPitchMm())),
      "axial spacing");
  // The agent's fan-beam detector is an arc centred on the source: CYLINDRICAL. Parallel rays
  // meet a FLAT detector.
  put(ds->putAndInsertString(tag(kDetectorShape, EVR_CS), fan ? "CYLINDRICAL" : "FLAT"), "detector shape");
  put(ds->putAndInsertFloat32(tag(kFocalAngle, EVR_FL), static_cast<Float32>(angle_rad)), "angular position");
  put(ds->putAndInsertFloat32(tag(kFocalZ, EVR_FL), static_cast<Float32>(view.table_position_mm)), "axial position");
  if (fan) {
    put(ds->putAndInsertFloat32(tag(kFocalRadius, EVR_FL), static_cast<Float32>(p.source_to_isocenter_mm)),
        "radial distance");
    put(ds->putAndInsertFloat32(tag(kConstantRadial, EVR_FL), static_cast<Float32>(p.source_to_detector_mm)),
        "constant radial distance");
  }
  // The centre of the detector, 1-based (column, row): the agent's channels and rows are
  // symmetric about the ray through the isocenter.
  const Float32 central[2] = {static_cast<Float32>((p.channels + 1) / 2.0), static_cast<Float32>((p.rows + 1) / 2.0)};
  put(ds->putAndInsertFloat32Array(tag(kCentralElement, EVR_FL), central, 2), "central element");
  put(ds->putAndInsertFloat32(tag(kShiftAngle, EVR_FL), 0.0f), "angular shift");
  put(ds->putAndInsertFloat32(tag(kShiftZ, EVR_FL), 0.0f), "axial shift");
  put(ds->putAndInsertFloat32(tag(kShiftRadius, EVR_FL), 0.0f), "radial shift");
  put(ds->putAndInsertString(tag(kFlyingFocalSpot, EVR_CS), "FFSNONE"), "flying focal spot");
  // Projections per full 360-degree turn; the agent's parallel "rotation" is half a turn. (The
  // old writer wrote twice the views per rotation for fan beams too.)
  put(ds->putAndInsertUint16(tag(kAngularSteps, EVR_US), static_cast<Uint16>(p.views_per_rotation * (fan ? 1u : 2u))),
      "angular steps");
  put(ds->putAndInsertString(tag(kScanType, EVR_CS), p.table_speed_mm_per_rotation != 0 ? "HELICAL" : "AXIAL"),
      "scan type");
  put(ds->putAndInsertString(tag(kBeamType, EVR_CS), fan ? "FANBEAM" : "PARALLEL"), "beam type");
  // The exact values, for a lossless round trip of the metadata.
  put(ds->putAndInsertString(DcmTag(kCtagentGroup, kWriteBlock, EVR_LO), kCtagentCreator), "ctagent creator");
  put(ds->putAndInsertFloat64(tag(kTimestamp, EVR_FD), static_cast<double>(view.timestamp_us)), "timestamp");
  put(ds->putAndInsertUint32(tag(kFlags, EVR_UL), view.status_flags), "flags");
  put(ds->putAndInsertFloat64(tag(kI0, EVR_FD), i0), "I0");
  put(ds->putAndInsertFloat64(tag(kAngleDeg, EVR_FD), view.gantry_angle_deg), "angle");
  put(ds->putAndInsertFloat64(tag(kTable, EVR_FD), view.table_position_mm), "table");
  put(ds->putAndInsertString(tag(kEncoding, EVR_CS), line_integrals ? kEncodingLineIntegral : kEncodingCounts),
      "encoding");
  put(ds->putAndInsertFloat64(tag(kSlope, EVR_FD), slope), "slope");
  put(ds->putAndInsertFloat64(tag(kIntercept, EVR_FD), intercept), "intercept");
  put(ds->putAndInsertFloat64(tag(kDose, EVR_FD), p.dose_fraction), "dose fraction");
  put(ds->putAndInsertFloat64(tag(kRotationTime, EVR_FD), p.rotation_time_s), "rotation time");
  put(ds->putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())), "PixelData");
  if (!s) return s;
  const OFCondition saved = format.saveFile(file.c_str(), EXS_LittleEndianExplicit);
  if (saved.bad()) return MakeError(ErrorKind::kIo, "DICOM-CT-PD " + file.string() + ": cannot write: " + saved.text());
  return Ok();
}

AdoptedProtocol ProtocolFromDicomCtPd(const DicomCtPdInfo& info, const ScanProtocol& configured) {
  ScanProtocol p = configured;
  const bool says_parallel = info.beam.find("PARALLEL") != std::string::npos;
  const bool fan = !says_parallel && (info.first.rho0_mm > 0 || info.beam.find("FAN") != std::string::npos ||
                                      info.beam.find("CONE") != std::string::npos);
  p.geometry = fan ? GeometryKind::kFan : GeometryKind::kParallel;
  p.rows = info.rows;
  p.channels = info.channels;
  p.sample_type = SampleType::kUint16;
  if (fan) {
    if (info.first.rho0_mm > 0) p.source_to_isocenter_mm = info.first.rho0_mm;
    if (info.source_to_detector_mm > 0) p.source_to_detector_mm = info.source_to_detector_mm;
  }
  // The protocol's pitches are at isocenter; the files' at the detector.
  const double to_isocenter = fan ? p.source_to_isocenter_mm / p.source_to_detector_mm : 1.0;
  if (info.transverse_spacing_mm > 0) p.channel_pitch_mm = info.transverse_spacing_mm * to_isocenter;
  if (info.axial_spacing_mm > 0) p.row_pitch_mm = info.axial_spacing_mm * to_isocenter;

  // Views per rotation: (7033,1013) counts a full turn; a parallel "rotation" is half of one.
  std::uint64_t per_rotation = info.angular_steps / (fan ? 1 : 2);
  if (per_rotation == 0) per_rotation = info.views;  // absent: the recording is taken as one rotation
  const double view_rate = configured.ViewRateHz();
  std::vector<std::string> notes;
  if (info.views % per_rotation == 0) {
    p.views_per_rotation = static_cast<std::uint32_t>(per_rotation);
    p.rotations = static_cast<std::uint32_t>(info.views / per_rotation);
  } else {
    // Not whole rotations (a single view, say): the views carry their own angles, so the scan
    // is one "rotation" of all of them, at the configured view rate.
    p.views_per_rotation = static_cast<std::uint32_t>(info.views);
    p.rotations = 1;
    const std::string views = std::to_string(info.views) + (info.views == 1 ? " view" : " views");
    notes.push_back("the recording's " + views + " (" + (info.views == 1 ? "is" : "are") +
                    " not whole rotations of " + std::to_string(per_rotation) + " views); replayed as one rotation of " +
                    views + " (each view keeps its recorded angle)");
  }
  if (info.ctagent_rotation_time_s && *info.ctagent_rotation_time_s > 0) {
    p.rotation_time_s = *info.ctagent_rotation_time_s;
  } else if (view_rate > 0) {
    p.rotation_time_s = p.views_per_rotation / view_rate;
  }
  p.table_start_mm = info.first.z0_mm;
  const double z_per_view = info.views > 1 ? (info.last.z0_mm - info.first.z0_mm) / static_cast<double>(info.views - 1) : 0.0;
  p.table_speed_mm_per_rotation = z_per_view * p.views_per_rotation;

  if (info.ctagent_dose_fraction && *info.ctagent_dose_fraction > 0) p.dose_fraction = *info.ctagent_dose_fraction;
  if (info.ctagent_i0 && *info.ctagent_i0 > 0) p.unattenuated_counts = *info.ctagent_i0 / p.dose_fraction;
  if (info.ctagent_encoding == SampleEncoding::kCounts) {
    p.sample_encoding = SampleEncoding::kCounts;  // ctagent's log-normalised counts, read back as counts
  } else {
    // The files' own samples: their line integrals with their rescale, bit for bit.
    p.sample_encoding = SampleEncoding::kLineIntegral;
    p.line_integral_slope = info.rescale_slope;
    p.line_integral_intercept = info.rescale_intercept;
  }
  if (fan && info.detector_shape == "FLAT") {
    notes.push_back("the recording's fan beam meets a FLAT detector; the agent's fan geometry is an arc "
                    "(CYLINDRICAL) detector, so a reconstruction from the replayed scan is approximate");
  }
  if (info.flying_focal_spot != "" && info.flying_focal_spot != "FFSNONE") {
    notes.push_back("flying focal spot " + info.flying_focal_spot +
                    ": the per-view focal spot shifts (7033,100B-100D) are not in the agent's views");
  }

  AdoptedProtocol out{p, ProtocolChanges(p, configured)};
  out.changes.insert(out.changes.end(), notes.begin(), notes.end());
  return out;
}

Expected<DicomCtPdInfo> ReadDicomCtPdInfo(const fs::path& directory) {
  auto files = OrderedFiles(directory);
  if (!files) return MakeError(files.error());
  return InfoOf(*files);
}

Expected<std::unique_ptr<DicomCtPdReader>> DicomCtPdReader::Open(const fs::path& directory, double fallback_i0,
                                                                 double view_rate_hz) {
  auto files = OrderedFiles(directory);
  if (!files) return MakeError(files.error());
  auto info = InfoOf(*files);
  if (!info) return MakeError(info.error());
  std::unique_ptr<DicomCtPdReader> r(new DicomCtPdReader);
  r->files_ = std::move(files).value();
  r->info_ = std::move(info).value();
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
  DcmDataset& ds = *format.getDataset();
  const PrivateBlocks tags = CtPdBlocks(ds);
  const PrivateBlocks ctagent = CtagentBlock(ds);
  Uint16 image_rows = 0;
  Uint16 image_columns = 0;
  ds.findAndGetUint16(DCM_Rows, image_rows);
  ds.findAndGetUint16(DCM_Columns, image_columns);
  const std::uint32_t expect_rows = info_.transposed ? info_.channels : info_.rows;
  const std::uint32_t expect_columns = info_.transposed ? info_.rows : info_.channels;
  if (image_rows != expect_rows || image_columns != expect_columns) {
    return Corrupt(file, "the image is " + std::to_string(image_rows) + " x " + std::to_string(image_columns) +
                             " pixels (Rows x Columns); the first file's is " + std::to_string(expect_rows) + " x " +
                             std::to_string(expect_columns));
  }
  const Uint16* pixels = nullptr;
  unsigned long count = 0;
  const std::size_t expected = std::size_t{info_.rows} * info_.channels;
  if (const OFCondition c = ds.findAndGetUint16Array(DCM_PixelData, pixels, &count); c.bad()) {
    return DicomError(file, "no 16-bit PixelData", c);
  }
  if (count != expected) {
    return Corrupt(file, std::to_string(count) + " pixels, the detector's " + std::to_string(info_.rows) + " x " +
                             std::to_string(info_.channels) + " needs " + std::to_string(expected));
  }
  auto rescale = Rescale(ds, ctagent, file);
  if (!rescale) return MakeError(rescale.error());
  const auto [slope, intercept] = *rescale;
  double i0 = target_ ? target_->unattenuated_counts * target_->dose_fraction : fallback_i0_;
  if (!target_) i0 = ctagent.Number(kI0, EVR_FD).value_or(i0);
  // Files without the ctagent block hold line integrals (what DICOM-CT-PD is for).
  const bool file_is_line_integral = ctagent.Text(kEncoding) != kEncodingCounts;
  const bool want_line_integral =
      target_ ? target_->sample_encoding == SampleEncoding::kLineIntegral : file_is_line_integral;

  last_geometry_ = ViewGeometry(tags);
  View v;
  v.sequence = next_;
  v.gantry_angle_deg = ctagent.Number(kAngleDeg, EVR_FD).value_or(last_geometry_.phi0_rad * 180.0 / std::numbers::pi);
  v.table_position_mm = ctagent.Number(kTable, EVR_FD).value_or(last_geometry_.z0_mm);
  if (auto exact = ctagent.Number(kTimestamp, EVR_FD)) {
    v.timestamp_us = std::llround(*exact);
  } else {
    v.timestamp_us = view_rate_hz_ > 0 ? std::llround(static_cast<double>(next_) * 1e6 / view_rate_hz_) : 0;
  }
  v.status_flags = static_cast<std::uint32_t>(ctagent.Number(kFlags, EVR_UL).value_or(0));

  // Pixels into row-major detector order.
  std::vector<std::uint16_t> codes(expected);
  if (info_.transposed) {
    for (std::uint32_t c = 0; c < info_.channels; ++c) {
      for (std::uint32_t r = 0; r < info_.rows; ++r) {
        codes[std::size_t{r} * info_.channels + c] = pixels[std::size_t{c} * info_.rows + r];
      }
    }
  } else {
    std::memcpy(codes.data(), pixels, expected * 2);
  }
  v.samples.resize(expected * 2);
  if (want_line_integral) {
    const double out_slope = target_ ? target_->line_integral_slope : slope;
    const double out_intercept = target_ ? target_->line_integral_intercept : intercept;
    if (out_slope == slope && out_intercept == intercept) {
      std::memcpy(v.samples.data(), codes.data(), expected * 2);  // the recorded codes, bit for bit
    } else {
      for (std::size_t i = 0; i < expected; ++i) {
        const std::uint16_t c = Code(slope * codes[i] + intercept, out_slope, out_intercept);
        std::memcpy(v.samples.data() + 2 * i, &c, 2);
      }
    }
  } else {
    for (std::size_t i = 0; i < expected; ++i) {
      const double line_integral = slope * codes[i] + intercept;
      const double counts = std::min(i0 * std::exp(-line_integral), kMaxPixel);
      const auto c = static_cast<std::uint16_t>(std::lround(counts));
      std::memcpy(v.samples.data() + 2 * i, &c, 2);
    }
  }
  ++next_;
  return std::optional<View>(std::move(v));
}

}  // namespace ctagent::drivers::replay
