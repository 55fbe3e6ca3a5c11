// The libcurl glue shared by HttpClient and AsyncHttp: see easy.hpp.
#include "transport/curl/easy.hpp"

#include <openssl/x509_vfy.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string_view>

#include "base/log.hpp"
#include "base/url.hpp"
#include "transport/text.hpp"

namespace ctagent::transport {
namespace {

std::atomic<bool> g_cancel_all{false};
static_assert(std::atomic<bool>::is_always_lock_free, "CancelAllRequests must be async-signal-safe");

}  // namespace

void CancelAllRequests() { g_cancel_all.store(true, std::memory_order_relaxed); }

bool AllRequestsCancelled() { return g_cancel_all.load(std::memory_order_relaxed); }

namespace curl {
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

// "scheme" of a URL in lower case, or "" when the URL has none.
std::string SchemeOf(std::string_view url) {
  const auto colon = url.find("://");
  if (colon == std::string_view::npos || colon == 0) return {};
  return ToLower(url.substr(0, colon));
}

std::string FormatSeconds(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, seconds < 10 ? "%.1f s" : "%.0f s", seconds);
  return buf;
}

// How often the progress check asks before_send(0) whether the request may go on (progress
// ticks can come thousands of times a second on a fast link).
constexpr auto kGateCheckPeriod = std::chrono::milliseconds(200);

// Copies the next body bytes (at most `room`) into `buffer`: from memory, or from the body file
// with pread. Returns the count, 0 at the end; sets body_read_failed on a read error.
std::size_t CopyBody(Transfer& transfer, char* buffer, std::size_t room) {
  const std::uint64_t left = transfer.body_length - transfer.body_sent;
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room, left));
  if (n == 0) return 0;
  if (transfer.body_fd < 0) {
    std::memcpy(buffer, transfer.body.data() + transfer.body_sent, n);
    return n;
  }
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(transfer.body_fd, buffer + got, n - got,
                              static_cast<off_t>(transfer.body_file_offset + transfer.body_sent + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {  // an error, or the file is shorter than it was said to be
      transfer.body_read_failed = true;
      return 0;
    }
    got += static_cast<std::size_t>(r);
  }
  return n;
}

size_t OnRead(char* buffer, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const std::size_t room = size * count;
  if (transfer->body_sent >= transfer->body_length || room == 0) return 0;
  std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room, transfer->body_length - transfer->body_sent));
  const auto paced_from = std::chrono::steady_clock::now();
  if (transfer->before_send != nullptr && *transfer->before_send && !(*transfer->before_send)(n)) {
    transfer->send_refused = true;
    return CURL_READFUNC_ABORT;
  }
  if (transfer->pace != nullptr && *transfer->pace) {
    // The event loop's pacing: book the block once, and if it must wait, pause the transfer
    // (the engine's timer resumes it; libcurl then asks for the block again).
    if (transfer->paced_bytes == 0) {
      const std::chrono::nanoseconds hold = (*transfer->pace)(n);
      transfer->paced_bytes = n;
      if (hold.count() > 0) {
        transfer->paused = true;
        transfer->paused_at = paced_from;
        transfer->resume_at = paced_from + hold;
        return CURL_READFUNC_PAUSE;
      }
    }
    n = static_cast<std::size_t>(std::min<std::uint64_t>(n, transfer->paced_bytes));
  }
  // Time spent waiting in the pacer (a link's bandwidth cap) is ours, not the network's: it
  // counts neither as a stall nor against the size-derived deadline.
  transfer->last_motion = std::chrono::steady_clock::now();
  if (transfer->derived_deadline != std::chrono::steady_clock::time_point::max()) {
    transfer->derived_deadline += transfer->last_motion - paced_from;
  }
  const std::size_t copied = CopyBody(*transfer, buffer, n);
  if (transfer->body_read_failed) return CURL_READFUNC_ABORT;
  transfer->body_sent += copied;
  transfer->paced_bytes -= std::min<std::uint64_t>(transfer->paced_bytes, copied);
  return copied;
}

