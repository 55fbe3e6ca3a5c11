#include "agent/spool/simulated_disk.hpp"

#include <algorithm>

namespace ctagent {
namespace {

std::string Norm(const std::filesystem::path& p) {
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string Parent(const std::string& p) { return Norm(std::filesystem::path(p).parent_path()); }
std::string Name(const std::string& p) { return std::filesystem::path(p).filename().string(); }

}  // namespace

SimulatedDisk::SimulatedDisk(std::uint64_t capacity_bytes) : capacity_bytes_(capacity_bytes) { dirs_["/"]; }

void SimulatedDisk::CrashAtOp(std::uint64_t op) {
  std::lock_guard lock(mutex_);
  crash_at_ = op == 0 ? 0 : ops_ + op;
}

bool SimulatedDisk::crashed() const {
  std::lock_guard lock(mutex_);
  return crashed_;
}

std::uint64_t SimulatedDisk::mutating_ops() const {
  std::lock_guard lock(mutex_);
  return ops_;
}

void SimulatedDisk::FailReadsContaining(std::string substring) {
  std::lock_guard lock(mutex_);
  eio_substring_ = std::move(substring);
}

void SimulatedDisk::SetNoSpace(bool on) {
  std::lock_guard lock(mutex_);
  no_space_ = on;
}

Unexpected SimulatedDisk::Crashed() const {
  return MakeError(ErrorKind::kIo, "simulated power loss at mutating operation " + std::to_string(crash_at_));
}

Status SimulatedDisk::Step() {
  if (crashed_) return Crashed();
  ++ops_;
  if (crash_at_ != 0 && ops_ >= crash_at_) {
    crashed_ = true;
    return Crashed();
  }
  return Ok();
}

void SimulatedDisk::Reboot(std::uint64_t seed) {
  std::lock_guard lock(mutex_);
  std::mt19937_64 rng(seed);
  // Directory entries: a random prefix of each directory's pending changes survives.
  for (auto& [path, dir] : dirs_) {
    std::size_t keep = 0;
    if (!dir.pending.empty()) {
      const auto mode = rng() % 4;
      keep = mode == 0 ? 0 : mode == 1 ? dir.pending.size() : rng() % (dir.pending.size() + 1);
    }
    for (std::size_t i = 0; i < keep; ++i) {
      for (const auto& [name, entry] : dir.pending[i]) {
        if (entry) {
          dir.synced[name] = *entry;
        } else {
          dir.synced.erase(name);
        }
      }
    }
    dir.pending.clear();
    dir.live = dir.synced;
  }
  // File contents: unsynced bytes are dropped, kept, or torn.
  for (auto& [id, inode] : inodes_) {
    if (inode.current == inode.synced) continue;
    const auto mode = rng() % 4;
    if (mode == 0) {
      inode.current = inode.synced;
    } else if (mode == 1 || inode.current.size() <= inode.synced.size()) {
      inode.synced = inode.current;
    } else {
      std::size_t common = 0;
      while (common < inode.synced.size() && inode.synced[common] == inode.current[common]) ++common;
      const std::size_t len = common + rng() % (inode.current.size() - common + 1);
      std::vector<std::uint8_t> torn(inode.current.begin(), inode.current.begin() + static_cast<std::ptrdiff_t>(len));
      if (mode == 3) {
        // Sectors that were allocated but never written: garbage after a random point.
        for (std::size_t i = common + (len > common ? rng() % (len - common) : 0); i < len; ++i) {
          torn[i] = static_cast<std::uint8_t>(rng());
        }
      }
      inode.synced = torn;
      inode.current = std::move(torn);
    }
  }
  crashed_ = false;
  crash_at_ = 0;
}

bool SimulatedDisk::DirExists(const std::string& dir) const {
  if (dir == "/") return true;
  const std::string parent = Parent(dir);
  if (!DirExists(parent)) return false;
  const auto it = dirs_.find(parent);
  if (it == dirs_.end()) return false;
  const auto e = it->second.live.find(Name(dir));
  return e != it->second.live.end() && e->second.is_directory && dirs_.count(dir) != 0;
}

std::optional<SimulatedDisk::Entry> SimulatedDisk::Lookup(const std::filesystem::path& path) const {
  const std::string p = Norm(path);
  if (p == "/") return Entry{true, 0};
  const std::string parent = Parent(p);
  if (!DirExists(parent)) return std::nullopt;
  const auto& live = dirs_.at(parent).live;
  const auto e = live.find(Name(p));
  if (e == live.end()) return std::nullopt;
  return e->second;
}

void SimulatedDisk::Change(const std::string& dir, DirChange change) {
  Dir& d = dirs_[dir];
  for (const auto& [name, entry] : change) {
    if (entry) {
      d.live[name] = *entry;
    } else {
      d.live.erase(name);
    }
  }
  d.pending.push_back(std::move(change));
}

Status SimulatedDisk::SyncDir(const std::string& dir) {
  if (auto st = Step(); !st) return st;
  Dir& d = dirs_[dir];
  d.synced = d.live;
  d.pending.clear();
  return Ok();
}

std::uint64_t SimulatedDisk::UsedBytes() const {
  std::uint64_t used = 0;
  for (const auto& [id, inode] : inodes_) used += std::max(inode.current.size(), inode.synced.size());
  return used;
}

Status SimulatedDisk::WriteDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  const std::string p = Norm(path);
  const std::string dir = Parent(p);
  const std::string tmp = Name(p) + ".tmp";
  if (auto st = Step(); !st) return st;
  if (!DirExists(dir)) return MakeError(ErrorKind::kNotFound, "cannot create " + p + ".tmp: no such directory");
  const std::uint64_t id = next_inode_++;
  inodes_[id];
  Change(dir, {{tmp, Entry{false, id}}});
  if (no_space_ || UsedBytes() + bytes.size() > capacity_bytes_) {
    Change(dir, {{tmp, std::nullopt}});
    inodes_.erase(id);
    return MakeError(ErrorKind::kNoSpace, "cannot write " + p + ".tmp: No space left on device");
  }
  inodes_[id].current.assign(bytes.begin(), bytes.end());
  if (auto st = Step(); !st) return st;  // fsync
  inodes_[id].synced = inodes_[id].current;
  if (auto st = Step(); !st) return st;  // rename
  Change(dir, {{Name(p), Entry{false, id}}, {tmp, std::nullopt}});
  return SyncDir(dir);
}

Expected<const std::vector<std::uint8_t>*> SimulatedDisk::FileForReading(const std::string& p) const {
  if (crashed_) return Crashed();
  if (!eio_substring_.empty() && p.find(eio_substring_) != std::string::npos) {
    return MakeError(ErrorKind::kIo, "cannot read " + p + ": Input/output error");
  }
  const auto e = Lookup(p);
  if (!e || e->is_directory) return MakeError(ErrorKind::kNotFound, "no such file: " + p);
  return &inodes_.at(e->inode).current;
}

Expected<std::vector<std::uint8_t>> SimulatedDisk::ReadAll(const std::filesystem::path& path, std::uint64_t max_bytes) {
  std::lock_guard lock(mutex_);
  const std::string p = Norm(path);
  auto file = FileForReading(p);
  if (!file) return MakeError(file.error());
  const auto& data = **file;
  if (data.size() > max_bytes) {
    return MakeError(ErrorKind::kCorrupt, p + " is " + std::to_string(data.size()) + " bytes, more than the " +
                                              std::to_string(max_bytes) + " allowed for this kind of file");
  }
  return data;
}

Expected<std::vector<std::uint8_t>> SimulatedDisk::ReadRange(const std::filesystem::path& path, std::uint64_t offset,
                                                             std::uint64_t max_bytes) {
  std::lock_guard lock(mutex_);
  auto file = FileForReading(Norm(path));
  if (!file) return MakeError(file.error());
  const auto& data = **file;
  if (offset >= data.size()) return std::vector<std::uint8_t>{};
  const auto end = std::min<std::uint64_t>(data.size(), offset + max_bytes);
  return std::vector<std::uint8_t>(data.begin() + static_cast<std::ptrdiff_t>(offset),
                                   data.begin() + static_cast<std::ptrdiff_t>(end));
}

Status SimulatedDisk::CreateDirectories(const std::filesystem::path& path) {
  std::lock_guard lock(mutex_);
  const std::string p = Norm(path);
  if (DirExists(p)) return Ok();
  std::vector<std::string> missing;
  for (std::string d = p; d != "/" && !DirExists(d); d = Parent(d)) missing.push_back(d);
  std::reverse(missing.begin(), missing.end());
  for (const auto& d : missing) {
    if (auto e = Lookup(d); e && !e->is_directory) {
      return MakeError(ErrorKind::kIo, "cannot create directory " + d + ": a file has that name");
    }
    if (auto st = Step(); !st) return st;  // mkdir
    Dir& created = dirs_[d];
    created.live.clear();  // a directory removed earlier and made again starts empty
    Change(Parent(d), {{Name(d), Entry{true, 0}}});
    if (auto st = SyncDir(Parent(d)); !st) return st;
  }
  return SyncDir(p);
}

Status SimulatedDisk::RemoveLocked(const std::filesystem::path& path) {
  const std::string p = Norm(path);
  const auto e = Lookup(p);
  if (!e) return Ok();
  if (e->is_directory) {
    const auto names = dirs_[p].live;
    for (const auto& [name, entry] : names) {
      if (auto st = RemoveLocked(p + "/" + name); !st) return st;
    }
  }
  if (auto st = Step(); !st) return st;  // unlink / rmdir
  Change(Parent(p), {{Name(p), std::nullopt}});
  return Ok();
}

Status SimulatedDisk::Remove(const std::filesystem::path& path) {
  std::lock_guard lock(mutex_);
  if (crashed_) return Crashed();
  if (auto st = RemoveLocked(path); !st) return st;
  return SyncDir(Parent(Norm(path)));
}

Status SimulatedDisk::AppendDurably(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  if (crashed_) return Crashed();
  const std::string p = Norm(path);
  const auto e = Lookup(p);
  if (!e || e->is_directory) return MakeError(ErrorKind::kNotFound, "cannot open for appending " + p);
  if (auto st = Step(); !st) return st;  // write
  auto& data = inodes_.at(e->inode).current;
  if (no_space_ || UsedBytes() + bytes.size() > capacity_bytes_) {
    // A real write can stop part-way: leave half of it behind for the caller to cut.
    data.insert(data.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(bytes.size() / 2));
    return MakeError(ErrorKind::kNoSpace, "cannot write " + p + ": No space left on device");
  }
  data.insert(data.end(), bytes.begin(), bytes.end());
  if (auto st = Step(); !st) return st;  // fsync
  inodes_.at(e->inode).synced = data;
  return Ok();
}

Status SimulatedDisk::Truncate(const std::filesystem::path& path, std::uint64_t size_bytes) {
  std::lock_guard lock(mutex_);
  if (crashed_) return Crashed();
  const std::string p = Norm(path);
  const auto e = Lookup(p);
  if (!e || e->is_directory) return MakeError(ErrorKind::kNotFound, "cannot open for truncating " + p);
  if (auto st = Step(); !st) return st;
  auto& inode = inodes_.at(e->inode);
  inode.current.resize(static_cast<std::size_t>(size_bytes));
  if (auto st = Step(); !st) return st;
  inode.synced = inode.current;
  return Ok();
}

Expected<std::vector<DirEntry>> SimulatedDisk::List(const std::filesystem::path& directory) {
  std::lock_guard lock(mutex_);
  if (crashed_) return Crashed();
  const std::string p = Norm(directory);
  if (!DirExists(p)) return MakeError(ErrorKind::kNotFound, "no such directory: " + p);
  std::vector<DirEntry> out;
  for (const auto& [name, entry] : dirs_.at(p).live) {
    out.push_back({name, entry.is_directory, entry.is_directory ? 0 : inodes_.at(entry.inode).current.size()});
  }
  return out;
}

Status SimulatedDisk::WriteUnsynced(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  const std::string p = Norm(path);
  const std::string dir = Parent(p);
  // Two steps, as on a real disk: the create (an unsynced entry naming an empty file), then the
  // write (unsynced contents). Early writeback (sync_file_range) promises nothing, so it is not
  // modelled: at a crash the contents are dropped, kept or torn like any unsynced write.
  if (auto st = Step(); !st) return st;  // create
  if (!DirExists(dir)) return MakeError(ErrorKind::kNotFound, "cannot create " + p + ": no such directory");
  auto existing = Lookup(p);
  if (existing && existing->is_directory) return MakeError(ErrorKind::kIo, "cannot create " + p + ": a directory");
  if (!existing) {
    const std::uint64_t id = next_inode_++;
    inodes_[id];
    Change(dir, {{Name(p), Entry{false, id}}});
    existing = Entry{false, id};
  } else {
    inodes_.at(existing->inode).current.clear();  // O_TRUNC
  }
  if (auto st = Step(); !st) return st;  // write
  if (no_space_ || UsedBytes() + bytes.size() > capacity_bytes_) {
    return MakeError(ErrorKind::kNoSpace, "cannot write " + p + ": No space left on device");
  }
  inodes_.at(existing->inode).current.assign(bytes.begin(), bytes.end());
  return Ok();
}

Status SimulatedDisk::SyncBatch(const std::vector<std::filesystem::path>& files,
                                const std::vector<std::filesystem::path>& directories) {
  std::lock_guard lock(mutex_);
  if (crashed_) return Crashed();
  // One step per fdatasync and per directory fsync, so a crash can land between any two.
  for (const auto& f : files) {
    const auto e = Lookup(f);
    if (!e || e->is_directory) return MakeError(ErrorKind::kNotFound, "cannot open for syncing " + Norm(f));
    if (auto st = Step(); !st) return st;
    inodes_.at(e->inode).synced = inodes_.at(e->inode).current;
  }
  for (const auto& d : directories) {
    if (!DirExists(Norm(d))) return MakeError(ErrorKind::kNotFound, "cannot open directory " + Norm(d));
    if (auto st = SyncDir(Norm(d)); !st) return st;
  }
  return Ok();
}

Expected<std::uint64_t> SimulatedDisk::FreeBytes(const std::filesystem::path&) {
  std::lock_guard lock(mutex_);
  const std::uint64_t used = UsedBytes();
  return used >= capacity_bytes_ ? 0 : capacity_bytes_ - used;
}

std::vector<std::string> SimulatedDisk::AllFiles(const std::filesystem::path& under) {
  std::lock_guard lock(mutex_);
  std::vector<std::string> out;
  std::vector<std::string> todo{Norm(under)};
  while (!todo.empty()) {
    const std::string d = todo.back();
    todo.pop_back();
    if (!DirExists(d)) continue;
    for (const auto& [name, entry] : dirs_.at(d).live) {
      const std::string child = d + "/" + name;
      if (entry.is_directory) {
        todo.push_back(child);
      } else {
        out.push_back(child);
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool SimulatedDisk::Exists(const std::filesystem::path& path) {
  std::lock_guard lock(mutex_);
  return Lookup(path).has_value();
}

Status SimulatedDisk::Corrupt(const std::filesystem::path& path, std::uint64_t offset) {
  std::lock_guard lock(mutex_);
  const auto e = Lookup(path);
  if (!e || e->is_directory) return MakeError(ErrorKind::kNotFound, "no such file: " + path.string());
  auto& inode = inodes_.at(e->inode);
  if (offset >= inode.current.size()) return MakeError(ErrorKind::kInvalidInput, "offset beyond the end");
  inode.current[offset] ^= 0x5a;
  inode.synced = inode.current;
  return Ok();
}

Expected<std::unique_ptr<FileLock>> SimulatedDisk::LockExclusive(const std::filesystem::path&) {
  return std::make_unique<FileLock>();
}

}  // namespace ctagent
