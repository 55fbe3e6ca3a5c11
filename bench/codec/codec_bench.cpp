// codec_bench: compression ratio and single-core speed of the chunk filters with zstd against
// plain zstd, gzip -6 and xz -6, on scans from the sim driver at several doses. Prints markdown
// tables (docs/codec.md holds a copy). Numbers only; nothing here is asserted.
//
//   codec_bench [--rows N] [--channels N] [--views N] [--views-per-chunk N] [--min-seconds S]
//               [--only sim|replayed|sweep]
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "agent/codec/chunk.hpp"
#include "agent/codec/filter.hpp"
#include "drivers/detector.hpp"
#include "drivers/record.hpp"

namespace {

using ctagent::codec::Filter;
using ctagent::drivers::SampleType;
using Bytes = std::vector<std::uint8_t>;

struct Options {
  std::uint32_t rows = 16;
  std::uint32_t channels = 512;
  std::uint32_t views = 360;
  std::uint32_t views_per_chunk = 64;
  double min_seconds = 0.3;
  std::string only;  // "sim", "replayed" or "sweep": run one part (empty: all)
};

double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// A method compresses one chunk's samples and decompresses its own output back.
struct Method {
  std::string name;
  std::function<Bytes(const Bytes&)> compress;
  std::function<Bytes(const Bytes&, std::size_t raw_size)> decompress;
  Filter filter = Filter::kNone;  // for the entropy bound: whose residuals the coder sees
};

Bytes ZstdCompress(const Bytes& in, int level) {
  Bytes out(ZSTD_compressBound(in.size()));
  const std::size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level);
  if (ZSTD_isError(n)) std::abort();
  out.resize(n);
  return out;
}

// The agent's compression step (codec::CompressFiltered: the zstd parameters EncodeChunk uses for
// the filter), so the filter rows measure what the agent does.
Bytes AgentCompress(const Bytes& filtered, Filter filter, int level) {
  Bytes out(ctagent::codec::CompressBound(filtered.size()));
  auto n = ctagent::codec::CompressFiltered(filtered, out, {filter, level});
  if (!n) std::abort();
  out.resize(*n);
  return out;
}

Bytes ZstdDecompress(const Bytes& in, std::size_t raw_size) {
  Bytes out(raw_size);
  const std::size_t n = ZSTD_decompress(out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(n) || n != raw_size) std::abort();
  return out;
}

Bytes GzipCompress(const Bytes& in, int level) {
  z_stream zs{};
  if (deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();  // gzip wrapper
  Bytes out(deflateBound(&zs, static_cast<uLong>(in.size())) + 32);
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

Bytes GzipDecompress(const Bytes& in, std::size_t raw_size) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) std::abort();
  Bytes out(raw_size);
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  if (inflate(&zs, Z_FINISH) != Z_STREAM_END) std::abort();
  inflateEnd(&zs);
  return out;
}

Bytes XzCompress(const Bytes& in, std::uint32_t preset) {
  Bytes out(lzma_stream_buffer_bound(in.size()));
  std::size_t pos = 0;
  if (lzma_easy_buffer_encode(preset, LZMA_CHECK_CRC64, nullptr, in.data(), in.size(), out.data(), &pos,
                              out.size()) != LZMA_OK) {
    std::abort();
  }
  out.resize(pos);
  return out;
}

Bytes XzDecompress(const Bytes& in, std::size_t raw_size) {
  Bytes out(raw_size);
  std::uint64_t memlimit = UINT64_MAX;
  std::size_t in_pos = 0;
  std::size_t out_pos = 0;
  if (lzma_stream_buffer_decode(&memlimit, 0, nullptr, in.data(), &in_pos, in.size(), out.data(), &out_pos,
                                out.size()) != LZMA_OK) {
    std::abort();
  }
  return out;
}

struct Scan {
  SampleType type = SampleType::kUint16;
  std::vector<Bytes> chunks;  // samples of each chunk (views_per_chunk views, the last may be shorter)
  std::vector<std::uint32_t> chunk_views;
  std::uint64_t raw_bytes = 0;
};

ctagent::drivers::ScanProtocol SimProtocol(const Options& o, double dose) {
  ctagent::drivers::ScanProtocol p;
  p.views_per_rotation = o.views;
  p.rows = o.rows;
  p.channels = o.channels;
  p.channel_pitch_mm = 819.2 / o.channels;  // keep the field of view at ~820 mm whatever the channel count
  p.dose_fraction = dose;
  return p;
}

