// The operator's page's password (config /ui/password_file, docs/operator-guide.md): one line
//   pbkdf2-sha256$<iterations>$<salt, hex>$<PBKDF2-HMAC-SHA256 of the password, hex>
// written with mode 0600 by `ctagent ui-password`. The password itself is never stored or logged.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.hpp"

namespace ctagent::ui {

constexpr std::size_t kMinPasswordLength = 12;    // characters (bytes); shorter ones are refused
constexpr std::size_t kMaxPasswordLength = 1024;  // longer ones are refused too
constexpr unsigned kPasswordIterations = 200000;  // PBKDF2 rounds for a new hash

struct PasswordHash {
  unsigned iterations = 0;
  std::vector<unsigned char> salt;
  std::vector<unsigned char> hash;
};

// A new line for the password file (a random 16-byte salt); kInvalidInput for a password shorter
// than kMinPasswordLength or longer than kMaxPasswordLength.
Expected<std::string> HashPassword(std::string_view password, unsigned iterations = kPasswordIterations);
// One line of the file (a trailing newline allowed); kInvalidInput names what is wrong.
Expected<PasswordHash> ParsePasswordHash(std::string_view line);
// True when `password` has this hash; the comparison takes the same time wherever they differ.
bool VerifyPassword(const PasswordHash& hash, std::string_view password);
// Reads and parses the file; refuses one other users may read (the error names `key`).
Expected<PasswordHash> ReadPasswordFile(const std::filesystem::path& file, const std::string& key = "/ui/password_file");
// Writes `line` to `file` with mode 0600 (a temporary file renamed over it).
Status WritePasswordFile(const std::filesystem::path& file, const std::string& line);

}  // namespace ctagent::ui
