// ctagent-driver-check: the conformance kit an OEM runs against a detector driver (.so) before
// shipping it. It drives the C ABI directly and checks what the agent relies on: the table and
// ABI version, capabilities, error reporting, ordering (no gaps, no duplicates), abort
// mid-scan, re-arm after abort, view-rate stability in real time, clean shutdown.
// Each check prints "PASS <check>" or "FAIL <check>: <what was wrong>". Exit code 0 when all
// pass, 1 when any fails, 2 on bad usage.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "drivers/abi/c_abi.hpp"
#include "drivers/plugin/isolated_driver.hpp"
#include "drivers/plugin/plugin_detector.hpp"
#include "drivers/registry.hpp"

namespace ctagent::drivers::conformance {
namespace {

using Clock = std::chrono::steady_clock;
using Failure = std::optional<std::string>;

constexpr const char* kUsage = R"(usage: ctagent-driver-check [options] (DRIVER.so | --builtin NAME)

Runs the ctagent driver conformance checks against a detector driver built for the C ABI
(ctagent_driver.h) and prints PASS/FAIL per check. Exit code 0: all passed; 1: a check failed.

  --options JSON        options object passed to the driver's open() (default {})
  --rate HZ             view rate of the real-time checks (default: the declared maximum,
                        capped at 1000 Hz)
  --rate-seconds S      length of the rate check (default 1)
  --rate-tolerance F    allowed relative deviation of the mean view rate (default 0.1)
  --max-lateness-ms MS  latest a view may arrive after its due time (default 500)
  --abort-timeout-ms MS longest next_view() may keep running after abort() (default 1000)
  --isolation MODE      in_process (default: the kit loads the driver) or process (the
                        driver runs in ctagent-driver-host, as the agent runs plugin drivers)
  --host PATH           the ctagent-driver-host for --isolation process (default: next to
                        this program)
)";

struct Settings {
  std::string driver;  // path, or builtin name
  bool builtin = false;
  nlohmann::json options = nlohmann::json::object();
  double rate_hz = 0;  // 0: declared maximum capped at 1000
  double rate_seconds = 1.0;
  double rate_tolerance = 0.1;
  double max_lateness_ms = 500;
  double abort_timeout_ms = 1000;
  bool isolated = false;
  std::string host;  // empty: next to this program
};

std::string Str(double v) {
  char text[64];
  std::snprintf(text, sizeof text, "%.6g", v);
  return text;
}

class Kit {
 public:
  Kit(std::shared_ptr<plugin::DriverLibrary> library, Settings settings)
      : library_(std::move(library)), api_(library_->api()), settings_(std::move(settings)) {}
  ~Kit() {
    if (handle_ != nullptr) api_.close(handle_);
  }
  Kit(const Kit&) = delete;
  Kit& operator=(const Kit&) = delete;

  int Run() {
    if (!Check("open", [this] { return Open(); })) return Finish();
    Check("capabilities", [this] { return Capabilities(); });
    Check("self_test and health", [this] { return SelfTestAndHealth(); });
    Check("error reporting", [this] { return ErrorReporting(); });
    Check("buffer too small", [this] { return BufferTooSmall(); });
    Check("ordering", [this] { return Ordering("ordering"); });
    Check("abort mid-scan", [this] { return AbortMidScan(); });
    Check("re-arm after abort", [this] { return Ordering("re-arm after abort"); });
    Check("view rate", [this] { return ViewRate(); });
    Check("clean shutdown", [this] { return CleanShutdown(); });
    return Finish();
  }

 private:
  bool Check(const char* name, const std::function<Failure()>& body) {
    const Failure f = body();
    if (f) {
      std::printf("FAIL %s: %s\n", name, f->c_str());
      ++failures_;
    } else {
      std::printf("PASS %s\n", name);
    }
    std::fflush(stdout);
    return !f;
  }

  int Finish() {
    std::printf("%s: %d check(s) failed\n", library_->origin().c_str(), failures_);
    return failures_ == 0 ? 0 : 1;
  }

