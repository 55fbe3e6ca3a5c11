#include "drivers/sim/sim_detector.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <utility>

#include "drivers/sim/phantom.hpp"

namespace ctagent::drivers::sim {

namespace {

// Above this the per-angle cache of mean counts is not kept; views are then computed afresh
// (same numbers, a little slower), so memory stays bounded for any protocol.
constexpr std::uint64_t kMaxCacheBytes = 64ull << 20;
constexpr std::uint64_t kMaxSampleValue = std::numeric_limits<std::uint16_t>::max();
// Rejection samplers accept within a few tries; the cap only guards against a broken generator.
constexpr int kMaxPoissonTries = 1000;

std::uint64_t SplitMix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from the top 53 bits: identical on every platform, unlike
// std::uniform_real_distribution whose algorithm is left to the implementation.
double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

Unexpected ArmError(ErrorKind kind, const std::string& what) {
  return MakeError(kind, "sim detector: cannot arm: " + what);
}

bool Positive(double v) { return std::isfinite(v) && v > 0.0; }

}  // namespace

std::uint64_t SamplePoisson(double mean, std::mt19937_64& rng) {
  if (!(mean > 0.0)) return 0;
  if (mean < 10.0) {
    // Knuth's multiplication method: expected mean + 1 uniforms.
    const double limit = std::exp(-mean);
    double product = Uniform01(rng);
    std::uint64_t k = 0;
    for (int i = 0; i < kMaxPoissonTries && product > limit; ++i) {
      product *= Uniform01(rng);
      ++k;
    }
    return k;
  }
  // Hoermann's transformed rejection with squeeze (PTRS, 1993), valid for mean >= 10.
  const double slam = std::sqrt(mean);
  const double loglam = std::log(mean);
  const double b = 0.931 + 2.53 * slam;
  const double a = -0.059 + 0.02483 * b;
  const double inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
  const double vr = 0.9277 - 3.6224 / (b - 2.0);
  for (int i = 0; i < kMaxPoissonTries; ++i) {
    const double u = Uniform01(rng) - 0.5;
    const double v = Uniform01(rng);
    const double us = 0.5 - std::fabs(u);
    const double k = std::floor((2.0 * a / us + b) * u + mean + 0.43);
    if (us >= 0.07 && v <= vr) return static_cast<std::uint64_t>(k);
    if (!(k >= 0.0) || (us < 0.013 && v > us)) continue;
    if (std::log(v) + std::log(inv_alpha) - std::log(a / (us * us) + b) <= -mean + k * loglam - std::lgamma(k + 1.0)) {
      return static_cast<std::uint64_t>(k);
    }
  }
  return static_cast<std::uint64_t>(std::llround(mean));
}

Expected<std::unique_ptr<SimDetector>> SimDetector::Create(const nlohmann::json& options) {
  std::string model = kSimDefaultModel;
  if (!options.is_null()) {
    if (!options.is_object()) {
      return MakeError(ErrorKind::kInvalidInput,
                       std::string("sim detector options: expected an object like {\"model\": \"...\"}, found ") +
                           options.type_name());
    }
    for (const auto& [key, value] : options.items()) {
      if (key == "model") {
        if (!value.is_string()) {
          return MakeError(ErrorKind::kInvalidInput,
                           "sim detector options: /model: expected a string, found " + value.dump());
        }
        model = value.get<std::string>();
      } else {
        return MakeError(ErrorKind::kInvalidInput,
                         "sim detector options: /" + key + ": unknown key; the sim driver accepts only \"model\"");
      }
    }
  }
  return std::unique_ptr<SimDetector>(new SimDetector(std::move(model)));
}

DetectorInfo SimDetector::Info() const {
  return DetectorInfo{"sim", model_, kSimMaxRows, kSimMaxChannels, kSimMaxViewRateHz};
}

Status SimDetector::Arm(const ScanProtocol& p) {
  armed_ = false;
  if (p.geometry != GeometryKind::kParallel) {
    return ArmError(ErrorKind::kUnsupported, "only the parallel-beam geometry is simulated");
  }
  if (p.sample_type != SampleType::kUint16) {
    return ArmError(ErrorKind::kUnsupported, std::string("sample_type \"") + ToString(p.sample_type) +
                                                 "\" is not supported by the sim driver yet; use \"uint16\"");
  }
  if (p.rows < 1 || p.rows > kSimMaxRows) {
    return ArmError(ErrorKind::kInvalidInput, "the protocol asks for " + std::to_string(p.rows) +
                                                  " rows; this detector has 1 to " + std::to_string(kSimMaxRows));
  }
  if (p.channels < 1 || p.channels > kSimMaxChannels) {
    return ArmError(ErrorKind::kInvalidInput, "the protocol asks for " + std::to_string(p.channels) +
                                                  " channels; this detector has 1 to " +
                                                  std::to_string(kSimMaxChannels));
  }
  if (p.views_per_rotation < 1 || p.rotations < 1) {
    return ArmError(ErrorKind::kInvalidInput, "views_per_rotation and rotations must be at least 1");
  }
  if (!Positive(p.rotation_time_s) || !Positive(p.channel_pitch_mm) || !Positive(p.row_pitch_mm)) {
    return ArmError(ErrorKind::kInvalidInput, "rotation_time_s, channel_pitch_mm and row_pitch_mm must be positive");
  }
  if (!std::isfinite(p.table_start_mm) || !std::isfinite(p.table_speed_mm_per_rotation)) {
    return ArmError(ErrorKind::kInvalidInput, "table_start_mm and table_speed_mm_per_rotation must be finite");
  }
  if (!(p.dose_fraction > 0.0 && p.dose_fraction <= 1.0)) {
    return ArmError(ErrorKind::kInvalidInput,
                    "dose_fraction must be in (0, 1], found " + std::to_string(p.dose_fraction));
  }
  if (!Positive(p.unattenuated_counts)) {
    return ArmError(ErrorKind::kInvalidInput, "unattenuated_counts must be positive");
  }
  if (p.real_time && p.ViewRateHz() > kSimMaxViewRateHz) {
    return ArmError(ErrorKind::kInvalidInput,
                    "real-time view rate " + std::to_string(p.ViewRateHz()) + " Hz exceeds the simulator's " +
                        std::to_string(kSimMaxViewRateHz) + " Hz; lengthen rotation_time_s");
  }

  protocol_ = p;
  next_sequence_ = 0;
  started_.reset();
  mean_cache_.clear();
  const std::uint64_t cache_bytes = std::uint64_t{p.views_per_rotation} * p.channels * sizeof(double);
  cache_enabled_ = cache_bytes <= kMaxCacheBytes;
  if (cache_enabled_) mean_cache_.resize(p.views_per_rotation);
  {
    std::lock_guard lock(mutex_);
    aborted_ = false;
  }
  armed_ = true;
  return Ok();
}

void SimDetector::Abort() {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
  }
  wake_.notify_all();
}

