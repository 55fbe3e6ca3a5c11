// The operator's page's high-risk alert in a real browser against real scans (issue 16, item 3):
// the real `ctagent run` (sim driver drawing lesions from each scan's seed), a real worklist
// (DCMTK wlmscpfs) with two invented patients, the reference imaging center (tus, worker with the
// lung analysis, Orthanc with DICOMweb) and a DCMTK storescp as the console, all on loopback;
// headless Chromium driven by tests/browser/alert_page.mjs. The daemon takes two scans (asked
// over its control socket, each with its own seed): a phantom with lesions, whose report comes
// back HIGH-RISK, and a clean one, NORMAL. The script checks the red line, the banner, the tone,
// the names, presses Confirm; this harness then checks `ctagent status`, kills the daemon by its
// PID, starts it again, and the script reloads the page and finds the confirmation still there.
// Screenshots go to the build tree (ui-alert.png, ui-confirmed.png, ui-after-restart.png).
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/control/control.hpp"
#include "drivers/sim/lesion_draw.hpp"
#include "tests/e2e/chest_lesions.hpp"
#include "tests/e2e/imaging_center.hpp"
#include "tests/support/process.hpp"
#include "tests/ui/browser_harness.hpp"
#include "tests/worklist/worklist_server.hpp"

using namespace ctagent;
using namespace ctagent::test::worklist_peer;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {


// The AI results test's short low-dose chest protocol (the analysis needs 100 mm along z).
nlohmann::json Protocol(std::uint64_t seed) {
  return {{"geometry", "fan"},        {"views_per_rotation", 480},
          {"rotations", 5},           {"rows", 8},
          {"row_pitch_mm", 5},        {"channels", 256},
          {"channel_pitch_mm", 1.5},  {"table_start_mm", -75},
          {"table_speed_mm_per_rotation", 30}, {"dose_fraction", 0.2},
          {"sample_type", "uint16"},  {"seed", seed},
          {"real_time", false}};
}

// The state of `scan_uid` in the daemon's status ("" when not there or no answer).
std::string StateOf(const fs::path& socket, const std::string& scan_uid) {
  auto client = control::Client::Connect(socket);
  if (!client) return "";
  auto status = client->Call("status");
  if (!status) return "";
  for (const auto& scan : (*status)["scans"]) {
    if (scan.value("scan_uid", "") == scan_uid) return scan.value("state", "");
  }
  return "";
}

}  // namespace

