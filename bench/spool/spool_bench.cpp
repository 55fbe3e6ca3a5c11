// Spool ingest throughput: the durable path (chunk file written, fsynced, renamed, directory
// fsynced, then one journal record appended and fsynced) against writing the same files
// without any fsync and without the journal, and against that plus one syncfs at the end
// (the same bytes made durable once, in one batch), and against the spool's batched ingest
// (AddChunkDeferred + SyncPending every --batch-bytes). Prints MB/s and ratios.
//
//   spool_bench [--dir D] [--chunks N] [--chunk-bytes B] [--threads T] [--rounds R] [--batch-bytes B]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/common/sha256.hpp"
#include "agent/common/uid.hpp"
#include "agent/spool/spool.hpp"

using namespace ctagent;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// Runs `work(i)` for i in [0, n) on `threads` threads (the codec pool hands chunks over in parallel).
template <typename F>
double Timed(std::uint32_t n, std::uint32_t threads, F work) {
  std::atomic<std::uint32_t> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> pool;
  for (std::uint32_t t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (std::uint32_t i = next++; i < n; i = next++) work(i);
    });
  }
  for (auto& th : pool) th.join();
  return Seconds(start);
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::current_path() / "spool-bench";
  std::uint32_t chunks = 128;
  std::size_t chunk_bytes = 1u << 20;  // 64 views x 16 rows x 512 channels x 2 bytes
  std::uint32_t threads = 2;
  std::uint32_t rounds = 3;
  std::uint64_t batch_bytes = 8ull << 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--chunks") chunks = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
    if (a == "--chunk-bytes") chunk_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--rounds") rounds = std::max(1u, static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10)));
    if (a == "--batch-bytes") batch_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--threads") threads = static_cast<std::uint32_t>(std::strtoul(argv[i + 1], nullptr, 10));
  }
  std::filesystem::remove_all(dir);
  std::vector<std::uint8_t> bytes(chunk_bytes);
  std::mt19937_64 rng(1);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
  const std::string sha = Sha256Hex(bytes);
  const double mb = static_cast<double>(chunks) * static_cast<double>(chunk_bytes) / 1e6;

  const auto write_plain = [&](std::uint32_t i) {
    const auto path = dir / "plain" / (std::to_string(i) + ".ctc");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0 || ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) std::abort();
    ::close(fd);
  };
  const auto sync_all = [&] {
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    ::syncfs(dfd);
    ::close(dfd);
  };
  PosixFileStore files;
  // Rounds alternate the three ways so a busy machine hurts each alike; medians are printed.
  // Every way starts with a clean page cache (an untimed syncfs), so none pays for another.
  std::vector<double> plain_s, batch_s, durable_s, batched_s;
  for (std::uint32_t round = 0; round < rounds; ++round) {
    // 1. No fsync, no journal: what the page cache accepts.
    std::filesystem::create_directories(dir / "plain");
    sync_all();
    plain_s.push_back(Timed(chunks, threads, write_plain));
    std::filesystem::remove_all(dir / "plain");
    // 2. The same plus one syncfs at the end: the same bytes made durable in one batch.
    std::filesystem::create_directories(dir / "plain");
    sync_all();
    const auto batch_start = Clock::now();
    Timed(chunks, threads, write_plain);
    sync_all();
    batch_s.push_back(Seconds(batch_start));
    std::filesystem::remove_all(dir / "plain");
    // 3. The durable spool.
    sync_all();
    auto spool = spool::Spool::Open({dir / "spool", 1ull << 40, 0}, files);
    if (!spool) return std::fprintf(stderr, "%s\n", spool.error().message().c_str()), 1;
    spool::ScanRecord record;
    record.scan_uid = MintDicomUid();
    record.study_uid = MintDicomUid();
    if (!(*spool)->BeginScan(record, 1 << 20)) return 1;
    durable_s.push_back(Timed(chunks, threads, [&](std::uint32_t i) {
      const codec::ManifestChunk mc{i, i * 64ull, 64, bytes.size(), bytes.size(), sha, sha};
      if (auto st = (*spool)->AddChunk(record.scan_uid, mc, bytes); !st) {
        std::fprintf(stderr, "%s\n", st.error().message().c_str());
        std::abort();
      }
    }));
    spool->reset();
    std::filesystem::remove_all(dir / "spool");
    // 4. The durable spool, batched: chunk files unsynced, one sync + one journal record per batch.
    sync_all();
    spool = spool::Spool::Open({dir / "spool", 1ull << 40, 0}, files);
    if (!spool || !(*spool)->BeginScan(record, 1 << 20)) return 1;
    batched_s.push_back(Timed(chunks, threads, [&](std::uint32_t i) {
      const codec::ManifestChunk mc{i, i * 64ull, 64, bytes.size(), bytes.size(), sha, sha};
      Status st = (*spool)->AddChunkDeferred(record.scan_uid, mc, bytes);
      if (st && ((*spool)->pending_bytes() >= batch_bytes || i + threads >= chunks)) st = (*spool)->SyncPending();
      if (!st) {
        std::fprintf(stderr, "%s\n", st.error().message().c_str());
        std::abort();
      }
    }));
    if (!(*spool)->SyncPending()) return 1;
    spool->reset();
    std::filesystem::remove_all(dir / "spool");
  }
  std::filesystem::remove_all(dir);
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double plain = median(plain_s), batch = median(batch_s), durable = median(durable_s),
               batched = median(batched_s);

  std::printf("spool ingest: %u chunks x %zu bytes (%.0f MB), %u writer threads, median of %u rounds\n", chunks,
              chunk_bytes, mb, threads, rounds);
  std::printf("  no fsync, no journal                          %8.1f MB/s\n", mb / plain);
  std::printf("  no fsync, one syncfs at the end               %8.1f MB/s\n", mb / batch);
  std::printf("  durable spool (fsync per chunk, journal each) %8.1f MB/s\n", mb / durable);
  std::printf("  durable spool, batched every %3llu MiB       %8.1f MB/s\n",
              static_cast<unsigned long long>(batch_bytes >> 20), mb / batched);
  std::printf("  batched / no fsync = %.2f (cost %.0f%%); batched / one batched sync = %.2f (cost %.0f%%)\n",
              plain / batched, 100.0 * (batched / plain - 1.0), batch / batched, 100.0 * (batched / batch - 1.0));
  std::printf("  durable / no fsync = %.2f (cost %.0f%%); durable / one batched sync = %.2f (cost %.0f%%)\n",
              plain / durable, 100.0 * (durable / plain - 1.0), batch / durable, 100.0 * (durable / batch - 1.0));
  return 0;
}
