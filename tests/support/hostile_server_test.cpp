// The hostile-server harness itself (tests/support/hostile_server): each action does what the
// rules say, seen from a real libcurl client over TLS verified against the harness's CA.
#include <catch2/catch.hpp>

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/hostile_server.hpp"

using ctagent::test::HostileOptions;
using ctagent::test::HostileServer;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Fetch {
  CURLcode rc = CURLE_OK;
  long status = 0;
  std::string body;
  std::vector<std::size_t> writes;  // the size of each piece of body as curl handed it over
  std::map<std::string, std::string> headers;  // lower-case names
  std::string error;
  std::string tls_version;  // "TLSv1.1", ... as curl reports the connection
  std::uint64_t body_bytes = 0;
  std::string first_bytes;  // the first 16 bytes of the body
  std::string last_bytes;   // the last 16 bytes
};

struct Options {
  std::string method = "GET";
  std::string body;
  std::string ca;
  long timeout_ms = 20000;
  bool keep_body = true;     // false: only count bytes (huge bodies)
  std::string resolve;       // CURLOPT_RESOLVE entry
  bool allow_old_tls = false;
};

std::size_t OnBody(char* data, std::size_t size, std::size_t n, void* user) {
  auto* f = static_cast<Fetch*>(user);
  const std::size_t len = size * n;
  f->writes.push_back(len);
  if (f->first_bytes.size() < 16) f->first_bytes.append(data, std::min<std::size_t>(len, 16 - f->first_bytes.size()));
  f->last_bytes.append(data, len);
  if (f->last_bytes.size() > 16) f->last_bytes.erase(0, f->last_bytes.size() - 16);
  f->body_bytes += len;
  return len;
}

std::size_t OnBodyKeep(char* data, std::size_t size, std::size_t n, void* user) {
  static_cast<Fetch*>(user)->body.append(data, size * n);
  return OnBody(data, size, n, user);
}

int OnDebug(CURL*, curl_infotype type, char* data, std::size_t size, void* user) {
  if (type != CURLINFO_TEXT) return 0;
  // "SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384"
  const std::string text(data, size);
  const auto at = text.find("SSL connection using ");
  if (at != std::string::npos) {
    const auto start = at + std::string("SSL connection using ").size();
    static_cast<Fetch*>(user)->tls_version = text.substr(start, text.find(' ', start) - start);
  }
  return 0;
}

std::size_t OnHeader(char* data, std::size_t size, std::size_t n, void* user) {
  auto* f = static_cast<Fetch*>(user);
  const std::string line(data, size * n);
  const auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ')) value.erase(0, 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n')) value.pop_back();
    f->headers[name] = value;
  }
  return size * n;
}

Fetch Request(const std::string& url, const Options& o = {}) {
  Fetch f;
  CURL* c = curl_easy_init();
  REQUIRE(c != nullptr);
  char error[CURL_ERROR_SIZE] = {};
  curl_slist* resolve = nullptr;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, o.timeout_ms);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, o.keep_body ? OnBodyKeep : OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &f);
  curl_easy_setopt(c, CURLOPT_DEBUGFUNCTION, OnDebug);
  curl_easy_setopt(c, CURLOPT_DEBUGDATA, &f);
  curl_easy_setopt(c, CURLOPT_VERBOSE, 1L);
  if (!o.ca.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, o.ca.c_str());
  if (o.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (o.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, o.method.c_str());
  }
  if (!o.body.empty()) {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, o.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(o.body.size()));
  }
  if (!o.resolve.empty()) {
    resolve = curl_slist_append(resolve, o.resolve.c_str());
    curl_easy_setopt(c, CURLOPT_RESOLVE, resolve);
  }
  if (o.allow_old_tls) {
    // OpenSSL 3 offers TLS 1.0/1.1 only at security level 0.
    curl_easy_setopt(c, CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_0);
    curl_easy_setopt(c, CURLOPT_SSL_CIPHER_LIST, "DEFAULT:@SECLEVEL=0");
  }
  f.rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f.status);
  f.error = error;
  curl_slist_free_all(resolve);
  curl_easy_cleanup(c);
  return f;
}

