// ctagent: the scanner-side terminal agent of a cloud CT system.
// Exceptions are caught here and only here; everything below returns errors as values.
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/cli.hpp"
#include "base/allocator.hpp"
#include "base/clock.hpp"
#include "base/log.hpp"
#include "base/service_notify.hpp"
#include "agent/control/control.hpp"
#include "agent/control/status.hpp"
#include "agent/core/agent.hpp"
#include "agent/daemon/daemon.hpp"
#include "agent/privacy/privacy.hpp"
#include "agent/ui/password.hpp"
#include "config/config.hpp"
#include "drivers/record.hpp"
#include "transport/http.hpp"

#ifndef CTAGENT_VERSION
#define CTAGENT_VERSION "0.0.0"
#endif

namespace ctagent {
namespace {

constexpr const char* kMainHelp = R"(ctagent )" CTAGENT_VERSION R"( - scanner-side terminal agent for cloud CT

Usage: ctagent <command> [options]

Commands:
  scan --config FILE     arm the configured detector, run one scan, upload it, fetch and
                         deliver its images; prints a summary
  run --config FILE      the daemon: resume every unfinished scan in the spool and keep
                         retrying until stopped (SIGTERM/SIGINT)
  status --config FILE [--json]
                         list the scans in the spool and where each one stands
  pause --config FILE    ask the running daemon to pause uploads (acquisition goes on)
  resume --config FILE   ask the running daemon to resume uploads
  acknowledge --config FILE SCAN_UID
                         tell the running daemon a person has seen a failed scan
  confirm --config FILE [--by NAME] SCAN_UID
                         tell the running daemon a person has seen a scan's HIGH-RISK finding
  config check FILE      validate a configuration file
  rotate-key --config FILE --yes
                         replace the site key behind the pseudonyms (docs/privacy.md)
  ui-password --config FILE
                         set the operator's page's password (read from stdin; docs/operator-guide.md)
  record --config FILE --out DIR [--format ctagent|dicom-ct-pd]
                         save the configured driver's scan to disk for the replay driver
  check --config FILE [--json]
                         field diagnostics: detector, disk, queue, certificates, link, PACS, console
  chunk inspect|verify|decode FILE...
                         look inside chunk files (see `ctagent chunk --help`)
  --version              print the version
  --help                 this text; `ctagent <command> --help` for a command

Exit status (every command; each one's --help says which apply):
  0  success
  1  the work could not be completed (the reason is printed)
  2  bad usage: an unknown command or option, a missing value
  3  the configuration cannot be read or is invalid
  4  no daemon answers on the control socket (pause, resume, acknowledge, confirm need one)
  5  the daemon refused the request (this user may not use the socket, an unknown scan)
The status, check, scan, pause, resume, acknowledge and confirm commands talk to a running `ctagent run`
over its control socket (config "control"; docs/control-protocol.md).
)";

constexpr const char* kScanHelp = R"(Usage: ctagent scan --config FILE [--accession N | --emergency] [--no-results] [--quiet]

Arms the configured driver with the configured protocol (config "scan"), acquires one scan, and
carries it through compression, the durable spool and the upload, then waits for the images and
the report from the imaging center and sends them to the console.
With a worklist configured, the scan's patient is the worklist's step with accession number N, or
without --accession the one step scheduled for this station today (several or none: refused); only
pseudonyms leave the terminal. Without a worklist the configuration's "study" identity is used.

  --config FILE   the agent configuration (JSON)
  --accession N   the exam's accession number on the worklist
  --emergency     no worklist entry: a temporary identity, flagged for reconciliation
  --no-results    stop after the upload (do not wait for images)
  --quiet         no progress display
Every accepted view is on disk before it is reported; if the upload or the results cannot be
completed now, the data stays in the spool and `ctagent run` continues it. SIGINT (Ctrl-C) or
SIGTERM stops it within a second or two, whatever it waits on (a slow server, the background
agent pausing); what was stored stays in the spool.
When a daemon (`ctagent run`) answers on the control socket, the daemon takes the scan
(take_scan) and this command follows it until it is done (uploaded with --no-results; delivered,
or received when the console is off); SIGINT then stops the following only, never the scan.
Exit status: 0 the scan is done, 1 it could not be completed or was not started (the reason is
printed), 2 bad usage, 3 a configuration error, 5 the daemon refused the request.
)";

constexpr const char* kRunHelp = R"(Usage: ctagent run --config FILE [--once]

The daemon. Resumes every unfinished scan in the spool (uploads, results, delivery), then
checks again every 30 s until stopped with SIGTERM or SIGINT. It holds the spool only during a
pass; `ctagent scan` asks it to pause (SIGUSR2) and it resumes once the scan is done. While the
cloud is behind, it logs the upload backlog every 30 s with the time to clear it at the measured
upload rate.
Under systemd (Type=notify, $NOTIFY_SOCKET set) it reports READY=1 once it serves, STATUS= lines,
WATCHDOG=1 from its event loop at half of WatchdogSec, and STOPPING=1 (docs/oem-integration.md).
  --once   resume what is pending once, then exit
Exit status: 0 when nothing is left that needs a person, and 0 when stopped by SIGTERM or SIGINT
(what is pending stays in the spool); 1 when a scan could not be finished now or is marked failed
(each failed scan is logged as an error), or when the daemon cannot start; 2 bad usage (an
unknown option); 3 a configuration error.
)";

constexpr const char* kStatusHelp = R"(Usage: ctagent status --config FILE [--json]

Lists every scan in the spool with its state, chunk upload progress and results, and the upload
backlog: the bytes the cloud has not confirmed yet and, if an upload rate was measured (by
`ctagent run` or `ctagent scan`, kept in <spool>/upload-rate.json), the time to clear them.
Failed scans are counted apart: they are not uploaded or retried and need a person (each one's
reason is listed).
It asks the running daemon over the control socket (then it also says whether uploads are paused
and how far a scan in progress is); with no daemon it reads the spool itself, read-only.
  --json   one JSON object instead (docs/schemas/status.schema.json); "source" says who answered
Exit status: 0 the status was printed, 1 the spool cannot be read, 2 bad usage, 3 a configuration
error.
)";

constexpr const char* kPauseHelp = R"(Usage: ctagent pause --config FILE [--json]

Asks the running daemon to pause uploads: requests in flight are cancelled (the server keeps
what it received), no new one starts, and nothing is lost; scans are still acquired into the
spool and wait, and images of scans already uploaded still come. Uploads stay paused until
`ctagent resume`, also across restarts of the daemon (the pause is recorded in the spool).
Exit status: 0 paused, 1 the daemon could not do it, 2 bad usage, 3 a configuration error, 4 no
daemon answers on the control socket, 5 the daemon refused (this user may not use the socket).
)";

constexpr const char* kResumeHelp = R"(Usage: ctagent resume --config FILE [--json]

