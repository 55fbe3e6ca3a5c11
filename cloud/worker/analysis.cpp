// The reference lung analysis (a reference, not a diagnostic product): thresholds and
// connected components on the reconstructed volume. The steps and their reasons are in
// docs/reference-imaging-center.md ("Lung analysis").
#include "cloud/worker/analysis.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <thread>
#include <utility>

namespace ctagent::cloud {

namespace {

constexpr std::uint8_t kRightLabel = 1;
constexpr std::uint8_t kLeftLabel = 2;
constexpr std::size_t kMaxLesions = 254;  // labels 1 + index must fit a byte
constexpr std::uint32_t kMinSlices = 3;

std::string Mm(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f mm", v);
  return buf;
}

std::string Num(double v, const char* unit) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%g %s", v, unit);
  return buf;
}

// The volume's shape: voxel (slice, row, column) at index (slice * size + row) * size + column.
struct Grid {
  std::uint32_t slices = 0;
  std::uint32_t size = 0;
  std::size_t plane = 0;
  std::size_t voxels = 0;
};

// Runs fn(first, last) over [0, count) in up to `threads` contiguous strips, one thread each.
template <typename Fn>
void InStrips(std::uint32_t count, std::uint32_t threads, Fn fn) {
  const std::uint32_t strips = std::clamp<std::uint32_t>(threads, 1, std::max<std::uint32_t>(count, 1));
  std::vector<std::thread> pool;
  const std::uint32_t per = (count + strips - 1) / strips;
  for (std::uint32_t s = 1; s < strips; ++s) {
    const std::uint32_t first = std::min(count, s * per);
    const std::uint32_t last = std::min(count, first + per);
    pool.emplace_back([=] { fn(first, last); });
  }
  fn(0, std::min(count, per));
  for (auto& t : pool) t.join();
}

// 6-connected components of the voxels where in(i): each is passed to on_component(voxels)
// once, its voxels listed; labels[i] gets the component's number (from 1) or stays 0.
template <typename In, typename On>
void Components(const Grid& g, In in, std::vector<std::uint32_t>& labels, On on_component) {
  labels.assign(g.voxels, 0);
  std::vector<std::uint32_t> stack;
  std::vector<std::uint32_t> members;
  std::uint32_t next = 0;
  for (std::size_t seed = 0; seed < g.voxels; ++seed) {
    if (labels[seed] != 0 || !in(seed)) continue;
    ++next;
    members.clear();
    stack.assign(1, static_cast<std::uint32_t>(seed));
    labels[seed] = next;
    while (!stack.empty()) {  // bounded: each voxel is pushed at most once
      const std::uint32_t i = stack.back();
      stack.pop_back();
      members.push_back(i);
      const std::size_t column = i % g.size;
      const std::size_t row = (i / g.size) % g.size;
      const std::size_t slice = i / g.plane;
      auto visit = [&](std::size_t j) {
        if (labels[j] == 0 && in(j)) {
          labels[j] = next;
          stack.push_back(static_cast<std::uint32_t>(j));
        }
      };
      if (column > 0) visit(i - 1);
      if (column + 1 < g.size) visit(i + 1);
      if (row > 0) visit(i - g.size);
      if (row + 1 < g.size) visit(i + g.size);
      if (slice > 0) visit(i - g.plane);
      if (slice + 1 < g.slices) visit(i + g.plane);
    }
    on_component(members);
  }
}

AnalysisResult Failed(AnalysisResult r, std::string reason) {
  r.category = StudyCategory::kFailed;
  r.failure_reason = std::move(reason);
  r.category_rule = "failed: the volume could not be analysed";
  r.lesions.clear();
  return r;
}

// 3 x 3 in-plane mean (edges use the pixels that exist): cuts the noise SD about threefold
// before thresholds are applied.
void Smooth(const std::vector<HuImage>& slices, const Grid& g, std::uint32_t first, std::uint32_t last,
            std::vector<float>& out) {
  const auto n = static_cast<std::int64_t>(g.size);
  for (std::uint32_t s = first; s < last; ++s) {
    const std::vector<float>& hu = slices[s].hu;
    float* dst = out.data() + s * g.plane;
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t c = 0; c < n; ++c) {
        float sum = 0;
        int count = 0;
        for (std::int64_t dr = std::max<std::int64_t>(0, r - 1); dr <= std::min(n - 1, r + 1); ++dr) {
          for (std::int64_t dc = std::max<std::int64_t>(0, c - 1); dc <= std::min(n - 1, c + 1); ++dc) {
            sum += hu[static_cast<std::size_t>(dr * n + dc)];
            ++count;
          }
        }
        dst[r * n + c] = sum / static_cast<float>(count);
      }
    }
  }
}

