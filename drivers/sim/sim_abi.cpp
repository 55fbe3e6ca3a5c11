#include "drivers/sim/sim_abi.hpp"

#include <utility>

#include "drivers/abi/detector_export.hpp"
#include "drivers/sim/sim_detector.hpp"

namespace ctagent::drivers::sim {

Expected<std::unique_ptr<Detector>> MakeSimDetector(const nlohmann::json& options) {
  auto sim = SimDetector::Create(options);
  if (!sim) return MakeError(sim.error());
  return std::unique_ptr<Detector>(std::move(sim).value());
}

const ctagent_driver_api* SimDriverApi() { return abi::ExportDetector<MakeSimDetector>(); }

}  // namespace ctagent::drivers::sim
