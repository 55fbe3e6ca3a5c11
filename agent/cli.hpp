// Command-line subcommands implemented outside main.cpp.
#pragma once

#include <string>
#include <vector>

namespace ctagent::cli {

// `ctagent chunk inspect|verify|decode FILE...`
int CmdChunk(const std::vector<std::string>& args);

// `ctagent check --config FILE`: field diagnostics.
int CmdCheck(const std::vector<std::string>& args);

}  // namespace ctagent::cli
