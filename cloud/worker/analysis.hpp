// The reference imaging center's lung analysis (demos and tests only; a reference, not a
// diagnostic product): lung segmentation, lesion detection inside the lungs and their
// quantification, computed from one scan's reconstructed CT volume. The encoders
// (cloud/worker/result_encoding.hpp) turn an AnalysisResult into the DICOM SR, SEG and readable
// report the agent brings back to the console (docs/results.md: "The AI result set").
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "agent/common/error.hpp"
#include "cloud/worker/recon.hpp"

namespace ctagent::cloud {

enum class Lung : std::uint8_t { kRight = 0, kLeft = 1 };  // the patient's right and left
enum class LesionType : std::uint8_t { kGroundGlass, kConsolidation };
enum class StudyCategory : std::uint8_t { kNormal, kHighRisk, kFailed };

// A labelled voxel mask over the analysed volume: slices x size x size, one byte per voxel,
// 0 = background, otherwise the label (lungs: 1 right, 2 left; lesions: 1 + lesion index).
struct LabelVolume {
  std::uint32_t slices = 0;
  std::uint32_t size = 0;  // rows = columns, as the HuImage slices
  std::vector<std::uint8_t> labels;
  std::uint8_t At(std::uint32_t slice, std::uint32_t row, std::uint32_t column) const {
    return labels[(std::size_t{slice} * size + row) * size + column];
  }
};

struct LesionFinding {
  std::uint32_t label = 0;           // its value in AnalysisResult::lesion_mask
  LesionType type = LesionType::kGroundGlass;
  Lung lung = Lung::kRight;
  double x_mm = 0, y_mm = 0, z_mm = 0;  // centroid, patient coordinates as HuImage (z = slice z_mm)
  double volume_ml = 0;
  double mean_hu = 0;
  double max_diameter_mm = 0;        // in the slice plane
  std::uint32_t first_slice = 0, last_slice = 0;  // indexes into the analysed slices
};

// Density histogram of one lung: counts of lung voxels per HU bin. Bins are kHistogramBinHu
// wide from kHistogramMinHu; values below the first or above the last bin go to the end bins.
inline constexpr int kHistogramMinHu = -1000;
inline constexpr int kHistogramBinHu = 50;
inline constexpr int kHistogramBins = 22;  // -1000 .. +100 HU
struct LungFindings {
  Lung lung = Lung::kRight;
  double volume_ml = 0;          // the segmented lung, lesions included
  double lesion_volume_ml = 0;   // the lesions inside it
  double involvement_percent = 0;  // 100 * lesion_volume / volume
  std::array<std::uint64_t, kHistogramBins> histogram{};
};

struct AnalysisResult {
  StudyCategory category = StudyCategory::kFailed;
  std::string category_rule;     // the rule that decided the category, readable
  std::string failure_reason;    // when kFailed: why, readable
  std::vector<LesionFinding> lesions;
  std::array<LungFindings, 2> lungs{};  // indexed by Lung
  LabelVolume lung_mask;    // 1 right, 2 left
  LabelVolume lesion_mask;  // 1 + index into `lesions`
  double seconds = 0;       // wall time of the analysis
};

}  // namespace ctagent::cloud
