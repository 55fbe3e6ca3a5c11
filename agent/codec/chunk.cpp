#include "agent/codec/chunk.hpp"

// For ZSTD_c_literalCompressionMode, an "experimental" parameter of the stable
// ZSTD_CCtx_setParameter(); no experimental function is called, so the shared library suffices.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>

#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>

#include "agent/codec/context_coder.hpp"
#include "base/sha256.hpp"

namespace ctagent::codec {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the chunk format is little-endian; big-endian hosts need byte swapping here");

constexpr std::array<std::uint8_t, 8> kMagic = {'C', 'T', 'A', 'G', 'C', 'H', 'N', 'K'};
constexpr std::size_t kFixedHeaderBytes = 224;   // up to and including the scan UID field
constexpr std::size_t kViewRecordBytes = 40;
constexpr std::size_t kScanUidBytes = 64;
constexpr std::size_t kHeaderHashOffset = 128;
constexpr std::size_t kMaxViewsPerChunk = 1u << 16;
constexpr std::size_t kMaxDescriptorBytes = 1u << 16;

// Field offsets (docs/wire-format.md).
enum Offset : std::size_t {
  kOffMagic = 0,
  kOffMajor = 8,
  kOffMinor = 10,
  kOffHeaderLength = 12,
  kOffChunkIndex = 16,
  kOffViewCount = 20,
  kOffFirstView = 24,
  kOffRows = 32,
  kOffChannels = 36,
  kOffSampleType = 40,
  kOffFilter = 41,
  kOffCodec = 42,
  kOffZstdLevel = 43,
  kOffDescriptorLength = 44,
  kOffRawLength = 48,
  kOffCompressedLength = 56,
  kOffRawSha = 64,
  kOffCompressedSha = 96,
  kOffHeaderSha = kHeaderHashOffset,
  kOffScanUid = 160,
};

template <typename T>
void Put(std::vector<std::uint8_t>& out, std::size_t offset, T value) {
  std::memcpy(out.data() + offset, &value, sizeof(T));
}

template <typename T>
T Get(std::span<const std::uint8_t> in, std::size_t offset) {
  T value;
  std::memcpy(&value, in.data() + offset, sizeof(T));
  return value;
}

// A header's SHA-256 fields hold the digest's 32 bytes; ChunkInfo holds it as hex
// (Sha256Digest converts both ways). False if `hex` is not a digest.
bool HexToBytes(const std::string& hex, std::uint8_t* out) {
  const auto digest = Sha256Digest::FromHex(hex);
  if (!digest || digest->empty()) return false;
  std::memcpy(out, digest->bytes().data(), digest->bytes().size());
  return true;
}

std::string BytesToHex(const std::uint8_t* bytes) {
  std::array<std::uint8_t, 32> digest{};
  std::memcpy(digest.data(), bytes, digest.size());
  return Sha256Digest(digest).Hex();
}

// Header hash: SHA-256 over the header with the hash field itself zeroed.
std::string HeaderHash(std::span<const std::uint8_t> header) {
  Sha256 hash;
  hash.Update(header.subspan(0, kOffHeaderSha));
  const std::array<std::uint8_t, 32> zeros{};
  hash.Update(zeros);
  hash.Update(header.subspan(kOffHeaderSha + 32));
  return hash.FinalHex();
}

// Up to this zstd level, prediction filters use the residual-tuned match finder below.
constexpr int kResidualTunedMaxLevel = 3;
// zstd's targetLength for the fast strategy: how quickly it skips ahead where nothing matches.
constexpr int kResidualAcceleration = 64;

bool IsPrediction(Filter filter) {
  return filter == Filter::kDeltaChannel || filter == Filter::kDeltaView || filter == Filter::kMed ||
         filter == Filter::kPredict;
}

// Sets the frame parameters of `options` on a fresh context. Prediction residuals are noise:
// long matches are rare and short ones cost more than the literals they replace, so with a
// prediction filter at a level <= 3 the match finder is a tiny one (strategy fast, hashLog 6,
// minMatch 7, searchLog 1) that also skips ahead quickly where it finds nothing (targetLength,
// zstd's "acceleration" for the fast strategy), while the literals stay Huffman-coded: that is
// where the gain over plain zstd comes from. Measured in docs/codec.md. These are ordinary frame
// parameters; any zstd decoder reads the frame.
Status ConfigureContext(ZSTD_CCtx* cctx, const EncodeOptions& options) {
  auto set = [cctx](ZSTD_cParameter parameter, int value) { return !ZSTD_isError(ZSTD_CCtx_setParameter(cctx, parameter, value)); };
  bool ok = set(ZSTD_c_compressionLevel, options.zstd_level) && set(ZSTD_c_checksumFlag, 1) &&
            set(ZSTD_c_contentSizeFlag, 1);
  if (ok && IsPrediction(options.filter) && options.zstd_level <= kResidualTunedMaxLevel) {
    ok = set(ZSTD_c_strategy, ZSTD_fast) && set(ZSTD_c_hashLog, 6) && set(ZSTD_c_minMatch, 7) &&
         set(ZSTD_c_searchLog, 1);
    // Acceleration turns off literal compression unless it is asked for; a zstd that does not
    // know the literal mode parameter gets no acceleration (slower, same ratio).
    if (ok && set(ZSTD_c_literalCompressionMode, ZSTD_ps_enable)) ok = set(ZSTD_c_targetLength, kResidualAcceleration);
  }
  if (!ok) return MakeError(ErrorKind::kInternal, "zstd refused the compression parameters for level " +
                                                      std::to_string(options.zstd_level));
  return Ok();
}

Unexpected Corrupt(const std::string& what) { return MakeError(ErrorKind::kCorrupt, "corrupt chunk: " + what); }

}  // namespace

