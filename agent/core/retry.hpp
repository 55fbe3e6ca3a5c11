// Retries per failure class: capped exponential backoff with full jitter, a cap on attempts per
// job and run, and the classes that are never retried because they need a person (the data stays
// spooled; the next run, after the fix, resumes it). docs/transport.md shows the table.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <random>

#include "transport/http.hpp"

namespace ctagent::core {

struct ClassRetry {
  std::chrono::milliseconds initial{500};
  std::chrono::milliseconds max{30000};
  std::uint32_t max_attempts = 10;  // per job and run, including the first attempt
  bool permanent = false;           // never retried: the operator must act
};

inline std::map<transport::FailureClass, ClassRetry> DefaultRetryTable() {
  using transport::FailureClass;
  using std::chrono::milliseconds;
  const ClassRetry permanent{milliseconds(0), milliseconds(0), 1, true};
  return {
      {FailureClass::kDns, {milliseconds(2000), milliseconds(60000), 10, false}},
      {FailureClass::kConnect, {milliseconds(1000), milliseconds(30000), 10, false}},
      {FailureClass::kTlsHandshake, {milliseconds(1000), milliseconds(30000), 6, false}},
      {FailureClass::kTlsRejected, permanent},
      // A wall clock that jumped back (or a dead RTC battery) until NTP corrects it.
      {FailureClass::kClockSkew, {milliseconds(5000), milliseconds(60000), 10, false}},
      {FailureClass::kStall, {milliseconds(1000), milliseconds(30000), 10, false}},
      // A request past its overall deadline (an answer trickling in, a link far below the floor
      // rate) already waited connect + stall + its bytes at the floor rate: transient, but a few
      // attempts only, so a scan against such a server ends on its own within about three
      // deadlines, its data in the spool for the next run.
      {FailureClass::kTimeout, {milliseconds(1000), milliseconds(30000), 3, false}},
      {FailureClass::kConnectionLost, {milliseconds(500), milliseconds(30000), 10, false}},
      {FailureClass::kServerError, {milliseconds(2000), milliseconds(60000), 8, false}},
      // 409 and 460 are first handled inside the tus client (HEAD + resume, resend); what
      // reaches the job is a repeated failure, retried soon and a few times.
      {FailureClass::kConflict, {milliseconds(200), milliseconds(5000), 5, false}},
      {FailureClass::kLocked, {milliseconds(1000), milliseconds(30000), 10, false}},
      {FailureClass::kChecksum, {milliseconds(200), milliseconds(5000), 5, false}},
      {FailureClass::kUploadGone, {milliseconds(200), milliseconds(5000), 3, false}},
      {FailureClass::kAuth, permanent},
      {FailureClass::kVersion, permanent},
      {FailureClass::kTooLarge, permanent},
      {FailureClass::kEndpoint, permanent},
      {FailureClass::kProtocol, {milliseconds(2000), milliseconds(30000), 3, false}},
      {FailureClass::kLinkDown, {milliseconds(1000), milliseconds(30000), 20, false}},
      {FailureClass::kCancelled, permanent},
      {FailureClass::kLocal, permanent},
      {FailureClass::kNone, permanent},
  };
}

struct RetryPolicy {
  std::map<transport::FailureClass, ClassRetry> table = DefaultRetryTable();
  // Multiplies every delay (tests shorten backoffs with a small factor).
  double delay_scale = 1.0;

  ClassRetry For(transport::FailureClass failure) const {
    const auto it = table.find(failure);
    return it != table.end() ? it->second : ClassRetry{};
  }

  // Full jitter: uniform in [0, min(max, initial * 2^attempt)], scaled.
  std::chrono::milliseconds Delay(transport::FailureClass failure, std::uint32_t attempt, std::mt19937_64& rng) const {
    const ClassRetry rule = For(failure);
    const auto ceiling =
        std::min<std::int64_t>(rule.max.count(), rule.initial.count() << std::min<std::uint32_t>(attempt, 20));
    std::uniform_int_distribution<std::int64_t> jitter(0, std::max<std::int64_t>(ceiling, 1));
    return std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(jitter(rng)) * delay_scale));
  }
};

}  // namespace ctagent::core
