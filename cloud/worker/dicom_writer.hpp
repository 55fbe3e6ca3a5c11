// Writes reconstructed slices as DICOM CT Image Storage instances (Part 10, explicit VR little
// endian) with DCMTK. The series says in several places that it is a reference reconstruction and
// not a diagnostic product. The scan UID goes into Acquisition UID (0008,0017) and, readable, into
// Protocol Name (0018,1030) "ctagent scan <scan_uid>".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "base/error.hpp"
#include "cloud/worker/recon.hpp"

namespace ctagent::cloud {

inline constexpr const char* kSeriesDescription = "Reference FBP reconstruction - not for diagnosis";
inline constexpr const char* kManufacturer = "ctagent reference imaging center";

// What every instance of one series shares.
struct SeriesInfo {
  std::string scan_uid;
  std::string study_uid;
  std::string series_uid;              // DerivedDicomUid of the scan: the same on every run
  std::string frame_of_reference_uid;  // DerivedDicomUid of the scan: the same on every run
  std::string patient_id;
  std::string patient_name;
  std::string study_description;
  std::string acquisition_date_time;  // DICOM DT (YYYYMMDDHHMMSS), may be empty
  std::int32_t series_number = 1000;
  double slice_thickness_mm = 0;
  // (0020,1002) Images in Acquisition: how many instances the series holds when complete. The
  // agent treats a series as complete when it has this many (docs/wire-format.md).
  std::int32_t images_in_acquisition = 0;
};

// One slice's place in the series.
struct SlicePlacement {
  std::int32_t instance_number = 1;  // 1-based
  double z_mm = 0;                   // table position + row offset: ImagePositionPatient z, SliceLocation
  std::string sop_instance_uid;      // empty: minted
};

// A DICOM UID that is a function of `name`: "2.25." + the first 128 bits of SHA-256(name) as a
// decimal integer, with the version (8, name-based custom) and variant bits of an RFC 9562 UUID.
// The worker names its series and instances this way from the scan UID, so a scan reconstructed
// again (a kill before the done marker, a lost work directory) yields the same UIDs, and Orthanc
// keeps one copy of each instance instead of a second series.
std::string DerivedDicomUid(const std::string& name);

// Writes `image` to `path` (replacing it) and returns the SOP Instance UID it carries.
// HU values are rounded and clamped to the int16 range.
Expected<std::string> WriteCtSlice(const std::filesystem::path& path, const SeriesInfo& series,
                                   const SlicePlacement& placement, const HuImage& image);

// "YYYYMMDDHHMMSS" of an ISO 8601 UTC time ("2024-05-01T10:20:30Z" ...), or "" if it does not parse.
std::string IsoToDicomDateTime(const std::string& iso);

}  // namespace ctagent::cloud
