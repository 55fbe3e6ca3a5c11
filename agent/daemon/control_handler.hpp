// The daemon's side of the control socket (agent/control/control.hpp): status from the spool
// and the scans in progress, the checks beside the detector the daemon holds, take_scan into
// core::Agent::TakeScan, acknowledge of failed scans and confirm of high-risk findings (both
// recorded with the scan in the spool), and
// pause and resume of uploads (core::Agent::SetUploadsPaused, recorded in the spool directory by
// upload_pause.hpp so a restart keeps the pause).
#pragma once

#include <atomic>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>

#include "agent/control/control.hpp"
#include "base/durable_file.hpp"
#include "agent/core/agent.hpp"
#include "agent/daemon/upload_pause.hpp"
#include "config/config.hpp"

namespace ctagent::daemon {

class ControlHandler final : public control::Handler {
 public:
  // `files`: where the pause is recorded (the spool's directory); `pause`: the pause recorded
  // when this pass began (the agent is already paused then), or none.
  ControlHandler(core::Agent& agent, const config::AgentConfig& config, std::filesystem::path config_path,
                 FileStore& files, std::optional<UploadPause> pause);
  ~ControlHandler() override;  // waits for a check in progress (bounded by its network deadlines)

  // The status object with the daemon's part and each active scan's live progress: what
  // `status` answers, and what the operator's page shows (agent/ui).
  nlohmann::json StatusNow() const;

  void Status(control::Reply reply) override;
  void Check(control::Reply reply) override;
  void TakeScan(const control::TakeScanRequest& request, control::Reply reply) override;
  void Acknowledge(const std::string& scan_uid, control::Reply reply) override;
  void Confirm(const std::string& scan_uid, const std::string& by, control::Reply reply) override;

  // Confirms a scan's high-risk finding (control::ConfirmHighRisk) by `by`, or when empty by the
  // configured console user (ui.console_user), or "operator at this terminal": what `confirm`
  // and the operator's page's Confirm button both call.
  Expected<nlohmann::json> ConfirmHighRisk(const std::string& scan_uid, const std::string& by) const;
  // The real patient of each scan that has a mapping record (agent/privacy): {"<scan uid>":
  // {"name": ..., "id": ...}}. For the operator's page only: never in `status`, never logged.
  // Reads each scan's small mapping file on the loop; the page asks only when a scan appears.
  nlohmann::json PatientsNow() const;
  void Pause(control::Reply reply) override;
  void Resume(control::Reply reply) override;

 private:
  core::Agent& agent_;
  const config::AgentConfig& config_;
  std::filesystem::path config_path_;
  std::thread check_;              // at most one check at a time, off the loop
  std::atomic<bool> checking_{false};
  FileStore& files_;
  std::optional<UploadPause> pause_;  // loop thread only; set while uploads are paused
};

}  // namespace ctagent::daemon
