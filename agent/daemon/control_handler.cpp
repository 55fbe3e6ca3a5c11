#include "agent/daemon/control_handler.hpp"

#include <unistd.h>

#include <utility>

#include "agent/control/check.hpp"
#include "agent/control/status.hpp"
#include "drivers/detector.hpp"

namespace ctagent::daemon {

ControlHandler::ControlHandler(core::Agent& agent, const config::AgentConfig& config, std::filesystem::path config_path,
                               std::set<std::string>& acknowledged)
    : agent_(agent), config_(config), config_path_(std::move(config_path)), acknowledged_(acknowledged) {}

ControlHandler::~ControlHandler() {
  if (check_.joinable()) check_.join();
}

void ControlHandler::Status(control::Reply reply) {
  nlohmann::json status = control::StatusFromSpool(agent_.spool(), {"daemon", config_.spool.max_bytes});
  control::SetDaemon(status, static_cast<long>(::getpid()), /*uploads_paused=*/false);
  for (const core::ActiveScan& scan : agent_.ActiveScans()) {
    control::ScanProgress progress;
    progress.phase = scan.phase;
    progress.chunks_stored = scan.chunks_stored;
    progress.chunks_uploaded = scan.chunks_uploaded;
    control::SetScanProgress(status, scan.scan_uid, progress);
  }
  reply(std::move(status));
}

void ControlHandler::Check(control::Reply reply) {
  if (checking_.exchange(true)) {
    reply(MakeError(ErrorKind::kBusy, "a check is already running; ask again when it has answered"));
    return;
  }
  if (check_.joinable()) check_.join();  // the previous check has answered: its thread is ending
  // The checks take network round trips: a thread of their own, never the loop.
  check_ = std::thread([this, reply = std::move(reply)] {
    control::CheckReport report = control::RunChecks(config_path_, control::kChecksBesideOpenDetector);
    report.lines.insert(report.lines.begin(),
                        {"detector", "ok", "held open by the daemon (driver \"" + config_.driver.name + "\")"});
    checking_ = false;
    reply(report.ToJson());
  });
}

void ControlHandler::TakeScan(const control::TakeScanRequest& request, control::Reply reply) {
  core::TakeScanOrder order;
  if (request.protocol) {
    auto protocol = drivers::ProtocolFromJson(*request.protocol);
    if (!protocol) {
      reply(MakeError(protocol.error().WithContext("take_scan protocol")));
      return;
    }
    order.protocol = *protocol;
  }
  order.exam.accession_number = request.accession_number.value_or("");
  order.exam.procedure_step_id = request.procedure_step_id.value_or("");
  order.armed = [reply = std::move(reply)](Expected<std::string> uid) {
    if (!uid) {
      reply(MakeError(uid.error()));
      return;
    }
    reply(nlohmann::json{{"scan_uid", *uid}});
  };
  agent_.TakeScan(std::move(order));
}

void ControlHandler::Acknowledge(const std::string& scan_uid, control::Reply reply) {
  auto record = agent_.spool().Get(scan_uid);
  if (!record) {
    reply(MakeError(ErrorKind::kNotFound, "no scan " + scan_uid + " in the spool; see `ctagent status`"));
    return;
  }
  acknowledged_.insert(scan_uid);
  reply(nlohmann::json{{"scan_uid", scan_uid}, {"state", spool::ToString(record->state)}});
}

void ControlHandler::Pause(control::Reply reply) {
  reply(MakeError(ErrorKind::kUnsupported, "pausing uploads is not in this build of the daemon yet"));
}

void ControlHandler::Resume(control::Reply reply) {
  reply(MakeError(ErrorKind::kUnsupported, "pausing uploads is not in this build of the daemon yet"));
}

}  // namespace ctagent::daemon
