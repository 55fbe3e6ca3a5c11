#include "drivers/sim/lesion_draw.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "drivers/sim/sim_detector.hpp"

namespace ctagent::drivers::sim {

namespace {

constexpr double kLungHu = -850.0;
constexpr int kSphereCheckPoints = 256;
// Mixed into the seed so the lesion stream differs from the noise streams of the same seed
// (those start from SplitMix64(seed)); the bytes spell "lesions".
constexpr std::uint64_t kLesionStreamKey = 0x6c6573696f6e73ull;

struct Box {
  double lo[3];
  double hi[3];
};

// The bounding boxes of the phantom's two lungs, read from its solids so they follow the phantom.
std::vector<Box> LungBoxes(const ChestPhantom3d& chest) {
  std::vector<Box> boxes;
  for (const Solid& s : chest.solids()) {
    if (s.name != "right_lung" && s.name != "left_lung") continue;
    boxes.push_back({{s.center_x_mm - s.semi_x_mm, s.center_y_mm - s.semi_y_mm, s.center_z_mm - s.semi_z_mm},
                     {s.center_x_mm + s.semi_x_mm, s.center_y_mm + s.semi_y_mm, s.center_z_mm + s.semi_z_mm}});
  }
  return boxes;
}

}  // namespace

bool SphereInsideLung(const ChestPhantom3d& chest, double x_mm, double y_mm, double z_mm, double radius_mm) {
  if (chest.HuAt(x_mm, y_mm, z_mm) != kLungHu) return false;
  // Points spread evenly over the sphere (a golden-angle spiral): the lungs are convex, so the
  // hull of these points, which holds a ball of over 0.98 of the radius, lies in the lung too.
  const double golden_angle = std::numbers::pi * (3.0 - std::sqrt(5.0));
  for (int k = 0; k < kSphereCheckPoints; ++k) {
    const double z = 1.0 - 2.0 * (k + 0.5) / kSphereCheckPoints;
    const double ring = std::sqrt(1.0 - z * z);
    const double phi = golden_angle * k;
    if (chest.HuAt(x_mm + radius_mm * ring * std::cos(phi), y_mm + radius_mm * ring * std::sin(phi),
                   z_mm + radius_mm * z) != kLungHu) {
      return false;
    }
  }
  return true;
}

std::vector<Lesion> DrawLesions(std::uint64_t seed, const LesionDrawOptions& options) {
  const double none_p = std::clamp(options.none_probability, 0.0, 1.0);
  const std::uint32_t max_count = std::min(options.max_count, kMaxDrawnLesions);
  const double d_min = std::clamp(options.min_diameter_mm, 1.0, 100.0);
  const double d_max = std::clamp(options.max_diameter_mm, d_min, 100.0);
  const double consolidation_p = std::clamp(options.consolidation_probability, 0.0, 1.0);
  const double clearance = std::clamp(options.clearance_mm, 0.0, 50.0);

  SimRng rng(seed ^ kLesionStreamKey);
  std::vector<Lesion> lesions;
  if (max_count == 0 || Uniform01(rng) < none_p) return lesions;
  const auto count = 1 + std::min(max_count - 1, static_cast<std::uint32_t>(Uniform01(rng) * max_count));

  static const ChestPhantom3d kChest;  // lesion-free: where the lungs are
  const std::vector<Box> lungs = LungBoxes(kChest);
  if (lungs.empty()) return lesions;
  for (std::uint32_t i = 0; i < count; ++i) {
    Lesion l;
    l.kind = Uniform01(rng) < consolidation_p ? Lesion::Kind::kConsolidation : Lesion::Kind::kGroundGlass;
    l.hu = DefaultLesionHu(l.kind);
    l.diameter_mm = d_min + (d_max - d_min) * Uniform01(rng);
    const Box& lung = lungs[std::min<std::size_t>(lungs.size() - 1, static_cast<std::size_t>(Uniform01(rng) * 2))];
    const double grown = l.diameter_mm / 2 + clearance;
    const double z_lo = std::max(lung.lo[2], options.z_min_mm);
    const double z_hi = std::min(lung.hi[2], options.z_max_mm);
    bool placed = false;
    for (int t = 0; t < kLesionPlacementTries && !placed && z_lo <= z_hi; ++t) {
      l.x_mm = lung.lo[0] + (lung.hi[0] - lung.lo[0]) * Uniform01(rng);
      l.y_mm = lung.lo[1] + (lung.hi[1] - lung.lo[1]) * Uniform01(rng);
      l.z_mm = z_lo + (z_hi - z_lo) * Uniform01(rng);
      if (!SphereInsideLung(kChest, l.x_mm, l.y_mm, l.z_mm, grown)) continue;
      placed = std::all_of(lesions.begin(), lesions.end(), [&](const Lesion& o) {
        const double d = std::hypot(l.x_mm - o.x_mm, l.y_mm - o.y_mm, l.z_mm - o.z_mm);
        return d >= (l.diameter_mm + o.diameter_mm) / 2 + clearance;
      });
    }
    if (placed) lesions.push_back(l);
  }
  return lesions;
}

}  // namespace ctagent::drivers::sim
