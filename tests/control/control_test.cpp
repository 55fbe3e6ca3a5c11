// The control socket's server (agent/control/control.hpp) on a real Unix socket, its io_context
// run by a thread of the test, answered by a fake daemon; the client is the CLI's Client or a raw
// socket when the test must send what the Client never would (another version, a huge line).
// Permissions: the test runs as root, so a child process drops to uid 65534 (nobody) to be
// refused, and to a member of the configured group to be let in.
#include <catch2/catch.hpp>

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "agent/control/control.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

// Answers like a daemon would, and records what it was asked.
class FakeDaemon : public control::Handler {
 public:
  void Status(control::Reply reply) override { reply(Json{{"source", "daemon"}, {"scans", Json::array()}}); }
  void Check(control::Reply reply) override {
    ++checks;
    if (hold_check) {  // answered when the test says so
      std::lock_guard lock(held_mutex);
      held = std::move(reply);
      return;
    }
    // Later and from another thread, as a daemon's worker pool would.
    workers.emplace_back([reply = std::move(reply)] {
      std::this_thread::sleep_for(100ms);
      reply(Json{{"verdict", "ok"}, {"failures", 0}, {"warnings", 0}, {"checks", Json::array()}});
    });
  }
  void TakeScan(const control::TakeScanRequest& request, control::Reply reply) override {
    last_take = request;
    reply(Json{{"scan_uid", "2.25.42"}});
  }
  void Acknowledge(const std::string& scan_uid, control::Reply reply) override {
    if (scan_uid != "2.25.42") return reply(MakeError(ErrorKind::kNotFound, "no scan " + scan_uid + " in the spool"));
    reply(Json{{"scan_uid", scan_uid}, {"state", "failed"}});
  }
  void Confirm(const std::string& scan_uid, const std::string& by, control::Reply reply) override {
    last_confirmed_by = by;
    reply(Json{{"scan_uid", scan_uid}, {"high_risk_confirmed_utc", "2026-12-05T10:00:00Z"}, {"high_risk_confirmed_by", by}});
  }
  void Pause(control::Reply reply) override {
    paused = true;
    reply(Json{{"paused", true}});
  }
  void Resume(control::Reply reply) override {
    paused = false;
    reply(Json{{"paused", false}});
  }
  ~FakeDaemon() override {
    for (auto& t : workers) t.join();
  }

  std::atomic<bool> paused{false};
  std::atomic<int> checks{0};
  std::atomic<bool> hold_check{false};
  std::mutex held_mutex;
  control::Reply held;
  std::optional<control::TakeScanRequest> last_take;
  std::string last_confirmed_by = "(not asked)";
  std::vector<std::thread> workers;
};

// A server on `settings.socket_path` served by an io_context on a thread of its own.
class Harness {
 public:
  explicit Harness(control::ServerSettings settings) : work_(io_.get_executor()) {
    auto server = control::Server::Open(io_, settings, daemon);
    if (!server) FAIL(server.error().message());
    server_ = std::move(*server);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Harness() {
    // The server is closed on its loop, then the loop ends.
    boost::asio::post(io_, [this] { server_.reset(); });
    work_.reset();
    thread_.join();
  }
  std::size_t OpenConnections() {
    std::promise<std::size_t> count;
    boost::asio::post(io_, [&] { count.set_value(server_->open_connections()); });
    return count.get_future().get();
  }

  FakeDaemon daemon;

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<control::Server> server_;
  std::thread thread_;
};

// A raw connection for what the Client never sends.
int RawConnect(const fs::path& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.string().size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.string().size());
  REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
  return fd;
}

void SendAll(int fd, const std::string& bytes) {
  for (std::size_t sent = 0; sent < bytes.size();) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;  // the server may close mid-way (an over-long request)
    sent += static_cast<std::size_t>(n);
  }
}

