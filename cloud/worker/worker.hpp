// The reference imaging center's reconstruction worker (demos and tests only): watches the tus
// server's upload directory, and for every scan whose manifest and chunks have all arrived intact,
// decodes, reconstructs, writes a CT series, analyses the lungs (analysis.hpp), writes the result
// set (result_encoding.hpp: SEG, report pages, SR) and stores all in Orthanc, CT first and the SR
// last. State lives in the work directory so a scan is reconstructed at most once, even across
// restarts and SIGKILLs:
//   WORK/series/<scan_uid>/  slice-NNN.dcm, seg.dcm, report-NNN.dcm, sr.dcm (each synced and renamed
//                            into place), then series.json (synced, renamed: the commit point of
//                            the reconstruction and the analysis; it lists every file in storing
//                            order). A folder without series.json is discarded; nothing of it was
//                            stored. A series.json without "results" (an older worker) is redone.
//   WORK/done/<scan_uid>.json    every instance is stored in Orthanc (written after the last one)
//   WORK/failed/<scan_uid>.json  the scan can never be reconstructed (reason inside)
// Series, frame of reference and instance UIDs (of the result set too) are derived from the scan
// UID (DerivedDicomUid), so storing again after a kill between the first store and the done
// marker, or reconstructing again, sends the same instances, and Orthanc keeps one copy.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "base/error.hpp"
#include "cloud/worker/recon.hpp"
#include "transport/http.hpp"

namespace ctagent::cloud {

struct WorkerConfig {
  std::filesystem::path store_dir;  // the tus server's --dir
  std::filesystem::path work_dir;
  std::string orthanc_url;          // https://127.0.0.1:PORT (no trailing /instances)
  std::string orthanc_user;
  std::string orthanc_password;
  std::filesystem::path ca_file;    // verifies Orthanc's certificate
  ReconOptions recon;
  std::uint64_t max_scan_raw_bytes = 2ull << 30;  // larger scans are refused (memory bound)
};

struct PassResult {
  int stored = 0;   // scans stored in Orthanc during this pass
  int failed = 0;   // scans marked failed during this pass
  int waiting = 0;  // scans whose chunks have not all arrived yet
  int retry = 0;    // scans that could not be stored (Orthanc unreachable ...): tried again next pass
};

class Worker {
 public:
  explicit Worker(WorkerConfig config);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Creates the work directories. Call once before RunPass.
  Status Init();
  // One pass over the upload directory. `stop` is checked between steps; a scan interrupted
  // before its series is recorded starts over next time, one interrupted while storing resumes.
  PassResult RunPass(const std::atomic<bool>& stop);

  struct Upload;  // one tus upload in the store (defined in worker.cpp)

 private:
  enum class Outcome { kStored, kFailed, kWaiting, kRetry, kSkipped };
  // Instances other than the SR are stored over this many connections at once.
  static constexpr std::size_t kStoreConnections = 4;
  struct StoreAttempt {
    enum State { kNotTried, kStored, kRetry, kRejected } state = kNotTried;
    std::string message;     // kRetry, kRejected: what happened
    std::string orthanc_id;  // kStored
  };
  // POSTs one Part 10 file to Orthanc's /instances. Thread-safe with one `http` per thread.
  StoreAttempt StoreInstance(transport::HttpClient& http, const std::string& url, const std::filesystem::path& file);

  Outcome ProcessManifest(const Upload& manifest_upload, const std::map<std::string, Upload>& uploads,
                          const std::atomic<bool>& stop);
  Outcome Fail(const std::string& scan_uid, const std::string& manifest_upload_id, const std::string& reason);
  Expected<std::string> HashOf(const Upload& upload);

  WorkerConfig config_;
  transport::HttpOptions http_options_;
  std::unique_ptr<transport::HttpClient> http_;
  std::map<std::string, std::pair<std::uint64_t, std::string>> hash_cache_;  // upload id -> (size, sha256)
  std::set<std::string> reported_bad_manifests_;  // manifests without a usable scan UID, logged once
};

}  // namespace ctagent::cloud
