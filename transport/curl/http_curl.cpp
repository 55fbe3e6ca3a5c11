// HttpClient over one reused libcurl easy handle. curl_easy_reset() between requests clears the
// options but keeps the live connection and the TLS session cache, so consecutive requests to
// the same server skip the TCP and TLS handshakes.
#include <curl/curl.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "agent/common/log.hpp"
#include "agent/common/url.hpp"
#include "transport/text.hpp"
#include "transport/http.hpp"

namespace ctagent::transport {
namespace {

constexpr std::string_view kComponent = "http";

using detail::ToLower;

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r' || text.back() == '\n')) {
    text.remove_suffix(1);
  }
  return text;
}

// curl_global_init is not thread-safe and must run once per process, before any handle exists.
CURLcode GlobalInit() {
  static std::once_flag once;
  static CURLcode result = CURLE_OK;
  std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  return result;
}

// "scheme" of a URL in lower case, or "" when the URL has none.
std::string SchemeOf(std::string_view url) {
  const auto colon = url.find("://");
  if (colon == std::string_view::npos || colon == 0) return {};
  return ToLower(url.substr(0, colon));
}

// The size-derived deadline of one request, in seconds after it starts:
//   connect_timeout_s + stall_timeout_s + (body bytes + response cap) * 8 / floor_rate_bits_per_s
// and how it was derived, for the message that reports it. Capped at 30 days, so a huge response
// cap cannot overflow the clock arithmetic (and means "no practical deadline" then anyway).
struct DerivedDeadline {
  double seconds = 0;
  std::string how;
};

std::string FormatSeconds(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, seconds < 10 ? "%.1f s" : "%.0f s", seconds);
  return buf;
}

struct Transfer {
  HttpResponse response;
  std::uint64_t max_body = 0;
  bool body_too_large = false;
  const std::function<void(std::uint64_t)>* on_upload_progress = nullptr;
  curl_off_t last_reported_upload = -1;
  // Request body, handed to curl block by block through OnRead (so a pacer can run per block).
  std::span<const std::uint8_t> body;
  std::size_t body_sent = 0;
  const std::function<bool(std::size_t)>* before_send = nullptr;
  bool send_refused = false;
  std::chrono::steady_clock::time_point last_gate_check{};  // before_send(0) from OnProgress
  // Stall detection: the time any byte last moved (either direction), and the counters seen
  // then. curl's own low-speed check averages over ~5 s and so fires seconds late; this fires
  // once nothing at all moved for stall_timeout (checked at each progress call, >= 1/s).
  std::chrono::steady_clock::duration stall_timeout{};
  std::chrono::steady_clock::time_point last_motion = std::chrono::steady_clock::now();
  curl_off_t seen_down = 0;
  curl_off_t seen_up = 0;
  bool stalled = false;
  // Overall deadlines (time_point::max(): none). The size-derived one moves on by the time a
  // before_send pacer holds the body (our own pacing is not the network's slowness); the
  // caller's is absolute.
  std::chrono::steady_clock::time_point derived_deadline = std::chrono::steady_clock::time_point::max();
  std::chrono::steady_clock::time_point caller_deadline = std::chrono::steady_clock::time_point::max();
  bool past_derived_deadline = false;
  bool past_caller_deadline = false;
  std::optional<DerivedDeadline> derived;  // how derived_deadline was set, for the message
  double caller_deadline_s = 0;            // the caller's deadline, seconds after the start
  const std::function<bool()>* cancel = nullptr;
  bool cancelled = false;
};

std::atomic<bool> g_cancel_all{false};
static_assert(std::atomic<bool>::is_always_lock_free, "CancelAllRequests must be async-signal-safe");

// Whether the request should end now (a stopping process or caller); sets transfer->cancelled.
bool ShouldCancel(Transfer& transfer) {
  if (g_cancel_all.load(std::memory_order_relaxed) || (transfer.cancel != nullptr && *transfer.cancel && (*transfer.cancel)())) {
    transfer.cancelled = true;
  }
  return transfer.cancelled;
}

// Whether a deadline has passed; records which one.
bool PastDeadline(Transfer& transfer, std::chrono::steady_clock::time_point now) {
  if (now >= transfer.caller_deadline) {
    transfer.past_caller_deadline = true;
  } else if (now >= transfer.derived_deadline) {
    transfer.past_derived_deadline = true;
  }
  return transfer.past_caller_deadline || transfer.past_derived_deadline;
}

