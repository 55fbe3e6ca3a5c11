// The link manager (agent/core/links): the token bucket under a fake clock, schedule windows,
// the cloud.links parser, and failover / fail-back with a fake prober and a fake clock.
#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "agent/core/links.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace ctagent::core;
using namespace std::chrono_literals;
using TimePoint = std::chrono::steady_clock::time_point;

namespace {

std::tm Local(int wday, int hour, int minute) {  // wday: 0 Sunday, as in struct tm
  std::tm tm{};
  tm.tm_wday = wday;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  return tm;
}

struct FakeClock {
  TimePoint now{};
  std::tm local = Local(1, 12, 0);
  LinkClock Make() {
    return LinkClock{[this] { return now; }, [this] { return local; }};
  }
};

// Probe results set by the test, per link name; counts the probes made.
class FakeProber : public LinkProber {
 public:
  Status Probe(const LinkConfig& link) override {
    std::lock_guard lock(mutex);
    ++probes[link.name];
    if (up.count(link.name) && !up[link.name]) return MakeError(ErrorKind::kNetwork, "connect to server: timed out");
    return Ok();
  }
  void Set(const std::string& name, bool ok) {
    std::lock_guard lock(mutex);
    up[name] = ok;
  }
  std::mutex mutex;
  std::map<std::string, bool> up;
  std::map<std::string, int> probes;
};

std::vector<LinkConfig> TwoLinks(std::uint64_t wired_cap = 0) {
  LinkConfig wired;
  wired.name = "wired";
  wired.interface_name = "eth0";
  wired.priority = 1;
  wired.max_bits_per_s = wired_cap;
  wired.probe_interval_ms = 1000;
  LinkConfig g5;
  g5.name = "5g";
  g5.interface_name = "wwan0";
  g5.priority = 2;
  g5.probe_interval_ms = 1000;
  return {g5, wired};  // out of priority order on purpose
}

}  // namespace

TEST_CASE("links: the token bucket holds its rate over a measured interval (fake clock)", "[links]") {
  TimePoint t{};
  const std::uint64_t rate = 20'000'000;  // 20 Mbit/s = 2.5 MB/s
  TokenBucket bucket(rate, t);
  // Drain the initial burst, then measure from there.
  std::size_t burst = 0;
  while (bucket.Reserve(16 * 1024, t).count() == 0) burst += 16 * 1024;
  CHECK(burst <= 2 * std::max<std::size_t>(16 * 1024, rate / 8 / 20));
  const TimePoint start = t;
  std::uint64_t bytes = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::size_t block = (i % 3 == 0) ? 65536 : 1460;  // uneven blocks, as libcurl sends
    t += bucket.Reserve(block, t);  // the caller sleeps exactly what it is told
    bytes += block;
  }
  const double seconds = std::chrono::duration<double>(t - start).count();
  const double measured = static_cast<double>(bytes) * 8 / seconds;
  INFO("measured " << measured << " bit/s over " << seconds << " s");
  CHECK(measured == Approx(static_cast<double>(rate)).epsilon(0.02));

  // A new rate takes effect for the bytes booked after it.
  bucket.SetRate(rate / 4, t);
  const TimePoint t2 = t + bucket.Reserve(1, t);
  t = t2;
  bytes = 0;
  for (int i = 0; i < 500; ++i) {
    t += bucket.Reserve(65536, t);
    bytes += 65536;
  }
  const double measured2 = static_cast<double>(bytes) * 8 / std::chrono::duration<double>(t - t2).count();
  CHECK(measured2 == Approx(static_cast<double>(rate / 4)).epsilon(0.02));

  // Uncapped: never waits.
  bucket.SetRate(0, t);
  CHECK(bucket.Reserve(1 << 30, t).count() == 0);
}