// Reads every view of an armed detector and cuts the scan into chunks.
Scan ReadScan(ctagent::drivers::Detector& detector, const Options& o, std::uint64_t total_views) {
  Scan scan;
  Bytes current;
  std::uint32_t in_chunk = 0;
  for (std::uint64_t v = 0; v < total_views; ++v) {
    auto view = detector.NextView();
    if (!view || !view->has_value()) std::exit(2);
    current.insert(current.end(), (*view)->samples.begin(), (*view)->samples.end());
    if (++in_chunk == o.views_per_chunk || v + 1 == total_views) {
      scan.raw_bytes += current.size();
      scan.chunks.push_back(std::move(current));
      scan.chunk_views.push_back(in_chunk);
      current.clear();
      in_chunk = 0;
    }
  }
  return scan;
}

Scan SimScan(const Options& o, double dose, std::uint32_t rotations = 1) {
  ctagent::drivers::ScanProtocol p = SimProtocol(o, dose);
  p.rotations = rotations;
  auto detector = ctagent::drivers::MakeDetector("sim", nullptr);
  if (!detector || !(*detector)->Arm(p)) {
    std::fprintf(stderr, "codec_bench: cannot arm the sim detector\n");
    std::exit(2);
  }
  return ReadScan(**detector, o, p.TotalViews());
}

// A sim scan written to disk by the recorder (`ctagent record`'s code, drivers/record.hpp) in
// `format` and read back through the replay driver: the path real recorded data takes.
Scan ReplayedScan(const Options& o, double dose, ctagent::drivers::RecordFormat format) {
  namespace fs = std::filesystem;
  const ctagent::drivers::ScanProtocol p = SimProtocol(o, dose);
  const fs::path dir = fs::temp_directory_path() / ("codec_bench." + std::to_string(getpid()));
  fs::remove_all(dir);
  auto sim = ctagent::drivers::MakeDetector("sim", nullptr);
  if (!sim) std::exit(2);
  auto recorded = ctagent::drivers::RecordScan(**sim, p, dir, format);
  if (!recorded) {
    std::fprintf(stderr, "codec_bench: recording failed: %s\n", recorded.error().message().c_str());
    std::exit(2);
  }
  const bool dicom = format == ctagent::drivers::RecordFormat::kDicomCtPd;
  auto replay = ctagent::drivers::MakeDetector(
      "replay", {{"path", dir.string()}, {"format", dicom ? "dicom-ct-pd" : "ctagent"}});
  if (!replay || !(*replay)->Arm(p)) {
    std::fprintf(stderr, "codec_bench: cannot replay the recording in %s\n", dir.c_str());
    std::exit(2);
  }
  Scan scan = ReadScan(**replay, o, p.TotalViews());
  fs::remove_all(dir);
  return scan;
}

// Float32 projections as a reconstruction pipeline sees them after log-normalisation:
// p = ln(I0 / max(n, 1)), from the same counts.
Scan ToLineIntegrals(const Scan& counts, double i0) {
  Scan scan = counts;
  scan.type = SampleType::kFloat32;
  scan.raw_bytes = 0;
  for (Bytes& chunk : scan.chunks) {
    const Bytes& src = chunk;
    Bytes out(src.size() * 2);
    for (std::size_t i = 0; i < src.size() / 2; ++i) {
      std::uint16_t n = 0;
      std::memcpy(&n, src.data() + 2 * i, 2);
      const auto p = static_cast<float>(std::log(i0 / std::max(1.0, static_cast<double>(n))));
      std::memcpy(out.data() + 4 * i, &p, 4);
    }
    chunk = std::move(out);
    scan.raw_bytes += chunk.size();
  }
  return scan;
}

Method FilterMethod(Filter filter, int level, SampleType type, const ctagent::codec::SampleShape& shape_per_view) {
  Method m;
  m.name = std::string(ctagent::codec::ToString(filter)) + " + zstd -" + std::to_string(level);
  m.filter = filter;
  const std::size_t width = ctagent::drivers::SampleSize(type);
  const std::uint64_t view_bytes = shape_per_view.rows * shape_per_view.channels * width;
  m.compress = [=](const Bytes& in) {
    Bytes filtered(in.size());
    const ctagent::codec::SampleShape shape{in.size() / view_bytes, shape_per_view.rows, shape_per_view.channels};
    ctagent::codec::ApplyFilter(filter, type, shape, in, filtered);
    return AgentCompress(filtered, filter, level);
  };
  m.decompress = [=](const Bytes& in, std::size_t raw_size) {
    const Bytes filtered = ZstdDecompress(in, raw_size);
    Bytes out(raw_size);
    const ctagent::codec::SampleShape shape{raw_size / view_bytes, shape_per_view.rows, shape_per_view.channels};
    ctagent::codec::InvertFilter(filter, type, shape, filtered, out);
    return out;
  };
  return m;
}

