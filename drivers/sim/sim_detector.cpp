#include "drivers/sim/sim_detector.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <utility>

#include "drivers/sim/lesion_draw.hpp"
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

Unexpected ArmError(ErrorKind kind, const std::string& what) {
  return MakeError(kind, "sim detector: cannot arm: " + what);
}

bool Positive(double v) { return std::isfinite(v) && v > 0.0; }

}  // namespace

namespace {

// Uniform in (0, 1]: safe under log().
double UniformOpen0(SimRng& rng) { return (static_cast<double>(rng() >> 11) + 1.0) * 0x1.0p-53; }

// Doornik (2005), "An improved ziggurat method to generate normal random samples": 128 layers
// of equal area; x[i] are the layer edges, ratio[i] = x[i+1] / x[i] the share of layer i that
// lies wholly under the curve. Built once from std::exp/log/sqrt.
constexpr int kZigLayers = 128;
constexpr double kZigR = 3.442619855899;           // start of the tail
constexpr double kZigV = 9.91256303526217e-3;      // area of each layer
constexpr int kMaxNormalTries = 1000;              // the ziggurat accepts 98.8 % at the first try

struct Ziggurat {
  double x[kZigLayers + 1];
  double ratio[kZigLayers];
  Ziggurat() {
    double f = std::exp(-0.5 * kZigR * kZigR);
    x[0] = kZigV / f;  // the bottom layer: rectangle plus tail, as wide as its area needs
    x[1] = kZigR;
    x[kZigLayers] = 0.0;
    for (int i = 2; i < kZigLayers; ++i) {
      x[i] = std::sqrt(-2.0 * std::log(kZigV / x[i - 1] + f));
      f = std::exp(-0.5 * x[i] * x[i]);
    }
    for (int i = 0; i < kZigLayers; ++i) ratio[i] = x[i + 1] / x[i];
  }
};

const Ziggurat& ZigguratTables() {
  static const Ziggurat kTables;
  return kTables;
}

// The ziggurat beyond its first try (1.2 % of draws): the tail and the wedges.
[[gnu::noinline]] double NormalSlowPath(SimRng& rng, std::uint64_t bits) {
  const Ziggurat& z = ZigguratTables();
  for (int tries = 0; tries < kMaxNormalTries; ++tries) {
    if (tries > 0) bits = rng();
    const double u = 2.0 * (static_cast<double>(bits >> 11) * 0x1.0p-53) - 1.0;
    const auto i = static_cast<int>(bits & (kZigLayers - 1));
    if (std::fabs(u) < z.ratio[i]) return u * z.x[i];  // inside the layer's rectangle
    if (i == 0) {
      // The tail beyond kZigR (Marsaglia 1964).
      for (int t = 0; t < kMaxNormalTries; ++t) {
        const double tx = std::log(UniformOpen0(rng)) / kZigR;
        const double ty = std::log(UniformOpen0(rng));
        if (-2.0 * ty >= tx * tx) return u < 0 ? tx - kZigR : kZigR - tx;
      }
      return u < 0 ? -kZigR : kZigR;
    }
    // The wedge between the rectangle and the curve.
    const double x = u * z.x[i];
    const double f0 = std::exp(-0.5 * (z.x[i] * z.x[i] - x * x));
    const double f1 = std::exp(-0.5 * (z.x[i + 1] * z.x[i + 1] - x * x));
    if (f1 + Uniform01(rng) * (f0 - f1) < 1.0) return x;
  }
  return 0.0;
}

inline double StandardNormal(SimRng& rng) {
  static const Ziggurat& z = ZigguratTables();
  // One draw gives both the layer (low 7 bits) and the abscissa (top 53 bits): disjoint bits.
  const std::uint64_t bits = rng();
  const double u = 2.0 * (static_cast<double>(bits >> 11) * 0x1.0p-53) - 1.0;
  const auto i = static_cast<int>(bits & (kZigLayers - 1));
  if (std::fabs(u) < z.ratio[i]) return u * z.x[i];
  return NormalSlowPath(rng, bits);
}

[[gnu::noinline]] std::uint64_t PoissonBelowNormal(double mean, SimRng& rng);

// The sampler as the view loop calls it: the common case (large means) inlined.
inline std::uint64_t Poisson(double mean, SimRng& rng) {
  if (mean >= kPoissonNormalFromMean) {
    // Moment-matched rounded normal (header): variance mean - 1/12 before rounding; for x >= 0
    // the conversion truncates, i.e. floors.
    const double x = mean + std::sqrt(mean - 1.0 / 12.0) * StandardNormal(rng) + 0.5;
    return x >= 0.0 ? static_cast<std::uint64_t>(x) : 0;
  }
  return PoissonBelowNormal(mean, rng);
}

}  // namespace