TEST_CASE("the operator's page turns a high-risk scan red with a banner and a tone until confirmed, and the "
          "confirmation survives a restart of the agent",
          "[ui][browser][e2e]") {
  const fs::path browser_dir = test::BrowserScriptsDir();

  // The seeds: the first whose draw has at least two lesions (HIGH-RISK, as in the AI results
  // test), and the first with none (NORMAL).
  std::uint64_t lesion_seed = 0, clean_seed = 0;
  for (std::uint64_t s = 1; s <= 100 && (lesion_seed == 0 || clean_seed == 0); ++s) {
    const auto drawn = drivers::sim::DrawLesions(s, test::ChestLesionDrawOptions()).size();
    if (lesion_seed == 0 && drawn >= 2) lesion_seed = s;
    if (clean_seed == 0 && drawn == 0) clean_seed = s;
  }
  REQUIRE(lesion_seed != 0);
  REQUIRE(clean_seed != 0);

  test::TempDir work("ui-alert");
  const fs::path logs = work.path() / "logs";
  fs::create_directories(logs);

  // Two invented patients scheduled today.
  Entry first;
  first.accession = "ACC0101";
  first.patient_name = "DOE^JANE";
  first.patient_id = "PID-0101";
  first.study_uid = "1.2.826.0.1.3680043.2.1125.99.101";
  first.step_id = "SPS-101";
  Entry second = first;
  second.accession = "ACC0102";
  second.patient_name = "ROE^RICHARD";
  second.patient_id = "PID-0102";
  second.study_uid = "1.2.826.0.1.3680043.2.1125.99.102";
  second.step_id = "SPS-102";
  WorklistServer worklist;
  worklist.Write("doe", first);
  worklist.Write("roe", second);
  worklist.Start();

  auto center = test::StartImagingCenter(work.path() / "center", "--image-size 256");
  const auto console = test::StartConsole(work.path() / "console", logs / "storescp.log");

  const std::string console_user = "Nurse Wang";
  const auto ui_port = test::FreeLoopbackPort();
  const fs::path spool_dir = work.path() / "spool";
  const nlohmann::json cfg = {
      {"terminal_id", "ui-alert"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", {{"lesions", test::ChestLesionDrawJson()}}}}},
      {"scan", Protocol(clean_seed)},
      {"codec", {{"zstd_level", 3}, {"filter", "shuffle"}, {"views_per_chunk", 64}, {"threads", 2}}},
      {"spool", {{"directory", spool_dir.string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud", center->CloudSection({{"parallel_uploads", 2}, {"patch_bytes", 1u << 20}})},
      {"results", {{"enabled", true}, {"poll_interval_ms", 300}, {"poll_max_interval_ms", 2000}, {"timeout_s", 300}}},
      {"console",
       {{"enabled", true}, {"host", "127.0.0.1"}, {"port", console.port}, {"called_ae", "CONSOLE"},
        {"calling_ae", "CTAGENT"}}},
      {"worklist", WorklistSection(worklist.Node())},
      {"ui", {{"enabled", true}, {"address", "127.0.0.1"}, {"port", ui_port}, {"console_user", console_user}}}};
  const fs::path cfg_path = work.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);
  const fs::path socket = spool_dir / "control.sock";

  const fs::path daemon_log = logs / "daemon.log";
  auto daemon = std::make_unique<test::ChildProcess>(
      std::vector<std::string>{test::CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log);
  REQUIRE(test::WaitFor([&] { return test::PortAcceptsConnections(ui_port) || !daemon->Running(); }, 30s));
  INFO("daemon log:\n" << test::ReadText(daemon_log));
  REQUIRE(daemon->Running());
  const std::string url = "http://127.0.0.1:" + std::to_string(ui_port) + "/";

  const fs::path shots = fs::path(CTAGENT_BINARY_DIR);
  for (const char* name : {"ui-alert.png", "ui-confirmed.png", "ui-after-restart.png"}) fs::remove(shots / name);
  const fs::path ready = work.path() / "page-ready", expect = work.path() / "expect.json",
                 confirmed = work.path() / "confirmed", restarted = work.path() / "restarted";
  const fs::path browser_log = logs / "browser.log";
  test::ChildProcess browser({"node", (browser_dir / "alert_page.mjs").string(), "--url", url, "--screenshot-dir",
                              shots.string(), "--timeout-s", "360", "--console-user", console_user, "--ready-file",
                              ready.string(), "--expect-file", expect.string(), "--confirmed-file",
                              confirmed.string(), "--restarted-file", restarted.string()},
                             browser_log);
  REQUIRE(test::WaitFor([&] { return fs::exists(ready) || !browser.Running(); }, 60s));
  INFO("browser log:\n" << test::ReadText(browser_log));
  REQUIRE(fs::exists(ready));

  // The two scans, asked for over the control socket as `ctagent scan` does, each with its seed:
  // the second once the first is acquired (the detector takes one scan at a time).
  std::string high_uid, normal_uid;
  for (int i = 0; i < 2; ++i) {
    auto client = control::Client::Connect(socket);
    REQUIRE(client);
    const nlohmann::json request = {{"accession_number", i == 0 ? first.accession : second.accession},
                                    {"protocol", Protocol(i == 0 ? lesion_seed : clean_seed)}};
    auto taken = client->Call("take_scan", request, 120s);
    INFO((taken ? "" : taken.error().message()));
    REQUIRE(taken);
    (i == 0 ? high_uid : normal_uid) = (*taken)["scan_uid"].get<std::string>();
    const std::string uid = i == 0 ? high_uid : normal_uid;
    REQUIRE(test::WaitFor([&] {
      const std::string state = StateOf(socket, uid);
      return (!state.empty() && state != "acquiring") || !daemon->Running();
    }, 120s));
  }
  std::ofstream(expect) << nlohmann::json{{"high_risk", {{"uid", high_uid}, {"name", "DOE, JANE"}, {"id", first.patient_id}}},
                                          {"normal", {{"uid", normal_uid}, {"name", "ROE, RICHARD"}, {"id", second.patient_id}}}}
                               .dump();

  // The script confirms on the page; then the agent's own status says so, durably.
  REQUIRE(test::WaitFor([&] { return fs::exists(confirmed) || !browser.Running(); }, 360s));
  INFO("worker log:\n" << test::ReadText(work.path() / "center/logs/worker.log"));
  INFO("daemon log at the confirmation:\n" << test::ReadText(daemon_log));
  REQUIRE(fs::exists(confirmed));
  {
    test::ChildProcess status({test::CtagentBinary(), "status", "--config", cfg_path.string()}, logs / "status.txt");
    CHECK(status.Wait(60s) == 0);
    const std::string text = test::ReadText(logs / "status.txt");
    INFO(text);
    CHECK_THAT(text, Catch::Contains("HIGH RISK - confirmed at ") && Catch::Contains(" by " + console_user));
    CHECK_THAT(text, !Catch::Contains("awaiting confirmation"));
    CHECK_THAT(text, !Catch::Contains("DOE") && !Catch::Contains("PID-0101"));  // status has no names
  }

  // Killed by its PID (no clean shutdown: only what was synced survives), then started again.
  daemon->Kill(SIGKILL);
  CHECK(daemon->Wait(30s) == 128 + SIGKILL);
  daemon.reset();
  REQUIRE(test::WaitFor([&] { return !test::PortAcceptsConnections(ui_port); }, 10s));
  const fs::path daemon_log2 = logs / "daemon-2.log";
  daemon = std::make_unique<test::ChildProcess>(
      std::vector<std::string>{test::CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log2);
  REQUIRE(test::WaitFor([&] { return test::PortAcceptsConnections(ui_port) || !daemon->Running(); }, 60s));
  INFO("daemon log after the restart:\n" << test::ReadText(daemon_log2));
  REQUIRE(daemon->Running());
  std::ofstream(restarted) << "restarted\n";

  const int browser_exit = browser.Wait(180s);
  const std::string browser_text = test::ReadText(browser_log);
  test::CheckBrowserScriptPassed(browser_exit, browser_text, "alert-page",
                                 {shots / "ui-alert.png", shots / "ui-confirmed.png", shots / "ui-after-restart.png"});
  // The confirmation was logged with who confirmed; no patient's name or ID in either log.
  const std::string all_logs = test::ReadText(daemon_log) + test::ReadText(daemon_log2);
  CHECK_THAT(all_logs, Catch::Contains("high-risk finding confirmed on the operator's page by " + console_user));
  for (const std::string& secret : {std::string("DOE"), std::string("JANE"), std::string("ROE^"), std::string("RICHARD"),
                                    first.patient_id, second.patient_id}) {
    INFO(secret);
    CHECK(all_logs.find(secret) == std::string::npos);
  }

  daemon->Kill(SIGTERM);
  CHECK(daemon->Wait(30s) == 0);
}
