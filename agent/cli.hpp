// Command-line subcommands implemented outside main.cpp, and the exit statuses every command
// uses (documented in each command's --help and in docs/field-guide.md).
#pragma once

#include <string>
#include <vector>

namespace ctagent::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitNotCompleted = 1;  // the work could not be completed (the reason is printed)
inline constexpr int kExitUsage = 2;         // an unknown command or option, a missing value
inline constexpr int kExitConfig = 3;        // the configuration cannot be read or is invalid
inline constexpr int kExitNoDaemon = 4;      // no daemon answers on the control socket (pause, resume, acknowledge)
inline constexpr int kExitRefused = 5;       // the daemon refused the request (not allowed, unknown scan, ...)

// `ctagent chunk inspect|verify|decode FILE...`
int CmdChunk(const std::vector<std::string>& args);

// `ctagent check --config FILE`: field diagnostics.
int CmdCheck(const std::vector<std::string>& args);

}  // namespace ctagent::cli
