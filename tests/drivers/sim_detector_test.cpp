// The simulated detector: geometry and ordering of views, determinism per seed, counting
// statistics, real-time pacing and Abort, and Arm's capability checks.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <numbers>
#include <thread>

#include "config/config.hpp"
#include "drivers/sim/phantom.hpp"
#include "drivers/sim/sim_detector.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;
using namespace ctagent::drivers::sim;

namespace {

std::unique_ptr<SimDetector> MakeSim() {
  auto d = SimDetector::Create(nlohmann::json::object());
  REQUIRE(d);
  return std::move(d).value();
}

ScanProtocol SmallSimProtocol() {
  ScanProtocol p;
  p.views_per_rotation = 90;
  p.rotations = 2;
  p.rows = 2;
  p.channels = 64;
  p.channel_pitch_mm = 6.0;  // 64 channels covering +-190 mm: the whole body and some air
  return p;
}

std::uint16_t Sample(const View& v, std::uint32_t channels, std::uint32_t row, std::uint32_t channel) {
  std::uint16_t s = 0;
  std::memcpy(&s, v.samples.data() + (std::size_t{row} * channels + channel) * 2, 2);
  return s;
}

std::vector<View> AllViews(SimDetector& d, const ScanProtocol& p) {
  REQUIRE(d.Arm(p));
  std::vector<View> views;
  for (std::uint64_t i = 0; i <= p.TotalViews(); ++i) {  // bounded: one more than expected
    auto v = d.NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    views.push_back(std::move(**v));
  }
  return views;
}

struct Moments {
  double mean = 0;
  double variance = 0;
};

Moments MomentsOf(const std::vector<double>& x) {
  Moments m;
  for (double v : x) m.mean += v;
  m.mean /= static_cast<double>(x.size());
  for (double v : x) m.variance += (v - m.mean) * (v - m.mean);
  m.variance /= static_cast<double>(x.size() - 1);
  return m;
}

// Samples of the channels that only see air (|s| > 170 mm) over a whole small scan.
std::vector<double> AirSamples(double dose_fraction) {
  ScanProtocol p = SmallSimProtocol();
  p.dose_fraction = dose_fraction;
  p.rows = 8;
  p.views_per_rotation = 200;
  p.rotations = 1;
  auto d = MakeSim();
  std::vector<double> out;
  for (const View& v : AllViews(*d, p)) {
    for (std::uint32_t r = 0; r < p.rows; ++r) {
      for (std::uint32_t c : {0u, 1u, 2u, 61u, 62u, 63u}) out.push_back(Sample(v, p.channels, r, c));
    }
  }
  return out;
}

}  // namespace

TEST_CASE("sim: views arrive in order with the protocol's angles, table positions and timestamps") {
  ScanProtocol p = SmallSimProtocol();
  p.table_start_mm = -20;
  p.table_speed_mm_per_rotation = 10;
  p.rotation_time_s = 0.5;
  auto d = MakeSim();
  const std::vector<View> views = AllViews(*d, p);
  REQUIRE(views.size() == 180);
  for (std::size_t i = 0; i < views.size(); ++i) {
    const View& v = views[i];
    CHECK(v.sequence == i);
    CHECK(v.gantry_angle_deg == Approx(i * 2.0));
    CHECK(v.table_position_mm == Approx(-20.0 + 10.0 * static_cast<double>(i) / 90.0));
    CHECK(v.timestamp_us == std::llround(static_cast<double>(i) * 1e6 / 180.0));
    CHECK(v.samples.size() == p.BytesPerView());
    CHECK(v.status_flags == kViewOk);
  }
  CHECK(views.back().gantry_angle_deg == Approx(358.0));
  // After the last view the scan stays finished.
  auto after = d->NextView();
  REQUIRE(after);
  CHECK_FALSE(after->has_value());
}

