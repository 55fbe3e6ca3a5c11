// Process-wide allocator settings for the agent's buffer pattern.
#pragma once

#include <chrono>

namespace ctagent {

// The agent allocates and frees megabyte buffers all the time (raw chunks, compression output,
// a chunk read back and checked for each upload). glibc serves each from a fresh mmap() and
// returns it on free, so every byte of every buffer costs a page fault again; on the VM we
// measured, that was ~4 % of upload throughput at 1 Gbit/s (docs/links.md). Call once at start,
// before any thread: blocks up to 32 MiB then come from the heap, and up to kTrimThresholdBytes
// of freed top of a heap is kept for reuse rather than returned at once.
//
// Kept in the heap, those buffers must not be spread over many heaps: glibc gives threads their
// own arenas (up to 8 per CPU), a buffer freed by another thread goes back to the arena that
// made it, and each arena keeps its own free space and holes. With the agent's ~25 threads
// that made the resident size creep with the length of a scan (docs/configuration.md,
// "Memory": 55 MiB after 64 MiB of raw data, ~100 MiB after 4 GiB). Two arenas still let each
// grow to its own high-water mark (a chunk buffer made by one thread in one, its compressed
// form and its read-back in the other): at the peaks of 4 and 8 GiB bench scans the heap held
// 10 to 18 MiB free with two, 2 to 13 MiB with one. So there is one (kMallocArenas);
// allocation is not the agent's bottleneck (a few thousand buffers a second).
// No effect outside glibc.
inline constexpr int kMallocArenas = 1;
inline constexpr int kTrimThresholdBytes = 4 << 20;
void KeepLargeBuffersInHeap();

// Freed buffers inside a heap (not at its top) stay resident: glibc returns only the top of an
// arena on free. Over a long scan those holes added up (docs/configuration.md, "Memory"), so the
// places that free chunk buffers call this after each chunk: at most once per `interval`
// across the process it runs malloc_trim(0), which hands every free page of every arena back
// (madvise, no copying). The interval bounds the page faults paid again for reused buffers.
// Thread-safe and cheap when it does nothing (one atomic load). No effect outside glibc.
inline constexpr std::chrono::milliseconds kHeapReleaseInterval{500};
void ReleaseFreeHeapPages(std::chrono::milliseconds interval = kHeapReleaseInterval);

}  // namespace ctagent
