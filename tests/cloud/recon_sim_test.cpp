// The simulator reconstructed by the reference imaging center's FBP, in process: CT numbers of
// lung and soft tissue, noise against dose, fan beam (rebinned) and helical (z-interpolated)
// with lesions of the 3-D chest.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cloud/worker/recon.hpp"
#include "drivers/detector.hpp"
#include "drivers/sim/phantom.hpp"
#include "drivers/sim/sim_detector.hpp"
#include "tests/cloud/roi.hpp"

namespace {

using ctagent::cloud::HuImage;
using ctagent::cloud::ReconInput;
using ctagent::cloud::ReconOptions;
using ctagent::cloud::testing::RoiMean;
using ctagent::drivers::GeometryKind;
using ctagent::drivers::SampleEncoding;
using ctagent::drivers::ScanProtocol;
using ctagent::drivers::View;

// Acquires every view of `p` from a sim detector with `options` and packs them for Reconstruct
// the way the worker does (samples as floats, angle and table position per view).
ReconInput Acquire(const ScanProtocol& p, const nlohmann::json& options = nlohmann::json::object()) {
  auto sim = ctagent::drivers::sim::SimDetector::Create(options);
  REQUIRE(sim);
  REQUIRE((*sim)->Arm(p));
  ReconInput in;
  in.rows = p.rows;
  in.channels = p.channels;
  in.channel_pitch_mm = p.channel_pitch_mm;
  in.unattenuated_counts = p.unattenuated_counts * p.dose_fraction;
  in.fan_beam = p.geometry == GeometryKind::kFan;
  in.source_to_isocenter_mm = p.source_to_isocenter_mm;
  in.views_per_rotation = p.views_per_rotation;
  in.row_pitch_mm = p.row_pitch_mm;
  in.samples_are_line_integrals = p.sample_encoding == SampleEncoding::kLineIntegral;
  in.line_integral_slope = p.line_integral_slope;
  in.line_integral_intercept = p.line_integral_intercept;
  for (std::uint64_t i = 0; i <= p.TotalViews(); ++i) {  // bounded: one more than expected
    auto v = (*sim)->NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    const View& view = **v;
    in.gantry_angle_deg.push_back(view.gantry_angle_deg);
    in.table_position_mm.push_back(view.table_position_mm);
    for (std::size_t k = 0; k < view.samples.size(); k += 2) {
      std::uint16_t s = 0;
      std::memcpy(&s, view.samples.data() + k, 2);
      in.counts.push_back(static_cast<float>(s));
    }
  }
  in.views = static_cast<std::uint32_t>(in.gantry_angle_deg.size());
  REQUIRE(in.views == p.TotalViews());
  return in;
}

std::vector<HuImage> Recon(const ReconInput& in, std::uint32_t size) {
  ReconOptions options;
  options.image_size = size;
  auto slices = ctagent::cloud::Reconstruct(in, options);
  REQUIRE(slices);
  return std::move(*slices);
}

struct Region {
  const char* name;
  double x, y, r;
};

// Soft tissue away from edges: the anterior chest wall and both lateral walls (the lateral ROI
// of the chest phantom and its mirror image).
const std::vector<Region>& SoftTissueRegions() {
  static const std::vector<Region> kRegions = {
      {"anterior", 0.0, 90.0, 10.0}, {"right_lateral", -135.0, -40.0, 8.0}, {"left_lateral", 135.0, -40.0, 8.0}};
  return kRegions;
}

// Noise SD pooled over the soft-tissue regions of every slice, from the difference of two
// reconstructions with different seeds: the structure cancels exactly, the two independent
// noise fields add, so SD(a - b) / sqrt(2) is the noise of one image.
double PooledNoiseSd(const std::vector<HuImage>& a, const std::vector<HuImage>& b) {
  REQUIRE(a.size() == b.size());
  double sum_sq = 0;
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t s = 0; s < a.size(); ++s) {
    const HuImage& ia = a[s];
    const HuImage& ib = b[s];
    for (const Region& region : SoftTissueRegions()) {
      for (std::uint32_t row = 0; row < ia.size; ++row) {
        for (std::uint32_t col = 0; col < ia.size; ++col) {
          const double dx = ia.XOfColumn(col) - region.x;
          const double dy = ia.YOfRow(row) - region.y;
          if (dx * dx + dy * dy > region.r * region.r) continue;
          const double d = static_cast<double>(ia.At(row, col)) - static_cast<double>(ib.At(row, col));
          sum += d;
          sum_sq += d * d;
          ++n;
        }
      }
    }
  }
  REQUIRE(n > 100);
  const double mean = sum / static_cast<double>(n);
  return std::sqrt((sum_sq / static_cast<double>(n) - mean * mean) / 2.0);
}

