// hostile_server: an HTTPS (or plain HTTP) server for tests that misbehaves on purpose, per rule.
//
//   hostile_server --rules FILE --log FILE --ready-file FILE [--listen-host H] [--upstream http://H:P]
//                  [--plain-http] [--cert PEM --key PEM] [--tls-max 1.1] [--max-request-bytes N]
//
// The rules file (a JSON array, first match wins; see tests/support/hostile_server.hpp and
// docs/testing.md) is re-read whenever its content changes, so a test can change the behaviour
// while the server runs; each rule's "times" counter starts again with new rules. Unmatched
// requests are forwarded to --upstream (plain HTTP), or answered 404 without one.
// Every request is appended to --log as one JSON line once it has been read (before it is
// answered, so a request that is never answered is logged too). --ready-file receives the port.
//
// Bounds: at most kMaxConnections connections at once; a request header of at most 64 KiB and a
// body of at most --max-request-bytes (default 64 MiB); every read or write must make progress
// within kIoTimeout (a watchdog shuts the socket down otherwise); a silent connection is held at
// most kMaxSilence. Generated and file bodies are streamed in 64 KiB pieces, never held whole.
// SIGTERM or SIGINT: every connection is shut down and the process exits within about a second.
//
// Only HTTP/1.1: no ALPN is offered, so clients that prefer h2 fall back to HTTP/1.1.
// With --tls-max 1.1 only TLS 1.0 and 1.1 are offered (OpenSSL 3 refuses both below security
// level 0, so the server lowers it for that case only).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using asio::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kMaxConnections = 256;
constexpr std::size_t kMaxHeaderBytes = 64 * 1024;
constexpr std::size_t kPiece = 64 * 1024;
constexpr std::uint64_t kMaxUpstreamBody = 256ull << 20;
constexpr std::uint64_t kMaxGeneratedBody = 64ull << 30;  // a sanity bound on body_repeat's size
constexpr std::uint64_t kMaxRequestsPerConnection = 100000;
constexpr auto kIoTimeout = std::chrono::seconds(30);
constexpr auto kMaxSilence = std::chrono::minutes(10);
constexpr auto kMaxDelay = std::chrono::minutes(10);

std::atomic<bool> g_stop{false};

// ---- the watchdog: every blocking socket operation has a deadline ----------------------------
// Sync Beast/Asio calls on a blocking socket cannot time out by themselves (Asio retries a
// SO_RCVTIMEO timeout with an unbounded poll), so a watchdog thread shuts the socket down when
// the deadline passes; the blocked call then fails and the connection ends.
struct Watched {
  int fd = -1;
  std::atomic<std::int64_t> deadline_ms{INT64_MAX};
};

std::mutex g_watch_mutex;
std::vector<Watched*> g_watched;

std::int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
}

class WatchGuard {
 public:
  explicit WatchGuard(int fd) {
    w_.fd = fd;
    std::lock_guard<std::mutex> lock(g_watch_mutex);
    g_watched.push_back(&w_);
  }
  ~WatchGuard() {
    std::lock_guard<std::mutex> lock(g_watch_mutex);
    g_watched.erase(std::remove(g_watched.begin(), g_watched.end(), &w_), g_watched.end());
  }
  WatchGuard(const WatchGuard&) = delete;
  WatchGuard& operator=(const WatchGuard&) = delete;
  void Arm(std::chrono::milliseconds within) { w_.deadline_ms = NowMs() + within.count(); }
  void Disarm() { w_.deadline_ms = INT64_MAX; }

 private:
  Watched w_;
};

void Watchdog() {
  while (true) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const bool stopping = g_stop.load();
    const auto now = NowMs();
    std::lock_guard<std::mutex> lock(g_watch_mutex);
    for (Watched* w : g_watched) {
      if (stopping || w->deadline_ms.load() < now) {
        ::shutdown(w->fd, SHUT_RDWR);
        w->deadline_ms = INT64_MAX;
      }
    }
  }
}

