// Crash isolation for untrusted C-ABI drivers: the driver runs in a child process,
// ctagent-driver-host (drivers/host/), and this side offers the same C ABI table, each call
// forwarded over a socket. PluginDetector wraps it like any other table, so the pipeline and
// the conformance kit do not change. Faults of the driver process become call errors:
//   - it dies (SIGSEGV, abort(), exit):  CTAGENT_E_INTERNAL, "the driver process (PID p) died
//     with signal 11 (SIGSEGV) after N views"
//   - no view for longer than the stall timeout: CTAGENT_E_IO, "the driver delivered no view
//     for X s ...", and the process is killed by its PID
//   - abort() not answered within 1 s: CTAGENT_E_ABORTED, and the process is killed
// After a fault every call fails with the same text; close() reaps the process.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::plugin {

inline constexpr const char* kDriverHostName = "ctagent-driver-host";

// The table. Its open()'s options JSON is
//   {"path": driver .so, "host": host executable, "stall_timeout_s": s (0: from the protocol),
//    "driver_options": {... passed to the driver's own open()}}.
// open() starts the host (posix_spawn, own process group, signals reset, only its two
// sockets inherited); close() ends it: kClose, then SIGKILL if it has not exited within 2 s.
const ctagent_driver_api* IsolatedDriverApi();

// Where the host executable is: options["host"] if set, else next to the running program
// (/proc/self/exe). kNotFound naming the places looked at, and what to do.
Expected<std::filesystem::path> FindDriverHost(const nlohmann::json& options);

// The stall timeout for a view rate: max(2 s, 50 view periods).
double DefaultStallTimeoutS(double view_rate_hz);

}  // namespace ctagent::drivers::plugin
