// The status object and the upload lag behind it (backlog, measured rate).
#include "agent/control/status.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "base/clock.hpp"
#include "agent/results/result_set.hpp"

namespace ctagent::control {
namespace {

using Json = nlohmann::json;

std::string BootId() {
  std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f == nullptr) return "";
  char buf[64] = {};
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  std::string id(buf, n);
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
  return id;
}

// steady_clock is CLOCK_MONOTONIC, shared by every process of one boot: ages are immune to
// wall-clock jumps.
double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::filesystem::path RateRecordPath(const std::filesystem::path& spool_dir) { return spool_dir / "upload-rate.json"; }

std::uint64_t ManifestLeft(spool::Spool& spool, const spool::ScanRecord& r) {
  if (!r.manifest_written || r.manifest_upload.complete) return 0;
  // The manifest's size is that of its file; the confirmed offset tells how much arrived.
  std::error_code ec;
  const auto size = std::filesystem::file_size(spool.directory() / "scans" / r.scan_uid / "manifest.json", ec);
  if (ec) return 0;
  return size - std::min<std::uint64_t>(size, r.manifest_upload.confirmed_offset);
}

// The backlog from the records' heads (ScanHeads(): no chunk list copied, its sums given).
Backlog BacklogOf(spool::Spool& spool, const std::vector<spool::ScanHead>& heads) {
  Backlog b;
  for (const spool::ScanHead& head : heads) {
    if (head.record.state == spool::ScanState::kFailed) {  // needs a person, not the uploader
      ++b.failed;
      continue;
    }
    b.confirmed += head.totals.compressed_bytes - head.chunk_bytes_to_upload;
    const std::uint64_t left = head.chunk_bytes_to_upload + ManifestLeft(spool, head.record);
    if (left > 0) ++b.scans;
    b.bytes += left;
  }
  return b;
}

}  // namespace

Backlog MeasureBacklog(spool::Spool& spool) { return BacklogOf(spool, spool.ScanHeads()); }

void WriteRateRecord(const std::filesystem::path& spool_dir, double bytes_per_second, double window_s,
                     std::uint64_t bytes) {
  const Json j = {{"bytes_per_second", bytes_per_second}, {"window_s", window_s},  {"bytes", bytes},
                  {"boot_id", BootId()},                  {"monotonic_s", MonotonicSeconds()},
                  {"measured_utc", UtcNowIso8601()}};
  const auto path = RateRecordPath(spool_dir);
  const auto tmp = std::filesystem::path(path.string() + ".part");
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << '\n';
    if (!out) return;  // advisory: status then says the rate is unknown
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
}

std::optional<RateRecord> ReadRateRecord(const std::filesystem::path& spool_dir) {
  std::ifstream in(RateRecordPath(spool_dir));
  if (!in) return std::nullopt;
  const auto j = Json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("bytes_per_second") || !j["bytes_per_second"].is_number()) {
    return std::nullopt;
  }
  RateRecord r;
  r.bytes_per_second = j["bytes_per_second"].get<double>();
  if (!(r.bytes_per_second > 0)) return std::nullopt;
  r.window_s = j.value("window_s", 0.0);
  r.measured_utc = j.value("measured_utc", "");
  if (j.value("boot_id", "") == BootId() && j.contains("monotonic_s") && j["monotonic_s"].is_number()) {
    r.age_s = std::max(0.0, MonotonicSeconds() - j["monotonic_s"].get<double>());
  }
  return r;
}

