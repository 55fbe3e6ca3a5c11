// The link manager: the configured network links (cloud.links: wired, 5G, ...), their health
// probes, failover and fail-back, and a bandwidth cap per link (a token bucket shared by every
// transfer on the link, with a cap that may change by local time of day). It implements the
// uploader's LinkProvider contract (agent/core/link_provider.hpp). docs/links.md has the rules.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "agent/core/link_provider.hpp"
#include "transport/http.hpp"

namespace ctagent::core {

// A time window with its own cap, in local time. end_minute <= start_minute wraps past
// midnight (22:00-06:00); the window then belongs to the day it starts on.
struct ScheduleWindow {
  std::uint8_t days = 0x7f;         // bit 0 Monday ... bit 6 Sunday
  std::uint32_t start_minute = 0;   // minutes after local midnight
  std::uint32_t end_minute = 0;     // exclusive
  std::uint64_t max_bits_per_s = 0; // the cap inside the window; 0: uncapped
};

struct LinkConfig {
  std::string name;
  std::string interface_name;  // bind to this interface ("" : any)
  std::string source_address;  // or to this local address ("" : any)
  std::uint32_t priority = 1;  // 1 is preferred over 2
  std::uint64_t max_bits_per_s = 0;  // cap outside any schedule window; 0: uncapped
  std::vector<ScheduleWindow> schedule;
  std::uint32_t probe_interval_ms = 2000;
  std::uint32_t probe_timeout_s = 2;
};

// Reads cloud.links: an object of link objects keyed by link name (see docs/links.md). An empty
// object means "no link management": one default link over the system's routing, uncapped.
Expected<std::vector<LinkConfig>> ParseLinks(const nlohmann::json& links);

// The cap in force at a local time: the first schedule window containing it, else the link's
// max_bits_per_s.
std::uint64_t CapAt(const LinkConfig& link, const std::tm& local_time);

// A token bucket in bytes. Reserve() never sleeps: it books the bytes and says how long the
// caller must wait before sending them, so it is exact under a fake clock.
class TokenBucket {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  TokenBucket(std::uint64_t bits_per_s, TimePoint now);
  // 0: uncapped (Reserve returns 0 at once).
  void SetRate(std::uint64_t bits_per_s, TimePoint now);
  std::uint64_t bits_per_s() const { return bits_per_s_; }
  std::chrono::nanoseconds Reserve(std::size_t bytes, TimePoint now);

 private:
  void Refill(TimePoint now);
  std::uint64_t bits_per_s_ = 0;
  double tokens_ = 0;     // bytes; negative when sends are booked ahead
  double capacity_ = 0;   // burst: 50 ms of the rate, at least 16 KiB
  TimePoint last_{};
};

// Checks that a link can reach the upload endpoint now. kNetwork (or any error) : unusable.
class LinkProber {
 public:
  virtual ~LinkProber() = default;
  virtual Status Probe(const LinkConfig& link) = 0;
};

// The production prober: a tus OPTIONS request to the upload endpoint over the link (bound to
// its interface or source address), with the link's probe timeout. Any HTTP answer counts as
// up. `options`: TLS and authentication, e.g. core::MakeHttpOptions(cfg.cloud).
std::unique_ptr<LinkProber> MakeHttpProber(const std::string& upload_url, const transport::HttpOptions& options);

struct LinkClock {
  std::function<std::chrono::steady_clock::time_point()> now = [] { return std::chrono::steady_clock::now(); };
  // Local calendar time, for the schedule.
  std::function<std::tm()> local_time = [] {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    return tm;
  };
};

struct LinkManagerOptions {
  std::uint32_t fail_after = 2;     // consecutive failures (probes or reported requests) : down
  std::uint32_t recover_after = 3;  // consecutive good probes : up again (fail-back hysteresis)
};

struct LinkState {
  std::string name;
  bool up = true;
  bool active = false;
  std::uint64_t cap_bits_per_s = 0;
  std::uint32_t failures = 0;
  std::uint32_t successes = 0;
  std::string last_problem;  // the last failure's message ("" : none)
};

class LinkManager : public LinkProvider {
 public:
  LinkManager(std::vector<LinkConfig> links, std::unique_ptr<LinkProber> prober, LinkClock clock = {},
              LinkManagerOptions options = {});
  ~LinkManager() override;
  LinkManager(const LinkManager&) = delete;
  LinkManager& operator=(const LinkManager&) = delete;

  // Starts one probe thread per link (probing at each link's interval, and at once after a
  // reported failure). Without Start(), Tick() drives the probes (tests).
  void Start();
  // Stops the probe threads and revokes every lease (before_send returns false).
  void Stop();
  // Runs the probes that are due now, on the calling thread.
  void Tick();

  Expected<LinkLease> Acquire() override;
  void Report(const std::string& link_name, const Status& outcome) override;

  std::vector<LinkState> Snapshot();
  std::string ActiveLink();  // "" when none is up

 private:
  struct Link;
  void ProbeIfDue(Link& link);
  void RecordLocked(Link& link, bool ok, const std::string& problem);
  void ApplyScheduleLocked();
  Link* BestLocked();
  bool Pace(const std::shared_ptr<Link>& link, std::uint64_t generation, std::size_t bytes);
  std::optional<std::chrono::nanoseconds> Reserve(const std::shared_ptr<Link>& link, std::uint64_t generation,
                                                  std::size_t bytes);

  std::vector<std::shared_ptr<Link>> links_;
  std::unique_ptr<LinkProber> prober_;
  LinkClock clock_;
  LinkManagerOptions options_;
  std::mutex mutex_;
  std::condition_variable changed_;  // a link's state changed, a probe was asked for, or Stop()
  bool stopping_ = false;
  std::string active_;
  std::vector<std::thread> threads_;
};

}  // namespace ctagent::core
