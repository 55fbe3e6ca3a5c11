// Internal to the control module: a Unix socket path that fits sockaddr_un's 108 bytes.
#pragma once

#include <fcntl.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <utility>

namespace ctagent::control {

// A long path (a spool deep in a build tree) is reached through its directory's descriptor:
// /proc/self/fd/N/NAME resolves to the same file for bind and connect, in a few bytes.
class UnixPath {
 public:
  explicit UnixPath(const std::filesystem::path& path) : path_(path.string()) {
    if (path_.size() < sizeof(sockaddr_un::sun_path)) return;
    const auto dir = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
    dir_fd_ = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd_ >= 0) path_ = "/proc/self/fd/" + std::to_string(dir_fd_) + "/" + path.filename().string();
  }
  ~UnixPath() {
    if (dir_fd_ >= 0) ::close(dir_fd_);
  }
  UnixPath(const UnixPath&) = delete;
  UnixPath& operator=(const UnixPath&) = delete;

  bool fits() const { return path_.size() < sizeof(sockaddr_un::sun_path); }
  const std::string& str() const { return path_; }

 private:
  std::string path_;
  int dir_fd_ = -1;
};

}  // namespace ctagent::control
