// Lesions drawn from a scan's seed (drivers/sim/lesion_draw.hpp): the ground truth of the
// reference lung analysis. Deterministic, sometimes none, always wholly inside one lung, and
// what the sim detector scans when its options say "lesions": "drawn".
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include <nlohmann/json.hpp>

#include "drivers/sim/lesion_draw.hpp"
#include "drivers/sim/phantom.hpp"
#include "drivers/sim/sim_detector.hpp"

using namespace ctagent::drivers::sim;
using ctagent::drivers::ScanProtocol;

namespace {

constexpr std::uint64_t kSeeds = 500;

bool Same(const std::vector<Lesion>& a, const std::vector<Lesion>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].kind != b[i].kind || a[i].x_mm != b[i].x_mm || a[i].y_mm != b[i].y_mm || a[i].z_mm != b[i].z_mm ||
        a[i].diameter_mm != b[i].diameter_mm || a[i].hu != b[i].hu) {
      return false;
    }
  }
  return true;
}

// Every sample point of the sphere (a 1 mm grid, not only the points the draw checks) has
// the lung's CT number in the lesion-free chest.
bool DenselyInsideLung(const ChestPhantom3d& chest, const Lesion& l, double clearance) {
  const double r = l.diameter_mm / 2 + clearance;
  for (double dx = -r; dx <= r; dx += 1.0) {
    for (double dy = -r; dy <= r; dy += 1.0) {
      for (double dz = -r; dz <= r; dz += 1.0) {
        if (dx * dx + dy * dy + dz * dz > r * r) continue;
        if (chest.HuAt(l.x_mm + dx, l.y_mm + dy, l.z_mm + dz) != -850.0) return false;
      }
    }
  }
  return true;
}

}  // namespace

TEST_CASE("lesion draw: a seed always draws the same lesions, and other seeds draw others") {
  int differing = 0;
  for (std::uint64_t seed = 1; seed <= 50; ++seed) {
    const auto a = DrawLesions(seed);
    CHECK(Same(a, DrawLesions(seed)));
    if (!Same(a, DrawLesions(seed + 1))) ++differing;
  }
  CHECK(differing >= 40);
  // The stream is SimRng's, not the standard library's: these values hold on every platform.
  const auto fixed = DrawLesions(1);
  REQUIRE(fixed.size() == 4);
  CHECK(fixed[0].kind == Lesion::Kind::kGroundGlass);
  CHECK(fixed[0].diameter_mm == Approx(29.0).margin(0.1));
}

TEST_CASE("lesion draw: zero lesions is a possible draw (about a fifth of seeds), and up to max_count") {
  std::uint64_t none = 0;
  std::size_t most = 0;
  std::size_t kinds[2] = {0, 0};
  for (std::uint64_t seed = 0; seed < kSeeds; ++seed) {
    const auto lesions = DrawLesions(seed);
    if (lesions.empty()) ++none;
    most = std::max(most, lesions.size());
    for (const Lesion& l : lesions) ++kinds[l.kind == Lesion::Kind::kGroundGlass ? 0 : 1];
  }
  // 20 % expected: 100 of 500, binomial SD 9; the band is over 4 SD wide on each side.
  CHECK(none >= 60);
  CHECK(none <= 140);
  CHECK(most == LesionDrawOptions{}.max_count);
  CHECK(kinds[0] > 0);
  CHECK(kinds[1] > 0);
  LesionDrawOptions never;
  never.none_probability = 0;
  for (std::uint64_t seed = 0; seed < 100; ++seed) CHECK_FALSE(DrawLesions(seed, never).empty());
  LesionDrawOptions always;
  always.none_probability = 1;
  for (std::uint64_t seed = 0; seed < 100; ++seed) CHECK(DrawLesions(seed, always).empty());
}

TEST_CASE("lesion draw: every lesion lies wholly inside one lung with its clearance, apart from the others") {
  const ChestPhantom3d chest;
  const LesionDrawOptions o;
  std::size_t checked = 0;
  for (std::uint64_t seed = 0; seed < 60; ++seed) {
    const auto lesions = DrawLesions(seed, o);
    for (std::size_t i = 0; i < lesions.size(); ++i) {
      const Lesion& l = lesions[i];
      INFO("seed " << seed << " lesion " << i);
      CHECK(l.diameter_mm >= o.min_diameter_mm);
      CHECK(l.diameter_mm <= o.max_diameter_mm);
      CHECK(l.hu == DefaultLesionHu(l.kind));
      CHECK(DenselyInsideLung(chest, l, o.clearance_mm - 1.0));
      for (std::size_t j = 0; j < i; ++j) {
        const Lesion& m = lesions[j];
        CHECK(std::hypot(l.x_mm - m.x_mm, l.y_mm - m.y_mm, l.z_mm - m.z_mm) >=
              (l.diameter_mm + m.diameter_mm) / 2 + o.clearance_mm);
      }
      ++checked;
    }
  }
  CHECK(checked > 50);
  // The checker itself refuses a sphere that crosses the lung wall or sits in the mediastinum.
  CHECK(SphereInsideLung(chest, -65, 5, 0, 20));
  CHECK_FALSE(SphereInsideLung(chest, -65, 5, 0, 55));
  CHECK_FALSE(SphereInsideLung(chest, 0, 5, 0, 5));
}