std::optional<DerivedDeadline> DeriveDeadline(const HttpOptions& options, std::uint64_t body_bytes,
                                              std::uint64_t response_cap) {
  if (options.floor_rate_bits_per_s == 0) return std::nullopt;
  constexpr double kMaxSeconds = 30.0 * 24 * 3600;
  const double bytes = static_cast<double>(body_bytes) + static_cast<double>(response_cap);
  const double transfer_s = bytes * 8.0 / static_cast<double>(options.floor_rate_bits_per_s);
  DerivedDeadline d;
  d.seconds = std::min(kMaxSeconds, static_cast<double>(options.connect_timeout_s) +
                                        static_cast<double>(options.stall_timeout_s) + transfer_s);
  d.how = "connect_timeout_s " + std::to_string(options.connect_timeout_s) + " s + stall_timeout_s " +
          std::to_string(options.stall_timeout_s) + " s + " + std::to_string(body_bytes) + " body bytes and a " +
          std::to_string(response_cap) + "-byte response cap at floor_rate_bits_per_s " +
          std::to_string(options.floor_rate_bits_per_s) + " (" + FormatSeconds(transfer_s) + ")";
  return d;
}

// How often OnProgress asks before_send(0) whether the request may go on (progress ticks can
// come thousands of times a second on a fast link).
constexpr auto kGateCheckPeriod = std::chrono::milliseconds(200);

size_t OnRead(char* buffer, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const std::size_t n = std::min(size * count, transfer->body.size() - transfer->body_sent);
  if (n == 0) return 0;
  const auto paced_from = std::chrono::steady_clock::now();
  if (transfer->before_send != nullptr && *transfer->before_send && !(*transfer->before_send)(n)) {
    transfer->send_refused = true;
    return CURL_READFUNC_ABORT;
  }
  // Time spent waiting in the pacer (a link's bandwidth cap) is ours, not the network's: it
  // counts neither as a stall nor against the size-derived deadline.
  transfer->last_motion = std::chrono::steady_clock::now();
  if (transfer->derived_deadline != std::chrono::steady_clock::time_point::max()) {
    transfer->derived_deadline += transfer->last_motion - paced_from;
  }
  std::memcpy(buffer, transfer->body.data() + transfer->body_sent, n);
  transfer->body_sent += n;
  return n;
}

// curl rewinds the body when it must send it again (a connection re-used after the peer closed
// it, or an HTTP/2 stream refused before any byte was processed).
int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* transfer = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<std::uint64_t>(offset) > transfer->body.size()) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  transfer->body_sent = static_cast<std::size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (transfer->response.body.size() + n > transfer->max_body) {
    transfer->body_too_large = true;
    return 0;  // makes curl abort the transfer with CURLE_WRITE_ERROR
  }
  transfer->response.body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * count;
  // A header line is received bytes too (the progress counters count only body bytes): a head
  // arriving line by line is not a stall.
  transfer->last_motion = std::chrono::steady_clock::now();
  const std::string_view line(data, n);
  // A status line starts a new response (after a 100 Continue or a redirect): only the final
  // response's headers are kept.
  if (line.starts_with("HTTP/")) {
    transfer->response.headers.clear();
    return n;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return n;  // the blank line that ends the header block
  transfer->response.headers.emplace_back(ToLower(Trim(line.substr(0, colon))),
                                          std::string(Trim(line.substr(colon + 1))));
  return n;
}

int OnProgress(void* user, curl_off_t /*dltotal*/, curl_off_t dlnow, curl_off_t /*ultotal*/, curl_off_t ulnow) {
  auto* transfer = static_cast<Transfer*>(user);
  if (transfer->on_upload_progress != nullptr && *transfer->on_upload_progress && ulnow != transfer->last_reported_upload) {
    transfer->last_reported_upload = ulnow;
    (*transfer->on_upload_progress)(static_cast<std::uint64_t>(ulnow));
  }
  // A stopping process or caller, and the overall deadline: checked here because libcurl calls
  // this at least once a second whatever the transfer does, also while an answer trickles in a
  // byte at a time (which the stall check below never sees as a stall).
  const auto now = std::chrono::steady_clock::now();
  if (ShouldCancel(*transfer) || PastDeadline(*transfer, now)) return 1;  // CURLE_ABORTED_BY_CALLBACK
  // The gate OnRead asks before each block, asked with no bytes: a revoked link lease or a
  // stopping uploader ends the request within about a second, even while a large block still
  // drains over a slow link.
  if (transfer->before_send != nullptr && *transfer->before_send && now - transfer->last_gate_check >= kGateCheckPeriod) {
    transfer->last_gate_check = now;
    if (!(*transfer->before_send)(0)) {
      transfer->send_refused = true;
      return 1;
    }
  }
  if (dlnow != transfer->seen_down || ulnow != transfer->seen_up) {
    transfer->seen_down = dlnow;
    transfer->seen_up = ulnow;
    transfer->last_motion = now;
  } else if (transfer->stall_timeout.count() > 0 && now - transfer->last_motion >= transfer->stall_timeout) {
    transfer->stalled = true;
    return 1;  // aborts the transfer with CURLE_ABORTED_BY_CALLBACK
  }
  return 0;
}

