#include "base/durable_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace ctagent {
namespace {

Unexpected ErrnoError(const std::string& what, const std::filesystem::path& path, int err) {
  const ErrorKind kind = (err == ENOSPC || err == EDQUOT) ? ErrorKind::kNoSpace : ErrorKind::kIo;
  return MakeError(kind, what + " " + path.string() + ": " + std::strerror(err));
}

Unexpected Unsupported(const char* what) {
  return MakeError(ErrorKind::kUnsupported, std::string("this file store does not implement ") + what);
}

// Tells the observer (if any) about a step just before it is taken.
void Before(FileStepObserver* observer, FileStep step, const std::filesystem::path& path) {
  if (observer != nullptr) observer->BeforeStep(step, path);
}

// Opens `path` for reading (kNotFound if it does not exist).
Expected<int> OpenForReading(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return MakeError(ErrorKind::kNotFound, "no such file: " + path.string());
    return ErrnoError("cannot open", path, err);
  }
  return fd;
}

// Reads up to `max_bytes` from `offset` (fewer at the end of the file), then closes `fd`.
Expected<std::vector<std::uint8_t>> ReadAndClose(int fd, const std::filesystem::path& path, std::uint64_t offset,
                                                 std::uint64_t max_bytes) {
  std::vector<std::uint8_t> data(static_cast<std::size_t>(max_bytes));
  std::size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(offset + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot read", path, err);
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(got);
  return data;
}

Status FsyncDirectory(const std::filesystem::path& dir, FileStepObserver* observer) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir, errno);
  Before(observer, FileStep::kSyncDirectory, dir);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", dir, err);
  return Ok();
}

Status WriteAll(int fd, const std::filesystem::path& path, std::span<const std::uint8_t> bytes,
                FileStepObserver* observer) {
  std::size_t written = 0;
  while (written < bytes.size()) {
    Before(observer, FileStep::kWrite, path);
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    written += static_cast<std::size_t>(n);
  }
  return Ok();
}

// An append-only file (the journal) keeps some blocks allocated past its end, so that when the
// file system fills up (another program, a log storm) the agent can still record why a scan
// stopped. Best effort: a file system without fallocate simply has no slack.
void KeepAppendSlack(int fd) {
  constexpr off_t kMinSlack = 64 * 1024;
  constexpr off_t kSlack = 256 * 1024;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  const off_t allocated = static_cast<off_t>(st.st_blocks) * 512;
  if (allocated - st.st_size >= kMinSlack) return;
  (void)::fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, kSlack);
}

// Creates (or truncates) `path` and writes `bytes`; returns the open descriptor. On failure
// nothing is left behind: the descriptor is closed and the partial file removed.
// With `owner_only` the file is mode 0600 before any byte is written, also when an older file
// of that name (a temporary left by a crash) had a wider mode.
Expected<int> CreateWithBytes(const std::filesystem::path& path, std::span<const std::uint8_t> bytes,
                              FileStepObserver* observer, bool owner_only = false) {
  Before(observer, FileStep::kCreate, path);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, owner_only ? 0600 : 0640);
  if (fd < 0) return ErrnoError("cannot create", path, errno);
  if (owner_only && ::fchmod(fd, 0600) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return ErrnoError("cannot make owner-only (chmod 600)", path, err);
  }
  if (auto st = WriteAll(fd, path, bytes, observer); !st) {
    ::close(fd);
    ::unlink(path.c_str());
    return MakeError(st.error());
  }
  return fd;
}

}  // namespace

// ---- Defaults for file stores that predate the journal -------------------------------------

Status FileStore::WriteDurablyOwnerOnly(const std::filesystem::path&, std::span<const std::uint8_t>) {
  return Unsupported("WriteDurablyOwnerOnly");
}
Status FileStore::AppendDurably(const std::filesystem::path&, std::span<const std::uint8_t>) {
  return Unsupported("AppendDurably");
}
Status FileStore::Truncate(const std::filesystem::path&, std::uint64_t) { return Unsupported("Truncate"); }
Expected<std::vector<std::uint8_t>> FileStore::ReadRange(const std::filesystem::path&, std::uint64_t, std::uint64_t) {
  return Unsupported("ReadRange");
}
Expected<std::vector<DirEntry>> FileStore::List(const std::filesystem::path&) { return Unsupported("List"); }
Expected<std::uint64_t> FileStore::FreeBytes(const std::filesystem::path&) { return Unsupported("FreeBytes"); }
Status FileStore::WriteUnsynced(const std::filesystem::path&, std::span<const std::uint8_t>) {
  return Unsupported("WriteUnsynced");
}
Status FileStore::SyncBatch(const std::vector<std::filesystem::path>&, const std::vector<std::filesystem::path>&) {
  return Unsupported("SyncBatch");
}

