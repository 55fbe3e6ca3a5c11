// The uploader on the event loop (issue 13): a scan of many chunks, each in several PATCHes, with
// parallel_uploads 4, uploaded to the real tus server over HTTPS with no thread per upload. The
// process's threads (/proc/self/task) are counted before the uploader exists and throughout the
// upload: only its two one-thread workers (journal, reading) may be added, where the uploader on
// two pools of parallel_uploads threads each added eight. And a chunk file damaged on disk after
// it was stored: the check before its upload stops it (chunks are sent from their files).
#include <catch2/catch.hpp>

#include <boost/asio/steady_timer.hpp>

#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "agent/core/uploader.hpp"
#include "tests/support/process.hpp"
#include "tests/transport/shared_pki.hpp"
#include "tests/transport/tus_scan_fixture.hpp"

namespace {

using namespace ctagent;  // NOLINT(google-build-using-namespace): test file

// Threads of this process now.
int ThreadCount() {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count;
}

}  // namespace

TEST_CASE("uploader on the loop: 12 chunks in 3 PATCHes each with parallel_uploads 4 arrive bit-exact, and the "
          "upload adds only the uploader's two workers to the process's threads",
          "[transport][upload][integration]") {
  test::TusScan scan(12, 250000);
  const auto pki = test::SharedTransportPki();
  const auto store = scan.dir.path() / "store";
  auto server = test::StartTusServer(pki, store, scan.dir.path() / "tus-server.log");
  config::CloudConfig cloud = test::TusScan::LoopbackCloud(server.endpoint, pki);
  cloud.patch_bytes = 100000;  // 3 PATCHes per chunk

  const int before = ThreadCount();
  REQUIRE(before > 0);
  int most = before;
  std::uint32_t done_uploads = 0;
  {
    core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
    // Sampled on the loop every 2 ms while the scan uploads.
    boost::asio::steady_timer sampler(scan.io);
    bool sampling = true;
    std::function<void(const boost::system::error_code&)> sample = [&](const boost::system::error_code& ec) {
      if (ec || !sampling) return;
      most = std::max(most, ThreadCount());
      sampler.expires_after(std::chrono::milliseconds(2));
      sampler.async_wait(sample);
    };
    sampler.expires_after(std::chrono::milliseconds(1));
    sampler.async_wait(sample);
    const auto result = scan.Upload(uploader);
    sampling = false;
    sampler.cancel();
    REQUIRE(result);
    INFO((*result ? std::string("uploaded") : result->error().message()));
    REQUIRE(*result);
    done_uploads = uploader.counters().uploads_done;
    CHECK(uploader.counters().bytes_sent > 12u * 250000u);
    CHECK(uploader.counters().retries == 0);
  }
  CHECK(done_uploads == 13);  // 12 chunks and the manifest
  for (const auto& sent : scan.SentUploads()) {
    const auto id = sent.url.substr(sent.url.rfind('/') + 1);
    CHECK(test::ReadText(store / id) == sent.bytes);
  }
  INFO("threads before: " << before << ", most during the upload: " << most);
  // The journal worker and the reading worker; no thread per upload or per connection.
  CHECK(most - before <= 2);
  CHECK(most > before);  // the sampler saw the workers: it really counted during the upload
}

TEST_CASE("uploader: a chunk file changed on disk after it was stored is recorded damaged and none of its bytes "
          "is sent, while the scan's other chunks arrive bit-exact",
          "[transport][upload][integration]") {
  test::TusScan scan(4, 250000);
  const auto pki = test::SharedTransportPki();
  const auto store = scan.dir.path() / "store";
  auto server = test::StartTusServer(pki, store, scan.dir.path() / "tus-server.log");
  const config::CloudConfig cloud = test::TusScan::LoopbackCloud(server.endpoint, pki);

  // One bit of chunk 2 flipped on disk (the spool's check before the upload must catch it: the
  // uploader sends from the file, so a missed check would send the damaged bytes).
  auto file = scan.spool->CheckChunkFile(scan.scan_uid, 2);
  REQUIRE(file);
  std::string damaged = test::ReadText(file->path);
  REQUIRE(damaged.size() == scan.chunks.at(2).size());
  damaged[damaged.size() / 2] = static_cast<char>(damaged[damaged.size() / 2] ^ 0x01);
  {
    std::ofstream out(file->path, std::ios::binary | std::ios::trunc);
    out << damaged;
    REQUIRE(out.good());
  }

  std::vector<Status> results(4, Ok());
  {
    core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
    std::size_t left = 4;
    for (std::uint32_t i = 0; i < 4; ++i) {
      uploader.UploadChunk(scan.scan_uid, i, [&, i](Status st) {
        results[i] = st;
        --left;
      });
    }
    scan.RunUntil([&] { return left == 0; });
    REQUIRE(left == 0);
  }
  for (std::uint32_t i = 0; i < 4; ++i) {
    INFO("chunk " << i);
    if (i == 2) {
      REQUIRE_FALSE(results[i]);
      CHECK(results[i].error().kind() == ErrorKind::kCorrupt);
      CHECK_THAT(results[i].error().message(), Catch::Contains("it will not be uploaded"));
    } else {
      CHECK(results[i]);
    }
  }
  auto chunk2 = scan.spool->GetChunk(scan.scan_uid, 2);
  REQUIRE(chunk2);
  CHECK(chunk2->damaged);
  CHECK_FALSE(chunk2->upload.complete);
  // What the server stored: the three good chunks, bit-exact, and nothing of chunk 2 (not its
  // damaged bytes, nor any part of them).
  auto record = scan.spool->Get(scan.scan_uid);
  REQUIRE(record);
  int good = 0;
  for (const auto& c : record->chunks) {
    if (c.chunk.index == 2 || !c.upload.complete) continue;
    const auto id = c.upload.url.substr(c.upload.url.rfind('/') + 1);
    const auto& bytes = scan.chunks.at(c.chunk.index);
    CHECK(test::ReadText(store / id) == std::string(bytes.begin(), bytes.end()));
    ++good;
  }
  CHECK(good == 3);
  // Any PATCH of chunk 2 would start at offset 0: no stored upload begins with its first bytes.
  const std::string chunk2_start(scan.chunks.at(2).begin(), scan.chunks.at(2).begin() + 4096);
  int stored_files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(store)) {
    if (!entry.is_regular_file() || entry.path().extension() == ".json") continue;
    ++stored_files;
    INFO(entry.path());
    CHECK(test::ReadText(entry.path()).rfind(chunk2_start, 0) == std::string::npos);
  }
  CHECK(stored_files >= 3);
}