// The agent's whole path: EncodeChunk / DecodeChunk, including the header and the SHA-256 of
// samples and payload (hashing is most of the difference to the filter row).
Method ChunkMethod(Filter filter, int level, const Options& o) {
  Method m;
  m.name = std::string("EncodeChunk(") + ctagent::codec::ToString(filter) + ", " + std::to_string(level) + ")";
  m.filter = filter;
  m.compress = [=](const Bytes& in) {
    ctagent::codec::ChunkInfo info;
    info.scan_uid = "2.25.1";
    info.rows = o.rows;
    info.channels = o.channels;
    const std::size_t views = in.size() / (std::size_t{o.rows} * o.channels * 2);
    for (std::size_t v = 0; v < views; ++v) info.views.push_back({v, 0, 0, 0, 0});
    auto chunk = ctagent::codec::EncodeChunk(info, in, {filter, level});
    if (!chunk) std::abort();
    return *chunk;
  };
  m.decompress = [](const Bytes& in, std::size_t) {
    auto decoded = ctagent::codec::DecodeChunk(in);
    if (!decoded) std::abort();
    return decoded->samples;
  };
  return m;
}

// Order-0 entropy of the residual words of the whole scan [bits per sample]: no coder that
// codes each residual on its own, with one fixed table, can do better.
double Order0Entropy(const Scan& scan, Filter filter, const ctagent::codec::SampleShape& shape_per_view) {
  const std::size_t width = ctagent::drivers::SampleSize(scan.type);
  std::vector<std::uint64_t> counts16(width == 2 ? 65536 : 0);
  std::vector<std::uint32_t> words32;
  std::uint64_t total = 0;
  for (const Bytes& chunk : scan.chunks) {
    Bytes res(chunk.size());
    const std::uint64_t views = chunk.size() / (shape_per_view.rows * shape_per_view.channels * width);
    ctagent::codec::ComputeResiduals(filter, scan.type, {views, shape_per_view.rows, shape_per_view.channels}, chunk,
                                     res);
    for (std::size_t i = 0; i < res.size(); i += width) {
      if (width == 2) {
        std::uint16_t w = 0;
        std::memcpy(&w, res.data() + i, 2);
        ++counts16[w];
      } else {
        std::uint32_t w = 0;
        std::memcpy(&w, res.data() + i, 4);
        words32.push_back(w);
      }
      ++total;
    }
  }
  std::vector<std::uint64_t> counts;
  if (width == 2) {
    counts = std::move(counts16);
  } else {
    std::sort(words32.begin(), words32.end());
    for (std::size_t i = 0; i < words32.size();) {
      std::size_t j = i;
      while (j < words32.size() && words32[j] == words32[i]) ++j;
      counts.push_back(j - i);
      i = j;
    }
  }
  double bits = 0;
  for (const std::uint64_t c : counts) {
    if (c == 0) continue;
    const double p = static_cast<double>(c) / static_cast<double>(total);
    bits -= p * std::log2(p);
  }
  return bits;
}

struct Result {
  double ratio = 0;
  double compress_mb_s = 0;
  double decompress_mb_s = 0;
};

Result Measure(const Method& m, const Scan& scan, double min_seconds) {
  Result r;
  std::uint64_t compressed = 0;
  std::vector<Bytes> outputs;
  for (const Bytes& chunk : scan.chunks) {
    outputs.push_back(m.compress(chunk));
    compressed += outputs.back().size();
    if (m.decompress(outputs.back(), chunk.size()) != chunk) {
      std::fprintf(stderr, "codec_bench: %s did not round-trip\n", m.name.c_str());
      std::exit(1);
    }
  }
  r.ratio = static_cast<double>(scan.raw_bytes) / static_cast<double>(compressed);
  // Repeat whole passes until `min_seconds` of CPU time (at most 1000 passes).
  auto time_passes = [&](const std::function<void()>& pass) {
    int passes = 0;
    const double start = CpuSeconds();
    double elapsed = 0;
    while (passes < 1000 && (passes == 0 || elapsed < min_seconds)) {
      pass();
      ++passes;
      elapsed = CpuSeconds() - start;
    }
    return static_cast<double>(scan.raw_bytes) * passes / elapsed / 1e6;
  };
  r.compress_mb_s = time_passes([&] {
    for (const Bytes& chunk : scan.chunks) (void)m.compress(chunk);
  });
  r.decompress_mb_s = time_passes([&] {
    for (std::size_t i = 0; i < outputs.size(); ++i) (void)m.decompress(outputs[i], scan.chunks[i].size());
  });
  return r;
}

