#include "drivers/plugin/plugin_detector.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <utility>

#include "drivers/abi/c_abi.hpp"
#include "drivers/plugin/isolated_driver.hpp"

namespace ctagent::drivers::plugin {

Expected<std::shared_ptr<DriverLibrary>> DriverLibrary::Load(const std::filesystem::path& path) {
  const std::string who = "detector driver " + path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(ErrorKind::kNotFound, who + ": no such file; set driver.options.path to the driver's .so");
  }
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return MakeError(ErrorKind::kUnsupported, who + ": cannot be loaded: " + (why ? why : "dlopen failed") +
                                                  " (is it a shared object for this CPU, with its dependencies installed?)");
  }
  dlerror();
  void* symbol = dlsym(handle, CTAGENT_DRIVER_ENTRY_SYMBOL);
  if (symbol == nullptr) {
    dlclose(handle);
    return MakeError(ErrorKind::kUnsupported, who + ": not a ctagent detector driver: it does not export " +
                                                  CTAGENT_DRIVER_ENTRY_SYMBOL +
                                                  " (declare it extern \"C\" and with default visibility)");
  }
  // POSIX guarantees that a dlsym() result converts to a function pointer.
  auto get_api = reinterpret_cast<ctagent_driver_get_api_fn>(symbol);
  const ctagent_driver_api* api = get_api(CTAGENT_DRIVER_ABI_MAJOR);
  if (auto s = abi::ValidateApi(api, path.string()); !s) {
    dlclose(handle);
    return MakeError(s.error());
  }
  return std::shared_ptr<DriverLibrary>(new DriverLibrary(handle, api, path.string()));
}

Expected<std::shared_ptr<DriverLibrary>> DriverLibrary::BuiltIn(const ctagent_driver_api* api, const std::string& name) {
  if (auto s = abi::ValidateApi(api, "built-in " + name); !s) return MakeError(s.error());
  return std::shared_ptr<DriverLibrary>(new DriverLibrary(nullptr, api, "built-in " + name));
}

std::shared_ptr<DriverLibrary> DriverLibrary::Isolated(const std::filesystem::path& path) {
  return std::shared_ptr<DriverLibrary>(
      new DriverLibrary(nullptr, IsolatedDriverApi(), path.string() + " (in " + kDriverHostName + ")"));
}

DriverLibrary::~DriverLibrary() {
  if (handle_ != nullptr) dlclose(handle_);
}

Expected<std::unique_ptr<PluginDetector>> PluginDetector::Open(std::shared_ptr<DriverLibrary> library,
                                                               const nlohmann::json& options) {
  const ctagent_driver_api& api = library->api();
  char error[512] = {};
  ctagent_driver* handle = nullptr;
  const std::string text = options.is_null() ? "{}" : options.dump();
  const ctagent_status st = api.open(text.c_str(), &handle, error, sizeof error);
  if (st != CTAGENT_OK || handle == nullptr) {
    if (handle != nullptr) api.close(handle);
    return MakeError(st == CTAGENT_OK ? ErrorKind::kInternal : abi::KindOf(st),
                     "detector driver " + library->origin() + ": open failed (" + abi::StatusName(st) + "): " +
                         (error[0] != '\0' ? error : "the driver gave no reason"));
  }
  std::unique_ptr<PluginDetector> d(new PluginDetector(std::move(library), handle));
  ctagent_capabilities caps{};
  caps.struct_size = sizeof caps;
  if (const ctagent_status cs = api.get_capabilities(handle, &caps); cs != CTAGENT_OK) {
    return d->CallError("get_capabilities", cs);
  }
  caps.name[sizeof caps.name - 1] = '\0';
  caps.model[sizeof caps.model - 1] = '\0';
  d->info_.name = caps.name;
  d->info_.model = caps.model;
  d->info_.max_rows = caps.max_rows;
  d->info_.max_channels = caps.max_channels;
  d->info_.max_view_rate_hz = caps.max_view_rate_hz;
  d->info_.sample_types.clear();
  if (caps.sample_types & (1u << CTAGENT_SAMPLE_UINT16)) d->info_.sample_types.push_back(SampleType::kUint16);
  if (caps.sample_types & (1u << CTAGENT_SAMPLE_FLOAT32)) d->info_.sample_types.push_back(SampleType::kFloat32);
  return d;
}

