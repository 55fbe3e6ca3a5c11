// `ctagent pause` / `ctagent resume` and `ctagent acknowledge` against the real daemon: the real
// `ctagent run` uploads to the real tus server (@tus/server, HTTPS) through the fault proxy,
// whose counters say what reached the server. While paused, two scans ordered over the control
// socket are acquired into the spool and no byte and no connection reaches the server, also
// across a restart of the daemon (the pause is recorded in the spool directory); a failed scan's
// acknowledgement survives a restart; a pause during the upload stops the requests in flight and
// the resume continues where they stopped; the scan arrives bit-exact.
#include <catch2/catch.hpp>

#include <signal.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "agent/control/control.hpp"
#include "config/config.hpp"
#include "tests/links/proxy_support.hpp"
#include "tests/links/scan_support.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// How long "nothing happens" is watched for: long past the daemon's first request after a scan
// is acquired when it is not paused (it starts a chunk's upload as soon as the chunk is durable).
constexpr auto kQuietWindow = 3s;

struct Cli {
  int rc = -1;
  std::string out;
};

// Runs the real `ctagent` with `args`; its output (stdout and stderr) in `out`.
Cli RunCli(const fs::path& dir, const std::vector<std::string>& args) {
  static int n = 0;
  const fs::path log = dir / ("cli-" + std::to_string(++n) + ".log");
  std::vector<std::string> argv{test::CtagentBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  test::ChildProcess cli(argv, log);
  Cli r;
  r.rc = cli.Wait(60s);
  r.out = test::ReadText(log);
  return r;
}

// The status object from the daemon, or nothing if it does not answer.
std::optional<Json> DaemonStatus(const fs::path& socket) {
  auto client = control::Client::Connect(socket);
  if (!client) return std::nullopt;
  auto status = client->Call("status");
  if (!status) return std::nullopt;
  return *status;
}

Json ScanIn(const Json& status, const std::string& scan_uid) {
  for (const auto& s : status.value("scans", Json::array())) {
    if (s.value("scan_uid", "") == scan_uid) return s;
  }
  return Json::object();
}

// Waits (bounded) until the daemon's status shows `scan_uid` in `state`.
bool WaitForState(const fs::path& socket, const std::string& scan_uid, const std::string& state,
                  std::chrono::milliseconds timeout) {
  return test::WaitFor(
      [&] {
        auto status = DaemonStatus(socket);
        return status && ScanIn(*status, scan_uid).value("state", "") == state;
      },
      timeout);
}

// A running `ctagent run`, ready once its control socket answers.
std::unique_ptr<test::ChildProcess> StartDaemon(const fs::path& cfg, const fs::path& log, const fs::path& socket) {
  auto daemon = std::make_unique<test::ChildProcess>(
      std::vector<std::string>{test::CtagentBinary(), "run", "--config", cfg.string()}, log);
  INFO("daemon log:\n" << test::ReadText(log));
  REQUIRE(test::WaitFor([&] { return DaemonStatus(socket).has_value() || !daemon->Running(); }, 60s));
  REQUIRE(daemon->Running());
  return daemon;
}

void StopDaemon(std::unique_ptr<test::ChildProcess>& daemon) {
  daemon->Kill(SIGTERM);
  CHECK(daemon->Wait(60s) == 0);
  daemon.reset();
}

std::string TakeScan(const fs::path& socket) {
  auto client = control::Client::Connect(socket);
  REQUIRE(client);
  auto taken = client->Call("take_scan", Json::object(), 60s);
  INFO((taken ? std::string() : taken.error().message()));
  REQUIRE(taken);
  return taken->at("scan_uid").get<std::string>();
}

// Waits (bounded) until the proxy's up_bytes have not moved for a second: the requests in flight
// have ended. Returns the count then.
std::uint64_t WaitUntilQuiet(test::FaultProxy& proxy) {
  std::uint64_t last = proxy.FreshStats()["up_bytes"];
  std::uint64_t now = last;
  test::WaitFor(
      [&] {
        std::this_thread::sleep_for(1s);
        now = proxy.FreshStats()["up_bytes"];
        const bool still = now == last;
        last = now;
        return still;
      },
      60s);
  return now;
}

}  // namespace

