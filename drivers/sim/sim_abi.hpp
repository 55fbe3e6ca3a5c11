// The sim driver through the C driver ABI: the same table an OEM's shared object exports, so
// the conformance kit and PluginDetector exercise sim exactly like a plugin.
#pragma once

#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::sim {

const ctagent_driver_api* SimDriverApi();

}  // namespace ctagent::drivers::sim
