// The operator's page's HTTP/1.1 server: Beast parses each request head (bounded), responses are
// written whole and the connection closed after each (Connection: close), except an event stream,
// which stays open with a bounded queue of its own.
#include "agent/ui/server.hpp"

#include <sys/random.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include <algorithm>
#include <array>
#include <deque>
#include <optional>
#include <set>
#include <string_view>

#include "agent/common/log.hpp"
#include "agent/common/tcp_listener.hpp"
#include "agent/ui/assets.hpp"

namespace ctagent::ui {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

// Nothing but this server's own files: no inline script or style, no other origin, no framing.
constexpr std::string_view kContentSecurityPolicy =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// The headers every response carries, the event stream's too.
std::string CommonHeaders(std::string_view cache_control) {
  std::string h = "Content-Security-Policy: " + std::string(kContentSecurityPolicy) + "\r\n";
  h += "X-Content-Type-Options: nosniff\r\n";
  h += "X-Frame-Options: DENY\r\n";
  h += "Referrer-Policy: no-referrer\r\n";
  h += "Cache-Control: " + std::string(cache_control) + "\r\n";
  h += "Connection: close\r\n";
  return h;
}

std::string Response(int code, std::string_view reason, std::string_view content_type, std::string_view body,
                     std::string_view cache_control = "no-store", std::string_view extra_headers = "") {
  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + std::string(reason) + "\r\n";
  out += "Content-Type: " + std::string(content_type) + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += CommonHeaders(cache_control);
  out += extra_headers;
  out += "\r\n";
  out += body;
  return out;
}

std::string Plain(int code, std::string_view reason, std::string_view text, std::string_view extra_headers = "") {
  return Response(code, reason, "text/plain; charset=utf-8", std::string(text) + "\n", "no-store", extra_headers);
}

bool IsLoopback(const boost::asio::ip::address& a) {
  if (a.is_loopback()) return true;
  return a.is_v6() && a.to_v6().is_v4_mapped() &&
         boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6()).is_loopback();
}

// Host: 127.0.0.1:8471, [::1]:8471, localhost:8471. A name that is not loopback is a page
// elsewhere reaching this server through DNS rebinding, or a proxy: neither is answered.
bool IsLoopbackHost(std::string_view host) {
  std::string name(host);
  if (!name.empty() && name.front() == '[') {
    const auto end = name.find(']');
    if (end == std::string::npos) return false;
    name = name.substr(1, end - 1);
  } else if (const auto colon = name.find(':'); colon != std::string::npos) {
    name = name.substr(0, colon);
  }
  if (name == "localhost") return true;
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(name, ec);
  return !ec && IsLoopback(address);
}

// Beast's string_view is Boost's in this Boost version.
std::string_view View(beast::string_view v) { return {v.data(), v.size()}; }

// The scan UID in "/api/scans/<uid>/confirm", or nullopt for another path. The UID may be
// malformed here; the route says 404 for it after the request passed its checks.
std::optional<std::string> ConfirmTarget(std::string_view path) {
  constexpr std::string_view kPrefix = "/api/scans/";
  constexpr std::string_view kSuffix = "/confirm";
  if (path.size() < kPrefix.size() + kSuffix.size() || path.substr(0, kPrefix.size()) != kPrefix ||
      path.substr(path.size() - kSuffix.size()) != kSuffix) {
    return std::nullopt;
  }
  return std::string(path.substr(kPrefix.size(), path.size() - kPrefix.size() - kSuffix.size()));
}

// A DICOM UID as the agent mints them (digits and dots, at most 64 characters).
bool LooksLikeUid(std::string_view uid) {
  if (uid.empty() || uid.size() > 64) return false;
  return std::all_of(uid.begin(), uid.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
}

// Compares in time independent of where they differ.
bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// 32 random bytes from the kernel as 64 hex digits; empty if the kernel would not give them.
std::string RandomToken() {
  std::array<unsigned char, 32> bytes{};
  std::size_t got = 0;
  for (int i = 0; i < 16 && got < bytes.size(); ++i) {  // bounded; a short read is rare
    const ssize_t n = ::getrandom(bytes.data() + got, bytes.size() - got, 0);
    if (n > 0) got += static_cast<std::size_t>(n);
  }
  if (got < bytes.size()) return "";
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char b : bytes) {
    token += kHex[b >> 4];
    token += kHex[b & 0xf];
  }
  return token;
}

const Asset* FindAsset(std::string_view path) {
  if (path == "/") path = "/index.html";
  for (const Asset& asset : EmbeddedAssets()) {
    if (asset.path == path) return &asset;
  }
  return nullptr;
}

}  // namespace

class Connection;

