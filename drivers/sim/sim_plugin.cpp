// libctagent_driver_sim.so: the sim driver as a loadable C-ABI driver, built like an OEM's.
#include "drivers/include/ctagent_driver.h"
#include "drivers/sim/sim_abi.hpp"

extern "C" __attribute__((visibility("default"))) const ctagent_driver_api* ctagent_driver_get_api(
    uint32_t host_abi_major) {
  if (host_abi_major != CTAGENT_DRIVER_ABI_MAJOR) return nullptr;
  return ctagent::drivers::sim::SimDriverApi();
}
