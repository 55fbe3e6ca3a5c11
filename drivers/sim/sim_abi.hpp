// The sim driver through the C driver ABI: the same table an OEM's shared object exports, so
// the conformance kit and PluginDetector exercise sim exactly like a plugin.
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::sim {

// The sim as a Detector (the built-in driver's factory, and what the C table wraps).
Expected<std::unique_ptr<Detector>> MakeSimDetector(const nlohmann::json& options);

const ctagent_driver_api* SimDriverApi();

}  // namespace ctagent::drivers::sim
