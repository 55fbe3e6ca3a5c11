// The spool: durable store-and-forward state of every scan on local disk.
//
//   <dir>/spool.json                    marker and format version (2)
//   <dir>/state.snapshot                every scan record at the last compaction (framed records)
//   <dir>/journal.log                   append-only journal of changes since that snapshot
//   <dir>/scans/<scan_uid>/chunks/NNNNNN.ctc   chunk files (agent/codec/chunk.hpp)
//   <dir>/scans/<scan_uid>/manifest.json       written when acquisition ends
//   <dir>/scans/<scan_uid>/results/<sop_instance_uid>.dcm   validated results from the cloud
//
// Order of operations: a file reaches stable storage (write, fsync, rename, directory fsync)
// before the journal record that refers to it is appended and synced; a call returns OK only
// after its journal record is synced. Deletion goes the other way: the record first, then the
// files. Each journal record carries a CRC-32C, so a torn tail is detected and cut at start-up
// (agent/spool/journal.hpp). Open() recovers: replays the journal, removes orphan files,
// verifies unconfirmed chunks and the manifest against their SHA-256 and flags damaged scans.
// Docs: docs/durability.md. Thread-safe: calls are serialised by one mutex; chunk files are
// written outside it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/manifest.hpp"
#include "base/durable_file.hpp"
#include "base/error.hpp"

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
  bool damaged = false;           // missing, unreadable or not matching its SHA-256: never uploaded
};

struct ResultRecord {
  std::string sop_instance_uid;
  std::string series_uid;
  std::string sop_class_uid;
  bool delivered = false;
};

// What a scan's chunk list held, kept when the list itself is dropped (ScanRecord::dropped_chunks).
struct ChunkTotals {
  std::uint32_t count = 0;
  std::uint64_t views = 0;
  std::uint64_t raw_bytes = 0;
  std::uint64_t compressed_bytes = 0;
};

struct ScanRecord {
  std::string scan_uid;
  std::string study_uid;
  ScanState state = ScanState::kAcquiring;
  std::string failure_reason;
  // Why acquisition ended before the protocol's last view (driver fault, full disk, agent
  // stopped); the chunks stored before it stay valid and are uploaded. Empty: not cut short.
  std::string incomplete_reason;
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
  std::string manifest_sha256;    // of manifest.json, recorded when it is written
  // When the cloud had confirmed every chunk and the manifest (spool clock, Unix seconds;
  // 0: not yet). Retention "keep_days" counts from here.
  std::int64_t confirmed_unix_s = 0;
  bool raw_deleted = false;       // retention removed the chunk files and the manifest
  // A delivered scan whose raw data retention removed keeps no chunk list: nothing reads it any
  // more (its uploads are confirmed, its files gone), and the records of the scans kept for
  // spool.keep_days, ~0.25 KiB a chunk, would otherwise hold ~200 KiB per 500 MiB scan in memory,
  // in every snapshot and in every copy AllScans() makes (docs/configuration.md, "Memory"). The
  // list is emptied as the record reaches that state (live and on replay alike) and these totals
  // say what it held; all zero while the list is kept. TotalsOf() gives them either way.
  ChunkTotals dropped_chunks;
  // When a person acknowledged this failed scan (`ctagent acknowledge`; UTC, ISO 8601); empty:
  // not acknowledged. Kept with the record, so the daemon stops reporting it across restarts.
  std::string acknowledged_utc;
  // When a person confirmed having seen this scan's HIGH-RISK finding (the operator's page or
  // `ctagent confirm`; UTC, ISO 8601) and who (the configured console user, or "operator at this
  // terminal"); empty: not confirmed, the page keeps alerting. Kept with the record (journal and
  // snapshot), so a restart never brings a confirmed alert back or loses an unconfirmed one.
  std::string high_risk_confirmed_utc;
  std::string high_risk_confirmed_by;
  // Where the scan's patient came from: "worklist", "emergency" (a minted identity a person must
  // reconcile with the hospital's records), "configuration" (no worklist configured); empty in
  // records written before it was kept. Never the identity itself: that is only in mapping.json.
  std::string patient_source;
};

// The scan's chunks counted and summed: from its list, or what was kept when the list was dropped.
ChunkTotals TotalsOf(const ScanRecord& record);

// A scan's record without its chunk list, and what a summary needs of the list (ScanHeads()).
struct ScanHead {
  ScanRecord record;                        // chunks empty; everything else as recorded
  ChunkTotals totals;                       // TotalsOf() the whole record
  std::uint32_t chunks_uploaded = 0;        // confirmed complete (a dropped list: all of it)
  std::uint64_t chunk_bytes_to_upload = 0;  // compressed bytes the cloud has not confirmed
};

