// codec_bench: compression ratio and single-core speed of the chunk filters with zstd against
// plain zstd, gzip -6 and xz -6, on scans from the sim driver at several doses, and (--only
// compare) of the chunk codecs against JPEG-LS (CharLS), JPEG 2000 (OpenJPEG), xz -9e and
// zstd -19 on the demo protocol and the real DICOM-CT-PD view. Prints markdown tables
// (docs/codec.md holds a copy). Numbers only; nothing here is asserted. CharLS and OpenJPEG are
// linked by this bench only, never by the agent.
//
//   codec_bench [--rows N] [--channels N] [--views N] [--views-per-chunk N] [--min-seconds S]
//               [--only sim|replayed|sweep|compare|compare-ours] [--shared-data DIR]
//
// compare-ours: the compare tables' rows of the project's own codecs only (no image codecs, xz,
// zstd -19 or real view), a minute instead of eight, for tuning the codecs between full runs.
#include <charls/charls.h>
#include <lzma.h>
#include <openjpeg.h>
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
#include "agent/codec/context_coder.hpp"
#include "agent/codec/filter.hpp"
#include "base/allocator.hpp"
#include "drivers/detector.hpp"
#include "drivers/record.hpp"
#include "drivers/replay/dicom_ct_pd.hpp"
#include "drivers/sim/sim_detector.hpp"

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
  std::string only;  // "sim", "replayed", "sweep", "compare" or "compare-ours": run one part (empty: all)
  std::string shared_data = CTAGENT_SHARED_DATA_DIR;  // holds dicom-ct-pd/batelle.dcm
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
  double compress_mb_s = 0;    // over all passes
  double decompress_mb_s = 0;
  double best_compress_mb_s = 0;  // of the fastest pass: on a shared machine, the least disturbed
  double best_decompress_mb_s = 0;
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
  auto time_passes = [&](const std::function<void()>& pass, double& best_mb_s) {
    int passes = 0;
    const double start = CpuSeconds();
    double elapsed = 0;
    double fastest = 0;
    while (passes < 1000 && (passes == 0 || elapsed < min_seconds)) {
      const double before = CpuSeconds();
      pass();
      const double took = CpuSeconds() - before;
      fastest = passes == 0 ? took : std::min(fastest, took);
      ++passes;
      elapsed = CpuSeconds() - start;
    }
    best_mb_s = static_cast<double>(scan.raw_bytes) / fastest / 1e6;
    return static_cast<double>(scan.raw_bytes) * passes / elapsed / 1e6;
  };
  r.compress_mb_s = time_passes([&] {
    for (const Bytes& chunk : scan.chunks) (void)m.compress(chunk);
  }, r.best_compress_mb_s);
  r.decompress_mb_s = time_passes([&] {
    for (std::size_t i = 0; i < outputs.size(); ++i) (void)m.decompress(outputs[i], scan.chunks[i].size());
  }, r.best_decompress_mb_s);
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

// ---- --only compare: the chunk codecs against image codecs, on the demo protocol ----

// The new codec alone (codec 2's payload, no container): what the filter rows are for codec 1.
Method ContextRansMethod(const Options& o) {
  Method m;
  m.name = "predict + context rANS (codec 2)";
  m.filter = Filter::kPredict;
  const std::uint64_t view_bytes = std::uint64_t{o.rows} * o.channels * 2;
  m.compress = [=](const Bytes& in) {
    Bytes out;
    ctagent::codec::EncodeContextRans({in.size() / view_bytes, o.rows, o.channels}, in, out);
    return out;
  };
  m.decompress = [=](const Bytes& in, std::size_t raw_size) {
    Bytes out(raw_size);
    if (!ctagent::codec::DecodeContextRans({raw_size / view_bytes, o.rows, o.channels}, in, out)) std::abort();
    return out;
  };
  return m;
}

