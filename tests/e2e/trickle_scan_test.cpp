// A server that trickles its answers (issue 18): the real ctagent binary against the hostile
// server (tests/support/hostile_server) sending every answer one byte at a time, so bytes keep
// moving and the stall check never fires. Every request has an overall deadline
// (docs/transport.md, "Deadlines"), and scan, run and check end within 2 s of SIGTERM whatever
// request they wait on. Untouched, a scan ends on its own at the documented deadline with its
// chunks kept in the spool, not uploaded.
//
// CTAGENT_TEST_BINARY names another ctagent (e.g. a build from before the fix, to see these fail).
#include <catch2/catch.hpp>

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/hostile_server.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {


// Every request, whatever its method and path, is answered 200 with a 100,000-byte body (hours
// at this pace): the first `at_once` bytes at once, then one byte every `trickle_ms`. With
// at_once 0 the status line and headers trickle too; with 100 they arrive whole and the body
// trickles, so every progress call sees a new byte (the stall check cannot end it).
nlohmann::json TrickleEverything(int trickle_ms, int at_once = 0) {
  return nlohmann::json::array({{{"method", "*"},
                                 {"path", ".*"},
                                 {"action",
                                  {{"status", 200},
                                   {"body_repeat", {{"prefix", ""}, {"unit", "x"}, {"separator", ""}, {"count", 100000}, {"suffix", ""}}},
                                   {"trickle_ms", trickle_ms},
                                   {"trickle_after_bytes", at_once}}}}});
}

// A small scan (120 views of 4 x 64 samples, 2 chunks) whose cloud is `server`; `cloud` adds or
// overrides cloud keys.
fs::path WriteConfig(const fs::path& dir, const test::HostileServer& server, const nlohmann::json& cloud = {}) {
  nlohmann::json cloud_section = {{"upload_url", server.origin() + "/files/"},
                                  {"tls", {{"ca_file", server.ca_file().string()}}}};
  if (cloud.is_object()) cloud_section.update(cloud);
  const nlohmann::json cfg = {
      {"terminal_id", "trickle-test"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", 120}, {"rotations", 1}, {"rows", 4}, {"channels", 64},
        {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"real_time", false}}},
      {"codec", {{"views_per_chunk", 60}}},
      {"spool", {{"directory", (dir / "spool").string()}, {"min_free_bytes", 0}}},
      {"cloud", cloud_section},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
  const fs::path path = dir / "ctagent.json";
  std::ofstream(path) << cfg.dump(2);
  return path;
}

// Chunk files (*.ctc) under the spool's scans/ directory.
std::size_t SpooledChunkFiles(const fs::path& dir) {
  std::size_t n = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir / "spool" / "scans", ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->path().extension() == ".ctc") ++n;
  }
  return n;
}

// `ctagent status` (which only reads the spool), stdout and stderr.
std::string Status(const fs::path& dir, const fs::path& cfg) {
  const fs::path log = dir / "status.log";
  std::error_code ec;
  fs::remove(log, ec);
  test::ChildProcess status({test::CtagentBinary(), "status", "--config", cfg.string()}, log);
  REQUIRE(status.Wait(30s) == 0);
  return test::ReadText(log);
}

// Sends SIGTERM and returns how long the process took to exit (the exit code in *code), or
// 10 s and -1 if it had not exited by then.
std::chrono::milliseconds StopAndTime(test::ChildProcess& process, int* code) {
  const auto t0 = std::chrono::steady_clock::now();
  process.Kill(SIGTERM);
  *code = process.Wait(10s);
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
}

// The spool holds the scan as acquired (safe on disk) with none of its 2 chunks uploaded.
void CheckKeptNotUploaded(const fs::path& dir, const fs::path& cfg) {
  CHECK(SpooledChunkFiles(dir) == 2);
  const std::string status = Status(dir, cfg);
  INFO(status);
  CHECK_THAT(status, Catch::Contains("acquired") && Catch::Contains("chunks 0/2 uploaded"));
  CHECK_THAT(status, !Catch::Contains("confirmed everything"));
}

