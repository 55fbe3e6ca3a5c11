// The agent's real ingest path (sim driver -> chunk stage -> batched durable spool -> uploader
// -> the real tus server over HTTPS): every chunk file is written unsynced, synced in batches
// (files, then their directory, then one journal record), and only then read for upload; the
// bytes in the tus store are the bytes the spool recorded; a slow scan's chunks are synced by
// time, so uploads start while the scan is still running; resuming a backlog uploads every
// pending scan before it waits for any scan's results, and then waits for all of them at once.
#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "base/log.hpp"
#include "base/sha256.hpp"
#include "agent/core/agent.hpp"
#include "config/config.hpp"
#include "agent/spool/spool.hpp"
#include "tests/spool/recording_store.hpp"
#include "tests/transport/fake_tus_server.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
namespace fs = std::filesystem;

namespace {

nlohmann::json ScanConfig(const fs::path& spool_dir, const std::string& upload_url, const fs::path& ca_file,
                          std::uint32_t views, bool real_time, const std::string& batch, std::uint32_t interval_ms) {
  // Parallel beam, 4 x 128 uint16 samples a view, 16 views (16 KiB raw) a chunk.
  return {
      {"terminal_id", "pipeline-test"},
      {"log_level", "warn"},
      {"driver", {{"name", "sim"}, {"options", nlohmann::json::object()}}},
      {"scan",
       {{"geometry", "parallel"}, {"views_per_rotation", views}, {"rotations", 1}, {"rows", 4}, {"channels", 128},
        {"channel_pitch_mm", 3.2}, {"row_pitch_mm", 5.0}, {"rotation_time_s", 2.0}, {"dose_fraction", 1.0},
        {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"unattenuated_counts", 60000},
        {"sample_type", "uint16"}, {"seed", 5}, {"real_time", real_time}}},
      {"codec", {{"zstd_level", 3}, {"filter", "predict"}, {"views_per_chunk", 16}, {"threads", 2}}},
      {"spool",
       {{"directory", spool_dir.string()},
        {"max_bytes", "1 GiB"},
        {"min_free_bytes", 0},
        {"sync_batch_bytes", batch},
        {"sync_interval_ms", interval_ms}}},
      {"cloud",
       {{"upload_url", upload_url},
        {"tls", {{"ca_file", ca_file.string()}}},
        {"parallel_uploads", 2},
        {"patch_bytes", 65536},
        {"connect_timeout_s", 5},
        {"stall_timeout_s", 10}}},
      {"results", {{"enabled", false}}},
      {"console", {{"enabled", false}}}};
}

std::set<std::string> StoredHashes(const fs::path& store) {
  std::set<std::string> hashes;
  for (const auto& e : fs::directory_iterator(store)) {
    if (!e.is_regular_file() || e.path().extension() == ".json") continue;
    std::ifstream in(e.path(), std::ios::binary);
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    hashes.insert(Sha256Hex(bytes));
  }
  return hashes;
}

struct Cloud {
  test::TempDir dir{"pipeline"};
  test::TusServer tus;
  Cloud() {
    test::MakeTestPki(dir.path() / "pki");
    fs::create_directories(dir.path() / "store");
    tus = test::StartTusServer(dir.path() / "pki", dir.path() / "store", dir.path() / "tus.log");
  }
};

}  // namespace

