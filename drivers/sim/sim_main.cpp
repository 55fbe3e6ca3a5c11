// Registers the built-in "sim" driver (drivers/registry.hpp); compiled in with CTAGENT_DRIVER_SIM.
#include <utility>

#include "drivers/registry.hpp"
#include "drivers/sim/sim_abi.hpp"
#include "drivers/sim/sim_detector.hpp"

namespace ctagent::drivers::sim {
namespace {

Expected<std::unique_ptr<Detector>> MakeSimDetector(const nlohmann::json& options) {
  auto sim = SimDetector::Create(options);
  if (!sim) return MakeError(sim.error());
  return std::unique_ptr<Detector>(std::move(sim).value());
}

}  // namespace
}  // namespace ctagent::drivers::sim

CTAGENT_BUILT_IN_DRIVER(sim) {
  return {.name = "sim",
          .summary = "simulated 16-slice CT scanner",
          .make = &ctagent::drivers::sim::MakeSimDetector,
          .c_api = &ctagent::drivers::sim::SimDriverApi};
}