class Server::Impl : public std::enable_shared_from_this<Server::Impl> {
 public:
  Impl(boost::asio::io_context& io, ServerSettings settings, StatusSource status, ScanRoutes scan_routes)
      : settings_(std::move(settings)),
        status_(std::move(status)),
        scan_routes_(std::move(scan_routes)),
        acceptor_(io),
        timer_(io) {}

  Status Listen();
  void Accept();
  void Close();
  // The status object as one line of JSON (invalid UTF-8 replaced, never thrown).
  std::string Snapshot() const {
    return status_().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  // A new event stream: it gets the status now, and the others too if it changed.
  void AddEventClient(const std::shared_ptr<Connection>& client, std::string head);
  void Tick();

  const ServerSettings settings_;
  const StatusSource status_;
  ConfirmAction confirm_;
  PatientsSource patients_;
  std::string token_;  // RandomToken(), made in Listen
  const ScanRoutes scan_routes_;
  tcp::acceptor acceptor_;
  boost::asio::steady_timer timer_;
  std::uint16_t port_ = 0;
  std::set<std::shared_ptr<Connection>> connections_;
  std::set<std::shared_ptr<Connection>> event_clients_;
  std::string last_event_;  // the status text last sent to the event streams
  std::chrono::steady_clock::time_point last_sent_{};
  bool ticking_ = false;
  bool closed_ = false;
  std::uint64_t dropped_ = 0;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, std::weak_ptr<Server::Impl> server, const ServerSettings& settings)
      : stream_(std::move(socket)),
        buffer_(settings.max_request_bytes),
        server_(std::move(server)),
        max_request_bytes_(settings.max_request_bytes),
        max_backlog_bytes_(settings.max_event_backlog_bytes),
        timeout_(settings.request_timeout) {}

