// Durability harness: runs the real ctagent binary against the real tus server (HTTPS, loopback)
// and, for the soak, the real reconstruction worker storing into a real Orthanc; kills any of
// them at chosen moments, and checks what reached the cloud against the spool.
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
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/manifest.hpp"
#include "base/durable_file.hpp"
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
// SmallScanConfig paced like a gantry: its 240 views over `seconds` of real time, so a test can
// act on the spool and the agent while the scan is still acquiring.
nlohmann::json PacedScanConfig(const fs::path& spool_dir, const std::string& upload_url, const fs::path& ca_file,
                               std::uint64_t seed, double seconds);
void WriteJson(const fs::path& path, const nlohmann::json& j);
// The arguments of `ctagent scan` for the config at `cfg_path`, without waiting for results
// (for RunCtagent), and the whole command line (for a ChildProcess).
std::vector<std::string> ScanArgs(const fs::path& cfg_path);
std::vector<std::string> ScanCommand(const fs::path& cfg_path);

using ctagent::test::CtagentBinary;

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

// An accepted scan whose manifest reached the cloud: what the reconstruction check needs.
struct CloudScan {
  std::string scan_uid;
  codec::Manifest manifest;                           // as the cloud holds it
  std::map<std::uint32_t, std::string> recorded_sha256;  // chunk index -> SHA-256 the spool recorded
};

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
  std::vector<CloudScan> cloud_scans;  // accepted scans with a parsed manifest on the server
  std::vector<std::string> problems;  // one line per finding, for the test log
  std::string Line() const;
};

// Opens the spool (the same recovery the agent runs), checks every accepted scan against the tus
// store and the sim driver's views for the scan's own protocol and seed, and looks for orphans.
// `require_uploaded`: every accepted scan must be fully uploaded (the end of a soak).
Verdict Verify(const fs::path& spool_dir, const fs::path& tus_store, bool require_uploaded);

// Orthanc behind its TLS proxy (cloud/orthanc/start-orthanc.sh) on free loopback ports. Slow to
// start (seconds), so a soak starts it once.
class OrthancPeer {
 public:
  OrthancPeer(fs::path pki, fs::path dir, fs::path log);
  ~OrthancPeer();
  void Start();  // returns once /system answers; throws with the log's path otherwise
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_); }
  fs::path PasswordFile(const std::string& user) const { return dir_ / ("orthanc-" + user + "-password"); }
  // GET `path` as the terminal's user ("ctagent"); the parsed JSON answer of a 200.
  Expected<nlohmann::json> GetJson(const std::string& path);

 private:
  fs::path pki_, dir_, log_;
  std::uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> process_;
  struct Http;
  std::unique_ptr<Http> http_;
};

// The reconstruction worker (cloud/worker) over the tus store, storing in `orthanc`; killed and
// restarted in place (same store and work directory).
class WorkerPeer {
 public:
  WorkerPeer(fs::path binary, fs::path store, fs::path work, fs::path pki, const OrthancPeer& orthanc, fs::path log);
  void Start();                               // the watching daemon; no-op if running
  int RunOnce(std::chrono::milliseconds timeout);  // one pass (--once) to completion; -1: timed out
  bool Kill();                                // SIGKILL; true if it was running
  void Stop();                                // SIGTERM (it stops between steps), bounded wait
  bool Running();
  const fs::path& work() const { return work_; }

 private:
  std::vector<std::string> Argv(bool once) const;
  fs::path binary_, store_, work_, pki_, log_;
  std::string orthanc_url_;
  fs::path password_file_;
  std::unique_ptr<ChildProcess> process_;
};

// How far the worker got with one scan, read from its work directory (worker.hpp).
enum class WorkerPhase {
  kNotStarted,    // nothing written: hashing, decoding or reconstructing (or not reached yet)
  kWritingSlices, // series folder without series.json
  kStoring,       // series.json, no done marker: storing in Orthanc
  kFinished,      // done or failed marker
};
WorkerPhase PhaseOf(const fs::path& work, const std::string& scan_uid);
const char* ToString(WorkerPhase phase);
bool WorkerFinished(const fs::path& work, const std::string& scan_uid);

// Scan UIDs of the complete manifest uploads in the tus store.
std::set<std::string> ManifestScans(const fs::path& tus_store);

// The reconstruction side of a soak: every accepted scan reconstructed exactly once as a visible
// result, from bit-exact input, or refused with a reason when it cannot be reconstructed.
struct ReconVerdict {
  std::size_t reconstructed = 0;  // one complete series in Orthanc, as expected
  std::size_t refused = 0;        // failed marker, nothing in Orthanc, as expected (too few views)
  std::size_t missing = 0;        // expected result absent (no series, or refused wrongly)
  std::size_t twice = 0;          // more than one series for a scan, or duplicate instances
  std::size_t partial = 0;        // a series with fewer instances than it announces, left visible
  std::size_t bad_input = 0;      // the worker's recorded input differs from the spool's SHA-256s
  std::size_t unknown = 0;        // series in Orthanc no accepted scan explains
  std::size_t instances = 0;      // instances in Orthanc
  std::vector<std::string> problems;
};
// `scans`: Verdict::cloud_scans. Expected: a scan whose manifest's chunks hold views 0..n-1
// without a gap, n >= one rotation, has exactly one series in Orthanc, named by Protocol Name
// "ctagent scan <uid>", of `expected_instances` instances (the soak's scans share one protocol,
// so an undisturbed calibration run gives the count) with distinct SOP Instance UIDs, instance
// numbers 1..N and Images in Acquisition N; the worker's done marker names that series and
// input chunks whose SHA-256s equal the spool's. Any other scan has a failed marker and no series.
ReconVerdict VerifyReconstruction(const std::vector<CloudScan>& scans, const fs::path& work, OrthancPeer& orthanc,
                                  std::size_t expected_instances);

// The series Orthanc holds for scan `scan_uid` (by Protocol Name): for each, its instance count.
std::vector<std::size_t> SeriesOfScan(OrthancPeer& orthanc, const std::string& scan_uid);

// Series visible in Orthanc right now: problems if one holds more instances than its Images in
// Acquisition says, or does not say (then a partial series could pass for a final one).
// `partial_series` counts the visible series that are (still) short of their count.
std::vector<std::string> CheckVisibleSeries(OrthancPeer& orthanc, std::size_t* partial_series);

// True if this build's ctagent has the test-only kill (CTAGENT_FAULT_KILL_AT_OP, the
// FaultInjectingFileStore of test builds): probed by running `ctagent run --once` on a fresh
// spool with the kill armed at the first file step.
bool HasKillAtOpHook(const fs::path& scratch);

// Chunk files under the spool's scans/ (journaled or not), counted without opening the spool.
std::size_t CountChunkFiles(const fs::path& spool_dir);

}  // namespace ctagent::test::durability
