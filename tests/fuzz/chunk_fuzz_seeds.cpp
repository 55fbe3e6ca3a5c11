// Writes valid chunks (every filter, both sample types, a few shapes, codec 2) into a directory, each
// prefixed with the fuzz target's mode byte, as the starting corpus of chunk_decode_fuzz.
//   chunk_fuzz_seeds DIR
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "agent/codec/chunk.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: chunk_fuzz_seeds DIR\n");
    return 2;
  }
  using ctagent::drivers::SampleType;
  int written = 0;
  for (std::uint8_t code = 0; code <= ctagent::codec::kMaxFilterCode; ++code) {
    for (const SampleType type : {SampleType::kUint16, SampleType::kFloat32}) {
      for (const std::uint32_t views : {1u, 3u}) {
        ctagent::codec::ChunkInfo info;
        info.scan_uid = "2.25.1";
        info.rows = 2;
        info.channels = 5;
        info.sample_type = type;
        for (std::uint32_t v = 0; v < views; ++v) info.views.push_back({v, 0.5 * v, 0, 0, 0});
        std::vector<std::uint8_t> samples(views * 2 * 5 * ctagent::drivers::SampleSize(type));
        for (std::size_t i = 0; i < samples.size(); ++i) {
          samples[i] = static_cast<std::uint8_t>(100 + 50 * std::sin(static_cast<double>(i)));
        }
        auto chunk = ctagent::codec::EncodeChunk(info, samples, {static_cast<ctagent::codec::Filter>(code), 3});
        if (!chunk) {
          std::fprintf(stderr, "chunk_fuzz_seeds: %s\n", chunk.error().message().c_str());
          return 1;
        }
        for (const std::uint8_t mode : {0, 1}) {
          const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(written++);
          std::ofstream out(path, std::ios::binary);
          out.put(static_cast<char>(mode));
          out.write(reinterpret_cast<const char*>(chunk->data()), static_cast<std::streamsize>(chunk->size()));
          if (!out) {
            std::fprintf(stderr, "chunk_fuzz_seeds: cannot write %s\n", path.c_str());
            return 1;
          }
        }
      }
    }
  }
  // Codec 2 (context_rans): smooth uint16 views large enough for it to pay.
  for (const std::uint32_t views : {4u, 8u}) {
    ctagent::codec::ChunkInfo info;
    info.scan_uid = "2.25.1";
    info.rows = 2;
    info.channels = 48;
    for (std::uint32_t v = 0; v < views; ++v) info.views.push_back({v, 0.5 * v, 0, 0, 0});
    std::vector<std::uint8_t> samples(views * 2 * 48 * 2);
    for (std::size_t i = 0; i < samples.size() / 2; ++i) {
      const auto x = static_cast<std::uint16_t>(20000 + 3000 * std::sin(0.05 * static_cast<double>(i % 48)) + (i * 7919) % 41);
      samples[2 * i] = static_cast<std::uint8_t>(x);
      samples[2 * i + 1] = static_cast<std::uint8_t>(x >> 8);
    }
    ctagent::codec::EncodeOptions options{ctagent::codec::Filter::kPredict, 3};
    options.codec = ctagent::codec::Codec::kContextRans;
    auto chunk = ctagent::codec::EncodeChunk(info, samples, options);
    if (!chunk || ctagent::codec::ParseChunkHeader(*chunk)->codec != ctagent::codec::Codec::kContextRans) {
      std::fprintf(stderr, "chunk_fuzz_seeds: the codec 2 seed did not come out as codec 2\n");
      return 1;
    }
    for (const std::uint8_t mode : {0, 1}) {
      const std::string path = std::string(argv[1]) + "/seed-" + std::to_string(written++);
      std::ofstream out(path, std::ios::binary);
      out.put(static_cast<char>(mode));
      out.write(reinterpret_cast<const char*>(chunk->data()), static_cast<std::streamsize>(chunk->size()));
      if (!out) {
        std::fprintf(stderr, "chunk_fuzz_seeds: cannot write %s\n", path.c_str());
        return 1;
      }
    }
  }
  std::printf("wrote %d seeds to %s\n", written, argv[1]);
  return 0;
}