ScanProtocol ParallelProtocol(double dose, std::uint64_t seed) {
  ScanProtocol p;  // parallel beam, the demo's shape: 360 views over 180 degrees, 256 x 1.6 mm
  p.views_per_rotation = 360;
  p.rows = 4;
  p.channels = 256;
  p.channel_pitch_mm = 1.6;
  p.dose_fraction = dose;
  p.seed = seed;
  return p;
}

// A small fan-beam protocol (the default distances; fewer, wider channels than the default
// scanner so it reconstructs in seconds): 320 channels of 1.2 mm at isocenter = 384 mm FOV.
ScanProtocol FanProtocol() {
  ScanProtocol p;
  p.geometry = GeometryKind::kFan;
  p.views_per_rotation = 720;
  p.rows = 2;
  p.channels = 320;
  p.channel_pitch_mm = 1.2;
  p.row_pitch_mm = 1.0;
  p.seed = 7;
  return p;
}

}  // namespace

TEST_CASE("cloud recon: sim parallel beam: lung -850 HU and soft tissue 40 HU, noise x sqrt(10) at dose 1/10",
          "[cloud][recon][sim]") {
  // Tolerances: ROI means within 25 HU at dose 1 and within 40 HU at dose 1/10 (photon
  // starvation through the widest chord biases the lateral walls slightly at low dose); noise
  // ratio SD(1/10) / SD(1) within 3.16 +-15 %. Same slices, seeds 1/2 at each dose.
  const auto full_a = Recon(Acquire(ParallelProtocol(1.0, 1)), 512);
  const auto full_b = Recon(Acquire(ParallelProtocol(1.0, 2)), 512);
  const auto low_a = Recon(Acquire(ParallelProtocol(0.1, 1)), 512);
  const auto low_b = Recon(Acquire(ParallelProtocol(0.1, 2)), 512);
  REQUIRE(full_a.size() == 4);

  for (const auto* images : {&full_a, &low_a}) {
    const double tolerance = images == &full_a ? 25.0 : 40.0;
    for (const HuImage& image : *images) {
      const double lung = RoiMean(image, 65.0, 10.0, 15.0);
      const double lung_right = RoiMean(image, -65.0, 10.0, 15.0);
      INFO("dose " << (images == &full_a ? "1" : "1/10") << ": lung " << lung << " / " << lung_right << " HU");
      CHECK(std::abs(lung + 850.0) < tolerance);
      CHECK(std::abs(lung_right + 850.0) < tolerance);
      for (const Region& region : SoftTissueRegions()) {
        const double soft = RoiMean(image, region.x, region.y, region.r);
        INFO("soft tissue " << region.name << ": " << soft << " HU");
        CHECK(std::abs(soft - 40.0) < tolerance);
      }
    }
  }

  const double sd_full = PooledNoiseSd(full_a, full_b);
  const double sd_low = PooledNoiseSd(low_a, low_b);
  const double ratio = sd_low / sd_full;
  INFO("noise SD " << sd_full << " HU at dose 1, " << sd_low << " HU at dose 1/10, ratio " << ratio);
  CHECK(sd_full > 1.0);  // there is noise to measure
  CHECK(ratio == Approx(std::sqrt(10.0)).epsilon(0.15));
  WARN("soft-tissue noise: " << sd_full << " HU (dose 1), " << sd_low << " HU (dose 1/10), ratio " << ratio
                             << " (sqrt(10) = 3.162)");
}

TEST_CASE("cloud recon: sim fan beam, axial: rebinned FBP gives the chest's CT numbers and a ground-glass lesion",
          "[cloud][recon][sim][fan]") {
  // Tolerance: every ROI of the chest within 25 HU; the lesion (20 mm sphere at z = 0, -650 HU,
  // ROI of 5 mm radius at its centre) within 40 HU.
  const nlohmann::json options = {
      {"lesions", {{{"kind", "ground_glass"}, {"x_mm", -60.0}, {"y_mm", 30.0}, {"z_mm", 0.0}, {"diameter_mm", 20.0}}}}};
  const auto slices = Recon(Acquire(FanProtocol(), options), 256);
  REQUIRE(slices.size() == 2);
  for (const HuImage& image : slices) {
    CHECK(std::abs(image.z_mm) == Approx(0.5));
    for (const auto& roi : ctagent::drivers::sim::ChestPhantomRois()) {
      const double mean = RoiMean(image, roi.center_x_mm, roi.center_y_mm, roi.radius_mm);
      INFO("ROI " << roi.name << ": " << mean << " HU, expected " << roi.expected_hu);
      CHECK(std::abs(mean - roi.expected_hu) < 25);
    }
    const double lesion = RoiMean(image, -60.0, 30.0, 5.0);
    INFO("ground-glass lesion: " << lesion << " HU");
    CHECK(std::abs(lesion + 650.0) < 40);
    // The mediastinum (50 HU) lies between the lungs.
    CHECK(std::abs(RoiMean(image, 0.0, 5.0, 5.0) - 50.0) < 25);
  }
}

