// The spool: durable store-and-forward state of every scan on local disk.
//
//   <dir>/spool.json                    marker and format version
//   <dir>/scans/<scan_uid>/scan.json    the scan's state record (ScanRecord), replaced durably
//   <dir>/scans/<scan_uid>/chunks/NNNNNN.ctc   chunk files (agent/codec/chunk.hpp)
//   <dir>/scans/<scan_uid>/manifest.json       written when acquisition ends
//   <dir>/scans/<scan_uid>/results/<sop_instance_uid>.dcm   validated results from the cloud
//
// Every file reaches stable storage (write, fsync, rename, directory fsync) before the state
// record that refers to it is written, so after a crash the record never points at a file
// that is not there. Thread-safe: calls are serialised by one mutex.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/manifest.hpp"
#include "agent/common/durable_file.hpp"
#include "agent/common/error.hpp"

namespace ctagent::spool {

enum class ScanState {
  kAcquiring,   // views still arriving
  kAcquired,    // all chunks and the manifest are on disk
  kUploaded,    // the cloud confirmed every chunk and the manifest
  kResultsReceived,  // results validated and stored locally
  kDelivered,   // results acknowledged by the console
  kFailed,      // needs a person: see failure_reason
};
const char* ToString(ScanState state);

struct UploadState {
  std::string url;                // tus upload URL, journaled before the first byte is sent
  std::uint64_t confirmed_offset = 0;  // last offset the server confirmed
  bool complete = false;
};

struct ChunkRecord {
  codec::ManifestChunk chunk;     // index, view range, sizes, checksums
  UploadState upload;
};

struct ResultRecord {
  std::string sop_instance_uid;
  std::string series_uid;
  std::string sop_class_uid;
  bool delivered = false;
};

struct ScanRecord {
  std::string scan_uid;
  std::string study_uid;
  ScanState state = ScanState::kAcquiring;
  std::string failure_reason;
  std::uint64_t reserved_bytes = 0;  // space reserved when armed; released as the scan ends
  std::uint64_t views_acquired = 0;
  std::vector<ChunkRecord> chunks;
  bool manifest_written = false;
  UploadState manifest_upload;
  std::vector<ResultRecord> results;
  std::string created_utc;
  // The manifest without its chunk list (identity, protocol, acquisition start), recorded when
  // the scan is armed, so a scan interrupted by a crash can still be closed and uploaded.
  nlohmann::json manifest_base = nlohmann::json::object();
};

nlohmann::json ToJson(const ScanRecord& record);
Expected<ScanRecord> ScanRecordFromJson(const nlohmann::json& j);

struct SpoolOptions {
  std::filesystem::path directory;
  std::uint64_t max_bytes = 64ull << 30;
  std::uint64_t min_free_bytes = 1ull << 30;
};

struct SpaceReport {
  std::uint64_t used_bytes = 0;       // bytes of files under the spool
  std::uint64_t reserved_bytes = 0;   // outstanding reservations of acquiring scans
  std::uint64_t filesystem_free_bytes = 0;
};

class Spool {
 public:
  static Expected<std::unique_ptr<Spool>> Open(const SpoolOptions& options, FileStore& files);

  // Refuses (kNoSpace, with the numbers) unless `bytes` fit both the spool budget and the
  // file system's free space above min_free_bytes; then records the scan with its reservation.
  Status BeginScan(ScanRecord record, std::uint64_t bytes);
  // Writes a chunk file durably, then records it.
  Status AddChunk(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                  std::span<const std::uint8_t> bytes);
  // Writes the manifest durably, then marks the scan acquired and releases its reservation.
  Status FinishAcquisition(const std::string& scan_uid, const codec::Manifest& manifest);

  // Applies `change` to the scan's record and persists it durably.
  Status Update(const std::string& scan_uid, const std::function<void(ScanRecord&)>& change);
  Expected<ScanRecord> Get(const std::string& scan_uid);
  std::vector<ScanRecord> AllScans();

  // Reads a chunk file and checks it against the SHA-256 recorded when it was written.
  Expected<std::vector<std::uint8_t>> ReadChunk(const std::string& scan_uid, std::uint32_t index);
  Expected<std::vector<std::uint8_t>> ReadManifest(const std::string& scan_uid);
  // Stores a result instance durably under the scan's results/ folder; returns its path.
  Expected<std::filesystem::path> StoreResult(const std::string& scan_uid, const std::string& sop_instance_uid,
                                              std::span<const std::uint8_t> part10);
  std::filesystem::path ResultPath(const std::string& scan_uid, const std::string& sop_instance_uid) const;

  SpaceReport Space();
  const std::filesystem::path& directory() const { return options_.directory; }

 private:
  Spool(SpoolOptions options, FileStore& files) : options_(std::move(options)), files_(files) {}
  std::filesystem::path ScanDir(const std::string& scan_uid) const;
  std::filesystem::path ChunkPath(const std::string& scan_uid, std::uint32_t index) const;
  Status Persist(const ScanRecord& record);
  Expected<ScanRecord> Load(const std::string& scan_uid);
  SpaceReport SpaceLocked();

  SpoolOptions options_;
  FileStore& files_;
  std::mutex mutex_;
};

}  // namespace ctagent::spool
