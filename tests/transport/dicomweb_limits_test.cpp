// QIDO-RS answers are parsed as a stream (SAX) under JsonLimits: what is kept, which shapes are
// refused, and that a hostile answer under the 64 MiB body cap (deep nesting, millions of empty
// objects, a huge array) is refused with bounded memory. Also the multipart part limit.
#include <catch2/catch.hpp>

#include <sys/resource.h>

#include <string>
#include <vector>

#include "transport/dicomweb.hpp"

namespace {

using ctagent::ErrorKind;
namespace dicomweb = ctagent::transport::dicomweb;

const std::vector<std::string> kSeriesTags = {"0020000E", "00080060", "00201209"};

// Peak resident set of this process so far, in bytes (ru_maxrss is in KiB on Linux).
std::uint64_t PeakRssBytes() {
  rusage usage{};
  REQUIRE(getrusage(RUSAGE_SELF, &usage) == 0);
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
}

// "[" + unit + ("," + unit) * (count - 1) + "]", built by doubling (a 60 MB body in a few
// dozen appends, not millions of them, so the test stays quick in a sanitizer build).
std::string Repeat(const std::string& unit, std::size_t count) {
  const std::string piece = unit + ",";
  std::string body;
  body.reserve(2 + count * piece.size());
  body = piece;
  while (body.size() < count * piece.size()) body.append(body, 0, std::min(body.size(), count * piece.size() - body.size()));
  body.pop_back();  // the last separator
  return "[" + body + "]";
}

}  // namespace

TEST_CASE("QIDO parse keeps the first value of the asked attributes of each entry", "[transport][dicomweb][unit]") {
  const std::string body = R"([
    {"0020000E": {"vr": "UI", "Value": ["1.2.3.4", "9.9"]},
     "00080060": {"vr": "CS", "Value": ["CT"]},
     "00201209": {"vr": "IS", "Value": [42]},
     "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
     "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["5.5.5"]}}]}},
    {"0020000E": {"vr": "UI", "Value": ["1.2.3.5"]}, "00080060": {"vr": "CS"}, "00201209": {"vr": "IS", "Value": [7.5]}},
    {}
  ])";
  auto datasets = dicomweb::ParseQidoDatasets(body, {"0020000E", "00080060", "00201209", "00100010"});
  REQUIRE(datasets);
  REQUIRE(datasets->size() == 3);
  const auto& first = (*datasets)[0];
  CHECK(first.at("0020000E") == "1.2.3.4");  // the first value, not the sequence item's nested one
  CHECK(first.at("00080060") == "CT");
  CHECK(first.at("00201209") == "42");
  CHECK(first.at("00100010") == "Doe^Jane");
  CHECK(first.size() == 4);  // the sequence was not asked for
  const auto& second = (*datasets)[1];
  CHECK(second.at("0020000E") == "1.2.3.5");
  CHECK(second.count("00080060") == 0);  // no Value: absent, as JsonTagString reads it
  CHECK(second.at("00201209") == "7.5");
  CHECK((*datasets)[2].empty());

  auto empty = dicomweb::ParseQidoDatasets("[]", kSeriesTags);
  REQUIRE(empty);
  CHECK(empty->empty());
}

TEST_CASE("QIDO parse refuses what is not a DICOM JSON array of objects", "[transport][dicomweb][unit]") {
  struct Case {
    const char* body;
    const char* needle;
  };
  const Case cases[] = {
      {R"({"0020000E": {}})", "not a DICOM JSON array"},
      {R"("text")", "not a DICOM JSON array"},
      {R"([{}, 3])", "not an object"},
      {R"([[]])", "not an object"},
      {R"([{}] trailing)", "not valid JSON"},
      {R"([{"a": )", "not valid JSON"},
      {"", "not valid JSON"},
  };
  for (const auto& c : cases) {
    INFO(c.body);
    auto parsed = dicomweb::ParseQidoDatasets(c.body, kSeriesTags);
    REQUIRE_FALSE(parsed);
    CHECK(parsed.error().kind() == ErrorKind::kProtocol);
    CHECK_THAT(parsed.error().message(), Catch::Contains(c.needle));
  }
}