// ---- Exclusive lock (flock) -----------------------------------------------------------------

namespace {

class FlockLock final : public FileLock {
 public:
  explicit FlockLock(int fd) : fd_(fd) {}
  ~FlockLock() override { ::close(fd_); }  // closing the last descriptor drops the lock
  FlockLock(const FlockLock&) = delete;
  FlockLock& operator=(const FlockLock&) = delete;

 private:
  int fd_;
};

}  // namespace

Expected<std::unique_ptr<FileLock>> FileStore::LockExclusive(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot open the lock file", path, errno);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    if (err != EWOULDBLOCK) return ErrnoError("cannot lock", path, err);
    const int pid = LockHolderPid(path);
    std::string holder = pid > 0 ? "pid " + std::to_string(pid) : "a process that has not written its pid yet";
    if (const std::string cmd = pid > 0 ? ProcessCommandLine(pid) : ""; !cmd.empty()) holder += ": " + cmd;
    return MakeError(ErrorKind::kBusy, path.parent_path().string() + " is in use by another ctagent process (" +
                                           holder + ")");
  }
  // The holder's pid, for the message above and for `ctagent scan` asking a daemon to yield.
  // Not synced: it only matters while this process lives.
  const std::string text = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot write", path, err);
  }
  return std::unique_ptr<FileLock>(new FlockLock(fd));
}

int LockHolderPid(const std::filesystem::path& path) {
  std::ifstream in(path);
  int pid = 0;
  if (!(in >> pid) || pid <= 0) return 0;
  return pid;
}

std::string ProcessCommandLine(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string line, argument;
  // Arguments end with NUL; bounded by the kernel's limit on a command line.
  while (std::getline(in, argument, '\0')) {
    if (!line.empty()) line += ' ';
    line += argument;
  }
  return line;
}

// ---- POSIX ----------------------------------------------------------------------------------

Status PosixFileStore::WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  return WriteDurablyWithMode(path, bytes, false);
}

Status PosixFileStore::WriteDurablyOwnerOnly(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  return WriteDurablyWithMode(path, bytes, true);
}

Status PosixFileStore::WriteDurablyWithMode(const std::filesystem::path& path, std::span<const std::uint8_t> bytes,
                                            bool owner_only) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  auto created = CreateWithBytes(tmp, bytes, observer_, owner_only);
  if (!created) return MakeError(created.error());
  const int fd = *created;
  if (durable()) Before(observer_, FileStep::kSync, tmp);
  if (durable() && ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoError("cannot fsync", tmp, err);
  }
  if (::close(fd) != 0) return ErrnoError("cannot close", tmp, errno);
  Before(observer_, FileStep::kRename, path);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot rename into place", path, err);
  }
  return durable() ? FsyncDirectory(path.parent_path(), observer_) : Ok();
}

Expected<std::vector<std::uint8_t>> PosixFileStore::ReadAll(const std::filesystem::path& path,
                                                            std::uint64_t max_bytes) {
  auto fd = OpenForReading(path);
  if (!fd) return MakeError(fd.error());
  struct stat st {};
  if (::fstat(*fd, &st) != 0) {
    const int err = errno;
    ::close(*fd);
    return ErrnoError("cannot stat", path, err);
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(*fd);
    return MakeError(ErrorKind::kCorrupt, path.string() + " is " + std::to_string(size) +
                                              " bytes, more than the " + std::to_string(max_bytes) +
                                              " allowed for this kind of file");
  }
  // A file that shrank under us gives what is there.
  return ReadAndClose(*fd, path, 0, size);
}

Status PosixFileStore::CreateDirectories(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return Ok();
  // Create level by level, syncing each parent, so every new entry survives a power cut
  // (a synced child is useless if its parent's entry for it is lost).
  std::vector<std::filesystem::path> missing;
  for (std::filesystem::path p = path; !p.empty() && !std::filesystem::exists(p, ec); p = p.parent_path()) {
    missing.push_back(p);
    if (p == p.parent_path()) break;
  }
  std::reverse(missing.begin(), missing.end());
  for (const auto& dir : missing) {
    Before(observer_, FileStep::kMakeDirectory, dir);
    if (::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) return ErrnoError("cannot create directory", dir, errno);
    if (!durable()) continue;
    if (auto st = FsyncDirectory(dir.parent_path(), observer_); !st) return st;
  }
  return durable() ? FsyncDirectory(path, observer_) : Ok();
}

