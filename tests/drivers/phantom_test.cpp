// The analytic chest phantom: painted ground truth and line integrals checked against
// numeric integration of that ground truth along the same lines.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>
#include <vector>

#include "drivers/sim/phantom.hpp"

using namespace ctagent::drivers::sim;

namespace {

// Midpoint rule along the ray {x cos(theta) + y sin(theta) = s}, direction (-sin, cos).
double NumericLineIntegral(double theta, double s) {
  constexpr double kHalfLength = 250.0;  // beyond the body's 160 mm semi-axis
  constexpr double kStep = 0.01;
  const int steps = static_cast<int>(2 * kHalfLength / kStep);
  double sum = 0.0;
  for (int i = 0; i < steps; ++i) {
    const double t = -kHalfLength + (i + 0.5) * kStep;
    const double x = s * std::cos(theta) - t * std::sin(theta);
    const double y = s * std::sin(theta) + t * std::cos(theta);
    sum += HuToMu(PhantomHuAt(x, y)) * kStep;
  }
  return sum;
}

}  // namespace

TEST_CASE("phantom: the ellipses and ROIs are the published ones") {
  const auto& e = ChestPhantom();
  REQUIRE(e.size() == 4);
  CHECK(e[0].name == "body");
  CHECK(e[0].semi_axis_x_mm == 160);
  CHECK(e[0].semi_axis_y_mm == 115);
  CHECK(e[1].name == "right_lung");
  CHECK(e[1].center_x_mm == -65);
  CHECK(e[2].name == "left_lung");
  CHECK(e[2].center_x_mm == 65);
  CHECK(e[3].name == "spine");
  CHECK(e[3].center_y_mm == -85);
  CHECK(ChestPhantomRois().size() == 4);
  CHECK(HuToMu(-1000) == 0.0);
}

TEST_CASE("phantom: ground truth inside every ROI is the ROI's expected HU") {
  for (const Roi& roi : ChestPhantomRois()) {
    INFO(roi.name);
    for (int k = 0; k < 16; ++k) {
      const double a = k * std::numbers::pi / 8;
      for (double r : {0.0, 0.5 * roi.radius_mm, roi.radius_mm}) {
        CHECK(PhantomHuAt(roi.center_x_mm + r * std::cos(a), roi.center_y_mm + r * std::sin(a)) == roi.expected_hu);
      }
    }
  }
  CHECK(PhantomHuAt(0, 0) == 40);
  CHECK(PhantomHuAt(-65, 5) == -850);
  CHECK(PhantomHuAt(0, -85) == 700);
  CHECK(PhantomHuAt(161, 0) == -1000);
  CHECK(PhantomHuAt(0, 116) == -1000);
}

TEST_CASE("phantom: analytic line integrals match numeric integration") {
  int lines = 0;
  for (double theta_deg : {0.0, 17.0, 45.0, 90.0, 123.0, 179.0, 250.0}) {
    const double theta = theta_deg * std::numbers::pi / 180.0;
    for (double s = -170.0; s <= 170.0; s += 17.0) {
      const double analytic = PhantomLineIntegral(theta, s);
      const double numeric = NumericLineIntegral(theta, s);
      INFO("theta " << theta_deg << " deg, s " << s << " mm");
      CHECK(analytic == Approx(numeric).margin(2e-3));
      ++lines;
    }
  }
  CHECK(lines == 7 * 21);
  // Hand value: the vertical line x = 0 crosses 230 mm of body and 36 mm of spine.
  const double expected = 230 * HuToMu(40) + 36 * (HuToMu(700) - HuToMu(40));
  CHECK(PhantomLineIntegral(0.0, 0.0) == Approx(expected).epsilon(1e-12));
  // Lines that miss the body see air only.
  CHECK(PhantomLineIntegral(0.0, 161.0) == 0.0);
  CHECK(PhantomLineIntegral(std::numbers::pi / 2, -116.0) == 0.0);
}

TEST_CASE("phantom: opposite rays see the same line") {
  for (double theta : {0.1, 0.7, 1.9, 2.8}) {
    for (double s : {-120.0, -40.0, 0.0, 33.0, 150.0}) {
      CHECK(PhantomLineIntegral(theta + std::numbers::pi, s) == Approx(PhantomLineIntegral(theta, -s)).margin(1e-12));
    }
  }
}