TEST_CASE("sim: the same seed gives the same bytes, another seed other bytes") {
  ScanProtocol p = SmallSimProtocol();
  p.seed = 42;
  auto a = MakeSim();
  auto b = MakeSim();
  const auto va = AllViews(*a, p);
  const auto vb = AllViews(*b, p);
  REQUIRE(va.size() == vb.size());
  for (std::size_t i = 0; i < va.size(); ++i) CHECK(va[i].samples == vb[i].samples);

  // Re-arming the same detector replays the scan exactly.
  const auto again = AllViews(*a, p);
  REQUIRE(again.size() == va.size());
  CHECK(again.back().samples == va.back().samples);

  p.seed = 43;
  const auto vc = AllViews(*b, p);
  REQUIRE(vc.size() == va.size());
  std::size_t differing = 0;
  for (std::size_t i = 0; i < va.size(); ++i) differing += va[i].samples != vc[i].samples ? 1 : 0;
  CHECK(differing == va.size());
}

TEST_CASE("sim: mean counts follow the phantom's line integrals, also after half a turn") {
  ScanProtocol p = SmallSimProtocol();
  p.rows = 64;  // rows see the same ray: average them to beat the noise
  p.views_per_rotation = 4;
  p.rotations = 2;  // views 4..7 are views 0..3 seen from the opposite side
  auto d = MakeSim();
  const auto views = AllViews(*d, p);
  REQUIRE(views.size() == 8);
  const double i0 = p.unattenuated_counts * p.dose_fraction;
  for (const View& v : views) {
    const double theta = v.gantry_angle_deg * std::numbers::pi / 180.0;
    for (std::uint32_t c = 0; c < p.channels; c += 3) {
      const double s = (c - (p.channels - 1) / 2.0) * p.channel_pitch_mm;
      double sum = 0;
      for (std::uint32_t r = 0; r < p.rows; ++r) sum += Sample(v, p.channels, r, c);
      const double mean = sum / p.rows;
      const double expected = i0 * std::exp(-PhantomLineIntegral(theta, s));
      INFO("view " << v.sequence << " channel " << c << " expected " << expected << " measured " << mean);
      // 5 standard errors of the mean of 64 Poisson samples, plus a count for tiny means.
      CHECK(std::fabs(mean - expected) <= 5.0 * std::sqrt(expected / p.rows) + 1.0);
    }
  }
}

TEST_CASE("sim: unattenuated channels are Poisson with mean I0 * dose") {
  for (double dose : {1.0, 0.25}) {
    const auto samples = AirSamples(dose);
    REQUIRE(samples.size() == 200u * 8 * 6);
    const Moments m = MomentsOf(samples);
    const double expected = 60000 * dose;
    INFO("dose " << dose << " mean " << m.mean << " variance " << m.variance);
    CHECK(m.mean == Approx(expected).epsilon(0.01));
    CHECK(m.variance == Approx(expected).epsilon(0.06));
  }
}

TEST_CASE("sim: the Poisson sampler is right for small and large means") {
  SimRng rng(7);
  // Each method (Knuth, PTRS, moment-matched normal) and both sides of each switch.
  for (double mean : {0.3, 3.0, 9.9, 10.0, 37.0, 255.9, 256.0, 400.0, 5000.0, 60000.0}) {
    std::vector<double> x;
    for (int i = 0; i < 100000; ++i) x.push_back(static_cast<double>(SamplePoisson(mean, rng)));
    const Moments m = MomentsOf(x);
    INFO("mean " << mean << " measured mean " << m.mean << " variance " << m.variance);
    CHECK(m.mean == Approx(mean).epsilon(0.02));
    CHECK(m.variance == Approx(mean).epsilon(0.04));
  }
  CHECK(SamplePoisson(0.0, rng) == 0);
}

TEST_CASE("sim: the ziggurat draws a standard normal, tails included") {
  // 1e6 draws: mean 0 and variance 1 within 5 SD of their sampling error; P(Z > 2) = 0.02275
  // and P(|Z| > 3.4426) = 5.76e-4 (the ziggurat's tail, drawn by a separate method) within
  // about 4 SD.
  SimRng rng(11);
  constexpr int kDraws = 1000000;
  double sum = 0;
  double sum_sq = 0;
  int above_2 = 0;
  int in_tail = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double z = SampleStandardNormal(rng);
    sum += z;
    sum_sq += z * z;
    if (z > 2.0) ++above_2;
    if (std::abs(z) > 3.442619855899) ++in_tail;
  }
  const double mean = sum / kDraws;
  const double variance = sum_sq / kDraws - mean * mean;
  INFO("mean " << mean << " variance " << variance << " P(Z>2) " << above_2 / 1e6 << " tail " << in_tail / 1e6);
  CHECK(std::abs(mean) < 0.005);
  CHECK(std::abs(variance - 1.0) < 0.007);
  CHECK(std::abs(above_2 / 1e6 - 0.02275) < 0.0006);
  CHECK(std::abs(in_tail / 1e6 - 5.76e-4) < 1e-4);
}

