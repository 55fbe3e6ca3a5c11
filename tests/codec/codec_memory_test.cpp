// What the codec holds per chunk, counted by replacing operator new for this test binary, does
// not depend on how many chunks a scan has and stays within docs/configuration.md's "Memory":
// - a codec 2 chunk comes back with the capacity it uses (it reserved 4 bytes a sample, ~4 x a
//   detector chunk's payload, held from its encoding until it was stored);
// - a codec thread's scratch is two buffers the size of the raw chunk (it was four), made once;
// - while the acquisition thread waits for room in the full queues it holds one chunk's samples,
//   not two (the next chunk's buffer was made before the full one was queued);
// - with a memory budget, a scan's raw chunk buffers are all made before its first view, none
//   while the views arrive, and they are freed when the stage drains;
// - with a memory budget, the codec threads' output buffers are made before the first view too,
//   and reused: no large block is allocated while the views arrive, on any path.
// Not under AddressSanitizer, whose own operator new would meet this one's delete: there the test
// says so and checks nothing (the release suite runs it).
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <utility>

#include "agent/codec/chunk.hpp"
#include "agent/codec/chunk_stage.hpp"
#include "base/byte_budget.hpp"
#include "drivers/detector.hpp"
#include "tests/support/counts_allocations.hpp"


namespace {

// Bytes operator new handed out on a thread while `counting` was set there.
thread_local bool counting = false;
thread_local std::uint64_t counted_bytes = 0;

// Blocks of exactly `tracked_size` bytes (a raw chunk's samples) live at once, on any thread.
std::atomic<std::size_t> tracked_size{0};
std::mutex tracked_mutex;
int tracked_live = 0;
int tracked_peak = 0;
int tracked_made = 0;  // blocks of that size ever handed out

// Blocks of at least kLargeBlock bytes handed out, on any thread, while `counting_large` is set.
constexpr std::size_t kLargeBlock = 256u << 10;
std::atomic<bool> counting_large{false};
std::atomic<int> large_made{0};

// Only the replacements below use these; under the sanitizers they are not compiled (unused
// functions are errors there).
#if CTAGENT_COUNTS_ALLOCATIONS
std::array<void*, 64> tracked{};

void Track(void* p) {
  std::lock_guard lock(tracked_mutex);
  for (void*& slot : tracked) {
    if (slot == nullptr) {
      slot = p;
      ++tracked_made;
      tracked_peak = std::max(tracked_peak, ++tracked_live);
      return;
    }
  }
  std::abort();  // more than 64 chunk buffers at once: far beyond any bound under test
}

void Untrack(void* p) {
  if (p == nullptr || tracked_size.load(std::memory_order_relaxed) == 0) return;
  std::lock_guard lock(tracked_mutex);
  for (void*& slot : tracked) {
    if (slot == p) {
      slot = nullptr;
      --tracked_live;
      return;
    }
  }
}
#endif

}  // namespace

#if CTAGENT_COUNTS_ALLOCATIONS
// The replacements pair malloc with free, as the standard allows; GCC 12 -O2 inlines them into
// callers and then reports free() of a pointer "returned from operator new" (a false
// -Wmismatched-new-delete that only the release build sees).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (counting) counted_bytes += size;
  if (size >= kLargeBlock && counting_large.load(std::memory_order_relaxed)) ++large_made;
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  const std::size_t tracking = tracked_size.load(std::memory_order_relaxed);
  if (tracking != 0 && size == tracking) Track(p);
  return p;
}
void operator delete(void* p) noexcept {
  Untrack(p);
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  Untrack(p);
  std::free(p);
}
#endif

using namespace ctagent;

