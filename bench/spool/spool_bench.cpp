// What durability costs the agent's ingest (docs/durability.md, "fsync cost"). Prints figures,
// never asserts.
//
// 1. Ingest: the agent's real ingest path as fast as it goes: views from memory (sim views made
//    up front, served in a loop) -> ChunkStage (the configured filter + zstd on the codec
//    workers, overflow thread, bounded queues) -> codec::DescribeEncoded -> BatchedIngest ->
//    Spool, exactly as agent/core/pipeline.cpp wires it. Timed from the first view to the last
//    chunk accepted (after the scan-end flush). Variants, interleaved per repetition, medians:
//      - "compress only": the chunk stage with a store step that drops the chunk (CPU ceiling)
//      - "no sync": the same path on PosixFileStore(Sync::kNone) (no fsync/fdatasync at all)
//      - "no sync, written back": the same, timed until one syncfs at the end has put its pages
//        on disk (the write-back the kernel would do later anyway)
//      - "durable, batch B": the same path on the real, syncing PosixFileStore, per batch size
// 2. Store only: precompressed chunks from `--threads` writer threads, so the disk's own cost
//    is visible without compression in front of it.
//
//   spool_bench [--dir D] [--raw-mib M] [--reps R] [--batches 2,8,32] [--dose F] [--threads T]
//               [--codec-threads T] [--store-mib M] [--skip-store]
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/codec/chunk_stage.hpp"
#include "base/log.hpp"
#include "base/sha256.hpp"
#include "base/uid.hpp"
#include "agent/spool/batched_ingest.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "drivers/detector.hpp"

using namespace ctagent;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

// CPU seconds (user + system) this process used so far: unlike wall time, hardly affected by
// other programs on a shared machine.
double CpuSeconds() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  const auto secs = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void SyncAll(const std::filesystem::path& dir) {
  // Untimed, before every run: no run pays for the dirty pages of the one before.
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::syncfs(fd);
    ::close(fd);
  }
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "spool_bench: %s\n", what.c_str());
  std::exit(1);
}

// Serves `views` (computed up front) in a loop, renumbered, as fast as they are asked for.
class MemoryDetector final : public drivers::Detector {
 public:
  MemoryDetector(const std::vector<drivers::View>& views, std::uint64_t total) : views_(views), total_(total) {}
  drivers::DetectorInfo Info() const override { return {"memory", "bench", 64, 4096, 1e6, {drivers::SampleType::kUint16}}; }
  Status Arm(const drivers::ScanProtocol&) override { return Ok(); }
  Expected<std::optional<drivers::View>> NextView() override {
    if (next_ == total_) return std::optional<drivers::View>{};
    drivers::View v = views_[next_ % views_.size()];
    v.sequence = next_;
    v.timestamp_us = static_cast<std::int64_t>(next_);
    ++next_;
    return std::optional<drivers::View>(std::move(v));
  }
  void Abort() override { next_ = total_; }

 private:
  const std::vector<drivers::View>& views_;
  std::uint64_t total_;
  std::uint64_t next_ = 0;
};

struct IngestResult {
  double seconds = 0;
  double cpu_seconds = 0;
  std::uint64_t compressed_bytes = 0;
  codec::ChunkStageCounters stage;
  spool::BatchCounters batch;
};

enum class Store { kDrop, kNoSync, kNoSyncFlushed, kDurable };