TEST_CASE("paused uploads send nothing, across a restart, and resume where they stopped, and acknowledgements are kept",
          "[daemon][service]") {
  test::TempDir dir("upload-pause");
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  const fs::path store = dir.path() / "store";
  auto tus = test::StartTusServer(pki, store, dir.path() / "tus.log");
  test::FaultProxy proxy(dir.path(), "proxy", tus.port);
  const std::string url = "https://127.0.0.1:" + std::to_string(proxy.port()) + "/files/";
  const fs::path spool = dir.path() / "spool";
  const fs::path cfg = dir.path() / "agent.json";
  std::ofstream(cfg) << test::ScanConfig(spool, url, pki / "ca.pem", /*stall_timeout_s=*/10, /*patch_bytes=*/65536)
                            .dump(2);
  auto loaded = config::LoadConfig(cfg);
  REQUIRE(loaded);
  const fs::path socket = config::ControlSocketPath(*loaded);
  const fs::path log = dir.path() / "daemon.log";
  INFO("daemon log:\n" << test::ReadText(log) << "\nproxy log:\n" << test::ReadText(proxy.log()));

  // --- Paused before any scan: two scans are acquired into the spool, nothing goes out. ---
  auto daemon = StartDaemon(cfg, log, socket);
  const Cli paused = RunCli(dir.path(), {"pause", "--config", cfg.string()});
  INFO("pause: " << paused.out);
  REQUIRE(paused.rc == 0);
  CHECK_THAT(paused.out, Catch::Contains("uploads paused"));
  CHECK(fs::exists(spool / "uploads-paused.json"));
  const std::string scan = TakeScan(socket);
  REQUIRE(WaitForState(socket, scan, "acquired", 120s));
  const std::string doomed = TakeScan(socket);  // its chunk is damaged below: a failed scan
  REQUIRE(WaitForState(socket, doomed, "acquired", 120s));
  std::this_thread::sleep_for(kQuietWindow);
  auto status = DaemonStatus(socket);
  REQUIRE(status);
  CHECK(status->at("daemon").at("uploads_paused") == true);
  const std::string since = status->at("daemon").value("uploads_paused_since_utc", "");
  CHECK_FALSE(since.empty());
  const Json spooled = ScanIn(*status, scan);
  CHECK(spooled.value("chunks_total", 0) > 0);
  CHECK(spooled.value("chunks_uploaded", -1) == 0);
  CHECK(spooled.value("manifest", "") == "written");
  auto stats = proxy.FreshStats();
  CHECK(stats["accepted"] == 0);  // not one connection: no OPTIONS, POST, HEAD or PATCH
  CHECK(stats["up_bytes"] == 0);
  CHECK((!fs::exists(store) || fs::is_empty(store)));
  const Cli shown = RunCli(dir.path(), {"status", "--config", cfg.string()});
  CHECK_THAT(shown.out, Catch::Contains("uploads PAUSED since " + since));

  // --- Restart (a watchdog's): still paused, still nothing sent; the damaged scan fails. ---
  StopDaemon(daemon);
  {
    const fs::path chunk = spool / "scans" / doomed / "chunks" / "000000.ctc";
    REQUIRE(fs::exists(chunk));
    std::fstream f(chunk, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  daemon = StartDaemon(cfg, log, socket);
  std::this_thread::sleep_for(kQuietWindow);
  status = DaemonStatus(socket);
  REQUIRE(status);
  CHECK(status->at("daemon").at("uploads_paused") == true);
  CHECK(status->at("daemon").value("uploads_paused_since_utc", "") == since);
  CHECK(ScanIn(*status, doomed).value("state", "") == "failed");
  CHECK_FALSE(ScanIn(*status, doomed).contains("acknowledged_utc"));
  stats = proxy.FreshStats();
  CHECK(stats["accepted"] == 0);
  CHECK(stats["up_bytes"] == 0);

  // --- Acknowledge: only a failed scan; kept with its record across a restart. ---
  const Cli ack = RunCli(dir.path(), {"acknowledge", "--config", cfg.string(), doomed});
  INFO("acknowledge: " << ack.out);
  CHECK(ack.rc == 0);
  const Cli not_failed = RunCli(dir.path(), {"acknowledge", "--config", cfg.string(), scan});
  CHECK(not_failed.rc == 5);
  CHECK_THAT(not_failed.out, Catch::Contains("not failed"));
  status = DaemonStatus(socket);
  REQUIRE(status);
  const std::string acknowledged = ScanIn(*status, doomed).value("acknowledged_utc", "");
  CHECK_FALSE(acknowledged.empty());
  StopDaemon(daemon);
  daemon = StartDaemon(cfg, log, socket);
  status = DaemonStatus(socket);
  REQUIRE(status);
  CHECK(ScanIn(*status, doomed).value("acknowledged_utc", "") == acknowledged);
  CHECK(status->at("daemon").at("uploads_paused") == true);

  // --- Resume on a slow link, pause mid-upload: the requests in flight end, nothing more goes out. ---
  // 500 kbit/s per connection: a chunk (about 350 KB) takes about 6 s, so the pause below (a CLI
  // started after 64 KiB went out, slow on a loaded machine) lands while the first chunks still
  // have PATCHes to send. At 2 Mbit/s a loaded run's pause came after they had finished, and no
  // request was in flight to cut.
  proxy.Control("rate_bps=500000\n");
  const Cli resumed = RunCli(dir.path(), {"resume", "--config", cfg.string()});
  INFO("resume: " << resumed.out);
  REQUIRE(resumed.rc == 0);
  CHECK_THAT(resumed.out, Catch::Contains("uploads running"));
  CHECK_FALSE(fs::exists(spool / "uploads-paused.json"));
  REQUIRE(test::WaitFor([&] { return proxy.Stats()["up_bytes"] >= 64 * 1024; }, 60s));
  const Cli paused_again = RunCli(dir.path(), {"pause", "--config", cfg.string()});
  REQUIRE(paused_again.rc == 0);
  const std::uint64_t at_pause = WaitUntilQuiet(proxy);
  status = DaemonStatus(socket);
  REQUIRE(status);
  // Paused in the middle: the upload had not finished (500 kbit/s per connection, a few MB).
  REQUIRE(ScanIn(*status, scan).value("state", "") == "acquired");
  const auto accepted_at_pause = proxy.FreshStats()["accepted"];
  std::this_thread::sleep_for(kQuietWindow);
  stats = proxy.FreshStats();
  CHECK(stats["up_bytes"] == at_pause);
  CHECK(stats["accepted"] == accepted_at_pause);
  CHECK_THAT(test::ReadText(log), Catch::Contains("paused in flight"));

  // --- Resume at full speed: the scan arrives bit-exact, the failed one is not sent. ---
  proxy.Control("rate_bps=0\n");
  REQUIRE(RunCli(dir.path(), {"resume", "--config", cfg.string()}).rc == 0);
  REQUIRE(WaitForState(socket, scan, "uploaded", 120s));
  status = DaemonStatus(socket);
  REQUIRE(status);
  CHECK(status->at("daemon").at("uploads_paused") == false);
  CHECK_FALSE(status->at("daemon").contains("uploads_paused_since_utc"));
  StopDaemon(daemon);
  const std::uint64_t stored = test::CheckScanArrivedBitExact(store, cfg);  // one manifest: the failed scan sent none
  std::printf("upload pause: %llu bytes through the proxy, %llu bytes stored, %llu up to the pause\n",
              static_cast<unsigned long long>(proxy.FreshStats()["up_bytes"]), static_cast<unsigned long long>(stored),
              static_cast<unsigned long long>(at_pause));
}
