// The daemon under a service manager: the sd_notify datagrams a systemd unit with Type=notify and
// WatchdogSec= relies on, received on a real AF_UNIX socket as systemd would receive them, from the
// real `ctagent run`; and the heartbeat's promise that a loop held by a handler stops beating
// (so the watchdog restarts a hung daemon instead of a helper thread keeping it looking alive).
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include "base/service_notify.hpp"
#include "agent/core/heartbeat.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A datagram socket bound to a path (or, with a name starting with '@', an abstract name), as
// systemd's notification socket is.
class NotifyListener {
 public:
  explicit NotifyListener(const std::string& name) : name_(name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(name.size() < sizeof(address.sun_path));
    std::memcpy(address.sun_path, name.data(), name.size());
    if (name[0] == '@') address.sun_path[0] = '\0';
    const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&address), length) == 0);
    timeval tv{0, 200 * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~NotifyListener() {
    ::close(fd_);
    if (name_[0] == '/') ::unlink(name_.c_str());
  }
  // Every datagram that arrives within `timeout`, until `enough` says stop (bounded either way).
  std::vector<std::string> Receive(std::chrono::milliseconds timeout,
                                   const std::function<bool(const std::vector<std::string>&)>& enough) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until && !enough(messages_)) {
      char buffer[4096];
      const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n > 0) messages_.emplace_back(buffer, static_cast<std::size_t>(n));
    }
    return messages_;
  }

 private:
  std::string name_;
  int fd_ = -1;
  std::vector<std::string> messages_;
};

std::size_t Count(const std::vector<std::string>& messages, const std::string& what) {
  std::size_t n = 0;
  for (const auto& m : messages) n += m == what ? 1 : 0;
  return n;
}

std::size_t IndexOf(const std::vector<std::string>& messages, const std::string& what) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (messages[i] == what) return i;
  }
  return messages.size();
}

struct ScopedEnv {
  ScopedEnv(const char* name, const std::string& value) : name_(name) { setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { unsetenv(name_); }
  const char* name_;
};

}  // namespace

TEST_CASE("ServiceNotifier sends each message as one datagram, to a path or an abstract socket", "[service]") {
  test::TempDir dir("notify");
  for (const std::string& name : {(dir.path() / "notify.sock").string(), "@ctagent-test-" + std::to_string(getpid())}) {
    NotifyListener listener(name);
    service::ServiceNotifier notifier(name, 0us);
    REQUIRE(notifier.enabled());
    notifier.Ready();
    notifier.Watchdog();
    notifier.SetStatus("backlog 3 scans\nREADY=1");  // a newline must not smuggle in a second assignment
    notifier.Stopping();
    const auto got = listener.Receive(5s, [](const auto& m) { return m.size() >= 4; });
    REQUIRE(got.size() == 4);
    CHECK(got[0] == "READY=1");
    CHECK(got[1] == "WATCHDOG=1");
    CHECK(got[2] == "STATUS=backlog 3 scans READY=1");
    CHECK(got[3] == "STOPPING=1");
  }
}

