// The acquisition -> codec -> store stage (agent/codec/chunk_stage.hpp, run by the agent's
// pipeline): with a codec far slower than the view rate, the driver is still read on time,
// memory stays within the configured bound, and every view comes back bit-exact, in order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include "agent/codec/chunk_stage.hpp"
#include "drivers/detector.hpp"

using namespace ctagent;
using Clock = std::chrono::steady_clock;

namespace {

// Serves pre-computed sim views on a fixed real-time schedule (view i is due at start + i /
// rate), as a detector's readout does, and counts reads that came later than due + slack: a
// real detector's buffer would have overflowed there. The sim views are computed up front so
// the sim's own CPU time does not count against the schedule.
class PacedDetector final : public drivers::Detector {
 public:
  PacedDetector(std::vector<drivers::View> views, double rate_hz, std::chrono::milliseconds slack)
      : views_(std::move(views)), period_(std::chrono::duration<double>(1.0 / rate_hz)), slack_(slack) {}

  drivers::DetectorInfo Info() const override { return {"paced", "test", 64, 4096, 1e5, {drivers::SampleType::kUint16}}; }
  Status Arm(const drivers::ScanProtocol&) override { return Ok(); }
  Expected<std::optional<drivers::View>> NextView() override {
    if (next_ == views_.size()) return std::optional<drivers::View>{};
    if (next_ == 0) start_ = Clock::now();
    const auto due = start_ + std::chrono::duration_cast<Clock::duration>(period_ * static_cast<double>(next_));
    const auto now = Clock::now();
    if (now > due + slack_) {
      ++overruns_;
      worst_late_ = std::max(worst_late_, std::chrono::duration_cast<std::chrono::milliseconds>(now - due));
    }
    if (now < due) std::this_thread::sleep_until(due);
    return std::optional<drivers::View>(views_[next_++]);
  }
  void Abort() override {}

  int overruns() const { return overruns_; }
  std::chrono::milliseconds worst_late() const { return worst_late_; }

 private:
  std::vector<drivers::View> views_;
  std::chrono::duration<double> period_;
  std::chrono::milliseconds slack_;
  std::size_t next_ = 0;
  Clock::time_point start_;
  int overruns_ = 0;
  std::chrono::milliseconds worst_late_{0};
};

drivers::ScanProtocol Protocol(std::uint32_t views) {
  drivers::ScanProtocol p;
  p.views_per_rotation = views;
  p.rows = 8;
  p.channels = 256;
  p.dose_fraction = 0.5;
  return p;
}

std::vector<drivers::View> SimViews(const drivers::ScanProtocol& p) {
  auto sim = drivers::MakeDetector("sim", nullptr);
  REQUIRE(sim);
  REQUIRE((*sim)->Arm(p));
  std::vector<drivers::View> views;
  for (std::uint64_t i = 0; i < p.TotalViews(); ++i) {
    auto v = (*sim)->NextView();
    REQUIRE(v);
    REQUIRE(v->has_value());
    views.push_back(std::move(**v));
  }
  return views;
}

codec::ChunkInfo Template(const drivers::ScanProtocol& p) {
  return codec::ScanChunkInfo("2.25.777", p);
}

// What the store function kept: every encoded chunk by index.
struct Stored {
  std::mutex mutex;
  std::map<std::uint32_t, std::vector<std::uint8_t>> chunks;
  int failures = 0;
};

}  // namespace