TEST_CASE("sim: relative noise grows as the dose falls") {
  double previous = 0;
  double full = 0;
  for (double dose : {1.0, 0.5, 0.2, 0.1}) {
    const Moments m = MomentsOf(AirSamples(dose));
    const double relative = std::sqrt(m.variance) / m.mean;
    INFO("dose " << dose << " relative noise " << relative);
    CHECK(relative > previous);
    if (dose == 1.0) full = relative;
    previous = relative;
  }
  // Poisson: relative noise scales as 1 / sqrt(dose).
  CHECK(previous / full == Approx(std::sqrt(10.0)).epsilon(0.08));
}

TEST_CASE("sim: counts above the ADC ceiling are clamped and flagged") {
  ScanProtocol p = SmallSimProtocol();
  p.unattenuated_counts = 80000;
  p.rotations = 1;
  p.views_per_rotation = 2;
  auto d = MakeSim();
  const auto views = AllViews(*d, p);
  REQUIRE(views.size() == 2);
  CHECK((views[0].status_flags & kViewSaturated) != 0);
  CHECK(Sample(views[0], p.channels, 0, 0) == 65535);
  // Behind the body the counts stay below the ceiling.
  CHECK(Sample(views[0], p.channels, 0, 32) < 65535);
}

TEST_CASE("sim: real-time pacing follows the view rate") {
  ScanProtocol p = SmallSimProtocol();
  p.real_time = true;
  p.views_per_rotation = 50;
  p.rotation_time_s = 0.5;  // 100 views/s
  p.rotations = 1;
  auto d = MakeSim();
  const auto t0 = std::chrono::steady_clock::now();
  const auto views = AllViews(*d, p);
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(views.size() == 50);
  CHECK(elapsed >= std::chrono::milliseconds(480));  // view 49 is due 490 ms after view 0
  CHECK(elapsed < std::chrono::seconds(5));
}