Options Trusting(const HostileServer& s) {
  Options o;
  o.ca = s.ca_file().string();
  return o;
}

long PeakRssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

}  // namespace

TEST_CASE("hostile_server answers a rule's status, headers and body over verified TLS and logs the request",
          "[harness]") {
  auto s = HostileServer::Start(json::parse(R"([
    {"method": "POST", "path": "^/files/?$", "action": {"status": 201, "headers": {"Location": "https://elsewhere.invalid/x", "Tus-Resumable": "1.0.0"}, "body": "made"}},
    {"method": "*", "path": "^/any", "action": {"status": 200, "body": "any"}}
  ])"));
  REQUIRE(s->origin() == "https://127.0.0.1:" + std::to_string(s->port()));
  Options post = Trusting(*s);
  post.method = "POST";
  post.body = "hello";
  Fetch f = Request(s->origin() + "/files/", post);
  INFO(f.error);
  REQUIRE(f.rc == CURLE_OK);
  CHECK(f.status == 201);
  CHECK(f.body == "made");
  CHECK(f.headers["location"] == "https://elsewhere.invalid/x");
  CHECK(f.headers["tus-resumable"] == "1.0.0");
  CHECK(f.headers["content-length"] == "4");

  Options del = Trusting(*s);
  del.method = "DELETE";
  CHECK(Request(s->origin() + "/any/thing?x=1", del).body == "any");
  // GET /files/ matches no rule and there is no upstream.
  Fetch none = Request(s->origin() + "/files/", Trusting(*s));
  CHECK(none.status == 404);

  const auto requests = s->Requests();
  REQUIRE(requests.size() == 3);
  CHECK(requests[0]["method"] == "POST");
  CHECK(requests[0]["path"] == "/files/");
  CHECK(requests[0]["body_bytes"] == 5);
  CHECK(requests[0]["rule"] == 0);
  CHECK(requests[0]["origin_host"] == "127.0.0.1:" + std::to_string(s->port()));
  CHECK(requests[0]["headers"]["content-length"] == "5");
  CHECK(requests[1]["method"] == "DELETE");
  CHECK(requests[1]["path"] == "/any/thing?x=1");
  CHECK(requests[1]["rule"] == 1);
  CHECK(requests[2]["rule"] == -1);
}

TEST_CASE("hostile_server's certificate is valid for 127.0.0.2 and localhost, and only its CA verifies it",
          "[harness]") {
  const json rules = json::parse(R"([{"action": {"body": "ok"}}])");
  HostileOptions second;
  second.listen_host = "127.0.0.2";
  auto s2 = HostileServer::Start(rules, second);
  CHECK(s2->origin() == "https://127.0.0.2:" + std::to_string(s2->port()));
  Fetch f2 = Request(s2->origin() + "/", Trusting(*s2));
  INFO(f2.error);
  CHECK(f2.rc == CURLE_OK);
  CHECK(f2.body == "ok");

  auto s = HostileServer::Start(rules);
  Options by_name = Trusting(*s);
  by_name.resolve = "localhost:" + std::to_string(s->port()) + ":127.0.0.1";
  Fetch f = Request("https://localhost:" + std::to_string(s->port()) + "/", by_name);
  INFO(f.error);
  CHECK(f.rc == CURLE_OK);
  CHECK(f.body == "ok");
  // The system's CAs do not know it: verification really happens.
  CHECK(Request(s->origin() + "/").rc == CURLE_PEER_FAILED_VERIFICATION);
}

