#include "agent/core/results_fetch.hpp"

#include "agent/privacy/privacy.hpp"
#include "agent/results/reidentify.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <latch>
#include <map>
#include <set>

#include "base/log.hpp"
#include "agent/core/http_options.hpp"
#include "transport/dicomweb.hpp"

namespace ctagent::core {

namespace {

std::int64_t UnixMsNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Why a fetched instance is refused, or empty when it is kept. Refused: it failed validation,
// or it is not the instance that was asked for (filed under another UID it could replace a
// result already kept, or be counted and delivered twice), or, for a scan with a privacy mapping,
// it cannot be given the real identity back (an object of another scan). A kept instance of such
// a scan has its bytes re-identified in place, before anything stores them.
std::string RefusalOf(const Expected<results::InstanceInfo>& info, const std::string& sop_instance_uid,
                      const std::string& series_uid, const std::optional<privacy::MappingRecord>& mapping,
                      std::vector<std::uint8_t>& bytes) {
  if (!info) return "instance " + sop_instance_uid + ": " + info.error().message();
  if (info->sop_instance_uid != sop_instance_uid || info->series_uid != series_uid) {
    return "instance " + sop_instance_uid + " of series " + series_uid + ": the imaging center answered with instance " +
           info->sop_instance_uid + " of series " + info->series_uid +
           " instead (WADO-RS answer does not match its QIDO-RS entry)";
  }
  if (mapping) {
    auto reidentified = results::ReidentifyPart10(bytes, *mapping);
    if (!reidentified) return "instance " + sop_instance_uid + ": " + reidentified.error().message();
    bytes = std::move(*reidentified);
  }
  return {};
}

}  // namespace

struct ResultsFetcher::Job {
  std::string scan_uid;
  std::string study_uid;  // the one the imaging center knows (pseudonymous for a worklist scan)
  // The scan's privacy mapping (a worklist or emergency scan), read at the first round: every
  // object is re-identified with it before it is stored, and stored objects carry the real study
  // UID (local_study_uid); without one both are study_uid.
  bool mapping_read = false;
  std::optional<privacy::MappingRecord> mapping;
  std::string local_study_uid;
  std::chrono::steady_clock::time_point deadline;
  std::chrono::milliseconds interval{1000};
  Done done;
  std::unique_ptr<transport::HttpClient> http;  // used on the worker thread only
  // One per download thread slot (FetchBatch), made at the first batch; slot i is used by one
  // download at a time.
  std::vector<std::unique_ptr<transport::HttpClient>> download_http;
  std::uint32_t received = 0;                   // counted on the worker thread
  std::uint32_t delivered = 0;
  // Instances refused by this job (by the UID QIDO listed): not downloaded again while the job
  // runs, so a server that keeps sending the wrong bytes costs one download per instance.
  std::set<std::string> refused;
  std::string first_refusal;  // the first refusal's message, for the outcome
  std::string last_problem;   // the last transient error, for the timeout message
  std::set<std::string> duplicates_logged;  // instances listed twice, logged once per job
  bool progress = false;                    // the last round stored something new
  // When a CT series was first seen complete without an SR (the report wait counts from here).
  std::optional<std::chrono::steady_clock::time_point> ct_complete_at;
  // Parsed SRs and SEG references, by SOP instance UID (files in the spool do not change).
  std::map<std::string, results::SrSummary> reports;
  std::map<std::string, results::SegReferences> segs;
  std::set<std::string> to_deliver;  // SOP instance UIDs chosen when the set was complete
  results::ScanFindings findings;
  // Milestones of the results phase (kept apart from `findings`, which each evaluation rebuilds).
  results::ScanFindings::Timeline timeline;
  std::string set_refusal;  // why the AI result set was refused (logged once)
  std::string console_refusal;  // what the console refused, for the outcome
};

void ResultsFetcher::Complete(Job& job, Status status) {
  if (!job.set_refusal.empty()) {
    const std::string refused = "the AI result set was refused and not delivered (only the CT series was): " +
                                job.set_refusal;
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + refused)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + refused));
  }
  if (!job.console_refusal.empty()) {
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + job.console_refusal)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + job.console_refusal));
  }
  if (!job.refused.empty()) {
    const std::string refused = std::to_string(job.refused.size()) +
                                " result instance(s) refused and not delivered; first: " + job.first_refusal;
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + refused)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + refused));
  }
  job.done(ResultsOutcome{std::move(status), job.received, job.delivered,
                          static_cast<std::uint32_t>(job.refused.size()), job.findings});
}

