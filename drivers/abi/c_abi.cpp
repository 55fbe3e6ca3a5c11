#include "drivers/abi/c_abi.hpp"

#include <algorithm>
#include <cstring>

namespace ctagent::drivers::abi {

const char* StatusName(ctagent_status status) {
  switch (status) {
    case CTAGENT_OK: return "CTAGENT_OK";
    case CTAGENT_END_OF_SCAN: return "CTAGENT_END_OF_SCAN";
    case CTAGENT_NO_SCAN: return "CTAGENT_NO_SCAN";
    case CTAGENT_E_INVALID: return "CTAGENT_E_INVALID";
    case CTAGENT_E_UNSUPPORTED: return "CTAGENT_E_UNSUPPORTED";
    case CTAGENT_E_IO: return "CTAGENT_E_IO";
    case CTAGENT_E_ABORTED: return "CTAGENT_E_ABORTED";
    case CTAGENT_E_BUFFER_TOO_SMALL: return "CTAGENT_E_BUFFER_TOO_SMALL";
    case CTAGENT_E_HARDWARE: return "CTAGENT_E_HARDWARE";
    case CTAGENT_E_INTERNAL: return "CTAGENT_E_INTERNAL";
    default: return "an unknown status";
  }
}

ErrorKind KindOf(ctagent_status status) {
  switch (status) {
    case CTAGENT_E_INVALID: return ErrorKind::kInvalidInput;
    case CTAGENT_E_UNSUPPORTED: return ErrorKind::kUnsupported;
    case CTAGENT_E_IO: return ErrorKind::kIo;
    case CTAGENT_E_ABORTED: return ErrorKind::kCancelled;
    case CTAGENT_E_HARDWARE: return ErrorKind::kIo;
    default: return ErrorKind::kInternal;
  }
}

ctagent_status StatusOf(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidInput: return CTAGENT_E_INVALID;
    case ErrorKind::kUnsupported: return CTAGENT_E_UNSUPPORTED;
    case ErrorKind::kIo:
    case ErrorKind::kNotFound:
    case ErrorKind::kCorrupt:
    case ErrorKind::kNoSpace: return CTAGENT_E_IO;
    case ErrorKind::kCancelled: return CTAGENT_E_ABORTED;
    default: return CTAGENT_E_INTERNAL;
  }
}

ctagent_protocol ToC(const ScanProtocol& p) {
  ctagent_protocol c{};
  c.struct_size = sizeof c;
  c.geometry = p.geometry == GeometryKind::kFan ? CTAGENT_GEOMETRY_FAN : CTAGENT_GEOMETRY_PARALLEL;
  c.views_per_rotation = p.views_per_rotation;
  c.rotations = p.rotations;
  c.rows = p.rows;
  c.channels = p.channels;
  c.sample_type = p.sample_type == SampleType::kFloat32 ? CTAGENT_SAMPLE_FLOAT32 : CTAGENT_SAMPLE_UINT16;
  c.real_time = p.real_time ? 1u : 0u;
  c.channel_pitch_mm = p.channel_pitch_mm;
  c.row_pitch_mm = p.row_pitch_mm;
  c.rotation_time_s = p.rotation_time_s;
  c.table_start_mm = p.table_start_mm;
  c.table_speed_mm_per_rotation = p.table_speed_mm_per_rotation;
  c.dose_fraction = p.dose_fraction;
  c.unattenuated_counts = p.unattenuated_counts;
  c.seed = p.seed;
  c.source_to_isocenter_mm = p.source_to_isocenter_mm;
  c.source_to_detector_mm = p.source_to_detector_mm;
  c.sample_encoding =
      p.sample_encoding == SampleEncoding::kLineIntegral ? CTAGENT_ENCODING_LINE_INTEGRAL : CTAGENT_ENCODING_COUNTS;
  c.line_integral_slope = p.line_integral_slope;
  c.line_integral_intercept = p.line_integral_intercept;
  return c;
}

