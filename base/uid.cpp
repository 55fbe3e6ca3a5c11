#include "base/uid.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>

namespace ctagent {

std::string MintDicomUid() {
  std::array<std::uint8_t, 16> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw std::runtime_error("OpenSSL RAND_bytes failed while minting a UID");
  }
  bytes[6] = static_cast<std::uint8_t>((bytes[6] & 0x0f) | 0x40);  // UUID version 4
  bytes[8] = static_cast<std::uint8_t>((bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return DicomUidFromUuid(bytes);
}

std::string DicomUidFromUuid(std::array<std::uint8_t, 16> n) {
  // The 128-bit big-endian integer in decimal, by repeated division by 10.
  std::string digits;
  bool nonzero = true;
  while (nonzero) {
    unsigned remainder = 0;
    nonzero = false;
    for (auto& b : n) {
      const unsigned cur = (remainder << 8) | b;
      b = static_cast<std::uint8_t>(cur / 10);
      remainder = cur % 10;
      if (b != 0) nonzero = true;
    }
    digits.push_back(static_cast<char>('0' + remainder));
  }
  std::reverse(digits.begin(), digits.end());
  return "2.25." + digits;
}

bool IsValidDicomUid(const std::string& uid) {
  if (uid.empty() || uid.size() > 64) return false;
  bool component_start = true;
  for (std::size_t i = 0; i < uid.size(); ++i) {
    const char c = uid[i];
    if (c == '.') {
      if (component_start) return false;
      component_start = true;
      continue;
    }
    if (c < '0' || c > '9') return false;
    if (component_start && c == '0' && i + 1 < uid.size() && uid[i + 1] != '.') return false;
    component_start = false;
  }
  return !component_start;
}

}  // namespace ctagent
