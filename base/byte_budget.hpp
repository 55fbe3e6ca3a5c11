// A budget of bytes that several threads draw their large buffers from, so that what they hold
// together stays within one configured bound however their peaks happen to coincide
// (docs/configuration.md, "Memory": the agent's raw chunk buffers, taken by the acquisition
// thread and handed back by the codec workers once each chunk is stored).
//
// Take() waits until the bytes fit. A request larger than the whole budget is granted when
// nothing else is held (it would otherwise never fit). Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

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

  static std::shared_ptr<ByteBudget> Make(std::uint64_t capacity_bytes);
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Waits until the bytes fit; `waited` (optional) says whether it had to.
  Lease Take(std::uint64_t bytes, bool* waited = nullptr);

  std::uint64_t capacity() const { return capacity_; }
  // What a person looks at to tell whether the budget holds work back (docs/metrics.md).
  struct Usage {
    std::uint64_t capacity = 0;
    std::uint64_t in_use = 0;
    std::uint64_t high_water = 0;     // the most ever held at once
    std::uint64_t blocked_takes = 0;  // Take() calls that had to wait
  };
  Usage usage() const;  // one consistent reading of all of them
  std::uint64_t in_use() const { return usage().in_use; }
  std::uint64_t high_water() const { return usage().high_water; }

 private:
  explicit ByteBudget(std::uint64_t capacity_bytes) : capacity_(capacity_bytes) {}
  bool FitsLocked(std::uint64_t bytes) const { return in_use_ == 0 || in_use_ + bytes <= capacity_; }
  void Release(std::uint64_t bytes);

  const std::uint64_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable room_;
  std::uint64_t in_use_ = 0;
  std::uint64_t high_water_ = 0;
  std::uint64_t blocked_takes_ = 0;
};

}  // namespace ctagent
