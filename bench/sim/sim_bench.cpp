// sim_bench: views per second of the sim driver, as fast as possible (real_time off), for the
// 16-slice fan-beam chest protocol (axial and helical) and the parallel demo protocol, against
// each protocol's real-time view rate (views per rotation / rotation time). Cases are run in
// turn, `repetitions` times round, and the median rate of each is printed (the machine is
// shared: interleaving spreads load changes over every case). Prints figures, asserts nothing.
// Usage: sim_bench [seconds per case, default 5] [repetitions, default 3]
#include <chrono>
#include <cstdio>
#include <algorithm>
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

ScanProtocol DemoParallel() {  // the parallel-beam scan config/demo.json had before the fan-beam protocols
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

double ViewsPerSecond(const ScanProtocol& protocol, double budget_s) {
  auto sim = SimDetector::Create(nlohmann::json::object());
  if (!sim || !(*sim)->Arm(protocol)) return -1;
  const auto start = std::chrono::steady_clock::now();
  std::uint64_t views = 0;
  double elapsed = 0;
  while (views < protocol.TotalViews() && elapsed < budget_s) {
    auto v = (*sim)->NextView();
    if (!v || !v->has_value()) break;
    ++views;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return elapsed > 0 ? static_cast<double>(views) / elapsed : -1;
}

}  // namespace

int main(int argc, char** argv) {
  const double budget_s = argc > 1 ? std::atof(argv[1]) : 5.0;
  const int repetitions = std::max(1, argc > 2 ? std::atoi(argv[2]) : 3);
  ScanProtocol fan_axial = ctagent::drivers::sim::SixteenSliceFanProtocol();
  fan_axial.table_speed_mm_per_rotation = 0;
  fan_axial.rotations = 2;
  ScanProtocol fan_helical = ctagent::drivers::sim::SixteenSliceFanProtocol();
  fan_helical.rotations = 2;
  ScanProtocol fan_low_dose = fan_helical;  // more rays below the normal sampler's threshold
  fan_low_dose.dose_fraction = 0.1;
  const std::vector<Case> cases = {
      {"fan 16x896, 1160 views/0.5 s, helical", fan_helical},
      {"fan 16x896, 1160 views/0.5 s, helical, dose 1/10", fan_low_dose},
      {"fan 16x896, 1160 views/0.5 s, axial (2nd rotation from cache if it fits)", fan_axial},
      {"parallel 16x512, 720 views/1 s, dose 1/5 (the old demo)", DemoParallel()},
  };
  std::vector<std::vector<double>> rates(cases.size());
  for (int rep = 0; rep < repetitions; ++rep) {
    for (std::size_t i = 0; i < cases.size(); ++i) {
      const double rate = ViewsPerSecond(cases[i].protocol, budget_s);
      if (rate < 0) {
        std::fprintf(stderr, "sim_bench: cannot arm %s\n", cases[i].name.c_str());
        return 1;
      }
      rates[i].push_back(rate);
    }
  }
  std::printf("%-72s %12s %12s %8s\n", "protocol", "views/s", "real-time/s", "ratio");
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::sort(rates[i].begin(), rates[i].end());
    const double median = rates[i][rates[i].size() / 2];
    const double real_time = cases[i].protocol.ViewRateHz();
    std::printf("%-72s %12.1f %12.1f %8.3f   (median of %d; min %.1f, max %.1f)\n", cases[i].name.c_str(), median,
                real_time, median / real_time, repetitions, rates[i].front(), rates[i].back());
  }
  std::printf("ratio >= 1: the simulator keeps pace with the scanner it imitates, on one core of this machine\n");
  return 0;
}
