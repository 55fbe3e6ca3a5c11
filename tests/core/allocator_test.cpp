// ReleaseFreeHeapPages hands freed megabyte buffers inside the heap back to the kernel: with
// KeepLargeBuffersInHeap they come from the heap, and a buffer freed below a live one is a hole
// glibc keeps resident (what made the agent's RSS grow with a scan's length; docs/configuration.md,
// "Memory"). Reads RssAnon from /proc/self/status. Not under AddressSanitizer, whose allocator
// is not glibc's: there the test says so and checks nothing (the release suite runs it).
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "base/allocator.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define CTAGENT_GLIBC_HEAP 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CTAGENT_GLIBC_HEAP 0
#endif
#endif
#ifndef CTAGENT_GLIBC_HEAP
#if defined(__GLIBC__)
#define CTAGENT_GLIBC_HEAP 1
#else
#define CTAGENT_GLIBC_HEAP 0
#endif
#endif

#if CTAGENT_GLIBC_HEAP
namespace {

std::uint64_t RssAnonKiB() {
  std::ifstream status("/proc/self/status");
  std::string key;
  std::uint64_t value = 0;
  while (status >> key) {
    if (key == "RssAnon:") {
      status >> value;
      return value;
    }
    status.ignore(1 << 12, '\n');
  }
  FAIL("no RssAnon in /proc/self/status");
  return 0;
}

}  // namespace
#endif

TEST_CASE("ReleaseFreeHeapPages returns freed buffers inside the heap, at most once per interval") {
#if !CTAGENT_GLIBC_HEAP
  WARN("not glibc's allocator (sanitizer build): nothing to check");
#else
  ctagent::KeepLargeBuffersInHeap();
  constexpr std::size_t kBuffer = 1 << 20;
  constexpr int kBuffers = 48;
  // Chunk-sized buffers, written so their pages are resident.
  std::vector<std::unique_ptr<std::uint8_t[]>> buffers;
  for (int i = 0; i < kBuffers; ++i) {
    buffers.emplace_back(new std::uint8_t[kBuffer]);
    for (std::size_t b = 0; b < kBuffer; b += 4096) buffers.back()[b] = static_cast<std::uint8_t>(b + 1);
  }
  // Every other one freed: holes below live buffers, which freeing alone does not return.
  for (int i = 0; i < kBuffers; i += 2) buffers[i].reset();
  const std::uint64_t holes = RssAnonKiB();

  // A call within the interval of an earlier one does nothing.
  ctagent::ReleaseFreeHeapPages(std::chrono::milliseconds(0));  // runs, and starts the interval
  for (int i = 0; i < kBuffers; i += 2) {
    buffers[i].reset(new std::uint8_t[kBuffer]);
    for (std::size_t b = 0; b < kBuffer; b += 4096) buffers[i][b] = 1;
  }
  for (int i = 0; i < kBuffers; i += 2) buffers[i].reset();
  const std::uint64_t before = RssAnonKiB();
  ctagent::ReleaseFreeHeapPages(std::chrono::hours(1));
  const std::uint64_t throttled = RssAnonKiB();
  INFO("RssAnon KiB: with holes " << holes << ", refilled and freed " << before << ", after a throttled call "
                                  << throttled);
  CHECK(throttled + 4096 > before);  // less than 4 MiB of the 24 MiB freed went back

  ctagent::ReleaseFreeHeapPages(std::chrono::milliseconds(0));
  const std::uint64_t after = RssAnonKiB();
  INFO("after a release " << after);
  // 24 buffers of 1 MiB were holes; at least 16 MiB of them must be gone from the resident size.
  CHECK(after + 16 * 1024 < throttled);
#endif
}
