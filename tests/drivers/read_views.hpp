// Test helper: arms a detector and reads every view of the protocol (bounded by its view count).
#pragma once

#include <catch2/catch.hpp>

#include <functional>
#include <vector>

#include "drivers/detector.hpp"

namespace ctagent::drivers::testing {

// `arrived` (optional) sees each view the moment NextView() returns it (a pacing test times it).
inline std::vector<View> ReadAll(Detector& d, const ScanProtocol& p,
                                 const std::function<void(const View&)>& arrived = {}) {
  REQUIRE(d.Arm(p));
  std::vector<View> views;
  for (std::uint64_t i = 0; i <= p.TotalViews(); ++i) {
    auto v = d.NextView();
    REQUIRE(v);
    if (!v->has_value()) break;
    if (arrived) arrived(**v);
    views.push_back(std::move(**v));
  }
  return views;
}

}  // namespace ctagent::drivers::testing
