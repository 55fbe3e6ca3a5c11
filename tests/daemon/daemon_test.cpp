// The daemon's logic (agent/daemon) in process, with a fake process around it (daemon::
// Environment): it holds the spool, takes every scan the sim announces while the cloud is
// unreachable (the data stays safe in the spool), takes a scan asked for with TakeScan and refuses
// a second one while the detector is busy, reports its status, and exits 0 when stopped.
#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>

#include "agent/daemon/daemon.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A daemon configuration whose cloud is not there (a closed port on loopback).
config::AgentConfig DaemonConfig(const fs::path& dir, const nlohmann::json& driver_options) {
  const nlohmann::json scan = {{"geometry", "parallel"}, {"views_per_rotation", 60}, {"rotations", 1},
                               {"rows", 2}, {"channels", 32}, {"channel_pitch_mm", 8.0}, {"real_time", false}};
  const nlohmann::json cfg = {{"terminal_id", "daemon-test"},
                              {"driver", {{"name", "sim"}, {"options", driver_options}}},
                              {"scan", scan},
                              {"spool", {{"directory", (dir / "spool").string()}, {"min_free_bytes", 0}}},
                              {"cloud", {{"upload_url", "https://127.0.0.1:9/files/"}}},
                              {"control", {{"socket", (dir / "control.sock").string()}}},
                              {"results", {{"enabled", false}}},
                              {"console", {{"enabled", false}}}};
  const fs::path path = dir / "agent.json";
  std::ofstream(path) << cfg.dump(2);
  auto loaded = config::LoadConfig(path);
  REQUIRE(loaded);
  return *loaded;
}

// The process around the daemon, recorded for the assertions.
struct FakeProcess {
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::mutex mutex;
  std::vector<std::string> statuses;
  std::atomic<core::Agent*> agent{nullptr};

  daemon::Environment Env() {
    daemon::Environment env;
    env.stopped = [this] { return stop.load(); };
    env.take_yield_request = [] { return false; };
    env.sleep_for = [](std::chrono::milliseconds d) { std::this_thread::sleep_for(std::min(d, 50ms)); };
    env.attach = [this](core::Agent* a) {
      agent = a;
      if (a != nullptr && stop) a->RequestStop();
    };
    env.ready = [this] { ++ready; };
    env.set_status = [this](const std::string& s) {
      std::lock_guard lock(mutex);
      statuses.push_back(s);
    };
    env.spool_held_by_scan = [] { return false; };
    env.scan_ended = [](const core::ScanSummary&) {};
    env.describe_backlog = [](spool::Spool&) { return std::string(); };
    env.with_monitor = [](spool::Spool&, const std::function<void()>& body) { body(); };
    return env;
  }
  bool SawStatus(const std::string& prefix) {
    std::lock_guard lock(mutex);
    for (const auto& s : statuses) {
      if (s.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }
  void Stop() {
    stop = true;
    if (core::Agent* a = agent.load()) a->RequestStop();
  }
};

std::size_t ScansInSpool(const config::AgentConfig& cfg) {
  PosixFileStore files;
  core::Agent reader(cfg, files);
  if (!reader.Open(/*read_only=*/true)) return 0;
  std::size_t acquired = 0;
  for (const auto& r : reader.spool().AllScans()) {
    if (r.state == spool::ScanState::kAcquired && r.manifest_written) ++acquired;
  }
  return acquired;
}

}  // namespace

TEST_CASE("the daemon acquires every announced scan while uploads cannot go anywhere, and exits 0 when stopped",
          "[daemon]") {
  test::TempDir dir("daemon-announce");
  const nlohmann::json small = {{"geometry", "parallel"}, {"views_per_rotation", 60}, {"rows", 2}, {"channels", 32},
                                {"channel_pitch_mm", 8.0}};
  const auto cfg = DaemonConfig(
      dir.path(), {{"announce", {{"every_s", 0.2}, {"first_after_s", 0}, {"count", 3}, {"protocol", small}}}});
  FakeProcess process;
  auto env = process.Env();
  PosixFileStore files;
  daemon::Options options;
  options.config_path = dir.path() / "agent.json";
  int code = -1;
  std::thread daemon_thread([&] { code = daemon::Run(cfg, files, options, env); });
  // Bounded: three small scans 0.2 s apart.
  const bool all = test::WaitFor([&] { return ScansInSpool(cfg) == 3; }, 60s);
  const bool acquiring_seen = process.SawStatus("acquiring scan ");
  process.Stop();
  daemon_thread.join();
  CHECK(all);
  CHECK(code == 0);
  CHECK(process.ready == 1);
  CHECK(acquiring_seen);
}

TEST_CASE("the daemon takes a scan asked for, and refuses a second while the detector is busy", "[daemon]") {
  test::TempDir dir("daemon-take");
  // A paced scan (60 views over 3 s) keeps the detector busy long enough to ask again.
  auto cfg = DaemonConfig(dir.path(), nlohmann::json::object());
  cfg.protocol.real_time = true;
  cfg.protocol.rotation_time_s = 3.0;
  FakeProcess process;
  auto env = process.Env();
  PosixFileStore files;
  daemon::Options options;
  int code = -1;
  std::thread daemon_thread([&] { code = daemon::Run(cfg, files, options, env); });
  REQUIRE(test::WaitFor([&] { return process.ready.load() == 1; }, 30s));
  REQUIRE(test::WaitFor([&] { return process.agent.load() != nullptr; }, 30s));

  std::mutex mutex;
  std::vector<Expected<std::string>> answers;
  auto order = [&] {
    core::TakeScanOrder o;
    o.exam.accession_number = "A123";
    o.armed = [&](Expected<std::string> uid) {
      std::lock_guard lock(mutex);
      answers.push_back(std::move(uid));
    };
    return o;
  };
  process.agent.load()->TakeScan(order());
  REQUIRE(test::WaitFor(
      [&] {
        std::lock_guard lock(mutex);
        return !answers.empty();
      },
      30s));
  process.agent.load()->TakeScan(order());  // the first is being acquired (3 s)
  REQUIRE(test::WaitFor(
      [&] {
        std::lock_guard lock(mutex);
        return answers.size() == 2;
      },
      30s));
  {
    std::lock_guard lock(mutex);
    REQUIRE(answers[0]);
    CHECK(answers[0]->starts_with("2.25."));
    REQUIRE_FALSE(answers[1]);
    CHECK(answers[1].error().kind() == ErrorKind::kBusy);
    CHECK_THAT(answers[1].error().message(), Catch::Contains("acquiring another scan"));
  }
  CHECK(test::WaitFor([&] { return ScansInSpool(cfg) == 1; }, 60s));
  process.Stop();
  daemon_thread.join();
  CHECK(code == 0);
}