TEST_CASE("QIDO parse refuses an answer past each limit and names the limit", "[transport][dicomweb][unit]") {
  dicomweb::JsonLimits limits;
  limits.max_depth = 8;
  limits.max_elements = 1000;
  limits.max_datasets = 10;
  limits.max_value_chars = 16;

  SECTION("depth: the limit itself passes, one more level is refused") {
    // [ {"x": [[[[[[ ... ]]]]]] } ]: the top array and the object are 2 levels.
    const auto nested = [](int arrays) {
      return "[{\"x\":" + std::string(static_cast<std::size_t>(arrays), '[') +
             std::string(static_cast<std::size_t>(arrays), ']') + "}]";
    };
    CHECK(dicomweb::ParseQidoDatasets(nested(6), kSeriesTags, limits));
    auto deep = dicomweb::ParseQidoDatasets(nested(7), kSeriesTags, limits);
    REQUIRE_FALSE(deep);
    CHECK_THAT(deep.error().message(), Catch::Contains("deeper than 8 levels"));
  }
  SECTION("entries") {
    CHECK(dicomweb::ParseQidoDatasets(Repeat("{}", 10), kSeriesTags, limits));
    auto many = dicomweb::ParseQidoDatasets(Repeat("{}", 11), kSeriesTags, limits);
    REQUIRE_FALSE(many);
    CHECK_THAT(many.error().message(), Catch::Contains("more than 10 entries"));
  }
  SECTION("values and keys") {
    auto big = dicomweb::ParseQidoDatasets("[{\"x\":" + Repeat("1", 2000) + "}]", kSeriesTags, limits);
    REQUIRE_FALSE(big);
    CHECK_THAT(big.error().message(), Catch::Contains("more than 1000 JSON values and keys"));
  }
  SECTION("a kept value's length") {
    CHECK(dicomweb::ParseQidoDatasets(R"([{"0020000E": {"Value": ["1234567890123456"]}}])", kSeriesTags, limits));
    auto long_value =
        dicomweb::ParseQidoDatasets(R"([{"0020000E": {"Value": ["12345678901234567"]}}])", kSeriesTags, limits);
    REQUIRE_FALSE(long_value);
    CHECK_THAT(long_value.error().message(), Catch::Contains("0020000E") && Catch::Contains("more than 16"));
    // A long value of an attribute nobody asked for costs nothing and is not refused.
    CHECK(dicomweb::ParseQidoDatasets(R"([{"00081030": {"Value": ["12345678901234567"]}}])", kSeriesTags, limits));
  }
}

// The answers of the issue: under the 64 MiB cap, the old DOM parse took ~2 GB for them.
TEST_CASE("QIDO parse refuses 60 MB of empty objects, deep nesting or a huge array with bounded memory",
          "[transport][dicomweb][unit]") {
  SECTION("millions of empty objects") {
    const std::string body = Repeat("{}", 20'000'000);  // 60 MB
    const std::uint64_t before = PeakRssBytes();
    auto parsed = dicomweb::ParseQidoDatasets(body, kSeriesTags);
    const std::uint64_t growth = PeakRssBytes() - before;
    REQUIRE_FALSE(parsed);
    CHECK_THAT(parsed.error().message(), Catch::Contains("more than 100000 entries"));
    INFO("peak RSS grew by " << (growth >> 20) << " MiB");
    CHECK(growth < (200ull << 20));
  }
  SECTION("deep nesting") {
    std::string body = "[{\"x\":";
    body.append(1'000'000, '[');
    body.append(1'000'000, ']');
    body += "}]";
    const std::uint64_t before = PeakRssBytes();
    auto parsed = dicomweb::ParseQidoDatasets(body, kSeriesTags);
    const std::uint64_t growth = PeakRssBytes() - before;
    REQUIRE_FALSE(parsed);
    CHECK_THAT(parsed.error().message(), Catch::Contains("deeper than 32 levels"));
    INFO("peak RSS grew by " << (growth >> 20) << " MiB");
    CHECK(growth < (200ull << 20));
  }
  SECTION("one huge array of numbers") {
    const std::string body = "[{\"x\":" + Repeat("0", 2'000'000) + "}]";
    const std::uint64_t before = PeakRssBytes();
    auto parsed = dicomweb::ParseQidoDatasets(body, kSeriesTags);
    const std::uint64_t growth = PeakRssBytes() - before;
    REQUIRE_FALSE(parsed);
    CHECK_THAT(parsed.error().message(), Catch::Contains("more than 1000000 JSON values and keys"));
    INFO("peak RSS grew by " << (growth >> 20) << " MiB");
    CHECK(growth < (200ull << 20));
  }
}

TEST_CASE("ParseMultipartRelated refuses more parts than asked for before copying them", "[transport][dicomweb][unit]") {
  const std::string type = "multipart/related; type=\"application/dicom\"; boundary=b";
  const std::string two = "--b\r\n\r\nfirst\r\n--b\r\n\r\nsecond\r\n--b--";
  auto all = dicomweb::ParseMultipartRelated(type, two);
  REQUIRE(all);
  CHECK(all->size() == 2);
  auto one = dicomweb::ParseMultipartRelated(type, two, 1);
  REQUIRE_FALSE(one);
  CHECK(one.error().kind() == ErrorKind::kProtocol);
  CHECK_THAT(one.error().message(), Catch::Contains("more than 1 parts"));
}