Expected<std::unique_ptr<ResultsFetcher>> ResultsFetcher::Create(boost::asio::io_context& io, spool::Spool& spool,
                                                                  const config::AgentConfig& config) {
  auto options = MakeDicomWebHttpOptions(config.cloud);
  if (!options) return MakeError(options.error());
  options->request_timeout_s = 300;
  return std::unique_ptr<ResultsFetcher>(new ResultsFetcher(io, spool, config, std::move(*options)));
}

ResultsFetcher::ResultsFetcher(boost::asio::io_context& io, spool::Spool& spool, const config::AgentConfig& config,
                               transport::HttpOptions http_options)
    : io_(io),
      spool_(spool),
      results_(config.results),
      console_(config.console),
      dicomweb_url_(config.cloud.dicomweb_url),
      http_options_(std::move(http_options)) {}

ResultsFetcher::~ResultsFetcher() { Stop(); }

void ResultsFetcher::Stop() {
  stopping_ = true;
  worker_.join();  // a round waits for its downloads, so none is left after this
  downloads_.join();
}

void ResultsFetcher::FetchAndDeliver(const std::string& scan_uid, const std::string& study_uid, Done done) {
  auto job = std::make_shared<Job>();
  job->scan_uid = scan_uid;
  job->study_uid = study_uid;
  job->deadline = std::chrono::steady_clock::now() + std::chrono::seconds(results_.timeout_s);
  job->interval = std::chrono::milliseconds(results_.poll_interval_ms);
  job->done = std::move(done);
  job->http = std::make_unique<transport::HttpClient>(http_options_);
  Poll(std::move(job));
}

void ResultsFetcher::Poll(std::shared_ptr<Job> job) {
  boost::asio::post(worker_, [this, job] {
    auto complete = stopping_ ? Expected<bool>(MakeError(ErrorKind::kCancelled, "agent is stopping")) : PollOnce(*job);
    boost::asio::post(io_, [this, job, complete] {
      if (complete && *complete) {
        Deliver(job);
        return;
      }
      if (!complete && !complete.error().IsTransient()) {
        Complete(*job, MakeError(complete.error().WithContext("fetching results of scan " + job->scan_uid)));
        return;
      }
      if (!complete) {
        job->last_problem = complete.error().message();
        log::Warn("results", "scan " + job->scan_uid + ": " + job->last_problem + "; will retry");
        if (retry_counts_ != nullptr) ++(*retry_counts_)[ToString(complete.error().kind())];
      }
      if (std::chrono::steady_clock::now() + job->interval > job->deadline) {
        const std::string problem = job->last_problem.empty() ? "" : " (last problem: " + job->last_problem + ")";
        Complete(*job, MakeError(ErrorKind::kNetwork,
                                 "no complete result series for scan " + job->scan_uid + " within " +
                                     std::to_string(results_.timeout_s) + " s (results.timeout_s)" + problem +
                                     "; the raw data is safe in the spool and the agent keeps asking on its "
                                     "next run"));
        return;
      }
      // Something new arrived: the rest of the set is likely close behind, so the backoff
      // starts over (the SR follows the CT series within seconds).
      if (job->progress) job->interval = std::chrono::milliseconds(results_.poll_interval_ms);
      auto timer = std::make_shared<boost::asio::steady_timer>(io_, job->interval);
      job->interval = std::min(job->interval * 2, std::chrono::milliseconds(results_.poll_max_interval_ms));
      timer->async_wait([this, job, timer](const boost::system::error_code&) { Poll(job); });
    });
  });
}