double SampleStandardNormal(SimRng& rng) { return StandardNormal(rng); }

std::uint64_t SamplePoisson(double mean, SimRng& rng) { return Poisson(mean, rng); }

namespace {

std::uint64_t PoissonBelowNormal(double mean, SimRng& rng) {
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
  // Hoermann's transformed rejection with squeeze (PTRS, 1993), valid for mean >= 10. The
  // squeeze accepts ~86 % of tries without a logarithm, so log(mean) is taken only when needed.
  const double slam = std::sqrt(mean);
  const double b = 0.931 + 2.53 * slam;
  const double a = -0.059 + 0.02483 * b;
  const double inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
  const double vr = 0.9277 - 3.6224 / (b - 2.0);
  double loglam = 0;
  bool have_loglam = false;
  for (int i = 0; i < kMaxPoissonTries; ++i) {
    const double u = Uniform01(rng) - 0.5;
    const double v = Uniform01(rng);
    const double us = 0.5 - std::fabs(u);
    const double k = std::floor((2.0 * a / us + b) * u + mean + 0.43);
    if (us >= 0.07 && v <= vr) return static_cast<std::uint64_t>(k);
    if (!(k >= 0.0) || (us < 0.013 && v > us)) continue;
    if (!have_loglam) {
      loglam = std::log(mean);
      have_loglam = true;
    }
    if (std::log(v) + std::log(inv_alpha) - std::log(a / (us * us) + b) <= -mean + k * loglam - std::lgamma(k + 1.0)) {
      return static_cast<std::uint64_t>(k);
    }
  }
  return static_cast<std::uint64_t>(std::llround(mean));
}

}  // namespace

namespace {

Unexpected OptionError(const std::string& key, const std::string& what) {
  return MakeError(ErrorKind::kInvalidInput, "sim detector options: /" + key + ": " + what);
}

Expected<double> NumberIn(const nlohmann::json& object, const std::string& path, const char* key, double fallback,
                          double min, double max) {
  if (!object.contains(key)) return fallback;
  const nlohmann::json& v = object.at(key);
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < min || v.get<double>() > max) {
    return OptionError(path + "/" + key, "expected a number from " + std::to_string(min) + " to " +
                                             std::to_string(max) + ", found " + v.dump());
  }
  return v.get<double>();
}

Expected<Lesion> ParseLesion(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) return OptionError(path, "expected an object like {\"kind\": \"ground_glass\", \"x_mm\": 60, ...}");
  Lesion l;
  for (const auto& [key, value] : j.items()) {
    if (key != "kind" && key != "x_mm" && key != "y_mm" && key != "z_mm" && key != "diameter_mm" && key != "hu") {
      return OptionError(path + "/" + key, "unknown lesion key; use kind, x_mm, y_mm, z_mm, diameter_mm, hu");
    }
  }
  if (j.contains("kind")) {
    const nlohmann::json& k = j.at("kind");
    if (k == "ground_glass") {
      l.kind = Lesion::Kind::kGroundGlass;
    } else if (k == "consolidation") {
      l.kind = Lesion::Kind::kConsolidation;
    } else {
      return OptionError(path + "/kind", "expected \"ground_glass\" or \"consolidation\", found " + k.dump());
    }
  }
  auto x = NumberIn(j, path, "x_mm", 0, -500, 500);
  auto y = NumberIn(j, path, "y_mm", 0, -500, 500);
  auto z = NumberIn(j, path, "z_mm", 0, -500, 500);
  auto d = NumberIn(j, path, "diameter_mm", 10, 0.5, 200);
  auto hu = NumberIn(j, path, "hu", DefaultLesionHu(l.kind), -1000, 3000);
  for (const auto* e : {&x, &y, &z, &d, &hu}) {
    if (!*e) return MakeError(e->error());
  }
  l.x_mm = *x;
  l.y_mm = *y;
  l.z_mm = *z;
  l.diameter_mm = *d;
  l.hu = *hu;
  return l;
}

