// What the page's browser tests (browser_test, alert_browser_test, scan_view_browser_test) check
// the same way: that Chromium and puppeteer-core are installed, and that a browser script passed
// and saved its screenshots. The scripts themselves share tests/browser/harness.mjs.
#pragma once

#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <initializer_list>
#include <string>

#include "tests/support/process.hpp"

namespace ctagent::test {

// tests/browser/, once Debian's chromium and the scripts' npm packages are there.
inline std::filesystem::path BrowserScriptsDir() {
  const std::filesystem::path dir = std::filesystem::path(CTAGENT_SOURCE_DIR) / "tests" / "browser";
  INFO("scripts/bootstrap installs both (Debian's chromium; npm ci in tests/browser)");
  REQUIRE(::access("/usr/bin/chromium", X_OK) == 0);
  REQUIRE(std::filesystem::exists(dir / "node_modules" / "puppeteer-core"));
  return dir;
}

// The script exited 0, printed its summary line ("<prefix>: {...}") with no failure, and each
// screenshot is a PNG.
inline void CheckBrowserScriptPassed(int exit_status, const std::string& output, const std::string& prefix,
                                     std::initializer_list<std::filesystem::path> screenshots) {
  CHECK(exit_status == 0);
  CHECK(output.find(prefix + ": {") != std::string::npos);
  CHECK(output.find("\"failures\":[]") != std::string::npos);
  for (const auto& shot : screenshots) {
    INFO(shot.string());
    REQUIRE(std::filesystem::exists(shot));
    CHECK(ReadText(shot).rfind("\x89PNG", 0) == 0);
  }
}

}  // namespace ctagent::test
