#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "agent/cli.hpp"
#include "agent/codec/chunk.hpp"
#include "base/error.hpp"

namespace ctagent::cli {
namespace {

constexpr const char* kChunkHelp = R"(Usage: ctagent chunk <inspect|verify|decode> FILE... [--out FILE]

  inspect FILE...      print each chunk's header (identity, shape, codec, sizes, checksums)
  verify FILE...       fully decode each chunk and check every checksum; exit 1 if any fails
  decode FILE --out F  write the decoded samples (raw, little-endian) to F

FILE must be a regular file (a symbolic link to one is followed); a directory, FIFO, device or
socket is refused. F must be a new file or an existing regular file, which is replaced whole
(written beside it, synced, renamed into place); a symbolic link at F (to anything), a device
such as /dev/null, a FIFO or a directory is refused and nothing is written through it.
Exit status: 0 every file was read (and verified or decoded), 1 a file could not be read, failed a
check or could not be written, 2 bad usage (an unknown action or option, missing files).
)";

constexpr std::uint64_t kMaxChunkFile = 1ull << 30;

// What a file system object is, for the messages that refuse it.
const char* KindOf(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string Errno(const std::string& what, const std::string& path, int err) {
  return what + " " + path + ": " + std::strerror(err);
}

// Reads a chunk file named on the command line. Only a regular file is read: a FIFO would block
// the command until some writer appears, a device could be endless or have side effects, and a
// directory is a mistake. The path is checked before it is opened (opening a FIFO or a device
// already waits or acts), and the open descriptor again (O_NONBLOCK: had the path become a FIFO
// in between, the open does not wait for a writer), so what is read is what was checked.
Expected<std::vector<std::uint8_t>> ReadInput(const std::string& path, std::uint64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return MakeError(ErrorKind::kIo, Errno("cannot read", path, errno));
  if (!S_ISREG(st.st_mode)) {
    return MakeError(ErrorKind::kInvalidInput, path + " is " + KindOf(st.st_mode) +
                                                   ", not a regular file: refused (give a chunk file)");
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return MakeError(ErrorKind::kIo, Errno("cannot open", path, errno));
  std::vector<std::uint8_t> data;
  const auto fail = [&](std::string message) -> Expected<std::vector<std::uint8_t>> {
    ::close(fd);
    return MakeError(ErrorKind::kIo, std::move(message));
  };
  if (::fstat(fd, &st) != 0) return fail(Errno("cannot stat", path, errno));
  if (!S_ISREG(st.st_mode)) {
    return fail(path + " is " + KindOf(st.st_mode) + ", not a regular file: refused (give a chunk file)");
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    return fail(path + " is " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) +
                " a chunk file may have");
  }
  data.resize(static_cast<std::size_t>(size));
  std::size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(Errno("cannot read", path, errno));
    if (n == 0) break;  // shrank under us: what is there
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(got);
  return data;
}

// Whether `path` may receive --out: a new file, or an existing regular file. Never follows a
// symbolic link at `path` (lstat): a link to /etc/passwd or to a device must not be written
// through, nor replaced by surprise. Sets *exists.
Status CheckOutTarget(const std::string& path, bool* exists) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      *exists = false;
      return Ok();
    }
    return MakeError(ErrorKind::kIo, Errno("cannot examine", path, errno));
  }
  *exists = true;
  if (S_ISLNK(st.st_mode)) {
    return MakeError(ErrorKind::kInvalidInput,
                     path + " is a symbolic link: refused (--out never follows or replaces a link; "
                            "give a new file name or the path of a regular file)");
  }
  if (!S_ISREG(st.st_mode)) {
    return MakeError(ErrorKind::kInvalidInput, path + " is " + KindOf(st.st_mode) +
                                                   ", not a regular file: refused (--out writes a new file or "
                                                   "replaces a regular one)");
  }
  return Ok();
}

// Writes `bytes` to `path` as FileStore::WriteDurably does (a temporary file beside it, synced,
// renamed into place, the directory synced), but only ever to a new file or over a regular file:
// the temporary file is created exclusively and without following links (O_CREAT | O_EXCL |
// O_NOFOLLOW, a fresh name), the target is checked again just before the rename, and a new file
// is moved into place with RENAME_NOREPLACE so nothing that appeared meanwhile is replaced.
Status WriteOutput(const std::string& path, std::span<const std::uint8_t> bytes) {
  bool existed = false;
  if (auto st = CheckOutTarget(path, &existed); !st) return st;
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {  // bounded: a name is taken only by a leftover
    tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(attempt);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0 && errno != EEXIST) return MakeError(ErrorKind::kIo, Errno("cannot create", tmp, errno));
  }
  if (fd < 0) return MakeError(ErrorKind::kIo, "cannot create a temporary file beside " + path);
  const auto discard = [&](std::string message) -> Status {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return MakeError(ErrorKind::kIo, std::move(message));
  };
  std::size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return discard(Errno("cannot write", tmp, errno));
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) return discard(Errno("cannot fsync", tmp, errno));
  const int rc = ::close(fd);
  fd = -1;
  if (rc != 0) return discard(Errno("cannot close", tmp, errno));
  // Checked again: the decode took a while, and whatever is at `path` now is what is replaced.
  bool exists = false;
  if (auto st = CheckOutTarget(path, &exists); !st) {
    ::unlink(tmp.c_str());
    return st;
  }
  if (!exists) {
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
      if (errno == EEXIST) return discard(path + " appeared while it was being written: left as it is");
      if (errno != EINVAL && errno != ENOSYS) return discard(Errno("cannot rename into place", path, errno));
      // A file system without RENAME_NOREPLACE: link(2) never replaces an existing entry either.
      if (::link(tmp.c_str(), path.c_str()) != 0) return discard(Errno("cannot link into place", path, errno));
      ::unlink(tmp.c_str());
    }
  } else if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return discard(Errno("cannot rename into place", path, errno));
  }
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return MakeError(ErrorKind::kIo, Errno("cannot open directory", dir.string(), errno));
  const int synced = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (synced != 0) return MakeError(ErrorKind::kIo, Errno("cannot fsync directory", dir.string(), err));
  return Ok();
}

