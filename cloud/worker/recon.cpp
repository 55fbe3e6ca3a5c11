#include "cloud/worker/recon.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numbers>
#include <string>
#include <thread>

#include "drivers/sim/phantom.hpp"

namespace ctagent::cloud {
namespace {

// Ramp-filters one view's line integrals: q[k] = d * sum_j p[j] h[k - j]. The kernel spans
// 2 * channels - 1 taps, so the convolution is linear (no wrap-around) over the whole detector.
void FilterView(std::span<const double> p, const std::vector<double>& kernel, double spacing_mm,
                std::span<float> q) {
  const auto n = static_cast<std::ptrdiff_t>(p.size());
  const std::ptrdiff_t centre = n - 1;
  for (std::ptrdiff_t k = 0; k < n; ++k) {
    double acc = 0;
    for (std::ptrdiff_t j = 0; j < n; ++j) acc += p[static_cast<std::size_t>(j)] *
                                                  kernel[static_cast<std::size_t>(centre + k - j)];
    q[static_cast<std::size_t>(k)] = static_cast<float>(acc * spacing_mm);
  }
}

HuImage ReconstructRow(const ReconInput& input, std::uint32_t row, const std::vector<double>& kernel,
                       const ReconOptions& options) {
  const std::uint32_t channels = input.channels;
  const double d = input.channel_pitch_mm;
  const std::uint32_t n = options.image_size;
  const double fov_mm = channels * d;

  // Filtered projections of this row, views x channels.
  std::vector<float> filtered(std::size_t{input.views} * channels);
  std::vector<double> p(channels);
  for (std::uint32_t v = 0; v < input.views; ++v) {
    const float* counts = input.counts.data() + (std::size_t{v} * input.rows + row) * channels;
    for (std::uint32_t c = 0; c < channels; ++c) p[c] = CountsToLineIntegral(counts[c], input.unattenuated_counts);
    FilterView(p, kernel, d, std::span<float>(filtered.data() + std::size_t{v} * channels, channels));
  }

  HuImage image;
  image.size = n;
  image.pixel_spacing_mm = fov_mm / n;
  std::vector<float> mu(std::size_t{n} * n, 0.0f);
  const double dx = image.pixel_spacing_mm;
  const double half_pixels = (n - 1) / 2.0;
  const double centre_channel = (channels - 1) / 2.0;
  for (std::uint32_t v = 0; v < input.views; ++v) {
    const double theta = input.gantry_angle_deg[v] * std::numbers::pi / 180.0;
    const double cos_t = std::cos(theta);
    const double sin_t = std::sin(theta);
    const float* q = filtered.data() + std::size_t{v} * channels;
    // Detector position (in channels) of a pixel centre: t = (x cos + y sin) / d + centre.
    const double dt_per_column = dx * cos_t / d;
    for (std::uint32_t r = 0; r < n; ++r) {
      const double y = (half_pixels - r) * dx;
      const double x0 = -half_pixels * dx;
      double t = (x0 * cos_t + y * sin_t) / d + centre_channel;
      float* out = mu.data() + std::size_t{r} * n;
      for (std::uint32_t col = 0; col < n; ++col, t += dt_per_column) {
        if (t < 0 || t >= channels - 1) continue;
        const auto i = static_cast<std::uint32_t>(t);
        const float frac = static_cast<float>(t - i);
        out[col] += q[i] + frac * (q[i + 1] - q[i]);
      }
    }
  }

  // pi / K: the views sample [0, pi) (or k times over) uniformly.
  const double scale = std::numbers::pi / input.views;
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

}  // namespace

double CountsToLineIntegral(double counts, double unattenuated_counts) {
  return -std::log(std::max(counts, 0.5) / unattenuated_counts);
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

  const auto kernel = RampKernel(input.channels, input.channel_pitch_mm, options.window);
  std::vector<HuImage> slices(input.rows);
  std::atomic<std::uint32_t> next_row{0};
  auto work = [&] {
    for (std::uint32_t row = next_row++; row < input.rows; row = next_row++) {
      slices[row] = ReconstructRow(input, row, kernel, options);
    }
  };
  const std::uint32_t threads = std::clamp<std::uint32_t>(options.max_threads, 1, input.rows);
  std::vector<std::thread> pool;
  for (std::uint32_t i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return slices;
}

}  // namespace ctagent::cloud