Expected<bool> ResultsFetcher::PollOnce(Job& job) {
  if (!job.mapping_read) {
    const auto path = spool_.MappingPath(job.scan_uid);
    job.local_study_uid = job.study_uid;
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      const auto file_store = MakeProcessFileStore();
      FileStore& files = *file_store;
      auto mapping = privacy::ReadMapping(files, path);
      if (!mapping) return MakeError(mapping.error().WithContext("scan " + job.scan_uid + "'s results"));
      job.local_study_uid = mapping->study_instance_uid.real;
      job.mapping = std::move(*mapping);
    }
    job.mapping_read = true;
  }
  transport::dicomweb::Client dicomweb(*job.http, dicomweb_url_);
  // Each request ends by the job's deadline or when the fetcher stops, whatever the server does.
  dicomweb.SetDeadline(job.deadline, [this] { return !stopping_.load(); });
  auto series = dicomweb.SearchSeries(job.study_uid);
  if (!series) return MakeError(series.error());
  // When the SR was first seen listed (its series' modality, or its instance's SOP class below).
  if (job.timeline.discovered == 0 &&
      std::any_of(series->begin(), series->end(), [](const auto& s) { return s.modality == "SR"; })) {
    job.timeline.discovered = UnixMsNow();
  }
  auto record = spool_.Get(job.scan_uid);
  if (!record) return MakeError(record.error());
  std::set<std::string> have;
  std::set<std::string> have_ct;  // stored CT images: only they carry ImagesInAcquisition
  for (const auto& r : record->results) {
    have.insert(r.sop_instance_uid);
    if (results::IsCtImage(r.sop_class_uid)) have_ct.insert(r.sop_instance_uid);
  }

  // Distinct UIDs only: a series or an instance listed twice is one series or one image, so
  // completeness and the counts never rest on a repeated entry.
  std::set<std::string> series_seen;
  std::set<std::string> listed;
  bool any_complete = false;
  job.progress = false;
  for (const auto& s : *series) {
    if (!series_seen.insert(s.series_uid).second) continue;
    auto instances = dicomweb.SearchInstances(job.study_uid, s.series_uid);
    if (!instances) return MakeError(instances.error());
    if (job.timeline.discovered == 0 &&
        std::any_of(instances->begin(), instances->end(),
                    [](const auto& inst) { return results::IsStructuredReport(inst.sop_class_uid); })) {
      job.timeline.discovered = UnixMsNow();
    }
    std::uint32_t stored = 0;
    std::uint32_t expected = 0;
    std::vector<std::string> to_fetch;  // listed, new, not refused; in the order listed
    for (const auto& inst : *instances) {
      if (!listed.insert(inst.sop_instance_uid).second) {
        if (job.duplicates_logged.insert(inst.sop_instance_uid).second) {
          log::Warn("results", "scan " + job.scan_uid + ": instance " + inst.sop_instance_uid +
                                   " is listed more than once by the imaging center; counted once");
        }
        continue;
      }
      if (job.refused.count(inst.sop_instance_uid)) continue;
      if (!have.count(inst.sop_instance_uid)) {
        to_fetch.push_back(inst.sop_instance_uid);
        continue;
      }
      if (expected == 0 && have_ct.count(inst.sop_instance_uid)) {
        auto info = results::ValidateInstanceFile(spool_.ResultPath(job.scan_uid, inst.sop_instance_uid),
                                                  job.local_study_uid, results::DefaultAllowedSopClasses());
        if (info) expected = info->images_in_acquisition;
      }
      ++stored;
    }
    for (std::size_t first = 0; first < to_fetch.size(); first += kBatchInstances) {
      const std::vector<std::string> batch(
          to_fetch.begin() + static_cast<std::ptrdiff_t>(first),
          to_fetch.begin() + static_cast<std::ptrdiff_t>(std::min(to_fetch.size(), first + kBatchInstances)));
      std::vector<results::InstanceInfo> kept;
      const Status fetched = FetchBatch(job, dicomweb, s.series_uid, batch, kept);
      // Counted also when the batch ended in an error: they are stored and in the record.
      for (const auto& info : kept) {
        have.insert(info.sop_instance_uid);
        ++job.received;
        job.progress = true;
        expected = std::max(expected, info.images_in_acquisition);
        ++stored;
      }
      if (!fetched) return MakeError(fetched.error());
    }
    if (expected > 0 && stored >= expected) any_complete = true;
  }
  std::set<std::string> pending;
  for (const auto& uid : listed) {
    if (!have.count(uid) && !job.refused.count(uid)) pending.insert(uid);
  }
  const std::int64_t retrieved = UnixMsNow();
  auto updated = spool_.Get(job.scan_uid);
  if (!updated) return MakeError(updated.error());
  auto complete = EvaluateSet(job, *updated, pending, any_complete);
  if (!complete || !*complete) return complete;
  job.timeline.retrieved = retrieved;
  job.timeline.validated = UnixMsNow();
  job.findings.timeline_unix_ms = job.timeline;
  if (auto st = spool_.Update(job.scan_uid, [](spool::ScanRecord& r) {
        if (r.state == spool::ScanState::kUploaded) r.state = spool::ScanState::kResultsReceived;
      });
      !st) {
    return MakeError(st.error());
  }
  if (Status st = results::WriteScanFindings(spool_.ResultPath(job.scan_uid, "x").parent_path(), job.findings); !st) {
    log::Warn("results", "scan " + job.scan_uid + ": findings not recorded for status: " + st.error().message());
  }
  return true;
}

