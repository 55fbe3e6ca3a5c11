// Test helper: arms a detector and reads every view of the protocol (bounded by its view count).
#pragma once

#include <catch2/catch.hpp>

#include <vector>

#include "drivers/detector.hpp"

namespace ctagent::drivers::testing {

inline std::vector<View> ReadAll(Detector& d, const ScanProtocol& p) {
  REQUIRE(d.Arm(p));
  std::vector<View> views;
  for (std::uint64_t i = 0; i <= p.TotalViews(); ++i) {
    auto v = d.NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    views.push_back(std::move(**v));
  }
  return views;
}

}  // namespace ctagent::drivers::testing