// Sleeps up to `d`, in short slices so SIGTERM is honoured. False when stopping.
bool SleepFor(std::chrono::milliseconds d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until) {
    if (g_stop) return false;
    std::this_thread::sleep_for(std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(50)));
  }
  return !g_stop;
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// ---- rules ---------------------------------------------------------------------------------------
struct Rules {
  std::mutex mutex;
  std::string path;
  std::string text;           // the content the rules below came from
  json rules = json::array();
  std::vector<std::uint64_t> matched;  // per rule: how many requests it took
};

// Checks a rules document; "" when usable, else what is wrong.
std::string CheckRules(const json& rules) {
  if (!rules.is_array()) return "the rules must be a JSON array";
  for (std::size_t i = 0; i < rules.size(); ++i) {
    const json& r = rules[i];
    const std::string where = "rule " + std::to_string(i) + ": ";
    if (!r.is_object()) return where + "not an object";
    if (r.contains("path")) {
      if (!r["path"].is_string()) return where + "\"path\" must be a string";
      try {
        std::regex re(r["path"].get<std::string>(), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        return where + "\"path\" is not an ECMAScript regex: " + e.what();
      }
    }
    if (r.contains("method") && !r["method"].is_string()) return where + "\"method\" must be a string";
    if (r.contains("times") && !r["times"].is_number_unsigned()) return where + "\"times\" must be a count";
    if (!r.contains("action") || !r["action"].is_object()) return where + "\"action\" (an object) is required";
  }
  return "";
}

// Re-reads the rules file if it changed; returns the index of the first matching rule (counted)
// and a copy of its action, or -1.
int Match(Rules& rules, const std::string& method, const std::string& target, json* action, std::string* problem) {
  std::lock_guard<std::mutex> lock(rules.mutex);
  const std::string text = ReadFile(rules.path);
  if (text != rules.text) {
    json parsed = json::parse(text, nullptr, false);
    const std::string why = parsed.is_discarded() ? "not JSON" : CheckRules(parsed);
    if (!why.empty()) {
      *problem = "rules file " + rules.path + ": " + why;
      return -1;
    }
    rules.text = text;
    rules.rules = std::move(parsed);
    rules.matched.assign(rules.rules.size(), 0);
  }
  for (std::size_t i = 0; i < rules.rules.size(); ++i) {
    const json& r = rules.rules[i];
    const std::string m = r.value("method", "*");
    if (m != "*" && m != method) continue;
    if (r.contains("path") && !std::regex_search(target, std::regex(r["path"].get<std::string>(), std::regex::ECMAScript))) {
      continue;
    }
    const std::uint64_t times = r.value("times", std::uint64_t{0});
    if (times != 0 && rules.matched[i] >= times) continue;
    ++rules.matched[i];
    *action = r["action"];
    return static_cast<int>(i);
  }
  return -1;
}

// ---- the request log -----------------------------------------------------------------------------
std::mutex g_log_mutex;
int g_log_fd = -1;

void LogLine(const json& entry) {
  const std::string line = entry.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(g_log_mutex);
  // One write per line on an O_APPEND file: a reader never sees half a line from two writers.
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(g_log_fd, line.data() + done, line.size() - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
}

// ---- answers ---------------------------------------------------------------------------------------
// A body produced piece by piece, so a huge answer never sits in memory.
class BodySource {
 public:
  virtual ~BodySource() = default;
  virtual std::uint64_t size() const = 0;
  virtual std::size_t Read(char* out, std::size_t max) = 0;  // 0 at the end
};

class StringBody : public BodySource {
 public:
  explicit StringBody(std::string s) : s_(std::move(s)) {}
  std::uint64_t size() const override { return s_.size(); }
  std::size_t Read(char* out, std::size_t max) override {
    const std::size_t n = std::min(max, s_.size() - at_);
    std::memcpy(out, s_.data() + at_, n);
    at_ += n;
    return n;
  }

 private:
  std::string s_;
  std::size_t at_ = 0;
};

// prefix, count x unit joined by separator, suffix.
class RepeatBody : public BodySource {
 public:
  RepeatBody(std::string prefix, std::string unit, std::string separator, std::uint64_t count, std::string suffix)
      : prefix_(std::move(prefix)), unit_(std::move(unit)), sep_(std::move(separator)), suffix_(std::move(suffix)),
        count_(unit_.empty() && sep_.empty() ? 0 : count) {}
  std::uint64_t size() const override {
    const std::uint64_t units = count_ * unit_.size() + (count_ > 0 ? (count_ - 1) * sep_.size() : 0);
    return prefix_.size() + units + suffix_.size();
  }
  std::size_t Read(char* out, std::size_t max) override {
    std::size_t n = 0;
    // Each turn copies part of the current piece; a piece of zero bytes just moves on, and
    // there are at most 2 * count + 2 pieces.
    while (n < max && stage_ < 3) {
      const std::string* piece = Current();
      if (piece == nullptr) break;
      const std::size_t take = std::min(max - n, piece->size() - offset_);
      std::memcpy(out + n, piece->data() + offset_, take);
      n += take;
      offset_ += take;
      if (offset_ == piece->size()) Advance();
    }
    return n;
  }

 private:
  // stage 0: prefix; 1: units (index_ counts pieces: even = unit, odd = separator); 2: suffix; 3: done
  const std::string* Current() {
    switch (stage_) {
      case 0: return &prefix_;
      case 1: return index_ % 2 == 0 ? &unit_ : &sep_;
      case 2: return &suffix_;
      default: return nullptr;
    }
  }
  void Advance() {
    offset_ = 0;
    if (stage_ == 0) {
      stage_ = count_ == 0 ? 2 : 1;
      index_ = 0;
    } else if (stage_ == 1) {
      ++index_;
      if (index_ == 2 * count_ - 1) stage_ = 2;
    } else {
      stage_ = 3;
    }
  }
  std::string prefix_, unit_, sep_, suffix_;
  std::uint64_t count_;
  int stage_ = 0;
  std::uint64_t index_ = 0;
  std::size_t offset_ = 0;
};

class FileBody : public BodySource {
 public:
  explicit FileBody(const std::string& path) : in_(path, std::ios::binary) {
    in_.seekg(0, std::ios::end);
    size_ = in_ ? static_cast<std::uint64_t>(in_.tellg()) : 0;
    in_.seekg(0);
  }
  bool ok() const { return static_cast<bool>(in_); }
  std::uint64_t size() const override { return size_; }
  std::size_t Read(char* out, std::size_t max) override {
    const std::uint64_t left = size_ - done_;
    in_.read(out, static_cast<std::streamsize>(std::min<std::uint64_t>(max, left)));
    const auto n = static_cast<std::size_t>(in_.gcount());
    done_ += n;
    return n;
  }

 private:
  std::ifstream in_;
  std::uint64_t size_ = 0;
  std::uint64_t done_ = 0;
};

struct Answer {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;  // in order, as sent
  std::unique_ptr<BodySource> body;
  bool send_body = true;            // false for HEAD, 1xx, 204, 304
  bool explicit_length = false;     // the rule or upstream fixed Content-Length itself
};

std::string Reason(int status) {
  const auto text = http::obsolete_reason(http::int_to_status(static_cast<unsigned>(status)));
  return text.empty() || text == "<unknown-status>" ? std::string("Status") : std::string(text);
}

void SetHeader(Answer& a, const std::string& name, const std::string& value) {
  const std::string lname = Lower(name);
  for (auto& [n, v] : a.headers) {
    if (Lower(n) == lname) {
      v = value;
      return;
    }
  }
  a.headers.emplace_back(name, value);
}

void RemoveHeader(Answer& a, const std::string& name) {
  const std::string lname = Lower(name);
  a.headers.erase(std::remove_if(a.headers.begin(), a.headers.end(),
                                 [&](const auto& h) { return Lower(h.first) == lname; }),
                  a.headers.end());
}

bool HasHeader(const Answer& a, const std::string& name) {
  const std::string lname = Lower(name);
  return std::any_of(a.headers.begin(), a.headers.end(), [&](const auto& h) { return Lower(h.first) == lname; });
}

std::string HeaderText(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

std::string Head(const Answer& a) {
  std::string head = "HTTP/1.1 " + std::to_string(a.status) + " " + Reason(a.status) + "\r\n";
  for (const auto& [n, v] : a.headers) head += n + ": " + v + "\r\n";
  return head + "\r\n";
}

// ---- connections -----------------------------------------------------------------------------------
struct Server {
  Rules rules;
  std::string upstream_host;  // empty: no upstream
  std::string upstream_port;
  bool tls = true;
  std::uint64_t max_request_bytes = 64ull << 20;
  std::atomic<std::size_t> connections{0};
};

using Request = http::request<http::string_body>;

// Forwards `req` to the upstream over a fresh plain-HTTP connection and returns its answer.
std::optional<Answer> Proxy(Server& server, const Request& req, std::string* problem) {
  if (server.upstream_host.empty()) {
    *problem = "a proxy rule matched but the server has no --upstream";
    return std::nullopt;
  }
  asio::io_context io;
  tcp::socket socket(io);
  boost::system::error_code ec;
  tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(server.upstream_host, server.upstream_port, ec);
  if (!ec) asio::connect(socket, endpoints, ec);
  if (ec) {
    *problem = "upstream " + server.upstream_host + ":" + server.upstream_port + ": " + ec.message();
    return std::nullopt;
  }
  WatchGuard watch(socket.native_handle());
  Request out = req;
  out.erase(http::field::expect);
  out.set(http::field::connection, "close");
  if (server.tls) {
    // The upstream speaks plain HTTP behind us; say what the client used.
    out.set("X-Forwarded-Proto", "https");
    out.set("X-Forwarded-Host", std::string(req[http::field::host]));
  }
  out.prepare_payload();
  watch.Arm(kIoTimeout);
  http::write(socket, out, ec);
  if (ec) {
    *problem = "writing to the upstream: " + ec.message();
    return std::nullopt;
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.header_limit(kMaxHeaderBytes);
  parser.body_limit(kMaxUpstreamBody);
  if (req.method() == http::verb::head) parser.skip(true);
  watch.Arm(kIoTimeout);
  http::read(socket, buffer, parser, ec);
  watch.Disarm();
  if (ec) {
    *problem = "reading the upstream's answer: " + ec.message();
    return std::nullopt;
  }
  auto res = parser.release();
  Answer a;
  a.status = static_cast<int>(res.result_int());
  for (const auto& f : res) {
    const std::string name(f.name_string());
    const std::string lname = Lower(name);
    // Hop-by-hop headers are ours to decide; the body was de-chunked, so its length is recomputed
    // (except for HEAD, whose Content-Length describes a body that is not sent).
    if (lname == "connection" || lname == "keep-alive" || lname == "transfer-encoding") continue;
    if (lname == "content-length" && req.method() != http::verb::head) continue;
    a.headers.emplace_back(name, std::string(f.value()));
  }
  if (req.method() == http::verb::head) a.explicit_length = true;
  a.body = std::make_unique<StringBody>(std::move(res.body()));
  return a;
}

Answer Build(Server& server, const Request& req, const json& action, std::string* problem) {
  Answer a;
  if (action.value("proxy", false)) {
    auto proxied = Proxy(server, req, problem);
    if (!proxied) {
      a.status = 502;
      a.body = std::make_unique<StringBody>("hostile_server: " + *problem + "\n");
      return a;
    }
    a = std::move(*proxied);
  } else {
    a.status = action.value("status", 200);
    if (action.contains("headers")) {
      for (const auto& [n, v] : action["headers"].items()) a.headers.emplace_back(n, HeaderText(v));
    }
    if (action.contains("body_repeat")) {
      const json& r = action["body_repeat"];
      a.body = std::make_unique<RepeatBody>(r.value("prefix", ""), r.value("unit", ""), r.value("separator", ""),
                                            r.value("count", std::uint64_t{0}), r.value("suffix", ""));
      if (a.body->size() > kMaxGeneratedBody) {
        *problem = "body_repeat would be " + std::to_string(a.body->size()) + " bytes, above the harness's bound";
        a.status = 500;
        a.headers.clear();
        a.body = std::make_unique<StringBody>("hostile_server: " + *problem + "\n");
      }
    } else if (action.contains("body_file")) {
      auto file = std::make_unique<FileBody>(action["body_file"].get<std::string>());
      if (!file->ok()) {
        *problem = "body_file " + action["body_file"].get<std::string>() + " cannot be read";
        a.status = 500;
        a.headers.clear();
        a.body = std::make_unique<StringBody>("hostile_server: " + *problem + "\n");
      } else {
        a.body = std::move(file);
      }
    } else {
      a.body = std::make_unique<StringBody>(action.value("body", ""));
    }
    if (HasHeader(a, "Content-Length")) a.explicit_length = true;
  }
  if (action.contains("remove_headers")) {
    for (const auto& n : action["remove_headers"]) RemoveHeader(a, n.get<std::string>());
  }
  if (action.contains("set_headers")) {
    for (const auto& [n, v] : action["set_headers"].items()) SetHeader(a, n, HeaderText(v));
  }
  return a;
}

void Finish(Answer& a, const Request& req, bool keep_alive) {
  const bool bodiless = a.status < 200 || a.status == 204 || a.status == 304;
  a.send_body = !bodiless && req.method() != http::verb::head;
  if (!bodiless && !a.explicit_length) SetHeader(a, "Content-Length", std::to_string(a.body->size()));
  if (!keep_alive) SetHeader(a, "Connection", "close");
}

template <class Stream>
bool WriteAll(Stream& stream, WatchGuard& watch, const char* data, std::size_t n) {
  boost::system::error_code ec;
  watch.Arm(kIoTimeout);
  asio::write(stream, asio::buffer(data, n), ec);
  watch.Disarm();
  return !ec;
}

// Sends the head and body; with trickle_ms, the first `trickle_after` bytes at once and then one
// byte every trickle_ms (until the client goes away or the server stops).
template <class Stream>
bool Send(Stream& stream, WatchGuard& watch, Answer& a, std::uint64_t trickle_ms, std::uint64_t trickle_after) {
  const std::string head = Head(a);
  StringBody head_source(head);
  std::vector<char> piece(kPiece);
  std::uint64_t sent = 0;
  auto next = [&](char* out, std::size_t max) -> std::size_t {
    std::size_t n = head_source.Read(out, max);
    if (n == 0 && a.send_body) n = a.body->Read(out, max);
    return n;
  };
  while (!g_stop) {
    std::size_t max = kPiece;
    if (trickle_ms > 0) max = sent < trickle_after ? static_cast<std::size_t>(std::min<std::uint64_t>(kPiece, trickle_after - sent)) : 1;
    const std::size_t n = next(piece.data(), max);
    if (n == 0) return true;
    if (trickle_ms > 0 && sent >= trickle_after && !SleepFor(std::chrono::milliseconds(trickle_ms))) return false;
    if (!WriteAll(stream, watch, piece.data(), n)) return false;
    sent += n;
  }
  return false;
}

// Holds the connection open without answering until the client closes it, the server stops or
// kMaxSilence passes. Whatever the client sends is read and dropped (raw: TLS is not spoken again).
void HoldSilent(int fd) {
  const auto until = Clock::now() + kMaxSilence;
  char scratch[4096];
  while (!g_stop && Clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, 100);
    if (r < 0 && errno != EINTR) return;
    if (r > 0) {
      const ssize_t n = ::recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return;
    }
  }
}

json HeadersJson(const Request& req) {
  json h = json::object();
  for (const auto& f : req) {
    const std::string name = Lower(std::string(f.name_string()));
    const std::string value(f.value());
    if (h.contains(name)) {
      h[name] = h[name].get<std::string>() + ", " + value;
    } else {
      h[name] = value;
    }
  }
  return h;
}

template <class Stream>
void Serve(Server& server, Stream& stream, int fd, WatchGuard& watch) {
  beast::flat_buffer buffer;
  for (std::uint64_t served = 0; served < kMaxRequestsPerConnection && !g_stop; ++served) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(kMaxHeaderBytes);
    parser.body_limit(server.max_request_bytes);
    boost::system::error_code ec;
    watch.Arm(kIoTimeout);
    http::read_header(stream, buffer, parser, ec);
    if (ec) return;  // the client closed, timed out or sent garbage: nothing to answer
    if (Lower(std::string(parser.get()[http::field::expect])) == "100-continue") {
      static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      if (!WriteAll(stream, watch, kContinue, sizeof kContinue - 1)) return;
    }
    watch.Arm(kIoTimeout);
    http::read(stream, buffer, parser, ec);
    watch.Disarm();
    const Request& req = parser.get();
    const std::string method(req.method_string());
    const std::string target(req.target());
    json entry = {{"method", method},
                  {"path", target},
                  {"headers", HeadersJson(req)},
                  {"body_bytes", req.body().size()},
                  {"origin_host", std::string(req[http::field::host])}};
    if (ec) {
      entry["rule"] = -1;
      entry["error"] = "reading the request: " + ec.message();
      LogLine(entry);
      if (ec == http::error::body_limit) {
        const std::string too_big = "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        WriteAll(stream, watch, too_big.data(), too_big.size());
      }
      return;
    }
    json action;
    std::string problem;
    const int rule = Match(server.rules, method, target, &action, &problem);
    entry["rule"] = rule;
    if (!problem.empty()) entry["error"] = problem;
    LogLine(entry);
    if (rule < 0) {
      if (!problem.empty()) {
        action = {{"status", 500}, {"body", "hostile_server: " + problem + "\n"}};
      } else if (!server.upstream_host.empty()) {
        action = {{"proxy", true}};
      } else {
        action = {{"status", 404}, {"body", "hostile_server: no rule matches " + method + " " + target + "\n"}};
      }
    }
    const auto delay = std::chrono::milliseconds(action.value("delay_ms", std::uint64_t{0}));
    if (delay.count() > 0 && !SleepFor(std::min<std::chrono::milliseconds>(delay, kMaxDelay))) return;
    if (action.value("close", false)) return;  // the caller closes the socket without a TLS goodbye
    if (action.value("silence", false)) {
      HoldSilent(fd);
      return;
    }
    problem.clear();
    Answer answer = Build(server, req, action, &problem);
    if (!problem.empty()) std::cerr << "hostile_server: " << problem << std::endl;
    const bool keep_alive = req.keep_alive();
    Finish(answer, req, keep_alive);
    if (!Send(stream, watch, answer, action.value("trickle_ms", std::uint64_t{0}),
              action.value("trickle_after_bytes", std::uint64_t{0}))) {
      return;
    }
    if (!keep_alive) return;
  }
}

void Connection(Server& server, ssl::context* tls, int fd) {
  {
    asio::io_context io;
    boost::system::error_code ec;
    tcp::socket socket(io);
    socket.assign(tcp::v4(), fd, ec);
    if (ec) {
      ::close(fd);
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      WatchGuard watch(fd);
      if (tls != nullptr) {
        ssl::stream<tcp::socket&> stream(socket, *tls);
        // Asio asks OpenSSL to free its record buffers after every write; for a long answer that
        // is an allocation per record, which a sanitizer build's quarantine turns into tens of MiB.
        SSL_clear_mode(stream.native_handle(), SSL_MODE_RELEASE_BUFFERS);
        watch.Arm(kIoTimeout);
        stream.handshake(ssl::stream_base::server, ec);
        watch.Disarm();
        if (!ec) Serve(server, stream, fd, watch);
      } else {
        Serve(server, socket, fd, watch);
      }
    }
    // `socket` closes the descriptor here, after the watchdog has let go of it.
  }
  --server.connections;
}

int Usage(const std::string& problem) {
  std::cerr << "hostile_server: " << problem
            << "\nusage: hostile_server --rules FILE --log FILE --ready-file FILE [--listen-host H]"
               " [--upstream http://HOST:PORT] [--plain-http] [--cert PEM --key PEM] [--tls-max 1.1]"
               " [--max-request-bytes N]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Server server;
  std::string log_file, ready_file, listen_host = "127.0.0.1", upstream, cert, key, tls_max;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--rules") server.rules.path = next();
    else if (a == "--log") log_file = next();
    else if (a == "--ready-file") ready_file = next();
    else if (a == "--listen-host") listen_host = next();
    else if (a == "--upstream") upstream = next();
    else if (a == "--plain-http") server.tls = false;
    else if (a == "--cert") cert = next();
    else if (a == "--key") key = next();
    else if (a == "--tls-max") tls_max = next();
    else if (a == "--max-request-bytes") server.max_request_bytes = std::stoull(next());
    else return Usage("unknown argument " + a);
  }
  if (server.rules.path.empty() || log_file.empty() || ready_file.empty()) {
    return Usage("--rules, --log and --ready-file are required");
  }
  {
    const json rules = json::parse(ReadFile(server.rules.path), nullptr, false);
    const std::string why = rules.is_discarded() ? "not JSON" : CheckRules(rules);
    if (!why.empty()) return Usage("rules file " + server.rules.path + ": " + why);
  }
  if (!upstream.empty()) {
    static const std::regex kUpstream(R"(^http://([^/:]+):([0-9]+)/?$)");
    std::smatch m;
    if (!std::regex_match(upstream, m, kUpstream)) return Usage("--upstream must be http://HOST:PORT, got " + upstream);
    server.upstream_host = m[1];
    server.upstream_port = m[2];
  }
  if (!tls_max.empty() && tls_max != "1.1") return Usage("--tls-max: only 1.1 is supported, got " + tls_max);

  std::unique_ptr<ssl::context> tls;
  if (server.tls) {
    if (cert.empty() || key.empty()) return Usage("--cert and --key are required for TLS (or --plain-http)");
    tls = std::make_unique<ssl::context>(ssl::context::tls_server);
    SSL_CTX* ctx = tls->native_handle();
    if (tls_max == "1.1") {
      // OpenSSL 3 refuses TLS 1.0/1.1 (and their SHA-1 signatures) above security level 0.
      SSL_CTX_set_security_level(ctx, 0);
      SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0");
      SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION);
      SSL_CTX_set_max_proto_version(ctx, TLS1_1_VERSION);
    } else {
      SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    }
    boost::system::error_code ec;
    tls->use_certificate_chain_file(cert, ec);
    if (!ec) tls->use_private_key_file(key, ssl::context::pem, ec);
    if (ec) return Usage("cannot load " + cert + " / " + key + ": " + ec.message());
  }

  g_log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (g_log_fd < 0) return Usage("cannot open " + log_file + ": " + std::strerror(errno));

  // Signals are taken by one thread with sigwait; every other thread has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // a client that went away is a write error, not a death

  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (::inet_pton(AF_INET, listen_host.c_str(), &addr.sin_addr) != 1) return Usage("--listen-host must be an IPv4 address");
  const int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = sizeof addr;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 128) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::cerr << "hostile_server: cannot listen on " << listen_host << ": " << std::strerror(errno) << std::endl;
    return 1;
  }
  const unsigned port = ntohs(addr.sin_port);
  std::thread(Watchdog).detach();
  std::thread([&signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    g_stop = true;
  }).detach();
  {
    // Written whole under a temporary name, so a reader never sees a partial port number.
    const std::string tmp = ready_file + ".tmp";
    std::ofstream(tmp) << port;
    std::rename(tmp.c_str(), ready_file.c_str());
  }
  std::cerr << "hostile_server: listening on " << listen_host << ":" << port << (server.tls ? " (TLS" : " (plain HTTP")
            << (tls_max.empty() ? "" : ", TLS <= 1.1") << ")"
            << (upstream.empty() ? "" : ", forwarding unmatched requests to " + upstream) << std::endl;

  while (!g_stop) {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    if (server.connections.load() >= kMaxConnections) {
      std::cerr << "hostile_server: more than " << kMaxConnections << " connections; closing a new one" << std::endl;
      ::close(fd);
      continue;
    }
    ++server.connections;
    std::thread(Connection, std::ref(server), tls.get(), fd).detach();
  }
  ::close(listener);
  // The watchdog shuts every connection down once g_stop is set; give them a moment to end.
  for (int i = 0; i < 40 && server.connections.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::cerr << "hostile_server: stopped" << std::endl;
  std::_Exit(0);  // detached threads may still be unwinding; nothing is left to flush
}
