#include "tests/durability/harness.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "agent/common/durable_file.hpp"
#include "agent/common/sha256.hpp"
#include "agent/spool/spool.hpp"
#include "drivers/detector.hpp"

namespace ctagent::test::durability {

ScopedEnv::ScopedEnv(std::vector<std::pair<std::string, std::string>> vars) {
  for (auto& [name, value] : vars) {
    const char* old = std::getenv(name.c_str());
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    ::setenv(name.c_str(), value.c_str(), 1);
  }
}

ScopedEnv::~ScopedEnv() {
  for (auto& [name, old] : saved_) {
    if (old) {
      ::setenv(name.c_str(), old->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
}

TusPeer::TusPeer(fs::path pki, fs::path store, fs::path log, std::string cert_name)
    : pki_(std::move(pki)), store_(std::move(store)), log_(std::move(log)), cert_name_(std::move(cert_name)) {}

void TusPeer::Start() {
  if (process_ && process_->Running()) return;
  if (port_ == 0) port_ = FreeLoopbackPort();
  const std::string script = std::string(CTAGENT_SOURCE_DIR) + "/cloud/tus-server/server.mjs";
  // A restart may race the kernel releasing the port for a moment: retry a few times, bounded.
  for (int attempt = 0; attempt < 5; ++attempt) {
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{"node", script, "--port", std::to_string(port_), "--dir", store_.string(), "--cert",
                                 (pki_ / (cert_name_ + ".pem")).string(), "--key",
                                 (pki_ / (cert_name_ + ".key")).string()},
        log_);
    if (WaitFor([&] { return PortAcceptsConnections(port_) || !process_->Running(); }, std::chrono::seconds(20)) &&
        process_->Running()) {
      return;
    }
    process_->Stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  throw std::runtime_error("tus server did not start on port " + std::to_string(port_) + "; see " + log_.string());
}

bool TusPeer::Kill() {
  if (!process_ || !process_->Running()) return false;
  process_->Kill(SIGKILL);
  process_->Wait(std::chrono::seconds(10));
  return true;
}

bool TusPeer::Running() { return process_ && process_->Running(); }

nlohmann::json SmallScanConfig(const fs::path& spool_dir, const std::string& upload_url, const fs::path& ca_file,
                               std::uint64_t seed) {
  // 240 views of 4 x 128 uint16 samples, 16 views a chunk: 15 chunks of ~64 KiB raw. Small enough
  // for hundreds of scans under sanitizers, large enough for several PATCH requests a scan.
  return {
      {"terminal_id", "soak-terminal"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", 240}, {"rotations", 1}, {"rows", 4}, {"channels", 128},
        {"channel_pitch_mm", 3.2}, {"row_pitch_mm", 5.0}, {"rotation_time_s", 0.5}, {"dose_fraction", 1.0},
        {"unattenuated_counts", 60000}, {"sample_type", "uint16"}, {"seed", seed}, {"real_time", false}}},
      {"study", {{"patient_id", "SOAK-1"}, {"patient_name", "SOAK^TEST"}, {"study_description", "SOAK"}}},
      {"codec", {{"zstd_level", 3}, {"filter", "shuffle"}, {"views_per_chunk", 16}, {"threads", 2}}},
      {"spool", {{"directory", spool_dir.string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud",
       {{"upload_url", upload_url},
        {"tls", {{"ca_file", ca_file.string()}}},
        {"parallel_uploads", 2},
        {"patch_bytes", 65536},
        {"connect_timeout_s", 5},
        {"stall_timeout_s", 10}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
}

void WriteJson(const fs::path& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

std::string CtagentBinary() { return (fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(); }

int RunCtagent(const std::vector<std::string>& args, const fs::path& log, std::chrono::milliseconds timeout) {
  std::vector<std::string> argv{CtagentBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  ChildProcess child(argv, log);
  const int code = child.Wait(timeout);
  if (code == -1) child.Stop();
  return code;
}

std::vector<StoredUpload> ListUploads(const fs::path& store) {
  std::vector<StoredUpload> uploads;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(store, ec)) {
    if (entry.path().extension() != ".json") continue;
    auto info = nlohmann::json::parse(ReadText(entry.path()), nullptr, false);
    if (info.is_discarded() || !info.is_object()) continue;
    StoredUpload u;
    u.id = entry.path().stem().string();
    u.data = entry.path().parent_path() / entry.path().stem();
    u.metadata = info.value("metadata", nlohmann::json::object());
    u.size = info.value("size", std::uint64_t{0});
    std::error_code size_ec;
    const auto bytes = fs::file_size(u.data, size_ec);
    u.stored_bytes = size_ec ? 0 : bytes;
    uploads.push_back(std::move(u));
  }
  return uploads;
}

std::vector<std::uint8_t> ReadBytes(const fs::path& path) {
  const std::string text = ReadText(path);
  return {text.begin(), text.end()};
}

std::string Verdict::Line() const {
  char line[256];
  std::snprintf(line, sizeof line, "scans accepted %zu, lost %zu, corrupted %zu, duplicated %zu", accepted, lost,
                corrupted, duplicated);
  return line;
}

Expected<std::unique_ptr<spool::Spool>> OpenSpool(const fs::path& spool_dir, FileStore& files) {
  spool::SpoolOptions options;
  options.directory = spool_dir;
  options.max_bytes = 1ull << 40;
  options.min_free_bytes = 0;
  return spool::Spool::Open(options, files);
}

namespace {

// The sim driver's views for one protocol (its seed included), regenerated independently of the agent.
const std::vector<std::vector<std::uint8_t>>& DriverViews(const drivers::ScanProtocol& protocol) {
  static std::map<std::string, std::vector<std::vector<std::uint8_t>>> cache;
  const std::string key = drivers::ToJson(protocol).dump();
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::vector<std::vector<std::uint8_t>> views;
  auto detector = drivers::MakeDetector("sim", nlohmann::json::object());
  if (detector && (*detector)->Arm(protocol)) {
    for (std::uint64_t i = 0; i <= protocol.TotalViews(); ++i) {  // bounded by the protocol
      auto v = (*detector)->NextView();
      if (!v || !v->has_value()) break;
      views.push_back(std::move((*v)->samples));
    }
  }
  return cache.emplace(key, std::move(views)).first->second;
}

std::string ChunkFileName(std::uint32_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "%06u.ctc", index);
  return name;
}

}  // namespace

Verdict Verify(const fs::path& spool_dir, const fs::path& tus_store, bool require_uploaded) {
  Verdict v;
  auto problem = [&](std::size_t& counter, const std::string& text) {
    ++counter;
    v.problems.push_back(text);
  };

  // The files as the agent left them: listed before this process opens the spool, because
  // Spool::Open itself removes orphans (and a harness must see what the agent left behind).
  std::vector<fs::path> files_before;
  {
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(spool_dir, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      files_before.push_back(fs::relative(it->path(), spool_dir));
    }
  }

  PosixFileStore files;
  auto spool = OpenSpool(spool_dir, files);
  if (!spool) {
    v.problems.push_back("the spool does not reopen: " + spool.error().message());
    return v;
  }
  v.spool_opened = true;
  const auto scans = (*spool)->AllScans();
  v.accepted = scans.size();

  // Index the cloud's uploads by (scan, kind, chunk index).
  std::map<std::string, std::vector<StoredUpload>> by_key;
  std::set<std::string> cloud_scans;
  for (auto& u : ListUploads(tus_store)) {
    const std::string scan = u.metadata.value("scan_uid", "");
    const std::string kind = u.metadata.value("kind", "");
    cloud_scans.insert(scan);
    if (!u.complete()) {
      ++v.abandoned_uploads;
      continue;
    }
    by_key[scan + "/" + kind + "/" + u.metadata.value("chunk_index", "")].push_back(std::move(u));
  }

  std::set<std::string> known;
  for (const auto& record : scans) {
    const std::string& uid = record.scan_uid;
    known.insert(uid);
    if (record.state == spool::ScanState::kFailed) {
      problem(v.lost, "scan " + uid + " is marked failed: " + record.failure_reason);
      continue;
    }
    if (require_uploaded && record.state != spool::ScanState::kUploaded) {
      problem(v.lost, "scan " + uid + " is still " + std::string(spool::ToString(record.state)));
    }
    // The manifest: exactly one complete upload, byte-identical to the spool's.
    const auto& manifests = by_key[uid + "/manifest/"];
    // Extra complete copies: identical ones are the interrupted-request case of the contract
    // (counted as re-sent); differing ones would let the cloud process the scan twice, two ways.
    for (std::size_t i = 1; i < manifests.size(); ++i) {
      if (ReadBytes(manifests[i].data) == ReadBytes(manifests.front().data)) {
        ++v.resent;
      } else {
        problem(v.duplicated, "scan " + uid + ": two different complete manifests on the server");
      }
    }
    if (manifests.empty()) {
      if (require_uploaded) problem(v.lost, "scan " + uid + ": no complete manifest on the server");
      continue;
    }
    const auto cloud_manifest_bytes = ReadBytes(manifests.front().data);
    auto spool_manifest_bytes = (*spool)->ReadManifest(uid);
    if (!record.raw_deleted && (!spool_manifest_bytes || *spool_manifest_bytes != cloud_manifest_bytes)) {
      problem(v.corrupted, "scan " + uid + ": the manifest on the server differs from the spool's");
    }
    auto manifest_json = nlohmann::json::parse(cloud_manifest_bytes.begin(), cloud_manifest_bytes.end(), nullptr, false);
    auto manifest = manifest_json.is_discarded() ? Expected<codec::Manifest>(MakeError(ErrorKind::kCorrupt, "not JSON"))
                                                 : codec::ManifestFromJson(manifest_json);
    if (!manifest) {
      problem(v.corrupted, "scan " + uid + ": the manifest on the server does not parse: " + manifest.error().message());
      continue;
    }
    const auto total_views = manifest->protocol.TotalViews();
    if (manifest->complete) {
      ++v.complete_scans;
      if (manifest->views_acquired != total_views) {
        problem(v.lost, "scan " + uid + ": manifest says complete with " + std::to_string(manifest->views_acquired) +
                            " of " + std::to_string(total_views) + " views");
      }
    } else {
      ++v.incomplete_scans;
      if (manifest->incomplete_reason.empty()) {
        problem(v.corrupted, "scan " + uid + ": incomplete manifest without a reason");
      }
    }
    // The manifest lists exactly the chunks the spool recorded.
    if (manifest->chunks.size() != record.chunks.size()) {
      problem(v.lost, "scan " + uid + ": manifest lists " + std::to_string(manifest->chunks.size()) +
                          " chunks, the spool recorded " + std::to_string(record.chunks.size()));
    }
    std::uint64_t listed_views = 0;
    const auto& driver_views = DriverViews(manifest->protocol);
    for (const auto& rc : record.chunks) {
      const std::string name = "scan " + uid + " chunk " + std::to_string(rc.chunk.index);
      const auto& uploads = by_key[uid + "/chunk/" + std::to_string(rc.chunk.index)];
      for (std::size_t i = 1; i < uploads.size(); ++i) {
        if (ReadBytes(uploads[i].data) == ReadBytes(uploads.front().data)) {
          ++v.resent;
        } else {
          problem(v.duplicated, name + ": two different complete uploads on the server");
        }
      }
      if (uploads.empty()) {
        problem(v.lost, name + ": not (completely) on the server");
        continue;
      }
      if (rc.damaged) {
        problem(v.corrupted, name + ": the spool flagged it damaged");
        continue;
      }
      const auto cloud_bytes = ReadBytes(uploads.front().data);
      auto spool_bytes = (*spool)->ReadChunk(uid, rc.chunk.index);  // also checks the recorded SHA-256
      if (record.raw_deleted) {
        // Retention removed the spool's copy after the cloud confirmed it: the recorded SHA-256
        // below is the reference.
      } else if (!spool_bytes) {
        problem(v.corrupted, name + ": spool copy unreadable: " + spool_bytes.error().message());
      } else if (*spool_bytes != cloud_bytes) {
        problem(v.corrupted, name + ": server bytes differ from the spool's");
      }
      if (Sha256Hex(cloud_bytes) != rc.chunk.sha256 || uploads.front().metadata.value("sha256", "") != rc.chunk.sha256) {
        problem(v.corrupted, name + ": SHA-256 on the server differs from the one recorded at write time");
      }
      bool listed = false;
      for (const auto& mc : manifest->chunks) {
        if (mc.index == rc.chunk.index) listed = mc.sha256 == rc.chunk.sha256 && mc.first_view == rc.chunk.first_view;
      }
      if (!listed) problem(v.corrupted, name + ": not listed in the manifest as recorded");
      auto decoded = codec::DecodeChunk(cloud_bytes);
      if (!decoded) {
        problem(v.corrupted, name + ": does not decode: " + decoded.error().message());
        continue;
      }
      // Decoded samples equal the driver's, view by view, for the views the chunk says it holds.
      Sha256 expected;
      bool in_range = decoded->info.scan_uid == uid;
      for (const auto& view : decoded->info.views) {
        if (view.sequence >= driver_views.size()) {
          in_range = false;
          break;
        }
        expected.Update(driver_views[view.sequence]);
      }
      if (!in_range || Sha256Hex(decoded->samples) != expected.FinalHex()) {
        problem(v.corrupted, name + ": decoded samples differ from the driver's views");
      }
      listed_views += decoded->info.views.size();
    }
    if (manifest->complete && listed_views != total_views) {
      problem(v.lost, "scan " + uid + ": complete manifest but chunks hold " + std::to_string(listed_views) + " views");
    }
  }
  for (const auto& scan : cloud_scans) {
    if (!known.count(scan)) {
      ++v.unknown;
      v.problems.push_back("the server holds uploads of scan " + scan + " which the spool does not know");
    }
  }

  // Orphans: every file under scans/ is one a record refers to (or the spool's own metadata), and
  // no temporary file of an interrupted write is left behind.
  std::map<std::string, const spool::ScanRecord*> records;
  for (const auto& r : scans) records[r.scan_uid] = &r;
  std::set<std::string> reported_dirs;
  for (const fs::path& rel : files_before) {
    const std::string name = rel.filename().string();
    if (name.ends_with(".tmp")) {
      problem(v.orphans, "temporary file left behind: " + rel.string());
      continue;
    }
    auto part = rel.begin();
    if (part == rel.end() || *part != "scans") continue;
    if (++part == rel.end()) continue;
    const std::string uid = part->string();
    auto rec = records.find(uid);
    if (rec == records.end()) {
      if (reported_dirs.insert(uid).second) problem(v.orphans, "scan directory without a record: scans/" + uid);
      continue;
    }
    if (++part == rel.end()) continue;
    const std::string sub = part->string();
    if (sub == "manifest.json" && !rec->second->manifest_written) {
      problem(v.orphans, "manifest the record does not mention: " + rel.string());
    }
    if (++part == rel.end()) continue;  // the chunks/ and results/ folders themselves
    if (sub == "chunks") {
      bool referenced = false;
      for (const auto& c : rec->second->chunks) referenced = referenced || ChunkFileName(c.chunk.index) == name;
      if (!referenced) problem(v.orphans, "chunk file no record refers to: " + rel.string());
    } else if (sub == "results") {
      bool referenced = false;
      for (const auto& r : rec->second->results) referenced = referenced || r.sop_instance_uid + ".dcm" == name;
      if (!referenced) problem(v.orphans, "result file no record refers to: " + rel.string());
    }
  }
  return v;
}

bool HasKillAtOpHook(const fs::path& scratch) {
  fs::create_directories(scratch);
  std::ofstream(scratch / "none.pem") << "";
  WriteJson(scratch / "probe.json", SmallScanConfig(scratch / "spool", "https://127.0.0.1:9/files/",
                                                    scratch / "none.pem", 1));
  ScopedEnv env("CTAGENT_FAULT_KILL_AT_OP", "1");
  // Opening a fresh spool writes its marker: the first mutating operation.
  const int code = RunCtagent({"status", "--config", (scratch / "probe.json").string()}, scratch / "probe.log",
                              std::chrono::seconds(60));
  return code == 128 + SIGKILL;
}

}  // namespace ctagent::test::durability
