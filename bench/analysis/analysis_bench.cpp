// Accuracy of the reference lung analysis against the simulator's truth: scans of the low-dose
// chest protocol (config/examples/chest-low-dose.json) with lesions drawn from each seed go
// through sim -> FBP -> Analyze in process, at several doses; the drawn lesions are the truth.
// Prints detection precision and recall, volume error (median, 90th percentile), involvement
// error, and the time of each stage per scan. A bench: it prints figures, it asserts nothing.
//
//   analysis_bench [--seeds N] [--first-seed S] [--doses 1,0.2,0.1] [--image-size N] [--protocol FILE]
//                  [--lesion-min-hu HU] [--min-lesion-ml ML]   (AnalysisOptions, to study the trade-offs)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numbers>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cloud/worker/analysis.hpp"
#include "cloud/worker/recon.hpp"
#include "drivers/detector.hpp"
#include "drivers/sim/lesion_draw.hpp"
#include "drivers/sim/sim_detector.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using ctagent::cloud::AnalysisResult;
using ctagent::cloud::HuImage;
using ctagent::cloud::LesionFinding;
using ctagent::cloud::ReconInput;
using ctagent::drivers::ScanProtocol;
using ctagent::drivers::sim::Lesion;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Simulates `p` into a ReconInput. The scan is acquired in two halves on two threads (each
// half a detector armed with its own rotations, table start and a derived seed), so the sim
// uses both cores: a valid scan of the same phantom, though not the bytes one detector would give.
bool Acquire(const ScanProtocol& p, ReconInput& in) {
  in = ReconInput{};
  in.rows = p.rows;
  in.channels = p.channels;
  in.channel_pitch_mm = p.channel_pitch_mm;
  in.unattenuated_counts = p.unattenuated_counts * p.dose_fraction;
  in.fan_beam = true;
  in.source_to_isocenter_mm = p.source_to_isocenter_mm;
  in.views_per_rotation = p.views_per_rotation;
  in.row_pitch_mm = p.row_pitch_mm;
  const std::uint32_t first_half = p.rotations / 2;
  struct Part {
    ScanProtocol protocol;
    std::vector<double> angles, tables;
    std::vector<float> counts;
    bool ok = true;
  };
  Part parts[2];
  parts[0].protocol = p;
  parts[0].protocol.rotations = first_half;
  parts[1].protocol = p;
  parts[1].protocol.rotations = p.rotations - first_half;
  parts[1].protocol.table_start_mm = p.table_start_mm + first_half * p.table_speed_mm_per_rotation;
  parts[1].protocol.seed = p.seed ^ 0x9E3779B97F4A7C15ull;
  // Both halves carry the lesions drawn from the scan's seed, as an explicit list (a "drawn"
  // second half would draw from its derived seed).
  nlohmann::json list = nlohmann::json::array();
  for (const Lesion& l : ctagent::drivers::sim::DrawLesions(p.seed)) {
    list.push_back({{"kind", l.kind == Lesion::Kind::kGroundGlass ? "ground_glass" : "consolidation"},
                    {"x_mm", l.x_mm},
                    {"y_mm", l.y_mm},
                    {"z_mm", l.z_mm},
                    {"diameter_mm", l.diameter_mm},
                    {"hu", l.hu}});
  }
  auto run = [&](Part& part, double angle_offset_deg) {
    auto sim = ctagent::drivers::sim::SimDetector::Create(nlohmann::json{{"lesions", list}});
    if (!sim || !(*sim)->Arm(part.protocol)) {
      part.ok = false;
      return;
    }
    const std::uint64_t total = part.protocol.TotalViews();
    part.counts.reserve(total * p.rows * p.channels);
    for (std::uint64_t i = 0; i <= total; ++i) {  // bounded: one more than expected
      auto v = (*sim)->NextView();
      if (!v) {
        part.ok = false;
        return;
      }
      if (!v->has_value()) break;
      const auto& view = **v;
      part.angles.push_back(view.gantry_angle_deg + angle_offset_deg);
      part.tables.push_back(view.table_position_mm);
      for (std::size_t k = 0; k < view.samples.size(); k += 2) {
        std::uint16_t s = 0;
        std::memcpy(&s, view.samples.data() + k, 2);
        part.counts.push_back(static_cast<float>(s));
      }
    }
  };
  std::thread second([&] { run(parts[1], 360.0 * first_half); });
  run(parts[0], 0.0);
  second.join();
  for (Part& part : parts) {
    if (!part.ok) return false;
    in.gantry_angle_deg.insert(in.gantry_angle_deg.end(), part.angles.begin(), part.angles.end());
    in.table_position_mm.insert(in.table_position_mm.end(), part.tables.begin(), part.tables.end());
    in.counts.insert(in.counts.end(), part.counts.begin(), part.counts.end());
  }
  in.views = static_cast<std::uint32_t>(in.gantry_angle_deg.size());
  return in.views == p.TotalViews();
}

double SphereMl(double diameter_mm) { return std::numbers::pi / 6.0 * std::pow(diameter_mm, 3) / 1000.0; }

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const auto k = static_cast<std::size_t>(std::clamp(std::ceil(q * static_cast<double>(v.size())) - 1.0, 0.0,
                                                     static_cast<double>(v.size() - 1)));
  return v[k];
}