TEST_CASE("links: schedule windows pick the cap by local day and time, including past midnight", "[links]") {
  LinkConfig link;
  link.max_bits_per_s = 100'000'000;
  ScheduleWindow clinic;  // weekdays 08:00-18:00: 20 Mbit/s, leave room for the clinic
  clinic.days = 0x1f;
  clinic.start_minute = 8 * 60;
  clinic.end_minute = 18 * 60;
  clinic.max_bits_per_s = 20'000'000;
  ScheduleWindow night;  // Friday 22:00 to Saturday 06:00: uncapped
  night.days = 1u << 4;
  night.start_minute = 22 * 60;
  night.end_minute = 6 * 60;
  night.max_bits_per_s = 0;
  link.schedule = {clinic, night};

  CHECK(CapAt(link, Local(1, 9, 0)) == 20'000'000);    // Monday 09:00
  CHECK(CapAt(link, Local(1, 8, 0)) == 20'000'000);    // start is inclusive
  CHECK(CapAt(link, Local(1, 18, 0)) == 100'000'000);  // end is exclusive
  CHECK(CapAt(link, Local(1, 7, 59)) == 100'000'000);
  CHECK(CapAt(link, Local(6, 9, 0)) == 100'000'000);   // Saturday: not a clinic day
  CHECK(CapAt(link, Local(0, 9, 0)) == 100'000'000);   // Sunday
  CHECK(CapAt(link, Local(5, 23, 0)) == 0);            // Friday night
  CHECK(CapAt(link, Local(6, 5, 59)) == 0);            // Saturday early morning, same window
  CHECK(CapAt(link, Local(6, 6, 0)) == 100'000'000);
  CHECK(CapAt(link, Local(5, 5, 0)) == 100'000'000);   // Friday early: Thursday has no night window
  CHECK(CapAt(link, Local(6, 23, 0)) == 100'000'000);  // Saturday night
}

TEST_CASE("links: cloud.links parses, and a mistake names its JSON path", "[links]") {
  const auto good = nlohmann::json::parse(R"({
    "wired": {"interface": "eth0", "priority": 1, "max_bits_per_s": 100000000,
              "schedule": [{"days": "mon-fri", "start": "08:00", "end": "18:00", "max_bits_per_s": 20000000},
                           {"days": "sat,sun", "start": "22:00", "end": "06:00", "max_bits_per_s": 0}],
              "probe_interval_ms": 1500, "probe_timeout_s": 3},
    "5g": {"source_address": "10.0.0.2", "priority": 2}
  })");
  auto links = ParseLinks(good);
  REQUIRE(links);
  REQUIRE(links->size() == 2);
  const LinkConfig& wired = links->at(1).name == "wired" ? links->at(1) : links->at(0);
  CHECK(wired.interface_name == "eth0");
  CHECK(wired.max_bits_per_s == 100'000'000);
  REQUIRE(wired.schedule.size() == 2);
  CHECK(wired.schedule[0].days == 0x1f);
  CHECK(wired.schedule[0].start_minute == 480);
  CHECK(wired.schedule[1].days == 0x60);
  CHECK(wired.probe_interval_ms == 1500);
  CHECK(wired.probe_timeout_s == 3);
  CHECK(ParseLinks(nlohmann::json::object())->empty());

  auto error_of = [](const char* text) {
    auto r = ParseLinks(nlohmann::json::parse(text));
    REQUIRE(!r);
    CHECK(r.error().kind() == ErrorKind::kInvalidInput);
    return r.error().message();
  };
  CHECK_THAT(error_of(R"({"wired": {"schedule": [{"days": "mon-xyz", "start": "08:00", "end": "18:00"}]}})"),
             Catch::StartsWith("/cloud/links/wired/schedule/0/days: expected days like"));
  CHECK_THAT(error_of(R"({"wired": {"schedule": [{"start": "8am", "end": "18:00"}]}})"),
             Catch::StartsWith("/cloud/links/wired/schedule/0/start: expected a local time"));
  CHECK_THAT(error_of(R"({"wired": {"priority": 0}})"), Catch::StartsWith("/cloud/links/wired/priority: expected"));
  CHECK_THAT(error_of(R"({"wired": {"interfce": "eth0"}})"), Catch::Contains("/cloud/links/wired/interfce: unknown key"));
  CHECK_THAT(error_of(R"({"wired": {"interface": "eth0", "source_address": "10.0.0.1"}})"),
             Catch::Contains("either interface or source_address"));
  CHECK_THAT(error_of(R"({"bad name": {}})"), Catch::Contains("a link name has"));
  CHECK_THAT(error_of(R"([1, 2])"), Catch::Contains("expected an object of links"));
}

