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

#include "base/error.hpp"
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

// What every rendering of an AnalysisResult says about itself.
inline constexpr const char* kReferenceAnalysisLabel =
    "Reference analysis of the demo imaging center (simulated data): not a diagnostic product";

// The analysis' thresholds and rules (docs/reference-imaging-center.md, "Lung analysis").
struct AnalysisOptions {
  // Lung segmentation: voxels below this (after a 3 x 3 in-plane mean) are air or lung.
  double air_below_hu = -500;
  // An air component not touching the image border counts as a lung candidate from this volume.
  double min_lung_ml = 100;
  // Lesion search: lung voxels at least this far from the lung wall (in-plane) and with lung on
  // the slices above and below, so partial volume at the wall is not taken for a lesion.
  double wall_margin_mm = 4;
  // Lesion voxels: smoothed HU at or above this (a third of the way from aerated lung, -850, to
  // ground glass, -650, rather than halfway: the blurred peak of a 9 mm ground-glass nodule stays
  // under -750). A lesion whose peak smoothed HU reaches consolidation_min_hu is a
  // consolidation, and its volume counts the voxels above the halfway point between the
  // measured lung background and consolidation_hu.
  double lesion_min_hu = -775;
  double consolidation_min_hu = -300;
  double consolidation_hu = 35;
  // The detection limit: smaller connected regions are noise, not lesions.
  double min_lesion_ml = 0.2;
  // Category: high risk when a lesion reaches high_risk_lesion_ml or a lung's involvement
  // reaches high_risk_involvement_percent; normal otherwise.
  double high_risk_lesion_ml = 1.0;
  double high_risk_involvement_percent = 1.0;
  // Failed when the volume covers less than this along z (both lungs need about 300 mm).
  double min_coverage_mm = 100;
  std::uint32_t max_threads = 2;  // slices are filtered in this many parallel strips
};

// Analyses `slices` (one scan's volume, z ascending, equal size and spacing). Never throws; an
// unusable volume gives category kFailed with the reason. Memory: a few bytes per voxel.
AnalysisResult Analyze(const std::vector<HuImage>& slices, const AnalysisOptions& options = {});

}  // namespace ctagent::cloud
