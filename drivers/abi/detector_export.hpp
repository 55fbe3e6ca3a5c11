// Exposes a C++ Detector through the C driver ABI, so built-in drivers (sim, replay) are
// reachable exactly like an OEM's shared object: by the conformance kit, by PluginDetector,
// and from a .so built around them (drivers/sim/sim_plugin.cpp).
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::abi {

using DetectorFactory = Expected<std::unique_ptr<Detector>> (*)(const nlohmann::json& options);

// The shared part of every exported table; `open` is filled in per factory.
ctagent_driver_api BaseExportTable();
ctagent_status OpenExported(DetectorFactory factory, const char* options_json, ctagent_driver** out, char* error,
                            std::size_t error_capacity);

// A static C ABI table whose `open` creates detectors with `Factory`.
template <DetectorFactory Factory>
const ctagent_driver_api* ExportDetector() {
  static const ctagent_driver_api table = [] {
    ctagent_driver_api t = BaseExportTable();
    t.open = [](const char* options_json, ctagent_driver** out, char* error, std::size_t error_capacity) {
      return OpenExported(Factory, options_json, out, error, error_capacity);
    };
    return t;
  }();
  return &table;
}

}  // namespace ctagent::drivers::abi
