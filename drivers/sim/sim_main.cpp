// Registers the built-in "sim" driver (drivers/registry.hpp); compiled in with CTAGENT_DRIVER_SIM.
#include "drivers/registry.hpp"
#include "drivers/sim/sim_abi.hpp"

CTAGENT_BUILT_IN_DRIVER(sim) {
  return {.name = "sim",
          .summary = "simulated 16-slice CT scanner",
          .make = &ctagent::drivers::sim::MakeSimDetector,
          .c_api = &ctagent::drivers::sim::SimDriverApi};
}
