#include "agent/codec/chunk_stage.hpp"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <utility>

#include "base/allocator.hpp"
#include "base/sha256.hpp"

namespace ctagent::codec {

ChunkInfo ScanChunkInfo(const std::string& scan_uid, const drivers::ScanProtocol& protocol) {
  ChunkInfo info;
  info.scan_uid = scan_uid;
  info.rows = protocol.rows;
  info.channels = protocol.channels;
  info.sample_type = protocol.sample_type;
  info.descriptor = drivers::ToJson(protocol);
  return info;
}

ManifestChunk DescribeEncoded(const RawChunk& raw, std::span<const std::uint8_t> encoded) {
  ManifestChunk mc;
  mc.index = raw.info.chunk_index;
  mc.first_view = raw.info.FirstView();
  mc.view_count = static_cast<std::uint32_t>(raw.info.views.size());
  mc.raw_bytes = raw.samples.size();
  mc.compressed_bytes = encoded.size();
  auto header = ParseChunkHeader(encoded);
  const auto from_header = header ? Sha256Digest::FromHex(header->raw_sha256) : std::nullopt;
  mc.raw_sha256 = from_header ? *from_header : Sha256Of(raw.samples);
  mc.sha256 = Sha256Of(encoded);
  return mc;
}

ChunkStage::ChunkStage(ChunkStageOptions options, StoreFunction store, EncodeFunction encode)
    : options_(options), store_(std::move(store)), encode_(std::move(encode)) {
  options_.threads = std::max<std::uint32_t>(options_.threads, 1);
  options_.views_per_chunk = std::max<std::uint32_t>(options_.views_per_chunk, 1);
  for (std::uint32_t i = 0; i < options_.threads; ++i) threads_.emplace_back([this] { Worker(false); });
  threads_.emplace_back([this] { Worker(true); });
}

ChunkStage::~ChunkStage() { Drain(); }

void ChunkStage::Submit(RawChunk chunk) {
  const std::uint64_t bytes = chunk.samples.size();
  std::unique_lock lock(mutex_);
  chunk.info.chunk_index = counters_.chunks++;
  // A queue takes a chunk while it stays within its bound, and an empty queue takes any chunk
  // (a chunk larger than the bound would otherwise never fit).
  auto fits = [bytes, this](std::uint64_t queued) { return queued == 0 || queued + bytes <= options_.queue_bytes; };
  bool counted_stall = false;
  while (true) {
    if (fits(queue_bytes_)) {
      queue_bytes_ += bytes;
      counters_.queue_high_water_bytes = std::max(counters_.queue_high_water_bytes, queue_bytes_);
      queue_.push_back(std::move(chunk));
      break;
    }
    if (fits(overflow_bytes_)) {
      overflow_bytes_ += bytes;
      counters_.overflow_high_water_bytes = std::max(counters_.overflow_high_water_bytes, overflow_bytes_);
      ++counters_.overflow_chunks;
      overflow_queue_.push_back(std::move(chunk));
      break;
    }
    // Both full: storage (or the cheap encoder) is slower than the raw view rate. Waiting here is
    // the only way to keep memory bounded; it is counted so the operator sees it.
    if (!counted_stall) {
      ++counters_.stalls;
      counted_stall = true;
    }
    space_.wait(lock);
  }
  lock.unlock();
  work_.notify_all();
}

void ChunkStage::Worker(bool overflow) {
  std::deque<RawChunk>& queue = overflow ? overflow_queue_ : queue_;
  std::uint64_t& queued_bytes = overflow ? overflow_bytes_ : queue_bytes_;
  // This thread's encoded chunks, one at a time: the buffer is kept from chunk to chunk (with a
  // budget, made before the scan's first view), so that a long scan does not allocate and free
  // a ~1 MiB output per chunk among the record's small allocations (docs/configuration.md,
  // "Memory"). Freed when the thread ends (Drain()).
  std::vector<std::uint8_t> output;
  std::uint64_t generation = 0;
  while (true) {
    RawChunk chunk;
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock, [&] { return !queue.empty() || draining_ || prepare_generation_ != generation; });
      if (prepare_generation_ != generation) {
        generation = prepare_generation_;
        const std::uint64_t chunk_bytes = prepare_chunk_bytes_;
        const std::size_t output_bytes = prepare_output_bytes_;
        lock.unlock();
        PrepareThread(overflow, chunk_bytes, output_bytes, output);
        lock.lock();
        ++threads_prepared_;
        prepared_.notify_all();
        continue;
      }
      if (queue.empty()) return;  // draining and nothing left
      chunk = std::move(queue.front());
      queue.pop_front();
      queued_bytes -= chunk.samples.size();
    }
    space_.notify_all();
    const Status encoded = overflow ? EncodeChunkInto(chunk.info, chunk.samples, options_.overflow, output)
                                    : encode_(chunk.info, chunk.samples, options_.encode, output);
    if (encoded) {
      store_(chunk, std::span<const std::uint8_t>(output));
    } else {
      store_(chunk, MakeError(encoded.error()));
    }
    output.clear();
    {
      std::lock_guard lock(mutex_);
      if (spare_buffers_.size() < spare_limit_ && chunk.samples.capacity() > 0) {
        chunk.samples.clear();
        spare_buffers_.push_back(std::move(chunk.samples));
      }
    }
    chunk = RawChunk();  // its samples freed (or kept) before the heap's free pages are handed back
    ReleaseFreeHeapPages();
  }
}

