// The process-kill soak: the real ctagent binary scans and uploads to the real tus server while
// the test SIGKILLs it (during acquisition, during uploads, during recovery, and, when the build
// has the hook, right before its N-th mutating file operation) and SIGKILLs and restarts the tus
// server in place. The real reconstruction worker watches the tus store throughout and stores in
// a real Orthanc (started once); it is SIGKILLed while decoding, reconstructing, writing its
// slices or storing them (timed from a calibrated undisturbed run), and right before its N-th
// file operation, then restarted. At the end `ctagent run --once` finishes the backlog, every
// scan the spool accepted must be on the server bit-exact, once, with nothing orphaned in the
// spool, and reconstructed exactly once (one complete series in Orthanc, from input whose
// SHA-256s equal the spool's), or refused with a reason when too few views were acquired.
//
// CTAGENT_SOAK_KILLS (default 24) sets the number of kills, CTAGENT_SOAK_SEED the random seed
// (default: from the clock; printed so a failing run can be repeated). scripts/soak runs >= 200.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdio>
#include <map>
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

TEST_CASE(
    "soak: SIGKILL of the agent, the tus server and the worker loses, corrupts, duplicates and reconstructs "
    "twice nothing",
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
#ifdef CTCLOUD_WORKER_PATH
  // Orthanc takes seconds to start: once per soak. The worker runs from the first scan on.
  OrthancPeer orthanc(pki, work.path() / "orthanc", logs / "orthanc.log");
  orthanc.Start();
  auto worker = std::make_unique<WorkerPeer>(CTCLOUD_WORKER_PATH, store, work.path() / "worker", pki, orthanc,
                                             logs / "worker.log");
  auto orthanc_ref = [&]() -> OrthancPeer& { return orthanc; };
#else
  std::unique_ptr<WorkerPeer> worker;  // this build has no cloud worker (CTAGENT_BUILD_CLOUD=OFF)
  std::unique_ptr<OrthancPeer> no_orthanc;
  auto orthanc_ref = [&]() -> OrthancPeer& { return *no_orthanc; };  // never called without a worker
#endif

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

  // Worker calibration: the undisturbed worker on that scan gives where each of its phases falls
  // after a start (start-up and hashing, decode, reconstruct, write slices, store in Orthanc).
  std::array<double, 4> phase_start_ms{}, phase_ms{};
  std::size_t expected_instances = 0;
  if (worker) {
    const auto scans = ManifestScans(store);
    REQUIRE(scans.size() == 1);
    const std::string uid = *scans.begin();
    t0 = std::chrono::steady_clock::now();
    worker->Start();
    REQUIRE(test::WaitFor([&] { return WorkerFinished(worker->work(), uid); }, 180s));
    const double total_ms = MsSince(t0);
    const auto done = nlohmann::json::parse(test::ReadText(worker->work() / "done" / (uid + ".json")), nullptr, false);
    REQUIRE(done.is_object());
    const auto t = done.value("timings_ms", nlohmann::json::object());
    phase_ms = {t.value("decode", 0.0), t.value("reconstruct", 0.0), t.value("dicom", 0.0), t.value("store", 0.0)};
    double at = std::max(0.0, total_ms - (phase_ms[0] + phase_ms[1] + phase_ms[2] + phase_ms[3]));
    for (std::size_t i = 0; i < phase_ms.size(); ++i) {
      phase_start_ms[i] = at;
      at += phase_ms[i];
    }
    std::printf("soak: the undisturbed worker takes %.0f ms from its start (decode %.0f, reconstruct %.0f, "
                "write %.0f, store %.0f ms, starting at %.0f ms)\n",
                total_ms, phase_ms[0], phase_ms[1], phase_ms[2], phase_ms[3], phase_start_ms[0]);
    // Every soak scan has this protocol, so this series' size is the expected one.
    const auto series = SeriesOfScan(orthanc_ref(), uid);
    REQUIRE(series.size() == 1);
    expected_instances = series.front();
    REQUIRE(expected_instances == done.value("instance_count", std::size_t{0}));
    REQUIRE(expected_instances >= 2);
    // The two states a kill can leave after the first instance reached Orthanc, made exactly:
    // (a) all stored, the done marker not yet written: the restarted worker stores again;
    // (b) the work directory lost: it reconstructs again. Either way Orthanc must still hold one
    // series of the same instances (UIDs derived from the scan UID, not minted per run).
    worker->Stop();
    const std::string series_uid = done.value("series_uid", "");
    fs::remove(worker->work() / "done" / (uid + ".json"));
    REQUIRE(worker->RunOnce(180s) == 0);
    const auto after_store_again = SeriesOfScan(orthanc_ref(), uid);
    CHECK(after_store_again == std::vector<std::size_t>{expected_instances});
    fs::remove(worker->work() / "done" / (uid + ".json"));
    fs::remove_all(worker->work() / "series" / uid);
    REQUIRE(worker->RunOnce(180s) == 0);
    const auto after_recon_again = SeriesOfScan(orthanc_ref(), uid);
    CHECK(after_recon_again == std::vector<std::size_t>{expected_instances});
    const auto again = nlohmann::json::parse(test::ReadText(worker->work() / "done" / (uid + ".json")), nullptr, false);
    CHECK(again.value("series_uid", "") == series_uid);
    std::printf("soak: one series of %zu instances; stored again without its done marker: %zu series; "
                "reconstructed again without its work directory: %zu series\n",
                expected_instances, after_store_again.size(), after_recon_again.size());
  } else {
    std::printf("soak: no cloud worker in this build (CTAGENT_BUILD_CLOUD=OFF): the worker is not killed\n");
  }

  std::uint64_t kills = 0, agent_kills = 0, recovery_kills = 0, op_kills = 0, server_kills = 0;
  std::uint64_t worker_kills = 0, worker_op_kills = 0;
  std::map<std::string, std::uint64_t> worker_kill_phases;  // where each worker kill left the scan it worked on
  std::size_t partial_series_seen = 0;                      // partial series visible right after a worker kill
  std::vector<std::string> visible_problems;
  // After a worker kill: what it left of `uid`, and what Orthanc shows (never more instances than a
  // series announces, so a partial series cannot pass for a final one).
  auto after_worker_kill = [&](const std::string& uid) {
    ++worker_kill_phases[ToString(PhaseOf(worker->work(), uid))];
    for (auto& p : CheckVisibleSeries(orthanc_ref(), &partial_series_seen)) visible_problems.push_back(p);
  };
  // Runs one undisturbed scan with the worker stopped; the new scan's UID ("" if none arrived).
  auto scan_for_worker = [&](const std::vector<std::string>& scan_args) {
    worker->Stop();
    const auto before = ManifestScans(store);
    REQUIRE(RunCtagent(scan_args, agent_log, 180s) != -1);
    for (const auto& uid : ManifestScans(store)) {
      if (!before.count(uid)) return uid;
    }
    return std::string();
  };
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
    // 0-3: agent and tus server; 4: agent at a file op (hook); 5-6: the worker (if built).
    std::vector<int> actions{0, 1, 2, 3};
    if (kill_at_op) actions.push_back(4);
    if (worker) actions.insert(actions.end(), {5, 6});
    const int action = actions[std::uniform_int_distribution<std::size_t>(0, actions.size() - 1)(rng)];
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
      case 5: {  // the worker at a random moment of one phase of a fresh scan, then restarted
        const std::string uid = scan_for_worker(scan);
        if (uid.empty()) break;
        const std::size_t phase = std::uniform_int_distribution<std::size_t>(0, phase_ms.size() - 1)(rng);
        const double at_ms = phase_start_ms[phase] + std::uniform_real_distribution<double>(0, phase_ms[phase])(rng);
        worker->Start();
        std::this_thread::sleep_for(std::chrono::microseconds(static_cast<std::int64_t>(at_ms * 1000)));
        if (worker->Kill()) {
          ++kills, ++worker_kills;
          after_worker_kill(uid);
        }
        break;
      }
      case 6: {  // the worker right before its N-th mutating file operation (slices, series.json, marker)
        const std::string uid = scan_for_worker(scan);
        if (uid.empty()) break;
        const auto n = std::uniform_int_distribution<int>(1, 40)(rng);
        int code = 0;
        {
          ScopedEnv env("CTAGENT_FAULT_KILL_AT_OP", std::to_string(n));
          code = worker->RunOnce(180s);
        }
        REQUIRE(code != -1);
        if (code == 128 + SIGKILL) {
          ++kills, ++worker_kills, ++worker_op_kills;
          after_worker_kill(uid);
        }
        break;
      }
      default:
        break;
    }
    if (worker) worker->Start();
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
  // The worker, undisturbed now, finishes every scan (bounded); then Orthanc is compared.
  ReconVerdict recon;
  std::size_t partial_at_end = 0;
  if (worker) {
    worker->Start();
    const bool finished = test::WaitFor(
        [&] {
          return std::all_of(verdict.cloud_scans.begin(), verdict.cloud_scans.end(),
                             [&](const CloudScan& c) { return WorkerFinished(worker->work(), c.scan_uid); });
        },
        std::chrono::milliseconds(60000 + 3000 * static_cast<std::int64_t>(verdict.cloud_scans.size())));
    if (!finished) std::printf("soak: PROBLEM the worker did not finish every scan in time\n");
    worker->Stop();
    recon = VerifyReconstruction(verdict.cloud_scans, worker->work(), orthanc_ref(), expected_instances);
    for (auto& p : CheckVisibleSeries(orthanc_ref(), &partial_at_end)) visible_problems.push_back(p);
    for (const auto& p : recon.problems) std::printf("soak: PROBLEM %s\n", p.c_str());
    for (const auto& p : visible_problems) std::printf("soak: PROBLEM %s\n", p.c_str());
    std::string phases;
    for (const auto& [name, count] : worker_kill_phases) {
      phases += (phases.empty() ? "" : ", ") + name + " " + std::to_string(count);
    }
    std::printf("soak: worker kills %llu (%llu at a file op; the scan it worked on was left: %s); "
                "%zu partial series seen right after a kill, %zu at the end; %zu scans reconstructed once "
                "(%zu instances in Orthanc), %zu refused (too few views), %zu missing, %zu with bad input, "
                "%zu unknown series\n",
                static_cast<unsigned long long>(worker_kills), static_cast<unsigned long long>(worker_op_kills),
                phases.empty() ? "-" : phases.c_str(), partial_series_seen, partial_at_end, recon.reconstructed,
                recon.instances, recon.refused, recon.missing, recon.bad_input, recon.unknown);
  }
  std::printf("soak: kills %llu (agent %llu, recovery %llu, at file op %llu, tus server %llu, worker %llu) in %llu iterations, "
              "%zu complete and %zu incomplete scans, %zu orphan files, %zu abandoned uploads, %zu re-sent copies, %.0f s\n",
              static_cast<unsigned long long>(kills), static_cast<unsigned long long>(agent_kills),
              static_cast<unsigned long long>(recovery_kills), static_cast<unsigned long long>(op_kills),
              static_cast<unsigned long long>(server_kills), static_cast<unsigned long long>(worker_kills),
              static_cast<unsigned long long>(iteration),
              verdict.complete_scans, verdict.incomplete_scans, verdict.orphans, verdict.abandoned_uploads,
              verdict.resent, MsSince(wall_start) / 1000.0);
  // The summary: "lost" and "corrupted" also count scans the worker should have reconstructed and
  // did not, or reconstructed from input that differs from the spool's.
  std::printf("kills %llu (agent %llu, recovery %llu, at file op %llu, tus server %llu, worker %llu), scans accepted "
              "%zu, lost %zu, corrupted %zu, duplicated %zu, reconstructed twice %zu\n",
              static_cast<unsigned long long>(kills), static_cast<unsigned long long>(agent_kills),
              static_cast<unsigned long long>(recovery_kills), static_cast<unsigned long long>(op_kills),
              static_cast<unsigned long long>(server_kills), static_cast<unsigned long long>(worker_kills),
              verdict.accepted, verdict.lost + recon.missing + recon.partial, verdict.corrupted + recon.bad_input,
              verdict.duplicated, recon.twice + recon.unknown);
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
  if (worker) {
    CHECK(recon.missing == 0);
    CHECK(recon.twice == 0);
    CHECK(recon.partial == 0);
    CHECK(recon.bad_input == 0);
    CHECK(recon.unknown == 0);
    CHECK(partial_at_end == 0);
    CHECK(visible_problems.empty());
    CHECK(recon.reconstructed + recon.refused == verdict.cloud_scans.size());
    CHECK(recon.reconstructed >= 1);
    // A soak of 14 kills or more has (by expectation) several worker kills; one is the least.
    if (target_kills >= 14) CHECK(worker_kills >= 1);
  }
}
