// Reversible filters applied to a chunk's samples before zstd (and inverted after it).
// Byte layout and the exact prediction rules: docs/wire-format.md; measurements: docs/codec.md.
#pragma once

#include <cstdint>
#include <span>

#include "drivers/scan_types.hpp"

namespace ctagent::codec {

// Codes are stored in the chunk header (offset 41); never renumber.
enum class Filter : std::uint8_t {
  kNone = 0,
  kShuffle = 1,       // byte-shuffle: all byte 0s, then all byte 1s, ... (per sample size)
  kDeltaChannel = 2,  // residual to the previous channel of the same row, zigzag, shuffle
  kDeltaView = 3,     // residual to the same channel of the previous view, zigzag, shuffle
  kMed = 4,           // LOCO-I median edge detector on (left, up, up-left), zigzag, shuffle
  kPredict = 5,       // (2 left + up-left + 3 up + 2 up-right) / 8, zigzag, shuffle
};
inline constexpr std::uint8_t kMaxFilterCode = 5;

// Samples of a chunk: view-major, then row, then channel.
struct SampleShape {
  std::uint64_t views = 0;
  std::uint64_t rows = 0;
  std::uint64_t channels = 0;
};

// Writes the filtered form of `in` to `out` (same size, views * rows * channels samples of
// `type`). Prediction filters work on the samples' bit patterns as unsigned integers with
// wrap-around arithmetic (float32 as uint32), so every filter is exactly invertible.
void ApplyFilter(Filter filter, drivers::SampleType type, const SampleShape& shape, std::span<const std::uint8_t> in,
                 std::span<std::uint8_t> out);

// Inverse of ApplyFilter. Defined for any input bytes of the right size (never reads or writes
// outside the two spans), so a damaged payload decodes to wrong samples, which the raw checksum
// then rejects.
void InvertFilter(Filter filter, drivers::SampleType type, const SampleShape& shape, std::span<const std::uint8_t> in,
                  std::span<std::uint8_t> out);

// The prediction residuals, zigzag-mapped, one unsigned word per sample (uint16 or uint32 in
// host order), before shuffling: what the entropy coder sees. For kNone and kShuffle these are
// the samples themselves. Used by the bench to report the order-0 entropy bound.
void ComputeResiduals(Filter filter, drivers::SampleType type, const SampleShape& shape,
                      std::span<const std::uint8_t> in, std::span<std::uint8_t> out);

}  // namespace ctagent::codec