Asks the running daemon to resume uploads paused by `ctagent pause`: they go on where they
stopped, from the server's offset.
Exit status: 0 resumed, 1 the daemon could not do it, 2 bad usage, 3 a configuration error, 4 no
daemon answers on the control socket, 5 the daemon refused (this user may not use the socket).
)";

constexpr const char* kAcknowledgeHelp = R"(Usage: ctagent acknowledge --config FILE [--json] SCAN_UID

Tells the running daemon that a person has seen the failed scan SCAN_UID (from `ctagent status`),
so it is no longer reported as needing attention, also after a restart (recorded with the scan in
the spool; `ctagent status` shows when). Its data stays in the spool. A scan that is not failed
is refused.
Exit status: 0 acknowledged, 1 the daemon could not do it, 2 bad usage, 3 a configuration error,
4 no daemon answers on the control socket, 5 the daemon refused (no such scan, or this user may
not use the socket).
)";

constexpr const char* kConfirmHelp = R"(Usage: ctagent confirm --config FILE [--by NAME] [--json] SCAN_UID

Tells the running daemon that a person has seen the HIGH-RISK finding of scan SCAN_UID (from
`ctagent status`): the operator's page stops alerting for it. Recorded with the scan in the spool
(when, and by whom: NAME, or without --by the configured ui.console_user, or "operator at this
terminal"), so it holds across restarts; `ctagent status` and the page show it. The page's Confirm
button does the same. A scan whose report is not HIGH-RISK is refused; confirming again answers
the first confirmation.
Exit status: 0 confirmed, 1 the daemon could not do it, 2 bad usage, 3 a configuration error,
4 no daemon answers on the control socket, 5 the daemon refused (no such scan, not high risk, or
this user may not use the socket).
)";

constexpr const char* kUiPasswordHelp = R"(Usage: ctagent ui-password --config FILE

Sets the password of the operator's page: reads it from standard input (on a terminal: asked
twice, not shown), refuses one shorter than 12 characters, and writes its PBKDF2-SHA256 hash
with mode 0600 to the file the configuration names at ui.password_file (which needs ui.tls).
The password itself is stored nowhere. A running daemon reads the file when it starts: restart
it (systemctl restart ctagent) for the new password to count.
Exit status: 0 written, 1 not written (the reason is printed), 2 bad usage (also a short
password, or two different ones), 3 a configuration error (also no ui.password_file).
)";

constexpr const char* kRotateKeyHelp = R"(Usage: ctagent rotate-key --config FILE --yes

Replaces the site key that makes the pseudonyms the imaging center sees (config
privacy.key_file, by default site.key in the spool directory) with a new random one: do it when
the key may have leaked, or on the site's schedule (docs/privacy.md, "The site key").
From the next scan on every patient gets new pseudonyms, so the imaging center sees a returning
patient as a new one. Scans already sent are not affected: their results are re-identified from
their mapping records, which hold the real values. The old key is not kept.
A running daemon needs no restart: it reads the key at each scan.
  --yes   required: the rotation cannot be undone
Exit status: 0 rotated, 1 not rotated (no key yet, or the key file is refused: the reason is
printed), 2 bad usage (also without --yes), 3 a configuration error.
)";

constexpr const char* kConfigHelp = R"(Usage: ctagent config check FILE

Validates FILE and prints "FILE: OK" or one line per problem naming the file, the JSON path,
what was expected and what was found. The CA, client certificate, client key and password files
it names must be readable by this user, and the secret ones not readable by others.
Exit status: 0 valid, 2 bad usage, 3 the configuration is invalid or cannot be read.
)";

struct Args {
  std::vector<std::string> items;
  bool Has(const std::string& flag) const {
    for (const auto& a : items) {
      if (a == flag) return true;
    }
    return false;
  }
  std::string Value(const std::string& flag) const {
    for (std::size_t i = 0; i + 1 < items.size(); ++i) {
      if (items[i] == flag) return items[i + 1];
    }
    return "";
  }
};

int Usage(const std::string& problem, const char* help) {
  std::fprintf(stderr, "ctagent: %s\n\n%s", problem.c_str(), help);
  return cli::kExitUsage;
}

// Every command refuses what it does not know: options outside `with_value` and `switches`, an
// option without its value, and more than `max_positional` other arguments (put in *positional).
// Returns the usage exit status, or nothing when the arguments are fine.
std::optional<int> RejectUnknown(const Args& args, std::initializer_list<std::string_view> with_value,
                                 std::initializer_list<std::string_view> switches, const char* help,
                                 std::size_t max_positional = 0, std::vector<std::string>* positional = nullptr) {
  const auto known = [](std::initializer_list<std::string_view> list, const std::string& a) {
    return std::find(list.begin(), list.end(), a) != list.end();
  };
  std::size_t positionals = 0;
  for (std::size_t i = 0; i < args.items.size(); ++i) {
    const std::string& a = args.items[i];
    if (known(with_value, a)) {
      if (i + 1 >= args.items.size()) return Usage(a + " needs a value", help);
      ++i;
    } else if (known(switches, a) || a == "--help" || a == "-h") {
      continue;
    } else if (a.size() > 1 && a[0] == '-') {
      return Usage("unknown option \"" + a + "\"", help);
    } else if (++positionals > max_positional) {
      return Usage("unexpected argument \"" + a + "\"", help);
    } else if (positional != nullptr) {
      positional->push_back(a);
    }
  }
  return std::nullopt;
}

Expected<config::AgentConfig> LoadOrExplain(const Args& args, const char* help, int* exit_code) {
  const std::string path = args.Value("--config");
  if (path.empty()) {
    *exit_code = Usage("--config FILE is required", help);
    return MakeError(ErrorKind::kInvalidInput, "");
  }
  auto cfg = config::LoadConfig(path);
  if (!cfg) {
    std::fprintf(stderr, "ctagent: %s\n", cfg.error().message().c_str());
    *exit_code = cli::kExitConfig;
    return cfg;
  }
  log::Level level;
  if (log::ParseLevel(cfg->log_level, &level)) log::SetLevel(level);
  if (cfg->cloud.allow_plain_http) {
    log::Warn("config", "cloud.allow_plain_http is on: uploads and results may travel UNENCRYPTED. "
                        "Development use only; never on a clinical network.");
  }
  return cfg;
}

