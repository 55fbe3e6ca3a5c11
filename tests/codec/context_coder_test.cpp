// Codec 2 (context rANS): bit-exact round trips over shapes and edge values, the fallback to
// codec 1 where it does not pay, and rejection of damaged payloads.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "agent/codec/chunk.hpp"
#include "agent/codec/context_coder.hpp"
#include "drivers/sim/sim_detector.hpp"

using namespace ctagent;
using codec::Codec;
using codec::SampleShape;
using drivers::SampleType;

namespace {

codec::ChunkInfo Info(std::uint32_t views, std::uint32_t rows, std::uint32_t channels,
                      SampleType type = SampleType::kUint16) {
  codec::ChunkInfo info;
  info.scan_uid = "2.25.42";
  info.chunk_index = 3;
  info.rows = rows;
  info.channels = channels;
  info.sample_type = type;
  for (std::uint32_t v = 0; v < views; ++v) info.views.push_back({10 + v, 0.5 * v, 0, 0, 0});
  return info;
}

codec::EncodeOptions ContextRans() {
  codec::EncodeOptions options{codec::Filter::kPredict, 3};
  options.codec = Codec::kContextRans;
  return options;
}

enum class Kind { kZero, kMax, kZeroMaxAlternating, kConstantViews, kDetector, kRandom, kRamp, kSteps };

std::vector<std::uint8_t> Samples(Kind kind, const SampleShape& shape, std::mt19937_64& rng) {
  const std::size_t n = shape.views * shape.rows * shape.channels;
  std::vector<std::uint16_t> s(n);
  std::normal_distribution<double> noise(0, 40);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t c = i % shape.channels;
    const std::size_t v = i / (shape.rows * shape.channels);
    switch (kind) {
      case Kind::kZero: s[i] = 0; break;
      case Kind::kMax: s[i] = 65535; break;
      case Kind::kZeroMaxAlternating: s[i] = (i % 2 == 0) ? 0 : 65535; break;
      case Kind::kConstantViews: s[i] = static_cast<std::uint16_t>(1000 + 37 * v); break;
      case Kind::kDetector: {
        const double mean = 20000 + 15000 * std::sin(0.01 * static_cast<double>(c) + 0.05 * static_cast<double>(v));
        s[i] = static_cast<std::uint16_t>(std::clamp(mean + noise(rng), 0.0, 65535.0));
        break;
      }
      case Kind::kRandom: s[i] = static_cast<std::uint16_t>(rng()); break;
      case Kind::kRamp: s[i] = static_cast<std::uint16_t>(i * 977); break;  // wraps through 0 and 65535
      case Kind::kSteps: s[i] = (c % 7 < 3) ? 65535 : static_cast<std::uint16_t>(c % 3); break;
    }
  }
  std::vector<std::uint8_t> bytes(n * 2);
  std::memcpy(bytes.data(), s.data(), bytes.size());
  return bytes;
}

const char* Name(Kind kind) {
  switch (kind) {
    case Kind::kZero: return "zero";
    case Kind::kMax: return "65535";
    case Kind::kZeroMaxAlternating: return "0/65535 alternating";
    case Kind::kConstantViews: return "constant views";
    case Kind::kDetector: return "detector-like";
    case Kind::kRandom: return "random";
    case Kind::kRamp: return "wrapping ramp";
    case Kind::kSteps: return "steps";
  }
  return "?";
}

}  // namespace

TEST_CASE("context rANS: the coder alone round-trips every shape and value pattern bit-exact") {
  std::mt19937_64 rng(7);
  const SampleShape shapes[] = {{1, 1, 1}, {1, 1, 5}, {3, 1, 1}, {2, 1, 2}, {4, 2, 3}, {5, 3, 7}, {9, 2, 33}, {3, 4, 64}};
  for (const Kind kind : {Kind::kZero, Kind::kMax, Kind::kZeroMaxAlternating, Kind::kConstantViews, Kind::kDetector,
                          Kind::kRandom, Kind::kRamp, Kind::kSteps}) {
    for (const SampleShape& shape : shapes) {
      INFO(Name(kind) << ", " << shape.views << " views x " << shape.rows << " rows x " << shape.channels << " channels");
      const auto samples = Samples(kind, shape, rng);
      std::vector<std::uint8_t> payload{0xAA};  // appends after what is there
      codec::EncodeContextRans(shape, samples, payload);
      REQUIRE(payload.size() > 1);
      CHECK(payload[0] == 0xAA);
      std::vector<std::uint8_t> decoded(samples.size(), 0x55);
      const auto status = codec::DecodeContextRans(shape, std::span<const std::uint8_t>(payload).subspan(1), decoded);
      REQUIRE(status);
      CHECK(decoded == samples);
    }
  }
}

