// AsyncHttp: libcurl's multi interface driven by the io_context (see http_async.hpp).
//
// libcurl says which sockets it wants watched for what (CURLMOPT_SOCKETFUNCTION) and when it
// wants to be called without socket activity (CURLMOPT_TIMERFUNCTION); we watch each socket with
// a stream_descriptor's async_wait and the timeout with a steady_timer, and call
// curl_multi_socket_action for what happened. Two details matter:
//   - Asio's reactor is edge-triggered (epoll with EPOLLET) and a wait is not speculative, while
//     libcurl expects level-triggered readiness: it may leave bytes in a socket (its buffer was
//     full) or stop writing before the socket is full (its read callback gave a block). So before
//     a socket is waited on, a zero-timeout poll() asks whether it is ready already; if it is,
//     libcurl is called again at once (posted, so other work interleaves) instead of waiting for
//     an edge that may never come.
//   - The descriptors are libcurl's: a stream_descriptor only borrows one and releases it (never
//     closes it) when libcurl says CURL_POLL_REMOVE.
// libcurl calls the progress callback only when it is driven; a silent socket drives nothing, so a
// periodic check (kCheckPeriod) makes the stall, deadline, gate and cancel checks of every
// request in flight, as the blocking client's progress callback does.
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <utility>

#include "base/log.hpp"
#include "base/url.hpp"
#include "transport/curl/easy.hpp"
#include "transport/http_async.hpp"

namespace ctagent::transport {
namespace {

// How often every request in flight is checked for stall, deadline, gate and cancel while
// libcurl is not calling back (the blocking client's progress callback runs at least once a second).
constexpr auto kCheckPeriod = std::chrono::milliseconds(250);

// Whether `fd` is ready for `events` now (zero-timeout poll).
bool ReadyNow(int fd, short events) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (events | POLLERR | POLLHUP)) != 0;
}

}  // namespace

struct AsyncHttp::Impl : std::enable_shared_from_this<AsyncHttp::Impl> {
  // One socket libcurl asked us to watch.
  struct Socket {
    Socket(boost::asio::io_context& io, curl_socket_t socket_fd) : descriptor(io), fd(socket_fd) {}
    ~Socket() {
      if (descriptor.is_open()) (void)descriptor.release();  // libcurl's to close, not ours
    }
    boost::asio::posix::stream_descriptor descriptor;
    curl_socket_t fd;
    int wanted = 0;  // CURL_POLL_IN, CURL_POLL_OUT or CURL_POLL_INOUT
    bool read_armed = false;
    bool write_armed = false;
    bool removed = false;  // libcurl is done with it: handlers still queued do nothing
  };

  // One request in flight.
  struct Request {
    ~Request() {
      if (easy != nullptr) curl_easy_cleanup(easy);
      if (body_fd >= 0) ::close(body_fd);
    }
    RequestId id = 0;
    AsyncRequest request;
    AsyncCompletion done;
    CURL* easy = nullptr;
    int body_fd = -1;
    std::uint64_t body_length = 0;
    curl::Transfer transfer;
    curl::CurlHeaders headers;
    char error_buffer[CURL_ERROR_SIZE] = {};
    std::string shown_url;
    std::optional<curl::DerivedDeadline> derived;
    std::chrono::steady_clock::time_point started;
    bool resent = false;
    // Resumes the transfer when the pacer's hold ends (armed while transfer.paused).
    std::unique_ptr<boost::asio::steady_timer> resume_timer;
    bool resume_armed = false;
  };

  Impl(boost::asio::io_context& context, HttpOptions http_options, AsyncHttpLimits async_limits)
      : io(context), options(std::move(http_options)), limits(async_limits), curl_timer(context), check_timer(context) {}

