// Writes valid codec 2 payloads (tests/fuzz/context_rans_fuzz.cpp's input: 3 shape bytes, then the
// payload) of a few shapes and value patterns into a directory.
//   context_rans_fuzz_seeds DIR
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "agent/codec/context_coder.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: context_rans_fuzz_seeds DIR\n");
    return 2;
  }
  int written = 0;
  const std::uint8_t shapes[][3] = {{0, 0, 0}, {3, 1, 40}, {15, 3, 255}, {7, 0, 2}};
  for (const auto& code : shapes) {
    const ctagent::codec::SampleShape shape{1u + code[0], 1u + code[1], 1u + code[2]};
    for (int pattern = 0; pattern < 3; ++pattern) {
      std::vector<std::uint8_t> samples(shape.views * shape.rows * shape.channels * 2);
      for (std::size_t i = 0; i < samples.size() / 2; ++i) {
        std::uint16_t x = 0;
        if (pattern == 0) x = static_cast<std::uint16_t>(20000 + 5000 * std::sin(0.03 * static_cast<double>(i)) + (i * 7919) % 61);
        if (pattern == 1) x = (i % 3 == 0) ? 65535 : 0;
        if (pattern == 2) x = static_cast<std::uint16_t>(i * 2654435761u >> 7);
        samples[2 * i] = static_cast<std::uint8_t>(x);
        samples[2 * i + 1] = static_cast<std::uint8_t>(x >> 8);
      }
      std::vector<std::uint8_t> payload(code, code + 3);
      ctagent::codec::EncodeContextRans(shape, samples, payload);
      const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(written++);
      std::ofstream out(path, std::ios::binary);
      out.write(reinterpret_cast<const char*>(payload.data()), static_cast<std::streamsize>(payload.size()));
      if (!out) {
        std::fprintf(stderr, "context_rans_fuzz_seeds: cannot write %s\n", path.c_str());
        return 1;
      }
    }
  }
  std::printf("wrote %d seeds to %s\n", written, argv[1]);
  return 0;
}
