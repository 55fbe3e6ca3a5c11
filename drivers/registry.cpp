// MakeDetector: the driver registry. Apart from detector.cpp so that a driver .so built
// around detector.cpp (drivers/sim/sim_plugin.cpp) does not pull in every other driver.
#include <string>
#include <utility>

#include "drivers/detector.hpp"
#include "drivers/plugin/plugin_detector.hpp"
#include "drivers/replay/replay_detector.hpp"
#ifdef CTAGENT_DRIVER_SIM
#include "drivers/sim/sim_detector.hpp"
#endif

namespace ctagent::drivers {

Expected<std::unique_ptr<Detector>> MakeDetector(const std::string& name, const nlohmann::json& options) {
  if (name == "plugin") return plugin::MakePluginDetector(options);
  if (name == "replay") return replay::MakeReplayDetector(options);
#ifdef CTAGENT_DRIVER_SIM
  if (name == "sim") {
    auto sim = sim::SimDetector::Create(options);
    if (!sim) return MakeError(sim.error());
    return std::unique_ptr<Detector>(std::move(sim).value());
  }
  constexpr const char* kBuiltIn = "sim, replay";
#else
  constexpr const char* kBuiltIn = "replay";
#endif
  return MakeError(ErrorKind::kInvalidInput,
                   "unknown detector driver \"" + name + "\"; built-in drivers in this build: " + kBuiltIn +
                       "; or \"plugin\" with options.path naming a C-ABI driver .so");
}

}  // namespace ctagent::drivers
