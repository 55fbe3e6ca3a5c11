// The tus 1.0 client on AsyncHttp: the same requests and the same reading of the answers as the
// blocking tus::Client (both use tus::Protocol, transport/tus.hpp), but every request runs on the
// event loop and completes there, with its result and its failure class, so many uploads are in
// flight on one thread. Call everything on the loop's thread.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "transport/http_async.hpp"
#include "transport/tus.hpp"

namespace ctagent::transport::tus {

// A completion: the result, and how the request failed (kNone with a result). Always called on
// the event loop, never from inside the call that started the request.
template <typename T>
using AsyncDone = std::function<void(Expected<T>, Failure)>;

struct AsyncUploadOptions {
  // Asked before each block of PATCH body bytes and at each progress check, on the loop: it must
  // answer at once (true: go on, false: end the request with kCancelled). Empty: always go on.
  std::function<bool(std::size_t)> before_send;
  // The pacer (AsyncRequest::pace): how long to hold each block of body bytes. Empty: none.
  std::function<std::chrono::nanoseconds(std::size_t)> pace;
  // After each PATCH (or offset query) moved the confirmed offset: the server's offset now.
  std::function<void(std::uint64_t)> on_progress;
  // After each PATCH, however it ended: the body bytes it handed to the connection (bytes a
  // resume may send again count here too).
  std::function<void(std::uint64_t)> on_body_bytes;
};

// An upload in progress (UploadFile): Cancel() ends its request in flight; the completion then
// gets kCancelled. Cancelling a finished upload does nothing.
class AsyncUpload {
 public:
  virtual ~AsyncUpload() = default;
  virtual void Cancel() = 0;
};

class AsyncClient {
 public:
  // `io`: the loop `http` runs on (completions of requests refused before sending are posted to
  // it). `http` must outlive every request started here. `endpoint`: the creation URL.
  AsyncClient(boost::asio::io_context& io, AsyncHttp& http, std::string endpoint);

  // The protocol state (capabilities, allowed origins) the next requests use. A request reads it
  // when it is built and when its answer arrives.
  Protocol& protocol() { return *protocol_; }
  const Protocol& protocol() const { return *protocol_; }

  // OPTIONS; on success the capabilities are kept for the requests that follow.
  void Discover(AsyncDone<ServerCapabilities> done);
  // POST without bytes (the upload's offset is 0). The uploader journals the URL before any
  // byte is sent, so it never uses creation-with-upload (see agent/core/uploader.cpp).
  void Create(std::uint64_t length, const Metadata& metadata, AsyncDone<Created> done);
  // HEAD: the server's offset (kUploadGone when it no longer knows the upload).
  void Query(const std::string& upload_url, AsyncDone<UploadInfo> done);
  // DELETE (termination extension).
  void Terminate(const std::string& upload_url, AsyncDone<void> done);
  // One PATCH of `body` (a file range, read as curl sends it) at `offset`: the new offset.
  // With a checksum algorithm known from discovery, the range is read first to compute
  // Upload-Checksum and sent from memory.
  void Patch(const std::string& upload_url, std::uint64_t offset, const FileBody& body,
             const AsyncUploadOptions& options, AsyncDone<std::uint64_t> done);
  // Sends bytes [offset, file.length) of `file` (a file range holding the whole upload) in PATCH
  // requests of at most `patch_bytes`, with the recoveries of Client::UploadFrom (PatchRecovery:
  // a 460 resends, a 409 or a connection lost mid-PATCH asks HEAD and continues from the server's
  // offset, each bounded). Completes with the final offset (== file.length).
  // The same from memory: `data` (kept alive until the completion) from `offset`.
  std::shared_ptr<AsyncUpload> UploadBytes(const std::string& upload_url,
                                           std::shared_ptr<const std::vector<std::uint8_t>> data, std::uint64_t offset,
                                           std::uint64_t patch_bytes, AsyncUploadOptions options,
                                           AsyncDone<std::uint64_t> done);
  std::shared_ptr<AsyncUpload> UploadFile(const std::string& upload_url, const FileBody& file, std::uint64_t offset,
                                          std::uint64_t patch_bytes, AsyncUploadOptions options,
                                          AsyncDone<std::uint64_t> done);

 private:
  struct Upload;
  std::shared_ptr<AsyncUpload> StartUpload(std::shared_ptr<Upload> upload);
  // Starts `request` and calls `done` with the response (or error) and the HTTP failure class.
  AsyncHttp::RequestId Send(AsyncRequest request, AsyncCompletion done);

  boost::asio::io_context& io_;
  AsyncHttp& http_;
  std::shared_ptr<Protocol> protocol_;  // shared with completions in flight
};

}  // namespace ctagent::transport::tus
