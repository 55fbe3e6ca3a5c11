#include "agent/spool/spool.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "base/json_integer.hpp"
#include "base/log.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/spool/journal.hpp"

namespace ctagent::spool {
namespace {

constexpr int kSpoolFormat = 2;
constexpr std::uint64_t kMaxRecordBytes = 64ull << 20;
constexpr std::uint64_t kMaxChunkBytes = 1ull << 30;
// What CheckChunkFile reads at a time: libcurl's upload buffer (transport/http.hpp), so a check
// holds no more than one request handle does.
constexpr std::uint64_t kCheckPieceBytes = 256 * 1024;
constexpr std::uint64_t kHashPieceBytes = 1ull << 20;
constexpr const char* kSnapshotName = "state.snapshot";
constexpr const char* kJournalName = "journal.log";

const ScanState kAllStates[] = {ScanState::kAcquiring, ScanState::kAcquired,  ScanState::kUploaded,
                                ScanState::kResultsReceived, ScanState::kDelivered, ScanState::kFailed};

// A count or index read back from the spool's own records: only an integer that fits T
// (base/json_integer.hpp). A record that passed its CRC but is not what this code writes
// (another version's, or a bug's) must be refused as corrupt, never read as some other count.
// Throws as get<T>() does on a wrong type; the readers turn that into kCorrupt.
template <typename T>
T CountAt(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  if (const std::optional<T> n = IntegerAs<T>(v)) return *n;
  throw nlohmann::json::type_error::create(
      302, std::string(key) + " is " + (v.is_number() ? v.dump() : std::string(v.type_name())) + ", not an integer from " +
               std::to_string(std::numeric_limits<T>::min()) + " to " + std::to_string(std::numeric_limits<T>::max()),
      &v);
}

Sha256Digest DigestAt(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  if (v.is_string()) {
    if (auto digest = Sha256Digest::FromHex(v.get_ref<const std::string&>())) return *digest;
  }
  throw nlohmann::json::type_error::create(
      302, std::string(key) + " is " + (v.is_string() ? v.dump() : std::string(v.type_name())) +
               ", not a SHA-256 (64 lowercase hex digits)",
      &v);
}

nlohmann::json UploadToJson(const UploadState& u) {
  return {{"url", u.url}, {"confirmed_offset", u.confirmed_offset}, {"complete", u.complete}};
}

UploadState UploadFromJson(const nlohmann::json& j) {
  UploadState u;
  u.url = j.at("url").get<std::string>();
  u.confirmed_offset = CountAt<std::uint64_t>(j, "confirmed_offset");
  u.complete = j.at("complete").get<bool>();
  return u;
}

bool SameUpload(const UploadState& a, const UploadState& b) {
  return a.url == b.url && a.confirmed_offset == b.confirmed_offset && a.complete == b.complete;
}

nlohmann::json ChunkToJson(const ChunkRecord& c) {
  return {{"index", c.chunk.index},
          {"first_view", c.chunk.first_view},
          {"view_count", c.chunk.view_count},
          {"raw_bytes", c.chunk.raw_bytes},
          {"compressed_bytes", c.chunk.compressed_bytes},
          {"raw_sha256", c.chunk.raw_sha256.Hex()},
          {"sha256", c.chunk.sha256.Hex()},
          {"upload", UploadToJson(c.upload)},
          {"damaged", c.damaged}};
}

ChunkRecord ChunkFromJson(const nlohmann::json& c) {
  ChunkRecord cr;
  cr.chunk.index = CountAt<std::uint32_t>(c, "index");
  cr.chunk.first_view = CountAt<std::uint64_t>(c, "first_view");
  cr.chunk.view_count = CountAt<std::uint32_t>(c, "view_count");
  cr.chunk.raw_bytes = CountAt<std::uint64_t>(c, "raw_bytes");
  cr.chunk.compressed_bytes = CountAt<std::uint64_t>(c, "compressed_bytes");
  cr.chunk.raw_sha256 = DigestAt(c, "raw_sha256");
  cr.chunk.sha256 = DigestAt(c, "sha256");
  cr.upload = UploadFromJson(c.at("upload"));
  cr.damaged = c.value("damaged", false);
  return cr;
}

nlohmann::json ResultToJson(const ResultRecord& res) {
  return {{"sop_instance_uid", res.sop_instance_uid},
          {"series_uid", res.series_uid},
          {"sop_class_uid", res.sop_class_uid},
          {"delivered", res.delivered}};
}

ResultRecord ResultFromJson(const nlohmann::json& res) {
  return {res.at("sop_instance_uid").get<std::string>(), res.at("series_uid").get<std::string>(),
          res.at("sop_class_uid").get<std::string>(), res.at("delivered").get<bool>()};
}

bool SameChunkMeta(const ChunkRecord& a, const ChunkRecord& b) {
  const auto& x = a.chunk;
  const auto& y = b.chunk;
  return x.index == y.index && x.first_view == y.first_view && x.view_count == y.view_count &&
         x.raw_bytes == y.raw_bytes && x.compressed_bytes == y.compressed_bytes && x.raw_sha256 == y.raw_sha256 &&
         x.sha256 == y.sha256 && a.damaged == b.damaged;
}

// The scan's fields other than chunks, results and the manifest upload: changed rarely,
// journaled as a "set" of the fields that changed.
nlohmann::json ScalarsToJson(const ScanRecord& r) {
  return {{"study_uid", r.study_uid},
          {"state", ToString(r.state)},
          {"failure_reason", r.failure_reason},
          {"incomplete_reason", r.incomplete_reason},
          {"reserved_bytes", r.reserved_bytes},
          {"views_acquired", r.views_acquired},
          {"manifest_written", r.manifest_written},
          {"created_utc", r.created_utc},
          {"manifest_base", r.manifest_base},
          {"manifest_sha256", r.manifest_sha256},
          {"confirmed_unix_s", r.confirmed_unix_s},
          {"raw_deleted", r.raw_deleted},
          {"dropped_chunks",
           {{"count", r.dropped_chunks.count},
            {"views", r.dropped_chunks.views},
            {"raw_bytes", r.dropped_chunks.raw_bytes},
            {"compressed_bytes", r.dropped_chunks.compressed_bytes}}},
          {"acknowledged_utc", r.acknowledged_utc},
          {"high_risk_confirmed_utc", r.high_risk_confirmed_utc},
          {"high_risk_confirmed_by", r.high_risk_confirmed_by},
          {"patient_source", r.patient_source}};
}

Status ScalarsFromJson(const nlohmann::json& j, ScanRecord& r) {
  r.study_uid = j.at("study_uid").get<std::string>();
  const auto state = j.at("state").get<std::string>();
  bool known = false;
  for (ScanState s : kAllStates) {
    if (state == ToString(s)) {
      r.state = s;
      known = true;
    }
  }
  if (!known) return MakeError(ErrorKind::kCorrupt, "unknown scan state \"" + state + "\"");
  r.failure_reason = j.at("failure_reason").get<std::string>();
  r.incomplete_reason = j.value("incomplete_reason", std::string());
  r.reserved_bytes = CountAt<std::uint64_t>(j, "reserved_bytes");
  r.views_acquired = CountAt<std::uint64_t>(j, "views_acquired");
  r.manifest_written = j.at("manifest_written").get<bool>();
  r.created_utc = j.at("created_utc").get<std::string>();
  r.manifest_base = j.at("manifest_base");
  r.manifest_sha256 = j.value("manifest_sha256", std::string());
  r.confirmed_unix_s = j.contains("confirmed_unix_s") ? CountAt<std::int64_t>(j, "confirmed_unix_s") : 0;
  r.raw_deleted = j.value("raw_deleted", false);
  r.dropped_chunks = {};
  if (const auto dropped = j.find("dropped_chunks"); dropped != j.end()) {  // absent in records written before it
    const auto count = CountAt<std::uint64_t>(*dropped, "count");
    if (!std::in_range<std::uint32_t>(count)) return MakeError(ErrorKind::kCorrupt, "dropped_chunks.count out of range");
    r.dropped_chunks.count = static_cast<std::uint32_t>(count);
    r.dropped_chunks.views = CountAt<std::uint64_t>(*dropped, "views");
    r.dropped_chunks.raw_bytes = CountAt<std::uint64_t>(*dropped, "raw_bytes");
    r.dropped_chunks.compressed_bytes = CountAt<std::uint64_t>(*dropped, "compressed_bytes");
  }
  r.acknowledged_utc = j.value("acknowledged_utc", std::string());  // absent in records written before it
  r.patient_source = j.value("patient_source", std::string());      // likewise
  r.high_risk_confirmed_utc = j.value("high_risk_confirmed_utc", std::string());  // likewise
  r.high_risk_confirmed_by = j.value("high_risk_confirmed_by", std::string());
  return Ok();
}

// `chunks` is the record's chunk list (UpdateFields passes it beside a record copied without it).
bool FullyConfirmed(const ScanRecord& r, const std::vector<ChunkRecord>& chunks) {
  if (!r.manifest_written || !r.manifest_upload.complete) return false;
  return std::all_of(chunks.begin(), chunks.end(), [](const ChunkRecord& c) { return c.upload.complete; });
}
bool FullyConfirmed(const ScanRecord& r) { return FullyConfirmed(r, r.chunks); }

Unexpected ScanNotFound(const std::string& scan_uid, const std::filesystem::path& spool_dir) {
  return MakeError(ErrorKind::kNotFound, "scan " + scan_uid + " is not in spool " + spool_dir.string());
}

std::string ChunkFileName(std::uint32_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "%06u.ctc", index);
  return name;
}

void PutChunk(ScanRecord& r, ChunkRecord chunk) {
  // Sorted by index, one record per index: chunks can finish compressing out of order.
  auto pos = std::lower_bound(r.chunks.begin(), r.chunks.end(), chunk.chunk.index,
                              [](const ChunkRecord& c, std::uint32_t index) { return c.chunk.index < index; });
  if (pos != r.chunks.end() && pos->chunk.index == chunk.chunk.index) {
    *pos = std::move(chunk);
  } else {
    r.chunks.insert(pos, std::move(chunk));
  }
}

// A chunk's record, found without copying: by binary search, as PutChunk keeps them sorted by
// index, else (a record written whole by an older build) by a scan of the list.
const ChunkRecord* FindChunk(const ScanRecord& r, std::uint32_t index) {
  auto pos = std::lower_bound(r.chunks.begin(), r.chunks.end(), index,
                              [](const ChunkRecord& c, std::uint32_t i) { return c.chunk.index < i; });
  if (pos != r.chunks.end() && pos->chunk.index == index) return &*pos;
  const auto it = std::find_if(r.chunks.begin(), r.chunks.end(), [&](const ChunkRecord& c) { return c.chunk.index == index; });
  return it == r.chunks.end() ? nullptr : &*it;
}
ChunkRecord* FindChunk(ScanRecord& r, std::uint32_t index) {
  return const_cast<ChunkRecord*>(FindChunk(std::as_const(r), index));
}

// A delivered scan whose raw data is gone gives up its chunk list for its totals
// (ScanRecord::dropped_chunks). Called wherever a record changes or is read back (ApplyOp,
// ScanRecordFromJson), so the live state and the state replayed after a restart agree.
void DropChunkListOnceDone(ScanRecord& r) {
  if (!r.raw_deleted || r.state != ScanState::kDelivered || r.chunks.empty()) return;
  for (const ChunkRecord& c : r.chunks) {
    ++r.dropped_chunks.count;
    r.dropped_chunks.views += c.chunk.view_count;
    r.dropped_chunks.raw_bytes += c.chunk.raw_bytes;
    r.dropped_chunks.compressed_bytes += c.chunk.compressed_bytes;
  }
  std::vector<ChunkRecord>().swap(r.chunks);  // its capacity too
}

// Applies one journal operation to the in-memory state. Used both live and on replay, so
// the state after a restart is exactly the state before it.
Status ApplyOp(std::map<std::string, ScanRecord>& scans, const nlohmann::json& op) {
  try {
    const std::string kind = op.at("op").get<std::string>();
    if (kind == "put") {
      auto record = ScanRecordFromJson(op.at("scan"));
      if (!record) return MakeError(record.error());
      scans[record->scan_uid] = std::move(*record);
      return Ok();
    }
    const std::string uid = op.at("uid").get<std::string>();
    if (kind == "del") {
      scans.erase(uid);
      return Ok();
    }
    auto it = scans.find(uid);
    if (it == scans.end()) return MakeError(ErrorKind::kCorrupt, "journal operation for unknown scan " + uid);
    ScanRecord& r = it->second;
    if (kind == "set") {
      nlohmann::json scalars = ScalarsToJson(r);
      scalars.update(op.at("fields"));
      if (auto st = ScalarsFromJson(scalars, r); !st) return st;
      DropChunkListOnceDone(r);
      return Ok();
    }
    if (kind == "chunk") {
      PutChunk(r, ChunkFromJson(op.at("chunk")));
      return Ok();
    }
    if (kind == "up") {
      const UploadState u{op.at("url").get<std::string>(), CountAt<std::uint64_t>(op, "off"), op.at("done").get<bool>()};
      const auto index = CountAt<std::int64_t>(op, "i");
      if (index < 0) {
        r.manifest_upload = u;
        return Ok();
      }
      if (!std::in_range<std::uint32_t>(index)) {
        return MakeError(ErrorKind::kCorrupt, "journal upload state for chunk " + std::to_string(index) + " of scan " +
                                                  uid + ": not a chunk index");
      }
      if (ChunkRecord* c = FindChunk(r, static_cast<std::uint32_t>(index)); c != nullptr) {
        c->upload = u;
        return Ok();
      }
      // The list went with the raw data of a delivered scan, whose every upload was confirmed
      // before: nothing left to update (and never a reason to refuse the journal).
      if (r.dropped_chunks.count > 0) return Ok();
      return MakeError(ErrorKind::kCorrupt, "journal upload state for unknown chunk " + std::to_string(index) +
                                                " of scan " + uid);
    }
    if (kind == "res") {
      ResultRecord res = ResultFromJson(op.at("res"));
      for (auto& existing : r.results) {
        if (existing.sop_instance_uid == res.sop_instance_uid) {
          existing = std::move(res);
          return Ok();
        }
      }
      r.results.push_back(std::move(res));
      return Ok();
    }
    return MakeError(ErrorKind::kCorrupt, "unknown journal operation \"" + kind + "\"");
  } catch (const nlohmann::json::exception& e) {
    return MakeError(ErrorKind::kCorrupt, std::string("malformed journal operation: ") + e.what());
  }
}

// The journal operations that turn `before` into `after`: small ones for the hot paths (an
// upload offset is one "up" of ~150 bytes), a whole-record "put" for rare shapes of change.
// With `compare_chunks` false, `after` holds no chunks and they are taken as unchanged (UpdateFields).
nlohmann::json Diff(const ScanRecord& before, const ScanRecord& after, bool compare_chunks = true) {
  const std::string& uid = after.scan_uid;
  nlohmann::json ops = nlohmann::json::array();
  const auto put_all = [&] {
    if (compare_chunks) return nlohmann::json::array({{{"op", "put"}, {"scan", ToJson(after)}}});
    ScanRecord whole = after;
    whole.chunks = before.chunks;
    return nlohmann::json::array({{{"op", "put"}, {"scan", ToJson(whole)}}});
  };

  if (compare_chunks) {
  std::map<std::uint32_t, const ChunkRecord*> old_chunks;
  for (const auto& c : before.chunks) old_chunks[c.chunk.index] = &c;
  std::set<std::uint32_t> seen;
  for (const auto& c : after.chunks) {
    if (!seen.insert(c.chunk.index).second) return put_all();  // a duplicate index: normalised by put
    const auto it = old_chunks.find(c.chunk.index);
    if (it == old_chunks.end() || !SameChunkMeta(*it->second, c)) {
      ops.push_back({{"op", "chunk"}, {"uid", uid}, {"chunk", ChunkToJson(c)}});
    } else if (!SameUpload(it->second->upload, c.upload)) {
      ops.push_back({{"op", "up"}, {"uid", uid}, {"i", c.chunk.index}, {"url", c.upload.url},
                     {"off", c.upload.confirmed_offset}, {"done", c.upload.complete}});
    }
  }
  for (const auto& [index, c] : old_chunks) {
    if (!seen.count(index)) return put_all();  // a chunk was removed
  }
  }
  if (!SameUpload(before.manifest_upload, after.manifest_upload)) {
    ops.push_back({{"op", "up"}, {"uid", uid}, {"i", -1}, {"url", after.manifest_upload.url},
                   {"off", after.manifest_upload.confirmed_offset}, {"done", after.manifest_upload.complete}});
  }
  std::map<std::string, const ResultRecord*> old_results;
  for (const auto& res : before.results) old_results[res.sop_instance_uid] = &res;
  std::set<std::string> seen_results;
  for (const auto& res : after.results) {
    if (!seen_results.insert(res.sop_instance_uid).second) return put_all();
    const auto it = old_results.find(res.sop_instance_uid);
    if (it == old_results.end() || ResultToJson(*it->second) != ResultToJson(res)) {
      ops.push_back({{"op", "res"}, {"uid", uid}, {"res", ResultToJson(res)}});
    }
  }
  // Results keep their order and are only added; anything else is rare enough for a whole record.
  std::size_t kept = 0;
  for (const auto& res : after.results) {
    if (!old_results.count(res.sop_instance_uid)) continue;
    if (kept >= before.results.size() || before.results[kept].sop_instance_uid != res.sop_instance_uid) {
      return put_all();
    }
    ++kept;
  }
  if (kept != before.results.size()) return put_all();
  const nlohmann::json a = ScalarsToJson(before);
  const nlohmann::json b = ScalarsToJson(after);
  nlohmann::json fields = nlohmann::json::object();
  for (const auto& [key, value] : b.items()) {
    if (a.at(key) != value) fields[key] = value;
  }
  if (!fields.empty()) ops.push_back({{"op", "set"}, {"uid", uid}, {"fields", fields}});
  return ops;
}

}  // namespace