void RunTable(const char* title, const Scan& scan, const std::vector<Method>& methods, const Options& o) {
  const ctagent::codec::SampleShape per_view{1, o.rows, o.channels};
  const int sample_bits = 8.0 * static_cast<double>(ctagent::drivers::SampleSize(scan.type));
  std::printf("\n### %s\n\n", title);
  std::printf("| method | ratio | x zstd -3 | compress MB/s/core | decompress MB/s/core | order-0 bound | of bound |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  double zstd3_ratio = 0;
  for (const Method& m : methods) {
    const Result r = Measure(m, scan, o.min_seconds);
    if (m.name == "zstd -3") zstd3_ratio = r.ratio;
    // Over 32-bit words nearly every value is unique, so an order-0 bound says nothing there.
    std::string bound_text = "-";
    std::string share_text = "-";
    if (sample_bits == 16) {
      const double bound = static_cast<double>(sample_bits) / Order0Entropy(scan, m.filter, per_view);
      bound_text = std::to_string(bound).substr(0, 5);
      share_text = std::to_string(static_cast<int>(std::lround(100.0 * r.ratio / bound))) + "%";
    }
    const std::string relative =
        zstd3_ratio > 0 ? std::to_string(r.ratio / zstd3_ratio).substr(0, 4) + "x" : std::string("-");
    std::printf("| %s | %.3f | %s | %.0f | %.0f | %s | %s |\n", m.name.c_str(), r.ratio, relative.c_str(),
                r.compress_mb_s, r.decompress_mb_s, bound_text.c_str(), share_text.c_str());
    std::fflush(stdout);
  }
}

// EncodeChunk(predict, 3) over all chunks on `threads` threads at once, as the codec pool runs
// them: wall-clock MB/s of the whole set (repeated for at least `min_seconds`).
double EncodeWallMbs(const Scan& scan, const Options& o, unsigned threads, double min_seconds) {
  const Method m = ChunkMethod(Filter::kPredict, 3, o);
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  int passes = 0;
  while (passes < 1000 && (passes == 0 || elapsed < min_seconds)) {
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        for (std::size_t i = next++; i < scan.chunks.size(); i = next++) (void)m.compress(scan.chunks[i]);
      });
    }
    for (auto& w : workers) w.join();
    ++passes;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return static_cast<double>(scan.raw_bytes) * passes / elapsed / 1e6;
}

// Chunk size and codec threads for the default path (EncodeChunk(predict, 3), hashes included).
void RunChunkSweep(const Options& base, double dose) {
  std::printf("\n### views_per_chunk and codec.threads, EncodeChunk(predict, 3), dose %.2f, %u views\n\n", dose,
              2 * base.views);
  std::printf("| views_per_chunk | raw MiB per chunk | ratio | compress MB/s/core | 1 thread MB/s (wall) | 2 threads MB/s (wall) |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|\n");
  for (const std::uint32_t vpc : {16u, 32u, 64u, 128u, 256u}) {
    Options o = base;
    o.views_per_chunk = vpc;
    const Scan scan = SimScan(o, dose, 2);
    const Result r = Measure(ChunkMethod(Filter::kPredict, 3, o), scan, o.min_seconds);
    const double chunk_mib = static_cast<double>(vpc) * o.rows * o.channels * 2 / (1024.0 * 1024.0);
    std::printf("| %u | %.2f | %.3f | %.0f | %.0f | %.0f |\n", vpc, chunk_mib, r.ratio, r.compress_mb_s,
                EncodeWallMbs(scan, o, 1, o.min_seconds), EncodeWallMbs(scan, o, 2, o.min_seconds));
    std::fflush(stdout);
  }
}

// The default path and the baselines on one scan (the replayed sections).
std::vector<Method> ShortMethods(const Options& o, const ctagent::codec::SampleShape& per_view) {
  std::vector<Method> methods;
  for (const int level : {1, 3}) {
    methods.push_back({"zstd -" + std::to_string(level), [level](const Bytes& in) { return ZstdCompress(in, level); },
                       ZstdDecompress, Filter::kNone});
  }
  methods.push_back(FilterMethod(Filter::kShuffle, 3, SampleType::kUint16, per_view));
  methods.push_back(FilterMethod(Filter::kPredict, 3, SampleType::kUint16, per_view));
  methods.push_back(ChunkMethod(Filter::kPredict, 3, o));
  return methods;
}