IngestResult RunIngest(Store store, const std::filesystem::path& dir, const drivers::ScanProtocol& protocol,
                       const std::vector<drivers::View>& views, std::uint64_t total_views,
                       const codec::ChunkStageOptions& stage_options, std::uint64_t batch_bytes) {
  std::filesystem::remove_all(dir);
  SyncAll(dir.parent_path());
  PosixFileStore files(store == Store::kDurable ? PosixFileStore::Sync::kDurable : PosixFileStore::Sync::kNone);
  auto sp = spool::Spool::Open({dir, 1ull << 42, 0}, files);
  if (!sp) Die(sp.error().message());
  spool::ScanRecord record;
  record.scan_uid = MintDicomUid();
  record.study_uid = MintDicomUid();
  if (auto st = (*sp)->BeginScan(record, protocol.RawBytes()); !st) Die(st.error().message());

  IngestResult result;
  std::atomic<std::uint64_t> accepted_bytes{0};
  std::atomic<std::uint32_t> failures{0};
  spool::BatchOptions batch_options;
  batch_options.batch_bytes = batch_bytes;
  batch_options.interval = std::chrono::milliseconds(500);  // the config default
  auto ingest = std::make_unique<spool::BatchedIngest>(**sp, batch_options, [&](const spool::Spool::SyncedBatch& b) {
    if (!b.status) {
      ++failures;
      std::fprintf(stderr, "spool_bench: %s\n", b.status.error().message().c_str());
    }
    accepted_bytes += b.bytes;
  });
  std::atomic<std::uint64_t> dropped_bytes{0};
  codec::ChunkStage stage(stage_options, [&](const codec::RawChunk& raw, Expected<std::span<const std::uint8_t>> bytes) {
    if (!bytes) Die(bytes.error().message());
    const auto mc = codec::DescribeEncoded(raw, *bytes);
    if (store == Store::kDrop) {
      dropped_bytes += bytes->size();
      return;
    }
    if (auto st = ingest->Add(record.scan_uid, mc, *bytes); !st) Die(st.error().message());
  });
  const codec::ChunkInfo info = codec::ScanChunkInfo(record.scan_uid, protocol);
  MemoryDetector detector(views, total_views);
  const auto t0 = Clock::now();
  const double cpu0 = CpuSeconds();
  stage.Acquire(detector, protocol, info);
  stage.Drain();
  ingest->Flush();
  // The kernel writes an unsynced store's pages back anyway, later and outside the window; this
  // variant counts that write-back (one syncfs when the scan is in), so it compares the spool's
  // batching with writing the same bytes to the same disk without any sync of ours.
  if (store == Store::kNoSyncFlushed) SyncAll(dir);
  result.seconds = Seconds(t0);
  result.cpu_seconds = CpuSeconds() - cpu0;
  result.stage = stage.counters();
  result.batch = ingest->counters();
  result.compressed_bytes = store == Store::kDrop ? dropped_bytes.load() : accepted_bytes.load();
  if (failures > 0) Die("a batch failed");
  ingest.reset();
  sp->reset();
  std::filesystem::remove_all(dir);
  return result;
}

std::vector<std::uint64_t> ParseList(const std::string& text) {
  std::vector<std::uint64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::strtoull(item.c_str(), nullptr, 10));
  return out;
}

double LoadAverage() {
  double load[1] = {0};
  return ::getloadavg(load, 1) == 1 ? load[0] : -1;
}

// ---- Store only (precompressed chunks) ----------------------------------------------------

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

