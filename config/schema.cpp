#include "config/schema.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <type_traits>
#include <utility>

#include "base/json_integer.hpp"
#include "base/uid.hpp"
#include "base/url.hpp"

namespace ctagent::config::schema {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- Assigning checked values to struct fields, and reading defaults back -------------------

template <typename T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
void Assign(T& target, const json& v) {
  target = static_cast<T>(v.get<std::uint64_t>());
}
void Assign(double& target, const json& v) { target = v.get<double>(); }
void Assign(bool& target, const json& v) { target = v.get<bool>(); }
void Assign(std::string& target, const json& v) { target = v.get<std::string>(); }
void Assign(fs::path& target, const json& v) { target = v.get<std::string>(); }
void Assign(json& target, const json& v) { target = v; }
void Assign(drivers::SampleType& target, const json& v) {
  target = v.get<std::string>() == "float32" ? drivers::SampleType::kFloat32 : drivers::SampleType::kUint16;
}
void Assign(drivers::GeometryKind& target, const json& v) {
  target = v.get<std::string>() == "fan" ? drivers::GeometryKind::kFan : drivers::GeometryKind::kParallel;
}
void Assign(drivers::SampleEncoding& target, const json& v) {
  target = v.get<std::string>() == "line_integral" ? drivers::SampleEncoding::kLineIntegral
                                                   : drivers::SampleEncoding::kCounts;
}

template <typename T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
json Value(const T& v) {
  return static_cast<std::uint64_t>(v);
}
json Value(double v) { return v; }
json Value(bool v) { return v; }
json Value(const std::string& v) { return v; }
json Value(const fs::path& v) { return v.string(); }
json Value(const json& v) { return v; }
json Value(drivers::SampleType v) { return drivers::ToString(v); }
json Value(drivers::GeometryKind v) { return drivers::ToString(v); }
json Value(drivers::SampleEncoding v) { return drivers::ToString(v); }

// The target of a schema row: a struct field of AgentConfig.
#define CTAGENT_TARGET(member)                                                 \
  .set = [](AgentConfig& c, const nlohmann::json& v) { Assign(c.member, v); }, \
  .get = [](const AgentConfig& c) { return Value(c.member); }

// ---- String rules --------------------------------------------------------------------------

bool NoBackslash(const std::string& s) { return s.find('\\') == std::string::npos; }

bool TerminalIdOk(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char ch : s) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                    ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

bool NonEmptyShort(const std::string& s) { return !s.empty() && s.size() <= 64; }

// A POSIX portable group name, or empty (no group).
bool GroupNameOk(const std::string& s) {
  if (s.size() > 32 || (!s.empty() && s[0] == '-')) return false;
  for (char ch : s) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                    ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

// A console user's name as the page shows it: at most 64 bytes, no control characters (it is
// printed by `ctagent status`, one line per field). UTF-8 names are welcome.
bool ConsoleUserOk(const std::string& s) {
  if (s.size() > 64) return false;
  for (unsigned char ch : s) {
    if (ch < 0x20 || ch == 0x7f) return false;
  }
  return true;
}

// DICOM LO / PN values: at most 64 characters, no backslash (the value delimiter).
bool DicomLongString(const std::string& s) { return s.size() <= 64 && NoBackslash(s); }

bool StudyUidOk(const std::string& s) { return s.empty() || IsValidDicomUid(s); }

bool IpAddressOk(const std::string& s) {
  unsigned char buffer[sizeof(in6_addr)];
  return inet_pton(AF_INET, s.c_str(), buffer) == 1 || inet_pton(AF_INET6, s.c_str(), buffer) == 1;
}

bool HostOk(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  for (char ch : s) {
    if (ch <= ' ' || ch == '/' || ch == '\x7f') return false;
  }
  return true;
}

// DICOM AE title: 1 to 16 printable ASCII characters, no backslash, not only spaces.
bool AeTitleOk(const std::string& s) {
  if (s.empty() || s.size() > 16) return false;
  bool any_non_space = false;
  for (char ch : s) {
    if (ch < ' ' || ch > '~' || ch == '\\') return false;
    if (ch != ' ') any_non_space = true;
  }
  return any_non_space;
}

bool EmptyOrHost(const std::string& s) { return s.empty() || HostOk(s); }
bool EmptyOrAeTitle(const std::string& s) { return s.empty() || AeTitleOk(s); }

bool UrlOk(const std::string& s) { return (IsHttpUrl(s) || IsHttpsUrl(s)) && UrlProblem(s).empty(); }
bool EmptyOrUrl(const std::string& s) { return s.empty() || UrlOk(s); }
bool UsernameOk(const std::string& s) { return s.find(':') == std::string::npos && s.size() <= 256; }
// True when `s` is empty or every `separator`-separated entry passes `entry_ok`.
bool EveryEntry(const std::string& s, char separator, bool (*entry_ok)(const std::string&)) {
  if (s.empty()) return true;
  std::size_t pos = 0;
  while (true) {
    const auto end = s.find(separator, pos);
    if (!entry_ok(s.substr(pos, end == std::string::npos ? std::string::npos : end - pos))) return false;
    if (end == std::string::npos) return true;
    pos = end + 1;
  }
}

// An origin "scheme://host[:port]": no path, userinfo or query.
bool OriginOk(const std::string& origin) {
  const bool https = origin.rfind("https://", 0) == 0;
  if (!https && origin.rfind("http://", 0) != 0) return false;
  const std::string authority = origin.substr(https ? 8 : 7);
  if (authority.empty()) return false;
  for (const char c : authority) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '-' || c == ':' || c == '[' || c == ']';
    if (!ok) return false;
  }
  return true;
}

// "" or origins separated by single spaces.
bool OriginListOk(const std::string& s) { return EveryEntry(s, ' ', OriginOk); }

// "sha256//" + 44 base64 characters (a SHA-256 digest).
bool PinOk(const std::string& entry) {
  if (entry.size() != 8 + 44 || entry.rfind("sha256//", 0) != 0) return false;
  for (std::size_t i = 8; i < entry.size(); ++i) {
    const char c = entry[i];
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
                    c == '/' || (c == '=' && i == entry.size() - 1);
    if (!ok) return false;
  }
  return true;
}

// "" or pins joined by ';'.
bool PinnedPublicKeyOk(const std::string& s) { return EveryEntry(s, ';', PinOk); }

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = kKiB * 1024;
constexpr std::uint64_t kGiB = kMiB * 1024;
constexpr std::uint64_t kTiB = kGiB * 1024;
constexpr std::uint64_t kPiB = kTiB * 1024;
constexpr std::uint64_t kU64Max = std::numeric_limits<std::uint64_t>::max();
constexpr double kHuge = 1e9;

std::vector<Entry> MakeEntries() {
  // The scan section's ranges are those of drivers::ProtocolFromJson; each driver checks its
  // own, narrower capabilities when a scan is armed.
  return {
      {.path = "/terminal_id", .type = Type::kString,
       .description = "Name of this scanner terminal, sent with every upload.",
       .string_ok = TerminalIdOk, .string_rule = "1 to 64 characters from A-Z a-z 0-9 . _ -",
       CTAGENT_TARGET(terminal_id)},
      {.path = "/log_level", .type = Type::kEnum, .description = "Least severe log level written.",
       .choices = {"debug", "info", "warn", "error"}, CTAGENT_TARGET(log_level)},

      {.path = "/driver", .type = Type::kSection, .description = "Detector driver."},
      {.path = "/driver/name", .type = Type::kString, .description = "Driver: `sim`, `replay`, or `plugin` (a C-ABI driver .so, see docs/drivers.md).",
       .string_ok = NonEmptyShort, .string_rule = "a non-empty name of at most 64 characters",
       CTAGENT_TARGET(driver.name)},
      {.path = "/driver/options", .type = Type::kObject,
       .description = "Driver-specific options, passed to the driver as-is (sim: `{\"model\", \"lesions\", \"dead_channels\", \"channel_gain_sd\"}`, see docs/drivers.md; "
                      "replay: `{\"path\": recording dir}`; plugin: `{\"path\": .so file, \"isolation\": \"process\" (default, the driver runs in "
                      "ctagent-driver-host) or \"in_process\", \"host\": ctagent-driver-host path (default: next to "
                      "ctagent), \"stall_timeout_s\": s (default max(2 s, 50 view periods)), ...driver's keys}`; "
                      "these paths are used as given, relative to the working directory).",
       CTAGENT_TARGET(driver.options)},

      {.path = "/scan", .type = Type::kSection, .description = "Scan protocol armed on the detector."},
      {.path = "/scan/geometry", .type = Type::kEnum, .description = "Beam geometry: `parallel` (180 degrees per rotation) or `fan` (360 degrees, arc detector).",
       .choices = {"parallel", "fan"},
       CTAGENT_TARGET(protocol.geometry)},
      {.path = "/scan/views_per_rotation", .type = Type::kInteger,
       .description = "Views per rotation (180 degrees for parallel beam).", .min = 1, .max = 100000,
       CTAGENT_TARGET(protocol.views_per_rotation)},
      {.path = "/scan/rotations", .type = Type::kInteger, .description = "Rotations per scan.", .min = 1,
       .max = 10000, CTAGENT_TARGET(protocol.rotations)},
      {.path = "/scan/rows", .type = Type::kInteger, .description = "Detector rows (slices).", .min = 1,
       .max = 1024, CTAGENT_TARGET(protocol.rows)},
      {.path = "/scan/channels", .type = Type::kInteger, .description = "Detector channels per row.", .min = 1,
       .max = 16384, CTAGENT_TARGET(protocol.channels)},
      {.path = "/scan/channel_pitch_mm", .type = Type::kNumber, .description = "Channel spacing at isocenter [mm].",
       .min_number = 0, .max_number = 100, .min_open = true, CTAGENT_TARGET(protocol.channel_pitch_mm)},
      {.path = "/scan/row_pitch_mm", .type = Type::kNumber, .description = "Slice thickness at isocenter [mm].",
       .min_number = 0, .max_number = 100, .min_open = true, CTAGENT_TARGET(protocol.row_pitch_mm)},
      {.path = "/scan/rotation_time_s", .type = Type::kNumber,
       .description = "Wall time of one rotation [s]; sets the view rate and timestamps.", .min_number = 0,
       .max_number = 3600, .min_open = true, CTAGENT_TARGET(protocol.rotation_time_s)},
      {.path = "/scan/table_start_mm", .type = Type::kNumber, .description = "Table position of the first view [mm].",
       .min_number = -kHuge, .max_number = kHuge, CTAGENT_TARGET(protocol.table_start_mm)},
      {.path = "/scan/table_speed_mm_per_rotation", .type = Type::kNumber,
       .description = "Table feed per rotation [mm]; 0 for an axial scan.", .min_number = -kHuge,
       .max_number = kHuge, CTAGENT_TARGET(protocol.table_speed_mm_per_rotation)},
      {.path = "/scan/dose_fraction", .type = Type::kNumber,
       .description = "Fraction of the standard dose (noise grows as it falls).", .min_number = 0,
       .max_number = 1, .min_open = true, CTAGENT_TARGET(protocol.dose_fraction)},
      {.path = "/scan/unattenuated_counts", .type = Type::kNumber,
       .description = "Mean counts of an unattenuated ray at full dose.", .min_number = 0, .max_number = kHuge,
       .min_open = true, CTAGENT_TARGET(protocol.unattenuated_counts)},
      {.path = "/scan/sample_type", .type = Type::kEnum, .description = "Sample type delivered by the detector.",
       .choices = {"uint16", "float32"}, CTAGENT_TARGET(protocol.sample_type)},
      {.path = "/scan/seed", .type = Type::kInteger, .description = "Noise seed of simulated drivers.", .min = 0,
       .max = kU64Max, CTAGENT_TARGET(protocol.seed)},
      {.path = "/scan/real_time", .type = Type::kBool,
       .description = "Pace views at the protocol's view rate (else as fast as possible).",
       CTAGENT_TARGET(protocol.real_time)},
      {.path = "/scan/source_to_isocenter_mm", .type = Type::kNumber,
       .description = "Fan beam: source to rotation axis [mm].", .min_number = 0, .max_number = 10000,
       .min_open = true, CTAGENT_TARGET(protocol.source_to_isocenter_mm)},
      {.path = "/scan/source_to_detector_mm", .type = Type::kNumber,
       .description = "Fan beam: source to detector [mm]; must exceed source_to_isocenter_mm.", .min_number = 0,
       .max_number = 10000, .min_open = true, CTAGENT_TARGET(protocol.source_to_detector_mm)},
      {.path = "/scan/sample_encoding", .type = Type::kEnum,
       .description = "What a uint16 sample is: `counts`, or `line_integral` (DICOM-CT-PD style, "
                      "p = line_integral_slope * sample + line_integral_intercept).",
       .choices = {"counts", "line_integral"}, CTAGENT_TARGET(protocol.sample_encoding)},
      {.path = "/scan/line_integral_slope", .type = Type::kNumber,
       .description = "line_integral encoding: line integral per sample unit.", .min_number = 0, .max_number = 1,
       .min_open = true, CTAGENT_TARGET(protocol.line_integral_slope)},
      {.path = "/scan/line_integral_intercept", .type = Type::kNumber,
       .description = "line_integral encoding: line integral of sample 0.", .min_number = -100, .max_number = 100,
       CTAGENT_TARGET(protocol.line_integral_intercept)},

      {.path = "/study", .type = Type::kSection,
       .description = "The patient every scan carries when no worklist is configured (the fallback of a terminal without a RIS), "
                      "sent to the imaging center as it is: use pseudonyms (docs/privacy.md). With `/worklist` "
                      "enabled it is not used."},
      {.path = "/study/patient_id", .type = Type::kString, .description = "Patient ID. Never logged.",
       .sensitive = true, .string_ok = DicomLongString, .string_rule = "at most 64 characters without backslash",
       CTAGENT_TARGET(study.patient_id)},
      {.path = "/study/patient_name", .type = Type::kString, .description = "Patient name (DICOM PN). Never logged.",
       .sensitive = true, .string_ok = DicomLongString, .string_rule = "at most 64 characters without backslash",
       CTAGENT_TARGET(study.patient_name)},
      {.path = "/study/study_uid", .type = Type::kString,
       .description = "Study Instance UID; empty: a new one is minted per scan.", .string_ok = StudyUidOk,
       .string_rule = "a valid DICOM UID (digits and dots, at most 64 characters) or \"\"",
       CTAGENT_TARGET(study.study_uid)},
      {.path = "/study/study_description", .type = Type::kString, .description = "Study description.",
       .string_ok = DicomLongString, .string_rule = "at most 64 characters without backslash",
       CTAGENT_TARGET(study.study_description)},

      {.path = "/codec", .type = Type::kSection, .description = "Chunk compression."},
      {.path = "/codec/zstd_level", .type = Type::kInteger, .description = "zstd compression level.", .min = 1,
       .max = 19, CTAGENT_TARGET(codec.zstd_level)},
      {.path = "/codec/filter", .type = Type::kEnum, .description = "Filter applied before zstd.",
       .choices = {"none", "shuffle", "delta_channel", "delta_view", "med", "predict"},
       CTAGENT_TARGET(codec.filter)},
      {.path = "/codec/coder", .type = Type::kEnum,
       .description = "Entropy coder after the filter: `context_rans` (codec 2, for filter `predict` on uint16; "
                      "other chunks, and chunks it would not shrink, use zstd) or `zstd` (codec 1).",
       .choices = {"context_rans", "zstd"}, CTAGENT_TARGET(codec.coder)},
      {.path = "/codec/views_per_chunk", .type = Type::kInteger, .description = "Views per chunk.", .min = 1,
       .max = 4096, CTAGENT_TARGET(codec.views_per_chunk)},
      {.path = "/codec/threads", .type = Type::kInteger, .description = "Compression worker threads.", .min = 1,
       .max = 16, CTAGENT_TARGET(codec.threads)},
      {.path = "/codec/queue_bytes", .type = Type::kBytes,
       .description = "Most raw bytes of chunks waiting for the compression workers; beyond it, chunks are "
                      "compressed with a cheap setting on a separate thread so acquisition never waits.",
       .min = kMiB, .max = kPiB, CTAGENT_TARGET(codec.queue_bytes)},
      {.path = "/codec/buffer_bytes", .type = Type::kBytes,
       .description = "Most bytes of raw chunk buffers held at once, from the start of a chunk's acquisition "
                      "until it is stored (acquisition waits for room). A scan makes the buffers of as many "
                      "whole chunks as it holds when it starts, and frees them when acquisition ends. Uploads "
                      "take nothing from it: each chunk is sent from its spool file. 0: no bound beyond the "
                      "queues.",
       .min = 0, .max = kPiB, CTAGENT_TARGET(codec.buffer_bytes)},

      {.path = "/spool", .type = Type::kSection, .description = "Local durable spool."},
      {.path = "/spool/directory", .type = Type::kPath, .description = "Spool directory.", .required = true,
       CTAGENT_TARGET(spool.directory)},
      {.path = "/spool/max_bytes", .type = Type::kBytes, .description = "Most bytes the spool may hold.",
       .min = kMiB, .max = kPiB, CTAGENT_TARGET(spool.max_bytes)},
      {.path = "/spool/min_free_bytes", .type = Type::kBytes,
       .description = "Free space to leave on the file system; a scan that would cut into it is refused.",
       .min = 0, .max = kPiB, CTAGENT_TARGET(spool.min_free_bytes)},
      {.path = "/spool/retention", .type = Type::kEnum,
       .description = "When raw data (chunks, manifest) is deleted; never before the cloud confirmed it.",
       .choices = {"after_upload", "after_results", "after_delivery", "keep_days"}, CTAGENT_TARGET(spool.retention)},
      {.path = "/spool/keep_days", .type = Type::kInteger,
       .description = "Days a delivered scan's record and local images stay after the cloud confirmed it (and, "
                      "with retention keep_days, its raw data).",
       .min = 0,
       .max = 3650, CTAGENT_TARGET(spool.keep_days)},
      {.path = "/spool/sync_batch_bytes", .type = Type::kBytes,
       .description = "Chunks are made durable (fdatasync of each file, one directory fsync, one journal record) in "
                      "batches of this many bytes; a chunk counts as stored only after its batch is synced.",
       .min = 64 * kKiB, .max = kGiB, CTAGENT_TARGET(spool.sync_batch_bytes)},
      {.path = "/spool/sync_interval_ms", .type = Type::kInteger,
       .description = "A batch is also synced once its oldest chunk waited this long [ms], so a slow scan is "
                      "never left unsynced for long.",
       .min = 1, .max = 60000, CTAGENT_TARGET(spool.sync_interval_ms)},

      {.path = "/cloud", .type = Type::kSection, .description = "Imaging center endpoints."},
      {.path = "/cloud/upload_url", .type = Type::kString, .description = "tus creation endpoint (https://).",
       .required = true, .string_ok = UrlOk, .string_rule = "an https:// URL", .url = true, CTAGENT_TARGET(cloud.upload_url)},
      {.path = "/cloud/dicomweb_url", .type = Type::kString,
       .description = "DICOMweb root (https://); required when results are enabled.", .string_ok = EmptyOrUrl,
       .string_rule = "an https:// URL or \"\"", .url = true, CTAGENT_TARGET(cloud.dicomweb_url)},
      {.path = "/cloud/username", .type = Type::kString, .description = "HTTP basic auth user for DICOMweb.",
       .string_ok = UsernameOk, .string_rule = "at most 256 characters without ':'",
       CTAGENT_TARGET(cloud.username)},
      {.path = "/cloud/password_file", .type = Type::kPath,
       .description = "File holding the DICOMweb password (never inline).", CTAGENT_TARGET(cloud.password_file)},
      {.path = "/cloud/tls", .type = Type::kSection, .description = "TLS trust and client identity."},
      {.path = "/cloud/tls/ca_file", .type = Type::kPath,
       .description = "CA bundle (PEM) to verify the server; empty: the system's CA store.",
       CTAGENT_TARGET(cloud.tls.ca_file)},
      {.path = "/cloud/tls/client_cert_file", .type = Type::kPath,
       .description = "Client certificate (PEM) for mTLS; needs client_key_file.",
       CTAGENT_TARGET(cloud.tls.client_cert_file)},
      {.path = "/cloud/tls/client_key_file", .type = Type::kPath,
       .description = "Client private key (PEM) for mTLS; needs client_cert_file.",
       CTAGENT_TARGET(cloud.tls.client_key_file)},
      {.path = "/cloud/tls/pinned_public_key", .type = Type::kString,
       .description = "Optional public-key pins of the server: sha256//<base64> entries joined by ';'.",
       .string_ok = PinnedPublicKeyOk, .string_rule = "\"\" or sha256//<base64 of 32 bytes>, joined by ';'",
       CTAGENT_TARGET(cloud.tls.pinned_public_key)},
      {.path = "/cloud/allow_plain_http", .type = Type::kBool,
       .description = "Allow http:// URLs. Development only; loudly logged.", CTAGENT_TARGET(cloud.allow_plain_http)},
      {.path = "/cloud/parallel_uploads", .type = Type::kInteger,
       .description = "Chunks always let upload at once, each on its own connection; more are admitted while the "
                      "measured link rate x round trip asks for them, up to max_uploads_in_flight.",
       .min = 1, .max = 64, CTAGENT_TARGET(cloud.parallel_uploads)},
      {.path = "/cloud/max_uploads_in_flight", .type = Type::kInteger,
       .description = "The most chunks uploading at once however long the round trip; each holds a request "
                      "handle with a 256 KiB upload buffer (its chunk is sent from the spool file). Below "
                      "parallel_uploads it counts as parallel_uploads.",
       .min = 1, .max = 256, CTAGENT_TARGET(cloud.max_uploads_in_flight)},
      {.path = "/cloud/patch_bytes", .type = Type::kBytes, .description = "Bytes per tus PATCH request.",
       .min = 64 * kKiB, .max = 256 * kMiB, CTAGENT_TARGET(cloud.patch_bytes)},
      {.path = "/cloud/connect_timeout_s", .type = Type::kInteger, .description = "TCP + TLS connect timeout [s].",
       .min = 1, .max = 600, CTAGENT_TARGET(cloud.connect_timeout_s)},
      {.path = "/cloud/stall_timeout_s", .type = Type::kInteger,
       .description = "Abort a request that moves no byte for this long [s].", .min = 1, .max = 3600,
       CTAGENT_TARGET(cloud.stall_timeout_s)},
      {.path = "/cloud/floor_rate_bits_per_s", .type = Type::kInteger,
       .description = "Slowest rate a link is expected to sustain [bit/s]; sets each request's overall deadline: "
                      "connect_timeout_s + stall_timeout_s + its bytes at this rate (docs/transport.md).",
       .min = 8000, .max = 100'000'000'000ull, CTAGENT_TARGET(cloud.floor_rate_bits_per_s)},
      {.path = "/cloud/upload_origins_allowed", .type = Type::kString,
       .description = "Origins besides upload_url's own that a tus Location header may point at "
                      "(scheme://host[:port], space-separated). Empty: only upload_url's origin.",
       .string_ok = OriginListOk, .string_rule = "\"\" or scheme://host[:port] origins separated by spaces",
       CTAGENT_TARGET(cloud.upload_origins_allowed)},
      {.path = "/cloud/http2", .type = Type::kBool,
       .description = "Offer HTTP/2 to the upload server by ALPN (it may still choose HTTP/1.1).",
       CTAGENT_TARGET(cloud.http2)},
      {.path = "/cloud/links", .type = Type::kObject,
       .description = "Network links keyed by name (interface or source_address, priority, max_bits_per_s, schedule, "
                      "probe_interval_ms, probe_timeout_s); see docs/links.md. Empty: the system's routing, uncapped.",
       CTAGENT_TARGET(cloud.links)},

      {.path = "/results", .type = Type::kSection, .description = "Fetching results back (DICOMweb)."},
      {.path = "/results/enabled", .type = Type::kBool, .description = "Fetch results after upload.",
       CTAGENT_TARGET(results.enabled)},
      {.path = "/results/poll_interval_ms", .type = Type::kInteger,
       .description = "First QIDO-RS poll interval [ms]; backs off to poll_max_interval_ms.", .min = 10,
       .max = 600000, CTAGENT_TARGET(results.poll_interval_ms)},
      {.path = "/results/poll_max_interval_ms", .type = Type::kInteger,
       .description = "Longest poll interval [ms]; at least poll_interval_ms.", .min = 10, .max = 3600000,
       CTAGENT_TARGET(results.poll_max_interval_ms)},
      {.path = "/results/timeout_s", .type = Type::kInteger,
       .description = "Stop waiting for results after this long [s] (they stay fetchable later).", .min = 1,
       .max = 604800, CTAGENT_TARGET(results.timeout_s)},
      {.path = "/results/max_instance_bytes", .type = Type::kBytes,
       .description = "Largest DICOM instance accepted.", .min = kKiB, .max = 4 * kGiB,
       CTAGENT_TARGET(results.max_instance_bytes)},

      {.path = "/console", .type = Type::kSection, .description = "Delivery to the scanner console (C-STORE)."},
      {.path = "/console/enabled", .type = Type::kBool, .description = "Forward results to the console.",
       CTAGENT_TARGET(console.enabled)},
      {.path = "/console/host", .type = Type::kString, .description = "Console DICOM node host.",
       .string_ok = HostOk, .string_rule = "a host name or IP address", CTAGENT_TARGET(console.host)},
      {.path = "/console/port", .type = Type::kInteger, .description = "Console DICOM node port.", .min = 1,
       .max = 65535, CTAGENT_TARGET(console.port)},
      {.path = "/console/called_ae", .type = Type::kString, .description = "Console's AE title.",
       .string_ok = AeTitleOk, .string_rule = "an AE title of 1 to 16 characters without backslash",
       CTAGENT_TARGET(console.called_ae)},
      {.path = "/console/calling_ae", .type = Type::kString, .description = "The agent's AE title.",
       .string_ok = AeTitleOk, .string_rule = "an AE title of 1 to 16 characters without backslash",
       CTAGENT_TARGET(console.calling_ae)},

      {.path = "/worklist", .type = Type::kSection,
       .description = "The hospital's Modality Worklist server (C-FIND), from which each scan takes its patient and "
                      "exam: the step with the accession number given (`ctagent scan --accession`, take_scan, the "
                      "scanner's announcement), else the one step scheduled today for this station "
                      "(docs/privacy.md). Off by default: scans then carry the `/study` identity."},
      {.path = "/worklist/enabled", .type = Type::kBool, .description = "Ask the worklist for each scan's patient.",
       CTAGENT_TARGET(worklist.enabled)},
      {.path = "/worklist/host", .type = Type::kString,
       .description = "Worklist server (RIS) host; required when enabled.", .string_ok = EmptyOrHost,
       .string_rule = "a host name or IP address, or \"\"", CTAGENT_TARGET(worklist.host)},
      {.path = "/worklist/port", .type = Type::kInteger, .description = "Worklist server port.", .min = 1,
       .max = 65535, CTAGENT_TARGET(worklist.port)},
      {.path = "/worklist/called_ae", .type = Type::kString,
       .description = "The worklist server's AE title; required when enabled.", .string_ok = EmptyOrAeTitle,
       .string_rule = "an AE title of 1 to 16 characters without backslash, or \"\"",
       CTAGENT_TARGET(worklist.called_ae)},
      {.path = "/worklist/calling_ae", .type = Type::kString,
       .description = "This station's AE title: the calling AE title, and the Scheduled Station AE Title asked for.",
       .string_ok = AeTitleOk, .string_rule = "an AE title of 1 to 16 characters without backslash",
       CTAGENT_TARGET(worklist.calling_ae)},
      {.path = "/worklist/timeout_s", .type = Type::kInteger,
       .description = "Wait at most this long for the connection, the association and each answer [s].", .min = 1,
       .max = 600, CTAGENT_TARGET(worklist.timeout_s)},
      {.path = "/worklist/max_answers", .type = Type::kInteger,
       .description = "More answers than this cancel the query with an error (a worklist query must stay bounded).",
       .min = 1, .max = 100000, CTAGENT_TARGET(worklist.max_answers)},

      {.path = "/privacy", .type = Type::kSection,
       .description = "Pseudonymisation (docs/privacy.md): what a worklist or emergency scan sends the imaging "
                      "center instead of the patient's identity."},
      {.path = "/privacy/key_file", .type = Type::kPath,
       .description = "The per-site secret key (64 hex digits, mode 0600, owned by the agent's user); made at first "
                      "use when missing. Empty: `site.key` in the spool directory. Back it up: a new key gives every "
                      "patient new pseudonyms.",
       CTAGENT_TARGET(privacy.key_file)},
      {.path = "/privacy/age_band", .type = Type::kBool,
       .description = "Disclose a five-year band of the patient's age at the scan (90 and over: one band).",
       CTAGENT_TARGET(privacy.age_band)},
      {.path = "/privacy/sex", .type = Type::kBool, .description = "Disclose the patient's sex (M, F or O).",
       CTAGENT_TARGET(privacy.sex)},

      {.path = "/control", .type = Type::kSection,
       .description = "The daemon's control socket for the CLI (docs/control-protocol.md)."},
      {.path = "/control/socket", .type = Type::kPath,
       .description = "Unix socket path (mode 0660). Empty: `control.sock` in the spool directory.",
       CTAGENT_TARGET(control.socket)},
      {.path = "/control/group", .type = Type::kString,
       .description = "Group whose members may use the socket, besides root and the daemon's user. Empty: none.",
       .string_ok = GroupNameOk, .string_rule = "empty, or a group name of 1 to 32 characters from a-z A-Z 0-9 _ - . (not starting with -)",
       CTAGENT_TARGET(control.group)},

      {.path = "/metrics", .type = Type::kSection,
       .description = "The daemon's Prometheus metrics endpoint, GET /metrics (docs/metrics.md). Off by default."},
      {.path = "/metrics/enabled", .type = Type::kBool, .description = "Serve metrics while `ctagent run` runs.",
       CTAGENT_TARGET(metrics.enabled)},
      {.path = "/metrics/address", .type = Type::kString,
       .description = "Address to listen on. The endpoint has no authentication: an address other than loopback "
                      "(127.0.0.0/8, ::1) needs /metrics/allow_non_loopback.",
       .string_ok = IpAddressOk, .string_rule = "an IPv4 or IPv6 address (like 127.0.0.1 or ::1)",
       CTAGENT_TARGET(metrics.address)},
      {.path = "/metrics/port", .type = Type::kInteger, .description = "TCP port to listen on.", .min = 1,
       .max = 65535, CTAGENT_TARGET(metrics.port)},
      {.path = "/metrics/allow_non_loopback", .type = Type::kBool,
       .description = "Allow an /metrics/address other than loopback, so other machines can read the metrics "
                      "(no authentication: put a firewall or an authenticating proxy in front).",
       CTAGENT_TARGET(metrics.allow_non_loopback)},

      {.path = "/ui", .type = Type::kSection,
       .description = "The operator's page in a browser on the terminal, served by `ctagent run` "
                      "(docs/operator-guide.md). Off unless enabled (the Debian package's configuration enables it); loopback "
                      "only, unless TLS and a password or client certificate are set."},
      {.path = "/ui/enabled", .type = Type::kBool, .description = "Serve the page while `ctagent run` runs.",
       CTAGENT_TARGET(ui.enabled)},
      {.path = "/ui/address", .type = Type::kString,
       .description = "Address to listen on. Any address but loopback (127.0.0.0/8, ::1) needs /ui/tls and "
                      "/ui/password_file or /ui/tls/client_ca_file.",
       .string_ok = IpAddressOk, .string_rule = "an IPv4 or IPv6 address (like 127.0.0.1 or ::1)",
       CTAGENT_TARGET(ui.address)},
      {.path = "/ui/port", .type = Type::kInteger,
       .description = "TCP port to listen on (open http://127.0.0.1:PORT/ in a browser on the terminal).", .min = 1,
       .max = 65535, CTAGENT_TARGET(ui.port)},
      {.path = "/ui/server_name", .type = Type::kString,
       .description = "Off loopback: the host name browsers open the page by (the Host header it answers besides "
                      "/ui/address). Empty: the address only.",
       .string_ok = EmptyOrHost, .string_rule = "empty, or a host name or IP address", CTAGENT_TARGET(ui.server_name)},
      {.path = "/ui/tls", .type = Type::kSection,
       .description = "HTTPS for the page (TLS 1.2 or later); needed for any address but loopback."},
      {.path = "/ui/tls/cert_file", .type = Type::kPath,
       .description = "The page's certificate chain (PEM). Empty: plain HTTP.", CTAGENT_TARGET(ui.tls.cert_file)},
      {.path = "/ui/tls/key_file", .type = Type::kPath,
       .description = "The certificate's private key (PEM); must not be readable by other users.",
       CTAGENT_TARGET(ui.tls.key_file)},
      {.path = "/ui/tls/client_ca_file", .type = Type::kPath,
       .description = "CA certificates (PEM): when set, every browser must present a client certificate they signed.",
       CTAGENT_TARGET(ui.tls.client_ca_file)},
      {.path = "/ui/password_file", .type = Type::kPath,
       .description = "The page's password (a PBKDF2-SHA256 hash written by `ctagent ui-password`, mode 0600): "
                      "every request then needs it (HTTP Basic, any user name). Needs /ui/tls. Empty: no password.",
       CTAGENT_TARGET(ui.password_file)},
      {.path = "/ui/console_user", .type = Type::kString,
       .description = "The console user recorded as having confirmed a high-risk finding on the page (and by "
                      "`ctagent confirm` without --by). Empty: \"operator at this terminal\". No patient data.",
       .string_ok = ConsoleUserOk, .string_rule = "empty, or 1 to 64 printable characters",
       CTAGENT_TARGET(ui.console_user)},
  };
}

#undef CTAGENT_TARGET

std::string FormatNumber(double v) {
  if (std::fabs(v) < 1e15 && v == std::floor(v)) return std::to_string(static_cast<long long>(v));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string Quoted(std::string_view s) { return json(std::string(s)).dump(); }

}  // namespace

const std::vector<Entry>& Entries() {
  static const std::vector<Entry> kEntries = MakeEntries();
  return kEntries;
}

const Entry* Find(std::string_view path) {
  for (const Entry& e : Entries()) {
    if (e.path == path) return &e;
  }
  return nullptr;
}

bool IsHttpsUrl(const std::string& s) { return s.rfind("https://", 0) == 0 && s.size() > 8; }
bool IsHttpUrl(const std::string& s) { return s.rfind("http://", 0) == 0 && s.size() > 7; }

namespace {

// Where the authority (between "scheme://" and the path) starts and ends; npos when there is
// no "://".
std::pair<std::size_t, std::size_t> Authority(const std::string& url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return {std::string::npos, std::string::npos};
  const std::size_t begin = scheme_end + 3;
  std::size_t end = url.find_first_of("/?#", begin);
  if (end == std::string::npos) end = url.size();
  return {begin, end};
}

}  // namespace

std::string UrlProblem(const std::string& url) {
  for (const char ch : url) {
    const auto u = static_cast<unsigned char>(ch);
    if (u == ' ') return "a URL cannot contain spaces (write %20)";
    if (u < 0x20 || u == 0x7f) return "a URL cannot contain control characters (CR, LF, tab, ...)";
  }
  if (!IsHttpUrl(url) && !IsHttpsUrl(url)) return "expected an http:// or https:// URL";
  const auto [begin, end] = Authority(url);
  std::string_view authority = std::string_view(url).substr(begin, end - begin);
  if (authority.find('@') != std::string_view::npos) {
    return "a URL cannot carry a user name or password (`user:password@`); put the user in /cloud/username "
           "and the password in /cloud/password_file";
  }
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return "an IPv6 host needs its closing ']'";
    host = authority.substr(1, close - 1);
    const std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return "expected ':' and a port after the IPv6 host";
      port = rest.substr(1);
      if (port.empty()) return "expected a port from 1 to 65535 after ':'";
    }
  } else if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (port.empty()) return "expected a port from 1 to 65535 after ':'";
  }
  if (host.empty()) return "the URL has no host (scheme:// followed by the host name, then the path)";
  if (host.find_first_of("[]") != std::string_view::npos) return "the host has a stray '[' or ']'";
  if (!port.empty()) {
    unsigned long value = 0;
    const auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc{} || ptr != port.data() + port.size() || value < 1 || value > 65535) {
      return "the port " + std::string(port.substr(0, 16)) + " is not a number from 1 to 65535";
    }
  }
  return "";
}

