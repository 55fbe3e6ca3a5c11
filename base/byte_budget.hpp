// A budget of bytes that several stages draw their large buffers from, so that what they hold
// together stays within one configured bound however their peaks happen to coincide
// (docs/configuration.md, "Memory": the agent's chunk buffers).
//
// Two kinds of taker: threads that may wait (the acquisition thread: Take() blocks) and an event
// loop that must not (the uploader: TryTake(), and a watcher that tells it when bytes came back).
// While a Take() waits, TryTake() gets nothing, so acquisition, which a real detector does not
// let wait long, is never kept waiting by uploads. A request larger than the whole budget is
// granted when nothing else is held (it would otherwise never fit). Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>

namespace ctagent {

class ByteBudget : public std::enable_shared_from_this<ByteBudget> {
 public:
  // Bytes held from the budget, handed back when the lease is destroyed or reset (move-only).
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept { *this = std::move(other); }
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { reset(); }
    void reset();
    std::uint64_t bytes() const { return bytes_; }
    explicit operator bool() const { return budget_ != nullptr; }

   private:
    friend class ByteBudget;
    Lease(std::shared_ptr<ByteBudget> budget, std::uint64_t bytes) : budget_(std::move(budget)), bytes_(bytes) {}
    std::shared_ptr<ByteBudget> budget_;
    std::uint64_t bytes_ = 0;
  };

  // A registered callback, removed when this is destroyed (move-only). The callback runs on the
  // thread that handed bytes back, under the budget's lock: it must only post (to an event loop)
  // and never call the budget.
  class Watch {
   public:
    Watch() = default;
    Watch(Watch&& other) noexcept { *this = std::move(other); }
    Watch& operator=(Watch&& other) noexcept;
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;
    ~Watch() { reset(); }
    void reset();

   private:
    friend class ByteBudget;
    std::shared_ptr<ByteBudget> budget_;
    std::list<std::function<void()>>::iterator entry_;
  };

  static std::shared_ptr<ByteBudget> Make(std::uint64_t capacity_bytes);
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Waits until the bytes fit; `waited` (optional) says whether it had to.
  Lease Take(std::uint64_t bytes, bool* waited = nullptr);
  // Never waits: the lease if the bytes fit and no Take() is waiting, otherwise nothing.
  // `count_refusal`: a refusal counts in Usage::refused_tries (a caller that tries again for the
  // same request passes false, so each request that had to wait counts once).
  std::optional<Lease> TryTake(std::uint64_t bytes, bool count_refusal = true);
  // `room` is called whenever bytes may have become free for TryTake(): after every hand-back
  // while no Take() waits, and after a waiting Take() got its bytes.
  Watch OnRoom(std::function<void()> room);

  std::uint64_t capacity() const { return capacity_; }
  // What a person looks at to tell whether the budget holds work back (docs/metrics.md).
  struct Usage {
    std::uint64_t capacity = 0;
    std::uint64_t in_use = 0;
    std::uint64_t high_water = 0;     // the most ever held at once
    std::uint64_t blocked_takes = 0;  // Take() calls that had to wait
    std::uint64_t refused_tries = 0;  // TryTake() calls that got nothing (and counted it)
  };
  Usage usage() const;  // one consistent reading of all of them
  std::uint64_t in_use() const { return usage().in_use; }
  std::uint64_t high_water() const { return usage().high_water; }

 private:
  explicit ByteBudget(std::uint64_t capacity_bytes) : capacity_(capacity_bytes) {}
  bool FitsLocked(std::uint64_t bytes) const { return in_use_ == 0 || in_use_ + bytes <= capacity_; }
  void HoldLocked(std::uint64_t bytes);
  void Release(std::uint64_t bytes);
  void NotifyWatchersLocked();

  const std::uint64_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable room_;
  std::uint64_t in_use_ = 0;
  std::uint64_t high_water_ = 0;
  std::uint32_t blocked_takers_ = 0;
  std::uint64_t blocked_takes_ = 0;
  std::uint64_t refused_tries_ = 0;
  std::list<std::function<void()>> watchers_;
};

}  // namespace ctagent