TEST_CASE("hostile_server's 'times' limits a rule to its first N matches, and SetRules replaces the rules",
          "[harness]") {
  auto s = HostileServer::Start(json::parse(R"([
    {"path": "^/x$", "times": 2, "action": {"status": 503, "body": "busy"}},
    {"path": "^/x$", "action": {"status": 200, "body": "fine"}}
  ])"));
  CHECK(Request(s->origin() + "/x", Trusting(*s)).status == 503);
  CHECK(Request(s->origin() + "/x", Trusting(*s)).status == 503);
  CHECK(Request(s->origin() + "/x", Trusting(*s)).status == 200);
  CHECK(Request(s->origin() + "/x", Trusting(*s)).status == 200);

  s->SetRules(json::parse(R"([{"path": "^/x$", "times": 1, "action": {"status": 410}}])"));
  CHECK(Request(s->origin() + "/x", Trusting(*s)).status == 410);
  CHECK(Request(s->origin() + "/x", Trusting(*s)).status == 404);
  const auto requests = s->Requests();
  REQUIRE(requests.size() == 6);
  CHECK(requests[0]["rule"] == 0);
  CHECK(requests[2]["rule"] == 1);
  CHECK(requests[4]["rule"] == 0);
  CHECK(requests[5]["rule"] == -1);
}

TEST_CASE("hostile_server streams a 60 MiB body_repeat answer without holding it in memory", "[harness]") {
  // 60 MiB of "{}," between "[" and "]": 20,971,520 units.
  const std::uint64_t count = 20971520;
  auto s = HostileServer::Start(json{{{"path", "^/big$"},
                                      {"action", {{"body_repeat", {{"prefix", "["}, {"unit", "{}"}, {"separator", ","},
                                                                   {"count", count}, {"suffix", "]"}}}}}}});
  Options o = Trusting(*s);
  o.keep_body = false;
  o.timeout_ms = 100000;
  Fetch f = Request(s->origin() + "/big", o);
  INFO(f.error);
  REQUIRE(f.rc == CURLE_OK);
  const std::uint64_t expected = 1 + count * 2 + (count - 1) + 1;
  CHECK(f.headers["content-length"] == std::to_string(expected));
  CHECK(f.body_bytes == expected);
  CHECK(f.first_bytes == "[{},{},{},{},{},");
  CHECK(f.last_bytes == ",{},{},{},{},{}]");
  // Held whole, the body alone would be 60 MiB; streamed, the server stays far below that
  // (its peak includes the sanitizer runtime in the asan build).
  const long peak_kib = PeakRssKiB(s->pid());
  INFO("hostile_server peak RSS " << peak_kib << " KiB");
  CHECK(peak_kib > 0);
  CHECK(peak_kib < 40 * 1024);

  // An empty repetition is just prefix and suffix.
  s->SetRules(json::parse(R"([{"action": {"body_repeat": {"prefix": "[", "unit": "", "count": 1000000000, "suffix": "]"}}}])"));
  CHECK(Request(s->origin() + "/", Trusting(*s)).body == "[]");
}

TEST_CASE("hostile_server sends a body_file and answers HEAD without a body", "[harness]") {
  ctagent::test::TempDir dir("hostile-file");
  const auto file = dir.path() / "answer.bin";
  std::string content;
  for (int i = 0; i < 200000; ++i) content += static_cast<char>('a' + i % 26);
  std::ofstream(file, std::ios::binary) << content;
  auto s = HostileServer::Start(json{{{"action", {{"body_file", file.string()}, {"headers", {{"X-Kind", "file"}}}}}}});
  Fetch f = Request(s->origin() + "/f", Trusting(*s));
  REQUIRE(f.rc == CURLE_OK);
  CHECK(f.body == content);
  CHECK(f.headers["x-kind"] == "file");
  Options head = Trusting(*s);
  head.method = "HEAD";
  Fetch h = Request(s->origin() + "/f", head);
  INFO(h.error);
  REQUIRE(h.rc == CURLE_OK);
  CHECK(h.headers["content-length"] == std::to_string(content.size()));
  CHECK(h.body_bytes == 0);
}

