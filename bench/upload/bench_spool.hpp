// Shared by the upload bench drivers: a fresh spool filled with a scan's real compressed chunks
// (the files `ctagent scan` produced, see run.sh), as acquisition leaves it, and the process's
// CPU time. Not timed.
#pragma once

#include <sys/resource.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/manifest.hpp"
#include "base/durable_file.hpp"
#include "agent/spool/spool.hpp"

namespace ctagent::bench {

inline std::vector<std::uint8_t> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::string ChunkName(std::uint32_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "%06u.ctc", index);
  return name;
}

// User + system CPU time of the whole process so far [s].
inline double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct BenchSpool {
  std::unique_ptr<spool::Spool> spool;
  // Every scan's manifest, the first one's first: the same chunks under another scan UID each
  // (FillSpool's `scans`), as consecutive scans of the same size would be spooled.
  std::vector<codec::Manifest> scans;
  std::vector<std::uint64_t> scan_bytes;  // each scan's chunks and its stored manifest

  const codec::Manifest& manifest() const { return scans.front(); }
  std::uint64_t total_bytes() const { return scan_bytes.front(); }  // the first scan's
};

// `dir` holds manifest.json and the chunk files it lists (NNNNNN.ctc, by chunk index). With
// `scans` above 1, the same chunks are spooled again as further scans, each with the first's UID
// and ".2", ".3"... appended (the bytes keep the first's UID in their header: the reference tus
// server does not read them, the cloud's worker would refuse them).
inline Expected<BenchSpool> FillSpool(const std::filesystem::path& dir, const std::filesystem::path& spool_dir,
                                      FileStore& files, int scans = 1) {
  std::filesystem::remove_all(spool_dir);
  const auto manifest_bytes = ReadFile(dir / "manifest.json");
  auto manifest_json = nlohmann::json::parse(manifest_bytes.begin(), manifest_bytes.end(), nullptr, false);
  if (manifest_json.is_discarded()) return MakeError(ErrorKind::kInvalidInput, "cannot parse " + (dir / "manifest.json").string());
  auto manifest = codec::ManifestFromJson(manifest_json);
  if (!manifest) return MakeError(manifest.error());
  spool::SpoolOptions options;
  options.directory = spool_dir;
  options.min_free_bytes = 0;
  auto spool = spool::Spool::Open(options, files);
  if (!spool) return MakeError(spool.error());
  BenchSpool out;
  std::uint64_t chunk_bytes = 0;
  for (const auto& c : manifest->chunks) chunk_bytes += c.compressed_bytes;
  for (int k = 0; k < scans; ++k) {
    codec::Manifest scan = *manifest;
    if (k > 0) scan.scan_uid += "." + std::to_string(k + 1);
    spool::ScanRecord record;
    record.scan_uid = scan.scan_uid;
    record.study_uid = scan.study_uid;
    if (auto st = (*spool)->BeginScan(record, chunk_bytes + (1u << 20)); !st) return MakeError(st.error());
    out.scans.push_back(std::move(scan));
  }
  for (const auto& c : manifest->chunks) {  // each chunk file read once, whatever the scans
    const auto bytes = ReadFile(dir / ChunkName(c.index));
    for (const auto& scan : out.scans) {
      if (auto st = (*spool)->AddChunk(scan.scan_uid, c, bytes); !st) return MakeError(st.error());
    }
  }
  for (const auto& scan : out.scans) {
    if (auto st = (*spool)->FinishAcquisition(scan.scan_uid, scan); !st) return MakeError(st.error());
    auto stored_manifest = (*spool)->ReadManifest(scan.scan_uid);
    if (!stored_manifest) return MakeError(stored_manifest.error());
    out.scan_bytes.push_back(chunk_bytes + stored_manifest->size());
  }
  out.spool = std::move(*spool);
  return out;
}

}  // namespace ctagent::bench