namespace {

constexpr std::uint32_t kRows = 16;
constexpr std::uint32_t kChannels = 896;
constexpr std::uint32_t kViews = 64;  // the 16-slice example's chunk: 1.75 MiB raw
constexpr std::size_t kChunkBytes = std::size_t{kViews} * kRows * kChannels * 2;

// Detector-like counts: a smooth profile per view with Gaussian noise (compresses about 2:1
// with codec 2, as the sim's scans do).
std::vector<std::uint8_t> DetectorView(std::uint64_t view, std::mt19937_64& rng) {
  std::normal_distribution<double> noise(0, 40);
  std::vector<std::uint16_t> s(std::size_t{kRows} * kChannels);
  for (std::size_t i = 0; i < s.size(); ++i) {
    const double c = static_cast<double>(i % kChannels);
    const double mean = 20000 + 15000 * std::sin(0.01 * c + 0.05 * static_cast<double>(view));
    s[i] = static_cast<std::uint16_t>(std::clamp(mean + noise(rng), 0.0, 65535.0));
  }
  std::vector<std::uint8_t> bytes(s.size() * 2);
  std::memcpy(bytes.data(), s.data(), bytes.size());
  return bytes;
}

codec::ChunkInfo Info(std::uint64_t first_view) {
  codec::ChunkInfo info;
  info.scan_uid = "2.25.123456789";
  info.rows = kRows;
  info.channels = kChannels;
  info.sample_type = drivers::SampleType::kUint16;
  info.descriptor = {{"geometry", "helical"}};
  for (std::uint32_t v = 0; v < kViews; ++v) info.views.push_back({first_view + v, 0.5 * v, 0, 0, 0});
  return info;
}

std::vector<std::uint8_t> ChunkSamples(std::uint64_t first_view, std::mt19937_64& rng) {
  std::vector<std::uint8_t> samples;
  samples.reserve(kChunkBytes);
  for (std::uint32_t v = 0; v < kViews; ++v) {
    const auto view = DetectorView(first_view + v, rng);
    samples.insert(samples.end(), view.begin(), view.end());
  }
  return samples;
}

codec::EncodeOptions ContextRans() {
  codec::EncodeOptions options{codec::Filter::kPredict, 3};
  options.codec = codec::Codec::kContextRans;
  return options;
}

// Serves `chunks` chunks' worth of detector views as fast as they are read, and counts them.
class FastDetector final : public drivers::Detector {
 public:
  explicit FastDetector(std::uint64_t views) : views_(views) {}
  drivers::DetectorInfo Info() const override { return {"fast", "test", kRows, kChannels, 1e6, {drivers::SampleType::kUint16}}; }
  Status Arm(const drivers::ScanProtocol&) override { return Ok(); }
  Expected<std::optional<drivers::View>> NextView() override {
    if (next_ == views_) return std::optional<drivers::View>{};
    drivers::View v;
    v.sequence = next_;
    v.samples = DetectorView(next_, rng_);
    ++next_;
    return std::optional<drivers::View>(std::move(v));
  }
  void Abort() override {}

 private:
  std::uint64_t views_;
  std::uint64_t next_ = 0;
  std::mt19937_64 rng_{7};
};

// A FastDetector that calls `on_first_view` when its first view is asked for (after the chunk
// stage made what it makes before a scan's first view).
class FirstViewDetector final : public drivers::Detector {
 public:
  FirstViewDetector(std::uint64_t views, std::function<void()> on_first_view)
      : inner_(views), on_first_view_(std::move(on_first_view)) {}
  drivers::DetectorInfo Info() const override { return inner_.Info(); }
  Status Arm(const drivers::ScanProtocol& p) override { return inner_.Arm(p); }
  Expected<std::optional<drivers::View>> NextView() override {
    if (on_first_view_) std::exchange(on_first_view_, nullptr)();
    return inner_.NextView();
  }
  void Abort() override { inner_.Abort(); }

 private:
  FastDetector inner_;
  std::function<void()> on_first_view_;
};

// A scan of `chunks` chunks of kViews views: its protocol and the chunk template Acquire() takes.
struct TestScan {
  drivers::ScanProtocol protocol;
  codec::ChunkInfo chunk_template;
};
TestScan ScanOf(std::uint32_t chunks) {
  TestScan scan;
  scan.protocol.rows = kRows;
  scan.protocol.channels = kChannels;
  scan.protocol.views_per_rotation = chunks * kViews;
  scan.chunk_template = Info(0);
  scan.chunk_template.views.clear();
  return scan;
}

// The stage's options with one worker (and the overflow thread) and queues of `queue_bytes`.
codec::ChunkStageOptions OneWorker(std::uint64_t queue_bytes) {
  codec::ChunkStageOptions options;
  options.views_per_chunk = kViews;
  options.threads = 1;
  options.queue_bytes = queue_bytes;
  return options;
}

}  // namespace

TEST_CASE("codec memory: a codec 2 chunk is returned with the capacity it uses, whatever the chunk") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked");
    return;
  }
  std::mt19937_64 rng(1);
  for (std::uint64_t first = 0; first < 3 * kViews; first += kViews) {
    const auto samples = ChunkSamples(first, rng);
    const auto encoded = codec::EncodeChunk(Info(first), samples, ContextRans());
    REQUIRE(encoded);
    const auto header = codec::ParseChunkHeader(*encoded);
    REQUIRE(header);
    REQUIRE(header->codec == codec::Codec::kContextRans);
    CHECK(encoded->size() < kChunkBytes * 3 / 4);  // it compresses: the case the capacity matters for
    // Exactly sized: reserving the worst case left ~4 x the payload's capacity (7 MiB here).
    CHECK(encoded->capacity() == encoded->size());
  }
}