  boost::asio::io_context& io;
  HttpOptions options;
  AsyncHttpLimits limits;
  CURLM* multi = nullptr;
  boost::asio::steady_timer curl_timer;
  boost::asio::steady_timer check_timer;
  bool check_armed = false;
  std::map<curl_socket_t, std::shared_ptr<Socket>> sockets;
  std::map<RequestId, std::unique_ptr<Request>> requests;
  RequestId next_id = 1;
  std::size_t outstanding = 0;  // started, completion not run yet
  std::uint64_t connections_opened = 0;
  bool warned_plain_http = false;

  void Init() {
    if (curl::GlobalInit() != CURLE_OK) return;
    // libcurl 7.88 keeps TLS sessions per easy handle, and each request has a new one: without a
    // share, every new connection would pay a full TLS handshake instead of resuming a session.
    if (options.share == nullptr) options.share = std::make_shared<HttpShare>();
    multi = curl_multi_init();
    if (multi == nullptr) return;
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &Impl::OnSocket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &Impl::OnTimer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(limits.max_host_connections));
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(limits.max_cached_connections));
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, limits.multiplex ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING);
  }

  void Shutdown() {
    if (multi == nullptr) return;
    for (auto& [id, request] : requests) curl_multi_remove_handle(multi, request->easy);
    requests.clear();
    curl_multi_cleanup(multi);  // closes the cached connections (CURL_POLL_REMOVE for each)
    multi = nullptr;
    for (auto& [fd, socket] : sockets) {
      socket->removed = true;
      if (socket->descriptor.is_open()) (void)socket->descriptor.release();
    }
    sockets.clear();
    curl_timer.cancel();
    check_timer.cancel();
  }

  static int OnSocket(CURL* /*easy*/, curl_socket_t fd, int what, void* user, void* /*socket_data*/) {
    static_cast<Impl*>(user)->Watch(fd, what);
    return 0;
  }

  static int OnTimer(CURLM* /*multi*/, long timeout_ms, void* user) {
    static_cast<Impl*>(user)->SetCurlTimer(timeout_ms);
    return 0;
  }

  void Watch(curl_socket_t fd, int what) {
    if (what == CURL_POLL_REMOVE) {
      const auto it = sockets.find(fd);
      if (it == sockets.end()) return;
      it->second->removed = true;
      // Cancels its waits (their handlers see `removed`) and gives the descriptor back unclosed.
      if (it->second->descriptor.is_open()) (void)it->second->descriptor.release();
      sockets.erase(it);
      return;
    }
    auto& socket = sockets[fd];
    if (!socket) {
      socket = std::make_shared<Socket>(io, fd);
      boost::system::error_code ec;
      socket->descriptor.assign(fd, ec);
      if (ec) log::Warn("http", "cannot watch a connection's socket on the event loop: " + ec.message());
    }
    socket->wanted = what;
    Arm(socket);
  }

  // Waits for what libcurl wants of the socket, or, when it is ready already, posts the action.
  void Arm(const std::shared_ptr<Socket>& socket) {
    if (socket->removed || !socket->descriptor.is_open()) return;
    if ((socket->wanted & CURL_POLL_IN) != 0 && !socket->read_armed) {
      socket->read_armed = true;
      Await(socket, /*read=*/true);
    }
    if ((socket->wanted & CURL_POLL_OUT) != 0 && !socket->write_armed) {
      socket->write_armed = true;
      Await(socket, /*read=*/false);
    }
  }

  void Await(const std::shared_ptr<Socket>& socket, bool read) {
    auto handler = [weak = weak_from_this(), socket, read](const boost::system::error_code& ec) {
      const auto self = weak.lock();
      if (!self) return;
      (read ? socket->read_armed : socket->write_armed) = false;
      if (ec || socket->removed || self->multi == nullptr) return;
      if ((socket->wanted & (read ? CURL_POLL_IN : CURL_POLL_OUT)) == 0) return;  // no longer wanted
      self->Action(socket->fd, read ? CURL_CSELECT_IN : CURL_CSELECT_OUT);
      self->Arm(socket);
    };
    if (ReadyNow(socket->fd, read ? POLLIN : POLLOUT)) {
      boost::asio::post(io, [handler] { handler(boost::system::error_code()); });
      return;
    }
    socket->descriptor.async_wait(read ? boost::asio::posix::stream_descriptor::wait_read
                                       : boost::asio::posix::stream_descriptor::wait_write,
                                  handler);
  }

  void SetCurlTimer(long timeout_ms) {
    if (timeout_ms < 0) {
      curl_timer.cancel();
      return;
    }
    // Not curl_multi_socket_action from here (libcurl forbids it inside its callback): a 0 ms
    // timeout runs from the loop at once, posted rather than as a timer already expired (under
    // libfaketime with a positive offset, Asio's timerfd never fires for an expired deadline:
    // the clock test of tests/durability saw the uploads stop).
    if (timeout_ms == 0) {
      curl_timer.cancel();
      boost::asio::post(io, [weak = weak_from_this()] {
        const auto self = weak.lock();
        if (!self || self->multi == nullptr) return;
        self->Action(CURL_SOCKET_TIMEOUT, 0);
      });
      return;
    }
    curl_timer.expires_after(std::chrono::milliseconds(timeout_ms));
    curl_timer.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      const auto self = weak.lock();
      if (!self || ec || self->multi == nullptr) return;
      self->Action(CURL_SOCKET_TIMEOUT, 0);
    });
  }

  void Action(curl_socket_t fd, int flags) {
    int running = 0;
    curl_multi_socket_action(multi, fd, flags, &running);
    CollectFinished();
    ArmResumes();
  }

  // A request whose pacer held its next block paused itself in the read callback: a timer
  // resumes it when the hold ends (the loop runs everything else meanwhile).
  void ArmResumes() {
    for (auto& [id, request] : requests) {
      if (!request->transfer.paused || request->resume_armed) continue;
      if (!request->resume_timer) request->resume_timer = std::make_unique<boost::asio::steady_timer>(io);
      request->resume_armed = true;
      if (request->transfer.resume_at <= std::chrono::steady_clock::now()) {
        // Due already: posted, not a timer that expired before it was set (see SetCurlTimer).
        boost::asio::post(io, [weak = weak_from_this(), request_id = id] {
          const auto self = weak.lock();
          if (!self || self->multi == nullptr) return;
          self->Resume(request_id);
        });
        continue;
      }
      request->resume_timer->expires_at(request->transfer.resume_at);
      request->resume_timer->async_wait([weak = weak_from_this(), request_id = id](const boost::system::error_code& ec) {
        const auto self = weak.lock();
        if (!self || ec || self->multi == nullptr) return;
        self->Resume(request_id);
      });
    }
  }

  void Resume(RequestId id) {
    const auto it = requests.find(id);
    if (it == requests.end()) return;  // ended meanwhile (cancelled, gate refused, deadline)
    Request& request = *it->second;
    request.resume_armed = false;
    curl::Transfer& transfer = request.transfer;
    if (!transfer.paused) return;
    transfer.paused = false;
    const auto now = std::chrono::steady_clock::now();
    // The hold was our pacing, not the network's slowness: it moves the size-derived deadline on
    // (as the blocking client's pacer time does) and is not a stall.
    if (transfer.derived_deadline != std::chrono::steady_clock::time_point::max()) {
      transfer.derived_deadline += now - transfer.paused_at;
    }
    transfer.last_motion = now;
    curl_easy_pause(request.easy, CURLPAUSE_CONT);
    Action(CURL_SOCKET_TIMEOUT, 0);
  }

  void CollectFinished() {
    int left = 0;
    while (CURLMsg* message = curl_multi_info_read(multi, &left)) {
      if (message->msg != CURLMSG_DONE) continue;
      Request* request = nullptr;
      curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, &request);
      const CURLcode code = message->data.result;  // read before the handle is removed
      if (request != nullptr) Finish(*request, code);
    }
  }

  curl::Transfer NewTransfer(const Request& request) const {
    curl::Transfer transfer = curl::MakeTransfer(options, request.request.request, request.body_length,
                                                 request.request.max_response_bytes, request.started, request.derived);
    transfer.body_fd = request.body_fd;
    transfer.pace = &request.request.pace;
    transfer.body_file_offset = request.request.file_body ? request.request.file_body->offset : 0;
    return transfer;
  }

  // The request ended in libcurl (or is ended by us with `code`): resend once on a new
  // connection if the server closed a reused one under it, else complete it.
  void Finish(Request& request, CURLcode code) {
    curl_multi_remove_handle(multi, request.easy);
    long new_connections = 0;
    curl_easy_getinfo(request.easy, CURLINFO_NUM_CONNECTS, &new_connections);
    if (new_connections > 0) connections_opened += static_cast<std::uint64_t>(new_connections);
    const curl::Transfer& transfer = request.transfer;
    if (code == CURLE_SEND_ERROR && !request.resent && !transfer.send_refused && !transfer.stalled &&
        !transfer.cancelled && curl::ReusedWithoutAnswer(request.easy)) {
      // As in HttpClient::Perform: a kept-alive connection the server closed as this request
      // went out on it; no answer came, so the server did not act on it. Once more, now, on a
      // new connection (same deadlines).
      log::Debug("http", "connection to " + request.shown_url + " closed by the server as it was reused (" +
                             std::string(request.error_buffer) + "); sending the request again on a new connection");
      request.resent = true;
      request.resume_armed = false;
      if (request.resume_timer) request.resume_timer->cancel();
      request.transfer = NewTransfer(request);  // same address: the handle's callbacks still point at it
      request.error_buffer[0] = '\0';
      curl_easy_setopt(request.easy, CURLOPT_FRESH_CONNECT, 1L);
      if (curl_multi_add_handle(multi, request.easy) == CURLM_OK) return;
    }
    Expected<HttpResponse> result = HttpResponse{};
    if (code == CURLE_OK) {
      curl::FinishResponse(request.easy, request.transfer);
      result = std::move(request.transfer.response);
    } else {
      result = curl::FailureMapper(options, request.easy, request.error_buffer)
                   .Map(code, request.shown_url, request.transfer);
    }
    Complete(request.id, std::move(result));
  }

  // Removes the request and posts its completion.
  void Complete(RequestId id, Expected<HttpResponse> result) {
    const auto it = requests.find(id);
    if (it == requests.end()) return;
    std::unique_ptr<Request> request = std::move(it->second);
    requests.erase(it);
    Post(std::move(request->done), std::move(result), std::move(request->request.keep_alive));
  }

  void Post(AsyncCompletion done, Expected<HttpResponse> result, std::shared_ptr<const void> keep) {
    boost::asio::post(io, [weak = weak_from_this(), done = std::move(done), result = std::move(result),
                           keep = std::move(keep)]() mutable {
      const auto self = weak.lock();
      if (!self) return;  // the engine is gone: no completion (see ~AsyncHttp)
      --self->outstanding;
      if (done) done(std::move(result));
    });
  }

  // Every request in flight gets the progress callback's checks (stall, deadlines, gate,
  // cancel), because libcurl does not call back while its sockets are silent.
  void ArmCheck() {
    if (check_armed || requests.empty()) return;
    check_armed = true;
    check_timer.expires_after(kCheckPeriod);
    check_timer.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      const auto self = weak.lock();
      if (!self) return;
      self->check_armed = false;
      if (ec || self->multi == nullptr) return;
      self->CheckAll();
      self->ArmCheck();
    });
  }

  void CheckAll() {
    const auto now = std::chrono::steady_clock::now();
    std::vector<Request*> ending;
    for (auto& [id, request] : requests) {
      curl_off_t down = 0;
      curl_off_t up = 0;
      curl_easy_getinfo(request->easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
      curl_easy_getinfo(request->easy, CURLINFO_SIZE_UPLOAD_T, &up);
      if (curl::MustEnd(request->transfer, down, up, now)) ending.push_back(request.get());
    }
    for (Request* request : ending) Finish(*request, CURLE_ABORTED_BY_CALLBACK);
  }

  RequestId Start(AsyncRequest async_request, AsyncCompletion done) {
    const RequestId id = next_id++;
    ++outstanding;
    auto request = std::make_unique<Request>();
    request->id = id;
    request->request = std::move(async_request);
    request->done = std::move(done);
    request->shown_url = RedactUrl(request->request.request.url);
    // Errors made here carry the class of their kind (kLocal, kCancelled) or the mapper's.
    const auto fail_now = [&](Unexpected error) {
      Post(std::move(request->done), std::move(error), std::move(request->request.keep_alive));
      return id;
    };
    if (auto checked = curl::CheckUrl(options, request->request.request.url, &warned_plain_http); !checked) {
      return fail_now(MakeError(checked.error()));
    }
    if (multi == nullptr) {
      return fail_now(MakeError(ErrorKind::kInternal, "libcurl could not be initialised (curl_multi_init failed)"));
    }
    if (const auto& file = request->request.file_body) {
      request->body_fd = ::open(file->path.c_str(), O_RDONLY | O_CLOEXEC);
      if (request->body_fd < 0) {
        return fail_now(MakeError(ErrorKind::kIo, "cannot open the request body " + file->path.string() + " for " +
                                                      request->shown_url + ": " + std::strerror(errno)));
      }
      request->body_length = file->length;
    } else {
      request->body_length = request->request.request.body.size();
    }
    request->easy = curl_easy_init();
    if (request->easy == nullptr) {
      return fail_now(MakeError(ErrorKind::kInternal, "libcurl could not make a handle for " + request->shown_url));
    }
    request->started = std::chrono::steady_clock::now();
    request->derived = curl::DeriveDeadline(options, request->body_length, request->request.max_response_bytes);
    request->transfer = NewTransfer(*request);
    const curl::FailureMapper mapper(options, request->easy, request->error_buffer);
    if (curl::ShouldCancel(request->transfer)) return fail_now(mapper.Cancelled(request->shown_url));
    if (curl::PastDeadline(request->transfer, request->started)) {
      return fail_now(mapper.DeadlineError(request->shown_url, request->transfer));
    }
    if (auto configured = curl::ConfigureEasy(request->easy, options, request->request.request, request->transfer,
                                              &request->headers, request->error_buffer);
        !configured) {
      return fail_now(MakeError(configured.error()));
    }
    curl_easy_setopt(request->easy, CURLOPT_PRIVATE, request.get());
    Request* const started = request.get();
    requests.emplace(id, std::move(request));
    if (curl_multi_add_handle(multi, started->easy) != CURLM_OK) {
      Complete(id, MakeError(ErrorKind::kInternal, "libcurl refused a request to " + started->shown_url));
      return id;
    }
    ArmCheck();
    return id;
  }

  void Cancel(RequestId id) {
    const auto it = requests.find(id);
    if (it == requests.end()) return;
    it->second->transfer.cancelled = true;
    Finish(*it->second, CURLE_ABORTED_BY_CALLBACK);
  }
};

AsyncHttp::AsyncHttp(boost::asio::io_context& io, HttpOptions options, AsyncHttpLimits limits)
    : impl_(std::make_shared<Impl>(io, std::move(options), limits)) {
  impl_->Init();
}

AsyncHttp::~AsyncHttp() { impl_->Shutdown(); }

AsyncHttp::RequestId AsyncHttp::Start(AsyncRequest request, AsyncCompletion done) {
  return impl_->Start(std::move(request), std::move(done));
}

void AsyncHttp::Cancel(RequestId id) { impl_->Cancel(id); }

void AsyncHttp::CancelAll() {
  std::vector<RequestId> ids;
  for (const auto& [id, request] : impl_->requests) ids.push_back(id);
  for (const RequestId id : ids) impl_->Cancel(id);
}

std::size_t AsyncHttp::in_flight() const { return impl_->outstanding; }

std::uint64_t AsyncHttp::connections_opened() const { return impl_->connections_opened; }

}  // namespace ctagent::transport
