// Back-pressure visibility: `ctagent status` names the bytes the cloud has not confirmed yet and,
// only once an upload rate was measured, the time to clear them.
#include <catch2/catch.hpp>

#include <csignal>
#include <regex>
#include <thread>

#include "base/durable_file.hpp"
#include "agent/spool/spool.hpp"
#include "tests/durability/harness.hpp"

using namespace ctagent;
using namespace ctagent::test::durability;
using namespace std::chrono_literals;

namespace {

// The backlog computed independently from the spool's records: chunk bytes and manifest bytes
// beyond what the server confirmed, over every scan that is not failed.
std::uint64_t ExpectedBacklog(const fs::path& spool_dir) {
  PosixFileStore files;
  auto spool = OpenSpool(spool_dir, files);
  REQUIRE(spool);
  std::uint64_t left = 0;
  for (const auto& r : (*spool)->AllScans()) {
    if (r.state == spool::ScanState::kFailed) continue;
    for (const auto& c : r.chunks) {
      if (!c.upload.complete) left += c.chunk.compressed_bytes - std::min(c.chunk.compressed_bytes, c.upload.confirmed_offset);
    }
    if (r.manifest_written && !r.manifest_upload.complete) {
      auto manifest = (*spool)->ReadManifest(r.scan_uid);
      REQUIRE(manifest);
      left += manifest->size() - std::min<std::uint64_t>(manifest->size(), r.manifest_upload.confirmed_offset);
    }
  }
  return left;
}

std::string StatusOutput(const fs::path& cfg, const fs::path& log) {
  std::error_code ec;
  fs::remove(log, ec);
  REQUIRE(RunCtagent({"status", "--config", cfg.string()}, log, 60s) == 0);
  return test::ReadText(log);
}

}  // namespace

TEST_CASE("status shows the upload backlog in bytes, and a time only from a measured rate", "[durability][lag]") {
  test::TempDir work("lag");
  const fs::path pki = work.path() / "pki";
  const fs::path spool_dir = work.path() / "spool";
  test::MakeTestPki(pki);
  fs::create_directories(work.path() / "store");
  fs::create_directories(work.path() / "refusing-store");
  TusPeer good(pki, work.path() / "store", work.path() / "tus.log");
  good.Start();
  // A server whose certificate names another host: the agent refuses it at once (permanent TLS
  // failure, no backoff), so its scans stay in the spool as a backlog.
  TusPeer refusing(pki, work.path() / "refusing-store", work.path() / "refusing.log", "wrong-host");
  refusing.Start();
  const fs::path good_cfg = work.path() / "good.json";
  const fs::path refusing_cfg = work.path() / "refusing.json";
  WriteJson(good_cfg, SmallScanConfig(spool_dir, good.endpoint(), pki / "ca.pem", 5));
  WriteJson(refusing_cfg, SmallScanConfig(spool_dir, refusing.endpoint(), pki / "ca.pem", 6));
  const fs::path log = work.path() / "agent.log";

  SECTION("nothing uploaded yet: the backlog is every byte, and the rate is unknown") {
    REQUIRE(RunCtagent({"scan", "--config", refusing_cfg.string(), "--no-results", "--quiet"}, log, 120s) == 1);
    const auto expected = ExpectedBacklog(spool_dir);
    REQUIRE(expected > 0);
    const std::string out = StatusOutput(refusing_cfg, work.path() / "status.log");
    INFO(out);
    CHECK_THAT(out, Catch::Contains("upload backlog: " + std::to_string(expected) + " bytes"));
    CHECK_THAT(out, Catch::Contains("in 1 scan(s) not yet confirmed by the cloud"));
    CHECK_THAT(out, Catch::Contains("rate unknown"));
    CHECK_THAT(out, !Catch::Contains("Mbit/s"));

    // Once the backlog went through a reachable server, the rate is known and the backlog gone.
    REQUIRE(RunCtagent({"run", "--once", "--config", good_cfg.string()}, log, 120s) == 0);
    const std::string after = StatusOutput(good_cfg, work.path() / "status2.log");
    INFO(after);
    CHECK_THAT(after, Catch::Contains("upload backlog: none"));
    CHECK(fs::exists(spool_dir / "upload-rate.json"));

    // A new backlog now comes with a time estimate at the measured rate.
    REQUIRE(RunCtagent({"scan", "--config", refusing_cfg.string(), "--no-results", "--quiet"}, log, 120s) == 1);
    const auto expected2 = ExpectedBacklog(spool_dir);
    const std::string later = StatusOutput(refusing_cfg, work.path() / "status3.log");
    INFO(later);
    CHECK_THAT(later, Catch::Contains("upload backlog: " + std::to_string(expected2) + " bytes"));
    CHECK(std::regex_search(later, std::regex("about [0-9.]+ (s|min|h) at the recent upload rate of [0-9.]+ Mbit/s "
                                              "\\(measured [0-9.]+ (s|min|h) ago")));
  }

  SECTION("after a partial upload, the backlog is what the server has not confirmed") {
    // Kill the agent as soon as the server holds a complete chunk: some bytes confirmed, some not.
    // The scan is stored at once (unpaced) but uploaded over a link capped at 40 kbit/s, so its
    // 15 chunks (~150 KiB) take about half a minute to upload while the first completes within a
    // few seconds: the kill lands between the two whatever the build's speed. (Uncapped, an
    // optimised build uploaded the whole small scan before the kill arrived, and the section
    // found no partial upload.)
    nlohmann::json capped = SmallScanConfig(spool_dir, good.endpoint(), pki / "ca.pem", 5);
    capped["cloud"]["links"] = {{"loopback", {{"source_address", "127.0.0.1"}, {"max_bits_per_s", 40000}}}};
    capped["cloud"]["floor_rate_bits_per_s"] = 16000;  // request deadlines sized for the cap
    const fs::path capped_cfg = work.path() / "capped.json";
    WriteJson(capped_cfg, capped);
    test::ChildProcess agent({CtagentBinary(), "scan", "--config", capped_cfg.string(), "--no-results", "--quiet"}, log);
    const bool chunk_arrived = test::WaitFor(
        [&] {
          for (const auto& u : ListUploads(good.store())) {
            if (u.complete() && u.metadata.value("kind", "") == "chunk") return true;
          }
          return false;
        },
        120s);
    const bool still_running = agent.Running();
    agent.Kill(SIGKILL);
    agent.Wait(30s);
    INFO("agent log:\n" << test::ReadText(log));
    REQUIRE(chunk_arrived);
    REQUIRE(still_running);  // killed mid-upload, not after the agent had finished
    const auto left = ExpectedBacklog(spool_dir);
    const bool partial = left > 0 && !ListUploads(good.store()).empty();
    REQUIRE(partial);
    const auto expected = ExpectedBacklog(spool_dir);
    const std::string out = StatusOutput(good_cfg, work.path() / "status.log");
    INFO(out);
    CHECK_THAT(out, Catch::Contains("upload backlog: " + std::to_string(expected) + " bytes"));
    REQUIRE(RunCtagent({"run", "--once", "--config", good_cfg.string()}, log, 120s) == 0);
    CHECK(ExpectedBacklog(spool_dir) == 0);
  }
}