nlohmann::json ToJson(const ScanRecord& record);
Expected<ScanRecord> ScanRecordFromJson(const nlohmann::json& j);

// When ApplyRetention() deletes a scan's raw data (chunk files and manifest). It never
// deletes anything the cloud has not confirmed, nor anything of a failed scan.
enum class RetentionPolicy {
  kAfterUpload,    // once the cloud confirmed every chunk and the manifest
  kAfterResults,   // ... and results were received
  kAfterDelivery,  // ... and results were delivered to the console
  kKeepDays,       // keep_days after the cloud confirmed everything
};
const char* ToString(RetentionPolicy policy);
Expected<RetentionPolicy> ParseRetentionPolicy(const std::string& text);

using WallClock = std::function<std::chrono::system_clock::time_point()>;

struct SpoolOptions {
  std::filesystem::path directory;
  std::uint64_t max_bytes = 64ull << 30;
  std::uint64_t min_free_bytes = 1ull << 30;
  RetentionPolicy retention = RetentionPolicy::kAfterDelivery;
  std::uint32_t keep_days = 7;
  // Compact (snapshot + new journal) once the journal grows past this.
  std::uint64_t journal_compact_bytes = 4ull << 20;
  WallClock clock = {};  // empty: std::chrono::system_clock::now (tests inject their own)
  // Read-only: for `ctagent status` and `ctagent check`, which may run while another process
  // (`ctagent scan`, `ctagent run`) writes the spool. Takes no lock, writes nothing (no torn
  // tail cut, no orphan removal, no re-hashing, no compaction), and every change is refused.
  // A journal record being appended at that moment is left out, so the view may be a moment
  // old. A spool that does not exist yet opens empty. Otherwise the spool is opened for
  // writing: one process at a time holds spool.lock in the directory (kBusy for the others).
  bool read_only = false;
  // Called on the opening thread after each file recovery hashes (a large backlog takes a while
  // to verify): the daemon feeds its service watchdog from it. Empty: nothing is called.
  std::function<void()> on_recovery_progress = {};
};

struct RecoveryReport {
  std::uint64_t journal_records = 0;   // replayed
  std::uint64_t torn_tail_bytes = 0;   // cut from the journal's end
  std::uint64_t orphans_removed = 0;   // temp files and files no record refers to
  std::uint64_t files_verified = 0;    // chunks and manifests hashed
  std::vector<std::string> damaged;    // "scan <uid> chunk <n>: <why>"
};

struct RetentionReport {
  std::vector<std::string> raw_deleted;    // scans whose chunk files and manifest were removed
  std::vector<std::string> scans_removed;  // delivered scans removed entirely (record and results)
  std::uint64_t bytes_freed = 0;
};

struct SpaceReport {
  std::uint64_t used_bytes = 0;       // bytes of files under the spool
  std::uint64_t reserved_bytes = 0;   // outstanding reservations of acquiring scans
  std::uint64_t filesystem_free_bytes = 0;
};

class Spool {
 public:
  static Expected<std::unique_ptr<Spool>> Open(const SpoolOptions& options, FileStore& files);
  // The file a writer locks (FileStore::LockExclusive); LockHolderPid(LockFile(dir)) names it.
  static std::filesystem::path LockFile(const std::filesystem::path& directory);

  // Refuses (kNoSpace, with the numbers) unless `bytes` fit both the spool budget and the
  // file system's free space above min_free_bytes; then records the scan with its reservation.
  Status BeginScan(ScanRecord record, std::uint64_t bytes);
  // Writes a chunk file durably, then records it.
  Status AddChunk(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                  std::span<const std::uint8_t> bytes);
  // Batched ingest (docs/durability.md, "fsync cost"; agent/spool/batched_ingest.hpp drives it):
  // AddChunkDeferred writes the chunk file without syncing and queues its record; the chunk is
  // NOT durable, NOT visible to Get()/ReadChunk() and must not be reported safe yet.
  // SyncPending takes every queued chunk (of any scan, from any thread), fdatasyncs their files,
  // fsyncs their directories, then journals all their records in one record: only then are
  // they accepted (visible, counted, safe). If any step fails, none of the batch is accepted:
  // the batch is dropped, and its files are orphans that the next start removes.
  Status AddChunkDeferred(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                          std::span<const std::uint8_t> bytes);
  struct SyncedBatch {
    std::vector<std::pair<std::string, codec::ManifestChunk>> chunks;  // scan UID, chunk; in queue order
    std::uint64_t bytes = 0;  // compressed bytes of those chunks
    Status status = Ok();     // OK: every chunk above is accepted; an error: none is
  };
  SyncedBatch SyncPending();
  std::uint64_t pending_bytes();  // written by AddChunkDeferred, not yet taken by SyncPending
  // Writes the manifest durably, then marks the scan acquired and releases its reservation.
  // The manifest is `manifest` with the record's chunks as its chunk list (every accepted
  // chunk, by index; manifest.chunks is not read), written without copying the record.
  // Refused while chunks of the scan are still queued: sync them first (the manifest lists
  // only accepted chunks, and no chunk may be accepted after it).
  Status FinishAcquisition(const std::string& scan_uid, const codec::Manifest& manifest);