void PrintInfo(const std::string& path, const codec::ChunkInfo& info) {
  std::printf("%s\n", path.c_str());
  std::printf("  format          %u.%u\n", info.format_major, info.format_minor);
  std::printf("  scan            %s\n", info.scan_uid.c_str());
  std::printf("  chunk           %u, views %llu..%llu (%zu)\n", info.chunk_index,
              static_cast<unsigned long long>(info.FirstView()),
              static_cast<unsigned long long>(info.FirstView() + info.views.size() - 1), info.views.size());
  std::printf("  shape           %u rows x %u channels, %s\n", info.rows, info.channels, drivers::ToString(info.sample_type));
  if (info.codec == codec::Codec::kZstd) {
    std::printf("  codec           zstd level %d, filter %s\n", info.zstd_level, codec::ToString(info.filter));
  } else {
    std::printf("  codec           %s, filter %s\n", codec::ToString(info.codec), codec::ToString(info.filter));
  }
  std::printf("  raw             %llu bytes, sha256 %s\n", static_cast<unsigned long long>(info.raw_length),
              info.raw_sha256.c_str());
  std::printf("  compressed      %llu bytes, sha256 %s, ratio %.2f:1\n",
              static_cast<unsigned long long>(info.compressed_length), info.compressed_sha256.c_str(),
              info.compressed_length ? static_cast<double>(info.raw_length) / static_cast<double>(info.compressed_length) : 0.0);
}

}  // namespace

int CmdChunk(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s", kChunkHelp);
    return args.empty() ? 2 : 0;
  }
  const std::string& action = args[0];
  if (action != "inspect" && action != "verify" && action != "decode") {
    std::fprintf(stderr, "ctagent chunk: unknown action \"%s\"\n\n%s", action.c_str(), kChunkHelp);
    return 2;
  }
  std::vector<std::string> paths;
  std::string out;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") return std::printf("%s", kChunkHelp), 0;
    if (args[i] == "--out" && i + 1 < args.size()) {
      out = args[++i];
    } else if (args[i].size() > 1 && args[i][0] == '-') {  // an option we do not know, never a file
      std::fprintf(stderr, "ctagent chunk: unknown option \"%s\" (a file whose name starts with '-' is given as ./%s)\n\n%s",
                   args[i].c_str(), args[i].c_str(), kChunkHelp);
      return 2;
    } else {
      paths.push_back(args[i]);
    }
  }
  if (paths.empty() || (action == "decode" && (paths.size() != 1 || out.empty()))) {
    std::fprintf(stderr, "ctagent chunk: missing file arguments\n\n%s", kChunkHelp);
    return 2;
  }
  if (action == "decode") {
    // Refused before the decode, and checked again when the samples are written.
    bool exists = false;
    if (auto st = CheckOutTarget(out, &exists); !st) {
      std::fprintf(stderr, "ctagent chunk: --out %s\n", st.error().message().c_str());
      return 1;
    }
  }
  int failures = 0;
  for (const auto& path : paths) {
    auto bytes = ReadInput(path, kMaxChunkFile);
    if (!bytes) {
      std::fprintf(stderr, "ctagent chunk: %s\n", bytes.error().message().c_str());
      ++failures;
      continue;
    }
    if (action == "inspect") {
      auto info = codec::ParseChunkHeader(*bytes);
      if (!info) {
        std::fprintf(stderr, "%s: %s\n", path.c_str(), info.error().message().c_str());
        ++failures;
        continue;
      }
      PrintInfo(path, *info);
      continue;
    }
    auto decoded = codec::DecodeChunk(*bytes);
    if (!decoded) {
      std::fprintf(stderr, "%s: FAILED: %s\n", path.c_str(), decoded.error().message().c_str());
      ++failures;
      continue;
    }
    if (action == "verify") {
      std::printf("%s: OK (chunk %u of scan %s, %zu views, raw sha256 %s)\n", path.c_str(), decoded->info.chunk_index,
                  decoded->info.scan_uid.c_str(), decoded->info.views.size(), decoded->info.raw_sha256.c_str());
    } else {
      if (auto st = WriteOutput(out, decoded->samples); !st) {
        std::fprintf(stderr, "ctagent chunk: --out %s\n", st.error().message().c_str());
        return 1;
      }
      std::printf("%s: %zu bytes of samples written to %s\n", path.c_str(), decoded->samples.size(), out.c_str());
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace ctagent::cli