// "lesions": "drawn" (the defaults) or {"max_count", "none_probability", "min_diameter_mm",
// "max_diameter_mm", "consolidation_probability", "clearance_mm", "z_min_mm", "z_max_mm"}.
Expected<LesionDrawOptions> ParseLesionDraw(const nlohmann::json& j) {
  LesionDrawOptions o;
  if (j.is_string()) {
    if (j == "drawn") return o;
    return OptionError("lesions", "expected \"drawn\", draw parameters {\"max_count\": 4, ...} or a list of lesions, found " +
                                      j.dump());
  }
  for (const auto& [key, value] : j.items()) {
    if (key != "max_count" && key != "none_probability" && key != "min_diameter_mm" && key != "max_diameter_mm" &&
        key != "consolidation_probability" && key != "clearance_mm" && key != "z_min_mm" && key != "z_max_mm") {
      return OptionError("lesions/" + key,
                         "unknown draw parameter; use max_count, none_probability, min_diameter_mm, max_diameter_mm, "
                         "consolidation_probability, clearance_mm, z_min_mm, z_max_mm");
    }
  }
  auto count = NumberIn(j, "lesions", "max_count", o.max_count, 0, kMaxDrawnLesions);
  auto none = NumberIn(j, "lesions", "none_probability", o.none_probability, 0, 1);
  auto d_min = NumberIn(j, "lesions", "min_diameter_mm", o.min_diameter_mm, 1, 100);
  auto d_max = NumberIn(j, "lesions", "max_diameter_mm", o.max_diameter_mm, 1, 100);
  auto consolidation = NumberIn(j, "lesions", "consolidation_probability", o.consolidation_probability, 0, 1);
  auto clearance = NumberIn(j, "lesions", "clearance_mm", o.clearance_mm, 0, 50);
  auto z_min = NumberIn(j, "lesions", "z_min_mm", o.z_min_mm, -500, 500);
  auto z_max = NumberIn(j, "lesions", "z_max_mm", o.z_max_mm, -500, 500);
  for (const auto* e : {&count, &none, &d_min, &d_max, &consolidation, &clearance, &z_min, &z_max}) {
    if (!*e) return MakeError(e->error());
  }
  if (*d_max < *d_min) return OptionError("lesions/max_diameter_mm", "must not be below min_diameter_mm");
  if (*z_max < *z_min) return OptionError("lesions/z_max_mm", "must not be below z_min_mm");
  o.max_count = static_cast<std::uint32_t>(*count);
  o.none_probability = *none;
  o.min_diameter_mm = *d_min;
  o.max_diameter_mm = *d_max;
  o.consolidation_probability = *consolidation;
  o.clearance_mm = *clearance;
  o.z_min_mm = *z_min;
  o.z_max_mm = *z_max;
  return o;
}

}  // namespace

