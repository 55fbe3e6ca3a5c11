// The operator's page's HTTP/1.1 server: Beast parses each request head (bounded), responses are
// written whole and the connection closed after each (Connection: close), except an event stream,
// which stays open with a bounded queue of its own.
#include "agent/ui/server.hpp"

#include <sys/random.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <algorithm>
#include <array>
#include <deque>
#include <optional>
#include <set>
#include <string_view>
#include <type_traits>

#include "base/log.hpp"
#include "base/private_file.hpp"
#include "base/tcp_listener.hpp"
#include "agent/ui/assets.hpp"
#include "agent/ui/password.hpp"

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

// The host name in a Host header, without the port and the brackets of an IPv6 literal.
std::string HostName(std::string_view host) {
  std::string name(host);
  if (!name.empty() && name.front() == '[') {
    const auto end = name.find(']');
    return end == std::string::npos ? "" : name.substr(1, end - 1);
  }
  return name.substr(0, name.find(':'));
}

// The password in an "Authorization: Basic base64(user:password)" header; nullopt when the
// header is not that. The user name is not checked: the page has one password.
std::optional<std::string> BasicPassword(std::string_view header) {
  constexpr std::string_view kBasic = "Basic ";
  if (header.size() <= kBasic.size() || header.size() > 4096 || header.substr(0, kBasic.size()) != kBasic) {
    return std::nullopt;
  }
  std::string encoded(header.substr(kBasic.size()));
  if (encoded.size() % 4 != 0) return std::nullopt;
  std::string decoded(encoded.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(decoded.data()),
                                reinterpret_cast<const unsigned char*>(encoded.data()), static_cast<int>(encoded.size()));
  if (n < 0) return std::nullopt;
  std::size_t length = static_cast<std::size_t>(n);
  for (std::size_t i = encoded.size(); i > 0 && encoded[i - 1] == '=' && length > 0; --i) --length;  // padding
  decoded.resize(length);
  const auto colon = decoded.find(':');
  if (colon == std::string::npos) return std::nullopt;
  return decoded.substr(colon + 1);
}

using CredentialDigest = std::array<unsigned char, SHA256_DIGEST_LENGTH>;
CredentialDigest DigestOf(std::string_view credential) {
  CredentialDigest d{};
  SHA256(reinterpret_cast<const unsigned char*>(credential.data()), credential.size(), d.data());
  return d;
}

constexpr std::string_view kHsts = "Strict-Transport-Security: max-age=31536000\r\n";
constexpr std::string_view kAskForPassword = "WWW-Authenticate: Basic realm=\"ctagent\", charset=\"UTF-8\"\r\n";

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

// What Server::Impl knows of a connection, plain or TLS.
class ConnectionBase {
 public:
  virtual ~ConnectionBase() = default;
  // Queues one piece of the event stream; false (and the client dropped) past the backlog bound.
  virtual bool Send(std::string text) = 0;
  virtual void Close() = 0;
};

class Server::Impl : public std::enable_shared_from_this<Server::Impl> {
 public:
  Impl(boost::asio::io_context& io, ServerSettings settings, StatusSource status, ScanRoutes scan_routes)
      : settings_(std::move(settings)),
        status_(std::move(status)),
        scan_routes_(std::move(scan_routes)),
        acceptor_(io),
        timer_(io) {}
  ~Impl() {
    if (verifier_) verifier_->join();
  }