// Whether the last perform ran on a connection kept from an earlier request and got no byte of
// an answer (CURLINFO_NUM_CONNECTS counts the new connections it had to make).
bool ReusedWithoutAnswer(CURL* easy) {
  long new_connections = -1;
  long header_bytes = -1;
  curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
  curl_easy_getinfo(easy, CURLINFO_HEADER_SIZE, &header_bytes);
  return new_connections == 0 && header_bytes == 0;
}

struct HeaderListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using CurlHeaders = std::unique_ptr<curl_slist, HeaderListDeleter>;

bool AppendHeader(CurlHeaders& list, const std::string& line) {
  curl_slist* next = curl_slist_append(list.get(), line.c_str());
  if (next == nullptr) return false;
  list.release();
  list.reset(next);
  return true;
}

bool HasHeader(const HeaderList& headers, std::string_view name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& h) { return ToLower(h.first) == ToLower(name); });
}

bool IsUnknownIssuer(long verify_result) {
  switch (verify_result) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      return true;
    default:
      return false;
  }
}

bool Contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// The server ended the handshake with an alert about our (missing or refused) client certificate.
bool IsClientCertificateAlert(std::string_view detail) {
  return Contains(detail, "alert certificate required") || Contains(detail, "alert bad certificate") ||
         Contains(detail, "alert unknown ca") || Contains(detail, "alert certificate unknown") ||
         Contains(detail, "alert handshake failure") || Contains(detail, "alert access denied");
}

}  // namespace

const char* ToString(FailureClass failure) {
  switch (failure) {
    case FailureClass::kNone: return "none";
    case FailureClass::kDns: return "dns";
    case FailureClass::kConnect: return "connect";
    case FailureClass::kTlsHandshake: return "tls-handshake";
    case FailureClass::kTlsRejected: return "tls-rejected";
    case FailureClass::kClockSkew: return "clock-skew";
    case FailureClass::kStall: return "stall";
    case FailureClass::kTimeout: return "timeout";
    case FailureClass::kConnectionLost: return "connection-lost";
    case FailureClass::kServerError: return "http-5xx";
    case FailureClass::kConflict: return "http-409";
    case FailureClass::kLocked: return "http-423";
    case FailureClass::kChecksum: return "http-460";
    case FailureClass::kUploadGone: return "upload-gone";
    case FailureClass::kAuth: return "http-401/403";
    case FailureClass::kVersion: return "http-412";
    case FailureClass::kTooLarge: return "http-413";
    case FailureClass::kEndpoint: return "endpoint-missing";
    case FailureClass::kProtocol: return "protocol";
    case FailureClass::kLinkDown: return "link-down";
    case FailureClass::kCancelled: return "cancelled";
    case FailureClass::kLocal: return "local";
  }
  return "unknown";
}

// One CURLSH with a mutex per kind of shared data, as libcurl's lock callbacks require.
struct HttpShare::Impl {
  CURLSH* share = nullptr;
  std::mutex locks[CURL_LOCK_DATA_LAST];

  static void Lock(CURL* /*easy*/, curl_lock_data data, curl_lock_access /*access*/, void* user) {
    static_cast<Impl*>(user)->locks[data].lock();
  }
  static void Unlock(CURL* /*easy*/, curl_lock_data data, void* user) { static_cast<Impl*>(user)->locks[data].unlock(); }
};

