// sim_bench: views per second of the sim driver, as fast as possible (real_time off), for the
// 16-slice fan-beam chest protocol (axial and helical) and the parallel demo protocol, against
// each protocol's real-time view rate (views per rotation / rotation time). Prints figures,
// asserts nothing. Usage: sim_bench [seconds per case, default 5]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "drivers/sim/sim_detector.hpp"

namespace {

using ctagent::drivers::GeometryKind;
using ctagent::drivers::ScanProtocol;
using ctagent::drivers::sim::SimDetector;

struct Case {
  std::string name;
  ScanProtocol protocol;
};

ScanProtocol DemoParallel() {  // config/demo.json's scan
  ScanProtocol p;
  p.views_per_rotation = 720;
  p.rotations = 2;
  p.rows = 16;
  p.channels = 512;
  p.channel_pitch_mm = 0.8;
  p.row_pitch_mm = 1.25;
  p.rotation_time_s = 1.0;
  p.dose_fraction = 0.2;
  p.seed = 2021;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const double budget_s = argc > 1 ? std::atof(argv[1]) : 5.0;
  ScanProtocol fan_axial = ctagent::drivers::sim::SixteenSliceFanProtocol();
  fan_axial.table_speed_mm_per_rotation = 0;
  fan_axial.rotations = 2;
  ScanProtocol fan_helical = ctagent::drivers::sim::SixteenSliceFanProtocol();
  fan_helical.rotations = 2;
  const std::vector<Case> cases = {
      {"fan 16x896, 1160 views/0.5 s, helical", fan_helical},
      {"fan 16x896, 1160 views/0.5 s, axial (2nd rotation from cache if it fits)", fan_axial},
      {"parallel demo 16x512, 720 views/1 s", DemoParallel()},
  };
  std::printf("%-72s %10s %12s %12s %8s\n", "protocol", "views", "views/s", "real-time/s", "ratio");
  for (const Case& c : cases) {
    auto sim = SimDetector::Create(nlohmann::json::object());
    if (!sim || !(*sim)->Arm(c.protocol)) {
      std::fprintf(stderr, "sim_bench: cannot arm %s\n", c.name.c_str());
      return 1;
    }
    const auto start = std::chrono::steady_clock::now();
    std::uint64_t views = 0;
    double elapsed = 0;
    while (views < c.protocol.TotalViews() && elapsed < budget_s) {
      auto v = (*sim)->NextView();
      if (!v || !v->has_value()) break;
      ++views;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    const double rate = static_cast<double>(views) / elapsed;
    const double real_time = c.protocol.ViewRateHz();
    std::printf("%-72s %10llu %12.1f %12.1f %8.3f\n", c.name.c_str(), static_cast<unsigned long long>(views), rate,
                real_time, rate / real_time);
  }
  std::printf("ratio >= 1: the simulator keeps pace with the scanner it imitates on this machine\n");
  return 0;
}
