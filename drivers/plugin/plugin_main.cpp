// Registers "plugin", the driver that loads an OEM's C-ABI driver .so (drivers/registry.hpp);
// compiled in with CTAGENT_PLUGIN_DRIVERS.
#include "drivers/plugin/plugin_detector.hpp"
#include "drivers/registry.hpp"

CTAGENT_BUILT_IN_DRIVER(plugin) {
  return {.name = "plugin",
          .summary = "a C-ABI driver .so named by options.path",
          .make = &ctagent::drivers::plugin::MakePluginDetector};
}