  void Start() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(max_request_bytes_));
    parser_->body_limit(0);  // GET has no body; nothing here takes one
    stream_.expires_after(timeout_);
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->OnRequest(ec);
    });
  }

  // Queues one piece of the event stream; false (and the client dropped) when it would pass the
  // backlog bound.
  bool Send(std::string text) {
    if (closed_) return false;
    if (queued_bytes_ + text.size() > max_backlog_bytes_) {
      Drop("it reads more slowly than the page changes");
      return false;
    }
    queued_bytes_ += text.size();
    queue_.push_back(std::move(text));
    if (!writing_) WriteNext();
    return true;
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    auto self = shared_from_this();  // the sets below may hold the last reference
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    if (auto server = server_.lock()) {
      server->event_clients_.erase(self);
      server->connections_.erase(self);
    }
  }

 private:
  void OnRequest(beast::error_code ec) {
    if (closed_) return;
    auto server = server_.lock();
    if (!server) return Close();
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      return Answer(Plain(431, "Request Header Fields Too Large", "request head too large"));
    }
    if (ec == http::error::body_limit || ec == http::error::unexpected_body) {
      return Answer(Plain(413, "Content Too Large", "this server takes no request body"));
    }
    if (ec && ec.category() == http::make_error_code(http::error::bad_target).category()) {
      return Answer(Plain(400, "Bad Request", "malformed request"));
    }
    if (ec) return Close();  // the peer went away, the head did not come in time, or the server closed
    const auto& request = parser_->get();
    if (!IsLoopbackHost(View(request[http::field::host]))) {
      return Answer(Plain(421, "Misdirected Request",
                          "this page answers only at a loopback address such as 127.0.0.1; open it on the terminal"));
    }
    const std::string_view target = View(request.target());
    const std::string_view path = target.substr(0, target.find('?'));
    if (auto scan_uid = ConfirmTarget(path)) return Confirm(*server, request, *scan_uid);
    const Asset* asset = FindAsset(path);
    const bool scan_route = server->scan_routes_ && path.starts_with("/api/scans/");
    if (asset == nullptr && path != "/api/status" && path != "/api/events" && path != "/api/token" &&
        path != "/api/patients" && !scan_route) {
      return Answer(Plain(404, "Not Found", "no such page here; the operator's page is at /"));
    }
    if (request.method() != http::verb::get) {
      return Answer(Plain(405, "Method Not Allowed", "only GET is answered", "Allow: GET\r\n"));
    }
    // Assets change only with the binary; "no-cache" has the browser ask again after an update.
    if (asset != nullptr) return Answer(Response(200, "OK", asset->content_type, asset->body, "no-cache"));
    if (scan_route) {
      return server->scan_routes_(std::string(path), [self = shared_from_this()](Server::Reply reply) {
        const bool json = reply.content_type == "application/json";
        if (reply.code == 200) return self->Answer(Response(200, "OK", reply.content_type, reply.body));
        const std::string_view reason = reply.code == 404   ? "Not Found"
                                        : reply.code == 503 ? "Service Unavailable"
                                                            : "Internal Server Error";
        self->Answer(json ? Response(reply.code, reason, reply.content_type, reply.body)
                          : Plain(reply.code, reason, reply.body));
      });
    }
    if (path == "/api/status") return Answer(Response(200, "OK", "application/json", server->Snapshot() + "\n"));
    if (path == "/api/token") {
      return Answer(Response(200, "OK", "application/json", nlohmann::json{{"token", server->token_}}.dump() + "\n"));
    }
    if (path == "/api/patients") {
      if (!SameSecret(View(request["X-CTAgent-Token"]), server->token_)) {
        return Answer(Plain(403, "Forbidden", "refused: this page's token is missing or stale; reload the page"));
      }
      const nlohmann::json patients = server->patients_ ? server->patients_() : nlohmann::json::object();
      return Answer(Response(200, "OK", "application/json",
                             patients.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"));
    }
    if (server->event_clients_.size() >= server->settings_.max_event_clients) {
      return Answer(Plain(503, "Service Unavailable", "too many live pages open; close one and reload",
                          "Retry-After: 5\r\n"));
    }
    stream_.expires_never();  // an event stream lives as long as the page; each write is bounded
    std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n" +
                       CommonHeaders("no-store") + "\r\n" + "retry: 2000\n\n";
    server->AddEventClient(shared_from_this(), std::move(head));
  }

  // POST /api/scans/<uid>/confirm: only from this page itself (its Origin and its token), then
  // the action. Refusals say why in one short line and never reach the action.
  void Confirm(Server::Impl& server, const http::request<http::empty_body>& request, const std::string& scan_uid) {
    if (request.method() != http::verb::post) {
      return Answer(Plain(405, "Method Not Allowed", "only POST is answered here", "Allow: POST\r\n"));
    }
    const std::string_view host = View(request[http::field::host]);
    if (View(request[http::field::origin]) != "http://" + std::string(host)) {
      return Answer(Plain(403, "Forbidden", "refused: only the operator's page itself may confirm (Origin)"));
    }
    if (!SameSecret(View(request["X-CTAgent-Token"]), server.token_)) {
      return Answer(Plain(403, "Forbidden", "refused: this page's token is missing or stale; reload the page"));
    }
    if (!LooksLikeUid(scan_uid) || !server.confirm_) {
      return Answer(Plain(404, "Not Found", "no such scan here"));
    }
    auto confirmed = server.confirm_(scan_uid);
    if (!confirmed) {
      const ErrorKind kind = confirmed.error().kind();
      if (kind == ErrorKind::kNotFound) return Answer(Plain(404, "Not Found", "no such scan here"));
      if (kind == ErrorKind::kInvalidInput) return Answer(Plain(409, "Conflict", confirmed.error().message()));
      log::Error("ui", "a confirmation from the operator's page was not recorded: " + confirmed.error().message());
      return Answer(Plain(500, "Internal Server Error", "not recorded: " + confirmed.error().message()));
    }
    log::Info("ui", "scan " + scan_uid + "'s high-risk finding confirmed on the operator's page by " +
                        confirmed->value("high_risk_confirmed_by", std::string()));
    return Answer(Response(200, "OK", "application/json", confirmed->dump() + "\n"));
  }

  // A whole response, then the connection ends: the sending side first, and what the peer
  // still sends is read and dropped for a moment, so it reads our answer before the close
  // (closing with unread input would reset the connection and could lose the answer).
  void Answer(std::string response) {
    response_ = std::move(response);
    stream_.expires_after(timeout_);
    boost::asio::async_write(stream_, boost::asio::buffer(response_),
                             [self = shared_from_this()](beast::error_code ec, std::size_t) {
                               if (ec || self->closed_) return self->Close();
                               beast::error_code ignored;
                               self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
                               self->stream_.expires_after(std::chrono::seconds(1));
                               self->Drain();
                             });
  }

  void Drain() {
    stream_.async_read_some(boost::asio::buffer(drain_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec || self->closed_) return self->Close();  // end of input, or a second passed
      self->Drain();
    });
  }

  void WriteNext() {
    if (queue_.empty()) {
      writing_ = false;
      return;
    }
    writing_ = true;
    stream_.expires_after(timeout_);
    boost::asio::async_write(stream_, boost::asio::buffer(queue_.front()),
                             [self = shared_from_this()](beast::error_code ec, std::size_t) {
                               if (self->closed_) return;
                               if (ec == beast::error::timeout) return self->Drop("its writes stalled");
                               if (ec) return self->Close();  // the page was closed
                               self->queued_bytes_ -= self->queue_.front().size();
                               self->queue_.pop_front();
                               self->WriteNext();
                             });
  }

  void Drop(const std::string& why) {
    if (auto server = server_.lock()) ++server->dropped_;
    // No address or content: only that a page was too slow (it reconnects by itself).
    log::Warn("ui", "dropped a live page's event stream: " + why + "; the page reconnects by itself");
    Close();
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  std::weak_ptr<Server::Impl> server_;
  const std::size_t max_request_bytes_;
  const std::size_t max_backlog_bytes_;
  const std::chrono::milliseconds timeout_;
  std::string response_;
  std::array<char, 512> drain_{};
  std::deque<std::string> queue_;  // the event stream's pieces not yet written
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closed_ = false;
};

