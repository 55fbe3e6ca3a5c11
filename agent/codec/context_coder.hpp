// Codec 2 of the chunk format: the `predict` filter's residuals of uint16 samples, coded with one
// static rANS table per context, the context being the intensity of the same channel in the
// previous view (Poisson noise: the residual's spread follows the counts). Two passes per chunk:
// histogram, then encode. Byte layout: docs/wire-format.md §1; measurements: docs/codec.md.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "agent/codec/filter.hpp"
#include "base/error.hpp"

namespace ctagent::codec {

// Appends the codec 2 payload of `samples` (shape.views * rows * channels uint16 samples,
// little-endian) to `out`. Never fails for a valid shape; the payload may be larger than the
// samples (random data), which EncodeChunk checks to fall back to codec 1.
void EncodeContextRans(const SampleShape& shape, std::span<const std::uint8_t> samples, std::vector<std::uint8_t>& out);

// Decodes a codec 2 payload into `out` (exactly shape.views * rows * channels * 2 bytes). Any
// input is safe: it never reads or writes outside the two spans, allocates at most a fixed
// amount beyond `out`'s size, and returns kCorrupt with a reason for a malformed payload (a
// well-formed payload with flipped bits decodes to wrong samples, which the raw hash rejects).
Status DecodeContextRans(const SampleShape& shape, std::span<const std::uint8_t> payload, std::span<std::uint8_t> out);

}  // namespace ctagent::codec