const char* ToString(ScanState state) {
  switch (state) {
    case ScanState::kAcquiring: return "acquiring";
    case ScanState::kAcquired: return "acquired";
    case ScanState::kUploaded: return "uploaded";
    case ScanState::kResultsReceived: return "results-received";
    case ScanState::kDelivered: return "delivered";
    case ScanState::kFailed: return "failed";
  }
  return "unknown";
}

const char* ToString(RetentionPolicy policy) {
  switch (policy) {
    case RetentionPolicy::kAfterUpload: return "after_upload";
    case RetentionPolicy::kAfterResults: return "after_results";
    case RetentionPolicy::kAfterDelivery: return "after_delivery";
    case RetentionPolicy::kKeepDays: return "keep_days";
  }
  return "unknown";
}

Expected<RetentionPolicy> ParseRetentionPolicy(const std::string& text) {
  for (auto p : {RetentionPolicy::kAfterUpload, RetentionPolicy::kAfterResults, RetentionPolicy::kAfterDelivery,
                 RetentionPolicy::kKeepDays}) {
    if (text == ToString(p)) return p;
  }
  return MakeError(ErrorKind::kInvalidInput, "spool.retention \"" + text +
                                                 "\" is not one of after_upload, after_results, after_delivery, "
                                                 "keep_days");
}

