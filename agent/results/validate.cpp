// Validation of DICOM instances pulled back from the imaging center, before they are kept in
// the spool or forwarded to the console. DCMTK parses; the checks here decide what we accept.
#include <vector>  // results.hpp uses std::vector without including it

#include "agent/results/results.hpp"

#include <dcmtk/config/osconfig.h>  // must come before any other DCMTK header
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcdict.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmf.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmdata/dcxfer.h>
#include <dcmtk/dcmsr/dsrdoc.h>
#include <dcmtk/oflog/logger.h>
#include <dcmtk/oflog/loglevel.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string_view>
#include <system_error>

#include "base/dcmtk_logging.hpp"
#include "base/log.hpp"

namespace ctagent::results {
namespace {

constexpr std::uintmax_t kMaxInstanceFileBytes = std::uintmax_t{1} << 30;  // 1 GiB
constexpr std::size_t kPreambleBytes = 128;
constexpr std::uint16_t kMaxImageDimension = 8192;
constexpr long kMaxFrames = 100000;

using dcmtk_support::QuietDcmtkLogging;

std::string MiB(std::uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// Reads a string attribute; empty when absent or empty.
std::string GetString(DcmDataset& dataset, const DcmTagKey& tag) {
  OFString value;
  if (dataset.findAndGetOFString(tag, value).bad()) return {};
  return std::string(value.c_str());
}

// Reads an unsigned short attribute; false when absent.
bool GetUint16(DcmDataset& dataset, const DcmTagKey& tag, std::uint16_t* out) {
  Uint16 value = 0;
  if (dataset.findAndGetUint16(tag, value).bad()) return false;
  *out = value;
  return true;
}

// An IS (integer string) attribute such as Number of Frames; `fallback` when absent.
long GetIntegerString(DcmDataset& dataset, const DcmTagKey& tag, long fallback) {
  Sint32 value = 0;
  if (dataset.findAndGetSint32(tag, value).bad()) return fallback;
  return value;
}

std::string InstanceLabel(const std::string& sop_instance_uid) {
  return sop_instance_uid.empty() ? std::string("instance (SOP instance UID unknown)")
                                  : "instance " + sop_instance_uid;
}

// Image checks: dimensions a CT console can display and pixel data of exactly the size the
// header declares, so a truncated or mis-declared image never reaches the console.
Status CheckImage(DcmDataset& dataset, const std::string& label, InstanceInfo& info) {
  const bool segmentation = info.sop_class_uid == UID_SegmentationStorage;
  std::uint16_t rows = 0;
  std::uint16_t columns = 0;
  std::uint16_t bits_allocated = 0;
  std::uint16_t samples_per_pixel = 1;
  if (!GetUint16(dataset, DCM_Rows, &rows)) {
    return MakeError(ErrorKind::kCorrupt, label + ": image has no Rows (0028,0010)");
  }
  if (!GetUint16(dataset, DCM_Columns, &columns)) {
    return MakeError(ErrorKind::kCorrupt, label + ": image has no Columns (0028,0011)");
  }
  if (rows < 1 || rows > kMaxImageDimension || columns < 1 || columns > kMaxImageDimension) {
    return MakeError(ErrorKind::kCorrupt, label + ": image is " + std::to_string(rows) + " rows x " +
                                              std::to_string(columns) + " columns; each must be in 1.." +
                                              std::to_string(kMaxImageDimension));
  }
  if (!GetUint16(dataset, DCM_BitsAllocated, &bits_allocated)) {
    return MakeError(ErrorKind::kCorrupt, label + ": image has no BitsAllocated (0028,0100)");
  }
  // A segmentation is 1 bit (BINARY) or 8 bits (FRACTIONAL) per pixel; other images 8 or 16.
  if (segmentation ? (bits_allocated != 1 && bits_allocated != 8) : (bits_allocated != 8 && bits_allocated != 16)) {
    return MakeError(ErrorKind::kCorrupt, label + ": BitsAllocated is " + std::to_string(bits_allocated) +
                                              (segmentation ? "; a segmentation must have 1 or 8" : "; only 8 or 16 are accepted"));
  }
  if (segmentation && GetString(dataset, DCM_SegmentationType).empty()) {
    return MakeError(ErrorKind::kCorrupt, label + ": segmentation has no SegmentationType (0062,0001)");
  }
  (void)GetUint16(dataset, DCM_SamplesPerPixel, &samples_per_pixel);  // absent means 1
  if (samples_per_pixel != 1 && samples_per_pixel != 3) {
    return MakeError(ErrorKind::kCorrupt, label + ": SamplesPerPixel is " + std::to_string(samples_per_pixel) +
                                              "; only 1 or 3 are accepted");
  }
  const long frames = GetIntegerString(dataset, DCM_NumberOfFrames, 1);
  if (frames < 1 || frames > kMaxFrames) {
    return MakeError(ErrorKind::kCorrupt, label + ": NumberOfFrames is " + std::to_string(frames) +
                                              "; it must be in 1.." + std::to_string(kMaxFrames));
  }

  DcmElement* pixel_data = nullptr;
  if (dataset.findAndGetElement(DCM_PixelData, pixel_data).bad() || pixel_data == nullptr) {
    return MakeError(ErrorKind::kCorrupt, label + ": image has no PixelData (7FE0,0010)");
  }
  // Encapsulated (compressed) pixel data has no length to compare against; its fragments are
  // checked by whoever decompresses it. Native pixel data must match the header exactly.
  const DcmXfer xfer(dataset.getOriginalXfer());
  if (!xfer.isEncapsulated()) {
    const std::uint64_t bits = std::uint64_t{rows} * columns * samples_per_pixel * bits_allocated *
                               static_cast<std::uint64_t>(frames);
    const std::uint64_t expected = (bits + 7) / 8;  // 1-bit frames are packed end to end
    const std::uint64_t actual = pixel_data->getLength();
    // Values of odd length are padded to even length on the wire.
    const bool padded_ok = (expected % 2 == 1) && actual == expected + 1;
    if (actual != expected && !padded_ok) {
      return MakeError(ErrorKind::kCorrupt,
                       label + ": PixelData is " + std::to_string(actual) + " bytes but " + std::to_string(rows) +
                           " rows x " + std::to_string(columns) + " columns x " + std::to_string(samples_per_pixel) +
                           " samples x " + std::to_string(bits_allocated) + " bits x " + std::to_string(frames) +
                           " frames needs " + std::to_string(expected) + " bytes");
    }
  }
  info.rows = rows;
  info.columns = columns;
  return Ok();
}

// An SR must be a document DCMTK's SR module can read (document tree, value types, relationships),
// so a report the console cannot render is refused here rather than there.
Status CheckStructuredReport(DcmDataset& dataset, const std::string& label) {
  DSRDocument document;
  const OFCondition cond = document.read(dataset);
  if (cond.bad()) {
    return MakeError(ErrorKind::kCorrupt, label + ": not a readable structured report: " + std::string(cond.text()));
  }
  if (!document.isValid()) {
    return MakeError(ErrorKind::kCorrupt, label + ": structured report has no valid document tree");
  }
  return Ok();
}

}  // namespace

const std::set<std::string>& DefaultAllowedSopClasses() {
  static const std::set<std::string> kAllowed = {
      UID_CTImageStorage,    UID_EnhancedCTImageStorage, UID_SecondaryCaptureImageStorage,
      UID_BasicTextSRStorage, UID_EnhancedSRStorage,     UID_ComprehensiveSRStorage,
      UID_Comprehensive3DSRStorage, UID_SegmentationStorage,
  };
  return kAllowed;
}

std::string SopClassName(const std::string& uid) {
  const char* name = dcmFindNameOfUID(uid.c_str(), nullptr);
  return name != nullptr ? std::string(name) + " (" + uid + ")" : uid;
}

bool IsSegmentation(const std::string& sop_class_uid) { return sop_class_uid == UID_SegmentationStorage; }

std::uint64_t MaxInstanceBytes(const std::string& sop_class_uid) {
  constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
  if (sop_class_uid == UID_CTImageStorage) return 144 * kMiB;  // one 8192 x 8192 16-bit frame + header
  if (sop_class_uid == UID_SegmentationStorage) return 512 * kMiB;
  if (sop_class_uid == UID_SecondaryCaptureImageStorage) return 256 * kMiB;
  if (sop_class_uid == UID_BasicTextSRStorage || sop_class_uid == UID_EnhancedSRStorage ||
      sop_class_uid == UID_ComprehensiveSRStorage || sop_class_uid == UID_Comprehensive3DSRStorage) {
    return 16 * kMiB;
  }
  return kMaxInstanceFileBytes;
}

bool IsStructuredReport(const std::string& sop_class_uid) {
  return sop_class_uid == UID_BasicTextSRStorage || sop_class_uid == UID_EnhancedSRStorage ||
         sop_class_uid == UID_ComprehensiveSRStorage || sop_class_uid == UID_Comprehensive3DSRStorage;
}

Expected<InstanceInfo> ValidateInstance(std::span<const std::uint8_t> part10, const std::string& expected_study_uid,
                                        const std::set<std::string>& allowed_sop_classes) {
  QuietDcmtkLogging();
  if (!dcmDataDict.isDictionaryLoaded()) {
    return MakeError(ErrorKind::kInternal,
                     "the DCMTK data dictionary is not loaded, so no DICOM file can be checked; install "
                     "libdcmtk17 (dicom.dic) or point DCMDICTPATH at dicom.dic");
  }

  // 1. Parses as Part 10: a 128-byte preamble, "DICM", the meta header, then the data set.
  if (part10.empty()) {
    return MakeError(ErrorKind::kCorrupt, "not a DICOM Part 10 file: the input is empty (0 bytes)");
  }
  if (part10.size() < kPreambleBytes + 4 ||
      std::memcmp(part10.data() + kPreambleBytes, "DICM", 4) != 0) {
    return MakeError(ErrorKind::kCorrupt, "not a DICOM Part 10 file: no \"DICM\" prefix after the 128-byte preamble (" +
                                              std::to_string(part10.size()) + " bytes)");
  }
  // DCMTK checks each declared element length against the bytes left only when it reads a file;
  // from a memory buffer it first allocates whatever length an element declares (4 GiB for a
  // 495-byte input, found by dicom_validate_fuzz). So the bytes are parsed from an anonymous
  // in-memory file (memfd), and every value is loaded before that file is closed.
  const int fd = ::memfd_create("ctagent-validate", MFD_CLOEXEC);
  if (fd < 0) {
    return MakeError(ErrorKind::kInternal, std::string("cannot create an in-memory file to parse a DICOM instance: ") +
                                               std::strerror(errno));
  }
  struct CloseFd {
    int fd;
    ~CloseFd() { ::close(fd); }
  } close_fd{fd};
  for (std::size_t written = 0; written < part10.size();) {
    const ssize_t n = ::write(fd, part10.data() + written, part10.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return MakeError(ErrorKind::kNoSpace, std::string("cannot hold a DICOM instance of ") +
                                                std::to_string(part10.size()) + " bytes in memory to check it: " +
                                                std::strerror(errno));
    }
    written += static_cast<std::size_t>(n);
  }
  const std::string fd_path = "/proc/self/fd/" + std::to_string(fd);
  DcmInputFileStream stream{OFFilename(fd_path.c_str())};
  if (stream.status().bad()) {
    return MakeError(ErrorKind::kInternal, std::string("cannot read back the in-memory copy of a DICOM instance: ") +
                                               stream.status().text());
  }
  DcmFileFormat file;
  file.transferInit();
  // Values over DCM_MaxReadLength are left in the file while it is read (that is where their
  // length is checked), then loaded before the file goes away with this function.
  OFCondition read = file.read(stream, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
  file.transferEnd();
  if (read.good()) read = file.loadAllDataIntoMemory();
  if (read.bad()) {
    return MakeError(ErrorKind::kCorrupt, std::string("not a DICOM Part 10 file: ") + read.text() + " (" +
                                              std::to_string(part10.size()) + " bytes read)");
  }
  DcmDataset* dataset = file.getDataset();
  if (dataset == nullptr) {
    return MakeError(ErrorKind::kCorrupt, "not a DICOM Part 10 file: no data set after the meta header");
  }

  // 2. The identity every result instance needs to be filed and delivered.
  InstanceInfo info;
  info.sop_instance_uid = GetString(*dataset, DCM_SOPInstanceUID);
  const std::string label = InstanceLabel(info.sop_instance_uid);
  if (info.sop_instance_uid.empty()) {
    return MakeError(ErrorKind::kCorrupt, label + ": missing SOPInstanceUID (0008,0018)");
  }
  info.sop_class_uid = GetString(*dataset, DCM_SOPClassUID);
  if (info.sop_class_uid.empty()) {
    return MakeError(ErrorKind::kCorrupt, label + ": missing SOPClassUID (0008,0016)");
  }
  info.study_uid = GetString(*dataset, DCM_StudyInstanceUID);
  if (info.study_uid.empty()) {
    return MakeError(ErrorKind::kCorrupt, label + ": missing StudyInstanceUID (0020,000D)");
  }
  info.series_uid = GetString(*dataset, DCM_SeriesInstanceUID);
  if (info.series_uid.empty()) {
    return MakeError(ErrorKind::kCorrupt, label + ": missing SeriesInstanceUID (0020,000E)");
  }
  info.modality = GetString(*dataset, DCM_Modality);
  const long images_in_acquisition = GetIntegerString(*dataset, DCM_ImagesInAcquisition, 0);
  info.images_in_acquisition = images_in_acquisition > 0 ? static_cast<std::uint32_t>(images_in_acquisition) : 0;

  // 3. It must belong to the scan's study: anything else would be filed under the wrong patient.
  if (info.study_uid != expected_study_uid) {
    return MakeError(ErrorKind::kProtocol, label + " belongs to study " + info.study_uid + ", expected " +
                                               expected_study_uid);
  }

  // 4. Only the kinds of object the results contract allows.
  if (allowed_sop_classes.count(info.sop_class_uid) == 0) {
    return MakeError(ErrorKind::kProtocol, label + " has SOP class " + SopClassName(info.sop_class_uid) +
                                               ", which is not allowed from the imaging center");
  }

  // 5. Size bound of its class: an object far larger than its kind ever is is not what it claims.
  if (const std::uint64_t bound = MaxInstanceBytes(info.sop_class_uid); part10.size() > bound) {
    return MakeError(ErrorKind::kProtocol, label + " (" + SopClassName(info.sop_class_uid) + ") is " +
                                               std::to_string(part10.size()) + " bytes, more than the " + MiB(bound) +
                                               " allowed for its SOP class");
  }

  // 6. Images: sane dimensions and pixel data of the declared size. SR: a readable document.
  if (IsStructuredReport(info.sop_class_uid)) {
    Status report = CheckStructuredReport(*dataset, label);
    if (!report) return MakeError(report.error());
  } else if (dcmIsImageStorageSOPClassUID(info.sop_class_uid.c_str()) ||
             info.sop_class_uid == UID_SegmentationStorage) {
    Status image = CheckImage(*dataset, label, info);
    if (!image) return MakeError(image.error());
  } else {
    (void)GetUint16(*dataset, DCM_Rows, &info.rows);
    (void)GetUint16(*dataset, DCM_Columns, &info.columns);
  }
  return info;
}

Expected<InstanceInfo> ValidateInstanceFile(const std::filesystem::path& path, const std::string& expected_study_uid,
                                            const std::set<std::string>& allowed_sop_classes) {
  std::error_code ec;
  const std::uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) {
    return MakeError(ErrorKind::kIo, "cannot read DICOM file " + path.string() + ": " + ec.message());
  }
  if (size > kMaxInstanceFileBytes) {
    return MakeError(ErrorKind::kCorrupt, "DICOM file " + path.string() + " is " + std::to_string(size) +
                                              " bytes, more than the 1 GiB limit for one instance");
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return MakeError(ErrorKind::kIo, "cannot open DICOM file " + path.string() + ": " + std::strerror(errno));
  }
  if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()))) {
    return MakeError(ErrorKind::kIo, "cannot read DICOM file " + path.string() + ": read " +
                                         std::to_string(in.gcount()) + " of " + std::to_string(size) + " bytes");
  }
  Expected<InstanceInfo> info = ValidateInstance(bytes, expected_study_uid, allowed_sop_classes);
  if (!info) return MakeError(info.error().WithContext(path.string()));
  return info;
}

}  // namespace ctagent::results