HttpShare::HttpShare() : impl_(std::make_unique<Impl>()) {
  if (GlobalInit() != CURLE_OK) return;
  impl_->share = curl_share_init();
  if (impl_->share == nullptr) return;  // clients then work unshared
  curl_share_setopt(impl_->share, CURLSHOPT_LOCKFUNC, &Impl::Lock);
  curl_share_setopt(impl_->share, CURLSHOPT_UNLOCKFUNC, &Impl::Unlock);
  curl_share_setopt(impl_->share, CURLSHOPT_USERDATA, impl_.get());
  curl_share_setopt(impl_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(impl_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  // Not CURL_LOCK_DATA_CONNECT: each client keeps its own connection (one per thread, a thread's
  // requests are sequential anyway). A shared connection cache is capped by each handle's
  // CURLOPT_MAXCONNECTS (5) over *all* sharing handles, so with 16 clients libcurl closed a
  // connection after nearly every request and the next one paid a new TCP + TLS handshake.
}

// Every client using the share must be gone first (it holds a shared_ptr to it).
HttpShare::~HttpShare() {
  if (impl_->share != nullptr) curl_share_cleanup(impl_->share);
}

struct HttpClient::Impl {
  HttpOptions options;
  CURL* easy = nullptr;
  bool warned_plain_http = false;
  char error_buffer[CURL_ERROR_SIZE] = {};
  mutable FailureClass last_failure = FailureClass::kNone;

  Unexpected Fail(FailureClass failure, ErrorKind kind, std::string message) const {
    last_failure = failure;
    return MakeError(kind, std::move(message));
  }

  Unexpected ClientCertificateError(const std::string& url, const std::string& detail) const {
    if (options.tls.client_cert_file.empty()) {
      return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                  "TLS: " + url + " requires a client certificate and none is configured; set "
                  "cloud.tls.client_cert_file and cloud.tls.client_key_file to this terminal's certificate (" +
                      detail + ")");
    }
    return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                "TLS: " + url + " rejected this terminal's client certificate " +
                    options.tls.client_cert_file.string() +
                    "; check that the imaging center trusts its issuer and that it has not expired (" + detail + ")");
  }

  Unexpected CertificateError(const std::string& url) const {
    last_failure = FailureClass::kTlsRejected;
    long verify_result = X509_V_OK;
    curl_easy_getinfo(easy, CURLINFO_SSL_VERIFYRESULT, &verify_result);
    const std::string detail = error_buffer[0] != '\0' ? std::string(error_buffer) : "";
    const std::string ca = options.tls.ca_file.empty() ? std::string("the system CA store")
                                                      : "CA file " + options.tls.ca_file.string();
    if (verify_result == X509_V_ERR_CERT_HAS_EXPIRED) {
      return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url +
                                            " has expired; the imaging center must renew it (" + detail + ")");
    }
    if (verify_result == X509_V_ERR_CERT_NOT_YET_VALID) {
      last_failure = FailureClass::kClockSkew;
      return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url +
                                            " is not yet valid; check this terminal's clock (" + detail + ")");
    }
    if (IsUnknownIssuer(verify_result)) {
      return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url +
                                            " is not signed by a trusted CA (unknown or self-signed issuer: " +
                                            X509_verify_cert_error_string(verify_result) + "); check that " + ca +
                                            " holds the imaging center's CA");
    }
    // curl checks the host name itself after the chain verified, and then reports no specific
    // OpenSSL code (X509_V_OK or "unspecified"): its message names the host name.
    if (verify_result == X509_V_ERR_HOSTNAME_MISMATCH || verify_result == X509_V_ERR_IP_ADDRESS_MISMATCH ||
        detail.find("host name") != std::string::npos) {
      return MakeError(ErrorKind::kTls, "TLS: host name mismatch: the server certificate of " + url +
                                            " was not issued for this host; check the URL's host name (" +
                                            detail + ")");
    }
    return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url + " failed verification: " +
                                          X509_verify_cert_error_string(verify_result) + " (" + detail + ")");
  }

  Unexpected Cancelled(const std::string& url) const {
    return Fail(FailureClass::kCancelled, ErrorKind::kCancelled,
                "request to " + url + " was cancelled: the agent is stopping (nothing is lost: what the server " +
                    "did not confirm is sent again on the next run)");
  }

  Unexpected DeadlineError(const std::string& url, const Transfer& transfer) const {
    std::string message = "request to " + url + " did not finish by its deadline: ";
    if (transfer.past_caller_deadline) {
      message += "the caller's deadline, " + FormatSeconds(transfer.caller_deadline_s) + " after it started";
    } else if (transfer.derived) {
      message += FormatSeconds(transfer.derived->seconds) + " = " + transfer.derived->how;
    }
    message += "; the server or the link is slower than the floor rate (an answer trickling in?), will retry";
    return Fail(FailureClass::kTimeout, ErrorKind::kNetwork, std::move(message));
  }

  Unexpected MapError(CURLcode code, const std::string& url, const Transfer& transfer) const {
    const std::string detail = error_buffer[0] != '\0' ? std::string(error_buffer) : curl_easy_strerror(code);
    switch (code) {
      case CURLE_PEER_FAILED_VERIFICATION:
        return CertificateError(url);
      case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                    "TLS: public key pin mismatch: the server key of " + url +
                        " matches none of cloud.tls.pinned_public_key; if the imaging center changed its key, "
                        "update the pin (" + detail + ")");
      case CURLE_SSL_CERTPROBLEM:
        return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                    "TLS: the client certificate " + options.tls.client_cert_file.string() + " or key " +
                        options.tls.client_key_file.string() + " cannot be used (" + detail +
                        "); check both files are PEM and match");
      case CURLE_SSL_CACERT_BADFILE:
        return Fail(FailureClass::kLocal, ErrorKind::kInvalidInput,
                    "TLS: cannot load the CA file " + options.tls.ca_file.string() + " (" + detail +
                        "); check the path and that it is PEM");
      case CURLE_SSL_CONNECT_ERROR:
      case CURLE_SSL_ENGINE_NOTFOUND:
      case CURLE_SSL_ENGINE_SETFAILED:
      case CURLE_SSL_CIPHER:
      case CURLE_SSL_ENGINE_INITFAILED:
      case CURLE_SSL_SHUTDOWN_FAILED:
      case CURLE_SSL_CRL_BADFILE:
      case CURLE_SSL_ISSUER_ERROR:
      case CURLE_SSL_INVALIDCERTSTATUS:
      case CURLE_SSL_CLIENTCERT:
        if (IsClientCertificateAlert(detail) || code == CURLE_SSL_CLIENTCERT) return ClientCertificateError(url, detail);
        // No TLS version in common: this terminal offers TLS 1.2 and 1.3 only (CURLOPT_SSLVERSION),
        // so the server offers only older ones (OpenSSL: "tlsv1 alert protocol version", or
        // "unsupported protocol" when the server's hello is below our minimum).
        if (Contains(detail, "alert protocol version") || Contains(detail, "unsupported protocol")) {
          return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                      "TLS handshake with " + url +
                          " failed: the server offers only TLS versions older than TLS 1.2, the minimum this terminal "
                          "accepts (TLS 1.0 and 1.1 are insecure); the imaging center must enable TLS 1.2 or 1.3 (" +
                          detail + ")");
        }
        // A handshake cut short by the network (reset, EOF) is worth retrying; anything else
        // (no common TLS version or cipher) needs a person.
        if (Contains(detail, "reset") || Contains(detail, "unexpected eof") || Contains(detail, "SSL_ERROR_SYSCALL") ||
            Contains(detail, "Connection timed out")) {
          return Fail(FailureClass::kTlsHandshake, ErrorKind::kNetwork,
                      "TLS handshake with " + url + " was cut off (" + detail + "); will retry");
        }
        return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                    "TLS handshake with " + url + " failed: " + detail +
                        " (the server may require TLS settings this terminal does not offer)");
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_RESOLVE_PROXY:
        return Fail(FailureClass::kDns, ErrorKind::kNetwork,
                    "cannot resolve the host of " + url + " (" + detail + "); check DNS and the link");
      case CURLE_COULDNT_CONNECT:
      case CURLE_INTERFACE_FAILED:
        return Fail(FailureClass::kConnect, ErrorKind::kNetwork,
                    "cannot connect to " + url + " (" + detail + "); the server is down or unreachable, will retry");
      case CURLE_OPERATION_TIMEDOUT:
        if (std::strstr(error_buffer, "too slow") != nullptr) {
          return Fail(FailureClass::kStall, ErrorKind::kNetwork,
                      "transfer with " + url + " stalled: no progress for " + std::to_string(options.stall_timeout_s) +
                          " s");
        }
        if (std::strstr(error_buffer, "onnection") != nullptr || std::strstr(error_buffer, "esolv") != nullptr) {
          return Fail(FailureClass::kConnect, ErrorKind::kNetwork,
                      "connecting to " + url + " timed out after " + std::to_string(options.connect_timeout_s) +
                          " s (" + detail + "); will retry");
        }
        return Fail(FailureClass::kTimeout, ErrorKind::kNetwork,
                    "request to " + url + " did not finish within request_timeout_s " +
                        std::to_string(options.request_timeout_s) + " s (" + detail + "); will retry");
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING: {
        // TLS 1.3 reports a refused client certificate after the handshake, on the first read.
        if (IsClientCertificateAlert(detail)) return ClientCertificateError(url, detail);
        // Without an alert, a server that refuses our client certificate may just close (or
        // reset) the new connection before any answer: say so, but keep it retryable (a crash
        // looks the same).
        long new_connections = 0;
        curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
        long header_bytes = 0;
        curl_easy_getinfo(easy, CURLINFO_HEADER_SIZE, &header_bytes);
        if (new_connections > 0 && header_bytes == 0 && !options.tls.client_cert_file.empty()) {
          return Fail(FailureClass::kConnectionLost, ErrorKind::kNetwork,
                      "connection to " + url + " was closed without a reply right after the TLS handshake (" +
                          detail + "); if the server requires mTLS it may have rejected this terminal's client "
                          "certificate " + options.tls.client_cert_file.string() + ", otherwise it failed; will retry");
        }
        return Fail(FailureClass::kConnectionLost, ErrorKind::kNetwork,
                    "connection to " + url + " was lost (" + detail + ")");
      }
      case CURLE_PARTIAL_FILE:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
      case CURLE_SEND_FAIL_REWIND:
        return Fail(FailureClass::kConnectionLost, ErrorKind::kNetwork,
                    "connection to " + url + " was lost (" + detail + ")");
      case CURLE_WRITE_ERROR:
        if (transfer.body_too_large) {
          return Fail(FailureClass::kProtocol, ErrorKind::kProtocol,
                      "the response body from " + url + " exceeds the limit of " + std::to_string(transfer.max_body) +
                          " bytes; transfer aborted");
        }
        return Fail(FailureClass::kLocal, ErrorKind::kInternal, "cannot store the response from " + url + " (" + detail + ")");
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
        return Fail(FailureClass::kLocal, ErrorKind::kInvalidInput, "invalid URL " + url + " (" + detail + ")");
      case CURLE_ABORTED_BY_CALLBACK:
      case CURLE_READ_ERROR:
        if (transfer.cancelled) return Cancelled(url);
        if (transfer.past_caller_deadline || transfer.past_derived_deadline) return DeadlineError(url, transfer);
        if (transfer.stalled) {
          return Fail(FailureClass::kStall, ErrorKind::kNetwork,
                      "transfer with " + url + " stalled: no progress for " + std::to_string(options.stall_timeout_s) +
                          " s (no byte sent or received); will retry");
        }
        if (transfer.send_refused) {
          return Fail(FailureClass::kLinkDown, ErrorKind::kCancelled,
                      "request to " + url + " was cancelled after " + std::to_string(transfer.body_sent) +
                          " body bytes: the link's lease was revoked, or the agent is stopping");
        }
        return Fail(FailureClass::kCancelled, ErrorKind::kCancelled, "request to " + url + " was cancelled");
      case CURLE_OUT_OF_MEMORY:
        return Fail(FailureClass::kLocal, ErrorKind::kInternal, "out of memory during the request to " + url);
      default:
        return Fail(FailureClass::kConnectionLost, ErrorKind::kNetwork, "request to " + url + " failed: " + detail);
    }
  }
};