TEST_CASE("sim: Abort from another thread ends a paced NextView promptly") {
  ScanProtocol p = SmallSimProtocol();
  p.real_time = true;
  p.views_per_rotation = 2;
  p.rotation_time_s = 60;  // a view every 30 s: NextView blocks unless Abort wakes it
  auto d = MakeSim();
  REQUIRE(d->Arm(p));
  auto first = d->NextView();  // view 0 is due at once
  REQUIRE(first);
  REQUIRE(first->has_value());

  const auto t0 = std::chrono::steady_clock::now();
  auto blocked = std::async(std::launch::async, [&d] { return d->NextView(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(blocked.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);
  d->Abort();
  REQUIRE(blocked.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  auto result = blocked.get();
  REQUIRE_FALSE(result);
  CHECK(result.error().kind() == ErrorKind::kCancelled);

  // Stays cancelled until armed again; a new Arm starts a fresh scan.
  auto later = d->NextView();
  REQUIRE_FALSE(later);
  CHECK(later.error().kind() == ErrorKind::kCancelled);
  p.real_time = false;
  REQUIRE(d->Arm(p));
  auto fresh = d->NextView();
  REQUIRE(fresh);
  REQUIRE(fresh->has_value());
  CHECK((*fresh)->sequence == 0);
}

TEST_CASE("sim: Arm checks the protocol against the detector's capabilities") {
  auto d = MakeSim();
  auto not_armed = d->NextView();
  REQUIRE_FALSE(not_armed);
  CHECK(not_armed.error().kind() == ErrorKind::kInvalidInput);
  CHECK(not_armed.error().message().find("before a successful Arm()") != std::string::npos);

  const DetectorInfo info = d->Info();
  CHECK(info.name == "sim");
  CHECK(info.max_rows == 64);
  CHECK(info.max_channels == 2048);

  auto arm_error = [&d](const ScanProtocol& p) {
    auto s = d->Arm(p);
    REQUIRE_FALSE(s);
    return s.error();
  };
  ScanProtocol p;
  p.rows = 65;
  auto e = arm_error(p);
  CHECK(e.kind() == ErrorKind::kInvalidInput);
  CHECK(e.message().find("65 rows; this detector has 1 to 64") != std::string::npos);

  p = ScanProtocol{};
  p.channels = 4096;
  e = arm_error(p);
  CHECK(e.message().find("4096 channels; this detector has 1 to 2048") != std::string::npos);

  p = ScanProtocol{};
  p.sample_type = SampleType::kFloat32;
  e = arm_error(p);
  CHECK(e.kind() == ErrorKind::kUnsupported);
  CHECK(e.message().find("float32") != std::string::npos);

  p = ScanProtocol{};
  p.dose_fraction = 0;
  e = arm_error(p);
  CHECK(e.message().find("dose_fraction") != std::string::npos);

  p = ScanProtocol{};
  p.real_time = true;
  p.rotation_time_s = 0.001;
  e = arm_error(p);
  CHECK(e.message().find("lengthen rotation_time_s") != std::string::npos);

  // A failed Arm leaves the detector unarmed.
  auto v = d->NextView();
  REQUIRE_FALSE(v);
  CHECK(v.error().kind() == ErrorKind::kInvalidInput);

  auto bad_options = SimDetector::Create(nlohmann::json{{"model", 5}});
  REQUIRE_FALSE(bad_options);
  CHECK(bad_options.error().message().find("/model: expected a string, found 5") != std::string::npos);
  auto not_object = SimDetector::Create(nlohmann::json("x"));
  REQUIRE_FALSE(not_object);
}

namespace {

// A small fan-beam protocol: the default distances (570 / 1040 mm), 160 channels of 2.4 mm at
// isocenter (a 384 mm field), 4 rows of 1 mm; line-integral samples with I0 = 1e9 make the
// noise (~1e-4) and the quantisation (2.4e-4) small against the checks below.
ScanProtocol FanProtocol() {
  ScanProtocol p;
  p.geometry = GeometryKind::kFan;
  p.views_per_rotation = 36;
  p.rows = 4;
  p.channels = 160;
  p.channel_pitch_mm = 2.4;
  p.row_pitch_mm = 1.0;
  p.unattenuated_counts = 1e9;
  p.sample_encoding = SampleEncoding::kLineIntegral;
  return p;
}

double LineIntegralSample(const View& v, const ScanProtocol& p, std::uint32_t row, std::uint32_t channel) {
  return p.line_integral_slope * Sample(v, p.channels, row, channel) + p.line_integral_intercept;
}

}  // namespace

TEST_CASE("sim fan beam: every ray is the parallel ray (theta = beta - gamma, s = R sin gamma) of the chest") {
  // Rows 1 and 2 are 0.5 mm either side of z = 0, where the 3-D chest is the 2-D one plus the
  // mediastinum (a 12 x 60 mm ellipse at (0, 5), 50 HU over 40): expected = 2-D chest + that.
  const ScanProtocol p = FanProtocol();
  auto d = MakeSim();
  const auto views = AllViews(*d, p);
  REQUIRE(views.size() == 36);
  const double r = p.source_to_isocenter_mm;
  const double d_gamma = p.channel_pitch_mm / r;
  const double mediastinum_dmu = HuToMu(50) - HuToMu(40);
  int checked = 0;
  for (std::size_t i = 0; i < views.size(); i += 5) {
    const View& v = views[i];
    CHECK(v.gantry_angle_deg == Approx(10.0 * static_cast<double>(i)));  // 360 degrees per rotation
    const double beta = v.gantry_angle_deg * std::numbers::pi / 180;
    for (std::uint32_t c = 0; c < p.channels; c += 7) {
      const double gamma = (c - (p.channels - 1) / 2.0) * d_gamma;
      const double theta = beta - gamma;
      const double s = r * std::sin(gamma);
      // The mediastinum's chord (Shepp-Logan formula, centre (0, 5), semi-axes 12 x 60).
      const double sc = s - 5.0 * std::sin(theta);
      const double r2 = 144.0 * std::cos(theta) * std::cos(theta) + 3600.0 * std::sin(theta) * std::sin(theta);
      const double chord = r2 > sc * sc ? 2.0 * 12.0 * 60.0 * std::sqrt(r2 - sc * sc) / r2 : 0.0;
      const double expected = PhantomLineIntegral(theta, s) + chord * mediastinum_dmu;
      for (std::uint32_t row : {1u, 2u}) {
        INFO("view " << i << " channel " << c << " row " << row);
        CHECK(LineIntegralSample(v, p, row, c) == Approx(expected).margin(2e-3));
        ++checked;
      }
    }
  }
  CHECK(checked == 8 * 23 * 2);
}

TEST_CASE("sim fan beam: helical table positions, determinism per seed, and lesions change only their rays") {
  ScanProtocol p = FanProtocol();
  p.unattenuated_counts = 60000;
  p.rotations = 2;
  p.table_start_mm = -5;
  p.table_speed_mm_per_rotation = 4;
  auto a = MakeSim();
  const auto va = AllViews(*a, p);
  REQUIRE(va.size() == 72);
  CHECK(va[36].gantry_angle_deg == Approx(360.0));
  CHECK(va[54].table_position_mm == Approx(-5.0 + 4.0 * 1.5));
  const auto again = AllViews(*MakeSim(), p);
  for (std::size_t i = 0; i < va.size(); ++i) CHECK(va[i].samples == again[i].samples);

  // A 30 mm consolidation in the left lung at z = 0: the ray through its centre sees it
  // (p rises by ~30 mm x (mu(35) - mu(-850))), a ray through the other lung does not change.
  auto with_lesion = SimDetector::Create(nlohmann::json{
      {"lesions", {{{"kind", "consolidation"}, {"x_mm", 65}, {"y_mm", 5}, {"z_mm", 0}, {"diameter_mm", 30}}}}});
  REQUIRE(with_lesion);
  ScanProtocol axial = FanProtocol();
  const auto lesion_views = AllViews(**with_lesion, axial);
  const auto plain_views = AllViews(*MakeSim(), axial);
  // View 0: source at (0, -570); the ray to (65, 5) has tan(gamma) = 65 / 575 -> channel:
  const double gamma = std::atan2(65.0, 575.0);
  const auto channel = static_cast<std::uint32_t>(std::lround(gamma / (axial.channel_pitch_mm / 570.0) + 79.5));
  const double rise = LineIntegralSample(lesion_views[0], axial, 1, channel) -
                      LineIntegralSample(plain_views[0], axial, 1, channel);
  CHECK(rise == Approx(30.0 * (HuToMu(35) - HuToMu(-850))).epsilon(0.1));
  const auto mirror = static_cast<std::uint32_t>(159 - channel);
  CHECK(Sample(lesion_views[0], axial.channels, 1, mirror) == Sample(plain_views[0], axial.channels, 1, mirror));
}

TEST_CASE("sim: dead channels read zero and are flagged, channel gains are fixed per detector") {
  ScanProtocol p = SmallSimProtocol();
  p.rotations = 1;
  p.rows = 8;
  p.views_per_rotation = 100;
  auto d = SimDetector::Create(nlohmann::json{{"dead_channels", {5, 40}}, {"channel_gain_sd", 0.05}});
  REQUIRE(d);
  const auto views = AllViews(**d, p);
  REQUIRE(views.size() == 100);
  double air_first = 0;
  double air_last = 0;
  for (const View& v : views) {
    CHECK((v.status_flags & kViewDeadChannel) != 0);
    for (std::uint32_t r = 0; r < p.rows; ++r) {
      CHECK(Sample(v, p.channels, r, 5) == 0);
      CHECK(Sample(v, p.channels, r, 40) == 0);
      air_first += Sample(v, p.channels, r, 0);
      air_last += Sample(v, p.channels, r, 63);
    }
  }
  // Air channels: the mean is I0 x gain; the two gains differ by more than the noise of the
  // means (I0 / sqrt(800) ~ 2 counts, i.e. 3e-5 relative) and stay within 5 SD of 1.
  const double g_first = air_first / 800.0 / 60000.0;
  const double g_last = air_last / 800.0 / 60000.0;
  CHECK(std::abs(g_first - g_last) > 1e-3);
  CHECK(std::abs(g_first - 1.0) < 0.25);
  // The same gains on another detector and seed: they belong to the detector, not the scan.
  auto other = SimDetector::Create(nlohmann::json{{"channel_gain_sd", 0.05}});
  REQUIRE(other);
  p.seed = 99;
  double other_first = 0;
  for (const View& v : AllViews(**other, p)) {
    CHECK((v.status_flags & kViewDeadChannel) == 0);
    for (std::uint32_t r = 0; r < p.rows; ++r) other_first += Sample(v, p.channels, r, 0);
  }
  CHECK(other_first / 800.0 / 60000.0 == Approx(g_first).epsilon(1e-3));
}

TEST_CASE("sim: lesion and detector-effect options are checked with the offending key") {
  auto expect = [](const nlohmann::json& options, const std::string& fragment) {
    auto d = SimDetector::Create(options);
    REQUIRE_FALSE(d);
    INFO(d.error().message());
    CHECK(d.error().message().find(fragment) != std::string::npos);
  };
  expect({{"lesions", {{{"kind", "tumour"}}}}}, "/lesions/0/kind: expected \"ground_glass\" or \"consolidation\"");
  expect({{"lesions", {{{"diameter_mm", 0}}}}}, "/lesions/0/diameter_mm: expected a number from");
  expect({{"lesions", {{{"size", 3}}}}}, "/lesions/0/size: unknown lesion key");
  expect({{"lesions", 3}}, "/lesions: expected an array");
  expect({{"dead_channels", {-1}}}, "/dead_channels: expected channel numbers");
  expect({{"channel_gain_sd", 2}}, "/channel_gain_sd: expected a number from 0");
  expect({{"speed", 2}}, "/speed: unknown key");

  auto d = MakeSim();
  ScanProtocol p = FanProtocol();
  p.source_to_detector_mm = 500;
  auto s = d->Arm(p);
  REQUIRE_FALSE(s);
  CHECK(s.error().message().find("source_to_isocenter_mm < source_to_detector_mm") != std::string::npos);
  p = FanProtocol();
  p.channel_pitch_mm = 20;
  s = d->Arm(p);
  REQUIRE_FALSE(s);
  CHECK(s.error().message().find("too wide") != std::string::npos);
}

TEST_CASE("sim: the agent's default scan is one axial rotation of the 16-slice fan protocol, and the sim arms it") {
  const ScanProtocol d = ctagent::config::DefaultScanProtocol();
  const ScanProtocol helical = SixteenSliceFanProtocol();
  CHECK(d.geometry == GeometryKind::kFan);
  CHECK(d.rows == 16);
  CHECK(d.channels == 896);
  CHECK(d.views_per_rotation == 1160);
  CHECK(d.ViewRateHz() == Approx(2320.0));
  for (double ScanProtocol::*field : {&ScanProtocol::source_to_isocenter_mm, &ScanProtocol::source_to_detector_mm,
                            &ScanProtocol::channel_pitch_mm, &ScanProtocol::row_pitch_mm, &ScanProtocol::rotation_time_s}) {
    CHECK(d.*field == helical.*field);
  }
  CHECK(d.rows == helical.rows);
  CHECK(d.channels == helical.channels);
  CHECK(d.views_per_rotation == helical.views_per_rotation);
  CHECK(d.table_speed_mm_per_rotation == 0.0);  // axial: configs that leave it out get a still table
  CHECK(helical.table_speed_mm_per_rotation / (d.rows * d.row_pitch_mm) == Approx(0.9375));
  CHECK(ctagent::config::AgentConfig{}.protocol.channels == 896);
  auto sim = MakeSim();
  REQUIRE(sim->Arm(d));
  auto v = sim->NextView();
  REQUIRE(v);
  REQUIRE(v->has_value());
  CHECK((**v).samples.size() == 16u * 896 * 2);
}
