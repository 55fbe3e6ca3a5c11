// Several ctagent processes on one spool, as a terminal runs them: the daemon (`ctagent run`),
// the operator's `ctagent scan`, and a technician's `ctagent status` and `ctagent check`.
// Only one process writes the spool at a time (spool.lock); status and check only read it; a
// scan asks a daemon that holds the spool to pause and gets it. What reached the cloud is
// compared with the spool afterwards (Verify: every chunk and manifest bit-exact).
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "base/durable_file.hpp"
#include "agent/spool/spool.hpp"
#include "tests/durability/harness.hpp"

using namespace ctagent;
using namespace ctagent::test::durability;
using namespace std::chrono_literals;

namespace {

// A work folder with the test PKI, a spool folder and the real tus server storing in work/store.
struct LocalCloud {
  explicit LocalCloud(const std::string& name)
      : work(name), pki(work.path() / "pki"), spool_dir(work.path() / "spool"), store(work.path() / "store"),
        tus(pki, store, work.path() / "tus.log") {
    test::MakeTestPki(pki);
    fs::create_directories(store);
    tus.Start();
  }
  test::TempDir work;
  fs::path pki, spool_dir, store;
  TusPeer tus;
};

// Every accepted scan (`scans` of them) reached the cloud whole and bit-exact, once.
void CheckAllArrived(const Verdict& verdict, std::size_t scans) {
  for (const auto& p : verdict.problems) UNSCOPED_INFO(p);
  CHECK(verdict.accepted == scans);
  CHECK(verdict.complete_scans == scans);
  CHECK(verdict.lost == 0);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
  CHECK(verdict.orphans == 0);
}

// How many scans the spool records as uploaded, read as `ctagent status` reads it (read-only,
// beside the writer that holds it).
std::size_t UploadedInSpool(const fs::path& spool_dir) {
  PosixFileStore files;
  spool::SpoolOptions options;
  options.directory = spool_dir;
  options.min_free_bytes = 0;
  options.read_only = true;
  auto spool = spool::Spool::Open(options, files);
  if (!spool) return 0;
  std::size_t uploaded = 0;
  for (const auto& r : (*spool)->AllScans()) uploaded += r.state == spool::ScanState::kUploaded ? 1 : 0;
  return uploaded;
}

}  // namespace

