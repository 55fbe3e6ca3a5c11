// The metrics endpoint's HTTP/1.1 server: plain Boost.Asio TCP on the daemon's io_context. A
// request is read up to the blank line ending its head (bounded by max_request_bytes), answered,
// and the connection closed; bodies are never read (a GET has none, anything else is refused).
#include "agent/metrics/http_server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

#include <istream>
#include <set>

#include "base/tcp_listener.hpp"
#include "agent/metrics/metrics.hpp"

namespace ctagent::metrics {
namespace {

using boost::asio::ip::tcp;

std::string Response(int code, const char* reason, const std::string& content_type, const std::string& body,
                     const std::string& extra_headers = "") {
  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\n";
  out += "Content-Type: " + content_type + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += extra_headers;
  out += "Connection: close\r\n\r\n";
  out += body;
  return out;
}

std::string TextResponse(int code, const char* reason, const std::string& text, const std::string& extra = "") {
  return Response(code, reason, "text/plain; charset=utf-8", text + "\n", extra);
}

}  // namespace

class Connection;

class Server::Impl : public std::enable_shared_from_this<Server::Impl> {
 public:
  Impl(boost::asio::io_context& io, ServerSettings settings, Page page)
      : io_(io), settings_(std::move(settings)), page_(std::move(page)), acceptor_(io) {}

  Status Listen();
  void Accept();
  void Close();
  // The answer to one request head (without its final blank line).
  std::string Answer(const std::string& head) const;

  boost::asio::io_context& io_;
  const ServerSettings settings_;
  const Page page_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::set<std::shared_ptr<Connection>> connections_;
  bool closed_ = false;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, std::weak_ptr<Server::Impl> server, const ServerSettings& settings)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        buffer_(settings.max_request_bytes),
        server_(std::move(server)),
        timeout_(settings.request_timeout) {}

  void Start() {
    timer_.expires_after(timeout_);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->Close();
    });
    boost::asio::async_read_until(
        socket_, buffer_, "\r\n\r\n", [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
          self->OnHead(ec, n);
        });
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    timer_.cancel();
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    if (auto server = server_.lock()) server->connections_.erase(shared_from_this());
  }

 private:
  void OnHead(const boost::system::error_code& ec, std::size_t n) {
    if (closed_) return;
    auto server = server_.lock();
    if (!server) return Close();
    if (ec == boost::asio::error::not_found) {  // the head outgrew max_request_bytes
      return Write(TextResponse(431, "Request Header Fields Too Large", "request head too large"));
    }
    if (ec) return Close();  // the peer went away, or the connection was closed
    std::string head(boost::asio::buffers_begin(buffer_.data()),
                     boost::asio::buffers_begin(buffer_.data()) + static_cast<std::ptrdiff_t>(n - 4));
    Write(server->Answer(head));
  }

  void Write(std::string response) {
    response_ = std::move(response);
    boost::asio::async_write(socket_, boost::asio::buffer(response_),
                             [self = shared_from_this()](const boost::system::error_code&, std::size_t) {
                               self->Close();
                             });
  }

  tcp::socket socket_;
  boost::asio::steady_timer timer_;
  boost::asio::streambuf buffer_;
  std::weak_ptr<Server::Impl> server_;
  std::chrono::milliseconds timeout_;
  std::string response_;
  bool closed_ = false;
};

std::string Server::Impl::Answer(const std::string& head) const {
  // Request line: METHOD SP TARGET SP HTTP/1.x
  const auto line_end = head.find("\r\n");
  const std::string line = head.substr(0, line_end);
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || line.find(' ', sp2 + 1) != std::string::npos) {
    return TextResponse(400, "Bad Request", "malformed request line");
  }
  const std::string method = line.substr(0, sp1);
  const std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string version = line.substr(sp2 + 1);
  if (version.rfind("HTTP/1.", 0) != 0) return TextResponse(505, "HTTP Version Not Supported", "HTTP/1.x only");
  const std::string path = target.substr(0, target.find('?'));
  if (path != "/metrics") return TextResponse(404, "Not Found", "only /metrics is served here");
  if (method != "GET") return TextResponse(405, "Method Not Allowed", "only GET is answered", "Allow: GET\r\n");
  return Response(200, "OK", kContentType, page_());
}

Status Server::Impl::Listen() {
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(settings_.address, ec);
  if (ec) {
    return MakeError(ErrorKind::kInvalidInput,
                     "metrics address \"" + settings_.address + "\" is not an IPv4 or IPv6 address (/metrics/address)");
  }
  auto port = net::OpenListener(acceptor_, address, settings_.port, static_cast<int>(settings_.max_connections),
                                "the metrics endpoint", "/metrics/port");
  if (!port) return MakeError(port.error());
  port_ = *port;
  return Ok();
}

void Server::Impl::Accept() {
  acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket socket) {
    if (self->closed_) return;
    if (!ec) {
      if (self->connections_.size() >= self->settings_.max_connections) {
        net::AnswerAndClose(socket, TextResponse(503, "Service Unavailable", "too many connections; try again"));
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
  auto connections = connections_;  // Close() erases from the set
  for (auto& c : connections) c->Close();
  connections_.clear();
}

Expected<std::unique_ptr<Server>> Server::Open(boost::asio::io_context& io, const ServerSettings& settings, Page page) {
  auto impl = std::make_shared<Impl>(io, settings, std::move(page));
  if (auto st = impl->Listen(); !st) return MakeError(st.error());
  impl->Accept();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Close(); }
void Server::Close() { impl_->Close(); }
std::uint16_t Server::port() const { return impl_->port_; }
std::size_t Server::open_connections() const { return impl_->connections_.size(); }

}  // namespace ctagent::metrics