// The signals are blocked in every thread and taken here. SIGINT and SIGTERM stop the agent;
// SIGUSR2 (sent by `ctagent scan`, see OpenForScan) asks a daemon to pause: its current pass
// stops and it lets go of the spool until the scan is done.
class SignalWatcher {
 public:
  // `on_stop` runs on the watcher's thread when SIGINT or SIGTERM arrives (a service manager is
  // told that the daemon is stopping).
  explicit SignalWatcher(core::Agent* agent, bool daemon = false, std::function<void()> on_stop = {})
      : agent_(agent), daemon_(daemon), on_stop_(std::move(on_stop)) {
    thread_ = std::thread([this] {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGINT);
      sigaddset(&set, SIGTERM);
      sigaddset(&set, SIGUSR1);  // used only to wake this thread at exit
      sigaddset(&set, SIGUSR2);
      int sig = 0;
      while (sigwait(&set, &sig) == 0) {
        if (done_) return;
        std::lock_guard lock(mutex_);
        if (sig == SIGUSR2) {
          if (!daemon_) continue;  // only a daemon gives the spool away
          log::Info("agent", "a scan is waiting for the spool; pausing uploads until it is done");
          yield_requested_ = true;
        } else if (sig == SIGINT || sig == SIGTERM) {
          log::Warn("agent", std::string("received ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") +
                                 "; stopping (everything accepted stays safe in the spool)");
          // Every HTTP request in flight ends within about a second, whatever it waits on (an
          // answer trickling in is never a stall), and no new one starts: the process is going.
          transport::CancelAllRequests();
          stopped_ = true;
          if (on_stop_) on_stop_();
        } else {
          continue;
        }
        if (agent_ != nullptr) agent_->RequestStop();
        cv_.notify_all();
      }
    });
  }
  ~SignalWatcher() {
    done_ = true;
    pthread_kill(thread_.native_handle(), SIGUSR1);
    thread_.join();
  }
  // The agent a stop or pause request goes to (the daemon has a new one per pass; null between).
  void Attach(core::Agent* agent) {
    std::lock_guard lock(mutex_);
    agent_ = agent;
    if (agent_ != nullptr && stopped_) agent_->RequestStop();
  }
  bool stopped() const { return stopped_; }
  // True once per SIGUSR2 received since the last call.
  bool TakeYieldRequest() { return yield_requested_.exchange(false); }
  // Sleeps up to `d`, returning early when a stop signal arrives.
  void SleepFor(std::chrono::milliseconds d) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, d, [this] { return stopped_.load(); });
  }

 private:
  core::Agent* agent_;  // guarded by mutex_
  const bool daemon_;
  const std::function<void()> on_stop_;
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<bool> yield_requested_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
};

// `scan` and `run` take SIGINT, SIGTERM and SIGUSR2 on a SignalWatcher thread (sigwait), so they
// block them in every thread, before any thread starts. Every other command has no watcher and
// nothing to save at a stop: it keeps the default dispositions, so SIGINT or SIGTERM ends it
// whatever it is blocked on (a FIFO, a silent server). The mask inherited from the parent is
// cleared for them, since a blocked signal would make them immune to it.
void SetUpSignals(const std::string& command) {
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (command == "scan" || command == "run") {
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
  } else {
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  }
}

// A one-line progress display on stderr: redrawn in place on a terminal, a line every few
// seconds otherwise (logs, CI).
class ProgressDisplay {
 public:
  explicit ProgressDisplay(const core::Progress& p) : progress_(p), tty_(isatty(STDERR_FILENO) != 0) {
    thread_ = std::thread([this] {
      const auto period = tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(5000);
      std::unique_lock lock(mutex_);
      while (!cv_.wait_for(lock, period, [this] { return done_; })) Draw();
    });
  }
  ~ProgressDisplay() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
    Draw();
    if (tty_) std::fputc('\n', stderr);
  }

 private:
  void Draw() {
    static const char* kPhases[] = {"acquiring", "uploading", "waiting for images", "delivering", "done"};
    const int phase = std::clamp(progress_.phase.load(), 0, 4);
    const auto total = progress_.views_total.load();
    const auto views = progress_.views_acquired.load();
    std::fprintf(stderr, "%s[%-18s] views %llu/%llu (%3.0f%%)  chunks stored %u, uploaded %u%s",
                 tty_ ? "\r" : "", kPhases[phase], static_cast<unsigned long long>(views),
                 static_cast<unsigned long long>(total), total ? 100.0 * static_cast<double>(views) / static_cast<double>(total) : 0.0,
                 progress_.chunks_stored.load(), progress_.chunks_uploaded.load(), tty_ ? "   " : "\n");
    std::fflush(stderr);
  }

  const core::Progress& progress_;
  bool tty_;
  bool done_ = false;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
};

std::string Mib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

// --- Upload lag: how far the cloud is behind the spool ---------------------------------------
//
// The backlog is what the spool holds that the cloud has not confirmed yet. The rate comes only
// from measurements: the daemon (and `ctagent scan`) sample the confirmed offsets in the spool
// while a backlog exists, and record the recent rate in <spool>/upload-rate.json for `status`.
// The record is advisory (a hint for people), so it is written with a plain write + rename and
// not through the spool's FileStore, whose durable operations it must not disturb.

// The backlog and the rate record live in agent/control/status.hpp (the status object uses them).
using control::Backlog;
using control::MeasureBacklog;
using control::RateRecord;
using control::ReadRateRecord;
using control::WriteRateRecord;

