#include "cloud/worker/recon.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <numbers>
#include <span>
#include <string>
#include <thread>
#include <utility>

#include "drivers/sim/phantom.hpp"

namespace ctagent::cloud {
namespace {

// The two loops below (the ramp filter and the back-projection's row update) are ~10^8
// multiply-adds per image plane, and in the sanitizer build the checks on each of their loads
// and stores were half of the reference worker's CPU, itself the largest CPU user of the asan
// suite (141 of its 769 CPU-seconds, process accounting; perf of ai_results_test: 12 % of all
// samples in BackProject). So they are not instrumented: they are short, their indices are
// bounded by the explicit checks they start with, and the rest of the worker keeps every check.
#if defined(__GNUC__)
#define CTCLOUD_HOT_LOOP_NOT_SANITIZED __attribute__((no_sanitize("address", "undefined"), noinline))
#else
#define CTCLOUD_HOT_LOOP_NOT_SANITIZED
#endif

// Ramp-filters one view's line integrals: q[k] = d * sum_j p[j] h[k - j]. The kernel spans
// 2 * channels - 1 taps, so the convolution is linear (no wrap-around) over the whole detector.
// The Ram-Lak kernel is zero at every even offset but 0, so those taps are skipped (the same
// sum, half the work).
CTCLOUD_HOT_LOOP_NOT_SANITIZED
void FilterView(std::span<const double> p, const std::vector<double>& kernel, bool even_taps_zero, double spacing_mm,
                std::span<float> q) {
  const auto n = static_cast<std::ptrdiff_t>(p.size());
  // Every index below is in range when these hold: k and j in [0, n), centre + k - j in [0, 2n - 2].
  if (n == 0 || kernel.size() != 2 * p.size() - 1 || q.size() != p.size()) std::abort();
  // Raw pointers: span's and vector's operator[] are instrumented and would not be inlined here.
  const double* pp = p.data();
  const double* h = kernel.data();
  float* qp = q.data();
  const std::ptrdiff_t centre = n - 1;
  for (std::ptrdiff_t k = 0; k < n; ++k) {
    double acc = 0;
    if (even_taps_zero) {
      acc = pp[static_cast<std::size_t>(k)] * h[static_cast<std::size_t>(centre)];
      for (std::ptrdiff_t j = (k + 1) % 2; j < n; j += 2) {
        acc += pp[static_cast<std::size_t>(j)] * h[static_cast<std::size_t>(centre + k - j)];
      }
    } else {
      for (std::ptrdiff_t j = 0; j < n; ++j) acc += pp[static_cast<std::size_t>(j)] *
                                                    h[static_cast<std::size_t>(centre + k - j)];
    }
    qp[static_cast<std::size_t>(k)] = static_cast<float>(acc * spacing_mm);
  }
}

// One view's contribution to one image row: out[col] += q at t0 + col * dt_per_column (linear
// interpolation between channels), for the columns in [col_begin, col_end) whose position falls
// on the detector.
CTCLOUD_HOT_LOOP_NOT_SANITIZED
void AccumulateRow(std::span<const float> q, double t0, double dt_per_column, std::uint32_t col_begin,
                   std::uint32_t col_end, std::span<float> out) {
  // i + 1 < q.size() follows from t < q.size() - 1; col < col_end <= out.size().
  if (q.size() < 2 || col_end > out.size()) std::abort();
  const double last_channel = static_cast<double>(q.size() - 1);
  // Raw pointers: span's operator[] is instrumented and would not be inlined here.
  const float* qp = q.data();
  float* op = out.data();
  for (std::uint32_t col = col_begin; col < col_end; ++col) {
    const double t = t0 + col * dt_per_column;
    if (t < 0 || t >= last_channel) continue;
    const auto i = static_cast<std::uint32_t>(t);
    const float frac = static_cast<float>(t - i);
    op[col] += qp[i] + frac * (qp[i + 1] - qp[i]);
  }
}

// A parallel sinogram of one image plane: views x channels line integrals at `angles_deg`.
struct Sinogram {
  std::vector<double> p;
  std::vector<double> angles_deg;
  std::uint32_t views = 0;
  double z_mm = 0;
};

HuImage BackProject(const Sinogram& sino, const ReconInput& input, const std::vector<double>& kernel,
                    const ReconOptions& options) {
  const std::uint32_t channels = input.channels;
  const double d = input.channel_pitch_mm;
  const std::uint32_t n = options.image_size;
  const double fov_mm = channels * d;

  // Filtered projections, views x channels.
  std::vector<float> filtered(std::size_t{sino.views} * channels);
  for (std::uint32_t v = 0; v < sino.views; ++v) {
    FilterView(std::span<const double>(sino.p.data() + std::size_t{v} * channels, channels), kernel,
               options.window == RampWindow::kRamLak, d,
               std::span<float>(filtered.data() + std::size_t{v} * channels, channels));
  }

  HuImage image;
  image.size = n;
  image.pixel_spacing_mm = fov_mm / n;
  image.z_mm = sino.z_mm;
  std::vector<float> mu(std::size_t{n} * n, 0.0f);
  const double dx = image.pixel_spacing_mm;
  const double half_pixels = (n - 1) / 2.0;
  const double centre_channel = (channels - 1) / 2.0;
  // Per image row, the columns whose centres lie inside the field-of-view circle.
  const double fov_radius_sq = (fov_mm / 2) * (fov_mm / 2);
  std::vector<std::pair<std::uint32_t, std::uint32_t>> row_span(n, {0, 0});
  for (std::uint32_t r = 0; r < n; ++r) {
    const double y = (half_pixels - r) * dx;
    const double x_sq = fov_radius_sq - y * y;
    if (x_sq <= 0) continue;
    const double half_cols = std::sqrt(x_sq) / dx;
    const double first = std::ceil(half_pixels - half_cols);
    const double last = std::floor(half_pixels + half_cols);
    row_span[r] = {static_cast<std::uint32_t>(std::max(0.0, first)),
                   static_cast<std::uint32_t>(std::min(static_cast<double>(n), last + 1))};
  }
  for (std::uint32_t v = 0; v < sino.views; ++v) {
    const double theta = sino.angles_deg[v] * std::numbers::pi / 180.0;
    const double cos_t = std::cos(theta);
    const double sin_t = std::sin(theta);
    const float* q = filtered.data() + std::size_t{v} * channels;
    // Detector position (in channels) of a pixel centre: t = (x cos + y sin) / d + centre.
    const double dt_per_column = dx * cos_t / d;
    for (std::uint32_t r = 0; r < n; ++r) {
      const double y = (half_pixels - r) * dx;
      const double x0 = -half_pixels * dx;
      const double t0 = (x0 * cos_t + y * sin_t) / d + centre_channel;
      // Only the columns inside the field-of-view circle are kept (the rest are set to
      // outside_fov_hu below), and inside it every pixel projects onto the detector; the
      // bounds check stays for the circle's rim.
      const auto [col_begin, col_end] = row_span[r];
      AccumulateRow(std::span<const float>(q, channels), t0, dt_per_column, col_begin, col_end,
                    std::span<float>(mu.data() + std::size_t{r} * n, n));
    }
  }

  // pi / K: the views sample [0, pi) (or k times over, or [0, 2 pi) counting each ray twice) uniformly.
  const double scale = std::numbers::pi / sino.views;
  const double mu_w = drivers::sim::kMuWaterPerMm;
  const double radius_sq = (fov_mm / 2) * (fov_mm / 2);
  image.hu.resize(mu.size());
  for (std::uint32_t r = 0; r < n; ++r) {
    for (std::uint32_t col = 0; col < n; ++col) {
      const double x = image.XOfColumn(col);
      const double y = image.YOfRow(r);
      const std::size_t i = std::size_t{r} * n + col;
      image.hu[i] = x * x + y * y > radius_sq
                        ? options.outside_fov_hu
                        : static_cast<float>(1000.0 * (static_cast<double>(mu[i]) * scale - mu_w) / mu_w);
    }
  }
  return image;
}

double LineIntegralOf(const ReconInput& input, std::uint32_t view, std::uint32_t row, std::uint32_t channel) {
  const float s = input.counts[(std::size_t{view} * input.rows + row) * input.channels + channel];
  if (input.samples_are_line_integrals) {
    return input.line_integral_slope * static_cast<double>(s) + input.line_integral_intercept;
  }
  return CountsToLineIntegral(s, input.unattenuated_counts);
}

bool IsHelical(const ReconInput& input) {
  if (input.table_position_mm.size() != input.views) return false;
  for (double z : input.table_position_mm) {
    if (z != input.table_position_mm.front()) return true;
  }
  return false;
}

std::uint32_t ViewsPerRotation(const ReconInput& input) {
  return input.views_per_rotation == 0 ? input.views : std::min(input.views_per_rotation, input.views);
}

double TableAt(const ReconInput& input, std::uint32_t v) {
  return input.table_position_mm.empty() ? 0.0 : input.table_position_mm[v];
}

// The native (parallel or fan) sinogram of image plane `plane`: axial, row `plane` over all
// views (fan: the first rotation); helical, one rotation centred on the plane, each view
// interpolated linearly between the two rows bracketing z (clamped at the outermost rows).
Sinogram NativeSinogram(const ReconInput& input, std::uint32_t plane, const std::vector<double>& helical_planes) {
  const std::uint32_t channels = input.channels;
  Sinogram sino;
  std::uint32_t first = 0;
  std::uint32_t count = input.fan_beam ? ViewsPerRotation(input) : input.views;
  const double row_centre = (input.rows - 1) / 2.0;
  if (helical_planes.empty()) {
    sino.z_mm = TableAt(input, 0) + (plane - row_centre) * input.row_pitch_mm;
  } else {
    sino.z_mm = helical_planes[plane];
    count = ViewsPerRotation(input);
    // The rotation whose middle view's table position is closest to the plane.
    const double z0 = input.table_position_mm.front();
    const double feed_per_view = (input.table_position_mm.back() - z0) / (input.views - 1);
    const double centre_view = (sino.z_mm - z0) / feed_per_view;
    const double start = std::round(centre_view - count / 2.0);
    first = static_cast<std::uint32_t>(std::clamp(start, 0.0, static_cast<double>(input.views - count)));
  }
  sino.views = count;
  sino.p.resize(std::size_t{count} * channels);
  for (std::uint32_t k = 0; k < count; ++k) {
    const std::uint32_t v = first + k;
    sino.angles_deg.push_back(input.gantry_angle_deg[v]);
    double* out = sino.p.data() + std::size_t{k} * channels;
    if (helical_planes.empty()) {
      for (std::uint32_t c = 0; c < channels; ++c) out[c] = LineIntegralOf(input, v, plane, c);
      continue;
    }
    const double f = std::clamp((sino.z_mm - TableAt(input, v)) / input.row_pitch_mm + row_centre, 0.0,
                                static_cast<double>(input.rows - 1));
    const auto r0 = static_cast<std::uint32_t>(f);
    const std::uint32_t r1 = std::min(r0 + 1, input.rows - 1);
    const double w = f - r0;
    for (std::uint32_t c = 0; c < channels; ++c) {
      out[c] = (1.0 - w) * LineIntegralOf(input, v, r0, c) + w * LineIntegralOf(input, v, r1, c);
    }
  }
  return sino;
}

// Fan (beta, gamma) -> parallel (theta = beta - gamma, s = R sin gamma) over 360 degrees: as
// many parallel views as fan views, channels at the isocenter pitch; rays outside the fan get
// p = 0. Bilinear interpolation, periodic in beta.
Sinogram RebinFanToParallel(const Sinogram& fan, const ReconInput& input) {
  const std::uint32_t channels = input.channels;
  const std::uint32_t k_views = fan.views;
  const double r_src = input.source_to_isocenter_mm;
  const double d_gamma = input.channel_pitch_mm / r_src;
  const double centre = (channels - 1) / 2.0;
  const double two_pi = 2.0 * std::numbers::pi;
  const double beta0 = fan.angles_deg.front() * std::numbers::pi / 180.0;
  const double d_beta = two_pi / k_views;
  Sinogram par;
  par.views = k_views;
  par.z_mm = fan.z_mm;
  par.p.assign(std::size_t{k_views} * channels, 0.0);
  for (std::uint32_t k = 0; k < k_views; ++k) {
    const double theta = beta0 + k * d_beta;
    par.angles_deg.push_back(theta * 180.0 / std::numbers::pi);
    for (std::uint32_t j = 0; j < channels; ++j) {
      const double s = (j - centre) * input.channel_pitch_mm;
      if (std::fabs(s) >= r_src) continue;
      const double gamma = std::asin(s / r_src);
      const double fc = gamma / d_gamma + centre;
      if (fc < 0 || fc > channels - 1) continue;
      double fb = (theta + gamma - beta0) / d_beta;
      fb -= std::floor(fb / k_views) * k_views;  // periodic: into [0, K)
      const auto b0 = std::min(static_cast<std::uint32_t>(fb), k_views - 1);
      const std::uint32_t b1 = (b0 + 1) % k_views;
      const double wb = fb - b0;
      const auto c0 = std::min(static_cast<std::uint32_t>(fc), channels - 1);
      const std::uint32_t c1 = std::min(c0 + 1, channels - 1);
      const double wc = fc - c0;
      auto at = [&](std::uint32_t b, std::uint32_t c) { return fan.p[std::size_t{b} * channels + c]; };
      par.p[std::size_t{k} * channels + j] = (1 - wb) * ((1 - wc) * at(b0, c0) + wc * at(b0, c1)) +
                                             wb * ((1 - wc) * at(b1, c0) + wc * at(b1, c1));
    }
  }
  return par;
}

// A parallel sinogram over 360 degrees holds every ray twice: the ray at theta + 180 degrees
// and offset s is the ray at theta and -s, i.e. channel c mirrored to channels - 1 - c (channel
// offsets are symmetric about the axis). Averaging each such pair gives a 180-degree sinogram
// with the same filtered back-projection (filter and back-projection are linear and the ramp
// kernel is symmetric) at half the cost. Odd view counts are left as they are.
Sinogram FoldTo180Degrees(const Sinogram& full, std::uint32_t channels) {
  if (full.views % 2 != 0) return full;
  const std::uint32_t half = full.views / 2;
  Sinogram folded;
  folded.views = half;
  folded.z_mm = full.z_mm;
  folded.angles_deg.assign(full.angles_deg.begin(), full.angles_deg.begin() + half);
  folded.p.resize(std::size_t{half} * channels);
  for (std::uint32_t k = 0; k < half; ++k) {
    const double* a = full.p.data() + std::size_t{k} * channels;
    const double* b = full.p.data() + std::size_t{k + half} * channels;
    double* out = folded.p.data() + std::size_t{k} * channels;
    for (std::uint32_t c = 0; c < channels; ++c) out[c] = 0.5 * (a[c] + b[channels - 1 - c]);
  }
  return folded;
}

}  // namespace

double CountsToLineIntegral(double counts, double unattenuated_counts) {
  return -std::log(std::max(counts, 0.5) / unattenuated_counts);
}

std::vector<double> HelicalPlanes(const ReconInput& input) {
  if (!IsHelical(input) || !(input.row_pitch_mm > 0) || input.views < 2) return {};
  const std::uint32_t k = ViewsPerRotation(input);
  const double z_first = input.table_position_mm[k / 2];
  const double z_last = input.table_position_mm[input.views - 1 - k / 2];
  // A plane is reconstructed where every view of its rotation has rows on both sides of it:
  // |z - table(centre)| <= half the collimation minus half the table travel of a rotation.
  const double travel = std::fabs(input.table_position_mm[k - 1] - input.table_position_mm[0]);
  const double reach = std::max(0.0, (input.rows - 1) / 2.0 * input.row_pitch_mm - travel / 2.0);
  const double lo = std::min(z_first, z_last) - reach;
  const double hi = std::max(z_first, z_last) + reach;
  std::vector<double> planes;
  for (double z = lo; z <= hi + 1e-9 && planes.size() < 4096; z += input.row_pitch_mm) planes.push_back(z);
  return planes;
}

std::vector<double> RampKernel(std::uint32_t len, double spacing_mm, RampWindow window) {
  const auto n_max = static_cast<std::int64_t>(len) - 1;
  std::vector<double> h(static_cast<std::size_t>(2 * n_max + 1), 0.0);
  const double d2 = spacing_mm * spacing_mm;
  const double pi2 = std::numbers::pi * std::numbers::pi;
  for (std::int64_t n = -n_max; n <= n_max; ++n) {
    double value = 0;
    if (window == RampWindow::kRamLak) {
      if (n == 0) {
        value = 1.0 / (4.0 * d2);
      } else if (n % 2 != 0) {
        value = -1.0 / (pi2 * static_cast<double>(n * n) * d2);
      }
    } else {
      value = -2.0 / (pi2 * d2 * (4.0 * static_cast<double>(n * n) - 1.0));
    }
    h[static_cast<std::size_t>(n + n_max)] = value;
  }
  return h;
}

Expected<std::vector<HuImage>> Reconstruct(const ReconInput& input, const ReconOptions& options) {
  if (input.views == 0 || input.rows == 0 || input.channels < 2) {
    return MakeError(ErrorKind::kInvalidInput, "reconstruction needs at least one view, one row and two channels (got " +
                                                   std::to_string(input.views) + " views, " +
                                                   std::to_string(input.rows) + " rows, " +
                                                   std::to_string(input.channels) + " channels)");
  }
  if (input.gantry_angle_deg.size() != input.views) {
    return MakeError(ErrorKind::kInvalidInput, "reconstruction needs one gantry angle per view: " +
                                                   std::to_string(input.gantry_angle_deg.size()) + " angles for " +
                                                   std::to_string(input.views) + " views");
  }
  if (input.counts.size() != std::size_t{input.views} * input.rows * input.channels) {
    return MakeError(ErrorKind::kInvalidInput, "reconstruction input holds " + std::to_string(input.counts.size()) +
                                                   " samples; views x rows x channels is " +
                                                   std::to_string(std::size_t{input.views} * input.rows * input.channels));
  }
  if (!(input.channel_pitch_mm > 0) || !(input.unattenuated_counts > 0)) {
    return MakeError(ErrorKind::kInvalidInput, "reconstruction needs a positive channel pitch and unattenuated counts");
  }
  if (options.image_size < 16 || options.image_size > 4096) {
    return MakeError(ErrorKind::kInvalidInput, "image size " + std::to_string(options.image_size) +
                                                   " is outside 16..4096 pixels");
  }

  if (input.fan_beam && !(input.source_to_isocenter_mm > (input.channels - 1) / 2.0 * input.channel_pitch_mm)) {
    return MakeError(ErrorKind::kInvalidInput, "fan-beam reconstruction needs source_to_isocenter_mm (" +
                                                   std::to_string(input.source_to_isocenter_mm) +
                                                   ") larger than the half-width of the detector at isocenter");
  }
  if (!input.table_position_mm.empty() && input.table_position_mm.size() != input.views) {
    return MakeError(ErrorKind::kInvalidInput, "reconstruction needs one table position per view (or none): " +
                                                   std::to_string(input.table_position_mm.size()) + " for " +
                                                   std::to_string(input.views) + " views");
  }
  const bool helical = IsHelical(input);
  if ((helical || input.fan_beam) && input.views_per_rotation > input.views) {
    return MakeError(ErrorKind::kInvalidInput, "the scan holds " + std::to_string(input.views) +
                                                   " views, less than one rotation (" +
                                                   std::to_string(input.views_per_rotation) + ")");
  }
  if (helical && !(input.row_pitch_mm > 0)) {
    return MakeError(ErrorKind::kInvalidInput, "helical reconstruction needs a positive row pitch");
  }
  const std::vector<double> planes = HelicalPlanes(input);
  if (helical && planes.empty()) {
    return MakeError(ErrorKind::kInvalidInput, "the helical scan covers no plane with a full rotation of data; "
                                               "scan longer or lower the table feed");
  }
  const auto slice_count = static_cast<std::uint32_t>(helical ? planes.size() : input.rows);

  const auto kernel = RampKernel(input.channels, input.channel_pitch_mm, options.window);
  std::vector<HuImage> slices(slice_count);
  std::atomic<std::uint32_t> next_row{0};
  auto work = [&] {
    for (std::uint32_t row = next_row++; row < slice_count; row = next_row++) {
      Sinogram native = NativeSinogram(input, row, planes);
      slices[row] = input.fan_beam
                        ? BackProject(FoldTo180Degrees(RebinFanToParallel(native, input), input.channels), input,
                                      kernel, options)
                        : BackProject(native, input, kernel, options);
    }
  };
  const std::uint32_t threads = std::clamp<std::uint32_t>(options.max_threads, 1, slice_count);
  std::vector<std::thread> pool;
  for (std::uint32_t i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return slices;
}

}  // namespace ctagent::cloud
