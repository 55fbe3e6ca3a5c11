// PluginDetector and the loader: sim through the C ABI delivers the same bytes as sim called
// directly; load errors name the file and the problem; the adapter catches faulty drivers;
// Abort reaches a C driver blocked in next_view.
#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <thread>

#include "drivers/abi/c_abi.hpp"
#include "drivers/plugin/plugin_detector.hpp"
#include "drivers/sim/sim_abi.hpp"
#include "drivers/sim/sim_detector.hpp"
#include "tests/drivers/read_views.hpp"
#include "tests/support/process.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;
using ctagent::drivers::testing::ReadAll;

namespace {

ScanProtocol SmallPluginProtocol() {
  ScanProtocol p;
  p.views_per_rotation = 45;
  p.rotations = 2;
  p.rows = 2;
  p.channels = 64;
  p.channel_pitch_mm = 6.0;
  p.seed = 7;
  return p;
}

// A small helical fan-beam protocol: only ABI 1.1 carries it.
ScanProtocol SmallFan() {
  ScanProtocol p = SmallPluginProtocol();
  p.geometry = GeometryKind::kFan;
  p.views_per_rotation = 60;
  p.rows = 4;
  p.channels = 96;
  p.channel_pitch_mm = 5.0;
  p.row_pitch_mm = 2.0;
  p.source_to_isocenter_mm = 600.0;
  p.source_to_detector_mm = 1100.0;
  p.table_start_mm = -6.0;
  p.table_speed_mm_per_rotation = 6.0;
  return p;
}

void CheckSameViews(const std::vector<View>& got, const std::vector<View>& expected) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].sequence == expected[i].sequence);
    CHECK(got[i].gantry_angle_deg == expected[i].gantry_angle_deg);
    CHECK(got[i].table_position_mm == expected[i].table_position_mm);
    CHECK(got[i].timestamp_us == expected[i].timestamp_us);
    CHECK(got[i].samples == expected[i].samples);
  }
}

}  // namespace

TEST_CASE("plugin: ABI 1.1 carries fan-beam helical count and line-integral protocols, bytes as sim called directly") {
  auto loaded = MakeDetector("plugin", nlohmann::json{{"path", CTAGENT_SIM_DRIVER_SO}, {"isolation", "in_process"}});
  REQUIRE(loaded);
  auto isolated = MakeDetector("plugin", nlohmann::json{{"path", CTAGENT_SIM_DRIVER_SO}});  // in ctagent-driver-host
  REQUIRE(isolated);
  for (const SampleEncoding encoding : {SampleEncoding::kCounts, SampleEncoding::kLineIntegral}) {
    ScanProtocol p = SmallFan();
    p.sample_encoding = encoding;
    p.line_integral_slope = 1.0 / 2048;  // not the default: it must cross the ABI
    p.line_integral_intercept = -0.5;
    INFO(ToString(encoding));
    auto direct = sim::SimDetector::Create(nlohmann::json::object());
    REQUIRE(direct);
    const std::vector<View> expected = ReadAll(**direct, p);
    REQUIRE(expected.size() == p.TotalViews());
    // Helical: the table moves, so a protocol that lost its 1.1 fields would not match.
    CHECK(expected.back().table_position_mm > expected.front().table_position_mm);
    CheckSameViews(ReadAll(**loaded, p), expected);
    CheckSameViews(ReadAll(**isolated, p), expected);
  }
  // The C ABI round trip keeps every 1.1 field.
  ScanProtocol p = SmallFan();
  p.sample_encoding = SampleEncoding::kLineIntegral;
  p.line_integral_slope = 0.25;
  p.line_integral_intercept = -3.0;
  const ctagent_protocol c = abi::ToC(p);
  CHECK(c.struct_size == sizeof(ctagent_protocol));
  CHECK(c.geometry == CTAGENT_GEOMETRY_FAN);
  auto back = abi::FromC(&c);
  REQUIRE(back);
  CHECK(ToJson(*back) == ToJson(p));
  // A caller of ABI 1.0 (the shorter struct) means parallel beam and counts.
  ctagent_protocol old = c;
  old.struct_size = static_cast<std::uint32_t>(CTAGENT_PROTOCOL_SIZE_1_0);
  old.geometry = CTAGENT_GEOMETRY_PARALLEL;
  auto parallel = abi::FromC(&old);
  REQUIRE(parallel);
  CHECK(parallel->geometry == GeometryKind::kParallel);
  CHECK(parallel->sample_encoding == SampleEncoding::kCounts);
  old.geometry = CTAGENT_GEOMETRY_FAN;
  auto refused = abi::FromC(&old);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message() == "geometry 2 is not supported by an ABI 1.0 protocol");
}

