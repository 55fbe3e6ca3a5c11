// Faults of the machine under the real agent: a file system that fills up mid-scan (a real tmpfs
// made by the test), read errors on a spooled chunk (CTAGENT_FAULT_EIO_READ), and the wall clock
// jumping backwards and forwards during a scan and its upload (libfaketime).
//
// A test that cannot create its fault here prints "SKIPPED: <reason>" (ctest reports it skipped).
#include <catch2/catch.hpp>

#include <sys/mount.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include "base/durable_file.hpp"
#include "agent/spool/spool.hpp"
#include "tests/durability/harness.hpp"

using namespace ctagent;
using namespace ctagent::test::durability;
using namespace std::chrono_literals;

namespace {

void Skip(const std::string& reason) {
  std::printf("SKIPPED: %s\n", reason.c_str());
  std::fflush(stdout);
  WARN("SKIPPED: " << reason);
}

// A tmpfs of `mib` MiB at `dir`, unmounted by the destructor (every exit path of the test).
class SmallFileSystem {
 public:
  SmallFileSystem(const fs::path& dir, int mib) : dir_(dir) {
    fs::create_directories(dir);
    const std::string options = "size=" + std::to_string(mib) + "m";
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::string("mount -t tmpfs -o ") + options + " " + dir.string() + " refused: " + std::strerror(errno);
    }
  }
  ~SmallFileSystem() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  SmallFileSystem(const SmallFileSystem&) = delete;
  SmallFileSystem& operator=(const SmallFileSystem&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  fs::path dir_;
  bool mounted_ = false;
  std::string error_;
};

// Writes `path` until the file system refuses (bounded by `max_bytes`); returns the bytes written.
std::uint64_t FillFileSystem(const fs::path& path, std::uint64_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::vector<char> block(64 * 1024, 'x');
  std::uint64_t written = 0;
  while (written < max_bytes) {
    const std::size_t n = std::fwrite(block.data(), 1, block.size(), f);
    written += n;
    if (n < block.size() || std::fflush(f) != 0) break;
  }
  std::fclose(f);
  return written;
}

spool::ScanRecord OnlyScan(const fs::path& spool_dir) {
  PosixFileStore files;
  auto spool = OpenSpool(spool_dir, files);
  REQUIRE(spool);
  auto scans = (*spool)->AllScans();
  REQUIRE(scans.size() == 1);
  return scans.front();
}

}  // namespace

TEST_CASE("a file system that fills up mid-scan keeps the stored chunks, uploads them and says why the scan is "
          "incomplete",
          "[durability][enospc]") {
  test::TempDir work("enospc");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  SmallFileSystem small(work.path() / "small", 8);
  if (!small.mounted()) {
    Skip(small.error() + " (needs root or CAP_SYS_ADMIN)");
    return;
  }
  const fs::path spool_dir = work.path() / "small" / "spool";
  fs::create_directories(work.path() / "store");
  TusPeer tus(pki, work.path() / "store", work.path() / "tus.log");
  tus.Start();
  // Paced like a real gantry (240 views over 3 s), so the disk can fill while views still arrive.
  const fs::path cfg_path = work.path() / "agent.json";
  WriteJson(cfg_path, PacedScanConfig(spool_dir, tus.endpoint(), pki / "ca.pem", 11, 3.0));
  const fs::path log = work.path() / "agent.log";

  test::ChildProcess agent(ScanCommand(cfg_path), log);
  // Armed and some chunks on disk: then the disk fills.
  REQUIRE(test::WaitFor([&] { return CountChunkFiles(spool_dir) >= 3 || !agent.Running(); }, 60s));
  REQUIRE(agent.Running());
  const fs::path filler = work.path() / "small" / "filler.bin";
  const std::uint64_t filled = FillFileSystem(filler, 16ull << 20);
  const std::size_t stored_before_full = CountChunkFiles(spool_dir);
  std::printf("enospc: %zu chunk files stored, then %llu bytes filled the file system\n", stored_before_full,
              static_cast<unsigned long long>(filled));
  // 3 s of acquisition: a minute is far beyond it; an agent still running then is hung.
  const int code = agent.Wait(60s);
  const std::string agent_out = test::ReadText(log);
  INFO("agent output:\n" << agent_out);
  REQUIRE(code != -1);
  CHECK(code == 1);  // the scan did not complete, and the agent says so
  CHECK_THAT(agent_out, Catch::Contains("No space left on device"));

  // While the disk is still full: status shows the scan and the reason.
  const std::string status_full = [&] {
    const fs::path out = work.path() / "status-full.log";
    RunCtagent({"status", "--config", cfg_path.string()}, out, 60s);
    return test::ReadText(out);
  }();
  INFO("status while full:\n" << status_full);
  CHECK_THAT(status_full, Catch::Contains("No space left on device"));

  // Space comes back; recovery uploads what was stored, with an incomplete manifest and its reason.
  fs::remove(filler);
  REQUIRE(RunCtagent({"run", "--once", "--config", cfg_path.string()}, log, 120s) != -1);
  const auto record = OnlyScan(spool_dir);
  CHECK(record.chunks.size() >= 3);
  CHECK(record.chunks.size() <= stored_before_full);
  const Verdict verdict = Verify(spool_dir, work.path() / "store", /*require_uploaded=*/true);
  for (const auto& p : verdict.problems) UNSCOPED_INFO(p);
  CHECK(verdict.lost == 0);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
  CHECK(verdict.incomplete_scans == 1);
  PosixFileStore files;
  auto spool = OpenSpool(spool_dir, files);
  REQUIRE(spool);
  auto manifest = (*spool)->ReadManifest(record.scan_uid);
  REQUIRE(manifest);
  const std::string manifest_text(manifest->begin(), manifest->end());
  INFO("manifest:\n" << manifest_text);
  CHECK_THAT(manifest_text, Catch::Contains("space") || Catch::Contains("No space left"));
  const fs::path status_after = work.path() / "status-after.log";
  RunCtagent({"status", "--config", cfg_path.string()}, status_after, 60s);
  INFO("status after recovery:\n" << test::ReadText(status_after));
  CHECK_THAT(test::ReadText(status_after), Catch::Contains("space"));
}