  Status Listen();
  Status LoadTls(bool loopback);
  void Accept();
  void Close();
  // The status object as one line of JSON (invalid UTF-8 replaced, never thrown).
  std::string Snapshot() const {
    return status_().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  // A new event stream: it gets the status now, and the others too if it changed.
  void AddEventClient(const std::shared_ptr<ConnectionBase>& client, std::string head);
  void Tick();
  // On loopback: a loopback name. Elsewhere: the configured address or server_name.
  bool HostAllowed(std::string_view host) const {
    if (loopback_) return IsLoopbackHost(host);
    const std::string name = HostName(host);
    return !name.empty() && (name == settings_.address || (!settings_.server_name.empty() && name == settings_.server_name));
  }
  bool KnownCredential(const CredentialDigest& d) const {
    return std::any_of(verified_.begin(), verified_.end(),
                       [&](const CredentialDigest& v) { return CRYPTO_memcmp(v.data(), d.data(), d.size()) == 0; });
  }
  void RememberCredential(const CredentialDigest& d) {
    if (KnownCredential(d)) return;
    if (verified_.size() >= 8) verified_.pop_front();  // bounded: a few browsers at most
    verified_.push_back(d);
  }

  const ServerSettings settings_;
  const StatusSource status_;
  ConfirmAction confirm_;
  PatientsSource patients_;
  std::string token_;  // RandomToken(), made in Listen
  const ScanRoutes scan_routes_;
  tcp::acceptor acceptor_;
  boost::asio::steady_timer timer_;
  std::uint16_t port_ = 0;
  bool loopback_ = true;
  std::optional<boost::asio::ssl::context> tls_;  // set: every connection is TLS
  std::optional<PasswordHash> password_;          // set: every request needs it
  std::deque<CredentialDigest> verified_;         // digests of Authorization headers that passed
  // One thread for the PBKDF2 checks; each connection has at most one waiting, and connections
  // are bounded, so its queue is too.
  std::unique_ptr<boost::asio::thread_pool> verifier_;
  std::set<std::shared_ptr<ConnectionBase>> connections_;
  std::set<std::shared_ptr<ConnectionBase>> event_clients_;
  std::string last_event_;  // the status text last sent to the event streams
  std::chrono::steady_clock::time_point last_sent_{};
  bool ticking_ = false;
  bool closed_ = false;
  std::uint64_t dropped_ = 0;
};

// One connection over `Stream`: beast::tcp_stream (plain HTTP) or beast::ssl_stream of it (TLS);
// the few steps that differ are chosen at compile time.
template <class Stream>
class Connection : public ConnectionBase, public std::enable_shared_from_this<Connection<Stream>> {
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

 public:
  template <class... TlsContext>
  Connection(tcp::socket socket, std::weak_ptr<Server::Impl> server, const ServerSettings& settings,
             TlsContext&... tls)
      : stream_(beast::tcp_stream(std::move(socket)), tls...),
        delay_(stream_.get_executor()),
        buffer_(settings.max_request_bytes),
        server_(std::move(server)),
        max_request_bytes_(settings.max_request_bytes),
        max_backlog_bytes_(settings.max_event_backlog_bytes),
        timeout_(settings.request_timeout),
        wrong_password_delay_(settings.wrong_password_delay) {}

