// Local misuse of the command line (issue 18): `chunk decode --out` writes only a new file or over
// a regular file and never through a symbolic link or into a device, FIFO or directory; `chunk
// inspect|verify|decode` refuse inputs that are not regular files (a FIFO must not block them);
// a command without a signal watcher ends on SIGTERM/SIGINT whatever it waits on; and `status`
// never says the cloud confirmed everything while the spool holds a failed scan.
//
// Device nodes: as root, the old `--out` replaced a device node with a regular file, so the
// tests use device nodes made in their own directory (mknod) when they run as root, and the
// real /dev/null and /dev/full otherwise (which a non-root process cannot replace).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/chunk.hpp"
#include "base/durable_file.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct CtagentRun {
  int exit_code = -1;  // -1: still running after the wait (then stopped)
  std::string output;  // stdout and stderr
};

// Runs ctagent with `args`, waiting at most `timeout` (a command that blocks is then stopped:
// SIGTERM, then SIGKILL, by the ChildProcess destructor).
CtagentRun Ctagent(const fs::path& dir, const std::vector<std::string>& args, std::chrono::milliseconds timeout = 30s) {
  static int serial = 0;
  const fs::path log = dir / ("ctagent-" + std::to_string(++serial) + ".log");
  std::vector<std::string> argv{test::CtagentBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  CtagentRun run;
  {
    test::ChildProcess child(argv, log);
    run.exit_code = child.Wait(timeout);
  }
  run.output = test::ReadText(log);
  return run;
}

// A small valid chunk: 3 views of 2 x 8 uint16 samples.
std::vector<std::uint8_t> WriteChunk(const fs::path& path) {
  codec::ChunkInfo info;
  info.scan_uid = "2.25.1801";
  info.chunk_index = 0;
  info.rows = 2;
  info.channels = 8;
  info.sample_type = drivers::SampleType::kUint16;
  info.descriptor = {{"geometry", "parallel"}};
  for (std::uint32_t v = 0; v < 3; ++v) info.views.push_back({v, 1.0 * v, 0.0, 1000 * static_cast<std::int64_t>(v), 0});
  const auto samples = test::RandomBytes(3 * 2 * 8 * 2, 18);
  auto encoded = codec::EncodeChunk(info, samples, {});
  REQUIRE(encoded.has_value());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(encoded->data()),
                                               static_cast<std::streamsize>(encoded->size()));
  return samples;
}

std::string ReadBytes(const fs::path& path) { return test::ReadText(path); }

// A character device like /dev/null (1,3) or /dev/full (1,7): made in `dir` as root, the real
// one otherwise.
fs::path CharDevice(const fs::path& dir, const std::string& name, unsigned minor) {
  if (::geteuid() != 0) return fs::path("/dev") / name;
  const fs::path node = dir / name;
  REQUIRE(::mknod(node.c_str(), S_IFCHR | 0666, makedev(1, minor)) == 0);
  return node;
}

bool IsCharDevice(const fs::path& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

// Names in `dir` that start with `prefix` (leftover temporary files).
std::vector<std::string> NamesStartingWith(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) names.push_back(name);
  }
  return names;
}

}  // namespace

TEST_CASE("chunk decode --out writes a new file or replaces a regular one", "[cli]") {
  test::TempDir dir("cli-decode");
  const fs::path chunk = dir.path() / "c.chunk";
  const auto samples = WriteChunk(chunk);
  const std::string expected(samples.begin(), samples.end());

  const fs::path fresh = dir.path() / "new.raw";
  auto run = Ctagent(dir.path(), {"chunk", "decode", chunk.string(), "--out", fresh.string()});
  INFO(run.output);
  REQUIRE(run.exit_code == 0);
  CHECK(ReadBytes(fresh) == expected);

  const fs::path existing = dir.path() / "old.raw";
  std::ofstream(existing) << "previous contents, longer than the samples? no matter";
  run = Ctagent(dir.path(), {"chunk", "decode", chunk.string(), "--out", existing.string()});
  INFO(run.output);
  REQUIRE(run.exit_code == 0);
  CHECK(ReadBytes(existing) == expected);
  CHECK(NamesStartingWith(dir.path(), "new.raw.").empty());
  CHECK(NamesStartingWith(dir.path(), "old.raw.").empty());
}