Json StatusFromSpool(spool::Spool& spool, const StatusSource& source) {
  const auto space = spool.Space();
  // Each record without its chunk list (the daemon rebuilds this every event_interval while the
  // operator's page is open; a copy of every list would be made each time for these sums).
  const std::vector<spool::ScanHead> heads = spool.ScanHeads();
  const Backlog backlog = BacklogOf(spool, heads);
  const auto rate = ReadRateRecord(spool.directory());
  Json status = {
      {"source", source.source},
      {"spool",
       {{"directory", spool.directory().string()},
        {"used_bytes", space.used_bytes},
        {"reserved_bytes", space.reserved_bytes},
        {"budget_bytes", source.budget_bytes},
        {"filesystem_free_bytes", space.filesystem_free_bytes}}},
      {"backlog",
       {{"bytes", backlog.bytes},
        {"scans", backlog.scans},
        {"failed_scans", backlog.failed},
        {"rate_bytes_per_second", nullptr},
        {"rate_age_s", nullptr},
        {"rate_window_s", nullptr},
        {"rate_measured_utc", nullptr},
        {"eta_s", nullptr}}},
      {"scans", Json::array()},
  };
  if (rate) {
    status["backlog"]["rate_bytes_per_second"] = rate->bytes_per_second;
    if (rate->age_s) status["backlog"]["rate_age_s"] = *rate->age_s;
    status["backlog"]["rate_window_s"] = rate->window_s;
    status["backlog"]["rate_measured_utc"] = rate->measured_utc;
    status["backlog"]["eta_s"] = static_cast<double>(backlog.bytes) / rate->bytes_per_second;
  }
  for (const spool::ScanHead& head : heads) {
    const spool::ScanRecord& r = head.record;
    Json scan = {{"scan_uid", r.scan_uid},
                 {"study_uid", r.study_uid},
                 {"state", spool::ToString(r.state)},
                 {"created_utc", r.created_utc},
                 {"views_acquired", r.views_acquired},
                 {"chunks_total", head.totals.count},
                 {"chunks_uploaded", head.chunks_uploaded},
                 {"bytes_to_upload", head.chunk_bytes_to_upload + ManifestLeft(spool, r)},
                 {"manifest", r.manifest_upload.complete ? "sent" : (r.manifest_written ? "written" : "none")},
                 {"results", r.results.size()}};
    if (!r.failure_reason.empty()) scan["failure_reason"] = r.failure_reason;
    if (!r.incomplete_reason.empty()) scan["incomplete_reason"] = r.incomplete_reason;
    if (!r.acknowledged_utc.empty()) scan["acknowledged_utc"] = r.acknowledged_utc;
    if (!r.high_risk_confirmed_utc.empty()) {
      scan["high_risk_confirmed_utc"] = r.high_risk_confirmed_utc;
      scan["high_risk_confirmed_by"] = r.high_risk_confirmed_by;
    }
    if (!r.patient_source.empty()) {
      scan["patient_source"] = r.patient_source;
      scan["reconcile"] = r.patient_source == "emergency";
    }
    // The AI result set's findings, once the results folder holds them (findings.json or an SR).
    if (!r.results.empty() || r.state == spool::ScanState::kResultsReceived || r.state == spool::ScanState::kDelivered) {
      auto findings = results::ReadFindingsInResultsDir(spool.ResultPath(r.scan_uid, "x").parent_path());
      if (findings) scan["findings"] = results::FindingsToJson(*findings);
    }
    status["scans"].push_back(std::move(scan));
  }
  return status;
}

std::string FindingsCategory(spool::Spool& spool, const spool::ScanRecord& r) {
  if (r.results.empty() && r.state != spool::ScanState::kResultsReceived && r.state != spool::ScanState::kDelivered) {
    return "";
  }
  auto findings = results::ReadFindingsInResultsDir(spool.ResultPath(r.scan_uid, "x").parent_path());
  return findings ? findings->findings.category : "";
}

Expected<Json> ConfirmHighRisk(spool::Spool& spool, const std::string& scan_uid, const std::string& by) {
  auto record = spool.Get(scan_uid);
  if (!record) {
    return MakeError(ErrorKind::kNotFound, "no scan " + scan_uid + " in the spool; see `ctagent status`");
  }
  if (record->high_risk_confirmed_utc.empty()) {
    const std::string category = FindingsCategory(spool, *record);
    if (category != "HIGH-RISK") {
      return MakeError(ErrorKind::kInvalidInput,
                       "scan " + scan_uid + "'s report is " + (category.empty() ? "not back yet" : category) +
                           ", not HIGH-RISK: only a high-risk finding needs confirming");
    }
    const std::string now = UtcNowIso8601();
    // Set only if still unset: a confirmation that came first (another caller) is kept.
    if (auto st = spool.UpdateFields(scan_uid,
                                     [&](spool::ScanRecord& r) {
                                       if (!r.high_risk_confirmed_utc.empty()) return;
                                       r.high_risk_confirmed_utc = now;
                                       r.high_risk_confirmed_by = by;
                                     });
        !st) {
      return MakeError(st.error().WithContext("recording the confirmation of scan " + scan_uid + "'s high-risk finding"));
    }
    record = spool.Get(scan_uid);
    if (!record) return MakeError(record.error());
  }
  return Json{{"scan_uid", scan_uid},
              {"high_risk_confirmed_utc", record->high_risk_confirmed_utc},
              {"high_risk_confirmed_by", record->high_risk_confirmed_by}};
}

void SetDaemon(Json& status, long pid, bool uploads_paused) {
  status["daemon"] = {{"pid", pid}, {"uploads_paused", uploads_paused}};
}

void SetChunkBuffers(Json& status, const ByteBudget::Usage& usage) {
  status["daemon"]["chunk_buffers"] = {{"capacity_bytes", usage.capacity},
                                       {"in_use_bytes", usage.in_use},
                                       {"high_water_bytes", usage.high_water},
                                       {"acquisition_waits", usage.blocked_takes},
                                       // Version 1 of the schema has it; uploads no longer take
                                       // from the budget (they send from the spool file).
                                       {"upload_waits", 0}};
}

void SetScanProgress(Json& status, const std::string& scan_uid, const ScanProgress& progress) {
  Json& scans = status["scans"];
  if (!scans.is_array()) scans = Json::array();
  Json* scan = nullptr;
  for (auto& s : scans) {
    if (s.value("scan_uid", "") == scan_uid) scan = &s;
  }
  if (scan == nullptr) {
    scans.push_back({{"scan_uid", scan_uid}, {"state", "acquiring"}});
    scan = &scans.back();
  }
  (*scan)["progress"] = {{"phase", progress.phase},
                         {"views_acquired", progress.views_acquired},
                         {"views_total", progress.views_total},
                         {"chunks_stored", progress.chunks_stored},
                         {"chunks_uploaded", progress.chunks_uploaded}};
}

}  // namespace ctagent::control