std::string Duration(double seconds) {
  char buf[48];
  if (seconds < 120) {
    std::snprintf(buf, sizeof buf, "%.0f s", seconds);
  } else if (seconds < 7200) {
    std::snprintf(buf, sizeof buf, "%.0f min", seconds / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f h", seconds / 3600);
  }
  return buf;
}

// What failed scans add to the backlog line: they are not uploaded (never retried), so a line
// that only counted bytes would call a spool holding nothing but failed scans "all confirmed".
std::string FailedScansNote(const Backlog& b) {
  if (b.failed == 0) return "";
  return "; " + std::to_string(b.failed) +
         " scan(s) FAILED and need a person: not uploaded and not retried; their data stays in the spool "
         "(see each scan's reason below / `ctagent status`)";
}

// One line: the backlog in bytes and, when a rate was measured, the time to clear it.
std::string DescribeBacklog(const Backlog& b, const std::optional<RateRecord>& rate) {
  if (b.bytes == 0 && b.failed == 0) return "upload backlog: none (the cloud confirmed everything in the spool)";
  if (b.bytes == 0) return "upload backlog: none among the scans being uploaded" + FailedScansNote(b);
  std::string line = "upload backlog: " + std::to_string(b.bytes) + " bytes (" + Mib(b.bytes) + ") in " +
                     std::to_string(b.scans) + " scan(s) not yet confirmed by the cloud; ";
  if (!rate) return line + "rate unknown (no upload measured yet), so no time estimate" + FailedScansNote(b);
  char buf[160];
  std::snprintf(buf, sizeof buf, "about %s at the recent upload rate of %.2f Mbit/s", Duration(static_cast<double>(b.bytes) / rate->bytes_per_second).c_str(),
                rate->bytes_per_second * 8.0 / 1e6);
  line += buf;
  if (rate->age_s) {
    line += " (measured " + Duration(*rate->age_s) + " ago over " + Duration(rate->window_s) + ")";
  } else {
    line += " (measured at " + rate->measured_utc + ", before the machine restarted)";
  }
  return line + FailedScansNote(b);
}

// Samples the confirmed bytes every 2 s while the agent works; keeps the rate of the last minute
// of uploading (intervals without a backlog are idle, not slow, and are left out), records it for
// `status`, and logs the backlog every 30 s while one exists.
class LagMonitor {
 public:
  LagMonitor(spool::Spool& spool, bool log_backlog) : spool_(spool), log_backlog_(log_backlog) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~LagMonitor() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  LagMonitor(const LagMonitor&) = delete;
  LagMonitor& operator=(const LagMonitor&) = delete;

 private:
  struct Sample {
    std::chrono::steady_clock::time_point at;
    std::uint64_t confirmed;
    std::uint64_t backlog;
  };

  void Loop() {
    constexpr auto kPeriod = std::chrono::seconds(2);
    constexpr auto kWindow = std::chrono::seconds(60);
    constexpr auto kLogEvery = std::chrono::seconds(30);
    auto last_log = std::chrono::steady_clock::now();
    std::unique_lock lock(mutex_);
    while (!cv_.wait_for(lock, kPeriod, [this] { return done_; })) {
      lock.unlock();
      const Backlog b = MeasureBacklog(spool_);
      const auto now = std::chrono::steady_clock::now();
      samples_.push_back({now, b.confirmed, b.bytes});
      while (samples_.size() > 2 && now - samples_.front().at > kWindow) samples_.erase(samples_.begin());
      double busy_s = 0;
      std::uint64_t sent = 0;
      for (std::size_t i = 1; i < samples_.size(); ++i) {
        if (samples_[i - 1].backlog == 0) continue;
        busy_s += std::chrono::duration<double>(samples_[i].at - samples_[i - 1].at).count();
        // A confirmed count can fall when the server lost an upload; that interval sent nothing.
        if (samples_[i].confirmed > samples_[i - 1].confirmed) sent += samples_[i].confirmed - samples_[i - 1].confirmed;
      }
      if (sent > 0 && busy_s >= 1.0) WriteRateRecord(spool_.directory(), static_cast<double>(sent) / busy_s, busy_s, sent);
      if (log_backlog_ && b.bytes > 0 && now - last_log >= kLogEvery) {
        last_log = now;
        log::Info("lag", DescribeBacklog(b, ReadRateRecord(spool_.directory())));
      }
      lock.lock();
    }
  }

  spool::Spool& spool_;
  bool log_backlog_;
  std::vector<Sample> samples_;
  bool done_ = false;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
};

// A whole scan's upload (first byte to the manifest's confirmation) is a measurement too; it
// covers uploads too short for the 2 s sampler.
void RecordSummaryRate(const std::filesystem::path& spool_dir, const core::ScanSummary& s) {
  if (s.uploaded_bytes > 0 && s.upload_seconds > 0.05) {
    WriteRateRecord(spool_dir, static_cast<double>(s.uploaded_bytes) / s.upload_seconds, s.upload_seconds,
                    s.uploaded_bytes);
  }
}

void PrintSummary(const core::ScanSummary& s) {
  const double ratio = s.compressed_bytes ? static_cast<double>(s.raw_bytes) / static_cast<double>(s.compressed_bytes) : 0.0;
  const double mbps = s.upload_seconds > 0 ? static_cast<double>(s.uploaded_bytes) * 8.0 / 1e6 / s.upload_seconds : 0.0;
  std::printf("Scan summary\n");
  std::printf("  scan id            %s\n", s.scan_uid.c_str());
  std::printf("  study              %s\n", s.study_uid.c_str());
  std::printf("  state              %s\n", s.state.c_str());
  std::printf("  views              %llu in %u chunks (acquired in %.1f s)\n", static_cast<unsigned long long>(s.views),
              s.chunks, s.acquisition_seconds);
  std::printf("  raw bytes          %llu (%s)\n", static_cast<unsigned long long>(s.raw_bytes), Mib(s.raw_bytes).c_str());
  std::printf("  compressed bytes   %llu (%s), ratio %.2f:1\n", static_cast<unsigned long long>(s.compressed_bytes),
              Mib(s.compressed_bytes).c_str(), ratio);
  std::printf("  upload             %s in %.1f s (%.1f Mbit/s)\n", Mib(s.uploaded_bytes).c_str(), s.upload_seconds, mbps);
  std::printf("  images received    %u\n", s.results_received);
  std::printf("  images delivered   %u (to the console)\n", s.results_delivered);
  if (!s.results_dir.empty()) std::printf("  images are in      %s\n", s.results_dir.c_str());
  if (!s.problem.empty()) std::printf("  PROBLEM            %s\n", s.problem.c_str());
  std::fflush(stdout);
}

bool OpenOrExplain(core::Agent& agent, bool read_only = false) {
  if (auto st = agent.Open(read_only); !st) {
    std::fprintf(stderr, "ctagent: %s\n", st.error().message().c_str());
    return false;
  }
  return true;
}

// Whether process `pid` is a `ctagent run` daemon (by its command line).
bool IsDaemon(int pid) {
  std::istringstream words(ProcessCommandLine(pid));
  std::string program, word;
  if (!(words >> program) || std::filesystem::path(program).filename() != "ctagent") return false;
  while (words >> word) {
    if (word == "run") return true;
  }
  return false;
}

// A scan must not be refused because the daemon is uploading: when a `ctagent run` holds the
// spool, it is asked to pause (SIGUSR2, repeated every 2 s in case it was between passes) and
// the scan waits for the spool, at most kDaemonPauseWait, or until SIGINT/SIGTERM (checked every
// 100 ms). Any other holder is an error.
bool OpenForScan(core::Agent& agent, const std::filesystem::path& spool_dir, const SignalWatcher& signals) {
  constexpr auto kDaemonPauseWait = std::chrono::seconds(120);
  auto st = agent.Open();
  if (st) return true;
  const int pid = LockHolderPid(spool::Spool::LockFile(spool_dir));
  if (st.error().kind() != ErrorKind::kBusy || pid <= 0 || !IsDaemon(pid)) {
    std::fprintf(stderr, "ctagent: %s\n", st.error().message().c_str());
    return false;
  }
  std::fprintf(stderr, "ctagent: the background agent (pid %d) is pausing its uploads for this scan...\n", pid);
  const auto deadline = std::chrono::steady_clock::now() + kDaemonPauseWait;
  auto next_signal = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() < deadline) {
    if (signals.stopped()) {
      std::fprintf(stderr, "ctagent: scan not started: stopped by a signal while waiting for the background agent "
                           "(pid %d) to pause\n", pid);
      return false;
    }
    if (std::chrono::steady_clock::now() >= next_signal) {
      // Checked again each time: the pid must still be that daemon, never a recycled one.
      if (LockHolderPid(spool::Spool::LockFile(spool_dir)) == pid && IsDaemon(pid)) ::kill(pid, SIGUSR2);
      next_signal = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    st = agent.Open();
    if (st) return true;
    if (st.error().kind() != ErrorKind::kBusy) break;
  }
  std::fprintf(stderr, "ctagent: scan not started: %s\n", st.error().message().c_str());
  return false;
}

// The exit status for an error the daemon answered: it refused (5) or could not do it (1).
int DaemonErrorExit(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::kPermission:
    case ErrorKind::kNotFound:
    case ErrorKind::kInvalidInput:
    case ErrorKind::kUnsupported:
      return cli::kExitRefused;
    default:
      return cli::kExitNotCompleted;
  }
}

