// Chunk container: bit-exact round trips and rejection of damaged input.
#include <catch2/catch.hpp>

#include <cctype>
#include <cstring>
#include <random>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/sha256.hpp"
#include "tests/codec/chunk_info.hpp"

using namespace ctagent;
using codec::ChunkInfo;
using drivers::SampleType;

namespace {

using codec_test::MakeInfo;

std::vector<std::uint8_t> Samples(std::size_t bytes, std::mt19937_64& rng, int kind) {
  std::vector<std::uint8_t> s(bytes);
  if (kind == 1) return s;  // all zero
  if (kind == 2) {
    std::fill(s.begin(), s.end(), 0xff);  // all max
    return s;
  }
  // Detector-like: slowly varying 16-bit counts with noise, as little-endian bytes.
  std::normal_distribution<double> noise(0, 30);
  for (std::size_t i = 0; i + 1 < bytes; i += 2) {
    const double v = 20000 + 15000 * std::sin(static_cast<double>(i) * 0.001) + noise(rng);
    const auto c = static_cast<std::uint16_t>(std::clamp(v, 0.0, 65535.0));
    s[i] = static_cast<std::uint8_t>(c & 0xff);
    s[i + 1] = static_cast<std::uint8_t>(c >> 8);
  }
  if (bytes % 2) s.back() = static_cast<std::uint8_t>(rng());
  return s;
}

// A digest whose hex is 64 times `digit` (a lowercase hex digit).
Sha256Digest Digest(char digit) { return Sha256Digest::FromHex(std::string(64, digit)).value(); }

}  // namespace

TEST_CASE("codec: a SHA-256 digest is held as its bytes and written as the lowercase hex it was read from", "[codec]") {
  const std::vector<std::uint8_t> bytes = {'c', 't', 'a', 'g', 'e', 'n', 't'};
  const std::string hex = Sha256Hex(bytes);
  const Sha256Digest digest = Sha256Of(bytes);
  CHECK(digest.Hex() == hex);
  CHECK(digest == hex);
  CHECK_FALSE(digest.empty());
  const auto back = Sha256Digest::FromHex(hex);
  REQUIRE(back);
  CHECK(*back == digest);
  CHECK(Sha256Digest() != digest);
  CHECK(Sha256Digest().Hex().empty());
  REQUIRE(Sha256Digest::FromHex(""));
  CHECK(Sha256Digest::FromHex("")->empty());
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK_FALSE(Sha256Digest::FromHex(upper));  // not the text Hex() writes: refused, not silently changed
  CHECK_FALSE(Sha256Digest::FromHex(hex.substr(1)));
  CHECK_FALSE(Sha256Digest::FromHex(hex + "0"));
  CHECK_FALSE(Sha256Digest::FromHex(std::string(63, 'a') + "g"));
}

TEST_CASE("codec: chunks round-trip bit-exactly for every filter, sample type and shape", "[codec]") {
  std::mt19937_64 rng(42);
  const codec::Filter filters[] = {codec::Filter::kNone,       codec::Filter::kShuffle, codec::Filter::kDeltaChannel,
                                   codec::Filter::kDeltaView, codec::Filter::kMed,     codec::Filter::kPredict};
  const SampleType types[] = {SampleType::kUint16, SampleType::kFloat32};
  struct Shape {
    std::uint32_t views, rows, channels;
  };
  const Shape shapes[] = {{1, 1, 1}, {1, 16, 513}, {3, 1, 7}, {64, 4, 256}, {17, 3, 101}};
  for (auto filter : filters) {
    for (auto type : types) {
      for (const auto& shape : shapes) {
        for (int kind = 0; kind < 3; ++kind) {
          const auto info = MakeInfo(shape.views, shape.rows, shape.channels, type);
          const auto samples =
              Samples(std::size_t{shape.views} * shape.rows * shape.channels * drivers::SampleSize(type), rng, kind);
          auto encoded = codec::EncodeChunk(info, samples, {filter, 3});
          REQUIRE(encoded);
          auto decoded = codec::DecodeChunk(*encoded);
          REQUIRE(decoded);
          CHECK(decoded->samples == samples);
          CHECK(decoded->info.raw_sha256 == Sha256Hex(samples));
          CHECK(decoded->info.scan_uid == info.scan_uid);
          CHECK(decoded->info.chunk_index == 7);
          CHECK(decoded->info.filter == filter);
          CHECK(decoded->info.sample_type == type);
          REQUIRE(decoded->info.views.size() == shape.views);
          CHECK(decoded->info.views.back().sequence == 100 + shape.views - 1);
          CHECK(decoded->info.views.back().gantry_angle_deg == Approx(0.25 * (shape.views - 1)));
          CHECK(decoded->info.descriptor["channels"] == shape.channels);
        }
      }
    }
  }
}

