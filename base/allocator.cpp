#include "base/allocator.hpp"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ctagent {

void KeepLargeBuffersInHeap() {
#if defined(__GLIBC__)
  // Setting either threshold disables glibc's dynamic adjustment of both, so both are set.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  mallopt(M_ARENA_MAX, kMallocArenas);
#endif
}

}  // namespace ctagent
