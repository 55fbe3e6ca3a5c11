// The lesions the end-to-end tests draw into the simulator's chest for the short low-dose chest
// scan (the analysis needs 100 mm along z; these scans cover 120 mm): centres within |z| <= 25 mm,
// 10 .. 24 mm across, so every lesion is above the analysis' detection limit (0.2 mL). As the
// analysis' own simulated-scan test. Used by ai_results_test and the page's browser tests.
#pragma once

#include <nlohmann/json.hpp>

#include "drivers/sim/lesion_draw.hpp"

namespace ctagent::test {

// For drivers::sim::DrawLesions: which seeds draw lesions, and which.
inline drivers::sim::LesionDrawOptions ChestLesionDrawOptions() {
  drivers::sim::LesionDrawOptions o;
  o.z_min_mm = -25;
  o.z_max_mm = 25;
  o.min_diameter_mm = 10;
  o.max_diameter_mm = 24;
  return o;
}

// The same, as the sim driver's `lesions` option in a configuration.
inline nlohmann::json ChestLesionDrawJson() {
  const auto o = ChestLesionDrawOptions();
  return {{"z_min_mm", o.z_min_mm}, {"z_max_mm", o.z_max_mm}, {"min_diameter_mm", o.min_diameter_mm},
          {"max_diameter_mm", o.max_diameter_mm}};
}

}  // namespace ctagent::test
