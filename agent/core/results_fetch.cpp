#include "agent/core/results_fetch.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <map>
#include <sstream>

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
};

void ResultsFetcher::Complete(Job& job, Status status) {
  job.done(ResultsOutcome{std::move(status), job.received, job.delivered});
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
      if (!complete) log::Warn("results", "scan " + job->scan_uid + ": " + complete.error().message() + "; will retry");
      if (std::chrono::steady_clock::now() + job->interval > job->deadline) {
        Complete(*job, MakeError(ErrorKind::kNetwork,
                                 "no complete result series for scan " + job->scan_uid + " within " +
                                     std::to_string(results_.timeout_s) +
                                     " s; the raw data is safe in the spool and the agent keeps asking on its "
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
  auto series = dicomweb.SearchSeries(job.study_uid);
  if (!series) return MakeError(series.error());
  auto record = spool_.Get(job.scan_uid);
  if (!record) return MakeError(record.error());
  std::map<std::string, bool> have;
  for (const auto& r : record->results) have[r.sop_instance_uid] = true;

  bool any_complete = false;
  for (const auto& s : *series) {
    auto instances = dicomweb.SearchInstances(job.study_uid, s.series_uid);
    if (!instances) return MakeError(instances.error());
    std::uint32_t stored = 0;
    std::uint32_t expected = 0;
    for (const auto& inst : *instances) {
      const auto path = spool_.ResultPath(job.scan_uid, inst.sop_instance_uid);
      if (!have.count(inst.sop_instance_uid)) {
        auto bytes = dicomweb.RetrieveInstance(job.study_uid, s.series_uid, inst.sop_instance_uid,
                                               results_.max_instance_bytes);
        if (!bytes) return MakeError(bytes.error());
        auto info = results::ValidateInstance(*bytes, job.study_uid, results::DefaultAllowedSopClasses());
        if (!info) {
          // A bad instance from the cloud is reported and skipped, never delivered.
          log::Error("results", "scan " + job.scan_uid + ": rejected instance " + inst.sop_instance_uid + ": " +
                                    info.error().message());
          continue;
        }
        auto stored_path = spool_.StoreResult(job.scan_uid, info->sop_instance_uid, *bytes);
        if (!stored_path) return MakeError(stored_path.error());
        if (auto st = spool_.Update(job.scan_uid, [&](spool::ScanRecord& r) {
              r.results.push_back({info->sop_instance_uid, info->series_uid, info->sop_class_uid, false});
            });
            !st) {
          return MakeError(st.error());
        }
        have[inst.sop_instance_uid] = true;
        ++job.received;
        expected = std::max(expected, info->images_in_acquisition);
      } else if (expected == 0) {
        auto info = results::ValidateInstanceFile(path, job.study_uid, results::DefaultAllowedSopClasses());
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
