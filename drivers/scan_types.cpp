#include "drivers/scan_types.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "base/json_integer.hpp"

namespace ctagent::drivers {

namespace {

// What a JSON value is, for "found ..." in messages.
std::string Found(const nlohmann::json& v) {
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return "string " + nlohmann::json(s).dump();
  }
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  return v.dump();
}

Unexpected FieldError(std::string_view key, const std::string& expected, const nlohmann::json& found) {
  // Appended piecewise: GCC 12's -Wrestrict misfires on `"literal" + std::string&&` at -O3.
  std::string message = "/";
  message.append(key).append(": expected ").append(expected).append(", found ").append(Found(found));
  return MakeError(ErrorKind::kInvalidInput, std::move(message));
}

Status ReadUint(const nlohmann::json& v, std::string_view key, std::uint64_t min, std::uint64_t max,
                std::uint64_t* out) {
  const std::string expected = "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  const std::optional<std::uint64_t> n = IntegerAs<std::uint64_t>(v);
  if (!n || *n < min || *n > max) return FieldError(key, expected, v);
  *out = *n;
  return Ok();
}

Status ReadU32(const nlohmann::json& v, std::string_view key, std::uint32_t min, std::uint32_t max,
               std::uint32_t* out) {
  std::uint64_t wide = 0;
  if (auto s = ReadUint(v, key, min, max, &wide); !s) return s;
  *out = static_cast<std::uint32_t>(wide);
  return Ok();
}

// A finite number in (min, max] when `min_open`, else [min, max].
Status ReadDouble(const nlohmann::json& v, std::string_view key, double min, bool min_open, double max,
                  const std::string& expected, double* out) {
  if (!v.is_number()) return FieldError(key, expected, v);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d > max || d < min || (min_open && d == min)) return FieldError(key, expected, v);
  *out = d;
  return Ok();
}

constexpr double kHuge = 1e9;

using FieldReader = std::function<Status(const nlohmann::json&, ScanProtocol&)>;

struct ProtocolField {
  const char* key;
  FieldReader read;
};

// Plausibility limits of the HAL; each driver checks its own, narrower capabilities in Arm().
const std::vector<ProtocolField>& ProtocolFields() {
  static const std::vector<ProtocolField> kFields = {
      {"geometry",
       [](const nlohmann::json& v, ScanProtocol& p) -> Status {
         if (v.is_string() && v.get<std::string>() == "parallel") {
           p.geometry = GeometryKind::kParallel;
         } else if (v.is_string() && v.get<std::string>() == "fan") {
           p.geometry = GeometryKind::kFan;
         } else {
           return FieldError("geometry", "\"parallel\" or \"fan\"", v);
         }
         return Ok();
       }},
      {"source_to_isocenter_mm",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "source_to_isocenter_mm", 0, true, 10000, "a number > 0 and <= 10000",
                           &p.source_to_isocenter_mm);
       }},
      {"source_to_detector_mm",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "source_to_detector_mm", 0, true, 10000, "a number > 0 and <= 10000",
                           &p.source_to_detector_mm);
       }},
      {"sample_encoding",
       [](const nlohmann::json& v, ScanProtocol& p) -> Status {
         if (v.is_string() && v.get<std::string>() == "counts") {
           p.sample_encoding = SampleEncoding::kCounts;
         } else if (v.is_string() && v.get<std::string>() == "line_integral") {
           p.sample_encoding = SampleEncoding::kLineIntegral;
         } else {
           return FieldError("sample_encoding", "\"counts\" or \"line_integral\"", v);
         }
         return Ok();
       }},
      {"line_integral_slope",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "line_integral_slope", 0, true, 1, "a number > 0 and <= 1", &p.line_integral_slope);
       }},
      {"line_integral_intercept",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "line_integral_intercept", -100, false, 100, "a number from -100 to 100",
                           &p.line_integral_intercept);
       }},
      {"views_per_rotation",
       [](const nlohmann::json& v, ScanProtocol& p) { return ReadU32(v, "views_per_rotation", 1, 100000, &p.views_per_rotation); }},
      {"rotations", [](const nlohmann::json& v, ScanProtocol& p) { return ReadU32(v, "rotations", 1, 10000, &p.rotations); }},
      {"rows", [](const nlohmann::json& v, ScanProtocol& p) { return ReadU32(v, "rows", 1, 1024, &p.rows); }},
      {"channels", [](const nlohmann::json& v, ScanProtocol& p) { return ReadU32(v, "channels", 1, 16384, &p.channels); }},
      {"channel_pitch_mm",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "channel_pitch_mm", 0, true, 100, "a number > 0 and <= 100", &p.channel_pitch_mm);
       }},
      {"row_pitch_mm",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "row_pitch_mm", 0, true, 100, "a number > 0 and <= 100", &p.row_pitch_mm);
       }},
      {"rotation_time_s",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "rotation_time_s", 0, true, 3600, "a number > 0 and <= 3600", &p.rotation_time_s);
       }},
      {"table_start_mm",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "table_start_mm", -kHuge, false, kHuge, "a finite number", &p.table_start_mm);
       }},
      {"table_speed_mm_per_rotation",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "table_speed_mm_per_rotation", -kHuge, false, kHuge, "a finite number",
                           &p.table_speed_mm_per_rotation);
       }},
      {"dose_fraction",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "dose_fraction", 0, true, 1, "a number > 0 and <= 1", &p.dose_fraction);
       }},
      {"unattenuated_counts",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadDouble(v, "unattenuated_counts", 0, true, kHuge, "a number > 0 and <= 1e9", &p.unattenuated_counts);
       }},
      {"sample_type",
       [](const nlohmann::json& v, ScanProtocol& p) -> Status {
         if (v.is_string() && v.get<std::string>() == "uint16") {
           p.sample_type = SampleType::kUint16;
         } else if (v.is_string() && v.get<std::string>() == "float32") {
           p.sample_type = SampleType::kFloat32;
         } else {
           return FieldError("sample_type", "\"uint16\" or \"float32\"", v);
         }
         return Ok();
       }},
      {"seed",
       [](const nlohmann::json& v, ScanProtocol& p) {
         return ReadUint(v, "seed", 0, std::numeric_limits<std::uint64_t>::max(), &p.seed);
       }},
      {"real_time",
       [](const nlohmann::json& v, ScanProtocol& p) -> Status {
         if (!v.is_boolean()) return FieldError("real_time", "true or false", v);
         p.real_time = v.get<bool>();
         return Ok();
       }},
  };
  return kFields;
}

}  // namespace

