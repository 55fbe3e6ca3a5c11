#include "base/fault_injecting_file_store.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace ctagent {
namespace {

// Steps taken by every FaultInjectingFileStore of this process: the agent opens several stores
// (the spool's, the result fetcher's, a command's own), and N counts over all of them.
std::atomic<std::uint64_t> g_steps{0};

}  // namespace

const FileFaults& FileFaultsFromEnvironment() {
  static const FileFaults faults = [] {
    FileFaults f;
    if (const char* v = std::getenv("CTAGENT_FAULT_KILL_AT_OP"); v && *v) f.kill_at_step = std::strtoull(v, nullptr, 10);
    if (const char* v = std::getenv("CTAGENT_FAULT_EIO_READ"); v && *v) f.eio_read_substring = v;
    return f;
  }();
  return faults;
}

FaultInjectingFileStore::FaultInjectingFileStore(FileFaults faults)
    : faults_(std::move(faults)), inner_(PosixFileStore::Sync::kDurable, this) {}

void FaultInjectingFileStore::BeforeStep(FileStep, const std::filesystem::path&) {
  if (faults_.kill_at_step == 0) return;
  if (g_steps.fetch_add(1) + 1 == faults_.kill_at_step) std::raise(SIGKILL);
}

Status FaultInjectingFileStore::ReadFault(const std::filesystem::path& path) const {
  if (faults_.eio_read_substring.empty() || path.string().find(faults_.eio_read_substring) == std::string::npos) {
    return Ok();
  }
  return MakeError(ErrorKind::kIo, "cannot read " + path.string() + ": " + std::strerror(EIO));
}

Status FaultInjectingFileStore::WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  return inner_.WriteDurably(path, bytes);
}
Status FaultInjectingFileStore::WriteDurablyOwnerOnly(const std::filesystem::path& path,
                                                      std::span<const std::uint8_t> bytes) {
  return inner_.WriteDurablyOwnerOnly(path, bytes);
}
Expected<std::vector<std::uint8_t>> FaultInjectingFileStore::ReadAll(const std::filesystem::path& path,
                                                                     std::uint64_t max_bytes) {
  if (auto st = ReadFault(path); !st) return MakeError(st.error());
  return inner_.ReadAll(path, max_bytes);
}
Status FaultInjectingFileStore::CreateDirectories(const std::filesystem::path& path) {
  return inner_.CreateDirectories(path);
}
Status FaultInjectingFileStore::Remove(const std::filesystem::path& path) { return inner_.Remove(path); }
Status FaultInjectingFileStore::AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  return inner_.AppendDurably(path, bytes);
}
Status FaultInjectingFileStore::Truncate(const std::filesystem::path& path, std::uint64_t size_bytes) {
  return inner_.Truncate(path, size_bytes);
}
Expected<std::vector<std::uint8_t>> FaultInjectingFileStore::ReadRange(const std::filesystem::path& path,
                                                                       std::uint64_t offset, std::uint64_t max_bytes) {
  if (auto st = ReadFault(path); !st) return MakeError(st.error());
  return inner_.ReadRange(path, offset, max_bytes);
}
Expected<std::vector<DirEntry>> FaultInjectingFileStore::List(const std::filesystem::path& directory) {
  return inner_.List(directory);
}
Expected<std::uint64_t> FaultInjectingFileStore::FreeBytes(const std::filesystem::path& path) {
  return inner_.FreeBytes(path);
}
Status FaultInjectingFileStore::WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  return inner_.WriteUnsynced(path, bytes);
}
Status FaultInjectingFileStore::SyncBatch(const std::vector<std::filesystem::path>& files,
                                          const std::vector<std::filesystem::path>& directories) {
  return inner_.SyncBatch(files, directories);
}
Expected<std::unique_ptr<FileLock>> FaultInjectingFileStore::LockExclusive(const std::filesystem::path& path) {
  return inner_.LockExclusive(path);
}

}  // namespace ctagent
