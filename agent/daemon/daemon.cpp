#include "agent/daemon/daemon.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>

#include "base/log.hpp"
#include "agent/control/control.hpp"
#include "agent/control/status.hpp"
#include "agent/daemon/control_handler.hpp"
#include "agent/daemon/metrics_collector.hpp"
#include "agent/daemon/upload_pause.hpp"
#include "agent/ui/scan_view.hpp"
#include "agent/ui/server.hpp"

namespace ctagent::daemon {
namespace {

// Between passes (spool busy, after a yield) the daemon's thread waits here; it beats as it
// waits, so the watchdog covers this thread too.
void Idle(Environment& env, const core::HeartbeatSettings& heartbeat, std::chrono::milliseconds d) {
  const auto until = std::chrono::steady_clock::now() + d;
  while (!env.stopped()) {  // bounded by `until`
    const auto now = std::chrono::steady_clock::now();
    if (now >= until) break;
    auto slice = std::chrono::duration_cast<std::chrono::milliseconds>(until - now);
    if (heartbeat.beat) slice = std::min(slice, heartbeat.period);
    env.sleep_for(slice);
    if (heartbeat.beat) heartbeat.beat();
  }
}

void LogSummary(const core::ScanSummary& s, int* problems) {
  if (!s.problem.empty()) {
    if (problems != nullptr) ++*problems;
    log::Warn("agent", "scan " + s.scan_uid + ": " + s.problem);
  } else {
    log::Info("agent", "scan " + s.scan_uid + ": " + s.state);
  }
}

// A failed scan (damaged or unreadable spool files, refused by the driver...) is never retried:
// it needs a person, so each one is an error, logged when first seen, and a problem, until a
// person acknowledges it (`ctagent acknowledge`, recorded with the scan in the spool).
int CountFailed(spool::Spool& spool, std::set<std::string>& failed_seen) {
  std::vector<std::pair<std::string, std::string>> failed;  // scan UID, reason: logged outside the spool's lock
  spool.VisitScans([&failed](const spool::ScanRecord& r) {
    if (r.state == spool::ScanState::kFailed && r.acknowledged_utc.empty()) failed.emplace_back(r.scan_uid, r.failure_reason);
  });
  for (const auto& [uid, reason] : failed) {
    if (failed_seen.insert(uid).second) {
      log::Error("agent", "scan " + uid + " FAILED and needs attention (see `ctagent status`): " + reason);
    }
  }
  return static_cast<int>(failed.size());
}

// The operator's page (config section "ui") on Serve's loop, showing what `status` answers and a
// scan's images and report (ui::ScanView, from the spool's scan folders); a port that cannot be
// opened is logged and the daemon goes on without the page.
std::unique_ptr<ui::Server> StartOperatorPage(boost::asio::io_context& io, const config::UiConfig& config,
                                              ControlHandler& handler, core::Agent& agent) {
  ui::ServerSettings settings;
  settings.address = config.address;
  settings.port = config.port;
  settings.server_name = config.server_name;
  settings.tls_cert_file = config.tls.cert_file;
  settings.tls_key_file = config.tls.key_file;
  settings.tls_client_ca_file = config.tls.client_ca_file;
  settings.password_file = config.password_file;
  auto scan_view = std::make_shared<ui::ScanView>(io, [&agent] {
    // The few fields the page lists, read in place (no copy of any chunk list); oldest first.
    std::vector<ui::ScanEntry> scans;
    spool::Spool& sp = agent.spool();
    sp.VisitScans([&scans, &sp](const spool::ScanRecord& r) {
      scans.push_back({r.scan_uid, spool::ToString(r.state), r.created_utc, sp.MappingPath(r.scan_uid).parent_path(),
                       r.manifest_base.is_object() ? r.manifest_base.value("acquisition_end_utc", "") : ""});
    });
    std::stable_sort(scans.begin(), scans.end(),
                     [](const ui::ScanEntry& a, const ui::ScanEntry& b) { return a.created_utc < b.created_utc; });
    return scans;
  });
  auto server = ui::Server::Open(
      io, settings, [&handler] { return handler.StatusNow(); },
      [scan_view](const std::string& path, std::function<void(ui::Server::Reply)> done) {
        scan_view->Handle(path, std::move(done));
      });
  if (!server) {
    log::Warn("ui", server.error().message() + "; the daemon goes on without the operator's page");
    return nullptr;
  }
  // The page's Confirm button takes the same way as `ctagent confirm` (by the console user).
  (*server)->OnConfirm([&handler](const std::string& scan_uid, ui::Server::ConfirmDone done) {
    handler.ConfirmHighRisk(scan_uid, "", std::move(done));
  });
  (*server)->OnPatients([&handler](ui::Server::PatientsDone done) { handler.Patients(std::move(done)); });
  // The page shows the status as it changes; its spool part is read on the handler's worker.
  handler.KeepStatusFresh(settings.event_interval);
  const std::string address = config.server_name.empty() ? config.address : config.server_name;
  const std::string host = address.find(':') != std::string::npos ? "[" + address + "]" : address;
  log::Info("ui", std::string("the operator's page is at ") + (config.tls.cert_file.empty() ? "http://" : "https://") + host + ":" + std::to_string((*server)->port()) + "/");
  return std::move(*server);
}

}  // namespace

std::string DescribeService(const core::ServiceStatus& status) {
  if (!status.acquiring.empty()) {
    return "acquiring scan " + status.acquiring + "; " + std::to_string(status.in_progress) +
           " other scan(s) uploading or awaiting results";
  }
  if (status.in_progress > 0) {
    return "uploading and collecting results for " + std::to_string(status.in_progress) + " scan(s)";
  }
  return "idle; waiting for the next scan";
}

int Run(const config::AgentConfig& config, FileStore& files, const Options& options, Environment& env) {
  bool ready = false;
  const auto say_ready = [&] {
    if (!ready) env.ready();
    ready = true;
  };
  int problems = 0;
  std::set<std::string> failed_seen;
  bool waiting_logged = false;
  // Kept across passes, so the counters and the latency histogram go on (docs/metrics.md).
  MetricsCollector metrics;
  // Bounded in time by the operator's signal. The spool is held for the daemon's life, except
  // while a standalone `ctagent scan` asks for it (or holds it: the daemon then waits).
  while (!env.stopped()) {
    auto agent = std::make_unique<core::Agent>(config, files);
    agent->SetHeartbeat(options.heartbeat);
    if (auto st = agent->Open(); !st) {
      if (st.error().kind() == ErrorKind::kBusy && env.spool_held_by_scan()) {
        // A scan has the spool (and uploads its own scan); the daemon waits until it is done.
        if (!waiting_logged) log::Info("agent", st.error().message() + "; resuming once it is done");
        waiting_logged = true;
        say_ready();
        env.set_status("a scan holds the spool; uploads resume when it is done");
        Idle(env, options.heartbeat, std::chrono::seconds(1));
        continue;
      }
      std::fprintf(stderr, "ctagent: %s\n", st.error().message().c_str());
      env.set_status("stopped: " + st.error().message());
      return 1;
    }
    waiting_logged = false;
    // A pause of uploads recorded by `ctagent pause` holds across restarts until `ctagent resume`.
    std::optional<UploadPause> pause;
    if (auto recorded = ReadUploadPause(files, config.spool.directory); !recorded) {
      // Unreadable (not missing): uploads are kept paused rather than resumed behind a person's back.
      log::Error("agent", recorded.error().message() + "; uploads stay paused until `ctagent resume`");
      pause = UploadPause{"unknown"};
    } else {
      pause = *recorded;
    }
    if (pause && !options.once) {
      log::Warn("agent", "uploads are paused since " + pause->since_utc +
                             " (`ctagent pause`); scans are acquired into the spool and wait; `ctagent resume` "
                             "resumes them");
      agent->SetUploadsPaused(true);
    } else if (pause) {
      // --once is a person's explicit request for one pass; it serves no socket to resume from.
      log::Warn("agent", "uploads were paused since " + pause->since_utc +
                             " (`ctagent pause`); run --once uploads anyway, and the daemon stays paused");
    }
    env.attach(agent.get());
    problems = 0;
    Status served = Ok();
    env.with_monitor(agent->spool(), [&] {
      if (options.once) {
        say_ready();
        env.set_status("uploading and collecting results");
        for (const auto& s : agent->ResumeAll()) {
          env.scan_ended(s);
          LogSummary(s, &problems);
        }
        return;
      }
      core::ServiceHooks hooks;
      hooks.retry_every = options.retry_every;
      hooks.counters = &metrics.counters();
      hooks.on_ready = [&] { say_ready(); };
      hooks.on_status = [&](const core::ServiceStatus& status) {
        std::string line = DescribeService(status);
        if (status.acquiring.empty() && status.in_progress == 0) {
          const std::string backlog = env.describe_backlog(agent->spool());
          line = backlog.empty() ? "idle; every scan is confirmed by the cloud" : "idle; " + backlog;
        }
        env.set_status(line);
      };
      hooks.on_scan_end = [&](const core::ScanSummary& s) {
        env.scan_ended(s);
        metrics.OnScanEnd(s);
        LogSummary(s, nullptr);
      };
      hooks.on_loop = [&](boost::asio::io_context& io) -> std::shared_ptr<void> {
        struct Control {
          std::shared_ptr<void> metrics;  // the metrics endpoint, when configured (config section "metrics")
          std::unique_ptr<ControlHandler> handler;
          std::unique_ptr<ui::Server> page;  // the operator's page (config section "ui"); closed before the handler
          std::unique_ptr<control::Server> server;  // declared last: closed before the handler goes
        };
        auto c = std::make_shared<Control>();
        c->handler = std::make_unique<ControlHandler>(io, *agent, config, options.config_path, files, pause);
        auto server = control::Server::Open(io, control::ServerSettingsFor(config), *c->handler);
        if (!server) {
          log::Warn("agent", "the control socket is not available (`ctagent status`, `scan` and `check` work on "
                             "their own instead): " + server.error().message());
        } else {
          c->server = std::move(*server);
        }
        if (config.metrics.enabled) c->metrics = StartMetricsEndpoint(io, config.metrics, metrics, *agent);
        if (config.ui.enabled) c->page = StartOperatorPage(io, config.ui, *c->handler, *agent);
        return c;
      };
      served = agent->Serve(hooks);
    });
    if (!served) {
      std::fprintf(stderr, "ctagent: %s\n", served.error().message().c_str());
      env.set_status("stopped: " + served.error().message());
      env.attach(nullptr);
      return 1;
    }
    problems += CountFailed(agent->spool(), failed_seen);
    const std::string backlog = env.describe_backlog(agent->spool());
    // A pass stopped before it reached a pending scan gives no summary for it; the scan is still
    // pending all the same, which `run --once` must answer with 1.
    if (options.once && !backlog.empty() && problems == 0) ++problems;
    if (!backlog.empty()) {
      log::Info("lag", backlog);
      env.set_status(backlog);
    } else {
      env.set_status(problems == 0 ? "idle; every scan is confirmed by the cloud"
                                   : "idle; " + std::to_string(problems) + " scan(s) need attention");
    }
    env.attach(nullptr);
    agent.reset();  // lets go of the spool
    if (env.take_yield_request()) {
      // The spool is free now; the scan asking for it takes it within a moment, and the next
      // pass then waits until the scan is done. Had no scan taken it by then (it gave up, or
      // died), the daemon simply carries on.
      Idle(env, options.heartbeat, std::chrono::seconds(5));
      continue;
    }
    if (options.once) break;
  }
  // Stopped on request (SIGTERM from systemd, SIGINT), the daemon did what it was asked: scans
  // still pending are safe in the spool and are no failure of the service, which would otherwise
  // be marked failed at every stop while a link is down. With --once the status is the answer.
  if (env.stopped() && !options.once) return 0;
  return problems == 0 ? 0 : 1;
}

}  // namespace ctagent::daemon
