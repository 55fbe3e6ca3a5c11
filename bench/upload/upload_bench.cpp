// The agent's upload path, timed: a fresh spool is filled with real compressed chunks of a scan
// (the files `ctagent scan` produced, see run.sh) and the agent's Uploader (core::Uploader, the
// same class `ctagent run` uses: tus over HTTPS, `parallel_uploads` transfers, each chunk one
// upload journaled before its first byte, the manifest last) sends them all. Used by run.sh;
// prints "seconds=<s> bytes=<n> uploads=<n> cpu_seconds=<s>" on success (cpu_seconds: the
// process's user + system CPU time during the timed upload, all threads).
//
//   upload_bench --url https://HOST:PORT/files/ --dir CHUNKS --ca CA.pem
//                [--parallel N] [--patch-bytes N] [--spool DIR] [--log debug]
// CHUNKS holds manifest.json and the chunk files it lists (NNNNNN.ctc, by chunk index).
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/manifest.hpp"
#include "agent/common/allocator.hpp"
#include "agent/common/durable_file.hpp"
#include "agent/common/log.hpp"
#include "agent/core/uploader.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string ChunkName(std::uint32_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "%06u.ctc", index);
  return name;
}

// User + system CPU time of the whole process so far [s].
double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "upload_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  KeepLargeBuffersInHeap();  // as ctagent's main does
  fs::path dir, spool_dir;
  config::CloudConfig cloud;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--url") cloud.upload_url = argv[i + 1];
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--ca") cloud.tls.ca_file = argv[i + 1];
    else if (a == "--parallel") cloud.parallel_uploads = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    else if (a == "--patch-bytes") cloud.patch_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--spool") spool_dir = argv[i + 1];
    else if (a == "--log") {
      log::Level level;
      if (!log::ParseLevel(argv[i + 1], &level)) return Fail(std::string("unknown log level ") + argv[i + 1]);
      log::SetLevel(level);
    }
    else {
      std::fprintf(stderr, "upload_bench: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (cloud.upload_url.empty() || dir.empty()) {
    std::fprintf(stderr, "usage: upload_bench --url URL --dir CHUNKS --ca CA.pem [--parallel N] [--patch-bytes N] "
                         "[--spool DIR]\n");
    return 2;
  }
  if (spool_dir.empty()) spool_dir = dir / "bench-spool";
  fs::remove_all(spool_dir);

  const auto manifest_bytes = ReadFile(dir / "manifest.json");
  auto manifest_json = nlohmann::json::parse(manifest_bytes.begin(), manifest_bytes.end(), nullptr, false);
  if (manifest_json.is_discarded()) return Fail("cannot parse " + (dir / "manifest.json").string());
  auto manifest = codec::ManifestFromJson(manifest_json);
  if (!manifest) return Fail(manifest.error().message());

  // The spool as acquisition leaves it (not timed).
  PosixFileStore files;
  spool::SpoolOptions options;
  options.directory = spool_dir;
  options.min_free_bytes = 0;
  auto spool = spool::Spool::Open(options, files);
  if (!spool) return Fail(spool.error().message());
  spool::ScanRecord record;
  record.scan_uid = manifest->scan_uid;
  record.study_uid = manifest->study_uid;
  std::uint64_t total = 0;
  for (const auto& c : manifest->chunks) total += c.compressed_bytes;
  if (auto st = (*spool)->BeginScan(record, total + (1u << 20)); !st) return Fail(st.error().message());
  for (const auto& c : manifest->chunks) {
    const auto bytes = ReadFile(dir / ChunkName(c.index));
    if (auto st = (*spool)->AddChunk(manifest->scan_uid, c, bytes); !st) return Fail(st.error().message());
  }
  if (auto st = (*spool)->FinishAcquisition(manifest->scan_uid, *manifest); !st) return Fail(st.error().message());
  auto stored_manifest = (*spool)->ReadManifest(manifest->scan_uid);
  if (!stored_manifest) return Fail(stored_manifest.error().message());
  total += stored_manifest->size();

  // The agent's order: every chunk (parallel, bounded), then the manifest.
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  core::Uploader uploader(io, **spool, cloud);
  std::size_t chunks_left = manifest->chunks.size();
  int failed = 0;
  const double cpu0 = CpuSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  auto finish = [&](Status st) {
    if (!st) {
      ++failed;
      std::fprintf(stderr, "upload_bench: %s\n", st.error().message().c_str());
    }
    work.reset();
  };
  for (const auto& c : manifest->chunks) {
    uploader.UploadChunk(manifest->scan_uid, c.index, [&](Status st) {
      if (!st) {
        ++failed;
        std::fprintf(stderr, "upload_bench: %s\n", st.error().message().c_str());
      }
      if (--chunks_left == 0) uploader.UploadManifest(manifest->scan_uid, finish);
    });
  }
  // As the agent does once a scan's manifest is in the spool and its chunks are still uploading.
  uploader.PrepareManifest(manifest->scan_uid);
  io.run();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu_seconds = CpuSeconds() - cpu0;
  uploader.Stop();
  fs::remove_all(spool_dir);
  if (failed > 0) return 1;
  std::printf("seconds=%.4f bytes=%llu uploads=%zu cpu_seconds=%.3f\n", seconds,
              static_cast<unsigned long long>(total), manifest->chunks.size() + 1, cpu_seconds);
  return 0;
}
