// The analytic chest phantom: painted ground truth and line integrals checked against
// numeric integration of that ground truth along the same lines.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

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
