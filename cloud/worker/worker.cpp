#include "cloud/worker/worker.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <optional>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/clock.hpp"
#include "base/durable_file.hpp"
#include "base/log.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "cloud/worker/analysis.hpp"
#include "cloud/worker/dicom_writer.hpp"
#include "cloud/worker/result_encoding.hpp"
#include "transport/http.hpp"

namespace ctagent::cloud {
namespace fs = std::filesystem;
namespace {

constexpr const char* kLog = "worker";
constexpr std::uint64_t kMaxUploadInfoBytes = 1ull << 20;
constexpr std::uint64_t kMaxManifestBytes = 16ull << 20;
constexpr std::uint64_t kMaxChunkFileBytes = 1ull << 30;

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Wall-clock milliseconds since the Unix epoch: stage stamps in the done marker, which the latency
// bench lines up with the agent's own clock (same machine).
std::int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* CategoryCode(StudyCategory category) {
  switch (category) {
    case StudyCategory::kNormal: return "NORMAL";
    case StudyCategory::kHighRisk: return "HIGH-RISK";
    case StudyCategory::kFailed: return "FAILED";
  }
  return "FAILED";
}

// What the done marker and the log say about the analysis (no patient data).
nlohmann::json AnalysisSummary(const AnalysisResult& analysis) {
  nlohmann::json summary = {{"category", CategoryCode(analysis.category)},
                            {"lesion_count", analysis.lesions.size()},
                            {"involvement_percent",
                             {{"right", analysis.lungs[0].involvement_percent},
                              {"left", analysis.lungs[1].involvement_percent}}}};
  if (analysis.category == StudyCategory::kFailed) summary["failure_reason"] = analysis.failure_reason;
  return summary;
}

Expected<nlohmann::json> ReadJsonFile(const fs::path& path, std::uint64_t max_bytes) {
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  auto bytes = store.ReadAll(path, max_bytes);
  if (!bytes) return MakeError(bytes.error());
  auto parsed = nlohmann::json::parse(bytes->begin(), bytes->end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return MakeError(ErrorKind::kCorrupt, path.string() + " is not valid JSON");
  return parsed;
}

Status WriteJsonDurably(const fs::path& path, const nlohmann::json& j) {
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  return store.WriteDurably(path, AsBytes(j.dump(2) + "\n"));
}

std::string TrimSlash(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

// One decoded chunk, reduced to what the reconstruction needs.
struct ChunkData {
  std::uint64_t first_view = 0;
  std::vector<codec::ViewRecord> views;
  std::vector<float> counts;  // views x rows x channels
};

Expected<ChunkData> DecodeChunkFile(const fs::path& path, const codec::Manifest& manifest,
                                    const codec::ManifestChunk& entry) {
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  auto bytes = store.ReadAll(path, kMaxChunkFileBytes);
  if (!bytes) return MakeError(bytes.error());
  auto decoded = codec::DecodeChunk(*bytes, manifest.protocol.RawBytes() + 1);
  if (!decoded) return MakeError(decoded.error());
  const codec::ChunkInfo& info = decoded->info;
  const std::string where = "chunk " + std::to_string(entry.index);
  if (info.scan_uid != manifest.scan_uid) {
    return MakeError(ErrorKind::kCorrupt, where + " belongs to scan " + info.scan_uid + ", not to this manifest's scan");
  }
  if (info.chunk_index != entry.index || info.FirstView() != entry.first_view ||
      info.views.size() != entry.view_count) {
    return MakeError(ErrorKind::kCorrupt, where + " holds chunk " + std::to_string(info.chunk_index) + " views " +
                                              std::to_string(info.FirstView()) + "+" + std::to_string(info.views.size()) +
                                              ", the manifest says views " + std::to_string(entry.first_view) + "+" +
                                              std::to_string(entry.view_count));
  }
  if (info.rows != manifest.protocol.rows || info.channels != manifest.protocol.channels) {
    return MakeError(ErrorKind::kCorrupt, where + " is " + std::to_string(info.rows) + " rows x " +
                                              std::to_string(info.channels) + " channels; the protocol says " +
                                              std::to_string(manifest.protocol.rows) + " x " +
                                              std::to_string(manifest.protocol.channels));
  }
  if (!entry.raw_sha256.empty() && info.raw_sha256 != entry.raw_sha256) {
    return MakeError(ErrorKind::kCorrupt, where + ": decoded samples do not match the manifest's raw_sha256");
  }
  for (std::size_t i = 0; i < info.views.size(); ++i) {
    if (info.views[i].sequence != entry.first_view + i) {
      return MakeError(ErrorKind::kCorrupt, where + ": view sequence numbers are not consecutive at position " +
                                                std::to_string(i));
    }
  }
  const std::size_t samples = info.views.size() * info.rows * info.channels;
  ChunkData data;
  data.first_view = entry.first_view;
  data.views = info.views;
  data.counts.resize(samples);
  if (info.sample_type == drivers::SampleType::kUint16 && decoded->samples.size() == samples * 2) {
    std::vector<std::uint16_t> raw(samples);
    std::memcpy(raw.data(), decoded->samples.data(), samples * 2);
    std::transform(raw.begin(), raw.end(), data.counts.begin(), [](std::uint16_t v) { return static_cast<float>(v); });
  } else if (info.sample_type == drivers::SampleType::kFloat32 && decoded->samples.size() == samples * 4) {
    std::memcpy(data.counts.data(), decoded->samples.data(), samples * 4);
  } else {
    return MakeError(ErrorKind::kCorrupt, where + ": " + std::to_string(decoded->samples.size()) +
                                              " sample bytes do not fit " + std::to_string(samples) + " " +
                                              drivers::ToString(info.sample_type) + " samples");
  }
  return data;
}

}  // namespace

struct Worker::Upload {
  std::string id;
  fs::path data_path;
  std::optional<std::uint64_t> declared_size;  // absent: Upload-Defer-Length, not yet known
  std::uint64_t present_size = 0;              // the data file's size is the truth, not "offset"
  std::map<std::string, std::string> metadata;

  bool Complete() const { return declared_size && present_size == *declared_size; }
  std::string Meta(const std::string& key) const {
    const auto it = metadata.find(key);
    return it == metadata.end() ? std::string() : it->second;
  }
};

namespace {

// The tus file store keeps DIR/<id> (the bytes) and DIR/<id>.json (size and metadata).
std::map<std::string, Worker::Upload> ListUploads(const fs::path& store_dir);

}  // namespace

Worker::Worker(WorkerConfig config) : config_(std::move(config)) {
  http_options_.tls.ca_file = config_.ca_file;
  http_options_.basic_auth_user = config_.orthanc_user;
  http_options_.basic_auth_password = config_.orthanc_password;
  http_options_.request_timeout_s = 120;
  http_options_.user_agent = "ctcloud-worker";
  http_ = std::make_unique<transport::HttpClient>(http_options_);
}

Worker::~Worker() = default;

Status Worker::Init() {
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  for (const char* sub : {"series", "done", "failed"}) {
    if (auto st = store.CreateDirectories(config_.work_dir / sub); !st) {
      return MakeError(st.error().WithContext("work directory (check --work)"));
    }
  }
  std::error_code ec;
  if (!fs::is_directory(config_.store_dir, ec)) {
    return MakeError(ErrorKind::kInvalidInput, "upload store " + config_.store_dir.string() +
                                                   " is not a directory (pass the tus server's --dir as --store)");
  }
  return Ok();
}

namespace {

std::map<std::string, Worker::Upload> ListUploads(const fs::path& store_dir) {
  std::map<std::string, Worker::Upload> uploads;
  std::error_code ec;
  for (fs::directory_iterator it(store_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path info_path = it->path();
    if (info_path.extension() != ".json") continue;
    Worker::Upload upload;
    upload.id = info_path.stem().string();
    upload.data_path = store_dir / upload.id;
    std::error_code size_ec;
    const auto present = fs::file_size(upload.data_path, size_ec);
    if (size_ec) continue;  // the data file is created with the info file; not there yet
    upload.present_size = present;
    auto info = ReadJsonFile(info_path, kMaxUploadInfoBytes);
    if (!info || !info->is_object()) continue;  // being written by the tus server: next pass
    if (info->contains("size") && (*info)["size"].is_number_unsigned()) {
      upload.declared_size = (*info)["size"].get<std::uint64_t>();
    }
    if (info->contains("metadata") && (*info)["metadata"].is_object()) {
      for (const auto& [key, value] : (*info)["metadata"].items()) {
        upload.metadata[key] = value.is_string() ? value.get<std::string>() : std::string();
      }
    }
    uploads.emplace(upload.id, std::move(upload));
  }
  return uploads;
}

}  // namespace

Expected<std::string> Worker::HashOf(const Upload& upload) {
  const auto it = hash_cache_.find(upload.id);
  if (it != hash_cache_.end() && it->second.first == upload.present_size) return it->second.second;
  auto hash = Sha256HexOfFile(upload.data_path);
  if (!hash) return MakeError(hash.error());
  hash_cache_[upload.id] = {upload.present_size, *hash};
  return *hash;
}

Worker::StoreAttempt Worker::StoreInstance(transport::HttpClient& http, const std::string& url, const fs::path& file) {
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  auto bytes = store.ReadAll(file, 1ull << 30);
  if (!bytes) return {StoreAttempt::kRejected, "instance to store is missing: " + bytes.error().message(), {}};
  transport::HttpRequest request;
  request.method = "POST";
  request.url = url;
  request.headers = {{"Content-Type", "application/dicom"}, {"Accept", "application/json"}};
  request.body = std::move(*bytes);
  auto response = http.Perform(request, 1ull << 20);
  if (!response) return {StoreAttempt::kRetry, "cannot store in Orthanc at " + url + ": " + response.error().message(), {}};
  if (response->status == 401 || response->status == 403) {
    return {StoreAttempt::kRetry,
            "Orthanc at " + url + " refused the credentials of user '" + config_.orthanc_user + "' (HTTP " +
                std::to_string(response->status) + "); check --orthanc-user and --orthanc-password-file",
            {}};
  }
  if (response->status >= 400 && response->status < 500 && response->status != 408 && response->status != 429) {
    return {StoreAttempt::kRejected,
            "Orthanc rejected " + file.filename().string() + " with HTTP " + std::to_string(response->status) + ": " +
                response->body.substr(0, 200),
            {}};
  }
  if (response->status < 200 || response->status >= 300) {
    return {StoreAttempt::kRetry,
            "Orthanc answered HTTP " + std::to_string(response->status) + " for " + file.filename().string(), {}};
  }
  const auto answer = nlohmann::json::parse(response->body, nullptr, false);
  return {StoreAttempt::kStored, {},
          answer.is_object() && answer.contains("ID") && answer["ID"].is_string() ? answer["ID"].get<std::string>()
                                                                                  : std::string()};
}

Worker::Outcome Worker::Fail(const std::string& scan_uid, const std::string& manifest_upload_id,
                             const std::string& reason) {
  log::Error(kLog, "scan " + scan_uid + " FAILED and will not be reconstructed: " + reason +
                       " (record in " + (config_.work_dir / "failed" / (scan_uid + ".json")).string() +
                       "; the terminal must upload the scan again)");
  const nlohmann::json record = {{"scan_uid", scan_uid},
                                 {"reason", reason},
                                 {"manifest_upload", manifest_upload_id},
                                 {"failed_utc", UtcNowIso8601()}};
  if (auto st = WriteJsonDurably(config_.work_dir / "failed" / (scan_uid + ".json"), record); !st) {
    log::Error(kLog, "cannot record the failure of scan " + scan_uid + ": " + st.error().message());
  }
  return Outcome::kFailed;
}

PassResult Worker::RunPass(const std::atomic<bool>& stop) {
  PassResult result;
  const auto uploads = ListUploads(config_.store_dir);
  for (const auto& [id, upload] : uploads) {
    if (stop) break;
    if (upload.Meta("kind") != "manifest" || !upload.Complete()) continue;
    switch (ProcessManifest(upload, uploads, stop)) {
      case Outcome::kStored: ++result.stored; break;
      case Outcome::kFailed: ++result.failed; break;
      case Outcome::kWaiting: ++result.waiting; break;
      case Outcome::kRetry: ++result.retry; break;
      case Outcome::kSkipped: break;
    }
  }
  return result;
}

Worker::Outcome Worker::ProcessManifest(const Upload& manifest_upload, const std::map<std::string, Upload>& uploads,
                                        const std::atomic<bool>& stop) {
  const auto started = Clock::now();
  // The scan UID names files in the work directory, so only a valid DICOM UID (digits and dots)
  // is ever used as one.
  const std::string meta_scan_uid = manifest_upload.Meta("scan_uid");
  auto manifest_json = ReadJsonFile(manifest_upload.data_path, kMaxManifestBytes);
  Expected<codec::Manifest> parsed = manifest_json ? codec::ManifestFromJson(*manifest_json)
                                                   : Expected<codec::Manifest>(MakeError(manifest_json.error()));
  const std::string scan_uid = parsed ? parsed->scan_uid : meta_scan_uid;
  if (!IsValidDicomUid(scan_uid)) {
    if (reported_bad_manifests_.insert(manifest_upload.id).second) {
      log::Error(kLog, "manifest upload " + manifest_upload.id + " has no valid scan UID; ignored" +
                           (parsed ? std::string() : ": " + parsed.error().message()));
    }
    return Outcome::kSkipped;
  }
  const fs::path done_path = config_.work_dir / "done" / (scan_uid + ".json");
  const fs::path failed_path = config_.work_dir / "failed" / (scan_uid + ".json");
  std::error_code ec;
  if (fs::exists(done_path, ec) || fs::exists(failed_path, ec)) return Outcome::kSkipped;
  if (!parsed) return Fail(scan_uid, manifest_upload.id, "manifest does not parse: " + parsed.error().message());
  const codec::Manifest& manifest = *parsed;
  if (meta_scan_uid != manifest.scan_uid) {
    return Fail(scan_uid, manifest_upload.id, "upload metadata names scan '" + meta_scan_uid +
                                                  "' but the manifest is for this scan");
  }
  if (!IsValidDicomUid(manifest.study_uid)) {
    return Fail(scan_uid, manifest_upload.id, "manifest study_uid is not a valid DICOM UID");
  }

  const fs::path series_dir = config_.work_dir / "series" / scan_uid;
  const fs::path series_record_path = series_dir / "series.json";
  nlohmann::json series_record;
  if (fs::exists(series_record_path, ec)) {
    // Reconstructed before (then interrupted or Orthanc refused): store the same instances again.
    auto existing = ReadJsonFile(series_record_path, kMaxManifestBytes);
    if (!existing) return Fail(scan_uid, manifest_upload.id, "series record unreadable: " + existing.error().message());
    series_record = std::move(*existing);
    if (!series_record.contains("results")) {
      // Written by a worker from before the analysis: without the result set (the SR marks it
      // complete) the agent would wait for ever, so this scan is reconstructed and analysed again.
      log::Warn(kLog, "scan " + scan_uid + ": its series record has no result set; reconstructing it again");
      series_record = nlohmann::json();
    }
  }
  if (series_record.is_null()) {
    const auto picked_up_ms = UnixMs();
    const drivers::ScanProtocol& protocol = manifest.protocol;
    if (manifest.chunks.empty()) return Fail(scan_uid, manifest_upload.id, "manifest lists no chunks");
    std::uint64_t raw_total = 0;
    for (const auto& c : manifest.chunks) raw_total += c.raw_bytes;
    if (raw_total > config_.max_scan_raw_bytes) {
      return Fail(scan_uid, manifest_upload.id, "scan holds " + std::to_string(raw_total) +
                                                    " raw bytes, more than this worker accepts (" +
                                                    std::to_string(config_.max_scan_raw_bytes) + ")");
    }

    // Find every chunk: a complete upload of this scan and index whose bytes hash to the manifest's.
    std::vector<fs::path> chunk_files;
    // What the series was made from: each chunk's upload and the SHA-256 of its bytes, as checked
    // against the manifest (recorded so a reader can prove the input was bit-exact).
    nlohmann::json input_chunks = nlohmann::json::array();
    for (const auto& entry : manifest.chunks) {
      std::optional<fs::path> match;
      bool incomplete = false;
      int mismatched = 0;
      for (const auto& [id, upload] : uploads) {
        if (upload.Meta("kind") != "chunk" || upload.Meta("scan_uid") != scan_uid ||
            upload.Meta("chunk_index") != std::to_string(entry.index)) {
          continue;
        }
        if (!upload.Complete()) {
          incomplete = true;
          continue;
        }
        auto hash = HashOf(upload);
        if (!hash) {
          log::Warn(kLog, "scan " + scan_uid + ": cannot hash upload " + id + ": " + hash.error().message());
          incomplete = true;
          continue;
        }
        if (*hash == entry.sha256) {
          match = upload.data_path;
          input_chunks.push_back({{"index", entry.index}, {"sha256", *hash}, {"upload", id}});
          break;
        }
        ++mismatched;
      }
      if (match) {
        chunk_files.push_back(*match);
      } else if (mismatched > 0 && !incomplete) {
        return Fail(scan_uid, manifest_upload.id, "chunk " + std::to_string(entry.index) +
                                                      ": the uploaded bytes do not match the manifest's SHA-256 (" +
                                                      std::to_string(mismatched) + " complete upload(s) checked)");
      } else {
        log::Debug(kLog, "scan " + scan_uid + ": waiting for chunk " + std::to_string(entry.index));
        return Outcome::kWaiting;
      }
    }

    // Decode, check and assemble in view order.
    const auto decode_start = Clock::now();
    std::vector<ChunkData> chunks;
    for (std::size_t i = 0; i < manifest.chunks.size(); ++i) {
      if (stop) return Outcome::kSkipped;
      auto data = DecodeChunkFile(chunk_files[i], manifest, manifest.chunks[i]);
      if (!data) return Fail(scan_uid, manifest_upload.id, "decoding failed: " + data.error().message());
      chunks.push_back(std::move(*data));
    }
    std::sort(chunks.begin(), chunks.end(),
              [](const ChunkData& a, const ChunkData& b) { return a.first_view < b.first_view; });
    ReconInput input;
    input.rows = protocol.rows;
    input.channels = protocol.channels;
    input.channel_pitch_mm = protocol.channel_pitch_mm;
    input.unattenuated_counts = protocol.unattenuated_counts * protocol.dose_fraction;
    input.samples_are_line_integrals = protocol.sample_encoding == drivers::SampleEncoding::kLineIntegral;
    input.line_integral_slope = protocol.line_integral_slope;
    input.line_integral_intercept = protocol.line_integral_intercept;
    // Fan beam is rebinned to parallel; helical scans are interpolated in z (recon.hpp).
    input.fan_beam = protocol.geometry == drivers::GeometryKind::kFan;
    input.source_to_isocenter_mm = protocol.source_to_isocenter_mm;
    input.views_per_rotation = protocol.views_per_rotation;
    input.row_pitch_mm = protocol.row_pitch_mm;
    std::uint64_t next_view = 0;
    for (auto& chunk : chunks) {
      if (chunk.first_view != next_view) {
        return Fail(scan_uid, manifest_upload.id,
                    std::string(chunk.first_view > next_view ? "views missing" : "views duplicated") + " at view " +
                        std::to_string(std::min(chunk.first_view, next_view)));
      }
      next_view += chunk.views.size();
      for (const auto& v : chunk.views) {
        input.gantry_angle_deg.push_back(v.gantry_angle_deg);
        input.table_position_mm.push_back(v.table_position_mm);
      }
      input.counts.insert(input.counts.end(), chunk.counts.begin(), chunk.counts.end());
      chunk.counts = {};
    }
    input.views = static_cast<std::uint32_t>(next_view);
    if (next_view < protocol.views_per_rotation) {
      return Fail(scan_uid, manifest_upload.id, "the scan holds " + std::to_string(next_view) + " views; the "
                                                "reconstruction needs a full rotation of " +
                                                    std::to_string(protocol.views_per_rotation));
    }
    const double decode_ms = MsSince(decode_start);
    chunks.clear();

    if (stop) return Outcome::kSkipped;
    const auto recon_start = Clock::now();
    auto slices = Reconstruct(input, config_.recon);
    if (!slices) return Fail(scan_uid, manifest_upload.id, "reconstruction refused: " + slices.error().message());
    const double recon_ms = MsSince(recon_start);
    const auto reconstructed_ms = UnixMs();

    // A half-written series from an interrupted run is discarded: nothing of it was stored.
    fs::remove_all(series_dir, ec);
    const auto file_store = MakeProcessFileStore();
    FileStore& store = *file_store;
    if (auto st = store.CreateDirectories(series_dir); !st) {
      log::Error(kLog, "scan " + scan_uid + ": " + st.error().message());
      return Outcome::kRetry;
    }
    const auto dicom_start = Clock::now();
    SeriesInfo series;
    series.scan_uid = scan_uid;
    series.study_uid = manifest.study_uid;
    // UIDs follow from the scan UID: a scan reconstructed again (killed before its done marker,
    // work directory lost) yields the same instances, which Orthanc stores once.
    series.series_uid = DerivedDicomUid("ctcloud-worker series " + scan_uid);
    series.frame_of_reference_uid = DerivedDicomUid("ctcloud-worker frame-of-reference " + scan_uid);
    series.patient_id = manifest.patient_id;
    series.patient_name = manifest.patient_name;
    series.study_description = manifest.study_description;
    series.acquisition_date_time = IsoToDicomDateTime(manifest.acquisition_start_utc);
    series.slice_thickness_mm = protocol.row_pitch_mm;
    series.images_in_acquisition = static_cast<std::int32_t>(slices->size());
    nlohmann::json instances = nlohmann::json::array();
    ResultInput result_input;
    result_input.ct = series;
    result_input.slices = *slices;
    for (std::uint32_t row = 0; row < slices->size(); ++row) {
      SlicePlacement placement;
      placement.instance_number = static_cast<std::int32_t>(row + 1);
      placement.z_mm = (*slices)[row].z_mm;  // the recon places each plane (axial rows or helical planes)
      placement.sop_instance_uid = DerivedDicomUid("ctcloud-worker instance " + scan_uid + " " + std::to_string(row + 1));
      char name[32];
      std::snprintf(name, sizeof name, "slice-%03u.dcm", row + 1);
      auto sop = WriteCtSlice(series_dir / name, series, placement, (*slices)[row]);
      if (!sop) {
        log::Error(kLog, "scan " + scan_uid + ": " + sop.error().message());
        return Outcome::kRetry;
      }
      instances.push_back({{"file", name}, {"sop_instance_uid", *sop}, {"z_mm", placement.z_mm}});
      result_input.ct_instances.push_back({*sop, placement.z_mm});
    }
    const double dicom_ms = MsSince(dicom_start);

    // The analysis and its result set (SEG, report pages, SR), written beside the slices before
    // the series record, so the record commits both: a kill before it redoes everything with the
    // same UIDs, a kill after it stores the same files.
    if (stop) return Outcome::kSkipped;
    const auto analysis_start = Clock::now();
    AnalysisOptions analysis_options;
    analysis_options.max_threads = std::max<std::uint32_t>(1, config_.recon.max_threads);
    AnalysisResult analysis = Analyze(*slices, analysis_options);
    const double analysis_ms = MsSince(analysis_start);
    const auto analysed_ms = UnixMs();
    const auto encoding_start = Clock::now();
    auto results = WriteResultSet(series_dir, result_input, analysis);
    if (!results && results.error().kind() != ErrorKind::kIo) {
      // An analysis the encoders cannot express still gets a complete set: a FAILED one saying why.
      log::Error(kLog, "scan " + scan_uid + ": cannot encode the analysis (" + results.error().message() +
                           "); storing it as failed");
      AnalysisResult failed;
      failed.category = StudyCategory::kFailed;
      failed.failure_reason = "the result could not be encoded: " + results.error().message();
      analysis = std::move(failed);
      results = WriteResultSet(series_dir, result_input, analysis);
    }
    if (!results) {
      log::Error(kLog, "scan " + scan_uid + ": cannot write the result set: " + results.error().message() +
                           " (retrying next pass)");
      return Outcome::kRetry;
    }
    const double encoding_ms = MsSince(encoding_start);
    nlohmann::json result_objects = nlohmann::json::array();
    for (const ResultObject& object : *results) {
      result_objects.push_back({{"file", object.file.filename().string()},
                                {"kind", object.kind},
                                {"sop_class_uid", object.sop_class_uid},
                                {"series_uid", object.series_uid},
                                {"sop_instance_uid", object.sop_instance_uid}});
    }
    series_record = {{"scan_uid", scan_uid},
                     {"study_uid", manifest.study_uid},
                     {"series_uid", series.series_uid},
                     {"views", input.views},
                     {"input_chunks", input_chunks},
                     {"image_size", config_.recon.image_size},
                     {"instances", instances},
                     {"results", result_objects},
                     {"analysis", AnalysisSummary(analysis)},
                     {"reconstructed_utc", UtcNowIso8601()},
                     {"timings_ms",
                      {{"decode", decode_ms},
                       {"reconstruct", recon_ms},
                       {"dicom", dicom_ms},
                       {"analysis", analysis_ms},
                       {"encoding", encoding_ms}}},
                     {"unix_ms", {{"picked_up", picked_up_ms}, {"reconstructed", reconstructed_ms},
                                  {"analysed", analysed_ms}, {"encoded", UnixMs()}}}};
    if (auto st = WriteJsonDurably(series_record_path, series_record); !st) {
      log::Error(kLog, "scan " + scan_uid + ": cannot record the series: " + st.error().message());
      return Outcome::kRetry;
    }
  }

  // Store every instance in Orthanc. Orthanc answers AlreadyStored for an instance it has, so a
  // resumed store sends the same files again harmlessly.
  // The CT slices first, then the result set in its order: SEG, report pages, and the SR last (the
  // agent takes the set as complete when the SR and everything it lists are there).
  const auto store_start = Clock::now();
  const std::string url = TrimSlash(config_.orthanc_url) + "/instances";
  std::vector<nlohmann::json> to_store(series_record.at("instances").begin(), series_record.at("instances").end());
  const std::size_t ct_count = to_store.size();
  for (const auto& object : series_record.value("results", nlohmann::json::array())) to_store.push_back(object);
  const bool has_sr = !to_store.empty() && to_store.back().value("kind", std::string()) == "sr";
  // Everything but the SR goes in parallel over kStoreConnections connections (Orthanc spends most
  // of each store waiting on its database, one at a time would leave both cores idle); the SR
  // only after every other instance was stored.
  std::vector<StoreAttempt> attempts(to_store.size());
  const std::size_t parallel_count = has_sr ? to_store.size() - 1 : to_store.size();
  std::atomic<std::size_t> next{0};
  auto store_some = [&](transport::HttpClient& http) {
    for (std::size_t i = next++; i < parallel_count; i = next++) {
      if (stop) return;
      attempts[i] = StoreInstance(http, url, series_dir / to_store[i].at("file").get<std::string>());
    }
  };
  {
    const std::size_t threads = std::min<std::size_t>(kStoreConnections, parallel_count);
    std::vector<std::unique_ptr<transport::HttpClient>> clients;
    std::vector<std::thread> workers;
    for (std::size_t t = 1; t < threads; ++t) {
      clients.push_back(std::make_unique<transport::HttpClient>(http_options_));
      workers.emplace_back(store_some, std::ref(*clients.back()));
    }
    store_some(*http_);
    for (auto& worker : workers) worker.join();
  }
  auto outcome_of = [&](std::size_t count) -> std::optional<Outcome> {
    for (std::size_t i = 0; i < count; ++i) {  // a rejection fails the scan, before any retry
      if (attempts[i].state == StoreAttempt::kRejected) return Fail(scan_uid, manifest_upload.id, attempts[i].message);
    }
    for (std::size_t i = 0; i < count; ++i) {
      if (attempts[i].state == StoreAttempt::kRetry) {
        log::Error(kLog, "scan " + scan_uid + ": " + attempts[i].message + " (retrying next pass)");
        return Outcome::kRetry;
      }
      if (attempts[i].state == StoreAttempt::kNotTried) return Outcome::kSkipped;  // stopping
    }
    return std::nullopt;
  };
  if (auto outcome = outcome_of(parallel_count)) return *outcome;
  if (has_sr) {
    if (stop) return Outcome::kSkipped;
    attempts.back() = StoreInstance(*http_, url, series_dir / to_store.back().at("file").get<std::string>());
    if (auto outcome = outcome_of(to_store.size())) return *outcome;
  }
  nlohmann::json orthanc_ids = nlohmann::json::array();
  for (const auto& attempt : attempts) orthanc_ids.push_back(attempt.orthanc_id);

  nlohmann::json done = series_record;
  done["instance_count"] = ct_count;  // the CT series (the soak test compares it with Orthanc's)
  done["result_instance_count"] = to_store.size() - ct_count;
  done["orthanc_instance_ids"] = orthanc_ids;
  done["stored_utc"] = UtcNowIso8601();
  done["timings_ms"]["store"] = MsSince(store_start);
  done["unix_ms"]["stored"] = UnixMs();
  if (auto st = WriteJsonDurably(done_path, done); !st) {
    log::Error(kLog, "scan " + scan_uid + ": stored, but cannot record it as done: " + st.error().message());
    return Outcome::kRetry;
  }
  const auto& t = done["timings_ms"];
  char timings[256];
  std::snprintf(timings, sizeof timings,
                "decode %.0f ms, reconstruct %.0f ms, dicom %.0f ms, analysis %.0f ms, encoding %.0f ms, store %.0f ms, "
                "total %.0f ms",
                t.value("decode", 0.0), t.value("reconstruct", 0.0), t.value("dicom", 0.0), t.value("analysis", 0.0),
                t.value("encoding", 0.0), t.value("store", 0.0), MsSince(started));
  const auto& summary = done["analysis"];
  log::Info(kLog, "scan " + scan_uid + " stored: " + std::to_string(ct_count) + " instances, series " +
                      done["series_uid"].get<std::string>() + ", and its result set of " +
                      std::to_string(to_store.size() - ct_count) + " (category " +
                      summary.value("category", std::string("?")) + ", " +
                      std::to_string(summary.value("lesion_count", 0)) + " lesions); " + timings);
  return Outcome::kStored;
}

}  // namespace ctagent::cloud
