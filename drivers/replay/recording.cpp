#include "drivers/replay/recording.hpp"

#include <cstdio>
#include <cstring>
#include <sstream>

#include <nlohmann/json.hpp>

#include "drivers/replay/dicom_ct_pd.hpp"

namespace ctagent::drivers::replay {

namespace fs = std::filesystem;

namespace {

template <typename T>
void Put(std::uint8_t*& p, T v) {
  std::memcpy(p, &v, sizeof v);  // host order: little-endian on every supported target
  p += sizeof v;
}

template <typename T>
T Get(const std::uint8_t*& p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  p += sizeof v;
  return v;
}

std::string Number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", v);
  return text;
}

// A string member of `j`, or "" when `j` is not an object or the member is absent or not a string.
// Not nlohmann's value(key, ""): it throws on a member of another type (a damaged protocol.json
// must be an error value, not an exception), and GCC 12 at -O2 reports a null dereference inside
// it when this file is compiled in a unity batch.
std::string RecordingString(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return {};
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

Expected<ReplaySource> ParseReplayOptions(const nlohmann::json& options) {
  constexpr const char* kUsage =
      "replay driver: driver.options must be {\"path\": \"<recording directory>\", \"format\": \"ctagent\" or "
      "\"dicom-ct-pd\" (optional: the directory tells)}";
  if (!options.is_object() || !options.contains("path") || !options["path"].is_string()) {
    return MakeError(ErrorKind::kInvalidInput, kUsage);
  }
  std::optional<RecordingFormat> format;
  for (const auto& [key, value] : options.items()) {
    if (key == "format" && value.is_string() && (value == "ctagent" || value == "dicom-ct-pd")) {
      format = value == "ctagent" ? RecordingFormat::kCtagent : RecordingFormat::kDicomCtPd;
    } else if (key != "path") {
      return MakeError(ErrorKind::kInvalidInput, "replay driver options: /" + key + ": unknown key or value; " + kUsage);
    }
  }
  ReplaySource source{options["path"].get<std::string>(), RecordingFormat::kCtagent};
  if (format) {
    source.format = *format;
    return source;
  }
  std::error_code ec;
  if (fs::exists(source.directory / "protocol.json", ec)) return source;
  fs::directory_iterator it(source.directory, ec);
  if (ec) {
    return MakeError(ErrorKind::kNotFound, "replay driver: cannot read the recording directory " +
                                               source.directory.string() + ": " + ec.message() +
                                               "; driver.options.path must name a recording directory");
  }
  // Bounded: stops at the first .dcm (a scan directory holds thousands).
  for (const fs::directory_iterator end; !ec && it != end; it.increment(ec)) {
    const fs::path ext = it->path().extension();
    if (ext == ".dcm" || ext == ".DCM") {
      source.format = RecordingFormat::kDicomCtPd;
      return source;
    }
  }
  return MakeError(ErrorKind::kNotFound,
                   "replay driver: " + source.directory.string() +
                       " holds neither protocol.json (a recording of `ctagent record`, and complete) nor .dcm files "
                       "(DICOM-CT-PD, one file per view); point driver.options.path at a recording directory");
}

std::vector<std::string> ProtocolChanges(const ScanProtocol& p, const ScanProtocol& configured) {
  std::vector<std::string> out;
  auto differs = [&](const char* name, const std::string& recorded, const std::string& config) {
    if (recorded != config) out.push_back(std::string(name) + " " + recorded + " (the config says " + config + ")");
  };
  differs("geometry", ToString(p.geometry), ToString(configured.geometry));
  differs("rows", std::to_string(p.rows), std::to_string(configured.rows));
  differs("channels", std::to_string(p.channels), std::to_string(configured.channels));
  differs("sample_type", ToString(p.sample_type), ToString(configured.sample_type));
  differs("views_per_rotation", std::to_string(p.views_per_rotation), std::to_string(configured.views_per_rotation));
  differs("rotations", std::to_string(p.rotations), std::to_string(configured.rotations));
  differs("channel_pitch_mm", Number(p.channel_pitch_mm), Number(configured.channel_pitch_mm));
  differs("row_pitch_mm", Number(p.row_pitch_mm), Number(configured.row_pitch_mm));
  differs("rotation_time_s", Number(p.rotation_time_s), Number(configured.rotation_time_s));
  differs("table_start_mm", Number(p.table_start_mm), Number(configured.table_start_mm));
  differs("table_speed_mm_per_rotation", Number(p.table_speed_mm_per_rotation),
          Number(configured.table_speed_mm_per_rotation));
  if (p.geometry == GeometryKind::kFan) {
    differs("source_to_isocenter_mm", Number(p.source_to_isocenter_mm), Number(configured.source_to_isocenter_mm));
    differs("source_to_detector_mm", Number(p.source_to_detector_mm), Number(configured.source_to_detector_mm));
  }
  differs("dose_fraction", Number(p.dose_fraction), Number(configured.dose_fraction));
  differs("unattenuated_counts", Number(p.unattenuated_counts), Number(configured.unattenuated_counts));
  differs("sample_encoding", ToString(p.sample_encoding), ToString(configured.sample_encoding));
  if (p.sample_encoding == SampleEncoding::kLineIntegral) {
    differs("line_integral_slope", Number(p.line_integral_slope), Number(configured.line_integral_slope));
    differs("line_integral_intercept", Number(p.line_integral_intercept), Number(configured.line_integral_intercept));
  }
  return out;
}

Expected<AdoptedProtocol> ProtocolForReplay(const nlohmann::json& options, const ScanProtocol& configured) {
  auto source = ParseReplayOptions(options);
  if (!source) return MakeError(source.error());
  if (source->format == RecordingFormat::kDicomCtPd) {
    auto info = ReadDicomCtPdInfo(source->directory);
    if (!info) return MakeError(info.error().WithContext("replay driver"));
    return ProtocolFromDicomCtPd(*info, configured);
  }
  auto info = ReadRecordingInfo(source->directory);
  if (!info) return MakeError(info.error().WithContext("replay driver"));
  ScanProtocol p = info->protocol;  // what was recorded, all of it
  p.real_time = configured.real_time;
  return AdoptedProtocol{p, ProtocolChanges(p, configured)};
}

Expected<AdoptedProtocol> ScanProtocolFor(const std::string& driver_name, const nlohmann::json& options,
                                          const ScanProtocol& configured) {
  if (driver_name != "replay") return AdoptedProtocol{configured, {}};
  return ProtocolForReplay(options, configured);
}

Expected<RecordingInfo> ReadRecordingInfo(const fs::path& directory) {
  const fs::path file = directory / "protocol.json";
  std::ifstream in(file);
  if (!in) {
    return MakeError(ErrorKind::kNotFound, "recording " + directory.string() + ": no readable protocol.json; " +
                                               "is it a directory written by `ctagent record` (and complete)?");
  }
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
  auto bad = [&](const std::string& what) {
    return MakeError(ErrorKind::kCorrupt, file.string() + ": " + what);
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (RecordingString(j, "format") != kRecordingFormat) return bad(std::string("\"format\" is not \"") + kRecordingFormat + "\"");
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != kRecordingVersion) {
    return MakeError(ErrorKind::kUnsupported, file.string() + ": recording version " +
                                                  (j.contains("version") ? j["version"].dump() : "(none)") +
                                                  " is not supported; this build reads version 1");
  }
  RecordingInfo info;
  auto protocol = ProtocolFromJson(j.value("protocol", nlohmann::json()));
  if (!protocol) return MakeError(protocol.error().WithContext(file.string() + ": /protocol"));
  info.protocol = *protocol;
  if (!j.contains("views") || !j["views"].is_number_unsigned()) return bad("\"views\" is not a non-negative integer");
  info.views = j["views"].get<std::uint64_t>();
  if (info.views != info.protocol.TotalViews()) {
    return bad("\"views\" is " + std::to_string(info.views) + " but the protocol has " +
               std::to_string(info.protocol.TotalViews()) + " views");
  }
  const auto detector = j.find("detector");
  if (detector != j.end()) {
    info.detector_name = RecordingString(*detector, "name");
    info.detector_model = RecordingString(*detector, "model");
  }
  return info;
}

Expected<std::unique_ptr<RecordingWriter>> RecordingWriter::Create(const fs::path& directory,
                                                                   const ScanProtocol& protocol,
                                                                   const DetectorInfo& info) {
  std::error_code ec;
  if (fs::exists(directory, ec) && !fs::is_empty(directory, ec)) {
    return MakeError(ErrorKind::kInvalidInput,
                     "recording " + directory.string() + ": the directory exists and is not empty; choose a new one");
  }
  fs::create_directories(directory, ec);
  if (ec) return MakeError(ErrorKind::kIo, "recording " + directory.string() + ": cannot create: " + ec.message());
  std::unique_ptr<RecordingWriter> w(new RecordingWriter);
  w->directory_ = directory;
  w->protocol_ = protocol;
  w->info_ = info;
  w->views_.open(directory / "views.bin", std::ios::binary | std::ios::trunc);
  if (!w->views_) return MakeError(ErrorKind::kIo, "recording " + (directory / "views.bin").string() + ": cannot create");
  return w;
}

Status RecordingWriter::Append(const View& v) {
  if (v.sequence != count_) {
    return MakeError(ErrorKind::kProtocol, "recording: view " + std::to_string(v.sequence) + " arrived where view " +
                                               std::to_string(count_) + " was due");
  }
  std::uint8_t header[kViewHeaderBytes];
  std::uint8_t* p = header;
  std::memcpy(p, "CTV1", 4);
  p += 4;
  Put<std::uint32_t>(p, v.status_flags);
  Put<std::uint64_t>(p, v.sequence);
  Put<double>(p, v.gantry_angle_deg);
  Put<double>(p, v.table_position_mm);
  Put<std::int64_t>(p, v.timestamp_us);
  Put<std::uint64_t>(p, v.samples.size());
  views_.write(reinterpret_cast<const char*>(header), sizeof header);
  views_.write(reinterpret_cast<const char*>(v.samples.data()), static_cast<std::streamsize>(v.samples.size()));
  if (!views_) return MakeError(ErrorKind::kIo, "recording " + (directory_ / "views.bin").string() + ": write failed (disk full?)");
  ++count_;
  return Ok();
}

Status RecordingWriter::Finish() {
  views_.flush();
  views_.close();
  if (!views_) return MakeError(ErrorKind::kIo, "recording " + (directory_ / "views.bin").string() + ": write failed");
  const nlohmann::json j = {
      {"format", kRecordingFormat},
      {"version", kRecordingVersion},
      {"protocol", ToJson(protocol_)},
      {"views", count_},
      {"detector", {{"name", info_.name}, {"model", info_.model}}},
  };
  const fs::path tmp = directory_ / "protocol.json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) return MakeError(ErrorKind::kIo, "recording " + tmp.string() + ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, directory_ / "protocol.json", ec);
  if (ec) return MakeError(ErrorKind::kIo, "recording " + directory_.string() + ": cannot rename protocol.json: " + ec.message());
  return Ok();
}

Expected<std::unique_ptr<RecordingReader>> RecordingReader::Open(const fs::path& directory) {
  auto info = ReadRecordingInfo(directory);
  if (!info) return MakeError(info.error());
  std::unique_ptr<RecordingReader> r(new RecordingReader);
  r->info_ = *info;
  r->file_ = directory / "views.bin";
  r->in_.open(r->file_, std::ios::binary);
  if (!r->in_) return MakeError(ErrorKind::kNotFound, "recording " + r->file_.string() + ": cannot open");
  return r;
}

Expected<std::optional<View>> RecordingReader::Next() {
  if (next_ >= info_.views) return std::optional<View>{};
  auto corrupt = [&](const std::string& what) {
    return MakeError(ErrorKind::kCorrupt, "recording " + file_.string() + " at byte " + std::to_string(offset_) +
                                              " (view " + std::to_string(next_) + "): " + what);
  };
  std::uint8_t header[kViewHeaderBytes];
  if (!in_.read(reinterpret_cast<char*>(header), sizeof header)) return corrupt("truncated view header");
  if (std::memcmp(header, "CTV1", 4) != 0) return corrupt("bad view magic (expected \"CTV1\")");
  const std::uint8_t* p = header + 4;
  View v;
  v.status_flags = Get<std::uint32_t>(p);
  v.sequence = Get<std::uint64_t>(p);
  v.gantry_angle_deg = Get<double>(p);
  v.table_position_mm = Get<double>(p);
  v.timestamp_us = Get<std::int64_t>(p);
  const auto bytes = Get<std::uint64_t>(p);
  if (v.sequence != next_) return corrupt("sequence number " + std::to_string(v.sequence));
  if (bytes != info_.protocol.BytesPerView()) {
    return corrupt(std::to_string(bytes) + " sample bytes, the protocol needs " +
                   std::to_string(info_.protocol.BytesPerView()));
  }
  v.samples.resize(bytes);
  if (!in_.read(reinterpret_cast<char*>(v.samples.data()), static_cast<std::streamsize>(bytes))) {
    return corrupt("truncated samples");
  }
  offset_ += kViewHeaderBytes + bytes;
  ++next_;
  return std::optional<View>(std::move(v));
}

}  // namespace ctagent::drivers::replay