ChunkTotals TotalsOf(const ScanRecord& r) {
  ChunkTotals totals = r.dropped_chunks;
  for (const ChunkRecord& c : r.chunks) {
    ++totals.count;
    totals.views += c.chunk.view_count;
    totals.raw_bytes += c.chunk.raw_bytes;
    totals.compressed_bytes += c.chunk.compressed_bytes;
  }
  return totals;
}

nlohmann::json ToJson(const ScanRecord& r) {
  nlohmann::json j = ScalarsToJson(r);
  nlohmann::json chunks = nlohmann::json::array();
  for (const auto& c : r.chunks) chunks.push_back(ChunkToJson(c));
  nlohmann::json results = nlohmann::json::array();
  for (const auto& res : r.results) results.push_back(ResultToJson(res));
  j["scan_uid"] = r.scan_uid;
  j["chunks"] = std::move(chunks);
  j["manifest_upload"] = UploadToJson(r.manifest_upload);
  j["results"] = std::move(results);
  return j;
}

// The snapshot's record of one scan, {"type":"scan","scan":{...}}, framed at the end of `out`,
// its JSON text written there a chunk at a time: ToJson(r) as one tree costs a few KiB a chunk,
// and a string of the text then a framed copy of it were two more copies of ~0.35 KiB a chunk;
// at every compaction during a long scan each made the agent's peak memory grow with the scan
// (docs/configuration.md, "Memory"). Reads back exactly as ToJson(r) does.
void AppendScanSnapshotRecord(std::vector<std::uint8_t>& out, const ScanRecord& r) {
  const auto append = [&out](std::string_view text) { out.insert(out.end(), text.begin(), text.end()); };
  nlohmann::json head = ScalarsToJson(r);
  nlohmann::json results = nlohmann::json::array();
  for (const auto& res : r.results) results.push_back(ResultToJson(res));
  head["scan_uid"] = r.scan_uid;
  head["manifest_upload"] = UploadToJson(r.manifest_upload);
  head["results"] = std::move(results);
  const std::size_t frame = journal::BeginFrame(out);
  append(R"({"type":"scan","scan":)");
  const std::string head_text = head.dump();
  // Without its closing brace: "chunks" follows (head is never empty: it has scan_uid).
  append(std::string_view(head_text).substr(0, head_text.size() - 1));
  append(R"(,"chunks":[)");
  for (std::size_t i = 0; i < r.chunks.size(); ++i) {
    if (i > 0) append(",");
    append(ChunkToJson(r.chunks[i]).dump());
  }
  append("]}}");
  journal::EndFrame(out, frame);
}

Expected<ScanRecord> ScanRecordFromJson(const nlohmann::json& j) {
  try {
    ScanRecord r;
    r.scan_uid = j.at("scan_uid").get<std::string>();
    if (auto st = ScalarsFromJson(j, r); !st) return MakeError(st.error());
    for (const auto& c : j.at("chunks")) PutChunk(r, ChunkFromJson(c));
    r.manifest_upload = UploadFromJson(j.at("manifest_upload"));
    for (const auto& res : j.at("results")) r.results.push_back(ResultFromJson(res));
    DropChunkListOnceDone(r);
    return r;
  } catch (const nlohmann::json::exception& e) {
    return MakeError(ErrorKind::kCorrupt, std::string("scan record: ") + e.what());
  }
}

// ---- Opening and recovery -----------------------------------------------------------------

Expected<std::unique_ptr<Spool>> Spool::Open(const SpoolOptions& options, FileStore& files) {
  if (options.directory.empty()) return MakeError(ErrorKind::kInvalidInput, "spool directory is not set");
  const auto marker = options.directory / "spool.json";
  std::unique_ptr<FileLock> lock;
  if (!options.read_only) {
    if (auto st = files.CreateDirectories(options.directory / "scans"); !st) {
      return MakeError(st.error().WithContext("opening the spool"));
    }
    // Before anything is read or written: a second writer would remove the first one's
    // not-yet-journaled chunk files as orphans and compact its journal away.
    auto locked = files.LockExclusive(LockFile(options.directory));
    if (!locked) {
      if (locked.error().kind() != ErrorKind::kBusy) return MakeError(locked.error().WithContext("opening the spool"));
      return MakeError(ErrorKind::kBusy, "spool " + locked.error().message() +
                                             "; only one process writes a spool at a time (`ctagent status` and "
                                             "`ctagent check` only read it and can run alongside)");
    }
    lock = std::move(*locked);
  }
  auto existing = files.ReadAll(marker, 1 << 16);
  if (existing) {
    const auto j = nlohmann::json::parse(existing->begin(), existing->end(), nullptr, false);
    const int format = (!j.is_discarded() && j.contains("format") && j["format"].is_number_integer())
                           ? j["format"].get<int>()
                           : -1;
    if (format == 1) {
      return MakeError(ErrorKind::kUnsupported,
                       "spool " + options.directory.string() +
                           " was written by an earlier ctagent (format 1, one scan.json per scan); this version "
                           "keeps a journal (format 2) and does not read it. Let the earlier version finish its "
                           "uploads, or move the folder aside and point spool.directory at an empty folder");
    }
    if (format != kSpoolFormat) {
      return MakeError(ErrorKind::kUnsupported, marker.string() + " is not a spool of format " +
                                                    std::to_string(kSpoolFormat) +
                                                    "; point spool.directory at a new folder");
    }
  } else if (existing.error().kind() != ErrorKind::kNotFound) {
    return MakeError(existing.error());
  } else if (!options.read_only) {
    const std::string text = nlohmann::json{{"format", kSpoolFormat}, {"created_by", "ctagent"}}.dump(2);
    if (auto st = files.WriteDurably(marker, AsBytes(text)); !st) return MakeError(st.error());
  }
  std::unique_ptr<Spool> spool(new Spool(options, files));
  spool->lock_ = std::move(lock);
  if (!spool->options_.clock) spool->options_.clock = [] { return std::chrono::system_clock::now(); };
  // Read-only with no marker: nothing was ever spooled here, an empty view (nothing created).
  if (!existing && options.read_only) return spool;
  if (auto st = spool->Recover(); !st) return MakeError(st.error().WithContext("recovering spool " + options.directory.string()));
  return spool;
}

std::filesystem::path Spool::LockFile(const std::filesystem::path& directory) { return directory / "spool.lock"; }

Status Spool::Writable() const {
  if (!options_.read_only) return Ok();
  return MakeError(ErrorKind::kInternal, "spool " + options_.directory.string() +
                                             " was opened read-only (for status); a change was attempted");
}

Status Spool::Recover() {
  std::lock_guard lock(mutex_);
  if (auto st = LoadSnapshot(); !st) return st;
  if (auto st = ReplayJournal(); !st) return st;
  if (options_.read_only) return Ok();  // another process may be writing: read, never repair
  if (auto st = RemoveOrphans(); !st) return st;
  if (auto st = VerifyFiles(); !st) return st;
  // A fresh snapshot and journal at every start keep replay short and prove the disk writable.
  return CompactLocked();
}

