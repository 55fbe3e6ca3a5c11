#include "agent/common/durable_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ctagent {
namespace {

Unexpected ErrnoError(const std::string& what, const std::filesystem::path& path, int err) {
  const ErrorKind kind = (err == ENOSPC || err == EDQUOT) ? ErrorKind::kNoSpace : ErrorKind::kIo;
  return MakeError(kind, what + " " + path.string() + ": " + std::strerror(err));
}

Status FsyncDirectory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", dir, err);
  return Ok();
}

}  // namespace

Status PosixFileStore::WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  std::size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoError("cannot write", tmp, err);
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoError("cannot fsync", tmp, err);
  }
  if (::close(fd) != 0) return ErrnoError("cannot close", tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot rename into place", path, err);
  }
  return FsyncDirectory(path.parent_path());
}

Expected<std::vector<std::uint8_t>> PosixFileStore::ReadAll(const std::filesystem::path& path,
                                                            std::uint64_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return MakeError(ErrorKind::kNotFound, "no such file: " + path.string());
    return ErrnoError("cannot open", path, err);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot stat", path, err);
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    return MakeError(ErrorKind::kCorrupt, path.string() + " is " + std::to_string(size) +
                                              " bytes, more than the " + std::to_string(max_bytes) +
                                              " allowed for this kind of file");
  }
  std::vector<std::uint8_t> data(static_cast<std::size_t>(size));
  std::size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot read", path, err);
    }
    if (n == 0) break;  // the file shrank under us; report what is there
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(got);
  return data;
}

Status PosixFileStore::CreateDirectories(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return Ok();
  std::filesystem::create_directories(path, ec);
  if (ec) return MakeError(ErrorKind::kIo, "cannot create directory " + path.string() + ": " + ec.message());
  // Sync the new directory and its parent so the entries survive a power cut. Deeper levels
  // created in the same call are synced when their own children are created durably.
  if (auto st = FsyncDirectory(path); !st) return st;
  if (auto st = FsyncDirectory(path.parent_path()); !st) return st;
  return Ok();
}

Status PosixFileStore::Remove(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return MakeError(ErrorKind::kIo, "cannot remove " + path.string() + ": " + ec.message());
  return FsyncDirectory(path.parent_path());
}

}  // namespace ctagent