void Server::Impl::AddEventClient(const std::shared_ptr<Connection>& client, std::string head) {
  const std::string text = Snapshot();
  const auto now = std::chrono::steady_clock::now();
  if (text != last_event_) {
    last_event_ = text;
    last_sent_ = now;
    const std::string event = "data: " + text + "\n\n";
    auto clients = event_clients_;  // a dropped client leaves the set
    for (const auto& c : clients) c->Send(event);
  }
  event_clients_.insert(client);
  client->Send(std::move(head) + "data: " + text + "\n\n");
  if (!ticking_) {
    ticking_ = true;
    timer_.expires_after(settings_.event_interval);
    timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      if (auto self = weak.lock(); self && !ec) self->Tick();
    });
  }
}

void Server::Impl::Tick() {
  if (closed_ || event_clients_.empty()) {
    ticking_ = false;
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  std::string message;
  if (std::string text = Snapshot(); text != last_event_) {
    message = "data: " + text + "\n\n";
    last_event_ = std::move(text);
  } else if (now - last_sent_ >= settings_.event_keepalive) {
    message = ": keep-alive\n\n";  // a comment: it tells a proxy and the page the stream lives
  }
  if (!message.empty()) {
    last_sent_ = now;
    auto clients = event_clients_;  // a dropped client leaves the set
    for (const auto& c : clients) c->Send(message);
  }
  timer_.expires_after(settings_.event_interval);
  timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (auto self = weak.lock(); self && !ec) self->Tick();
  });
}

Status Server::Impl::Listen() {
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(settings_.address, ec);
  if (ec) {
    return MakeError(ErrorKind::kInvalidInput,
                     "ui address \"" + settings_.address + "\" is not an IPv4 or IPv6 address (/ui/address)");
  }
  token_ = RandomToken();
  if (token_.empty()) {
    return MakeError(ErrorKind::kIo, "the operator's page could not get random bytes from the kernel for its token");
  }
  if (!IsLoopback(address)) {
    return MakeError(ErrorKind::kInvalidInput, "ui address \"" + settings_.address +
                                                   "\" is not a loopback address; the operator's page has no TLS or "
                                                   "password yet, so it listens on 127.0.0.1 or ::1 only (/ui/address)");
  }
  auto port = net::OpenListener(acceptor_, address, settings_.port, static_cast<int>(settings_.max_connections),
                                "the operator's page", "/ui/port");
  if (!port) return MakeError(port.error());
  port_ = *port;
  return Ok();
}

void Server::Impl::Accept() {
  acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket socket) {
    if (self->closed_) return;
    if (!ec) {
      if (self->connections_.size() >= self->settings_.max_connections) {
        net::AnswerAndClose(socket,
                            Plain(503, "Service Unavailable", "too many connections; try again", "Retry-After: 5\r\n"));
      } else {
        auto connection = std::make_shared<Connection>(std::move(socket), self, self->settings_);
        self->connections_.insert(connection);
        connection->Start();
      }
    }
    // Accept errors (a peer that left before accept, EMFILE) end one attempt, not the server.
    if (ec != boost::asio::error::operation_aborted) self->Accept();
  });
}

void Server::Impl::Close() {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  timer_.cancel();
  auto connections = connections_;  // Close() erases from the sets
  for (auto& c : connections) c->Close();
  connections_.clear();
  event_clients_.clear();
}

Expected<std::unique_ptr<Server>> Server::Open(boost::asio::io_context& io, const ServerSettings& settings,
                                               StatusSource status, ScanRoutes scan_routes) {
  auto impl = std::make_shared<Impl>(io, settings, std::move(status), std::move(scan_routes));
  if (auto st = impl->Listen(); !st) return MakeError(st.error());
  impl->Accept();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Close(); }
void Server::Close() { impl_->Close(); }
std::uint16_t Server::port() const { return impl_->port_; }
std::size_t Server::open_connections() const { return impl_->connections_.size(); }
std::size_t Server::event_clients() const { return impl_->event_clients_.size(); }
std::uint64_t Server::dropped_event_clients() const { return impl_->dropped_; }
void Server::OnConfirm(ConfirmAction confirm) { impl_->confirm_ = std::move(confirm); }
void Server::OnPatients(PatientsSource patients) { impl_->patients_ = std::move(patients); }
const std::string& Server::token() const { return impl_->token_; }

}  // namespace ctagent::ui