void CancelAllRequests() { g_cancel_all.store(true, std::memory_order_relaxed); }

bool AllRequestsCancelled() { return g_cancel_all.load(std::memory_order_relaxed); }

std::string HttpResponse::Header(const std::string& name) const {
  const std::string lower = ToLower(name);
  for (const auto& [key, value] : headers) {
    if (ToLower(key) == lower) return value;
  }
  return {};
}

HttpClient::HttpClient(HttpOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (GlobalInit() == CURLE_OK) impl_->easy = curl_easy_init();
}

HttpClient::~HttpClient() {
  if (impl_->easy != nullptr) curl_easy_cleanup(impl_->easy);
}

FailureClass HttpClient::last_failure() const { return impl_->last_failure; }

Expected<HttpResponse> HttpClient::Perform(const HttpRequest& request, std::uint64_t max_response_bytes) {
  Impl& impl = *impl_;
  impl.last_failure = FailureClass::kLocal;  // until the request reaches libcurl
  const std::string shown_url = RedactUrl(request.url);
  const std::string scheme = SchemeOf(request.url);
  if (scheme == "http") {
    if (!impl.options.allow_plain_http) {
      return MakeError(ErrorKind::kInvalidInput,
                       "refusing plain http:// URL " + shown_url +
                           ": use https://. Plain HTTP is a development-only setting (allow_plain_http)");
    }
    if (!impl.warned_plain_http) {
      impl.warned_plain_http = true;
      log::Warn(kComponent, "plain HTTP is enabled (development-only setting): traffic to " + shown_url +
                                " and other http:// URLs is NOT encrypted or authenticated");
    }
  } else if (scheme != "https") {
    return MakeError(ErrorKind::kInvalidInput, "unsupported URL " + shown_url + ": only https:// is allowed");
  }
  if (impl.easy == nullptr) {
    return MakeError(ErrorKind::kInternal, "libcurl could not be initialised (curl_global_init/curl_easy_init failed)");
  }

  CURL* easy = impl.easy;
  curl_easy_reset(easy);
  impl.error_buffer[0] = '\0';

  // The deadlines count from here, and hold across the one resend below (same time points).
  const auto started = std::chrono::steady_clock::now();
  const auto derived = DeriveDeadline(impl.options, request.body.size(), max_response_bytes);
  const auto derived_deadline =
      derived ? started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(derived->seconds))
              : std::chrono::steady_clock::time_point::max();
  const auto fresh_transfer = [&] {
    Transfer t;
    t.max_body = max_response_bytes;
    t.on_upload_progress = &request.on_upload_progress;
    t.body = request.body;
    t.before_send = &request.before_send;
    t.stall_timeout = std::chrono::seconds(impl.options.stall_timeout_s);
    t.derived = derived;
    t.derived_deadline = derived_deadline;
    if (request.deadline) {
      t.caller_deadline = *request.deadline;
      t.caller_deadline_s = std::chrono::duration<double>(*request.deadline - started).count();
    }
    t.cancel = &request.cancel;
    return t;
  };
  Transfer transfer = fresh_transfer();
  if (ShouldCancel(transfer)) return impl.Cancelled(shown_url);
  if (PastDeadline(transfer, started)) return impl.DeadlineError(shown_url, transfer);

  CurlHeaders headers;
  bool headers_ok = true;
  for (const auto& [name, value] : request.headers) {
    // "Name;" is curl's syntax for a header with an empty value ("Name:" would remove it).
    headers_ok = headers_ok && AppendHeader(headers, value.empty() ? name + ";" : name + ": " + value);
  }
  // No "Expect: 100-continue": it costs a round trip (or a 1 s wait) before every body.
  headers_ok = headers_ok && AppendHeader(headers, "Expect:");
  if (!HasHeader(request.headers, "content-type")) {
    headers_ok = headers_ok && AppendHeader(headers, "Content-Type:");  // not curl's form-data default
  }
  if (!headers_ok) return MakeError(ErrorKind::kInternal, "out of memory building headers for " + shown_url);

  // The setopt calls below cannot fail with valid arguments on this libcurl; a build without TLS 1.2
  // support would fail at perform time with a TLS error naming the cause.
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, impl.error_buffer);
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, impl.options.allow_plain_http ? "http,https" : "https");
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, impl.options.user_agent.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.get());

  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(easy, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  if (!impl.options.tls.pinned_public_key.empty()) {
    curl_easy_setopt(easy, CURLOPT_PINNEDPUBLICKEY, impl.options.tls.pinned_public_key.c_str());
  }
  // ALPN offers h2 and http/1.1 on https://; the server picks.
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                   static_cast<long>(impl.options.http2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1));
  const long upload_buffer = std::clamp<long>(static_cast<long>(impl.options.upload_buffer_bytes), 16L * 1024, 2L << 20);
  curl_easy_setopt(easy, CURLOPT_UPLOAD_BUFFERSIZE, upload_buffer);
  const std::string local_binding = !impl.options.interface_name.empty() ? "if!" + impl.options.interface_name
                                    : !impl.options.source_address.empty() ? "host!" + impl.options.source_address
                                                                           : std::string();
  if (!local_binding.empty()) curl_easy_setopt(easy, CURLOPT_INTERFACE, local_binding.c_str());
  if (impl.options.share != nullptr && impl.options.share->impl().share != nullptr) {
    curl_easy_setopt(easy, CURLOPT_SHARE, impl.options.share->impl().share);
  }
  const std::string ca_file = impl.options.tls.ca_file.string();
  const std::string cert_file = impl.options.tls.client_cert_file.string();
  const std::string key_file = impl.options.tls.client_key_file.string();
  if (!ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file.c_str());
  if (!cert_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLCERT, cert_file.c_str());
    curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
  }
  if (!key_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLKEY, key_file.c_str());
    curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
  }

  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, static_cast<long>(impl.options.connect_timeout_s));
  // Stalls are detected in OnProgress (no byte moved for stall_timeout_s), not by curl's
  // low-speed check, which averages over ~5 s and so reports an abrupt stall seconds late.
  if (impl.options.request_timeout_s > 0) {
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, static_cast<long>(impl.options.request_timeout_s));
  }

  if (!impl.options.basic_auth_user.empty()) {
    curl_easy_setopt(easy, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_BASIC));
    curl_easy_setopt(easy, CURLOPT_USERNAME, impl.options.basic_auth_user.c_str());
    curl_easy_setopt(easy, CURLOPT_PASSWORD, impl.options.basic_auth_password.c_str());
  }

  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &transfer);

  const std::string method = request.method;
  const auto body_size = static_cast<curl_off_t>(request.body.size());
  if (method == "GET") {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  } else if (method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (method == "POST" || method == "PATCH" || method == "PUT" || !request.body.empty()) {
    // A POST whose body comes from OnRead, block by block (at most the upload buffer each), so
    // before_send can pace every block. The method name is then replaced for PATCH/PUT/others.
    curl_easy_setopt(easy, CURLOPT_POST, 1L);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, body_size);
    curl_easy_setopt(easy, CURLOPT_READFUNCTION, &OnRead);
    curl_easy_setopt(easy, CURLOPT_READDATA, &transfer);
    curl_easy_setopt(easy, CURLOPT_SEEKFUNCTION, &OnSeek);
    curl_easy_setopt(easy, CURLOPT_SEEKDATA, &transfer);
    if (method != "POST") curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method.c_str());
  } else {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method.c_str());  // DELETE, OPTIONS without a body
  }

  CURLcode code = curl_easy_perform(easy);
  if (code == CURLE_SEND_ERROR && !transfer.send_refused && !transfer.stalled && !transfer.cancelled &&
      ReusedWithoutAnswer(easy)) {
    // A kept-alive connection the server closed just as this request went out on it (its close
    // and our send crossed; seen as "Broken pipe"). No byte of an answer came back, so the server
    // did not act on this request: it goes once more, at once, on a new connection. libcurl does
    // this itself when the read fails, not when sending the body fails. (A tus PATCH is safe to
    // repeat in any case: its Upload-Offset turns a repeat into a 409, never duplicate bytes.)
    log::Debug("http", "connection to " + shown_url + " closed by the server as it was reused (" +
                           std::string(impl.error_buffer) + "); sending the request again on a new connection");
    transfer = fresh_transfer();
    impl.error_buffer[0] = '\0';
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
    code = curl_easy_perform(easy);
  }
  // The header list and the transfer belong to this call: leave no pointers to them in the handle.
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(easy, CURLOPT_READDATA, nullptr);
  curl_easy_setopt(easy, CURLOPT_SEEKDATA, nullptr);
  if (code != CURLE_OK) return impl.MapError(code, shown_url, transfer);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &transfer.response.status);
  long version = CURL_HTTP_VERSION_NONE;
  curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
  transfer.response.http_version = version == CURL_HTTP_VERSION_2_0 ? 20 : version == CURL_HTTP_VERSION_1_0 ? 10 : 11;
  impl.last_failure = FailureClass::kNone;
  return std::move(transfer.response);
}

