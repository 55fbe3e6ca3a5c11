// The chunk container: a run of consecutive views compressed on its own, self-describing and
// checksummed. Any chunk decodes alone. Byte layout: docs/wire-format.md.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/codec/filter.hpp"
#include "base/error.hpp"
#include "drivers/scan_types.hpp"

namespace ctagent::codec {

inline constexpr std::uint16_t kFormatMajor = 1;
// 1.1 added filter codes 2-5; a 1.0 decoder refuses those chunks as "unknown filter code".
// 1.2 added codec 2 (context rANS); a 1.1 decoder refuses those chunks as "unknown codec code".
inline constexpr std::uint16_t kFormatMinor = 2;

// Filter codes and their rules: agent/codec/filter.hpp.
const char* ToString(Filter filter);
Expected<Filter> FilterFromString(const std::string& name);

// Codes are stored in the chunk header (offset 42); never renumber.
enum class Codec : std::uint8_t {
  kZstd = 1,         // the filtered samples in one standard zstd frame
  kContextRans = 2,  // filter `predict` on uint16 only: residuals coded with per-context rANS tables
                     // (agent/codec/context_coder.hpp)
};
const char* ToString(Codec codec);
Expected<Codec> CodecFromString(const std::string& name);

struct ViewRecord {
  std::uint64_t sequence = 0;
  double gantry_angle_deg = 0;
  double table_position_mm = 0;
  std::int64_t timestamp_us = 0;
  std::uint32_t status_flags = 0;
};

struct ChunkInfo {
  std::uint16_t format_major = kFormatMajor;
  std::uint16_t format_minor = kFormatMinor;
  std::string scan_uid;
  std::uint32_t chunk_index = 0;
  std::uint32_t rows = 0;
  std::uint32_t channels = 0;
  drivers::SampleType sample_type = drivers::SampleType::kUint16;
  Filter filter = Filter::kShuffle;
  Codec codec = Codec::kZstd;
  int zstd_level = 3;                   // 0 with codec kContextRans
  std::vector<ViewRecord> views;        // view_count = views.size()
  nlohmann::json descriptor = nlohmann::json::object();  // scan geometry and protocol (JSON)
  std::uint64_t raw_length = 0;         // bytes of samples
  std::uint64_t compressed_length = 0;  // bytes of the payload
  std::string raw_sha256;               // hex, of the samples
  std::string compressed_sha256;        // hex, of the payload
  std::uint64_t header_length = 0;      // bytes before the payload

  std::uint64_t FirstView() const { return views.empty() ? 0 : views.front().sequence; }
};

struct EncodeOptions {
  Filter filter = Filter::kShuffle;
  int zstd_level = 3;
  // kContextRans applies to filter `predict` on uint16 samples; other chunks, and chunks where it
  // would save less than 1/64 of the raw size (noise-like data), are written with kZstd.
  Codec codec = Codec::kZstd;
};

// Builds a chunk from `samples` (views.size() * rows * channels samples). `info` supplies the
// identity, shape, view records and descriptor; lengths and checksums are filled in.
Expected<std::vector<std::uint8_t>> EncodeChunk(ChunkInfo info, std::span<const std::uint8_t> samples,
                                                const EncodeOptions& options);

// EncodeChunk into `out`, which is cleared first and whose capacity is used: a codec thread that
// keeps one output buffer of EncodedChunkCapacity() bytes allocates none per chunk. On an
// error `out`'s contents are unspecified.
Status EncodeChunkInto(ChunkInfo info, std::span<const std::uint8_t> samples, const EncodeOptions& options,
                       std::vector<std::uint8_t>& out);

// The most bytes a chunk of `view_count` views and `raw_bytes` of samples, with the scan UID and
// descriptor of `info`, takes through codec 1 (header plus zstd's bound): what any chunk takes,
// but one whose codec 2 payload came out larger than the samples (noise-like data) while it was
// tried, before the chunk falls back to codec 1.
std::size_t EncodedChunkCapacity(const ChunkInfo& info, std::uint64_t view_count, std::uint64_t raw_bytes);

// The compression step of EncodeChunk on its own, for measuring it: compresses `filtered`
// (samples already passed through options.filter) into one standard zstd frame in `out`
// (at least CompressBound(filtered.size()) bytes) with the parameters EncodeChunk uses, and
// returns the frame's size.
std::size_t CompressBound(std::size_t filtered_bytes);
Expected<std::size_t> CompressFiltered(std::span<const std::uint8_t> filtered, std::span<std::uint8_t> out,
                                       const EncodeOptions& options);

// Parses and checks the header (magic, version, lengths, header checksum) without touching
// the payload. Never reads past `bytes`.
Expected<ChunkInfo> ParseChunkHeader(std::span<const std::uint8_t> bytes);

struct DecodedChunk {
  ChunkInfo info;
  std::vector<std::uint8_t> samples;
};

// Full decode: header, payload checksum, decompression (refusing more than `max_raw_bytes`),
// filter inversion, raw checksum. Every failure is kCorrupt or kUnsupported with a reason.
Expected<DecodedChunk> DecodeChunk(std::span<const std::uint8_t> bytes, std::uint64_t max_raw_bytes = 1ull << 30);

}  // namespace ctagent::codec