bool ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const double value = std::atof(argv[i + 1]);
    if (key == "--rows") o.rows = static_cast<std::uint32_t>(value);
    else if (key == "--channels") o.channels = static_cast<std::uint32_t>(value);
    else if (key == "--views") o.views = static_cast<std::uint32_t>(value);
    else if (key == "--views-per-chunk") o.views_per_chunk = static_cast<std::uint32_t>(value);
    else if (key == "--min-seconds") o.min_seconds = value;
    else if (key == "--only") o.only = argv[i + 1];
    else return false;
  }
  return argc % 2 == 1 && o.rows > 0 && o.channels > 0 && o.views > 0 && o.views_per_chunk > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, o)) {
    std::fprintf(stderr,
                 "usage: codec_bench [--rows N] [--channels N] [--views N] [--views-per-chunk N] [--min-seconds S]\n"
                 "                   [--only sim|replayed|sweep]\n");
    return 2;
  }
  std::printf("codec_bench: sim driver, %u views x %u rows x %u channels, uint16 counts (60000 unattenuated at dose 1), "
              "chunks of %u views compressed independently; one thread; MB = 10^6 bytes of raw samples.\n",
              o.views, o.rows, o.channels, o.views_per_chunk);
  const ctagent::codec::SampleShape per_view{1, o.rows, o.channels};
  const Filter filters[] = {Filter::kShuffle, Filter::kDeltaChannel, Filter::kDeltaView, Filter::kMed,
                            Filter::kPredict};
  for (const double dose : {1.0, 0.2, 0.1}) {
    if (!o.only.empty() && o.only != "sim") break;
    const Scan scan = SimScan(o, dose);
    std::vector<Method> methods;
    for (const int level : {1, 3, 9, 19}) {
      methods.push_back({"zstd -" + std::to_string(level), [level](const Bytes& in) { return ZstdCompress(in, level); },
                         ZstdDecompress, Filter::kNone});
    }
    methods.push_back({"gzip -6", [](const Bytes& in) { return GzipCompress(in, 6); }, GzipDecompress, Filter::kNone});
    methods.push_back({"xz -6", [](const Bytes& in) { return XzCompress(in, 6); }, XzDecompress, Filter::kNone});
    for (const Filter f : filters) {
      for (const int level : {1, 3}) methods.push_back(FilterMethod(f, level, SampleType::kUint16, per_view));
    }
    methods.push_back(FilterMethod(Filter::kPredict, 9, SampleType::kUint16, per_view));
    methods.push_back(ChunkMethod(Filter::kPredict, 3, o));
    char title[128];
    std::snprintf(title, sizeof title, "uint16 counts, dose %.2f (%.1f MB)", dose, static_cast<double>(scan.raw_bytes) / 1e6);
    RunTable(title, scan, methods, o);

    const Scan floats = ToLineIntegrals(scan, 60000.0 * dose);
    std::vector<Method> float_methods;
    float_methods.push_back({"zstd -3", [](const Bytes& in) { return ZstdCompress(in, 3); }, ZstdDecompress, Filter::kNone});
    for (const Filter f : filters) float_methods.push_back(FilterMethod(f, 3, SampleType::kFloat32, per_view));
    std::snprintf(title, sizeof title, "float32 line integrals, dose %.2f (%.1f MB)", dose,
                  static_cast<double>(floats.raw_bytes) / 1e6);
    RunTable(title, floats, float_methods, o);
  }
  if (o.only.empty() || o.only == "replayed") {
    // No real scanner data is available here: these are our own sim scans, recorded to disk and
    // replayed, so they measure the recording/replay path, not a different detector.
    for (const double dose : {1.0, 0.1}) {
      for (const auto format : {ctagent::drivers::RecordFormat::kCtagent, ctagent::drivers::RecordFormat::kDicomCtPd}) {
        const bool dicom = format == ctagent::drivers::RecordFormat::kDicomCtPd;
        const Scan scan = ReplayedScan(o, dose, format);
        char title[160];
        std::snprintf(title, sizeof title, "replayed: sim scan recorded as %s, uint16 counts, dose %.2f (%.1f MB)",
                      dicom ? "DICOM-CT-PD" : "a ctagent recording", dose, static_cast<double>(scan.raw_bytes) / 1e6);
        RunTable(title, scan, ShortMethods(o, per_view), o);
      }
    }
  }
  if (o.only.empty() || o.only == "sweep") {
    for (const double dose : {1.0, 0.1}) RunChunkSweep(o, dose);
  }
  return 0;
}
