// Durable file operations for the spool: a file is on stable storage only after
// write -> fsync(file) -> rename -> fsync(directory). Everything the spool writes goes
// through this one small layer so that a test can substitute a simulated disk
// (base/simulated_disk.hpp) that loses or tears unsynced state at a crash.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/error.hpp"

namespace ctagent {

struct DirEntry {
  std::string name;
  bool is_directory = false;
  std::uint64_t size_bytes = 0;  // files only
};

// An exclusive lock held until this object is destroyed (or the process dies).
class FileLock {
 public:
  virtual ~FileLock() = default;
};

class FileStore {
 public:
  virtual ~FileStore() = default;

  // Atomically replaces `path` with `bytes`; returns only after the data and the rename are synced.
  virtual Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) = 0;
  // WriteDurably for a file only its owner may read or write: mode 0600 from its creation on,
  // whatever the umask or a stale temporary file would have given (secrets, and the maps from
  // pseudonyms back to patients). The default refuses.
  virtual Status WriteDurablyOwnerOnly(const std::filesystem::path& path, std::span<const std::uint8_t> bytes);
  // Reads a whole file, refusing files larger than `max_bytes` (a lying size must not exhaust memory).
  virtual Expected<std::vector<std::uint8_t>> ReadAll(const std::filesystem::path& path,
                                                      std::uint64_t max_bytes) = 0;
  // Creates the directory (and parents) and syncs every parent so the entries survive a power cut.
  virtual Status CreateDirectories(const std::filesystem::path& path) = 0;
  // Removes a file or a directory tree and syncs the parent directory.
  virtual Status Remove(const std::filesystem::path& path) = 0;

  // The primitives of an append-only journal. The defaults refuse, so an older test double
  // still compiles; the spool needs them (PosixFileStore and SimulatedDisk implement them).
  //
  // Appends to an existing file and returns only after the appended bytes are synced. On
  // failure part of `bytes` may have reached the file: the caller truncates back.
  virtual Status AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes);
  // Cuts the file to `size_bytes` and syncs it (used to drop a torn journal tail).
  virtual Status Truncate(const std::filesystem::path& path, std::uint64_t size_bytes);
  // Reads at most `max_bytes` from `offset`; an empty result means end of file. Lets a caller
  // hash or parse a large file in bounded pieces.
  virtual Expected<std::vector<std::uint8_t>> ReadRange(const std::filesystem::path& path, std::uint64_t offset,
                                                        std::uint64_t max_bytes);
  // Lists a directory (kNotFound if it does not exist), names sorted.
  virtual Expected<std::vector<DirEntry>> List(const std::filesystem::path& directory);
  // Bytes free for an unprivileged writer on the file system holding `path`.
  virtual Expected<std::uint64_t> FreeBytes(const std::filesystem::path& path);

  // Batched durability: WriteUnsynced creates or replaces `path` without syncing anything
  // (after a crash it may be missing, empty or torn) and may start writing it back early;
  // SyncBatch then makes the contents of `files` and the entries of `directories` durable
  // (each file's data synced, then each directory), so a batch costs a few flushes, not three
  // per file. Only after SyncBatch returned OK may anything refer to those files durably.
  virtual Status WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes);
  virtual Status SyncBatch(const std::vector<std::filesystem::path>& files,
                           const std::vector<std::filesystem::path>& directories);

  // Takes the exclusive lock of `path` (created if missing) for this process and writes this
  // process's id into it. kBusy when another holder has it (another process, or another open
  // in this one); the message names the holder's pid and command line. The default is POSIX
  // flock(2): the kernel drops the lock when its holder exits or dies, so a crash never leaves
  // it taken.
  virtual Expected<std::unique_ptr<FileLock>> LockExclusive(const std::filesystem::path& path);
};

// The pid recorded in a lock file by LockExclusive (0 if none); meaningful only while the
// lock is taken, since the file stays behind when its holder exits.
int LockHolderPid(const std::filesystem::path& path);
// The command line of process `pid` ("" if it is gone or unreadable), arguments joined by spaces.
std::string ProcessCommandLine(int pid);