const char* ToString(Filter filter) {
  switch (filter) {
    case Filter::kNone: return "none";
    case Filter::kShuffle: return "shuffle";
    case Filter::kDeltaChannel: return "delta_channel";
    case Filter::kDeltaView: return "delta_view";
    case Filter::kMed: return "med";
    case Filter::kPredict: return "predict";
  }
  return "unknown";
}

Expected<Filter> FilterFromString(const std::string& name) {
  if (name == "none") return Filter::kNone;
  for (std::uint8_t code = 1; code <= kMaxFilterCode; ++code) {
    const auto filter = static_cast<Filter>(code);
    if (name == ToString(filter)) return filter;
  }
  return MakeError(ErrorKind::kInvalidInput, "unknown filter \"" + name +
                                                 "\" (known: none, shuffle, delta_channel, delta_view, med, predict)");
}

const char* ToString(Codec codec) {
  switch (codec) {
    case Codec::kZstd: return "zstd";
    case Codec::kContextRans: return "context_rans";
  }
  return "unknown";
}

Expected<Codec> CodecFromString(const std::string& name) {
  if (name == "zstd") return Codec::kZstd;
  if (name == "context_rans") return Codec::kContextRans;
  return MakeError(ErrorKind::kInvalidInput, "unknown codec \"" + name + "\" (known: zstd, context_rans)");
}

std::size_t CompressBound(std::size_t filtered_bytes) { return ZSTD_compressBound(filtered_bytes); }

