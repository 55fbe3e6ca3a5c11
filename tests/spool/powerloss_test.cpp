// Power-loss harness: a workload of several scans runs on a SimulatedDisk that loses power at
// mutating operation k; unsynced writes are dropped or torn (random patterns); the spool is
// reopened on what survived. For every k: every change that returned OK is still there, the
// call in flight is either fully there or not at all, every recorded chunk verifies, no file
// is orphaned, no chunk record is duplicated, and the journal parses cleanly afterwards.
//
// CTAGENT_POWERLOSS_POINTS sets the number of crash runs (default 600). Long run:
//   CTAGENT_POWERLOSS_POINTS=20000 build/spool/tests/spool/spool_powerloss_test
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>

#include "base/log.hpp"
#include "base/sha256.hpp"
#include "agent/spool/simulated_disk.hpp"
#include "agent/spool/spool.hpp"

using namespace ctagent;

namespace {

const std::filesystem::path kDir = "/disk/spool";
const auto kT0 = std::chrono::system_clock::time_point(std::chrono::seconds(1795000000));

struct Workload {
  std::vector<std::string> scans;
  std::map<std::pair<std::string, std::uint32_t>, std::vector<std::uint8_t>> chunk_bytes;
  std::vector<std::pair<std::string, std::function<Status(spool::Spool&)>>> steps;
};

std::string Uid(int i) { return "1.2.826.0.1.3680043.10.543.77." + std::to_string(i + 1); }

Workload MakeWorkload() {
  Workload w;
  std::mt19937_64 rng(42);
  for (int s = 0; s < 3; ++s) w.scans.push_back(Uid(s));
  const auto chunk = [&](const std::string& uid, std::uint32_t index) {
    std::vector<std::uint8_t> bytes(200 + rng() % 1800);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    w.chunk_bytes[{uid, index}] = bytes;
    codec::ManifestChunk mc{index, index * 64ull, 64, bytes.size() * 3, bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
    w.steps.push_back({"add chunk " + std::to_string(index), [uid, mc, bytes](spool::Spool& sp) {
                         return sp.AddChunk(uid, mc, bytes);
                       }});
  };
  const auto deferred = [&](const std::string& uid, std::uint32_t index) {
    std::vector<std::uint8_t> bytes(200 + rng() % 1800);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    w.chunk_bytes[{uid, index}] = bytes;
    codec::ManifestChunk mc{index, index * 64ull, 64, bytes.size() * 3, bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
    w.steps.push_back({"add chunk deferred " + std::to_string(index), [uid, mc, bytes](spool::Spool& sp) {
                         return sp.AddChunkDeferred(uid, mc, bytes);
                       }});
  };
  const auto sync_pending = [&] {
    w.steps.push_back({"sync pending", [](spool::Spool& sp) { return sp.SyncPending().status; }});
  };
  const auto begin = [&](const std::string& uid, int n) {
    w.steps.push_back({"begin", [uid, n](spool::Spool& sp) {
                         spool::ScanRecord r;
                         r.scan_uid = uid;
                         r.study_uid = uid + ".9";
                         r.created_utc = "2026-11-23T10:0" + std::to_string(n) + ":00Z";
                         r.manifest_base = {{"terminal_id", "t1"}};
                         return sp.BeginScan(r, 1 << 20);
                       }});
  };
  const auto upload = [&](const std::string& uid, std::int64_t index, std::uint64_t size) {
    const auto set = [uid, index](std::string url, std::uint64_t off, bool done) {
      return [=](spool::Spool& sp) {
        return sp.Update(uid, [&](spool::ScanRecord& r) {
          spool::UploadState u{url, off, done};
          if (index < 0) {
            r.manifest_upload = u;
          } else {
            for (auto& c : r.chunks) {
              if (c.chunk.index == static_cast<std::uint32_t>(index)) c.upload = u;
            }
          }
        });
      };
    };
    const std::string url = "https://cloud.invalid/files/" + uid + "-" + std::to_string(index);
    w.steps.push_back({"upload url", set(url, 0, false)});
    w.steps.push_back({"upload offset", set(url, size / 2, false)});
    w.steps.push_back({"upload done", set(url, size, true)});
  };
  const auto finish = [&](const std::string& uid, std::uint64_t views) {
    w.steps.push_back({"finish", [uid, views](spool::Spool& sp) {
                         codec::Manifest m;
                         m.scan_uid = uid;
                         m.study_uid = uid + ".9";
                         m.views_acquired = views;
                         return sp.FinishAcquisition(uid, m);
                       }});
  };
  const auto state = [&](const std::string& uid, spool::ScanState s) {
    w.steps.push_back({std::string("state ") + spool::ToString(s), [uid, s](spool::Spool& sp) {
                         return sp.Update(uid, [&](spool::ScanRecord& r) { r.state = s; });
                       }});
  };
  const auto result = [&](const std::string& uid, int n) {
    const std::string sop = uid + ".5." + std::to_string(n);
    w.steps.push_back({"store result", [uid, sop](spool::Spool& sp) -> Status {
                         auto path = sp.StoreResult(uid, sop, std::vector<std::uint8_t>(300, 7));
                         if (!path) return MakeError(path.error());
                         return sp.Update(uid, [&](spool::ScanRecord& r) {
                           r.results.push_back({sop, uid + ".4", "1.2.840.10008.5.1.4.1.1.2", false});
                         });
                       }});
  };
  const auto retention = [&](int days) {
    w.steps.push_back({"retention", [days](spool::Spool& sp) -> Status {
                         auto report = sp.ApplyRetention(kT0 + std::chrono::hours(24 * days));
                         if (!report) return MakeError(report.error());
                         return Ok();
                       }});
  };
  const std::string a = w.scans[0], b = w.scans[1], c = w.scans[2];
  begin(a, 0);
  chunk(a, 1);
  chunk(a, 0);  // out of order, as the codec pool may finish them
  begin(b, 1);
  chunk(b, 0);
  upload(a, 0, 100);
  chunk(a, 2);
  chunk(b, 1);
  upload(a, 1, 100);
  upload(b, 0, 100);
  finish(a, 192);
  upload(a, 2, 100);
  w.steps.push_back({"compact", [](spool::Spool& sp) { return sp.Compact(); }});
  upload(a, -1, 100);
  begin(c, 2);
  chunk(c, 0);
  state(a, spool::ScanState::kUploaded);
  chunk(b, 2);
  result(a, 1);
  result(a, 2);
  finish(b, 192);
  upload(b, 1, 100);
  state(a, spool::ScanState::kResultsReceived);
  upload(b, 2, 100);
  upload(b, -1, 100);
  state(b, spool::ScanState::kUploaded);
  retention(0);  // after_upload: raw data of a and b goes; c is not confirmed and stays
  chunk(c, 1);
  state(a, spool::ScanState::kDelivered);
  retention(1);  // a is delivered: removed entirely
  chunk(c, 2);
  upload(c, 0, 100);
  deferred(c, 3);  // batched ingest: durable (and visible) only once SyncPending returns OK
  deferred(c, 4);
  deferred(c, 5);
  sync_pending();
  upload(c, 4, 100);
  deferred(c, 7);  // a second batch, out of order, then the scan ends after its sync
  deferred(c, 6);
  sync_pending();
  finish(c, 512);
  return w;
}

std::string Dump(spool::Spool& sp) {
  nlohmann::json all = nlohmann::json::array();
  for (const auto& r : sp.AllScans()) all.push_back(spool::ToJson(r));
  return all.dump();
}

spool::SpoolOptions Options() {
  spool::SpoolOptions o{kDir, 1ull << 30, 0};
  o.retention = spool::RetentionPolicy::kAfterUpload;
  o.journal_compact_bytes = 3000;  // compacts several times during the workload
  o.clock = [] { return kT0; };
  return o;
}

// Runs the workload until the first failure. Returns the index of the failed step (steps.size()
// if none failed, -1 if Open failed) and the state before every step.
struct RunResult {
  int failed_step = 0;
  std::vector<std::string> before;  // before[i]: state before step i; before[steps.size()]: at the end
};

RunResult Run(SimulatedDisk& disk, const Workload& w) {
  RunResult out;
  auto sp = spool::Spool::Open(Options(), disk);
  if (!sp) {
    out.failed_step = -1;
    return out;
  }
  for (std::size_t i = 0; i < w.steps.size(); ++i) {
    out.before.push_back(Dump(**sp));
    if (!w.steps[i].second(**sp)) {
      out.failed_step = static_cast<int>(i);
      return out;
    }
  }
  out.before.push_back(Dump(**sp));
  out.failed_step = static_cast<int>(w.steps.size());
  return out;
}

std::uint64_t PointsFromEnv() {
  const char* v = std::getenv("CTAGENT_POWERLOSS_POINTS");
  return v && *v ? std::strtoull(v, nullptr, 10) : 600;
}

}  // namespace

TEST_CASE("powerloss: a crash at any operation loses nothing that was reported durable", "[spool][powerloss]") {
  log::SetLevel(log::Level::kError);  // recovery narrates every cut and orphan; keep the output short
  const Workload w = MakeWorkload();
  // The reference run: no crash; its states are what each step must leave behind.
  SimulatedDisk reference_disk;
  const RunResult reference = Run(reference_disk, w);
  REQUIRE(reference.failed_step == static_cast<int>(w.steps.size()));
  const std::uint64_t total_ops = reference_disk.mutating_ops();
  REQUIRE(total_ops > 100);

  const std::uint64_t points = PointsFromEnv();
  std::uint64_t scans_accepted = 0, chunks_accepted = 0, lost = 0, corrupted = 0, duplicated = 0;
  for (std::uint64_t run = 0; run < points; ++run) {
    const std::uint64_t crash_at = 1 + run % total_ops;
    const std::uint64_t seed = run * 7919 + 17;
    INFO("crash at mutating operation " << crash_at << " of " << total_ops << ", tear seed " << seed);
    SimulatedDisk disk;
    disk.CrashAtOp(crash_at);
    const RunResult crashed = Run(disk, w);
    REQUIRE(disk.crashed());
    const int j = crashed.failed_step;
    INFO("the crash interrupted step " << j << (j >= 0 && j < static_cast<int>(w.steps.size()) ? " (" + w.steps[static_cast<std::size_t>(j)].first + ")" : std::string()));
    // Up to the crash the run matched the reference, step for step.
    for (std::size_t i = 0; i < crashed.before.size(); ++i) REQUIRE(crashed.before[i] == reference.before[i]);

    disk.Reboot(seed);
    auto sp = spool::Spool::Open(Options(), disk);
    REQUIRE(sp);
    const std::string recovered = Dump(**sp);
    // Every acknowledged change survives; the one in flight is all there or not at all.
    const std::string acked = j < 0 ? "[]" : reference.before[static_cast<std::size_t>(j)];
    // (A crash inside a compaction that follows a durable record lets the call return OK.)
    const std::string inflight = j < 0 ? reference.before[0]
                                 : static_cast<std::size_t>(j) == w.steps.size()
                                     ? acked
                                     : reference.before[static_cast<std::size_t>(j) + 1];
    if (recovered != acked) REQUIRE(recovered == inflight);
    CHECK((*sp)->recovery().damaged.empty());

    // Every recorded file is there and verifies; nothing else is there.
    std::set<std::string> expected_files = {kDir.string() + "/spool.json", kDir.string() + "/state.snapshot",
                                            kDir.string() + "/journal.log"};
    const auto acked_json = nlohmann::json::parse(acked);
    std::set<std::pair<std::string, std::uint32_t>> acked_chunks;
    for (const auto& r : acked_json) {
      scans_accepted += 1;
      for (const auto& c : r.at("chunks")) acked_chunks.insert({r.at("scan_uid"), c.at("index").get<std::uint32_t>()});
    }
    chunks_accepted += acked_chunks.size();
    for (const auto& r : (*sp)->AllScans()) {
      const std::string dir = kDir.string() + "/scans/" + r.scan_uid;
      if (r.dropped_chunks.count > 0) {
        // Delivered with its raw data gone: the record gave its chunk list up for the totals
        // (docs/durability.md, "Retention"), which must count every acknowledged chunk of it.
        std::uint64_t acked_here = 0;
        for (auto it = acked_chunks.begin(); it != acked_chunks.end();) {
          if (it->first == r.scan_uid) {
            ++acked_here;
            it = acked_chunks.erase(it);
          } else {
            ++it;
          }
        }
        if (acked_here > r.dropped_chunks.count) lost += acked_here - r.dropped_chunks.count;
      }
      std::set<std::uint32_t> seen;
      for (const auto& c : r.chunks) {
        if (!seen.insert(c.chunk.index).second) ++duplicated;
        acked_chunks.erase({r.scan_uid, c.chunk.index});
        if (r.raw_deleted) continue;
        char name[32];
        std::snprintf(name, sizeof name, "%06u.ctc", c.chunk.index);
        expected_files.insert(dir + "/chunks/" + name);
        auto bytes = (*sp)->ReadChunk(r.scan_uid, c.chunk.index);
        if (!bytes) {
          ++lost;
        } else if (*bytes != w.chunk_bytes.at({r.scan_uid, c.chunk.index})) {
          ++corrupted;
        }
      }
      if (r.manifest_written && !r.raw_deleted) {
        expected_files.insert(dir + "/manifest.json");
        CHECK((*sp)->ReadManifest(r.scan_uid));
      }
      for (const auto& res : r.results) expected_files.insert(dir + "/results/" + res.sop_instance_uid + ".dcm");
    }
    // Acknowledged chunks missing from the recovered state count as lost, unless retention
    // (in the acknowledged or in-flight step) removed their scan.
    for (const auto& [uid, index] : acked_chunks) {
      if (nlohmann::json::parse(inflight).dump().find(uid) == std::string::npos) continue;  // scan removed
      ++lost;
    }
    const auto files = disk.AllFiles(kDir);
    for (const auto& f : files) {
      INFO("file on disk: " << f);
      CHECK(expected_files.count(f) == 1);
    }
    for (const auto& f : expected_files) {
      INFO("recorded file: " << f);
      CHECK(disk.Exists(f));
    }
    // The journal parses cleanly now: a second start changes nothing and cuts nothing.
    sp->reset();
    auto again = spool::Spool::Open(Options(), disk);
    REQUIRE(again);
    CHECK(Dump(**again) == recovered);
    CHECK((*again)->recovery().torn_tail_bytes == 0);
    CHECK((*again)->recovery().orphans_removed == 0);
    REQUIRE(lost == 0);
    REQUIRE(corrupted == 0);
    REQUIRE(duplicated == 0);
  }
  std::printf("powerloss: crash points %llu (of %llu mutating operations), scans accepted %llu, chunks accepted %llu, "
              "lost %llu, corrupted %llu, duplicated %llu\n",
              static_cast<unsigned long long>(points), static_cast<unsigned long long>(total_ops),
              static_cast<unsigned long long>(scans_accepted), static_cast<unsigned long long>(chunks_accepted),
              static_cast<unsigned long long>(lost), static_cast<unsigned long long>(corrupted),
              static_cast<unsigned long long>(duplicated));
  std::fflush(stdout);
}