Method ChunkMethodCodec(ctagent::codec::Codec codec, const Options& o) {
  Method m = ChunkMethod(Filter::kPredict, 3, o);
  m.name = std::string("EncodeChunk(predict, ") + ctagent::codec::ToString(codec) + ")";
  m.compress = [=](const Bytes& in) {
    ctagent::codec::ChunkInfo info;
    info.scan_uid = "2.25.1";
    info.rows = o.rows;
    info.channels = o.channels;
    const std::size_t views = in.size() / (std::size_t{o.rows} * o.channels * 2);
    for (std::size_t v = 0; v < views; ++v) info.views.push_back({v, 0, 0, 0, 0});
    ctagent::codec::EncodeOptions options{Filter::kPredict, 3};
    options.codec = codec;
    auto chunk = ctagent::codec::EncodeChunk(info, in, options);
    if (!chunk) std::abort();
    return *chunk;
  };
  return m;
}

// JPEG-LS lossless (CharLS), one 16-bit grey image of `height` x `width` per unit.
Method JpeglsMethod(std::uint32_t width, std::uint32_t height) {
  Method m;
  m.name = "JPEG-LS (CharLS)";
  m.compress = [=](const Bytes& in) {
    charls::jpegls_encoder encoder;
    encoder.frame_info({width, height, 16, 1});
    Bytes out(encoder.estimated_destination_size());
    encoder.destination(out);
    const std::size_t n = encoder.encode(in);
    out.resize(n);
    return out;
  };
  m.decompress = [](const Bytes& in, std::size_t raw_size) {
    Bytes out(raw_size);
    charls::jpegls_decoder decoder(in, true);
    decoder.decode(out);
    return out;
  };
  return m;
}

// OpenJPEG's stream on a growing memory buffer.
struct OpjBuffer {
  Bytes data;
  std::size_t pos = 0;
};
OPJ_SIZE_T OpjRead(void* buffer, OPJ_SIZE_T n, void* user) {
  auto* b = static_cast<OpjBuffer*>(user);
  if (b->pos >= b->data.size()) return static_cast<OPJ_SIZE_T>(-1);
  n = std::min<OPJ_SIZE_T>(n, b->data.size() - b->pos);
  std::memcpy(buffer, b->data.data() + b->pos, n);
  b->pos += n;
  return n;
}
OPJ_SIZE_T OpjWrite(void* buffer, OPJ_SIZE_T n, void* user) {
  auto* b = static_cast<OpjBuffer*>(user);
  if (b->pos + n > b->data.size()) b->data.resize(b->pos + n);
  std::memcpy(b->data.data() + b->pos, buffer, n);
  b->pos += n;
  return n;
}
OPJ_OFF_T OpjSkip(OPJ_OFF_T n, void* user) {
  auto* b = static_cast<OpjBuffer*>(user);
  b->pos = static_cast<std::size_t>(static_cast<OPJ_OFF_T>(b->pos) + n);
  return n;
}
OPJ_BOOL OpjSeek(OPJ_OFF_T n, void* user) {
  static_cast<OpjBuffer*>(user)->pos = static_cast<std::size_t>(n);
  return OPJ_TRUE;
}
opj_stream_t* OpjStream(OpjBuffer& b, bool input) {
  opj_stream_t* s = opj_stream_create(1 << 16, input ? OPJ_TRUE : OPJ_FALSE);
  opj_stream_set_user_data(s, &b, nullptr);
  opj_stream_set_user_data_length(s, b.data.size());
  opj_stream_set_read_function(s, OpjRead);
  opj_stream_set_write_function(s, OpjWrite);
  opj_stream_set_skip_function(s, OpjSkip);
  opj_stream_set_seek_function(s, OpjSeek);
  return s;
}