std::optional<std::uint64_t> ParseByteSize(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  if (i == 0) return std::nullopt;
  std::uint64_t number = 0;
  if (std::from_chars(text.data(), text.data() + i, number).ec != std::errc{}) return std::nullopt;
  std::string_view unit = text.substr(i);
  if (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  std::uint64_t scale = 0;
  if (unit.empty() || unit == "B") {
    scale = 1;
  } else if (unit == "KiB") {
    scale = kKiB;
  } else if (unit == "MiB") {
    scale = kMiB;
  } else if (unit == "GiB") {
    scale = kGiB;
  } else if (unit == "TiB") {
    scale = kTiB;
  } else if (unit == "PiB") {
    // The largest maximum in the schema is 1 PiB, so the unit that names it must parse.
    scale = kPiB;
  } else {
    return std::nullopt;
  }
  if (number > kU64Max / scale) return std::nullopt;
  return number * scale;
}

std::string FormatBytes(std::uint64_t bytes) {
  struct Unit {
    std::uint64_t size;
    const char* name;
  };
  for (const Unit& u : {Unit{kPiB, "PiB"}, Unit{kTiB, "TiB"}, Unit{kGiB, "GiB"}, Unit{kMiB, "MiB"}, Unit{kKiB, "KiB"}}) {
    if (bytes >= u.size && bytes % u.size == 0) return std::to_string(bytes / u.size) + " " + u.name;
  }
  return std::to_string(bytes);
}

std::string Expectation(const Entry& e) {
  switch (e.type) {
    case Type::kSection:
    case Type::kObject:
      return "an object";
    case Type::kBool:
      return "true or false";
    case Type::kInteger:
      return "an integer from " + std::to_string(e.min) + " to " + std::to_string(e.max);
    case Type::kBytes:
      return "a byte size from " + FormatBytes(e.min) + " to " + FormatBytes(e.max) +
             " (an integer or a string like \"4 MiB\")";
    case Type::kNumber:
      if (e.min_open) return "a number > " + FormatNumber(e.min_number) + " and <= " + FormatNumber(e.max_number);
      return "a number from " + FormatNumber(e.min_number) + " to " + FormatNumber(e.max_number);
    case Type::kString:
      return e.string_rule.empty() ? std::string("a string") : std::string(e.string_rule);
    case Type::kEnum: {
      std::string out = e.choices.size() == 1 ? "" : "one of ";
      for (std::size_t i = 0; i < e.choices.size(); ++i) out += (i == 0 ? "" : ", ") + Quoted(e.choices[i]);
      return out;
    }
    case Type::kPath:
      return e.required ? "a non-empty path" : "a path";
  }
  return "a value";
}

std::string Describe(const json& v, bool sensitive) {
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (sensitive) return "a string of " + std::to_string(s.size()) + " characters";
    if (s.size() > 60) s = s.substr(0, 60) + "...";
    return "string " + json(s).dump();
  }
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  if (sensitive) return std::string("a ") + v.type_name();
  return v.dump();
}

