// Test helpers for running the real `ctagent scan` against the real tus server and checking
// that what the server stored is bit-exact: every chunk matches the manifest's SHA-256, decodes,
// and decodes to exactly the views the sim driver produces for the same protocol and seed.
#pragma once

#include <catch2/catch.hpp>

#include <ctime>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/sha256.hpp"
#include "config/config.hpp"
#include "drivers/detector.hpp"
#include "tests/support/process.hpp"

namespace ctagent::test {

// A scan of about 6 MB raw (720 views of 8 x 512 uint16), in chunks of 60 views.
inline nlohmann::json ScanConfig(const std::filesystem::path& spool_dir, const std::string& upload_url,
                                 const std::filesystem::path& ca_file, std::uint32_t stall_timeout_s,
                                 std::uint64_t patch_bytes) {
  return {
      {"terminal_id", "links-terminal"},
      {"log_level", "info"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", 720}, {"rotations", 1}, {"rows", 8}, {"channels", 512},
        {"channel_pitch_mm", 1.0}, {"row_pitch_mm", 5.0}, {"rotation_time_s", 0.5}, {"dose_fraction", 1.0},
        {"unattenuated_counts", 60000}, {"sample_type", "uint16"}, {"seed", 41}, {"real_time", false}}},
      {"study", {{"patient_id", "LINKS-1"}, {"patient_name", "LINKS^TEST"}, {"study_description", "LINKS"}}},
      {"codec", {{"zstd_level", 1}, {"filter", "shuffle"}, {"views_per_chunk", 60}, {"threads", 2}}},
      {"spool", {{"directory", spool_dir.string()}, {"max_bytes", "1 GiB"}, {"min_free_bytes", 0}}},
      {"cloud",
       {{"upload_url", upload_url},
        {"tls", {{"ca_file", ca_file.string()}}},
        {"parallel_uploads", 2},
        // Pinned: the proxy tests bound what a reset or stall re-sends by 2 uploads in flight,
        // whatever the loaded loopback's rate x round trip would admit.
        {"max_uploads_in_flight", 2},
        {"patch_bytes", patch_bytes},
        {"connect_timeout_s", 3},
        {"stall_timeout_s", stall_timeout_s}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
}

struct StoredUpload {
  std::filesystem::path data;
  nlohmann::json metadata;
  std::uint64_t size = 0;
};

// The uploads in a tus file store: data DIR/<id>, info DIR/<id>.json.
inline std::vector<StoredUpload> ListUploads(const std::filesystem::path& store) {
  std::vector<StoredUpload> uploads;
  for (const auto& entry : std::filesystem::directory_iterator(store)) {
    if (entry.path().extension() != ".json") continue;
    auto info = nlohmann::json::parse(ReadText(entry.path()), nullptr, false);
    if (info.is_discarded()) continue;
    StoredUpload u;
    u.data = entry.path().parent_path() / entry.path().stem();
    u.metadata = info.value("metadata", nlohmann::json::object());
    u.size = info.value("size", std::uint64_t{0});
    uploads.push_back(std::move(u));
  }
  return uploads;
}

// Checks the store holds one complete scan, bit-exact: every chunk of the manifest has a
// complete upload. Returns the bytes stored in all uploads (complete or not).
inline std::uint64_t CheckScanArrivedBitExact(const std::filesystem::path& store, const std::filesystem::path& cfg_path) {
  auto config = config::LoadConfig(cfg_path);
  REQUIRE(config);
  const auto uploads = ListUploads(store);
  // The complete manifest upload. Like a chunk's, the manifest's creation (made ahead, at scan
  // end) can be interrupted after the server created the upload: the agent never learnt that
  // URL and created another, so the store may also hold an empty one.
  const StoredUpload* manifest_upload = nullptr;
  std::size_t orphan_manifests = 0;
  for (const auto& u : uploads) {
    if (u.metadata.value("kind", "") != "manifest") continue;
    std::error_code ec;
    if (u.size > 0 && std::filesystem::file_size(u.data, ec) == u.size && !ec) {
      REQUIRE(manifest_upload == nullptr);  // one complete manifest, never two
      manifest_upload = &u;
    } else {
      ++orphan_manifests;
    }
  }
  REQUIRE(manifest_upload != nullptr);
  if (orphan_manifests > 0) std::printf("store: %zu incomplete manifest upload(s) left by interrupted creation\n", orphan_manifests);
  auto manifest = codec::ManifestFromJson(nlohmann::json::parse(ReadText(manifest_upload->data)));
  REQUIRE(manifest);
  REQUIRE(manifest->complete);

  auto detector = drivers::MakeDetector("sim", nlohmann::json::object());
  REQUIRE(detector);
  REQUIRE((*detector)->Arm(config->protocol));
  std::vector<std::vector<std::uint8_t>> views;
  for (int guard = 0; guard < 100000; ++guard) {
    auto v = (*detector)->NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    views.push_back(std::move((*v)->samples));
  }

  std::uint64_t total = ReadText(manifest_upload->data).size();
  std::set<std::uint32_t> complete;
  std::size_t orphans = 0;
  for (const auto& u : uploads) {
    if (u.metadata.value("kind", "") != "chunk") continue;
    const std::string text = ReadText(u.data);
    const std::vector<std::uint8_t> bytes(text.begin(), text.end());
    total += bytes.size();
    if (bytes.size() < u.size) {
      // An upload whose creating request was interrupted: the agent never learnt its URL and
      // created another one. Its bytes count as re-sent; the complete one must exist.
      ++orphans;
      continue;
    }
    REQUIRE(bytes.size() == u.size);
    auto decoded = codec::DecodeChunk(bytes);
    REQUIRE(decoded);
    INFO("chunk " << decoded->info.chunk_index);
    REQUIRE(decoded->info.chunk_index < manifest->chunks.size());
    CHECK(Sha256Hex(bytes) == manifest->chunks.at(decoded->info.chunk_index).sha256);
    Sha256 expected;
    for (const auto& view : decoded->info.views) expected.Update(views.at(view.sequence));
    CHECK(Sha256Hex(decoded->samples) == expected.FinalHex());
    complete.insert(decoded->info.chunk_index);
  }
  if (orphans > 0) std::printf("store: %zu incomplete upload(s) left by interrupted creation requests\n", orphans);
  CHECK(complete.size() == manifest->chunks.size());
  return total;
}

// The wall-clock time of an agent log line ("2026-11-23T11:42:01.123Z ..."), Unix ms; -1 if none.
inline std::int64_t LogLineUnixMs(const std::string& line) {
  if (line.size() < 24 || line[10] != 'T' || line[23] != 'Z') return -1;
  std::tm tm{};
  if (strptime(line.substr(0, 19).c_str(), "%Y-%m-%dT%H:%M:%S", &tm) == nullptr) return -1;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000 + std::stoi(line.substr(20, 3));
}

// The first log line containing `what`, or "".
inline std::string FirstLineWith(const std::string& log, const std::string& what) {
  const auto pos = log.find(what);
  if (pos == std::string::npos) return "";
  const auto start = log.rfind('\n', pos);
  const auto end = log.find('\n', pos);
  return log.substr(start == std::string::npos ? 0 : start + 1, end == std::string::npos ? std::string::npos : end - (start == std::string::npos ? 0 : start + 1));
}

}  // namespace ctagent::test
