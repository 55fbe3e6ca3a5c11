#include "cloud/worker/dicom_writer.hpp"

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <vector>

#include "base/durable_file.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"

namespace ctagent::cloud {
namespace {

constexpr const char* kImageComments =
    "Reference filtered back-projection from the ctagent reference imaging center, for demonstrations "
    "and tests. NOT A DIAGNOSTIC PRODUCT: not for diagnosis or treatment decisions.";

// DICOM DS values hold at most 16 characters.
std::string Ds(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

std::tm UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  return tm;
}

std::string DicomDate(const std::tm& tm) {
  char text[16];
  std::strftime(text, sizeof text, "%Y%m%d", &tm);
  return text;
}

std::string DicomTime(const std::tm& tm) {
  char text[16];
  std::strftime(text, sizeof text, "%H%M%S", &tm);
  return text;
}

std::int16_t ToStoredHu(float hu) {
  if (std::isnan(hu)) return -1000;
  const double clamped = std::clamp(static_cast<double>(hu), double{std::numeric_limits<std::int16_t>::min()},
                                    double{std::numeric_limits<std::int16_t>::max()});
  return static_cast<std::int16_t>(std::lround(clamped));
}

// Collects the first failed DCMTK put so one check at the end reports it with the attribute name.
class Putter {
 public:
  explicit Putter(DcmDataset* dataset) : dataset_(dataset) {}

  void Str(const DcmTagKey& tag, const std::string& value) {
    Check(dataset_->putAndInsertString(tag, value.c_str()), tag);
  }
  void U16(const DcmTagKey& tag, Uint16 value) { Check(dataset_->putAndInsertUint16(tag, value), tag); }
  void Pixels(const std::vector<Uint16>& words) {
    Check(dataset_->putAndInsertUint16Array(DCM_PixelData, words.data(), static_cast<unsigned long>(words.size())),
          DCM_PixelData);
  }
  const std::string& failure() const { return failure_; }

