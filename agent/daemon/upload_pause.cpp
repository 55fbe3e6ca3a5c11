#include "agent/daemon/upload_pause.hpp"

#include <nlohmann/json.hpp>

namespace ctagent::daemon {

std::filesystem::path UploadPausePath(const std::filesystem::path& spool_dir) {
  return spool_dir / "uploads-paused.json";
}

Expected<std::optional<UploadPause>> ReadUploadPause(FileStore& files, const std::filesystem::path& spool_dir) {
  const auto path = UploadPausePath(spool_dir);
  auto bytes = files.ReadAll(path, 64 * 1024);
  if (!bytes) {
    if (bytes.error().kind() == ErrorKind::kNotFound) return std::optional<UploadPause>();
    return MakeError(bytes.error().WithContext("reading the recorded pause of uploads"));
  }
  UploadPause pause{"unknown"};
  const auto j = nlohmann::json::parse(bytes->begin(), bytes->end(), nullptr, false);
  if (j.is_object() && j.contains("since_utc") && j["since_utc"].is_string()) {
    pause.since_utc = j["since_utc"].get<std::string>();
  }
  return std::optional<UploadPause>(pause);
}

Status RecordUploadPause(FileStore& files, const std::filesystem::path& spool_dir, const UploadPause& pause) {
  const std::string text =
      nlohmann::json{{"since_utc", pause.since_utc},
                     {"note", "uploads paused by `ctagent pause`; `ctagent resume` removes this file"}}
          .dump() +
      "\n";
  if (auto st = files.WriteDurably(UploadPausePath(spool_dir), AsBytes(text)); !st) {
    return MakeError(st.error().WithContext("recording the pause of uploads"));
  }
  return Ok();
}

Status ClearUploadPause(FileStore& files, const std::filesystem::path& spool_dir) {
  if (auto st = files.Remove(UploadPausePath(spool_dir)); !st) {
    return MakeError(st.error().WithContext("removing the recorded pause of uploads"));
  }
  return Ok();
}

}  // namespace ctagent::daemon
