// A small in-process tus 1.0 server over plain HTTP on loopback, for what the real @tus/server
// cannot produce (checksum extension, 460, 423, 401, a scripted 412): default tus behaviour
// (OPTIONS, POST with creation-with-upload, HEAD, PATCH with offset and checksum checks, DELETE)
// plus an `intercept` hook that answers chosen requests itself. One thread per connection;
// every wait is bounded by a poll timeout and the stop flag.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "transport/tus.hpp"

namespace ctagent::test {

struct FakeRequest {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string Header(const std::string& lower_name) const {
    const auto it = headers.find(lower_name);
    return it == headers.end() ? "" : it->second;
  }
};

struct FakeResponse {
  int status = 204;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

class FakeTusServer {
 public:
  FakeTusServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 16) != 0) {
      throw std::runtime_error("fake tus server: cannot listen on loopback");
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakeTusServer() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : connections_) t.join();
    ::close(listen_fd_);
  }
  FakeTusServer(const FakeTusServer&) = delete;
  FakeTusServer& operator=(const FakeTusServer&) = delete;

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_) + "/files/"; }

  // Set before the first request. Returning a response answers the request instead of the default.
  void SetIntercept(std::function<std::optional<FakeResponse>(const FakeRequest&)> intercept) {
    std::lock_guard lock(mutex_);
    intercept_ = std::move(intercept);
  }
  void SetExtensions(std::string extensions, std::string checksum_algorithms = "") {
    std::lock_guard lock(mutex_);
    extensions_ = std::move(extensions);
    checksum_algorithms_ = std::move(checksum_algorithms);
  }

  std::vector<FakeRequest> Requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  std::size_t Count(const std::string& method) {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& r : requests_) n += r.method == method ? 1 : 0;
    return n;
  }
  // The bytes stored for an upload URL (absolute or path), "" if unknown.
  std::string Data(const std::string& url) {
    std::lock_guard lock(mutex_);
    const auto it = uploads_.find(url.substr(url.rfind('/') + 1));
    return it == uploads_.end() ? "" : it->second.data;
  }
  // Creates an upload of `length` bytes as a POST would (without a request): for a test that
  // plays another server whose creation answers point here. Returns its path ("/files/uN").
  std::string CreateUpload(std::uint64_t length) {
    std::lock_guard lock(mutex_);
    const std::string name = "u" + std::to_string(++next_id_);
    uploads_[name] = Upload{length, {}};
    return "/files/" + name;
  }
  std::size_t UploadCount() {
    std::lock_guard lock(mutex_);
    return uploads_.size();
  }
  // TCP connections accepted so far.
  std::size_t ConnectionCount() const { return accepted_; }

 private:
  struct Upload {
    std::uint64_t length = 0;
    std::string data;
  };

  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      ++accepted_;
      connections_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  // Reads more bytes into `buffer`; false on close, error or stop.
  bool ReadMore(int fd, std::string& buffer) {
    for (int waited = 0; waited < 300 && !stop_; ++waited) {  // at most 30 s per read
      pollfd p{fd, POLLIN, 0};
      const int ready = ::poll(&p, 1, 100);
      if (ready < 0) return false;
      if (ready == 0) continue;
      char chunk[65536];
      const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) return false;
      buffer.append(chunk, static_cast<std::size_t>(n));
      return true;
    }
    return false;
  }

  void Serve(int fd) {
    std::string buffer;
    while (!stop_) {
      std::size_t header_end = std::string::npos;
      while ((header_end = buffer.find("\r\n\r\n")) == std::string::npos) {
        if (!ReadMore(fd, buffer)) {
          ::close(fd);
          return;
        }
      }
      FakeRequest request;
      const std::string head = buffer.substr(0, header_end);
      buffer.erase(0, header_end + 4);
      std::size_t line_end = head.find("\r\n");
      const std::string request_line = head.substr(0, line_end);
      request.method = request_line.substr(0, request_line.find(' '));
      request.target = request_line.substr(request.method.size() + 1, request_line.rfind(' ') - request.method.size() - 1);
      while (line_end != std::string::npos) {
        const std::size_t start = line_end + 2;
        line_end = head.find("\r\n", start);
        const std::string line = head.substr(start, line_end == std::string::npos ? std::string::npos : line_end - start);
        const auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string name = line.substr(0, colon);
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        request.headers[name] = value;
      }
      const std::string length_text = request.Header("content-length");
      const std::size_t length = length_text.empty() ? 0 : std::stoul(length_text);
      while (buffer.size() < length) {
        if (!ReadMore(fd, buffer)) {
          ::close(fd);
          return;
        }
      }
      request.body = buffer.substr(0, length);
      buffer.erase(0, length);
      const FakeResponse response = Handle(request);
      std::string out = "HTTP/1.1 " + std::to_string(response.status) + " Fake\r\n";
      for (const auto& [name, value] : response.headers) out += name + ": " + value + "\r\n";
      out += "Content-Length: " + std::to_string(request.method == "HEAD" ? 0 : response.body.size()) + "\r\n\r\n";
      if (request.method != "HEAD") out += response.body;
      std::size_t sent = 0;
      while (sent < out.size()) {
        const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) break;
        sent += static_cast<std::size_t>(n);
      }
    }
    ::close(fd);
  }

  FakeResponse Handle(const FakeRequest& request) {
    std::lock_guard lock(mutex_);
    requests_.push_back(request);
    if (intercept_) {
      if (auto answer = intercept_(request)) return *answer;
    }
    FakeResponse r;
    r.headers.emplace_back("Tus-Resumable", "1.0.0");
    const std::string id = request.target.substr(request.target.rfind('/') + 1);
    if (request.method == "OPTIONS") {
      r.headers.emplace_back("Tus-Version", "1.0.0");
      r.headers.emplace_back("Tus-Extension", extensions_);
      if (!checksum_algorithms_.empty()) r.headers.emplace_back("Tus-Checksum-Algorithm", checksum_algorithms_);
      return r;
    }
    if (request.Header("tus-resumable") != "1.0.0") {
      r.status = 412;
      r.headers.emplace_back("Tus-Version", "1.0.0");
      return r;
    }
    if (request.method == "POST") {
      const std::string name = "u" + std::to_string(++next_id_);
      Upload upload;
      upload.length = std::stoull(request.Header("upload-length"));
      if (request.Header("content-type") == "application/offset+octet-stream") upload.data = request.body;
      r.status = 201;
      r.headers.emplace_back("Location", "/files/" + name);
      r.headers.emplace_back("Upload-Offset", std::to_string(upload.data.size()));
      uploads_[name] = upload;
      return r;
    }
    const auto it = uploads_.find(id);
    if (it == uploads_.end()) {
      r.status = 404;
      return r;
    }
    if (request.method == "HEAD") {
      r.status = 200;
      r.headers.emplace_back("Upload-Offset", std::to_string(it->second.data.size()));
      r.headers.emplace_back("Upload-Length", std::to_string(it->second.length));
      r.headers.emplace_back("Cache-Control", "no-store");
      return r;
    }
    if (request.method == "DELETE") {
      uploads_.erase(it);
      return r;
    }
    if (request.method == "PATCH") {
      if (request.Header("upload-offset") != std::to_string(it->second.data.size())) {
        r.status = 409;
        return r;
      }
      const std::string checksum = request.Header("upload-checksum");
      if (!checksum.empty()) {
        const std::string algorithm = checksum.substr(0, checksum.find(' '));
        const auto body = std::span(reinterpret_cast<const std::uint8_t*>(request.body.data()), request.body.size());
        if (checksum != transport::tus::ChecksumHeader(algorithm, body)) {
          r.status = 460;
          return r;
        }
      }
      it->second.data += request.body;
      r.headers.emplace_back("Upload-Offset", std::to_string(it->second.data.size()));
      return r;
    }
    r.status = 405;
    return r;
  }

  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> accepted_{0};
  std::thread acceptor_;
  std::vector<std::thread> connections_;  // touched by the acceptor thread, joined after it
  std::mutex mutex_;
  std::function<std::optional<FakeResponse>(const FakeRequest&)> intercept_;
  std::string extensions_ = "creation,creation-with-upload,termination";
  std::string checksum_algorithms_;
  std::map<std::string, Upload> uploads_;
  std::vector<FakeRequest> requests_;
  int next_id_ = 0;
};

}  // namespace ctagent::test
