// Capped exponential backoff with full jitter, and the cap on attempts per job.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace ctagent::core {

struct RetryPolicy {
  std::chrono::milliseconds initial{500};
  std::chrono::milliseconds max{30000};
  std::uint32_t max_attempts = 10;  // per job and run; the data stays spooled for the next run

  std::chrono::milliseconds Delay(std::uint32_t attempt, std::mt19937_64& rng) const {
    const auto ceiling = std::min<std::int64_t>(max.count(), initial.count() << std::min<std::uint32_t>(attempt, 20));
    std::uniform_int_distribution<std::int64_t> jitter(0, std::max<std::int64_t>(ceiling, 1));
    return std::chrono::milliseconds(jitter(rng));
  }
};

}  // namespace ctagent::core
