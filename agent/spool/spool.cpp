#include "agent/spool/spool.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>

#include "agent/common/sha256.hpp"
#include "agent/common/uid.hpp"

namespace ctagent::spool {
namespace {

constexpr int kSpoolFormat = 1;
constexpr std::uint64_t kMaxRecordBytes = 64ull << 20;
constexpr std::uint64_t kMaxChunkBytes = 1ull << 30;

const ScanState kAllStates[] = {ScanState::kAcquiring, ScanState::kAcquired,  ScanState::kUploaded,
                                ScanState::kResultsReceived, ScanState::kDelivered, ScanState::kFailed};

nlohmann::json UploadToJson(const UploadState& u) {
  return {{"url", u.url}, {"confirmed_offset", u.confirmed_offset}, {"complete", u.complete}};
}

UploadState UploadFromJson(const nlohmann::json& j) {
  UploadState u;
  u.url = j.at("url").get<std::string>();
  u.confirmed_offset = j.at("confirmed_offset").get<std::uint64_t>();
  u.complete = j.at("complete").get<bool>();
  return u;
}

std::string ChunkFileName(std::uint32_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "%06u.ctc", index);
  return name;
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

nlohmann::json ToJson(const ScanRecord& r) {
  nlohmann::json chunks = nlohmann::json::array();
  for (const auto& c : r.chunks) {
    chunks.push_back({{"index", c.chunk.index},
                      {"first_view", c.chunk.first_view},
                      {"view_count", c.chunk.view_count},
                      {"raw_bytes", c.chunk.raw_bytes},
                      {"compressed_bytes", c.chunk.compressed_bytes},
                      {"raw_sha256", c.chunk.raw_sha256},
                      {"sha256", c.chunk.sha256},
                      {"upload", UploadToJson(c.upload)}});
  }
  nlohmann::json results = nlohmann::json::array();
  for (const auto& res : r.results) {
    results.push_back({{"sop_instance_uid", res.sop_instance_uid},
                       {"series_uid", res.series_uid},
                       {"sop_class_uid", res.sop_class_uid},
                       {"delivered", res.delivered}});
  }
  return {{"scan_uid", r.scan_uid},
          {"study_uid", r.study_uid},
          {"state", ToString(r.state)},
          {"failure_reason", r.failure_reason},
          {"reserved_bytes", r.reserved_bytes},
          {"views_acquired", r.views_acquired},
          {"chunks", chunks},
          {"manifest_written", r.manifest_written},
          {"manifest_upload", UploadToJson(r.manifest_upload)},
          {"results", results},
          {"created_utc", r.created_utc},
          {"manifest_base", r.manifest_base}};
}

Expected<ScanRecord> ScanRecordFromJson(const nlohmann::json& j) {
  try {
    ScanRecord r;
    r.scan_uid = j.at("scan_uid").get<std::string>();
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
    r.reserved_bytes = j.at("reserved_bytes").get<std::uint64_t>();
    r.views_acquired = j.at("views_acquired").get<std::uint64_t>();
    for (const auto& c : j.at("chunks")) {
      ChunkRecord cr;
      cr.chunk.index = c.at("index").get<std::uint32_t>();
      cr.chunk.first_view = c.at("first_view").get<std::uint64_t>();
      cr.chunk.view_count = c.at("view_count").get<std::uint32_t>();
      cr.chunk.raw_bytes = c.at("raw_bytes").get<std::uint64_t>();
      cr.chunk.compressed_bytes = c.at("compressed_bytes").get<std::uint64_t>();
      cr.chunk.raw_sha256 = c.at("raw_sha256").get<std::string>();
      cr.chunk.sha256 = c.at("sha256").get<std::string>();
      cr.upload = UploadFromJson(c.at("upload"));
      r.chunks.push_back(std::move(cr));
    }
    r.manifest_written = j.at("manifest_written").get<bool>();
    r.manifest_upload = UploadFromJson(j.at("manifest_upload"));
    for (const auto& res : j.at("results")) {
      r.results.push_back({res.at("sop_instance_uid").get<std::string>(), res.at("series_uid").get<std::string>(),
                           res.at("sop_class_uid").get<std::string>(), res.at("delivered").get<bool>()});
    }
    r.created_utc = j.at("created_utc").get<std::string>();
    r.manifest_base = j.at("manifest_base");
    return r;
  } catch (const nlohmann::json::exception& e) {
    return MakeError(ErrorKind::kCorrupt, std::string("scan record: ") + e.what());
  }
}

Expected<std::unique_ptr<Spool>> Spool::Open(const SpoolOptions& options, FileStore& files) {
  if (options.directory.empty()) return MakeError(ErrorKind::kInvalidInput, "spool directory is not set");
  if (auto st = files.CreateDirectories(options.directory / "scans"); !st) {
    return MakeError(st.error().WithContext("opening the spool"));
  }
  const auto marker = options.directory / "spool.json";
  auto existing = files.ReadAll(marker, 1 << 16);
  if (existing) {
    const auto j = nlohmann::json::parse(existing->begin(), existing->end(), nullptr, false);
    if (j.is_discarded() || !j.contains("format") || j["format"] != kSpoolFormat) {
      return MakeError(ErrorKind::kUnsupported, marker.string() +
                                                    " is not a spool of format " + std::to_string(kSpoolFormat) +
                                                    "; point spool.directory at a new folder or migrate it");
    }
  } else if (existing.error().kind() == ErrorKind::kNotFound) {
    const std::string text = nlohmann::json{{"format", kSpoolFormat}, {"created_by", "ctagent"}}.dump(2);
    if (auto st = files.WriteDurably(marker, AsBytes(text)); !st) return MakeError(st.error());
  } else {
    return MakeError(existing.error());
  }
  return std::unique_ptr<Spool>(new Spool(options, files));
}

std::filesystem::path Spool::ScanDir(const std::string& scan_uid) const {
  return options_.directory / "scans" / scan_uid;
}

std::filesystem::path Spool::ChunkPath(const std::string& scan_uid, std::uint32_t index) const {
  return ScanDir(scan_uid) / "chunks" / ChunkFileName(index);
}

std::filesystem::path Spool::ResultPath(const std::string& scan_uid, const std::string& sop_instance_uid) const {
  return ScanDir(scan_uid) / "results" / (sop_instance_uid + ".dcm");
}

Status Spool::Persist(const ScanRecord& record) {
  return files_.WriteDurably(ScanDir(record.scan_uid) / "scan.json", AsBytes(ToJson(record).dump(1)));
}

Expected<ScanRecord> Spool::Load(const std::string& scan_uid) {
  if (!IsValidDicomUid(scan_uid)) return MakeError(ErrorKind::kInvalidInput, "\"" + scan_uid + "\" is not a scan UID");
  const auto path = ScanDir(scan_uid) / "scan.json";
  auto bytes = files_.ReadAll(path, kMaxRecordBytes);
  if (!bytes) return MakeError(bytes.error());
  const auto j = nlohmann::json::parse(bytes->begin(), bytes->end(), nullptr, false);
  if (j.is_discarded()) return MakeError(ErrorKind::kCorrupt, path.string() + " is not valid JSON");
  auto record = ScanRecordFromJson(j);
  if (!record) return MakeError(record.error().WithContext(path.string()));
  return record;
}

SpaceReport Spool::SpaceLocked() {
  SpaceReport report;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(options_.directory, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) report.used_bytes += it->file_size(ec);
  }
  for (auto it = std::filesystem::directory_iterator(options_.directory / "scans", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (auto r = Load(it->path().filename().string()); r && r->state == ScanState::kAcquiring) {
      report.reserved_bytes += r->reserved_bytes;
    }
  }
  struct statvfs vfs {};
  if (::statvfs(options_.directory.c_str(), &vfs) == 0) {
    report.filesystem_free_bytes = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  }
  return report;
}

SpaceReport Spool::Space() {
  std::lock_guard lock(mutex_);
  return SpaceLocked();
}

Status Spool::BeginScan(ScanRecord record, std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  if (!IsValidDicomUid(record.scan_uid)) {
    return MakeError(ErrorKind::kInvalidInput, "\"" + record.scan_uid + "\" is not a valid scan UID");
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
  return Persist(record);
}

Status Spool::AddChunk(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                       std::span<const std::uint8_t> bytes) {
  // The file goes to stable storage first; only then does the record mention it.
  if (auto st = files_.WriteDurably(ChunkPath(scan_uid, chunk.index), bytes); !st) {
    return MakeError(st.error().WithContext("writing chunk " + std::to_string(chunk.index) + " of scan " + scan_uid));
  }
  return Update(scan_uid, [&](ScanRecord& r) {
    ChunkRecord record;
    record.chunk = chunk;
    // Chunks can finish compressing out of order; keep the record sorted by index.
    auto pos = std::find_if(r.chunks.begin(), r.chunks.end(),
                            [&](const ChunkRecord& c) { return c.chunk.index > chunk.index; });
    r.chunks.insert(pos, std::move(record));
  });
}

Status Spool::FinishAcquisition(const std::string& scan_uid, const codec::Manifest& manifest) {
  const std::string text = codec::ToJson(manifest).dump(1);
  if (auto st = files_.WriteDurably(ScanDir(scan_uid) / "manifest.json", AsBytes(text)); !st) return st;
  return Update(scan_uid, [&](ScanRecord& r) {
    r.manifest_written = true;
    r.views_acquired = manifest.views_acquired;
    r.reserved_bytes = 0;
    if (r.state == ScanState::kAcquiring) r.state = ScanState::kAcquired;
  });
}

Status Spool::Update(const std::string& scan_uid, const std::function<void(ScanRecord&)>& change) {
  std::lock_guard lock(mutex_);
  auto record = Load(scan_uid);
  if (!record) return MakeError(record.error());
  change(*record);
  return Persist(*record);
}

Expected<ScanRecord> Spool::Get(const std::string& scan_uid) {
  std::lock_guard lock(mutex_);
  return Load(scan_uid);
}

std::vector<ScanRecord> Spool::AllScans() {
  std::lock_guard lock(mutex_);
  std::vector<ScanRecord> scans;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(options_.directory / "scans", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (auto r = Load(it->path().filename().string()); r) scans.push_back(std::move(*r));
  }
  std::sort(scans.begin(), scans.end(),
            [](const ScanRecord& a, const ScanRecord& b) { return a.created_utc < b.created_utc; });
  return scans;
}

Expected<std::vector<std::uint8_t>> Spool::ReadChunk(const std::string& scan_uid, std::uint32_t index) {
  auto record = Get(scan_uid);
  if (!record) return MakeError(record.error());
  const auto it = std::find_if(record->chunks.begin(), record->chunks.end(),
                               [&](const ChunkRecord& c) { return c.chunk.index == index; });
  if (it == record->chunks.end()) {
    return MakeError(ErrorKind::kNotFound, "scan " + scan_uid + " has no chunk " + std::to_string(index));
  }
  const auto path = ChunkPath(scan_uid, index);
  auto bytes = files_.ReadAll(path, kMaxChunkBytes);
  if (!bytes) return MakeError(bytes.error());
  if (Sha256Hex(*bytes) != it->chunk.sha256) {
    return MakeError(ErrorKind::kCorrupt, "spool file " + path.string() +
                                              " does not match the SHA-256 recorded when it was written; it will not "
                                              "be uploaded. The scan needs attention (see the field guide)");
  }
  return bytes;
}

Expected<std::vector<std::uint8_t>> Spool::ReadManifest(const std::string& scan_uid) {
  return files_.ReadAll(ScanDir(scan_uid) / "manifest.json", kMaxRecordBytes);
}

Expected<std::filesystem::path> Spool::StoreResult(const std::string& scan_uid, const std::string& sop_instance_uid,
                                                   std::span<const std::uint8_t> part10) {
  if (!IsValidDicomUid(sop_instance_uid)) {
    return MakeError(ErrorKind::kProtocol, "\"" + sop_instance_uid + "\" is not a valid SOP instance UID");
  }
  const auto dir = ScanDir(scan_uid) / "results";
  if (auto st = files_.CreateDirectories(dir); !st) return MakeError(st.error());
  const auto path = ResultPath(scan_uid, sop_instance_uid);
  if (auto st = files_.WriteDurably(path, part10); !st) return MakeError(st.error());
  return path;
}

}  // namespace ctagent::spool