TEST_CASE("context rANS: chunks use codec 2 where it pays and codec 1 where it does not, and decode bit-exact") {
  std::mt19937_64 rng(11);
  struct Case {
    Kind kind;
    SampleShape shape;
    Codec expected;
  };
  const Case cases[] = {
      {Kind::kDetector, {16, 2, 256}, Codec::kContextRans},
      {Kind::kConstantViews, {8, 2, 100}, Codec::kContextRans},
      {Kind::kZero, {8, 1, 300}, Codec::kContextRans},
      {Kind::kMax, {8, 1, 300}, Codec::kContextRans},
      {Kind::kRandom, {16, 2, 256}, Codec::kZstd},  // incompressible: falls back
      {Kind::kDetector, {1, 1, 1}, Codec::kZstd},   // one sample: the tables cost more than they save
  };
  for (const Case& c : cases) {
    INFO(Name(c.kind) << ", " << c.shape.views << " x " << c.shape.rows << " x " << c.shape.channels);
    const auto samples = Samples(c.kind, c.shape, rng);
    const auto info = Info(static_cast<std::uint32_t>(c.shape.views), static_cast<std::uint32_t>(c.shape.rows),
                           static_cast<std::uint32_t>(c.shape.channels));
    auto chunk = codec::EncodeChunk(info, samples, ContextRans());
    REQUIRE(chunk);
    auto decoded = codec::DecodeChunk(*chunk);
    REQUIRE(decoded);
    CHECK(decoded->info.codec == c.expected);
    CHECK(decoded->info.filter == codec::Filter::kPredict);
    CHECK(decoded->info.format_major == 1);
    CHECK(decoded->info.format_minor == 2);
    CHECK(decoded->info.zstd_level == (c.expected == Codec::kContextRans ? 0 : 3));
    CHECK(decoded->samples == samples);
    if (c.expected == Codec::kContextRans) CHECK(chunk->size() < samples.size());
  }
}

TEST_CASE("context rANS: codec 2 applies to predict on uint16 only, other chunks are written with zstd") {
  std::mt19937_64 rng(3);
  const SampleShape shape{8, 2, 64};
  const auto u16 = Samples(Kind::kDetector, shape, rng);
  codec::EncodeOptions delta = ContextRans();
  delta.filter = codec::Filter::kDeltaView;
  auto chunk = codec::EncodeChunk(Info(8, 2, 64), u16, delta);
  REQUIRE(chunk);
  auto decoded = codec::DecodeChunk(*chunk);
  REQUIRE(decoded);
  CHECK(decoded->info.codec == Codec::kZstd);
  CHECK(decoded->samples == u16);

  std::vector<std::uint8_t> f32(shape.views * shape.rows * shape.channels * 4);
  for (std::size_t i = 0; i < f32.size() / 4; ++i) {
    const float x = std::sin(0.01f * static_cast<float>(i));
    std::memcpy(f32.data() + 4 * i, &x, 4);
  }
  chunk = codec::EncodeChunk(Info(8, 2, 64, SampleType::kFloat32), f32, ContextRans());
  REQUIRE(chunk);
  decoded = codec::DecodeChunk(*chunk);
  REQUIRE(decoded);
  CHECK(decoded->info.codec == Codec::kZstd);
  CHECK(decoded->samples == f32);
}

