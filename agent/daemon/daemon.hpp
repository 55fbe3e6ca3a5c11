// The daemon, `ctagent run`: holds the spool for its life and serves scans through
// core::Agent::Serve (every announced scan acquired while earlier ones upload and await
// results; everything unfinished in the spool resumed). It lets go of the spool while a
// standalone `ctagent scan` asks for it (SIGUSR2), and with --once it makes one pass over the
// spool and exits with what is left. main.cpp's CmdRun gives it the process around it: signals,
// the service manager, and the operator-facing backlog and rate helpers.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>

#include "base/durable_file.hpp"
#include "agent/core/agent.hpp"
#include "agent/core/heartbeat.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"

namespace ctagent::daemon {

// What the daemon needs from its process. Every member is required.
struct Environment {
  std::function<bool()> stopped;                             // SIGINT or SIGTERM came
  std::function<bool()> take_yield_request;                  // SIGUSR2 since the last call
  std::function<void(std::chrono::milliseconds)> sleep_for;  // returns early on a stop
  std::function<void(core::Agent*)> attach;                  // where stop and yield requests go
  std::function<void()> ready;                               // the service manager's READY=1 (once)
  std::function<void(const std::string&)> set_status;        // the service manager's STATUS=
  std::function<bool()> spool_held_by_scan;                  // the spool's holder is a standalone scan
  std::function<void(const core::ScanSummary&)> scan_ended;  // e.g. record the upload rate
  std::function<std::string(spool::Spool&)> describe_backlog;  // "" when nothing is left to send
  // Runs `body` with the backlog monitor (rate record, lag log lines) around it.
  std::function<void(spool::Spool&, const std::function<void()>& body)> with_monitor;
};

struct Options {
  std::filesystem::path config_path;  // for the control socket's `check`
  bool once = false;                 // one pass over the spool, then exit (0: nothing left)
  core::HeartbeatSettings heartbeat;  // the service manager's watchdog
  std::chrono::milliseconds retry_every{30000};  // failed uploads and results are retried this often
};

// The status line the service manager shows for what the service does.
std::string DescribeService(const core::ServiceStatus& status);

// While it serves, the daemon answers on the control socket (config section "control";
// agent/daemon/control_handler.hpp); a socket that cannot be opened is logged and left out.
// With the config section "metrics" on, it also serves GET /metrics on the same loop
// (agent/daemon/metrics_collector.hpp, docs/metrics.md); a port that cannot be opened likewise.
// Runs until stopped (or, with --once, one pass). Exit status: 0 when stopped on request (a
// pending scan is the daemon's normal work) or, with --once, when nothing needs attention;
// 1 when the spool cannot be opened, or with --once when scans are pending or failed.
int Run(const config::AgentConfig& config, FileStore& files, const Options& options, Environment& env);

}  // namespace ctagent::daemon
