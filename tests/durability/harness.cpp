#include "tests/durability/harness.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <algorithm>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/durable_file.hpp"
#include "base/sha256.hpp"
#include "agent/spool/spool.hpp"
#include "drivers/detector.hpp"
#include "transport/http.hpp"

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
        // Axial, whatever the configuration's default: the worker makes one slice per row.
        {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0},
        {"unattenuated_counts", 60000}, {"sample_type", "uint16"}, {"seed", seed}, {"real_time", false}}},
      {"study", {{"patient_id", "SOAK-1"}, {"patient_name", "SOAK^TEST"}, {"study_description", "SOAK"}}},
      {"codec", {{"zstd_level", 3}, {"filter", "shuffle"}, {"views_per_chunk", 16}, {"threads", 2}}},
      {"spool", {{"directory", spool_dir.string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud",
       {{"upload_url", upload_url},
        {"tls", {{"ca_file", ca_file.string()}}},
        {"parallel_uploads", 2},
        // Pinned: the soak's bound on re-sent bytes counts 2 transfers per kill, whatever the
        // loaded loopback's rate x round trip would admit.
        {"max_uploads_in_flight", 2},
        {"patch_bytes", 65536},
        {"connect_timeout_s", 5},
        {"stall_timeout_s", 10}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
}

nlohmann::json PacedScanConfig(const fs::path& spool_dir, const std::string& upload_url, const fs::path& ca_file,
                               std::uint64_t seed, double seconds) {
  auto cfg = SmallScanConfig(spool_dir, upload_url, ca_file, seed);
  cfg["scan"]["real_time"] = true;
  cfg["scan"]["rotation_time_s"] = seconds;
  return cfg;
}

void WriteJson(const fs::path& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

std::vector<std::string> ScanArgs(const fs::path& cfg_path) {
  return {"scan", "--config", cfg_path.string(), "--no-results", "--quiet"};
}

std::vector<std::string> ScanCommand(const fs::path& cfg_path) {
  // Built front to back: inserting the binary before the arguments made GCC 12 at -O3 report a
  // "potential null pointer dereference" inside std::vector's reallocation (a false positive).
  std::vector<std::string> command{CtagentBinary()};
  auto args = ScanArgs(cfg_path);
  command.insert(command.end(), std::make_move_iterator(args.begin()), std::make_move_iterator(args.end()));
  return command;
}


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
    {
      CloudScan cloud{uid, *manifest, {}};
      for (const auto& rc : record.chunks) cloud.recorded_sha256[rc.chunk.index] = rc.chunk.sha256.Hex();
      v.cloud_scans.push_back(std::move(cloud));
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

// ---- Orthanc and the reconstruction worker ---------------------------------------------------

struct OrthancPeer::Http {
  std::unique_ptr<transport::HttpClient> client;
};

OrthancPeer::OrthancPeer(fs::path pki, fs::path dir, fs::path log)
    : pki_(std::move(pki)), dir_(std::move(dir)), log_(std::move(log)) {}

OrthancPeer::~OrthancPeer() = default;  // ChildProcess: SIGTERM to the supervisor, which stops both

void OrthancPeer::Start() {
  port_ = FreeLoopbackPort();
  // Orthanc binds its own port on every interface: FreeWildcardPort.
  std::uint16_t internal_port = FreeWildcardPort();
  for (int i = 0; i < 10 && internal_port == port_; ++i) internal_port = FreeWildcardPort();
  process_ = std::make_unique<ChildProcess>(
      std::vector<std::string>{"bash", std::string(CTAGENT_SOURCE_DIR) + "/cloud/orthanc/start-orthanc.sh",
                               dir_.string(), std::to_string(port_), pki_.string(), std::to_string(internal_port)},
      log_);
  const bool up = WaitFor(
      [&] {
        if (!process_->Running()) return true;
        if (!fs::exists(PasswordFile("ctagent"))) return false;
        return static_cast<bool>(GetJson("/system"));
      },
      std::chrono::seconds(60));
  if (!up || !process_->Running()) {
    throw std::runtime_error("Orthanc did not start on port " + std::to_string(port_) + "; see " + log_.string());
  }
}

Expected<nlohmann::json> OrthancPeer::GetJson(const std::string& path) {
  if (!http_) {
    const std::string password = [&] {
      std::string text = ReadText(PasswordFile("ctagent"));
      while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
      return text;
    }();
    if (password.empty()) return MakeError(ErrorKind::kNotFound, "Orthanc's password file is not written yet");
    transport::HttpOptions options;
    options.tls.ca_file = pki_ / "ca.pem";
    options.basic_auth_user = "ctagent";
    options.basic_auth_password = password;
    options.connect_timeout_s = 5;
    options.request_timeout_s = 30;
    http_ = std::make_unique<Http>();
    http_->client = std::make_unique<transport::HttpClient>(options);
  }
  transport::HttpRequest request;
  request.url = url() + path;
  request.headers = {{"Accept", "application/json"}};
  auto response = http_->client->Perform(request, 64ull << 20);
  if (!response) return MakeError(response.error());
  if (response->status != 200) {
    return MakeError(ErrorKind::kProtocol, "GET " + request.url + " answered HTTP " + std::to_string(response->status));
  }
  auto parsed = nlohmann::json::parse(response->body, nullptr, false);
  if (parsed.is_discarded()) return MakeError(ErrorKind::kCorrupt, "GET " + request.url + ": the answer is not JSON");
  return parsed;
}

WorkerPeer::WorkerPeer(fs::path binary, fs::path store, fs::path work, fs::path pki, const OrthancPeer& orthanc,
                       fs::path log)
    : binary_(std::move(binary)),
      store_(std::move(store)),
      work_(std::move(work)),
      pki_(std::move(pki)),
      log_(std::move(log)),
      orthanc_url_(orthanc.url()),
      password_file_(orthanc.PasswordFile("ctcloud")) {}

std::vector<std::string> WorkerPeer::Argv(bool once) const {
  // Small images: the soak proves where results go and how often, not image quality.
  std::vector<std::string> argv{binary_.string(), "--store", store_.string(), "--work", work_.string(), "--orthanc",
                                orthanc_url_, "--orthanc-user", "ctcloud", "--orthanc-password-file",
                                password_file_.string(), "--ca", (pki_ / "ca.pem").string(), "--image-size", "64",
                                "--poll-ms", "100"};
  if (once) argv.push_back("--once");
  return argv;
}

void WorkerPeer::Start() {
  if (process_ && process_->Running()) return;
  process_ = std::make_unique<ChildProcess>(Argv(false), log_);
}

int WorkerPeer::RunOnce(std::chrono::milliseconds timeout) {
  ChildProcess child(Argv(true), log_);
  const int code = child.Wait(timeout);
  if (code == -1) child.Stop();
  return code;
}

bool WorkerPeer::Kill() {
  if (!process_ || !process_->Running()) return false;
  process_->Kill(SIGKILL);
  return process_->Wait(std::chrono::seconds(10)) == 128 + SIGKILL;
}

void WorkerPeer::Stop() {
  if (process_) process_->Stop();
}

bool WorkerPeer::Running() { return process_ && process_->Running(); }

WorkerPhase PhaseOf(const fs::path& work, const std::string& scan_uid) {
  std::error_code ec;
  if (WorkerFinished(work, scan_uid)) return WorkerPhase::kFinished;
  const fs::path series = work / "series" / scan_uid;
  if (fs::exists(series / "series.json", ec)) return WorkerPhase::kStoring;
  if (fs::is_directory(series, ec)) {
    for (const auto& entry : fs::directory_iterator(series, ec)) {
      (void)entry;
      return WorkerPhase::kWritingSlices;
    }
  }
  return WorkerPhase::kNotStarted;
}

const char* ToString(WorkerPhase phase) {
  switch (phase) {
    case WorkerPhase::kNotStarted: return "decoding/reconstructing";
    case WorkerPhase::kWritingSlices: return "writing slices";
    case WorkerPhase::kStoring: return "storing";
    case WorkerPhase::kFinished: return "finished";
  }
  return "?";
}

bool WorkerFinished(const fs::path& work, const std::string& scan_uid) {
  std::error_code ec;
  return fs::exists(work / "done" / (scan_uid + ".json"), ec) || fs::exists(work / "failed" / (scan_uid + ".json"), ec);
}

std::set<std::string> ManifestScans(const fs::path& tus_store) {
  std::set<std::string> scans;
  for (const auto& u : ListUploads(tus_store)) {
    if (u.complete() && u.metadata.value("kind", "") == "manifest") scans.insert(u.metadata.value("scan_uid", ""));
  }
  return scans;
}

namespace {

// Orthanc's view of every series: SeriesInstanceUID, Protocol Name, announced count, and the
// instances (SOP Instance UID, instance number) it holds.
struct SeenSeries {
  std::string series_uid;
  std::string protocol_name;
  std::string images_in_acquisition;
  std::string modality;
  std::vector<std::pair<std::string, std::string>> instances;  // (SOP Instance UID, InstanceNumber)
};

Expected<std::vector<SeenSeries>> SeriesInOrthanc(OrthancPeer& orthanc) {
  auto series = orthanc.GetJson("/series?expand");
  if (!series) return MakeError(series.error());
  auto instances = orthanc.GetJson("/instances?expand");
  if (!instances) return MakeError(instances.error());
  std::map<std::string, SeenSeries> by_id;
  for (const auto& s : *series) {
    SeenSeries seen;
    const auto tags = s.value("MainDicomTags", nlohmann::json::object());
    seen.series_uid = tags.value("SeriesInstanceUID", "");
    seen.protocol_name = tags.value("ProtocolName", "");
    seen.images_in_acquisition = tags.value("ImagesInAcquisition", "");
    seen.modality = tags.value("Modality", "");
    // Only the CT series follow the series contract checked here (Images in Acquisition, one
    // series per scan). The AI result objects beside them (SEG, report pages, SR: no Images in
    // Acquisition) are checked by cloud_worker_test, including that storing again keeps one copy.
    if (seen.modality != "CT") continue;
    by_id[s.value("ID", "")] = std::move(seen);
  }
  for (const auto& i : *instances) {
    const auto tags = i.value("MainDicomTags", nlohmann::json::object());
    auto it = by_id.find(i.value("ParentSeries", ""));
    if (it == by_id.end()) continue;  // stored between the two requests: seen next time
    it->second.instances.emplace_back(tags.value("SOPInstanceUID", ""), tags.value("InstanceNumber", ""));
  }
  std::vector<SeenSeries> out;
  for (auto& [id, seen] : by_id) out.push_back(std::move(seen));
  return out;
}

}  // namespace

std::vector<std::string> CheckVisibleSeries(OrthancPeer& orthanc, std::size_t* partial_series) {
  std::vector<std::string> problems;
  auto seen = SeriesInOrthanc(orthanc);
  if (!seen) return {"cannot list Orthanc's series: " + seen.error().message()};
  for (const auto& s : *seen) {
    const std::size_t announced = std::strtoull(s.images_in_acquisition.c_str(), nullptr, 10);
    if (announced == 0) {
      problems.push_back("series " + s.series_uid + " does not announce its instance count (Images in Acquisition)");
    } else if (s.instances.size() > announced) {
      problems.push_back("series " + s.series_uid + " holds " + std::to_string(s.instances.size()) +
                         " instances, more than the " + std::to_string(announced) + " it announces");
    } else if (s.instances.size() < announced && partial_series) {
      ++*partial_series;
    }
  }
  return problems;
}

std::vector<std::size_t> SeriesOfScan(OrthancPeer& orthanc, const std::string& scan_uid) {
  std::vector<std::size_t> counts;
  auto seen = SeriesInOrthanc(orthanc);
  if (!seen) return counts;
  for (const auto& s : *seen) {
    if (s.protocol_name == "ctagent scan " + scan_uid) counts.push_back(s.instances.size());
  }
  return counts;
}

ReconVerdict VerifyReconstruction(const std::vector<CloudScan>& scans, const fs::path& work, OrthancPeer& orthanc,
                                  std::size_t expected_instances) {
  ReconVerdict v;
  auto problem = [&](std::size_t& counter, const std::string& text) {
    ++counter;
    v.problems.push_back(text);
  };
  auto seen = SeriesInOrthanc(orthanc);
  if (!seen) {
    problem(v.missing, "cannot list Orthanc's series: " + seen.error().message());
    return v;
  }
  std::map<std::string, std::vector<const SeenSeries*>> by_scan;  // by Protocol Name
  for (const auto& s : *seen) {
    by_scan[s.protocol_name].push_back(&s);
    v.instances += s.instances.size();
  }
  std::set<std::string> explained;
  for (const auto& scan : scans) {
    const std::string& uid = scan.scan_uid;
    const std::string protocol_name = "ctagent scan " + uid;
    explained.insert(protocol_name);
    const auto& series = by_scan[protocol_name];
    // Reconstructable: chunks hold views 0..n-1 without a gap and n covers one rotation.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (const auto& c : scan.manifest.chunks) ranges.emplace_back(c.first_view, c.view_count);
    std::sort(ranges.begin(), ranges.end());
    std::uint64_t next = 0;
    bool gap = false;
    for (const auto& [first, count] : ranges) {
      gap = gap || first != next;
      next = first + count;
    }
    const bool expect_series = !gap && next >= scan.manifest.protocol.views_per_rotation;
    const fs::path done_path = work / "done" / (uid + ".json");
    const fs::path failed_path = work / "failed" / (uid + ".json");
    const bool done = fs::exists(done_path);
    const bool failed = fs::exists(failed_path);
    if (!expect_series) {
      if (!failed || done) problem(v.missing, "scan " + uid + " cannot be reconstructed but has no failed marker alone");
      if (!series.empty()) problem(v.twice, "scan " + uid + " cannot be reconstructed but Orthanc holds a series of it");
      if (failed && !done && series.empty()) ++v.refused;
      continue;
    }
    if (!done || failed) {
      problem(v.missing, "scan " + uid + ": " + (failed ? "refused: " + ReadText(failed_path) : "no done marker"));
      continue;
    }
    if (series.empty()) {
      problem(v.missing, "scan " + uid + ": no series in Orthanc");
      continue;
    }
    if (series.size() > 1) {
      problem(v.twice, "scan " + uid + ": reconstructed twice: " + std::to_string(series.size()) + " series in Orthanc");
      continue;
    }
    const SeenSeries& s = *series.front();
    const std::size_t expected = expected_instances;
    std::set<std::string> sops, numbers;
    for (const auto& [sop, number] : s.instances) {
      sops.insert(sop);
      numbers.insert(number);
    }
    std::set<std::string> expected_numbers;
    for (std::size_t n = 1; n <= expected; ++n) expected_numbers.insert(std::to_string(n));
    if (s.instances.size() > expected || sops.size() != s.instances.size() || numbers.size() != s.instances.size()) {
      problem(v.twice, "scan " + uid + ": series " + s.series_uid + " holds " + std::to_string(s.instances.size()) +
                           " instances (" + std::to_string(sops.size()) + " distinct SOP Instance UIDs, " +
                           std::to_string(numbers.size()) + " distinct numbers) for " + std::to_string(expected) +
                           " slices");
      continue;
    }
    if (numbers != expected_numbers || s.images_in_acquisition != std::to_string(expected)) {
      problem(v.partial, "scan " + uid + ": series " + s.series_uid + " left with " +
                             std::to_string(s.instances.size()) + " of " + std::to_string(expected) +
                             " instances (announces '" + s.images_in_acquisition + "')");
      continue;
    }
    auto record = nlohmann::json::parse(ReadText(done_path), nullptr, false);
    if (record.is_discarded() || record.value("series_uid", "") != s.series_uid) {
      problem(v.twice, "scan " + uid + ": the done marker names another series than the one in Orthanc");
      continue;
    }
    // Bit-exact input: the chunks the worker decoded hashed to the SHA-256s the spool recorded.
    std::map<std::uint32_t, std::string> used;
    for (const auto& c : record.value("input_chunks", nlohmann::json::array())) {
      used[c.value("index", 0u)] = c.value("sha256", "");
    }
    if (used != scan.recorded_sha256) {
      problem(v.bad_input, "scan " + uid + ": the worker's input chunks (" + std::to_string(used.size()) +
                               ") differ from the spool's recorded SHA-256s (" +
                               std::to_string(scan.recorded_sha256.size()) + ")");
      continue;
    }
    ++v.reconstructed;
  }
  for (const auto& [name, list] : by_scan) {
    if (!explained.count(name)) {
      v.unknown += list.size();
      v.problems.push_back("Orthanc holds " + std::to_string(list.size()) + " series of '" + name +
                           "', which no accepted scan explains");
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
  // Opening a fresh spool for writing creates its folders: the first mutating operation. (Not
  // `status`: it opens the spool read-only and writes nothing.)
  const int code = RunCtagent({"run", "--once", "--config", (scratch / "probe.json").string()}, scratch / "probe.log",
                              std::chrono::seconds(60));
  return code == 128 + SIGKILL;
}

std::size_t CountChunkFiles(const fs::path& spool_dir) {
  std::size_t n = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(spool_dir / "scans", ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->path().extension() == ".ctc") ++n;
  }
  return n;
}

}  // namespace ctagent::test::durability
