// The status object (docs/schemas/status.schema.json): what the spool holds and where each scan
// stands, the upload backlog and the measured upload rate. Built from a spool by the daemon (for
// the control socket's `status`) and by `ctagent status` itself when no daemon answers, so both
// print the same thing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/control/control.hpp"
#include "agent/spool/spool.hpp"
#include "base/byte_budget.hpp"
#include "config/config.hpp"

namespace ctagent::control {

// The upload backlog: what the spool holds that the cloud has not confirmed yet.
struct Backlog {
  std::uint64_t bytes = 0;      // not yet confirmed by the cloud (failed scans not counted)
  std::uint64_t confirmed = 0;  // confirmed so far, over every scan in the spool (a counter)
  std::size_t scans = 0;        // scans with something left to send
  std::size_t failed = 0;       // scans marked failed: the uploader leaves them to a person
};
Backlog MeasureBacklog(spool::Spool& spool);

// The recent upload rate, measured by `ctagent run` / `ctagent scan` and kept in
// <spool>/upload-rate.json (advisory: plain write + rename, outside the spool's FileStore).
struct RateRecord {
  double bytes_per_second = 0;
  double window_s = 0;
  std::string measured_utc;
  std::optional<double> age_s;  // unknown across a reboot
};
std::optional<RateRecord> ReadRateRecord(const std::filesystem::path& spool_dir);
void WriteRateRecord(const std::filesystem::path& spool_dir, double bytes_per_second, double window_s,
                     std::uint64_t bytes);

// What a scan being acquired or uploaded right now shows beyond the spool's record.
struct ScanProgress {
  std::string phase;  // "acquiring", "uploading", "waiting for images", "delivering", "done"
  std::uint64_t views_acquired = 0;
  std::uint64_t views_total = 0;
  std::uint32_t chunks_stored = 0;
  std::uint32_t chunks_uploaded = 0;
};

struct StatusSource {
  std::string source;           // "daemon" (answered over the socket) or "spool" (read by the CLI)
  std::uint64_t budget_bytes = 0;  // config spool.max_bytes
};

// The control server's settings from the configuration (section "control"): the socket path
// (config::ControlSocketPath), the group; mode 0660 and the protocol's limits.
inline ServerSettings ServerSettingsFor(const config::AgentConfig& config) {
  ServerSettings settings;
  settings.socket_path = config::ControlSocketPath(config);
  settings.group = config.control.group;
  return settings;
}

// The status object of every scan in `spool` (opened read-only or not). The daemon adds its own
// part with SetDaemon and SetScanProgress before answering.
nlohmann::json StatusFromSpool(spool::Spool& spool, const StatusSource& source);
// Records that a person confirmed having seen the HIGH-RISK finding of `scan_uid` (when: now, UTC;
// `by`: who, as given), with the scan's record in the spool (one synced journal record), so the
// alert stays confirmed across restarts. The one way both the control socket's `confirm` and the
// operator's page's Confirm button take. Confirming again answers the first confirmation.
// Answers {"scan_uid", "high_risk_confirmed_utc", "high_risk_confirmed_by"}. Errors: kNotFound
// (no such scan in the spool), kInvalidInput (its findings are not HIGH-RISK, or not back yet).
Expected<nlohmann::json> ConfirmHighRisk(spool::Spool& spool, const std::string& scan_uid, const std::string& by);
// The findings category of a scan's AI report ("NORMAL", "HIGH-RISK", "FAILED"), "" when none yet.
std::string FindingsCategory(spool::Spool& spool, const spool::ScanRecord& record);

// {"daemon": {"pid": ..., "uploads_paused": ...}}
void SetDaemon(nlohmann::json& status, long pid, bool uploads_paused);
// {"daemon": {"chunk_buffers": {...}}}: the chunk-buffer budget's use (codec.buffer_bytes), as
// the daemon's agent measures it (core::Agent::chunk_buffer_usage). After SetDaemon.
void SetChunkBuffers(nlohmann::json& status, const ByteBudget::Usage& usage);
// Adds "progress" to the scan `scan_uid` in status["scans"] (a scan not there yet is added with
// state "acquiring").
void SetScanProgress(nlohmann::json& status, const std::string& scan_uid, const ScanProgress& progress);

}  // namespace ctagent::control