TEST_CASE("core: a codec slower than the view rate never makes the driver wait, memory stays bounded", "[core]") {
  constexpr std::uint32_t kViews = 480;
  constexpr double kRateHz = 1200;  // 0.4 s of scan, 2.4 MB/s raw
  const auto protocol = Protocol(kViews);
  const auto views = SimViews(protocol);
  PacedDetector detector(views, kRateHz, std::chrono::milliseconds(150));

  codec::ChunkStageOptions options;
  options.views_per_chunk = 16;  // 30 chunks of 64 KiB
  options.threads = 1;
  options.queue_bytes = 4 * 16 * protocol.BytesPerView();  // four chunks
  // The pool's codec takes 100 ms per chunk: 10 chunks/s against 75 chunks/s of views. With the
  // former design (the acquisition thread waiting for a codec slot) reads were seconds late.
  auto slow_encode = [](const codec::ChunkInfo& info, std::span<const std::uint8_t> samples,
                        const codec::EncodeOptions& encode, std::vector<std::uint8_t>& out) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return codec::EncodeChunkInto(info, samples, encode, out);
  };
  Stored stored;
  auto store = [&stored](const codec::RawChunk& raw, Expected<std::span<const std::uint8_t>> bytes) {
    std::lock_guard lock(stored.mutex);
    if (!bytes) {
      ++stored.failures;
      return;
    }
    stored.chunks[raw.info.chunk_index].assign(bytes->begin(), bytes->end());
  };
  codec::ChunkStageCounters counters;
  codec::ChunkStage::AcquireResult acquired;
  {
    codec::ChunkStage stage(options, store, slow_encode);
    acquired = stage.Acquire(detector, protocol, Template(protocol));
    stage.Drain();
    counters = stage.counters();
  }
  INFO("worst late read " << detector.worst_late().count() << " ms; overflow chunks " << counters.overflow_chunks
                          << "; stalls " << counters.stalls);
  CHECK(detector.overruns() == 0);
  CHECK(counters.stalls == 0);
  CHECK(acquired.incomplete_reason.empty());
  CHECK(acquired.views == kViews);
  CHECK(acquired.chunks == kViews / 16);
  // The slow codec really was behind: some chunks took the overflow path.
  CHECK(counters.overflow_chunks > 0);
  CHECK(counters.queue_high_water_bytes <= options.queue_bytes);
  CHECK(counters.overflow_high_water_bytes <= options.queue_bytes);

  // Every chunk stored once; decoded in index order they give back every view, in order, bit-exact.
  REQUIRE(stored.failures == 0);
  REQUIRE(stored.chunks.size() == acquired.chunks);
  std::uint64_t next_view = 0;
  std::uint32_t expected_index = 0;
  int overflow_encoded = 0;
  for (const auto& [index, bytes] : stored.chunks) {
    REQUIRE(index == expected_index++);
    auto decoded = codec::DecodeChunk(bytes);
    REQUIRE(decoded);
    if (decoded->info.filter == codec::Filter::kNone) ++overflow_encoded;
    for (std::size_t v = 0; v < decoded->info.views.size(); ++v) {
      REQUIRE(decoded->info.views[v].sequence == next_view);
      const auto& original = views[next_view].samples;
      const auto offset = static_cast<std::ptrdiff_t>(v * protocol.BytesPerView());
      REQUIRE(std::equal(original.begin(), original.end(), decoded->samples.begin() + offset));
      ++next_view;
    }
  }
  CHECK(next_view == kViews);
  CHECK(overflow_encoded == static_cast<int>(counters.overflow_chunks));
}

TEST_CASE("core: the paced test detector does count late reads (control)", "[core]") {
  // Without this, a detector that never reports an overrun would make the test above pass.
  const auto protocol = Protocol(40);
  PacedDetector detector(SimViews(protocol), 1000, std::chrono::milliseconds(20));
  for (int i = 0; i < 40; ++i) {
    auto v = detector.NextView();
    REQUIRE(v);
    if (i == 10) std::this_thread::sleep_for(std::chrono::milliseconds(60));  // a stalled reader
  }
  CHECK(detector.overruns() > 0);
}

