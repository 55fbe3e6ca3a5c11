#include "tests/support/process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace ctagent::test {

ChildProcess::ChildProcess(std::vector<std::string> argv, const std::filesystem::path& log_file,
                           const std::filesystem::path& working_dir) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  if (!working_dir.empty()) posix_spawn_file_actions_addchdir_np(&actions, working_dir.c_str());
  const int rc = posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::to_string(rc));
}

ChildProcess::~ChildProcess() { Stop(); }

bool ChildProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    pid_ = -1;
  }
  return false;
}

void ChildProcess::Kill(int signal) {
  if (pid_ > 0) ::kill(pid_, signal);
}

int ChildProcess::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_code_;
}

void ChildProcess::Stop() {
  if (!Running()) return;
  Kill(SIGTERM);
  if (Wait(std::chrono::seconds(5)) == -1) {
    Kill(SIGKILL);
    Wait(std::chrono::seconds(5));
  }
}

namespace {
std::uint16_t FreePortOn(std::uint32_t address) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("cannot make a TCP socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(address);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot bind a free TCP port");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}
}  // namespace

std::uint16_t FreeLoopbackPort() { return FreePortOn(INADDR_LOOPBACK); }

std::uint16_t FreeWildcardPort() { return FreePortOn(INADDR_ANY); }

int ListenOnLoopback(std::uint16_t* port, int backlog) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("cannot make a TCP socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, backlog) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("cannot listen on a loopback port");
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

bool WaitFor(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (ready()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

bool PortAcceptsConnections(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

TempDir::TempDir(const std::string& prefix) {
  const auto root = std::filesystem::path(CTAGENT_BINARY_DIR) / "test-scratch";
  std::filesystem::create_directories(root);
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = root / (prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 1000000));
    if (std::filesystem::create_directory(candidate)) {
      path_ = candidate;
      return;
    }
  }
  throw std::runtime_error("cannot create a scratch directory under " + root.string());
}

TempDir::~TempDir() {
  if (std::getenv("CTAGENT_KEEP_TEST_DIRS") != nullptr) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void MakeTestPki(const std::filesystem::path& dir) {
  // The PKI of a folder of this name, and the private keys, come from one pool per build tree
  // (make_pki.sh, CTAGENT_TEST_KEY_POOL).
  const std::string cmd = std::string("CTAGENT_TEST_KEY_POOL='") + CTAGENT_BINARY_DIR + "/test-key-pool' bash '" +
                          CTAGENT_SOURCE_DIR + "/tests/support/make_pki.sh' '" + dir.string() + "' >/dev/null";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("make_pki.sh failed for " + dir.string());
}

std::string ReadText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

TusServer StartTusServer(const std::filesystem::path& pki_dir, const std::filesystem::path& store_dir,
                         const std::filesystem::path& log_file, const std::string& cert_name) {
  return StartTusServer(pki_dir, store_dir, log_file, cert_name, {});
}

TusServer StartTusServer(const std::filesystem::path& pki_dir, const std::filesystem::path& store_dir,
                         const std::filesystem::path& log_file, const std::string& cert_name,
                         const std::vector<std::string>& extra_args) {
  TusServer server;
  const auto ready_file = store_dir.parent_path() / (store_dir.filename().string() + ".port");
  std::filesystem::remove(ready_file);
  const std::string script = std::string(CTAGENT_SOURCE_DIR) + "/cloud/tus-server/server.mjs";
  std::vector<std::string> argv{"node", script, "--port", "0", "--dir", store_dir.string(), "--cert",
                                (pki_dir / (cert_name + ".pem")).string(), "--key",
                                (pki_dir / (cert_name + ".key")).string(), "--ready-file", ready_file.string()};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  server.process = std::make_unique<ChildProcess>(argv, log_file);
  if (!WaitFor([&] { return !ReadText(ready_file).empty() || !server.process->Running(); },
               std::chrono::seconds(20)) ||
      ReadText(ready_file).empty()) {
    throw std::runtime_error("tus server did not start; see " + log_file.string() + ":\n" + ReadText(log_file));
  }
  server.port = static_cast<std::uint16_t>(std::stoi(ReadText(ready_file)));
  server.endpoint = "https://127.0.0.1:" + std::to_string(server.port) + "/files/";
  return server;
}

std::string CtagentBinary() {
  if (const char* other = std::getenv("CTAGENT_TEST_BINARY"); other != nullptr && *other != '\0') return other;
  return (std::filesystem::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string();
}

}  // namespace ctagent::test
