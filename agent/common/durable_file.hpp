// Durable file operations for the spool: a file is on stable storage only after
// write -> fsync(file) -> rename -> fsync(directory). Everything the spool writes goes
// through this one small layer so that a test can substitute a simulated disk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "agent/common/error.hpp"

namespace ctagent {

class FileStore {
 public:
  virtual ~FileStore() = default;

  // Atomically replaces `path` with `bytes`; returns only after the data and the rename are synced.
  virtual Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) = 0;
  // Reads a whole file, refusing files larger than `max_bytes` (a lying size must not exhaust memory).
  virtual Expected<std::vector<std::uint8_t>> ReadAll(const std::filesystem::path& path,
                                                      std::uint64_t max_bytes) = 0;
  // Creates the directory (and parents) and syncs the parent so the entry survives a power cut.
  virtual Status CreateDirectories(const std::filesystem::path& path) = 0;
  virtual Status Remove(const std::filesystem::path& path) = 0;
};

// The real POSIX implementation.
class PosixFileStore final : public FileStore {
 public:
  Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override;
  Expected<std::vector<std::uint8_t>> ReadAll(const std::filesystem::path& path,
                                              std::uint64_t max_bytes) override;
  Status CreateDirectories(const std::filesystem::path& path) override;
  Status Remove(const std::filesystem::path& path) override;
};

inline std::span<const std::uint8_t> AsBytes(const std::string& text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

}  // namespace ctagent
