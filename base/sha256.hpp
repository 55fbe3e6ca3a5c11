// SHA-256 over byte ranges and files (OpenSSL EVP), as lowercase hex.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "base/error.hpp"

namespace ctagent {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::span<const std::uint8_t> bytes);
  std::string FinalHex();  // the object is reset afterwards

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(std::span<const std::uint8_t> bytes);
Expected<std::string> Sha256HexOfFile(const std::filesystem::path& path);

}  // namespace ctagent