TEST_CASE("links: failover on probe failures, fail-back with hysteresis", "[links]") {
  FakeClock clock;
  auto prober_owned = std::make_unique<FakeProber>();
  FakeProber& prober = *prober_owned;
  LinkManager links(TwoLinks(), std::move(prober_owned), clock.Make());

  // Both links start usable; the preferred one (priority 1) carries the uploads.
  CHECK(links.ActiveLink() == "wired");
  auto lease = links.Acquire();
  REQUIRE(lease);
  CHECK(lease->link_name == "wired");
  CHECK(lease->interface_name == "eth0");
  CHECK(!lease->before_send);  // uncapped

  // The wired link dies: one failed probe is not enough, the second is.
  prober.Set("wired", false);
  links.Tick();
  CHECK(links.ActiveLink() == "wired");
  clock.now += 1000ms;
  links.Tick();
  CHECK(links.ActiveLink() == "5g");
  lease = links.Acquire();
  REQUIRE(lease);
  CHECK(lease->link_name == "5g");
  CHECK(lease->interface_name == "wwan0");

  // Probes are spaced by the interval: no probe before it is due.
  const int probes_before = prober.probes["wired"];
  clock.now += 500ms;
  links.Tick();
  CHECK(prober.probes["wired"] == probes_before);

  // The wired link returns: two good probes are not enough (hysteresis), the third is.
  prober.Set("wired", true);
  for (int i = 0; i < 2; ++i) {
    clock.now += 1000ms;
    links.Tick();
    CHECK(links.ActiveLink() == "5g");
  }
  clock.now += 1000ms;
  links.Tick();
  CHECK(links.ActiveLink() == "wired");

  // A flapping link: good, bad, good... never counts up to three, so it is not used.
  prober.Set("wired", false);
  clock.now += 1000ms;
  links.Tick();
  clock.now += 1000ms;
  links.Tick();
  REQUIRE(links.ActiveLink() == "5g");
  for (int i = 0; i < 6; ++i) {
    prober.Set("wired", i % 3 != 2);
    clock.now += 1000ms;
    links.Tick();
    CHECK(links.ActiveLink() == "5g");
  }
}