// A scan is done for `ctagent scan` when it reached the last state the configuration asks for.
bool ScanDone(const std::string& state, const config::AgentConfig& cfg) {
  if (state == "failed" || state == "delivered") return true;
  if (!cfg.results.enabled) return state == "uploaded" || state == "results-received";
  if (!cfg.console.enabled) return state == "results-received";
  return false;
}

// When a daemon answers on the control socket, the scan is its to take: ask it (take_scan) and
// follow the scan through `status` once a second until it is done. Nothing when no daemon
// answers (the scan then runs here, as before). Bounded: a scan whose record does not change for
// the results timeout plus 10 minutes is left to the daemon, and SIGINT/SIGTERM stop following.
std::optional<int> ScanThroughDaemon(const config::AgentConfig& cfg, const Args& args, const SignalWatcher& signals) {
  const auto socket = config::ControlSocketPath(cfg);
  auto client = control::Client::Connect(socket);
  if (!client) return std::nullopt;
  nlohmann::json request = nlohmann::json::object();
  if (args.Has("--accession")) request["accession_number"] = args.Value("--accession");
  if (args.Has("--emergency")) request["emergency"] = true;
  auto taken = client->Call("take_scan", request, std::chrono::seconds(120));
  if (!taken) {
    std::fprintf(stderr, "ctagent: scan not started: the background agent (%s) answered: %s\n", socket.c_str(),
                 taken.error().message().c_str());
    return DaemonErrorExit(taken.error());
  }
  const std::string uid = taken->value("scan_uid", "");
  if (uid.empty()) {
    std::fprintf(stderr, "ctagent: the background agent took the scan but did not name it; follow it with `ctagent status`\n");
    return cli::kExitNotCompleted;
  }
  std::fprintf(stderr, "ctagent: the background agent takes scan %s; following it (Ctrl-C stops following, not the scan)\n",
               uid.c_str());
  const bool quiet = args.Has("--quiet");
  const bool tty = isatty(STDERR_FILENO) != 0;
  const auto stall_limit = std::chrono::seconds(cfg.results.timeout_s) + std::chrono::minutes(10);
  auto last_change = std::chrono::steady_clock::now();
  auto last_line = std::chrono::steady_clock::time_point{};
  nlohmann::json last_scan;
  int lost = 0;
  while (!signals.stopped()) {
    auto status = client->Call("status", nlohmann::json::object(), std::chrono::seconds(10));
    if (!status) {
      // The daemon restarted or went away: reconnect a few times, then leave the scan to it.
      if (++lost > 10) {
        std::fprintf(stderr, "\nctagent: lost the background agent (%s); the scan %s stays in the spool: see "
                             "`ctagent status`\n", status.error().message().c_str(), uid.c_str());
        return cli::kExitNotCompleted;
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
      if (auto again = control::Client::Connect(socket)) client = std::move(again);
      continue;
    }
    lost = 0;
    nlohmann::json scan;
    for (const auto& s : status->value("scans", nlohmann::json::array())) {
      if (s.value("scan_uid", "") == uid) scan = s;
    }
    const auto now = std::chrono::steady_clock::now();
    if (scan != last_scan) last_change = now;
    last_scan = scan;
    const std::string state = scan.is_object() ? scan.value("state", "acquiring") : "acquiring";
    const bool done = ScanDone(state, cfg);
    if (!quiet && (tty || done || now - last_line >= std::chrono::seconds(5))) {
      last_line = now;
      const nlohmann::json progress = scan.is_object() ? scan.value("progress", nlohmann::json::object()) : nlohmann::json::object();
      const auto views = progress.value("views_acquired", scan.is_object() ? scan.value("views_acquired", 0ULL) : 0ULL);
      const auto total = progress.value("views_total", 0ULL);
      std::fprintf(stderr, "%s[%-18s] views %llu", tty ? "\r" : "", progress.value("phase", state).c_str(),
                   static_cast<unsigned long long>(views));
      if (total > 0) std::fprintf(stderr, "/%llu", static_cast<unsigned long long>(total));
      std::fprintf(stderr, "  chunks uploaded %llu/%llu  results %llu%s",
                   static_cast<unsigned long long>(scan.is_object() ? scan.value("chunks_uploaded", 0ULL) : 0ULL),
                   static_cast<unsigned long long>(scan.is_object() ? scan.value("chunks_total", 0ULL) : 0ULL),
                   static_cast<unsigned long long>(scan.is_object() ? scan.value("results", 0ULL) : 0ULL),
                   tty ? "   " : "\n");
      std::fflush(stderr);
    }
    if (done) {
      if (!quiet && tty) std::fputc('\n', stderr);
      std::printf("Scan summary (taken by the background agent)\n");
      std::printf("  scan id            %s\n", uid.c_str());
      std::printf("  study              %s\n", scan.value("study_uid", "").c_str());
      std::printf("  state              %s\n", state.c_str());
      std::printf("  chunks             %llu uploaded of %llu\n", scan.value("chunks_uploaded", 0ULL),
                  scan.value("chunks_total", 0ULL));
      std::printf("  images received    %llu\n", scan.value("results", 0ULL));
      std::string problem = scan.value("failure_reason", "");
      if (problem.empty()) problem = scan.value("incomplete_reason", "");
      if (!problem.empty()) std::printf("  PROBLEM            %s\n", problem.c_str());
      std::fflush(stdout);
      return problem.empty() && state != "failed" ? cli::kExitOk : cli::kExitNotCompleted;
    }
    if (now - last_change > stall_limit) {
      std::fprintf(stderr, "\nctagent: scan %s has not moved for %lld s (state %s); the background agent keeps it: see "
                           "`ctagent status`\n", uid.c_str(),
                   static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(stall_limit).count()),
                   state.c_str());
      return cli::kExitNotCompleted;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::fprintf(stderr, "\nctagent: stopped following scan %s; the background agent carries on with it (`ctagent "
                       "status`)\n", uid.c_str());
  return cli::kExitNotCompleted;
}

int CmdScan(const Args& args) {
  if (auto bad = RejectUnknown(args, {"--config", "--accession"}, {"--no-results", "--quiet", "--emergency"}, kScanHelp)) {
    return *bad;
  }
  if (args.Has("--help")) return std::printf("%s", kScanHelp), 0;
  core::ExamIdentity exam;
  exam.accession_number = args.Has("--accession") ? args.Value("--accession") : "";
  exam.emergency = args.Has("--emergency");
  if (exam.emergency && !exam.accession_number.empty()) {
    std::fprintf(stderr, "ctagent: --accession and --emergency exclude each other: an emergency scan has no worklist entry\n");
    return cli::kExitUsage;
  }
  int code = 0;
  auto cfg = LoadOrExplain(args, kScanHelp, &code);
  if (!cfg) return code;
  if (args.Has("--no-results")) cfg->results.enabled = false;
  const auto file_store = MakeProcessFileStore();
  FileStore& files = *file_store;
  core::Agent agent(*cfg, files);
  // Before the spool is opened: a scan waiting for the daemon to pause must stop on SIGTERM too.
  SignalWatcher signals(&agent);
  if (auto followed = ScanThroughDaemon(*cfg, args, signals)) return *followed;
  if (!OpenForScan(agent, cfg->spool.directory, signals)) return 1;
  core::Progress progress;
  Expected<core::ScanSummary> summary = MakeError(ErrorKind::kInternal, "not run");
  {
    LagMonitor lag(agent.spool(), /*log_backlog=*/false);
    std::unique_ptr<ProgressDisplay> display;
    if (!args.Has("--quiet")) display = std::make_unique<ProgressDisplay>(progress);
    summary = agent.RunScan(&progress, exam);
  }
  if (!summary) {
    std::fprintf(stderr, "ctagent: scan not started: %s\n", summary.error().message().c_str());
    return 1;
  }
  RecordSummaryRate(cfg->spool.directory, *summary);
  PrintSummary(*summary);
  return summary->problem.empty() ? 0 : 1;
}

int CmdRun(const Args& args) {
  if (args.Has("--help")) return std::printf("%s", kRunHelp), 0;
  int code = 0;
  auto cfg = LoadOrExplain(args, kRunHelp, &code);
  if (!cfg) return code;
  const auto file_store = MakeProcessFileStore();
  FileStore& files = *file_store;
  // Under systemd (Type=notify): READY=1 once serving, WATCHDOG=1 from the event loop, STOPPING=1.
  // Read before any thread starts: it also clears the variables from the environment.
  const auto notifier = service::ServiceNotifier::FromEnvironment();
  daemon::Options options;
  options.once = args.Has("--once");
  options.config_path = args.Value("--config");
  if (notifier.watchdog_timeout().count() > 0) {
    options.heartbeat.period = std::max(
        std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(notifier.watchdog_timeout() / 2));
    options.heartbeat.beat = [&notifier] { notifier.Watchdog(); };
  }
  SignalWatcher signals(nullptr, /*daemon=*/true, [&notifier] { notifier.Stopping(); });
  std::string started = "ctagent " CTAGENT_VERSION " running; spool " + cfg->spool.directory.string();
  if (notifier.enabled()) started += "; reporting to the service manager";
  if (options.heartbeat.beat) started += ", watchdog every " + std::to_string(options.heartbeat.period.count()) + " ms";
  log::Info("agent", started);
  // The daemon's logic is agent/daemon/; this is the process around it.
  daemon::Environment env;
  env.stopped = [&] { return signals.stopped(); };
  env.take_yield_request = [&] { return signals.TakeYieldRequest(); };
  env.sleep_for = [&](std::chrono::milliseconds d) { signals.SleepFor(d); };
  env.attach = [&](core::Agent* agent) { signals.Attach(agent); };
  env.ready = [&] { notifier.Ready(); };
  env.set_status = [&](const std::string& status) { notifier.SetStatus(status); };
  env.spool_held_by_scan = [&] {
    const int holder = LockHolderPid(spool::Spool::LockFile(cfg->spool.directory));
    return holder > 0 && !IsDaemon(holder);
  };
  env.scan_ended = [&](const core::ScanSummary& s) { RecordSummaryRate(cfg->spool.directory, s); };
  env.describe_backlog = [&](spool::Spool& spool) {
    const Backlog b = MeasureBacklog(spool);
    return b.bytes > 0 ? DescribeBacklog(b, ReadRateRecord(cfg->spool.directory)) : std::string();
  };
  env.with_monitor = [](spool::Spool& spool, const std::function<void()>& body) {
    LagMonitor lag(spool, /*log_backlog=*/true);
    body();
  };
  return daemon::Run(*cfg, files, options, env);
}

// The status object (docs/schemas/status.schema.json) as lines for a person.
void PrintStatus(const nlohmann::json& status) {
  const nlohmann::json spool = status.value("spool", nlohmann::json::object());
  std::printf("spool %s: %s used of %s budget, %s free on the file system\n", spool.value("directory", "").c_str(),
              Mib(spool.value("used_bytes", 0ULL)).c_str(), Mib(spool.value("budget_bytes", 0ULL)).c_str(),
              Mib(spool.value("filesystem_free_bytes", 0ULL)).c_str());
  const nlohmann::json backlog = status.value("backlog", nlohmann::json::object());
  Backlog b;
  b.bytes = backlog.value("bytes", 0ULL);
  b.scans = backlog.value("scans", std::size_t{0});
  b.failed = backlog.value("failed_scans", std::size_t{0});
  std::optional<RateRecord> rate;
  if (backlog.contains("rate_bytes_per_second") && backlog["rate_bytes_per_second"].is_number()) {
    rate = RateRecord{};
    rate->bytes_per_second = backlog["rate_bytes_per_second"].get<double>();
    if (backlog.contains("rate_window_s") && backlog["rate_window_s"].is_number()) rate->window_s = backlog["rate_window_s"].get<double>();
    if (backlog.contains("rate_measured_utc") && backlog["rate_measured_utc"].is_string()) {
      rate->measured_utc = backlog["rate_measured_utc"].get<std::string>();
    }
    if (backlog.contains("rate_age_s") && backlog["rate_age_s"].is_number()) rate->age_s = backlog["rate_age_s"].get<double>();
  }
  std::printf("%s\n", DescribeBacklog(b, rate).c_str());
  if (status.contains("daemon") && status["daemon"].is_object()) {
    const auto& d = status["daemon"];
    const std::string paused = "PAUSED since " + d.value("uploads_paused_since_utc", std::string("unknown")) +
                               " (scans are acquired and wait in the spool; `ctagent resume` resumes uploads)";
    std::printf("daemon pid %lld: uploads %s\n", d.value("pid", 0LL),
                d.value("uploads_paused", false) ? paused.c_str() : "running");
    if (d.contains("chunk_buffers") && d["chunk_buffers"].is_object()) {
      const auto& c = d["chunk_buffers"];
      std::printf("chunk buffers (codec.buffer_bytes): %s in use of %s, at most %s so far; acquisition waited %llu "
                  "times\n",
                  Mib(c.value("in_use_bytes", 0ULL)).c_str(), Mib(c.value("capacity_bytes", 0ULL)).c_str(),
                  Mib(c.value("high_water_bytes", 0ULL)).c_str(), c.value("acquisition_waits", 0ULL));
    }
  }
  const nlohmann::json scans = status.value("scans", nlohmann::json::array());
  if (scans.empty()) std::printf("no scans in the spool\n");
  for (const auto& r : scans) {
    const std::string manifest = r.value("manifest", "none");
    std::printf("%s  %-16s  created %s  chunks %llu/%llu uploaded (%s to go)  manifest %s  results %llu\n",
                r.value("scan_uid", "").c_str(), r.value("state", "").c_str(), r.value("created_utc", "").c_str(),
                r.value("chunks_uploaded", 0ULL), r.value("chunks_total", 0ULL), Mib(r.value("bytes_to_upload", 0ULL)).c_str(),
                manifest == "none" ? "-" : manifest.c_str(), r.value("results", 0ULL));
    if (r.contains("progress") && r["progress"].is_object()) {
      const auto& p = r["progress"];
      std::printf("    now: %s, views %llu/%llu, chunks stored %llu, uploaded %llu\n", p.value("phase", "").c_str(),
                  p.value("views_acquired", 0ULL), p.value("views_total", 0ULL), p.value("chunks_stored", 0ULL),
                  p.value("chunks_uploaded", 0ULL));
    }
    if (r.contains("failure_reason")) std::printf("    reason: %s\n", r.value("failure_reason", "").c_str());
    if (r.contains("acknowledged_utc")) std::printf("    acknowledged %s\n", r.value("acknowledged_utc", "").c_str());
    const bool high_risk = r.contains("findings") && r["findings"].is_object() &&
                           r["findings"].value("category", std::string()) == "HIGH-RISK";
    if (r.contains("high_risk_confirmed_utc")) {
      std::printf("    HIGH RISK - confirmed at %s by %s\n", r.value("high_risk_confirmed_utc", "").c_str(),
                  r.value("high_risk_confirmed_by", "").c_str());
    } else if (high_risk) {
      std::printf("    HIGH RISK - awaiting confirmation (the operator's page, or `ctagent confirm %s`)\n",
                  r.value("scan_uid", "").c_str());
    }
    if (r.value("reconcile", false)) {
      std::printf("    EMERGENCY identity: no worklist entry; its images carry a temporary EMERGENCY-... patient ID.\n"
                  "    Reconcile them with the real patient in the hospital's RIS/PACS.\n");
    }
    if (r.contains("incomplete_reason")) std::printf("    incomplete: %s\n", r.value("incomplete_reason", "").c_str());
    if (r.contains("findings") && r["findings"].is_object() && r["findings"].contains("summary") &&
        r["findings"]["summary"].is_string()) {
      std::printf("    %s\n", r["findings"]["summary"].get<std::string>().c_str());
    }
  }
}

int CmdStatus(const Args& args) {
  if (auto bad = RejectUnknown(args, {"--config"}, {"--json"}, kStatusHelp)) return *bad;
  if (args.Has("--help")) return std::printf("%s", kStatusHelp), 0;
  int code = 0;
  auto cfg = LoadOrExplain(args, kStatusHelp, &code);
  if (!cfg) return code;
  std::optional<nlohmann::json> status;
  if (auto client = control::Client::Connect(config::ControlSocketPath(*cfg))) {
    auto answer = client->Call("status");
    if (answer) {
      status = std::move(*answer);
    } else {
      std::fprintf(stderr, "ctagent: the background agent did not answer status (%s); reading the spool\n",
                   answer.error().message().c_str());
    }
  }
  if (!status) {
    const auto file_store = MakeProcessFileStore();
    FileStore& files = *file_store;
    core::Agent agent(*cfg, files);
    if (!OpenOrExplain(agent, /*read_only=*/true)) return cli::kExitNotCompleted;  // alongside a scan or the daemon
    status = control::StatusFromSpool(agent.spool(), {.source = "spool", .budget_bytes = cfg->spool.max_bytes});
  }
  if (args.Has("--json")) {
    std::printf("%s\n", status->dump(2).c_str());
  } else {
    PrintStatus(*status);
  }
  return cli::kExitOk;
}

// `pause`, `resume`, `acknowledge SCAN_UID`, `confirm SCAN_UID`: one request to the running daemon.
int CmdControl(const std::string& command, const Args& args, const char* help) {
  std::vector<std::string> positional;
  const std::size_t wanted = command == "acknowledge" || command == "confirm" ? 1 : 0;
  const auto bad = command == "confirm" ? RejectUnknown(args, {"--config", "--by"}, {"--json"}, help, wanted, &positional)
                                        : RejectUnknown(args, {"--config"}, {"--json"}, help, wanted, &positional);
  if (bad) return *bad;
  if (args.Has("--help")) return std::printf("%s", help), 0;
  if (positional.size() != wanted) return Usage("SCAN_UID is required", help);
  int code = 0;
  auto cfg = LoadOrExplain(args, help, &code);
  if (!cfg) return code;
  const auto socket = config::ControlSocketPath(*cfg);
  auto client = control::Client::Connect(socket);
  if (!client) {
    std::fprintf(stderr, "ctagent %s: %s; is the daemon running (`systemctl status ctagent`)?\n", command.c_str(),
                 client.error().message().c_str());
    return client.error().kind() == ErrorKind::kPermission ? cli::kExitRefused : cli::kExitNoDaemon;
  }
  nlohmann::json request = nlohmann::json::object();
  if (wanted == 1) request["scan_uid"] = positional[0];
  if (command == "confirm" && args.Has("--by")) request["by"] = args.Value("--by");
  auto result = client->Call(command, request);
  if (!result) {
    std::fprintf(stderr, "ctagent %s: %s\n", command.c_str(), result.error().message().c_str());
    if (result.error().kind() == ErrorKind::kNetwork) return cli::kExitNoDaemon;  // it went away
    return DaemonErrorExit(result.error());
  }
  if (args.Has("--json")) {
    std::printf("%s\n", result->dump(2).c_str());
  } else if (command == "acknowledge") {
    std::printf("scan %s acknowledged\n", positional[0].c_str());
  } else if (command == "confirm") {
    std::printf("scan %s: HIGH RISK - confirmed at %s by %s\n", positional[0].c_str(),
                result->value("high_risk_confirmed_utc", "").c_str(), result->value("high_risk_confirmed_by", "").c_str());
  } else {
    std::printf("uploads %s\n", result->value("paused", command == "pause") ? "paused" : "running");
  }
  return cli::kExitOk;
}

// One line from stdin; on a terminal with a prompt on stderr and without echo. nullopt at end of input.
std::optional<std::string> ReadSecretLine(const char* prompt, bool tty) {
  termios saved{};
  if (tty) {
    std::fprintf(stderr, "%s", prompt);
    std::fflush(stderr);
    ::tcgetattr(STDIN_FILENO, &saved);
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  std::string line;
  const bool got = static_cast<bool>(std::getline(std::cin, line));
  if (tty) {
    ::tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    std::fprintf(stderr, "\n");
  }
  if (!got) return std::nullopt;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

int CmdUiPassword(const Args& args) {
  if (auto bad = RejectUnknown(args, {"--config"}, {}, kUiPasswordHelp)) return *bad;
  if (args.Has("--help")) return std::printf("%s", kUiPasswordHelp), 0;
  int code = 0;
  auto cfg = LoadOrExplain(args, kUiPasswordHelp, &code);
  if (!cfg) return code;
  const std::filesystem::path file = cfg->ui.password_file;
  if (file.empty()) {
    std::fprintf(stderr, "ctagent: %s: /ui/password_file is not set; set it (and /ui/tls) to the file the page's "
                         "password hash should go to, then run this again\n",
                 cfg->source_file.c_str());
    return cli::kExitConfig;
  }
  const bool tty = ::isatty(STDIN_FILENO) == 1;
  auto password = ReadSecretLine("New password for the operator's page: ", tty);
  if (!password) return Usage("no password on standard input", kUiPasswordHelp);
  if (tty) {
    auto again = ReadSecretLine("The same password again: ", tty);
    if (!again || *again != *password) return Usage("the two passwords differ; nothing was written", kUiPasswordHelp);
  }
  auto line = ui::HashPassword(*password);
  if (!line) {
    if (line.error().kind() == ErrorKind::kInvalidInput) return Usage(line.error().message(), kUiPasswordHelp);
    std::fprintf(stderr, "ctagent: %s\n", line.error().message().c_str());
    return cli::kExitNotCompleted;
  }
  if (auto st = ui::WritePasswordFile(file, *line); !st) {
    std::fprintf(stderr, "ctagent: %s\n", st.error().message().c_str());
    return cli::kExitNotCompleted;
  }
  std::printf("wrote the operator's page's password hash to %s (mode 0600); restart the daemon for it to count\n",
              file.c_str());
  return cli::kExitOk;
}

int CmdRotateKey(const Args& args) {
  if (auto bad = RejectUnknown(args, {"--config"}, {"--yes"}, kRotateKeyHelp)) return *bad;
  if (args.Has("--help")) return std::printf("%s", kRotateKeyHelp), 0;
  int code = 0;
  auto cfg = LoadOrExplain(args, kRotateKeyHelp, &code);
  if (!cfg) return code;
  const std::filesystem::path key_file = config::SiteKeyPath(*cfg);
  if (!args.Has("--yes")) {
    return Usage("rotating " + key_file.string() + " cannot be undone; add --yes to do it", kRotateKeyHelp);
  }
  const auto file_store = MakeProcessFileStore();
  FileStore& files = *file_store;
  auto rotation = privacy::SiteKey::Rotate(key_file, files);
  if (!rotation) {
    std::fprintf(stderr, "ctagent: %s\n", rotation.error().message().c_str());
    return cli::kExitNotCompleted;
  }
  // How many scans on this terminal were pseudonymised under the old key (informational: their
  // mapping records re-identify their results whatever the key is now).
  std::size_t under_old_key = 0;
  std::error_code ec;
  const auto scans_dir = std::filesystem::path(cfg->spool.directory) / "scans";
  for (std::filesystem::directory_iterator it(scans_dir, ec), end; !ec && it != end; it.increment(ec)) {
    auto record = privacy::ReadMapping(files, it->path() / "mapping.json");
    if (record && record->key_fingerprint == rotation->old_fingerprint) ++under_old_key;
  }
  std::printf("site key %s rotated: fingerprint %s -> %s\n"
              "new scans get new pseudonyms; %zu scan(s) in the spool were pseudonymised under the old key "
              "and are re-identified from their mapping records as before\n",
              key_file.c_str(), rotation->old_fingerprint.c_str(), rotation->new_fingerprint.c_str(), under_old_key);
  return cli::kExitOk;
}

int CmdConfig(const Args& args) {
  if (auto bad = RejectUnknown(args, {}, {}, kConfigHelp, 2)) return *bad;
  if (args.Has("--help") || args.items.empty()) {
    std::printf("%s", kConfigHelp);
    return args.items.empty() ? 2 : 0;
  }
  if (args.items[0] != "check" || args.items.size() != 2) return Usage("expected: config check FILE", kConfigHelp);
  auto cfg = config::CheckConfig(args.items[1]);  // + the files it names (config.hpp)
  if (!cfg) {
    std::fprintf(stderr, "%s\n", cfg.error().message().c_str());
    return cli::kExitConfig;
  }
  std::printf("%s: OK\n", args.items[1].c_str());
  return 0;
}

int Main(int argc, char** argv) {
  const std::string command = argc < 2 ? "" : argv[1];
  SetUpSignals(command);
  if (argc < 2) return Usage("no command given", kMainHelp);
  Args args;
  for (int i = 2; i < argc; ++i) args.items.emplace_back(argv[i]);
  if (command == "--version" || command == "version") return std::printf("ctagent %s\n", CTAGENT_VERSION), 0;
  if (command == "--help" || command == "help" || command == "-h") return std::printf("%s", kMainHelp), 0;
  if (command == "scan") return CmdScan(args);
  if (command == "run") {
    // Here, not in CmdRun: the daemon's loop is its own; its options are checked like every command's.
    if (auto bad = RejectUnknown(args, {"--config"}, {"--once"}, kRunHelp)) return *bad;
    return CmdRun(args);
  }
  if (command == "status") return CmdStatus(args);
  if (command == "pause") return CmdControl(command, args, kPauseHelp);
  if (command == "resume") return CmdControl(command, args, kResumeHelp);
  if (command == "acknowledge") return CmdControl(command, args, kAcknowledgeHelp);
  if (command == "confirm") return CmdControl(command, args, kConfirmHelp);
  if (command == "config") return CmdConfig(args);
  if (command == "rotate-key") return CmdRotateKey(args);
  if (command == "ui-password") return CmdUiPassword(args);
  if (command == "chunk") return cli::CmdChunk(args.items);
  if (command == "check") return cli::CmdCheck(args.items);
  if (command == "record") return drivers::RecordCommand(args.items);
  return Usage("unknown command \"" + command + "\"", kMainHelp);
}

}  // namespace
}  // namespace ctagent

int main(int argc, char** argv) {
  ctagent::KeepLargeBuffersInHeap();
  // DCMTK 3.6.7 turns Nagle's algorithm off on its associations only when TCP_NODELAY=1 is in the
  // environment; with it on, every C-STORE to the console waits for a delayed ACK (62 CT slices:
  // 3.1 s instead of 0.32 s, docs/results.md "Latency"). Set here, before any thread reads the
  // environment; a value the environment already has is kept.
  ::setenv("TCP_NODELAY", "1", /*overwrite=*/0);
  try {
    return ctagent::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ctagent: internal error: %s\n", e.what());
    return 1;
  }
}
