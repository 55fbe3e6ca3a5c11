// The libcurl glue shared by the blocking HttpClient (curl/http_curl.cpp) and the event-loop
// engine AsyncHttp (curl/async_curl.cpp): one request's state and callbacks, the options every
// easy handle gets (TLS, pinning, binding, timeouts), the stall / deadline / cancel checks, and
// the mapping of a CURLcode to an Error with its FailureClass. Internal to transport/.
#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "base/error.hpp"
#include "transport/http.hpp"

namespace ctagent::transport {

// One CURLSH with a mutex per kind of shared data, as libcurl's lock callbacks require.
struct HttpShare::Impl {
  CURLSH* share = nullptr;
  std::mutex locks[CURL_LOCK_DATA_LAST];

  static void Lock(CURL* /*easy*/, curl_lock_data data, curl_lock_access /*access*/, void* user) {
    static_cast<Impl*>(user)->locks[data].lock();
  }
  static void Unlock(CURL* /*easy*/, curl_lock_data data, void* user) { static_cast<Impl*>(user)->locks[data].unlock(); }
};

}  // namespace ctagent::transport

namespace ctagent::transport::curl {

// curl_global_init, once per process (not thread-safe in libcurl, so behind a once flag).
CURLcode GlobalInit();

// The size-derived deadline of one request (see HttpOptions::floor_rate_bits_per_s) and how it
// was derived, for the message that reports it.
struct DerivedDeadline {
  double seconds = 0;
  std::string how;
};
std::optional<DerivedDeadline> DeriveDeadline(const HttpOptions& options, std::uint64_t body_bytes,
                                              std::uint64_t response_cap);

// One request in flight: what the callbacks read and write.
struct Transfer {
  HttpResponse response;
  std::uint64_t max_body = 0;
  bool body_too_large = false;
  const std::function<void(std::uint64_t)>* on_upload_progress = nullptr;
  curl_off_t last_reported_upload = -1;
  // Request body, handed to curl block by block through the read callback (so a pacer can run
  // per block): bytes in memory, or, when body_fd >= 0, body_length bytes of that file from
  // body_file_offset (read with pread as curl asks).
  std::span<const std::uint8_t> body;
  int body_fd = -1;
  std::uint64_t body_file_offset = 0;
  std::uint64_t body_length = 0;
  std::uint64_t body_sent = 0;
  bool body_read_failed = false;
  const std::function<bool(std::size_t)>* before_send = nullptr;
  bool send_refused = false;
  // The event loop's pacer (AsyncRequest::pace): asked once per block for how long to hold it.
  // A hold pauses the transfer (CURL_READFUNC_PAUSE) until `resume_at`; the engine's timer
  // resumes it and the block, booked already, goes without being asked for again.
  const std::function<std::chrono::nanoseconds(std::size_t)>* pace = nullptr;
  std::uint64_t paced_bytes = 0;  // booked by `pace` and not yet sent
  bool paused = false;
  std::chrono::steady_clock::time_point paused_at{};
  std::chrono::steady_clock::time_point resume_at{};
  std::chrono::steady_clock::time_point last_gate_check{};  // before_send(0) from the progress check
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

// A fresh Transfer for `request` (whose std::function members it points at: keep the request
// alive as long as the transfer), with deadlines counted from `started`.
Transfer MakeTransfer(const HttpOptions& options, const HttpRequest& request, std::uint64_t body_bytes,
                      std::uint64_t max_response_bytes, std::chrono::steady_clock::time_point started,
                      const std::optional<DerivedDeadline>& derived);

// Whether the request should end now (a stopping process or caller); sets transfer.cancelled.
bool ShouldCancel(Transfer& transfer);
// Whether a deadline has passed; records which one.
bool PastDeadline(Transfer& transfer, std::chrono::steady_clock::time_point now);
// The checks the progress callback makes (cancel, deadlines, the before_send gate, stall), for a
// caller that must make them when libcurl does not call back (a silent socket in the multi
// interface). True: end the request (the reason is recorded in the transfer).
bool MustEnd(Transfer& transfer, curl_off_t dlnow, curl_off_t ulnow, std::chrono::steady_clock::time_point now);

struct HeaderListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using CurlHeaders = std::unique_ptr<curl_slist, HeaderListDeleter>;

// The URL's scheme checked against the options (https only, http:// when allow_plain_http).
// `*warned_plain_http` makes the plain-HTTP warning come once per caller.
Status CheckUrl(const HttpOptions& options, const std::string& url, bool* warned_plain_http);

// Sets every option of one request on a reset or new easy handle: URL, method and body (read
// from `transfer`), headers (kept in *headers), TLS verification, pinning, client certificate,
// binding, timeouts, authentication and the callbacks writing into `transfer`. The handle then
// points at `transfer`, *headers, `options`' strings and `error_buffer`: keep them alive while
// it runs. An error only for out of memory.
Status ConfigureEasy(CURL* easy, const HttpOptions& options, const HttpRequest& request, Transfer& transfer,
                     CurlHeaders* headers, char* error_buffer);

// Whether the last run of `easy` used a connection kept from an earlier request and got no byte
// of an answer: a request sent as the server closed that idle connection, safe to send again.
bool ReusedWithoutAnswer(CURL* easy);

// Fills status and HTTP version of a finished request.
void FinishResponse(CURL* easy, Transfer& transfer);

// Turns the outcome of one request into an Error with a message a person can act on and its
// FailureClass (Error::failure()). `url` is the redacted URL named in messages.
class FailureMapper {
 public:
  FailureMapper(const HttpOptions& options, CURL* easy, const char* error_buffer)
      : options_(options), easy_(easy), error_buffer_(error_buffer) {}
  Unexpected Map(CURLcode code, const std::string& url, const Transfer& transfer) const;
  Unexpected Cancelled(const std::string& url) const;
  Unexpected DeadlineError(const std::string& url, const Transfer& transfer) const;

 private:
  Unexpected Fail(FailureClass failure, ErrorKind kind, std::string message) const;
  Unexpected ClientCertificateError(const std::string& url, const std::string& detail) const;
  Unexpected CertificateError(const std::string& url) const;

  const HttpOptions& options_;
  CURL* easy_;
  const char* error_buffer_;
};

}  // namespace ctagent::transport::curl
