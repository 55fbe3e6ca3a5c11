#include "base/byte_budget.hpp"

#include <algorithm>
#include <utility>

namespace ctagent {

ByteBudget::Lease& ByteBudget::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    reset();
    budget_ = std::move(other.budget_);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void ByteBudget::Lease::reset() {
  if (budget_ == nullptr) return;
  std::shared_ptr<ByteBudget> budget = std::move(budget_);
  budget->Release(std::exchange(bytes_, 0));
}

std::shared_ptr<ByteBudget> ByteBudget::Make(std::uint64_t capacity_bytes) {
  return std::shared_ptr<ByteBudget>(new ByteBudget(capacity_bytes));
}

ByteBudget::Lease ByteBudget::Take(std::uint64_t bytes, bool* waited) {
  std::unique_lock lock(mutex_);
  const bool wait = !FitsLocked(bytes);
  if (waited != nullptr) *waited = wait;
  if (wait) {
    ++blocked_takes_;
    room_.wait(lock, [&] { return FitsLocked(bytes); });
  }
  in_use_ += bytes;
  high_water_ = std::max(high_water_, in_use_);
  return Lease(shared_from_this(), bytes);
}

void ByteBudget::Release(std::uint64_t bytes) {
  {
    std::lock_guard lock(mutex_);
    in_use_ -= std::min(bytes, in_use_);
  }
  room_.notify_all();
}

ByteBudget::Usage ByteBudget::usage() const {
  std::lock_guard lock(mutex_);
  return Usage{capacity_, in_use_, high_water_, blocked_takes_};
}

}  // namespace ctagent