void ChunkStage::PrepareThread(bool overflow, std::uint64_t chunk_bytes, std::size_t output_bytes,
                               std::vector<std::uint8_t>& output) {
  if (output.capacity() < output_bytes) {
    std::vector<std::uint8_t>().swap(output);
    output.resize(output_bytes);  // zero-filled: its pages are resident now
  }
  if (overflow && chunk_bytes > 0) {
    // zstd sizes a context's tables for the source it is given: compressing one chunk's worth of
    // zeros (cheap: a few RLE blocks) makes the overflow thread's context what every chunk of the
    // scan needs. The zeros come from calloc (pages the kernel hands out zeroed, freed at once):
    // they are not a chunk buffer.
    std::unique_ptr<void, decltype(&std::free)> zeros(std::calloc(static_cast<std::size_t>(chunk_bytes), 1), &std::free);
    output.resize(std::max(output.size(), CompressBound(static_cast<std::size_t>(chunk_bytes))));
    if (zeros != nullptr) {
      (void)CompressFiltered({static_cast<const std::uint8_t*>(zeros.get()), static_cast<std::size_t>(chunk_bytes)},
                             output, options_.overflow);
    }
  }
  output.clear();
}

void ChunkStage::Drain() {
  {
    std::lock_guard lock(mutex_);
    if (draining_ && threads_.empty()) return;
    draining_ = true;
  }
  work_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
  std::vector<std::vector<std::uint8_t>> kept;
  {
    std::lock_guard lock(mutex_);
    kept.swap(spare_buffers_);
  }
  kept.clear();
  ReleaseFreeHeapPages();
}

