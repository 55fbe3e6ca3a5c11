// The operator's page's server (agent/ui/server.hpp) on a real loopback socket: what each route
// answers and with which headers (a strict Content-Security-Policy, nosniff, /api never cached),
// the live event stream, and every bound: request head size, request body, connections, silent
// connections, event streams, and a client too slow for its event stream, which is dropped
// rather than buffered.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <regex>
#include <string>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include "base/durable_file.hpp"
#include "agent/control/status.hpp"
#include "agent/results/result_set.hpp"
#include "agent/spool/spool.hpp"
#include "agent/ui/assets.hpp"
#include "agent/ui/server.hpp"
#include "tests/support/loopback_http.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;

namespace {

constexpr const char* kCsp =
    "Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n";

// What the server shows as the status: a version the test sets, and padding to make it large.
struct FakeStatus {
  std::atomic<int> version{1};
  std::atomic<bool> change_every_call{false};
  std::atomic<std::size_t> padding{0};
  std::atomic<int> calls{0};
  nlohmann::json Build() {
    const int call = ++calls;
    return {{"version", change_every_call ? call : version.load()}, {"padding", std::string(padding.load(), 'x')}};
  }
};

// The server with a fake status, on its own loop thread; `setup` runs before the loop starts.
class ServerOnLoop {
 public:
  explicit ServerOnLoop(ui::ServerSettings settings, const std::function<void(ui::Server&)>& setup = {})
      : loop_([&](boost::asio::io_context& io) {
          auto server = ui::Server::Open(io, settings, [this] { return status.Build(); });
          if (server && setup) setup(**server);
          return server;
        }) {}
  std::uint16_t port() const { return loop_.port(); }
  template <class F>
  auto OnLoop(F f) {
    return loop_.OnLoop(std::move(f));
  }

  FakeStatus status;  // before loop_: the server reads it from its first request on

 private:
  test::ServerOnLoop<ui::Server> loop_;
};

using Client = test::LoopbackClient;
using test::BodyOf;

std::string Get(std::uint16_t port, const std::string& path, const std::string& host = "127.0.0.1") {
  Client c(port);
  c.Send("GET " + path + " HTTP/1.1\r\nHost: " + host + ":" + std::to_string(port) + "\r\n\r\n");
  return c.ReadAll();
}

std::string HeadOf(const std::string& response) { return response.substr(0, response.find("\r\n\r\n") + 2); }


}  // namespace

TEST_CASE("ui server: the page, its script and style, and /api/status, each with a strict CSP and nosniff") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0});
  REQUIRE(server.port() != 0);
  struct Route {
    std::string path;
    std::string type;
    std::string cache;
  };
  for (const Route& r : {Route{"/", "text/html; charset=utf-8", "no-cache"},
                         Route{"/index.html", "text/html; charset=utf-8", "no-cache"},
                         Route{"/app.js", "text/javascript; charset=utf-8", "no-cache"},
                         Route{"/app.css", "text/css; charset=utf-8", "no-cache"},
                         Route{"/api/status", "application/json", "no-store"},
                         Route{"/api/status?x=1", "application/json", "no-store"}}) {
    INFO(r.path);
    const std::string response = Get(server.port(), r.path);
    const std::string head = HeadOf(response);
    INFO(head);
    CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(head.find("Content-Type: " + r.type + "\r\n") != std::string::npos);
    CHECK(head.find(kCsp) != std::string::npos);
    CHECK(head.find("X-Content-Type-Options: nosniff\r\n") != std::string::npos);
    CHECK(head.find("Cache-Control: " + r.cache + "\r\n") != std::string::npos);
    CHECK(head.find("Content-Length: " + std::to_string(BodyOf(response).size()) + "\r\n") != std::string::npos);
  }
  // The page is the embedded file; the status is the source's, built for the request.
  const std::string page = BodyOf(Get(server.port(), "/"));
  CHECK(page.find("<script src=\"/app.js\"") != std::string::npos);
  const auto status = nlohmann::json::parse(BodyOf(Get(server.port(), "/api/status")));
  CHECK(status["version"] == 1);
  server.status.version = 7;
  CHECK(nlohmann::json::parse(BodyOf(Get(server.port(), "/api/status")))["version"] == 7);
  // localhost and [::1] are loopback names too.
  CHECK(Get(server.port(), "/api/status", "localhost").rfind("HTTP/1.1 200 ", 0) == 0);
  CHECK(Get(server.port(), "/api/status", "[::1]").rfind("HTTP/1.1 200 ", 0) == 0);
}

