// Driver ABI 1.2: scans the scanner starts by itself (Detector::WaitForScan, the C table's
// wait_scan). The sim announces on a schedule or on request; the announcement and the scan's
// views arrive alike called directly, through the C ABI, and through ctagent-driver-host; a
// table built for ABI 1.1 still loads and says it does not announce.
#include <catch2/catch.hpp>

#include <chrono>
#include <fstream>
#include <thread>

#include "drivers/abi/c_abi.hpp"
#include "drivers/plugin/plugin_detector.hpp"
#include "drivers/sim/sim_abi.hpp"
#include "tests/drivers/read_views.hpp"
#include "tests/support/process.hpp"

using ctagent::ErrorKind;
using namespace ctagent::drivers;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

nlohmann::json SmallAnnouncedProtocolJson() {
  return {{"geometry", "parallel"}, {"views_per_rotation", 30}, {"rotations", 1}, {"rows", 2}, {"channels", 32},
          {"channel_pitch_mm", 8.0}, {"seed", 40}, {"real_time", false}};
}

// Reads the announced scan's views (the detector is armed by the announcement).
std::vector<View> ReadAnnounced(Detector& d, std::uint64_t total) {
  std::vector<View> views;
  for (std::uint64_t i = 0; i <= total; ++i) {  // bounded by the protocol's view count
    auto v = d.NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    views.push_back(std::move(**v));
  }
  return views;
}

// The views sim gives for `protocol` when armed directly.
std::vector<View> SimViews(const ScanProtocol& protocol) {
  auto direct = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(direct);
  return testing::ReadAll(**direct, protocol);
}

void CheckAnnouncedScans(Detector& d, int count) {
  REQUIRE(d.AnnouncesScans());
  for (int k = 0; k < count; ++k) {
    INFO("announcement " << k);
    auto a = d.WaitForScan(20s);
    REQUIRE(a);
    REQUIRE(a->has_value());
    const ScanAnnouncement& announced = **a;
    CHECK(announced.accession_number == "SIM000" + std::to_string(k + 1));
    CHECK(announced.procedure_step_id == "SPS000" + std::to_string(k + 1));
    CHECK(announced.protocol.seed == 40u + static_cast<unsigned>(k));
    CHECK(announced.protocol.views_per_rotation == 30);
    const auto views = ReadAnnounced(d, announced.protocol.TotalViews());
    const auto expected = SimViews(announced.protocol);
    REQUIRE(views.size() == expected.size());
    for (std::size_t i = 0; i < views.size(); ++i) CHECK(views[i].samples == expected[i].samples);
  }
  // The schedule is spent: waits end empty.
  auto none = d.WaitForScan(50ms);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());
}

nlohmann::json Schedule(int count) {
  return {{"every_s", 0.05}, {"first_after_s", 0}, {"count", count}, {"protocol", SmallAnnouncedProtocolJson()}};
}

}  // namespace

TEST_CASE("announce: the sim announces its scheduled scans, armed with the protocol, seeds counting up") {
  auto d = MakeDetector("sim", {{"announce", Schedule(2)}});
  REQUIRE(d);
  CheckAnnouncedScans(**d, 2);
}

TEST_CASE("announce: a sim without the option does not announce, and says so") {
  auto d = MakeDetector("sim", nlohmann::json::object());
  REQUIRE(d);
  CHECK_FALSE((*d)->AnnouncesScans());
  auto a = (*d)->WaitForScan(10ms);
  REQUIRE_FALSE(a);
  CHECK(a.error().kind() == ErrorKind::kUnsupported);
  CHECK_THAT(a.error().message(), Catch::Contains("does not announce scans"));
}

TEST_CASE("announce: a request file starts a scan, once per file") {
  ctagent::test::TempDir dir("announce-request");
  const fs::path request = dir.path() / "take-scan";
  auto d = MakeDetector("sim", {{"announce", {{"request_file", request.string()}, {"protocol", SmallAnnouncedProtocolJson()}}}});
  REQUIRE(d);
  auto none = (*d)->WaitForScan(150ms);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());
  std::ofstream(request) << "now\n";
  auto a = (*d)->WaitForScan(20s);
  REQUIRE(a);
  REQUIRE(a->has_value());
  CHECK((*a)->accession_number == "SIM0001");
  CHECK_FALSE(fs::exists(request));
  CHECK(ReadAnnounced(**d, (*a)->protocol.TotalViews()).size() == 30);
}

