// Reconstruction accuracy: analytic projections (disks, and the simulator's chest phantom) are
// turned into noiseless counts, reconstructed, and compared with the known CT numbers.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <numbers>

#include "cloud/worker/recon.hpp"
#include "tests/cloud/roi.hpp"
#include "drivers/sim/phantom.hpp"

namespace {

using ctagent::cloud::testing::RoiMean;

using ctagent::cloud::HuImage;
using ctagent::cloud::ReconInput;
using ctagent::cloud::ReconOptions;
using ctagent::drivers::sim::HuToMu;
using ctagent::drivers::sim::kMuWaterPerMm;

constexpr double kI0 = 60000;

struct Disk {
  double cx, cy, r, mu;  // mu added on top of what lies beneath [1/mm]
};

// Line integral along x cos + y sin = s through a set of disks (same convention as the phantom).
double DisksLineIntegral(const std::vector<Disk>& disks, double theta, double s) {
  double p = 0;
  for (const auto& d : disks) {
    const double offset = s - (d.cx * std::cos(theta) + d.cy * std::sin(theta));
    if (std::abs(offset) < d.r) p += 2 * d.mu * std::sqrt(d.r * d.r - offset * offset);
  }
  return p;
}

// Noiseless counts for `rows` identical slices, 180 degrees in `views` steps, rounded to integers
// as a uint16 detector delivers them.
template <typename LineIntegral>
ReconInput Project(LineIntegral line_integral, std::uint32_t views, std::uint32_t rows, std::uint32_t channels,
                   double pitch_mm) {
  ReconInput input;
  input.views = views;
  input.rows = rows;
  input.channels = channels;
  input.channel_pitch_mm = pitch_mm;
  input.unattenuated_counts = kI0;
  input.counts.resize(std::size_t{views} * rows * channels);
  for (std::uint32_t v = 0; v < views; ++v) {
    const double angle_deg = 180.0 * v / views;
    input.gantry_angle_deg.push_back(angle_deg);
    for (std::uint32_t c = 0; c < channels; ++c) {
      const double s = (c - (channels - 1) / 2.0) * pitch_mm;
      const double counts = std::round(std::min(65535.0, kI0 * std::exp(-line_integral(angle_deg * std::numbers::pi / 180, s))));
      for (std::uint32_t r = 0; r < rows; ++r) {
        input.counts[(std::size_t{v} * rows + r) * channels + c] = static_cast<float>(counts);
      }
    }
  }
  return input;
}


}  // namespace

TEST_CASE("cloud recon: ramp kernel matches Kak and Slaney's discrete form", "[cloud][recon]") {
  const double d = 1.6;
  const auto h = ctagent::cloud::RampKernel(8, d, ctagent::cloud::RampWindow::kRamLak);
  REQUIRE(h.size() == 15);
  const std::size_t c = 7;
  CHECK(h[c] == Approx(1 / (4 * d * d)));
  CHECK(h[c + 1] == Approx(-1 / (std::numbers::pi * std::numbers::pi * d * d)));
  CHECK(h[c - 1] == h[c + 1]);
  CHECK(h[c + 2] == 0.0);
  CHECK(h[c + 3] == Approx(-1 / (9 * std::numbers::pi * std::numbers::pi * d * d)));
  CHECK(ctagent::cloud::CountsToLineIntegral(kI0, kI0) == Approx(0).margin(1e-12));
  CHECK(ctagent::cloud::CountsToLineIntegral(0, kI0) == Approx(-std::log(0.5 / kI0)));
}

TEST_CASE("cloud recon: water disk with a bone insert: CT numbers and orientation", "[cloud][recon]") {
  // Water (0 HU) disk of radius 120 mm; a 1000 HU insert at (+60, +40): right of centre, anterior.
  const std::vector<Disk> disks = {{0, 0, 120, kMuWaterPerMm}, {60, 40, 20, HuToMu(1000) - kMuWaterPerMm}};
  auto input = Project([&](double t, double s) { return DisksLineIntegral(disks, t, s); }, 360, 1, 256, 1.6);
  ReconOptions options;
  options.image_size = 256;
  for (auto window : {ctagent::cloud::RampWindow::kRamLak, ctagent::cloud::RampWindow::kSheppLogan}) {
    options.window = window;
    auto slices = ctagent::cloud::Reconstruct(input, options);
    REQUIRE(slices);
    REQUIRE(slices->size() == 1);
    const HuImage& image = slices->front();
    REQUIRE(image.size == 256);
    CHECK(image.pixel_spacing_mm == Approx(1.6));
    const double water = RoiMean(image, -40, -40, 15);
    const double bone = RoiMean(image, 60, 40, 10);
    const double air = RoiMean(image, 0, 160, 10);
    INFO("window " << static_cast<int>(window) << ": water " << water << " bone " << bone << " air " << air);
    CHECK(std::abs(water - 0) < 15);
    CHECK(std::abs(bone - 1000) < 25);
    CHECK(std::abs(air + 1000) < 25);
    // Orientation: the insert is in the upper right quadrant of the image, not mirrored.
    const auto row_of = [&](double y) { return static_cast<std::uint32_t>(std::lround((image.size - 1) / 2.0 - y / 1.6)); };
    const auto col_of = [&](double x) { return static_cast<std::uint32_t>(std::lround(x / 1.6 + (image.size - 1) / 2.0)); };
    CHECK(image.At(row_of(40), col_of(60)) > 700);
    CHECK(std::abs(image.At(row_of(-40), col_of(60))) < 100);
    CHECK(std::abs(image.At(row_of(40), col_of(-60))) < 100);
    // Outside the circle every view saw.
    CHECK(image.At(0, 0) == -1000.0f);
  }
}

TEST_CASE("cloud recon: reconstruction refuses inconsistent input", "[cloud][recon]") {
  ReconInput input;
  input.views = 4;
  input.rows = 1;
  input.channels = 8;
  input.channel_pitch_mm = 1;
  input.unattenuated_counts = kI0;
  input.gantry_angle_deg = {0, 45, 90};  // one short
  input.counts.assign(32, 100);
  auto result = ctagent::cloud::Reconstruct(input, {});
  REQUIRE_FALSE(result);
  CHECK(result.error().kind() == ctagent::ErrorKind::kInvalidInput);
  CHECK_THAT(result.error().message(), Catch::Contains("angle"));
}