// curl rewinds the body when it must send it again (a connection re-used after the peer closed
// it, or an HTTP/2 stream refused before any byte was processed).
int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* transfer = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<std::uint64_t>(offset) > transfer->body_length) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  transfer->body_sent = static_cast<std::uint64_t>(offset);
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
  return MustEnd(*transfer, dlnow, ulnow, std::chrono::steady_clock::now()) ? 1 : 0;  // 1: CURLE_ABORTED_BY_CALLBACK
}

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

// curl_global_init is not thread-safe and must run once per process, before any handle exists.
CURLcode GlobalInit() {
  static std::once_flag once;
  static CURLcode result = CURLE_OK;
  std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  return result;
}

bool ShouldCancel(Transfer& transfer) {
  if (g_cancel_all.load(std::memory_order_relaxed) || (transfer.cancel != nullptr && *transfer.cancel && (*transfer.cancel)())) {
    transfer.cancelled = true;
  }
  return transfer.cancelled;
}

bool PastDeadline(Transfer& transfer, std::chrono::steady_clock::time_point now) {
  if (now >= transfer.caller_deadline) {
    transfer.past_caller_deadline = true;
  } else if (now >= transfer.derived_deadline) {
    transfer.past_derived_deadline = true;
  }
  return transfer.past_caller_deadline || transfer.past_derived_deadline;
}

bool MustEnd(Transfer& transfer, curl_off_t dlnow, curl_off_t ulnow, std::chrono::steady_clock::time_point now) {
  // A stopping process or caller, and the overall deadline: checked at every progress call
  // because libcurl makes one at least once a second whatever the transfer does, also while an
  // answer trickles in a byte at a time (which the stall check below never sees as a stall).
  if (ShouldCancel(transfer) || PastDeadline(transfer, now)) return true;
  // The gate the read callback asks before each block, asked with no bytes: a revoked link
  // lease or a stopping uploader ends the request within about a second, even while a large
  // block still drains over a slow link.
  if (transfer.before_send != nullptr && *transfer.before_send && now - transfer.last_gate_check >= kGateCheckPeriod) {
    transfer.last_gate_check = now;
    if (!(*transfer.before_send)(0)) {
      transfer.send_refused = true;
      return true;
    }
  }
  if (transfer.paused) {
    // Held by our own pacer (AsyncRequest::pace), not by the network: not a stall.
    transfer.last_motion = now;
  } else if (dlnow != transfer.seen_down || ulnow != transfer.seen_up) {
    transfer.seen_down = dlnow;
    transfer.seen_up = ulnow;
    transfer.last_motion = now;
  } else if (transfer.stall_timeout.count() > 0 && now - transfer.last_motion >= transfer.stall_timeout) {
    transfer.stalled = true;
    return true;
  }
  return false;
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

Transfer MakeTransfer(const HttpOptions& options, const HttpRequest& request, std::uint64_t body_bytes,
                      std::uint64_t max_response_bytes, std::chrono::steady_clock::time_point started,
                      const std::optional<DerivedDeadline>& derived) {
  Transfer t;
  t.max_body = max_response_bytes;
  t.on_upload_progress = &request.on_upload_progress;
  t.body = request.body;
  t.body_length = body_bytes;
  t.before_send = &request.before_send;
  t.stall_timeout = std::chrono::seconds(options.stall_timeout_s);
  t.derived = derived;
  t.derived_deadline = derived ? started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                               std::chrono::duration<double>(derived->seconds))
                               : std::chrono::steady_clock::time_point::max();
  if (request.deadline) {
    t.caller_deadline = *request.deadline;
    t.caller_deadline_s = std::chrono::duration<double>(*request.deadline - started).count();
  }
  t.cancel = &request.cancel;
  t.last_motion = started;
  return t;
}