bool CheckValue(const Entry& e, const json& v, const fs::path& base_dir, json* normalised, std::string* problem) {
  auto fail = [&] {
    *problem = "expected " + Expectation(e) + ", found " + Describe(v, e.sensitive);
    return false;
  };
  switch (e.type) {
    case Type::kSection:
    case Type::kObject:
      if (!v.is_object()) return fail();
      *normalised = v;
      return true;
    case Type::kBool:
      if (!v.is_boolean()) return fail();
      *normalised = v;
      return true;
    case Type::kInteger: {
      const std::optional<std::uint64_t> n = IntegerAs<std::uint64_t>(v);
      if (!n || *n < e.min || *n > e.max) return fail();
      *normalised = *n;
      return true;
    }
    case Type::kBytes: {
      std::optional<std::uint64_t> n = IntegerAs<std::uint64_t>(v);
      if (!n && v.is_string()) {
        n = ParseByteSize(v.get<std::string>());
      }
      if (!n || *n < e.min || *n > e.max) return fail();
      *normalised = *n;
      return true;
    }
    case Type::kNumber: {
      if (!v.is_number()) return fail();
      const double d = v.get<double>();
      if (!std::isfinite(d) || d > e.max_number || d < e.min_number || (e.min_open && d == e.min_number)) {
        return fail();
      }
      *normalised = d;
      return true;
    }
    case Type::kString:
      if (!v.is_string()) return fail();
      if (e.url && !v.get<std::string>().empty()) {
        // Before string_ok: say which rule failed, and show the URL without its password.
        const std::string& url = v.get<std::string>();
        if (std::string why = UrlProblem(url); !why.empty()) {
          // RedactUrl already shows control characters as \\xNN; no second escaping.
          std::string shown = RedactUrl(url);
          if (shown.size() > 100) shown = shown.substr(0, 100) + "...";
          *problem = "expected " + Expectation(e) + ", found string \"" + shown + "\": " + why;
          return false;
        }
      }
      if (e.string_ok != nullptr && !e.string_ok(v.get<std::string>())) return fail();
      *normalised = v;
      return true;
    case Type::kEnum:
      if (!v.is_string()) return fail();
      for (std::string_view c : e.choices) {
        if (v.get<std::string>() == c) {
          *normalised = v;
          return true;
        }
      }
      return fail();
    case Type::kPath: {
      if (!v.is_string()) return fail();
      fs::path p = v.get<std::string>();
      if (p.empty()) {
        if (e.required) return fail();
        *normalised = "";
        return true;
      }
      if (p.is_relative()) p = base_dir / p;
      *normalised = p.lexically_normal().string();
      return true;
    }
  }
  return fail();
}

}  // namespace ctagent::config::schema