std::size_t SampleSize(SampleType type) {
  switch (type) {
    case SampleType::kUint16:
      return 2;
    case SampleType::kFloat32:
      return 4;
  }
  return 0;
}

const char* ToString(GeometryKind kind) {
  switch (kind) {
    case GeometryKind::kParallel:
      return "parallel";
    case GeometryKind::kFan:
      return "fan";
  }
  return "unknown";
}

const char* ToString(SampleEncoding encoding) {
  switch (encoding) {
    case SampleEncoding::kCounts:
      return "counts";
    case SampleEncoding::kLineIntegral:
      return "line_integral";
  }
  return "unknown";
}

const char* ToString(SampleType type) {
  switch (type) {
    case SampleType::kUint16:
      return "uint16";
    case SampleType::kFloat32:
      return "float32";
  }
  return "unknown";
}

nlohmann::json ToJson(const ScanProtocol& p) {
  return nlohmann::json{
      {"geometry", ToString(p.geometry)},
      {"views_per_rotation", p.views_per_rotation},
      {"rotations", p.rotations},
      {"rows", p.rows},
      {"channels", p.channels},
      {"channel_pitch_mm", p.channel_pitch_mm},
      {"row_pitch_mm", p.row_pitch_mm},
      {"rotation_time_s", p.rotation_time_s},
      {"table_start_mm", p.table_start_mm},
      {"table_speed_mm_per_rotation", p.table_speed_mm_per_rotation},
      {"dose_fraction", p.dose_fraction},
      {"unattenuated_counts", p.unattenuated_counts},
      {"sample_type", ToString(p.sample_type)},
      {"seed", p.seed},
      {"real_time", p.real_time},
      {"source_to_isocenter_mm", p.source_to_isocenter_mm},
      {"source_to_detector_mm", p.source_to_detector_mm},
      {"sample_encoding", ToString(p.sample_encoding)},
      {"line_integral_slope", p.line_integral_slope},
      {"line_integral_intercept", p.line_integral_intercept},
  };
}

Expected<ScanProtocol> ProtocolFromJson(const nlohmann::json& j) {
  if (!j.is_object()) {
    return MakeError(ErrorKind::kInvalidInput, "scan protocol: expected a JSON object, found " + Found(j));
  }
  ScanProtocol p;  // keys that are absent keep their defaults
  for (const auto& [key, value] : j.items()) {
    const ProtocolField* field = nullptr;
    for (const ProtocolField& f : ProtocolFields()) {
      if (key == f.key) field = &f;
    }
    if (field == nullptr) {
      return MakeError(ErrorKind::kInvalidInput, "/" + key + ": unknown scan protocol key");
    }
    if (auto s = field->read(value, p); !s) return MakeError(s.error());
  }
  if (p.geometry == GeometryKind::kFan && !(p.source_to_detector_mm > p.source_to_isocenter_mm)) {
    return MakeError(ErrorKind::kInvalidInput, "/source_to_detector_mm: must exceed source_to_isocenter_mm (" +
                                                   std::to_string(p.source_to_isocenter_mm) + ") for a fan beam");
  }
  return p;
}

}  // namespace ctagent::drivers
