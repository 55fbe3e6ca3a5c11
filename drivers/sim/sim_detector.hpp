// The built-in simulated detector ("sim"): parallel-beam projections of the analytic chest
// phantom (drivers/sim/phantom.hpp) with Poisson counting noise. Views are a pure function of
// (protocol, seed, sequence), so a given seed gives the same bytes however a view is reached.
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

#include "agent/common/error.hpp"
#include "drivers/detector.hpp"

namespace ctagent::drivers::sim {

inline constexpr std::uint32_t kSimMaxRows = 64;
inline constexpr std::uint32_t kSimMaxChannels = 2048;
inline constexpr double kSimMaxViewRateHz = 20000.0;  // only checked when pacing in real time
inline constexpr const char* kSimDefaultModel = "sim-chest-parallel";

// Poisson deviate with the given mean, drawn from a portable algorithm (the standard library's
// poisson_distribution differs between implementations, which would break seed determinism
// across targets). Exposed for tests.
std::uint64_t SamplePoisson(double mean, std::mt19937_64& rng);

class SimDetector final : public Detector {
 public:
  // `options`: {"model": string} (optional); unknown keys are rejected.
  static Expected<std::unique_ptr<SimDetector>> Create(const nlohmann::json& options);

  DetectorInfo Info() const override;
  Status Arm(const ScanProtocol& protocol) override;
  Expected<std::optional<View>> NextView() override;
  void Abort() override;

 private:
  explicit SimDetector(std::string model) : model_(std::move(model)) {}

  // Expected counts per channel (before noise) for the view at `angle_index` within a
  // half-turn (v mod views_per_rotation); computed on first use and kept, within a memory cap.
  const std::vector<double>& MeanCounts(std::uint64_t angle_index);
  void ComputeMeanCounts(std::uint64_t angle_index, std::vector<double>& out) const;

  std::string model_;

  // Acquisition-thread state (Arm and NextView are called from one thread).
  bool armed_ = false;
  ScanProtocol protocol_;
  std::uint64_t next_sequence_ = 0;
  std::optional<std::chrono::steady_clock::time_point> started_;
  std::vector<std::vector<double>> mean_cache_;  // by angle index; empty vector: not yet computed
  bool cache_enabled_ = false;
  std::vector<double> scratch_means_;  // used when the cache would be too large

  // Shared with Abort() from other threads.
  std::mutex mutex_;
  std::condition_variable wake_;
  bool aborted_ = false;
};

}  // namespace ctagent::drivers::sim
