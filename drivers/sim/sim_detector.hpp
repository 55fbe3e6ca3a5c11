// The built-in simulated detector ("sim"): projections of the analytic chest phantom
// (drivers/sim/phantom.hpp) with Poisson counting noise. Parallel beam projects the 2-D chest
// (z-invariant); fan beam casts every ray of an arc detector through the 3-D chest (with ribs
// and configurable lesions), axial or helical. Views are a pure function of (options,
// protocol, seed, sequence), so a given seed gives the same bytes however a view is reached.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/detector.hpp"
#include "drivers/sim/lesion_draw.hpp"
#include "drivers/sim/phantom.hpp"

namespace ctagent::drivers::sim {

inline constexpr std::uint32_t kSimMaxRows = 64;
inline constexpr std::uint32_t kSimMaxChannels = 2048;
inline constexpr double kSimMaxViewRateHz = 20000.0;  // only checked when pacing in real time
inline constexpr const char* kSimDefaultModel = "sim-chest-parallel";

// A 16-slice county-hospital chest protocol in fan beam: SID 570 mm, SDD 1040 mm, 16 rows of
// 0.75 mm and 896 channels of 0.55 mm at isocenter (1.37 mm rows, 1.0 mm channels at the detector;
// a 493 mm field, a 49-degree fan), 1160 views per 0.5 s rotation, helical with pitch 0.9375
// (11.25 mm per rotation), 2 rotations centred on z = 0 (table -11.25 .. +11.25 mm): 16
// planes. The agent's default `scan` (config/config.hpp, DefaultScanProtocol) is one axial
// rotation of the same scanner. Used by bench/sim, the tests and the docs.
inline ScanProtocol SixteenSliceFanProtocol() {
  ScanProtocol p = SixteenSliceAxialProtocol();
  p.rotations = 2;
  p.table_speed_mm_per_rotation = 11.25;
  p.table_start_mm = -11.25;
  return p;
}

// The sim's random stream: SplitMix64 (Steele, Lea, Flood 2014), one 64-bit output per call.
// It passes BigCrush, costs about a nanosecond, and a stream is fully defined by its 64-bit
// seed, so every detector row of every view gets its own stream and rows can be drawn in any
// order (or on any thread) with the same bytes. A UniformRandomBitGenerator.
class SimRng {
 public:
  using result_type = std::uint64_t;
  explicit SimRng(std::uint64_t seed) : state_(seed) {}
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

 private:
  std::uint64_t state_;
};

// Uniform in [0, 1) from the top 53 bits of a 64-bit generator (SimRng, std::mt19937_64):
// identical on every platform, unlike std::uniform_real_distribution whose algorithm is left to
// the implementation.
template <typename Generator>
double Uniform01(Generator& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Means from this on are drawn from the moment-matched normal (see SamplePoisson).
inline constexpr double kPoissonNormalFromMean = 256.0;

// Poisson deviate with the given mean, drawn from portable algorithms (the standard library's
// poisson_distribution differs between implementations, which would break seed determinism
// across targets): Knuth's method below 10, Hoermann's PTRS rejection from 10 up to
// kPoissonNormalFromMean, and from there round(mean + sqrt(mean - 1/12) * Z) with Z a standard
// normal (ziggurat): its mean is `mean` and its variance `mean` (rounding adds 1/12, Sheppard),
// both exact to within exp(-2 pi^2 (mean - 1/12)), i.e. to double precision; only its skewness
// (0 instead of 1/sqrt(mean) < 0.07) differs from Poisson. Exposed for tests.
std::uint64_t SamplePoisson(double mean, SimRng& rng);

// A standard normal deviate (Doornik's ZIGNOR ziggurat, 128 layers). Exposed for tests.
double SampleStandardNormal(SimRng& rng);

class SimDetector final : public Detector {
 public:
  // `options` (all optional; unknown keys are rejected):
  //   "model": string
  //   "lesions": [{"kind": "ground_glass" | "consolidation", "x_mm", "y_mm", "z_mm",
  //                "diameter_mm", "hu" (default -650 / 35)}]   (fan beam: the 3-D chest)
  //              or "drawn", or draw parameters {"max_count", "none_probability", "min_diameter_mm",
  //              "max_diameter_mm", "consolidation_probability", "clearance_mm", "z_min_mm",
  //              "z_max_mm"}: lesions drawn from each scan's seed at Arm() (DrawLesions)
  //   "dead_channels": [channel, ...]   these channels read 0 counts in every row
  //   "channel_gain_sd": relative SD of the per-channel gain (0 .. 0.5, default 0); the
  //                      gains are a fixed property of the detector, not of the scan seed
  static Expected<std::unique_ptr<SimDetector>> Create(const nlohmann::json& options);

  DetectorInfo Info() const override;
  Status Arm(const ScanProtocol& protocol) override;
  Expected<std::optional<View>> NextView() override;
  void Abort() override;

 private:
  SimDetector(std::string model, std::vector<Lesion> lesions, std::vector<std::uint32_t> dead_channels,
              double channel_gain_sd);

  // Expected counts (before noise and gain) for view v: `channels` values shared by every row
  // (parallel beam, at angle index v mod views_per_rotation) or rows x channels (fan beam).
  // Computed on first use and kept for axial scans, within a memory cap.
  const std::vector<double>& MeanCounts(std::uint64_t v);
  void ComputeMeanCounts(std::uint64_t v, std::vector<double>& out) const;
  double TablePositionMm(std::uint64_t v) const;

  std::string model_;
  ChestPhantom3d phantom_;
  std::optional<LesionDrawOptions> lesion_draw_;  // set: phantom_ is redrawn from each scan's seed
  std::vector<std::uint32_t> dead_channels_;
  double channel_gain_sd_ = 0;

  // Acquisition-thread state (Arm and NextView are called from one thread).
  bool armed_ = false;
  ScanProtocol protocol_;
  std::uint64_t next_sequence_ = 0;
  std::optional<std::chrono::steady_clock::time_point> started_;
  std::vector<std::vector<double>> mean_cache_;  // by angle index; empty vector: not yet computed
  bool cache_enabled_ = false;
  std::vector<double> scratch_means_;  // used when the cache would be too large
  std::vector<double> gain_;           // per channel, for the armed protocol's channel count
  std::vector<bool> dead_;             // per channel
  std::vector<double> cos_gamma_, sin_gamma_;  // fan beam: of each channel's fan angle

  // Shared with Abort() from other threads.
  std::mutex mutex_;
  std::condition_variable wake_;
  bool aborted_ = false;
};

}  // namespace ctagent::drivers::sim
