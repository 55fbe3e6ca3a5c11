// Test-only fault injection for the file store (docs/durability.md, "Test-only fault
// injection"). Compiled only in builds with the CMake option CTAGENT_FAULT_HOOKS (on where the
// tests are built, off in the firmware presets and the Debian package): the library
// ctagent_fault_store, which MakeProcessFileStore() of those builds uses.
//
// A FaultInjectingFileStore is a PosixFileStore that
//   - raise(SIGKILL)s its process immediately before the process's N-th file step
//     (FileStep: create, write, fsync, rename, directory fsync, remove, mkdir, truncate),
//     counting from 1 over every store of the process, so a kill lands between any two of them
//     (between the fsync of a file and its rename, say);
//   - fails reads (ReadAll, ReadRange) of files whose path contains a given text with EIO.
#pragma once

#include <cstdint>
#include <string>

#include "base/durable_file.hpp"

namespace ctagent {

struct FileFaults {
  std::uint64_t kill_at_step = 0;   // 0: never
  std::string eio_read_substring;   // empty: no read fails
  bool any() const { return kill_at_step != 0 || !eio_read_substring.empty(); }
};

// The faults a test asked for through the environment, read once per process:
//   CTAGENT_FAULT_KILL_AT_OP=N      kill_at_step
//   CTAGENT_FAULT_EIO_READ=<text>   eio_read_substring
const FileFaults& FileFaultsFromEnvironment();

class FaultInjectingFileStore final : public FileStore, private FileStepObserver {
 public:
  explicit FaultInjectingFileStore(FileFaults faults);

  Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Status WriteDurablyOwnerOnly(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
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
  Expected<std::unique_ptr<FileLock>> LockExclusive(const std::filesystem::path& path) override;

 private:
  void BeforeStep(FileStep step, const std::filesystem::path& path) override;
  Status ReadFault(const std::filesystem::path& path) const;  // EIO if `path` matches, else OK

  FileFaults faults_;
  PosixFileStore inner_;  // last: it is given this object as its observer
};

}  // namespace ctagent