Status Spool::LoadSnapshot() {
  const auto path = options_.directory / kSnapshotName;
  bool header = false;
  bool end = false;
  std::uint64_t count = 0;
  auto summary = journal::Read(files_, path, [&](nlohmann::json&& j) -> Status {
    const std::string type = j.value("type", "");
    if (!header) {
      if (type != "snapshot" || !j.contains("format") || CountAt<int>(j, "format") != kSpoolFormat) {
        return MakeError(ErrorKind::kCorrupt, "does not start with a snapshot header of format 2");
      }
      generation_ = CountAt<std::uint64_t>(j, "generation");
      header = true;
      return Ok();
    }
    if (type == "scan") {
      auto record = ScanRecordFromJson(j.at("scan"));
      if (!record) return MakeError(record.error());
      scans_[record->scan_uid] = std::move(*record);
      ++count;
      return Ok();
    }
    if (type == "end" && j.contains("scans") && CountAt<std::uint64_t>(j, "scans") == count) {
      end = true;
      return Ok();
    }
    return MakeError(ErrorKind::kCorrupt, "unexpected record \"" + type + "\"");
  });
  if (!summary && summary.error().kind() == ErrorKind::kNotFound) return Ok();  // a new spool
  const auto advice = " It is replaced atomically, so this is damage to the disk, not a crash: keep the folder for "
                      "analysis and point spool.directory at a new one";
  if (!summary) return MakeError(ErrorKind::kCorrupt, path.string() + ": " + summary.error().message() + "." + advice);
  if (!end || !summary->tail_problem.empty()) {
    return MakeError(ErrorKind::kCorrupt, path.string() + " is incomplete (" +
                                              (summary->tail_problem.empty() ? "no end record" : summary->tail_problem) +
                                              ")." + advice);
  }
  return Ok();
}

Status Spool::ReplayJournal() {
  const auto path = options_.directory / kJournalName;
  bool header = false;
  bool stale = false;
  auto summary = journal::Read(files_, path, [&](nlohmann::json&& j) -> Status {
    if (!header) {
      if (j.value("type", "") != "journal") return MakeError(ErrorKind::kCorrupt, "no journal header");
      const auto gen = CountAt<std::uint64_t>(j, "generation");
      if (gen < generation_) stale = true;  // a compaction finished its snapshot: all of it is in there
      if (gen > generation_) {
        return MakeError(ErrorKind::kCorrupt, "journal generation " + std::to_string(gen) +
                                                  " is newer than the snapshot's " + std::to_string(generation_));
      }
      header = true;
      return Ok();
    }
    if (stale) return Ok();
    for (const auto& op : j.at("ops")) {
      if (auto st = ApplyOp(scans_, op); !st) {
        log::Error("spool", "journal " + path.string() + ": skipping an operation that does not apply: " +
                                st.error().message());
      }
    }
    ++recovery_.journal_records;
    return Ok();
  });
  if (!summary && summary.error().kind() == ErrorKind::kNotFound) return Ok();  // compaction below creates it
  if (!summary) {
    return MakeError(ErrorKind::kCorrupt, "journal " + path.string() + ": " + summary.error().message() +
                                              "; keep the folder for analysis and point spool.directory at a new one");
  }
  if (!header) {
    // Journals are created whole by an atomic rename, so a missing header is damage, not a crash.
    return MakeError(ErrorKind::kCorrupt, "journal " + path.string() + " has no readable header (" +
                                              summary->tail_problem + "); keep the folder for analysis");
  }
  if (summary->valid_bytes < summary->file_bytes && !options_.read_only) {  // read-only: maybe mid-append
    recovery_.torn_tail_bytes = summary->file_bytes - summary->valid_bytes;
    log::Warn("spool", "journal " + path.string() + ": cut " + std::to_string(recovery_.torn_tail_bytes) +
                           " bytes of a record torn by a crash at offset " + std::to_string(summary->valid_bytes) +
                           " (" + summary->tail_problem + "); the change it held had not been reported done");
    if (auto st = files_.Truncate(path, summary->valid_bytes); !st) return st;
  }
  journal_bytes_ = summary->valid_bytes;
  return Ok();
}

Status Spool::RemoveOrphans() {
  // Files no record refers to were never accepted (a crash came before their journal record);
  // temp files are writes that never completed. Neither is ever uploaded.
  const auto remove = [&](const std::filesystem::path& p) -> Status {
    log::Info("spool", "recovery: removing " + p.string() + " (no record refers to it)");
    ++recovery_.orphans_removed;
    return files_.Remove(p);
  };
  auto top = files_.List(options_.directory);
  if (!top) return MakeError(top.error());
  for (const auto& e : *top) {
    if (e.name == std::string(kSnapshotName) + ".tmp" || e.name == std::string(kJournalName) + ".tmp" ||
        e.name == "spool.json.tmp") {
      if (auto st = remove(options_.directory / e.name); !st) return st;
    }
  }
  auto scans = files_.List(options_.directory / "scans");
  if (!scans) return MakeError(scans.error());
  for (const auto& entry : *scans) {
    const auto dir = options_.directory / "scans" / entry.name;
    const auto it = scans_.find(entry.name);
    if (it == scans_.end() || !entry.is_directory) {
      if (auto st = remove(dir); !st) return st;
      continue;
    }
    const ScanRecord& r = it->second;
    auto files = files_.List(dir);
    if (!files) return MakeError(files.error());
    for (const auto& f : *files) {
      // mapping.json: the scan's privacy mapping (MappingPath), written before its record, so
      // a scan with a record may have one; only the terminal can re-identify its results with it.
      const bool keep = (f.name == "chunks" && f.is_directory) || (f.name == "results" && f.is_directory) ||
                        (f.name == "manifest.json" && r.manifest_written && !r.raw_deleted) ||
                        (f.name == "mapping.json" && !f.is_directory);
      if (!keep) {
        if (auto st = remove(dir / f.name); !st) return st;
      }
    }
    std::set<std::string> chunk_names;
    if (!r.raw_deleted) {
      for (const auto& c : r.chunks) chunk_names.insert(ChunkFileName(c.chunk.index));
    }
    std::set<std::string> result_names;
    for (const auto& res : r.results) result_names.insert(res.sop_instance_uid + ".dcm");
    // The results module's per-scan findings record (results::kFindingsFileName: category, lesion
    // count, what the console refused), written beside the instances once the set is checked.
    result_names.insert("findings.json");
    for (const auto& [sub, wanted] : {std::pair{"chunks", &chunk_names}, std::pair{"results", &result_names}}) {
      auto listing = files_.List(dir / sub);
      if (!listing) {
        if (listing.error().kind() == ErrorKind::kNotFound) continue;
        return MakeError(listing.error());
      }
      for (const auto& f : *listing) {
        if (!wanted->count(f.name) || f.is_directory) {
          if (auto st = remove(dir / sub / f.name); !st) return st;
        }
      }
    }
  }
  return Ok();
}

namespace {

// SHA-256 of a file read in pieces of `piece_bytes` (a chunk may be large; memory must not be),
// and its length in `length` (optional).
Expected<std::string> HashFile(FileStore& files, const std::filesystem::path& path,
                               std::uint64_t piece_bytes = kHashPieceBytes, std::uint64_t* length = nullptr) {
  Sha256 hash;
  std::uint64_t offset = 0;
  while (true) {
    auto piece = files.ReadRange(path, offset, piece_bytes);
    if (!piece) return MakeError(piece.error());
    if (piece->empty()) break;
    hash.Update(*piece);
    offset += piece->size();
  }
  if (length != nullptr) *length = offset;
  return hash.FinalHex();
}

}  // namespace

Status Spool::VerifyFiles() {
  // Chunks the cloud has not confirmed, and the manifest until it is confirmed: these will
  // still be uploaded, so they must be exactly what was recorded when they were written.
  std::vector<std::tuple<std::string, std::int64_t, std::string>> damaged;  // scan, chunk (-1: manifest), why
  for (const auto& scan : scans_) {
    // Named, not a structured binding: clang before 16 (Debian 12's is 14) cannot capture one
    // in a lambda, and an OEM's toolchain may be clang.
    const std::string& uid = scan.first;
    const ScanRecord& r = scan.second;
    if (r.state == ScanState::kFailed || r.raw_deleted) continue;
    const auto check = [&](std::int64_t index, const std::filesystem::path& path, const std::string& expected) {
      ++recovery_.files_verified;
      auto found = HashFile(files_, path);
      if (options_.on_recovery_progress) options_.on_recovery_progress();
      std::string why;
      if (!found) {
        why = found.error().message();
      } else if (*found != expected) {
        why = "expected SHA-256 " + expected + ", found " + *found;
      }
      if (!why.empty()) damaged.emplace_back(uid, index, why);
    };
    for (const auto& c : r.chunks) {
      if (!c.upload.complete && !c.damaged) check(c.chunk.index, ChunkPath(uid, c.chunk.index), c.chunk.sha256.Hex());
    }
    if (r.manifest_written && !r.manifest_upload.complete && !r.manifest_sha256.empty()) {
      check(-1, ScanDir(uid) / "manifest.json", r.manifest_sha256);
    }
  }
  for (const auto& [uid, index, why] : damaged) {
    if (auto st = MarkDamaged(uid, index, why); !st) return st;
  }
  return Ok();
}