TEST_CASE("hostile_server forwards to a plain-HTTP upstream and edits the answer's headers", "[harness]") {
  HostileOptions plain;
  plain.plain_http = true;
  auto upstream = HostileServer::Start(json::parse(R"([
    {"method": "OPTIONS", "action": {"status": 204, "headers": {"Tus-Resumable": "1.0.0", "Tus-Version": "1.0.0", "Tus-Extension": "creation"}}},
    {"method": "PATCH", "action": {"status": 204, "headers": {"Upload-Offset": "2097152", "Tus-Resumable": "1.0.0"}}},
    {"action": {"status": 200, "headers": {"X-Upstream": "yes"}, "body": "from upstream"}}
  ])"), plain);
  REQUIRE(upstream->origin().rfind("http://127.0.0.1:", 0) == 0);
  HostileOptions front;
  front.upstream = upstream->origin();
  auto s = HostileServer::Start(json::parse(R"([
    {"method": "OPTIONS", "action": {"proxy": true, "remove_headers": ["tus-version"], "set_headers": {"Tus-Extension": "creation,termination", "X-Edited": "1"}}}
  ])"), front);

  Options options = Trusting(*s);
  options.method = "OPTIONS";
  Fetch o = Request(s->origin() + "/files/", options);
  INFO(o.error);
  REQUIRE(o.rc == CURLE_OK);
  CHECK(o.status == 204);
  CHECK(o.headers.count("tus-version") == 0);
  CHECK(o.headers["tus-resumable"] == "1.0.0");
  CHECK(o.headers["tus-extension"] == "creation,termination");
  CHECK(o.headers["x-edited"] == "1");

  // Unmatched requests go upstream unchanged, body included (2 MiB: curl asks for 100-continue).
  Options patch = Trusting(*s);
  patch.method = "PATCH";
  patch.body = std::string(2u << 20, 'z');
  Fetch p = Request(s->origin() + "/files/abc", patch);
  INFO(p.error);
  REQUIRE(p.rc == CURLE_OK);
  CHECK(p.status == 204);
  CHECK(p.headers["upload-offset"] == "2097152");
  Fetch g = Request(s->origin() + "/other?q=1", Trusting(*s));
  CHECK(g.body == "from upstream");
  CHECK(g.headers["x-upstream"] == "yes");

  const auto seen = upstream->Requests();
  REQUIRE(seen.size() == 3);
  CHECK(seen[0]["method"] == "OPTIONS");
  CHECK(seen[1]["method"] == "PATCH");
  CHECK(seen[1]["path"] == "/files/abc");
  CHECK(seen[1]["body_bytes"] == 2u << 20);
  CHECK(seen[1]["origin_host"] == "127.0.0.1:" + std::to_string(s->port()));
  CHECK(seen[1]["headers"]["x-forwarded-proto"] == "https");
  CHECK(seen[2]["path"] == "/other?q=1");
  const auto front_seen = s->Requests();
  REQUIRE(front_seen.size() == 3);
  CHECK(front_seen[0]["rule"] == 0);
  CHECK(front_seen[1]["rule"] == -1);
  CHECK(front_seen[1]["body_bytes"] == 2u << 20);
}

TEST_CASE("hostile_server trickles an answer one byte at a time, after trickle_after_bytes at once", "[harness]") {
  auto s = HostileServer::Start(json::parse(R"([
    {"path": "^/slow$", "action": {"body": "abcdef", "trickle_ms": 100}}
  ])"));
  const auto start = Clock::now();
  Fetch f = Request(s->origin() + "/slow", Trusting(*s));
  const auto took = Clock::now() - start;
  INFO(f.error);
  REQUIRE(f.rc == CURLE_OK);
  CHECK(f.body == "abcdef");
  // Every body byte came on its own (one TLS record each).
  CHECK(f.writes == std::vector<std::size_t>(6, 1));
  // Head and body are 44 bytes, each sent 100 ms after the one before: at least 4.3 s.
  CHECK(took >= std::chrono::milliseconds(4300));

  // With trickle_after_bytes covering the head ("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n",
  // 38 bytes) and 3 body bytes, those come at once, in one piece.
  s->SetRules(json::parse(R"([{"path": "^/slow$", "action": {"body": "abcdef", "trickle_ms": 50, "trickle_after_bytes": 41}}])"));
  Fetch t = Request(s->origin() + "/slow", Trusting(*s));
  INFO(t.error);
  REQUIRE(t.rc == CURLE_OK);
  CHECK(t.body == "abcdef");
  CHECK(t.writes == std::vector<std::size_t>{3, 1, 1, 1});
}

