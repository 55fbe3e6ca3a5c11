// Small text helpers shared by the transport sources (internal, not part of the public API).
#pragma once

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

namespace ctagent::transport::detail {

inline std::string ToLower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

}  // namespace ctagent::transport::detail