  std::string LastError(ctagent_driver* h) const {
    char text[512] = {};
    api_.last_error(h, text, sizeof text);
    return text;
  }

  std::string Describe(const char* call, ctagent_status st, ctagent_driver* h) const {
    std::string text = std::string(call) + " returned " + abi::StatusName(st) + " (" + std::to_string(st) + ")";
    if (st < 0) {
      const std::string why = LastError(h);
      text += why.empty() ? ", and last_error() is empty" : ": " + why;
    }
    return text;
  }

  Failure Open() {
    char error[512] = {};
    const std::string text = settings_.options.dump();
    const ctagent_status st = api_.open(text.c_str(), &handle_, error, sizeof error);
    if (st != CTAGENT_OK || handle_ == nullptr) {
      return "open(" + text + ") returned " + abi::StatusName(st) + (handle_ == nullptr ? " and no handle" : "") +
             ": " + (error[0] != '\0' ? error : "(no reason given)");
    }
    return std::nullopt;
  }

  Failure Capabilities() {
    caps_ = ctagent_capabilities{};
    caps_.struct_size = sizeof caps_;
    if (const ctagent_status st = api_.get_capabilities(handle_, &caps_); st != CTAGENT_OK) {
      return Describe("get_capabilities()", st, handle_);
    }
    if (std::find(std::begin(caps_.name), std::end(caps_.name), '\0') == std::end(caps_.name)) {
      return std::string("name is not NUL-terminated within its 64 bytes");
    }
    if (std::find(std::begin(caps_.model), std::end(caps_.model), '\0') == std::end(caps_.model)) {
      return std::string("model is not NUL-terminated within its 64 bytes");
    }
    if (caps_.name[0] == '\0') return std::string("name is empty");
    if (caps_.max_rows == 0 || caps_.max_channels == 0) {
      return "max_rows " + std::to_string(caps_.max_rows) + " and max_channels " +
             std::to_string(caps_.max_channels) + " must both be at least 1";
    }
    const std::uint32_t known = (1u << CTAGENT_SAMPLE_UINT16) | (1u << CTAGENT_SAMPLE_FLOAT32);
    if ((caps_.sample_types & known) == 0) return std::string("sample_types names no known sample type");
    if (!(caps_.max_view_rate_hz > 0) || !std::isfinite(caps_.max_view_rate_hz)) {
      return "max_view_rate_hz " + Str(caps_.max_view_rate_hz) + " must be a positive number";
    }
    std::printf("  driver %s, model %s: up to %u rows x %u channels, %s Hz\n", caps_.name, caps_.model,
                caps_.max_rows, caps_.max_channels, Str(caps_.max_view_rate_hz).c_str());
    return std::nullopt;
  }

  ctagent_protocol SmallProtocol(bool real_time, double rate_hz, std::uint32_t rotations) const {
    ctagent_protocol p = abi::ToC(ScanProtocol{});
    p.rows = std::min(4u, std::max(1u, caps_.max_rows));
    p.channels = std::min(128u, std::max(1u, caps_.max_channels));
    p.channel_pitch_mm = 380.0 / p.channels;
    p.views_per_rotation = 90;
    p.rotations = rotations;
    p.sample_type = (caps_.sample_types & (1u << CTAGENT_SAMPLE_UINT16)) ? CTAGENT_SAMPLE_UINT16
                                                                          : CTAGENT_SAMPLE_FLOAT32;
    p.real_time = real_time ? 1u : 0u;
    if (real_time) p.rotation_time_s = p.views_per_rotation / rate_hz;
    return p;
  }

  static std::uint64_t BytesPerView(const ctagent_protocol& p) {
    return std::uint64_t{p.rows} * p.channels * (p.sample_type == CTAGENT_SAMPLE_FLOAT32 ? 4u : 2u);
  }