Status PosixFileStore::Remove(const std::filesystem::path& path) {
  std::error_code ec;
  Before(observer_, FileStep::kRemove, path);
  std::filesystem::remove_all(path, ec);
  if (ec) return MakeError(ErrorKind::kIo, "cannot remove " + path.string() + ": " + ec.message());
  return durable() ? FsyncDirectory(path.parent_path(), observer_) : Ok();
}

Status PosixFileStore::AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open for appending", path, errno);
  if (auto st = WriteAll(fd, path, bytes, observer_); !st) {
    ::close(fd);
    return st;
  }
  if (durable()) Before(observer_, FileStep::kSync, path);
  // fdatasync: the size change is data-relevant metadata, so it is synced too.
  if (durable() && ::fdatasync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot fsync", path, err);
  }
  KeepAppendSlack(fd);
  if (::close(fd) != 0) return ErrnoError("cannot close", path, errno);
  return Ok();
}

Status PosixFileStore::Truncate(const std::filesystem::path& path, std::uint64_t size_bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open for truncating", path, errno);
  Before(observer_, FileStep::kTruncate, path);
  if (::ftruncate(fd, static_cast<off_t>(size_bytes)) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot truncate", path, err);
  }
  if (durable()) Before(observer_, FileStep::kSync, path);
  if (durable() && ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot fsync", path, err);
  }
  ::close(fd);
  return Ok();
}

Expected<std::vector<std::uint8_t>> PosixFileStore::ReadRange(const std::filesystem::path& path, std::uint64_t offset,
                                                              std::uint64_t max_bytes) {
  auto fd = OpenForReading(path);
  if (!fd) return MakeError(fd.error());
  return ReadAndClose(*fd, path, offset, max_bytes);
}

Expected<std::vector<DirEntry>> PosixFileStore::List(const std::filesystem::path& directory) {
  std::error_code ec;
  std::vector<DirEntry> entries;
  std::filesystem::directory_iterator it(directory, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) {
      return MakeError(ErrorKind::kNotFound, "no such directory: " + directory.string());
    }
    return MakeError(ErrorKind::kIo, "cannot list " + directory.string() + ": " + ec.message());
  }
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) return MakeError(ErrorKind::kIo, "cannot list " + directory.string() + ": " + ec.message());
    DirEntry e;
    e.name = it->path().filename().string();
    e.is_directory = it->is_directory(ec);
    if (!e.is_directory) e.size_bytes = it->file_size(ec);
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return entries;
}

Status PosixFileStore::WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  auto fd = CreateWithBytes(path, bytes, observer_);
  if (!fd) return MakeError(fd.error());
  // Start the writeback now, while the batch fills: the batch's fdatasync then mostly waits for
  // I/O already under way instead of starting all of it at once. Best effort, and no
  // durability by itself (it writes no metadata and flushes no cache): not a counted operation.
  if (durable()) (void)::sync_file_range(*fd, 0, 0, SYNC_FILE_RANGE_WRITE);
  if (::close(*fd) != 0) return ErrnoError("cannot close", path, errno);
  return Ok();
}

Status PosixFileStore::SyncBatch(const std::vector<std::filesystem::path>& files,
                                 const std::vector<std::filesystem::path>& directories) {
  if (!durable()) return Ok();
  // The data of every file first (fdatasync also syncs the size, which reading it back needs),
  // then the directories, so an entry never becomes durable before the data it names.
  for (const auto& path : files) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError("cannot open for syncing", path, errno);
    Before(observer_, FileStep::kSync, path);
    const int rc = ::fdatasync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoError("cannot fdatasync", path, err);
  }
  for (const auto& dir : directories) {
    if (auto st = FsyncDirectory(dir, observer_); !st) return st;
  }
  return Ok();
}

Expected<std::uint64_t> PosixFileStore::FreeBytes(const std::filesystem::path& path) {
  struct statvfs vfs {};
  if (::statvfs(path.c_str(), &vfs) != 0) return ErrnoError("cannot query free space of", path, errno);
  return static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

}  // namespace ctagent
