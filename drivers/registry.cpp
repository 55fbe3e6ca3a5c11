// MakeDetector and the lookups over the built-in driver table (built_in_drivers.cpp, generated).
// Apart from detector.cpp so that a driver .so built around detector.cpp (drivers/sim/) does not
// pull in every other driver.
#include "drivers/registry.hpp"

#include <utility>

namespace ctagent::drivers {

const BuiltInDriver* FindBuiltInDriver(std::string_view name) {
  for (const BuiltInDriver& driver : BuiltInDrivers()) {
    if (name == driver.name) return &driver;
  }
  return nullptr;
}

std::string DescribeBuiltInDrivers() {
  std::string list;
  for (const BuiltInDriver& driver : BuiltInDrivers()) {
    if (!list.empty()) list += ", ";
    list.append(driver.name).append(" (").append(driver.summary).append(")");
  }
  return list.empty() ? "none" : list;
}

Expected<std::unique_ptr<Detector>> MakeDetector(const std::string& name, const nlohmann::json& options) {
  if (const BuiltInDriver* driver = FindBuiltInDriver(name)) return driver->make(options);
  return MakeError(ErrorKind::kInvalidInput, "unknown detector driver \"" + name +
                                                 "\"; built-in drivers in this build: " + DescribeBuiltInDrivers() +
                                                 "; set driver.name to one of them");
}

}  // namespace ctagent::drivers
