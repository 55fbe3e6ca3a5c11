// ByteBudget (base/byte_budget.hpp): the bound the agent's raw chunk buffers share. What is held
// never exceeds the capacity (except one request larger than it, alone); a Take() that does not
// fit waits until enough is handed back, and says it waited.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "base/byte_budget.hpp"

using ctagent::ByteBudget;
using namespace std::chrono_literals;

namespace {

// Waits (bounded) until `condition` holds; false when it never did.
template <typename Condition>
bool WaitFor(Condition condition) {
  for (int i = 0; i < 2000; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return condition();
}

}  // namespace

TEST_CASE("leases hold bytes until they are destroyed, and never more than the capacity") {
  auto budget = ByteBudget::Make(10);
  {
    auto a = budget->Take(4);
    bool waited = true;
    auto b = budget->Take(6, &waited);
    CHECK_FALSE(waited);
    CHECK(budget->in_use() == 10);
    b.reset();
    CHECK_FALSE(b);
    CHECK(budget->in_use() == 4);
    ByteBudget::Lease moved = std::move(a);
    CHECK(budget->in_use() == 4);
    CHECK(moved.bytes() == 4);
  }
  CHECK(budget->in_use() == 0);
  CHECK(budget->high_water() == 10);
}

TEST_CASE("a Take() that does not fit waits until enough is handed back, and is counted") {
  auto budget = ByteBudget::Make(10);
  auto held = budget->Take(8);
  std::atomic<bool> taken{false};
  bool waited = false;
  std::thread taker([&] {
    auto lease = budget->Take(6, &waited);
    taken = true;
  });
  REQUIRE(WaitFor([&] { return budget->usage().blocked_takes == 1; }));
  std::this_thread::sleep_for(20ms);
  CHECK_FALSE(taken.load());  // 2 free, 6 asked: still waiting
  held.reset();
  REQUIRE(WaitFor([&] { return taken.load(); }));
  taker.join();
  CHECK(waited);
  const ByteBudget::Usage usage = budget->usage();
  CHECK(usage.capacity == 10);
  CHECK(usage.in_use == 0);
  CHECK(usage.high_water == 8);
  CHECK(usage.blocked_takes == 1);
}

TEST_CASE("a request larger than the capacity is granted only when nothing else is held") {
  auto budget = ByteBudget::Make(10);
  auto small = budget->Take(1);
  std::atomic<bool> taken{false};
  std::thread taker([&] {
    auto large = budget->Take(11);
    taken = true;
    CHECK(budget->in_use() == 11);
  });
  REQUIRE(WaitFor([&] { return budget->usage().blocked_takes == 1; }));
  CHECK_FALSE(taken.load());
  small.reset();
  REQUIRE(WaitFor([&] { return taken.load(); }));
  taker.join();
  CHECK(budget->high_water() == 11);
  CHECK(budget->in_use() == 0);
}

TEST_CASE("threads taking and handing back at once never hold more than the capacity") {
  constexpr std::uint64_t kCapacity = 64;
  auto budget = ByteBudget::Make(kCapacity);
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::uint64_t bytes = 1 + static_cast<std::uint64_t>((i * 7 + t * 13) % 32);
        auto lease = budget->Take(bytes);
        if (budget->in_use() > kCapacity) over = true;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK_FALSE(over.load());
  CHECK(budget->in_use() == 0);
  CHECK(budget->high_water() <= kCapacity);
}