namespace {

// Removes "." and ".." segments from a path (RFC 3986 section 5.2.4).
std::string RemoveDotSegments(std::string_view path) {
  std::vector<std::string_view> out;
  const bool absolute = path.starts_with('/');
  std::size_t pos = absolute ? 1 : 0;
  bool trailing_slash = false;
  while (pos <= path.size()) {
    const auto slash = path.find('/', pos);
    const auto segment = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    const bool last = slash == std::string_view::npos;
    if (segment == ".") {
      trailing_slash = last;
    } else if (segment == "..") {
      if (!out.empty()) out.pop_back();
      trailing_slash = last;
    } else {
      out.push_back(segment);
      trailing_slash = false;
    }
    if (last) break;
    pos = slash + 1;
  }
  std::string result = absolute ? "/" : "";
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (i > 0) result += '/';
    result += out[i];
  }
  if (trailing_slash && !result.ends_with('/')) result += '/';
  return result;
}

bool HasScheme(std::string_view url) {
  const auto colon = url.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  if (std::isalpha(static_cast<unsigned char>(url[0])) == 0) return false;
  return std::all_of(url.begin(), url.begin() + static_cast<std::ptrdiff_t>(colon), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
  });
}

}  // namespace

std::string ResolveUrl(const std::string& base, const std::string& location) {
  if (location.empty()) return base;
  if (HasScheme(location)) return location;
  const auto scheme_end = base.find("://");
  if (scheme_end == std::string::npos) return location;  // base is not absolute: nothing to resolve against
  if (location.starts_with("//")) return base.substr(0, scheme_end + 1) + location;
  const auto authority_end = base.find_first_of("/?#", scheme_end + 3);
  const std::string origin = base.substr(0, authority_end);
  std::string base_path = authority_end == std::string::npos ? "" : base.substr(authority_end);
  const std::string base_without_fragment = origin + base_path.substr(0, base_path.find('#'));
  base_path = base_path.substr(0, base_path.find_first_of("?#"));
  if (base_path.empty()) base_path = "/";
  if (location.starts_with('#')) return base_without_fragment + location;
  if (location.starts_with('?')) return origin + base_path + location;
  // Dot segments are removed from the path only, never from the query or fragment.
  const auto suffix_begin = location.find_first_of("?#");
  const std::string path = location.substr(0, suffix_begin);
  const std::string suffix = suffix_begin == std::string::npos ? "" : location.substr(suffix_begin);
  if (location.starts_with('/')) return origin + RemoveDotSegments(path) + suffix;
  // Relative to the base's directory: the base path up to and including its last '/'.
  const std::string directory = base_path.substr(0, base_path.rfind('/') + 1);
  return origin + RemoveDotSegments(directory + path) + suffix;
}

}  // namespace ctagent::transport
