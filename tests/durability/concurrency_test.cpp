// Several ctagent processes on one spool, as a terminal runs them: the daemon (`ctagent run`),
// the operator's `ctagent scan`, and a technician's `ctagent status` and `ctagent check`.
// Only one process writes the spool at a time (spool.lock); status and check only read it; a
// scan asks a daemon that holds the spool to pause and gets it. What reached the cloud is
// compared with the spool afterwards (Verify: every chunk and manifest bit-exact).
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "tests/durability/harness.hpp"

using namespace ctagent;
using namespace ctagent::test::durability;
using namespace std::chrono_literals;

TEST_CASE("status and check while a scan runs change nothing in its spool, and the scan arrives bit-exact",
          "[durability][concurrency]") {
  test::TempDir work("concurrent-status");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  const fs::path spool_dir = work.path() / "spool";
  fs::create_directories(work.path() / "store");
  TusPeer tus(pki, work.path() / "store", work.path() / "tus.log");
  tus.Start();
  // Paced like a gantry (240 views over 3 s): chunk files are written, synced in batches and
  // journaled while the technician looks.
  auto cfg = SmallScanConfig(spool_dir, tus.endpoint(), pki / "ca.pem", 31);
  cfg["scan"]["real_time"] = true;
  cfg["scan"]["rotation_time_s"] = 3.0;
  const fs::path cfg_path = work.path() / "agent.json";
  WriteJson(cfg_path, cfg);
  const fs::path log = work.path() / "agent.log";

  test::ChildProcess agent({CtagentBinary(), "scan", "--config", cfg_path.string(), "--no-results", "--quiet"}, log);
  REQUIRE(test::WaitFor([&] { return CountChunkFiles(spool_dir) >= 1 || !agent.Running(); }, 60s));
  int looks = 0;
  std::string seen;
  // Bounded: 30 rounds; the scan ends after ~3 s.
  for (int i = 0; i < 30 && agent.Running(); ++i) {
    const fs::path out = work.path() / ("look-" + std::to_string(i) + ".log");
    CHECK(RunCtagent({"status", "--config", cfg_path.string()}, out, 60s) != -1);
    CHECK(RunCtagent({"check", "--config", cfg_path.string(), "--only", "disk,queue"}, out, 60s) != -1);
    seen += test::ReadText(out);
    ++looks;
  }
  const int code = agent.Wait(120s);
  const std::string agent_out = test::ReadText(log);
  INFO("agent output:\n" << agent_out << "\nstatus and check output:\n" << seen);
  std::printf("concurrency: %d status + check rounds during the scan\n", looks);
  REQUIRE(code == 0);
  CHECK(looks >= 2);
  // The readers never repaired anything (a writer's recovery would have removed the chunk files
  // written but not yet journaled, and compacted the journal under the scan's feet).
  CHECK(seen.find("removing") == std::string::npos);
  CHECK(seen.find("scan(s) in progress") != std::string::npos);
  const Verdict verdict = Verify(spool_dir, work.path() / "store", /*require_uploaded=*/true);
  for (const auto& p : verdict.problems) UNSCOPED_INFO(p);
  CHECK(verdict.accepted == 1);
  CHECK(verdict.complete_scans == 1);
  CHECK(verdict.lost == 0);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
  CHECK(verdict.orphans == 0);
}

