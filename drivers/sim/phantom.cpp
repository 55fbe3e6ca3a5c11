#include "drivers/sim/phantom.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>

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

namespace ctagent::drivers::sim {

namespace {

// Rib cross-sections: small ellipsoids on an ellipse between the lungs and the skin, long axis
// tangential, at four levels away from the central slab (|z| >= 15 mm keeps the central rows
// and the ROIs of the 2-D chest clear of bone).
void AddRibs(std::vector<Solid>& solids) {
  constexpr double kRingX = 145.0;
  constexpr double kRingY = 106.0;
  constexpr double kLevelsMm[] = {-55.0, -25.0, 25.0, 55.0};
  constexpr double kAnglesDeg[] = {20, 45, 70, 110, 135, 160, 200, 225, 250, 290, 315, 340};
  for (double z : kLevelsMm) {
    for (double a : kAnglesDeg) {
      const double phi = a * kDegToRad;
      solids.push_back({"rib", Solid::Shape::kEllipsoid, kRingX * std::cos(phi), kRingY * std::sin(phi), z, 8.0, 4.0,
                        5.0, a + 90.0, 800.0, 40.0});
    }
  }
}

// Chord parameter interval [t0, t1] within [0, 1] of the segment a + t b (solid frame, scaled to
// the unit sphere/cylinder) inside the solid; false when it misses.
bool Interval(Solid::Shape shape, const double a[3], const double b[3], double* t0, double* t1) {
  const int dims = shape == Solid::Shape::kEllipsoid ? 3 : 2;
  double bb = 0, ab = 0, aa = 0;
  for (int i = 0; i < dims; ++i) {
    bb += b[i] * b[i];
    ab += a[i] * b[i];
    aa += a[i] * a[i];
  }
  double lo = 0.0;
  double hi = 1.0;
  if (bb < 1e-18) {
    // Parallel to the cylinder axis: inside for all t or for none.
    if (aa > 1.0) return false;
  } else {
    const double disc = ab * ab - bb * (aa - 1.0);
    if (disc <= 0.0) return false;
    const double root = std::sqrt(disc);
    lo = std::max(lo, (-ab - root) / bb);
    hi = std::min(hi, (-ab + root) / bb);
  }
  if (shape == Solid::Shape::kCylinder) {
    // |a_z + t b_z| <= 1
    if (std::fabs(b[2]) < 1e-18) {
      if (std::fabs(a[2]) > 1.0) return false;
    } else {
      double z0 = (-1.0 - a[2]) / b[2];
      double z1 = (1.0 - a[2]) / b[2];
      if (z0 > z1) std::swap(z0, z1);
      lo = std::max(lo, z0);
      hi = std::min(hi, z1);
    }
  }
  if (hi <= lo) return false;
  *t0 = lo;
  *t1 = hi;
  return true;
}

// Into the solid's frame, scaled so the solid is the unit sphere (or unit cylinder |z| <= 1);
// `cos_phi`, `sin_phi` of the solid's rotation are passed in because this runs per ray.
void ToUnit(const Solid& s, double cos_phi, double sin_phi, const double p[3], bool is_direction, double out[3]) {
  const double dx = p[0] - (is_direction ? 0.0 : s.center_x_mm);
  const double dy = p[1] - (is_direction ? 0.0 : s.center_y_mm);
  const double dz = p[2] - (is_direction ? 0.0 : s.center_z_mm);
  out[0] = (dx * cos_phi + dy * sin_phi) / s.semi_x_mm;
  out[1] = (-dx * sin_phi + dy * cos_phi) / s.semi_y_mm;
  out[2] = dz / s.semi_z_mm;
}

}  // namespace

double DefaultLesionHu(Lesion::Kind kind) { return kind == Lesion::Kind::kGroundGlass ? -650.0 : 35.0; }

ChestPhantom3d::ChestPhantom3d(const std::vector<Lesion>& lesions) {
  using Shape = Solid::Shape;
  // Through z = 0 this is ChestPhantom() (same centres, semi-axes and CT numbers).
  solids_ = {
      {"body", Shape::kCylinder, 0.0, 0.0, 0.0, 160.0, 115.0, 250.0, 0.0, 40.0, -1000.0},
      {"mediastinum", Shape::kEllipsoid, 0.0, 5.0, 0.0, 12.0, 60.0, 140.0, 0.0, 50.0, 40.0},
      {"right_lung", Shape::kEllipsoid, -65.0, 5.0, 0.0, 50.0, 75.0, 150.0, 0.0, -850.0, 40.0},
      {"left_lung", Shape::kEllipsoid, 65.0, 5.0, 0.0, 50.0, 75.0, 150.0, 0.0, -850.0, 40.0},
      {"spine", Shape::kCylinder, 0.0, -85.0, 0.0, 18.0, 18.0, 250.0, 0.0, 700.0, 40.0},
  };
  AddRibs(solids_);
  for (const Lesion& l : lesions) {
    const double r = l.diameter_mm / 2.0;
    solids_.push_back({l.kind == Lesion::Kind::kGroundGlass ? "ground_glass_lesion" : "consolidation_lesion",
                       Shape::kEllipsoid, l.x_mm, l.y_mm, l.z_mm, r, r, r, 0.0, l.hu, -850.0});
  }
  for (const Solid& s : solids_) {
    delta_mu_.push_back(HuToMu(s.hu) - HuToMu(s.hu_below));
    cos_.push_back(std::cos(s.rotation_deg * kDegToRad));
    sin_.push_back(std::sin(s.rotation_deg * kDegToRad));
  }
}

double ChestPhantom3d::HuAt(double x_mm, double y_mm, double z_mm) const {
  double hu = -1000.0;
  const double p[3] = {x_mm, y_mm, z_mm};
  for (std::size_t i = 0; i < solids_.size(); ++i) {
    const Solid& s = solids_[i];
    double u[3];
    ToUnit(s, cos_[i], sin_[i], p, false, u);
    const double r = s.shape == Solid::Shape::kEllipsoid ? u[0] * u[0] + u[1] * u[1] + u[2] * u[2]
                                                          : std::max(u[0] * u[0] + u[1] * u[1], u[2] * u[2]);
    if (r <= 1.0) hu = s.hu;
  }
  return hu;
}

double ChestPhantom3d::LineIntegral(const double from[3], const double to[3]) const {
  const double d[3] = {to[0] - from[0], to[1] - from[1], to[2] - from[2]};
  const double length = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  const double z_lo = std::min(from[2], to[2]);
  const double z_hi = std::max(from[2], to[2]);
  double total = 0.0;
  for (std::size_t i = 0; i < solids_.size(); ++i) {
    const Solid& s = solids_[i];
    // Cheap reject first: most ribs and lesions lie outside the segment's narrow z range.
    if (s.center_z_mm + s.semi_z_mm < z_lo || s.center_z_mm - s.semi_z_mm > z_hi) continue;
    double a[3];
    double b[3];
    ToUnit(s, cos_[i], sin_[i], from, false, a);
    ToUnit(s, cos_[i], sin_[i], d, true, b);
    double t0 = 0;
    double t1 = 0;
    if (Interval(s.shape, a, b, &t0, &t1)) total += (t1 - t0) * length * delta_mu_[i];
  }
  return total;
}

}  // namespace ctagent::drivers::sim