TEST_CASE("lesion draw: z limits keep lesion centres in the range a short protocol covers") {
  LesionDrawOptions o;
  o.none_probability = 0;
  o.z_min_mm = -20;
  o.z_max_mm = 20;
  for (std::uint64_t seed = 0; seed < 100; ++seed) {
    for (const Lesion& l : DrawLesions(seed, o)) {
      CHECK(l.z_mm >= -20);
      CHECK(l.z_mm <= 20);
    }
  }
}

TEST_CASE("sim detector: \"lesions\": \"drawn\" scans the lesions drawn from each scan's seed") {
  // One fan view through the first drawn lesion's centre: the drawn-lesions detector gives the
  // bytes of a detector given that draw as an explicit list, and differs from a lesion-free one.
  // Armed again with another seed, the same detector scans that seed's draw.
  LesionDrawOptions o;
  o.none_probability = 0;
  o.z_min_mm = -10;
  o.z_max_mm = 10;
  const nlohmann::json draw_options = {{"none_probability", 0}, {"z_min_mm", -10}, {"z_max_mm", 10}};
  auto as_list = [](const std::vector<Lesion>& lesions) {
    nlohmann::json list = nlohmann::json::array();
    for (const Lesion& l : lesions) {
      list.push_back({{"kind", l.kind == Lesion::Kind::kGroundGlass ? "ground_glass" : "consolidation"},
                      {"x_mm", l.x_mm}, {"y_mm", l.y_mm}, {"z_mm", l.z_mm}, {"diameter_mm", l.diameter_mm}, {"hu", l.hu}});
    }
    return list;
  };
  auto protocol = [](std::uint64_t seed, double z) {
    ScanProtocol p = ctagent::drivers::SixteenSliceAxialProtocol();
    p.rows = 2;
    p.views_per_rotation = 8;
    p.seed = seed;
    p.table_start_mm = z;
    return p;
  };
  auto first_view = [](SimDetector& sim, const ScanProtocol& p) {
    REQUIRE(sim.Arm(p));
    auto v = sim.NextView();
    REQUIRE(v);
    REQUIRE(v->has_value());
    return (**v).samples;
  };
  auto fresh_view = [&](const nlohmann::json& options, const ScanProtocol& p) {
    auto sim = SimDetector::Create(options);
    REQUIRE(sim);
    return first_view(**sim, p);
  };
  const auto truth_7 = DrawLesions(7, o);
  const auto truth_8 = DrawLesions(8, o);
  REQUIRE_FALSE(truth_7.empty());
  REQUIRE_FALSE(truth_8.empty());
  auto drawn = SimDetector::Create({{"lesions", draw_options}});
  REQUIRE(drawn);
  const ScanProtocol p7 = protocol(7, truth_7[0].z_mm);
  const auto view_7 = first_view(**drawn, p7);
  CHECK(view_7 == fresh_view({{"lesions", as_list(truth_7)}}, p7));
  CHECK(view_7 != fresh_view(nlohmann::json::object(), p7));
  const ScanProtocol p8 = protocol(8, truth_8[0].z_mm);
  const auto view_8 = first_view(**drawn, p8);
  CHECK(view_8 == fresh_view({{"lesions", as_list(truth_8)}}, p8));
  CHECK(view_8 != fresh_view({{"lesions", as_list(truth_7)}}, p8));
}

TEST_CASE("sim detector: lesion draw options are checked") {
  CHECK(SimDetector::Create({{"lesions", "drawn"}}));
  CHECK(SimDetector::Create({{"lesions", {{"max_count", 2}, {"min_diameter_mm", 8}}}}));
  auto bad_word = SimDetector::Create({{"lesions", "random"}});
  REQUIRE_FALSE(bad_word);
  CHECK(bad_word.error().message().find("/lesions") != std::string::npos);
  auto bad_key = SimDetector::Create({{"lesions", {{"count", 2}}}});
  REQUIRE_FALSE(bad_key);
  CHECK(bad_key.error().message().find("/lesions/count") != std::string::npos);
  auto inverted = SimDetector::Create({{"lesions", {{"min_diameter_mm", 20}, {"max_diameter_mm", 10}}}});
  REQUIRE_FALSE(inverted);
  CHECK(inverted.error().message().find("max_diameter_mm") != std::string::npos);
  CHECK_FALSE(SimDetector::Create({{"lesions", {{"max_count", 99}}}}));
}
