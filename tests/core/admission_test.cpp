// The admission rule of the uploader (agent/core/admission.hpp): how many uploads send at once,
// from the link's measured rate and round trip, the bytes per PATCH and the configured bounds.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <limits>

#include "agent/core/admission.hpp"

using ctagent::core::AdmissionEstimator;
using ctagent::core::UploadsToAdmit;
using std::chrono::milliseconds;

namespace {
constexpr double kGigabit = 1e9 / 8;  // bytes/s
constexpr std::uint64_t kMiB = 1 << 20;
}  // namespace

TEST_CASE("admission: ceil(4 x rate x round trip / bytes per upload) + 1 within the bounds", "[core][admission]") {
  // 1 Gbit/s, 80 ms, 1 MiB PATCHes: 4 x 125e6 x 0.08 / 1048576 = 38.15 -> 39 + 1.
  CHECK(UploadsToAdmit(kGigabit, milliseconds(80), kMiB, 8, 64) == 40);
  // ... capped by the maximum (memory: each holds its chunk).
  CHECK(UploadsToAdmit(kGigabit, milliseconds(80), kMiB, 8, 32) == 32);
  // 100 Mbit/s, 80 ms: 3.8 -> 4 + 1 = 5, below the minimum.
  CHECK(UploadsToAdmit(kGigabit / 10, milliseconds(80), kMiB, 8, 32) == 8);
  CHECK(UploadsToAdmit(kGigabit / 10, milliseconds(80), kMiB, 2, 32) == 5);
  // A loopback-like path (0.5 ms) at 1 Gbit/s needs no more than the minimum.
  CHECK(UploadsToAdmit(kGigabit, std::chrono::microseconds(500), kMiB, 8, 32) == 8);
  // Smaller PATCHes need more of them for the same bytes in flight.
  CHECK(UploadsToAdmit(kGigabit / 10, milliseconds(80), kMiB / 4, 2, 64) == 17);
}

TEST_CASE("admission: more round trip, more uploads, never fewer", "[core][admission]") {
  std::uint32_t previous = 0;
  for (int ms = 0; ms <= 300; ms += 10) {
    const std::uint32_t n = UploadsToAdmit(kGigabit / 2, milliseconds(ms), 900 * 1024, 4, 256);
    CHECK(n >= previous);
    CHECK(n >= 4);
    CHECK(n <= 256);
    previous = n;
  }
  CHECK(previous == 83);  // 300 ms: 4 x 62.5e6 x 0.3 / 921600 = 81.4 -> 82 + 1
  CHECK(UploadsToAdmit(kGigabit / 2, milliseconds(300), 900 * 1024, 4, 64) == 64);
  CHECK(UploadsToAdmit(kGigabit / 2, milliseconds(100), 900 * 1024, 4, 256) >
        UploadsToAdmit(kGigabit / 2, milliseconds(10), 900 * 1024, 4, 256));
}

TEST_CASE("admission: without a measurement, or with a nonsense one, the minimum, and a maximum below the minimum is the "
          "minimum",
          "[core][admission]") {
  CHECK(UploadsToAdmit(0, milliseconds(80), kMiB, 8, 32) == 8);
  CHECK(UploadsToAdmit(kGigabit, milliseconds(0), kMiB, 8, 32) == 8);
  CHECK(UploadsToAdmit(kGigabit, milliseconds(80), 0, 8, 32) == 8);
  CHECK(UploadsToAdmit(-5, milliseconds(80), kMiB, 8, 32) == 8);
  CHECK(UploadsToAdmit(std::numeric_limits<double>::quiet_NaN(), milliseconds(80), kMiB, 8, 32) == 8);
  CHECK(UploadsToAdmit(std::numeric_limits<double>::infinity(), milliseconds(80), kMiB, 8, 32) == 32);
  CHECK(UploadsToAdmit(kGigabit, milliseconds(80), kMiB, 8, 4) == 8);
  CHECK(UploadsToAdmit(kGigabit, milliseconds(80), 1, 1, 1) == 1);
}

TEST_CASE("admission estimator: the shortest recent round trip, the best recent rate, the mean PATCH",
          "[core][admission]") {
  AdmissionEstimator e;
  const auto t0 = AdmissionEstimator::Clock::time_point{} + std::chrono::hours(1);
  CHECK(e.Admit(8, 32) == 8);  // nothing measured
  // A connection's set-up (250 ms) then plain round trips of 80 ms: 80 ms.
  e.NoteRoundTrip(milliseconds(250), t0);
  e.NoteRoundTrip(milliseconds(80), t0 + milliseconds(300));
  e.NoteRoundTrip(milliseconds(95), t0 + milliseconds(400));
  CHECK(e.round_trip() == milliseconds(80));
  e.NotePatch(kMiB);
  // 12.5 MB every 100 ms (1 Gbit/s), in periods of max(100 ms, 2 x 80 ms).
  for (int i = 0; i <= 10; ++i) e.NoteConfirmed(12'500'000, t0 + milliseconds(100 * i));
  CHECK(e.rate_bytes_per_s() == Approx(kGigabit).epsilon(0.01));
  CHECK(e.Admit(8, 64) == 40);
  CHECK(e.Admit(8, 32) == 32);
  // A slow period does not drop the rate at once (the best of the last 4 periods)...
  e.NoteConfirmed(1'000'000, t0 + milliseconds(1400));
  CHECK(e.rate_bytes_per_s() == Approx(kGigabit).epsilon(0.01));
  // ... but 4 slow periods do.
  for (int i = 1; i <= 4; ++i) e.NoteConfirmed(1'000'000, t0 + milliseconds(1400 + 300 * i));
  CHECK(e.rate_bytes_per_s() < kGigabit / 10);
  CHECK(e.Admit(8, 64) == 8);
  // The path got shorter: seen at once; longer: seen within 10 s, once the 80 ms sample aged out.
  e.NoteRoundTrip(milliseconds(20), t0 + std::chrono::seconds(3));
  CHECK(e.round_trip() == milliseconds(20));
  e.NoteRoundTrip(milliseconds(200), t0 + std::chrono::seconds(8));
  e.NoteRoundTrip(milliseconds(200), t0 + std::chrono::seconds(14));
  CHECK(e.round_trip() == milliseconds(200));
}

TEST_CASE("admission estimator: a period is two round trips, and never shorter than 100 ms", "[core][admission]") {
  const auto t0 = AdmissionEstimator::Clock::time_point{} + std::chrono::hours(1);
  {
    // 80 ms round trip: 21 MB confirmed 150 ms after the first answer is not a period yet; at
    // 170 ms it is one, at the 1 Gbit/s the bytes say.
    AdmissionEstimator e;
    e.NoteRoundTrip(milliseconds(80), t0);
    e.NoteConfirmed(1'000'000, t0);
    e.NoteConfirmed(21'250'000, t0 + milliseconds(150));
    CHECK(e.rate_bytes_per_s() == 0);
    e.NoteConfirmed(0, t0 + milliseconds(170));
    CHECK(e.rate_bytes_per_s() == Approx(kGigabit).epsilon(0.01));
  }
  {
    // 20 ms round trip: the 100 ms floor, not 40 ms.
    AdmissionEstimator e;
    e.NoteRoundTrip(milliseconds(20), t0);
    e.NoteConfirmed(1'000'000, t0);
    e.NoteConfirmed(5'000'000, t0 + milliseconds(60));
    CHECK(e.rate_bytes_per_s() == 0);
    e.NoteConfirmed(7'500'000, t0 + milliseconds(100));
    CHECK(e.rate_bytes_per_s() == Approx(kGigabit).epsilon(0.01));
  }
}
