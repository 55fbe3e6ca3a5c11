#include "agent/ui/password.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "base/private_file.hpp"

namespace ctagent::ui {
namespace {

constexpr std::string_view kScheme = "pbkdf2-sha256";
constexpr unsigned kMaxIterations = 10'000'000;  // a file asking for more would stall every login

std::string Hex(const std::vector<unsigned char>& bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

bool FromHex(std::string_view text, std::vector<unsigned char>* out) {
  if (text.empty() || text.size() % 2 != 0) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out->clear();
  for (std::size_t i = 0; i < text.size(); i += 2) {
    const int hi = nibble(text[i]);
    const int lo = nibble(text[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<unsigned char>(hi * 16 + lo));
  }
  return true;
}

std::vector<unsigned char> Derive(std::string_view password, const std::vector<unsigned char>& salt, unsigned iterations,
                                  std::size_t length) {
  std::vector<unsigned char> out(length);
  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(), static_cast<int>(salt.size()),
                        static_cast<int>(iterations), EVP_sha256(), static_cast<int>(out.size()), out.data()) != 1) {
    out.clear();
  }
  return out;
}

}  // namespace

Expected<std::string> HashPassword(std::string_view password, unsigned iterations) {
  if (password.size() < kMinPasswordLength) {
    return MakeError(ErrorKind::kInvalidInput,
                     "the password is too short: at least " + std::to_string(kMinPasswordLength) + " characters");
  }
  if (password.size() > kMaxPasswordLength) {
    return MakeError(ErrorKind::kInvalidInput,
                     "the password is too long: at most " + std::to_string(kMaxPasswordLength) + " characters");
  }
  std::vector<unsigned char> salt(16);
  if (RAND_bytes(salt.data(), static_cast<int>(salt.size())) != 1) {
    return MakeError(ErrorKind::kIo, "OpenSSL could not make random bytes for the password's salt");
  }
  const auto hash = Derive(password, salt, iterations, 32);
  if (hash.empty()) return MakeError(ErrorKind::kIo, "OpenSSL could not compute the password's hash");
  return std::string(kScheme) + "$" + std::to_string(iterations) + "$" + Hex(salt) + "$" + Hex(hash);
}

Expected<PasswordHash> ParsePasswordHash(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  auto bad = [](const std::string& what) {
    return MakeError(ErrorKind::kInvalidInput,
                     "not a password hash (" + what + "); write a new one with `ctagent ui-password --config FILE`");
  };
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    const auto end = line.find('$', start);
    parts.push_back(line.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  if (parts.size() != 4 || parts[0] != kScheme) return bad("expected pbkdf2-sha256$ITERATIONS$SALT$HASH");
  PasswordHash h;
  if (parts[1].empty() || parts[1].size() > 9 ||
      parts[1].find_first_not_of("0123456789") != std::string_view::npos) {
    return bad("the iteration count is not a number");
  }
  h.iterations = static_cast<unsigned>(std::stoul(std::string(parts[1])));
  if (h.iterations < 1000 || h.iterations > kMaxIterations) {
    return bad("the iteration count is outside 1000 to " + std::to_string(kMaxIterations));
  }
  if (!FromHex(parts[2], &h.salt) || h.salt.size() < 8) return bad("the salt is not at least 8 bytes in hex");
  if (!FromHex(parts[3], &h.hash) || h.hash.size() < 16 || h.hash.size() > 64) {
    return bad("the hash is not 16 to 64 bytes in hex");
  }
  return h;
}

bool VerifyPassword(const PasswordHash& hash, std::string_view password) {
  if (hash.hash.empty() || password.size() > kMaxPasswordLength) return false;
  const auto derived = Derive(password, hash.salt, hash.iterations, hash.hash.size());
  return derived.size() == hash.hash.size() && CRYPTO_memcmp(derived.data(), hash.hash.data(), derived.size()) == 0;
}

Expected<PasswordHash> ReadPasswordFile(const std::filesystem::path& file, const std::string& key) {
  if (auto s = CheckPrivateFile(file, "the page's password file", key); !s) {
    if (s.error().kind() == ErrorKind::kNotFound) {
      return MakeError(ErrorKind::kNotFound, "the page's password file " + file.string() + " (" + key +
                                                 ") does not exist; make it with `ctagent ui-password --config FILE`");
    }
    return MakeError(s.error());
  }
  std::ifstream in(file);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return MakeError(ErrorKind::kIo, "cannot read the page's password file " + file.string() + " (" + key + ")");
  }
  auto parsed = ParsePasswordHash(line);
  if (!parsed) {
    return MakeError(ErrorKind::kInvalidInput,
                     "the page's password file " + file.string() + " (" + key + "): " + parsed.error().message());
  }
  return parsed;
}

Status WritePasswordFile(const std::filesystem::path& file, const std::string& line) {
  const std::filesystem::path temporary = file.string() + ".tmp";
  ::unlink(temporary.c_str());
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int err = errno;
    return MakeError(ErrorKind::kIo, "cannot write " + temporary.string() + ": " + std::strerror(err) +
                                         " (is /ui/password_file's folder there and writable by this user?)");
  }
  const std::string text = line + "\n";
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  const bool ok = done == text.size() && ::fchmod(fd, 0600) == 0 && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok || ::rename(temporary.c_str(), file.c_str()) != 0) {
    ::unlink(temporary.c_str());
    return MakeError(ErrorKind::kIo, "cannot write " + file.string() + ": " + std::strerror(ok ? errno : err));
  }
  return Ok();
}

}  // namespace ctagent::ui
