// SHA-256 over byte ranges and files (OpenSSL EVP), as lowercase hex or as its 32 bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "base/error.hpp"

namespace ctagent {

// A SHA-256 value held as its 32 bytes, or none. The spool keeps two per chunk of every scan it
// holds: as 64 hex characters on the heap each took ~112 bytes (docs/configuration.md, "Memory").
// Written and read as lowercase hex wherever it is text (journal, manifest, metadata).
class Sha256Digest {
 public:
  Sha256Digest() = default;  // none: Hex() is ""
  explicit Sha256Digest(const std::array<std::uint8_t, 32>& bytes) : bytes_(bytes), set_(true) {}
  // 64 lowercase hex digits, as Hex() writes them; anything else is no digest (nullopt). The empty
  // string is the empty digest.
  static std::optional<Sha256Digest> FromHex(std::string_view hex);

  bool empty() const { return !set_; }
  std::string Hex() const;
  const std::array<std::uint8_t, 32>& bytes() const { return bytes_; }

  friend bool operator==(const Sha256Digest&, const Sha256Digest&) = default;
  // Compares with hex text (a hash just computed with Sha256Hex, a value from a peer).
  friend bool operator==(const Sha256Digest& digest, std::string_view hex) { return digest.Hex() == hex; }

 private:
  std::array<std::uint8_t, 32> bytes_{};
  bool set_ = false;
};

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::span<const std::uint8_t> bytes);
  std::string FinalHex();  // the object is reset afterwards
  Sha256Digest Final();    // the same, as its 32 bytes

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(std::span<const std::uint8_t> bytes);
Sha256Digest Sha256Of(std::span<const std::uint8_t> bytes);
Expected<std::string> Sha256HexOfFile(const std::filesystem::path& path);

}  // namespace ctagent