  Failure ArmAndStart(ctagent_driver* h, const ctagent_protocol& p) {
    if (const ctagent_status st = api_.arm(h, &p); st != CTAGENT_OK) {
      return Describe("arm() of a protocol within the capabilities", st, h);
    }
    if (const ctagent_status st = api_.start(h); st != CTAGENT_OK) return Describe("start() after arm()", st, h);
    return std::nullopt;
  }

  Failure SelfTestAndHealth() {
    if (const ctagent_status st = api_.self_test(handle_); st != CTAGENT_OK) {
      return Describe("self_test() on an idle detector", st, handle_);
    }
    ctagent_health h{};
    h.struct_size = sizeof h;
    if (const ctagent_status st = api_.get_health(handle_, &h); st != CTAGENT_OK) {
      return Describe("get_health()", st, handle_);
    }
    if (h.state != CTAGENT_STATE_IDLE) {
      return "get_health() after open reports state " + std::to_string(h.state) + ", expected CTAGENT_STATE_IDLE (0)";
    }
    return std::nullopt;
  }

  Failure ErrorReporting() {
    std::vector<std::uint8_t> buffer(64);
    ctagent_view view{};
    view.struct_size = sizeof view;
    ctagent_status st = api_.next_view(handle_, &view, buffer.data(), buffer.size());
    if (st >= 0) {
      return std::string("next_view() before arm() returned ") + abi::StatusName(st) + "; it must fail (CTAGENT_E_INVALID)";
    }
    if (LastError(handle_).empty()) return std::string("next_view() before arm() failed but last_error() is empty");

    ctagent_protocol p = SmallProtocol(false, 0, 1);
    p.rows = caps_.max_rows + 1;
    st = api_.arm(handle_, &p);
    if (st >= 0) {
      return "arm() with " + std::to_string(p.rows) + " rows (max_rows is " + std::to_string(caps_.max_rows) +
             ") returned " + abi::StatusName(st) + "; it must refuse";
    }
    if (LastError(handle_).empty()) return std::string("arm() refused too many rows but last_error() is empty");
    if (const ctagent_status s = api_.start(handle_); s >= 0) {
      return std::string("start() after a refused arm() returned ") + abi::StatusName(s) + "; it must fail";
    }
    return std::nullopt;
  }

  Failure BufferTooSmall() {
    const ctagent_protocol p = SmallProtocol(false, 0, 1);
    if (auto f = ArmAndStart(handle_, p)) return f;
    std::vector<std::uint8_t> tiny(1);
    ctagent_view view{};
    view.struct_size = sizeof view;
    const ctagent_status st = api_.next_view(handle_, &view, tiny.data(), tiny.size());
    if (st != CTAGENT_E_BUFFER_TOO_SMALL) {
      return "next_view() with a 1-byte buffer returned " + std::string(abi::StatusName(st)) +
             ", expected CTAGENT_E_BUFFER_TOO_SMALL";
    }
    if (view.sample_bytes != BytesPerView(p)) {
      return "after CTAGENT_E_BUFFER_TOO_SMALL, sample_bytes is " + std::to_string(view.sample_bytes) +
             ", expected the size needed, " + std::to_string(BytesPerView(p));
    }
    std::vector<std::uint8_t> buffer(BytesPerView(p));
    view = ctagent_view{};
    view.struct_size = sizeof view;
    const ctagent_status again = api_.next_view(handle_, &view, buffer.data(), buffer.size());
    if (again != CTAGENT_OK) return Describe("next_view() with a large enough buffer", again, handle_);
    if (view.sequence != 0) {
      return "the view refused for a small buffer was consumed: the retry delivered sequence " +
             std::to_string(view.sequence) + ", expected 0";
    }
    if (const ctagent_status s = api_.stop(handle_); s != CTAGENT_OK) return Describe("stop() mid-scan", s, handle_);
    return std::nullopt;
  }