TEST_CASE("context rANS: sim scans at three doses round-trip and beat codec 1's ratio") {
  for (const double dose : {1.0, 0.2, 0.1}) {
    drivers::ScanProtocol p = drivers::SixteenSliceAxialProtocol();
    p.dose_fraction = dose;
    p.views_per_rotation = 64;  // one chunk's worth keeps the test short
    p.channels = 256;
    p.rows = 4;
    auto detector = drivers::MakeDetector("sim", nullptr);
    REQUIRE(detector);
    REQUIRE((*detector)->Arm(p));
    std::vector<std::uint8_t> samples;
    for (std::uint64_t v = 0; v < p.TotalViews(); ++v) {
      auto view = (*detector)->NextView();
      REQUIRE(view);
      REQUIRE(view->has_value());
      samples.insert(samples.end(), (*view)->samples.begin(), (*view)->samples.end());
    }
    const auto info = Info(64, p.rows, p.channels);
    auto rans = codec::EncodeChunk(info, samples, ContextRans());
    auto zstd = codec::EncodeChunk(info, samples, {codec::Filter::kPredict, 3});
    REQUIRE(rans);
    REQUIRE(zstd);
    auto decoded = codec::DecodeChunk(*rans);
    REQUIRE(decoded);
    CHECK(decoded->info.codec == Codec::kContextRans);
    CHECK(decoded->samples == samples);
    INFO("dose " << dose << ": codec 2 " << rans->size() << " bytes, codec 1 " << zstd->size());
    CHECK(rans->size() < zstd->size());
  }
}

TEST_CASE("context rANS: damaged payloads are rejected with a reason, never read out of bounds") {
  std::mt19937_64 rng(5);
  const SampleShape shape{6, 2, 40};
  const auto samples = Samples(Kind::kDetector, shape, rng);
  std::vector<std::uint8_t> payload;
  codec::EncodeContextRans(shape, samples, payload);
  std::vector<std::uint8_t> out(samples.size());

  SECTION("every truncation") {
    for (std::size_t len = 0; len < payload.size(); ++len) {
      INFO("first " << len << " of " << payload.size() << " bytes");
      const auto status = codec::DecodeContextRans(shape, std::span<const std::uint8_t>(payload.data(), len), out);
      REQUIRE_FALSE(status);
      CHECK(status.error().kind() == ErrorKind::kCorrupt);
      CHECK(status.error().message().find("context rANS") != std::string::npos);
    }
  }
  SECTION("a byte appended") {
    auto longer = payload;
    longer.push_back(0);
    CHECK_FALSE(codec::DecodeContextRans(shape, longer, out));
  }
  SECTION("every single byte changed: an error or other samples, never the original by accident of a bug") {
    int rejected = 0;
    for (std::size_t i = 0; i < payload.size(); ++i) {
      auto bad = payload;
      bad[i] ^= 0x5a;
      const auto status = codec::DecodeContextRans(shape, bad, out);
      if (!status) {
        ++rejected;
        CHECK(status.error().kind() == ErrorKind::kCorrupt);
      } else {
        CHECK(out != samples);  // the chunk's raw hash rejects these
      }
    }
    CHECK(rejected > 0);
  }
  SECTION("a table whose frequencies do not sum to 4096") {
    auto bad = payload;
    bad[3] = static_cast<std::uint8_t>(bad[3] + 1);  // first frequency of the first table (one-byte varint or not)
    CHECK_FALSE(codec::DecodeContextRans(shape, bad, out));
  }
  SECTION("wrong output size") {
    std::vector<std::uint8_t> small(samples.size() - 2);
    CHECK_FALSE(codec::DecodeContextRans(shape, payload, small));
  }
}

TEST_CASE("context rANS: codec names") {
  CHECK(std::string(codec::ToString(Codec::kZstd)) == "zstd");
  CHECK(std::string(codec::ToString(Codec::kContextRans)) == "context_rans");
  CHECK(codec::CodecFromString("context_rans").value() == Codec::kContextRans);
  CHECK(codec::CodecFromString("zstd").value() == Codec::kZstd);
  auto bad = codec::CodecFromString("lzma");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().find("context_rans") != std::string::npos);
}