Status CheckUrl(const HttpOptions& options, const std::string& url, bool* warned_plain_http) {
  const std::string shown_url = RedactUrl(url);
  const std::string scheme = SchemeOf(url);
  if (scheme == "http") {
    if (!options.allow_plain_http) {
      return MakeError(ErrorKind::kInvalidInput,
                       "refusing plain http:// URL " + shown_url +
                           ": use https://. Plain HTTP is a development-only setting (allow_plain_http)");
    }
    if (!*warned_plain_http) {
      *warned_plain_http = true;
      log::Warn(kComponent, "plain HTTP is enabled (development-only setting): traffic to " + shown_url +
                                " and other http:// URLs is NOT encrypted or authenticated");
    }
  } else if (scheme != "https") {
    return MakeError(ErrorKind::kInvalidInput, "unsupported URL " + shown_url + ": only https:// is allowed");
  }
  return Ok();
}

Status ConfigureEasy(CURL* easy, const HttpOptions& options, const HttpRequest& request, Transfer& transfer,
                     CurlHeaders* headers, char* error_buffer) {
  CurlHeaders& list = *headers;
  bool headers_ok = true;
  for (const auto& [name, value] : request.headers) {
    // "Name;" is curl's syntax for a header with an empty value ("Name:" would remove it).
    headers_ok = headers_ok && AppendHeader(list, value.empty() ? name + ";" : name + ": " + value);
  }
  // No "Expect: 100-continue": it costs a round trip (or a 1 s wait) before every body.
  headers_ok = headers_ok && AppendHeader(list, "Expect:");
  if (!HasHeader(request.headers, "content-type")) {
    headers_ok = headers_ok && AppendHeader(list, "Content-Type:");  // not curl's form-data default
  }
  if (!headers_ok) return MakeError(ErrorKind::kInternal, "out of memory building headers for " + RedactUrl(request.url));

  // The setopt calls below cannot fail with valid arguments on this libcurl; a build without TLS 1.2
  // support would fail at perform time with a TLS error naming the cause.
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, options.allow_plain_http ? "http,https" : "https");
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, options.user_agent.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list.get());

  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(easy, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  if (!options.tls.pinned_public_key.empty()) {
    curl_easy_setopt(easy, CURLOPT_PINNEDPUBLICKEY, options.tls.pinned_public_key.c_str());
  }
  // ALPN offers h2 and http/1.1 on https://; the server picks.
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                   static_cast<long>(options.http2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1));
  const long upload_buffer = std::clamp<long>(static_cast<long>(options.upload_buffer_bytes), 16L * 1024, 2L << 20);
  curl_easy_setopt(easy, CURLOPT_UPLOAD_BUFFERSIZE, upload_buffer);
  // libcurl copies string options, so these temporaries may go.
  const std::string local_binding = !options.interface_name.empty() ? "if!" + options.interface_name
                                    : !options.source_address.empty() ? "host!" + options.source_address
                                                                      : std::string();
  if (!local_binding.empty()) curl_easy_setopt(easy, CURLOPT_INTERFACE, local_binding.c_str());
  if (options.share != nullptr && options.share->impl().share != nullptr) {
    curl_easy_setopt(easy, CURLOPT_SHARE, options.share->impl().share);
  }
  const std::string ca_file = options.tls.ca_file.string();
  const std::string cert_file = options.tls.client_cert_file.string();
  const std::string key_file = options.tls.client_key_file.string();
  if (!ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file.c_str());
  if (!cert_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLCERT, cert_file.c_str());
    curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
  }
  if (!key_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLKEY, key_file.c_str());
    curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
  }

  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, static_cast<long>(options.connect_timeout_s));
  // Stalls are detected in MustEnd (no byte moved for stall_timeout_s), not by curl's
  // low-speed check, which averages over ~5 s and so reports an abrupt stall seconds late.
  if (options.request_timeout_s > 0) {
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, static_cast<long>(options.request_timeout_s));
  }

  if (!options.basic_auth_user.empty()) {
    curl_easy_setopt(easy, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_BASIC));
    curl_easy_setopt(easy, CURLOPT_USERNAME, options.basic_auth_user.c_str());
    curl_easy_setopt(easy, CURLOPT_PASSWORD, options.basic_auth_password.c_str());
  }

  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &transfer);

  const std::string& method = request.method;
  const auto body_size = static_cast<curl_off_t>(transfer.body_length);
  if (method == "GET") {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  } else if (method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (method == "POST" || method == "PATCH" || method == "PUT" || transfer.body_length > 0) {
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
  return Ok();
}

bool ReusedWithoutAnswer(CURL* easy) {
  long new_connections = -1;
  long header_bytes = -1;
  curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
  curl_easy_getinfo(easy, CURLINFO_HEADER_SIZE, &header_bytes);
  return new_connections == 0 && header_bytes == 0;
}

void FinishResponse(CURL* easy, Transfer& transfer) {
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &transfer.response.status);
  long version = CURL_HTTP_VERSION_NONE;
  curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
  transfer.response.http_version = version == CURL_HTTP_VERSION_2_0 ? 20 : version == CURL_HTTP_VERSION_1_0 ? 10 : 11;
}


