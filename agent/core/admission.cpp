#include "agent/core/admission.hpp"

#include <algorithm>
#include <cmath>

namespace ctagent::core {

std::uint32_t UploadsToAdmit(double rate_bytes_per_s, std::chrono::nanoseconds round_trip,
                             std::uint64_t bytes_per_upload, std::uint32_t minimum, std::uint32_t maximum) {
  maximum = std::max(maximum, minimum);
  if (!(rate_bytes_per_s > 0) || round_trip.count() <= 0 || bytes_per_upload == 0) return minimum;
  const double seconds = std::chrono::duration<double>(round_trip).count();
  const double wanted =
      std::ceil(kRoundTripsPerAdmission * rate_bytes_per_s * seconds / static_cast<double>(bytes_per_upload)) + 1.0;
  if (!(wanted < static_cast<double>(maximum))) return maximum;  // also a rate so large it is not finite
  return std::max(minimum, static_cast<std::uint32_t>(wanted));
}

void AdmissionEstimator::NoteRoundTrip(std::chrono::nanoseconds sample, Clock::time_point now) {
  if (sample.count() <= 0) return;
  if (rtt_bucket_start_ == Clock::time_point{} || now - rtt_bucket_start_ >= kRoundTripBucket) {
    // A new bucket; the one before it is kept, so the estimate covers 5 to 10 s.
    rtt_previous_ = rtt_bucket_start_ != Clock::time_point{} && now - rtt_bucket_start_ < 2 * kRoundTripBucket
                        ? rtt_current_
                        : std::chrono::nanoseconds(0);
    rtt_current_ = sample;
    rtt_bucket_start_ = now;
    return;
  }
  rtt_current_ = std::min(rtt_current_, sample);
}

std::chrono::nanoseconds AdmissionEstimator::round_trip() const {
  if (rtt_previous_.count() <= 0) return rtt_current_;
  if (rtt_current_.count() <= 0) return rtt_previous_;
  return std::min(rtt_current_, rtt_previous_);
}

void AdmissionEstimator::NoteConfirmed(std::uint64_t bytes, Clock::time_point now) {
  confirmed_ += bytes;
  if (mark_time_ == Clock::time_point{}) {
    mark_time_ = now;
    mark_bytes_ = confirmed_;  // the first period starts here: bytes confirmed now were sent before it
    return;
  }
  const auto period = std::max<Clock::duration>(kShortestRatePeriod, 2 * round_trip());
  const auto span = now - mark_time_;
  if (span < period) return;
  rates_[next_rate_] =
      static_cast<double>(confirmed_ - mark_bytes_) / std::chrono::duration<double>(span).count();
  next_rate_ = (next_rate_ + 1) % kRatePeriods;
  mark_time_ = now;
  mark_bytes_ = confirmed_;
}

double AdmissionEstimator::rate_bytes_per_s() const { return *std::max_element(std::begin(rates_), std::end(rates_)); }

void AdmissionEstimator::NotePatch(std::uint64_t bytes) {
  if (bytes == 0) return;
  // A moving mean over about the last 16 PATCHes.
  patch_bytes_mean_ = patch_bytes_mean_ == 0 ? static_cast<double>(bytes)
                                             : patch_bytes_mean_ + (static_cast<double>(bytes) - patch_bytes_mean_) / 16.0;
}

std::uint32_t AdmissionEstimator::Admit(std::uint32_t minimum, std::uint32_t maximum) const {
  return UploadsToAdmit(rate_bytes_per_s(), round_trip(), static_cast<std::uint64_t>(patch_bytes_mean_), minimum,
                        maximum);
}

}  // namespace ctagent::core
