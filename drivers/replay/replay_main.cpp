// Registers the built-in "replay" driver (drivers/registry.hpp); compiled in with
// CTAGENT_DRIVER_REPLAY.
#include "drivers/registry.hpp"
#include "drivers/replay/replay_detector.hpp"

CTAGENT_BUILT_IN_DRIVER(replay) {
  return {.name = "replay",
          .summary = "plays back a recorded scan from options.path",
          .make = &ctagent::drivers::replay::MakeReplayDetector};
}
