// libFuzzer target for codec 2's payload decoder (agent/codec/context_coder.hpp) on its own, past
// the chunk's hashes: DecodeContextRans must reject any input with kCorrupt or decode it, never
// crash, over-read or write outside its output (run under ASan and UBSan).
//
// Input: 3 bytes of shape (views 1..16, rows 1..4, channels 1..256), then the payload. Inputs that
// decode are encoded again and must decode to the same samples (the round trip of what the
// decoder accepted).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "agent/codec/context_coder.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const ctagent::codec::SampleShape shape{1u + (data[0] & 15u), 1u + (data[1] & 3u), 1u + data[2]};
  const std::span<const std::uint8_t> payload(data + 3, size - 3);
  std::vector<std::uint8_t> out(shape.views * shape.rows * shape.channels * 2);
  if (!ctagent::codec::DecodeContextRans(shape, payload, out)) return 0;
  std::vector<std::uint8_t> again;
  ctagent::codec::EncodeContextRans(shape, out, again);
  std::vector<std::uint8_t> back(out.size());
  if (!ctagent::codec::DecodeContextRans(shape, again, back) || back != out) __builtin_trap();
  return 0;
}