TEST_CASE("links: a reported network failure triggers an immediate probe and failover without waiting", "[links]") {
  FakeClock clock;
  auto prober_owned = std::make_unique<FakeProber>();
  FakeProber& prober = *prober_owned;
  LinkManager links(TwoLinks(), std::move(prober_owned), clock.Make());
  links.Tick();  // the first probes
  REQUIRE(links.ActiveLink() == "wired");

  // An HTTP-level answer or a cancelled request does not count against the link.
  links.Report("wired", MakeError(ErrorKind::kProtocol, "HTTP 500"));
  links.Report("wired", MakeError(ErrorKind::kCancelled, "stopping"));
  CHECK(links.Snapshot()[0].failures == 0);

  // A request fails on the network; its link is probed at once (no clock advance) and fails too.
  prober.Set("wired", false);
  links.Report("wired", MakeError(ErrorKind::kNetwork, "PATCH: connection reset by peer"));
  CHECK(links.ActiveLink() == "wired");  // one failure: not yet
  links.Tick();
  CHECK(links.ActiveLink() == "5g");

  // One failed request on a healthy link is forgiven by the next good probe.
  links.Report("5g", MakeError(ErrorKind::kNetwork, "stalled"));
  links.Tick();
  CHECK(links.ActiveLink() == "5g");
  CHECK(links.Snapshot()[1].failures == 0);

  // Everything down: Acquire says so, naming every link and what to do.
  prober.Set("5g", false);
  links.Report("5g", MakeError(ErrorKind::kNetwork, "stalled"));
  links.Tick();
  auto none = links.Acquire();
  REQUIRE(!none);
  CHECK(none.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(none.error().message(), Catch::Contains("wired: down") && Catch::Contains("5g: down") &&
                                         Catch::Contains("ctagent check"));
  CHECK(links.ActiveLink().empty());
}

TEST_CASE("links: the cap is shared by all transfers, and leases on a link that goes down are revoked", "[links]") {
  FakeClock clock;
  auto prober_owned = std::make_unique<FakeProber>();
  FakeProber& prober = *prober_owned;
  // 8 Mbit/s = 1 MB/s on the wired link.
  LinkManager links(TwoLinks(8'000'000), std::move(prober_owned), {}, {});
  auto a = links.Acquire();
  auto b = links.Acquire();
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(a->before_send);

  // Two transfers share the bucket: 2 x 512 KiB take about one second in total, not half.
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<int> refused{0};
  auto send = [&](const LinkLease& lease) {
    for (int i = 0; i < 32; ++i) {
      if (!lease.before_send(16 * 1024)) ++refused;
    }
  };
  std::thread ta(send, *a);
  std::thread tb(send, *b);
  ta.join();
  tb.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(refused == 0);
  // 1 MiB at 1 MB/s less the 50 ms burst: at least 0.95 s. Only a lower bound: the cap holds.
  CHECK(seconds >= 0.95);

  // The link goes down while a transfer waits for tokens: before_send returns false.
  std::atomic<bool> result{true};
  std::thread waiting([&] { result = a->before_send(4u << 20); });  // 4 s worth of tokens
  std::this_thread::sleep_for(100ms);
  prober.Set("wired", false);
  links.Report("wired", MakeError(ErrorKind::kNetwork, "reset"));
  links.Tick();
  waiting.join();
  CHECK(!result);
  CHECK(!b->before_send(1));
  // The new lease is on the other link.
  auto c = links.Acquire();
  REQUIRE(c);
  CHECK(c->link_name == "5g");

  // Stop revokes what is left.
  links.Stop();
  CHECK(!links.Acquire());
}

TEST_CASE("links: reserve() books the shared bucket without waiting (for the event loop), and says when the lease "
          "is revoked",
          "[links]") {
  FakeClock clock;
  auto prober_owned = std::make_unique<FakeProber>();
  FakeProber& prober = *prober_owned;
  // 8 Mbit/s = 1 MB/s on the wired link; the fake clock stands still unless moved.
  LinkManager links(TwoLinks(8'000'000), std::move(prober_owned), clock.Make(), {});
  auto a = links.Acquire();
  auto b = links.Acquire();
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(a->reserve);
  REQUIRE(a->reserve(0) == std::chrono::nanoseconds(0));  // the lease holds; nothing booked

  // Drain what the bucket holds (at most its 50 ms burst), then every booking says how long to
  // hold, at once: with a clock that does not move the blocking before_send would wait for ever.
  std::size_t burst = 0;
  for (int i = 0; i < 1000 && a->reserve(16 * 1024) == std::chrono::nanoseconds(0); ++i) burst += 16 * 1024;
  CHECK(burst <= 2 * 64 * 1024);
  // The bucket is shared: 500 KB booked on b and 500 KB on a are one second's worth in all.
  const auto hold_b = b->reserve(500'000);
  const auto hold_a = a->reserve(500'000);
  REQUIRE(hold_b);
  REQUIRE(hold_a);
  CHECK(*hold_a > *hold_b);
  const double seconds = std::chrono::duration<double>(*hold_a).count();
  CHECK(seconds == Approx(1.0).margin(0.05));
  // Once the clock has moved past the hold, nothing is owed.
  clock.now += std::chrono::seconds(2);
  CHECK(a->reserve(1) == std::chrono::nanoseconds(0));

  // The link goes down: both leases are revoked, and reserve() says so without booking.
  prober.Set("wired", false);
  links.Report("wired", MakeError(ErrorKind::kNetwork, "reset"));
  links.Report("wired", MakeError(ErrorKind::kNetwork, "reset"));
  links.Tick();
  CHECK_FALSE(a->reserve(0));
  CHECK_FALSE(b->reserve(16 * 1024));
  auto c = links.Acquire();
  REQUIRE(c);
  CHECK(c->link_name == "5g");
  CHECK_FALSE(c->reserve);  // uncapped
}

TEST_CASE("links: with no links configured, one default lease over the system's routing", "[links]") {
  LinkManager links({}, std::make_unique<FakeProber>());
  auto lease = links.Acquire();
  REQUIRE(lease);
  CHECK(lease->link_name == "default");
  CHECK(lease->interface_name.empty());
  CHECK(!lease->before_send);
}

TEST_CASE("links: the schedule changes a link's cap by local time", "[links]") {
  FakeClock clock;
  auto configs = TwoLinks(100'000'000);
  for (auto& c : configs) {
    if (c.name == "wired") c.schedule = {ScheduleWindow{0x1f, 8 * 60, 18 * 60, 20'000'000}};
  }
  LinkManager links(configs, std::make_unique<FakeProber>(), clock.Make());
  clock.local = Local(2, 10, 0);  // Tuesday 10:00
  REQUIRE(links.Acquire());
  CHECK(links.Snapshot()[0].cap_bits_per_s == 20'000'000);
  clock.local = Local(2, 19, 0);
  REQUIRE(links.Acquire());
  CHECK(links.Snapshot()[0].cap_bits_per_s == 100'000'000);
}

TEST_CASE("links: the full example configuration's cloud.links parses", "[links]") {
  const auto text = test::ReadText(std::string(CTAGENT_SOURCE_DIR) + "/config/examples/full.json");
  const auto doc = nlohmann::json::parse(text);
  auto links = ParseLinks(doc.at("cloud").at("links"));
  INFO((links ? std::string() : links.error().message()));
  REQUIRE(links);
  CHECK(links->size() == 2);
}
