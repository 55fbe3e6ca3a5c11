#include "drivers/sim/sim_announce.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <system_error>
#include <utility>

namespace ctagent::drivers::sim {
namespace {

// How often a wait looks for the request file.
constexpr auto kRequestPoll = std::chrono::milliseconds(100);

Unexpected AnnounceError(const std::string& key, const std::string& what) {
  return MakeError(ErrorKind::kInvalidInput, "sim detector options: /announce" + key + ": " + what);
}

Expected<std::chrono::milliseconds> Seconds(const nlohmann::json& v, const std::string& key, double min) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < min || v.get<double>() > 86400) {
    return AnnounceError("/" + key, "expected seconds from " + std::to_string(min) + " to 86400, found " + v.dump());
  }
  return std::chrono::milliseconds(std::llround(v.get<double>() * 1000));
}

}  // namespace

Expected<AnnounceOptions> ParseAnnounceOptions(const nlohmann::json& j) {
  if (!j.is_object()) {
    return AnnounceError("", "expected an object like {\"every_s\": 5, \"count\": 5} or {\"request_file\": \"...\"}");
  }
  AnnounceOptions o;
  for (const auto& [key, value] : j.items()) {
    if (key == "every_s") {
      auto s = Seconds(value, key, 0.001);
      if (!s) return MakeError(s.error());
      o.every = *s;
    } else if (key == "first_after_s") {
      auto s = Seconds(value, key, 0);
      if (!s) return MakeError(s.error());
      o.first_after = *s;
    } else if (key == "count") {
      if (!value.is_number_integer() || value.get<std::int64_t>() < 0 || value.get<std::int64_t>() > 100000) {
        return AnnounceError("/count", "expected a number of scans from 0 to 100000, found " + value.dump());
      }
      o.count = value.get<std::uint32_t>();
    } else if (key == "request_file") {
      if (!value.is_string() || value.get<std::string>().empty()) {
        return AnnounceError("/request_file", "expected the path of a file whose appearance starts a scan");
      }
      o.request_file = value.get<std::string>();
    } else if (key == "protocol") {
      auto p = ProtocolFromJson(value);
      if (!p) return MakeError(p.error().WithContext("sim detector options: /announce/protocol"));
      o.protocol = *p;
    } else if (key == "accession_prefix") {
      if (!value.is_string() || value.get<std::string>().size() > 8) {
        return AnnounceError("/accession_prefix", "expected a string of at most 8 characters");
      }
      o.accession_prefix = value.get<std::string>();
    } else {
      return AnnounceError("/" + key, "unknown key; use every_s, first_after_s, count, request_file, protocol, "
                                      "accession_prefix");
    }
  }
  if (o.count == 0 && o.request_file.empty()) {
    return AnnounceError("", "announces nothing: set count (with every_s) for a schedule, or request_file");
  }
  if (o.first_after.count() < 0) o.first_after = o.every;
  return o;
}

AnnouncingDetector::AnnouncingDetector(std::unique_ptr<Detector> inner, AnnounceOptions options)
    : inner_(std::move(inner)), options_(std::move(options)) {}

void AnnouncingDetector::Abort() {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
  }
  wake_.notify_all();
  inner_->Abort();
}

std::optional<std::chrono::steady_clock::time_point> AnnouncingDetector::NextDue() const {
  if (scheduled_done_ >= options_.count) return std::nullopt;
  return opened_ + options_.first_after + options_.every * scheduled_done_;
}

bool AnnouncingDetector::TakeRequest() {
  if (options_.request_file.empty()) return false;
  std::error_code ec;
  return std::filesystem::remove(options_.request_file, ec) && !ec;
}

Expected<std::optional<ScanAnnouncement>> AnnouncingDetector::WaitForScan(std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {  // bounded by `until`
    {
      std::lock_guard lock(mutex_);
      if (aborted_) {
        aborted_ = false;
        return MakeError(ErrorKind::kCancelled, "sim detector: waiting for a scan was aborted");
      }
    }
    const auto now = std::chrono::steady_clock::now();
    const auto due = NextDue();
    if (due && *due <= now) {
      ++scheduled_done_;
      return Announce();
    }
    if (TakeRequest()) return Announce();
    if (now >= until) return std::optional<ScanAnnouncement>{};
    auto wake_at = until;
    if (due) wake_at = std::min(wake_at, *due);
    if (!options_.request_file.empty()) wake_at = std::min(wake_at, now + kRequestPoll);
    std::unique_lock lock(mutex_);
    wake_.wait_until(lock, wake_at, [this] { return aborted_; });
  }
}

Expected<std::optional<ScanAnnouncement>> AnnouncingDetector::Announce() {
  ScanAnnouncement a;
  a.protocol = options_.protocol;
  a.protocol.seed = options_.protocol.seed + announced_;
  ++announced_;
  char number[16];
  std::snprintf(number, sizeof number, "%04u", announced_);
  a.accession_number = options_.accession_prefix + number;
  a.procedure_step_id = std::string("SPS") + number;
  if (auto st = inner_->Arm(a.protocol); !st) {
    return MakeError(st.error().WithContext("sim detector: arming the announced scan " + a.accession_number));
  }
  return std::optional<ScanAnnouncement>(std::move(a));
}

}  // namespace ctagent::drivers::sim
