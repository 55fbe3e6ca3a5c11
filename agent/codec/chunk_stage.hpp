// The acquisition -> codec -> store stage of a scan: reads views from the driver, cuts them into
// chunks, and has them encoded and stored without the thread that reads the driver ever waiting
// for compression or storage (docs/codec.md, "Acquisition never waits").
//
//   Acquire() (the acquisition thread, the only caller of NextView)
//     -> bounded queue of raw chunks (options.queue_bytes) -> `threads` workers: pool encoding
//     -> when that queue is full: the overflow queue (same bound) -> one overflow thread that
//        encodes with a cheap setting (options.overflow, no prediction filter, zstd -1)
//     -> when both are full (storage slower than the raw view rate): the acquisition thread
//        waits, and counts it as a stall; memory stays bounded either way.
// Chunk indices are assigned in acquisition order, whichever path encodes the chunk.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "agent/codec/chunk.hpp"
#include "agent/codec/manifest.hpp"
#include "base/byte_budget.hpp"
#include "base/error.hpp"
#include "drivers/detector.hpp"

namespace ctagent::codec {

struct RawChunk {
  // Its samples' share of the agent's chunk-buffer budget (none without one); declared first,
  // so it is handed back after the samples are freed.
  ByteBudget::Lease memory;
  ChunkInfo info;  // identity, shape, views, descriptor (lengths and hashes not yet filled in)
  std::vector<std::uint8_t> samples;
};

// Encodes one chunk into `out`, the calling thread's output buffer, kept from chunk to chunk
// (EncodeChunkInto by default; tests inject a slow one).
using EncodeFunction = std::function<Status(const ChunkInfo&, std::span<const std::uint8_t>, const EncodeOptions&,
                                            std::vector<std::uint8_t>& out)>;
// Receives every chunk once, encoded or with the reason it could not be, on a worker thread,
// in no particular order. Stores it before returning (the agent: writes the chunk file and
// queues it for the spool's next batch sync, agent/spool/batched_ingest.hpp; the fsyncs run on
// the batch's own thread, so a worker is not held up by them). The encoded bytes are the
// worker's output buffer: they are valid until the call returns.
using StoreFunction = std::function<void(const RawChunk& raw, Expected<std::span<const std::uint8_t>> encoded)>;

// The manifest entry of an encoded chunk: index, view range, sizes and both SHA-256 (the raw
// one taken from the sealed header EncodeChunk wrote, so the samples are not hashed twice).
ManifestChunk DescribeEncoded(const RawChunk& raw, std::span<const std::uint8_t> encoded);

// The chunk header fields every chunk of a scan shares: scan UID, shape, sample type and the
// protocol as the descriptor: the template Acquire() takes (it sets the index per chunk).
ChunkInfo ScanChunkInfo(const std::string& scan_uid, const drivers::ScanProtocol& protocol);

struct ChunkStageOptions {
  std::uint32_t views_per_chunk = 64;
  std::uint32_t threads = 2;
  std::uint64_t queue_bytes = 4ull << 20;  // raw bytes waiting for the workers (and, separately, for the overflow thread)
  EncodeOptions encode{Filter::kPredict, 3};
  EncodeOptions overflow{Filter::kNone, 1};
  // Where Acquire() takes each chunk's raw bytes from before it fills the chunk (waiting, and
  // counting a stall, while the budget is spent); they go back once the chunk is stored. Uploads
  // take nothing from it: they send each chunk from its spool file (docs/configuration.md,
  // "Memory"). nullptr: no budget.
  std::shared_ptr<ByteBudget> memory;
};

struct ChunkStageCounters {
  std::uint64_t views = 0;
  std::uint32_t chunks = 0;           // chunks submitted (indices 0 .. chunks - 1)
  std::uint32_t overflow_chunks = 0;  // encoded with the cheap setting because the workers were behind
  std::uint32_t stalls = 0;           // times the acquisition thread had to wait (both queues full, or the memory budget spent)
  std::uint64_t queue_high_water_bytes = 0;     // most raw bytes ever waiting for the workers
  std::uint64_t overflow_high_water_bytes = 0;  // the same for the overflow thread
};

class ChunkStage {
 public:
  // `encode` is used by the workers; the overflow thread always uses EncodeChunkInto.
  ChunkStage(ChunkStageOptions options, StoreFunction store, EncodeFunction encode = EncodeChunkInto);
  ~ChunkStage();  // Drain()s
  ChunkStage(const ChunkStage&) = delete;
  ChunkStage& operator=(const ChunkStage&) = delete;