// JPEG 2000 lossless (OpenJPEG: reversible 5/3 wavelet, one layer, J2K codestream), one 16-bit
// grey image of `height` x `width` per unit; as many resolution levels as the image allows (<= 6).
Method Jpeg2000Method(std::uint32_t width, std::uint32_t height) {
  Method m;
  m.name = "JPEG 2000 (OpenJPEG)";
  m.compress = [=](const Bytes& in) {
    opj_cparameters_t params;
    opj_set_default_encoder_parameters(&params);
    params.tcp_numlayers = 1;
    params.tcp_rates[0] = 0;
    params.cp_disto_alloc = 1;
    params.irreversible = 0;
    int levels = 1;
    while (levels < 6 && (std::min(width, height) >> levels) >= 1) ++levels;
    params.numresolution = levels;
    opj_image_cmptparm_t cmpt{};
    cmpt.dx = cmpt.dy = 1;
    cmpt.w = width;
    cmpt.h = height;
    cmpt.prec = 16;
    cmpt.sgnd = 0;
    opj_image_t* image = opj_image_create(1, &cmpt, OPJ_CLRSPC_GRAY);
    image->x1 = width;
    image->y1 = height;
    for (std::size_t i = 0; i < std::size_t{width} * height; ++i) {
      std::uint16_t v;
      std::memcpy(&v, in.data() + 2 * i, 2);
      image->comps[0].data[i] = v;
    }
    opj_codec_t* codec = opj_create_compress(OPJ_CODEC_J2K);
    OpjBuffer buffer;
    opj_stream_t* stream = OpjStream(buffer, false);
    if (!opj_setup_encoder(codec, &params, image) || !opj_start_compress(codec, image, stream) ||
        !opj_encode(codec, stream) || !opj_end_compress(codec, stream)) {
      std::abort();
    }
    opj_stream_destroy(stream);
    opj_destroy_codec(codec);
    opj_image_destroy(image);
    buffer.data.resize(buffer.pos);
    return buffer.data;
  };
  m.decompress = [](const Bytes& in, std::size_t raw_size) {
    OpjBuffer buffer{in, 0};
    opj_stream_t* stream = OpjStream(buffer, true);
    opj_codec_t* codec = opj_create_decompress(OPJ_CODEC_J2K);
    opj_dparameters_t params;
    opj_set_default_decoder_parameters(&params);
    opj_image_t* image = nullptr;
    if (!opj_setup_decoder(codec, &params) || !opj_read_header(stream, codec, &image) ||
        !opj_decode(codec, stream, image) || !opj_end_decompress(codec, stream)) {
      std::abort();
    }
    Bytes out(raw_size);
    for (std::size_t i = 0; i < raw_size / 2; ++i) {
      const auto v = static_cast<std::uint16_t>(image->comps[0].data[i]);
      std::memcpy(out.data() + 2 * i, &v, 2);
    }
    opj_image_destroy(image);
    opj_destroy_codec(codec);
    opj_stream_destroy(stream);
    return out;
  };
  return m;
}

Bytes XzExtremeCompress(const Bytes& in) { return XzCompress(in, 9 | LZMA_PRESET_EXTREME); }

// The scan as images: one per view (rows x channels) or one per detector row (views x channels).
Scan PerViewImages(const Scan& chunks, const Options& o) {
  Scan out;
  const std::size_t view_bytes = std::size_t{o.rows} * o.channels * 2;
  for (const Bytes& chunk : chunks.chunks) {
    for (std::size_t at = 0; at < chunk.size(); at += view_bytes) {
      out.chunks.emplace_back(chunk.begin() + static_cast<std::ptrdiff_t>(at),
                              chunk.begin() + static_cast<std::ptrdiff_t>(at + view_bytes));
      out.raw_bytes += view_bytes;
    }
  }
  return out;
}

Scan PerRowImages(const Scan& chunks, const Options& o, std::uint64_t* views_out) {
  Bytes all;
  for (const Bytes& chunk : chunks.chunks) all.insert(all.end(), chunk.begin(), chunk.end());
  const std::size_t row_bytes = std::size_t{o.channels} * 2;
  const std::size_t views = all.size() / (row_bytes * o.rows);
  *views_out = views;
  Scan out;
  for (std::uint32_t r = 0; r < o.rows; ++r) {
    Bytes image(views * row_bytes);
    for (std::size_t v = 0; v < views; ++v) {
      std::memcpy(image.data() + v * row_bytes, all.data() + (v * o.rows + r) * row_bytes, row_bytes);
    }
    out.raw_bytes += image.size();
    out.chunks.push_back(std::move(image));
  }
  return out;
}