// The next line from `fd`, or "" at end of stream; at most 10 s.
std::string ReadLine(int fd) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char c = 0;
    const ssize_t n = ::recv(fd, &c, 1, 0);
    if (n <= 0) return line;
    if (c == '\n') return line;
    line.push_back(c);
  }
  FAIL("no line from the server within 10 s");
  return line;
}

// True when the server closed `fd` within 10 s.
bool ClosedByServer(int fd) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[256];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
  }
  return false;
}

control::ServerSettings SettingsIn(const fs::path& dir) {
  control::ServerSettings s;
  s.socket_path = dir / "control.sock";
  return s;
}

// A directory everybody may enter (for the unprivileged child), under /tmp.
struct OpenDir {
  OpenDir() {
    char name[] = "/tmp/ctagent-control-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
    fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec);
  }
  ~OpenDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path path;
};

// Runs `status` over the socket as uid 65534 with primary group `gid` and no other group, in a
// child process. Returns the error kind's wire name, "ok", or "child failed".
std::string StatusAsNobody(const fs::path& socket, gid_t gid) {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipefd[0]);
    std::string answer = "child failed";
    if (::setgroups(0, nullptr) == 0 && ::setgid(gid) == 0 && ::setuid(65534) == 0) {
      auto client = control::Client::Connect(socket);
      if (!client) {
        answer = control::WireKind(client.error().kind());
      } else {
        auto result = client->Call("status", Json::object(), 5s);
        answer = result ? "ok" : control::WireKind(result.error().kind());
      }
    }
    (void)!::write(pipefd[1], answer.data(), answer.size());
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string answer;
  char buf[64];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) answer.append(buf, static_cast<std::size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return answer;
}

}  // namespace

TEST_CASE("every command is answered with the handler's result and the request's id", "[control]") {
  test::TempDir dir("control-commands");
  Harness h(SettingsIn(dir.path()));
  auto client = control::Client::Connect(dir.path() / "control.sock");
  REQUIRE(client.has_value());

  auto status = client->Call("status");
  REQUIRE(status.has_value());
  CHECK((*status)["source"] == "daemon");

  auto paused = client->Call("pause");
  REQUIRE(paused.has_value());
  CHECK((*paused)["paused"] == true);
  CHECK(h.daemon.paused);
  REQUIRE(client->Call("resume").has_value());
  CHECK_FALSE(h.daemon.paused);

  // Answered later, from another thread.
  auto check = client->Call("check");
  REQUIRE(check.has_value());
  CHECK((*check)["verdict"] == "ok");
  CHECK(h.daemon.checks == 1);

  auto taken = client->Call("take_scan", Json{{"accession_number", "ACC-7"}, {"protocol", {{"rotations", 2}}}});
  REQUIRE(taken.has_value());
  CHECK((*taken)["scan_uid"] == "2.25.42");
  REQUIRE(h.daemon.last_take.has_value());
  CHECK(h.daemon.last_take->accession_number == "ACC-7");
  CHECK_FALSE(h.daemon.last_take->procedure_step_id.has_value());
  CHECK((*h.daemon.last_take->protocol)["rotations"] == 2);
  CHECK_FALSE(h.daemon.last_take->emergency);
  REQUIRE(client->Call("take_scan", Json{{"emergency", true}}).has_value());
  CHECK(h.daemon.last_take->emergency);

  auto acknowledged = client->Call("acknowledge", Json{{"scan_uid", "2.25.42"}});
  REQUIRE(acknowledged.has_value());
  auto unknown_scan = client->Call("acknowledge", Json{{"scan_uid", "2.25.9"}});
  REQUIRE_FALSE(unknown_scan.has_value());
  CHECK(unknown_scan.error().kind() == ErrorKind::kNotFound);
  CHECK_THAT(unknown_scan.error().message(), Catch::Contains("no scan 2.25.9"));

  auto confirmed = client->Call("confirm", Json{{"scan_uid", "2.25.42"}, {"by", "Dr Li"}});
  REQUIRE(confirmed.has_value());
  CHECK((*confirmed)["high_risk_confirmed_by"] == "Dr Li");
  CHECK(h.daemon.last_confirmed_by == "Dr Li");
  REQUIRE(client->Call("confirm", Json{{"scan_uid", "2.25.42"}}).has_value());
  CHECK(h.daemon.last_confirmed_by.empty());  // the daemon's default applies
  for (const Json& bad : {Json{{"by", "Dr Li"}}, Json{{"scan_uid", ""}}, Json{{"scan_uid", "2.25.42"}, {"by", 7}},
                          Json{{"scan_uid", "2.25.42"}, {"by", std::string(65, 'x')}}}) {
    INFO(bad.dump());
    auto refused = client->Call("confirm", bad);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().kind() == ErrorKind::kInvalidInput);
  }

  // The raw line: version, id echoed, ok.
  const int fd = RawConnect(dir.path() / "control.sock");
  SendAll(fd, "{\"v\":1,\"id\":\"abc\",\"cmd\":\"status\"}\n");
  const Json response = Json::parse(ReadLine(fd));
  CHECK(response["v"] == 1);
  CHECK(response["id"] == "abc");
  CHECK(response["ok"] == true);
  CHECK(response["result"]["source"] == "daemon");
  ::close(fd);
}