TEST_CASE("ServiceNotifier reads and clears the manager's environment", "[service]") {
  SECTION("no NOTIFY_SOCKET: every call is a no-op") {
    unsetenv("NOTIFY_SOCKET");
    const auto notifier = service::ServiceNotifier::FromEnvironment();
    CHECK_FALSE(notifier.enabled());
    CHECK(notifier.Send("READY=1").has_value());
  }
  SECTION("a watchdog for this process") {
    ScopedEnv socket("NOTIFY_SOCKET", "@ctagent-env-test");
    ScopedEnv usec("WATCHDOG_USEC", "30000000");
    ScopedEnv pid("WATCHDOG_PID", std::to_string(getpid()));
    const auto notifier = service::ServiceNotifier::FromEnvironment();
    CHECK(notifier.enabled());
    CHECK(notifier.watchdog_timeout() == 30s);
    // Children (the driver host) must not talk to the manager in the daemon's name.
    CHECK(std::getenv("NOTIFY_SOCKET") == nullptr);
    CHECK(std::getenv("WATCHDOG_USEC") == nullptr);
    CHECK(std::getenv("WATCHDOG_PID") == nullptr);
  }
  SECTION("a watchdog meant for another process is not ours") {
    ScopedEnv socket("NOTIFY_SOCKET", "@ctagent-env-test");
    ScopedEnv usec("WATCHDOG_USEC", "30000000");
    ScopedEnv pid("WATCHDOG_PID", std::to_string(getpid() + 1));
    CHECK(service::ServiceNotifier::FromEnvironment().watchdog_timeout() == 0us);
  }
  SECTION("a relative socket path is refused with the variable named") {
    service::ServiceNotifier notifier("relative.sock", 0us);
    const auto st = notifier.Send("READY=1");
    REQUIRE_FALSE(st.has_value());
    CHECK_THAT(st.error().message(), Catch::Contains("NOTIFY_SOCKET"));
  }
}

TEST_CASE("The heartbeat comes from the loop: a handler that holds the loop holds back the beats", "[service]") {
  boost::asio::io_context io;
  std::atomic<int> beats{0};
  std::thread::id beat_thread;
  std::mutex mutex;
  std::condition_variable cv;
  bool release = false;
  bool holding = false;
  int beats_when_held = -1;
  int beats_after_hold = -1;

  std::thread loop([&] {
    core::LoopHeartbeat heartbeat(io, {20ms, [&] {
                                         beat_thread = std::this_thread::get_id();
                                         ++beats;
                                       }});
    // After a few beats, one handler holds the loop until the test thread lets it go.
    boost::asio::steady_timer hold_after(io, 200ms);
    hold_after.async_wait([&](const boost::system::error_code&) {
      std::unique_lock lock(mutex);
      beats_when_held = beats;
      holding = true;
      cv.notify_all();
      cv.wait(lock, [&] { return release; });
    });
    boost::asio::steady_timer stop_after(io, 600ms);
    stop_after.async_wait([&](const boost::system::error_code&) {
      beats_after_hold = beats;
      io.stop();
    });
    io.run();
  });
  {
    std::unique_lock lock(mutex);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return holding; }));
  }
  // Held for ten beat periods: a thread beating beside the loop would beat about ten times here.
  std::this_thread::sleep_for(200ms);
  const int during_hold = beats - beats_when_held;
  {
    std::lock_guard lock(mutex);
    release = true;
  }
  cv.notify_all();
  const auto loop_thread = loop.get_id();
  loop.join();
  CHECK(beats_when_held >= 2);  // it beat before the hold (the first beat comes at once)
  CHECK(during_hold == 0);
  CHECK(beats_after_hold > beats_when_held);  // and beats again once the loop is free
  CHECK(beat_thread == loop_thread);
}

TEST_CASE("ThrottledBeat beats at most once per period", "[service]") {
  int beats = 0;
  core::ThrottledBeat beat({1h, [&] { ++beats; }});
  for (int i = 0; i < 1000; ++i) beat();
  CHECK(beats == 1);
  core::ThrottledBeat off({0ms, [&] { ++beats; }});
  off();
  CHECK(beats == 1);
}

