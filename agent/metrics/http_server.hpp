// The metrics endpoint: a small HTTP/1.1 server on the daemon's Boost.Asio event loop that answers
// GET /metrics with the Prometheus text page (docs/metrics.md) and nothing else (404 for any other
// path, 405 for any other method on it). It has no authentication, which is why the daemon binds
// it to loopback unless the configuration explicitly allows another address.
// Bounded: at most max_connections at once (one more is answered 503 and closed), a request head
// of at most max_request_bytes (431 beyond it), one request per connection (Connection: close),
// and each connection closed after request_timeout whatever it does.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/error.hpp"

namespace ctagent::metrics {

struct ServerSettings {
  std::string address = "127.0.0.1";  // an IPv4 or IPv6 literal
  std::uint16_t port = 0;             // 0: a free port chosen by the system (Server::port() says which)
  std::size_t max_connections = 8;
  std::size_t max_request_bytes = 8192;  // request line and headers
  std::chrono::milliseconds request_timeout{10000};
};

class Server {
 public:
  // Builds the page; called on the io_context's thread, once per GET /metrics.
  using Page = std::function<std::string()>;

  // Listens at once. Errors (kInvalidInput: not an IP address; kIo: bind refused, e.g. the port
  // is in use) name the address and port.
  static Expected<std::unique_ptr<Server>> Open(boost::asio::io_context& io, const ServerSettings& settings, Page page);
  ~Server();  // closes (on the io_context's thread, or with the loop stopped)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Stops accepting and ends every connection.
  void Close();
  std::uint16_t port() const;
  std::size_t open_connections() const;

  class Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace ctagent::metrics
