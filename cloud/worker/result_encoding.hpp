// Encodes the reference lung analysis (analysis.hpp) of one scan as the DICOM objects the agent
// brings back to the console (docs/results.md, "The AI result set"); demos and tests only, not a
// diagnostic product:
//   - a Segmentation (DCMTK dcmseg): right lung, left lung, one segment per lesion, every frame
//     referencing the CT instance it was derived from;
//   - a readable report as Secondary Capture pages (RGB): summary, lesion table, involvement,
//     histograms, then one key image per lesion with the lesion outlined;
//   - a TID 1500 Measurement Report (DCMTK dcmsr/cmr) whose Current Requested Procedure Evidence
//     lists every other instance of the set: it is stored last and marks the set complete.
// Every UID is derived from the scan UID (DerivedDicomUid), so encoding again gives the same
// instances.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "cloud/worker/analysis.hpp"
#include "cloud/worker/dicom_writer.hpp"
#include "cloud/worker/recon.hpp"

namespace ctagent::cloud {

inline constexpr const char* kSegmentationStorage = "1.2.840.10008.5.1.4.1.1.66.4";
inline constexpr const char* kSecondaryCaptureStorage = "1.2.840.10008.5.1.4.1.1.7";
// DCMTK chooses Enhanced SR for a TID 1500 report without spatial coordinates.
inline constexpr const char* kEnhancedSrStorage = "1.2.840.10008.5.1.4.1.1.88.22";
inline constexpr const char* kCtImageStorage = "1.2.840.10008.5.1.4.1.1.2";
inline constexpr const char* kPrivateCodingScheme = "99CTAGENT";
inline constexpr std::int32_t kSegSeriesNumber = 1001;
inline constexpr std::int32_t kReportSeriesNumber = 1002;
inline constexpr std::int32_t kSrSeriesNumber = 1003;
inline constexpr std::size_t kMaxKeyImages = 16;  // report pages after the summary

// One stored CT instance, in the order of the analysed slices (index i = slice i).
struct CtInstance {
  std::string sop_instance_uid;
  double z_mm = 0;
};

// One DICOM object of the result set written to disk.
struct ResultObject {
  std::string kind;  // "seg", "report", "sr"
  std::string sop_class_uid;
  std::string series_uid;
  std::string sop_instance_uid;
  std::filesystem::path file;
};

// The UIDs of the result set (docs/results.md).
std::string SegSeriesUid(const std::string& scan_uid);
std::string SegInstanceUid(const std::string& scan_uid);
std::string ReportSeriesUid(const std::string& scan_uid);
std::string ReportInstanceUid(const std::string& scan_uid, int page);  // page 1..
std::string SrSeriesUid(const std::string& scan_uid);
std::string SrInstanceUid(const std::string& scan_uid);

// What the encoders need besides the analysis: the CT series (patient, study, frame of
// reference, series UID) and its instances, and the slices (key images are drawn from them).
struct ResultInput {
  SeriesInfo ct;
  std::vector<CtInstance> ct_instances;
  std::span<const HuImage> slices;  // same count and order as ct_instances
};

// Writes the Segmentation to `path`. Fails (kInvalidInput) for a failed analysis or masks that
// do not match the slices.
Expected<ResultObject> WriteSegmentation(const std::filesystem::path& path, const ResultInput& input,
                                         const AnalysisResult& analysis);

// Writes the readable report pages into `dir` as report-NNN.dcm, page 1 first.
Expected<std::vector<ResultObject>> WriteReport(const std::filesystem::path& dir, const ResultInput& input,
                                                const AnalysisResult& analysis);

// Writes the Measurement Report to `path`; `evidence` is every other object of the set (the CT
// instances are added from `input`).
Expected<ResultObject> WriteMeasurementReport(const std::filesystem::path& path, const ResultInput& input,
                                              const AnalysisResult& analysis,
                                              std::span<const ResultObject> evidence);

// All of the above into `dir`, in storing order: SEG (not for a failed analysis), report pages,
// SR last.
Expected<std::vector<ResultObject>> WriteResultSet(const std::filesystem::path& dir, const ResultInput& input,
                                                   const AnalysisResult& analysis);

}  // namespace ctagent::cloud