struct Tally {
  int scans = 0, failed = 0;
  int truth_above_limit = 0, truth_found = 0;  // recall
  int detections = 0, detections_true = 0;     // precision
  int normal_scans = 0, normal_right = 0;      // lesion-free seeds that came out normal
  std::vector<double> volume_error_pct;        // |measured - true| / true, matched lesions
  std::vector<double> involvement_error_pp;    // |measured - true| per lung with lesions, percentage points
  std::vector<double> lung_volume_error_pct;
  std::vector<double> sim_s, recon_s, analysis_s;
};

// The lung's true volume (lesions included: they replace lung): the phantom's lung ellipsoid.
double TrueLungMl() {
  static const ctagent::drivers::sim::ChestPhantom3d kChest;
  for (const auto& s : kChest.solids()) {
    if (s.name == "right_lung") return 4.0 / 3.0 * std::numbers::pi * s.semi_x_mm * s.semi_y_mm * s.semi_z_mm / 1000.0;
  }
  return 0;
}

void Score(const std::vector<Lesion>& truth, const AnalysisResult& r, const ctagent::cloud::AnalysisOptions& o,
           Tally& t) {
  // Match rule: a detection matches a truth lesion when their centroids lie within
  // max(truth radius, 5 mm); pairs are taken closest first, each lesion at most once.
  struct Pair {
    double distance;
    std::size_t truth, found;
  };
  std::vector<Pair> pairs;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    for (std::size_t j = 0; j < r.lesions.size(); ++j) {
      const LesionFinding& f = r.lesions[j];
      const double d = std::hypot(truth[i].x_mm - f.x_mm, truth[i].y_mm - f.y_mm, truth[i].z_mm - f.z_mm);
      if (d <= std::max(truth[i].diameter_mm / 2, 5.0)) pairs.push_back({d, i, j});
    }
  }
  std::sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) { return a.distance < b.distance; });
  std::vector<bool> truth_used(truth.size()), found_used(r.lesions.size());
  for (const Pair& p : pairs) {
    if (truth_used[p.truth] || found_used[p.found]) continue;
    truth_used[p.truth] = found_used[p.found] = true;
    const double true_ml = SphereMl(truth[p.truth].diameter_mm);
    t.volume_error_pct.push_back(100.0 * std::fabs(r.lesions[p.found].volume_ml - true_ml) / true_ml);
  }
  for (std::size_t i = 0; i < truth.size(); ++i) {
    if (SphereMl(truth[i].diameter_mm) < o.min_lesion_ml) continue;
    ++t.truth_above_limit;
    if (truth_used[i]) ++t.truth_found;
  }
  // A detection of a truth lesion below the limit is still a true detection.
  t.detections += static_cast<int>(r.lesions.size());
  for (bool used : found_used) t.detections_true += used ? 1 : 0;
  const double lung_ml = TrueLungMl();
  for (int side = 0; side < 2; ++side) {
    double lesion_ml = 0;
    for (const Lesion& l : truth) {
      if ((l.x_mm < 0) == (side == 0)) lesion_ml += SphereMl(l.diameter_mm);
    }
    const auto& lung = r.lungs[static_cast<std::size_t>(side)];
    // Over the lungs with drawn lesions only: a lesion-free lung would add an error of 0.
    if (lesion_ml > 0) t.involvement_error_pp.push_back(std::fabs(lung.involvement_percent - 100.0 * lesion_ml / lung_ml));
    t.lung_volume_error_pct.push_back(100.0 * std::fabs(lung.volume_ml - lung_ml) / lung_ml);
  }
  if (truth.empty()) {
    ++t.normal_scans;
    if (r.category == ctagent::cloud::StudyCategory::kNormal) ++t.normal_right;
  }
}