TEST_CASE("announce: Abort ends a wait for a scan") {
  auto d = MakeDetector("sim", {{"announce", {{"every_s", 3600}, {"count", 1}}}});
  REQUIRE(d);
  Detector* det = d->get();
  std::thread aborter([det] {
    std::this_thread::sleep_for(100ms);
    det->Abort();
  });
  // Without the abort this wait would end empty after an hour (the test's timeout first).
  auto a = det->WaitForScan(3600s);
  aborter.join();
  REQUIRE_FALSE(a);
  CHECK(a.error().kind() == ErrorKind::kCancelled);
}

TEST_CASE("announce: bad options are refused, naming the key") {
  auto nothing = MakeDetector("sim", {{"announce", {{"every_s", 5}}}});
  REQUIRE_FALSE(nothing);
  CHECK_THAT(nothing.error().message(), Catch::Contains("/announce: announces nothing"));
  auto unknown = MakeDetector("sim", {{"announce", {{"count", 1}, {"often", true}}}});
  REQUIRE_FALSE(unknown);
  CHECK_THAT(unknown.error().message(), Catch::Contains("/announce/often: unknown key"));
  auto bad_protocol = MakeDetector("sim", {{"announce", {{"count", 1}, {"protocol", {{"rows", "many"}}}}}});
  REQUIRE_FALSE(bad_protocol);
  CHECK_THAT(bad_protocol.error().message(), Catch::Contains("/announce/protocol"));
}

TEST_CASE("announce: through the C ABI (built-in table) the announcement and its views are the same") {
  auto lib = plugin::DriverLibrary::BuiltIn(sim::SimDriverApi(), "sim");
  REQUIRE(lib);
  CHECK((*lib)->api().abi_minor == 2);
  auto d = plugin::PluginDetector::Open(*lib, {{"announce", Schedule(2)}});
  REQUIRE(d);
  CheckAnnouncedScans(**d, 2);
}

#if defined(CTAGENT_SIM_DRIVER_SO)
TEST_CASE("announce: through ctagent-driver-host (the isolated .so) the announcement and its views are the same") {
  auto d = MakeDetector("plugin", {{"path", CTAGENT_SIM_DRIVER_SO}, {"announce", Schedule(2)}});
  REQUIRE(d);
  CheckAnnouncedScans(**d, 2);
}

TEST_CASE("announce: a driver without wait_scan (the C example) loads and does not announce, in process or isolated") {
  for (const char* isolation : {"in_process", "process"}) {
    INFO(isolation);
    auto d = MakeDetector("plugin", {{"path", CTAGENT_C_EXAMPLE_SO}, {"isolation", isolation}});
    REQUIRE(d);
    auto a = (*d)->WaitForScan(10ms);
    REQUIRE_FALSE(a);
    CHECK(a.error().kind() == ErrorKind::kUnsupported);
  }
}
#endif

TEST_CASE("announce: a table built for ABI 1.1 (without wait_scan) still loads and scans") {
  // The built-in sim's table as a 1.1 driver declares it: the shorter struct, minor 1. Its
  // wait_scan slot holds the 1.2 function, which the agent must not read.
  static ctagent_driver_api table_1_1 = *sim::SimDriverApi();
  table_1_1.struct_size = static_cast<std::uint32_t>(CTAGENT_DRIVER_API_SIZE_1_1);
  table_1_1.abi_minor = 1;
  auto lib = plugin::DriverLibrary::BuiltIn(&table_1_1, "sim-1.1");
  REQUIRE(lib);
  CHECK(abi::WaitScanOf((*lib)->api()) == nullptr);
  auto d = plugin::PluginDetector::Open(*lib, {{"announce", Schedule(1)}});
  REQUIRE(d);
  CHECK_FALSE((*d)->AnnouncesScans());
  auto a = (*d)->WaitForScan(10ms);
  REQUIRE_FALSE(a);
  CHECK(a.error().kind() == ErrorKind::kUnsupported);
  auto p = ProtocolFromJson(SmallAnnouncedProtocolJson());
  REQUIRE(p);
  CHECK(testing::ReadAll(**d, *p).size() == 30);
  // A table shorter than 1.1's is refused with the size it needs.
  static ctagent_driver_api too_short = *sim::SimDriverApi();
  too_short.struct_size = static_cast<std::uint32_t>(CTAGENT_DRIVER_API_SIZE_1_1 - 8);
  auto refused = plugin::DriverLibrary::BuiltIn(&too_short, "sim-short");
  REQUIRE_FALSE(refused);
  CHECK_THAT(refused.error().message(), Catch::Contains("ABI 1.1 needs at least"));
}
