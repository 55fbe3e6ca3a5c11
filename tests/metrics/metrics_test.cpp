// The metrics module (agent/metrics): the Prometheus text exposition format 0.0.4 as a scraper
// reads it (types, escaping, numbers, histogram buckets), and the GET /metrics server on a real
// loopback socket: what it answers, and its bounds (request size, connections, time).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "agent/metrics/http_server.hpp"
#include "agent/metrics/metrics.hpp"
#include "tests/metrics/exposition_parser.hpp"
#include "tests/support/loopback_http.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;

TEST_CASE("metrics: the exposition has HELP and TYPE per family and escapes label values and help") {
  metrics::Registry registry;
  registry.Counter("ctagent_uploaded_bytes_total", "Bytes the cloud confirmed.\nSecond line with a \\ backslash")
      .Add({{"kind", "chunk"}}, 1048576)
      .Add({{"kind", "manifest"}}, 812);
  registry.Gauge("ctagent_link_in_use", "The link in use.")
      .Add({{"link", "wired \"main\"\\eth0\nnew line"}}, 1);
  registry.Gauge("ctagent_eta_seconds", "ETA.").Add({}, HUGE_VAL);
  const std::string text = registry.Render();
  CHECK(text ==
        "# HELP ctagent_uploaded_bytes_total Bytes the cloud confirmed.\\nSecond line with a \\\\ backslash\n"
        "# TYPE ctagent_uploaded_bytes_total counter\n"
        "ctagent_uploaded_bytes_total{kind=\"chunk\"} 1048576\n"
        "ctagent_uploaded_bytes_total{kind=\"manifest\"} 812\n"
        "# HELP ctagent_link_in_use The link in use.\n"
        "# TYPE ctagent_link_in_use gauge\n"
        "ctagent_link_in_use{link=\"wired \\\"main\\\"\\\\eth0\\nnew line\"} 1\n"
        "# HELP ctagent_eta_seconds ETA.\n"
        "# TYPE ctagent_eta_seconds gauge\n"
        "ctagent_eta_seconds +Inf\n");
  // And a strict reader gets the original label value back.
  const auto page = test::ParseExposition(text);
  REQUIRE(page.error.empty());
  CHECK(page.types.at("ctagent_uploaded_bytes_total") == "counter");
  CHECK(page.types.at("ctagent_link_in_use") == "gauge");
  CHECK(page.Value("ctagent_link_in_use", {{"link", "wired \"main\"\\eth0\nnew line"}}) == 1.0);
  CHECK(page.Value("ctagent_uploaded_bytes_total", {{"kind", "manifest"}}) == 812.0);
}

TEST_CASE("metrics: numbers are written as Prometheus reads them") {
  CHECK(metrics::FormatValue(0) == "0");
  CHECK(metrics::FormatValue(8589934592.0) == "8589934592");  // 8 GiB: no exponent
  CHECK(metrics::FormatValue(0.1) == "0.1");
  CHECK(metrics::FormatValue(2.5) == "2.5");
  CHECK(metrics::FormatValue(1.0 / 3.0) == "0.3333333333333333");  // 16 digits read back exactly
  CHECK(std::strtod(metrics::FormatValue(1.0 / 3.0).c_str(), nullptr) == 1.0 / 3.0);
  CHECK(metrics::FormatValue(-HUGE_VAL) == "-Inf");
  CHECK(metrics::FormatValue(std::nan("")) == "NaN");
}

TEST_CASE("metrics: names that Prometheus would refuse are left out, not served broken") {
  CHECK(metrics::ValidMetricName("ctagent_scans"));
  CHECK(metrics::ValidMetricName("ns:ctagent_scans"));
  CHECK_FALSE(metrics::ValidMetricName("9scans"));
  CHECK_FALSE(metrics::ValidMetricName("scan-count"));
  CHECK_FALSE(metrics::ValidMetricName(""));
  CHECK(metrics::ValidLabelName("state"));
  CHECK_FALSE(metrics::ValidLabelName("__name__"));
  CHECK_FALSE(metrics::ValidLabelName("sta te"));
  CHECK_FALSE(metrics::ValidLabelName("a:b"));

  metrics::Registry registry;
  registry.Gauge("bad-name", "x").Add({}, 1);
  registry.Gauge("ctagent_good", "y").Add({{"ok", "1"}, {"bad label", "2"}}, 3);
  CHECK(registry.Render() == "# HELP ctagent_good y\n# TYPE ctagent_good gauge\nctagent_good{ok=\"1\"} 3\n");
}

TEST_CASE("metrics: a histogram has cumulative buckets up to +Inf, a sum and a count") {
  metrics::Histogram latency({1, 10, 60});
  for (double v : {0.5, 1.0, 3.0, 59.0, 61.0, 600.0}) latency.Observe(v);
  metrics::Registry registry;
  latency.AppendTo(registry.HistogramFamily("ctagent_images_latency_seconds", "Latency."));
  const auto page = test::ParseExposition(registry.Render());
  REQUIRE(page.error.empty());
  CHECK(page.types.at("ctagent_images_latency_seconds") == "histogram");
  // le is inclusive: 1.0 falls in the le="1" bucket.
  CHECK(page.Value("ctagent_images_latency_seconds_bucket", {{"le", "1"}}) == 2.0);
  CHECK(page.Value("ctagent_images_latency_seconds_bucket", {{"le", "10"}}) == 3.0);
  CHECK(page.Value("ctagent_images_latency_seconds_bucket", {{"le", "60"}}) == 4.0);
  CHECK(page.Value("ctagent_images_latency_seconds_bucket", {{"le", "+Inf"}}) == 6.0);
  CHECK(page.Value("ctagent_images_latency_seconds_count") == 6.0);
  CHECK(page.Value("ctagent_images_latency_seconds_sum") == 724.5);
}

