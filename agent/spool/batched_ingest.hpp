// Batched durable ingest of chunks into the spool (docs/durability.md, "fsync cost").
//
//   codec workers: Add() -> Spool::AddChunkDeferred (file written, writeback started, no sync)
//   sync thread:   once `batch_bytes` are queued, or the oldest queued chunk waited
//                  `interval`, or Flush() asks: Spool::SyncPending (fdatasync of each file, one
//                  fsync per chunk directory, one journal record) -> `done(batch)`
//
// A chunk is accepted (durable, journaled, visible to the uploader and to status) only when
// `done` is called with an OK batch that lists it; a failed batch is never accepted. The
// fsyncs run on the sync thread only, so neither the acquisition thread nor (while fewer than
// `max_pending_bytes` wait) the codec workers ever wait for the disk to flush.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>

#include "agent/spool/spool.hpp"

namespace ctagent::spool {

struct BatchOptions {
  std::uint64_t batch_bytes = 8ull << 20;                 // sync once this many bytes wait
  std::chrono::milliseconds interval{1000};               // ... or once the oldest waited this long
  // Add() waits while this many bytes wait for a sync (the disk flushes slower than chunks
  // arrive); 0: 4 x batch_bytes. Keeps the unsynced backlog, and so a crash's loss, bounded.
  std::uint64_t max_pending_bytes = 0;
};

struct BatchCounters {
  std::uint64_t batches = 0;          // SyncPending calls that synced at least one chunk
  std::uint64_t failed_batches = 0;
  std::uint64_t chunks = 0;           // accepted
  std::uint64_t bytes = 0;            // accepted
  double sync_seconds = 0;            // total time in SyncPending
  double max_sync_seconds = 0;
  std::uint64_t add_waits = 0;        // times Add() waited for a sync (max_pending_bytes reached)
};

// Called on the sync thread for every batch with at least one chunk.
using BatchDone = std::function<void(const Spool::SyncedBatch& batch)>;

class BatchedIngest {
 public:
  BatchedIngest(Spool& spool, BatchOptions options, BatchDone done);
  ~BatchedIngest();  // Flush()es, then stops the sync thread
  BatchedIngest(const BatchedIngest&) = delete;
  BatchedIngest& operator=(const BatchedIngest&) = delete;

  // Writes the chunk file (unsynced) and queues it for the next batch. An error means the file
  // could not be written: the chunk is not queued and `done` will never list it.
  Status Add(const std::string& scan_uid, const codec::ManifestChunk& chunk, std::span<const std::uint8_t> bytes);
  // Returns once every chunk whose Add() returned before this call went through a sync and
  // `done` was called for it (scan end: before the manifest is written).
  void Flush();
  BatchCounters counters() const;

 private:
  void Loop();

  Spool& spool_;
  BatchOptions options_;
  BatchDone done_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;    // to the sync thread: a batch may be due
  std::condition_variable synced_;  // from the sync thread: a batch went through
  std::uint64_t added_ = 0;         // Add() calls that queued a chunk
  std::uint64_t synced_upto_ = 0;   // every chunk among the first synced_upto_ went through a sync
  std::uint64_t flush_upto_ = 0;    // Flush() wants synced_upto_ to reach this
  std::optional<std::chrono::steady_clock::time_point> oldest_;  // of the chunks waiting
  bool stopping_ = false;
  BatchCounters counters_;
  std::thread thread_;  // last: starts after everything above is initialised
};

}  // namespace ctagent::spool
