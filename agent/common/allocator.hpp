// Process-wide allocator settings for the agent's buffer pattern.
#pragma once

namespace ctagent {

// The agent allocates and frees megabyte buffers all the time (a chunk read back and checked
// for each upload, compression blocks). glibc serves each from a fresh mmap() and returns it on
// free, so every byte of every buffer costs a page fault again; on the VM we measured, that
// was ~4 % of upload throughput at 1 Gbit/s (docs/links.md). Call once at start, before any
// thread: blocks up to 32 MiB then come from the heap, and up to 64 MiB of freed heap is kept
// for reuse rather than returned at once. Peak memory is unchanged: the agent's buffers are
// bounded by its configuration either way. No effect outside glibc.
void KeepLargeBuffersInHeap();

}  // namespace ctagent