TEST_CASE("pipeline: chunks are synced in batches before they are journaled, and uploaded only after that",
          "[core][pipeline]") {
  log::SetLevel(log::Level::kWarn);
  Cloud cloud;
  const auto text = ScanConfig(cloud.dir.path() / "spool", cloud.tus.endpoint, cloud.dir.path() / "pki" / "ca.pem",
                               480, false, "64 KiB", 60000)
                        .dump();
  auto config = config::ParseConfig(text, "pipeline_test.json");
  REQUIRE(config);
  PosixFileStore posix;
  test::RecordingStore files(posix);
  core::Agent agent(*config, files);
  REQUIRE(agent.Open());
  core::Progress progress;
  auto summary = agent.RunScan(&progress);
  REQUIRE(summary);
  INFO(summary->problem);
  CHECK(summary->problem.empty());
  CHECK(summary->state == "uploaded");
  CHECK(summary->views == 480);
  REQUIRE(summary->chunks == 30);  // 480 views / 16
  CHECK(progress.chunks_stored == 30);
  CHECK(progress.chunks_uploaded == 30);

  // Order of the durable operations, for every chunk file.
  std::size_t syncs = 0, chunk_files = 0;
  const std::string order = test::CheckBatchedOrder(files.events(), &syncs, &chunk_files);
  INFO(order);
  CHECK(order.empty());
  CHECK(chunk_files == 30);
  // Batched, not per chunk: ~30 x 12 KiB compressed in 64 KiB batches (plus the scan-end flush).
  CHECK(syncs >= 2);
  CHECK(syncs <= 12);

  // What arrived is what the spool recorded, chunk for chunk, and the manifest.
  auto record = agent.spool().Get(summary->scan_uid);
  REQUIRE(record);
  REQUIRE(record->chunks.size() == 30);
  const std::set<std::string> stored = StoredHashes(cloud.dir.path() / "store");
  for (const auto& c : record->chunks) {
    INFO("chunk " << c.chunk.index);
    CHECK(stored.count(c.chunk.sha256.Hex()) == 1);
    auto bytes = agent.spool().ReadChunk(summary->scan_uid, c.chunk.index);
    REQUIRE(bytes);
    CHECK(Sha256Hex(*bytes) == c.chunk.sha256);
  }
  CHECK(stored.count(record->manifest_sha256) == 1);
}