TEST_CASE("chunk decode --out refuses symbolic links, devices, FIFOs and directories", "[cli]") {
  test::TempDir dir("cli-out");
  const fs::path chunk = dir.path() / "c.chunk";
  WriteChunk(chunk);
  const auto decode_to = [&](const fs::path& out) {
    return Ctagent(dir.path(), {"chunk", "decode", chunk.string(), "--out", out.string()});
  };

  SECTION("a symbolic link to a regular file: neither the link nor its target changes") {
    const fs::path victim = dir.path() / "victim.txt";
    std::ofstream(victim) << "precious";
    const fs::path link = dir.path() / "out.raw";
    fs::create_symlink(victim, link);
    const auto run = decode_to(link);
    INFO(run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(link.string() + " is a symbolic link"));
    CHECK(fs::is_symlink(link));
    CHECK(fs::read_symlink(link) == victim);
    CHECK(test::ReadText(victim) == "precious");
  }
  SECTION("a dangling symbolic link: its target is not created") {
    const fs::path target = dir.path() / "not-there";
    const fs::path link = dir.path() / "out.raw";
    fs::create_symlink(target, link);
    const auto run = decode_to(link);
    INFO(run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(link.string() + " is a symbolic link"));
    CHECK(fs::is_symlink(link));
    CHECK_FALSE(fs::exists(target));
  }
  SECTION("a symbolic link to a device") {
    const fs::path device = CharDevice(dir.path(), "null", 3);
    const fs::path link = dir.path() / "out.raw";
    fs::create_symlink(device, link);
    const auto run = decode_to(link);
    INFO(run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(link.string() + " is a symbolic link"));
    CHECK(fs::is_symlink(link));
    CHECK(IsCharDevice(device));
  }
  SECTION("device nodes like /dev/null and /dev/full stay device nodes") {
    for (const auto& [name, minor] : {std::pair<std::string, unsigned>{"null", 3}, {"full", 7}}) {
      const fs::path device = CharDevice(dir.path(), name, minor);
      const auto run = decode_to(device);
      INFO(run.output);
      CHECK(run.exit_code == 1);
      CHECK_THAT(run.output, Catch::Contains(device.string() + " is a character device, not a regular file"));
      CHECK(IsCharDevice(device));
    }
  }
  SECTION("a FIFO is neither written to nor replaced") {
    const fs::path fifo = dir.path() / "out.fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const auto run = decode_to(fifo);
    INFO(run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(fifo.string() + " is a FIFO (named pipe), not a regular file"));
    CHECK(fs::is_fifo(fifo));
  }
  SECTION("a directory") {
    const fs::path sub = dir.path() / "outdir";
    fs::create_directory(sub);
    const auto run = decode_to(sub);
    INFO(run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(sub.string() + " is a directory, not a regular file"));
    CHECK(fs::is_directory(sub));
    CHECK(fs::is_empty(sub));
  }
  SECTION("a symbolic link where a fixed temporary name would be is not written through") {
    // The old writer created "<out>.tmp" with O_CREAT | O_TRUNC, following a link placed there.
    const fs::path victim = dir.path() / "victim.txt";
    std::ofstream(victim) << "precious";
    const fs::path out = dir.path() / "out.raw";
    fs::create_symlink(victim, out.string() + ".tmp");
    const auto run = decode_to(out);
    INFO(run.output);
    CHECK(run.exit_code == 0);
    CHECK(test::ReadText(victim) == "precious");
    CHECK(fs::is_regular_file(fs::symlink_status(out)));
  }
}

TEST_CASE("chunk inspect, verify and decode refuse inputs that are not regular files, at once", "[cli]") {
  test::TempDir dir("cli-input");
  const fs::path fifo = dir.path() / "in.fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const fs::path sub = dir.path() / "indir";
  fs::create_directory(sub);
  const fs::path out = dir.path() / "out.raw";
  for (const std::string action : {"inspect", "verify", "decode"}) {
    const auto args = [&](const fs::path& input) {
      std::vector<std::string> a{"chunk", action, input.string()};
      if (action == "decode") a.insert(a.end(), {"--out", out.string()});
      return a;
    };
    // Nobody ever writes to the FIFO: a command that opened it for reading would wait forever
    // (it is stopped after 20 s, and the case fails).
    auto run = Ctagent(dir.path(), args(fifo), 20s);
    INFO(action << ": " << run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(fifo.string() + " is a FIFO (named pipe), not a regular file"));

    run = Ctagent(dir.path(), args(sub));
    INFO(action << ": " << run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains(sub.string() + " is a directory, not a regular file"));

    run = Ctagent(dir.path(), args("/dev/null"));
    INFO(action << ": " << run.output);
    CHECK(run.exit_code == 1);
    CHECK_THAT(run.output, Catch::Contains("/dev/null is a character device, not a regular file"));
    CHECK_FALSE(fs::exists(out));
  }
  // A symbolic link to a regular chunk file is an ordinary input.
  const fs::path chunk = dir.path() / "c.chunk";
  WriteChunk(chunk);
  const fs::path link = dir.path() / "link.chunk";
  fs::create_symlink(chunk, link);
  const auto run = Ctagent(dir.path(), {"chunk", "verify", link.string()});
  INFO(run.output);
  CHECK(run.exit_code == 0);
  CHECK_THAT(run.output, Catch::Contains(link.string() + ": OK"));
}

