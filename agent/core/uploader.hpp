// The uploader: moves spooled chunks and manifests to the imaging center with tus, on a
// bounded pool of transfer threads (one HTTPS connection each), and journals progress in the
// spool so that any interruption resumes from the server's offset.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "agent/core/http_options.hpp"
#include "agent/core/retry.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "transport/http.hpp"

namespace ctagent::core {

struct UploadCounters {
  std::atomic<std::uint64_t> bytes_sent{0};       // payload bytes the server confirmed
  std::atomic<std::uint32_t> uploads_done{0};
  std::atomic<std::uint32_t> retries{0};
};

class Uploader {
 public:
  using Done = std::function<void(Status)>;

  Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
           RetryPolicy retry = {});
  ~Uploader();

  // Both run the blocking transfer on a transfer thread and call `done` on the io_context,
  // after retrying transient failures with backoff. Permanent failures (TLS, permission,
  // corrupt spool file) are not retried.
  void UploadChunk(const std::string& scan_uid, std::uint32_t index, Done done);
  void UploadManifest(const std::string& scan_uid, Done done);

  const UploadCounters& counters() const { return counters_; }
  void Stop();

 private:
  struct Job;
  void Start(std::shared_ptr<Job> job);
  Status Transfer(Job& job, transport::HttpClient& http);
  std::unique_ptr<transport::HttpClient> TakeClient();
  void ReturnClient(std::unique_ptr<transport::HttpClient> client);

  boost::asio::io_context& io_;
  spool::Spool& spool_;
  config::CloudConfig cloud_;
  RetryPolicy retry_;
  boost::asio::thread_pool transfers_;
  std::mutex clients_mutex_;
  std::vector<std::unique_ptr<transport::HttpClient>> idle_clients_;
  UploadCounters counters_;
  std::mt19937_64 rng_{std::random_device{}()};
  std::atomic<bool> stopping_{false};
};

}  // namespace ctagent::core
