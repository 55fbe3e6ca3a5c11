// Test support: start real peer processes (tus server, Orthanc, storescp, the agent) on
// loopback, wait for them bounded in time, and stop exactly what was started, by PID.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <random>
#include <memory>
#include <string>
#include <vector>

namespace ctagent::test {

// A child process; the destructor sends SIGTERM, waits up to 5 s, then SIGKILL.
class ChildProcess {
 public:
  // argv[0] is looked up in PATH. stdout and stderr go to `log_file` (appended).
  ChildProcess(std::vector<std::string> argv, const std::filesystem::path& log_file,
               const std::filesystem::path& working_dir = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();                 // not yet exited (reaps it if it has)
  void Kill(int signal);          // sends a signal to the process
  int Wait(std::chrono::milliseconds timeout);  // exit code, or -1 on timeout, 128+sig if signalled
  void Stop();                    // SIGTERM, bounded wait, SIGKILL

 private:
  pid_t pid_ = -1;
  int exit_code_ = -1;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
std::uint16_t FreeLoopbackPort();

// A TCP port free on every interface (bind to 0.0.0.0, port 0), for a peer that binds the
// wildcard address (Orthanc's own HTTP port). Not "a free port + 1": the kernel gives bind(0)
// odd ports and outgoing connections even ones, so the port after a free one is often a loopback
// client's (or a TIME_WAIT) port, and a wildcard bind on it fails with "address in use".
std::uint16_t FreeWildcardPort();

// A listening TCP socket (close-on-exec) on a free 127.0.0.1 port, written to *port; the caller
// closes it. Throws when the socket cannot be made.
int ListenOnLoopback(std::uint16_t* port, int backlog = 8);

// Polls `ready` every 50 ms until it returns true or `timeout` passes. Returns the last result.
bool WaitFor(const std::function<bool()>& ready, std::chrono::milliseconds timeout);

// True when something accepts TCP connections on 127.0.0.1:port.
bool PortAcceptsConnections(std::uint16_t port);

// A fresh directory under the build tree's test scratch area, removed by the destructor
// unless CTAGENT_KEEP_TEST_DIRS is set.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Makes (once per directory) the throwaway PKI of tests/support/make_pki.sh in `dir`.
void MakeTestPki(const std::filesystem::path& dir);

// Reads a whole file as text ("" if missing).
std::string ReadText(const std::filesystem::path& path);

// The built `ctagent`; the environment variable CTAGENT_TEST_BINARY names another one (e.g. a
// build from before a fix, to see a test fail there).
std::string CtagentBinary();

// Starts the reference tus server (cloud/tus-server/server.mjs) over HTTPS with the test PKI
// in `pki_dir`, storing uploads in `store_dir`; returns once it accepts connections.
struct TusServer {
  std::unique_ptr<ChildProcess> process;
  std::uint16_t port = 0;
  std::string endpoint;  // https://127.0.0.1:PORT/files/
};
TusServer StartTusServer(const std::filesystem::path& pki_dir, const std::filesystem::path& store_dir,
                         const std::filesystem::path& log_file, const std::string& cert_name = "server");
// The same with extra server.mjs options (e.g. {"--max-size", "1000"}, {"--http2"},
// {"--client-ca", ca}, {"--expiration-ms", "1500"}).
TusServer StartTusServer(const std::filesystem::path& pki_dir, const std::filesystem::path& store_dir,
                         const std::filesystem::path& log_file, const std::string& cert_name,
                         const std::vector<std::string>& extra_args);

// Deterministic test payload: `size` pseudo-random bytes from `seed` (incompressible, so a
// transfer cannot shortcut them).
inline std::vector<std::uint8_t> RandomBytes(std::size_t size, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint8_t> out(size);
  for (auto& b : out) b = static_cast<std::uint8_t>(rng());
  return out;
}

}  // namespace ctagent::test