TEST_CASE("status and check while a scan runs change nothing in its spool, and the scan arrives bit-exact",
          "[durability][concurrency]") {
  LocalCloud cloud("concurrent-status");
  // Paced like a gantry (240 views over 8 s): chunk files are written, synced in batches and
  // journaled while the technician looks. Long enough for two rounds of status and check under
  // the sanitizers on a loaded CI machine (one round took more than the 3 s scan there).
  const fs::path cfg_path = cloud.work.path() / "agent.json";
  WriteJson(cfg_path, PacedScanConfig(cloud.spool_dir, cloud.tus.endpoint(), cloud.pki / "ca.pem", 31, 8.0));
  const fs::path log = cloud.work.path() / "agent.log";
  test::ChildProcess agent(ScanCommand(cfg_path), log);
  REQUIRE(test::WaitFor([&] { return CountChunkFiles(cloud.spool_dir) >= 1 || !agent.Running(); }, 60s));
  int looks = 0;
  std::string seen;
  // Bounded: 30 rounds; the scan ends after ~8 s.
  for (int i = 0; i < 30 && agent.Running(); ++i) {
    const fs::path out = cloud.work.path() / ("look-" + std::to_string(i) + ".log");
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
  CheckAllArrived(Verify(cloud.spool_dir, cloud.store, /*require_uploaded=*/true), 1);
}

TEST_CASE("a scan started while the daemon uploads is taken by the daemon, and both scans arrive bit-exact",
          "[durability][concurrency]") {
  LocalCloud cloud("concurrent-daemon");
  test::MakeTestPki(cloud.work.path() / "other-pki");
  // A slow link (200 kbit/s, the link manager's token bucket), so the daemon is still uploading
  // the pending scan when the operator starts the next one.
  auto cfg = SmallScanConfig(cloud.spool_dir, cloud.tus.endpoint(), cloud.pki / "ca.pem", 41);
  cfg["cloud"]["links"] = {{"slow", {{"priority", 1}, {"max_bits_per_s", 200000}}}};
  const fs::path cfg_path = cloud.work.path() / "agent.json";
  WriteJson(cfg_path, cfg);
  // Scan A, acquired while the cloud's certificate could not be trusted (a CA the agent does not
  // know: a permanent error), so it waits in the spool for the daemon.
  auto offline = cfg;
  offline["cloud"]["tls"]["ca_file"] = (cloud.work.path() / "other-pki" / "ca.pem").string();
  offline["scan"]["seed"] = 42;
  const fs::path offline_path = cloud.work.path() / "offline.json";
  WriteJson(offline_path, offline);
  REQUIRE(RunCtagent(ScanArgs(offline_path), cloud.work.path() / "a.log", 120s) == 1);

  const fs::path daemon_log = cloud.work.path() / "daemon.log";
  test::ChildProcess daemon({CtagentBinary(), "run", "--config", cfg_path.string()}, daemon_log);
  // The daemon is uploading scan A: bytes are arriving.
  REQUIRE(test::WaitFor(
      [&] {
        for (const auto& u : ListUploads(cloud.store)) {
          if (u.stored_bytes > 0) return true;
        }
        return !daemon.Running();
      },
      60s));
  REQUIRE(daemon.Running());
  REQUIRE(ManifestScans(cloud.store).empty());

  // Scan B: not refused; `ctagent scan` asks the daemon over its control socket (take_scan), the
  // daemon acquires it while it goes on uploading scan A, and the command follows it to the end.
  const fs::path b_log = cloud.work.path() / "b.log";
  const int b_code = RunCtagent(ScanArgs(cfg_path), b_log, 180s);
  const std::string b_out = test::ReadText(b_log);
  INFO("scan B:\n" << b_out << "\ndaemon:\n" << test::ReadText(daemon_log));
  CHECK(b_code == 0);
  CHECK_THAT(b_out, Catch::Contains("the background agent takes scan"));
  CHECK_THAT(test::ReadText(daemon_log), Catch::Contains(" armed: "));

  // The daemon takes the spool back and finishes scan A (bounded: two small scans at 200 kbit/s).
  // Finished means journaled as uploaded: a manifest complete on the server a moment before the
  // daemon records its answer is not yet the daemon's (stopping it then leaves scan A to resume).
  CHECK(test::WaitFor(
      [&] {
        return (ManifestScans(cloud.store).size() == 2 && UploadedInSpool(cloud.spool_dir) == 2) || !daemon.Running();
      },
      180s));
  CHECK(daemon.Running());
  daemon.Stop();
  const Verdict verdict = Verify(cloud.spool_dir, cloud.store, /*require_uploaded=*/true);
  std::printf("concurrency: the daemon took a scan while uploading; %s\n", verdict.Line().c_str());
  CheckAllArrived(verdict, 2);
}

TEST_CASE("a second scan while one runs is refused at once, naming the process that holds the spool",
          "[durability][concurrency]") {
  test::TempDir work("concurrent-scans");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  const fs::path spool_dir = work.path() / "spool";  // no cloud: this scan never uploads
  const fs::path cfg_path = work.path() / "agent.json";
  WriteJson(cfg_path, PacedScanConfig(spool_dir, "https://127.0.0.1:9/files/", pki / "ca.pem", 51, 4.0));
  test::ChildProcess first(ScanCommand(cfg_path), work.path() / "first.log");
  REQUIRE(test::WaitFor([&] { return CountChunkFiles(spool_dir) >= 1 || !first.Running(); }, 60s));
  REQUIRE(first.Running());
  const fs::path second_log = work.path() / "second.log";
  const int code = RunCtagent(ScanArgs(cfg_path), second_log, 60s);
  const std::string out = test::ReadText(second_log);
  INFO(out);
  CHECK(code == 1);
  CHECK_THAT(out, Catch::Contains("is in use by another ctagent process (pid " + std::to_string(first.pid()) + ": "));
  CHECK_THAT(out, Catch::Contains("only one process writes a spool at a time"));
  first.Stop();
}
