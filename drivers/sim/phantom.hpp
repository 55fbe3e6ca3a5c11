// The simulated detector's phantom: a z-invariant chest cross-section made of ellipses with
// known CT numbers, so a reconstruction can be checked against ground truth.
// Coordinates in mm at isocenter, x to the patient's left on screen (image column grows with x),
// y grows towards image row 0 (anterior up).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ctagent::drivers::sim {

// Linear attenuation coefficient of water at the simulated effective energy (~70 keV) [1/mm].
inline constexpr double kMuWaterPerMm = 0.0193;

inline double HuToMu(double hu) { return kMuWaterPerMm * (1.0 + hu / 1000.0); }

struct Ellipse {
  std::string name;
  double center_x_mm;
  double center_y_mm;
  double semi_axis_x_mm;
  double semi_axis_y_mm;
  double rotation_deg;
  // CT number of the region [HU]. Ellipses are painted in order: a later one replaces
  // what lies beneath it (its attenuation is added as the difference to the one below).
  double hu;
  double hu_below;
};

// Body (soft tissue, 40 HU), two lungs (-850 HU), mediastinum/heart (40 HU), spine (700 HU).
const std::vector<Ellipse>& ChestPhantom();

// Ground truth at a point [HU]; air (-1000) outside the body.
double PhantomHuAt(double x_mm, double y_mm);

// Line integral of mu along the parallel ray at angle theta (radians, the ray direction is
// (-sin, cos)) and signed distance s [mm] from the origin, i.e. points x cos + y sin = s.
double PhantomLineIntegral(double theta_rad, double s_mm);

// Regions of interest for checks: centres well inside a uniform region.
struct Roi {
  std::string name;
  double center_x_mm;
  double center_y_mm;
  double radius_mm;
  double expected_hu;
};
const std::vector<Roi>& ChestPhantomRois();

// ---- The 3-D chest phantom of the fan-beam simulator ----
// Patient coordinates [mm]: x, y as above, z along the table axis (z = 0 is the phantom's
// centre). Every shape has a closed-form chord with a straight line, so fan and cone rays are
// integrated exactly. Through z = 0 the phantom is the 2-D chest above (same CT numbers and
// ROIs), plus a mediastinum and, away from the central 20 mm, ribs.
struct Solid {
  enum class Shape : std::uint8_t {
    kEllipsoid,  // semi-axes (a, b, c)
    kCylinder,   // elliptic cylinder along z: (a, b) in x-y, |z - centre_z| <= c
  };
  std::string name;
  Shape shape;
  double center_x_mm, center_y_mm, center_z_mm;
  double semi_x_mm, semi_y_mm, semi_z_mm;
  double rotation_deg;  // about z
  double hu;            // painted in order, like Ellipse
  double hu_below;
};

// A lesion inside a lung: a sphere of the given diameter and CT number.
struct Lesion {
  enum class Kind : std::uint8_t { kGroundGlass, kConsolidation };
  Kind kind = Kind::kGroundGlass;
  double x_mm = 0, y_mm = 0, z_mm = 0;
  double diameter_mm = 10;
  double hu = -650;  // ground glass ~ -650 HU, consolidation ~ +30..40 HU
};

// CT number of a lesion kind when none is given.
double DefaultLesionHu(Lesion::Kind kind);

// A solid of the 3-D chest prepared for the rays of one fan-beam view (ChestPhantom3d::
// FanSolidsFor): every ray of the view starts at the same source and differs only in its
// in-plane direction (per channel) and its rise in z (per row), so the terms of the chord
// equation that depend on the source alone are computed once per view here.
struct FanSolid {
  bool cylinder = false;
  double m00 = 0, m01 = 0, m10 = 0, m11 = 0;  // lab (x, y) direction -> the solid's unit frame
  double ax = 0, ay = 0, az = 0;              // the source in the unit frame
  double c_xy = 0;                            // ax^2 + ay^2 - 1
  double inv_semi_z = 0;
  double delta_mu = 0;
};

// Adds, for every row r, the sum over `solids` of (chord parameter interval within [0, 1]) x
// delta_mu to total[r], for the segments from the view's source to source + (dir_xy[0],
// dir_xy[1], z_det[r]). Multiplying by the segment's length gives the line integral; it equals
// ChestPhantom3d::LineIntegral of that segment (same closed forms, terms grouped by what they
// depend on). In-plane misses are culled per channel before any row is looked at.
void AccumulateFanChords(const std::vector<FanSolid>& solids, const double dir_xy[2], const double* z_det,
                         std::uint32_t rows, double* total);

class ChestPhantom3d {
 public:
  // The chest with `lesions` added (painted over the lung they sit in, whose CT number they replace).
  explicit ChestPhantom3d(const std::vector<Lesion>& lesions = {});

  const std::vector<Solid>& solids() const { return solids_; }
  // Ground truth at a point [HU]; air outside the body.
  double HuAt(double x_mm, double y_mm, double z_mm) const;
  // Integral of mu [1/mm] along the segment from `from` to `to` (points in mm; the whole
  // phantom lies between source and detector, so the segment covers every crossing).
  double LineIntegral(const double from[3], const double to[3]) const;
  // The solids that rays from `source` can meet within patient z in [z_lo, z_hi] (the view's
  // rays all stay in that range), prepared for AccumulateFanChords.
  std::vector<FanSolid> FanSolidsFor(const double source[3], double z_lo, double z_hi) const;

 private:
  std::vector<Solid> solids_;
  std::vector<double> delta_mu_;  // mu(hu) - mu(hu_below) per solid
  std::vector<double> cos_, sin_;  // of each solid's rotation
};

}  // namespace ctagent::drivers::sim
