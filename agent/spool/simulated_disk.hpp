// SimulatedDisk: an in-memory FileStore for power-loss tests, in the spirit of SQLite's crash
// tests. It keeps, for every file, the synced contents and the current (page-cache) contents,
// and for every directory the synced entries and the pending entry changes (create, rename,
// unlink, mkdir). A change is durable only after the file (contents) or the directory
// (entries) is synced. At a crash, unsynced contents are dropped, kept or torn (a random
// prefix, sometimes with garbage), and each directory keeps a random prefix of its pending
// entry changes, as an ordered-metadata file system would.
//
// Not thread-safe beyond one mutex per call; meant for single-threaded tests. Paths must be
// absolute.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/durable_file.hpp"

namespace ctagent {

class SimulatedDisk final : public FileStore {
 public:
  explicit SimulatedDisk(std::uint64_t capacity_bytes = 1ull << 40);

  // The `op`-th mutating step from now on (counting from 1) fails, and so does every
  // operation after it, until Reboot(): the process "lost power" there. 0 disarms.
  void CrashAtOp(std::uint64_t op);
  bool crashed() const;
  // Mutating steps so far (each of write, fsync, rename, directory sync, unlink, mkdir,
  // truncate, append counts one), for choosing crash points.
  std::uint64_t mutating_ops() const;
  // Power comes back: unsynced state is dropped or torn using `seed`; the disk works again.
  void Reboot(std::uint64_t seed);

  // Reads of paths containing `substring` fail with EIO ("" turns it off).
  void FailReadsContaining(std::string substring);
  // While on, every data write fails with ENOSPC (after writing part of an append).
  void SetNoSpace(bool on);

  // Test helpers, on the current (not necessarily synced) view.
  std::vector<std::string> AllFiles(const std::filesystem::path& under);
  bool Exists(const std::filesystem::path& path);
  Status Corrupt(const std::filesystem::path& path, std::uint64_t offset);

  Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Expected<std::vector<std::uint8_t>> ReadAll(const std::filesystem::path& path, std::uint64_t max_bytes) override;
  Status CreateDirectories(const std::filesystem::path& path) override;
  Status Remove(const std::filesystem::path& path) override;
  Status AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Status Truncate(const std::filesystem::path& path, std::uint64_t size_bytes) override;
  Expected<std::vector<std::uint8_t>> ReadRange(const std::filesystem::path& path, std::uint64_t offset,
                                                std::uint64_t max_bytes) override;
  Expected<std::vector<DirEntry>> List(const std::filesystem::path& directory) override;
  Expected<std::uint64_t> FreeBytes(const std::filesystem::path& path) override;
  Status WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Status SyncBatch(const std::vector<std::filesystem::path>& files,
                   const std::vector<std::filesystem::path>& directories) override;
  // One simulated machine and one writer: the lock is a no-op (a "crashed" spool object may
  // still exist when the test opens the spool again after Reboot()).
  Expected<std::unique_ptr<FileLock>> LockExclusive(const std::filesystem::path& path) override;

 private:
  struct Inode {
    std::vector<std::uint8_t> synced;
    std::vector<std::uint8_t> current;
  };
  struct Entry {
    bool is_directory = false;
    std::uint64_t inode = 0;  // files only
  };
  // One atomic change of a directory's entries (a rename is one change of two names).
  using DirChange = std::vector<std::pair<std::string, std::optional<Entry>>>;
  struct Dir {
    std::map<std::string, Entry> synced;
    std::map<std::string, Entry> live;
    std::vector<DirChange> pending;
  };

  Status Step();  // counts a mutating step; fails once the crash point is reached
  Unexpected Crashed() const;
  bool DirExists(const std::string& dir) const;
  std::optional<Entry> Lookup(const std::filesystem::path& path) const;
  // The current bytes of file `p` (a Norm()ed path), or why it cannot be read (crashed, the
  // injected EIO, missing). Call with mutex_ held.
  Expected<const std::vector<std::uint8_t>*> FileForReading(const std::string& p) const;
  void Change(const std::string& dir, DirChange change);
  Status SyncDir(const std::string& dir);
  Status RemoveLocked(const std::filesystem::path& path);
  std::uint64_t UsedBytes() const;

  mutable std::mutex mutex_;
  std::uint64_t capacity_bytes_;
  std::map<std::uint64_t, Inode> inodes_;
  std::uint64_t next_inode_ = 1;
  std::map<std::string, Dir> dirs_;  // by absolute path; "/" always exists
  std::uint64_t ops_ = 0;
  std::uint64_t crash_at_ = 0;
  bool crashed_ = false;
  std::string eio_substring_;
  bool no_space_ = false;
};

}  // namespace ctagent