  // A full, unpaced scan: every view in order, exactly once, then END_OF_SCAN.
  Failure Ordering(const std::string& what) {
    const ctagent_protocol p = SmallProtocol(false, 0, 2);
    if (auto f = ArmAndStart(handle_, p)) return f;
    const std::uint64_t total = std::uint64_t{p.views_per_rotation} * p.rotations;
    const std::uint64_t bytes = BytesPerView(p);
    std::vector<std::uint8_t> buffer(bytes + 64);  // slack: a driver must write sample_bytes, no more
    double last_angle = -1e300;
    std::int64_t last_timestamp = std::numeric_limits<std::int64_t>::min();
    std::uint64_t expected = 0;
    for (std::uint64_t call = 0; call <= total; ++call) {  // bounded: one call more than views
      ctagent_view view{};
      view.struct_size = sizeof view;
      const ctagent_status st = api_.next_view(handle_, &view, buffer.data(), buffer.size());
      if (st == CTAGENT_END_OF_SCAN) break;
      if (st != CTAGENT_OK) return Describe(("next_view() for view " + std::to_string(expected)).c_str(), st, handle_);
      if (view.sequence > expected) {
        return "gap: view " + std::to_string(expected) + " was due but sequence " + std::to_string(view.sequence) +
               " arrived (" + std::to_string(view.sequence - expected) + " view(s) missing)";
      }
      if (view.sequence < expected) {
        return "duplicate or out of order: sequence " + std::to_string(view.sequence) + " arrived after view " +
               std::to_string(expected - 1) + "; view " + std::to_string(expected) + " was due";
      }
      if (view.sample_bytes != bytes) {
        return "view " + std::to_string(view.sequence) + " has sample_bytes " + std::to_string(view.sample_bytes) +
               ", the protocol needs rows * channels * sample size = " + std::to_string(bytes);
      }
      if (!std::isfinite(view.gantry_angle_deg) || view.gantry_angle_deg < last_angle) {
        return "view " + std::to_string(view.sequence) + ": gantry angle " + Str(view.gantry_angle_deg) +
               " deg is not finite or goes back from " + Str(last_angle);
      }
      if (view.timestamp_us < last_timestamp) {
        return "view " + std::to_string(view.sequence) + ": timestamp " + std::to_string(view.timestamp_us) +
               " us goes back from " + std::to_string(last_timestamp);
      }
      last_angle = view.gantry_angle_deg;
      last_timestamp = view.timestamp_us;
      ++expected;
    }
    if (expected != total) {
      return "the scan of " + std::to_string(total) + " views ended after " + std::to_string(expected) +
             " views (" + what + ")";
    }
    ctagent_view view{};
    view.struct_size = sizeof view;
    if (const ctagent_status st = api_.next_view(handle_, &view, buffer.data(), buffer.size());
        st != CTAGENT_END_OF_SCAN) {
      return std::string("next_view() after the last view returned ") + abi::StatusName(st) +
             "; it must keep returning CTAGENT_END_OF_SCAN";
    }
    if (const ctagent_status st = api_.stop(handle_); st != CTAGENT_OK) {
      return Describe("stop() after END_OF_SCAN", st, handle_);
    }
    return std::nullopt;
  }

  double RealTimeRate() const {
    const double wanted = settings_.rate_hz > 0 ? settings_.rate_hz : std::min(caps_.max_view_rate_hz, 1000.0);
    return std::min(wanted, caps_.max_view_rate_hz);
  }

