// Durability harness: runs the real ctagent binary against the real tus server (HTTPS, loopback),
// kills either of them at chosen moments, and checks what reached the cloud against the spool.
//
// "Accepted scan": a scan the spool lists (Spool::AllScans) after the last recovery pass. Only an
// accepted scan can be lost, corrupted or duplicated; a scan killed before its record was
// durable was never accepted (the driver was not armed yet, see pipeline.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/common/durable_file.hpp"
#include "agent/spool/spool.hpp"
#include "tests/support/process.hpp"

namespace ctagent::test::durability {

namespace fs = std::filesystem;

// Environment variables set only for the children started while this object lives.
class ScopedEnv {
 public:
  explicit ScopedEnv(std::vector<std::pair<std::string, std::string>> vars);
  ScopedEnv(const std::string& name, const std::string& value)
      : ScopedEnv(std::vector<std::pair<std::string, std::string>>{{name, value}}) {}
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// The tus server on a fixed port and store, so it can be killed and restarted in place.
class TusPeer {
 public:
  // `cert_name`: which certificate of the test PKI the server presents (e.g. "wrong-host").
  TusPeer(fs::path pki, fs::path store, fs::path log, std::string cert_name = "server");
  void Start();      // on port() (chosen on the first start); returns once it accepts connections
  bool Kill();       // SIGKILL; true if it was running
  bool Running();
  std::uint16_t port() const { return port_; }
  std::string endpoint() const { return "https://127.0.0.1:" + std::to_string(port_) + "/files/"; }
  const fs::path& store() const { return store_; }

 private:
  fs::path pki_, store_, log_;
  std::string cert_name_;
  std::uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

// A small, fast scan (no pacing) uploaded to `upload_url`; results and console off.
nlohmann::json SmallScanConfig(const fs::path& spool_dir, const std::string& upload_url, const fs::path& ca_file,
                               std::uint64_t seed);
void WriteJson(const fs::path& path, const nlohmann::json& j);

std::string CtagentBinary();

// Runs `ctagent args...` to completion (bounded). Returns the exit code (-1: timed out, killed).
int RunCtagent(const std::vector<std::string>& args, const fs::path& log, std::chrono::milliseconds timeout);

// One upload in the tus file store (DIR/<id> data, DIR/<id>.json info).
struct StoredUpload {
  std::string id;
  fs::path data;
  nlohmann::json metadata;
  std::uint64_t size = 0;
  std::uint64_t stored_bytes = 0;
  bool complete() const { return stored_bytes == size; }
};
std::vector<StoredUpload> ListUploads(const fs::path& store);

std::vector<std::uint8_t> ReadBytes(const fs::path& path);

// Opens the spool as a test would, with no budget limits (Spool::Open runs its recovery).
Expected<std::unique_ptr<spool::Spool>> OpenSpool(const fs::path& spool_dir, FileStore& files);

// The outcome of comparing the spool with the cloud.
struct Verdict {
  std::size_t accepted = 0;
  std::size_t complete_scans = 0;    // manifest says complete
  std::size_t incomplete_scans = 0;  // manifest says incomplete, with a reason
  std::size_t lost = 0;        // an accepted scan, chunk or manifest not (completely) on the server
  std::size_t corrupted = 0;   // bytes differ from the spool, the recorded SHA-256, or the driver
  std::size_t duplicated = 0;  // two different complete uploads of one chunk or manifest
  // Identical extra complete copies of a chunk or manifest: a kill between a creation-with-upload
  // POST and the journaling of its URL (the "interrupted request" of the upload contract).
  std::size_t resent = 0;
  std::size_t orphans = 0;     // spool files no record refers to
  std::size_t unknown = 0;     // scans on the server the spool does not know
  std::size_t abandoned_uploads = 0;  // incomplete uploads left on the server (created, never resumed)
  bool spool_opened = false;
  std::vector<std::string> problems;  // one line per finding, for the test log
  std::string Line() const;
};

// Opens the spool (the same recovery the agent runs), checks every accepted scan against the tus
// store and the sim driver's views for the scan's own protocol and seed, and looks for orphans.
// `require_uploaded`: every accepted scan must be fully uploaded (the end of a soak).
Verdict Verify(const fs::path& spool_dir, const fs::path& tus_store, bool require_uploaded);

// True if this build's PosixFileStore has the test hook `name` (CTAGENT_FAULT_KILL_AT_OP): probed
// by running `ctagent status` on a fresh spool with the hook armed at the first operation.
bool HasKillAtOpHook(const fs::path& scratch);

}  // namespace ctagent::test::durability
