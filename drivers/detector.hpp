// The detector hardware abstraction layer as the agent sees it (C++ side).
// A driver opens a detector, is armed with a scan protocol, and delivers views in order.
// NextView() blocks, so the agent always calls it from a dedicated acquisition thread,
// never from the I/O event loop. The interface is header-only: the codec's acquisition stage
// reads views through it and links only the scan types (ctagent_scan_types); MakeDetector and
// the drivers themselves are in ctagent_drivers.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/scan_types.hpp"

namespace ctagent::drivers {

class Detector {
 public:
  virtual ~Detector() = default;

  virtual DetectorInfo Info() const = 0;
  // Checks the protocol against the detector's capabilities and prepares a scan.
  virtual Status Arm(const ScanProtocol& protocol) = 0;
  // Blocks until the next view is ready. Returns std::nullopt after the last view.
  virtual Expected<std::optional<View>> NextView() = 0;
  // Stops a running scan; a blocked NextView() returns kCancelled. Safe from another thread.
  virtual void Abort() = 0;
  // Runs the detector's self-test (idle only). Drivers without one report success.
  virtual Status SelfTest() { return Ok(); }

  // Whether WaitForScan() can announce scans (ABI 1.2 drivers with wait_scan; the sim with its
  // "announce" option). The daemon waits for announcements only on such drivers.
  virtual bool AnnouncesScans() const { return false; }
  // Blocks up to `timeout` until the scanner starts a scan of its own. On an announcement the
  // detector is armed with its protocol, as after Arm(): NextView() delivers its views. Empty:
  // no scan within the timeout. Abort() ends a wait early (kCancelled). Called from the
  // acquisition thread, like Arm() and NextView(). Drivers that cannot announce: kUnsupported.
  virtual Expected<std::optional<ScanAnnouncement>> WaitForScan(std::chrono::milliseconds /*timeout*/) {
    return MakeError(ErrorKind::kUnsupported,
                     "detector driver \"" + Info().name +
                         "\" does not announce scans (driver ABI 1.2 wait_scan); scans start from `ctagent scan` only");
  }
};

// Creates a driver by name from the built-in drivers of this build (drivers/registry.hpp):
// "sim", "replay", and "plugin", a shared object implementing the C driver ABI
// (drivers/include/ctagent_driver.h) loaded from options["path"], each when its CMake option is
// on. `options` go to the driver as-is. An unknown name fails, listing what this build has.
Expected<std::unique_ptr<Detector>> MakeDetector(const std::string& name, const nlohmann::json& options);

}  // namespace ctagent::drivers