// The primitive steps by which PosixFileStore changes what is on disk, each reported to its
// observer (if any) immediately before it is taken. A durable write is kCreate, kWrite (one per
// write(2) call), kSync, kRename, kSyncDirectory; an append is kWrite then kSync; a batch sync is
// one kSync per file, then one kSyncDirectory per directory.
enum class FileStep {
  kCreate,         // open(O_CREAT | O_TRUNC) of a file (a temporary or an unsynced chunk file)
  kWrite,          // one write(2)
  kSync,           // fsync or fdatasync of a file
  kRename,         // a temporary renamed into place
  kSyncDirectory,  // fsync of a directory
  kRemove,         // a file or a tree removed
  kMakeDirectory,  // mkdir
  kTruncate,       // ftruncate
};

// Sees every step of a PosixFileStore: the seam that lets a test build stop a process between
// any two of them (base/fault_injecting_file_store.hpp, compiled only into test builds).
// Production code passes none.
class FileStepObserver {
 public:
  virtual ~FileStepObserver() = default;
  // Called on the thread taking the step (any thread), before it is taken.
  virtual void BeforeStep(FileStep step, const std::filesystem::path& path) = 0;
};

// The real POSIX implementation.
class PosixFileStore final : public FileStore {
 public:
  // Whether anything is ever flushed to stable storage. kNone is for benches and tests that
  // measure what syncing costs (bench/spool): every fsync, fdatasync, directory fsync and
  // early writeback is skipped, so nothing it writes survives a power cut. Never configurable.
  enum class Sync { kDurable, kNone };
  // `observer` (optional) must outlive the store.
  explicit PosixFileStore(Sync sync = Sync::kDurable, FileStepObserver* observer = nullptr)
      : sync_(sync), observer_(observer) {}

  Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Status WriteDurablyOwnerOnly(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Expected<std::vector<std::uint8_t>> ReadAll(const std::filesystem::path& path,
                                              std::uint64_t max_bytes) override;
  Status CreateDirectories(const std::filesystem::path& path) override;
  Status Remove(const std::filesystem::path& path) override;
  Status AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Status Truncate(const std::filesystem::path& path, std::uint64_t size_bytes) override;
  Expected<std::vector<std::uint8_t>> ReadRange(const std::filesystem::path& path, std::uint64_t offset,
                                                std::uint64_t max_bytes) override;
  Expected<std::vector<DirEntry>> List(const std::filesystem::path& directory) override;
  Expected<std::uint64_t> FreeBytes(const std::filesystem::path& path) override;
  // Writes, then asks the kernel to start writing the pages back (sync_file_range
  // SYNC_FILE_RANGE_WRITE, no durability by itself), so the batch's fdatasync finds little to do.
  Status WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  // fdatasync of each file, then fsync of each directory: only our files, not the whole file
  // system (syncfs would also flush every other program's dirty data).
  Status SyncBatch(const std::vector<std::filesystem::path>& files,
                   const std::vector<std::filesystem::path>& directories) override;

 private:
  bool durable() const { return sync_ == Sync::kDurable; }
  Status WriteDurablyWithMode(const std::filesystem::path& path, std::span<const std::uint8_t> bytes, bool owner_only);
  Sync sync_;
  FileStepObserver* observer_;
};

// The file store a process of the agent (and of the reference worker) writes its files
// through: a PosixFileStore, or in builds with the CMake option CTAGENT_FAULT_HOOKS (the test
// builds) one decorated with the test-only fault injection when the test asked for it
// (base/fault_injecting_file_store.hpp). Defined by the library ctagent_process_file_store,
// which compiles one or the other.
std::unique_ptr<FileStore> MakeProcessFileStore();

inline std::span<const std::uint8_t> AsBytes(const std::string& text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

}  // namespace ctagent