TEST_CASE("a read error on a spooled chunk flags that scan loudly and the other scans still upload",
          "[durability][eio]") {
  test::TempDir work("eio");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  const fs::path spool_dir = work.path() / "spool";
  fs::create_directories(work.path() / "store");
  fs::create_directories(work.path() / "refused");
  // Two scans wait in the spool: their first upload went to a server the agent refuses.
  TusPeer refusing(pki, work.path() / "refused", work.path() / "refusing.log", "wrong-host");
  refusing.Start();
  const fs::path refusing_cfg = work.path() / "refusing.json";
  WriteJson(refusing_cfg, SmallScanConfig(spool_dir, refusing.endpoint(), pki / "ca.pem", 21));
  const fs::path log = work.path() / "agent.log";
  REQUIRE(RunCtagent({"scan", "--config", refusing_cfg.string(), "--no-results", "--quiet"}, log, 120s) == 1);
  REQUIRE(RunCtagent({"scan", "--config", refusing_cfg.string(), "--no-results", "--quiet"}, log, 120s) == 1);

  // Is the hook in this build? Reading the spool marker with it armed must fail.
  {
    ScopedEnv env("CTAGENT_FAULT_EIO_READ", "spool.json");
    const fs::path probe = work.path() / "probe.log";
    RunCtagent({"status", "--config", refusing_cfg.string()}, probe, 60s);
    if (test::ReadText(probe).find("Input/output error") == std::string::npos) {
      Skip("CTAGENT_FAULT_EIO_READ is not in this build (no FaultInjectingFileStore: CMake option CTAGENT_FAULT_HOOKS off)");
      return;
    }
  }
  std::vector<spool::ScanRecord> scans;
  {
    PosixFileStore files;
    auto spool = OpenSpool(spool_dir, files);
    REQUIRE(spool);
    scans = (*spool)->AllScans();
  }
  REQUIRE(scans.size() == 2);
  const std::string bad_uid = scans[0].scan_uid;
  const std::string good_uid = scans[1].scan_uid;
  REQUIRE(scans[0].chunks.size() > 3);

  TusPeer tus(pki, work.path() / "store", work.path() / "tus.log");
  tus.Start();
  const fs::path cfg = work.path() / "agent.json";
  WriteJson(cfg, SmallScanConfig(spool_dir, tus.endpoint(), pki / "ca.pem", 21));
  int code = -1;
  {
    ScopedEnv env("CTAGENT_FAULT_EIO_READ", bad_uid + "/chunks/000003");
    code = RunCtagent({"run", "--once", "--config", cfg.string()}, log, 180s);
  }
  const std::string out = test::ReadText(log);
  INFO("agent output:\n" << out);
  CHECK(code == 1);  // loud: the pass reports a problem in its exit status ...
  CHECK_THAT(out, Catch::Contains("Input/output error") && Catch::Contains(bad_uid));  // ... and its log
  CHECK_THAT(out, Catch::Contains("FAILED and needs attention"));

  PosixFileStore files;
  auto spool = OpenSpool(spool_dir, files);
  REQUIRE(spool);
  auto good = (*spool)->Get(good_uid);
  auto bad = (*spool)->Get(bad_uid);
  REQUIRE(good);
  REQUIRE(bad);
  CHECK(good->state == spool::ScanState::kUploaded);
  CHECK(bad->state != spool::ScanState::kUploaded);
  // The good scan arrived bit-exact; only chunk 3 of the bad scan is missing on the server.
  const Verdict verdict = Verify(spool_dir, work.path() / "store", /*require_uploaded=*/false);
  for (const auto& p : verdict.problems) UNSCOPED_INFO(p);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
  const fs::path status = work.path() / "status.log";
  RunCtagent({"status", "--config", cfg.string()}, status, 60s);
  INFO("status:\n" << test::ReadText(status));
  CHECK_THAT(test::ReadText(status), Catch::Contains("Input/output error"));
}

