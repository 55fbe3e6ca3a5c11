// The uploader: moves spooled chunks and manifests to the imaging center with tus, on a
// bounded pool of transfer threads (one HTTPS connection each), and journals progress in the
// spool so that any interruption resumes from the server's offset.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "agent/core/http_options.hpp"
#include "agent/core/link_provider.hpp"
#include "agent/core/retry.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace ctagent::core {

struct UploadCounters {
  std::atomic<std::uint64_t> bytes_sent{0};       // payload bytes the server confirmed
  std::atomic<std::uint32_t> uploads_done{0};
  std::atomic<std::uint32_t> retries{0};
};

class Uploader {
 public:
  using Done = std::function<void(Status)>;

  // `links`: the link manager that picks the network link for each transfer attempt and paces
  // its bytes; nullptr: the system's routing, no pacing. It must outlive the Uploader.
  Uploader(boost::asio::io_context& io, spool::Spool& spool, const config::CloudConfig& cloud,
           RetryPolicy retry = {}, LinkProvider* links = nullptr);
  ~Uploader();

  // Both run the blocking transfer on a transfer thread and call `done` on the io_context,
  // after retrying with the backoff of the failure's class (RetryPolicy). Permanent failures
  // (certificate rejected, 401/403, 412, 413, corrupt spool file) are not retried: `done` gets
  // an error naming the problem and what to do; the data stays spooled.
  void UploadChunk(const std::string& scan_uid, std::uint32_t index, Done done);
  void UploadManifest(const std::string& scan_uid, Done done);

  const UploadCounters& counters() const { return counters_; }
  void Stop();

 private:
  struct Job;
  void Start(std::shared_ptr<Job> job);
  void Attempt(Job& job);
  Status Transfer(Job& job, transport::HttpClient& http, const std::function<bool(std::size_t)>& before_send);
  Expected<transport::tus::ServerCapabilities> Capabilities(transport::tus::Client& tus);
  std::unique_ptr<transport::HttpClient> TakeClient(const LinkLease& lease);
  void ReturnClient(const std::string& link_name, std::unique_ptr<transport::HttpClient> client);

  boost::asio::io_context& io_;
  spool::Spool& spool_;
  config::CloudConfig cloud_;
  RetryPolicy retry_;
  LinkProvider* links_;
  // TLS sessions, DNS and connections shared by every transfer client.
  std::shared_ptr<transport::HttpShare> share_;
  std::mutex clients_mutex_;
  // Idle clients per link name ("" without a link manager): a client is bound to its link.
  std::map<std::string, std::vector<std::unique_ptr<transport::HttpClient>>> idle_clients_;
  std::optional<transport::tus::ServerCapabilities> capabilities_;  // guarded by clients_mutex_
  boost::asio::thread_pool transfers_;
  UploadCounters counters_;
  std::mt19937_64 rng_{std::random_device{}()};
  std::atomic<bool> stopping_{false};
};

}  // namespace ctagent::core
