// The daemon's side of the control socket (agent/control/control.hpp): status from the spool
// and the scans in progress, the checks beside the detector the daemon holds, take_scan into
// core::Agent::TakeScan, acknowledge of failed scans. Pause and resume of uploads are refused as
// unsupported in this build.
#pragma once

#include <atomic>
#include <filesystem>
#include <set>
#include <string>
#include <thread>

#include "agent/control/control.hpp"
#include "agent/core/agent.hpp"
#include "config/config.hpp"

namespace ctagent::daemon {

class ControlHandler final : public control::Handler {
 public:
  // `acknowledged`: the failed scans a person has seen, kept by the daemon across passes; read
  // by the daemon only while no handler runs (after the loop stopped).
  ControlHandler(core::Agent& agent, const config::AgentConfig& config, std::filesystem::path config_path,
                 std::set<std::string>& acknowledged);
  ~ControlHandler() override;  // waits for a check in progress (bounded by its network deadlines)

  void Status(control::Reply reply) override;
  void Check(control::Reply reply) override;
  void TakeScan(const control::TakeScanRequest& request, control::Reply reply) override;
  void Acknowledge(const std::string& scan_uid, control::Reply reply) override;
  void Pause(control::Reply reply) override;
  void Resume(control::Reply reply) override;

 private:
  core::Agent& agent_;
  const config::AgentConfig& config_;
  std::filesystem::path config_path_;
  std::thread check_;              // at most one check at a time, off the loop
  std::atomic<bool> checking_{false};
  std::set<std::string>& acknowledged_;  // loop thread only
};

}  // namespace ctagent::daemon
