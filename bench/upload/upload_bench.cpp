// The agent's upload path, timed: a fresh spool is filled with real compressed chunks of a scan
// (the files `ctagent scan` produced, see run.sh) and the agent's Uploader (core::Uploader, the
// same class `ctagent run` uses: tus over HTTPS, `parallel_uploads` transfers, each chunk one
// upload journaled before its first byte, the manifest last) sends them all. Used by run.sh;
// prints "seconds=<s> bytes=<n> uploads=<n> cpu_seconds=<s> max_window=<n>" on success
// (cpu_seconds: the process's user + system CPU time during the timed upload, all threads;
// max_window: the most uploads that sent at once, as admitted by rate x round trip).
//
//   upload_bench --url https://HOST:PORT/files/ --dir CHUNKS --ca CA.pem
//                [--parallel N] [--max-in-flight N] [--patch-bytes N] [--spool DIR] [--log debug]
//                [--scans N]
// --parallel is cloud.parallel_uploads, --max-in-flight cloud.max_uploads_in_flight (default: the
// configuration's defaults).
// CHUNKS holds manifest.json and the chunk files it lists (NNNNNN.ctc, by chunk index).
// --scans N (default 1) spools the same chunks as N scans and uploads them one after the other
// with the same Uploader, each as soon as the one before is confirmed, as the daemon does with
// scans that follow each other: its connections are open and its measurements of the link made.
// seconds, bytes and cpu_seconds stay the first scan's (a fresh process); the line then also has
// "warm_seconds=<s> warm_bytes=<n>", the last scan's, and "all_seconds=<s>", the whole upload's.
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/allocator.hpp"
#include "base/durable_file.hpp"
#include "base/log.hpp"
#include "agent/core/uploader.hpp"
#include "bench/upload/bench_spool.hpp"
#include "config/config.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "upload_bench: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  KeepLargeBuffersInHeap();  // as ctagent's main does
  fs::path dir, spool_dir;
  config::CloudConfig cloud;
  int scans = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--url") cloud.upload_url = argv[i + 1];
    else if (a == "--dir") dir = argv[i + 1];
    else if (a == "--ca") cloud.tls.ca_file = argv[i + 1];
    else if (a == "--parallel") cloud.parallel_uploads = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    else if (a == "--max-in-flight") cloud.max_uploads_in_flight = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    else if (a == "--patch-bytes") cloud.patch_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--spool") spool_dir = argv[i + 1];
    else if (a == "--scans") {
      scans = std::atoi(argv[i + 1]);
      if (scans < 1 || scans > 16) return Fail(std::string("--scans must be 1 to 16, got ") + argv[i + 1]);
    }
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
                         "[--spool DIR] [--scans N]\n");
    return 2;
  }
  if (spool_dir.empty()) spool_dir = dir / "bench-spool";
  // The spool as acquisition leaves it (not timed).
  PosixFileStore files;
  auto filled = bench::FillSpool(dir, spool_dir, files, scans);
  if (!filled) return Fail(filled.error().message());
  auto& spool = filled->spool;

  // The agent's order for each scan: every chunk (parallel, bounded), then the manifest; the next
  // scan once this one is confirmed.
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  core::Uploader uploader(io, *spool, cloud);
  int failed = 0;
  const auto note = [&failed](const Status& st) {
    if (st) return;
    ++failed;
    std::fprintf(stderr, "upload_bench: %s\n", st.error().message().c_str());
  };
  std::vector<double> seconds(static_cast<std::size_t>(scans), 0.0);
  double first_cpu_seconds = 0;
  const double cpu0 = bench::CpuSeconds();
  const auto all_t0 = std::chrono::steady_clock::now();
  std::function<void(std::size_t)> upload_scan = [&](std::size_t k) {
    const auto& manifest = filled->scans[k];
    const auto t0 = std::chrono::steady_clock::now();
    auto chunks_left = std::make_shared<std::size_t>(manifest.chunks.size());
    auto finish = [&, k, t0](Status st) {
      note(st);
      seconds[k] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (k == 0) first_cpu_seconds = bench::CpuSeconds() - cpu0;
      if (failed == 0 && k + 1 < filled->scans.size()) {
        upload_scan(k + 1);
      } else {
        work.reset();
      }
    };
    for (const auto& c : manifest.chunks) {
      uploader.UploadChunk(manifest.scan_uid, c.index, [&, chunks_left, uid = manifest.scan_uid, finish](Status st) {
        note(st);
        if (--*chunks_left == 0) uploader.UploadManifest(uid, finish);
      });
    }
    // As the agent does once a scan's manifest is in the spool and its chunks are still uploading.
    uploader.PrepareManifest(manifest.scan_uid);
  };
  upload_scan(0);
  io.run();
  const double all_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - all_t0).count();
  const std::uint32_t max_window = uploader.most_sending();
  uploader.Stop();
  fs::remove_all(spool_dir);
  if (failed > 0) return 1;
  std::printf("seconds=%.4f bytes=%llu uploads=%zu cpu_seconds=%.3f max_window=%u", seconds.front(),
              static_cast<unsigned long long>(filled->total_bytes()), filled->manifest().chunks.size() + 1,
              first_cpu_seconds, max_window);
  if (scans > 1) {
    std::printf(" warm_seconds=%.4f warm_bytes=%llu all_seconds=%.4f", seconds.back(),
                static_cast<unsigned long long>(filled->scan_bytes.back()), all_seconds);
  }
  std::printf("\n");
  return 0;
}
