// The chunk description the codec tests encode with: a chunk of `views` views of rows x channels
// samples of `type`, with view numbers from `first_view` and varied angles, table positions,
// times and status flags, so that a round trip checks every field. Shared by the codec's test
// files (one executable; a unity build compiles them together).
#pragma once

#include <cstdint>

#include "agent/codec/chunk.hpp"

namespace ctagent::codec_test {

inline codec::ChunkInfo MakeInfo(std::uint32_t views, std::uint32_t rows, std::uint32_t channels,
                                 drivers::SampleType type = drivers::SampleType::kUint16,
                                 std::uint64_t first_view = 100) {
  codec::ChunkInfo info;
  info.scan_uid = "2.25.123456789";
  info.chunk_index = 7;
  info.rows = rows;
  info.channels = channels;
  info.sample_type = type;
  info.descriptor = {{"geometry", "parallel"}, {"channels", channels}};
  for (std::uint32_t v = 0; v < views; ++v) {
    info.views.push_back({first_view + v, 0.25 * v, 12.5, 1000 * static_cast<std::int64_t>(v), v % 3 == 0 ? 1u : 0u});
  }
  return info;
}

}  // namespace ctagent::codec_test
