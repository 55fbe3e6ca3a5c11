#include "drivers/abi/detector_export.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <string>

#include "drivers/abi/c_abi.hpp"

using ctagent::ErrorKind;
using ctagent::drivers::Detector;
using ctagent::drivers::View;

// The opaque handle of the ABI, for detectors exported from C++.
struct ctagent_driver {
  std::unique_ptr<Detector> detector;
  enum class State { kIdle, kArmed, kAcquiring, kEnded, kAborted } state = State::kIdle;
  std::uint64_t bytes_per_view = 0;
  std::optional<View> pending;  // a view refused for a too-small buffer, handed out next time
  std::atomic<std::uint64_t> views_delivered{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<bool> abort_requested{false};
  std::mutex error_mutex;  // last_error may be read from another thread than the failing call
  std::string last_error;
};

namespace ctagent::drivers::abi {

namespace {

ctagent_status Fail(ctagent_driver* d, ctagent_status status, const std::string& message) {
  d->errors.fetch_add(1);
  std::lock_guard lock(d->error_mutex);
  d->last_error = message;
  return status;
}

ctagent_status Fail(ctagent_driver* d, const Error& e) { return Fail(d, StatusOf(e.kind()), e.message()); }

// No C++ exception may cross the C boundary.
template <typename F>
ctagent_status Guard(ctagent_driver* d, const char* call, F&& body) {
  if (d == nullptr) return CTAGENT_E_INVALID;
  try {
    return body();
  } catch (const std::exception& e) {
    return Fail(d, CTAGENT_E_INTERNAL, std::string(call) + ": internal error: " + e.what());
  } catch (...) {
    return Fail(d, CTAGENT_E_INTERNAL, std::string(call) + ": internal error (unknown exception)");
  }
}

void Close(ctagent_driver* d) {
  if (d == nullptr) return;
  d->detector->Abort();
  delete d;
}

ctagent_status GetCapabilities(ctagent_driver* d, ctagent_capabilities* out) {
  return Guard(d, "get_capabilities", [&] {
    if (out == nullptr || out->struct_size < sizeof(ctagent_capabilities)) {
      return Fail(d, CTAGENT_E_INVALID, "get_capabilities: out is NULL or its struct_size is too small");
    }
    const DetectorInfo info = d->detector->Info();
    out->max_rows = info.max_rows;
    out->max_channels = info.max_channels;
    out->sample_types = 0;
    for (SampleType t : info.sample_types) {
      out->sample_types |= 1u << (t == SampleType::kFloat32 ? CTAGENT_SAMPLE_FLOAT32 : CTAGENT_SAMPLE_UINT16);
    }
    out->max_view_rate_hz = info.max_view_rate_hz;
    CopyText(info.name, out->name, sizeof out->name);
    CopyText(info.model, out->model, sizeof out->model);
    return CTAGENT_OK;
  });
}

ctagent_status Arm(ctagent_driver* d, const ctagent_protocol* c) {
  return Guard(d, "arm", [&] {
    d->state = ctagent_driver::State::kIdle;
    d->pending.reset();
    auto p = FromC(c);
    if (!p) return Fail(d, p.error().WithContext("arm"));
    if (auto s = d->detector->Arm(*p); !s) return Fail(d, s.error());
    d->abort_requested = false;
    d->bytes_per_view = p->BytesPerView();
    d->state = ctagent_driver::State::kArmed;
    return CTAGENT_OK;
  });
}

ctagent_status Start(ctagent_driver* d) {
  return Guard(d, "start", [&] {
    if (d->state != ctagent_driver::State::kArmed) {
      return Fail(d, CTAGENT_E_INVALID, "start: the detector is not armed; call arm() first");
    }
    d->state = ctagent_driver::State::kAcquiring;
    return CTAGENT_OK;
  });
}

ctagent_status NextView(ctagent_driver* d, ctagent_view* view, void* samples, std::uint64_t capacity) {
  return Guard(d, "next_view", [&] {
    using State = ctagent_driver::State;
    if (view == nullptr || view->struct_size < sizeof(ctagent_view)) {
      return Fail(d, CTAGENT_E_INVALID, "next_view: view is NULL or its struct_size is too small");
    }
    if (d->state == State::kAborted || d->abort_requested) {
      d->state = State::kAborted;
      return Fail(d, CTAGENT_E_ABORTED, "next_view: the scan was aborted; arm a new scan");
    }
    if (d->state == State::kEnded) return CTAGENT_END_OF_SCAN;
    if (d->state != State::kAcquiring) {
      return Fail(d, CTAGENT_E_INVALID, "next_view: no scan is running; call arm() and start() first");
    }
    if (!d->pending) {
      auto next = d->detector->NextView();
      if (!next) {
        if (next.error().kind() == ErrorKind::kCancelled) d->state = State::kAborted;
        return Fail(d, next.error());
      }
      if (!next->has_value()) {
        d->state = State::kEnded;
        return CTAGENT_END_OF_SCAN;
      }
      d->pending = std::move(**next);
    }
    const View& v = *d->pending;
    view->sequence = v.sequence;
    view->gantry_angle_deg = v.gantry_angle_deg;
    view->table_position_mm = v.table_position_mm;
    view->timestamp_us = v.timestamp_us;
    view->status_flags = v.status_flags;
    view->sample_bytes = v.samples.size();
    if (samples == nullptr || capacity < v.samples.size()) {
      return Fail(d, CTAGENT_E_BUFFER_TOO_SMALL,
                  "next_view: the buffer holds " + std::to_string(capacity) + " bytes, the view needs " +
                      std::to_string(v.samples.size()));
    }
    std::memcpy(samples, v.samples.data(), v.samples.size());
    d->pending.reset();
    d->views_delivered.fetch_add(1);
    return CTAGENT_OK;
  });
}

ctagent_status Stop(ctagent_driver* d) {
  return Guard(d, "stop", [&] {
    d->pending.reset();
    if (d->state == ctagent_driver::State::kAcquiring || d->state == ctagent_driver::State::kArmed) {
      d->detector->Abort();  // ends the C++ scan; the next arm() clears it
    }
    d->state = ctagent_driver::State::kIdle;
    return CTAGENT_OK;
  });
}

ctagent_status WaitScan(ctagent_driver* d, std::uint32_t timeout_ms, ctagent_scan_announcement* out) {
  return Guard(d, "wait_scan", [&] {
    if (out == nullptr || out->struct_size < sizeof(ctagent_scan_announcement) || out->protocol == nullptr ||
        out->protocol->struct_size < CTAGENT_PROTOCOL_SIZE_1_0) {
      return Fail(d, CTAGENT_E_INVALID, "wait_scan: out is NULL, too small, or has no protocol buffer");
    }
    if (!d->detector->AnnouncesScans()) {
      return Fail(d, CTAGENT_E_UNSUPPORTED, "wait_scan: this detector does not announce scans");
    }
    d->abort_requested = false;
    auto announced = d->detector->WaitForScan(std::chrono::milliseconds(timeout_ms));
    if (!announced) {
      if (announced.error().kind() == ErrorKind::kCancelled) d->state = ctagent_driver::State::kAborted;
      return Fail(d, announced.error());
    }
    if (!announced->has_value()) return CTAGENT_NO_SCAN;
    // Armed as after arm(): start() and next_view() follow.
    d->pending.reset();
    d->bytes_per_view = (*announced)->protocol.BytesPerView();
    d->state = ctagent_driver::State::kArmed;
    ToC(**announced, out);
    return CTAGENT_OK;
  });
}

void AbortScan(ctagent_driver* d) {
  if (d == nullptr) return;
  d->abort_requested = true;
  d->detector->Abort();
}

ctagent_status SelfTest(ctagent_driver* d) {
  return Guard(d, "self_test", [&] {
    if (auto s = d->detector->SelfTest(); !s) return Fail(d, CTAGENT_E_HARDWARE, s.error().message());
    return CTAGENT_OK;
  });
}

ctagent_status GetHealth(ctagent_driver* d, ctagent_health* out) {
  return Guard(d, "get_health", [&] {
    if (out == nullptr || out->struct_size < sizeof(ctagent_health)) {
      return Fail(d, CTAGENT_E_INVALID, "get_health: out is NULL or its struct_size is too small");
    }
    using State = ctagent_driver::State;
    switch (d->state) {
      case State::kIdle:
      case State::kEnded: out->state = CTAGENT_STATE_IDLE; break;
      case State::kArmed: out->state = CTAGENT_STATE_ARMED; break;
      case State::kAcquiring: out->state = CTAGENT_STATE_ACQUIRING; break;
      case State::kAborted: out->state = CTAGENT_STATE_ABORTED; break;
    }
    out->views_delivered = d->views_delivered.load();
    out->errors = d->errors.load();
    out->temperature_c = std::numeric_limits<double>::quiet_NaN();
    return CTAGENT_OK;
  });
}

std::size_t LastError(ctagent_driver* d, char* buffer, std::size_t capacity) {
  if (d == nullptr) return CopyText("", buffer, capacity);
  std::lock_guard lock(d->error_mutex);
  return CopyText(d->last_error, buffer, capacity);
}

}  // namespace

ctagent_driver_api BaseExportTable() {
  ctagent_driver_api t{};
  t.struct_size = sizeof t;
  t.abi_major = CTAGENT_DRIVER_ABI_MAJOR;
  t.abi_minor = CTAGENT_DRIVER_ABI_MINOR;
  t.close = Close;
  t.get_capabilities = GetCapabilities;
  t.arm = Arm;
  t.start = Start;
  t.next_view = NextView;
  t.stop = Stop;
  t.abort = AbortScan;
  t.self_test = SelfTest;
  t.get_health = GetHealth;
  t.last_error = LastError;
  t.wait_scan = WaitScan;
  return t;
}

ctagent_status OpenExported(DetectorFactory factory, const char* options_json, ctagent_driver** out, char* error,
                            std::size_t error_capacity) {
  if (out == nullptr) {
    CopyText("open: out is NULL", error, error_capacity);
    return CTAGENT_E_INVALID;
  }
  *out = nullptr;
  try {
    const nlohmann::json options =
        nlohmann::json::parse(options_json == nullptr ? "{}" : options_json, nullptr, /*allow_exceptions=*/false);
    if (options.is_discarded()) {
      CopyText("open: the options are not valid JSON", error, error_capacity);
      return CTAGENT_E_INVALID;
    }
    auto detector = factory(options);
    if (!detector) {
      CopyText(detector.error().message(), error, error_capacity);
      return StatusOf(detector.error().kind());
    }
    auto* d = new ctagent_driver;
    d->detector = std::move(detector).value();
    *out = d;
    return CTAGENT_OK;
  } catch (const std::exception& e) {
    CopyText(std::string("open: internal error: ") + e.what(), error, error_capacity);
    return CTAGENT_E_INTERNAL;
  }
}

}  // namespace ctagent::drivers::abi
