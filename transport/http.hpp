// HTTP(S) client for the agent's cloud traffic. The libcurl glue lives in curl/http_curl.cpp.
// TLS: certificate and host name verification are always on; plain http:// URLs are refused
// unless `allow_plain_http` is set (development only).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "agent/common/error.hpp"

namespace ctagent::transport {

struct TlsOptions {
  std::filesystem::path ca_file;           // empty: system CA store
  std::filesystem::path client_cert_file;  // PEM, for mTLS
  std::filesystem::path client_key_file;   // PEM
};

struct HttpOptions {
  TlsOptions tls;
  bool allow_plain_http = false;
  std::uint32_t connect_timeout_s = 10;
  // A transfer that moves fewer than 1 byte/s for this long is aborted as stalled.
  std::uint32_t stall_timeout_s = 30;
  // Upper bound for one whole request (0: none beyond the stall timeout).
  std::uint32_t request_timeout_s = 0;
  std::string basic_auth_user;      // empty: no authentication
  std::string basic_auth_password;
  std::string user_agent = "ctagent";
  // Binds every connection to a network interface (for example "wwan0") or to a local source
  // address, so that a configured link is really the one used. Empty: the system's routing.
  std::string interface_name;
  std::string source_address;
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
  // (kCancelled). Empty: no pacing.
  std::function<bool(std::size_t)> before_send;
};

struct HttpResponse {
  long status = 0;
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
  // `max_response_bytes`, kCancelled for an aborted transfer, kInternal for out-of-memory.
  Expected<HttpResponse> Perform(const HttpRequest& request, std::uint64_t max_response_bytes = 256ull << 20);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Resolves a possibly relative Location header against the request URL.
std::string ResolveUrl(const std::string& base, const std::string& location);

}  // namespace ctagent::transport
