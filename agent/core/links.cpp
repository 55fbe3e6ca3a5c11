#include "agent/core/links.hpp"

#include <algorithm>
#include <cmath>

#include "base/json_integer.hpp"
#include "base/log.hpp"
#include "transport/http.hpp"

namespace ctagent::core {

namespace {

using nlohmann::json;

bool NameOk(const std::string& s) {
  if (s.empty() || s.size() > 32) return false;
  return std::all_of(s.begin(), s.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
           ch == '_' || ch == '-';
  });
}

std::string Found(const json& v) {
  if (v.is_string()) return "string " + v.dump();
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  return v.dump();
}

Unexpected Bad(const std::string& where, const std::string& expected, const json& found) {
  return MakeError(ErrorKind::kInvalidInput,
                   "/cloud/links/" + where + ": expected " + expected + ", found " + Found(found));
}

bool UInt(const json& v, std::uint64_t min, std::uint64_t max, std::uint64_t* out) {
  const std::optional<std::uint64_t> n = IntegerAs<std::uint64_t>(v);
  if (!n || *n < min || *n > max) return false;
  *out = *n;
  return true;
}

// "HH:MM" -> minutes after midnight; "24:00" is allowed as an end.
bool ParseClock(const json& v, std::uint32_t* minutes) {
  if (!v.is_string()) return false;
  const std::string s = v.get<std::string>();
  if (s.size() != 5 || s[2] != ':') return false;
  for (std::size_t i : {0u, 1u, 3u, 4u}) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  const int h = (s[0] - '0') * 10 + (s[1] - '0');
  const int m = (s[3] - '0') * 10 + (s[4] - '0');
  if (m > 59 || h > 24 || (h == 24 && m != 0)) return false;
  *minutes = static_cast<std::uint32_t>(h * 60 + m);
  return true;
}

int DayIndex(const std::string& d) {
  static const char* kDays[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  for (int i = 0; i < 7; ++i) {
    if (d == kDays[i]) return i;
  }
  return -1;
}

// "mon-fri", "sat,sun", "mon,wed-fri", "all" -> bit mask (bit 0 Monday).
bool ParseDays(const json& v, std::uint8_t* mask) {
  if (!v.is_string()) return false;
  const std::string s = v.get<std::string>();
  if (s == "all") {
    *mask = 0x7f;
    return true;
  }
  std::uint8_t out = 0;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const auto comma = std::min(s.find(',', pos), s.size());
    const std::string item = s.substr(pos, comma - pos);
    const auto dash = item.find('-');
    const int a = DayIndex(item.substr(0, dash));
    const int b = dash == std::string::npos ? a : DayIndex(item.substr(dash + 1));
    if (a < 0 || b < 0 || b < a) return false;
    for (int d = a; d <= b; ++d) out = static_cast<std::uint8_t>(out | (1u << d));
    pos = comma + 1;
  }
  *mask = out;
  return out != 0;
}

constexpr std::uint64_t kMaxBits = 100'000'000'000ull;  // 100 Gbit/s

Expected<ScheduleWindow> ParseWindow(const std::string& where, const json& w) {
  if (!w.is_object()) return Bad(where, "an object {days, start, end, max_bits_per_s}", w);
  ScheduleWindow out;
  for (const auto& [key, v] : w.items()) {
    if (key == "days") {
      if (!ParseDays(v, &out.days)) return Bad(where + "/days", "days like \"mon-fri\", \"sat,sun\" or \"all\"", v);
    } else if (key == "start") {
      if (!ParseClock(v, &out.start_minute) || out.start_minute >= 24 * 60)
        return Bad(where + "/start", "a local time \"HH:MM\" from 00:00 to 23:59", v);
    } else if (key == "end") {
      if (!ParseClock(v, &out.end_minute)) return Bad(where + "/end", "a local time \"HH:MM\" from 00:00 to 24:00", v);
    } else if (key == "max_bits_per_s") {
      if (!UInt(v, 0, kMaxBits, &out.max_bits_per_s))
        return Bad(where + "/max_bits_per_s", "an integer from 0 (uncapped) to 100000000000", v);
    } else {
      return MakeError(ErrorKind::kInvalidInput, "/cloud/links/" + where + "/" + key +
                                                     ": unknown key; a window has days, start, end, max_bits_per_s");
    }
  }
  if (!w.contains("start") || !w.contains("end")) {
    return MakeError(ErrorKind::kInvalidInput, "/cloud/links/" + where + ": a window needs \"start\" and \"end\"");
  }
  if (out.start_minute == out.end_minute) {
    return MakeError(ErrorKind::kInvalidInput,
                     "/cloud/links/" + where + ": start and end are equal; use 00:00 to 24:00 for a whole day");
  }
  return out;
}

}  // namespace