Expected<std::unique_ptr<SimDetector>> SimDetector::Create(const nlohmann::json& options) {
  std::string model = kSimDefaultModel;
  std::vector<Lesion> lesions;
  std::optional<LesionDrawOptions> lesion_draw;  // "lesions": drawn from each scan's seed at Arm()
  std::vector<std::uint32_t> dead;
  double gain_sd = 0;
  if (!options.is_null()) {
    if (!options.is_object()) {
      return MakeError(ErrorKind::kInvalidInput,
                       std::string("sim detector options: expected an object like {\"model\": \"...\"}, found ") +
                           options.type_name());
    }
    for (const auto& [key, value] : options.items()) {
      if (key == "model") {
        if (!value.is_string()) return OptionError("model", "expected a string, found " + value.dump());
        model = value.get<std::string>();
      } else if (key == "lesions") {
        if (value.is_string() || value.is_object()) {
          auto draw = ParseLesionDraw(value);
          if (!draw) return MakeError(draw.error());
          lesion_draw = *draw;
          continue;
        }
        if (!value.is_array()) {
          return OptionError("lesions", "expected an array of lesion objects, \"drawn\" or draw parameters");
        }
        for (std::size_t i = 0; i < value.size(); ++i) {
          auto l = ParseLesion(value[i], "lesions/" + std::to_string(i));
          if (!l) return MakeError(l.error());
          lesions.push_back(*l);
        }
      } else if (key == "dead_channels") {
        if (!value.is_array()) return OptionError("dead_channels", "expected an array of channel numbers");
        for (const auto& c : value) {
          if (!c.is_number_integer() || c.get<std::int64_t>() < 0 || c.get<std::int64_t>() >= kSimMaxChannels) {
            return OptionError("dead_channels", "expected channel numbers from 0 to " +
                                                    std::to_string(kSimMaxChannels - 1) + ", found " + c.dump());
          }
          dead.push_back(c.get<std::uint32_t>());
        }
      } else if (key == "channel_gain_sd") {
        auto g = NumberIn(options, "", "channel_gain_sd", 0, 0, 0.5);
        if (!g) return MakeError(g.error());
        gain_sd = *g;
      } else {
        return MakeError(ErrorKind::kInvalidInput,
                         "sim detector options: /" + key +
                             ": unknown key; the sim driver accepts model, lesions, dead_channels, channel_gain_sd");
      }
    }
  }
  std::unique_ptr<SimDetector> detector(new SimDetector(std::move(model), std::move(lesions), std::move(dead), gain_sd));
  detector->lesion_draw_ = lesion_draw;
  return detector;
}

SimDetector::SimDetector(std::string model, std::vector<Lesion> lesions, std::vector<std::uint32_t> dead_channels,
                         double channel_gain_sd)
    : model_(std::move(model)),
      phantom_(lesions),
      dead_channels_(std::move(dead_channels)),
      channel_gain_sd_(channel_gain_sd) {}

DetectorInfo SimDetector::Info() const {
  return DetectorInfo{"sim", model_, kSimMaxRows, kSimMaxChannels, kSimMaxViewRateHz};
}

