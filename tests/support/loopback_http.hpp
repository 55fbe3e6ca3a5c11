// For tests of the agent's small HTTP servers on the event loop (the metrics endpoint, the
// operator's page): the server on its own io_context run by one thread, as the daemon's loop is,
// and a blocking loopback client whose every call is bounded by a 5 s socket timeout.
// Header-only.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "base/error.hpp"

namespace ctagent::test {

// The server `open` makes on a new io_context, then that context run by one thread until the
// destructor, which drops the server on the loop and joins.
template <class Server>
class ServerOnLoop {
 public:
  using Open = std::function<Expected<std::unique_ptr<Server>>(boost::asio::io_context&)>;
  explicit ServerOnLoop(const Open& open) {
    auto server = open(io_);
    INFO((server ? "" : server.error().message()));
    REQUIRE(server.has_value());
    server_ = std::move(*server);
    port_ = server_->port();
    thread_ = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io_);
      io_.run();
    });
  }
  ~ServerOnLoop() {
    boost::asio::post(io_, [this] {
      server_.reset();
      io_.stop();
    });
    thread_.join();
  }
  ServerOnLoop(const ServerOnLoop&) = delete;
  ServerOnLoop& operator=(const ServerOnLoop&) = delete;

  std::uint16_t port() const { return port_; }
  // A question to the server, asked on its loop (its counters are the loop's).
  template <class F>
  auto OnLoop(F f) {
    std::promise<decltype(f(*server_))> answer;
    boost::asio::post(io_, [&] { answer.set_value(f(*server_)); });
    return answer.get_future().get();
  }

 private:
  boost::asio::io_context io_;
  std::unique_ptr<Server> server_;
  std::uint16_t port_ = 0;
  std::thread thread_;
};

// A blocking client of 127.0.0.1:port; `receive_buffer` > 0 shrinks its socket's receive buffer
// (a slow reader).
class LoopbackClient {
 public:
  explicit LoopbackClient(std::uint16_t port, int receive_buffer = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (receive_buffer > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~LoopbackClient() { ::close(fd_); }
  LoopbackClient(const LoopbackClient&) = delete;
  LoopbackClient& operator=(const LoopbackClient&) = delete;

  void Send(const std::string& data) {
    REQUIRE(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size()));
  }
  // Everything until the server closes (or 5 s without a byte).
  std::string ReadAll() {
    std::string out;
    for (int i = 0; i < 10000; ++i) {  // bounded: 40 MB at most
      if (!ReadSome(out)) break;
    }
    return out;
  }
  // Reads until `text` is in `out` past `from`; false when the server closed or 5 s passed.
  bool ReadUntil(std::string& out, const std::string& text, std::size_t from = 0) {
    for (int i = 0; i < 10000 && out.find(text, from) == std::string::npos; ++i) {
      if (!ReadSome(out)) return false;
    }
    return out.find(text, from) != std::string::npos;
  }

 private:
  bool ReadSome(std::string& out) {
    char buffer[4096];
    const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n <= 0) return false;
    out.append(buffer, static_cast<std::size_t>(n));
    return true;
  }
  int fd_ = -1;
};

// The body of a whole HTTP response ("" without one).
inline std::string BodyOf(const std::string& response) {
  const auto at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

}  // namespace ctagent::test
