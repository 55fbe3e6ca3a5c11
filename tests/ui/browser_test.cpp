// The operator's page in a real browser during a real scan (issue 16, first slice): the real
// `ctagent run` with the sim driver, the reference imaging center (tus, worker, Orthanc with
// DICOMweb) and a DCMTK storescp as the console, all on loopback; headless Chromium (Debian's
// chromium) driven by tests/browser/today_page.mjs (puppeteer-core). The page is opened first;
// once it says it is live, `ctagent scan` asks the daemon for one scan, and the script watches
// the page (no reload) until the scan is delivered: its state must advance, the totals must match
// the daemon's status, no console error (a CSP violation is one), and no request may leave
// 127.0.0.1. The screenshot goes to the build tree (ui-today.png).
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/e2e/imaging_center.hpp"
#include "tests/support/process.hpp"
#include "tests/ui/browser_harness.hpp"

using namespace ctagent;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

TEST_CASE("the operator's page in headless Chromium follows a scan live to delivered, all from 127.0.0.1",
          "[ui][browser][e2e]") {
  const fs::path browser_dir = test::BrowserScriptsDir();

  test::TempDir work("ui-browser");
  const fs::path logs = work.path() / "logs";
  fs::create_directories(logs);
  auto center = test::StartImagingCenter(work.path() / "center");

  const auto console = test::StartConsole(work.path() / "console", logs / "storescp.log");
  const fs::path console_dir = console.dir;
  const auto console_port = console.port;

  // A small parallel-beam scan paced in real time: 2 rotations of 1.5 s, so the page sees it
  // acquiring for a few seconds before it uploads and waits for its images; 24 rows of 5 mm, the
  // 120 mm along z the reference lung analysis needs to give the report a category.
  const nlohmann::json scan = {{"geometry", "parallel"}, {"views_per_rotation", 360}, {"rotations", 2},
                               {"rows", 24}, {"channels", 256}, {"channel_pitch_mm", 1.6}, {"row_pitch_mm", 5.0},
                               {"rotation_time_s", 1.5}, {"seed", 1600}, {"real_time", true}};
  const auto ui_port = test::FreeLoopbackPort();
  const nlohmann::json cfg = {
      {"terminal_id", "ui-browser"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}}},
      {"scan", scan},
      {"study", {{"patient_id", "UI-1"}, {"patient_name", "BROWSER^TEST"}, {"study_description", "UI"}}},
      {"codec", {{"views_per_chunk", 32}, {"threads", 2}}},
      {"spool", {{"directory", (work.path() / "spool").string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud", center->CloudSection({{"parallel_uploads", 2}, {"patch_bytes", 65536}})},
      {"results", {{"enabled", true}, {"poll_interval_ms", 300}, {"poll_max_interval_ms", 2000}, {"timeout_s", 240}}},
      {"console",
       {{"enabled", true}, {"host", "127.0.0.1"}, {"port", console_port}, {"called_ae", "CONSOLE"},
        {"calling_ae", "CTAGENT"}}},
      {"ui", {{"enabled", true}, {"address", "127.0.0.1"}, {"port", ui_port}}}};
  const fs::path cfg_path = work.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);

  const fs::path daemon_log = logs / "daemon.log";
  test::ChildProcess daemon({test::CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log);
  REQUIRE(test::WaitFor([&] { return test::PortAcceptsConnections(ui_port) || !daemon.Running(); }, 30s));
  INFO("daemon log:\n" << test::ReadText(daemon_log));
  REQUIRE(daemon.Running());
  const std::string url = "http://127.0.0.1:" + std::to_string(ui_port) + "/";
  CHECK(test::ReadText(daemon_log).find("the operator's page is at " + url) != std::string::npos);

  const fs::path screenshot = fs::path(CTAGENT_BINARY_DIR) / "ui-today.png";
  fs::remove(screenshot);
  const fs::path ready = work.path() / "page-ready";
  const fs::path browser_log = logs / "browser.log";
  test::ChildProcess browser({"node", (browser_dir / "today_page.mjs").string(), "--url", url, "--screenshot",
                              screenshot.string(), "--ready-file", ready.string(), "--timeout-s", "150",
                              "--expect-scans", "1"},
                             browser_log);
  REQUIRE(test::WaitFor([&] { return fs::exists(ready) || !browser.Running(); }, 60s));
  INFO("browser log:\n" << test::ReadText(browser_log));
  REQUIRE(fs::exists(ready));

  // The page is live: now the scan, taken by the daemon (`ctagent scan` follows it to the end).
  test::ChildProcess scan_cli({test::CtagentBinary(), "scan", "--config", cfg_path.string()}, logs / "scan.log");
  const int browser_exit = browser.Wait(180s);
  INFO("scan log:\n" << test::ReadText(logs / "scan.log"));
  INFO("worker log:\n" << test::ReadText(work.path() / "center/logs/worker.log"));
  INFO("daemon log at the end:\n" << test::ReadText(daemon_log));
  CHECK(scan_cli.Wait(60s) == 0);
  const std::string browser_text = test::ReadText(browser_log);
  test::CheckBrowserScriptPassed(browser_exit, browser_text, "today-page", {screenshot});
  // No patient name in the page's data or the daemon's log.
  CHECK(test::ReadText(daemon_log).find("BROWSER^TEST") == std::string::npos);

  daemon.Kill(SIGTERM);
  CHECK(daemon.Wait(30s) == 0);
  CHECK_FALSE(test::PortAcceptsConnections(ui_port));
}