TEST_CASE("ui server: the embedded page has no inline script or style, which its CSP would block") {
  bool page = false;
  for (const ui::Asset& asset : ui::EmbeddedAssets()) {
    if (asset.content_type.rfind("text/html", 0) != 0) continue;
    page = page || asset.path == "/index.html";
    const std::string html(asset.body);
    INFO(asset.path);
    CHECK(html.find("<script>") == std::string::npos);
    CHECK(html.find("<style") == std::string::npos);
    CHECK(html.find("style=") == std::string::npos);
    CHECK_FALSE(std::regex_search(html, std::regex(R"(\son[a-z]+\s*=)")));  // no onclick= / onload= handlers
    CHECK(html.find("http://") == std::string::npos);  // nothing from elsewhere
    CHECK(html.find("https://") == std::string::npos);
  }
  CHECK(page);
}

TEST_CASE("ui server: other paths 404, other methods 405, a foreign Host 421, a malformed request 400") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0});
  const std::string missing = Get(server.port(), "/etc/passwd");
  CHECK(missing.rfind("HTTP/1.1 404 Not Found\r\n", 0) == 0);
  CHECK(missing.find(kCsp) != std::string::npos);  // errors carry the headers too
  CHECK(Get(server.port(), "/api/statusx").rfind("HTTP/1.1 404 ", 0) == 0);
  {
    Client c(server.port());
    c.Send("POST /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    const std::string post = c.ReadAll();
    CHECK(post.rfind("HTTP/1.1 405 Method Not Allowed\r\n", 0) == 0);
    CHECK(post.find("Allow: GET\r\n") != std::string::npos);
  }
  // A page elsewhere that rebinds its name to 127.0.0.1 sends its own name as Host.
  const std::string rebound = Get(server.port(), "/api/status", "attacker.example");
  CHECK(rebound.rfind("HTTP/1.1 421 ", 0) == 0);
  CHECK(BodyOf(rebound).find("version") == std::string::npos);
  {
    Client c(server.port());
    c.Send("GET /api/status HTTP/1.1\r\n\r\n");  // no Host at all
    CHECK(c.ReadAll().rfind("HTTP/1.1 421 ", 0) == 0);
  }
  {
    Client c(server.port());
    c.Send("GARBAGE\r\n\r\n");
    CHECK(c.ReadAll().rfind("HTTP/1.1 400 ", 0) == 0);
  }
  CHECK(server.status.calls == 0);  // none of those built a status
}

TEST_CASE("ui server: a request head over the bound is refused with 431, a request body with 413") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0, .max_request_bytes = 1024});
  {
    Client c(server.port());
    c.Send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + std::string(4000, 'a') + "\r\n\r\n");
    CHECK(c.ReadAll().rfind("HTTP/1.1 431 ", 0) == 0);
  }
  {
    Client c(server.port());
    c.Send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n" + std::string(1000, 'b'));
    CHECK(c.ReadAll().rfind("HTTP/1.1 413 ", 0) == 0);
  }
  CHECK(Get(server.port(), "/").rfind("HTTP/1.1 200 ", 0) == 0);
}