  struct AcquireResult {
    std::uint64_t views = 0;
    std::uint32_t chunks = 0;
    std::string incomplete_reason;  // empty when the driver ended the scan normally
  };
  // Reads views until the driver ends the scan, fails or is aborted, submitting a chunk every
  // views_per_chunk views (and the rest at the end). `chunk_template` supplies the scan UID,
  // shape and descriptor. `views_read` (optional) is updated after every view.
  // With a memory budget, the sample buffers of every raw chunk the budget (and the queues'
  // bounds) let exist at once are made, and their pages touched, before the first view is read,
  // and so are each codec thread's output buffer (EncodedChunkCapacity) and the overflow
  // thread's zstd context: the scan's chunk memory is taken at its start, and neither grows nor
  // is allocated again while the detector delivers (docs/configuration.md, "Memory").
  AcquireResult Acquire(drivers::Detector& detector, const drivers::ScanProtocol& protocol,
                        const ChunkInfo& chunk_template, std::atomic<std::uint64_t>* views_read = nullptr);

  // Hands a chunk over; its index is the next one. Waits only when both queues are full.
  void Submit(RawChunk chunk);

  // Waits until every submitted chunk was stored, then stops the threads and frees the kept
  // sample and output buffers (the scan's upload and results wait hold none). Idempotent.
  void Drain();

  ChunkStageCounters counters() const;

 private:
  void Worker(bool overflow);

  ChunkStageOptions options_;
  StoreFunction store_;
  EncodeFunction encode_;

  mutable std::mutex mutex_;
  std::condition_variable work_;   // a queue got a chunk, or draining
  std::condition_variable space_;  // a queue has room again
  std::deque<RawChunk> queue_;
  std::deque<RawChunk> overflow_queue_;
  std::uint64_t queue_bytes_ = 0;
  std::uint64_t overflow_bytes_ = 0;
  // Makes the sample buffers the scan's raw chunks will use and has every codec thread make its
  // output buffer (and the overflow thread its zstd context), before the first view (with a
  // budget; see Acquire()).
  void MakeChunkBuffers(std::uint64_t chunk_bytes, std::size_t output_bytes);
  // On a codec thread: makes its output buffer of `output_bytes`, pages touched, and on the
  // overflow thread the zstd context for a chunk of `chunk_bytes`.
  void PrepareThread(bool overflow, std::uint64_t chunk_bytes, std::size_t output_bytes, std::vector<std::uint8_t>& output);

  // A request to the codec threads to prepare for the scan's chunks (MakeChunkBuffers): each
  // thread answers a new generation once, and MakeChunkBuffers waits for all of them.
  std::uint64_t prepare_generation_ = 0;
  std::uint64_t prepare_chunk_bytes_ = 0;
  std::size_t prepare_output_bytes_ = 0;
  std::size_t threads_prepared_ = 0;
  std::condition_variable prepared_;

  // Sample buffers of stored chunks, kept for the next chunks: every raw chunk of a scan has the
  // same size, and a long scan that freed and allocated one per chunk left the heap fragmented,
  // its resident size creeping up (docs/configuration.md, "Memory"). With a budget the stage
  // makes them all at the scan's start and keeps every one (spare_limit_ = the most raw chunks
  // the budget and the queues let exist at once); without one it keeps kSpareBuffers.
  static constexpr std::size_t kSpareBuffers = 2;
  std::size_t spare_limit_ = kSpareBuffers;
  std::vector<std::vector<std::uint8_t>> spare_buffers_;
  bool draining_ = false;
  ChunkStageCounters counters_;
  std::vector<std::thread> threads_;
};

}  // namespace ctagent::codec