namespace {

// The server with a page that counts its scrapes, on its own loop thread.
class ServerOnLoop {
 public:
  explicit ServerOnLoop(metrics::ServerSettings settings)
      : loop_([&](boost::asio::io_context& io) {
          return metrics::Server::Open(io, settings, [this] {
            ++scrapes_;
            metrics::Registry r;
            r.Counter("ctagent_test_scrapes_total", "Scrapes so far.").Add({}, scrapes_);
            return r.Render();
          });
        }) {}
  std::uint16_t port() const { return loop_.port(); }

 private:
  int scrapes_ = 0;  // before loop_: the page counts from the first scrape on
  test::ServerOnLoop<metrics::Server> loop_;
};

using Client = test::LoopbackClient;
using test::BodyOf;

std::string Get(std::uint16_t port, const std::string& request) {
  Client c(port);
  c.Send(request);
  return c.ReadAll();
}


}  // namespace

TEST_CASE("metrics server: GET /metrics gets the page, other paths 404, other methods 405") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0});
  REQUIRE(server.port() != 0);

  const std::string ok = Get(server.port(), "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n");
  CHECK(ok.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(ok.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
  CHECK(ok.find("Connection: close\r\n") != std::string::npos);
  const std::string body = BodyOf(ok);
  CHECK(ok.find("Content-Length: " + std::to_string(body.size()) + "\r\n") != std::string::npos);
  auto page = test::ParseExposition(body);
  REQUIRE(page.error.empty());
  CHECK(page.Value("ctagent_test_scrapes_total") == 1.0);
  // Each scrape builds the page anew; a query string is the same page.
  page = test::ParseExposition(BodyOf(Get(server.port(), "GET /metrics?x=1 HTTP/1.0\r\n\r\n")));
  CHECK(page.Value("ctagent_test_scrapes_total") == 2.0);

  CHECK(Get(server.port(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n").rfind("HTTP/1.1 404 Not Found\r\n", 0) == 0);
  CHECK(Get(server.port(), "GET /metricsx HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 404 ", 0) == 0);
  const std::string post = Get(server.port(), "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  CHECK(post.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0) == 0);
  CHECK(post.find("Allow: GET\r\n") != std::string::npos);
  CHECK(Get(server.port(), "GARBAGE\r\n\r\n").rfind("HTTP/1.1 400 ", 0) == 0);
  CHECK(Get(server.port(), "GET /metrics HTTP/2.0\r\n\r\n").rfind("HTTP/1.1 505 ", 0) == 0);
  // None of those was a scrape.
  page = test::ParseExposition(BodyOf(Get(server.port(), "GET /metrics HTTP/1.1\r\n\r\n")));
  CHECK(page.Value("ctagent_test_scrapes_total") == 3.0);
}

TEST_CASE("metrics server: a request head over the bound is refused with 431, not buffered") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0, .max_request_bytes = 1024});
  Client c(server.port());
  c.Send("GET /metrics HTTP/1.1\r\nX-Padding: " + std::string(4000, 'a') + "\r\n\r\n");
  CHECK(c.ReadAll().rfind("HTTP/1.1 431 ", 0) == 0);
}

TEST_CASE("metrics server: connections beyond the bound get 503, and a silent one is closed after the timeout") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0, .max_connections = 2, .request_timeout = 300ms});
  {
    // Two silent connections hold both places; the third is answered 503 at once.
    Client a(server.port());
    Client b(server.port());
    std::this_thread::sleep_for(50ms);  // let the loop accept both before the third connects
    CHECK(Get(server.port(), "GET /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 503 ", 0) == 0);
    // The silent ones are closed by the server (recv sees EOF well within its 5 s timeout).
    CHECK(a.ReadAll().empty());
    CHECK(b.ReadAll().empty());
  }
  // Places free again: a scrape is answered.
  CHECK(Get(server.port(), "GET /metrics HTTP/1.1\r\n\r\n").rfind("HTTP/1.1 200 ", 0) == 0);
}

TEST_CASE("metrics server: an address that is not an IP, or a port in use, is an error that says what to change") {
  boost::asio::io_context io;
  auto bad = metrics::Server::Open(io, {.address = "localhost", .port = 0}, [] { return std::string(); });
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().kind() == ErrorKind::kInvalidInput);
  CHECK_THAT(bad.error().message(), Catch::Contains("/metrics/address"));

  std::uint16_t port = 0;
  const int taken = test::ListenOnLoopback(&port);
  auto busy = metrics::Server::Open(io, {.address = "127.0.0.1", .port = port}, [] { return std::string(); });
  ::close(taken);
  REQUIRE_FALSE(busy.has_value());
  CHECK(busy.error().kind() == ErrorKind::kIo);
  CHECK_THAT(busy.error().message(), Catch::Contains("127.0.0.1 port " + std::to_string(port)));
  CHECK_THAT(busy.error().message(), Catch::Contains("/metrics/port"));
}
