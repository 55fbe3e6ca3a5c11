// `ctagent check`: the field technician's diagnostics (the checks themselves are in
// agent/control/check.cpp, shared with the daemon's control socket). Each check prints one line:
// OK, WARN or FAIL, what was checked, and for a failure what to do; or, with --json, one object
// following docs/schemas/check.schema.json.
#include <cstdio>
#include <sstream>

#include "agent/cli.hpp"
#include "agent/control/check.hpp"
#include "agent/control/control.hpp"
#include "config/config.hpp"

namespace ctagent::cli {
namespace {

constexpr const char* kCheckHelp = R"(Usage: ctagent check --config FILE [--only NAME[,NAME...]] [--json] [--local]

Field diagnostics, one line per check (OK / WARN / FAIL), then a verdict. Checks:
  config        the configuration file is valid; then `files` (FAIL) for a CA, certificate, key or
                password file it names that cannot be read, `secrets` (WARN) for a key or
                password file readable by every user (fix: chmod o-r FILE)
  detector      the configured driver loads and accepts the configured protocol
  disk          the spool is writable and has room for one more scan of the protocol
  queue         scans waiting in the spool (upload or results pending, failed)
  certificates  the CA bundle and client certificate load and are not (about to be) expired
  link          the upload endpoint answers over TLS (tus OPTIONS) over every configured link
                (cloud.links, each bound to its interface) and how long it took
  pacs          the imaging center's DICOMweb answers and accepts our credentials
  console       the console's DICOM node answers C-ECHO
When a daemon (`ctagent run`) answers on the control socket (control.socket), it runs the checks
itself, as the service's user and with its configuration; otherwise, with --only or --local,
this command runs them.
  --only NAMES  run only these checks (comma-separated), here
  --json        print one JSON object (docs/schemas/check.schema.json) instead of lines
  --local       run the checks here even when a daemon answers
Exit status: 0 all OK (warnings allowed), 1 a check failed (the configuration included),
2 bad usage (an unknown option, a missing value).
)";

const char* Label(const std::string& outcome) {
  if (outcome == "ok") return "OK";
  if (outcome == "warn") return "WARN";
  return "FAIL";
}

// The daemon's check report, or nothing when no daemon answers (then the checks run here).
std::optional<nlohmann::json> AskDaemon(const std::string& config_path) {
  auto cfg = config::LoadConfig(config_path);
  if (!cfg) return std::nullopt;  // the local run reports the configuration's problem
  auto client = control::Client::Connect(config::ControlSocketPath(*cfg));
  if (!client) return std::nullopt;
  // The link checks may each take up to a request deadline (48 s with the defaults).
  auto result = client->Call("check", nlohmann::json::object(), std::chrono::minutes(10));
  if (!result) {
    std::fprintf(stderr, "ctagent check: the daemon did not run the checks (%s); running them here\n",
                 result.error().message().c_str());
    return std::nullopt;
  }
  return *result;
}

}  // namespace

int CmdCheck(const std::vector<std::string>& args) {
  std::string config_path;
  std::vector<std::string> only;
  bool json = false, local = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") return std::printf("%s", kCheckHelp), 0;
    if (args[i] == "--config" && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (args[i] == "--only" && i + 1 < args.size()) {
      std::istringstream names(args[++i]);
      for (std::string name; std::getline(names, name, ',');) {
        if (!name.empty()) only.push_back(name);
      }
      local = true;
    } else if (args[i] == "--json") {
      json = true;
    } else if (args[i] == "--local") {
      local = true;
    } else {
      std::fprintf(stderr, "ctagent check: unexpected argument \"%s\"\n\n%s", args[i].c_str(), kCheckHelp);
      return kExitUsage;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "ctagent check: --config FILE is required\n\n%s", kCheckHelp);
    return kExitUsage;
  }
  std::optional<nlohmann::json> report;
  if (!local) report = AskDaemon(config_path);
  if (report) {
    (*report)["source"] = "daemon";
  } else {
    report = control::RunChecks(config_path, only).ToJson();
    (*report)["source"] = "cli";
  }
  const long failures = report->value("failures", 1L);
  if (json) {
    std::printf("%s\n", report->dump(2).c_str());
  } else {
    if (report->value("source", "") == "daemon") std::printf("(checks run by the daemon)\n");
    for (const auto& line : report->value("checks", nlohmann::json::array())) {
      std::printf("%-5s %-12s %s\n", Label(line.value("outcome", "")), line.value("name", "").c_str(),
                  line.value("message", "").c_str());
    }
    if (failures > 0) {
      std::printf("verdict: FAIL (%ld check(s) failed, %ld warning(s))\n", failures, report->value("warnings", 0L));
    } else {
      std::printf("verdict: OK (%ld warning(s))\n", report->value("warnings", 0L));
    }
  }
  return failures > 0 ? kExitNotCompleted : kExitOk;
}

}  // namespace ctagent::cli
