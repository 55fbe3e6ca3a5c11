// libFuzzer target for the chunk decoder: DecodeChunk must reject any input with an error, never
// crash, over-read, leak or allocate beyond its limit (run under ASan and UBSan).
//
// Inputs whose first byte is odd are "re-sealed" first: the payload and header SHA-256 fields are
// recomputed, so the fuzzer reaches the checks behind the hashes (lengths, shape, zstd frame,
// filter inversion) instead of failing at the header hash every time.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "agent/codec/chunk.hpp"
#include "base/sha256.hpp"

namespace {

constexpr std::size_t kFixedHeaderBytes = 224;
constexpr std::size_t kHeaderLengthOffset = 12;
constexpr std::size_t kPayloadShaOffset = 96;
constexpr std::size_t kHeaderShaOffset = 128;
constexpr std::uint64_t kMaxRawBytes = 64ull << 20;  // keeps every run well inside -rss_limit_mb

void WriteHex(std::vector<std::uint8_t>& bytes, std::size_t offset, const std::string& hex) {
  for (std::size_t i = 0; i < 32; ++i) {
    bytes[offset + i] = static_cast<std::uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  }
}

void Reseal(std::vector<std::uint8_t>& chunk) {
  if (chunk.size() < kFixedHeaderBytes) return;
  std::uint32_t header_length = 0;
  std::memcpy(&header_length, chunk.data() + kHeaderLengthOffset, sizeof header_length);
  if (header_length < kFixedHeaderBytes || header_length > chunk.size()) return;
  const std::span<const std::uint8_t> all(chunk);
  WriteHex(chunk, kPayloadShaOffset, ctagent::Sha256Hex(all.subspan(header_length)));
  std::fill(chunk.begin() + kHeaderShaOffset, chunk.begin() + kHeaderShaOffset + 32, std::uint8_t{0});
  WriteHex(chunk, kHeaderShaOffset, ctagent::Sha256Hex(all.first(header_length)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<std::uint8_t> chunk(data + 1, data + size);
  if ((data[0] & 1) != 0) Reseal(chunk);
  auto decoded = ctagent::codec::DecodeChunk(chunk, kMaxRawBytes);
  if (decoded && decoded->samples.size() != decoded->info.raw_length) __builtin_trap();
  return 0;
}