Expected<bool> ResultsFetcher::EvaluateSet(Job& job, const spool::ScanRecord& record,
                                           const std::set<std::string>& pending, bool ct_complete) {
  std::map<std::string, results::StoredInstance> stored;
  std::vector<std::string> report_uids;
  for (const auto& r : record.results) {
    stored[r.sop_instance_uid] = {r.series_uid, r.sop_class_uid};
    const auto path = spool_.ResultPath(job.scan_uid, r.sop_instance_uid);
    if (results::IsStructuredReport(r.sop_class_uid)) {
      report_uids.push_back(r.sop_instance_uid);
      if (!job.reports.count(r.sop_instance_uid)) {
        auto summary = results::ReadSrSummary(path);
        if (!summary) return MakeError(summary.error().WithContext("scan " + job.scan_uid));
        job.reports[r.sop_instance_uid] = std::move(*summary);
      }
    } else if (results::IsSegmentation(r.sop_class_uid) && !job.segs.count(r.sop_instance_uid)) {
      auto refs = results::ReadSegReferences(path);
      if (!refs) return MakeError(refs.error().WithContext("scan " + job.scan_uid));
      job.segs[r.sop_instance_uid] = std::move(*refs);
    }
  }
  const auto all_ct = [&] {
    std::set<std::string> uids;
    for (const auto& [uid, inst] : stored) {
      if (results::IsCtImage(inst.sop_class_uid)) uids.insert(uid);
    }
    return uids;
  };

  if (report_uids.empty()) {
    // No SR (yet): a center that sends CT only gets its series delivered as before, once the
    // report wait has passed without an SR.
    if (!ct_complete) return false;
    const auto now = std::chrono::steady_clock::now();
    if (!job.ct_complete_at) job.ct_complete_at = now;
    if (now - *job.ct_complete_at < report_wait_) return false;
    job.findings = {};
    if (!job.refused.empty()) {
      // Something was refused (it may have been the SR): nothing but the CT images is vouched
      // for, so a SEG or report page without its SR does not reach the console.
      job.findings.report = "refused";
      job.findings.refused_reason = job.first_refusal;
      job.to_deliver = all_ct();
      log::Warn("results", "scan " + job.scan_uid + ": no usable AI report (an instance was refused); delivering the CT only");
      return true;
    }
    job.findings.report = "none";
    job.to_deliver.clear();
    for (const auto& [uid, inst] : stored) job.to_deliver.insert(uid);
    log::Info("results", "scan " + job.scan_uid + ": no AI report (SR) within " +
                             std::to_string(report_wait_.count()) + " ms of a complete CT series; delivering the CT");
    return true;
  }

  std::vector<results::SegReferences> segs;
  for (const auto& [uid, refs] : job.segs) segs.push_back(refs);
  std::set<std::string> members;
  std::string waiting;
  for (const auto& uid : report_uids) {
    const results::SrSummary& sr = job.reports.at(uid);
    auto verdict = results::CheckResultSet(job.local_study_uid, sr, stored, pending, job.refused, segs);
    if (verdict.state == results::ResultSetVerdict::State::kRefused) {
      if (job.set_refusal.empty()) {
        job.set_refusal = verdict.reason;
        log::Error("results", "scan " + job.scan_uid + ": AI result set refused, nothing of it is delivered: " +
                                  verdict.reason);
      }
      if (!ct_complete) return false;  // the CT series is still delivered once it is complete
      job.findings = {};
      job.findings.report = "refused";
      job.findings.refused_reason = job.set_refusal;
      job.to_deliver = all_ct();
      return true;
    }
    if (verdict.state == results::ResultSetVerdict::State::kWaiting) {
      waiting = verdict.reason;
      continue;
    }
    members.insert(verdict.members.begin(), verdict.members.end());
  }
  if (!waiting.empty()) {
    log::Debug("results", "scan " + job.scan_uid + ": " + waiting);
    return false;
  }
  job.findings = {};
  job.findings.report = "received";
  job.findings.findings = job.reports.at(report_uids.back()).findings;
  job.to_deliver = all_ct();
  job.to_deliver.insert(members.begin(), members.end());
  return true;
}