TEST_CASE("a scan started while the daemon uploads makes it pause, and both scans arrive bit-exact",
          "[durability][concurrency]") {
  test::TempDir work("concurrent-daemon");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  test::MakeTestPki(work.path() / "other-pki");
  const fs::path spool_dir = work.path() / "spool";
  fs::create_directories(work.path() / "store");
  TusPeer tus(pki, work.path() / "store", work.path() / "tus.log");
  tus.Start();
  // A slow link (200 kbit/s, the link manager's token bucket), so the daemon is still uploading
  // the pending scan when the operator starts the next one.
  auto cfg = SmallScanConfig(spool_dir, tus.endpoint(), pki / "ca.pem", 41);
  cfg["cloud"]["links"] = {{"slow", {{"priority", 1}, {"max_bits_per_s", 200000}}}};
  const fs::path cfg_path = work.path() / "agent.json";
  WriteJson(cfg_path, cfg);
  // Scan A, acquired while the cloud's certificate could not be trusted (a CA the agent does not
  // know: a permanent error), so it waits in the spool for the daemon.
  auto offline = cfg;
  offline["cloud"]["tls"]["ca_file"] = (work.path() / "other-pki" / "ca.pem").string();
  offline["scan"]["seed"] = 42;
  const fs::path offline_path = work.path() / "offline.json";
  WriteJson(offline_path, offline);
  REQUIRE(RunCtagent({"scan", "--config", offline_path.string(), "--no-results", "--quiet"}, work.path() / "a.log",
                     120s) == 1);

  const fs::path daemon_log = work.path() / "daemon.log";
  test::ChildProcess daemon({CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log);
  // The daemon is uploading scan A: bytes are arriving.
  REQUIRE(test::WaitFor(
      [&] {
        for (const auto& u : ListUploads(work.path() / "store")) {
          if (u.stored_bytes > 0) return true;
        }
        return !daemon.Running();
      },
      60s));
  REQUIRE(daemon.Running());
  REQUIRE(ManifestScans(work.path() / "store").empty());

  // Scan B: not refused; the daemon pauses for it.
  const fs::path b_log = work.path() / "b.log";
  const int b_code = RunCtagent({"scan", "--config", cfg_path.string(), "--no-results", "--quiet"}, b_log, 180s);
  const std::string b_out = test::ReadText(b_log);
  INFO("scan B:\n" << b_out << "\ndaemon:\n" << test::ReadText(daemon_log));
  CHECK(b_code == 0);
  CHECK_THAT(b_out, Catch::Contains("is pausing its uploads for this scan"));
  CHECK_THAT(test::ReadText(daemon_log), Catch::Contains("a scan is waiting for the spool; pausing uploads"));

  // The daemon takes the spool back and finishes scan A (bounded: two small scans at 200 kbit/s).
  CHECK(test::WaitFor([&] { return ManifestScans(work.path() / "store").size() == 2 || !daemon.Running(); }, 180s));
  CHECK(daemon.Running());
  daemon.Stop();
  const Verdict verdict = Verify(spool_dir, work.path() / "store", /*require_uploaded=*/true);
  for (const auto& p : verdict.problems) UNSCOPED_INFO(p);
  std::printf("concurrency: daemon paused for a scan; %s\n", verdict.Line().c_str());
  CHECK(verdict.accepted == 2);
  CHECK(verdict.complete_scans == 2);
  CHECK(verdict.lost == 0);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
}

TEST_CASE("a second scan while one runs is refused at once, naming the process that holds the spool",
          "[durability][concurrency]") {
  test::TempDir work("concurrent-scans");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  const fs::path spool_dir = work.path() / "spool";
  auto cfg = SmallScanConfig(spool_dir, "https://127.0.0.1:9/files/", pki / "ca.pem", 51);
  cfg["scan"]["real_time"] = true;
  cfg["scan"]["rotation_time_s"] = 4.0;
  const fs::path cfg_path = work.path() / "agent.json";
  WriteJson(cfg_path, cfg);
  test::ChildProcess first({CtagentBinary(), "scan", "--config", cfg_path.string(), "--no-results", "--quiet"},
                           work.path() / "first.log");
  REQUIRE(test::WaitFor([&] { return CountChunkFiles(spool_dir) >= 1 || !first.Running(); }, 60s));
  REQUIRE(first.Running());
  const fs::path second_log = work.path() / "second.log";
  const int code = RunCtagent({"scan", "--config", cfg_path.string(), "--no-results", "--quiet"}, second_log, 60s);
  const std::string out = test::ReadText(second_log);
  INFO(out);
  CHECK(code == 1);
  CHECK_THAT(out, Catch::Contains("is in use by another ctagent process (pid " + std::to_string(first.pid()) + ": "));
  CHECK_THAT(out, Catch::Contains("only one process writes a spool at a time"));
  first.Stop();
}