// Runs `ctagent scan` against `server` until a request has been trickling for a second (the
// scan is then blocked on it), stops it with SIGTERM and checks it ended within 2 s.
void ScanAndStop(const fs::path& dir, const fs::path& cfg, const test::HostileServer& server) {
  const fs::path log = dir / "scan.log";
  test::ChildProcess scan({test::CtagentBinary(), "scan", "--config", cfg.string(), "--no-results", "--quiet"}, log);
  const bool waiting = test::WaitFor(
      [&] { return !scan.Running() || (test::ReadText(log).find("made durable") != std::string::npos && !server.Requests().empty()); },
      120s);
  INFO(test::ReadText(log));
  REQUIRE(waiting);
  std::this_thread::sleep_for(1s);  // the answer trickles: a few bytes in, far from done
  REQUIRE(scan.Running());
  int code = -2;
  const auto took = StopAndTime(scan, &code);
  INFO(test::ReadText(log));
  CHECK(code == 1);  // ended by the agent itself, saying the upload is pending, not killed
  CHECK(took <= 2000ms);
  CHECK_THAT(test::ReadText(log), Catch::Contains("received SIGTERM") &&
                                      Catch::Contains("stopped on request before the scan finished; it resumes on the next start"));
}

}  // namespace

TEST_CASE("ctagent scan against a server that trickles its answers stops within 2 s of SIGTERM, its chunks kept",
          "[trickle]") {
  test::TempDir dir("trickle-scan-sigterm");
  auto server = test::HostileServer::Start(TrickleEverything(500));
  // The defaults: a tus request's deadline is 48 s, far beyond this test; only the signal ends it.
  const fs::path cfg = WriteConfig(dir.path(), *server);
  ScanAndStop(dir.path(), cfg, *server);
  CheckKeptNotUploaded(dir.path(), cfg);
}

