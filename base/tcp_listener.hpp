// What the agent's small HTTP servers on the event loop (the metrics endpoint, the operator's
// page) share about their listening socket: opening it with a message a person can act on, and
// turning away a connection over the server's bound without ever blocking the loop.
// Header-only (Boost.Asio is header-only too): only modules that serve TCP include it.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <string>
#include <string_view>

#include "base/error.hpp"

namespace ctagent::net {

// Opens `acceptor` on address:port (reuse_address, the given backlog) and returns the port it
// listens on (the one asked for, or the kernel's choice for port 0). The error names the server
// (`what`, e.g. "the metrics endpoint") and the configuration key that moves it (`port_key`).
inline Expected<std::uint16_t> OpenListener(boost::asio::ip::tcp::acceptor& acceptor,
                                            const boost::asio::ip::address& address, std::uint16_t port, int backlog,
                                            const std::string& what, const std::string& port_key) {
  const boost::asio::ip::tcp::endpoint endpoint(address, port);
  boost::system::error_code ec;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(boost::asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(backlog, ec);
  if (ec) {
    return MakeError(ErrorKind::kIo, what + " cannot listen on " + address.to_string() + " port " +
                                         std::to_string(port) + ": " + ec.message() +
                                         " (is another program on that port? change " + port_key + ")");
  }
  const auto bound = acceptor.local_endpoint(ec);
  return ec ? port : bound.port();
}

// For a connection one over the server's bound: `answer` (a complete short HTTP response) is
// written without blocking (a new socket's send buffer is empty, so it fits or is dropped),
// then the socket is closed.
inline void AnswerAndClose(boost::asio::ip::tcp::socket& socket, std::string_view answer) {
  boost::system::error_code ignored;
  socket.non_blocking(true, ignored);
  socket.write_some(boost::asio::buffer(answer.data(), answer.size()), ignored);
  socket.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

}  // namespace ctagent::net
