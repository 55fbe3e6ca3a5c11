// The field technician's diagnostics (`ctagent check`, and the control socket's `check`): each
// check gives OK, WARN or FAIL with what was checked and, for a failure, what to do. The result as
// JSON follows docs/schemas/check.schema.json.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ctagent::control {

struct CheckLine {
  std::string name;     // "config", "files", "secrets", "detector", "disk", "queue", "certificates", "link...", ...
  std::string outcome;  // "ok", "warn", "fail"
  std::string message;
};

struct CheckReport {
  std::vector<CheckLine> lines;
  int failures = 0;
  int warnings = 0;
  nlohmann::json ToJson() const;  // {"verdict": "ok"|"fail", "failures", "warnings", "checks": [...]}
};

// The checks a running daemon runs for the control socket's `check`: all but "detector", since
// the daemon holds the detector open (a second open of real hardware must not happen behind its
// back); the daemon reports its own detector's state instead (a "detector" line it adds).
inline const std::vector<std::string> kChecksBesideOpenDetector = {"disk", "queue", "certificates", "link", "pacs",
                                                                   "console"};

// Runs the checks named in `only` (empty: all) against the configuration file `config_path`.
// Blocking (network round trips, a C-ECHO): call it off the event loop. Safe while a daemon or a
// scan writes the spool (the spool is opened read-only).
CheckReport RunChecks(const std::filesystem::path& config_path, const std::vector<std::string>& only = {});

}  // namespace ctagent::control