// Per slice and lung: pixels the lung encloses in the plane (its lesions, which are denser than
// the air threshold) join the lung. A flood from the image border over everything that is not
// this lung reaches all but the enclosed pixels.
void FillHoles(const Grid& g, std::uint32_t first, std::uint32_t last, std::vector<std::uint8_t>& mask) {
  const std::uint32_t n = g.size;
  std::vector<std::uint8_t> reached(g.plane);
  std::vector<std::uint32_t> stack;
  for (std::uint32_t s = first; s < last; ++s) {
    std::uint8_t* m = mask.data() + s * g.plane;
    for (std::uint8_t lung : {kRightLabel, kLeftLabel}) {
      std::fill(reached.begin(), reached.end(), 0);
      stack.clear();
      auto push = [&](std::uint32_t i) {
        if (!reached[i] && m[i] != lung) {
          reached[i] = 1;
          stack.push_back(i);
        }
      };
      for (std::uint32_t k = 0; k < n; ++k) {
        push(k);
        push((n - 1) * n + k);
        push(k * n);
        push(k * n + n - 1);
      }
      while (!stack.empty()) {  // bounded: each pixel is pushed at most once
        const std::uint32_t i = stack.back();
        stack.pop_back();
        const std::uint32_t r = i / n;
        const std::uint32_t c = i % n;
        if (c > 0) push(i - 1);
        if (c + 1 < n) push(i + 1);
        if (r > 0) push(i - n);
        if (r + 1 < n) push(i + n);
      }
      for (std::size_t i = 0; i < g.plane; ++i) {
        if (!reached[i] && m[i] != lung) m[i] = lung;
      }
    }
  }
}

// In-plane erosion by a square of half-width `e` pixels: eroded[i] = the lung label when every
// pixel within e rows and e columns has it. Two separable passes of run lengths.
void Erode(const Grid& g, std::uint32_t e, std::uint32_t first, std::uint32_t last, const std::vector<std::uint8_t>& mask,
           std::vector<std::uint8_t>& eroded) {
  const std::uint32_t n = g.size;
  std::vector<std::uint8_t> horizontal(g.plane);
  std::vector<std::uint32_t> run(n);
  for (std::uint32_t s = first; s < last; ++s) {
    const std::uint8_t* m = mask.data() + s * g.plane;
    std::uint8_t* out = eroded.data() + s * g.plane;
    // Pass 1 (rows): keep pixels whose run of equal non-zero labels reaches e on both sides.
    for (std::uint32_t r = 0; r < n; ++r) {
      const std::uint8_t* line = m + std::size_t{r} * n;
      for (std::uint32_t c = 0; c < n; ++c) run[c] = line[c] == 0 ? 0 : (c > 0 && line[c - 1] == line[c] ? run[c - 1] + 1 : 1);
      std::uint32_t right = 0;
      for (std::uint32_t c = n; c-- > 0;) {
        right = line[c] == 0 ? 0 : (c + 1 < n && line[c + 1] == line[c] ? right + 1 : 1);
        horizontal[std::size_t{r} * n + c] = (run[c] > e && right > e) ? line[c] : 0;
      }
    }
    // Pass 2 (columns) on the result of pass 1.
    for (std::uint32_t c = 0; c < n; ++c) {
      for (std::uint32_t r = 0; r < n; ++r) {
        const std::uint8_t v = horizontal[std::size_t{r} * n + c];
        run[r] = v == 0 ? 0 : (r > 0 && horizontal[std::size_t{r - 1} * n + c] == v ? run[r - 1] + 1 : 1);
      }
      std::uint32_t below = 0;
      for (std::uint32_t r = n; r-- > 0;) {
        const std::uint8_t v = horizontal[std::size_t{r} * n + c];
        below = v == 0 ? 0 : (r + 1 < n && horizontal[std::size_t{r + 1} * n + c] == v ? below + 1 : 1);
        out[std::size_t{r} * n + c] = (run[r] > e && below > e) ? v : 0;
      }
    }
  }
}

}  // namespace

