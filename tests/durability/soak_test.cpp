// The process-kill soak: the real ctagent binary scans and uploads to the real tus server while
// the test SIGKILLs it (during acquisition, during uploads, during recovery, and, when the build
// has the hook, right before its N-th mutating file operation) and SIGKILLs and restarts the tus
// server in place. At the end `ctagent run --once` finishes the backlog, and every scan the spool
// accepted must be on the server bit-exact, once, with nothing orphaned in the spool.
//
// CTAGENT_SOAK_KILLS (default 24) sets the number of kills, CTAGENT_SOAK_SEED the random seed
// (default: from the clock; printed so a failing run can be repeated). scripts/soak runs >= 200.
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>

#include "tests/durability/harness.hpp"

using namespace ctagent;
using namespace ctagent::test::durability;
using namespace std::chrono_literals;

namespace {

std::uint64_t EnvNumber(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  return std::strtoull(text, nullptr, 10);
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST_CASE("soak: SIGKILL of the agent and the tus server at random points loses, corrupts and duplicates nothing",
          "[durability][soak]") {
  const auto wall_start = std::chrono::steady_clock::now();
  const std::uint64_t target_kills = std::max<std::uint64_t>(1, EnvNumber("CTAGENT_SOAK_KILLS", 24));
  const std::uint64_t seed = EnvNumber(
      "CTAGENT_SOAK_SEED", static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()));
  std::mt19937_64 rng(seed);
  std::printf("soak: seed %llu (CTAGENT_SOAK_SEED=%llu repeats this run), target kills %llu\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(target_kills));

  test::TempDir work("soak");
  const fs::path pki = work.path() / "pki";
  const fs::path logs = work.path() / "logs";
  const fs::path spool_dir = work.path() / "spool";
  const fs::path store = work.path() / "tus-store";
  fs::create_directories(logs);
  fs::create_directories(store);
  test::MakeTestPki(pki);
  TusPeer tus(pki, store, logs / "tus.log");
  tus.Start();

  const fs::path cfg_path = work.path() / "agent.json";
  auto write_config = [&](std::uint64_t scan_seed) {
    WriteJson(cfg_path, SmallScanConfig(spool_dir, tus.endpoint(), pki / "ca.pem", scan_seed));
  };
  const fs::path agent_log = logs / "agent.log";

  // Calibration: one undisturbed scan sets the window the random kills fall in.
  write_config(seed % 1000000);
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(RunCtagent({"scan", "--config", cfg_path.string(), "--no-results", "--quiet"}, agent_log, 180s) == 0);
  const double scan_ms = std::max(50.0, MsSince(t0));
  const bool kill_at_op = HasKillAtOpHook(work.path() / "probe");
  std::printf("soak: an undisturbed scan takes %.0f ms; CTAGENT_FAULT_KILL_AT_OP hook %s\n", scan_ms,
              kill_at_op ? "present" : "absent (random-time kills only)");

  std::uint64_t kills = 0, agent_kills = 0, recovery_kills = 0, op_kills = 0, server_kills = 0;
  std::uint64_t iteration = 0;
  const std::uint64_t max_iterations = target_kills * 4 + 8;  // some kills land after the process ended
  auto delay = [&](double max_ms) {
    return std::chrono::microseconds(static_cast<std::int64_t>(std::uniform_real_distribution<double>(0, max_ms)(rng) * 1000));
  };
  // Starts `args`, SIGKILLs it after `after` if it still runs; true if the kill hit a running process.
  auto run_and_kill = [&](const std::vector<std::string>& args, std::chrono::microseconds after,
                          const std::function<void()>& meanwhile = {}) {
    std::vector<std::string> argv{CtagentBinary()};
    argv.insert(argv.end(), args.begin(), args.end());
    test::ChildProcess agent(argv, agent_log);
    std::this_thread::sleep_for(after);
    if (meanwhile) meanwhile();
    bool killed = false;
    if (agent.Running()) {
      agent.Kill(SIGKILL);
      killed = agent.Wait(30s) == 128 + SIGKILL;
    }
    if (!killed && agent.Wait(180s) == -1) FAIL("ctagent " << args.front() << " did not finish within 180 s");
    return killed;
  };

  while (kills < target_kills && iteration < max_iterations) {
    ++iteration;
    write_config(seed % 1000000 + iteration);
    const std::vector<std::string> scan = {"scan", "--config", cfg_path.string(), "--no-results", "--quiet"};
    const std::vector<std::string> resume = {"run", "--once", "--config", cfg_path.string()};
    const int action = std::uniform_int_distribution<int>(0, kill_at_op ? 4 : 3)(rng);
    switch (action) {
      case 0:  // the agent during acquisition / spool writes / uploads
        if (run_and_kill(scan, delay(scan_ms * 1.2))) ++kills, ++agent_kills;
        break;
      case 1:  // the agent during recovery
        if (run_and_kill(resume, delay(scan_ms))) ++kills, ++recovery_kills;
        break;
      case 2: {  // the tus server during a scan's uploads, restarted in place (same port and store)
        test::ChildProcess agent({CtagentBinary(), scan[0], scan[1], scan[2], scan[3], scan[4]}, agent_log);
        std::this_thread::sleep_for(delay(scan_ms));
        if (tus.Kill()) ++kills, ++server_kills;
        std::this_thread::sleep_for(delay(300));
        tus.Start();
        REQUIRE(agent.Wait(300s) != -1);
        break;
      }
      case 3: {  // both at once: the agent mid-upload while the server is down
        bool server_killed = false;
        const bool agent_killed = run_and_kill(scan, delay(scan_ms), [&] { server_killed = tus.Kill(); });
        kills += (agent_killed ? 1 : 0) + (server_killed ? 1 : 0);
        agent_kills += agent_killed ? 1 : 0;
        server_kills += server_killed ? 1 : 0;
        tus.Start();
        break;
      }
      case 4: {  // right before the N-th mutating file operation: hits every window between them
        const auto n = std::uniform_int_distribution<int>(1, 160)(rng);
        const bool in_recovery = std::uniform_int_distribution<int>(0, 3)(rng) == 0;
        ScopedEnv env("CTAGENT_FAULT_KILL_AT_OP", std::to_string(n));
        const int code = RunCtagent(in_recovery ? resume : scan, agent_log, 180s);
        REQUIRE(code != -1);
        if (code == 128 + SIGKILL) ++kills, ++op_kills;
        break;
      }
      default:
        break;
    }
    // Occasionally let recovery run to completion in between, as a restarted daemon would.
    if (std::uniform_int_distribution<int>(0, 4)(rng) == 0) {
      REQUIRE(RunCtagent(resume, agent_log, 300s) != -1);
    }
  }

  // The end: the server up, no faults; recovery until nothing is pending (bounded passes).
  tus.Start();
  int last_code = -1;
  for (int pass = 0; pass < 6 && last_code != 0; ++pass) {
    last_code = RunCtagent({"run", "--once", "--config", cfg_path.string()}, agent_log, 300s);
  }
  const Verdict verdict = Verify(spool_dir, store, /*require_uploaded=*/true);
  for (const auto& p : verdict.problems) std::printf("soak: PROBLEM %s\n", p.c_str());
  std::printf("soak: kills %llu (agent %llu, recovery %llu, at file op %llu, tus server %llu) in %llu iterations, "
              "%zu complete and %zu incomplete scans, %zu orphan files, %zu abandoned uploads, %zu re-sent copies, %.0f s\n",
              static_cast<unsigned long long>(kills), static_cast<unsigned long long>(agent_kills),
              static_cast<unsigned long long>(recovery_kills), static_cast<unsigned long long>(op_kills),
              static_cast<unsigned long long>(server_kills), static_cast<unsigned long long>(iteration),
              verdict.complete_scans, verdict.incomplete_scans, verdict.orphans, verdict.abandoned_uploads,
              verdict.resent, MsSince(wall_start) / 1000.0);
  std::printf("kills %llu, %s\n", static_cast<unsigned long long>(kills), verdict.Line().c_str());
  std::fflush(stdout);
  INFO("agent log tail:\n" << test::ReadText(agent_log).substr(test::ReadText(agent_log).size() > 4000
                                                                     ? test::ReadText(agent_log).size() - 4000
                                                                     : 0));
  CHECK(last_code == 0);
  CHECK(verdict.spool_opened);
  CHECK(kills >= target_kills);
  CHECK(verdict.accepted >= 1);
  CHECK(verdict.lost == 0);
  CHECK(verdict.corrupted == 0);
  CHECK(verdict.duplicated == 0);
  // The contract re-sends at most the interrupted requests: each kill of the agent interrupts at
  // most parallel_uploads (2) transfers.
  CHECK(verdict.resent <= 2 * (agent_kills + recovery_kills + op_kills));
  CHECK(verdict.orphans == 0);
  CHECK(verdict.unknown == 0);
}
