// The built-in drivers of this build: a table of name -> factory that MakeDetector and the
// conformance kit look drivers up in. Each built-in driver registers itself in its own
// <name>_main.cpp with CTAGENT_BUILT_IN_DRIVER; drivers/CMakeLists.txt compiles a driver's
// sources only when its option is on and generates built_in_drivers.cpp, which lists exactly
// those drivers by name. The list is explicit (no static constructors in a static library,
// which the linker drops when nothing refers to their object file).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers {

struct BuiltInDriver {
  const char* name = "";     // the configuration's driver.name
  const char* summary = "";  // what it is, for messages and help: "simulated 16-slice scanner"
  Expected<std::unique_ptr<Detector>> (*make)(const nlohmann::json& options) = nullptr;
  // The driver's C ABI function table, for `ctagent-driver-check --builtin NAME`; null when the
  // driver has none (it only exists as a C++ Detector).
  const ctagent_driver_api* (*c_api)() = nullptr;
};

// Every built-in driver of this build, in the order drivers/CMakeLists.txt registers them.
const std::vector<BuiltInDriver>& BuiltInDrivers();

// The driver called `name`, or null.
const BuiltInDriver* FindBuiltInDriver(std::string_view name);

// "sim (simulated ...), replay (...)" for messages; "none" in a build without any.
std::string DescribeBuiltInDrivers();

}  // namespace ctagent::drivers

// Defines the registration function of built-in driver `id` (the name CMake registered it
// under), in the driver's own <id>_main.cpp:
//   CTAGENT_BUILT_IN_DRIVER(sim) { return {.name = "sim", .summary = ..., .make = ...}; }
#define CTAGENT_BUILT_IN_DRIVER(id) ::ctagent::drivers::BuiltInDriver ctagent_built_in_driver_##id()