TEST_CASE("ui server: connections beyond the bound get 503, and a silent one is closed after the timeout") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0, .max_connections = 2, .request_timeout = 300ms});
  {
    Client a(server.port());
    Client b(server.port());
    REQUIRE(test::WaitFor([&] { return server.OnLoop([](ui::Server& s) { return s.open_connections(); }) == 2; }, 5s));
    CHECK(Get(server.port(), "/").rfind("HTTP/1.1 503 ", 0) == 0);
    // The silent ones are closed by the server (recv sees EOF well within its 5 s timeout).
    CHECK(a.ReadAll().empty());
    CHECK(b.ReadAll().empty());
  }
  CHECK(Get(server.port(), "/").rfind("HTTP/1.1 200 ", 0) == 0);
}

TEST_CASE("ui server: /api/events sends the status at once, then each change once, and keeps the stream open") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0, .request_timeout = 300ms, .event_interval = 20ms});
  Client c(server.port());
  c.Send("GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
  std::string stream;
  REQUIRE(c.ReadUntil(stream, "data: {\"padding\":\"\",\"version\":1}\n\n"));
  const std::string head = HeadOf(stream);
  CHECK(head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(head.find("Content-Type: text/event-stream; charset=utf-8\r\n") != std::string::npos);
  CHECK(head.find("Cache-Control: no-store\r\n") != std::string::npos);
  CHECK(head.find(kCsp) != std::string::npos);
  CHECK(head.find("X-Content-Type-Options: nosniff\r\n") != std::string::npos);
  CHECK(head.find("Content-Length") == std::string::npos);
  CHECK(server.OnLoop([](ui::Server& s) { return s.event_clients(); }) == 1);

  // Past the request timeout the stream stays open; a change arrives as one event.
  const int calls_before = server.status.calls;
  REQUIRE(test::WaitFor([&] { return server.status.calls >= calls_before + 20; }, 10s));  // > 300 ms of checks
  std::size_t from = stream.size();
  server.status.version = 2;
  REQUIRE(c.ReadUntil(stream, "\"version\":2}\n\n", from));
  // Unchanged, it is not sent again: the next event is the next change.
  const int calls_after = server.status.calls;
  REQUIRE(test::WaitFor([&] { return server.status.calls >= calls_after + 10; }, 10s));
  from = stream.size();
  server.status.version = 3;
  REQUIRE(c.ReadUntil(stream, "\"version\":3}\n\n", from));
  CHECK(stream.find("\"version\":2}", from) == std::string::npos);
  CHECK(stream.find("version\":2}") == stream.rfind("version\":2}"));
}

TEST_CASE("ui server: event streams beyond the bound get 503, and a closed page frees its place") {
  ServerOnLoop server({.address = "127.0.0.1", .port = 0, .max_event_clients = 1, .event_interval = 20ms});
  const std::string request = "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  {
    Client first(server.port());
    first.Send(request);
    std::string stream;
    REQUIRE(first.ReadUntil(stream, "data: "));
    Client second(server.port());
    second.Send(request);
    const std::string refused = second.ReadAll();
    CHECK(refused.rfind("HTTP/1.1 503 ", 0) == 0);
    CHECK(refused.find("Retry-After: 5\r\n") != std::string::npos);
  }
  // The first page closed: the server notices at its next write (a change) and frees the place.
  server.status.change_every_call = true;
  REQUIRE(test::WaitFor([&] { return server.OnLoop([](ui::Server& s) { return s.event_clients(); }) == 0; }, 10s));
  Client third(server.port());
  third.Send(request);
  std::string stream;
  CHECK(third.ReadUntil(stream, "data: "));
  CHECK(server.OnLoop([](ui::Server& s) { return s.dropped_event_clients(); }) == 0);  // closed, not dropped
}