TEST_CASE("cloud recon: sim fan beam, helical: z-interpolated planes show a consolidation where it lies",
          "[cloud][recon][sim][fan][helical]") {
  // 8 rows x 2 mm, table feed 8 mm per rotation (pitch 0.5), 3 rotations: planes 2 mm apart.
  // A 16 mm consolidation (35 HU) sits at z = 6 mm in the left lung. Tolerance: lesion and
  // lung within 40 HU in the plane through the lesion's centre; lung (no lesion) 30 mm away.
  ScanProtocol p = FanProtocol();
  p.views_per_rotation = 360;
  p.rows = 8;
  p.row_pitch_mm = 2.0;
  p.rotations = 3;
  p.table_start_mm = -8.0;
  p.table_speed_mm_per_rotation = 8.0;
  const nlohmann::json options = {
      {"lesions", {{{"kind", "consolidation"}, {"x_mm", 60.0}, {"y_mm", 20.0}, {"z_mm", 6.0}, {"diameter_mm", 16.0}}}}};
  const ReconInput in = Acquire(p, options);
  const auto planes = ctagent::cloud::HelicalPlanes(in);
  REQUIRE(planes.size() >= 5);
  const auto slices = Recon(in, 256);
  REQUIRE(slices.size() == planes.size());
  const HuImage* through = nullptr;
  const HuImage* away = nullptr;
  for (const HuImage& image : slices) {
    if (std::abs(image.z_mm - 6.0) < 1.01) through = &image;
    if (std::abs(image.z_mm - 6.0) > 11.0) away = &image;
  }
  REQUIRE(through != nullptr);
  REQUIRE(away != nullptr);
  const double lesion = RoiMean(*through, 60.0, 20.0, 4.0);
  const double lung_other_side = RoiMean(*through, -65.0, 10.0, 15.0);
  const double where_lesion_is_not = RoiMean(*away, 60.0, 20.0, 4.0);
  INFO("plane z " << through->z_mm << ": lesion " << lesion << " HU, right lung " << lung_other_side
                  << " HU; plane z " << away->z_mm << ": " << where_lesion_is_not << " HU");
  CHECK(std::abs(lesion - 35.0) < 40);
  CHECK(std::abs(lung_other_side + 850.0) < 40);
  CHECK(std::abs(where_lesion_is_not + 850.0) < 40);
  CHECK(std::abs(RoiMean(*through, 0.0, 90.0, 10.0) - 40.0) < 30);
}

TEST_CASE("cloud recon: sim line-integral samples reconstruct like counts", "[cloud][recon][sim]") {
  ScanProtocol p = ParallelProtocol(1.0, 3);
  p.rows = 1;
  p.sample_encoding = SampleEncoding::kLineIntegral;
  const auto slices = Recon(Acquire(p), 256);
  REQUIRE(slices.size() == 1);
  for (const auto& roi : ctagent::drivers::sim::ChestPhantomRois()) {
    const double mean = RoiMean(slices[0], roi.center_x_mm, roi.center_y_mm, roi.radius_mm);
    INFO("ROI " << roi.name << ": " << mean << " HU");
    CHECK(std::abs(mean - roi.expected_hu) < 25);
  }
}

TEST_CASE("cloud recon: the default 16-slice fan protocol (helical, 2 rotations) gives 16 planes of the chest",
          "[cloud][recon][sim][fan][helical]") {
  // The agent's default scan (config/config.hpp) is this protocol: 16 x 896 channels, 1160
  // views per rotation, pitch 0.9375, table -11.25 .. +11.25 mm. Planes 0.75 mm apart over the
  // z range every view of a centred rotation covers: 16 around z = 0. Tolerance: every ROI of
  // the chest within 25 HU in every plane (the central slab has no ribs, |z| < 15 mm), at
  // 256 x 256.
  const ScanProtocol p = ctagent::drivers::sim::SixteenSliceFanProtocol();
  const auto acquire_start = std::chrono::steady_clock::now();
  const ReconInput in = Acquire(p);
  const auto recon_start = std::chrono::steady_clock::now();
  const auto slices = Recon(in, 256);  // 256 keeps it quick under sanitizers; the e2e test runs 512
  const auto end = std::chrono::steady_clock::now();
  REQUIRE(slices.size() == 16);
  for (const HuImage& image : slices) {
    CHECK(std::abs(image.z_mm) < 6.0);
    for (const auto& roi : ctagent::drivers::sim::ChestPhantomRois()) {
      const double mean = RoiMean(image, roi.center_x_mm, roi.center_y_mm, roi.radius_mm);
      INFO("plane z " << image.z_mm << " ROI " << roi.name << ": " << mean << " HU, expected " << roi.expected_hu);
      CHECK(std::abs(mean - roi.expected_hu) < 25);
    }
  }
  WARN("16-slice fan, 2 rotations: sim " << std::chrono::duration<double>(recon_start - acquire_start).count()
                                         << " s, recon of 16 planes at 256 x 256 "
                                         << std::chrono::duration<double>(end - recon_start).count() << " s");
}
