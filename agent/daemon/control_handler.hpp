// The daemon's side of the control socket (agent/control/control.hpp): status from the spool
// and the scans in progress, the checks beside the detector the daemon holds, take_scan into
// core::Agent::TakeScan, acknowledge of failed scans and confirm of high-risk findings (both
// recorded with the scan in the spool), and
// pause and resume of uploads (core::Agent::SetUploadsPaused, recorded in the spool directory by
// upload_pause.hpp so a restart keeps the pause). What these write or read on disk (a synced
// journal record, the pause file, the mapping files) runs on one worker thread of the handler's,
// never on the loop; the answer comes when it is done.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

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
  // `io`: the daemon's loop, where the pause takes effect once it is recorded.
  ControlHandler(boost::asio::io_context& io, core::Agent& agent, const config::AgentConfig& config,
                 std::filesystem::path config_path, FileStore& files, std::optional<UploadPause> pause);
  // Waits for a check in progress (bounded by its network deadlines) and for the records worker.
  ~ControlHandler() override;

  // The status object with the daemon's part and each active scan's live progress: what the
  // operator's page shows (agent/ui). Its spool part (a walk of the spool's directories, the
  // rate record) is the one last read on the records worker, never read on the loop: at most
  // `every` old once KeepStatusFresh runs, and read once when the handler is made.
  nlohmann::json StatusNow() const;
  void KeepStatusFresh(std::chrono::milliseconds every);

  void Status(control::Reply reply) override;
  void Check(control::Reply reply) override;
  void TakeScan(const control::TakeScanRequest& request, control::Reply reply) override;
  void Acknowledge(const std::string& scan_uid, control::Reply reply) override;
  void Confirm(const std::string& scan_uid, const std::string& by, control::Reply reply) override;

  // Confirms a scan's high-risk finding (control::ConfirmHighRisk) by `by`, or when empty by the
  // configured console user (ui.console_user), or "operator at this terminal": what `confirm`
  // and the operator's page's Confirm button both call. The record is written on the records
  // worker; `done` is called there.
  void ConfirmHighRisk(const std::string& scan_uid, const std::string& by,
                       std::function<void(Expected<nlohmann::json>)> done);
  // The real patient of each scan that has a mapping record (agent/privacy): {"<scan uid>":
  // {"name": ..., "id": ...}}. For the operator's page only: never in `status`, never logged.
  // The mapping files are read on the records worker; `done` is called there.
  void Patients(std::function<void(nlohmann::json)> done);
  void Pause(control::Reply reply) override;
  void Resume(control::Reply reply) override;

 private:
  // Runs `work` on the records worker, at most kMaxRecordsWaiting at a time (then kBusy at once:
  // a person pressing a button faster than a disk syncs is told to wait, nothing is queued
  // without bound). Its result goes to `done` on the worker.
  static constexpr int kMaxRecordsWaiting = 16;
  void OffLoop(std::function<Expected<nlohmann::json>()> work, std::function<void(Expected<nlohmann::json>)> done);

  // Reads the spool's part of the status on the records worker, then on the loop keeps it and
  // calls `then` (not called if the handler is gone by then).
  void RefreshSpoolStatus(std::function<void()> then);

  boost::asio::io_context& io_;
  core::Agent& agent_;
  const config::AgentConfig& config_;
  std::filesystem::path config_path_;
  std::thread check_;              // at most one check at a time, off the loop
  std::atomic<bool> checking_{false};
  FileStore& files_;
  std::optional<UploadPause> pause_;  // loop thread only; set while uploads are paused
  std::atomic<int> records_waiting_{0};
  nlohmann::json spool_status_;         // loop thread only: the last spool part read
  bool refreshing_status_ = false;      // loop thread only: a periodic refresh is on the worker
  boost::asio::steady_timer status_timer_{io_};
  // Work on the loop that a record's completion posts checks this first: a handler already gone
  // (the daemon stopping) is not touched.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  boost::asio::thread_pool records_{1};  // declared last: joined first, before what its work uses
};

}  // namespace ctagent::daemon