std::vector<double> ParseList(const char* text) {
  std::vector<double> out;
  std::string s = text;
  std::size_t start = 0;
  while (start <= s.size() && out.size() < 16) {
    const std::size_t comma = s.find(',', start);
    out.push_back(std::atof(s.substr(start, comma - start).c_str()));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int seeds = 8;
  std::uint64_t first_seed = 1;
  std::vector<double> doses = {1.0, 0.2, 0.1};
  std::uint32_t image_size = 256;
  std::string protocol_file = CTAGENT_CHEST_PROTOCOL;
  ctagent::cloud::AnalysisOptions options;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--seeds") {
      seeds = std::clamp(std::atoi(argv[i + 1]), 1, 1000);
    } else if (a == "--first-seed") {
      first_seed = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (a == "--doses") {
      doses = ParseList(argv[i + 1]);
    } else if (a == "--image-size") {
      image_size = static_cast<std::uint32_t>(std::clamp(std::atoi(argv[i + 1]), 64, 1024));
    } else if (a == "--lesion-min-hu") {
      options.lesion_min_hu = std::atof(argv[i + 1]);
    } else if (a == "--min-lesion-ml") {
      options.min_lesion_ml = std::atof(argv[i + 1]);
    } else if (a == "--protocol") {
      protocol_file = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: analysis_bench [--seeds N] [--first-seed S] [--doses 1,0.2,0.1] [--image-size N] [--protocol FILE] [--lesion-min-hu HU] [--min-lesion-ml ML]\n");
      return 2;
    }
  }
  std::ifstream file(protocol_file);
  const auto config = nlohmann::json::parse(file, nullptr, false);
  if (config.is_discarded() || !config.contains("scan")) {
    std::fprintf(stderr, "analysis_bench: %s: not a configuration with a \"scan\" section\n", protocol_file.c_str());
    return 1;
  }
  auto base = ctagent::drivers::ProtocolFromJson(config.at("scan"));
  if (!base) {
    std::fprintf(stderr, "analysis_bench: %s\n", base.error().message().c_str());
    return 1;
  }
  base->real_time = false;
  std::printf("Reference lung analysis against the simulator's truth (%s; a reference, not a diagnostic product)\n",
              protocol_file.c_str());
  std::printf("protocol: %u views/rotation x %u rotations, %u rows x %.1f mm, %u channels x %.2f mm, table %.1f mm/rotation; "
              "image %u x %u; seeds %llu..%llu; detection limit %.2f mL, lesion threshold %.0f HU\n",
              base->views_per_rotation, base->rotations, base->rows, base->row_pitch_mm, base->channels,
              base->channel_pitch_mm, base->table_speed_mm_per_rotation, image_size, image_size,
              static_cast<unsigned long long>(first_seed), static_cast<unsigned long long>(first_seed + seeds - 1),
              options.min_lesion_ml, options.lesion_min_hu);
  std::printf("\n| dose | scans | truth lesions >= limit | detections | precision | recall | volume error median / p90 "
              "| involvement error median / max (pp, lungs with lesions) | lung volume error median | lesion-free -> normal | sim / recon / analysis s per scan |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  const auto bench_start = Clock::now();
  for (double dose : doses) {
    Tally t;
    for (int k = 0; k < seeds; ++k) {
      ScanProtocol p = *base;
      p.dose_fraction = dose;
      p.seed = first_seed + static_cast<std::uint64_t>(k);
      const auto truth = ctagent::drivers::sim::DrawLesions(p.seed);
      auto t0 = Clock::now();
      ReconInput in;
      if (!Acquire(p, in)) {
        std::fprintf(stderr, "seed %llu: the simulation failed\n", static_cast<unsigned long long>(p.seed));
        return 1;
      }
      t.sim_s.push_back(Since(t0));
      t0 = Clock::now();
      ctagent::cloud::ReconOptions ro;
      ro.image_size = image_size;
      auto slices = ctagent::cloud::Reconstruct(in, ro);
      if (!slices) {
        std::fprintf(stderr, "seed %llu: %s\n", static_cast<unsigned long long>(p.seed), slices.error().message().c_str());
        return 1;
      }
      t.recon_s.push_back(Since(t0));
      in = ReconInput{};
      const AnalysisResult r = ctagent::cloud::Analyze(*slices, options);
      t.analysis_s.push_back(r.seconds);
      ++t.scans;
      if (r.category == ctagent::cloud::StudyCategory::kFailed) {
        ++t.failed;
        std::fprintf(stderr, "seed %llu: analysis failed: %s\n", static_cast<unsigned long long>(p.seed),
                     r.failure_reason.c_str());
        continue;
      }
      Score(truth, r, options, t);
      if (std::getenv("ANALYSIS_BENCH_VERBOSE") != nullptr) {
        for (const Lesion& l : truth) {
          std::fprintf(stderr, "  truth %s d %.1f mm (%.2f mL) at %.0f %.0f %.0f\n",
                       l.kind == Lesion::Kind::kGroundGlass ? "ggo" : "cons", l.diameter_mm, SphereMl(l.diameter_mm),
                       l.x_mm, l.y_mm, l.z_mm);
        }
        for (const LesionFinding& f : r.lesions) {
          std::fprintf(stderr, "  found %s %.2f mL mean %.0f HU at %.0f %.0f %.0f\n",
                       f.type == ctagent::cloud::LesionType::kGroundGlass ? "ggo" : "cons", f.volume_ml, f.mean_hu,
                       f.x_mm, f.y_mm, f.z_mm);
        }
      }
      std::fprintf(stderr, "dose %.2f seed %llu: %zu planes z %.1f .. %.1f mm: truth %zu, found %zu, involvement R %.2f %% L %.2f %%\n",
                   dose, static_cast<unsigned long long>(p.seed), slices->size(), slices->front().z_mm,
                   slices->back().z_mm, truth.size(), r.lesions.size(), r.lungs[0].involvement_percent,
                   r.lungs[1].involvement_percent);
    }
    const double precision = t.detections > 0 ? 100.0 * t.detections_true / t.detections : 100.0;
    const double recall = t.truth_above_limit > 0 ? 100.0 * t.truth_found / t.truth_above_limit : 100.0;
    std::printf("| %g | %d%s | %d | %d | %.0f %% | %.0f %% | %.0f %% / %.0f %% | %.2f / %.2f | %.1f %% | %d of %d | %.1f / %.1f / %.2f |\n",
                dose, t.scans, t.failed > 0 ? (" (" + std::to_string(t.failed) + " failed)").c_str() : "",
                t.truth_above_limit, t.detections, precision, recall, Percentile(t.volume_error_pct, 0.5),
                Percentile(t.volume_error_pct, 0.9), Percentile(t.involvement_error_pp, 0.5),
                Percentile(t.involvement_error_pp, 1.0), Percentile(t.lung_volume_error_pct, 0.5), t.normal_right,
                t.normal_scans, Percentile(t.sim_s, 0.5), Percentile(t.recon_s, 0.5), Percentile(t.analysis_s, 0.5));
    std::fflush(stdout);
  }
  std::printf("\n%.0f s in all (sim in two halves on two threads, recon and analysis on two threads)\n", Since(bench_start));
  return 0;
}