Status Spool::MarkDamaged(const std::string& scan_uid, std::int64_t chunk_index, const std::string& why) {
  const std::string what = chunk_index < 0 ? "manifest" : "chunk " + std::to_string(chunk_index);
  const std::string line = "scan " + scan_uid + " " + what + ": " + why;
  log::Error("spool", line + "; the scan is marked failed and this file will not be uploaded (see docs/durability.md)");
  recovery_.damaged.push_back(line);
  auto it = scans_.find(scan_uid);
  if (it == scans_.end()) return Ok();
  ScanRecord after = it->second;
  for (auto& c : after.chunks) {
    if (static_cast<std::int64_t>(c.chunk.index) == chunk_index) c.damaged = true;
  }
  after.state = ScanState::kFailed;
  if (after.failure_reason.empty()) after.failure_reason = "spool file damaged: " + what + ": " + why;
  return Commit(Diff(it->second, after));
}

// ---- Journal writes and compaction ----------------------------------------------------------

std::int64_t Spool::NowUnixSeconds() const {
  return std::chrono::duration_cast<std::chrono::seconds>(options_.clock().time_since_epoch()).count();
}

Status Spool::Commit(nlohmann::json ops) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  if (broken_) return MakeError(*broken_);
  if (ops.empty()) return Ok();
  const auto path = options_.directory / kJournalName;
  const auto frame = journal::Frame({{"ops", ops}});
  if (auto st = files_.AppendDurably(path, frame); !st) {
    // Part of the record may be in the file: cut it, or a later record would sit behind garbage.
    if (auto cut = files_.Truncate(path, journal_bytes_); !cut) {
      broken_ = Error(ErrorKind::kIo, "the journal " + path.string() + " could not be restored after a failed write (" +
                                          cut.error().message() + "); restart the agent to recover the spool");
    }
    return MakeError(st.error().WithContext("journaling a change in spool " + options_.directory.string()));
  }
  journal_bytes_ += frame.size();
  for (const auto& op : ops) {
    if (auto st = ApplyOp(scans_, op); !st) {
      return MakeError(ErrorKind::kInternal, "a journaled change does not apply: " + st.error().message());
    }
  }
  if (journal_bytes_ > options_.journal_compact_bytes) {
    // The change is durable already; a failed compaction is retried at the next record.
    if (auto st = CompactLocked(); !st) log::Warn("spool", "compaction failed: " + st.error().message());
  }
  return Ok();
}

Status Spool::CompactLocked() {
  if (broken_) return MakeError(*broken_);
  const std::uint64_t next = generation_ + 1;
  std::vector<std::uint8_t> snapshot = journal::Frame({{"type", "snapshot"}, {"format", kSpoolFormat}, {"generation", next}});
  // Reserved for what the records will take (a chunk's is ~0.35 KiB; the estimate is generous),
  // so the buffer does not double past it while growing.
  std::size_t estimate = snapshot.size() + 64;
  for (const auto& [uid, r] : scans_) estimate += 4096 + 1024 * r.results.size() + 512 * r.chunks.size();
  snapshot.reserve(estimate);
  for (const auto& [uid, r] : scans_) AppendScanSnapshotRecord(snapshot, r);
  const auto end = journal::Frame({{"type", "end"}, {"scans", scans_.size()}});
  snapshot.insert(snapshot.end(), end.begin(), end.end());
  // The snapshot's rename is the commit point: from then on the old journal is stale.
  if (auto st = files_.WriteDurably(options_.directory / kSnapshotName, snapshot); !st) return st;
  generation_ = next;
  const auto header = journal::Frame({{"type", "journal"}, {"generation", next}});
  if (auto st = files_.WriteDurably(options_.directory / kJournalName, header); !st) {
    // Records appended to the stale journal would be ignored at the next start: refuse them.
    broken_ = Error(st.error().kind(), "cannot start a new journal after compaction (" + st.error().message() +
                                           "); restart the agent to recover the spool");
    return MakeError(*broken_);
  }
  journal_bytes_ = header.size();
  return Ok();
}

Status Spool::Compact() {
  if (auto st = Writable(); !st) return MakeError(st.error());
  std::lock_guard lock(mutex_);
  return CompactLocked();
}

// ---- Paths and space ------------------------------------------------------------------------

std::filesystem::path Spool::ScanDir(const std::string& scan_uid) const {
  return options_.directory / "scans" / scan_uid;
}

std::filesystem::path Spool::ChunkPath(const std::string& scan_uid, std::uint32_t index) const {
  return ScanDir(scan_uid) / "chunks" / ChunkFileName(index);
}

std::filesystem::path Spool::ResultPath(const std::string& scan_uid, const std::string& sop_instance_uid) const {
  return ScanDir(scan_uid) / "results" / (sop_instance_uid + ".dcm");
}

SpaceReport Spool::SpaceLocked() {
  SpaceReport report;
  std::vector<std::filesystem::path> todo{options_.directory};
  // Bounded walk: the spool is at most dir/scans/<uid>/<sub>/<file>.
  for (std::size_t visited = 0; !todo.empty() && visited < 1000000; ++visited) {
    const auto dir = todo.back();
    todo.pop_back();
    auto listing = files_.List(dir);
    if (!listing) continue;
    for (const auto& e : *listing) {
      if (e.is_directory) {
        todo.push_back(dir / e.name);
      } else {
        report.used_bytes += e.size_bytes;
      }
    }
  }
  for (const auto& [uid, r] : scans_) {
    if (r.state == ScanState::kAcquiring) report.reserved_bytes += r.reserved_bytes;
  }
  if (auto free = files_.FreeBytes(options_.directory); free) report.filesystem_free_bytes = *free;
  return report;
}

SpaceReport Spool::Space() {
  std::lock_guard lock(mutex_);
  return SpaceLocked();
}

std::uint64_t Spool::ResultsRoomLocked() {
  const SpaceReport space = SpaceLocked();
  const std::uint64_t committed = space.used_bytes + space.reserved_bytes;
  const std::uint64_t budget_left = options_.max_bytes > committed ? options_.max_bytes - committed : 0;
  // Acquiring scans' reservations are not on disk yet but will be: they are not results' room.
  const std::uint64_t keep_free = space.reserved_bytes + options_.min_free_bytes;
  const std::uint64_t free_left =
      space.filesystem_free_bytes > keep_free ? space.filesystem_free_bytes - keep_free : 0;
  return std::min(budget_left, free_left);
}

std::uint64_t Spool::ResultsRoom() {
  std::lock_guard lock(mutex_);
  return ResultsRoomLocked();
}

Status Spool::CheckResultsRoomLocked(std::uint64_t bytes, const std::string& what) {
  const SpaceReport space = SpaceLocked();
  const std::uint64_t committed = space.used_bytes + space.reserved_bytes;
  const std::string later =
      "; the results stay in the imaging center and are fetched again on the agent's next run once there is room";
  if (committed + bytes > options_.max_bytes) {
    return MakeError(ErrorKind::kNoSpace,
                     what + " (" + std::to_string(bytes) + " bytes) does not fit the spool budget: " +
                         options_.directory.string() + " has " + std::to_string(committed) + " of its " +
                         std::to_string(options_.max_bytes) +
                         " bytes (spool.max_bytes) in use or reserved; wait for retention to free space or raise "
                         "spool.max_bytes" + later);
  }
  if (space.filesystem_free_bytes < bytes + space.reserved_bytes + options_.min_free_bytes) {
    return MakeError(ErrorKind::kNoSpace,
                     what + " (" + std::to_string(bytes) + " bytes) does not fit: the file system of " +
                         options_.directory.string() + " has " + std::to_string(space.filesystem_free_bytes) +
                         " bytes free, " + std::to_string(space.reserved_bytes) + " are reserved for acquiring scans and " +
                         std::to_string(options_.min_free_bytes) +
                         " must stay free (spool.min_free_bytes); free disk space" + later);
  }
  return Ok();
}

Status Spool::CheckResultsRoom(std::uint64_t bytes, const std::string& what) {
  std::lock_guard lock(mutex_);
  return CheckResultsRoomLocked(bytes, what);
}