Expected<ScanProtocol> FromC(const ctagent_protocol* c) {
  if (c == nullptr) return MakeError(ErrorKind::kInvalidInput, "protocol is NULL");
  if (c->struct_size < CTAGENT_PROTOCOL_SIZE_1_0) {
    return MakeError(ErrorKind::kInvalidInput, "protocol struct_size " + std::to_string(c->struct_size) +
                                                   " is smaller than ABI 1.0's " +
                                                   std::to_string(CTAGENT_PROTOCOL_SIZE_1_0));
  }
  // The 1.1 fields exist only when the caller's struct has them; a 1.0 caller means parallel
  // beam and counts.
  const bool has_1_1 = c->struct_size >= sizeof(ctagent_protocol);
  ScanProtocol p;
  if (c->geometry == CTAGENT_GEOMETRY_PARALLEL) {
    p.geometry = GeometryKind::kParallel;
  } else if (c->geometry == CTAGENT_GEOMETRY_FAN && has_1_1) {
    p.geometry = GeometryKind::kFan;
  } else {
    return MakeError(ErrorKind::kUnsupported, "geometry " + std::to_string(c->geometry) + " is not supported" +
                                                  (has_1_1 ? "" : " by an ABI 1.0 protocol"));
  }
  if (has_1_1) {
    p.source_to_isocenter_mm = c->source_to_isocenter_mm;
    p.source_to_detector_mm = c->source_to_detector_mm;
    p.line_integral_slope = c->line_integral_slope;
    p.line_integral_intercept = c->line_integral_intercept;
    if (c->sample_encoding == CTAGENT_ENCODING_COUNTS) {
      p.sample_encoding = SampleEncoding::kCounts;
    } else if (c->sample_encoding == CTAGENT_ENCODING_LINE_INTEGRAL) {
      p.sample_encoding = SampleEncoding::kLineIntegral;
    } else {
      return MakeError(ErrorKind::kUnsupported,
                       "sample_encoding " + std::to_string(c->sample_encoding) + " is unknown");
    }
  }
  if (c->sample_type == CTAGENT_SAMPLE_UINT16) {
    p.sample_type = SampleType::kUint16;
  } else if (c->sample_type == CTAGENT_SAMPLE_FLOAT32) {
    p.sample_type = SampleType::kFloat32;
  } else {
    return MakeError(ErrorKind::kUnsupported, "sample_type " + std::to_string(c->sample_type) + " is unknown");
  }
  p.views_per_rotation = c->views_per_rotation;
  p.rotations = c->rotations;
  p.rows = c->rows;
  p.channels = c->channels;
  p.real_time = c->real_time != 0;
  p.channel_pitch_mm = c->channel_pitch_mm;
  p.row_pitch_mm = c->row_pitch_mm;
  p.rotation_time_s = c->rotation_time_s;
  p.table_start_mm = c->table_start_mm;
  p.table_speed_mm_per_rotation = c->table_speed_mm_per_rotation;
  p.dose_fraction = c->dose_fraction;
  p.unattenuated_counts = c->unattenuated_counts;
  p.seed = c->seed;
  return p;
}

std::size_t CopyText(const std::string& text, char* buffer, std::size_t capacity) {
  if (buffer != nullptr && capacity > 0) {
    const std::size_t n = std::min(text.size(), capacity - 1);
    std::memcpy(buffer, text.data(), n);
    buffer[n] = '\0';
  }
  return text.size();
}

Status CheckDriverTakes(const ctagent_driver_api& api, const ScanProtocol& protocol, const std::string& origin) {
  if (api.abi_minor >= 1) return Ok();
  if (protocol.geometry == GeometryKind::kParallel && protocol.sample_encoding == SampleEncoding::kCounts) return Ok();
  // A 1.0 driver would read a fan-beam or line-integral protocol as parallel-beam counts.
  return MakeError(ErrorKind::kUnsupported,
                   "detector driver " + origin + " was built for driver ABI " + std::to_string(api.abi_major) + "." +
                       std::to_string(api.abi_minor) +
                       ", which carries parallel-beam count protocols only; rebuild it against ctagent_driver.h "
                       "1.1 for fan beam or line integrals, or set scan.geometry \"parallel\" and "
                       "scan.sample_encoding \"counts\"");
}