TEST_CASE("an unknown version, an unknown command and malformed requests are clear errors", "[control]") {
  test::TempDir dir("control-errors");
  Harness h(SettingsIn(dir.path()));
  const int fd = RawConnect(dir.path() / "control.sock");

  SendAll(fd, "{\"v\":2,\"id\":1,\"cmd\":\"status\"}\n");
  Json r = Json::parse(ReadLine(fd));
  CHECK(r["ok"] == false);
  CHECK(r["id"] == 1);
  CHECK(r["error"]["kind"] == "unsupported");
  CHECK_THAT(r["error"]["message"].get<std::string>(), Catch::Contains("version 2 is not supported") &&
                                                           Catch::Contains("version 1"));

  SendAll(fd, "{\"v\":1,\"id\":2,\"cmd\":\"reboot\"}\n");
  r = Json::parse(ReadLine(fd));
  CHECK(r["error"]["kind"] == "unsupported");
  CHECK_THAT(r["error"]["message"].get<std::string>(), Catch::Contains("unknown command \"reboot\""));

  SendAll(fd, "this is not json\n");
  r = Json::parse(ReadLine(fd));
  CHECK(r["error"]["kind"] == "invalid_input");
  CHECK(r["id"].is_null());

  SendAll(fd, "{\"v\":1,\"id\":3,\"cmd\":\"acknowledge\"}\n");
  r = Json::parse(ReadLine(fd));
  CHECK(r["error"]["kind"] == "invalid_input");
  CHECK_THAT(r["error"]["message"].get<std::string>(), Catch::Contains("scan_uid"));

  SendAll(fd, "{\"v\":1,\"id\":4,\"cmd\":\"take_scan\",\"accession_number\":12}\n");
  r = Json::parse(ReadLine(fd));
  CHECK(r["error"]["kind"] == "invalid_input");
  SendAll(fd, "{\"v\":1,\"id\":4,\"cmd\":\"take_scan\",\"emergency\":\"yes\"}\n");
  r = Json::parse(ReadLine(fd));
  CHECK(r["error"]["kind"] == "invalid_input");
  CHECK_THAT(r["error"]["message"].get<std::string>(), Catch::Contains("emergency"));

  // After all that, the connection still serves.
  SendAll(fd, "{\"v\":1,\"id\":5,\"cmd\":\"status\"}\n");
  r = Json::parse(ReadLine(fd));
  CHECK(r["ok"] == true);
  CHECK(r["id"] == 5);
  ::close(fd);
}

