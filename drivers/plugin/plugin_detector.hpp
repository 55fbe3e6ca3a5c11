// Detector drivers behind the C ABI (drivers/include/ctagent_driver.h): loading a driver's
// shared object with dlopen and checking its table, and PluginDetector, the adapter that
// makes any C-ABI driver (loaded or built in) a C++ Detector for the agent.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/include/ctagent_driver.h"

namespace ctagent::drivers::plugin {

// A driver's function table and whatever keeps it valid (the dlopen handle; nothing for a
// built-in table). Closes the library when the last user is gone.
class DriverLibrary {
 public:
  // dlopen()s `path` (RTLD_NOW | RTLD_LOCAL), finds ctagent_driver_get_api, and checks the
  // table (abi::ValidateApi). Errors name the path and what to do.
  static Expected<std::shared_ptr<DriverLibrary>> Load(const std::filesystem::path& path);
  // Wraps a table compiled into this binary (e.g. sim::SimDriverApi()).
  static Expected<std::shared_ptr<DriverLibrary>> BuiltIn(const ctagent_driver_api* api, const std::string& name);
  // The driver at `path` run in ctagent-driver-host (IsolatedDriverApi(), isolated_driver.hpp):
  // nothing is loaded into this process. Open it with IsolatedOpenOptions().
  static std::shared_ptr<DriverLibrary> Isolated(const std::filesystem::path& path);

  ~DriverLibrary();
  DriverLibrary(const DriverLibrary&) = delete;
  DriverLibrary& operator=(const DriverLibrary&) = delete;

  const ctagent_driver_api& api() const { return *api_; }
  const std::string& origin() const { return origin_; }  // path or "built-in NAME", for messages

 private:
  DriverLibrary(void* handle, const ctagent_driver_api* api, std::string origin)
      : handle_(handle), api_(api), origin_(std::move(origin)) {}
  void* handle_;
  const ctagent_driver_api* api_;
  std::string origin_;
};

struct DriverHealth {
  std::uint32_t state = CTAGENT_STATE_IDLE;
  std::uint64_t views_delivered = 0;
  std::uint64_t errors = 0;
  double temperature_c = 0;  // NaN if unknown
};

class PluginDetector final : public Detector {
 public:
  // Opens a detector of `library`; `options` goes to the driver's open() as JSON text.
  static Expected<std::unique_ptr<PluginDetector>> Open(std::shared_ptr<DriverLibrary> library,
                                                        const nlohmann::json& options);
  ~PluginDetector() override;

  DetectorInfo Info() const override { return info_; }
  // arm(); acquisition start()s with the first NextView(), when the agent is ready to take views.
  Status Arm(const ScanProtocol& protocol) override;
  // Also checks what the driver delivers: consecutive sequence numbers from 0 and the view
  // size of the protocol (kProtocol otherwise), so a faulty driver cannot corrupt a scan.
  Expected<std::optional<View>> NextView() override;
  void Abort() override;
  Status SelfTest() override;
  // A driver of ABI 1.2 with wait_scan (it may still answer kUnsupported: an isolated driver's
  // host forwards the call whatever the driver's table has).
  bool AnnouncesScans() const override;
  Expected<std::optional<ScanAnnouncement>> WaitForScan(std::chrono::milliseconds timeout) override;
  Expected<DriverHealth> Health();

 private:
  PluginDetector(std::shared_ptr<DriverLibrary> library, ctagent_driver* handle)
      : library_(std::move(library)), handle_(handle) {}
  Unexpected CallError(const char* call, ctagent_status status) const;

  std::shared_ptr<DriverLibrary> library_;
  ctagent_driver* handle_;
  DetectorInfo info_;
  ScanProtocol protocol_;
  bool armed_ = false;
  bool started_ = false;
  bool ended_ = false;
  std::uint64_t next_sequence_ = 0;
};

// The open() options of an Isolated() library: the driver's path, the host, the stall timeout,
// and the driver's own options.
nlohmann::json IsolatedOpenOptions(const std::filesystem::path& driver, const std::filesystem::path& host,
                                   double stall_timeout_s, const nlohmann::json& driver_options);

// MakeDetector("plugin", options): options {"path": "/x/libdriver.so", "isolation": "process"
// (default) | "in_process", "host": ctagent-driver-host (default: next to this program),
// "stall_timeout_s": s (default max(2 s, 50 view periods)), ...driver's own keys}.
Expected<std::unique_ptr<Detector>> MakePluginDetector(const nlohmann::json& options);

}  // namespace ctagent::drivers::plugin