Expected<std::optional<results::InstanceInfo>> ResultsFetcher::FetchInstance(Job& job,
                                                                             transport::dicomweb::Client& dicomweb,
                                                                             const std::string& series_uid,
                                                                             const std::string& sop_instance_uid) {
  const std::string label = "result instance " + sop_instance_uid + " of scan " + job.scan_uid;
  // The spool budget bounds the download: none starts without room, and one larger than the
  // room left stops there (nothing of it reaches the disk).
  const std::uint64_t room = spool_.ResultsRoom();
  if (room == 0) {
    auto st = spool_.CheckResultsRoom(1, label);
    return MakeError(st ? Error(ErrorKind::kNoSpace, label + " not downloaded: the spool has no room left") : st.error());
  }
  const std::uint64_t cap = std::min<std::uint64_t>(results_.max_instance_bytes, room);
  bool over_limit = false;
  auto bytes = dicomweb.RetrieveInstance(job.study_uid, series_uid, sop_instance_uid, cap, &over_limit);
  if (!bytes && over_limit && cap < results_.max_instance_bytes) {
    auto st = spool_.CheckResultsRoom(cap + 1, label);
    return MakeError(ErrorKind::kNoSpace,
                     (st ? label + " does not fit the " + std::to_string(cap) + " bytes the spool has left"
                         : st.error().message()) +
                         " (download stopped at that size)");
  }
  if (!bytes) return MakeError(bytes.error());

  // A bad instance from the cloud is refused: never stored, never delivered, and it does not
  // count towards a complete series.
  const auto refuse = [&](const std::string& why) -> Expected<std::optional<results::InstanceInfo>> {
    log::Error("results", "scan " + job.scan_uid + ": refused " + why);
    if (job.refused.empty()) job.first_refusal = why;
    job.refused.insert(sop_instance_uid);
    return std::optional<results::InstanceInfo>();
  };
  auto info = results::ValidateInstance(*bytes, job.study_uid, results::DefaultAllowedSopClasses());
  if (const std::string why = RefusalOf(info, sop_instance_uid, series_uid, job.mapping, *bytes); !why.empty()) {
    return refuse(why);
  }
  auto stored_path = spool_.StoreResult(job.scan_uid, sop_instance_uid, *bytes);
  if (!stored_path) return MakeError(stored_path.error());
  if (auto st = spool_.Update(job.scan_uid, [&](spool::ScanRecord& r) {
        for (const auto& existing : r.results) {
          if (existing.sop_instance_uid == sop_instance_uid) return;
        }
        r.results.push_back({sop_instance_uid, info->series_uid, info->sop_class_uid, false});
      });
      !st) {
    return MakeError(st.error());
  }
  return std::optional<results::InstanceInfo>(std::move(*info));
}