PluginDetector::~PluginDetector() {
  // close() before the library (kept alive by library_) can be unloaded.
  library_->api().close(handle_);
}

Unexpected PluginDetector::CallError(const char* call, ctagent_status status) const {
  char text[512] = {};
  library_->api().last_error(handle_, text, sizeof text);
  return MakeError(abi::KindOf(status), "detector driver " + library_->origin() + ": " + call + " failed (" +
                                            abi::StatusName(status) + "): " +
                                            (text[0] != '\0' ? text : "the driver gave no reason"));
}

Status PluginDetector::Arm(const ScanProtocol& protocol) {
  armed_ = started_ = ended_ = false;
  // A 1.0 driver would read a fan-beam or line-integral protocol as parallel-beam counts. (For a
  // driver in ctagent-driver-host the host makes the same check on the driver's own table.)
  if (auto st = abi::CheckDriverTakes(library_->api(), protocol, library_->origin()); !st) return st;
  const ctagent_protocol c = abi::ToC(protocol);
  if (const ctagent_status st = library_->api().arm(handle_, &c); st != CTAGENT_OK) return CallError("arm", st);
  protocol_ = protocol;
  next_sequence_ = 0;
  armed_ = true;
  return Ok();
}

Expected<std::optional<View>> PluginDetector::NextView() {
  const ctagent_driver_api& api = library_->api();
  if (!armed_) {
    return MakeError(ErrorKind::kInvalidInput, "detector driver " + library_->origin() +
                                                   ": NextView() called before a successful Arm(); arm a scan first");
  }
  if (ended_) return std::optional<View>{};
  if (!started_) {
    if (const ctagent_status st = api.start(handle_); st != CTAGENT_OK) return CallError("start", st);
    started_ = true;
  }
  View view;
  view.samples.resize(protocol_.BytesPerView());
  ctagent_view header{};
  header.struct_size = sizeof header;
  const ctagent_status st = api.next_view(handle_, &header, view.samples.data(), view.samples.size());
  if (st == CTAGENT_END_OF_SCAN) {
    ended_ = true;
    if (next_sequence_ != protocol_.TotalViews()) {
      return MakeError(ErrorKind::kProtocol, "detector driver " + library_->origin() + ": ended the scan after " +
                                                 std::to_string(next_sequence_) + " views; the protocol has " +
                                                 std::to_string(protocol_.TotalViews()));
    }
    if (const ctagent_status ss = api.stop(handle_); ss != CTAGENT_OK) return CallError("stop", ss);
    return std::optional<View>{};
  }
  if (st != CTAGENT_OK) return CallError("next_view", st);
  if (header.sequence != next_sequence_) {
    return MakeError(ErrorKind::kProtocol, "detector driver " + library_->origin() + ": delivered view " +
                                               std::to_string(header.sequence) + " where view " +
                                               std::to_string(next_sequence_) +
                                               " was due (views must be consecutive from 0)");
  }
  if (header.sample_bytes != view.samples.size()) {
    return MakeError(ErrorKind::kProtocol, "detector driver " + library_->origin() + ": view " +
                                               std::to_string(header.sequence) + " has " +
                                               std::to_string(header.sample_bytes) + " bytes of samples, expected " +
                                               std::to_string(view.samples.size()));
  }
  view.sequence = header.sequence;
  view.gantry_angle_deg = header.gantry_angle_deg;
  view.table_position_mm = header.table_position_mm;
  view.timestamp_us = header.timestamp_us;
  view.status_flags = header.status_flags;
  ++next_sequence_;
  return std::optional<View>(std::move(view));
}

bool PluginDetector::AnnouncesScans() const { return abi::WaitScanOf(library_->api()) != nullptr; }