TEST_CASE("plugin: a driver built for ABI 1.0 is refused fan-beam and line-integral protocols, saying why") {
  // The built-in sim's table as a 1.0 driver would declare it.
  static ctagent_driver_api table_1_0 = *sim::SimDriverApi();
  table_1_0.abi_minor = 0;
  auto lib = plugin::DriverLibrary::BuiltIn(&table_1_0, "sim-1.0");
  REQUIRE(lib);
  auto d = plugin::PluginDetector::Open(*lib, nlohmann::json::object());
  REQUIRE(d);
  ScanProtocol fan = SmallFan();
  auto s = (*d)->Arm(fan);
  REQUIRE_FALSE(s);
  CHECK(s.error().kind() == ErrorKind::kUnsupported);
  CHECK(s.error().message().find("was built for driver ABI 1.0, which carries parallel-beam count protocols only; "
                                 "rebuild it against ctagent_driver.h 1.1") != std::string::npos);
  ScanProtocol line_integrals = SmallPluginProtocol();
  line_integrals.sample_encoding = SampleEncoding::kLineIntegral;
  CHECK_FALSE((*d)->Arm(line_integrals));
  // Parallel-beam counts still work with it.
  CHECK(ReadAll(**d, SmallPluginProtocol()).size() == SmallPluginProtocol().TotalViews());
}

TEST_CASE("plugin: sim through the C ABI (.so and built-in table) gives the bytes of sim called directly") {
  const ScanProtocol p = SmallPluginProtocol();
  auto direct = sim::SimDetector::Create(nlohmann::json::object());
  REQUIRE(direct);
  const std::vector<View> expected = ReadAll(**direct, p);
  REQUIRE(expected.size() == p.TotalViews());

  auto loaded = MakeDetector("plugin", nlohmann::json{{"path", CTAGENT_SIM_DRIVER_SO}});
  REQUIRE(loaded);
  auto builtin_lib = plugin::DriverLibrary::BuiltIn(sim::SimDriverApi(), "sim");
  REQUIRE(builtin_lib);
  auto builtin = plugin::PluginDetector::Open(*builtin_lib, nlohmann::json{{"model", "abi-model"}});
  REQUIRE(builtin);
  CHECK((*builtin)->Info().model == "abi-model");
  CHECK((*loaded)->Info().max_channels == sim::kSimMaxChannels);

  for (Detector* d : {loaded->get(), static_cast<Detector*>(builtin->get())}) {
    const std::vector<View> got = ReadAll(*d, p);
    REQUIRE(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i].sequence == expected[i].sequence);
      CHECK(got[i].gantry_angle_deg == expected[i].gantry_angle_deg);
      CHECK(got[i].table_position_mm == expected[i].table_position_mm);
      CHECK(got[i].timestamp_us == expected[i].timestamp_us);
      CHECK(got[i].samples == expected[i].samples);
    }
    // After the end, and again after a re-arm, it behaves like a fresh scan.
    auto end = d->NextView();
    REQUIRE(end);
    CHECK_FALSE(end->has_value());
    CHECK(ReadAll(*d, p).size() == expected.size());
  }
  auto health = (*builtin)->Health();
  REQUIRE(health);
  CHECK(health->views_delivered == 2 * p.TotalViews());
}