  Failure AbortMidScan() {
    const double rate = RealTimeRate();
    ctagent_protocol p = SmallProtocol(true, rate, 1);
    p.rotations = static_cast<std::uint32_t>(std::clamp(rate * 60.0 / p.views_per_rotation, 1.0, 10000.0));
    if (auto f = ArmAndStart(handle_, p)) return f;
    std::vector<std::uint8_t> buffer(BytesPerView(p));
    for (int i = 0; i < 5; ++i) {
      ctagent_view view{};
      view.struct_size = sizeof view;
      if (const ctagent_status st = api_.next_view(handle_, &view, buffer.data(), buffer.size()); st != CTAGENT_OK) {
        return Describe("next_view() before abort()", st, handle_);
      }
    }
    // abort() from another thread while this one is (most likely) blocked in next_view().
    const auto abort_delay = std::chrono::milliseconds(20);
    Clock::time_point aborted_at;
    std::thread aborter([&] {
      std::this_thread::sleep_for(abort_delay);
      aborted_at = Clock::now();
      api_.abort(handle_);
    });
    const auto deadline_after_abort = std::chrono::duration<double, std::milli>(settings_.abort_timeout_ms);
    ctagent_status st = CTAGENT_OK;
    std::uint64_t views_after = 0;
    const auto give_up = Clock::now() + abort_delay + deadline_after_abort + std::chrono::seconds(1);
    while (Clock::now() < give_up) {  // bounded in time; one view per call at most
      ctagent_view view{};
      view.struct_size = sizeof view;
      st = api_.next_view(handle_, &view, buffer.data(), buffer.size());
      if (st != CTAGENT_OK) break;
      ++views_after;
    }
    const auto returned_at = Clock::now();
    aborter.join();
    if (st == CTAGENT_OK) {
      return "next_view() kept delivering views (" + std::to_string(views_after) + ") for " +
             Str(std::chrono::duration<double, std::milli>(returned_at - aborted_at).count()) +
             " ms after abort(); it must return CTAGENT_E_ABORTED within " + Str(settings_.abort_timeout_ms) + " ms";
    }
    if (st != CTAGENT_E_ABORTED) return Describe("next_view() after abort()", st, handle_);
    const double late_ms = std::chrono::duration<double, std::milli>(returned_at - aborted_at).count();
    if (late_ms > settings_.abort_timeout_ms) {
      return "next_view() returned CTAGENT_E_ABORTED only " + Str(late_ms) + " ms after abort(), allowed " +
             Str(settings_.abort_timeout_ms) + " ms";
    }
    ctagent_view view{};
    view.struct_size = sizeof view;
    if (const ctagent_status again = api_.next_view(handle_, &view, buffer.data(), buffer.size());
        again != CTAGENT_E_ABORTED) {
      return std::string("after abort(), the next call to next_view() returned ") + abi::StatusName(again) +
             "; it must keep returning CTAGENT_E_ABORTED until the next arm()";
    }
    if (LastError(handle_).empty()) return std::string("next_view() returned CTAGENT_E_ABORTED but last_error() is empty");
    return std::nullopt;
  }

