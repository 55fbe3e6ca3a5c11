// Chunks written by previous releases (format 1.1, tests/data/codec/format-1.1; format 1.2 with
// codec 2, tests/data/codec/format-1.2) decode unchanged: same header fields, same samples byte
// for byte.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "agent/codec/chunk.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct OldChunk {
  const char* name;
  codec::Filter filter;
  drivers::SampleType type;
  int zstd_level;
  std::uint32_t views, rows, channels;
};

}  // namespace

TEST_CASE("old chunks: every format 1.1 test vector decodes to its stored samples") {
  const fs::path dir = fs::path(CTAGENT_TEST_DATA_DIR) / "codec" / "format-1.1";
  const OldChunk chunks[] = {
      {"predict_u16", codec::Filter::kPredict, drivers::SampleType::kUint16, 3, 5, 3, 40},
      {"none_u16_level1", codec::Filter::kNone, drivers::SampleType::kUint16, 1, 4, 2, 33},
      {"shuffle_u16", codec::Filter::kShuffle, drivers::SampleType::kUint16, 3, 3, 2, 17},
      {"delta_view_u16", codec::Filter::kDeltaView, drivers::SampleType::kUint16, 3, 4, 1, 25},
      {"med_u16", codec::Filter::kMed, drivers::SampleType::kUint16, 3, 4, 2, 9},
      {"predict_f32", codec::Filter::kPredict, drivers::SampleType::kFloat32, 3, 3, 2, 21},
      {"delta_channel_f32", codec::Filter::kDeltaChannel, drivers::SampleType::kFloat32, 3, 2, 2, 1},
  };
  for (const OldChunk& c : chunks) {
    SECTION(c.name) {
      const auto bytes = ReadAll(dir / (std::string(c.name) + ".chunk"));
      const auto expected = ReadAll(dir / (std::string(c.name) + ".raw"));
      auto decoded = codec::DecodeChunk(bytes);
      REQUIRE(decoded);
      const codec::ChunkInfo& info = decoded->info;
      CHECK(info.format_major == 1);
      CHECK(info.format_minor == 1);
      CHECK(info.codec == codec::Codec::kZstd);
      CHECK(info.filter == c.filter);
      CHECK(info.sample_type == c.type);
      CHECK(info.zstd_level == c.zstd_level);
      CHECK(info.views.size() == c.views);
      CHECK(info.views.front().sequence == 100);
      CHECK(info.rows == c.rows);
      CHECK(info.channels == c.channels);
      CHECK(info.scan_uid == "2.25.1911");
      CHECK(info.chunk_index == 7);
      CHECK(info.descriptor.at("geometry") == "fan");
      REQUIRE(decoded->samples.size() == expected.size());
      CHECK(decoded->samples == expected);
    }
  }
}

TEST_CASE("old chunks: every format 1.2 test vector, codec 2 or its zstd fallback, decodes to its stored samples") {
  const fs::path dir = fs::path(CTAGENT_TEST_DATA_DIR) / "codec" / "format-1.2";
  struct Chunk12 {
    const char* name;
    codec::Codec codec;
    std::uint32_t views, rows, channels;
  };
  const Chunk12 chunks[] = {
      {"rans_u16", codec::Codec::kContextRans, 8, 4, 64},
      {"rans_u16_tails", codec::Codec::kContextRans, 24, 2, 7},
      {"rans_fallback_u16", codec::Codec::kZstd, 4, 2, 33},
  };
  for (const Chunk12& c : chunks) {
    SECTION(c.name) {
      const auto bytes = ReadAll(dir / (std::string(c.name) + ".chunk"));
      const auto expected = ReadAll(dir / (std::string(c.name) + ".raw"));
      auto decoded = codec::DecodeChunk(bytes);
      REQUIRE(decoded);
      const codec::ChunkInfo& info = decoded->info;
      CHECK(info.format_major == 1);
      CHECK(info.format_minor == 2);
      CHECK(info.codec == c.codec);
      CHECK(info.filter == codec::Filter::kPredict);
      CHECK(info.sample_type == drivers::SampleType::kUint16);
      CHECK(info.zstd_level == (c.codec == codec::Codec::kContextRans ? 0 : 3));
      CHECK(info.views.size() == c.views);
      CHECK(info.views.front().sequence == 100);
      CHECK(info.rows == c.rows);
      CHECK(info.channels == c.channels);
      CHECK(info.scan_uid == "2.25.1912");
      CHECK(info.chunk_index == 7);
      CHECK(info.descriptor.at("geometry") == "fan");
      REQUIRE(decoded->samples.size() == expected.size());
      CHECK(decoded->samples == expected);
    }
  }
}
