// What an upload in flight holds of its chunk (issue 13, docs/configuration.md "Memory"): the
// uploader checks each chunk file in pieces and sends it from the file, so no allocation during
// an upload is anywhere near a chunk's size, however many uploads are in flight. Counted by
// replacing operator new for this test binary (its own, as the replacement is process-wide):
// before, each transfer read its whole chunk into a vector, held until its attempt ended.
// Not under AddressSanitizer, whose own operator new would meet this one's delete: there the
// test says so and checks only the bytes (the release suite runs the count).
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <string>

#include "agent/core/uploader.hpp"
#include "tests/support/counts_allocations.hpp"
#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "tests/transport/tus_scan_fixture.hpp"

namespace {

// The largest single operator new while `counting` is set, on any thread (the uploader's
// workers allocate too).
std::atomic<bool> counting{false};
std::atomic<std::size_t> largest{0};

}  // namespace

#if CTAGENT_COUNTS_ALLOCATIONS
// The replacements pair malloc with free, as the standard allows; GCC 12 -O2 inlines them into
// callers and then reports free() of a pointer "returned from operator new" (a false
// -Wmismatched-new-delete that only the release build sees).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (counting.load(std::memory_order_relaxed)) {
    std::size_t seen = largest.load(std::memory_order_relaxed);
    while (size > seen && !largest.compare_exchange_weak(seen, size, std::memory_order_relaxed)) {
    }
  }
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

using namespace ctagent;  // NOLINT(google-build-using-namespace): test file

TEST_CASE("uploader: 6 chunks of 3 MiB, 4 in flight, arrive bit-exact while no allocation of the upload reaches "
          "a quarter of a chunk",
          "[transport][upload][integration]") {
  constexpr std::size_t kChunkBytes = 3u << 20;
  test::TusScan scan(6, kChunkBytes);
  const auto pki = test::SharedTransportPki();
  const auto store = scan.dir.path() / "store";
  auto server = test::StartTusServer(pki, store, scan.dir.path() / "tus-server.log");
  const config::CloudConfig cloud = test::TusScan::LoopbackCloud(server.endpoint, pki);

  std::optional<Status> result;
  {
    core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
    counting = true;
    result = scan.Upload(uploader);
    counting = false;
    REQUIRE(result);
    INFO((*result ? std::string("uploaded") : result->error().message()));
    REQUIRE(*result);
    CHECK(uploader.counters().uploads_done == 7);  // 6 chunks and the manifest
  }
  for (const auto& sent : scan.SentUploads()) {
    const auto id = sent.url.substr(sent.url.rfind('/') + 1);
    CHECK(test::ReadText(store / id) == sent.bytes);
  }
#if CTAGENT_COUNTS_ALLOCATIONS
  // The check reads 256 KiB at a time; libcurl's buffers are its own (malloc), the manifest is
  // small. A read-back of the chunk would be 3 MiB.
  INFO("largest allocation during the upload: " << largest.load() << " bytes");
  CHECK(largest.load() > 0);  // the count ran
  CHECK(largest.load() < kChunkBytes / 4);
#else
  WARN("operator new is not counted under AddressSanitizer: only the bytes were checked");
#endif
}