Status ValidateApi(const ctagent_driver_api* api, const std::string& origin) {
  const std::string who = "detector driver " + origin;
  if (api == nullptr) {
    return MakeError(ErrorKind::kUnsupported, who + ": " + CTAGENT_DRIVER_ENTRY_SYMBOL + "(" +
                                                  std::to_string(CTAGENT_DRIVER_ABI_MAJOR) +
                                                  ") returned NULL: the driver does not support driver ABI " +
                                                  std::to_string(CTAGENT_DRIVER_ABI_MAJOR) + ".x");
  }
  if (api->abi_major != CTAGENT_DRIVER_ABI_MAJOR) {
    return MakeError(ErrorKind::kUnsupported,
                     who + ": built for driver ABI " + std::to_string(api->abi_major) + "." +
                         std::to_string(api->abi_minor) + ", but this agent speaks ABI " +
                         std::to_string(CTAGENT_DRIVER_ABI_MAJOR) + "." + std::to_string(CTAGENT_DRIVER_ABI_MINOR) +
                         "; rebuild the driver against ctagent_driver.h of ABI " +
                         std::to_string(CTAGENT_DRIVER_ABI_MAJOR) + ".x");
  }
  // ABI 1.0 and 1.1 have the same table; 1.2 appended wait_scan, which a 1.1 table lacks.
  if (api->struct_size < CTAGENT_DRIVER_API_SIZE_1_1) {
    return MakeError(ErrorKind::kUnsupported, who + ": its function table is " + std::to_string(api->struct_size) +
                                                  " bytes, ABI 1.1 needs at least " +
                                                  std::to_string(CTAGENT_DRIVER_API_SIZE_1_1) +
                                                  "; set struct_size = sizeof(ctagent_driver_api)");
  }
  struct Slot {
    const char* name;
    bool present;
  };
  const Slot slots[] = {
      {"open", api->open != nullptr},           {"close", api->close != nullptr},
      {"get_capabilities", api->get_capabilities != nullptr},
      {"arm", api->arm != nullptr},             {"start", api->start != nullptr},
      {"next_view", api->next_view != nullptr}, {"stop", api->stop != nullptr},
      {"abort", api->abort != nullptr},         {"self_test", api->self_test != nullptr},
      {"get_health", api->get_health != nullptr}, {"last_error", api->last_error != nullptr},
  };
  for (const Slot& s : slots) {
    if (!s.present) {
      return MakeError(ErrorKind::kUnsupported,
                       who + ": its function table has no '" + s.name +
                           "' (NULL); every function of ABI 1.0 is required (only 1.2's wait_scan may be NULL)");
    }
  }
  return Ok();
}

decltype(ctagent_driver_api::wait_scan) WaitScanOf(const ctagent_driver_api& api) {
  if (api.abi_minor < 2 || api.struct_size < offsetof(ctagent_driver_api, wait_scan) + sizeof api.wait_scan) {
    return nullptr;
  }
  return api.wait_scan;
}

void ToC(const ScanAnnouncement& a, ctagent_scan_announcement* out) {
  if (out->protocol != nullptr) {
    const std::uint32_t caller_size = out->protocol->struct_size;
    const ctagent_protocol c = ToC(a.protocol);
    std::memcpy(out->protocol, &c, std::min<std::size_t>(caller_size, sizeof c));
    out->protocol->struct_size = static_cast<std::uint32_t>(std::min<std::size_t>(caller_size, sizeof c));
  }
  CopyText(a.accession_number, out->accession_number, sizeof out->accession_number);
  CopyText(a.procedure_step_id, out->procedure_step_id, sizeof out->procedure_step_id);
}

Expected<ScanAnnouncement> FromC(const ctagent_scan_announcement* c) {
  if (c == nullptr || c->struct_size < sizeof(ctagent_scan_announcement)) {
    return MakeError(ErrorKind::kInvalidInput, "scan announcement is NULL or its struct_size is too small");
  }
  if (c->protocol == nullptr) return MakeError(ErrorKind::kInvalidInput, "scan announcement has no protocol");
  auto protocol = FromC(c->protocol);
  if (!protocol) return MakeError(protocol.error().WithContext("announced protocol"));
  ScanAnnouncement a;
  a.protocol = *protocol;
  // The driver's strings: bounded by the arrays even if a NUL is missing.
  a.accession_number.assign(c->accession_number, strnlen(c->accession_number, sizeof c->accession_number));
  a.procedure_step_id.assign(c->procedure_step_id, strnlen(c->procedure_step_id, sizeof c->procedure_step_id));
  return a;
}

}  // namespace ctagent::drivers::abi
