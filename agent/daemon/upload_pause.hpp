// The daemon's pause of uploads (`ctagent pause`), recorded durably in the spool directory as
// <spool>/uploads-paused.json, so that a restart (a watchdog's, a reboot's) does not silently
// resume uploads a technician paused: only `ctagent resume` removes the record.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "base/durable_file.hpp"
#include "base/error.hpp"

namespace ctagent::daemon {

struct UploadPause {
  std::string since_utc;  // when `ctagent pause` came (ISO 8601 UTC); "unknown" for an unreadable record
};

std::filesystem::path UploadPausePath(const std::filesystem::path& spool_dir);

// The recorded pause, or none. A record that exists but cannot be parsed still counts as a
// pause (since "unknown"): a damaged file must not resume uploads a person paused. Errors
// only when the file cannot be read at all (other than missing).
Expected<std::optional<UploadPause>> ReadUploadPause(FileStore& files, const std::filesystem::path& spool_dir);
// Writes the record durably (write, fsync, rename, directory fsync).
Status RecordUploadPause(FileStore& files, const std::filesystem::path& spool_dir, const UploadPause& pause);
// Removes the record durably (the directory synced); no record is no error.
Status ClearUploadPause(FileStore& files, const std::filesystem::path& spool_dir);

}  // namespace ctagent::daemon