namespace {

// A daemon configuration with its spool in `dir` and a cloud that is not there (a closed port on
// loopback): uploads fail and are retried, and what was scanned stays in the spool.
fs::path WriteServiceConfig(const fs::path& dir) {
  const nlohmann::json cfg = {
      {"terminal_id", "service-test"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      // A small axial scan: 120 views of 4 x 64 samples.
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", 120}, {"rotations", 1}, {"rows", 4}, {"channels", 64},
        {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"real_time", false}}},
      {"spool", {{"directory", (dir / "spool").string()}, {"min_free_bytes", 0}}},
      {"cloud", {{"upload_url", "https://127.0.0.1:9/files/"}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
  const fs::path path = dir / "ctagent.json";
  std::ofstream(path) << cfg.dump(2);
  return path;
}


}  // namespace

TEST_CASE("ctagent run speaks sd_notify: READY, watchdog beats, status, STOPPING on SIGTERM", "[service]") {
  test::TempDir dir("service-run");
  // An empty spool: the daemon starts, finds nothing to do and idles, which is when most of a
  // service's life is spent.
  const fs::path cfg_path = WriteServiceConfig(dir.path());
  const std::string socket_path = (dir.path() / "notify.sock").string();
  NotifyListener listener(socket_path);
  const fs::path log = dir.path() / "agent.log";
  std::unique_ptr<test::ChildProcess> agent;
  {
    // 400 ms watchdog: the daemon must beat every 200 ms.
    ScopedEnv socket("NOTIFY_SOCKET", socket_path);
    ScopedEnv usec("WATCHDOG_USEC", "400000");
    agent = std::make_unique<test::ChildProcess>(
        std::vector<std::string>{test::CtagentBinary(), "run", "--config", cfg_path.string()}, log);
  }
  auto got = listener.Receive(60s, [](const auto& m) { return Count(m, "WATCHDOG=1") >= 5; });
  INFO(test::ReadText(log));
  REQUIRE(Count(got, "READY=1") == 1);
  REQUIRE(Count(got, "WATCHDOG=1") >= 5);
  CHECK(IndexOf(got, "READY=1") < got.size());
  bool idle_status = false;
  for (const auto& m : got) idle_status |= m.rfind("STATUS=idle", 0) == 0;
  CHECK(idle_status);
  CHECK_THAT(test::ReadText(log), Catch::Contains("watchdog every 200 ms"));

  agent->Kill(SIGTERM);
  got = listener.Receive(20s, [](const auto& m) { return Count(m, "STOPPING=1") >= 1; });
  CHECK(Count(got, "STOPPING=1") == 1);
  CHECK(agent->Wait(20s) == 0);
}

// (No ';' in the name: ctest splits a discovered name there and ran nothing of this case.)
TEST_CASE("Stopped by SIGTERM with a scan still pending, the daemon exits 0, and run --once still says 1",
          "[service]") {
  // systemd marks a unit failed when its main process exits non-zero on `systemctl stop`; a scan
  // waiting for an unreachable cloud is the daemon's normal work, not a failure of the service.
  test::TempDir dir("service-stop");
  const fs::path cfg_path = WriteServiceConfig(dir.path());
  const fs::path log = dir.path() / "agent.log";
  {
    // Acquired and durable in the spool; its upload, which cannot go anywhere, is cut short.
    test::ChildProcess scan({test::CtagentBinary(), "scan", "--config", cfg_path.string(), "--no-results", "--quiet"}, log);
    REQUIRE(test::WaitFor([&] { return test::ReadText(log).find("made durable") != std::string::npos; }, 120s));
    scan.Kill(SIGTERM);
    REQUIRE(scan.Wait(30s) == 1);
  }
  for (const bool once : {false, true}) {
    const std::string socket_path = (dir.path() / (once ? "notify-once.sock" : "notify.sock")).string();
    NotifyListener listener(socket_path);
    std::unique_ptr<test::ChildProcess> agent;
    {
      ScopedEnv socket("NOTIFY_SOCKET", socket_path);
      std::vector<std::string> argv{test::CtagentBinary(), "run", "--config", cfg_path.string()};
      if (once) argv.push_back("--once");
      agent = std::make_unique<test::ChildProcess>(argv, log);
    }
    // Ready means the pass has the spool and is retrying the pending scan's upload.
    const auto got = listener.Receive(60s, [](const auto& m) { return Count(m, "READY=1") >= 1; });
    INFO(test::ReadText(log));
    REQUIRE(Count(got, "READY=1") == 1);
    agent->Kill(SIGTERM);
    CHECK(agent->Wait(30s) == (once ? 1 : 0));
  }
}