TEST_CASE("pipeline: a slow scan's chunks are synced by time and upload while it is still acquiring",
          "[core][pipeline]") {
  log::SetLevel(log::Level::kWarn);
  Cloud cloud;
  // 2 s of real-time views; a batch size no scan reaches, so only the interval can sync them.
  const auto text = ScanConfig(cloud.dir.path() / "spool", cloud.tus.endpoint, cloud.dir.path() / "pki" / "ca.pem",
                               320, true, "1 GiB", 200)
                        .dump();
  auto config = config::ParseConfig(text, "pipeline_test.json");
  REQUIRE(config);
  PosixFileStore files;
  core::Agent agent(*config, files);
  REQUIRE(agent.Open());
  core::Progress progress;
  std::atomic<bool> done{false};
  std::uint32_t stored_mid_scan = 0, uploaded_mid_scan = 0;
  std::thread watcher([&] {
    // Bounded: the scan takes ~2 s; the watcher gives up after 60 s.
    for (int i = 0; i < 6000 && !done; ++i) {
      if (progress.views_total > 0 && progress.views_acquired < progress.views_total * 3 / 4) {
        stored_mid_scan = progress.chunks_stored;
        uploaded_mid_scan = progress.chunks_uploaded;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  auto summary = agent.RunScan(&progress);
  done = true;
  watcher.join();
  REQUIRE(summary);
  INFO(summary->problem);
  CHECK(summary->problem.empty());
  CHECK(summary->state == "uploaded");
  CHECK(summary->chunks == 20);
  // Before three quarters of the views were read, chunks were already synced and uploaded.
  CHECK(stored_mid_scan >= 3);
  CHECK(uploaded_mid_scan >= 1);
}

TEST_CASE("pipeline: resuming uploads every pending scan first, then waits for all their results at once",
          "[core][pipeline]") {
  log::SetLevel(log::Level::kError);
  Cloud cloud;
  const fs::path spool_dir = cloud.dir.path() / "spool";
  // Two scans acquired while the cloud could not be trusted: the server's certificate is of a CA
  // the agent does not know, a permanent error, so both scans stay in the spool, not uploaded.
  test::MakeTestPki(cloud.dir.path() / "other-pki");
  std::vector<std::string> scans;
  {
    const auto text = ScanConfig(spool_dir, cloud.tus.endpoint, cloud.dir.path() / "other-pki" / "ca.pem", 64,
                                 false, "64 KiB", 60000)
                          .dump();
    auto config = config::ParseConfig(text, "offline.json");
    REQUIRE(config);
    PosixFileStore files;
    core::Agent agent(*config, files);
    REQUIRE(agent.Open());
    for (int i = 0; i < 2; ++i) {
      auto summary = agent.RunScan();
      REQUIRE(summary);
      INFO(summary->problem);
      CHECK(summary->state == "acquired");
      CHECK_THAT(summary->problem, Catch::StartsWith("upload pending"));
      scans.push_back(summary->scan_uid);
    }
  }
  REQUIRE(StoredHashes(cloud.dir.path() / "store").empty());

  // The cloud is trusted again; its DICOMweb side has no results yet for any study. At each
  // results query, the states of both scans in the spool are noted.
  test::FakeTusServer dicomweb;
  std::mutex seen_mutex;
  std::vector<std::vector<std::string>> states_at_query;
  std::vector<std::string> queried_studies;  // in the order of the queries
  core::Agent* agent_ptr = nullptr;
  dicomweb.SetIntercept([&](const test::FakeRequest& request) -> std::optional<test::FakeResponse> {
    if (request.method != "GET" || request.target.find("/dicom-web/studies/") == std::string::npos) {
      return test::FakeResponse{404, {}, ""};
    }
    std::vector<std::string> states;
    std::string study;
    for (const auto& uid : scans) {
      auto record = agent_ptr->spool().Get(uid);
      states.push_back(record ? spool::ToString(record->state) : record.error().message());
      if (record && request.target.find("/studies/" + record->study_uid + "/") != std::string::npos) study = uid;
    }
    std::lock_guard lock(seen_mutex);
    states_at_query.push_back(std::move(states));
    queried_studies.push_back(study);
    return test::FakeResponse{204, {}, ""};  // QIDO-RS: no match yet
  });
  auto online = ScanConfig(spool_dir, cloud.tus.endpoint, cloud.dir.path() / "pki" / "ca.pem", 64, false, "64 KiB",
                           60000);
  const std::string files_endpoint = dicomweb.endpoint();  // http://127.0.0.1:PORT/files/
  online["cloud"]["dicomweb_url"] = files_endpoint.substr(0, files_endpoint.size() - 7) + "/dicom-web";
  online["cloud"]["allow_plain_http"] = true;
  online["results"] = {{"enabled", true}, {"poll_interval_ms", 200}, {"poll_max_interval_ms", 400}, {"timeout_s", 2}};
  auto config = config::ParseConfig(online.dump(), "online.json");
  REQUIRE(config);
  PosixFileStore files;
  core::Agent agent(*config, files);
  REQUIRE(agent.Open());
  agent_ptr = &agent;
  const auto summaries = agent.ResumeAll();

  // Both scans arrived bit-exact, and their results were waited for (and timed out) afterwards.
  REQUIRE(summaries.size() == 2);
  const std::set<std::string> stored = StoredHashes(cloud.dir.path() / "store");
  for (const auto& s : summaries) {
    INFO(s.scan_uid << ": " << s.problem);
    CHECK(s.state == "uploaded");
    CHECK_THAT(s.problem, Catch::StartsWith("results: no complete result series"));
    auto record = agent.spool().Get(s.scan_uid);
    REQUIRE(record);
    for (const auto& c : record->chunks) CHECK(stored.count(c.chunk.sha256.Hex()) == 1);
    CHECK(stored.count(record->manifest_sha256) == 1);
  }
  // The ordering: when the agent first asked the cloud for results, every scan was uploaded;
  // and both scans waited at the same time, so their queries interleave (one after the other,
  // the queries would switch from one scan to the other exactly once).
  std::lock_guard lock(seen_mutex);
  REQUIRE(states_at_query.size() >= 2);
  CHECK(states_at_query.front() == std::vector<std::string>{"uploaded", "uploaded"});
  std::string order;
  for (const auto& uid : queried_studies) order += (uid == scans[0] ? "1" : uid == scans[1] ? "2" : "?");
  INFO("queries, by scan: " << order);
  CHECK(order.find('?') == std::string::npos);
  std::size_t switches = 0;
  for (std::size_t i = 1; i < order.size(); ++i) switches += order[i] != order[i - 1] ? 1 : 0;
  CHECK(switches >= 2);
}
