// The uploader on the event loop (issue 13): a scan of many chunks, each in several PATCHes, with
// parallel_uploads 4, uploaded to the real tus server over HTTPS with no thread per upload. The
// process's threads (/proc/self/task) are counted before the uploader exists and throughout the
// upload: only its two one-thread workers (journal, reading) may be added, where the uploader on
// two pools of parallel_uploads threads each added eight. And with the agent's memory budget:
// transfers wait for it without sending, and each read-back takes from it and hands it back.
#include <catch2/catch.hpp>

#include <boost/asio/steady_timer.hpp>

#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
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

// The uploads' settings for the tus server on loopback: 4 uploads at once, short timeouts.
config::CloudConfig LoopbackCloud(const std::string& endpoint, const std::filesystem::path& pki) {
  config::CloudConfig cloud;
  cloud.upload_url = endpoint;
  cloud.tls.ca_file = pki / "ca.pem";
  cloud.parallel_uploads = 4;
  cloud.connect_timeout_s = 5;
  cloud.stall_timeout_s = 10;
  return cloud;
}

}  // namespace

TEST_CASE("uploader on the loop: 12 chunks in 3 PATCHes each with parallel_uploads 4 arrive bit-exact, and the "
          "upload adds only the uploader's two workers to the process's threads",
          "[transport][upload][integration]") {
  test::TusScan scan(12, 250000);
  const auto pki = test::SharedTransportPki();
  const auto store = scan.dir.path() / "store";
  auto server = test::StartTusServer(pki, store, scan.dir.path() / "tus-server.log");
  config::CloudConfig cloud = LoopbackCloud(server.endpoint, pki);
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

TEST_CASE("uploader with a memory budget: transfers send nothing while the budget is spent, then all arrive "
          "bit-exact, each read-back taking from the budget and handing it back",
          "[transport][upload][integration]") {
  test::TusScan scan(8, 250000);
  const auto pki = test::SharedTransportPki();
  const auto store = scan.dir.path() / "store";
  auto server = test::StartTusServer(pki, store, scan.dir.path() / "tus-server.log");
  const config::CloudConfig cloud = LoopbackCloud(server.endpoint, pki);

  // Room for two chunks' read-backs; at first all of it is held, as acquisition would hold it.
  const std::uint64_t chunk_bytes = scan.chunks.at(0).size();
  const std::uint64_t capacity = 2 * chunk_bytes + chunk_bytes / 2;
  auto budget = ByteBudget::Make(capacity);
  auto held = budget->Take(capacity);
  // Every hand-back while no Take() waits tells the watchers: the test's counts them.
  std::atomic<int> hand_backs{0};
  auto watch = budget->OnRoom([&] { ++hand_backs; });
  std::uint64_t body_bytes_while_held = 0;
  {
    core::Uploader uploader(scan.io, *scan.spool, cloud, test::TusScan::FastRetries());
    uploader.SetMemoryBudget(budget);
    // After 300 ms of the upload (discovery and creations done, transfers waiting for the
    // budget) it is handed back.
    boost::asio::steady_timer release(scan.io);
    release.expires_after(std::chrono::milliseconds(300));
    release.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      body_bytes_while_held = uploader.counters().body_bytes_sent;
      held.reset();
    });
    const auto result = scan.Upload(uploader);
    REQUIRE(result);
    INFO((*result ? std::string("uploaded") : result->error().message()));
    REQUIRE(*result);
    CHECK(uploader.counters().uploads_done == 9);  // 8 chunks and the manifest
  }
  CHECK_FALSE(held);                  // the release ran: nothing could finish before it
  CHECK(body_bytes_while_held == 0);  // no chunk was read back or sent while the budget was spent
  CHECK(hand_backs.load() >= 1 + 8);  // the test's hold, then each chunk's read-back
  CHECK(budget->high_water() <= capacity);  // never more than two chunks' read-backs at once
  CHECK(budget->in_use() == 0);             // every share handed back
  for (const auto& sent : scan.SentUploads()) {
    const auto id = sent.url.substr(sent.url.rfind('/') + 1);
    CHECK(test::ReadText(store / id) == sent.bytes);
  }
}