Expected<std::size_t> CompressFiltered(std::span<const std::uint8_t> filtered, std::span<std::uint8_t> out,
                                       const EncodeOptions& options) {
  // One context per thread, reused: creating one per chunk costs an allocation of its tables.
  thread_local std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> context(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  ZSTD_CCtx* cctx = context.get();
  if (cctx == nullptr) return MakeError(ErrorKind::kInternal, "zstd could not allocate a compression context");
  ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
  if (auto st = ConfigureContext(cctx, options); !st) return MakeError(st.error());
  const std::size_t csize = ZSTD_compress2(cctx, out.data(), out.size(), filtered.data(), filtered.size());
  if (ZSTD_isError(csize)) {
    return MakeError(ErrorKind::kInternal, std::string("zstd compression failed: ") + ZSTD_getErrorName(csize));
  }
  return csize;
}

std::size_t EncodedChunkCapacity(const ChunkInfo& info, std::uint64_t view_count, std::uint64_t raw_bytes) {
  const std::size_t header_length = kFixedHeaderBytes + kViewRecordBytes * view_count + info.descriptor.dump().size();
  return header_length + CompressBound(static_cast<std::size_t>(raw_bytes));
}

Expected<std::vector<std::uint8_t>> EncodeChunk(ChunkInfo info, std::span<const std::uint8_t> samples,
                                                const EncodeOptions& options) {
  std::vector<std::uint8_t> out;
  if (auto st = EncodeChunkInto(std::move(info), samples, options, out); !st) return MakeError(st.error());
  return out;
}

Status EncodeChunkInto(ChunkInfo info, std::span<const std::uint8_t> samples, const EncodeOptions& options,
                       std::vector<std::uint8_t>& out) {
  out.clear();
  const std::size_t width = drivers::SampleSize(info.sample_type);
  const std::uint64_t view_count = info.views.size();
  if (view_count == 0 || view_count > kMaxViewsPerChunk) {
    return MakeError(ErrorKind::kInvalidInput, "a chunk holds 1 to " + std::to_string(kMaxViewsPerChunk) +
                                                   " views, not " + std::to_string(view_count));
  }
  if (info.rows == 0 || info.channels == 0) {
    return MakeError(ErrorKind::kInvalidInput, "a chunk needs at least one row and one channel");
  }
  const std::uint64_t expected = view_count * info.rows * info.channels * width;
  if (samples.size() != expected) {
    return MakeError(ErrorKind::kInvalidInput, "chunk " + std::to_string(info.chunk_index) + " of scan " +
                                                   info.scan_uid + ": got " + std::to_string(samples.size()) +
                                                   " sample bytes, expected " + std::to_string(expected));
  }
  if (info.scan_uid.empty() || info.scan_uid.size() > kScanUidBytes) {
    return MakeError(ErrorKind::kInvalidInput, "scan UID must be 1 to 64 characters");
  }
  for (std::size_t i = 1; i < info.views.size(); ++i) {
    if (info.views[i].sequence != info.views[i - 1].sequence + 1) {
      return MakeError(ErrorKind::kInvalidInput, "chunk views must be consecutive: view " +
                                                     std::to_string(info.views[i].sequence) + " follows " +
                                                     std::to_string(info.views[i - 1].sequence));
    }
  }
  info.filter = options.filter;
  info.codec = Codec::kZstd;
  info.zstd_level = options.zstd_level;
  info.format_major = kFormatMajor;
  info.format_minor = kFormatMinor;
  info.raw_length = samples.size();
  info.raw_sha256 = Sha256Hex(samples);

  if (static_cast<std::uint8_t>(options.filter) > kMaxFilterCode) {
    return MakeError(ErrorKind::kInvalidInput,
                     "unknown filter code " + std::to_string(static_cast<unsigned>(options.filter)));
  }
  const std::string descriptor = info.descriptor.dump();
  if (descriptor.size() > kMaxDescriptorBytes) {
    return MakeError(ErrorKind::kInvalidInput, "chunk descriptor is larger than 64 KiB");
  }
  const std::size_t header_length = kFixedHeaderBytes + kViewRecordBytes * view_count + descriptor.size();
  const SampleShape shape{view_count, info.rows, info.channels};
  std::size_t payload_size = 0;

  // Codec 2 where it applies and pays; codec 1 otherwise.
  if (options.codec == Codec::kContextRans && options.filter == Filter::kPredict &&
      info.sample_type == drivers::SampleType::kUint16) {
    out.resize(header_length);
    EncodeContextRans(shape, samples, out);
    if (out.size() - header_length < samples.size() - samples.size() / 64) {
      info.codec = Codec::kContextRans;
      info.zstd_level = 0;
      payload_size = out.size() - header_length;
    }
  }
  if (info.codec == Codec::kZstd) {
    // Filter, then compress into a standard zstd frame (with content size and checksum).
    std::vector<std::uint8_t> filtered;
    std::span<const std::uint8_t> to_compress = samples;
    if (options.filter != Filter::kNone) {
      filtered.resize(samples.size());
      ApplyFilter(options.filter, info.sample_type, shape, samples, filtered);
      to_compress = filtered;
    }
    const std::size_t bound = CompressBound(to_compress.size());
    out.resize(header_length + bound);
    const auto csize = CompressFiltered(to_compress, {out.data() + header_length, bound}, options);
    if (!csize) return MakeError(csize.error());
    payload_size = *csize;
    out.resize(header_length + payload_size);
  }
  const std::span<const std::uint8_t> payload(out.data() + header_length, payload_size);
  info.compressed_length = payload_size;
  info.compressed_sha256 = Sha256Hex(payload);
  info.header_length = header_length;

  std::memcpy(out.data() + kOffMagic, kMagic.data(), kMagic.size());
  Put<std::uint16_t>(out, kOffMajor, info.format_major);
  Put<std::uint16_t>(out, kOffMinor, info.format_minor);
  Put<std::uint32_t>(out, kOffHeaderLength, static_cast<std::uint32_t>(header_length));
  Put<std::uint32_t>(out, kOffChunkIndex, info.chunk_index);
  Put<std::uint32_t>(out, kOffViewCount, static_cast<std::uint32_t>(view_count));
  Put<std::uint64_t>(out, kOffFirstView, info.FirstView());
  Put<std::uint32_t>(out, kOffRows, info.rows);
  Put<std::uint32_t>(out, kOffChannels, info.channels);
  Put<std::uint8_t>(out, kOffSampleType, static_cast<std::uint8_t>(info.sample_type));
  Put<std::uint8_t>(out, kOffFilter, static_cast<std::uint8_t>(info.filter));
  Put<std::uint8_t>(out, kOffCodec, static_cast<std::uint8_t>(info.codec));
  Put<std::int8_t>(out, kOffZstdLevel, static_cast<std::int8_t>(info.zstd_level));
  Put<std::uint32_t>(out, kOffDescriptorLength, static_cast<std::uint32_t>(descriptor.size()));
  Put<std::uint64_t>(out, kOffRawLength, info.raw_length);
  Put<std::uint64_t>(out, kOffCompressedLength, info.compressed_length);
  HexToBytes(info.raw_sha256, out.data() + kOffRawSha);
  HexToBytes(info.compressed_sha256, out.data() + kOffCompressedSha);
  std::memset(out.data() + kOffScanUid, 0, kScanUidBytes);
  std::memcpy(out.data() + kOffScanUid, info.scan_uid.data(), info.scan_uid.size());
  std::size_t pos = kFixedHeaderBytes;
  for (const ViewRecord& v : info.views) {
    Put<std::uint64_t>(out, pos, v.sequence);
    Put<double>(out, pos + 8, v.gantry_angle_deg);
    Put<double>(out, pos + 16, v.table_position_mm);
    Put<std::int64_t>(out, pos + 24, v.timestamp_us);
    Put<std::uint32_t>(out, pos + 32, v.status_flags);
    Put<std::uint32_t>(out, pos + 36, 0);
    pos += kViewRecordBytes;
  }
  std::memcpy(out.data() + pos, descriptor.data(), descriptor.size());
  const std::string header_hash = HeaderHash({out.data(), header_length});
  HexToBytes(header_hash, out.data() + kOffHeaderSha);
  return Ok();
}

Expected<ChunkInfo> ParseChunkHeader(std::span<const std::uint8_t> bytes) {
  if (bytes.size() < kFixedHeaderBytes) {
    return Corrupt("only " + std::to_string(bytes.size()) + " bytes, shorter than the " +
                   std::to_string(kFixedHeaderBytes) + "-byte fixed header");
  }
  if (std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) != 0) {
    return Corrupt("wrong magic (not a ctagent chunk file)");
  }
  ChunkInfo info;
  info.format_major = Get<std::uint16_t>(bytes, kOffMajor);
  info.format_minor = Get<std::uint16_t>(bytes, kOffMinor);
  if (info.format_major != kFormatMajor) {
    return MakeError(ErrorKind::kUnsupported,
                     "chunk format version " + std::to_string(info.format_major) + "." +
                         std::to_string(info.format_minor) + " is not supported by this build (reads " +
                         std::to_string(kFormatMajor) + ".x); update the decoder");
  }
  // A newer minor version may append fields; header_length tells where the payload starts.
  const std::uint32_t header_length = Get<std::uint32_t>(bytes, kOffHeaderLength);
  const std::uint32_t view_count = Get<std::uint32_t>(bytes, kOffViewCount);
  const std::uint32_t descriptor_length = Get<std::uint32_t>(bytes, kOffDescriptorLength);
  if (view_count == 0 || view_count > kMaxViewsPerChunk) {
    return Corrupt("view count " + std::to_string(view_count) + " is outside 1.." + std::to_string(kMaxViewsPerChunk));
  }
  if (descriptor_length > kMaxDescriptorBytes) return Corrupt("descriptor length " + std::to_string(descriptor_length) + " is too large");
  const std::uint64_t min_header = kFixedHeaderBytes + std::uint64_t{kViewRecordBytes} * view_count + descriptor_length;
  if (header_length < min_header || header_length > bytes.size()) {
    return Corrupt("header length " + std::to_string(header_length) + " does not fit (needs at least " +
                   std::to_string(min_header) + ", file has " + std::to_string(bytes.size()) + " bytes)");
  }
  const auto header = bytes.subspan(0, header_length);
  if (HeaderHash(header) != BytesToHex(bytes.data() + kOffHeaderSha)) {
    return Corrupt("header checksum mismatch");
  }
  info.header_length = header_length;
  info.chunk_index = Get<std::uint32_t>(bytes, kOffChunkIndex);
  info.rows = Get<std::uint32_t>(bytes, kOffRows);
  info.channels = Get<std::uint32_t>(bytes, kOffChannels);
  const auto sample_type = Get<std::uint8_t>(bytes, kOffSampleType);
  const auto filter = Get<std::uint8_t>(bytes, kOffFilter);
  const auto codec = Get<std::uint8_t>(bytes, kOffCodec);
  if (sample_type != static_cast<std::uint8_t>(drivers::SampleType::kUint16) &&
      sample_type != static_cast<std::uint8_t>(drivers::SampleType::kFloat32)) {
    return MakeError(ErrorKind::kUnsupported, "unknown sample type code " + std::to_string(sample_type));
  }
  if (filter > kMaxFilterCode) {
    return MakeError(ErrorKind::kUnsupported, "unknown filter code " + std::to_string(filter) +
                                                  " (this decoder knows 0.." + std::to_string(kMaxFilterCode) +
                                                  "); the chunk was written by a newer agent: update the decoder");
  }
  if (codec != static_cast<std::uint8_t>(Codec::kZstd) && codec != static_cast<std::uint8_t>(Codec::kContextRans)) {
    return MakeError(ErrorKind::kUnsupported, "unknown codec code " + std::to_string(codec) +
                                                  " (this decoder knows 1 zstd, 2 context_rans); the chunk was "
                                                  "written by a newer agent: update the decoder");
  }
  if (codec == static_cast<std::uint8_t>(Codec::kContextRans) &&
      (filter != static_cast<std::uint8_t>(Filter::kPredict) ||
       sample_type != static_cast<std::uint8_t>(drivers::SampleType::kUint16))) {
    return Corrupt("codec 2 (context_rans) is defined for filter predict on uint16 samples only");
  }
  info.sample_type = static_cast<drivers::SampleType>(sample_type);
  info.filter = static_cast<Filter>(filter);
  info.codec = static_cast<Codec>(codec);
  info.zstd_level = Get<std::int8_t>(bytes, kOffZstdLevel);
  info.raw_length = Get<std::uint64_t>(bytes, kOffRawLength);
  info.compressed_length = Get<std::uint64_t>(bytes, kOffCompressedLength);
  info.raw_sha256 = BytesToHex(bytes.data() + kOffRawSha);
  info.compressed_sha256 = BytesToHex(bytes.data() + kOffCompressedSha);
  if (info.rows == 0 || info.channels == 0 || info.rows > 4096 || info.channels > 65536) {
    return Corrupt("implausible shape " + std::to_string(info.rows) + " rows x " + std::to_string(info.channels) + " channels");
  }
  const std::uint64_t expected_raw =
      std::uint64_t{view_count} * info.rows * info.channels * drivers::SampleSize(info.sample_type);
  if (info.raw_length != expected_raw) {
    return Corrupt("raw length " + std::to_string(info.raw_length) + " does not match " + std::to_string(view_count) +
                   " views x " + std::to_string(info.rows) + " rows x " + std::to_string(info.channels) + " channels");
  }
  if (info.compressed_length != bytes.size() - header_length) {
    return Corrupt("compressed length " + std::to_string(info.compressed_length) + " but " +
                   std::to_string(bytes.size() - header_length) + " payload bytes present (truncated or padded)");
  }
  const char* uid = reinterpret_cast<const char*>(bytes.data() + kOffScanUid);
  info.scan_uid.assign(uid, strnlen(uid, kScanUidBytes));
  std::size_t pos = kFixedHeaderBytes;
  info.views.resize(view_count);
  for (ViewRecord& v : info.views) {
    v.sequence = Get<std::uint64_t>(bytes, pos);
    v.gantry_angle_deg = Get<double>(bytes, pos + 8);
    v.table_position_mm = Get<double>(bytes, pos + 16);
    v.timestamp_us = Get<std::int64_t>(bytes, pos + 24);
    v.status_flags = Get<std::uint32_t>(bytes, pos + 32);
    pos += kViewRecordBytes;
  }
  if (info.views.front().sequence != Get<std::uint64_t>(bytes, kOffFirstView)) {
    return Corrupt("first view field disagrees with the view table");
  }
  const std::string descriptor(reinterpret_cast<const char*>(bytes.data() + pos), descriptor_length);
  info.descriptor = nlohmann::json::parse(descriptor, nullptr, /*allow_exceptions=*/false);
  if (info.descriptor.is_discarded()) return Corrupt("descriptor is not valid JSON");
  return info;
}

