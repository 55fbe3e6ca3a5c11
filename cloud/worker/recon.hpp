// Parallel-beam filtered back-projection for the reference imaging center (demos and tests only;
// not a diagnostic product). Counts -> line integrals -> ramp filter (spatial-domain kernel,
// Kak & Slaney) -> back-projection with linear interpolation -> Hounsfield units.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "agent/common/error.hpp"

namespace ctagent::cloud {

enum class RampWindow : std::uint8_t {
  kRamLak,      // the plain ramp: sharpest, most noise
  kSheppLogan,  // ramp times sinc: slightly smoother, less noise
};

struct ReconOptions {
  std::uint32_t image_size = 512;  // N: the image is N x N pixels
  RampWindow window = RampWindow::kRamLak;
  std::uint32_t max_threads = 2;   // slices reconstruct in parallel, at most this many at once
  // Pixels outside the circle every view saw (radius = FOV / 2) get this value [HU].
  float outside_fov_hu = -1000.0f;
};

// One scan's counts as the chunks carry them, already in view order.
struct ReconInput {
  std::uint32_t views = 0;
  std::uint32_t rows = 0;      // detector rows = slices
  std::uint32_t channels = 0;
  double channel_pitch_mm = 0;  // at isocenter; FOV = channels * pitch
  // Mean counts of an unattenuated ray: unattenuated_counts * dose_fraction.
  double unattenuated_counts = 0;
  std::vector<double> gantry_angle_deg;  // one per view; together they cover 180 degrees (or k * 180)
  // views * rows * channels counts, row-major per view (view v, row r, channel c at
  // (v * rows + r) * channels + c).
  std::vector<float> counts;
};

// One reconstructed slice: N x N values in HU, row 0 at +y (anterior), column grows with x.
struct HuImage {
  std::uint32_t size = 0;
  double pixel_spacing_mm = 0;
  std::vector<float> hu;  // size * size

  float At(std::uint32_t row, std::uint32_t column) const { return hu[std::size_t{row} * size + column]; }
  // Centre of pixel (row, column) in mm (the inverse of the orientation above).
  double XOfColumn(double column) const { return (column - (size - 1) / 2.0) * pixel_spacing_mm; }
  double YOfRow(double row) const { return ((size - 1) / 2.0 - row) * pixel_spacing_mm; }
};

// Reconstructs every row of `input` into a slice. Fails with kInvalidInput when the shape is
// inconsistent (sizes, angle count, non-positive pitch or counts).
Expected<std::vector<HuImage>> Reconstruct(const ReconInput& input, const ReconOptions& options);

// The discrete ramp kernel h[n] for n = -(len-1) .. len-1, centred at index len-1, for sample
// spacing `spacing_mm`. Exposed for tests.
std::vector<double> RampKernel(std::uint32_t len, double spacing_mm, RampWindow window);

// Line integral from counts: p = -ln(max(N, 0.5) / I0). Exposed for tests.
double CountsToLineIntegral(double counts, double unattenuated_counts);

}  // namespace ctagent::cloud
