#include "agent/core/results_fetch.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <set>

#include "agent/common/log.hpp"
#include "agent/core/http_options.hpp"
#include "transport/dicomweb.hpp"

namespace ctagent::core {

struct ResultsFetcher::Job {
  std::string scan_uid;
  std::string study_uid;
  std::chrono::steady_clock::time_point deadline;
  std::chrono::milliseconds interval{1000};
  Done done;
  std::unique_ptr<transport::HttpClient> http;  // used on the worker thread only
  std::uint32_t received = 0;                   // counted on the worker thread
  std::uint32_t delivered = 0;
  // Instances refused by this job (by the UID QIDO listed): not downloaded again while the job
  // runs, so a server that keeps sending the wrong bytes costs one download per instance.
  std::set<std::string> refused;
  std::string first_refusal;  // the first refusal's message, for the outcome
  std::string last_problem;   // the last transient error, for the timeout message
  std::set<std::string> duplicates_logged;  // instances listed twice, logged once per job
};

void ResultsFetcher::Complete(Job& job, Status status) {
  if (!job.refused.empty()) {
    const std::string refused = std::to_string(job.refused.size()) +
                                " result instance(s) refused and not delivered; first: " + job.first_refusal;
    status = status ? MakeError(ErrorKind::kProtocol, "scan " + job.scan_uid + ": " + refused)
                    : MakeError(Error(status.error().kind(), status.error().message() + "; " + refused));
  }
  job.done(ResultsOutcome{std::move(status), job.received, job.delivered,
                          static_cast<std::uint32_t>(job.refused.size())});
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
  worker_.join();
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
      auto timer = std::make_shared<boost::asio::steady_timer>(io_, job->interval);
      job->interval = std::min(job->interval * 2, std::chrono::milliseconds(results_.poll_max_interval_ms));
      timer->async_wait([this, job, timer](const boost::system::error_code&) { Poll(job); });
    });
  });
}

Expected<bool> ResultsFetcher::PollOnce(Job& job) {
  transport::dicomweb::Client dicomweb(*job.http, dicomweb_url_);
  // Each request ends by the job's deadline or when the fetcher stops, whatever the server does.
  dicomweb.SetDeadline(job.deadline, [this] { return !stopping_.load(); });
  auto series = dicomweb.SearchSeries(job.study_uid);
  if (!series) return MakeError(series.error());
  auto record = spool_.Get(job.scan_uid);
  if (!record) return MakeError(record.error());
  std::set<std::string> have;
  for (const auto& r : record->results) have.insert(r.sop_instance_uid);

  // Distinct UIDs only: a series or an instance listed twice is one series or one image, so
  // completeness and the counts never rest on a repeated entry.
  std::set<std::string> series_seen;
  std::set<std::string> listed;
  bool any_complete = false;
  for (const auto& s : *series) {
    if (!series_seen.insert(s.series_uid).second) continue;
    auto instances = dicomweb.SearchInstances(job.study_uid, s.series_uid);
    if (!instances) return MakeError(instances.error());
    std::uint32_t stored = 0;
    std::uint32_t expected = 0;
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
        auto info = FetchInstance(job, dicomweb, s.series_uid, inst.sop_instance_uid);
        if (!info) return MakeError(info.error());
        if (!*info) continue;  // refused
        have.insert(inst.sop_instance_uid);
        ++job.received;
        expected = std::max(expected, (*info)->images_in_acquisition);
      } else if (expected == 0) {
        auto info = results::ValidateInstanceFile(spool_.ResultPath(job.scan_uid, inst.sop_instance_uid),
                                                  job.study_uid, results::DefaultAllowedSopClasses());
        if (info) expected = info->images_in_acquisition;
      }
      ++stored;
    }
    if (expected > 0 && stored >= expected) any_complete = true;
  }
  if (any_complete) {
    if (auto st = spool_.Update(job.scan_uid, [](spool::ScanRecord& r) {
          if (r.state == spool::ScanState::kUploaded) r.state = spool::ScanState::kResultsReceived;
        });
        !st) {
      return MakeError(st.error());
    }
  }
  return any_complete;
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
  if (!info) return refuse("instance " + sop_instance_uid + ": " + info.error().message());
  // The bytes must be the instance that was asked for: filed under another UID they could
  // replace a result already kept, or be counted and delivered twice.
  if (info->sop_instance_uid != sop_instance_uid || info->series_uid != series_uid) {
    return refuse("instance " + sop_instance_uid + " of series " + series_uid +
                  ": the imaging center answered with instance " + info->sop_instance_uid + " of series " +
                  info->series_uid + " instead (WADO-RS answer does not match its QIDO-RS entry)");
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
      std::vector<std::filesystem::path> files;
      for (const auto& r : record->results) {
        if (!r.delivered) files.push_back(spool_.ResultPath(job->scan_uid, r.sop_instance_uid));
      }
      results::ConsoleNode node{console_.host, console_.port, console_.called_ae, console_.calling_ae, 30};
      status = files.empty() ? Ok() : results::SendToConsole(node, files);
      if (status) {
        job->delivered += static_cast<std::uint32_t>(files.size());
        status = spool_.Update(job->scan_uid, [](spool::ScanRecord& r) {
          for (auto& res : r.results) res.delivered = true;
          r.state = spool::ScanState::kDelivered;
        });
      }
    }
    boost::asio::post(io_, [job, status] { Complete(*job, status); });
  });
}

}  // namespace ctagent::core