Status ResultsFetcher::FetchBatch(Job& job, transport::dicomweb::Client& dicomweb, const std::string& series_uid,
                                  const std::vector<std::string>& sop_instance_uids,
                                  std::vector<results::InstanceInfo>& kept) {
  if (sop_instance_uids.empty()) return Ok();
  const std::uint64_t room = spool_.ResultsRoom();
  if (room == 0) {
    const std::string label = "result instance " + sop_instance_uids.front() + " of scan " + job.scan_uid;
    auto st = spool_.CheckResultsRoom(1, label);
    return MakeError(st ? Error(ErrorKind::kNoSpace, label + " not downloaded: the spool has no room left") : st.error());
  }
  // Each download of the batch gets its share of max_instance_bytes (so the batch holds no more
  // than one download at a time did) and no more than the room left; one past its cap is fetched
  // again alone below, where FetchInstance tells a too-large instance from a full spool.
  const std::uint64_t cap = std::min<std::uint64_t>(results_.max_instance_bytes / kBatchInstances, room);
  while (job.download_http.size() < kParallelFetches) {
    job.download_http.push_back(std::make_unique<transport::HttpClient>(http_options_));
  }
  struct Download {
    std::optional<Expected<std::vector<std::uint8_t>>> bytes;
    bool over_limit = false;
    std::optional<Expected<results::InstanceInfo>> info;
  };
  std::vector<Download> downloads(sop_instance_uids.size());
  // Each download thread takes the next instance of the batch until none is left.
  std::atomic<std::size_t> next{0};
  const std::size_t threads = std::min(kParallelFetches, sop_instance_uids.size());
  std::latch finished(static_cast<std::ptrdiff_t>(threads));
  for (std::size_t t = 0; t < threads; ++t) {
    boost::asio::post(downloads_, [&, t] {
      transport::dicomweb::Client client(*job.download_http[t], dicomweb_url_);
      client.SetDeadline(job.deadline, [this] { return !stopping_.load(); });
      for (std::size_t i = next++; i < sop_instance_uids.size(); i = next++) {
        Download& d = downloads[i];
        d.bytes = client.RetrieveInstance(job.study_uid, series_uid, sop_instance_uids[i], cap, &d.over_limit);
        if (*d.bytes) {
          d.info = results::ValidateInstance(**d.bytes, job.study_uid, results::DefaultAllowedSopClasses());
        }
      }
      finished.count_down();
    });
  }
  finished.wait();

  // In the order listed: refusals recorded, the accepted ones kept together, the first
  // download error returned once they are.
  Status first_error = Ok();
  std::vector<std::string> alone;  // past the parallel cap: fetched one at a time
  std::vector<std::size_t> accepted;
  for (std::size_t i = 0; i < downloads.size(); ++i) {
    const std::string& uid = sop_instance_uids[i];
    Download& d = downloads[i];
    if (!*d.bytes) {
      if (d.over_limit) {
        alone.push_back(uid);
      } else if (first_error) {
        first_error = MakeError(d.bytes->error());
      }
      continue;
    }
    // A bad instance from the cloud is refused: never stored, never delivered, and it does not
    // count towards a complete series.
    const std::string refusal = RefusalOf(*d.info, uid, series_uid, job.mapping, **d.bytes);
    if (!refusal.empty()) {
      log::Error("results", "scan " + job.scan_uid + ": refused " + refusal);
      if (job.refused.empty()) job.first_refusal = refusal;
      job.refused.insert(uid);
      continue;
    }
    accepted.push_back(i);
  }

  // Files first, durably as one batch, then the record once: what the record lists is on disk.
  std::vector<std::size_t> stored;
  Status store_error = Ok();
  if (!accepted.empty()) {
    std::vector<spool::Spool::ResultToStore> items;
    for (std::size_t i : accepted) items.push_back({sop_instance_uids[i], **downloads[i].bytes});
    auto paths = spool_.StoreResults(job.scan_uid, items);
    if (paths) {
      stored = accepted;
    } else if (paths.error().kind() == ErrorKind::kNoSpace) {
      // Not all of them fit: one at a time, as many as there is room for.
      for (std::size_t i : accepted) {
        auto path = spool_.StoreResult(job.scan_uid, sop_instance_uids[i], **downloads[i].bytes);
        if (!path) {
          store_error = MakeError(path.error());
          break;
        }
        stored.push_back(i);
      }
    } else {
      store_error = MakeError(paths.error());
    }
  }
  if (!stored.empty()) {
    if (auto st = spool_.Update(job.scan_uid, [&](spool::ScanRecord& r) {
          for (std::size_t i : stored) {
            const results::InstanceInfo& info = **downloads[i].info;
            const bool known = std::any_of(r.results.begin(), r.results.end(), [&](const spool::ResultRecord& e) {
              return e.sop_instance_uid == info.sop_instance_uid;
            });
            if (!known) r.results.push_back({info.sop_instance_uid, info.series_uid, info.sop_class_uid, false});
          }
        });
        !st) {
      return MakeError(st.error());
    }
    for (std::size_t i : stored) kept.push_back(std::move(**downloads[i].info));
  }
  if (!store_error) return store_error;
  if (!first_error) return first_error;
  downloads.clear();  // the batch's bytes are freed before one is fetched alone
  downloads.shrink_to_fit();
  for (const auto& uid : alone) {
    auto info = FetchInstance(job, dicomweb, series_uid, uid);
    if (!info) return MakeError(info.error());
    if (*info) kept.push_back(std::move(**info));
  }
  return Ok();
}

