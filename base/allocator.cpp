#include "base/allocator.hpp"

#include <atomic>
#include <cstdint>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ctagent {

void KeepLargeBuffersInHeap() {
#if defined(__GLIBC__)
  // Setting either threshold disables glibc's dynamic adjustment of both, so both are set.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, kTrimThresholdBytes);
  mallopt(M_ARENA_MAX, kMallocArenas);
#endif
}

void ReleaseFreeHeapPages(std::chrono::milliseconds interval) {
#if defined(__GLIBC__)
  static std::atomic<std::int64_t> last_release_ns{0};
  const std::int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  std::int64_t last = last_release_ns.load(std::memory_order_relaxed);
  const std::int64_t interval_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(interval).count();
  if (last != 0 && now - last < interval_ns) return;
  // One caller per interval wins; the others return at once.
  if (!last_release_ns.compare_exchange_strong(last, now, std::memory_order_relaxed)) return;
  malloc_trim(0);
#else
  (void)interval;
#endif
}

}  // namespace ctagent
