#include "agent/spool/batched_ingest.hpp"

#include <algorithm>

namespace ctagent::spool {

using Clock = std::chrono::steady_clock;

BatchedIngest::BatchedIngest(Spool& spool, BatchOptions options, BatchDone done)
    : spool_(spool), options_(options), done_(std::move(done)) {
  options_.batch_bytes = std::max<std::uint64_t>(options_.batch_bytes, 1);
  if (options_.max_pending_bytes == 0) options_.max_pending_bytes = 4 * options_.batch_bytes;
  options_.max_pending_bytes = std::max(options_.max_pending_bytes, options_.batch_bytes);
  thread_ = std::thread([this] { Loop(); });
}

BatchedIngest::~BatchedIngest() {
  Flush();
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Status BatchedIngest::Add(const std::string& scan_uid, const codec::ManifestChunk& chunk,
                          std::span<const std::uint8_t> bytes) {
  {
    // Back-pressure on the codec worker only when the disk flushes slower than chunks arrive:
    // the unsynced backlog (what a power cut could take) stays bounded.
    std::unique_lock lock(mutex_);
    if (spool_.pending_bytes() >= options_.max_pending_bytes) {
      ++counters_.add_waits;
      wake_.notify_all();
      synced_.wait(lock, [&] { return stopping_ || spool_.pending_bytes() < options_.max_pending_bytes; });
    }
  }
  if (auto st = spool_.AddChunkDeferred(scan_uid, chunk, bytes); !st) return st;
  bool due = false;
  {
    std::lock_guard lock(mutex_);
    ++added_;
    // The first chunk of a batch starts its clock: the sync thread may be sleeping without a
    // deadline, so it must hear of it.
    if (!oldest_) {
      oldest_ = Clock::now();
      due = true;
    }
    due = due || spool_.pending_bytes() >= options_.batch_bytes;
  }
  if (due) wake_.notify_all();
  return Ok();
}

void BatchedIngest::Flush() {
  std::unique_lock lock(mutex_);
  const std::uint64_t target = added_;
  if (synced_upto_ >= target) return;
  flush_upto_ = std::max(flush_upto_, target);
  wake_.notify_all();
  synced_.wait(lock, [&] { return synced_upto_ >= target; });
}

BatchCounters BatchedIngest::counters() const {
  std::lock_guard lock(mutex_);
  return counters_;
}

void BatchedIngest::Loop() {
  std::unique_lock lock(mutex_);
  while (true) {
    const bool flush = flush_upto_ > synced_upto_;
    const bool full = spool_.pending_bytes() >= options_.batch_bytes;
    const bool old = oldest_ && Clock::now() >= *oldest_ + options_.interval;
    if (!flush && !full && !old) {
      if (stopping_) return;
      if (oldest_) {
        wake_.wait_until(lock, *oldest_ + options_.interval);
      } else {
        wake_.wait(lock);
      }
      continue;
    }
    // Every Add() counted so far has queued its chunk, so this batch contains it (or an
    // earlier one did); chunks queued meanwhile may ride along, which only syncs them sooner.
    const std::uint64_t upto = added_;
    oldest_.reset();
    lock.unlock();
    const auto t0 = Clock::now();
    Spool::SyncedBatch batch = spool_.SyncPending();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!batch.chunks.empty()) done_(batch);
    lock.lock();
    if (!batch.chunks.empty()) {
      counters_.sync_seconds += seconds;
      counters_.max_sync_seconds = std::max(counters_.max_sync_seconds, seconds);
      if (batch.status) {
        ++counters_.batches;
        counters_.chunks += batch.chunks.size();
        counters_.bytes += batch.bytes;
      } else {
        ++counters_.failed_batches;
      }
    }
    synced_upto_ = std::max(synced_upto_, upto);
    // Chunks added while this batch was flushed start the clock for the next one now.
    if (!oldest_ && spool_.pending_bytes() > 0) oldest_ = Clock::now();
    synced_.notify_all();
  }
}

}  // namespace ctagent::spool