Status SimDetector::Arm(const ScanProtocol& p) {
  armed_ = false;
  if (p.geometry != GeometryKind::kParallel && p.geometry != GeometryKind::kFan) {
    return ArmError(ErrorKind::kUnsupported, "only the parallel-beam and fan-beam geometries are simulated");
  }
  if (p.geometry == GeometryKind::kFan) {
    if (!Positive(p.source_to_isocenter_mm) || !(p.source_to_detector_mm > p.source_to_isocenter_mm)) {
      return ArmError(ErrorKind::kInvalidInput, "fan beam needs 0 < source_to_isocenter_mm < source_to_detector_mm");
    }
    // The fan must stay within +-90 degrees; a real fan is about +-25.
    const double half_fan = (p.channels - 1) / 2.0 * p.channel_pitch_mm / p.source_to_isocenter_mm;
    if (half_fan >= 1.5) {
      return ArmError(ErrorKind::kInvalidInput, "the fan of " + std::to_string(p.channels) + " channels at " +
                                                    std::to_string(p.channel_pitch_mm) +
                                                    " mm is too wide; reduce channel_pitch_mm or channels");
    }
  }
  if (p.sample_encoding == SampleEncoding::kLineIntegral &&
      !(Positive(p.line_integral_slope) && std::isfinite(p.line_integral_intercept))) {
    return ArmError(ErrorKind::kInvalidInput, "line_integral encoding needs a positive line_integral_slope");
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
  // Drawn lesions are a property of the scan: the phantom is rebuilt from this scan's seed.
  if (lesion_draw_) phantom_ = ChestPhantom3d(DrawLesions(p.seed, *lesion_draw_));
  next_sequence_ = 0;
  started_.reset();
  mean_cache_.clear();
  // Parallel views share one profile for all rows; fan views differ per row (cone, 3-D
  // phantom) and repeat only when the table stands still.
  const bool fan = p.geometry == GeometryKind::kFan;
  const std::uint64_t cache_bytes =
      std::uint64_t{p.views_per_rotation} * p.channels * (fan ? p.rows : 1) * sizeof(double);
  cache_enabled_ = cache_bytes <= kMaxCacheBytes && (!fan || p.table_speed_mm_per_rotation == 0);
  if (cache_enabled_) mean_cache_.resize(p.views_per_rotation);
  // Per-channel gains: a fixed property of this (simulated) detector, the same for every scan.
  gain_.assign(p.channels, 1.0);
  if (channel_gain_sd_ > 0) {
    std::mt19937_64 gain_rng(SplitMix64(0x6761696eull));
    for (double& g : gain_) {
      // Box-Muller from the portable uniforms; gains clamped positive.
      const double u1 = std::max(Uniform01(gain_rng), 1e-300);
      const double u2 = Uniform01(gain_rng);
      const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
      g = std::max(0.05, 1.0 + channel_gain_sd_ * z);
    }
  }
  cos_gamma_.assign(p.channels, 1.0);
  sin_gamma_.assign(p.channels, 0.0);
  if (fan) {
    const double centre = (p.channels - 1) / 2.0;
    for (std::uint32_t c = 0; c < p.channels; ++c) {
      const double gamma = (c - centre) * p.channel_pitch_mm / p.source_to_isocenter_mm;
      cos_gamma_[c] = std::cos(gamma);
      sin_gamma_[c] = std::sin(gamma);
    }
  }
  dead_.assign(p.channels, false);
  for (std::uint32_t c : dead_channels_) {
    if (c < p.channels) dead_[c] = true;
  }
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

double SimDetector::TablePositionMm(std::uint64_t v) const {
  const auto vpr = static_cast<double>(protocol_.views_per_rotation);
  return protocol_.table_start_mm + (static_cast<double>(v) / vpr) * protocol_.table_speed_mm_per_rotation;
}

void SimDetector::ComputeMeanCounts(std::uint64_t v, std::vector<double>& out) const {
  const std::uint32_t channels = protocol_.channels;
  const double centre = (channels - 1) / 2.0;
  const double i0 = protocol_.unattenuated_counts * protocol_.dose_fraction;
  if (protocol_.geometry == GeometryKind::kParallel) {
    const std::uint64_t angle_index = v % protocol_.views_per_rotation;
    const double theta = static_cast<double>(angle_index) * std::numbers::pi / protocol_.views_per_rotation;
    out.resize(channels);
    for (std::uint32_t c = 0; c < channels; ++c) {
      const double s = (c - centre) * protocol_.channel_pitch_mm;
      out[c] = i0 * std::exp(-PhantomLineIntegral(theta, s));
    }
    return;
  }
  // Fan beam: source at angle beta on a circle of radius R; channel c's ray leaves at fan angle
  // gamma and runs in direction (-sin(beta - gamma), cos(beta - gamma)), i.e. it is the parallel
  // ray (theta = beta - gamma, s = R sin gamma). Row r's ray rises z_r over the source-detector
  // distance (a true cone: a straight segment from the source to the detector cell's centre).
  // Patient z of a lab point = lab z + table.
  const std::uint32_t rows = protocol_.rows;
  const double r_src = protocol_.source_to_isocenter_mm;
  const double r_det = protocol_.source_to_detector_mm;
  const double beta = 2.0 * std::numbers::pi * static_cast<double>(v % protocol_.views_per_rotation) /
                      protocol_.views_per_rotation;
  const double table = TablePositionMm(v);
  const double source[3] = {r_src * std::sin(beta), -r_src * std::cos(beta), table};
  const double row_centre = (rows - 1) / 2.0;
  std::vector<double> z_det(rows);  // rise of row r's ray from source to detector [mm]
  std::vector<double> length(rows);
  double z_lo = table;
  double z_hi = table;
  for (std::uint32_t r = 0; r < rows; ++r) {
    z_det[r] = (r - row_centre) * protocol_.row_pitch_mm * r_det / r_src;
    length[r] = std::sqrt(r_det * r_det + z_det[r] * z_det[r]);
    z_lo = std::min(z_lo, table + z_det[r]);
    z_hi = std::max(z_hi, table + z_det[r]);
  }
  const std::vector<FanSolid> solids = phantom_.FanSolidsFor(source, z_lo, z_hi);
  out.resize(std::size_t{rows} * channels);
  std::vector<double> total(rows);
  const double sin_beta = std::sin(beta);
  const double cos_beta = std::cos(beta);
  for (std::uint32_t c = 0; c < channels; ++c) {
    // The ray's angle is beta - gamma_c; its sine and cosine by the angle-difference formulas
    // from the channel's fan-angle trig, computed once at Arm.
    const double sin_ray = sin_beta * cos_gamma_[c] - cos_beta * sin_gamma_[c];
    const double cos_ray = cos_beta * cos_gamma_[c] + sin_beta * sin_gamma_[c];
    const double dir[2] = {-r_det * sin_ray, r_det * cos_ray};
    std::fill(total.begin(), total.end(), 0.0);
    AccumulateFanChords(solids, dir, z_det.data(), rows, total.data());
    for (std::uint32_t r = 0; r < rows; ++r) {
      out[std::size_t{r} * channels + c] = i0 * std::exp(-total[r] * length[r]);
    }
  }
}

const std::vector<double>& SimDetector::MeanCounts(std::uint64_t v) {
  if (!cache_enabled_) {
    ComputeMeanCounts(v, scratch_means_);
    return scratch_means_;
  }
  std::vector<double>& slot = mean_cache_[v % protocol_.views_per_rotation];
  if (slot.empty()) ComputeMeanCounts(v, slot);
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

  const bool fan = protocol_.geometry == GeometryKind::kFan;
  View view;
  view.sequence = v;
  view.gantry_angle_deg = static_cast<double>(v) * protocol_.DegreesPerRotation() / static_cast<double>(vpr);
  view.table_position_mm = TablePositionMm(v);
  view.timestamp_us = std::llround(static_cast<double>(v) * 1e6 / rate_hz);

  // Parallel rays at angle + 180 deg are the rays at angle with s negated, i.e. the channel
  // order reversed (channel positions are symmetric about the axis).
  const bool mirrored = !fan && ((v / vpr) % 2) == 1;
  const std::vector<double>& means = MeanCounts(v);
  const bool line_integrals = protocol_.sample_encoding == SampleEncoding::kLineIntegral;
  const double i0 = protocol_.unattenuated_counts * protocol_.dose_fraction;

  // One random stream per detector row, seeded from (seed, sequence, row): view v is the same
  // bytes whether it is reached by streaming from view 0 or by a fresh detector, and rows can
  // be drawn in any order.
  const std::uint64_t view_key = SplitMix64(SplitMix64(protocol_.seed) + v);
  view.samples.resize(std::size_t{rows} * channels * sizeof(std::uint16_t));
  std::uint8_t* out = view.samples.data();
  for (std::uint32_t r = 0; r < rows; ++r) {
    SimRng rng(SplitMix64(view_key + r));
    for (std::uint32_t c = 0; c < channels; ++c) {
      const std::size_t index = fan ? std::size_t{r} * channels + c : (mirrored ? channels - 1 - c : c);
      // Noise is drawn for dead channels too, so one dead channel leaves the others' bytes unchanged.
      std::uint64_t n = Poisson(means[index] * gain_[c], rng);
      if (dead_[c]) {
        n = 0;
        view.status_flags |= kViewDeadChannel;
      }
      std::uint64_t sample = n;
      if (line_integrals) {
        // What a DICOM-CT-PD scanner delivers: log-normalised by its air calibration
        // (I0 x gain), quantised with the protocol's rescale; a dead channel reads the top code.
        const double p = std::log(i0 * gain_[c] / std::max(static_cast<double>(n), 0.5));
        const double code = std::round((p - protocol_.line_integral_intercept) / protocol_.line_integral_slope);
        sample = dead_[c] ? kMaxSampleValue : static_cast<std::uint64_t>(std::clamp(code, 0.0, 65535.0));
        if (code > 65535.0 && !dead_[c]) view.status_flags |= kViewSaturated;
      } else if (n > kMaxSampleValue) {
        sample = kMaxSampleValue;
        view.status_flags |= kViewSaturated;
      }
      const auto value = static_cast<std::uint16_t>(sample);
      std::memcpy(out, &value, sizeof value);
      out += sizeof value;
    }
  }
  next_sequence_ = v + 1;
  return std::optional<View>(std::move(view));
}

}  // namespace ctagent::drivers::sim
