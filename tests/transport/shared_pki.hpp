// One throwaway PKI for all transport tests, made once under the build tree. Tests run as
// separate processes (possibly in parallel), so creation is serialised with a file lock.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>

#include "tests/support/process.hpp"

namespace ctagent::test {

inline std::filesystem::path SharedTransportPki() {
  const auto dir = std::filesystem::path(CTAGENT_BINARY_DIR) / "test-scratch" / "transport-pki";
  std::filesystem::create_directories(dir.parent_path());
  const auto lock_path = dir.parent_path() / "transport-pki.lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot open " + lock_path.string());
  ::flock(fd, LOCK_EX);  // released by close()
  try {
    MakeTestPki(dir);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return dir;
}

}  // namespace ctagent::test
