// AsyncHttp: HTTP(S) requests on a Boost.Asio event loop through libcurl's multi interface, with
// no thread per request. Each curl socket is watched by the io_context's reactor and a
// steady_timer carries curl's timeout (curl_multi_socket_action); all requests share one
// connection cache, so many requests in flight use a bounded set of kept-alive connections.
// Every request gets the same options, TLS verification, pinning, stall check, deadlines and
// failure classes as HttpClient::Perform (the option code is shared: curl/easy.hpp). The glue
// lives in curl/async_curl.cpp.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>

#include "base/error.hpp"
#include "transport/http.hpp"

namespace ctagent::transport {

// A request body read from a file as curl sends it (pread of `length` bytes from `offset`), so a
// large body never sits in memory. Meant for files the page cache holds (a chunk just written):
// the reads happen on the event loop.
struct FileBody {
  std::filesystem::path path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

struct AsyncRequest {
  // method, url, headers, progress, deadline and cancel as for HttpClient::Perform. The body is
  // `request.body` (memory the caller keeps alive until the completion: `keep_alive` may own it)
  // or, when set, `file_body`. `request.before_send` is asked before each block and at each
  // progress check, but runs on the event loop: it must answer at once (true: go on, false:
  // end the request), never wait to pace.
  HttpRequest request;
  // Pacing without waiting (a link's bandwidth cap): asked once per block of body bytes, after
  // `request.before_send`, with the block's size; returns how long the block must be held (0:
  // send it now). A hold pauses the request and a timer resumes it, so the loop runs everything
  // else meanwhile; the held time counts neither as a stall nor against the size-derived
  // deadline. Empty: not paced.
  std::function<std::chrono::nanoseconds(std::size_t)> pace;
  std::optional<FileBody> file_body;
  std::shared_ptr<const void> keep_alive;  // released once the completion has run
  std::uint64_t max_response_bytes = 256ull << 20;
};

// The completion of one request, always called on the event loop (posted, never from inside
// Start): the response for any HTTP status, or an Error (kinds and failure classes as
// HttpClient::Perform).
using AsyncCompletion = std::function<void(Expected<HttpResponse>)>;

struct AsyncHttpLimits {
  // Connections open at once to one host (CURLMOPT_MAX_HOST_CONNECTIONS); requests beyond wait
  // in libcurl's queue for a free one. 0: no limit.
  std::uint32_t max_host_connections = 64;
  // Kept-alive connections cached for reuse (CURLMOPT_MAXCONNECTS).
  std::uint32_t max_cached_connections = 64;
  // HTTP/2 multiplexing of several requests on one connection. Off: each request in flight has a
  // connection of its own, as each transfer thread had, so a long fat path is filled by several
  // TCP windows instead of one (and one lost packet stalls one request, not all).
  bool multiplex = false;
};

class AsyncHttp {
 public:
  using RequestId = std::uint64_t;

  // `options` apply to every request (TLS, binding, timeouts). The multi handle shares
  // connections between its requests; TLS sessions and DNS answers go through `share`, made here
  // when not given.
  AsyncHttp(boost::asio::io_context& io, HttpOptions options, AsyncHttpLimits limits = {});
  // Ends every request in flight without calling its completion. Call it on the event loop's
  // thread, or once the loop no longer runs.
  ~AsyncHttp();
  AsyncHttp(const AsyncHttp&) = delete;
  AsyncHttp& operator=(const AsyncHttp&) = delete;

  // Starts a request; `done` is called on the event loop when it ends. Call on the loop's thread.
  RequestId Start(AsyncRequest request, AsyncCompletion done);
  // Ends a request in flight: its completion gets kCancelled (ErrorKind::kCancelled). Unknown or
  // finished ids are ignored. On the loop's thread.
  void Cancel(RequestId id);
  // Cancel() for every request in flight.
  void CancelAll();
  // Requests started whose completion has not run yet.
  std::size_t in_flight() const;
  // Connections libcurl opened so far (CURLINFO_NUM_CONNECTS summed over finished requests):
  // what connection reuse saves shows here.
  std::uint64_t connections_opened() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace ctagent::transport