TEST_CASE("codec memory: a codec thread's scratch is twice a raw chunk, made once, and a chunk after it costs its payload") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked");
    return;
  }
  std::mt19937_64 rng(2);
  const auto first = ChunkSamples(0, rng);
  const auto second = ChunkSamples(kViews, rng);
  std::uint64_t first_bytes = 0;
  std::uint64_t second_bytes = 0;
  std::size_t first_size = 0;
  std::size_t second_size = 0;
  // A fresh thread: its thread_local scratch is made by its first chunk.
  std::thread worker([&] {
    counted_bytes = 0;
    counting = true;
    auto a = codec::EncodeChunk(Info(0), first, ContextRans());
    counting = false;
    first_bytes = counted_bytes;
    REQUIRE(a);
    first_size = a->size();
    counted_bytes = 0;
    counting = true;
    auto b = codec::EncodeChunk(Info(kViews), second, ContextRans());
    counting = false;
    second_bytes = counted_bytes;
    REQUIRE(b);
    second_size = b->size();
  });
  worker.join();
  INFO("first chunk allocated " << first_bytes << " bytes (payload " << first_size << "), second " << second_bytes
                                << " (payload " << second_size << "), raw chunk " << kChunkBytes);
  // Scratch: the symbols and one buffer shared by the raw bits and the rANS words, each the size
  // of the samples (plus a few KiB of tables); then the payload. The former four buffers (the
  // words alone at 4 bytes a sample) and the worst-case reserve allocated over 6 x the chunk.
  CHECK(first_bytes < 2 * kChunkBytes + first_size + (256u << 10));
  // Later chunks: the payload and small tables only, nothing that grows with the chunk count.
  CHECK(second_bytes < second_size + (256u << 10));
}

TEST_CASE("codec memory: waiting for room in the full queues, acquisition holds one chunk's samples, not two") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked");
    return;
  }
  // One worker and the overflow thread, each queue holding one chunk, and a store that waits for
  // the test: both threads stop in the store with a chunk each, both queues fill, and the
  // acquisition thread waits in Submit() with the fifth chunk.
  const codec::ChunkStageOptions options = OneWorker(kChunkBytes);
  std::mutex gate_mutex;
  std::condition_variable gate_cv;
  bool open = false;
  std::atomic<int> in_store{0};
  auto store = [&](const codec::RawChunk&, Expected<std::span<const std::uint8_t>>) {
    ++in_store;
    std::unique_lock lock(gate_mutex);
    gate_cv.wait(lock, [&] { return open; });
  };
  // The workers' encoder: small output, so that the only chunk-sized blocks are raw samples.
  auto encode = [](const codec::ChunkInfo&, std::span<const std::uint8_t>, const codec::EncodeOptions&,
                   std::vector<std::uint8_t>& out) -> Status {
    out.assign(16, 0);
    return Ok();
  };
  // The overflow thread's zstd -1 allocates its bound (more than the chunk), so it is not counted.
  {
    std::lock_guard lock(tracked_mutex);
    tracked_live = 0;
    tracked_peak = 0;
  }
  tracked_size = kChunkBytes;
  codec::ChunkStage stage(options, store, encode);
  FastDetector detector(8 * kViews);
  const TestScan scan = ScanOf(8);
  std::thread acquisition([&] { (void)stage.Acquire(detector, scan.protocol, scan.chunk_template); });
  // Bounded wait (the state is reached in well under a second; 2,000 x 10 ms is generous).
  bool reached = false;
  for (int i = 0; i < 2000 && !reached; ++i) {
    reached = in_store.load() == 2 && stage.counters().chunks == 5;
    if (!reached) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Let the acquisition thread get from counting the fifth chunk to its wait.
  for (int i = 0; i < 100 && stage.counters().stalls == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  int peak = 0;
  {
    std::lock_guard lock(tracked_mutex);
    peak = tracked_peak;
  }
  {
    std::lock_guard lock(gate_mutex);
    open = true;
  }
  gate_cv.notify_all();
  acquisition.join();
  stage.Drain();
  tracked_size = 0;
  REQUIRE(reached);
  const auto counters = stage.counters();
  CHECK(counters.chunks == 8);
  CHECK(counters.stalls >= 1);
  // 2 in the store (worker and overflow thread), 1 in each queue, 1 waiting in Submit(); the
  // next chunk's buffer is made only after that one is queued.
  CHECK(peak == 5);
}

TEST_CASE("codec memory: with a budget, a scan's raw chunk buffers are made before its first view, none while views arrive") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked");
    return;
  }
  // The defaults of the 16-slice example: 2 workers, 4 MiB queues, a 12 MiB budget, 1.75 MiB
  // chunks. The budget lets 6 raw chunks exist at once (the queues' counts would let 8).
  codec::ChunkStageOptions options;
  options.views_per_chunk = kViews;
  options.threads = 2;
  options.queue_bytes = 4u << 20;
  options.memory = ByteBudget::Make(12u << 20);
  std::atomic<int> stored{0};
  auto store = [&](const codec::RawChunk&, Expected<std::span<const std::uint8_t>>) { ++stored; };
  auto encode = [](const codec::ChunkInfo&, std::span<const std::uint8_t>, const codec::EncodeOptions&,
                   std::vector<std::uint8_t>& out) -> Status {
    out.assign(16, 0);
    return Ok();
  };


  {
    std::lock_guard lock(tracked_mutex);
    tracked_live = 0;
    tracked_peak = 0;
    tracked_made = 0;
  }
  tracked_size = kChunkBytes;
  constexpr std::uint32_t kChunks = 12;
  // How many chunk-sized blocks were made when the first view is asked for.
  int made_before_first_view = -1;
  FirstViewDetector detector(std::uint64_t{kChunks} * kViews, [&] {
    std::lock_guard lock(tracked_mutex);
    made_before_first_view = tracked_made;
  });
  const TestScan scan = ScanOf(kChunks);
  codec::ChunkStage stage(options, store, encode);
  const auto acquired = stage.Acquire(detector, scan.protocol, scan.chunk_template);
  stage.Drain();
  tracked_size = 0;
  int made = 0, peak = 0, live = 0;
  {
    std::lock_guard lock(tracked_mutex);
    made = tracked_made;
    peak = tracked_peak;
    live = tracked_live;
  }
  CHECK(acquired.chunks == kChunks);
  CHECK(stored.load() == static_cast<int>(kChunks));
  CHECK(made_before_first_view == 6);
  CHECK(made == 6);   // none made while the views arrived
  CHECK(peak == 6);
  CHECK(live == 0);   // freed when the stage drained, not when it is destroyed
}