TEST_CASE("hostile_server delays, stays silent, or closes without answering", "[harness]") {
  auto s = HostileServer::Start(json::parse(R"([
    {"path": "^/delay$", "action": {"delay_ms": 1500, "body": "late"}},
    {"path": "^/silence$", "action": {"silence": true}},
    {"path": "^/close$", "action": {"close": true}}
  ])"));
  const auto start = Clock::now();
  Fetch d = Request(s->origin() + "/delay", Trusting(*s));
  CHECK(Clock::now() - start >= std::chrono::milliseconds(1500));
  CHECK(d.body == "late");

  Options short_wait = Trusting(*s);
  short_wait.timeout_ms = 1500;
  Fetch q = Request(s->origin() + "/silence", short_wait);
  CHECK(q.rc == CURLE_OPERATION_TIMEDOUT);
  CHECK(q.status == 0);

  Fetch c = Request(s->origin() + "/close", Trusting(*s));
  INFO(c.error);
  CHECK(c.rc != CURLE_OK);
  CHECK(c.rc != CURLE_OPERATION_TIMEDOUT);
  CHECK(c.status == 0);

  // All three were read and logged, answered or not.
  const auto requests = s->Requests();
  REQUIRE(requests.size() == 3);
  CHECK(requests[1]["path"] == "/silence");
  CHECK(requests[1]["rule"] == 1);
  CHECK(requests[2]["rule"] == 2);
}

TEST_CASE("hostile_server ends on SIGTERM while a connection is held silent", "[harness]") {
  auto s = HostileServer::Start(json::parse(R"([{"action": {"silence": true}}])"));
  Fetch held;
  std::thread client([&] {
    Options o = Trusting(*s);
    o.timeout_ms = 60000;
    held = Request(s->origin() + "/", o);
  });
  REQUIRE(ctagent::test::WaitFor([&] { return s->Requests().size() == 1; }, std::chrono::seconds(20)));
  // Exit code 0: it ended by itself (137 would mean the helper had to SIGKILL it after 5 s).
  CHECK(s->Stop() == 0);
  client.join();
  CHECK(held.rc != CURLE_OK);
  CHECK(held.rc != CURLE_OPERATION_TIMEDOUT);
}

TEST_CASE("hostile_server with tls_max 1.1 offers only TLS 1.0/1.1", "[harness]") {
  HostileOptions old_tls;
  old_tls.tls_max = "1.1";
  auto s = HostileServer::Start(json::parse(R"([{"action": {"body": "old"}}])"), old_tls);
  // A client that allows old versions gets TLS 1.1, the best the server offers.
  Options allow = Trusting(*s);
  allow.allow_old_tls = true;
  Fetch f = Request(s->origin() + "/", allow);
  INFO(f.error);
  REQUIRE(f.rc == CURLE_OK);
  CHECK(f.body == "old");
  CHECK(f.tls_version == "TLSv1.1");
  // A client at OpenSSL's defaults (TLS 1.2 or later) cannot connect.
  Fetch modern = Request(s->origin() + "/", Trusting(*s));
  INFO(modern.error);
  CHECK(modern.rc == CURLE_SSL_CONNECT_ERROR);
  CHECK(modern.status == 0);

  // Without tls_max the default client gets TLS 1.3.
  auto normal = HostileServer::Start(json::parse(R"([{"action": {"body": "new"}}])"));
  Fetch n = Request(normal->origin() + "/", Trusting(*normal));
  REQUIRE(n.rc == CURLE_OK);
  CHECK(n.tls_version == "TLSv1.3");
}