Expected<DecodedChunk> DecodeChunk(std::span<const std::uint8_t> bytes, std::uint64_t max_raw_bytes) {
  auto info = ParseChunkHeader(bytes);
  if (!info) return MakeError(info.error());
  if (info->raw_length > max_raw_bytes) {
    return Corrupt("raw length " + std::to_string(info->raw_length) + " exceeds the limit of " +
                   std::to_string(max_raw_bytes) + " bytes");
  }
  const auto payload = bytes.subspan(info->header_length);
  if (Sha256Hex(payload) != info->compressed_sha256) return Corrupt("payload checksum mismatch");
  if (info->codec == Codec::kContextRans) {
    DecodedChunk out;
    out.samples.resize(static_cast<std::size_t>(info->raw_length));
    const SampleShape shape{info->views.size(), info->rows, info->channels};
    if (auto st = DecodeContextRans(shape, payload, out.samples); !st) return MakeError(st.error());
    if (Sha256Hex(out.samples) != info->raw_sha256) return Corrupt("raw checksum mismatch after decoding");
    out.info = std::move(*info);
    return out;
  }
  const unsigned long long frame_size = ZSTD_getFrameContentSize(payload.data(), payload.size());
  if (frame_size == ZSTD_CONTENTSIZE_ERROR || frame_size == ZSTD_CONTENTSIZE_UNKNOWN ||
      frame_size != info->raw_length) {
    return Corrupt("zstd frame does not declare the expected content size");
  }
  std::vector<std::uint8_t> decompressed(static_cast<std::size_t>(info->raw_length));
  const std::size_t got = ZSTD_decompress(decompressed.data(), decompressed.size(), payload.data(), payload.size());
  if (ZSTD_isError(got)) return Corrupt(std::string("zstd: ") + ZSTD_getErrorName(got));
  if (got != info->raw_length) return Corrupt("zstd produced " + std::to_string(got) + " bytes, expected " + std::to_string(info->raw_length));
  DecodedChunk out;
  if (info->filter != Filter::kNone) {
    out.samples.resize(decompressed.size());
    const SampleShape shape{info->views.size(), info->rows, info->channels};
    InvertFilter(info->filter, info->sample_type, shape, decompressed, out.samples);
  } else {
    out.samples = std::move(decompressed);
  }
  if (Sha256Hex(out.samples) != info->raw_sha256) return Corrupt("raw checksum mismatch after decoding");
  out.info = std::move(*info);
  return out;
}

}  // namespace ctagent::codec