Expected<std::vector<LinkConfig>> ParseLinks(const json& links) {
  if (!links.is_object()) return Bad("", "an object of links keyed by name", links);
  std::vector<LinkConfig> out;
  for (const auto& [name, l] : links.items()) {
    if (!NameOk(name)) {
      return MakeError(ErrorKind::kInvalidInput, "/cloud/links/" + name +
                                                     ": a link name has 1 to 32 characters from A-Z a-z 0-9 . _ -");
    }
    if (!l.is_object()) return Bad(name, "an object {interface or source_address, priority, ...}", l);
    LinkConfig c;
    c.name = name;
    for (const auto& [key, v] : l.items()) {
      const std::string where = name + "/" + key;
      std::uint64_t n = 0;
      if (key == "interface") {
        if (!v.is_string() || v.get<std::string>().size() > 15) return Bad(where, "an interface name (at most 15 characters)", v);
        c.interface_name = v.get<std::string>();
      } else if (key == "source_address") {
        if (!v.is_string() || v.get<std::string>().size() > 64) return Bad(where, "a local IP address", v);
        c.source_address = v.get<std::string>();
      } else if (key == "priority") {
        if (!UInt(v, 1, 100, &n)) return Bad(where, "an integer from 1 (preferred) to 100", v);
        c.priority = static_cast<std::uint32_t>(n);
      } else if (key == "max_bits_per_s") {
        if (!UInt(v, 0, kMaxBits, &c.max_bits_per_s)) return Bad(where, "an integer from 0 (uncapped) to 100000000000", v);
      } else if (key == "probe_interval_ms") {
        if (!UInt(v, 100, 600000, &n)) return Bad(where, "an integer from 100 to 600000", v);
        c.probe_interval_ms = static_cast<std::uint32_t>(n);
      } else if (key == "probe_timeout_s") {
        if (!UInt(v, 1, 60, &n)) return Bad(where, "an integer from 1 to 60", v);
        c.probe_timeout_s = static_cast<std::uint32_t>(n);
      } else if (key == "schedule") {
        if (!v.is_array()) return Bad(where, "an array of windows", v);
        for (std::size_t i = 0; i < v.size(); ++i) {
          auto w = ParseWindow(where + "/" + std::to_string(i), v[i]);
          if (!w) return MakeError(w.error());
          c.schedule.push_back(*w);
        }
      } else {
        return MakeError(ErrorKind::kInvalidInput,
                         "/cloud/links/" + where +
                             ": unknown key; a link has interface, source_address, priority, max_bits_per_s, "
                             "schedule, probe_interval_ms, probe_timeout_s");
      }
    }
    if (!c.interface_name.empty() && !c.source_address.empty()) {
      return MakeError(ErrorKind::kInvalidInput,
                       "/cloud/links/" + name + ": give either interface or source_address, not both");
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::uint64_t CapAt(const LinkConfig& link, const std::tm& local) {
  const std::uint32_t minute = static_cast<std::uint32_t>(local.tm_hour * 60 + local.tm_min);
  const int today = (local.tm_wday + 6) % 7;  // tm_wday 0 is Sunday; ours 0 is Monday
  const int yesterday = (today + 6) % 7;
  for (const auto& w : link.schedule) {
    const bool wraps = w.end_minute <= w.start_minute;
    if (!wraps) {
      if ((w.days & (1u << today)) && minute >= w.start_minute && minute < w.end_minute) return w.max_bits_per_s;
    } else {
      // 22:00-06:00: from start to midnight on its day, and to the end on the next morning.
      if ((w.days & (1u << today)) && minute >= w.start_minute) return w.max_bits_per_s;
      if ((w.days & (1u << yesterday)) && minute < w.end_minute) return w.max_bits_per_s;
    }
  }
  return link.max_bits_per_s;
}

// ---- TokenBucket ----------------------------------------------------------------------------

TokenBucket::TokenBucket(std::uint64_t bits_per_s, TimePoint now) : last_(now) { SetRate(bits_per_s, now); }

void TokenBucket::SetRate(std::uint64_t bits_per_s, TimePoint now) {
  Refill(now);
  bits_per_s_ = bits_per_s;
  capacity_ = std::max(16.0 * 1024, static_cast<double>(bits_per_s) / 8 * 0.05);
  tokens_ = std::min(tokens_, capacity_);
}

void TokenBucket::Refill(TimePoint now) {
  if (now > last_ && bits_per_s_ > 0) {
    const double seconds = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(capacity_, tokens_ + seconds * static_cast<double>(bits_per_s_) / 8);
  }
  last_ = std::max(last_, now);
}

std::chrono::nanoseconds TokenBucket::Reserve(std::size_t bytes, TimePoint now) {
  if (bits_per_s_ == 0) return std::chrono::nanoseconds(0);
  Refill(now);
  tokens_ -= static_cast<double>(bytes);
  if (tokens_ >= 0) return std::chrono::nanoseconds(0);
  const double seconds = -tokens_ * 8 / static_cast<double>(bits_per_s_);
  return std::chrono::nanoseconds(static_cast<std::int64_t>(std::ceil(seconds * 1e9)));
}

// ---- The HTTP prober ------------------------------------------------------------------------

namespace {

class HttpProber : public LinkProber {
 public:
  HttpProber(std::string url, transport::HttpOptions base) : url_(std::move(url)), base_(std::move(base)) {}

  Status Probe(const LinkConfig& link) override {
    transport::HttpOptions options = base_;
    options.interface_name = link.interface_name;
    options.source_address = link.source_address;
    options.connect_timeout_s = link.probe_timeout_s;
    options.stall_timeout_s = link.probe_timeout_s;
    options.request_timeout_s = link.probe_timeout_s;
    transport::HttpClient http(options);
    transport::HttpRequest request;
    request.method = "OPTIONS";
    request.url = url_;
    request.headers = {{"Tus-Resumable", "1.0.0"}};
    auto response = http.Perform(request, 64 * 1024);
    if (!response) return MakeError(response.error());
    return Ok();  // any HTTP answer: the path to the server works
  }

 private:
  std::string url_;
  transport::HttpOptions base_;
};

}  // namespace

std::unique_ptr<LinkProber> MakeHttpProber(const std::string& upload_url, const transport::HttpOptions& options) {
  return std::make_unique<HttpProber>(upload_url, options);
}

// ---- LinkManager ----------------------------------------------------------------------------

struct LinkManager::Link {
  Link(LinkConfig c, TokenBucket::TimePoint now) : config(std::move(c)), bucket(0, now), next_probe(now) {}
  LinkConfig config;
  TokenBucket bucket;
  bool up = true;  // optimistic until a failure says otherwise, so the first upload need not wait
  std::uint32_t failures = 0;
  std::uint32_t successes = 0;
  std::string last_problem;
  bool probe_now = false;
  bool probing = false;
  std::chrono::steady_clock::time_point next_probe{};
  std::uint64_t generation = 0;  // bumped when the link goes down: revokes its leases
};

LinkManager::LinkManager(std::vector<LinkConfig> links, std::unique_ptr<LinkProber> prober, LinkClock clock,
                         LinkManagerOptions options)
    : prober_(std::move(prober)), clock_(std::move(clock)), options_(options) {
  const auto now = clock_.now();
  // Stable by priority, so equal priorities keep their configured order.
  std::stable_sort(links.begin(), links.end(),
                   [](const LinkConfig& a, const LinkConfig& b) { return a.priority < b.priority; });
  for (auto& c : links) {
    links_.push_back(std::make_shared<Link>(std::move(c), now));
  }
  std::lock_guard lock(mutex_);
  ApplyScheduleLocked();
  if (auto* best = BestLocked()) active_ = best->config.name;
}

LinkManager::~LinkManager() { Stop(); }

void LinkManager::Start() {
  std::lock_guard lock(mutex_);
  if (!threads_.empty() || stopping_) return;
  for (auto& link : links_) {
    threads_.emplace_back([this, link] {
      while (true) {
        {
          std::unique_lock wait_lock(mutex_);
          changed_.wait_for(wait_lock, std::chrono::milliseconds(50), [&] { return stopping_ || link->probe_now; });
          if (stopping_) return;
        }
        ProbeIfDue(*link);
      }
    });
  }
}

void LinkManager::Stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void LinkManager::Tick() {
  for (auto& link : links_) ProbeIfDue(*link);
}

void LinkManager::ProbeIfDue(Link& link) {
  {
    std::lock_guard lock(mutex_);
    const auto now = clock_.now();
    if (link.probing || (!link.probe_now && now < link.next_probe)) return;
    link.probe_now = false;
    link.probing = true;
    link.next_probe = now + std::chrono::milliseconds(link.config.probe_interval_ms);
  }
  const Status status = prober_->Probe(link.config);  // blocking, bounded by the probe timeout
  {
    std::lock_guard lock(mutex_);
    link.probing = false;
    ApplyScheduleLocked();
    RecordLocked(link, static_cast<bool>(status), status ? "" : "probe: " + status.error().message());
  }
  changed_.notify_all();
}

void LinkManager::RecordLocked(Link& link, bool ok, const std::string& problem) {
  if (ok) {
    link.failures = 0;
    ++link.successes;
    if (!link.up && link.successes >= options_.recover_after) {
      link.up = true;
      log::Info("links", "link " + link.config.name + " is up again (" + std::to_string(link.successes) +
                             " good probes in a row)");
    }
  } else {
    link.successes = 0;
    ++link.failures;
    link.last_problem = problem;
    if (link.up && link.failures >= options_.fail_after) {
      link.up = false;
      ++link.generation;
      log::Warn("links", "link " + link.config.name + " is down after " + std::to_string(link.failures) +
                             " failures in a row (" + problem + ")");
    }
  }
  Link* best = BestLocked();
  const std::string now_active = best != nullptr ? best->config.name : "";
  if (now_active != active_) {
    if (now_active.empty()) {
      log::Warn("links", "no link is up (was using " + active_ + "); uploads wait and retry");
    } else {
      log::Info("links", "uploading over link " + now_active + (active_.empty() ? "" : " (was " + active_ + ")"));
    }
    active_ = now_active;
  }
}

void LinkManager::ApplyScheduleLocked() {
  if (links_.empty()) return;
  const std::tm local = clock_.local_time();
  const auto now = clock_.now();
  for (auto& link : links_) {
    const std::uint64_t cap = CapAt(link->config, local);
    if (cap != link->bucket.bits_per_s()) {
      log::Info("links", "link " + link->config.name + " cap now " +
                             (cap == 0 ? std::string("none") : std::to_string(cap) + " bit/s"));
      link->bucket.SetRate(cap, now);
    }
  }
}

LinkManager::Link* LinkManager::BestLocked() {
  for (auto& link : links_) {  // sorted by priority
    if (link->up) return link.get();
  }
  return nullptr;
}

Expected<LinkLease> LinkManager::Acquire() {
  if (links_.empty()) return LinkLease{"default", "", "", {}, {}};
  std::lock_guard lock(mutex_);
  if (stopping_) return MakeError(ErrorKind::kCancelled, "the link manager is stopping");
  ApplyScheduleLocked();
  Link* best = BestLocked();
  if (best == nullptr) {
    std::string states;
    for (const auto& link : links_) {
      states += (states.empty() ? "" : "; ") + link->config.name + ": down (" + link->last_problem + ")";
    }
    return MakeError(ErrorKind::kNetwork, "no network link is up (" + states +
                                              "); uploads resume when a probe succeeds; check cables, modem and "
                                              "`ctagent check --only link`");
  }
  LinkLease lease{best->config.name, best->config.interface_name, best->config.source_address, {}, {}};
  const bool may_cap = best->config.max_bits_per_s > 0 || !best->config.schedule.empty();
  if (may_cap) {
    std::shared_ptr<Link> shared;
    for (auto& l : links_) {
      if (l.get() == best) shared = l;
    }
    const std::uint64_t generation = best->generation;
    lease.before_send = [this, shared, generation](std::size_t bytes) { return Pace(shared, generation, bytes); };
    lease.reserve = [this, shared, generation](std::size_t bytes) { return Reserve(shared, generation, bytes); };
  }
  return lease;
}

bool LinkManager::Pace(const std::shared_ptr<Link>& link, std::uint64_t generation, std::size_t bytes) {
  std::unique_lock lock(mutex_);
  auto revoked = [&] { return stopping_ || link->generation != generation; };
  if (revoked()) return false;
  const auto wait = link->bucket.Reserve(bytes, clock_.now());
  if (wait.count() <= 0) return true;
  // Real time here (the bucket's booking is exact under any clock); a revocation wakes it early.
  changed_.wait_for(lock, wait, revoked);
  return !revoked();
}

std::optional<std::chrono::nanoseconds> LinkManager::Reserve(const std::shared_ptr<Link>& link,
                                                             std::uint64_t generation, std::size_t bytes) {
  std::lock_guard lock(mutex_);
  if (stopping_ || link->generation != generation) return std::nullopt;
  if (bytes == 0) return std::chrono::nanoseconds(0);
  const auto wait = link->bucket.Reserve(bytes, clock_.now());
  return wait.count() > 0 ? wait : std::chrono::nanoseconds(0);
}

void LinkManager::Report(const std::string& link_name, const Status& outcome) {
  // A cancelled request (revoked lease, stopping) says nothing about the link.
  if (!outcome && outcome.error().kind() == ErrorKind::kCancelled) return;
  {
    std::lock_guard lock(mutex_);
    for (auto& link : links_) {
      if (link->config.name != link_name) continue;
      if (!outcome && outcome.error().kind() == ErrorKind::kNetwork) {
        RecordLocked(*link, false, "request: " + outcome.error().message());
        link->probe_now = true;  // confirm at once rather than at the next interval
      } else {
        link->failures = 0;  // the server answered over this link
      }
    }
  }
  changed_.notify_all();
}

std::vector<LinkState> LinkManager::Snapshot() {
  std::lock_guard lock(mutex_);
  std::vector<LinkState> out;
  for (const auto& link : links_) {
    out.push_back({link->config.name, link->up, link->config.name == active_, link->bucket.bits_per_s(),
                   link->failures, link->successes, link->last_problem});
  }
  return out;
}

std::string LinkManager::ActiveLink() {
  std::lock_guard lock(mutex_);
  return active_;
}

}  // namespace ctagent::core