void ResultsFetcher::Deliver(std::shared_ptr<Job> job) {
  if (!console_.enabled) {
    Complete(*job, Ok());
    return;
  }
  boost::asio::post(worker_, [this, job] {
    Status status = Ok();
    auto record = spool_.Get(job->scan_uid);
    if (!record) {
      status = MakeError(record.error());
    } else {
      // Only what the set check chose: instances outside an accepted set stay in the spool.
      std::vector<std::filesystem::path> files;
      std::map<std::string, std::string> uid_by_file;
      for (const auto& r : record->results) {
        if (r.delivered || !job->to_deliver.count(r.sop_instance_uid)) continue;
        files.push_back(spool_.ResultPath(job->scan_uid, r.sop_instance_uid));
        uid_by_file[files.back().string()] = r.sop_instance_uid;
      }
      results::ConsoleNode node{console_.host, console_.port, console_.called_ae, console_.calling_ae, 30};
      auto report = results::DeliverToConsole(node, files);
      if (report) job->findings.timeline_unix_ms.delivered = UnixMsNow();
      if (!report) {
        status = MakeError(report.error());
      } else {
        std::set<std::string> delivered;
        for (const auto& path : report->delivered) delivered.insert(uid_by_file[path.string()]);
        job->delivered += static_cast<std::uint32_t>(delivered.size());
        // A class the console does not take will not be taken on a retry either: the operator
        // is told (outcome, log, findings) and the rest counts as delivered. A failure status
        // (e.g. out of resources) may pass: the scan stays undelivered and is retried.
        std::map<std::string, std::size_t> refused_by_class;
        std::string failed_status;
        for (const auto& refusal : report->refused) {
          const bool by_class = std::find(report->refused_sop_classes.begin(), report->refused_sop_classes.end(),
                                          refusal.sop_class_uid) != report->refused_sop_classes.end();
          if (by_class) {
            ++refused_by_class[refusal.sop_class_uid];
          } else if (failed_status.empty()) {
            failed_status = refusal.reason;
          }
        }
        for (const auto& [sop_class, count] : refused_by_class) {
          const std::string entry = results::SopClassName(sop_class) + ": " + std::to_string(count) +
                                    " instance(s) not accepted by the console";
          job->findings.console_refused.push_back(entry);
          log::Warn("results", "scan " + job->scan_uid + ": console " + console_.called_ae + " refused " + entry);
        }
        if (!refused_by_class.empty()) {
          std::string classes;
          for (const auto& entry : job->findings.console_refused) classes += (classes.empty() ? "" : "; ") + entry;
          job->console_refusal = "the console (" + console_.called_ae + ") did not take " + classes +
                                 "; the other " + std::to_string(delivered.size()) +
                                 " instance(s) were delivered; check the console's storage configuration";
        }
        // Again after the delivery: what the console refused, and when it acknowledged.
        if (Status st = results::WriteScanFindings(spool_.ResultPath(job->scan_uid, "x").parent_path(), job->findings);
            !st) {
          log::Warn("results", "scan " + job->scan_uid + ": findings not recorded for status: " + st.error().message());
        }
        const bool all_done = failed_status.empty();
        status = spool_.Update(job->scan_uid, [&](spool::ScanRecord& r) {
          for (auto& res : r.results) {
            if (delivered.count(res.sop_instance_uid)) res.delivered = true;
          }
          if (all_done) r.state = spool::ScanState::kDelivered;
        });
        if (status && !all_done) status = MakeError(ErrorKind::kProtocol, failed_status);
      }
    }
    boost::asio::post(io_, [job, status] { Complete(*job, status); });
  });
}

}  // namespace ctagent::core