// ---- The public operations ------------------------------------------------------------------

Status Spool::BeginScan(ScanRecord record, std::uint64_t bytes) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  std::lock_guard lock(mutex_);
  if (!IsValidDicomUid(record.scan_uid)) {
    return MakeError(ErrorKind::kInvalidInput, "\"" + record.scan_uid + "\" is not a valid scan UID");
  }
  if (scans_.count(record.scan_uid)) {
    return MakeError(ErrorKind::kInvalidInput, "scan " + record.scan_uid + " is already in spool " +
                                                   options_.directory.string());
  }
  const SpaceReport space = SpaceLocked();
  const std::uint64_t committed = space.used_bytes + space.reserved_bytes;
  if (committed + bytes > options_.max_bytes) {
    return MakeError(ErrorKind::kNoSpace,
                     "scan refused before arming: it needs up to " + std::to_string(bytes >> 20) + " MiB but the spool " +
                         options_.directory.string() + " has " + std::to_string(committed >> 20) + " MiB of its " +
                         std::to_string(options_.max_bytes >> 20) +
                         " MiB budget in use; wait for uploads to finish or raise spool.max_bytes");
  }
  if (space.filesystem_free_bytes < bytes + space.reserved_bytes + options_.min_free_bytes) {
    return MakeError(ErrorKind::kNoSpace,
                     "scan refused before arming: it needs up to " + std::to_string(bytes >> 20) + " MiB and " +
                         std::to_string(options_.min_free_bytes >> 20) + " MiB must stay free, but the file system of " +
                         options_.directory.string() + " has only " +
                         std::to_string(space.filesystem_free_bytes >> 20) + " MiB free; free disk space");
  }
  if (auto st = files_.CreateDirectories(ScanDir(record.scan_uid) / "chunks"); !st) return st;
  record.reserved_bytes = bytes;
  record.state = ScanState::kAcquiring;
  return Commit(nlohmann::json::array({{{"op", "put"}, {"scan", ToJson(record)}}}));
}

Status Spool::AddChunk(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                       std::span<const std::uint8_t> bytes) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  {
    std::lock_guard lock(mutex_);
    if (!scans_.count(scan_uid)) {
      return ScanNotFound(scan_uid, options_.directory);
    }
  }
  // The file goes to stable storage first (outside the lock: codec workers write in
  // parallel); only then does the journal mention it.
  if (auto st = files_.WriteDurably(ChunkPath(scan_uid, chunk.index), bytes); !st) {
    return MakeError(st.error().WithContext("writing chunk " + std::to_string(chunk.index) + " of scan " + scan_uid +
                                            " to spool " + options_.directory.string()));
  }
  std::lock_guard lock(mutex_);
  if (!scans_.count(scan_uid)) return MakeError(ErrorKind::kNotFound, "scan " + scan_uid + " left the spool");
  ChunkRecord record;
  record.chunk = chunk;
  return Commit(nlohmann::json::array({{{"op", "chunk"}, {"uid", scan_uid}, {"chunk", ChunkToJson(record)}}}));
}

Status Spool::AddChunkDeferred(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                               std::span<const std::uint8_t> bytes) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  {
    std::lock_guard lock(mutex_);
    const auto it = scans_.find(scan_uid);
    if (it == scans_.end()) {
      return ScanNotFound(scan_uid, options_.directory);
    }
    const bool recorded = std::any_of(it->second.chunks.begin(), it->second.chunks.end(),
                                      [&](const ChunkRecord& c) { return c.chunk.index == chunk.index; });
    const bool queued = std::any_of(pending_.begin(), pending_.end(), [&](const PendingChunk& p) {
      return p.scan_uid == scan_uid && p.record.chunk.index == chunk.index;
    });
    // Never overwrite a durable, recorded file with unsynced bytes (a crash could tear it), and
    // never let one chunk ride in two batches.
    if (queued || recorded) {
      return MakeError(ErrorKind::kInvalidInput, "chunk " + std::to_string(chunk.index) + " of scan " + scan_uid +
                                                     (queued ? " is already queued for a batch sync"
                                                             : " is already stored; AddChunk replaces a stored chunk"));
    }
  }
  // No temp name and no rename: until its record is journaled the file is an orphan that
  // recovery removes, so a torn file at its final name is harmless.
  if (auto st = files_.WriteUnsynced(ChunkPath(scan_uid, chunk.index), bytes); !st) {
    return MakeError(st.error().WithContext("writing chunk " + std::to_string(chunk.index) + " of scan " + scan_uid +
                                            " to spool " + options_.directory.string()));
  }
  std::lock_guard lock(mutex_);
  ChunkRecord record;
  record.chunk = chunk;
  pending_.push_back({scan_uid, std::move(record)});
  pending_bytes_ += bytes.size();
  return Ok();
}

std::uint64_t Spool::pending_bytes() {
  std::lock_guard lock(mutex_);
  return pending_bytes_;
}

Spool::SyncedBatch Spool::SyncPending() {
  // One batch at a time, so batches reach the journal in the order they were taken. The spool
  // lock is held only to take the batch and to journal it: writers keep queueing the next batch
  // while this one is flushed.
  std::lock_guard sync_lock(sync_mutex_);
  std::vector<PendingChunk> batch;
  SyncedBatch result;
  {
    std::lock_guard lock(mutex_);
    batch.swap(pending_);
    std::swap(result.bytes, pending_bytes_);
  }
  if (batch.empty()) return result;
  std::vector<std::filesystem::path> paths;
  std::set<std::filesystem::path> dirs;
  for (const auto& p : batch) {
    result.chunks.emplace_back(p.scan_uid, p.record.chunk);
    paths.push_back(ChunkPath(p.scan_uid, p.record.chunk.index));
    dirs.insert(paths.back().parent_path());
  }
  const auto fail = [&](const Error& error) {
    result.status = MakeError(error.WithContext("making a batch of " + std::to_string(batch.size()) + " chunks (" +
                                                std::to_string(result.bytes) + " bytes) durable in spool " +
                                                options_.directory.string()));
    // Not accepted: the files are orphans. Removing them now frees their space; if that fails
    // too, the next start removes them (nothing refers to them).
    for (const auto& path : paths) (void)files_.Remove(path);
    return result;
  };
  // Every file's data, then the directory entries naming them, then one journal record for all
  // of them: a record never names a file that a power cut could take away.
  if (auto st = files_.SyncBatch(paths, {dirs.begin(), dirs.end()}); !st) return fail(st.error());
  std::lock_guard lock(mutex_);
  nlohmann::json ops = nlohmann::json::array();
  for (const auto& p : batch) {
    if (scans_.count(p.scan_uid)) ops.push_back({{"op", "chunk"}, {"uid", p.scan_uid}, {"chunk", ChunkToJson(p.record)}});
  }
  if (auto st = Commit(std::move(ops)); !st) return fail(st.error());
  return result;
}

Status Spool::FinishAcquisition(const std::string& scan_uid, const codec::Manifest& manifest) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  {
    std::lock_guard lock(mutex_);
    if (std::any_of(pending_.begin(), pending_.end(), [&](const PendingChunk& p) { return p.scan_uid == scan_uid; })) {
      return MakeError(ErrorKind::kInternal, "scan " + scan_uid + " still has chunks waiting for their batch sync; "
                                             "the manifest is written only after every chunk was synced (a bug in "
                                             "the caller: sync first)");
    }
  }
  std::string text;
  {
    std::lock_guard lock(mutex_);
    const auto it = scans_.find(scan_uid);
    if (it == scans_.end()) {
      return ScanNotFound(scan_uid, options_.directory);
    }
    std::vector<const codec::ManifestChunk*> chunks;  // the record keeps them by index
    chunks.reserve(it->second.chunks.size());
    for (const ChunkRecord& c : it->second.chunks) chunks.push_back(&c.chunk);
    text = codec::ManifestText(manifest, chunks);
  }
  if (auto st = files_.WriteDurably(ScanDir(scan_uid) / "manifest.json", AsBytes(text)); !st) return st;
  const std::string sha = Sha256Hex(AsBytes(text));
  text = {};  // not held through the journal write below
  return UpdateFields(scan_uid, [&](ScanRecord& r) {
    r.manifest_written = true;
    r.manifest_sha256 = sha;
    // Kept past retention (which deletes manifest.json): the operator's page times scan end -> report.
    r.manifest_base["acquisition_end_utc"] = manifest.acquisition_end_utc;
    r.views_acquired = manifest.views_acquired;
    r.reserved_bytes = 0;
    if (r.state == ScanState::kAcquiring) r.state = ScanState::kAcquired;
  });
}