void PrintCompareRow(const std::string& name, const std::string& arrangement, const Result& r) {
  std::printf("| %s | %s | %.3f | %.1f | %.1f | %.1f | %.1f |\n", name.c_str(), arrangement.c_str(), r.ratio,
              r.compress_mb_s, r.decompress_mb_s, r.best_compress_mb_s, r.best_decompress_mb_s);
  std::fflush(stdout);
}

std::string LoadAverage() {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) != 3) return "unknown";
  char text[64];
  std::snprintf(text, sizeof text, "%.2f %.2f %.2f", load[0], load[1], load[2]);
  return text;
}

void RunCompare(const Options& base, bool ours_only) {
  // The demo's protocol (config/config.hpp DefaultScanProtocol): 16 x 896 fan beam, 1160 views,
  // one rotation, uint16 counts; the ctagent recording of it is bit-identical to these views.
  const ctagent::drivers::ScanProtocol demo = ctagent::drivers::SixteenSliceAxialProtocol();
  Options o = base;
  o.rows = demo.rows;
  o.channels = demo.channels;
  o.views = demo.views_per_rotation;
  std::printf("\n## compare: demo protocol (sim, %u views x %u rows x %u channels, uint16), load average %s\n", o.views,
              o.rows, o.channels, LoadAverage().c_str());
  for (const double dose : {1.0, 0.2, 0.1}) {
    ctagent::drivers::ScanProtocol p = demo;
    p.dose_fraction = dose;
    auto detector = ctagent::drivers::MakeDetector("sim", nullptr);
    if (!detector || !(*detector)->Arm(p)) std::exit(2);
    const Scan scan = ReadScan(**detector, o, p.TotalViews());
    std::printf("\n### demo protocol, dose %.2f (%.1f MB)\n\n", dose, static_cast<double>(scan.raw_bytes) / 1e6);
    std::printf("| method | arrangement | ratio | compress MB/s/core | decode MB/s/core | fastest pass: compress | "
                "decode |\n|---|---|---:|---:|---:|---:|---:|\n");
    const ctagent::codec::SampleShape per_view{1, o.rows, o.channels};
    const std::string chunked = "chunks of " + std::to_string(o.views_per_chunk) + " views";
    PrintCompareRow("predict + zstd -3 (codec 1)", chunked,
                    Measure(FilterMethod(Filter::kPredict, 3, SampleType::kUint16, per_view), scan, o.min_seconds));
    PrintCompareRow("EncodeChunk(predict, zstd)", chunked,
                    Measure(ChunkMethodCodec(ctagent::codec::Codec::kZstd, o), scan, o.min_seconds));
    PrintCompareRow(ContextRansMethod(o).name, chunked, Measure(ContextRansMethod(o), scan, o.min_seconds));
    PrintCompareRow("EncodeChunk(predict, context_rans)", chunked,
                    Measure(ChunkMethodCodec(ctagent::codec::Codec::kContextRans, o), scan, o.min_seconds));
    if (ours_only) continue;
    PrintCompareRow("zstd -19", chunked,
                    Measure({"zstd -19", [](const Bytes& in) { return ZstdCompress(in, 19); }, ZstdDecompress, Filter::kNone},
                            scan, o.min_seconds));
    PrintCompareRow("xz -9e", chunked, Measure({"xz -9e", XzExtremeCompress, XzDecompress, Filter::kNone}, scan, o.min_seconds));
    const Scan views = PerViewImages(scan, o);
    std::uint64_t view_count = 0;
    const Scan rows = PerRowImages(scan, o, &view_count);
    const std::string per_view_text = "per view (" + std::to_string(o.rows) + " x " + std::to_string(o.channels) + ")";
    const std::string per_row_text = "per detector row (" + std::to_string(view_count) + " x " + std::to_string(o.channels) + ")";
    PrintCompareRow("JPEG-LS (CharLS)", per_view_text, Measure(JpeglsMethod(o.channels, o.rows), views, o.min_seconds));
    PrintCompareRow("JPEG-LS (CharLS)", per_row_text,
                    Measure(JpeglsMethod(o.channels, static_cast<std::uint32_t>(view_count)), rows, o.min_seconds));
    PrintCompareRow("JPEG 2000 (OpenJPEG)", per_view_text, Measure(Jpeg2000Method(o.channels, o.rows), views, o.min_seconds));
    PrintCompareRow("JPEG 2000 (OpenJPEG)", per_row_text,
                    Measure(Jpeg2000Method(o.channels, static_cast<std::uint32_t>(view_count)), rows, o.min_seconds));
  }
  std::printf("\nload average after the demo tables: %s\n", LoadAverage().c_str());
  if (ours_only) return;

  // The real DICOM-CT-PD view (one view, 32 rows x 736 channels, the stored uint16 codes): ratio only.
  namespace fs = std::filesystem;
  const fs::path real = fs::path(o.shared_data) / "dicom-ct-pd" / "batelle.dcm";
  if (!fs::exists(real)) {
    std::printf("\n(no real DICOM-CT-PD view at %s: --shared-data DIR)\n", real.c_str());
    return;
  }
  const fs::path dir = fs::temp_directory_path() / ("codec_bench_ctpd." + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::create_symlink(real, dir / "batelle.dcm");
  auto reader = ctagent::drivers::replay::DicomCtPdReader::Open(dir, 0.0, 0.0);
  if (!reader) std::exit(2);
  auto view = (*reader)->Next();
  fs::remove_all(dir);
  if (!view || !view->has_value()) std::exit(2);
  Options r = o;
  r.rows = (*reader)->info().rows;
  r.channels = (*reader)->info().channels;
  Scan one;
  one.chunks.push_back((*view)->samples);
  one.raw_bytes = one.chunks.back().size();
  std::printf("\n### real DICOM-CT-PD view (%s: %u rows x %u channels, stored uint16 codes), ratio only\n\n",
              real.filename().c_str(), r.rows, r.channels);
  std::printf("| method | ratio |\n|---|---:|\n");
  const ctagent::codec::SampleShape per_view{1, r.rows, r.channels};
  const std::vector<Method> methods = {
      FilterMethod(Filter::kPredict, 3, SampleType::kUint16, per_view),
      ContextRansMethod(r),
      {"zstd -19", [](const Bytes& in) { return ZstdCompress(in, 19); }, ZstdDecompress, Filter::kNone},
      {"xz -9e", XzExtremeCompress, XzDecompress, Filter::kNone},
      JpeglsMethod(r.channels, r.rows),
      Jpeg2000Method(r.channels, r.rows),
  };
  for (const Method& m : methods) std::printf("| %s | %.3f |\n", m.name.c_str(), Measure(m, one, 0).ratio);
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
    else if (key == "--shared-data") o.shared_data = argv[i + 1];
    else return false;
  }
  return argc % 2 == 1 && o.rows > 0 && o.channels > 0 && o.views > 0 && o.views_per_chunk > 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The agent's allocator settings (ctagent's main does the same): without them glibc serves
  // each chunk-sized buffer from a fresh mmap, and the page faults of every chunk's decode
  // buffer showed as a codec slower than the agent's (context_rans decode about 85 instead of
  // about 220 MB/s per core, docs/configuration.md, "Memory").
  ctagent::KeepLargeBuffersInHeap();
  Options o;
  if (!ParseArgs(argc, argv, o)) {
    std::fprintf(stderr,
                 "usage: codec_bench [--rows N] [--channels N] [--views N] [--views-per-chunk N] [--min-seconds S]\n"
                 "                   [--only sim|replayed|sweep|compare|compare-ours] [--shared-data DIR]\n");
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
  if (o.only.empty() || o.only == "compare") RunCompare(o, false);
  if (o.only == "compare-ours") RunCompare(o, true);
  return 0;
}
