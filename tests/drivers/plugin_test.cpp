// PluginDetector and the loader: sim through the C ABI delivers the same bytes as sim called
// directly; load errors name the file and the problem; the adapter catches faulty drivers;
// Abort reaches a C driver blocked in next_view.
#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <thread>

#include "drivers/plugin/plugin_detector.hpp"
#include "drivers/sim/sim_abi.hpp"
#include "drivers/sim/sim_detector.hpp"
#include "tests/drivers/read_views.hpp"
#include "tests/support/process.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;
using ctagent::drivers::testing::ReadAll;

namespace {

ScanProtocol Small() {
  ScanProtocol p;
  p.views_per_rotation = 45;
  p.rotations = 2;
  p.rows = 2;
  p.channels = 64;
  p.channel_pitch_mm = 6.0;
  p.seed = 7;
  return p;
}

}  // namespace

TEST_CASE("plugin: sim through the C ABI (.so and built-in table) gives the bytes of sim called directly") {
  const ScanProtocol p = Small();
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
  ScanProtocol p = Small();
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
  CHECK(abi.error().message().find("built for driver ABI 2.0") != std::string::npos);

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
  REQUIRE((*d)->Arm(Small()));
  for (int i = 0; i < 5; ++i) REQUIRE((*d)->NextView());
  auto v = (*d)->NextView();
  REQUIRE_FALSE(v);
  CHECK(v.error().kind() == ErrorKind::kProtocol);
  CHECK(v.error().message().find("delivered view 6 where view 5 was due") != std::string::npos);
}

TEST_CASE("plugin: Abort from another thread ends a blocked NextView of a C driver") {
  auto d = MakeDetector("plugin", nlohmann::json{{"path", CTAGENT_C_EXAMPLE_SO}});
  REQUIRE(d);
  ScanProtocol p = Small();
  p.real_time = true;
  p.rotation_time_s = 45.0;  // 1 view/s: the second view is due a second after the first
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
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(900));
  // Re-arm after abort: a full scan again.
  p.real_time = false;
  CHECK(ReadAll(**d, p).size() == p.TotalViews());
}