void ChunkStage::MakeChunkBuffers(std::uint64_t chunk_bytes, std::size_t output_bytes) {
  if (!options_.memory || chunk_bytes == 0) return;
  // Every codec thread makes its output buffer (and the overflow thread its zstd context) first,
  // while no raw chunk buffer exists yet, and this thread waits for all of them.
  {
    std::unique_lock lock(mutex_);
    ++prepare_generation_;
    prepare_chunk_bytes_ = chunk_bytes;
    prepare_output_bytes_ = output_bytes;
    threads_prepared_ = 0;
    const std::size_t thread_count = std::size_t{options_.threads} + 1;  // the workers and the overflow thread
    work_.notify_all();
    prepared_.wait(lock, [&] { return threads_prepared_ >= thread_count || draining_; });
  }
  // The most raw chunks that can exist at once: what the budget grants (a chunk larger than it
  // is granted alone), and never more than the counts allow: one being filled, each queue's
  // bound, one per worker and the overflow thread.
  const std::uint64_t per_queue = std::max<std::uint64_t>(1, options_.queue_bytes / chunk_bytes);
  const std::uint64_t by_counts = 1 + 2 * per_queue + options_.threads + 1;
  const std::uint64_t by_budget = std::max<std::uint64_t>(1, options_.memory->capacity() / chunk_bytes);
  const auto count = static_cast<std::size_t>(std::min(by_budget, by_counts));
  std::vector<std::vector<std::uint8_t>> made;
  made.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    // Zero-filled, so its pages are resident now, not faulted in one by one while views arrive.
    std::vector<std::uint8_t> buffer(chunk_bytes);
    buffer.clear();
    made.push_back(std::move(buffer));
  }
  std::lock_guard lock(mutex_);
  spare_limit_ = std::max(count, kSpareBuffers);
  for (auto& buffer : made) {
    if (spare_buffers_.size() < spare_limit_) spare_buffers_.push_back(std::move(buffer));
  }
}

ChunkStageCounters ChunkStage::counters() const {
  std::lock_guard lock(mutex_);
  return counters_;
}

ChunkStage::AcquireResult ChunkStage::Acquire(drivers::Detector& detector, const drivers::ScanProtocol& protocol,
                                              const ChunkInfo& chunk_template, std::atomic<std::uint64_t>* views_read) {
  AcquireResult result;
  RawChunk current;
  const std::uint64_t view_bytes = protocol.BytesPerView();
  // The next chunk's buffer is made once the full one is queued, not before: while Submit()
  // waits for room, one chunk's samples wait with it, not two (docs/configuration.md, "Memory").
  const std::uint64_t chunk_bytes = std::uint64_t{options_.views_per_chunk} * view_bytes;
  MakeChunkBuffers(chunk_bytes, EncodedChunkCapacity(chunk_template, options_.views_per_chunk, chunk_bytes));
  auto start_chunk = [&] {
    if (options_.memory) {
      bool waited = false;
      current.memory = options_.memory->Take(chunk_bytes, &waited);
      if (waited) {
        std::lock_guard lock(mutex_);
        ++counters_.stalls;
      }
    }
    current.info = chunk_template;
    current.info.views.clear();
    current.info.views.reserve(options_.views_per_chunk);
    {
      std::lock_guard lock(mutex_);
      if (!spare_buffers_.empty()) {
        current.samples = std::move(spare_buffers_.back());
        spare_buffers_.pop_back();
      }
    }
    current.samples.reserve(chunk_bytes);
  };
  auto submit = [&](bool more) {
    if (current.info.views.empty()) return;
    Submit(std::exchange(current, RawChunk()));
    ++result.chunks;
    if (more) start_chunk();
  };
  start_chunk();
  while (true) {
    auto view = detector.NextView();
    if (!view) {
      result.incomplete_reason = "the driver stopped with an error after " + std::to_string(result.views) +
                                 " views: " + view.error().message();
      break;
    }
    if (!view->has_value()) break;
    const drivers::View& v = **view;
    if (v.samples.size() != view_bytes) {
      result.incomplete_reason = "the driver delivered a view of " + std::to_string(v.samples.size()) +
                                 " bytes, expected " + std::to_string(view_bytes);
      detector.Abort();
      break;
    }
    current.info.views.push_back({v.sequence, v.gantry_angle_deg, v.table_position_mm, v.timestamp_us, v.status_flags});
    current.samples.insert(current.samples.end(), v.samples.begin(), v.samples.end());
    ++result.views;
    if (views_read != nullptr) views_read->store(result.views);
    if (current.info.views.size() >= options_.views_per_chunk) submit(true);
  }
  submit(false);
  std::lock_guard lock(mutex_);
  counters_.views += result.views;
  return result;
}

}  // namespace ctagent::codec