namespace {

// A TCP listener on loopback that accepts connections and never says a word.
class SilentServer {
 public:
  SilentServer() : fd_(test::ListenOnLoopback(&port_)) {
    // Accepted() polls: the listener must not block when nobody has connected yet.
    REQUIRE(::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK) == 0);
  }
  ~SilentServer() {
    for (int c : clients_) ::close(c);
    ::close(fd_);
  }
  std::uint16_t port() const { return port_; }
  // True once a client connected (kept open, unanswered).
  bool Accepted() {
    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c >= 0) clients_.push_back(c);
    return !clients_.empty();
  }

 private:
  std::uint16_t port_ = 0;  // before fd_: set by fd_'s initializer
  int fd_ = -1;
  std::vector<int> clients_;
};

}  // namespace

TEST_CASE("A command without a signal watcher ends on SIGTERM or SIGINT while it waits", "[cli]") {
  // `ctagent check` against a cloud that accepts the connection and never answers: with the
  // connect and stall timeouts at their 600 s maximum, only a signal ends it within the test.
  for (const int sig : {SIGTERM, SIGINT}) {
    test::TempDir dir("cli-signal");
    SilentServer server;
    const nlohmann::json cfg = {
        {"terminal_id", "cli-test"},
        {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
        {"scan",
         {{"geometry", "parallel"}, {"views_per_rotation", 120}, {"rotations", 1}, {"rows", 4}, {"channels", 64},
          {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"real_time", false}}},
        {"spool", {{"directory", (dir.path() / "spool").string()}, {"min_free_bytes", 0}}},
        {"cloud",
         {{"upload_url", "https://127.0.0.1:" + std::to_string(server.port()) + "/files/"},
          {"connect_timeout_s", 600},
          {"stall_timeout_s", 600}}},
        {"results", {{"enabled", false}}},
        {"console", {{"enabled", false}}}};
    const fs::path cfg_path = dir.path() / "ctagent.json";
    std::ofstream(cfg_path) << cfg.dump(2);
    const fs::path log = dir.path() / "check.log";
    test::ChildProcess check({test::CtagentBinary(), "check", "--config", cfg_path.string()}, log);
    const bool connected = test::WaitFor([&] { return server.Accepted() || !check.Running(); }, 60s);
    INFO(test::ReadText(log));
    REQUIRE(connected);
    REQUIRE(check.Running());  // waiting on the silent server
    check.Kill(sig);
    // Killed by the signal itself (default disposition), not ended later by some timeout.
    CHECK(check.Wait(30s) == 128 + sig);
  }
}

TEST_CASE("status reports a failed scan as failed and needing a person, never as confirmed by the cloud", "[cli]") {
  test::TempDir dir("cli-status-failed");
  const nlohmann::json cfg = {
      {"terminal_id", "cli-test"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", 120}, {"rotations", 1}, {"rows", 4}, {"channels", 64},
        {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"real_time", false}}},
      {"spool", {{"directory", (dir.path() / "spool").string()}, {"min_free_bytes", 0}}},
      {"cloud", {{"upload_url", "https://127.0.0.1:9/files/"}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
  const fs::path cfg_path = dir.path() / "ctagent.json";
  std::ofstream(cfg_path) << cfg.dump(2);

  // With nothing in the spool, everything in it is confirmed.
  auto empty = Ctagent(dir.path(), {"status", "--config", cfg_path.string()});
  INFO(empty.output);
  REQUIRE(empty.exit_code == 0);
  CHECK_THAT(empty.output, Catch::Contains("the cloud confirmed everything in the spool"));

  {
    // A scan marked failed, as the agent marks one the driver refused to arm: nothing of it was
    // uploaded, and the uploader leaves it to a person.
    PosixFileStore files;
    auto spool = spool::Spool::Open({dir.path() / "spool", 1ull << 30, 0}, files);
    REQUIRE(spool.has_value());
    spool::ScanRecord record;
    record.scan_uid = "2.25.1818";
    record.study_uid = "2.25.1819";
    record.created_utc = "2026-12-05T00:00:00Z";
    REQUIRE((*spool)->BeginScan(record, 0).has_value());
    REQUIRE((*spool)
                ->Update(record.scan_uid,
                         [](spool::ScanRecord& r) {
                           r.state = spool::ScanState::kFailed;
                           r.failure_reason = "the driver refused to arm: detector offline";
                         })
                .has_value());
  }
  auto failed = Ctagent(dir.path(), {"status", "--config", cfg_path.string()});
  INFO(failed.output);
  REQUIRE(failed.exit_code == 0);
  CHECK_THAT(failed.output, !Catch::Contains("confirmed everything"));
  CHECK_THAT(failed.output, Catch::Contains("1 scan(s) FAILED and need a person"));
  CHECK_THAT(failed.output, Catch::Contains("2.25.1818  failed") &&
                                Catch::Contains("reason: the driver refused to arm: detector offline"));
}