TEST_CASE("a request longer than the limit is answered with an error and the connection closed", "[control]") {
  test::TempDir dir("control-long");
  auto settings = SettingsIn(dir.path());
  settings.max_request_bytes = 1024;
  Harness h(settings);
  const int fd = RawConnect(settings.socket_path);
  SendAll(fd, std::string(8192, 'x'));  // no newline ever
  const Json r = Json::parse(ReadLine(fd));
  CHECK(r["ok"] == false);
  CHECK(r["error"]["kind"] == "invalid_input");
  CHECK_THAT(r["error"]["message"].get<std::string>(), Catch::Contains("1024"));
  CHECK(ClosedByServer(fd));
  ::close(fd);

  // A long line that does end within the limit's reach is refused too.
  const int fd2 = RawConnect(settings.socket_path);
  SendAll(fd2, "{\"v\":1,\"id\":1,\"cmd\":\"status\",\"pad\":\"" + std::string(1500, 'y') + "\"}\n");
  CHECK(Json::parse(ReadLine(fd2))["error"]["kind"] == "invalid_input");
  CHECK(ClosedByServer(fd2));
  ::close(fd2);
}

TEST_CASE("connections beyond the limit are refused as busy, and idle ones are closed", "[control]") {
  test::TempDir dir("control-limits");
  auto settings = SettingsIn(dir.path());
  settings.max_connections = 2;
  settings.idle_timeout = 300ms;
  Harness h(settings);

  SECTION("a third connection gets busy") {
    auto a = control::Client::Connect(settings.socket_path);
    auto b = control::Client::Connect(settings.socket_path);
    REQUIRE(a.has_value());
    REQUIRE(b.has_value());
    REQUIRE(a->Call("status").has_value());
    REQUIRE(b->Call("status").has_value());
    auto c = control::Client::Connect(settings.socket_path);
    REQUIRE(c.has_value());  // the kernel accepts; the server answers
    auto refused = c->Call("status");
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().kind() == ErrorKind::kBusy);
    CHECK_THAT(refused.error().message(), Catch::Contains("2 control connections"));
  }

  SECTION("a silent connection is closed after the idle timeout") {
    const int idle = RawConnect(settings.socket_path);
    CHECK(ClosedByServer(idle));
    ::close(idle);
    CHECK(test::WaitFor([&] { return h.OpenConnections() == 0; }, 5s));
  }
}

TEST_CASE("the socket file has mode 0660 and the configured group, and refuses a user outside it", "[control]") {
  if (::geteuid() != 0) {
    std::printf("SKIPPED: needs root to act as another user\n");
    return;
  }
  OpenDir dir;
  const group* daemon_group = ::getgrnam("daemon");
  REQUIRE(daemon_group != nullptr);
  const gid_t member_gid = daemon_group->gr_gid;
  const group* nogroup = ::getgrnam("nogroup");
  REQUIRE(nogroup != nullptr);
  const gid_t outsider_gid = nogroup->gr_gid;

  control::ServerSettings settings;
  settings.socket_path = dir.path / "control.sock";
  settings.group = "daemon";

  SECTION("mode 0660: the file system keeps the outsider out, the group's member comes in") {
    Harness h(settings);
    struct stat st {};
    REQUIRE(::lstat(settings.socket_path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 07777) == 0660);
    CHECK(st.st_gid == member_gid);
    CHECK(StatusAsNobody(settings.socket_path, outsider_gid) == "permission");
    CHECK(StatusAsNobody(settings.socket_path, member_gid) == "ok");
  }

  SECTION("with the file open to all, the server's own peer check still refuses the outsider") {
    settings.mode = 0666;
    Harness h(settings);
    CHECK(StatusAsNobody(settings.socket_path, outsider_gid) == "permission");
    CHECK(StatusAsNobody(settings.socket_path, member_gid) == "ok");
  }

  SECTION("with no group configured, only root and the daemon's user") {
    settings.group.clear();
    settings.mode = 0666;
    Harness h(settings);
    CHECK(StatusAsNobody(settings.socket_path, member_gid) == "permission");
  }
}