TEST_CASE("the wall clock jumping backwards and forwards during a scan and its upload changes nothing",
          "[durability][clock]") {
  const fs::path libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
  if (!fs::exists(libfaketime)) {
    Skip(libfaketime.string() + " is missing: apt-get install faketime (scripts/bootstrap installs it)");
    return;
  }
  test::TempDir work("clock");
  const fs::path pki = work.path() / "pki";
  test::MakeTestPki(pki);
  const fs::path spool_dir = work.path() / "spool";
  fs::create_directories(work.path() / "store");
  TusPeer tus(pki, work.path() / "store", work.path() / "tus.log");
  tus.Start();
  // 3 s of acquisition, uploads running alongside.
  const fs::path cfg_path = work.path() / "agent.json";
  WriteJson(cfg_path, PacedScanConfig(spool_dir, tus.endpoint(), pki / "ca.pem", 31, 3.0));
  const fs::path clock_file = work.path() / "faketime";
  std::ofstream(clock_file) << "+0\n";

  const std::string asan = std::getenv("ASAN_OPTIONS") ? std::getenv("ASAN_OPTIONS") : "";
  // Only the wall clock jumps (as NTP or an operator would make it); CLOCK_MONOTONIC never does.
  ScopedEnv env({{"LD_PRELOAD", libfaketime.string()},
                 {"FAKETIME_TIMESTAMP_FILE", clock_file.string()},
                 {"FAKETIME_NO_CACHE", "1"},
                 {"FAKETIME_DONT_FAKE_MONOTONIC", "1"},
                 {"ASAN_OPTIONS", (asan.empty() ? "" : asan + ":") + "verify_asan_link_order=0"}});
  const fs::path log = work.path() / "agent.log";
  const auto t0 = std::chrono::steady_clock::now();
  test::ChildProcess agent(ScanCommand(cfg_path), log);
  // Back two hours, forward three days, back a day, forward a year, back to now.
  const char* jumps[] = {"-2h", "+3d", "-1d", "+365d", "-30d", "+0"};
  for (const char* jump : jumps) {
    std::this_thread::sleep_for(500ms);
    std::ofstream(clock_file) << jump << "\n";
  }
  const int code = agent.Wait(90s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string out = test::ReadText(log);
  INFO("agent output:\n" << out);
  std::printf("clock: scan under clock jumps finished with %d in %.1f s\n", code, seconds);
  REQUIRE(code == 0);
  CHECK(seconds < 60);  // 3 s of acquisition; a wall-clock wait would hang or time out instead
  CHECK_THAT(out, !Catch::Contains("timed out") && !Catch::Contains("stall") && !Catch::Contains("retry"));
  const Verdict verdict = Verify(spool_dir, work.path() / "store", /*require_uploaded=*/true);
  for (const auto& p : verdict.problems) UNSCOPED_INFO(p);
  CHECK(verdict.accepted == 1);
  CHECK(verdict.complete_scans == 1);
  CHECK(verdict.lost == 0);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
}
