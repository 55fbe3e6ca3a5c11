// How many uploads the uploader lets send at once on a link: enough to cover the link's measured
// rate x round trip, between cloud.parallel_uploads and cloud.max_uploads_in_flight
// (docs/transport.md, "Uploads in flight"). The rule is a pure function (UploadsToAdmit); the
// estimator keeps the two measurements it needs. Both run on the event loop's thread.
#pragma once

#include <chrono>
#include <cstdint>

namespace ctagent::core {

// An upload's cycle on a path of round trip T spends about 2 T beyond its bytes (the PATCH
// going out while the sender's window opens, and its answer coming back; its completion is then
// journaled without holding its place). Admitting rate x (2 x 2 T) / bytes per upload covers
// that cycle twice over: while the number in flight is what limits the rate, each new
// measurement raises it (by up to half); once the link is full it settles at
// 4 x rate x T / bytes, and the maximum caps it.
inline constexpr double kRoundTripsPerAdmission = 4.0;

// `rate_bytes_per_s`: what the link delivered recently (bytes the server confirmed per second);
// `round_trip`: the path's round trip (the shortest recent request-to-answer time);
// `bytes_per_upload`: the bytes one upload sends per PATCH. Returns
// ceil(kRoundTripsPerAdmission x rate x round_trip / bytes_per_upload) + 1, within
// [minimum, maximum] (maximum below minimum counts as minimum). With no measurement yet (any of
// the three zero), the minimum.
std::uint32_t UploadsToAdmit(double rate_bytes_per_s, std::chrono::nanoseconds round_trip,
                             std::uint64_t bytes_per_upload, std::uint32_t minimum, std::uint32_t maximum);

// The measurements of one link, as the uploader makes them: round trips of requests without a
// body (POST creation, HEAD), bytes the server confirmed, and the size of the PATCHes.
class AdmissionEstimator {
 public:
  using Clock = std::chrono::steady_clock;

  // The round trip is the shortest sample of the last 5 to 10 s: a request that also opened a
  // connection, or waited behind a full queue, does not count, and a path that got longer is
  // seen within 10 s.
  void NoteRoundTrip(std::chrono::nanoseconds sample, Clock::time_point now);
  // The delivered rate is measured over periods of at least max(100 ms, 2 round trips); the
  // estimate is the best of the last 4 periods, so that a gap between scans or one slow period
  // does not drop the count at once.
  void NoteConfirmed(std::uint64_t bytes, Clock::time_point now);
  // A PATCH of this many bytes started (the mean of the recent ones is used).
  void NotePatch(std::uint64_t bytes);

  std::uint32_t Admit(std::uint32_t minimum, std::uint32_t maximum) const;
  std::chrono::nanoseconds round_trip() const;
  double rate_bytes_per_s() const;

 private:
  static constexpr auto kRoundTripBucket = std::chrono::seconds(5);
  // A fresh uploader's count grows by up to half per period while it is what limits the rate,
  // so the period sets how soon a long fat path is full. Two round trips hold an upload's cycle;
  // the floor keeps a short path's periods from being so short that one PATCH's answer more or
  // less swings the rate (at 100 ms, ~13 answers of ~0.9 MiB at 1 Gbit/s).
  static constexpr auto kShortestRatePeriod = std::chrono::milliseconds(100);
  static constexpr int kRatePeriods = 4;
  std::chrono::nanoseconds rtt_current_{0};   // min of the current bucket (0: none)
  std::chrono::nanoseconds rtt_previous_{0};  // min of the bucket before
  Clock::time_point rtt_bucket_start_{};
  std::uint64_t confirmed_ = 0;
  std::uint64_t mark_bytes_ = 0;
  Clock::time_point mark_time_{};
  double rates_[kRatePeriods] = {};
  int next_rate_ = 0;
  double patch_bytes_mean_ = 0;
};

}  // namespace ctagent::core