TEST_CASE("core: with a fast codec nothing overflows and everything is encoded with the configured filter", "[core]") {
  const auto protocol = Protocol(96);
  const auto views = SimViews(protocol);
  PacedDetector detector(views, 2000, std::chrono::milliseconds(150));
  codec::ChunkStageOptions options;
  options.views_per_chunk = 32;
  options.queue_bytes = 64ull << 20;
  Stored stored;
  {
    codec::ChunkStage stage(options, [&stored](const codec::RawChunk& raw, Expected<std::span<const std::uint8_t>> bytes) {
      std::lock_guard lock(stored.mutex);
      if (bytes) stored.chunks[raw.info.chunk_index].assign(bytes->begin(), bytes->end());
    });
    const auto acquired = stage.Acquire(detector, protocol, Template(protocol));
    stage.Drain();
    CHECK(acquired.chunks == 3);
    CHECK(stage.counters().overflow_chunks == 0);
  }
  REQUIRE(stored.chunks.size() == 3);
  for (const auto& [index, bytes] : stored.chunks) {
    auto decoded = codec::DecodeChunk(bytes);
    REQUIRE(decoded);
    CHECK(decoded->info.filter == codec::Filter::kPredict);
    CHECK(decoded->info.chunk_index == index);
  }
}

TEST_CASE("core: with a memory budget, the raw chunks held never exceed it and every view still arrives bit-exact",
          "[core]") {
  // An unpaced detector (as the sim is) and a slow codec: without the budget the queues and the
  // overflow path would fill; with it, acquisition waits for room and counts the waits as stalls.
  constexpr std::uint32_t kViews = 320;
  const auto protocol = Protocol(kViews);
  const auto views = SimViews(protocol);
  PacedDetector detector(views, 1e6, std::chrono::milliseconds(1000));
  codec::ChunkStageOptions options;
  options.views_per_chunk = 16;  // 20 chunks of 64 KiB
  options.threads = 1;
  options.queue_bytes = 8 * 16 * protocol.BytesPerView();  // room for 8 chunks in each queue
  const std::uint64_t chunk_bytes = 16 * protocol.BytesPerView();
  options.memory = ByteBudget::Make(3 * chunk_bytes);
  auto slow_encode = [](const codec::ChunkInfo& info, std::span<const std::uint8_t> samples,
                        const codec::EncodeOptions& encode, std::vector<std::uint8_t>& out) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return codec::EncodeChunkInto(info, samples, encode, out);
  };
  Stored stored;
  std::uint64_t most_held = 0;
  auto store = [&](const codec::RawChunk& raw, Expected<std::span<const std::uint8_t>> bytes) {
    std::lock_guard lock(stored.mutex);
    most_held = std::max(most_held, options.memory->in_use());
    CHECK(raw.memory.bytes() == chunk_bytes);
    if (bytes) stored.chunks[raw.info.chunk_index].assign(bytes->begin(), bytes->end());
  };
  codec::ChunkStageCounters counters;
  {
    codec::ChunkStage stage(options, store, slow_encode);
    const auto acquired = stage.Acquire(detector, protocol, Template(protocol));
    stage.Drain();
    counters = stage.counters();
    CHECK(acquired.views == kViews);
  }
  CHECK(counters.stalls > 0);
  CHECK(most_held <= 3 * chunk_bytes);
  CHECK(options.memory->high_water() <= 3 * chunk_bytes);
  CHECK(options.memory->in_use() == 0);  // every chunk's share handed back
  REQUIRE(stored.chunks.size() == kViews / 16);
  std::uint64_t next_view = 0;
  for (const auto& [index, bytes] : stored.chunks) {
    auto decoded = codec::DecodeChunk(bytes);
    REQUIRE(decoded);
    for (std::size_t v = 0; v < decoded->info.views.size(); ++v) {
      const auto& original = views[next_view].samples;
      const auto offset = static_cast<std::ptrdiff_t>(v * protocol.BytesPerView());
      REQUIRE(std::equal(original.begin(), original.end(), decoded->samples.begin() + offset));
      ++next_view;
    }
  }
  CHECK(next_view == kViews);
}
