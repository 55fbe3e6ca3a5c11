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

ByteBudget::Watch& ByteBudget::Watch::operator=(Watch&& other) noexcept {
  if (this != &other) {
    reset();
    budget_ = std::move(other.budget_);
    entry_ = other.entry_;
  }
  return *this;
}

void ByteBudget::Watch::reset() {
  if (budget_ == nullptr) return;
  std::shared_ptr<ByteBudget> budget = std::move(budget_);
  std::lock_guard lock(budget->mutex_);
  budget->watchers_.erase(entry_);
}

std::shared_ptr<ByteBudget> ByteBudget::Make(std::uint64_t capacity_bytes) {
  return std::shared_ptr<ByteBudget>(new ByteBudget(capacity_bytes));
}

void ByteBudget::HoldLocked(std::uint64_t bytes) {
  in_use_ += bytes;
  high_water_ = std::max(high_water_, in_use_);
}

void ByteBudget::NotifyWatchersLocked() {
  for (const auto& room : watchers_) room();
}

ByteBudget::Lease ByteBudget::Take(std::uint64_t bytes, bool* waited) {
  std::unique_lock lock(mutex_);
  const bool wait = !FitsLocked(bytes);
  if (waited != nullptr) *waited = wait;
  if (wait) {
    ++blocked_takes_;
    ++blocked_takers_;
    room_.wait(lock, [&] { return FitsLocked(bytes); });
    --blocked_takers_;
  }
  HoldLocked(bytes);
  // Hand-backs while it waited were kept from TryTake(); what is left is theirs now.
  if (wait && blocked_takers_ == 0) NotifyWatchersLocked();
  return Lease(shared_from_this(), bytes);
}

std::optional<ByteBudget::Lease> ByteBudget::TryTake(std::uint64_t bytes, bool count_refusal) {
  std::lock_guard lock(mutex_);
  if (blocked_takers_ > 0 || !FitsLocked(bytes)) {
    if (count_refusal) ++refused_tries_;
    return std::nullopt;
  }
  HoldLocked(bytes);
  return Lease(shared_from_this(), bytes);
}

ByteBudget::Watch ByteBudget::OnRoom(std::function<void()> room) {
  Watch watch;
  std::lock_guard lock(mutex_);
  watch.entry_ = watchers_.insert(watchers_.end(), std::move(room));
  watch.budget_ = shared_from_this();
  return watch;
}

void ByteBudget::Release(std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  in_use_ -= std::min(bytes, in_use_);
  if (blocked_takers_ > 0) {
    room_.notify_all();
    return;
  }
  NotifyWatchersLocked();
}

ByteBudget::Usage ByteBudget::usage() const {
  std::lock_guard lock(mutex_);
  return Usage{capacity_, in_use_, high_water_, blocked_takes_, refused_tries_};
}

}  // namespace ctagent