Unexpected FailureMapper::Fail(FailureClass failure, ErrorKind kind, std::string message) const {
  return MakeError(kind, std::move(message), failure);
}

Unexpected FailureMapper::ClientCertificateError(const std::string& url, const std::string& detail) const {
  if (options_.tls.client_cert_file.empty()) {
    return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                "TLS: " + url + " requires a client certificate and none is configured; set "
                "cloud.tls.client_cert_file and cloud.tls.client_key_file to this terminal's certificate (" +
                    detail + ")");
  }
  return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
              "TLS: " + url + " rejected this terminal's client certificate " +
                  options_.tls.client_cert_file.string() +
                  "; check that the imaging center trusts its issuer and that it has not expired (" + detail + ")");
}

Unexpected FailureMapper::CertificateError(const std::string& url) const {
  long verify_result = X509_V_OK;
  curl_easy_getinfo(easy_, CURLINFO_SSL_VERIFYRESULT, &verify_result);
  const std::string detail = error_buffer_[0] != '\0' ? std::string(error_buffer_) : "";
  const std::string ca =
      options_.tls.ca_file.empty() ? std::string("the system CA store") : "CA file " + options_.tls.ca_file.string();
  if (verify_result == X509_V_ERR_CERT_HAS_EXPIRED) {
    return Fail(
        FailureClass::kTlsRejected, ErrorKind::kTls,
        "TLS: the server certificate of " + url + " has expired; the imaging center must renew it (" + detail + ")");
  }
  if (verify_result == X509_V_ERR_CERT_NOT_YET_VALID) {
    return Fail(
        FailureClass::kClockSkew, ErrorKind::kTls,
        "TLS: the server certificate of " + url + " is not yet valid; check this terminal's clock (" + detail + ")");
  }
  if (IsUnknownIssuer(verify_result)) {
    return Fail(
        FailureClass::kTlsRejected, ErrorKind::kTls,
        "TLS: the server certificate of " + url + " is not signed by a trusted CA (unknown or self-signed issuer: " +
            X509_verify_cert_error_string(verify_result) + "); check that " + ca + " holds the imaging center's CA");
  }
  // curl checks the host name itself after the chain verified, and then reports no specific
  // OpenSSL code (X509_V_OK or "unspecified"): its message names the host name.
  if (verify_result == X509_V_ERR_HOSTNAME_MISMATCH || verify_result == X509_V_ERR_IP_ADDRESS_MISMATCH ||
      detail.find("host name") != std::string::npos) {
    return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
                "TLS: host name mismatch: the server certificate of " + url +
                    " was not issued for this host; check the URL's host name (" + detail + ")");
  }
  return Fail(FailureClass::kTlsRejected, ErrorKind::kTls,
              "TLS: the server certificate of " + url +
                  " failed verification: " + X509_verify_cert_error_string(verify_result) + " (" + detail + ")");
}

Unexpected FailureMapper::Cancelled(const std::string& url) const {
  return Fail(FailureClass::kCancelled, ErrorKind::kCancelled,
              "request to " + url + " was cancelled: the agent is stopping (nothing is lost: what the server " +
                  "did not confirm is sent again on the next run)");
}

