// Reading an integer out of a parsed JSON value without a silent cast.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>

namespace ctagent {

// `v` as a T when it holds an integer that fits T; nothing for a fraction, a float, an integer
// out of T's range or a value that is not a number. nlohmann's get<T>() casts whatever number it
// holds: a fraction is truncated, a negative number wraps into an unsigned T and a float beyond
// T's range is undefined behaviour (manifest_fuzz found that one), so every count, size and index
// read from JSON goes through here. `Json` is nlohmann::json; a template, so base does not depend
// on the JSON library.
template <typename T, typename Json>
std::optional<T> IntegerAs(const Json& v) {
  if (v.is_number_unsigned()) {
    const auto n = v.template get<std::uint64_t>();
    if (std::in_range<T>(n)) return static_cast<T>(n);
  } else if (v.is_number_integer()) {
    const auto n = v.template get<std::int64_t>();
    if (std::in_range<T>(n)) return static_cast<T>(n);
  }
  return std::nullopt;
}

}  // namespace ctagent