TEST_CASE("codec: random shapes and values round-trip (property test)", "[codec]") {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 60; ++i) {
    const auto views = static_cast<std::uint32_t>(1 + rng() % 40);
    const auto rows = static_cast<std::uint32_t>(1 + rng() % 8);
    const auto channels = static_cast<std::uint32_t>(1 + rng() % 300);
    const auto type = (rng() % 2) ? SampleType::kUint16 : SampleType::kFloat32;
    std::vector<std::uint8_t> samples(std::size_t{views} * rows * channels * drivers::SampleSize(type));
    for (auto& b : samples) b = static_cast<std::uint8_t>(rng());
    const auto filter = static_cast<codec::Filter>(rng() % (codec::kMaxFilterCode + 1));
    auto encoded = codec::EncodeChunk(MakeInfo(views, rows, channels, type, rng() % 100000), samples,
                                      {filter, static_cast<int>(1 + rng() % 9)});
    REQUIRE(encoded);
    auto decoded = codec::DecodeChunk(*encoded);
    REQUIRE(decoded);
    REQUIRE(decoded->samples == samples);
  }
}

TEST_CASE("codec: shuffle compresses detector-like counts better than no filter", "[codec]") {
  std::mt19937_64 rng(1);
  const auto info = MakeInfo(64, 4, 256, SampleType::kUint16);
  const auto samples = Samples(64 * 4 * 256 * 2, rng, 0);
  auto plain = codec::EncodeChunk(info, samples, {codec::Filter::kNone, 3});
  auto shuffled = codec::EncodeChunk(info, samples, {codec::Filter::kShuffle, 3});
  REQUIRE(plain);
  REQUIRE(shuffled);
  CHECK(shuffled->size() < plain->size());
}

TEST_CASE("codec: damaged chunks are rejected with a reason, never decoded", "[codec]") {
  std::mt19937_64 rng(3);
  const auto info = MakeInfo(8, 2, 64, SampleType::kUint16);
  const auto samples = Samples(8 * 2 * 64 * 2, rng, 0);
  auto good = codec::EncodeChunk(info, samples, {codec::Filter::kShuffle, 3});
  REQUIRE(good);
  // A length in this process's memory: the header field is 64-bit, std::size_t is 32-bit on armhf.
  const auto header_length = static_cast<std::size_t>(codec::ParseChunkHeader(*good)->header_length);

  SECTION("every single flipped bit is detected") {
    // Flip one bit at a spread of positions across header, view table, descriptor and payload.
    for (std::size_t pos = 0; pos < good->size(); pos += 7) {
      auto bad = *good;
      bad[pos] ^= 0x10;
      auto decoded = codec::DecodeChunk(bad);
      INFO("flipped byte " << pos);
      REQUIRE_FALSE(decoded);
      CHECK((decoded.error().kind() == ErrorKind::kCorrupt || decoded.error().kind() == ErrorKind::kUnsupported));
    }
  }
  SECTION("truncation anywhere") {
    for (std::size_t len : {std::size_t{0}, std::size_t{10}, std::size_t{223}, header_length - 1,
                            header_length, good->size() - 1}) {
      auto decoded = codec::DecodeChunk(std::span<const std::uint8_t>(good->data(), len));
      INFO("length " << len);
      REQUIRE_FALSE(decoded);
      CHECK(decoded.error().kind() == ErrorKind::kCorrupt);
    }
  }
  SECTION("trailing garbage") {
    auto bad = *good;
    bad.push_back(0);
    auto decoded = codec::DecodeChunk(bad);
    REQUIRE_FALSE(decoded);
    CHECK_THAT(decoded.error().message(), Catch::Contains("truncated or padded"));
  }
  SECTION("wrong magic") {
    auto bad = *good;
    bad[0] = 'X';
    auto decoded = codec::DecodeChunk(bad);
    REQUIRE_FALSE(decoded);
    CHECK_THAT(decoded.error().message(), Catch::Contains("wrong magic"));
  }
  SECTION("an unknown major version is refused as unsupported") {
    auto bad = *good;
    bad[8] = 2;
    auto decoded = codec::DecodeChunk(bad);
    REQUIRE_FALSE(decoded);
    CHECK(decoded.error().kind() == ErrorKind::kUnsupported);
    CHECK_THAT(decoded.error().message(), Catch::Contains("version 2."));
  }
  SECTION("a raw length beyond the caller's limit is refused before allocating") {
    auto decoded = codec::DecodeChunk(*good, 100);
    REQUIRE_FALSE(decoded);
    CHECK_THAT(decoded.error().message(), Catch::Contains("exceeds the limit"));
  }
  SECTION("random garbage") {
    for (int i = 0; i < 200; ++i) {
      std::vector<std::uint8_t> junk(rng() % 2048);
      for (auto& b : junk) b = static_cast<std::uint8_t>(rng());
      if (junk.size() >= 8 && i % 2) std::memcpy(junk.data(), "CTAGCHNK", 8);
      REQUIRE_FALSE(codec::DecodeChunk(junk));
    }
  }
}