namespace ctagent::drivers::sim {

std::vector<FanSolid> ChestPhantom3d::FanSolidsFor(const double source[3], double z_lo, double z_hi) const {
  std::vector<FanSolid> out;
  out.reserve(solids_.size());
  for (std::size_t i = 0; i < solids_.size(); ++i) {
    const Solid& s = solids_[i];
    if (s.center_z_mm + s.semi_z_mm < z_lo || s.center_z_mm - s.semi_z_mm > z_hi) continue;
    FanSolid f;
    f.cylinder = s.shape == Solid::Shape::kCylinder;
    f.m00 = cos_[i] / s.semi_x_mm;
    f.m01 = sin_[i] / s.semi_x_mm;
    f.m10 = -sin_[i] / s.semi_y_mm;
    f.m11 = cos_[i] / s.semi_y_mm;
    double a[3];
    ToUnit(s, cos_[i], sin_[i], source, false, a);
    f.ax = a[0];
    f.ay = a[1];
    f.az = a[2];
    f.c_xy = a[0] * a[0] + a[1] * a[1] - 1.0;
    f.inv_semi_z = 1.0 / s.semi_z_mm;
    f.delta_mu = delta_mu_[i];
    out.push_back(f);
  }
  return out;
}

void AccumulateFanChords(const std::vector<FanSolid>& solids, const double dir_xy[2], const double* z_det,
                         std::uint32_t rows, double* total) {
  for (const FanSolid& f : solids) {
    // The in-plane part of the chord equation |a + t b|^2 = 1 (Interval() above, split into
    // x-y terms and z terms): the same for every row of this channel.
    const double bx = dir_xy[0] * f.m00 + dir_xy[1] * f.m01;
    const double by = dir_xy[0] * f.m10 + dir_xy[1] * f.m11;
    const double b_xy = bx * bx + by * by;
    const double ab_xy = f.ax * bx + f.ay * by;
    // The solid's footprint in x-y contains every cross-section, so an in-plane miss is a miss
    // for every row. (b_xy > 0: a fan ray always has an in-plane direction.)
    const double disc_xy = ab_xy * ab_xy - b_xy * f.c_xy;
    if (disc_xy <= 0.0 || !(b_xy > 1e-18)) continue;
    if (f.cylinder) {
      const double root = std::sqrt(disc_xy);
      const double lo = std::max(0.0, (-ab_xy - root) / b_xy);
      const double hi = std::min(1.0, (-ab_xy + root) / b_xy);
      if (hi <= lo) continue;
      for (std::uint32_t r = 0; r < rows; ++r) {
        // |az + t k| <= 1 with k the row's rise in the unit frame.
        const double k = z_det[r] * f.inv_semi_z;
        double t0 = lo;
        double t1 = hi;
        if (std::fabs(k) < 1e-18) {
          if (std::fabs(f.az) > 1.0) continue;
        } else {
          double z0 = (-1.0 - f.az) / k;
          double z1 = (1.0 - f.az) / k;
          if (z0 > z1) std::swap(z0, z1);
          t0 = std::max(t0, z0);
          t1 = std::min(t1, z1);
        }
        if (t1 > t0) total[r] += (t1 - t0) * f.delta_mu;
      }
    } else {
      const double c = f.c_xy + f.az * f.az;
      for (std::uint32_t r = 0; r < rows; ++r) {
        const double k = z_det[r] * f.inv_semi_z;
        const double bb = b_xy + k * k;
        const double ab = ab_xy + f.az * k;
        const double disc = ab * ab - bb * c;
        if (disc <= 0.0) continue;
        const double root = std::sqrt(disc);
        const double t0 = std::max(0.0, (-ab - root) / bb);
        const double t1 = std::min(1.0, (-ab + root) / bb);
        if (t1 > t0) total[r] += (t1 - t0) * f.delta_mu;
      }
    }
  }
}

}  // namespace ctagent::drivers::sim