  // Applies `change` to the scan's record and persists it durably. It works on a copy of the
  // whole record; a change of the scan's own fields or results only uses UpdateFields.
  Status Update(const std::string& scan_uid, const std::function<void(ScanRecord&)>& change);
  // Applies `change` to the record's fields and results, not its chunks: `change` sees the
  // record with an empty chunk list (and an error is returned if it adds one), so an 8 GiB
  // scan's ~2 MiB of chunk records are not copied for a state change at its end.
  Status UpdateFields(const std::string& scan_uid, const std::function<void(ScanRecord&)>& change);
  // A copy of the scan's whole record: it grows with the scan (~0.25 KiB a chunk), so paths that
  // run per chunk use GetChunk / GetManifestUpload, which copy only what they return.
  Expected<ScanRecord> Get(const std::string& scan_uid);
  // The record's manifest_base (the manifest without its chunks, recorded when armed).
  Expected<nlohmann::json> GetManifestBase(const std::string& scan_uid);
  Expected<ChunkRecord> GetChunk(const std::string& scan_uid, std::uint32_t index);
  Expected<UploadState> GetManifestUpload(const std::string& scan_uid);
  // A copy of every record (oldest first), chunk lists included (~0.25 KiB a chunk): for tests
  // and tools. The agent reads the spool with ScanHeads() and VisitScans(), and Get()s the
  // whole record only of a scan it takes up.
  std::vector<ScanRecord> AllScans();
  // Every record without its chunk list, with the list's sums (oldest first): what a status
  // answer needs, at a few hundred bytes a scan however many chunks it has.
  std::vector<ScanHead> ScanHeads();
  // Calls `visit` with every record in place, under the spool's lock, copying nothing: for
  // callers that count or pick a few fields (metrics, the daemon's failed-scan count, the
  // operator page's lists), where a copy of a large backlog's chunk lists (~0.25 KiB a chunk)
  // would be made for nothing. `visit` must be short and must not call the spool. No order.
  void VisitScans(const std::function<void(const ScanRecord&)>& visit);

  // One upload's new state: a chunk's (`chunk_index` >= 0) or the manifest's (-1).
  struct UploadChange {
    std::int64_t chunk_index = -1;
    UploadState state;
  };
  // Sets upload states of one scan in one synced journal record, as Update would, but without
  // copying the scan's record: the uploader's hot path (a URL, offsets, done: several per chunk,
  // from up to cloud.parallel_uploads threads at once). Update copied the whole record and built
  // an index of its chunks for each of them, so the cost grew with the scan's length, and the
  // copies of growing size left the heap fragmented (docs/configuration.md, "Memory"). Changes
  // apply in order; when the last chunk and the manifest are complete the scan's confirmation
  // time is set in the same record. A chunk the scan does not have: kNotFound, nothing written.
  Status SetUploads(const std::string& scan_uid, const std::vector<UploadChange>& changes);

