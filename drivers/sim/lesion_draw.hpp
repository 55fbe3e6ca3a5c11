// Lesions drawn from a scan's seed: the ground truth of the reference lung analysis' tests and
// accuracy bench (cloud/worker/analysis.hpp, bench/analysis). A draw is a pure function of
// (seed, options) through the sim's own SimRng, so every platform draws the same lesions.
#pragma once

#include <cstdint>
#include <vector>

#include "drivers/sim/phantom.hpp"

namespace ctagent::drivers::sim {

struct LesionDrawOptions {
  // Share of seeds that draw no lesion at all; the others draw 1 .. max_count (uniform).
  double none_probability = 0.2;
  std::uint32_t max_count = 4;
  // Diameters uniform in [min, max] [mm].
  double min_diameter_mm = 6.0;
  double max_diameter_mm = 30.0;
  double consolidation_probability = 0.4;  // the others are ground glass
  // Every lesion's sphere grown by this clearance lies inside one lung, and lesions keep this
  // distance from each other, so a lesion never touches the lung wall or another lesion.
  double clearance_mm = 8.0;
  // Lesion centres are drawn with z in [z_min_mm, z_max_mm] (patient z, mm): the default is the
  // whole lung; narrow it for a protocol that covers less.
  double z_min_mm = -150.0;
  double z_max_mm = 150.0;
};

inline constexpr std::uint32_t kMaxDrawnLesions = 16;
// Placement tries per lesion before it is left out (the draw stays deterministic either way).
inline constexpr int kLesionPlacementTries = 200;

// The lesions of the 3-D chest phantom (ChestPhantom3d) drawn from `seed`: 0 .. max_count
// spheres, kind and diameter as above, CT number DefaultLesionHu(kind), each placed wholly
// inside the right or the left lung (checked with the lesion-free phantom's HuAt at the grown
// sphere's centre and 256 points spread over its surface). Options out of range are clamped.
std::vector<Lesion> DrawLesions(std::uint64_t seed, const LesionDrawOptions& options = {});

// True when a sphere at (x, y, z) of `radius_mm` lies inside one lung of `chest` (lesion-free
// lung CT number at its centre and 256 surface points). Exposed for tests.
bool SphereInsideLung(const ChestPhantom3d& chest, double x_mm, double y_mm, double z_mm, double radius_mm);

}  // namespace ctagent::drivers::sim
