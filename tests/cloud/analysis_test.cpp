// The reference lung analysis (cloud/worker/analysis.hpp) against known truth: a volume painted
// from the 3-D chest phantom's ground truth (no reconstruction: fast, exact), and a simulated
// low-dose helical scan of lesions drawn from a seed, reconstructed in process.
// Tolerances (docs/reference-imaging-center.md, "Lung analysis"):
//   painted volume: lesion volume within 20 %, centroid within 2 mm in-plane and 3 mm in z, lung
//     volume within 3 % of the ellipsoid slab the volume covers;
//   reconstructed at 1/5 dose: every drawn lesion found (centroid within max(radius, 5 mm)), no
//     other finding, involvement per lung within 0.1 percentage points + 25 % of the truth.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include <nlohmann/json.hpp>

#include "cloud/worker/analysis.hpp"
#include "cloud/worker/recon.hpp"
#include "drivers/detector.hpp"
#include "drivers/sim/lesion_draw.hpp"
#include "drivers/sim/phantom.hpp"
#include "drivers/sim/sim_detector.hpp"

namespace {

using ctagent::cloud::AnalysisOptions;
using ctagent::cloud::AnalysisResult;
using ctagent::cloud::Analyze;
using ctagent::cloud::HuImage;
using ctagent::cloud::LesionFinding;
using ctagent::cloud::LesionType;
using ctagent::cloud::Lung;
using ctagent::cloud::ReconInput;
using ctagent::cloud::StudyCategory;
using ctagent::drivers::ScanProtocol;
using ctagent::drivers::sim::ChestPhantom3d;
using ctagent::drivers::sim::Lesion;

double SphereMl(double diameter_mm) { return std::numbers::pi / 6.0 * std::pow(diameter_mm, 3) / 1000.0; }

// Volume [mL] of one phantom lung (ellipsoid, semi-axes a, b, c) between planes z0 and z1.
double LungSlabMl(double z0, double z1) {
  const double a = 50, b = 75, c = 150;
  auto primitive = [&](double z) { return z - z * z * z / (3 * c * c); };
  return std::numbers::pi * a * b * (primitive(z1) - primitive(z0)) / 1000.0;
}

// The phantom's ground truth sampled at voxel centres: `size` x `size` pixels of `pixel_mm`,
// slices every `spacing_mm` from z0 to z1.
std::vector<HuImage> Painted(const ChestPhantom3d& chest, std::uint32_t size, double pixel_mm, double z0, double z1,
                             double spacing_mm) {
  std::vector<HuImage> slices;
  for (double z = z0; z <= z1 + 1e-9 && slices.size() < 1000; z += spacing_mm) {
    HuImage im;
    im.size = size;
    im.pixel_spacing_mm = pixel_mm;
    im.z_mm = z;
    im.hu.resize(std::size_t{size} * size);
    for (std::uint32_t r = 0; r < size; ++r) {
      for (std::uint32_t c = 0; c < size; ++c) {
        im.hu[std::size_t{r} * size + c] = static_cast<float>(chest.HuAt(im.XOfColumn(c), im.YOfRow(r), z));
      }
    }
    slices.push_back(std::move(im));
  }
  return slices;
}

// The finding nearest to `truth` within max(radius, 5 mm), or null.
const LesionFinding* Match(const AnalysisResult& r, const Lesion& truth) {
  const LesionFinding* best = nullptr;
  double best_d = std::max(truth.diameter_mm / 2, 5.0);
  for (const LesionFinding& f : r.lesions) {
    const double d = std::hypot(f.x_mm - truth.x_mm, f.y_mm - truth.y_mm, f.z_mm - truth.z_mm);
    if (d <= best_d) {
      best_d = d;
      best = &f;
    }
  }
  return best;
}

std::uint64_t VoxelsLabelled(const ctagent::cloud::LabelVolume& v, std::uint8_t label) {
  std::uint64_t n = 0;
  for (std::uint8_t l : v.labels) n += l == label ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("analysis: a painted chest with a ground-glass and a consolidation lesion", "[cloud][analysis]") {
  const std::vector<Lesion> truth = {
      {Lesion::Kind::kGroundGlass, -65, 10, 0, 16, -650},
      {Lesion::Kind::kConsolidation, 70, -20, 30, 20, 35},
  };
  const double pixel = 3.0;
  const double spacing = 5.0;
  const auto slices = Painted(ChestPhantom3d(truth), 128, pixel, -100, 100, spacing);
  const AnalysisResult r = Analyze(slices);
  INFO(r.failure_reason);
  REQUIRE(r.category != StudyCategory::kFailed);
  REQUIRE(r.lesions.size() == 2);
  for (const Lesion& t : truth) {
    const LesionFinding* f = Match(r, t);
    REQUIRE(f != nullptr);
    CHECK(f->type == (t.kind == Lesion::Kind::kGroundGlass ? LesionType::kGroundGlass : LesionType::kConsolidation));
    CHECK(f->lung == (t.x_mm < 0 ? Lung::kRight : Lung::kLeft));
    CHECK(f->volume_ml == Approx(SphereMl(t.diameter_mm)).epsilon(0.2));
    CHECK(std::hypot(f->x_mm - t.x_mm, f->y_mm - t.y_mm) < 2.0);
    CHECK(std::fabs(f->z_mm - t.z_mm) < 3.0);
    CHECK(f->mean_hu == Approx(t.hu).margin(60));
    CHECK(f->max_diameter_mm == Approx(t.diameter_mm).margin(2 * pixel));
    CHECK(slices[f->first_slice].z_mm >= t.z_mm - t.diameter_mm / 2 - spacing);
    CHECK(slices[f->last_slice].z_mm <= t.z_mm + t.diameter_mm / 2 + spacing);
    // The lesion mask marks exactly the voxels the volume counts.
    const double voxel_ml = pixel * pixel * spacing / 1000.0;
    CHECK(static_cast<double>(VoxelsLabelled(r.lesion_mask, static_cast<std::uint8_t>(f->label))) * voxel_ml ==
          Approx(f->volume_ml));
  }
  // Lungs: the ellipsoid slab this volume covers (slices are 5 mm thick: +-2.5 mm beyond the ends).
  const double slab = LungSlabMl(-102.5, 102.5);
  for (const auto& lung : r.lungs) {
    INFO("lung " << static_cast<int>(lung.lung));
    CHECK(lung.volume_ml == Approx(slab).epsilon(0.03));
    CHECK(lung.involvement_percent == Approx(100.0 * lung.lesion_volume_ml / lung.volume_ml));
    std::uint64_t counted = 0;
    for (std::uint64_t n : lung.histogram) counted += n;
    CHECK(counted == VoxelsLabelled(r.lung_mask, lung.lung == Lung::kRight ? 1 : 2));
    // Aerated lung fills the -850 HU bin; the lesions fill theirs.
    CHECK(lung.histogram[(-850 - ctagent::cloud::kHistogramMinHu) / ctagent::cloud::kHistogramBinHu] > counted / 2);
  }
  CHECK(r.lungs[0].lesion_volume_ml == Approx(r.lesions[r.lesions[0].lung == Lung::kRight ? 0 : 1].volume_ml));
  CHECK(r.lungs[0].histogram[(-650 - ctagent::cloud::kHistogramMinHu) / ctagent::cloud::kHistogramBinHu] > 0);
  CHECK(r.lungs[1].histogram[(35 - ctagent::cloud::kHistogramMinHu) / ctagent::cloud::kHistogramBinHu] > 0);
  // 20 mm of consolidation = 4.2 mL: over the 1 mL rule.
  CHECK(r.category == StudyCategory::kHighRisk);
  CHECK(r.category_rule.find("1 mL") != std::string::npos);
  CHECK(r.lung_mask.slices == slices.size());
  CHECK(r.lung_mask.size == 128);
}

TEST_CASE("analysis: a painted chest without lesions is normal, with its lungs found", "[cloud][analysis]") {
  const auto slices = Painted(ChestPhantom3d(), 128, 3.0, -100, 100, 5.0);
  const AnalysisResult r = Analyze(slices);
  INFO(r.failure_reason);
  CHECK(r.category == StudyCategory::kNormal);
  CHECK(r.lesions.empty());
  CHECK(r.lungs[0].volume_ml == Approx(LungSlabMl(-102.5, 102.5)).epsilon(0.03));
  CHECK(r.lungs[1].volume_ml == Approx(LungSlabMl(-102.5, 102.5)).epsilon(0.03));
  CHECK(r.lungs[0].involvement_percent == 0);
  // One small lesion under the high-risk size: listed, and the study stays normal.
  const auto small = Painted(ChestPhantom3d({{Lesion::Kind::kGroundGlass, 60, 0, -20, 10, -650}}), 128, 3.0, -100,
                             100, 5.0);
  const AnalysisResult s = Analyze(small);
  REQUIRE(s.lesions.size() == 1);
  CHECK(s.lesions[0].lung == Lung::kLeft);
  CHECK(s.category == StudyCategory::kNormal);
}

TEST_CASE("analysis: unusable volumes fail with a reason", "[cloud][analysis]") {
  const ChestPhantom3d chest;
  SECTION("too short along z") {
    const AnalysisResult r = Analyze(Painted(chest, 64, 6.0, -10, 10, 5.0));
    CHECK(r.category == StudyCategory::kFailed);
    CHECK(r.failure_reason.find("covers 25 mm") != std::string::npos);
    CHECK(r.lesions.empty());
  }
  SECTION("no lungs: a volume of soft tissue") {
    auto slices = Painted(chest, 64, 6.0, -100, 100, 5.0);
    for (HuImage& im : slices) std::fill(im.hu.begin(), im.hu.end(), 40.0f);
    const AnalysisResult r = Analyze(slices);
    CHECK(r.category == StudyCategory::kFailed);
    CHECK(r.failure_reason.find("no lungs found") != std::string::npos);
  }
  SECTION("one lung only") {
    auto slices = Painted(chest, 64, 6.0, -100, 100, 5.0);
    for (HuImage& im : slices) {
      for (std::uint32_t r = 0; r < im.size; ++r) {
        for (std::uint32_t c = 0; c < im.size; ++c) {
          if (im.XOfColumn(c) > 0 && im.hu[std::size_t{r} * im.size + c] < -500) im.hu[std::size_t{r} * im.size + c] = 40;
        }
      }
    }
    const AnalysisResult r = Analyze(slices);
    CHECK(r.category == StudyCategory::kFailed);
    CHECK(r.failure_reason.find("one lung only") != std::string::npos);
  }
  SECTION("slices out of order or of mixed sizes") {
    auto slices = Painted(chest, 64, 6.0, -100, 100, 5.0);
    std::swap(slices[3], slices[4]);
    CHECK(Analyze(slices).failure_reason.find("ascending z") != std::string::npos);
    std::swap(slices[3], slices[4]);
    slices[5].size = 32;
    slices[5].hu.resize(32 * 32);
    CHECK(Analyze(slices).failure_reason.find("slice 5") != std::string::npos);
    CHECK(Analyze({}).category == StudyCategory::kFailed);
  }
}

namespace {

// A short helical scan of the low-dose chest protocol's geometry (8 rows of 5 mm, 30 mm per
// rotation) over z -62.5 .. 62.5 mm, fewer channels and views so it simulates in seconds in a
// debug build: 256 channels of 1.5 mm (384 mm field), 480 views per rotation, 5 rotations.
ScanProtocol ShortChestProtocol(std::uint64_t seed, double dose) {
  ScanProtocol p;
  p.geometry = ctagent::drivers::GeometryKind::kFan;
  p.views_per_rotation = 480;
  p.rotations = 5;
  p.rows = 8;
  p.row_pitch_mm = 5;
  p.channels = 256;
  p.channel_pitch_mm = 1.5;
  p.table_start_mm = -75;
  p.table_speed_mm_per_rotation = 30;
  p.dose_fraction = dose;
  p.seed = seed;
  return p;
}

// Draw parameters for the short scan: lesion centres within |z| <= 25 mm, 10 .. 24 mm across.
const nlohmann::json kDrawOptions = {{"z_min_mm", -25}, {"z_max_mm", 25}, {"min_diameter_mm", 10}, {"max_diameter_mm", 24}};

ctagent::drivers::sim::LesionDrawOptions DrawOptions() {
  ctagent::drivers::sim::LesionDrawOptions o;
  o.z_min_mm = -25;
  o.z_max_mm = 25;
  o.min_diameter_mm = 10;
  o.max_diameter_mm = 24;
  return o;
}

std::vector<HuImage> ScanAndReconstruct(const ScanProtocol& p) {
  auto sim = ctagent::drivers::sim::SimDetector::Create({{"lesions", kDrawOptions}});
  REQUIRE(sim);
  REQUIRE((*sim)->Arm(p));
  ReconInput in;
  in.rows = p.rows;
  in.channels = p.channels;
  in.channel_pitch_mm = p.channel_pitch_mm;
  in.unattenuated_counts = p.unattenuated_counts * p.dose_fraction;
  in.fan_beam = true;
  in.source_to_isocenter_mm = p.source_to_isocenter_mm;
  in.views_per_rotation = p.views_per_rotation;
  in.row_pitch_mm = p.row_pitch_mm;
  in.counts.reserve(p.TotalViews() * p.rows * p.channels);
  for (std::uint64_t i = 0; i <= p.TotalViews(); ++i) {  // bounded: one more than expected
    auto v = (*sim)->NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    in.gantry_angle_deg.push_back((**v).gantry_angle_deg);
    in.table_position_mm.push_back((**v).table_position_mm);
    const auto& samples = (**v).samples;
    for (std::size_t k = 0; k < samples.size(); k += 2) {
      std::uint16_t s = 0;
      std::memcpy(&s, samples.data() + k, 2);
      in.counts.push_back(static_cast<float>(s));
    }
  }
  in.views = static_cast<std::uint32_t>(in.gantry_angle_deg.size());
  REQUIRE(in.views == p.TotalViews());
  ctagent::cloud::ReconOptions options;
  options.image_size = 256;
  auto slices = ctagent::cloud::Reconstruct(in, options);
  REQUIRE(slices);
  return std::move(*slices);
}

}  // namespace

TEST_CASE("analysis: a simulated scan at 1/5 dose finds the lesions drawn from its seed", "[cloud][analysis][sim]") {
  // The first seed whose draw has at least two lesions (deterministic: the draw is SimRng's).
  std::uint64_t seed = 0;
  for (std::uint64_t s = 1; s <= 100 && seed == 0; ++s) {
    if (ctagent::drivers::sim::DrawLesions(s, DrawOptions()).size() >= 2) seed = s;
  }
  REQUIRE(seed != 0);
  const auto truth = ctagent::drivers::sim::DrawLesions(seed, DrawOptions());
  const auto slices = ScanAndReconstruct(ShortChestProtocol(seed, 0.2));
  REQUIRE(slices.size() == 26);
  const AnalysisResult r = Analyze(slices);
  INFO("seed " << seed << ": " << r.failure_reason);
  REQUIRE(r.category != StudyCategory::kFailed);
  const AnalysisOptions limits;
  std::size_t above_limit = 0;
  double truth_ml[2] = {0, 0};
  for (const Lesion& t : truth) {
    INFO("truth lesion " << t.diameter_mm << " mm at " << t.x_mm << ", " << t.y_mm << ", " << t.z_mm);
    truth_ml[t.x_mm < 0 ? 0 : 1] += SphereMl(t.diameter_mm);
    if (SphereMl(t.diameter_mm) < limits.min_lesion_ml) continue;
    ++above_limit;
    const LesionFinding* f = Match(r, t);
    REQUIRE(f != nullptr);
    CHECK(f->type == (t.kind == Lesion::Kind::kGroundGlass ? LesionType::kGroundGlass : LesionType::kConsolidation));
    CHECK(f->lung == (t.x_mm < 0 ? Lung::kRight : Lung::kLeft));
  }
  CHECK(r.lesions.size() == above_limit);
  const double slab = LungSlabMl(-65, 65);
  for (int side = 0; side < 2; ++side) {
    const double expected = 100.0 * truth_ml[side] / slab;
    INFO("lung " << side << ": truth involvement " << expected << " %");
    CHECK(r.lungs[static_cast<std::size_t>(side)].involvement_percent == Approx(expected).margin(0.1 + 0.25 * expected));
    CHECK(r.lungs[static_cast<std::size_t>(side)].volume_ml == Approx(slab).epsilon(0.05));
  }
}

TEST_CASE("analysis: a simulated scan of a lesion-free seed at 1/5 dose is normal", "[cloud][analysis][sim]") {
  std::uint64_t seed = 0;
  for (std::uint64_t s = 1; s <= 100 && seed == 0; ++s) {
    if (ctagent::drivers::sim::DrawLesions(s, DrawOptions()).empty()) seed = s;
  }
  REQUIRE(seed != 0);
  const AnalysisResult r = Analyze(ScanAndReconstruct(ShortChestProtocol(seed, 0.2)));
  INFO("seed " << seed << ": " << r.failure_reason);
  CHECK(r.category == StudyCategory::kNormal);
  CHECK(r.lesions.empty());
  CHECK(r.lungs[0].involvement_percent == 0);
  CHECK(r.lungs[1].involvement_percent == 0);
}