TEST_CASE("codec: encoding refuses inconsistent input", "[codec]") {
  auto info = MakeInfo(4, 2, 8, SampleType::kUint16);
  std::vector<std::uint8_t> samples(4 * 2 * 8 * 2 - 1);
  auto r = codec::EncodeChunk(info, samples, {});
  REQUIRE_FALSE(r);
  CHECK(r.error().kind() == ErrorKind::kInvalidInput);
  info.views[2].sequence = 999;
  samples.resize(4 * 2 * 8 * 2);
  r = codec::EncodeChunk(info, samples, {});
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message(), Catch::Contains("consecutive"));
}

TEST_CASE("codec: manifest JSON round-trips and names the path of a bad field", "[codec]") {
  codec::Manifest m;
  m.scan_uid = "2.25.1";
  m.study_uid = "2.25.2";
  m.patient_id = "P";
  m.patient_name = "N";
  m.views_acquired = 720;
  m.chunks.push_back({0, 0, 64, 131072, 5000, Digest('a'), Digest('b')});
  m.chunks.push_back({1, 64, 64, 131072, 5100, Digest('c'), Digest('d')});
  auto j = codec::ToJson(m);
  auto back = codec::ManifestFromJson(j);
  REQUIRE(back);
  CHECK(back->chunks.size() == 2);
  CHECK(back->chunks[1].first_view == 64);
  CHECK(codec::ToJson(*back) == j);

  j["chunks"][1]["view_count"] = "sixty-four";
  auto bad = codec::ManifestFromJson(j);
  REQUIRE_FALSE(bad);
  CHECK_THAT(bad.error().message(), Catch::Contains("/chunks/1/view_count"));

  // A chunk's SHA-256 is 64 lowercase hex digits, or the manifest is refused naming it.
  for (const char* bad_hash : {"abc", "ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"}) {
    auto k = codec::ToJson(m);
    k["chunks"][0]["sha256"] = bad_hash;
    auto refused = codec::ManifestFromJson(k);
    REQUIRE_FALSE(refused);
    CHECK_THAT(refused.error().message(), Catch::Contains("/chunks/0/sha256") && Catch::Contains("64 lowercase hex"));
  }
}

TEST_CASE("codec: a manifest count that is a fraction, negative or beyond its type is refused, never cast",
          "[codec]") {
  codec::Manifest m;
  m.scan_uid = "2.25.1";
  m.study_uid = "2.25.2";
  m.chunks.push_back({0, 0, 64, 131072, 5000, Digest('a'), Digest('b')});
  const auto good = codec::ToJson(m);
  struct Case {
    nlohmann::json::json_pointer where;
    nlohmann::json value;
  };
  const std::vector<Case> cases = {
      {"/chunks/0/raw_bytes"_json_pointer, 3.00111e128},  // the input the fuzzer found: UB in a cast
      {"/chunks/0/raw_bytes"_json_pointer, 1.5},
      {"/chunks/0/first_view"_json_pointer, -1},
      {"/chunks/0/view_count"_json_pointer, 4294967296ULL},  // 2^32 into a uint32_t
      {"/chunks/0/index"_json_pointer, -4294967296LL},
      {"/acquisition/views"_json_pointer, -9.0e18},
      {"/version"_json_pointer, 1.0},
  };
  for (const auto& c : cases) {
    auto j = good;
    j[c.where] = c.value;
    CAPTURE(c.where.to_string(), c.value.dump());
    auto bad = codec::ManifestFromJson(j);
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message(), Catch::Contains(c.where.to_string()) && Catch::Contains("integer"));
  }
  auto j = good;
  j["chunks"][0]["raw_bytes"] = 18446744073709551615ULL;  // the largest uint64_t still reads
  auto back = codec::ManifestFromJson(j);
  REQUIRE(back);
  CHECK(back->chunks[0].raw_bytes == 18446744073709551615ULL);
}

TEST_CASE("codec: ManifestText is the manifest JSON's text, byte for byte", "[codec]") {
  codec::Manifest m;
  m.scan_uid = "2.25.1";
  m.study_uid = "2.25.2";
  m.patient_id = "P";
  m.patient_name = "N \n \"chunks\": [] ";  // the key's text inside a value does not mislead it
  m.accession_number = "A1";
  m.incomplete_reason = "line\nbreak";
  m.views_acquired = 720;
  CHECK(codec::ManifestText(m) == codec::ToJson(m).dump(1));  // no chunks
  for (std::uint32_t i = 0; i < 5; ++i) {
    m.chunks.push_back({i, 64ull * i, 64, 131072, 5000u + i, Digest('a'), Digest('b')});
  }
  const std::string text = codec::ManifestText(m);
  CHECK(text == codec::ToJson(m).dump(1));
  auto back = codec::ManifestFromJson(nlohmann::json::parse(text));
  REQUIRE(back);
  REQUIRE(back->chunks.size() == 5);
  CHECK(back->chunks[4].compressed_bytes == 5004);
  // From a head and a list of chunks held elsewhere (the spool's record): the same text.
  codec::Manifest head = m;
  head.chunks.clear();
  std::vector<const codec::ManifestChunk*> list;
  for (const auto& c : m.chunks) list.push_back(&c);
  CHECK(codec::ManifestText(head, list) == text);
}