void StoreOnly(const std::filesystem::path& dir, std::uint64_t store_mib, std::uint32_t threads, std::uint32_t reps,
               std::uint64_t batch_bytes) {
  const std::size_t chunk_bytes = 1u << 20;
  const auto chunks = static_cast<std::uint32_t>(store_mib);
  std::vector<std::uint8_t> bytes(chunk_bytes);
  std::mt19937_64 rng(1);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
  const Sha256Digest sha = Sha256Of(bytes);
  const double mb = static_cast<double>(chunks) * static_cast<double>(chunk_bytes) / 1e6;
  const auto plain_dir = dir / "plain";
  const auto write_plain = [&](std::uint32_t i) {
    const auto path = plain_dir / (std::to_string(i) + ".ctc");
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0 || ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) std::abort();
    ::close(fd);
  };
  const auto batched = [&](PosixFileStore::Sync sync) {
    PosixFileStore files(sync);
    std::filesystem::remove_all(dir / "spool");
    SyncAll(dir);
    auto sp = spool::Spool::Open({dir / "spool", 1ull << 42, 0}, files);
    spool::ScanRecord record;
    record.scan_uid = MintDicomUid();
    record.study_uid = MintDicomUid();
    if (!sp || !(*sp)->BeginScan(record, 1 << 20)) Die("cannot open the bench spool");
    spool::BatchOptions options;
    options.batch_bytes = batch_bytes;
    spool::BatchedIngest ingest(**sp, options, [](const spool::Spool::SyncedBatch& b) {
      if (!b.status) Die(b.status.error().message());
    });
    const auto start = Clock::now();
    Timed(chunks, threads, [&](std::uint32_t i) {
      const codec::ManifestChunk mc{i, i * 64ull, 64, bytes.size(), bytes.size(), sha, sha};
      if (auto st = ingest.Add(record.scan_uid, mc, bytes); !st) Die(st.error().message());
    });
    ingest.Flush();
    return Seconds(start);
  };
  std::vector<double> plain_s, syncfs_s, per_chunk_s, batched_s, nosync_s;
  for (std::uint32_t rep = 0; rep < reps; ++rep) {
    // 1. No fsync, no journal: what the page cache accepts.
    std::filesystem::create_directories(plain_dir);
    SyncAll(dir);
    plain_s.push_back(Timed(chunks, threads, write_plain));
    std::filesystem::remove_all(plain_dir);
    // 2. The same plus one syncfs at the end: the same bytes made durable in one flush.
    std::filesystem::create_directories(plain_dir);
    SyncAll(dir);
    const auto t = Clock::now();
    Timed(chunks, threads, write_plain);
    SyncAll(dir);
    syncfs_s.push_back(Seconds(t));
    std::filesystem::remove_all(plain_dir);
    // 3. The per-chunk durable path (Spool::AddChunk).
    {
      PosixFileStore files;
      std::filesystem::remove_all(dir / "spool");
      SyncAll(dir);
      auto sp = spool::Spool::Open({dir / "spool", 1ull << 42, 0}, files);
      spool::ScanRecord record;
      record.scan_uid = MintDicomUid();
      record.study_uid = MintDicomUid();
      if (!sp || !(*sp)->BeginScan(record, 1 << 20)) Die("cannot open the bench spool");
      per_chunk_s.push_back(Timed(chunks, threads, [&](std::uint32_t i) {
        const codec::ManifestChunk mc{i, i * 64ull, 64, bytes.size(), bytes.size(), sha, sha};
        if (auto st = (*sp)->AddChunk(record.scan_uid, mc, bytes); !st) Die(st.error().message());
      }));
    }
    // 4./5. Batched ingest, syncing and not.
    batched_s.push_back(batched(PosixFileStore::Sync::kDurable));
    nosync_s.push_back(batched(PosixFileStore::Sync::kNone));
    std::filesystem::remove_all(dir / "spool");
  }
  const auto rate = [&](const std::vector<double>& s) { return mb / Median(s); };
  std::printf("\nstore only: %u precompressed chunks x 1 MiB (%.0f MB), %u writer threads, median of %u, load %.2f\n",
              chunks, mb, threads, reps, LoadAverage());
  std::printf("  %-52s %8.1f MB/s\n", "plain write, no fsync, no journal (page cache)", rate(plain_s));
  std::printf("  %-52s %8.1f MB/s\n", "plain write, one syncfs at the end", rate(syncfs_s));
  std::printf("  %-52s %8.1f MB/s\n", "spool AddChunk (fsync+rename+dir fsync+journal each)", rate(per_chunk_s));
  std::printf("  %-52s %8.1f MB/s\n", "spool batched ingest, no sync (Sync::kNone)", rate(nosync_s));
  char label[80];
  std::snprintf(label, sizeof label, "spool batched ingest, durable, %llu MiB batches",
                static_cast<unsigned long long>(batch_bytes >> 20));
  std::printf("  %-52s %8.1f MB/s   cost vs no sync %.0f%%\n", label, rate(batched_s),
              100.0 * (1.0 - Median(nosync_s) / Median(batched_s)));
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::current_path() / "spool-bench";
  // About half of a 16-slice helical chest scan (27 rotations x 1160 views x 16 x 896 x 2 bytes,
  // ~900 MB). The scan-end flush is a fixed cost per scan, so a smaller scan shows a larger share.
  std::uint64_t raw_mib = 512;
  std::uint32_t reps = 5;
  std::vector<std::uint64_t> batches_mib = {2, 8, 32};
  double dose = 0.2;
  std::uint32_t threads = 2;
  std::uint32_t codec_threads = 2;
  std::uint64_t store_mib = 128;
  bool skip_store = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--skip-store") {
      skip_store = true;
      continue;
    }
    ++i;
    if (a == "--dir") dir = v;
    else if (a == "--raw-mib") raw_mib = std::strtoull(v, nullptr, 10);
    else if (a == "--reps") reps = std::max(1u, static_cast<std::uint32_t>(std::strtoul(v, nullptr, 10)));
    else if (a == "--batches") batches_mib = ParseList(v);
    else if (a == "--dose") dose = std::strtod(v, nullptr);
    else if (a == "--threads") threads = static_cast<std::uint32_t>(std::strtoul(v, nullptr, 10));
    else if (a == "--codec-threads") codec_threads = static_cast<std::uint32_t>(std::strtoul(v, nullptr, 10));
    else if (a == "--store-mib") store_mib = std::strtoull(v, nullptr, 10);
    else Die("unknown option " + a);
  }
  log::SetLevel(log::Level::kWarn);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);

  // The agent's default protocol (16 x 896 uint16 fan beam) and codec settings.
  drivers::ScanProtocol protocol = config::DefaultScanProtocol();
  protocol.dose_fraction = dose;
  protocol.real_time = false;
  const config::CodecConfig codec_config;
  auto filter = codec::FilterFromString(codec_config.filter);
  if (!filter) Die(filter.error().message());
  codec::ChunkStageOptions stage_options;
  stage_options.views_per_chunk = codec_config.views_per_chunk;
  stage_options.threads = codec_threads;
  stage_options.queue_bytes = codec_config.queue_bytes;
  stage_options.encode = {*filter, codec_config.zstd_level};

  // A fifth of a rotation of real sim views, served in a loop (more than a chunk apart, so no
  // chunk sees a view twice and compresses better than a real one).
  auto sim = drivers::MakeDetector("sim", nlohmann::json::object());
  if (!sim) Die(sim.error().message());
  const std::uint32_t distinct = std::max<std::uint32_t>(protocol.views_per_rotation / 5, 2 * codec_config.views_per_chunk);
  if (auto st = (*sim)->Arm(protocol); !st) Die(st.error().message());
  std::vector<drivers::View> views;
  for (std::uint32_t i = 0; i < distinct; ++i) {
    auto v = (*sim)->NextView();
    if (!v || !v->has_value()) break;
    views.push_back(std::move(**v));
  }
  if (views.empty()) Die("the sim driver gave no views");
  const std::uint64_t total_views = (raw_mib << 20) / protocol.BytesPerView();
  const double raw_mb = static_cast<double>(total_views * protocol.BytesPerView()) / 1e6;

  struct Variant {
    std::string name;
    Store store;
    std::uint64_t batch_bytes;
    std::vector<double> seconds;
    std::vector<double> ratio;
    std::vector<double> cpu;
    std::uint64_t overflow = 0, stalls = 0, batches = 0, add_waits = 0;
    double max_sync = 0;
  };
  std::vector<Variant> variants;
  variants.push_back({"compress only (store drops)", Store::kDrop, 8ull << 20, {}, {}, {}});
  variants.push_back({"no sync (Sync::kNone), 8 MiB batches", Store::kNoSync, 8ull << 20, {}, {}, {}});
  variants.push_back({"no sync, written back at the end", Store::kNoSyncFlushed, 8ull << 20, {}, {}, {}});
  for (std::uint64_t b : batches_mib) {
    variants.push_back({"durable, " + std::to_string(b) + " MiB batches", Store::kDurable, b << 20, {}, {}, {}});
  }
  const double load_before = LoadAverage();
  for (std::uint32_t rep = 0; rep < reps; ++rep) {
    // Rotate the order each repetition so a burst of load elsewhere hurts every variant alike.
    for (std::size_t k = 0; k < variants.size(); ++k) {
      Variant& v = variants[(k + rep) % variants.size()];
      const auto r = RunIngest(v.store, dir / "ingest", protocol, views, total_views, stage_options, v.batch_bytes);
      v.seconds.push_back(r.seconds);
      v.cpu.push_back(r.cpu_seconds);
      v.ratio.push_back(r.compressed_bytes > 0 ? raw_mb * 1e6 / static_cast<double>(r.compressed_bytes) : 0);
      v.overflow += r.stage.overflow_chunks;
      v.stalls += r.stage.stalls;
      v.batches += r.batch.batches;
      v.add_waits += r.batch.add_waits;
      v.max_sync = std::max(v.max_sync, r.batch.max_sync_seconds);
    }
  }
  const double no_sync = Median(variants[1].seconds);
  std::printf("ingest: %llu views of %u x %u uint16 (%.0f MB raw), dose %.2f, filter %s + zstd %d, %u codec threads, "
              "%u-view chunks, median of %u, load %.2f before / %.2f after\n",
              static_cast<unsigned long long>(total_views), protocol.rows, protocol.channels, raw_mb, dose,
              codec_config.filter.c_str(), codec_config.zstd_level, codec_threads, stage_options.views_per_chunk, reps,
              load_before, LoadAverage());
  const double no_sync_cpu = Median(variants[1].cpu);
  const double flushed = Median(variants[2].seconds);
  std::printf("  %-40s %10s %8s %10s %12s %14s %12s %10s %10s %9s\n", "variant", "raw MB/s", "ratio", "out MB/s",
              "cost vs none", "vs written back", "ovf/st/wait", "max sync", "CPU s/GB", "CPU cost");
  for (const Variant& v : variants) {
    const double s = Median(v.seconds);
    const double ratio = Median(v.ratio);
    char cost[32] = "-";
    if (v.store == Store::kDurable) std::snprintf(cost, sizeof cost, "%.1f%%", 100.0 * (1.0 - no_sync / s));
    char cost_flushed[32] = "-";
    if (v.store == Store::kDurable) std::snprintf(cost_flushed, sizeof cost_flushed, "%.1f%%", 100.0 * (1.0 - flushed / s));
    char ovf[48];
    std::snprintf(ovf, sizeof ovf, "%llu/%llu/%llu", static_cast<unsigned long long>(v.overflow / reps),
                  static_cast<unsigned long long>(v.stalls / reps), static_cast<unsigned long long>(v.add_waits / reps));
    char sync[32] = "-";
    if (v.store == Store::kDurable) std::snprintf(sync, sizeof sync, "%.0f ms", v.max_sync * 1000);
    const double cpu = Median(v.cpu);
    char cpu_cost[32] = "-";
    if (v.store == Store::kDurable) std::snprintf(cpu_cost, sizeof cpu_cost, "%.1f%%", 100.0 * (cpu / no_sync_cpu - 1.0));
    std::printf("  %-40s %10.1f %8.2f %10.1f %12s %14s %12s %10s %10.2f %9s\n", v.name.c_str(), raw_mb / s, ratio,
                raw_mb / s / ratio, cost, cost_flushed, ovf, sync, cpu / (raw_mb / 1000.0), cpu_cost);
  }
  std::printf("  (cost = 1 - no-sync time / durable time, medians; vs written back: against the no-sync run "
              "timed until its pages are on disk; ovf/st/wait = chunks sent to the cheap encoder / "
              "acquisition waits / codec-worker waits for a sync, per run)\n");
  std::fflush(stdout);

  if (!skip_store) StoreOnly(dir, store_mib, threads, reps, batches_mib.empty() ? 8ull << 20 : batches_mib[batches_mib.size() / 2] << 20);
  std::filesystem::remove_all(dir);
  return 0;
}
