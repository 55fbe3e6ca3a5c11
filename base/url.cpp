#include "base/url.hpp"

#include <cstdio>

namespace ctagent {

std::string RedactUrl(std::string_view url) {
  std::string out(url);
  if (const auto scheme_end = url.find("://"); scheme_end != std::string_view::npos) {
    const std::size_t begin = scheme_end + 3;
    std::size_t end = url.find_first_of("/?#", begin);
    if (end == std::string_view::npos) end = url.size();
    const auto at = url.substr(begin, end - begin).rfind('@');
    if (at != std::string_view::npos) {
      out = std::string(url.substr(0, begin)) + "***" + std::string(url.substr(begin + at));
    }
  }
  std::string printable;
  for (const char ch : out) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      printable += hex;
    } else {
      printable += ch;
    }
  }
  return printable;
}

}  // namespace ctagent
