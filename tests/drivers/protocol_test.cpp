// The HAL glue: sample types, the scan protocol's JSON form and the driver factory.
#include <catch2/catch.hpp>

#include <limits>

#include "drivers/detector.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;

TEST_CASE("protocol: sample sizes and names") {
  CHECK(SampleSize(SampleType::kUint16) == 2);
  CHECK(SampleSize(SampleType::kFloat32) == 4);
  CHECK(std::string(ToString(SampleType::kUint16)) == "uint16");
  CHECK(std::string(ToString(SampleType::kFloat32)) == "float32");
  ScanProtocol p;
  p.rows = 3;
  p.channels = 10;
  p.views_per_rotation = 7;
  p.rotations = 2;
  CHECK(p.BytesPerView() == 60);
  CHECK(p.RawBytes() == 14 * 60);
}

TEST_CASE("protocol: JSON round trip keeps every field") {
  ScanProtocol p;
  p.views_per_rotation = 720;
  p.rotations = 3;
  p.rows = 16;
  p.channels = 512;
  p.channel_pitch_mm = 0.8;
  p.row_pitch_mm = 1.25;
  p.rotation_time_s = 0.5;
  p.table_start_mm = -120.5;
  p.table_speed_mm_per_rotation = 20;
  p.dose_fraction = 0.1;
  p.unattenuated_counts = 12345.5;
  p.sample_type = SampleType::kFloat32;
  p.seed = std::numeric_limits<std::uint64_t>::max();
  p.real_time = true;
  p.geometry = GeometryKind::kFan;
  p.source_to_isocenter_mm = 541;
  p.source_to_detector_mm = 949.5;
  p.sample_encoding = SampleEncoding::kLineIntegral;
  p.line_integral_slope = 1.0 / 3000;
  p.line_integral_intercept = -0.75;

  const nlohmann::json j = ToJson(p);
  CHECK(j.size() == 20);
  CHECK(j.at("geometry") == "fan");
  CHECK(j.at("sample_encoding") == "line_integral");
  CHECK(j.at("sample_type") == "float32");
  // Through text, as a manifest travels.
  auto back = ProtocolFromJson(nlohmann::json::parse(j.dump()));
  REQUIRE(back);
  CHECK(back->views_per_rotation == 720);
  CHECK(back->rotations == 3);
  CHECK(back->rows == 16);
  CHECK(back->channels == 512);
  CHECK(back->channel_pitch_mm == 0.8);
  CHECK(back->row_pitch_mm == 1.25);
  CHECK(back->rotation_time_s == 0.5);
  CHECK(back->table_start_mm == -120.5);
  CHECK(back->table_speed_mm_per_rotation == 20);
  CHECK(back->dose_fraction == 0.1);
  CHECK(back->unattenuated_counts == 12345.5);
  CHECK(back->sample_type == SampleType::kFloat32);
  CHECK(back->seed == std::numeric_limits<std::uint64_t>::max());
  CHECK(back->real_time);
  CHECK(back->geometry == GeometryKind::kFan);
  CHECK(back->source_to_isocenter_mm == 541);
  CHECK(back->source_to_detector_mm == 949.5);
  CHECK(back->sample_encoding == SampleEncoding::kLineIntegral);
  CHECK(back->line_integral_slope == 1.0 / 3000);
  CHECK(back->line_integral_intercept == -0.75);
  CHECK(back->DegreesPerRotation() == 360);
  CHECK(back->DetectorChannelPitchMm() == Approx(0.8 * 949.5 / 541));
  CHECK(ToJson(*back) == j);
}

TEST_CASE("protocol: a fan beam needs the detector beyond the isocenter") {
  auto bad = ProtocolFromJson(nlohmann::json{{"geometry", "fan"}, {"source_to_detector_mm", 500}});
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().find("/source_to_detector_mm: must exceed source_to_isocenter_mm") != std::string::npos);
  auto wrong = ProtocolFromJson(nlohmann::json{{"geometry", "cone"}});
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().message().find("\"parallel\" or \"fan\"") != std::string::npos);
  auto encoding = ProtocolFromJson(nlohmann::json{{"sample_encoding", "log"}});
  REQUIRE_FALSE(encoding);
  CHECK(encoding.error().message().find("/sample_encoding") != std::string::npos);
}

TEST_CASE("protocol: absent keys keep their defaults") {
  auto p = ProtocolFromJson(nlohmann::json{{"rows", 2}});
  REQUIRE(p);
  CHECK(p->geometry == GeometryKind::kParallel);
  CHECK(p->sample_encoding == SampleEncoding::kCounts);
  CHECK(p->source_to_isocenter_mm == 570);
  CHECK(p->source_to_detector_mm == 1040);
  CHECK(p->rows == 2);
  CHECK(p->channels == ScanProtocol{}.channels);
  CHECK(p->sample_type == SampleType::kUint16);
}

TEST_CASE("protocol: bad values name the key, the expectation and what was found") {
  auto expect_error = [](const nlohmann::json& j, const std::string& fragment) {
    auto p = ProtocolFromJson(j);
    REQUIRE_FALSE(p);
    CHECK(p.error().kind() == ErrorKind::kInvalidInput);
    INFO(p.error().message());
    CHECK(p.error().message().find(fragment) != std::string::npos);
  };
  expect_error(nlohmann::json{{"rows", "four"}}, "/rows: expected an integer from 1 to 1024, found string \"four\"");
  expect_error(nlohmann::json{{"rows", 0}}, "/rows: expected an integer from 1 to 1024, found 0");
  expect_error(nlohmann::json{{"channels", -5}}, "/channels: expected an integer");
  expect_error(nlohmann::json{{"views_per_rotation", 1.5}}, "/views_per_rotation: expected an integer");
  expect_error(nlohmann::json{{"dose_fraction", 1.5}}, "/dose_fraction: expected a number > 0 and <= 1, found 1.5");
  expect_error(nlohmann::json{{"dose_fraction", 0}}, "/dose_fraction: expected a number > 0 and <= 1, found 0");
  expect_error(nlohmann::json{{"sample_type", "int8"}}, "/sample_type: expected \"uint16\" or \"float32\", found string \"int8\"");
  expect_error(nlohmann::json{{"geometry", "cone"}}, "/geometry: expected \"parallel\" or \"fan\"");
  expect_error(nlohmann::json{{"real_time", 1}}, "/real_time: expected true or false, found 1");
  expect_error(nlohmann::json{{"seed", -1}}, "/seed: expected an integer");
  expect_error(nlohmann::json{{"rowz", 4}}, "/rowz: unknown scan protocol key");
  expect_error(nlohmann::json::array(), "expected a JSON object, found an array");
}

TEST_CASE("protocol: MakeDetector rejects an unknown driver and lists the built-in ones") {
  auto d = MakeDetector("acme-9000", nlohmann::json::object());
  REQUIRE_FALSE(d);
  CHECK(d.error().kind() == ErrorKind::kInvalidInput);
  CHECK(d.error().message().find("\"acme-9000\"") != std::string::npos);
#ifdef CTAGENT_DRIVER_SIM
  CHECK(d.error().message().find("built-in drivers in this build: sim") != std::string::npos);
  auto sim = MakeDetector("sim", nlohmann::json{{"model", "bench-1"}});
  REQUIRE(sim);
  CHECK((*sim)->Info().name == "sim");
  CHECK((*sim)->Info().model == "bench-1");
  auto bad = MakeDetector("sim", nlohmann::json{{"modle", "x"}});
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().find("/modle: unknown key") != std::string::npos);
#endif
}