TEST_CASE("codec memory: with a budget, the codec threads' output buffers are made before the first view and reused") {
  if (!CTAGENT_COUNTS_ALLOCATIONS) {
    WARN("built with AddressSanitizer: allocations are not counted, nothing checked");
    return;
  }
  // One worker (its output half a chunk) and the real overflow encoder (zstd -1, whose output
  // takes its bound, more than the chunk): the worker holds its first chunk until the overflow
  // thread has stored one, so chunks take both paths whatever the machine's load. Before this,
  // every chunk's output was a new buffer of ~1 to 1.75 MiB.
  codec::ChunkStageOptions options = OneWorker(2 * kChunkBytes);
  options.memory = ByteBudget::Make(12u << 20);
  std::atomic<int> stored{0};
  std::atomic<int> failed{0};
  std::mutex gate_mutex;
  std::condition_variable gate_cv;
  bool overflow_stored = false;
  static thread_local bool on_worker = false;  // set by the workers' encoder: the overflow thread never calls it
  auto store = [&](const codec::RawChunk&, Expected<std::span<const std::uint8_t>> bytes) {
    if (bytes && !bytes->empty()) {
      ++stored;
    } else {
      ++failed;
    }
    if (!on_worker) {
      std::lock_guard lock(gate_mutex);
      overflow_stored = true;
      gate_cv.notify_all();
    }
  };
  auto encode = [&](const codec::ChunkInfo&, std::span<const std::uint8_t> samples, const codec::EncodeOptions&,
                    std::vector<std::uint8_t>& out) -> Status {
    on_worker = true;
    {
      // Bounded: the overflow thread stores a chunk within a second on any machine.
      std::unique_lock lock(gate_mutex);
      gate_cv.wait_for(lock, std::chrono::seconds(20), [&] { return overflow_stored; });
    }
    out.resize(samples.size() / 2);
    return Ok();
  };
  constexpr std::uint32_t kChunks = 12;
  // Large blocks are counted from the first view on.
  FirstViewDetector detector(std::uint64_t{kChunks} * kViews, [] { counting_large = true; });
  const TestScan scan = ScanOf(kChunks);
  large_made = 0;
  codec::ChunkStageCounters counters;
  {
    codec::ChunkStage stage(options, store, encode);
    const auto acquired = stage.Acquire(detector, scan.protocol, scan.chunk_template);
    stage.Drain();
    counting_large = false;
    counters = stage.counters();
    CHECK(acquired.chunks == kChunks);
  }
  CHECK(stored.load() == static_cast<int>(kChunks));
  CHECK(failed.load() == 0);
  INFO("chunks on the overflow path: " << counters.overflow_chunks);
  REQUIRE(counters.overflow_chunks > 0);
  REQUIRE(counters.overflow_chunks < kChunks);
  CHECK(large_made.load() == 0);
}