void SimDetector::ComputeMeanCounts(std::uint64_t angle_index, std::vector<double>& out) const {
  const std::uint32_t channels = protocol_.channels;
  const double theta = static_cast<double>(angle_index) * std::numbers::pi / protocol_.views_per_rotation;
  const double centre = (channels - 1) / 2.0;
  const double i0 = protocol_.unattenuated_counts * protocol_.dose_fraction;
  out.resize(channels);
  for (std::uint32_t c = 0; c < channels; ++c) {
    const double s = (c - centre) * protocol_.channel_pitch_mm;
    out[c] = i0 * std::exp(-PhantomLineIntegral(theta, s));
  }
}

const std::vector<double>& SimDetector::MeanCounts(std::uint64_t angle_index) {
  if (!cache_enabled_) {
    ComputeMeanCounts(angle_index, scratch_means_);
    return scratch_means_;
  }
  std::vector<double>& slot = mean_cache_[angle_index];
  if (slot.empty()) ComputeMeanCounts(angle_index, slot);
  return slot;
}

Expected<std::optional<View>> SimDetector::NextView() {
  if (!armed_) {
    return MakeError(ErrorKind::kInvalidInput, "sim detector: NextView() called before a successful Arm(); arm a scan first");
  }
  const std::uint64_t v = next_sequence_;
  const double rate_hz = protocol_.ViewRateHz();
  if (!started_) started_ = std::chrono::steady_clock::now();
  {
    std::unique_lock lock(mutex_);
    if (!aborted_ && protocol_.real_time && v < protocol_.TotalViews()) {
      // Absolute deadlines from the scan start, so pacing does not drift with processing time.
      const auto due = *started_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                       std::chrono::duration<double>(static_cast<double>(v) / rate_hz));
      wake_.wait_until(lock, due, [this] { return aborted_; });
    }
    if (aborted_) return MakeError(ErrorKind::kCancelled, "sim detector: scan aborted");
  }
  if (v >= protocol_.TotalViews()) return std::optional<View>{};

  const std::uint32_t rows = protocol_.rows;
  const std::uint32_t channels = protocol_.channels;
  const std::uint64_t vpr = protocol_.views_per_rotation;

  View view;
  view.sequence = v;
  view.gantry_angle_deg = static_cast<double>(v) * 180.0 / static_cast<double>(vpr);
  view.table_position_mm = protocol_.table_start_mm +
                           (static_cast<double>(v) / static_cast<double>(vpr)) * protocol_.table_speed_mm_per_rotation;
  view.timestamp_us = std::llround(static_cast<double>(v) * 1e6 / rate_hz);

  // Parallel rays at angle + 180 deg are the rays at angle with s negated, i.e. the channel
  // order reversed (channel positions are symmetric about the axis).
  const bool mirrored = ((v / vpr) % 2) == 1;
  const std::vector<double>& means = MeanCounts(v % vpr);

  // One generator per view, seeded from (seed, sequence): view v is the same bytes whether
  // it is reached by streaming from view 0 or by a fresh detector.
  std::mt19937_64 rng(SplitMix64(SplitMix64(protocol_.seed) + v));
  view.samples.resize(std::size_t{rows} * channels * sizeof(std::uint16_t));
  std::uint8_t* out = view.samples.data();
  for (std::uint32_t r = 0; r < rows; ++r) {
    for (std::uint32_t c = 0; c < channels; ++c) {
      std::uint64_t n = SamplePoisson(means[mirrored ? channels - 1 - c : c], rng);
      if (n > kMaxSampleValue) {
        n = kMaxSampleValue;
        view.status_flags |= kViewSaturated;
      }
      const auto sample = static_cast<std::uint16_t>(n);
      std::memcpy(out, &sample, sizeof sample);
      out += sizeof sample;
    }
  }
  next_sequence_ = v + 1;
  return std::optional<View>(std::move(view));
}

}  // namespace ctagent::drivers::sim
