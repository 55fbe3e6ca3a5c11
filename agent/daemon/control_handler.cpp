#include "agent/daemon/control_handler.hpp"

#include <unistd.h>

#include <utility>
#include <vector>

#include <boost/asio/post.hpp>

#include "base/clock.hpp"
#include "agent/control/check.hpp"
#include "agent/control/status.hpp"
#include "agent/privacy/privacy.hpp"
#include "drivers/detector.hpp"

namespace ctagent::daemon {

ControlHandler::ControlHandler(boost::asio::io_context& io, core::Agent& agent, const config::AgentConfig& config,
                               std::filesystem::path config_path, FileStore& files, std::optional<UploadPause> pause)
    : io_(io),
      agent_(agent),
      config_(config),
      config_path_(std::move(config_path)),
      files_(files),
      pause_(std::move(pause)),
      // Once, as the daemon starts serving: the page's first status then has its spool part.
      spool_status_(control::StatusFromSpool(agent_.spool(), {"daemon", config_.spool.max_bytes})) {}

ControlHandler::~ControlHandler() {
  status_timer_.cancel();
  records_.join();  // what was asked is recorded (or has failed) before the handler goes
  if (check_.joinable()) check_.join();
}

void ControlHandler::OffLoop(std::function<Expected<nlohmann::json>()> work,
                             std::function<void(Expected<nlohmann::json>)> done) {
  if (records_waiting_.fetch_add(1) >= kMaxRecordsWaiting) {
    records_waiting_.fetch_sub(1);
    done(MakeError(ErrorKind::kBusy, "the agent is still writing earlier requests to disk; ask again in a moment"));
    return;
  }
  boost::asio::post(records_, [this, work = std::move(work), done = std::move(done)] {
    Expected<nlohmann::json> result = work();
    records_waiting_.fetch_sub(1);
    done(std::move(result));
  });
}

nlohmann::json ControlHandler::StatusNow() const {
  nlohmann::json status = spool_status_;
  control::SetDaemon(status, static_cast<long>(::getpid()), pause_.has_value());
  if (pause_) status["daemon"]["uploads_paused_since_utc"] = pause_->since_utc;
  if (auto usage = agent_.chunk_buffer_usage()) control::SetChunkBuffers(status, *usage);
  for (const core::ActiveScan& scan : agent_.ActiveScans()) {
    control::ScanProgress progress;
    progress.phase = scan.phase;
    progress.chunks_stored = scan.chunks_stored;
    progress.chunks_uploaded = scan.chunks_uploaded;
    control::SetScanProgress(status, scan.scan_uid, progress);
  }
  return status;
}

void ControlHandler::RefreshSpoolStatus(std::function<void()> then) {
  boost::asio::post(records_, [this, alive = std::weak_ptr<int>(alive_), then = std::move(then)] {
    nlohmann::json status = control::StatusFromSpool(agent_.spool(), {"daemon", config_.spool.max_bytes});
    boost::asio::post(io_, [this, alive, then, status = std::move(status)]() mutable {
      if (alive.expired()) return;
      spool_status_ = std::move(status);
      then();
    });
  });
}

void ControlHandler::KeepStatusFresh(std::chrono::milliseconds every) {
  status_timer_.expires_after(every);
  status_timer_.async_wait([this, every](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled: the handler is going
    if (!refreshing_status_) {
      refreshing_status_ = true;
      RefreshSpoolStatus([this] { refreshing_status_ = false; });
    }
    KeepStatusFresh(every);
  });
}

void ControlHandler::Status(control::Reply reply) {
  // A person asked: the spool as it is now, read on the records worker.
  RefreshSpoolStatus([this, reply = std::move(reply)] { reply(StatusNow()); });
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
    // The detector's line first. Built into a new vector rather than inserted at the front: GCC
    // 12 at -O2 reports a false -Wnull-dereference in vector::insert's reallocation here.
    std::vector<control::CheckLine> lines;
    lines.reserve(report.lines.size() + 1);
    lines.push_back({"detector", "ok", "held open by the daemon (driver \"" + config_.driver.name + "\")"});
    for (control::CheckLine& line : report.lines) lines.push_back(std::move(line));
    report.lines = std::move(lines);
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
  order.exam.emergency = request.emergency;
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
  if (record->state != spool::ScanState::kFailed) {
    reply(MakeError(ErrorKind::kInvalidInput, "scan " + scan_uid + " is " + spool::ToString(record->state) +
                                                  ", not failed: only a failed scan needs acknowledging"));
    return;
  }
  const std::string state = spool::ToString(record->state);
  if (!record->acknowledged_utc.empty()) {
    reply(nlohmann::json{{"scan_uid", scan_uid}, {"state", state}, {"acknowledged_utc", record->acknowledged_utc}});
    return;
  }
  // With the scan's record (one synced journal record, on the records worker), so the daemon
  // stops reporting the scan as needing attention across restarts too.
  OffLoop(
      [this, scan_uid, state]() -> Expected<nlohmann::json> {
        const std::string when = UtcNowIso8601();
        if (auto st = agent_.spool().UpdateFields(scan_uid, [&](spool::ScanRecord& r) { r.acknowledged_utc = when; });
            !st) {
          return MakeError(st.error().WithContext("recording the acknowledgement of scan " + scan_uid));
        }
        return nlohmann::json{{"scan_uid", scan_uid}, {"state", state}, {"acknowledged_utc", when}};
      },
      std::move(reply));
}

void ControlHandler::ConfirmHighRisk(const std::string& scan_uid, const std::string& by,
                                     std::function<void(Expected<nlohmann::json>)> done) {
  const std::string who = !by.empty() ? by : !config_.ui.console_user.empty() ? config_.ui.console_user
                                                                              : std::string("operator at this terminal");
  // One synced journal record, on the records worker.
  OffLoop([this, scan_uid, who] { return control::ConfirmHighRisk(agent_.spool(), scan_uid, who); }, std::move(done));
}

void ControlHandler::Confirm(const std::string& scan_uid, const std::string& by, control::Reply reply) {
  ConfirmHighRisk(scan_uid, by, std::move(reply));
}

void ControlHandler::Patients(std::function<void(nlohmann::json)> done) {
  OffLoop(
      [this]() -> Expected<nlohmann::json> {
        nlohmann::json patients = nlohmann::json::object();
        std::vector<std::string> uids;  // found in place; the mapping files are read after the lock
        agent_.spool().VisitScans([&uids](const spool::ScanRecord& r) { uids.push_back(r.scan_uid); });
        for (const std::string& uid : uids) {
          auto mapping = privacy::ReadMapping(files_, agent_.spool().MappingPath(uid));
          if (!mapping) continue;  // no record (no identity, or an older scan): the page shows none
          patients[uid] = {{"name", mapping->patient_name}, {"id", mapping->patient_id.real}};
        }
        return patients;
      },
      [done = std::move(done)](Expected<nlohmann::json> patients) {
        // Busy: the page shows no names this time and asks again when the next scan appears.
        done(patients ? std::move(*patients) : nlohmann::json::object());
      });
}

void ControlHandler::Pause(control::Reply reply) {
  if (pause_) {
    reply(nlohmann::json{{"paused", true}, {"since_utc", pause_->since_utc}});
    return;
  }
  // Recorded before it takes effect: if the record cannot be written, nothing changed and the
  // technician is told (a pause a restart would silently undo is not offered). The record is
  // written on the records worker; the pause takes effect on the loop.
  OffLoop(
      [this]() -> Expected<nlohmann::json> {
        UploadPause pause{UtcNowIso8601()};
        if (auto st = RecordUploadPause(files_, config_.spool.directory, pause); !st) {
          return MakeError(st.error().WithContext("uploads were not paused"));
        }
        return nlohmann::json{{"paused", true}, {"since_utc", pause.since_utc}};
      },
      [this, alive = std::weak_ptr<int>(alive_), reply = std::move(reply)](Expected<nlohmann::json> recorded) {
        boost::asio::post(io_, [this, alive, reply, recorded = std::move(recorded)] {
          if (recorded && !alive.expired()) {
            if (!pause_) pause_ = UploadPause{(*recorded)["since_utc"].get<std::string>()};
            agent_.SetUploadsPaused(true);
          }
          reply(recorded);
        });
      });
}

void ControlHandler::Resume(control::Reply reply) {
  // The record goes first: a resume that a restart would undo is not reported as done. Always
  // through the records worker, even when not paused, so it comes after a pause still being
  // recorded there.
  OffLoop(
      [this]() -> Expected<nlohmann::json> {
        if (auto st = ClearUploadPause(files_, config_.spool.directory); !st) {
          return MakeError(st.error().WithContext("uploads stay paused"));
        }
        return nlohmann::json{{"paused", false}};
      },
      [this, alive = std::weak_ptr<int>(alive_), reply = std::move(reply)](Expected<nlohmann::json> recorded) {
        boost::asio::post(io_, [this, alive, reply, recorded = std::move(recorded)] {
          if (recorded && !alive.expired()) {
            pause_.reset();
            agent_.SetUploadsPaused(false);
          }
          reply(recorded);
        });
      });
}

}  // namespace ctagent::daemon
