// ByteBudget (base/byte_budget.hpp): the bound every chunk buffer of the agent shares. What is
// held never exceeds the capacity (except one request larger than it, alone); a blocked Take()
// is served before TryTake(); watchers hear of room only when TryTake() can use it.
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
    auto b = budget->TryTake(6);
    REQUIRE(b.has_value());
    CHECK(budget->in_use() == 10);
    CHECK_FALSE(budget->TryTake(1).has_value());
    b->reset();
    CHECK(budget->in_use() == 4);
    ByteBudget::Lease moved = std::move(a);
    CHECK(budget->in_use() == 4);
    CHECK(moved.bytes() == 4);
  }
  CHECK(budget->in_use() == 0);
  CHECK(budget->high_water() == 10);
}

TEST_CASE("a request larger than the capacity is granted only when nothing else is held") {
  auto budget = ByteBudget::Make(10);
  auto small = budget->TryTake(1);
  REQUIRE(small.has_value());
  CHECK_FALSE(budget->TryTake(11).has_value());
  small->reset();
  auto large = budget->TryTake(11);
  REQUIRE(large.has_value());
  CHECK(budget->in_use() == 11);
  CHECK_FALSE(budget->TryTake(1).has_value());
}

TEST_CASE("a waiting Take() is served before TryTake(), and watchers hear of room after it") {
  auto budget = ByteBudget::Make(10);
  std::atomic<int> rooms{0};
  auto watch = budget->OnRoom([&] { ++rooms; });
  auto held = budget->Take(8);

  std::atomic<bool> taken{false};
  bool waited = false;
  std::thread taker([&] {
    auto lease = budget->Take(6, &waited);
    taken = true;
    // Held until the main thread has checked what TryTake() may have.
    for (int i = 0; i < 2000 && budget->in_use() != 10; ++i) std::this_thread::sleep_for(1ms);
  });
  // The taker waits for 6 bytes while 2 are free: TryTake() gets none of them meanwhile.
  REQUIRE(WaitFor([&] { return !budget->TryTake(2).has_value(); }));
  std::this_thread::sleep_for(20ms);
  CHECK_FALSE(taken.load());
  CHECK_FALSE(budget->TryTake(1).has_value());
  const int rooms_before = rooms.load();
  held.reset();  // room for the taker; no watcher is told while it waits...
  REQUIRE(WaitFor([&] { return taken.load(); }));
  // ...and once it has its 6, the watchers hear that 4 are free for TryTake().
  CHECK(rooms.load() > rooms_before);
  auto rest = budget->TryTake(4);
  REQUIRE(rest.has_value());
  CHECK(budget->in_use() == 10);
  taker.join();
  CHECK(waited);
  CHECK(budget->in_use() == 4);
  CHECK(budget->high_water() == 10);
}

TEST_CASE("usage counts the Take() calls that waited and the TryTake() refusals asked to be counted") {
  auto budget = ByteBudget::Make(10);
  auto held = budget->Take(9);
  CHECK_FALSE(budget->TryTake(2).has_value());         // counted
  CHECK_FALSE(budget->TryTake(2, false).has_value());  // the same request again: not counted
  ByteBudget::Usage usage = budget->usage();
  CHECK(usage.capacity == 10);
  CHECK(usage.in_use == 9);
  CHECK(usage.high_water == 9);
  CHECK(usage.blocked_takes == 0);
  CHECK(usage.refused_tries == 1);

  bool waited = false;
  std::thread taker([&] { auto lease = budget->Take(5, &waited); });
  REQUIRE(WaitFor([&] { return !budget->TryTake(1, false).has_value(); }));
  held.reset();
  taker.join();
  CHECK(waited);
  auto granted = budget->TryTake(10);  // nothing held: granted, not counted
  REQUIRE(granted.has_value());
  usage = budget->usage();
  CHECK(usage.blocked_takes == 1);
  CHECK(usage.refused_tries == 1);
  CHECK(usage.in_use == 10);
  CHECK(usage.high_water == 10);
}

TEST_CASE("a removed watcher is not called") {
  auto budget = ByteBudget::Make(4);
  std::atomic<int> rooms{0};
  auto lease = budget->Take(4);
  {
    auto watch = budget->OnRoom([&] { ++rooms; });
    auto other = budget->OnRoom([] {});
    ByteBudget::Watch moved = std::move(other);
  }
  lease.reset();
  CHECK(rooms.load() == 0);
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
        if (t % 2 == 0) {
          auto lease = budget->Take(bytes);
          if (budget->in_use() > kCapacity) over = true;
        } else if (auto lease = budget->TryTake(bytes)) {
          if (budget->in_use() > kCapacity) over = true;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK_FALSE(over.load());
  CHECK(budget->in_use() == 0);
  CHECK(budget->high_water() <= kCapacity);
}