namespace {

// Midpoint rule of the 3-D phantom's painted ground truth along a segment (0.05 mm steps).
double NumericSegmentIntegral(const ChestPhantom3d& phantom, const double a[3], const double b[3]) {
  const double d[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
  const double length = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  const int steps = static_cast<int>(length / 0.05);
  double sum = 0;
  for (int i = 0; i < steps; ++i) {
    const double t = (i + 0.5) / steps;
    sum += HuToMu(phantom.HuAt(a[0] + t * d[0], a[1] + t * d[1], a[2] + t * d[2]));
  }
  return sum * length / steps;
}

}  // namespace

TEST_CASE("phantom 3-D: through z = 0 it is the 2-D chest, plus the mediastinum, without ribs") {
  const ChestPhantom3d phantom;
  for (const auto& roi : ChestPhantomRois()) {
    CHECK(phantom.HuAt(roi.center_x_mm, roi.center_y_mm, 0.0) == roi.expected_hu);
  }
  CHECK(phantom.HuAt(0.0, 5.0, 0.0) == 50.0);  // mediastinum
  for (double x = -170; x <= 170; x += 5) {
    for (double y = -120; y <= 120; y += 5) {
      if (std::abs(x) <= 12 && std::abs(y - 5) <= 60) continue;  // the mediastinum's box
      INFO("(" << x << ", " << y << ")");
      CHECK(phantom.HuAt(x, y, 0.0) == PhantomHuAt(x, y));
    }
  }
  // Ribs (800 HU) sit at z = +-25 and +-55 mm on a ring between lungs and skin, not at z = 0.
  const double rib_x = 145 * std::cos(20 * std::numbers::pi / 180);
  const double rib_y = 106 * std::sin(20 * std::numbers::pi / 180);
  CHECK(phantom.HuAt(rib_x, rib_y, 25.0) == 800.0);
  CHECK(phantom.HuAt(rib_x, rib_y, 0.0) == 40.0);
  // The lungs are ellipsoids: smaller 100 mm up, gone 160 mm up.
  CHECK(phantom.HuAt(65, 5, 100) == -850.0);
  CHECK(phantom.HuAt(110, 5, 100) == 40.0);
  CHECK(phantom.HuAt(65, 5, 160) == 40.0);
}

TEST_CASE("phantom 3-D: closed-form chords match numeric integration, oblique rays and lesions included") {
  const ChestPhantom3d phantom({{Lesion::Kind::kGroundGlass, -60, 30, 4, 20, -650},
                                {Lesion::Kind::kConsolidation, 70, -10, -30, 16, 35}});
  CHECK(phantom.HuAt(-60, 30, 4) == -650.0);
  CHECK(phantom.HuAt(70, -10, -30) == 35.0);
  CHECK(DefaultLesionHu(Lesion::Kind::kGroundGlass) == -650.0);
  int rays = 0;
  for (double angle_deg : {0.0, 33.0, 90.0, 151.0, 222.0}) {
    const double beta = angle_deg * std::numbers::pi / 180;
    for (double gamma : {-0.3, -0.1, 0.0, 0.07, 0.25}) {
      for (double z : {-30.0, 0.0, 4.0, 25.0}) {
        // Source 570 mm out, detector 1040 mm along the ray, 8 mm higher: an oblique (cone) ray.
        const double a[3] = {570 * std::sin(beta), -570 * std::cos(beta), z};
        const double b[3] = {a[0] - 1040 * std::sin(beta - gamma), a[1] + 1040 * std::cos(beta - gamma), z + 8};
        INFO("beta " << angle_deg << " gamma " << gamma << " z " << z);
        CHECK(phantom.LineIntegral(a, b) == Approx(NumericSegmentIntegral(phantom, a, b)).margin(3e-3));
        ++rays;
      }
    }
  }
  CHECK(rays == 100);
  // In-plane ray at z = 0 along the y axis: the 2-D chest's value plus the mediastinum's 120 mm.
  const double a[3] = {0, -600, 0};
  const double b[3] = {0, 600, 0};
  CHECK(ChestPhantom3d().LineIntegral(a, b) ==
        Approx(PhantomLineIntegral(0.0, 0.0) + 120 * (HuToMu(50) - HuToMu(40))).epsilon(1e-12));
}

TEST_CASE("phantom 3-D: the per-view fan-beam chords equal the segment integral of every ray") {
  // The sim's fast path (FanSolidsFor + AccumulateFanChords) regroups the chord equation by
  // source, channel and row; it must give LineIntegral's numbers for every ray, ribs (z = +-25,
  // +-55), lesions, the z-cull and rays that start or end inside a solid included.
  const ChestPhantom3d phantom({{Lesion::Kind::kGroundGlass, -60, 30, 4, 20, -650},
                                {Lesion::Kind::kConsolidation, 70, -10, -30, 16, 35}});
  int rays = 0;
  int views_with_ribs = 0;
  for (double table : {-55.0, -30.0, 0.0, 4.0, 25.0, 52.0}) {
    for (double angle_deg : {0.0, 17.0, 90.0, 151.0, 222.0, 300.0}) {
      const double beta = angle_deg * std::numbers::pi / 180;
      // Rows rising -12 .. +12 mm over the segment, one of them level.
      const std::vector<double> z_det = {-12.0, -5.5, -0.7, 0.0, 0.7, 5.5, 12.0};
      for (double r_src : {570.0, 150.0}) {  // 150 mm: the source inside the body
        const double source[3] = {r_src * std::sin(beta), -r_src * std::cos(beta), table};
        const double z_lo = table - 12.0;
        const double z_hi = table + 12.0;
        const std::vector<FanSolid> solids = phantom.FanSolidsFor(source, z_lo, z_hi);
        for (int g = 0; g < 74; ++g) {
          const double gamma = -0.45 + 0.0123 * g;
          const double dir[2] = {-1040 * std::sin(beta - gamma), 1040 * std::cos(beta - gamma)};
          std::vector<double> total(z_det.size(), 0.0);
          AccumulateFanChords(solids, dir, z_det.data(), static_cast<std::uint32_t>(z_det.size()), total.data());
          for (std::size_t r = 0; r < z_det.size(); ++r) {
            const double to[3] = {source[0] + dir[0], source[1] + dir[1], table + z_det[r]};
            const double length = std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + z_det[r] * z_det[r]);
            const double expected = phantom.LineIntegral(source, to);
            INFO("table " << table << " beta " << angle_deg << " R " << r_src << " gamma " << gamma << " row " << r);
            REQUIRE(total[r] * length == Approx(expected).epsilon(1e-12).margin(1e-12));
            ++rays;
          }
        }
        // Body, mediastinum, lungs and spine always; more means ribs (or lesions) were in range.
        REQUIRE(solids.size() >= 5);
        if (solids.size() > 7) ++views_with_ribs;
      }
    }
  }
  CHECK(rays == 6 * 6 * 2 * 74 * 7);
  CHECK(views_with_ribs >= 8);
}