 private:
  void Check(const OFCondition& cond, const DcmTagKey& tag) {
    if (cond.bad() && failure_.empty()) failure_ = tag.toString().c_str() + std::string(": ") + cond.text();
  }
  DcmDataset* dataset_;
  std::string failure_;
};

}  // namespace

std::string IsoToDicomDateTime(const std::string& iso) {
  // Accepts YYYY-MM-DDTHH:MM:SS with anything after it (fraction, Z, offset).
  if (iso.size() < 19 || iso[4] != '-' || iso[7] != '-' || (iso[10] != 'T' && iso[10] != ' ') || iso[13] != ':' ||
      iso[16] != ':') {
    return "";
  }
  std::string out = iso.substr(0, 4) + iso.substr(5, 2) + iso.substr(8, 2) + iso.substr(11, 2) + iso.substr(14, 2) +
                    iso.substr(17, 2);
  if (!std::all_of(out.begin(), out.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) return "";
  return out;
}

std::string DerivedDicomUid(const std::string& name) {
  const std::string hex = Sha256Hex(
      std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(name.data()), name.size()));
  std::array<std::uint8_t, 16> n{};
  for (std::size_t i = 0; i < n.size(); ++i) {
    n[i] = static_cast<std::uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
  }
  n[6] = static_cast<std::uint8_t>((n[6] & 0x0f) | 0x80);  // UUID version 8
  n[8] = static_cast<std::uint8_t>((n[8] & 0x3f) | 0x80);  // RFC 9562 variant
  return DicomUidFromUuid(n);
}

Expected<std::string> WriteCtSlice(const std::filesystem::path& path, const SeriesInfo& series,
                                   const SlicePlacement& placement, const HuImage& image) {
  if (image.size == 0 || image.hu.size() != std::size_t{image.size} * image.size || image.size > 65535) {
    return MakeError(ErrorKind::kInvalidInput, "slice image for " + path.string() + " has an inconsistent size");
  }
  if (!IsValidDicomUid(series.study_uid) || !IsValidDicomUid(series.series_uid) ||
      !IsValidDicomUid(series.frame_of_reference_uid) || !IsValidDicomUid(series.scan_uid)) {
    return MakeError(ErrorKind::kInvalidInput, "slice " + path.string() +
                                                   ": study, series, frame of reference and scan UIDs must be valid "
                                                   "DICOM UIDs");
  }
  const std::string sop_uid = placement.sop_instance_uid.empty() ? MintDicomUid() : placement.sop_instance_uid;
  const std::tm utc = UtcNow();
  const std::string today = DicomDate(utc);
  const std::string now = DicomTime(utc);
  const std::string acquisition_date =
      series.acquisition_date_time.size() >= 8 ? series.acquisition_date_time.substr(0, 8) : today;
  const std::string acquisition_time =
      series.acquisition_date_time.size() >= 14 ? series.acquisition_date_time.substr(8, 6) : now;

  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  Putter put(ds);
  put.Str(DCM_SpecificCharacterSet, "ISO_IR 192");  // UTF-8: names from the manifest may be non-ASCII
  // SOP Common, patient, study
  put.Str(DCM_SOPClassUID, UID_CTImageStorage);
  put.Str(DCM_SOPInstanceUID, sop_uid);
  put.Str(DCM_PatientName, series.patient_name);
  put.Str(DCM_PatientID, series.patient_id);
  put.Str(DCM_PatientBirthDate, "");
  put.Str(DCM_PatientSex, "");
  put.Str(DCM_StudyInstanceUID, series.study_uid);
  put.Str(DCM_StudyDate, acquisition_date);
  put.Str(DCM_StudyTime, acquisition_time);
  put.Str(DCM_StudyID, "");
  put.Str(DCM_AccessionNumber, "");
  put.Str(DCM_ReferringPhysicianName, "");
  put.Str(DCM_StudyDescription, series.study_description);
  // Series, equipment, frame of reference
  put.Str(DCM_Modality, "CT");
  put.Str(DCM_SeriesInstanceUID, series.series_uid);
  put.Str(DCM_SeriesNumber, std::to_string(series.series_number));
  put.Str(DCM_SeriesDate, today);
  put.Str(DCM_SeriesTime, now);
  put.Str(DCM_SeriesDescription, kSeriesDescription);
  put.Str(DCM_Manufacturer, kManufacturer);
  put.Str(DCM_FrameOfReferenceUID, series.frame_of_reference_uid);
  put.Str(DCM_PositionReferenceIndicator, "");
  // Acquisition: where the scan UID lives (machine-readable and human-readable).
  put.Str(DCM_AcquisitionUID, series.scan_uid);
  put.Str(DCM_ProtocolName, "ctagent scan " + series.scan_uid);
  if (!series.acquisition_date_time.empty()) put.Str(DCM_AcquisitionDateTime, series.acquisition_date_time);
  put.Str(DCM_AcquisitionDate, acquisition_date);
  put.Str(DCM_AcquisitionTime, acquisition_time);
  put.Str(DCM_AcquisitionNumber, "1");
  if (series.images_in_acquisition > 0) put.Str(DCM_ImagesInAcquisition, std::to_string(series.images_in_acquisition));
  put.Str(DCM_KVP, "");
  // General and CT image
  put.Str(DCM_ImageType, "DERIVED\\SECONDARY\\AXIAL");
  put.Str(DCM_InstanceNumber, std::to_string(placement.instance_number));
  put.Str(DCM_ContentDate, today);
  put.Str(DCM_ContentTime, now);
  put.Str(DCM_ImageComments, kImageComments);
  put.Str(DCM_BurnedInAnnotation, "NO");
  put.Str(DCM_ConvolutionKernel, "FBP");
  // Image plane: row 0 is anterior and columns grow towards the patient's left, so with LPS
  // patient axes the first pixel sits at (-half, -half) and the orientation is 1\0\0\0\1\0.
  const double half = (image.size - 1) / 2.0 * image.pixel_spacing_mm;
  put.Str(DCM_PixelSpacing, Ds(image.pixel_spacing_mm) + "\\" + Ds(image.pixel_spacing_mm));
  put.Str(DCM_SliceThickness, Ds(series.slice_thickness_mm));
  put.Str(DCM_ImagePositionPatient, Ds(-half) + "\\" + Ds(-half) + "\\" + Ds(placement.z_mm));
  put.Str(DCM_ImageOrientationPatient, "1\\0\\0\\0\\1\\0");
  put.Str(DCM_SliceLocation, Ds(placement.z_mm));
  // Pixels: signed 16-bit HU, identity rescale.
  put.U16(DCM_SamplesPerPixel, 1);
  put.Str(DCM_PhotometricInterpretation, "MONOCHROME2");
  put.U16(DCM_Rows, static_cast<Uint16>(image.size));
  put.U16(DCM_Columns, static_cast<Uint16>(image.size));
  put.U16(DCM_BitsAllocated, 16);
  put.U16(DCM_BitsStored, 16);
  put.U16(DCM_HighBit, 15);
  put.U16(DCM_PixelRepresentation, 1);
  put.Str(DCM_RescaleIntercept, "0");
  put.Str(DCM_RescaleSlope, "1");
  put.Str(DCM_RescaleType, "HU");
  put.Str(DCM_WindowCenter, "-600");
  put.Str(DCM_WindowWidth, "1500");
  put.Str(DCM_WindowCenterWidthExplanation, "LUNG");
  std::vector<Uint16> words(image.hu.size());
  std::transform(image.hu.begin(), image.hu.end(), words.begin(),
                 [](float hu) { return static_cast<Uint16>(ToStoredHu(hu)); });
  put.Pixels(words);
  if (!put.failure().empty()) {
    return MakeError(ErrorKind::kInternal, "cannot build DICOM slice " + path.string() + ": " + put.failure());
  }

  // DCMTK writes a temporary file; the final one is written durably (synced, renamed) so a crash
  // never leaves a half-written instance behind a complete series record.
  const auto temp = std::filesystem::path(path.string() + ".dcmtk");
  const OFCondition saved = file.saveFile(temp.c_str(), EXS_LittleEndianExplicit);
  if (saved.bad()) {
    return MakeError(ErrorKind::kIo, "cannot write DICOM slice " + temp.string() + ": " + saved.text() +
                                         " (check free space and permissions of the work directory)");
  }
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  auto bytes = store.ReadAll(temp, 1ull << 30);
  if (!bytes) return MakeError(bytes.error().WithContext("reading back DICOM slice"));
  if (auto st = store.WriteDurably(path, *bytes); !st) return MakeError(st.error().WithContext("DICOM slice"));
  std::error_code ec;
  std::filesystem::remove(temp, ec);
  return sop_uid;
}

}  // namespace ctagent::cloud