TEST_CASE("the socket path: a long one works, a live daemon's is not taken, a stale one is replaced", "[control]") {
  test::TempDir dir("control-path");
  FakeDaemon daemon;
  boost::asio::io_context io;

  SECTION("a path longer than a Unix socket allows") {
    const fs::path deep = dir.path() / std::string(60, 'd') / std::string(60, 'e');
    fs::create_directories(deep);
    control::ServerSettings settings;
    settings.socket_path = deep / "control.sock";
    REQUIRE(settings.socket_path.string().size() > 108);
    Harness h(settings);
    auto client = control::Client::Connect(settings.socket_path);
    REQUIRE(client.has_value());
    CHECK(client->Call("status").has_value());
  }

  SECTION("another server on the same path is busy; after it closes, a new one starts") {
    auto settings = SettingsIn(dir.path());
    {
      Harness first(settings);
      auto second = control::Server::Open(io, settings, daemon);
      REQUIRE_FALSE(second.has_value());
      CHECK(second.error().kind() == ErrorKind::kBusy);
    }
    CHECK_FALSE(fs::exists(settings.socket_path));  // removed on close
    // A socket file nobody listens on (a daemon killed with SIGKILL leaves one).
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, settings.socket_path.c_str(), settings.socket_path.string().size());
    REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
    ::close(fd);
    REQUIRE(fs::exists(settings.socket_path));
    auto stale = control::Client::Connect(settings.socket_path);
    REQUIRE_FALSE(stale.has_value());
    CHECK(stale.error().kind() == ErrorKind::kNetwork);
    Harness replaced(settings);
    CHECK(control::Client::Connect(settings.socket_path).has_value());
  }

  SECTION("a regular file at the path is not deleted") {
    auto settings = SettingsIn(dir.path());
    std::ofstream(settings.socket_path) << "precious";
    auto server = control::Server::Open(io, settings, daemon);
    REQUIRE_FALSE(server.has_value());
    CHECK_THAT(server.error().message(), Catch::Contains("is not a socket"));
    CHECK(test::ReadText(settings.socket_path) == "precious");
  }

  SECTION("no socket: the client says there is no daemon") {
    auto client = control::Client::Connect(dir.path() / "none.sock");
    REQUIRE_FALSE(client.has_value());
    CHECK(client.error().kind() == ErrorKind::kNotFound);
  }

  SECTION("a group that does not exist is a configuration error") {
    auto settings = SettingsIn(dir.path());
    settings.group = "no-such-group-ctagent";
    auto server = control::Server::Open(io, settings, daemon);
    REQUIRE_FALSE(server.has_value());
    CHECK(server.error().kind() == ErrorKind::kInvalidInput);
    CHECK_THAT(server.error().message(), Catch::Contains("no-such-group-ctagent"));
  }
}

TEST_CASE("an answer that comes after its client left is dropped, and the server goes on", "[control]") {
  test::TempDir dir("control-late");
  Harness h(SettingsIn(dir.path()));
  h.daemon.hold_check = true;
  {
    auto client = control::Client::Connect(dir.path() / "control.sock");
    REQUIRE(client.has_value());
    auto check = client->Call("check", Json::object(), 300ms);
    REQUIRE_FALSE(check.has_value());
    CHECK(check.error().kind() == ErrorKind::kNetwork);  // no answer in time
  }  // the client leaves
  REQUIRE(test::WaitFor([&] { return h.OpenConnections() == 0; }, 5s));
  control::Reply late;
  {
    std::lock_guard lock(h.daemon.held_mutex);
    late = std::move(h.daemon.held);
  }
  REQUIRE(late);
  late(Json{{"verdict", "ok"}});  // from this thread, to a connection that is gone
  late(Json{{"verdict", "twice"}});  // a second call is ignored
  auto client = control::Client::Connect(dir.path() / "control.sock");
  REQUIRE(client.has_value());
  auto status = client->Call("status");
  REQUIRE(status.has_value());
  CHECK((*status)["source"] == "daemon");
}
