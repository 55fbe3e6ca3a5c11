// The agent's scan recording format, written by `ctagent record` (drivers/record.hpp) and
// played back by the replay driver. A recording is a directory:
//   protocol.json  {"format": "ctagent-recording", "version": 1, "protocol": {...ToJson...},
//                   "views": N, "detector": {"name": ..., "model": ...}}; written last, so a
//                   directory without it is an incomplete recording.
//   views.bin      N records, each a 48-byte little-endian header
//                   magic "CTV1" | status_flags u32 | sequence u64 | gantry_angle_deg f64 |
//                   table_position_mm f64 | timestamp_us i64 | sample_bytes u64
//                 followed by sample_bytes bytes of samples (rows * channels, row-major).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"

namespace ctagent::drivers::replay {

inline constexpr const char* kRecordingFormat = "ctagent-recording";
inline constexpr int kRecordingVersion = 1;
inline constexpr std::size_t kViewHeaderBytes = 48;

struct RecordingInfo {
  ScanProtocol protocol;
  std::uint64_t views = 0;
  std::string detector_name;
  std::string detector_model;
};

// What the replay driver's options name: {"path": directory, "format": "ctagent" |
// "dicom-ct-pd" (optional)}. Without "format" the directory says which it is: protocol.json
// makes it a ctagent recording, .dcm files a DICOM-CT-PD one.
enum class RecordingFormat { kCtagent, kDicomCtPd };
struct ReplaySource {
  std::filesystem::path directory;
  RecordingFormat format = RecordingFormat::kCtagent;
};
Expected<ReplaySource> ParseReplayOptions(const nlohmann::json& options);

// A protocol taken from a recording, with one line per field that differs from the configured
// one it replaces ("rows 32 (the config says 16)") and notes on what the agent cannot carry,
// for the log.
struct AdoptedProtocol {
  ScanProtocol protocol;
  std::vector<std::string> changes;
};

// The protocol a scan replayed from `options` must be armed with: the recording's shape and
// geometry win over `configured` (rows, channels, sample type and encoding, views per rotation,
// rotations, geometry, pitches, distances, table; for a ctagent recording everything it
// recorded), so the config needs no shape. `configured` keeps real_time (and what a foreign
// DICOM-CT-PD file does not say). The replay driver refuses to arm with another shape.
Expected<AdoptedProtocol> ProtocolForReplay(const nlohmann::json& options, const ScanProtocol& configured);

// What the agent arms a scan from the configured driver with: ProtocolForReplay for the replay
// driver, `configured` unchanged (and no changes) for every other driver. One call for the
// commands that arm a driver (check, scan, record).
Expected<AdoptedProtocol> ScanProtocolFor(const std::string& driver_name, const nlohmann::json& options,
                                          const ScanProtocol& configured);

// The fields of `adopted` that differ from `configured`, as "name value (the config says x)".
std::vector<std::string> ProtocolChanges(const ScanProtocol& adopted, const ScanProtocol& configured);

// Reads and checks protocol.json of a recording directory.
Expected<RecordingInfo> ReadRecordingInfo(const std::filesystem::path& directory);

// Writes a recording view by view; Finish() writes protocol.json.
class RecordingWriter {
 public:
  // `directory` is created; it must not exist yet or be empty.
  static Expected<std::unique_ptr<RecordingWriter>> Create(const std::filesystem::path& directory,
                                                           const ScanProtocol& protocol, const DetectorInfo& info);
  Status Append(const View& view);
  Status Finish();

 private:
  RecordingWriter() = default;
  std::filesystem::path directory_;
  ScanProtocol protocol_;
  DetectorInfo info_;
  std::ofstream views_;
  std::uint64_t count_ = 0;
};

// Reads views.bin sequentially.
class RecordingReader {
 public:
  static Expected<std::unique_ptr<RecordingReader>> Open(const std::filesystem::path& directory);
  const RecordingInfo& info() const { return info_; }
  // The next view, std::nullopt after the last one; kCorrupt names the file and offset.
  Expected<std::optional<View>> Next();

 private:
  RecordingReader() = default;
  std::filesystem::path file_;
  RecordingInfo info_;
  std::ifstream in_;
  std::uint64_t next_ = 0;
  std::uint64_t offset_ = 0;
};

}  // namespace ctagent::drivers::replay