Status Spool::Update(const std::string& scan_uid, const std::function<void(ScanRecord&)>& change) {
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  ScanRecord after = it->second;
  change(after);
  if (after.scan_uid != scan_uid) {
    return MakeError(ErrorKind::kInvalidInput, "a change may not rename scan " + scan_uid);
  }
  if (after.confirmed_unix_s == 0 && FullyConfirmed(after)) after.confirmed_unix_s = NowUnixSeconds();
  return Commit(Diff(it->second, after));
}

Status Spool::UpdateFields(const std::string& scan_uid, const std::function<void(ScanRecord&)>& change) {
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  ScanRecord& before = it->second;
  // The copy without the chunk list: moved out of the record for the copy and back at once.
  std::vector<ChunkRecord> chunks = std::move(before.chunks);
  before.chunks.clear();
  ScanRecord after = before;
  before.chunks = std::move(chunks);
  change(after);
  if (after.scan_uid != scan_uid) {
    return MakeError(ErrorKind::kInvalidInput, "a change may not rename scan " + scan_uid);
  }
  if (!after.chunks.empty()) {
    return MakeError(ErrorKind::kInternal, "UpdateFields of scan " + scan_uid + " was given a change of its chunks "
                                           "(a bug in the caller: use Update)");
  }
  if (after.confirmed_unix_s == 0 && FullyConfirmed(after, before.chunks)) after.confirmed_unix_s = NowUnixSeconds();
  return Commit(Diff(before, after, /*compare_chunks=*/false));
}

Status Spool::SetUploads(const std::string& scan_uid, const std::vector<UploadChange>& changes) {
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  const ScanRecord& r = it->second;
  // The last change of each upload wins, as if applied in order; unchanged ones write nothing.
  std::map<std::int64_t, const UploadState*> last;
  for (const UploadChange& change : changes) {
    const std::int64_t index = change.chunk_index < 0 ? -1 : change.chunk_index;
    if (index >= 0 && FindChunk(r, static_cast<std::uint32_t>(index)) == nullptr) {
      return MakeError(ErrorKind::kNotFound, "scan " + scan_uid + " has no chunk " + std::to_string(index));
    }
    last[index] = &change.state;
  }
  nlohmann::json ops = nlohmann::json::array();
  bool completes = false;
  for (const auto& [index, state] : last) {
    const UploadState& now = index < 0 ? r.manifest_upload : FindChunk(r, static_cast<std::uint32_t>(index))->upload;
    if (SameUpload(now, *state)) continue;
    completes = completes || (state->complete && !now.complete);
    ops.push_back({{"op", "up"}, {"uid", scan_uid}, {"i", index}, {"url", state->url},
                   {"off", state->confirmed_offset}, {"done", state->complete}});
  }
  // Update's rule (the scan confirmed when its last upload completes), without a copy: one pass
  // over the chunks, only when this batch completes an upload.
  if (completes && r.confirmed_unix_s == 0) {
    const auto complete_after = [&](std::int64_t index, const UploadState& now) {
      const auto change = last.find(index);
      return change == last.end() ? now.complete : change->second->complete;
    };
    const bool fully = r.manifest_written && complete_after(-1, r.manifest_upload) &&
                       std::all_of(r.chunks.begin(), r.chunks.end(), [&](const ChunkRecord& c) {
                         return complete_after(c.chunk.index, c.upload);
                       });
    if (fully) ops.push_back({{"op", "set"}, {"uid", scan_uid}, {"fields", {{"confirmed_unix_s", NowUnixSeconds()}}}});
  }
  return Commit(std::move(ops));
}

Expected<ScanRecord> Spool::Get(const std::string& scan_uid) {
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  return it->second;
}

Expected<nlohmann::json> Spool::GetManifestBase(const std::string& scan_uid) {
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  return it->second.manifest_base;
}

std::vector<ScanRecord> Spool::AllScans() {
  std::lock_guard lock(mutex_);
  std::vector<ScanRecord> scans;
  for (const auto& [uid, r] : scans_) scans.push_back(r);
  std::stable_sort(scans.begin(), scans.end(),
                   [](const ScanRecord& a, const ScanRecord& b) { return a.created_utc < b.created_utc; });
  return scans;
}

std::vector<ScanHead> Spool::ScanHeads() {
  std::lock_guard lock(mutex_);
  std::vector<ScanHead> heads;
  heads.reserve(scans_.size());
  for (auto& [uid, r] : scans_) {
    ScanHead head;
    head.totals = TotalsOf(r);
    head.chunks_uploaded = r.dropped_chunks.count;  // a dropped list: every chunk was confirmed
    for (const ChunkRecord& c : r.chunks) {
      if (c.upload.complete) {
        ++head.chunks_uploaded;
      } else {
        head.chunk_bytes_to_upload +=
            c.chunk.compressed_bytes - std::min(c.chunk.compressed_bytes, c.upload.confirmed_offset);
      }
    }
    // The copy without the chunk list: moved out of the record for the copy and back at once.
    std::vector<ChunkRecord> chunks = std::move(r.chunks);
    r.chunks.clear();
    head.record = r;
    r.chunks = std::move(chunks);
    heads.push_back(std::move(head));
  }
  std::stable_sort(heads.begin(), heads.end(),
                   [](const ScanHead& a, const ScanHead& b) { return a.record.created_utc < b.record.created_utc; });
  return heads;
}

void Spool::VisitScans(const std::function<void(const ScanRecord&)>& visit) {
  std::lock_guard lock(mutex_);
  for (const auto& [uid, r] : scans_) visit(r);
}

// What reading a file back needs from a scan's record, copied under the lock. Only these few
// fields: a copy of the whole record grows with the scan (~0.25 KiB a chunk), and every upload
// reads its chunk back, up to cloud.parallel_uploads at once (docs/configuration.md, "Memory").
struct Spool::FileCheck {
  std::string sha256;
  std::uint64_t length = 0;  // a chunk file's size as written (not known for the manifest)
  bool damaged = false;
  bool raw_deleted = false;
  bool manifest_written = false;
};

Expected<Spool::FileCheck> Spool::CheckOf(const std::string& scan_uid, std::int64_t chunk_index) {
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  const ScanRecord& r = it->second;
  FileCheck check;
  check.raw_deleted = r.raw_deleted;
  check.manifest_written = r.manifest_written;
  if (chunk_index < 0) {
    check.sha256 = r.manifest_sha256;
    return check;
  }
  const ChunkRecord* chunk = FindChunk(r, static_cast<std::uint32_t>(chunk_index));
  if (chunk == nullptr) {
    return MakeError(ErrorKind::kNotFound, "scan " + scan_uid + " has no chunk " + std::to_string(chunk_index));
  }
  check.sha256 = chunk->chunk.sha256.Hex();
  check.length = chunk->chunk.compressed_bytes;
  check.damaged = chunk->damaged;
  return check;
}

Expected<ChunkRecord> Spool::GetChunk(const std::string& scan_uid, std::uint32_t index) {
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  const ChunkRecord* chunk = FindChunk(it->second, index);
  if (chunk == nullptr) {
    return MakeError(ErrorKind::kNotFound, "scan " + scan_uid + " has no chunk " + std::to_string(index));
  }
  return *chunk;
}

Expected<UploadState> Spool::GetManifestUpload(const std::string& scan_uid) {
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  std::lock_guard lock(mutex_);
  const auto it = scans_.find(scan_uid);
  if (it == scans_.end()) {
    return ScanNotFound(scan_uid, options_.directory);
  }
  return it->second.manifest_upload;
}

Expected<std::filesystem::path> Spool::ChunkFileToRead(const std::string& scan_uid, std::uint32_t index,
                                                      FileCheck* check) {
  auto found = CheckOf(scan_uid, index);
  if (!found) return MakeError(found.error());
  *check = std::move(*found);
  auto path = ChunkPath(scan_uid, index);
  if (check->raw_deleted) {
    return MakeError(ErrorKind::kNotFound, "chunk file " + path.string() +
                                               " was deleted by retention after the cloud confirmed it");
  }
  if (check->damaged) {
    return MakeError(ErrorKind::kCorrupt, "spool file " + path.string() +
                                              " was found damaged; it will not be uploaded. The scan needs attention "
                                              "(see docs/durability.md)");
  }
  return path;
}

Error Spool::ChunkFileDamaged(const std::string& scan_uid, std::uint32_t index, const std::filesystem::path& path,
                              const std::string& why, ErrorKind kind) {
  {
    std::lock_guard lock(mutex_);
    if (auto st = MarkDamaged(scan_uid, index, why); !st) {
      log::Error("spool", "cannot record the damage of " + path.string() + ": " + st.error().message());
    }
  }
  return Error(kind, "spool file " + path.string() + " (" + why +
                         ") does not match the SHA-256 recorded when it was written or cannot be read; it will not "
                         "be uploaded. The scan needs attention (see docs/durability.md)");
}