  void Start() {
    if constexpr (kTls) {
      Lowest().expires_after(timeout_);  // the handshake is bounded like the request head
      stream_.async_handshake(boost::asio::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec || self->closed_) return self->Close();  // not TLS, no client certificate, or too slow
        self->ReadRequest();
      });
    } else {
      ReadRequest();
    }
  }

  bool Send(std::string text) override {
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

  void Close() override {
    if (closed_) return;
    closed_ = true;
    auto self = this->shared_from_this();  // the sets below may hold the last reference
    delay_.cancel();
    beast::error_code ignored;
    Lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    Lowest().close();
    if (auto server = server_.lock()) {
      server->event_clients_.erase(self);
      server->connections_.erase(self);
    }
  }

 private:
  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }

  void ReadRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(max_request_bytes_));
    parser_->body_limit(0);  // GET has no body; nothing here takes one
    Lowest().expires_after(timeout_);
    http::async_read(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      self->OnRequest(ec);
    });
  }

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
    if (!server->HostAllowed(View(request[http::field::host]))) {
      return Answer(Plain(421, "Misdirected Request",
                          server->loopback_
                              ? "this page answers only at a loopback address such as 127.0.0.1; open it on the terminal"
                              : "this page answers only at its configured address or name (/ui/address, /ui/server_name)"));
    }
    if (!server->password_) return Route(*server);
    // Basic authentication: a credential seen before passes at once; a new one is checked on the
    // verifier's thread (PBKDF2 takes a while by design), a wrong one answered after a delay.
    const std::string_view header = View(request[http::field::authorization]);
    auto password = BasicPassword(header);
    if (!password) return Answer(Plain(401, "Unauthorized", "this page needs its password", kAskForPassword));
    const CredentialDigest digest = DigestOf(header);
    if (server->KnownCredential(digest)) return Route(*server);
    boost::asio::post(*server->verifier_, [self = this->shared_from_this(), hash = *server->password_,
                                           password = std::move(*password), digest] {
      const bool ok = VerifyPassword(hash, password);
      auto executor = self->stream_.get_executor();
      boost::asio::post(executor, [self, ok, digest] { self->OnVerified(ok, digest); });
    });
  }

  void OnVerified(bool ok, const CredentialDigest& digest) {
    if (closed_) return;
    auto server = server_.lock();
    if (!server) return Close();
    if (ok) {
      server->RememberCredential(digest);
      return Route(*server);
    }
    // No name or address in the log: only that someone tried.
    log::Warn("ui", "a wrong password was given for the operator's page");
    delay_.expires_after(wrong_password_delay_);
    delay_.async_wait([self = this->shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->closed_) return;
      self->Answer(Plain(401, "Unauthorized", "wrong password", kAskForPassword));
    });
  }

  void Route(Server::Impl& server_ref) {
    auto server = server_ref.shared_from_this();
    const auto& request = parser_->get();
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
      return server->scan_routes_(std::string(path), [self = this->shared_from_this()](Server::Reply reply) {
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
      auto answer = [self = this->shared_from_this()](const nlohmann::json& patients) {
        self->Answer(Response(200, "OK", "application/json",
                              patients.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"));
      };
      if (!server->patients_) return answer(nlohmann::json::object());
      return server->patients_(OnThisLoop<nlohmann::json>(std::move(answer)));
    }
    if (server->event_clients_.size() >= server->settings_.max_event_clients) {
      return Answer(Plain(503, "Service Unavailable", "too many live pages open; close one and reload",
                          "Retry-After: 5\r\n"));
    }
    Lowest().expires_never();  // an event stream lives as long as the page; each write is bounded
    std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n" +
                       CommonHeaders("no-store") + (kTls ? std::string(kHsts) : std::string()) + "\r\n" +
                       "retry: 2000\n\n";
    server->AddEventClient(this->shared_from_this(), std::move(head));
  }

  // POST /api/scans/<uid>/confirm: only from this page itself (its Origin and its token), then
  // the action. Refusals say why in one short line and never reach the action.
  void Confirm(Server::Impl& server, const http::request<http::empty_body>& request, const std::string& scan_uid) {
    if (request.method() != http::verb::post) {
      return Answer(Plain(405, "Method Not Allowed", "only POST is answered here", "Allow: POST\r\n"));
    }
    const std::string_view host = View(request[http::field::host]);
    if (View(request[http::field::origin]) != (kTls ? "https://" : "http://") + std::string(host)) {
      return Answer(Plain(403, "Forbidden", "refused: only the operator's page itself may confirm (Origin)"));
    }
    if (!SameSecret(View(request["X-CTAgent-Token"]), server.token_)) {
      return Answer(Plain(403, "Forbidden", "refused: this page's token is missing or stale; reload the page"));
    }
    if (!LooksLikeUid(scan_uid) || !server.confirm_) {
      return Answer(Plain(404, "Not Found", "no such scan here"));
    }
    server.confirm_(scan_uid, OnThisLoop<Expected<nlohmann::json>>([self = this->shared_from_this(), scan_uid](
                                              const Expected<nlohmann::json>& confirmed) {
      self->AnswerConfirmation(scan_uid, confirmed);
    }));
  }

  void AnswerConfirmation(const std::string& scan_uid, const Expected<nlohmann::json>& confirmed) {
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

  // `done` called from any thread (a daemon's worker) answers on this connection's executor.
  template <typename Value>
  std::function<void(Value)> OnThisLoop(std::function<void(const Value&)> done) {
    return [executor = stream_.get_executor(), done = std::move(done)](Value value) {
      boost::asio::post(executor, [done, value = std::move(value)] { done(value); });
    };
  }

  // A whole response, then the connection ends. Plain: the sending side first, and what the peer
  // still sends is read and dropped for a moment, so it reads our answer before the close
  // (closing with unread input would reset the connection and could lose the answer). TLS: a
  // close_notify, waiting a moment for the peer's.
  void Answer(std::string response) {
    if constexpr (kTls) response.insert(response.find("\r\n") + 2, kHsts);
    response_ = std::move(response);
    Lowest().expires_after(timeout_);
    boost::asio::async_write(stream_, boost::asio::buffer(response_),
                             [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                               if (ec || self->closed_) return self->Close();
                               self->Lowest().expires_after(std::chrono::seconds(1));
                               if constexpr (kTls) {
                                 self->stream_.async_shutdown([self](beast::error_code) { self->Close(); });
                               } else {
                                 beast::error_code ignored;
                                 self->Lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
                                 self->Drain();
                               }
                             });
  }

  void Drain() {
    stream_.async_read_some(boost::asio::buffer(drain_),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
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
    Lowest().expires_after(timeout_);
    boost::asio::async_write(stream_, boost::asio::buffer(queue_.front()),
                             [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
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

  Stream stream_;
  boost::asio::steady_timer delay_;  // a wrong password's answer waits on it
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  std::weak_ptr<Server::Impl> server_;
  const std::size_t max_request_bytes_;
  const std::size_t max_backlog_bytes_;
  const std::chrono::milliseconds timeout_;
  const std::chrono::milliseconds wrong_password_delay_;
  std::string response_;
  std::array<char, 512> drain_{};
  std::deque<std::string> queue_;  // the event stream's pieces not yet written
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closed_ = false;
};

using PlainConnection = Connection<beast::tcp_stream>;
using TlsConnection = Connection<beast::ssl_stream<beast::tcp_stream>>;

void Server::Impl::AddEventClient(const std::shared_ptr<ConnectionBase>& client, std::string head) {
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
  loopback_ = IsLoopback(address);
  if (auto st = LoadTls(loopback_); !st) return st;
  auto port = net::OpenListener(acceptor_, address, settings_.port, static_cast<int>(settings_.max_connections),
                                "the operator's page", "/ui/port");
  if (!port) return MakeError(port.error());
  port_ = *port;
  return Ok();
}

Status Server::Impl::LoadTls(bool loopback) {
  const bool tls = !settings_.tls_cert_file.empty();
  if (!loopback && (!tls || (settings_.password_file.empty() && settings_.tls_client_ca_file.empty()))) {
    return MakeError(ErrorKind::kInvalidInput,
                     "ui address \"" + settings_.address +
                         "\" (/ui/address) is not a loopback address; the operator's page listens there only with TLS "
                         "(/ui/tls/cert_file, /ui/tls/key_file) and a password (/ui/password_file) or a client CA "
                         "(/ui/tls/client_ca_file)");
  }
  if (!settings_.password_file.empty()) {
    if (!tls) {
      return MakeError(ErrorKind::kInvalidInput, "the page's password (/ui/password_file) needs TLS (/ui/tls/cert_file)");
    }
    auto hash = ReadPasswordFile(settings_.password_file);
    if (!hash) return MakeError(hash.error());
    password_ = std::move(*hash);
    verifier_ = std::make_unique<boost::asio::thread_pool>(1);
  }
  if (!tls) return Ok();
  if (auto st = CheckPrivateFile(settings_.tls_key_file, "the page's TLS key", "/ui/tls/key_file"); !st) return st;
  namespace ssl = boost::asio::ssl;
  tls_.emplace(ssl::context::tls_server);
  boost::system::error_code ec;
  tls_->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                        ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                    ec);
  SSL_CTX_set_min_proto_version(tls_->native_handle(), TLS1_2_VERSION);
  auto failed = [&](const std::filesystem::path& file, const char* key) {
    return MakeError(ErrorKind::kInvalidInput, "the operator's page cannot use " + file.string() + " (" + key +
                                                   "): " + ec.message() + " (expected PEM)");
  };
  if (tls_->use_certificate_chain_file(settings_.tls_cert_file.string(), ec); ec) {
    return failed(settings_.tls_cert_file, "/ui/tls/cert_file");
  }
  if (tls_->use_private_key_file(settings_.tls_key_file.string(), ssl::context::pem, ec); ec) {
    return failed(settings_.tls_key_file, "/ui/tls/key_file");
  }
  if (SSL_CTX_check_private_key(tls_->native_handle()) != 1) {
    return MakeError(ErrorKind::kInvalidInput, "the page's TLS key " + settings_.tls_key_file.string() +
                                                   " (/ui/tls/key_file) is not the key of " +
                                                   settings_.tls_cert_file.string() + " (/ui/tls/cert_file)");
  }
  if (!settings_.tls_client_ca_file.empty()) {
    if (tls_->load_verify_file(settings_.tls_client_ca_file.string(), ec); ec) {
      return failed(settings_.tls_client_ca_file, "/ui/tls/client_ca_file");
    }
    // Tell browsers which CAs to pick a certificate from.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(settings_.tls_client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(tls_->native_handle(), names);
    }
    static constexpr unsigned char kSessionContext[] = "ctagent-ui";
    SSL_CTX_set_session_id_context(tls_->native_handle(), kSessionContext, sizeof kSessionContext - 1);
    tls_->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return Ok();
}

void Server::Impl::Accept() {
  acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket socket) {
    if (self->closed_) return;
    if (!ec) {
      if (self->connections_.size() >= self->settings_.max_connections) {
        // Over TLS a plain answer would be noise: the connection is just closed.
        net::AnswerAndClose(socket, self->tls_ ? std::string() : Plain(503, "Service Unavailable",
                                                                       "too many connections; try again",
                                                                       "Retry-After: 5\r\n"));
      } else if (self->tls_) {
        auto connection = std::make_shared<TlsConnection>(std::move(socket), self, self->settings_, *self->tls_);
        self->connections_.insert(connection);
        connection->Start();
      } else {
        auto connection = std::make_shared<PlainConnection>(std::move(socket), self, self->settings_);
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