AnalysisResult Analyze(const std::vector<HuImage>& slices, const AnalysisOptions& options) {
  const auto started = std::chrono::steady_clock::now();
  AnalysisResult result;
  result.lungs[0].lung = Lung::kRight;
  result.lungs[1].lung = Lung::kLeft;
  auto finish = [&](AnalysisResult r) {
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return r;
  };

  // ---- The volume's shape ----
  if (slices.size() < kMinSlices) {
    return finish(Failed(std::move(result), "the volume has " + std::to_string(slices.size()) +
                                                " slices; the lung analysis needs at least " +
                                                std::to_string(kMinSlices)));
  }
  const HuImage& first = slices.front();
  if (first.size < 8 || !(first.pixel_spacing_mm > 0)) {
    return finish(Failed(std::move(result), "the slices have no usable matrix or pixel spacing"));
  }
  for (std::size_t s = 0; s < slices.size(); ++s) {
    const HuImage& im = slices[s];
    if (im.size != first.size || im.pixel_spacing_mm != first.pixel_spacing_mm ||
        im.hu.size() != std::size_t{im.size} * im.size) {
      return finish(Failed(std::move(result), "slice " + std::to_string(s) +
                                                  " differs in matrix or pixel spacing from the first slice"));
    }
    if (s > 0 && !(im.z_mm > slices[s - 1].z_mm)) {
      return finish(Failed(std::move(result), "the slices are not in ascending z order (slice " + std::to_string(s) + ")"));
    }
  }
  Grid g;
  g.slices = static_cast<std::uint32_t>(slices.size());
  g.size = first.size;
  g.plane = std::size_t{g.size} * g.size;
  g.voxels = g.plane * g.slices;
  if (g.voxels >= std::numeric_limits<std::uint32_t>::max()) {
    return finish(Failed(std::move(result), "the volume is too large for the reference analysis (over 2^32 voxels)"));
  }
  const double spacing_z = (slices.back().z_mm - first.z_mm) / (g.slices - 1);
  for (std::size_t s = 1; s < slices.size(); ++s) {
    if (std::fabs(slices[s].z_mm - slices[s - 1].z_mm - spacing_z) > 0.01 * spacing_z + 1e-6) {
      return finish(Failed(std::move(result), "the slices are not evenly spaced along z (slice " + std::to_string(s) + ")"));
    }
  }
  const double coverage_mm = spacing_z * g.slices;
  if (coverage_mm < options.min_coverage_mm) {
    return finish(Failed(std::move(result), "the volume covers " + Mm(coverage_mm) +
                                                " along z; the lung analysis needs at least " +
                                                Mm(options.min_coverage_mm) +
                                                " (scan both lungs, e.g. the low-dose chest protocol)"));
  }
  const double pixel = first.pixel_spacing_mm;
  const double voxel_ml = pixel * pixel * spacing_z / 1000.0;
  const std::uint32_t threads = std::max<std::uint32_t>(options.max_threads, 1);

  // ---- Smoothing ----
  std::vector<float> smooth(g.voxels);
  InStrips(g.slices, threads, [&](std::uint32_t a, std::uint32_t b) { Smooth(slices, g, a, b, smooth); });

  // ---- Lungs: enclosed air, the two largest regions ----
  struct AirRegion {
    std::uint32_t label;
    std::size_t voxels;
    double sum_x;
    bool touches_border;
  };
  std::vector<AirRegion> regions;
  std::vector<std::uint32_t> labels;
  const auto air_below = static_cast<float>(options.air_below_hu);
  Components(
      g, [&](std::size_t i) { return smooth[i] < air_below; }, labels,
      [&](const std::vector<std::uint32_t>& members) {
        AirRegion region{labels[members.front()], members.size(), 0.0, false};
        for (std::uint32_t i : members) {
          const std::uint32_t column = i % g.size;
          const std::uint32_t row = (i / g.size) % g.size;
          region.sum_x += first.XOfColumn(column);
          if (row == 0 || column == 0 || row + 1 == g.size || column + 1 == g.size) region.touches_border = true;
        }
        if (!region.touches_border && static_cast<double>(region.voxels) * voxel_ml >= options.min_lung_ml) {
          regions.push_back(region);
        }
      });
  std::sort(regions.begin(), regions.end(), [](const AirRegion& a, const AirRegion& b) { return a.voxels > b.voxels; });
  result.lung_mask.slices = g.slices;
  result.lung_mask.size = g.size;
  result.lung_mask.labels.assign(g.voxels, 0);
  std::vector<std::uint8_t>& lung = result.lung_mask.labels;
  if (regions.empty()) {
    return finish(Failed(std::move(result), "no lungs found: no enclosed air region of at least " +
                                                Num(options.min_lung_ml, "mL") + " inside the body"));
  }
  if (regions.size() >= 2) {
    // The patient's right lung lies at negative x (HuImage orientation).
    const bool first_is_right = regions[0].sum_x / static_cast<double>(regions[0].voxels) <
                                regions[1].sum_x / static_cast<double>(regions[1].voxels);
    const std::uint32_t right = first_is_right ? regions[0].label : regions[1].label;
    const std::uint32_t left = first_is_right ? regions[1].label : regions[0].label;
    for (std::size_t i = 0; i < g.voxels; ++i) {
      if (labels[i] == right) lung[i] = kRightLabel;
      if (labels[i] == left) lung[i] = kLeftLabel;
    }
  } else {
    // One region: lungs joined across the midline; split at x = 0 when both halves are lung-sized.
    std::size_t halves[2] = {0, 0};
    for (std::size_t i = 0; i < g.voxels; ++i) {
      if (labels[i] != regions[0].label) continue;
      const bool right = first.XOfColumn(static_cast<double>(i % g.size)) < 0;
      lung[i] = right ? kRightLabel : kLeftLabel;
      ++halves[right ? 0 : 1];
    }
    if (static_cast<double>(std::min(halves[0], halves[1])) * voxel_ml < options.min_lung_ml) {
      return finish(Failed(std::move(result), "found one lung only (" +
                                                  Num(std::round(static_cast<double>(regions[0].voxels) * voxel_ml), "mL") +
                                                  "); the analysis needs both"));
    }
  }
  InStrips(g.slices, threads, [&](std::uint32_t a, std::uint32_t b) { FillHoles(g, a, b, lung); });

  // ---- Where lesions are searched: away from the lung wall, in-plane and along z ----
  std::vector<std::uint8_t> inner(g.voxels, 0);
  const auto margin_px = static_cast<std::uint32_t>(std::ceil(options.wall_margin_mm / pixel));
  InStrips(g.slices, threads, [&](std::uint32_t a, std::uint32_t b) { Erode(g, margin_px, a, b, lung, inner); });
  for (std::uint32_t s = 0; s < g.slices; ++s) {
    for (std::size_t p = 0; p < g.plane; ++p) {
      std::uint8_t& v = inner[s * g.plane + p];
      if (v == 0) continue;
      const bool below_ok = s > 0 && lung[(s - 1) * g.plane + p] == v;
      const bool above_ok = s + 1 < g.slices && lung[(s + 1) * g.plane + p] == v;
      if (!below_ok || !above_ok) v = 0;
    }
  }
  // Aerated lung background: mean smoothed HU of the searched voxels below the lesion threshold.
  const auto lesion_min = static_cast<float>(options.lesion_min_hu);
  double background_sum = 0;
  std::size_t background_n = 0;
  for (std::size_t i = 0; i < g.voxels; ++i) {
    if (inner[i] != 0 && smooth[i] < lesion_min) {
      background_sum += static_cast<double>(smooth[i]);
      ++background_n;
    }
  }
  const double background_hu = background_n > 0 ? background_sum / static_cast<double>(background_n) : -850.0;
  const auto consolidation_edge = static_cast<float>((background_hu + options.consolidation_hu) / 2.0);

  // ---- Lesions: 3-D regions of dense lung ----
  struct Found {
    LesionFinding finding;
    std::vector<std::uint32_t> voxels;
  };
  std::vector<Found> found;
  Components(
      g, [&](std::size_t i) { return inner[i] != 0 && smooth[i] >= lesion_min; }, labels,
      [&](const std::vector<std::uint32_t>& members) {
        if (static_cast<double>(members.size()) * voxel_ml < options.min_lesion_ml) return;
        float peak = -std::numeric_limits<float>::infinity();
        for (std::uint32_t i : members) peak = std::max(peak, smooth[i]);
        Found f;
        const bool consolidation = peak >= static_cast<float>(options.consolidation_min_hu);
        f.finding.type = consolidation ? LesionType::kConsolidation : LesionType::kGroundGlass;
        for (std::uint32_t i : members) {
          if (!consolidation || smooth[i] >= consolidation_edge) f.voxels.push_back(i);
        }
        if (static_cast<double>(f.voxels.size()) * voxel_ml < options.min_lesion_ml) return;
        double sx = 0, sy = 0, sz = 0, hu = 0;
        std::size_t in_right = 0;
        std::uint32_t first_slice = g.slices, last_slice = 0;
        // Per-slice bounding boxes for the in-plane diameter.
        std::vector<std::array<std::uint32_t, 4>> box(g.slices, {g.size, 0, g.size, 0});
        for (std::uint32_t i : f.voxels) {
          const std::uint32_t column = i % g.size;
          const std::uint32_t row = (i / g.size) % g.size;
          const auto slice = static_cast<std::uint32_t>(i / g.plane);
          sx += first.XOfColumn(column);
          sy += first.YOfRow(row);
          sz += slices[slice].z_mm;
          hu += static_cast<double>(slices[slice].hu[i % g.plane]);
          if (inner[i] == kRightLabel) ++in_right;
          first_slice = std::min(first_slice, slice);
          last_slice = std::max(last_slice, slice);
          auto& b = box[slice];
          b[0] = std::min(b[0], row);
          b[1] = std::max(b[1], row);
          b[2] = std::min(b[2], column);
          b[3] = std::max(b[3], column);
        }
        const auto n = static_cast<double>(f.voxels.size());
        f.finding.x_mm = sx / n;
        f.finding.y_mm = sy / n;
        f.finding.z_mm = sz / n;
        f.finding.mean_hu = hu / n;
        f.finding.volume_ml = n * voxel_ml;
        f.finding.lung = 2 * in_right >= f.voxels.size() ? Lung::kRight : Lung::kLeft;
        f.finding.first_slice = first_slice;
        f.finding.last_slice = last_slice;
        for (std::uint32_t s = first_slice; s <= last_slice; ++s) {
          const auto& b = box[s];
          if (b[1] < b[0]) continue;
          const double extent = std::max(b[1] - b[0], b[3] - b[2]) + 1;
          f.finding.max_diameter_mm = std::max(f.finding.max_diameter_mm, extent * pixel);
        }
        found.push_back(std::move(f));
      });
  labels = {};
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.finding.volume_ml > b.finding.volume_ml; });
  if (found.size() > kMaxLesions) found.resize(kMaxLesions);
  result.lesion_mask.slices = g.slices;
  result.lesion_mask.size = g.size;
  result.lesion_mask.labels.assign(g.voxels, 0);
  for (std::size_t k = 0; k < found.size(); ++k) {
    Found& f = found[k];
    f.finding.label = static_cast<std::uint32_t>(k + 1);
    for (std::uint32_t i : f.voxels) result.lesion_mask.labels[i] = static_cast<std::uint8_t>(k + 1);
    f.voxels = {};
    result.lesions.push_back(f.finding);
  }

  // ---- Per lung: volume, lesion volume, involvement, histogram ----
  std::array<std::array<std::uint64_t, kHistogramBins>, 2> histograms[2] = {};
  std::array<std::size_t, 2> lung_voxels[2] = {};
  InStrips(2, threads, [&](std::uint32_t a, std::uint32_t b) {
    for (std::uint32_t strip = a; strip < b; ++strip) {
      const std::uint32_t per = (g.slices + 1) / 2;
      for (std::uint32_t s = strip * per; s < std::min(g.slices, (strip + 1) * per); ++s) {
        for (std::size_t p = 0; p < g.plane; ++p) {
          const std::uint8_t v = lung[s * g.plane + p];
          if (v == 0) continue;
          const int side = v == kRightLabel ? 0 : 1;
          ++lung_voxels[strip][side];
          const double hu = slices[s].hu[p];
          const auto bin = static_cast<int>(std::floor((hu - kHistogramMinHu) / kHistogramBinHu));
          ++histograms[strip][side][static_cast<std::size_t>(std::clamp(bin, 0, kHistogramBins - 1))];
        }
      }
    }
  });
  for (int side = 0; side < 2; ++side) {
    LungFindings& lf = result.lungs[static_cast<std::size_t>(side)];
    lf.volume_ml = static_cast<double>(lung_voxels[0][side] + lung_voxels[1][side]) * voxel_ml;
    for (int b = 0; b < kHistogramBins; ++b) {
      lf.histogram[static_cast<std::size_t>(b)] = histograms[0][side][static_cast<std::size_t>(b)] +
                                                  histograms[1][side][static_cast<std::size_t>(b)];
    }
  }
  for (const LesionFinding& l : result.lesions) result.lungs[static_cast<std::size_t>(l.lung)].lesion_volume_ml += l.volume_ml;
  for (LungFindings& lf : result.lungs) {
    lf.involvement_percent = lf.volume_ml > 0 ? 100.0 * lf.lesion_volume_ml / lf.volume_ml : 0.0;
  }

  // ---- Category ----
  const std::string rule = "high risk when a lesion reaches " + Num(options.high_risk_lesion_ml, "mL") +
                           " or a lung's involvement reaches " + Num(options.high_risk_involvement_percent, "%") +
                           "; lesions from " + Num(options.min_lesion_ml, "mL") + " are detected";
  bool high_risk = false;
  for (const LesionFinding& l : result.lesions) high_risk = high_risk || l.volume_ml >= options.high_risk_lesion_ml;
  for (const LungFindings& lf : result.lungs) {
    high_risk = high_risk || lf.involvement_percent >= options.high_risk_involvement_percent;
  }
  result.category = high_risk ? StudyCategory::kHighRisk : StudyCategory::kNormal;
  result.category_rule = rule;
  return finish(std::move(result));
}

}  // namespace ctagent::cloud