Expected<std::vector<std::uint8_t>> Spool::ReadChunk(const std::string& scan_uid, std::uint32_t index) {
  FileCheck check;
  auto path = ChunkFileToRead(scan_uid, index, &check);
  if (!path) return MakeError(path.error());
  auto bytes = files_.ReadAll(*path, kMaxChunkBytes);
  if (!bytes) return MakeError(ChunkFileDamaged(scan_uid, index, *path, bytes.error().message(), bytes.error().kind()));
  if (const auto found = Sha256Hex(*bytes); found != check.sha256) {
    return MakeError(ChunkFileDamaged(scan_uid, index, *path, "expected SHA-256 " + check.sha256 + ", found " + found,
                                      ErrorKind::kCorrupt));
  }
  return bytes;
}

Expected<Spool::CheckedChunkFile> Spool::CheckChunkFile(const std::string& scan_uid, std::uint32_t index) {
  FileCheck check;
  auto path = ChunkFileToRead(scan_uid, index, &check);
  if (!path) return MakeError(path.error());
  // In pieces, so what a check holds is one piece however large the chunk: the uploader checks
  // every chunk this way and then sends it from the file (docs/configuration.md, "Memory").
  std::uint64_t length = 0;
  const auto found = HashFile(files_, *path, kCheckPieceBytes, &length);
  if (!found) return MakeError(ChunkFileDamaged(scan_uid, index, *path, found.error().message(), found.error().kind()));
  if (length != check.length) {
    return MakeError(ChunkFileDamaged(
        scan_uid, index, *path, "expected " + std::to_string(check.length) + " bytes, found " + std::to_string(length),
        ErrorKind::kCorrupt));
  }
  if (*found != check.sha256) {
    return MakeError(ChunkFileDamaged(scan_uid, index, *path, "expected SHA-256 " + check.sha256 + ", found " + *found,
                                      ErrorKind::kCorrupt));
  }
  return CheckedChunkFile{std::move(*path), length};
}

Expected<std::vector<std::uint8_t>> Spool::ReadManifest(const std::string& scan_uid) {
  auto check = CheckOf(scan_uid, -1);
  if (!check) return MakeError(check.error());
  const auto path = ScanDir(scan_uid) / "manifest.json";
  auto bytes = files_.ReadAll(path, kMaxRecordBytes);
  std::string why;
  if (!bytes) {
    if (!check->manifest_written) return bytes;  // not written yet: nothing is damaged
    why = bytes.error().message();
  } else if (!check->sha256.empty()) {
    if (const auto found = Sha256Hex(*bytes); found != check->sha256) {
      why = "expected SHA-256 " + check->sha256 + ", found " + found;
    }
  }
  if (why.empty()) return bytes;
  {
    std::lock_guard lock(mutex_);
    if (auto st = MarkDamaged(scan_uid, -1, why); !st) {
      log::Error("spool", "cannot record the damage of " + path.string() + ": " + st.error().message());
    }
  }
  return MakeError(bytes ? ErrorKind::kCorrupt : bytes.error().kind(),
                   "spool file " + path.string() + " (" + why +
                       ") cannot be read or does not match the SHA-256 recorded when it was written; it will not be "
                       "uploaded. The scan needs attention (see docs/durability.md)");
}

Expected<std::filesystem::path> Spool::StoreResult(const std::string& scan_uid, const std::string& sop_instance_uid,
                                                   std::span<const std::uint8_t> part10) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  if (!IsValidDicomUid(sop_instance_uid)) {
    return MakeError(ErrorKind::kProtocol, "\"" + sop_instance_uid + "\" is not a valid SOP instance UID");
  }
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  {
    // Checked before any byte is written. Two writers racing past the check together could
    // overshoot by one instance; the fetcher stores results from one thread.
    std::lock_guard lock(mutex_);
    if (auto st = CheckResultsRoomLocked(part10.size(), "result instance " + sop_instance_uid); !st) {
      return MakeError(st.error());
    }
  }
  const auto dir = ScanDir(scan_uid) / "results";
  if (auto st = files_.CreateDirectories(dir); !st) return MakeError(st.error());
  const auto path = ResultPath(scan_uid, sop_instance_uid);
  if (auto st = files_.WriteDurably(path, part10); !st) return MakeError(st.error());
  return path;
}

Expected<std::vector<std::filesystem::path>> Spool::StoreResults(const std::string& scan_uid,
                                                                 const std::vector<ResultToStore>& instances) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  std::uint64_t total = 0;
  for (const auto& instance : instances) {
    if (!IsValidDicomUid(instance.sop_instance_uid)) {
      return MakeError(ErrorKind::kProtocol, "\"" + instance.sop_instance_uid + "\" is not a valid SOP instance UID");
    }
    total += instance.part10.size();
  }
  std::vector<std::filesystem::path> paths;
  if (instances.empty()) return paths;
  {
    // All of the batch is checked before any byte is written (as StoreResult does for one).
    std::lock_guard lock(mutex_);
    if (auto st = CheckResultsRoomLocked(total, std::to_string(instances.size()) + " result instances"); !st) {
      return MakeError(st.error());
    }
  }
  const auto dir = ScanDir(scan_uid) / "results";
  if (auto st = files_.CreateDirectories(dir); !st) return MakeError(st.error());
  for (const auto& instance : instances) {
    paths.push_back(ResultPath(scan_uid, instance.sop_instance_uid));
    if (auto st = files_.WriteUnsynced(paths.back(), instance.part10); !st) return MakeError(st.error());
  }
  if (auto st = files_.SyncBatch(paths, {dir}); !st) return MakeError(st.error());
  return paths;
}

// ---- Retention ------------------------------------------------------------------------------

Expected<RetentionReport> Spool::ApplyRetention(std::chrono::system_clock::time_point now) {
  if (auto st = Writable(); !st) return MakeError(st.error());
  std::lock_guard lock(mutex_);
  const std::int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  RetentionReport report;
  nlohmann::json ops = nlohmann::json::array();
  std::vector<std::pair<std::string, bool>> doomed;  // scan, whole scan (else raw data only)
  for (const auto& [uid, r] : scans_) {
    // Only what the cloud confirmed, never a failed scan (it needs a person first).
    if (r.state == ScanState::kFailed || !FullyConfirmed(r) || r.confirmed_unix_s == 0) continue;
    // A clock that jumped back makes the age negative: nothing is due early.
    const bool aged = now_s - r.confirmed_unix_s >= static_cast<std::int64_t>(options_.keep_days) * 86400;
    bool raw_due = false;  // the policy decides when the raw data (chunks, manifest) goes
    switch (options_.retention) {
      case RetentionPolicy::kAfterUpload: raw_due = true; break;
      case RetentionPolicy::kAfterResults:
        raw_due = r.state == ScanState::kResultsReceived || r.state == ScanState::kDelivered;
        break;
      case RetentionPolicy::kAfterDelivery: raw_due = r.state == ScanState::kDelivered; break;
      case RetentionPolicy::kKeepDays: raw_due = aged; break;
    }
    // The scan's record and its local copy of the images stay keep_days after confirmation
    // whatever the policy, so the operator can still find them right after the scan.
    if (r.state == ScanState::kDelivered && aged) {
      ops.push_back({{"op", "del"}, {"uid", uid}});
      doomed.emplace_back(uid, true);
      report.scans_removed.push_back(uid);
    } else if (raw_due && !r.raw_deleted) {
      ops.push_back({{"op", "set"}, {"uid", uid}, {"fields", {{"raw_deleted", true}}}});
      doomed.emplace_back(uid, false);
      report.raw_deleted.push_back(uid);
    } else {
      continue;
    }
    if (!r.raw_deleted) {
      for (const auto& c : r.chunks) report.bytes_freed += c.chunk.compressed_bytes;
    }
  }
  // One record for all of it, so a crash leaves either none or all of the decisions.
  if (auto st = Commit(std::move(ops)); !st) return MakeError(st.error());
  for (const auto& [uid, whole] : doomed) {
    Status st = Ok();
    if (whole) {
      st = files_.Remove(ScanDir(uid));
    } else {
      st = files_.Remove(ScanDir(uid) / "chunks");
      if (st) st = files_.Remove(ScanDir(uid) / "manifest.json");
    }
    // The record already says deleted; leftovers are orphans, removed at the next start.
    if (!st) log::Warn("spool", "retention: " + st.error().message() + "; retried at the next start");
  }
  if (!doomed.empty()) {
    log::Info("spool", "retention (" + std::string(ToString(options_.retention)) + "): removed raw data of " +
                           std::to_string(report.raw_deleted.size()) + " scan(s) and " +
                           std::to_string(report.scans_removed.size()) + " delivered scan(s), " +
                           std::to_string(report.bytes_freed >> 20) + " MiB");
  }
  return report;
}

}  // namespace ctagent::spool
