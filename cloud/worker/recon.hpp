// Filtered back-projection for the reference imaging center (demos and tests only; not a
// diagnostic product). Samples -> line integrals -> [helical: z-interpolation between the two
// detector rows that bracket each image plane, view by view, over one rotation centred on the
// plane] -> [fan beam: rebinning to parallel rays over 360 degrees, bilinear in (view angle,
// fan angle)] -> ramp filter (spatial-domain kernel, Kak & Slaney) -> parallel back-projection
// with linear interpolation -> Hounsfield units. The cone angle is ignored (rows are treated
// as planes), which is accurate for the few-centimetre collimation of a 16-slice scanner.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/error.hpp"

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

// One scan's samples as the chunks carry them, already in view order.
struct ReconInput {
  std::uint32_t views = 0;
  std::uint32_t rows = 0;      // detector rows (= slices of an axial scan)
  std::uint32_t channels = 0;
  double channel_pitch_mm = 0;  // at isocenter; FOV = channels * pitch
  // Mean counts of an unattenuated ray: unattenuated_counts * dose_fraction.
  double unattenuated_counts = 0;
  std::vector<double> gantry_angle_deg;  // one per view; together they cover 180 degrees (or k * 180)
  // views * rows * channels samples, row-major per view (view v, row r, channel c at
  // (v * rows + r) * channels + c): counts, or line-integral codes (below).
  std::vector<float> counts;

  // Samples are line-integral codes (sample_encoding "line_integral"): p = slope * s + intercept.
  bool samples_are_line_integrals = false;
  double line_integral_slope = 1;
  double line_integral_intercept = 0;

  // Fan beam (geometry "fan"): views cover 360 degrees per rotation; the source is
  // source_to_isocenter_mm from the axis; channel pitch is the arc pitch at isocenter.
  bool fan_beam = false;
  double source_to_isocenter_mm = 0;
  // Views per rotation (180 degrees parallel, 360 fan); 0: all views form one rotation.
  std::uint32_t views_per_rotation = 0;
  // Helical scans: one table position per view [mm] and the row spacing at isocenter. Empty
  // (or constant) positions: axial, one slice per row at table + (row - (rows-1)/2) * pitch.
  std::vector<double> table_position_mm;
  double row_pitch_mm = 0;
};

// One reconstructed slice: N x N values in HU, row 0 at +y (anterior), column grows with x.
struct HuImage {
  std::uint32_t size = 0;
  double pixel_spacing_mm = 0;
  double z_mm = 0;        // table coordinate of the image plane [mm]
  std::vector<float> hu;  // size * size

  float At(std::uint32_t row, std::uint32_t column) const { return hu[std::size_t{row} * size + column]; }
  // Centre of pixel (row, column) in mm (the inverse of the orientation above).
  double XOfColumn(double column) const { return (column - (size - 1) / 2.0) * pixel_spacing_mm; }
  double YOfRow(double row) const { return ((size - 1) / 2.0 - row) * pixel_spacing_mm; }
};

// Reconstructs `input` into slices: one per row for an axial scan; for a helical scan, planes
// row_pitch_mm apart over the z range every view of a centred rotation covers (listed by
// HelicalPlanes). Fails with kInvalidInput when the shape is inconsistent (sizes, angle count,
// non-positive pitch or counts, helical data shorter than a rotation).
Expected<std::vector<HuImage>> Reconstruct(const ReconInput& input, const ReconOptions& options);

// Image planes [mm] a helical reconstruction of `input` produces (empty for axial input).
std::vector<double> HelicalPlanes(const ReconInput& input);

// The discrete ramp kernel h[n] for n = -(len-1) .. len-1, centred at index len-1, for sample
// spacing `spacing_mm`. Exposed for tests.
std::vector<double> RampKernel(std::uint32_t len, double spacing_mm, RampWindow window);

// Line integral from counts: p = -ln(max(N, 0.5) / I0). Exposed for tests.
double CountsToLineIntegral(double counts, double unattenuated_counts);

}  // namespace ctagent::cloud
