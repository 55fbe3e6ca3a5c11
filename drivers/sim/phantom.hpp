// The simulated detector's phantom: a z-invariant chest cross-section made of ellipses with
// known CT numbers, so a reconstruction can be checked against ground truth.
// Coordinates in mm at isocenter, x to the patient's left on screen (image column grows with x),
// y grows towards image row 0 (anterior up).
#pragma once

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

}  // namespace ctagent::drivers::sim
