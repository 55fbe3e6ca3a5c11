// A scan's view in a real browser (issue 16, Deliver 4): two scans of one patient with drawn
// lesions, each a real `ctagent scan` with the sim driver through the reference imaging center
// (tus, worker with the lung analysis, Orthanc with DICOMweb) and a DCMTK storescp as the console,
// all on loopback; then `ctagent run` serves the page and headless Chromium (Debian's chromium),
// driven by tests/browser/scan_view.mjs (puppeteer-core), opens the newer scan's view from its
// Today row: report, follow-up of the earlier scan, slice scrolling, window switch, and the lesion
// overlay toggled with the canvas checked against the SEG's pixels. No request may leave
// 127.0.0.1. Screenshots go to the build tree (ui-scan.png, ui-scan-mediastinal.png, and
// ui-scan-small.png, the one docs/images/ui-scan.png is copied from).
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "drivers/sim/lesion_draw.hpp"
#include "tests/e2e/chest_lesions.hpp"
#include "tests/e2e/imaging_center.hpp"
#include "tests/support/process.hpp"
#include "tests/ui/browser_harness.hpp"

using namespace ctagent;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

TEST_CASE("a scan's view in headless Chromium: images, windows, lesion overlay, report and follow-up, all from 127.0.0.1",
          "[ui][browser][e2e]") {
  const fs::path browser_dir = test::BrowserScriptsDir();

  // Two seeds that each draw at least one lesion (deterministic: the draw is SimRng's).
  std::vector<std::uint64_t> seeds;
  for (std::uint64_t s = 1; s <= 100 && seeds.size() < 2; ++s) {
    if (!drivers::sim::DrawLesions(s, test::ChestLesionDrawOptions()).empty()) seeds.push_back(s);
  }
  REQUIRE(seeds.size() == 2);

  test::TempDir work("ui-scan-view");
  const fs::path logs = work.path() / "logs";
  fs::create_directories(logs);
  auto center = test::StartImagingCenter(work.path() / "center");
  const auto console = test::StartConsole(work.path() / "console", logs / "storescp.log");

  const auto ui_port = test::FreeLoopbackPort();
  const auto config = [&](std::uint64_t seed) {
    // The low-dose chest protocol of tests/e2e/ai_results_test.cpp (fan beam, 8 rows of 5 mm,
    // 30 mm per rotation over z -62.5 .. 62.5 mm, 1/5 dose; the drawn lesions need the fan
    // beam's 3-D phantom), with fewer channels and views so it runs in a debug build.
    const nlohmann::json scan = {{"geometry", "fan"},        {"views_per_rotation", 480},
                                 {"rotations", 5},           {"rows", 8},
                                 {"row_pitch_mm", 5},        {"channels", 256},
                                 {"channel_pitch_mm", 1.5},  {"table_start_mm", -75},
                                 {"table_speed_mm_per_rotation", 30}, {"dose_fraction", 0.2},
                                 {"sample_type", "uint16"},  {"seed", seed},
                                 {"real_time", false}};
    return nlohmann::json{
        {"terminal_id", "ui-scan-view"},
        {"log_level", "info"},
        {"driver", {{"name", "sim"}, {"options", {{"lesions", test::ChestLesionDrawJson()}}}}},
        {"scan", scan},
        {"study", {{"patient_id", "UI-FOLLOW-1"}, {"patient_name", "FOLLOW^UP"}, {"study_description", "UI"}}},
        {"codec", {{"views_per_chunk", 64}, {"threads", 2}}},
        {"spool", {{"directory", (work.path() / "spool").string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
        {"cloud", center->CloudSection({{"parallel_uploads", 2}})},
        {"results", {{"enabled", true}, {"poll_interval_ms", 300}, {"poll_max_interval_ms", 2000}, {"timeout_s", 240}}},
        {"console",
         {{"enabled", true}, {"host", "127.0.0.1"}, {"port", console.port}, {"called_ae", "CONSOLE"},
          {"calling_ae", "CTAGENT"}}},
        {"ui", {{"enabled", true}, {"address", "127.0.0.1"}, {"port", ui_port}}}};
  };

  // The patient's two scans, one after the other, each to the console with its report.
  fs::path cfg_path;
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    cfg_path = work.path() / ("agent-" + std::to_string(i) + ".json");
    std::ofstream(cfg_path) << config(seeds[i]).dump(2);
    const fs::path scan_log = logs / ("scan-" + std::to_string(i) + ".log");
    test::ChildProcess scan({test::CtagentBinary(), "scan", "--config", cfg_path.string()}, scan_log);
    const int rc = scan.Wait(300s);
    INFO("scan " << i << " (seed " << seeds[i] << ") log:\n" << test::ReadText(scan_log));
    INFO("worker log:\n" << test::ReadText(work.path() / "center/logs/worker.log"));
    REQUIRE(rc == 0);
  }

  const fs::path daemon_log = logs / "daemon.log";
  test::ChildProcess daemon({test::CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log);
  REQUIRE(test::WaitFor([&] { return test::PortAcceptsConnections(ui_port) || !daemon.Running(); }, 30s));
  INFO("daemon log:\n" << test::ReadText(daemon_log));
  REQUIRE(daemon.Running());
  const std::string url = "http://127.0.0.1:" + std::to_string(ui_port) + "/";

  const fs::path shots = CTAGENT_BINARY_DIR;
  for (const char* shot : {"ui-scan.png", "ui-scan-mediastinal.png", "ui-scan-small.png"}) fs::remove(shots / shot);
  const fs::path browser_log = logs / "browser.log";
  test::ChildProcess browser({"node", (browser_dir / "scan_view.mjs").string(), "--url", url, "--screenshot-dir",
                              shots.string(), "--timeout-s", "60"},
                             browser_log);
  const int browser_exit = browser.Wait(180s);
  const std::string browser_text = test::ReadText(browser_log);
  INFO("browser log:\n" << browser_text);
  INFO("daemon log at the end:\n" << test::ReadText(daemon_log));
  test::CheckBrowserScriptPassed(browser_exit, browser_text, "scan-view",
                                 {shots / "ui-scan.png", shots / "ui-scan-mediastinal.png", shots / "ui-scan-small.png"});
  // No patient name or ID in the daemon's log.
  CHECK(test::ReadText(daemon_log).find("FOLLOW^UP") == std::string::npos);
  CHECK(test::ReadText(daemon_log).find("UI-FOLLOW-1") == std::string::npos);

  daemon.Kill(SIGTERM);
  CHECK(daemon.Wait(30s) == 0);
}
