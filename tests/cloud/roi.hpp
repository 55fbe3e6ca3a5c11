// Test helper: mean CT number in a circular region of a reconstructed image.
#pragma once

#include <catch2/catch.hpp>

#include "cloud/worker/recon.hpp"

namespace ctagent::cloud::testing {

// Mean HU of the pixels whose centres lie within `radius` of (x, y) [mm].
inline double RoiMean(const HuImage& image, double x, double y, double radius) {
  double sum = 0;
  int count = 0;
  for (std::uint32_t row = 0; row < image.size; ++row) {
    for (std::uint32_t col = 0; col < image.size; ++col) {
      const double dx = image.XOfColumn(col) - x;
      const double dy = image.YOfRow(row) - y;
      if (dx * dx + dy * dy <= radius * radius) {
        sum += static_cast<double>(image.At(row, col));
        ++count;
      }
    }
  }
  REQUIRE(count > 0);
  return sum / count;
}

}  // namespace ctagent::cloud::testing