Unexpected FailureMapper::DeadlineError(const std::string& url, const Transfer& transfer) const {
  std::string message = "request to " + url + " did not finish by its deadline: ";
  if (transfer.past_caller_deadline) {
    message += "the caller's deadline, " + FormatSeconds(transfer.caller_deadline_s) + " after it started";
  } else if (transfer.derived) {
    message += FormatSeconds(transfer.derived->seconds) + " = " + transfer.derived->how;
  }
  message += "; the server or the link is slower than the floor rate (an answer trickling in?), will retry";
  return Fail(FailureClass::kTimeout, ErrorKind::kNetwork, std::move(message));
}

Unexpected FailureMapper::Map(CURLcode code, const std::string& url, const Transfer& transfer) const {
  const std::string detail = error_buffer_[0] != '\0' ? std::string(error_buffer_) : curl_easy_strerror(code);
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
                  "TLS: the client certificate " + options_.tls.client_cert_file.string() + " or key " +
                      options_.tls.client_key_file.string() + " cannot be used (" + detail +
                      "); check both files are PEM and match");
    case CURLE_SSL_CACERT_BADFILE:
      return Fail(FailureClass::kLocal, ErrorKind::kInvalidInput,
                  "TLS: cannot load the CA file " + options_.tls.ca_file.string() + " (" + detail +
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
      if (std::strstr(error_buffer_, "too slow") != nullptr) {
        return Fail(FailureClass::kStall, ErrorKind::kNetwork,
                    "transfer with " + url + " stalled: no progress for " + std::to_string(options_.stall_timeout_s) +
                        " s");
      }
      if (std::strstr(error_buffer_, "onnection") != nullptr || std::strstr(error_buffer_, "esolv") != nullptr) {
        return Fail(FailureClass::kConnect, ErrorKind::kNetwork,
                    "connecting to " + url + " timed out after " + std::to_string(options_.connect_timeout_s) +
                        " s (" + detail + "); will retry");
      }
      return Fail(FailureClass::kTimeout, ErrorKind::kNetwork,
                  "request to " + url + " did not finish within request_timeout_s " +
                      std::to_string(options_.request_timeout_s) + " s (" + detail + "); will retry");
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING: {
      // TLS 1.3 reports a refused client certificate after the handshake, on the first read.
      if (IsClientCertificateAlert(detail)) return ClientCertificateError(url, detail);
      // Without an alert, a server that refuses our client certificate may just close (or
      // reset) the new connection before any answer: say so, but keep it retryable (a crash
      // looks the same).
      long new_connections = 0;
      curl_easy_getinfo(easy_, CURLINFO_NUM_CONNECTS, &new_connections);
      long header_bytes = 0;
      curl_easy_getinfo(easy_, CURLINFO_HEADER_SIZE, &header_bytes);
      if (new_connections > 0 && header_bytes == 0 && !options_.tls.client_cert_file.empty()) {
        return Fail(FailureClass::kConnectionLost, ErrorKind::kNetwork,
                    "connection to " + url + " was closed without a reply right after the TLS handshake (" +
                        detail + "); if the server requires mTLS it may have rejected this terminal's client "
                        "certificate " + options_.tls.client_cert_file.string() + ", otherwise it failed; will retry");
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
      if (transfer.body_read_failed) {
        return Fail(FailureClass::kLocal, ErrorKind::kInternal,
                    "cannot read the request body for " + url + " from its file (" + std::strerror(errno) +
                        " or shorter than announced); the upload is retried");
      }
      if (transfer.cancelled) return Cancelled(url);
      if (transfer.past_caller_deadline || transfer.past_derived_deadline) return DeadlineError(url, transfer);
      if (transfer.stalled) {
        return Fail(FailureClass::kStall, ErrorKind::kNetwork,
                    "transfer with " + url + " stalled: no progress for " + std::to_string(options_.stall_timeout_s) +
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

}  // namespace curl
}  // namespace ctagent::transport