TEST_CASE("plugin: arm errors carry the driver's own text") {
  auto d = MakeDetector("plugin", nlohmann::json{{"path", CTAGENT_C_EXAMPLE_SO}});
  REQUIRE(d);
  ScanProtocol p = SmallPluginProtocol();
  p.rows = 17;
  auto s = (*d)->Arm(p);
  REQUIRE_FALSE(s);
  CHECK(s.error().kind() == ErrorKind::kInvalidInput);
  CHECK(s.error().message().find("arm failed (CTAGENT_E_INVALID): arm: 17 rows asked, this detector has 1 to 16") !=
        std::string::npos);
  CHECK((*d)->SelfTest());
}

TEST_CASE("plugin: loading refuses what is not a compatible driver, saying why") {
  ctagent::test::TempDir dir("plugin-load");
  auto missing = MakeDetector("plugin", nlohmann::json{{"path", (dir.path() / "nope.so").string()}});
  REQUIRE_FALSE(missing);
  CHECK(missing.error().kind() == ErrorKind::kNotFound);
  CHECK(missing.error().message().find("nope.so: no such file") != std::string::npos);

  const auto fake = dir.path() / "fake.so";
  std::ofstream(fake) << "not an ELF file";
  auto not_elf = MakeDetector("plugin", nlohmann::json{{"path", fake.string()}});
  REQUIRE_FALSE(not_elf);
  CHECK(not_elf.error().message().find("cannot be loaded") != std::string::npos);

  auto abi = MakeDetector("plugin", nlohmann::json{{"path", std::string(CTAGENT_BROKEN_DIR) + "/libctagent_driver_broken_abi.so"}});
  REQUIRE_FALSE(abi);
  CHECK(abi.error().kind() == ErrorKind::kUnsupported);
  CHECK(abi.error().message().find("built for driver ABI 2.2, but this agent speaks ABI 1.2") != std::string::npos);

  auto no_path = MakeDetector("plugin", nlohmann::json::object());
  REQUIRE_FALSE(no_path);
  CHECK(no_path.error().message().find("\"path\"") != std::string::npos);

  ctagent_driver_api table = *sim::SimDriverApi();
  table.next_view = nullptr;
  auto incomplete = plugin::DriverLibrary::BuiltIn(&table, "incomplete");
  REQUIRE_FALSE(incomplete);
  CHECK(incomplete.error().message().find("has no 'next_view'") != std::string::npos);
}

TEST_CASE("plugin: the adapter stops a driver that skips a view") {
  auto d = MakeDetector("plugin", nlohmann::json{{"path", std::string(CTAGENT_BROKEN_DIR) + "/libctagent_driver_broken_gap.so"}});
  REQUIRE(d);
  REQUIRE((*d)->Arm(SmallPluginProtocol()));
  for (int i = 0; i < 5; ++i) REQUIRE((*d)->NextView());
  auto v = (*d)->NextView();
  REQUIRE_FALSE(v);
  CHECK(v.error().kind() == ErrorKind::kProtocol);
  CHECK(v.error().message().find("delivered view 6 where view 5 was due") != std::string::npos);
}

TEST_CASE("plugin: Abort from another thread ends a blocked NextView of a C driver") {
  auto d = MakeDetector("plugin", nlohmann::json{{"path", CTAGENT_C_EXAMPLE_SO}});
  REQUIRE(d);
  ScanProtocol p = SmallPluginProtocol();
  p.real_time = true;
  // 45 views in 1,800 s: the second view is due 40 s after the first, so only the abort can end
  // the blocked call within the bound below (at 1 view/s a loaded sanitizer run could not tell
  // the two apart: see isolation_test's abort case).
  p.rotation_time_s = 1800.0;
  REQUIRE((*d)->Arm(p));
  REQUIRE((*d)->NextView());
  const auto start = std::chrono::steady_clock::now();
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (*d)->Abort();
  });
  auto v = (*d)->NextView();
  aborter.join();
  REQUIRE_FALSE(v);
  CHECK(v.error().kind() == ErrorKind::kCancelled);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));  // the view was 40 s away
  // Re-arm after abort: a full scan again.
  p.real_time = false;
  CHECK(ReadAll(**d, p).size() == p.TotalViews());
}
