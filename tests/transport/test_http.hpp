// What the transport tests share besides their PKI (shared_pki.hpp): the HTTP options of a client
// that trusts the test CA, and a bounded run of an event loop until a condition holds.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <thread>

#include "transport/http.hpp"

namespace ctagent::test {

// A client of the test servers: TLS verified against `ca_file`, timeouts short enough to end a
// test that hangs (connect 5 s, stall 10 s, request 60 s).
inline transport::HttpOptions TestHttpOptions(const std::filesystem::path& ca_file) {
  transport::HttpOptions options;
  options.tls.ca_file = ca_file;
  options.connect_timeout_s = 5;
  options.stall_timeout_s = 10;
  options.request_timeout_s = 60;
  return options;
}

// Runs the loop until `done` or `limit` (every test's loop is bounded in time); done()'s last
// answer.
inline bool RunUntil(boost::asio::io_context& io, const std::function<bool()>& done,
                     std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < end) {
    io.restart();
    if (io.run_for(std::chrono::milliseconds(50)) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

}  // namespace ctagent::test