  // Reads a chunk file and checks it against the SHA-256 recorded when it was written.
  Expected<std::vector<std::uint8_t>> ReadChunk(const std::string& scan_uid, std::uint32_t index);
  // Checks a chunk file as ReadChunk does (its size and SHA-256 as recorded) without holding it:
  // read in pieces of 256 KiB. The uploader checks each chunk so and then sends it from the file.
  // A file that does not match, or cannot be read, is recorded damaged (kCorrupt, or the read's
  // kind) and never sent; one deleted by retention is kNotFound.
  struct CheckedChunkFile {
    std::filesystem::path path;
    std::uint64_t length = 0;
  };
  Expected<CheckedChunkFile> CheckChunkFile(const std::string& scan_uid, std::uint32_t index);
  Expected<std::vector<std::uint8_t>> ReadManifest(const std::string& scan_uid);
  // Results count against the same budget as chunks (docs/durability.md, "Results and the spool
  // budget"): ResultsRoom() is how many bytes of results the spool can take now, the least of
  // what max_bytes leaves after the files and the acquiring scans' reservations, and of the file
  // system's free space above min_free_bytes and those reservations (0: none).
  std::uint64_t ResultsRoom();
  // OK when `bytes` more fit ResultsRoom(); else kNoSpace naming `what`, the numbers and the
  // setting that limits, and saying the results stay fetchable.
  Status CheckResultsRoom(std::uint64_t bytes, const std::string& what);
  // Stores a result instance durably under the scan's results/ folder; returns its path.
  // Refused (kNoSpace, nothing written) when it does not fit ResultsRoom().
  Expected<std::filesystem::path> StoreResult(const std::string& scan_uid, const std::string& sop_instance_uid,
                                              std::span<const std::uint8_t> part10);
  // Stores several result instances of one scan as one batch (the results fetch's): refused
  // (kNoSpace, nothing written) unless all of them fit ResultsRoom() together; then each file is
  // written unsynced and their data and the results/ folder are synced once (FileStore::SyncBatch),
  // a few flushes instead of three per file. Returns their paths in order, only once durable.
  struct ResultToStore {
    std::string sop_instance_uid;
    std::span<const std::uint8_t> part10;
  };
  Expected<std::vector<std::filesystem::path>> StoreResults(const std::string& scan_uid,
                                                            const std::vector<ResultToStore>& instances);
  std::filesystem::path ResultPath(const std::string& scan_uid, const std::string& sop_instance_uid) const;
  // The scan's privacy mapping record (agent/privacy/privacy.hpp), in the scan's directory: it
  // is never uploaded, and goes when the scan's directory goes.
  std::filesystem::path MappingPath(const std::string& scan_uid) const { return ScanDir(scan_uid) / "mapping.json"; }

  SpaceReport Space();
  const std::filesystem::path& directory() const { return options_.directory; }

  // Deletes what the retention policy allows as of `now` (see RetentionPolicy). The decision
  // is journaled first, then the files go. Call it periodically and after a scan finishes.
  Expected<RetentionReport> ApplyRetention(std::chrono::system_clock::time_point now);
  // Writes a snapshot and starts a new journal (also done automatically as the journal grows).
  Status Compact();
  // What Open() found and repaired.
  const RecoveryReport& recovery() const { return recovery_; }

 private:
  Spool(SpoolOptions options, FileStore& files) : options_(std::move(options)), files_(files) {}
  std::filesystem::path ScanDir(const std::string& scan_uid) const;
  std::filesystem::path ChunkPath(const std::string& scan_uid, std::uint32_t index) const;
  struct FileCheck;  // what ReadChunk / ReadManifest check a file against
  Expected<FileCheck> CheckOf(const std::string& scan_uid, std::int64_t chunk_index);  // -1: the manifest
  // A chunk's file and what it must match, unless it is deleted or already found damaged.
  Expected<std::filesystem::path> ChunkFileToRead(const std::string& scan_uid, std::uint32_t index,
                                                  FileCheck* check);
  // Records the chunk damaged (`why`) and returns the error that says so.
  Error ChunkFileDamaged(const std::string& scan_uid, std::uint32_t index, const std::filesystem::path& path,
                         const std::string& why, ErrorKind kind);
  Status Recover();
  Status Writable() const;  // refuses changes to a read-only spool
  Status LoadSnapshot();
  Status ReplayJournal();
  Status RemoveOrphans();
  Status VerifyFiles();
  // Appends one journal record holding `ops`, then applies them to the in-memory state.
  Status Commit(nlohmann::json ops);
  Status CompactLocked();
  Status MarkDamaged(const std::string& scan_uid, std::int64_t chunk_index, const std::string& why);
  SpaceReport SpaceLocked();
  std::uint64_t ResultsRoomLocked();
  Status CheckResultsRoomLocked(std::uint64_t bytes, const std::string& what);
  std::int64_t NowUnixSeconds() const;

  SpoolOptions options_;
  FileStore& files_;
  std::unique_ptr<FileLock> lock_;  // held while this process may write the spool
  std::mutex mutex_;
  std::map<std::string, ScanRecord> scans_;
  std::uint64_t generation_ = 0;
  std::uint64_t journal_bytes_ = 0;
  std::optional<Error> broken_;  // set when the journal could not be restored after a failure
  struct PendingChunk {
    std::string scan_uid;
    ChunkRecord record;
  };
  std::vector<PendingChunk> pending_;
  std::uint64_t pending_bytes_ = 0;
  std::mutex sync_mutex_;  // one SyncPending at a time, so batches are journaled in the order taken
  RecoveryReport recovery_;
};

}  // namespace ctagent::spool