TEST_CASE("ui server: a client that does not read its event stream is dropped, not buffered without bound") {
  ServerOnLoop server({.address = "127.0.0.1",
                       .port = 0,
                       .request_timeout = 30s,  // the backlog bound is what drops it here, not a stalled write
                       .max_event_backlog_bytes = 1024 * 1024,
                       .event_interval = 5ms});
  server.status.padding = 256 * 1024;
  server.status.change_every_call = true;  // a new 256 KiB snapshot every 5 ms
  Client slow(server.port(), 4096);
  slow.Send("GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  // Never read: the kernel's buffers fill (a few MiB at most on loopback), then the server's
  // queue passes 1 MiB and the client is dropped.
  REQUIRE(test::WaitFor([&] { return server.OnLoop([](ui::Server& s) { return s.dropped_event_clients(); }) == 1; },
                        30s));
  CHECK(server.OnLoop([](ui::Server& s) { return s.event_clients(); }) == 0);
  // The server goes on serving.
  server.status.padding = 0;
  CHECK(Get(server.port(), "/api/status").rfind("HTTP/1.1 200 ", 0) == 0);
}

TEST_CASE("ui server: without TLS only loopback, and an address elsewhere or a port in use is an error that says what to change") {
  boost::asio::io_context io;
  const auto status = [] { return nlohmann::json::object(); };
  for (const char* remote : {"0.0.0.0", "192.0.2.10", "::"}) {
    INFO(remote);
    auto refused = ui::Server::Open(io, {.address = remote, .port = 0}, status);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().kind() == ErrorKind::kInvalidInput);
    CHECK_THAT(refused.error().message(), Catch::Contains("not a loopback address"));
    CHECK_THAT(refused.error().message(), Catch::Contains("/ui/address"));
  }
  auto bad = ui::Server::Open(io, {.address = "localhost", .port = 0}, status);
  REQUIRE_FALSE(bad.has_value());
  CHECK_THAT(bad.error().message(), Catch::Contains("/ui/address"));
  auto six = ui::Server::Open(io, {.address = "::1", .port = 0}, status);
  CHECK(six.has_value());

  std::uint16_t port = 0;
  const int taken = test::ListenOnLoopback(&port);
  auto busy = ui::Server::Open(io, {.address = "127.0.0.1", .port = port}, status);
  ::close(taken);
  REQUIRE_FALSE(busy.has_value());
  CHECK(busy.error().kind() == ErrorKind::kIo);
  CHECK_THAT(busy.error().message(), Catch::Contains("127.0.0.1 port " + std::to_string(port)));
  CHECK_THAT(busy.error().message(), Catch::Contains("/ui/port"));
}

namespace {

// A POST to the confirm route with the given headers (each "Name: value\r\n").
std::string Post(std::uint16_t port, const std::string& path, const std::string& headers) {
  Client c(port);
  c.Send("POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n" + headers +
         "Content-Length: 0\r\n\r\n");
  return c.ReadAll();
}

// A spool with a delivered HIGH-RISK scan (2.25.702) and a delivered NORMAL one (2.25.701), their
// findings where the results fetch writes them.
void FillSpool(spool::Spool& spool) {
  for (const char* uid : {"2.25.701", "2.25.702"}) {
    spool::ScanRecord record;
    record.scan_uid = uid;
    record.study_uid = std::string(uid) + "1";
    record.created_utc = "2026-12-05T09:00:00Z";
    REQUIRE(spool.BeginScan(record, 0).has_value());
    REQUIRE(spool.Update(uid, [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }).has_value());
    results::ScanFindings findings;
    findings.report = "received";
    findings.findings.category = std::string(uid) == "2.25.702" ? "HIGH-RISK" : "NORMAL";
    findings.findings.lesion_count = std::string(uid) == "2.25.702" ? 2 : 0;
    REQUIRE(results::WriteScanFindings(spool.ResultPath(uid, "x").parent_path(), findings).has_value());
  }
}

}  // namespace

