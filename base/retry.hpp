// The agent's one retry policy: per failure class (base/error.hpp), capped exponential backoff
// with full jitter, a cap on attempts, and the classes that are never retried because they need
// a person. Uploads (agent/core/uploader) and the results fetch (agent/core/results_fetch) both
// retry by it, and Error::IsTransient() reads it, so the three cannot disagree (a clock that is
// behind is retried everywhere, a rejected certificate nowhere). It lives in base/ because Error
// does. docs/transport.md shows the table.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <random>
#include <string>

#include "base/error.hpp"

namespace ctagent {

struct ClassRetry {
  std::chrono::milliseconds initial{500};
  std::chrono::milliseconds max{30000};
  // Uploads: per job and run, including the first attempt. Results: failed polls in a row.
  std::uint32_t max_attempts = 10;
  bool permanent = false;  // never retried: the operator must act

  bool operator==(const ClassRetry&) const = default;
};

using RetryTable = std::map<FailureClass, ClassRetry>;

// The table docs/transport.md shows (every class has a row).
const RetryTable& DefaultRetryTable();

struct RetryPolicy {
  RetryTable table = DefaultRetryTable();
  // Multiplies every delay (tests shorten backoffs with a small factor).
  double delay_scale = 1.0;

  // The process's policy: the default table, unscaled. Error::IsTransient() reads it, and the
  // agent hands it to the uploader and the results fetcher.
  static const RetryPolicy& Shared();

  ClassRetry For(FailureClass failure) const {
    const auto it = table.find(failure);
    return it != table.end() ? it->second : ClassRetry{};
  }

  // Full jitter: uniform in [0, min(max, initial * 2^attempt)], scaled.
  std::chrono::milliseconds Delay(FailureClass failure, std::uint32_t attempt, std::mt19937_64& rng) const {
    const ClassRetry rule = For(failure);
    const auto ceiling =
        std::min<std::int64_t>(rule.max.count(), rule.initial.count() << std::min<std::uint32_t>(attempt, 20));
    std::uniform_int_distribution<std::int64_t> jitter(0, std::max<std::int64_t>(ceiling, 1));
    return std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(jitter(rng)) * delay_scale));
  }
};

// What the operator reads when a class is not retried ("" for a class without advice, such as
// kLocal, whose message says what failed).
std::string PermanentAdvice(FailureClass failure);

}  // namespace ctagent