TEST_CASE("Untouched, a scan against a server that trickles its answers ends on its own at the documented deadline",
          "[trickle]") {
  test::TempDir dir("trickle-scan-deadline");
  // The head at once, then a body byte every 0.3 s: never a 1 s stall.
  auto server = test::HostileServer::Start(TrickleEverything(300, 100));
  // deadline = connect 1 s + stall 1 s + (0 body bytes + 1 MiB tus response cap) at 1 Gbit/s = 2.0 s
  const fs::path cfg = WriteConfig(dir.path(), *server,
                                   {{"connect_timeout_s", 1}, {"stall_timeout_s", 1}, {"floor_rate_bits_per_s", 1'000'000'000}});
  const fs::path log = dir.path() / "scan.log";
  test::ChildProcess scan({test::CtagentBinary(), "scan", "--config", cfg.string(), "--no-results", "--quiet"}, log);
  // Generous outer bound: three attempts of a 2 s deadline each, plus backoff, take about 15 s.
  const int code = scan.Wait(120s);
  const std::string output = test::ReadText(log);
  INFO(output);
  REQUIRE(code == 1);  // ended on its own, the upload pending
  CHECK_THAT(output, Catch::Contains("did not finish by its deadline: 2.0 s = connect_timeout_s 1 s + stall_timeout_s 1 s + "
                                     "0 body bytes and a 1048576-byte response cap at floor_rate_bits_per_s 1000000000"));
  CHECK_THAT(output, Catch::Contains("[timeout, gave up after 3 attempts"));
  CHECK_THAT(output, Catch::Contains("PROBLEM") && Catch::Contains("upload pending (data safe in the spool)"));
  CHECK_THAT(output, !Catch::Contains("stalled"));  // bytes kept coming: it was the deadline
  CHECK(server->Requests().size() >= 2);
  CheckKeptNotUploaded(dir.path(), cfg);
}

TEST_CASE("ctagent run stops within 2 s of SIGTERM while an upload request trickles", "[trickle]") {
  test::TempDir dir("trickle-run");
  auto server = test::HostileServer::Start(TrickleEverything(500));
  const fs::path cfg = WriteConfig(dir.path(), *server);
  ScanAndStop(dir.path(), cfg, *server);  // leaves a scan to resume in the spool
  const std::size_t before = server->Requests().size();
  const fs::path log = dir.path() / "run.log";
  test::ChildProcess run({test::CtagentBinary(), "run", "--config", cfg.string()}, log);
  const bool resuming = test::WaitFor([&] { return !run.Running() || server->Requests().size() > before; }, 60s);
  INFO(test::ReadText(log));
  REQUIRE(resuming);
  std::this_thread::sleep_for(1s);
  REQUIRE(run.Running());
  int code = -2;
  const auto took = StopAndTime(run, &code);
  INFO(test::ReadText(log));
  CHECK(code == 0);  // stopped on request: what is pending stays in the spool
  CHECK(took <= 2000ms);
  CheckKeptNotUploaded(dir.path(), cfg);
}

TEST_CASE("ctagent check stops within 2 s of SIGTERM while the link check's answer trickles, and untouched "
          "fails the link at its deadline",
          "[trickle]") {
  test::TempDir dir("trickle-check");
  auto server = test::HostileServer::Start(TrickleEverything(300, 100));
  {
    const fs::path cfg = WriteConfig(dir.path(), *server);
    const fs::path log = dir.path() / "check.log";
    test::ChildProcess check({test::CtagentBinary(), "check", "--config", cfg.string()}, log);
    const bool asked = test::WaitFor([&] { return !check.Running() || !server->Requests().empty(); }, 60s);
    INFO(test::ReadText(log));
    REQUIRE(asked);
    std::this_thread::sleep_for(1s);
    REQUIRE(check.Running());
    int code = -2;
    const auto took = StopAndTime(check, &code);
    CHECK(code == 128 + SIGTERM);  // check has nothing to save: the default disposition ends it
    CHECK(took <= 2000ms);
  }
  {
    const fs::path cfg = WriteConfig(dir.path(), *server,
                                     {{"connect_timeout_s", 1}, {"stall_timeout_s", 1}, {"floor_rate_bits_per_s", 1'000'000'000}});
    const fs::path log = dir.path() / "check-deadline.log";
    test::ChildProcess check({test::CtagentBinary(), "check", "--config", cfg.string()}, log);
    const int code = check.Wait(60s);
    const std::string output = test::ReadText(log);
    INFO(output);
    CHECK(code == 1);
    CHECK_THAT(output, Catch::Contains("did not finish by its deadline: 2.0 s"));
  }
}

TEST_CASE("ctagent scan following the daemon's scan stops within 2 s of SIGTERM and leaves the scan to it", "[trickle]") {
  test::TempDir dir("trickle-follow");
  auto server = test::HostileServer::Start(TrickleEverything(500));
  const fs::path cfg = WriteConfig(dir.path(), *server);
  ScanAndStop(dir.path(), cfg, *server);  // a scan for the daemon to resume
  const std::size_t before = server->Requests().size();
  // The daemon's uploads block on trickling answers (a tus request's deadline is 48 s), so the
  // scan it is given cannot be done within this test: `ctagent scan` keeps following it.
  test::ChildProcess daemon({test::CtagentBinary(), "run", "--config", cfg.string()}, dir.path() / "run.log");
  REQUIRE(test::WaitFor([&] { return !daemon.Running() || server->Requests().size() > before; }, 60s));
  REQUIRE(daemon.Running());
  const fs::path log = dir.path() / "second-scan.log";
  test::ChildProcess scan({test::CtagentBinary(), "scan", "--config", cfg.string(), "--no-results", "--quiet"}, log);
  const bool following = test::WaitFor(
      [&] { return !scan.Running() || test::ReadText(log).find("following it") != std::string::npos; }, 60s);
  INFO(test::ReadText(log));
  REQUIRE(following);
  std::this_thread::sleep_for(500ms);
  REQUIRE(scan.Running());
  int code = -2;
  const auto took = StopAndTime(scan, &code);
  INFO(test::ReadText(log));
  CHECK(code == 1);
  CHECK(took <= 2000ms);
  CHECK_THAT(test::ReadText(log), Catch::Contains("stopped following scan") &&
                                      Catch::Contains("the background agent carries on with it"));
  CHECK(daemon.Running());  // the scan is the daemon's: stopping the follower does not stop it
}