TEST_CASE("ui server: POST /api/scans/<uid>/confirm with this page's Origin and token confirms, durably, and "
          "anything else is refused and confirms nothing") {
  test::TempDir dir("ui-confirm");
  PosixFileStore files;
  auto opened = spool::Spool::Open({dir.path() / "spool", 1ull << 30, 0}, files);
  REQUIRE(opened.has_value());
  spool::Spool& spool = **opened;
  FillSpool(spool);
  std::atomic<int> confirm_calls{0};
  ServerOnLoop server({.address = "127.0.0.1", .port = 0}, [&](ui::Server& s) {
    // As the daemon wires it: the spool's one confirmation function, by the console user.
    s.OnConfirm([&](const std::string& uid, ui::Server::ConfirmDone done) {
      ++confirm_calls;
      // From another thread, as the daemon's records worker answers.
      std::thread([&spool, uid, done = std::move(done)] { done(control::ConfirmHighRisk(spool, uid, "Nurse Wang")); })
          .join();
    });
  });
  const std::uint16_t port = server.port();
  const std::string origin = "Origin: http://127.0.0.1:" + std::to_string(port) + "\r\n";

  // The token the page fetches: 64 hex digits, this server's.
  const std::string token_response = Get(port, "/api/token");
  CHECK(token_response.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(HeadOf(token_response).find("Cache-Control: no-store\r\n") != std::string::npos);
  const std::string token = nlohmann::json::parse(BodyOf(token_response))["token"].get<std::string>();
  CHECK(std::regex_match(token, std::regex("[0-9a-f]{64}")));
  CHECK(token == server.OnLoop([](ui::Server& s) { return s.token(); }));
  const std::string with_token = "X-CTAgent-Token: " + token + "\r\n";
  std::string wrong_token = token;
  wrong_token[10] = wrong_token[10] == 'a' ? 'b' : 'a';

  const std::string path = "/api/scans/2.25.702/confirm";
  struct Refused {
    std::string why;
    std::string response;
    std::string status;
  };
  const std::vector<Refused> refused = {
      {"no token", Post(port, path, origin), "403"},
      {"a wrong token", Post(port, path, origin + "X-CTAgent-Token: " + wrong_token + "\r\n"), "403"},
      {"an empty token", Post(port, path, origin + "X-CTAgent-Token: \r\n"), "403"},
      {"no Origin", Post(port, path, with_token), "403"},
      {"a foreign Origin", Post(port, path, "Origin: http://attacker.example\r\n" + with_token), "403"},
      {"an Origin of another port", Post(port, path, "Origin: http://127.0.0.1:1\r\n" + with_token), "403"},
      {"Origin null", Post(port, path, "Origin: null\r\n" + with_token), "403"},
      {"GET instead of POST", Get(port, path), "405"},
  };
  for (const Refused& r : refused) {
    INFO(r.why << ":\n" << r.response);
    CHECK(r.response.rfind("HTTP/1.1 " + r.status + " ", 0) == 0);
    CHECK(r.response.find(kCsp) != std::string::npos);
    CHECK(BodyOf(r.response).size() < 200);  // one short line
  }
  CHECK(refused.back().response.find("Allow: POST\r\n") != std::string::npos);
  {  // A request body is never read: 413.
    Client c(port);
    c.Send("POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n" + origin + with_token +
           "Content-Length: 5\r\n\r\nhello");
    CHECK(c.ReadAll().rfind("HTTP/1.1 413 ", 0) == 0);
  }
  CHECK(confirm_calls == 0);
  auto untouched = spool.Get("2.25.702");
  REQUIRE(untouched);
  CHECK(untouched->high_risk_confirmed_utc.empty());

  // Unknown and malformed scan UIDs: 404; a scan that is not high risk: 409.
  CHECK(Post(port, "/api/scans/2.25.999/confirm", origin + with_token).rfind("HTTP/1.1 404 ", 0) == 0);
  CHECK(Post(port, "/api/scans/..%2Fetc/confirm", origin + with_token).rfind("HTTP/1.1 404 ", 0) == 0);
  CHECK(Post(port, "/api/scans//confirm", origin + with_token).rfind("HTTP/1.1 404 ", 0) == 0);
  const std::string normal = Post(port, "/api/scans/2.25.701/confirm", origin + with_token);
  CHECK(normal.rfind("HTTP/1.1 409 ", 0) == 0);
  CHECK_THAT(BodyOf(normal), Catch::Contains("not HIGH-RISK"));

  // This page's Origin and token: confirmed, by the console user, and answered with when and who.
  const std::string ok = Post(port, path, origin + with_token);
  INFO(ok);
  REQUIRE(ok.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(HeadOf(ok).find("Content-Type: application/json\r\n") != std::string::npos);
  const auto answer = nlohmann::json::parse(BodyOf(ok));
  CHECK(answer["scan_uid"] == "2.25.702");
  CHECK(answer["high_risk_confirmed_by"] == "Nurse Wang");
  // localhost is this page too, when it was opened under that name.
  {
    Client c(port);
    c.Send("POST " + path + " HTTP/1.1\r\nHost: localhost:" + std::to_string(port) + "\r\nOrigin: http://localhost:" +
           std::to_string(port) + "\r\n" + with_token + "\r\n");
    const std::string again = c.ReadAll();
    CHECK(again.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
    CHECK(nlohmann::json::parse(BodyOf(again)) == answer);  // the first confirmation stands
  }
  // Durable: another reader of the spool (as `ctagent status` opens it) sees it in the journal.
  auto reader = spool::Spool::Open({.directory = dir.path() / "spool", .read_only = true}, files);
  REQUIRE(reader.has_value());
  auto back = (*reader)->Get("2.25.702");
  REQUIRE(back);
  CHECK(back->high_risk_confirmed_utc == answer["high_risk_confirmed_utc"].get<std::string>());
  CHECK(back->high_risk_confirmed_by == "Nurse Wang");
  auto other = (*reader)->Get("2.25.701");
  REQUIRE(other);
  CHECK(other->high_risk_confirmed_utc.empty());
}

TEST_CASE("ui server: /api/patients answers the page's token only, and a server without the action says 404") {
  std::atomic<int> patient_calls{0};
  ServerOnLoop server({.address = "127.0.0.1", .port = 0}, [&](ui::Server& s) {
    s.OnPatients([&](ui::Server::PatientsDone done) {
      ++patient_calls;
      std::thread([done = std::move(done)] {
        done(nlohmann::json{{"2.25.702", {{"name", "WANG^XIAOMING"}, {"id", "PID-7"}}}});
      }).join();
    });
  });
  const std::uint16_t port = server.port();
  const std::string token = server.OnLoop([](ui::Server& s) { return s.token(); });
  CHECK(Get(port, "/api/patients").rfind("HTTP/1.1 403 ", 0) == 0);
  {
    Client c(port);
    c.Send("GET /api/patients HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CTAgent-Token: " + std::string(64, '0') + "\r\n\r\n");
    CHECK(c.ReadAll().rfind("HTTP/1.1 403 ", 0) == 0);
  }
  CHECK(patient_calls == 0);
  Client c(port);
  c.Send("GET /api/patients HTTP/1.1\r\nHost: 127.0.0.1\r\nX-CTAgent-Token: " + token + "\r\n\r\n");
  const std::string response = c.ReadAll();
  REQUIRE(response.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(HeadOf(response).find("Cache-Control: no-store\r\n") != std::string::npos);
  CHECK(nlohmann::json::parse(BodyOf(response))["2.25.702"]["name"] == "WANG^XIAOMING");
  CHECK(patient_calls == 1);
  // The status the page and the control socket share has no names.
  CHECK(BodyOf(Get(port, "/api/status")).find("WANG") == std::string::npos);

  // A server that was given no confirm action (and a new token at each start).
  ServerOnLoop bare({.address = "127.0.0.1", .port = 0});
  const std::string bare_token = bare.OnLoop([](ui::Server& s) { return s.token(); });
  CHECK(bare_token != token);
  const std::string post = "POST /api/scans/2.25.702/confirm HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(bare.port()) +
                           "\r\nOrigin: http://127.0.0.1:" + std::to_string(bare.port()) +
                           "\r\nX-CTAgent-Token: " + bare_token + "\r\n\r\n";
  Client b(bare.port());
  b.Send(post);
  CHECK(b.ReadAll().rfind("HTTP/1.1 404 ", 0) == 0);
}
