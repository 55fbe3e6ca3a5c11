// A secret kept in a file (a TLS private key, a password hash): it must be a regular file that
// other users cannot read. Checked where the configuration is validated and again where the
// file is used, so a file made readable after `config check` is still refused.
// Header-only: config and the operator's page both use it.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "base/error.hpp"

namespace ctagent {

// Ok when `file` is a regular file with no permission bits for others. `what` names it for a
// person ("the page's TLS key"), `key` is the configuration key that points at it. A missing
// file is kNotFound (the caller decides whether that is an error yet).
inline Status CheckPrivateFile(const std::filesystem::path& file, const std::string& what, const std::string& key) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    const int err = errno;
    return MakeError(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIo,
                     "cannot read " + what + " " + file.string() + " (" + key + "): " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    return MakeError(ErrorKind::kInvalidInput, what + " " + file.string() + " (" + key + ") is not a regular file");
  }
  if ((st.st_mode & S_IRWXO) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return MakeError(ErrorKind::kPermission, what + " " + file.string() + " (" + key +
                                                 ") may be read by other users (mode " + mode + "); run chmod 600 " +
                                                 file.string() + " (or chmod o-rwx to keep a group such as ssl-cert)");
  }
  return Ok();
}

}  // namespace ctagent
