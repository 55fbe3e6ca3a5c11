#include "drivers/sim/phantom.hpp"

#include <cmath>
#include <numbers>

namespace ctagent::drivers::sim {

namespace {

constexpr double kDegToRad = std::numbers::pi / 180.0;

}  // namespace

const std::vector<Ellipse>& ChestPhantom() {
  // Other modules' tests (reconstruction, quantification) check against these numbers:
  // change them only together with those tests.
  static const std::vector<Ellipse> kPhantom = {
      {"body", 0.0, 0.0, 160.0, 115.0, 0.0, 40.0, -1000.0},
      {"right_lung", -65.0, 5.0, 50.0, 75.0, 0.0, -850.0, 40.0},
      {"left_lung", 65.0, 5.0, 50.0, 75.0, 0.0, -850.0, 40.0},
      {"spine", 0.0, -85.0, 18.0, 18.0, 0.0, 700.0, 40.0},
  };
  return kPhantom;
}

const std::vector<Roi>& ChestPhantomRois() {
  static const std::vector<Roi> kRois = {
      {"lung", 65.0, 10.0, 15.0, -850.0},
      {"soft_tissue_anterior", 0.0, 90.0, 10.0, 40.0},
      {"soft_tissue_lateral", -135.0, -40.0, 8.0, 40.0},
      {"spine", 0.0, -85.0, 8.0, 700.0},
  };
  return kRois;
}

double PhantomHuAt(double x_mm, double y_mm) {
  double hu = -1000.0;
  for (const Ellipse& e : ChestPhantom()) {
    // Into the ellipse's own frame: translate, then rotate by -rotation.
    const double phi = e.rotation_deg * kDegToRad;
    const double dx = x_mm - e.center_x_mm;
    const double dy = y_mm - e.center_y_mm;
    const double u = dx * std::cos(phi) + dy * std::sin(phi);
    const double v = -dx * std::sin(phi) + dy * std::cos(phi);
    const double r = (u * u) / (e.semi_axis_x_mm * e.semi_axis_x_mm) +
                     (v * v) / (e.semi_axis_y_mm * e.semi_axis_y_mm);
    if (r <= 1.0) hu = e.hu;
  }
  return hu;
}

double PhantomLineIntegral(double theta_rad, double s_mm) {
  double total = 0.0;
  for (const Ellipse& e : ChestPhantom()) {
    // In the ellipse's frame the line keeps its form x cos(t) + y sin(t) = s' with
    // t = theta - rotation and s' = s minus the centre's projection on the line normal.
    const double t = theta_rad - e.rotation_deg * kDegToRad;
    const double s = s_mm - (e.center_x_mm * std::cos(theta_rad) + e.center_y_mm * std::sin(theta_rad));
    const double a = e.semi_axis_x_mm;
    const double b = e.semi_axis_y_mm;
    // Chord of an axis-aligned ellipse cut by that line (the Shepp-Logan projection formula):
    // 2ab sqrt(r^2 - s^2) / r^2 with r^2 = a^2 cos^2 t + b^2 sin^2 t.
    const double r2 = a * a * std::cos(t) * std::cos(t) + b * b * std::sin(t) * std::sin(t);
    const double d2 = r2 - s * s;
    if (d2 <= 0.0) continue;
    const double chord_mm = 2.0 * a * b * std::sqrt(d2) / r2;
    total += chord_mm * (HuToMu(e.hu) - HuToMu(e.hu_below));
  }
  return total;
}

}  // namespace ctagent::drivers::sim