  Failure ViewRate() {
    const double rate = RealTimeRate();
    const auto views = static_cast<std::uint64_t>(std::max(20.0, rate * settings_.rate_seconds));
    ctagent_protocol p = SmallProtocol(true, rate, 1);
    p.rotations = static_cast<std::uint32_t>((views + p.views_per_rotation - 1) / p.views_per_rotation);
    if (auto f = ArmAndStart(handle_, p)) return f;
    std::vector<std::uint8_t> buffer(BytesPerView(p));
    Clock::time_point first_arrival;
    Clock::time_point last_arrival;
    std::int64_t first_ts = 0;
    std::int64_t last_ts = 0;
    double worst_lateness_ms = 0;
    std::uint64_t worst_view = 0;
    for (std::uint64_t i = 0; i < views; ++i) {
      ctagent_view view{};
      view.struct_size = sizeof view;
      const ctagent_status st = api_.next_view(handle_, &view, buffer.data(), buffer.size());
      const auto now = Clock::now();
      if (st != CTAGENT_OK) return Describe(("next_view() for view " + std::to_string(i)).c_str(), st, handle_);
      if (i == 0) {
        first_arrival = now;
        first_ts = view.timestamp_us;
      }
      last_arrival = now;
      last_ts = view.timestamp_us;
      const double late_ms =
          std::chrono::duration<double, std::milli>(now - first_arrival).count() - 1000.0 * static_cast<double>(i) / rate;
      if (late_ms > worst_lateness_ms) {
        worst_lateness_ms = late_ms;
        worst_view = i;
      }
    }
    if (const ctagent_status st = api_.stop(handle_); st != CTAGENT_OK) return Describe("stop() mid-scan", st, handle_);
    const double span_s = std::chrono::duration<double>(last_arrival - first_arrival).count();
    const double measured = span_s > 0 ? static_cast<double>(views - 1) / span_s : 0;
    const double stamped = last_ts > first_ts ? static_cast<double>(views - 1) * 1e6 / static_cast<double>(last_ts - first_ts) : 0;
    std::printf("  view rate: asked %s Hz, arrived at %s Hz, timestamps say %s Hz, worst lateness %s ms (view %llu)\n",
                Str(rate).c_str(), Str(measured).c_str(), Str(stamped).c_str(), Str(worst_lateness_ms).c_str(),
                static_cast<unsigned long long>(worst_view));
    if (std::fabs(measured - rate) > settings_.rate_tolerance * rate) {
      return "views arrived at " + Str(measured) + " Hz over " + std::to_string(views) + " views; the protocol asks " +
             Str(rate) + " Hz (tolerance " + Str(settings_.rate_tolerance * 100) + " %)";
    }
    if (std::fabs(stamped - rate) > settings_.rate_tolerance * rate) {
      return "view timestamps advance at " + Str(stamped) + " Hz; the protocol asks " + Str(rate) + " Hz";
    }
    if (worst_lateness_ms > settings_.max_lateness_ms) {
      return "view " + std::to_string(worst_view) + " arrived " + Str(worst_lateness_ms) +
             " ms after its due time (allowed " + Str(settings_.max_lateness_ms) + " ms)";
    }
    return std::nullopt;
  }

  // close() of a detector in the middle of a real-time scan returns promptly; then the main
  // handle is closed too. Leaks show up under the ASan build's leak checker.
  Failure CleanShutdown() {
    char error[512] = {};
    ctagent_driver* second = nullptr;
    const std::string text = settings_.options.dump();
    if (const ctagent_status st = api_.open(text.c_str(), &second, error, sizeof error); st != CTAGENT_OK) {
      return std::string("a second open() returned ") + abi::StatusName(st) + ": " + error;
    }
    const ctagent_protocol p = SmallProtocol(true, RealTimeRate(), 100);
    if (auto f = ArmAndStart(second, p)) {
      api_.close(second);
      return f;
    }
    std::vector<std::uint8_t> buffer(BytesPerView(p));
    for (int i = 0; i < 2; ++i) {
      ctagent_view view{};
      view.struct_size = sizeof view;
      if (const ctagent_status st = api_.next_view(second, &view, buffer.data(), buffer.size()); st != CTAGENT_OK) {
        const std::string why = Describe("next_view() on a second handle", st, second);
        api_.close(second);
        return why;
      }
    }
    for (ctagent_driver* h : {second, handle_}) {
      auto closing = std::async(std::launch::async, [this, h] { api_.close(h); });
      if (closing.wait_for(std::chrono::seconds(2)) != std::future_status::ready) {
        std::printf("FAIL clean shutdown: close() did not return within 2 s\n");
        std::fflush(stdout);
        std::_Exit(1);  // the driver's thread is stuck; nothing left to unwind safely
      }
    }
    handle_ = nullptr;
    return std::nullopt;
  }