Expected<std::optional<ScanAnnouncement>> PluginDetector::WaitForScan(std::chrono::milliseconds timeout) {
  const auto wait_scan = abi::WaitScanOf(library_->api());
  if (wait_scan == nullptr) return Detector::WaitForScan(timeout);
  armed_ = started_ = ended_ = false;
  ctagent_protocol protocol{};
  protocol.struct_size = sizeof protocol;
  ctagent_scan_announcement c{};
  c.struct_size = sizeof c;
  c.protocol = &protocol;
  const auto ms = static_cast<std::uint32_t>(std::clamp<std::int64_t>(timeout.count(), 0, 24 * 3600 * 1000));
  const ctagent_status st = wait_scan(handle_, ms, &c);
  if (st == CTAGENT_NO_SCAN) return std::optional<ScanAnnouncement>{};
  if (st != CTAGENT_OK) return CallError("wait_scan", st);
  auto announced = abi::FromC(&c);
  if (!announced) {
    return MakeError(ErrorKind::kProtocol,
                     "detector driver " + library_->origin() + ": announced a scan that cannot be read: " +
                         announced.error().message());
  }
  protocol_ = announced->protocol;
  next_sequence_ = 0;
  armed_ = true;
  return std::optional<ScanAnnouncement>(std::move(announced).value());
}

void PluginDetector::Abort() { library_->api().abort(handle_); }

Status PluginDetector::SelfTest() {
  if (const ctagent_status st = library_->api().self_test(handle_); st != CTAGENT_OK) return CallError("self_test", st);
  return Ok();
}

Expected<DriverHealth> PluginDetector::Health() {
  ctagent_health h{};
  h.struct_size = sizeof h;
  if (const ctagent_status st = library_->api().get_health(handle_, &h); st != CTAGENT_OK) {
    return CallError("get_health", st);
  }
  return DriverHealth{h.state, h.views_delivered, h.errors, h.temperature_c};
}

nlohmann::json IsolatedOpenOptions(const std::filesystem::path& driver, const std::filesystem::path& host,
                                   double stall_timeout_s, const nlohmann::json& driver_options) {
  return nlohmann::json{{"path", driver.string()},
                        {"host", host.string()},
                        {"stall_timeout_s", stall_timeout_s},
                        {"driver_options", driver_options}};
}

Expected<std::unique_ptr<Detector>> MakePluginDetector(const nlohmann::json& options) {
  if (!options.is_object() || !options.contains("path") || !options["path"].is_string()) {
    return MakeError(ErrorKind::kInvalidInput,
                     "plugin driver: driver.options must be an object with \"path\": the driver's .so file");
  }
  const std::string isolation = options.contains("isolation") && options["isolation"].is_string()
                                    ? options["isolation"].get<std::string>()
                                    : (options.contains("isolation") ? std::string("?") : std::string("process"));
  if (isolation != "process" && isolation != "in_process") {
    return MakeError(ErrorKind::kInvalidInput, "plugin driver: driver.options.isolation must be \"process\" (the "
                                               "default: the driver runs in ctagent-driver-host) or \"in_process\"");
  }
  double stall_timeout_s = 0;
  if (options.contains("stall_timeout_s")) {
    if (!options["stall_timeout_s"].is_number() || !(options["stall_timeout_s"].get<double>() > 0)) {
      return MakeError(ErrorKind::kInvalidInput,
                       "plugin driver: driver.options.stall_timeout_s must be a number of seconds > 0");
    }
    stall_timeout_s = options["stall_timeout_s"].get<double>();
  }
  const std::filesystem::path path = options["path"].get<std::string>();
  nlohmann::json driver_options = options;
  for (const char* key : {"path", "isolation", "host", "stall_timeout_s"}) driver_options.erase(key);

  if (isolation == "in_process") {
    auto library = DriverLibrary::Load(path);
    if (!library) return MakeError(library.error());
    auto d = PluginDetector::Open(std::move(library).value(), driver_options);
    if (!d) return MakeError(d.error());
    return std::unique_ptr<Detector>(std::move(d).value());
  }
  // The host loads the driver; checking the file here keeps "no such file" a kNotFound.
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(ErrorKind::kNotFound,
                     "detector driver " + path.string() + ": no such file; set driver.options.path to the driver's .so");
  }
  auto host = FindDriverHost(options);
  if (!host) return MakeError(host.error());
  auto d = PluginDetector::Open(DriverLibrary::Isolated(path),
                                IsolatedOpenOptions(path, *host, stall_timeout_s, driver_options));
  if (!d) return MakeError(d.error());
  return std::unique_ptr<Detector>(std::move(d).value());
}

}  // namespace ctagent::drivers::plugin
