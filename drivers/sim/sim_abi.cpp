#include "drivers/sim/sim_abi.hpp"

#include <utility>

#include "drivers/abi/detector_export.hpp"
#include "drivers/sim/sim_announce.hpp"
#include "drivers/sim/sim_detector.hpp"

namespace ctagent::drivers::sim {

Expected<std::unique_ptr<Detector>> MakeSimDetector(const nlohmann::json& options) {
  // "announce" (scans the simulated scanner starts by itself) is the wrapper's; the rest the sim's.
  if (options.is_object() && options.contains("announce")) {
    auto announce = ParseAnnounceOptions(options.at("announce"));
    if (!announce) return MakeError(announce.error());
    nlohmann::json rest = options;
    rest.erase("announce");
    auto sim = SimDetector::Create(rest);
    if (!sim) return MakeError(sim.error());
    return std::unique_ptr<Detector>(
        std::make_unique<AnnouncingDetector>(std::move(sim).value(), std::move(announce).value()));
  }
  auto sim = SimDetector::Create(options);
  if (!sim) return MakeError(sim.error());
  return std::unique_ptr<Detector>(std::move(sim).value());
}

const ctagent_driver_api* SimDriverApi() { return abi::ExportDetector<MakeSimDetector>(); }

}  // namespace ctagent::drivers::sim