  std::shared_ptr<plugin::DriverLibrary> library_;
  const ctagent_driver_api& api_;
  Settings settings_;
  ctagent_driver* handle_ = nullptr;
  ctagent_capabilities caps_{};
  int failures_ = 0;
};

std::optional<Settings> ParseArgs(int argc, char** argv) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    auto number = [&](double* out) {
      auto v = value();
      if (!v) return false;
      char* end = nullptr;
      *out = std::strtod(v->c_str(), &end);
      return end != v->c_str() && *end == '\0' && std::isfinite(*out) && *out >= 0;
    };
    if (arg == "--builtin") {
      auto v = value();
      if (!v) return std::nullopt;
      s.driver = *v;
      s.builtin = true;
    } else if (arg == "--options") {
      auto v = value();
      if (!v) return std::nullopt;
      s.options = nlohmann::json::parse(*v, nullptr, false);
      if (s.options.is_discarded() || !s.options.is_object()) {
        std::fprintf(stderr, "--options: expected a JSON object, found: %s\n", v->c_str());
        return std::nullopt;
      }
    } else if (arg == "--rate") {
      if (!number(&s.rate_hz)) return std::nullopt;
    } else if (arg == "--rate-seconds") {
      if (!number(&s.rate_seconds)) return std::nullopt;
    } else if (arg == "--rate-tolerance") {
      if (!number(&s.rate_tolerance)) return std::nullopt;
    } else if (arg == "--max-lateness-ms") {
      if (!number(&s.max_lateness_ms)) return std::nullopt;
    } else if (arg == "--abort-timeout-ms") {
      if (!number(&s.abort_timeout_ms)) return std::nullopt;
    } else if (arg == "--isolation") {
      auto v = value();
      if (!v || (*v != "process" && *v != "in_process")) return std::nullopt;
      s.isolated = *v == "process";
    } else if (arg == "--host") {
      auto v = value();
      if (!v) return std::nullopt;
      s.host = *v;
    } else if (!arg.empty() && arg[0] != '-' && s.driver.empty()) {
      s.driver = arg;
    } else {
      std::fprintf(stderr, "unknown or repeated argument: %s\n", arg.c_str());
      return std::nullopt;
    }
  }
  if (s.driver.empty() || (s.isolated && s.builtin)) return std::nullopt;
  return s;
}

}  // namespace

int Main(int argc, char** argv) {
  auto settings = ParseArgs(argc, argv);
  if (!settings) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  Expected<std::shared_ptr<plugin::DriverLibrary>> library = MakeError(ErrorKind::kInvalidInput, "");
  if (settings->builtin) {
    const BuiltInDriver* driver = FindBuiltInDriver(settings->driver);
    if (driver && driver->c_api) {
      library = plugin::DriverLibrary::BuiltIn(driver->c_api(), driver->name);
    } else {
      std::string with_table;
      for (const BuiltInDriver& candidate : BuiltInDrivers()) {
        if (!candidate.c_api) continue;
        if (!with_table.empty()) with_table += ", ";
        with_table += candidate.name;
      }
      std::printf("FAIL load: no built-in driver \"%s\" with a C ABI table in this build (built in: %s)\n",
                  settings->driver.c_str(), with_table.empty() ? "none" : with_table.c_str());
      return 1;
    }
  } else if (settings->isolated) {
    // Every call then crosses the host's sockets, so the checks cover the isolation too.
    nlohmann::json where = nlohmann::json::object();
    if (!settings->host.empty()) where["host"] = settings->host;
    auto host = plugin::FindDriverHost(where);
    if (!host) {
      std::printf("FAIL load: %s\n", host.error().message().c_str());
      return 1;
    }
    library = plugin::DriverLibrary::Isolated(settings->driver);
    settings->options = plugin::IsolatedOpenOptions(settings->driver, *host, 0, settings->options);
  } else {
    library = plugin::DriverLibrary::Load(settings->driver);
  }
  if (!library) {
    std::printf("FAIL load: %s\n", library.error().message().c_str());
    return 1;
  }
  std::printf("PASS load: %s, driver ABI %u.%u\n", library.value()->origin().c_str(), library.value()->api().abi_major,
              library.value()->api().abi_minor);
  Kit kit(std::move(library).value(), *settings);
  return kit.Run();
}

}  // namespace ctagent::drivers::conformance

int main(int argc, char** argv) { return ctagent::drivers::conformance::Main(argc, argv); }
