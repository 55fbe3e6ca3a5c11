// A FileStore decorator that records every call (in order, thread-safe) and can slow down the
// batch sync, so tests can check the order of durable operations the spool issues through a
// real file store. Shared by tests/spool and tests/core.
#pragma once

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/durable_file.hpp"

namespace ctagent::test {

struct StoreEvent {
  std::string op;                                // "write_durably", "write_unsynced", "sync_batch", "append", "read", ...
  std::filesystem::path path;                    // the file (for sync_batch: empty)
  std::vector<std::filesystem::path> files;      // sync_batch: the files synced
  std::vector<std::filesystem::path> dirs;       // sync_batch: the directories synced
  std::string text;                              // append: the bytes, as text (journal records are JSON)
};

class RecordingStore final : public FileStore {
 public:
  explicit RecordingStore(FileStore& inner) : inner_(inner) {}

  void SetSyncDelay(std::chrono::milliseconds delay) {
    std::lock_guard lock(mutex_);
    sync_delay_ = delay;
  }
  std::vector<StoreEvent> events() const {
    std::lock_guard lock(mutex_);
    return events_;
  }

  Status WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override {
    Record({"write_durably", path, {}, {}, {}});
    return inner_.WriteDurably(path, bytes);
  }
  Expected<std::vector<std::uint8_t>> ReadAll(const std::filesystem::path& path, std::uint64_t max_bytes) override {
    Record({"read", path, {}, {}, {}});
    return inner_.ReadAll(path, max_bytes);
  }
  Status CreateDirectories(const std::filesystem::path& path) override { return inner_.CreateDirectories(path); }
  Status Remove(const std::filesystem::path& path) override {
    Record({"remove", path, {}, {}, {}});
    return inner_.Remove(path);
  }
  Status AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override {
    // Recorded after it returned: a record counts only once it is synced.
    auto st = inner_.AppendDurably(path, bytes);
    if (st) Record({"append", path, {}, {}, std::string(bytes.begin(), bytes.end())});
    return st;
  }
  Status Truncate(const std::filesystem::path& path, std::uint64_t size_bytes) override {
    return inner_.Truncate(path, size_bytes);
  }
  Expected<std::vector<std::uint8_t>> ReadRange(const std::filesystem::path& path, std::uint64_t offset,
                                                std::uint64_t max_bytes) override {
    Record({"read", path, {}, {}, {}});
    return inner_.ReadRange(path, offset, max_bytes);
  }
  Expected<std::vector<DirEntry>> List(const std::filesystem::path& directory) override { return inner_.List(directory); }
  Expected<std::uint64_t> FreeBytes(const std::filesystem::path& path) override { return inner_.FreeBytes(path); }
  Expected<std::unique_ptr<FileLock>> LockExclusive(const std::filesystem::path& path) override {
    return inner_.LockExclusive(path);
  }
  Status WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) override {
    auto st = inner_.WriteUnsynced(path, bytes);
    Record({"write_unsynced", path, {}, {}, {}});
    return st;
  }
  Status SyncBatch(const std::vector<std::filesystem::path>& files,
                   const std::vector<std::filesystem::path>& directories) override {
    std::chrono::milliseconds delay{};
    {
      std::lock_guard lock(mutex_);
      delay = sync_delay_;
    }
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    auto st = inner_.SyncBatch(files, directories);
    if (st) Record({"sync_batch", {}, files, directories, {}});
    return st;
  }

 private:
  void Record(StoreEvent e) {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(e));
  }

  FileStore& inner_;
  mutable std::mutex mutex_;
  std::vector<StoreEvent> events_;
  std::chrono::milliseconds sync_delay_{0};
};

// Checks the batched order for every chunk file under `chunks_marker` (a path fragment such as
// "/chunks/"): written unsynced, then named by a successful SyncBatch together with its
// directory, then named by a journal record, and read (by the uploader) only after that.
// Returns "" if it holds, else what broke. `syncs` receives the number of SyncBatch calls.
inline std::string CheckBatchedOrder(const std::vector<StoreEvent>& events, std::size_t* syncs = nullptr,
                                     std::size_t* chunk_files = nullptr) {
  std::map<std::string, std::size_t> written, synced, journaled;
  std::size_t sync_count = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const StoreEvent& e = events[i];
    if (e.op == "write_durably" && e.path.string().find("/chunks/") != std::string::npos) {
      return "chunk file " + e.path.string() + " was written with the per-chunk durable path";
    }
    if (e.op == "write_unsynced") written.emplace(e.path.string(), i);
    if (e.op == "sync_batch") {
      ++sync_count;
      for (const auto& f : e.files) {
        const bool dir_synced = std::find(e.dirs.begin(), e.dirs.end(), f.parent_path()) != e.dirs.end();
        if (!dir_synced) return "the batch syncing " + f.string() + " did not sync its directory";
        if (!written.count(f.string())) return f.string() + " was synced before it was written";
        synced.emplace(f.string(), i);
      }
    }
    if (e.op == "append") {
      for (const auto& [path, at] : written) {
        // A journal "chunk" op names the chunk by scan UID and index; the file name carries both.
        const std::filesystem::path p(path);
        const std::string uid = p.parent_path().parent_path().filename().string();
        const std::string index = std::to_string(std::stoul(p.stem().string()));
        const bool names_it = e.text.find("\"op\":\"chunk\"") != std::string::npos &&
                              e.text.find("\"uid\":\"" + uid + "\"") != std::string::npos &&
                              e.text.find("\"index\":" + index + ",") != std::string::npos;
        if (!names_it || journaled.count(path)) continue;
        if (!synced.count(path)) return "the journal named " + path + " before it was synced";
        journaled.emplace(path, i);
      }
    }
    if (e.op == "read" && e.path.string().find("/chunks/") != std::string::npos) {
      if (!journaled.count(e.path.string())) return e.path.string() + " was read before its journal record";
    }
  }
  for (const auto& [path, at] : written) {
    if (!journaled.count(path)) return path + " was written but never journaled";
  }
  if (syncs) *syncs = sync_count;
  if (chunk_files) *chunk_files = written.size();
  return "";
}

}  // namespace ctagent::test
