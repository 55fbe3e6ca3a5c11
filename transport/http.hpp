// HTTP(S) client for the agent's cloud traffic. The libcurl glue lives in curl/http_curl.cpp.
// TLS: certificate and host name verification are always on; plain http:// URLs are refused
// unless `allow_plain_http` is set (development only).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/error.hpp"

namespace ctagent::transport {

struct TlsOptions {
  std::filesystem::path ca_file;           // empty: system CA store
  std::filesystem::path client_cert_file;  // PEM, for mTLS
  std::filesystem::path client_key_file;   // PEM
  // Optional public-key pinning on top of CA verification: "sha256//<base64>" entries joined
  // by ';' (libcurl's CURLOPT_PINNEDPUBLICKEY syntax). Empty: no pinning.
  std::string pinned_public_key;
};

// The failure classes are the agent's one failure model (base/error.hpp): every Error this module
// returns carries its class (Error::failure()), set from the curl result or the HTTP status, and
// the retry policy (base/retry.hpp) keys on it. Named here too for the code that says
// transport::FailureClass.
using FailureClass = ::ctagent::FailureClass;
using ::ctagent::ToString;

// TLS sessions and DNS answers shared by several HttpClients (one per transfer
// thread), so a new client resumes the TLS session another one negotiated. Thread-safe.
class HttpShare {
 public:
  HttpShare();
  ~HttpShare();
  HttpShare(const HttpShare&) = delete;
  HttpShare& operator=(const HttpShare&) = delete;
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

struct HttpOptions {
  TlsOptions tls;
  bool allow_plain_http = false;
  std::uint32_t connect_timeout_s = 10;
  // A request during which no byte is sent or received for this long is aborted as stalled
  // (checked about once a second; time spent in before_send does not count). 0: no check.
  std::uint32_t stall_timeout_s = 30;
  // Every request has an overall deadline, so an answer that trickles (a byte now and then, never
  // a stall) cannot hold a caller for ever:
  //   connect_timeout_s + stall_timeout_s + (request body bytes + max_response_bytes) * 8 / floor_rate_bits_per_s
  // seconds after Perform() starts (the time to move the most bytes the request may move at the
  // slowest rate the link is expected to sustain, plus the set-up and one stall's worth of slack).
  // A request past it ends with kTimeout (checked at every progress call, at least once a second)
  // and a message that names the deadline and how it was derived. 0: no size-derived deadline.
  std::uint64_t floor_rate_bits_per_s = 1'000'000;
  // An upper bound for one whole request on top of that deadline, if earlier (0: none).
  std::uint32_t request_timeout_s = 0;
  std::string basic_auth_user;      // empty: no authentication
  std::string basic_auth_password;
  std::string user_agent = "ctagent";
  // Binds every connection to a network interface (for example "wwan0") or to a local source
  // address, so that a configured link is really the one used. Empty: the system's routing.
  // libcurl 7.88 takes one of the two: interface_name wins when both are set.
  std::string interface_name;
  std::string source_address;
  // HTTP/2 over TLS when the server offers it by ALPN (HTTP/1.1 otherwise; plain http:// stays 1.1).
  bool http2 = true;
  // Bytes libcurl hands the connection per send (CURLOPT_UPLOAD_BUFFERSIZE; 16 KiB to 2 MiB).
  // Every request's handle allocates one when it sends a body, and the agent has up to
  // cloud.parallel_uploads PATCHes plus creations in flight: at 2 MiB they were ~30 MiB of a
  // 1 GiB scan's 62 MiB peak heap (heaptrack, docs/configuration.md "Memory"). 256 KiB is still
  // 16 TLS records per callback; the kernel's socket buffer, not this one, covers the link's
  // bandwidth x round trip.
  std::uint32_t upload_buffer_bytes = 256u << 10;
  // Optional: share TLS sessions and DNS answers with other clients (each keeps its own connection).
  std::shared_ptr<HttpShare> share;
};

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  HeaderList headers;
  std::span<const std::uint8_t> body;  // must stay alive during Perform()
  // Called as request body bytes are sent (bytes sent so far in this request).
  std::function<void(std::uint64_t)> on_upload_progress;
  // Called before each block of body bytes goes to the connection, with the block's size; it may
  // block to pace the upload (a link's bandwidth cap). Returning false aborts the transfer
  // (kCancelled). Also called with 0 at each progress tick (about once a second or more often),
  // so a refusal ends a request whose block drains slowly. Empty: no pacing.
  std::function<bool(std::size_t)> before_send;
  // Optional: an absolute deadline for this request (for example a scan's results.timeout_s).
  // The request ends at the earliest of this, the size-derived deadline and request_timeout_s,
  // with kTimeout and a message saying which one it was. Empty: the options' deadlines only.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Optional: asked at every progress call (at least once a second, also while an answer
  // trickles in) and once before the request starts; returning true ends the request with
  // kCancelled (ErrorKind::kCancelled). For a caller that is stopping. Empty: never.
  std::function<bool()> cancel;
};

struct HttpResponse {
  long status = 0;
  long http_version = 0;  // 11 for HTTP/1.1, 20 for HTTP/2
  HeaderList headers;  // names lower-cased
  std::string body;

  // First header with this (case-insensitive) name, or "".
  std::string Header(const std::string& name) const;
};

// One client keeps one connection (and TLS session) alive between requests. Not thread-safe:
// use one client per worker.
class HttpClient {
 public:
  explicit HttpClient(HttpOptions options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Returns the response for any HTTP status; an Error only when no usable response arrived:
  // kNetwork for DNS/connect/reset/stall, kTls for certificate and handshake failures,
  // kInvalidInput for a refused URL or unreadable certificate file, kProtocol for a body over
  // `max_response_bytes`, kCancelled for an aborted transfer, kInternal for out-of-memory, and
  // kNetwork with the class kTimeout for a request past its overall deadline (see
  // HttpOptions::floor_rate_bits_per_s; `max_response_bytes` counts in it, so a caller expecting
  // a small answer gets a short deadline by passing a small cap). The error's failure() is its
  // retry class (kDns, kConnect, kTlsHandshake, kTlsRejected, kClockSkew, kStall, kTimeout, ...).
  Expected<HttpResponse> Perform(const HttpRequest& request, std::uint64_t max_response_bytes = 256ull << 20);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Process-wide stop for a process that is shutting down (ctagent scan and run on SIGINT or
// SIGTERM): every request of every HttpClient in flight ends at its next progress call, within
// about a second, with kCancelled, and every later request fails at once the same way. One way
// only: nothing undoes it. Async-signal-safe (one atomic store), callable from any thread.
void CancelAllRequests();
// Whether CancelAllRequests() was called in this process.
bool AllRequestsCancelled();

// Resolves a possibly relative Location header against the request URL.
std::string ResolveUrl(const std::string& base, const std::string& location);

}  // namespace ctagent::transport
