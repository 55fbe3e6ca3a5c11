// The tus client on AsyncHttp: requests built and answers read by tus::Protocol (shared with the
// blocking Client), sent on the event loop.
#include "transport/tus_async.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "base/url.hpp"

namespace ctagent::transport::tus {
namespace {

// Small answers only: a tus server answers with headers (and at most a short body).
constexpr std::uint64_t kMaxAnswerBytes = 1 << 20;

// Calls `done` on the loop with an error found before any request was sent.
template <typename T>
void PostFailure(boost::asio::io_context& io, AsyncDone<T> done, const Error& error, Failure failure) {
  boost::asio::post(io, [done = std::move(done), error, failure = std::move(failure)] {
    done(MakeError(failure.failure == FailureClass::kNone ? error : error.WithFailure(failure.failure)), failure);
  });
}

// `length` bytes of `path` from `offset` into memory (for a checksum over a PATCH's body).
Expected<std::vector<std::uint8_t>> ReadRange(const FileBody& body) {
  const int fd = ::open(body.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return MakeError(ErrorKind::kIo, "cannot open " + body.path.string() + " to send it: " + std::strerror(errno));
  }
  std::vector<std::uint8_t> bytes(body.length);
  std::uint64_t done = 0;
  // Each round reads at least one byte or ends.
  while (done < body.length) {
    const ssize_t n = ::pread(fd, bytes.data() + done, body.length - done, static_cast<off_t>(body.offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "the file is shorter than the upload";
      ::close(fd);
      return MakeError(ErrorKind::kIo, "cannot read " + std::to_string(body.length) + " bytes at offset " +
                                           std::to_string(body.offset) + " of " + body.path.string() + ": " + why);
    }
    done += static_cast<std::uint64_t>(n);
  }
  ::close(fd);
  return bytes;
}

}  // namespace

// What a request needs once its client may be gone: the loop, the engine, the protocol state.
// Not in the anonymous namespace: AsyncClient::Upload, a class with external linkage, holds one
// (GCC's -Wsubobject-linkage, an error in a unity build where this file is an included one).
namespace async_detail {
struct Context {
  boost::asio::io_context& io;
  AsyncHttp& http;
  std::shared_ptr<Protocol> protocol;
};
}  // namespace async_detail
using async_detail::Context;

namespace {

// A PATCH body: a file range, or bytes in memory that `owner` keeps alive.
struct PatchBody {
  std::optional<FileBody> file;
  std::span<const std::uint8_t> bytes;
  std::shared_ptr<const void> owner;
  std::uint64_t length() const { return file ? file->length : bytes.size(); }
};

// One PATCH; returns the request's id (0 when it was refused before sending).
AsyncHttp::RequestId SendPatch(const Context& ctx, const std::string& upload_url, std::uint64_t offset,
                               PatchBody body, const AsyncUploadOptions& options, AsyncDone<std::uint64_t> done) {
  Failure refusal;
  if (body.file && ctx.protocol->PatchNeedsBytes()) {
    auto read = ReadRange(*body.file);
    if (!read) {
      PostFailure(ctx.io, std::move(done), read.error(), {FailureClass::kLocal, {}});
      return 0;
    }
    auto bytes = std::make_shared<const std::vector<std::uint8_t>>(std::move(*read));
    body = PatchBody{std::nullopt, *bytes, bytes};
  }
  const std::uint64_t size = body.length();
  auto request = ctx.protocol->PatchRequest(upload_url, offset, body.bytes, &refusal);
  if (!request) {
    PostFailure(ctx.io, std::move(done), request.error(), refusal);
    return 0;
  }
  AsyncRequest async;
  async.request = std::move(*request);
  if (body.file) {
    async.file_body = *body.file;
  } else {
    async.request.body = body.bytes;
    async.keep_alive = body.owner;
  }
  async.request.before_send = options.before_send;
  async.pace = options.pace;
  async.max_response_bytes = kMaxAnswerBytes;
  auto sent = std::make_shared<std::uint64_t>(0);
  async.request.on_upload_progress = [sent](std::uint64_t n) { *sent = n; };
  return ctx.http.Start(
      std::move(async), [protocol = ctx.protocol, upload_url, offset, size, sent,
                         on_body_bytes = options.on_body_bytes,
                         done = std::move(done)](Expected<HttpResponse> response) {
        if (on_body_bytes) on_body_bytes(*sent);
        Failure failure;
        std::optional<std::int64_t> expires;
        auto next = protocol->ReadPatch(response, upload_url, offset, size, &failure, &expires);
        done(std::move(next), std::move(failure));
      });
}

AsyncHttp::RequestId SendQuery(const Context& ctx, const std::string& upload_url, AsyncDone<UploadInfo> done) {
  Failure refusal;
  auto request = ctx.protocol->QueryRequest(upload_url, &refusal);
  if (!request) {
    PostFailure(ctx.io, std::move(done), request.error(), refusal);
    return 0;
  }
  AsyncRequest async;
  async.request = std::move(*request);
  async.max_response_bytes = kMaxAnswerBytes;
  return ctx.http.Start(std::move(async), [protocol = ctx.protocol, upload_url, done = std::move(done)](
                                              Expected<HttpResponse> response) {
    Failure failure;
    auto info = protocol->ReadQuery(response, upload_url, &failure);
    done(std::move(info), std::move(failure));
  });
}

}  // namespace

AsyncClient::AsyncClient(boost::asio::io_context& io, AsyncHttp& http, std::string endpoint)
    : io_(io), http_(http), protocol_(std::make_shared<Protocol>(std::move(endpoint))) {}

AsyncHttp::RequestId AsyncClient::Send(AsyncRequest request, AsyncCompletion done) {
  request.max_response_bytes = kMaxAnswerBytes;
  return http_.Start(std::move(request), std::move(done));
}

void AsyncClient::Discover(AsyncDone<ServerCapabilities> done) {
  AsyncRequest request;
  request.request = protocol_->DiscoverRequest();
  Send(std::move(request), [protocol = protocol_, done = std::move(done)](Expected<HttpResponse> response) {
    Failure failure;
    auto caps = protocol->ReadDiscover(response, &failure);
    if (caps) protocol->SetCapabilities(*caps);
    done(std::move(caps), std::move(failure));
  });
}

void AsyncClient::Create(std::uint64_t length, const Metadata& metadata, AsyncDone<Created> done) {
  Failure refusal;
  auto request = protocol_->CreateRequest(length, metadata, {}, &refusal);
  if (!request) {
    PostFailure(io_, std::move(done), request.error(), refusal);
    return;
  }
  AsyncRequest async;
  async.request = std::move(*request);
  Send(std::move(async), [protocol = protocol_, length, done = std::move(done)](Expected<HttpResponse> response) {
    Failure failure;
    auto created = protocol->ReadCreate(response, length, 0, &failure);
    done(std::move(created), std::move(failure));
  });
}

void AsyncClient::Query(const std::string& upload_url, AsyncDone<UploadInfo> done) {
  SendQuery({io_, http_, protocol_}, upload_url, std::move(done));
}

void AsyncClient::Terminate(const std::string& upload_url, AsyncDone<void> done) {
  Failure refusal;
  auto request = protocol_->TerminateRequest(upload_url, &refusal);
  if (!request) {
    PostFailure(io_, std::move(done), request.error(), refusal);
    return;
  }
  AsyncRequest async;
  async.request = std::move(*request);
  Send(std::move(async), [protocol = protocol_, upload_url, done = std::move(done)](Expected<HttpResponse> response) {
    Failure failure;
    auto status = protocol->ReadTerminate(response, upload_url, &failure);
    done(std::move(status), std::move(failure));
  });
}

void AsyncClient::Patch(const std::string& upload_url, std::uint64_t offset, const FileBody& body,
                        const AsyncUploadOptions& options, AsyncDone<std::uint64_t> done) {
  SendPatch({io_, http_, protocol_}, upload_url, offset, PatchBody{body, {}, {}}, options, std::move(done));
}

// The PATCH/HEAD sequence of one UploadFile: one request in flight at a time, each completion
// deciding the next step (the asynchronous form of Client::UploadFrom's loop).
struct AsyncClient::Upload : AsyncUpload, std::enable_shared_from_this<AsyncClient::Upload> {
  Upload(Context context, std::string url, std::optional<FileBody> whole_file,
         std::shared_ptr<const std::vector<std::uint8_t>> whole_data, std::uint64_t start, std::uint64_t patch,
         AsyncUploadOptions upload_options, AsyncDone<std::uint64_t> completion)
      : ctx(std::move(context)),
        upload_url(std::move(url)),
        file(std::move(whole_file)),
        data(std::move(whole_data)),
        length(file ? file->length : (data ? data->size() : 0)),
        offset(start),
        patch_bytes(patch),
        options(std::move(upload_options)),
        done(std::move(completion)) {}

  void Cancel() override {
    if (finished || cancelled) return;
    cancelled = true;
    if (in_flight != 0) ctx.http.Cancel(in_flight);  // its completion ends the upload
  }

  // Sends the next PATCH, or completes. Each round either fails, moves the offset forward, or
  // spends one of PatchRecovery's bounded resends or resyncs, so the sequence ends.
  void Next() {
    if (cancelled) {
      Finish(MakeError(ErrorKind::kCancelled, "tus upload " + RedactUrl(upload_url) + ": cancelled"),
             {FailureClass::kCancelled, {}});
      return;
    }
    if (offset >= length) {
      Finish(offset, {});
      return;
    }
    const std::uint64_t n = std::min<std::uint64_t>(patch_bytes, length - offset);
    PatchBody body;
    if (file) {
      body.file = FileBody{file->path, file->offset + offset, n};
    } else {
      body.bytes = std::span<const std::uint8_t>(*data).subspan(offset, n);
      body.owner = data;
    }
    in_flight = SendPatch(ctx, upload_url, offset, std::move(body), options,
                          [self = shared_from_this()](Expected<std::uint64_t> next, Failure failure) {
                            self->in_flight = 0;
                            self->Patched(std::move(next), std::move(failure));
                          });
  }

  void Patched(Expected<std::uint64_t> next, Failure failure) {
    if (!next) {
      const PatchRecovery::Step step = cancelled ? PatchRecovery::Step::kGiveUp : recovery.After(failure.failure);
      if (step == PatchRecovery::Step::kResend) {
        Next();
      } else if (step == PatchRecovery::Step::kGiveUp) {
        Finish(std::move(next), std::move(failure));
      } else {
        Resync();
      }
      return;
    }
    if (*next <= offset) {
      Finish(MakeError(ErrorKind::kProtocol, "tus upload " + RedactUrl(upload_url) +
                                                 ": the server accepted no bytes at offset " + std::to_string(offset)),
             {FailureClass::kProtocol, {}});
      return;
    }
    offset = *next;
    if (options.on_progress) options.on_progress(offset);
    Next();
  }

  void Resync() {
    in_flight = SendQuery(ctx, upload_url, [self = shared_from_this()](Expected<UploadInfo> server, Failure failure) {
      self->in_flight = 0;
      if (!server) {
        self->Finish(MakeError(server.error()), std::move(failure));
        return;
      }
      if (server->offset > self->length) {
        self->Finish(MakeError(ErrorKind::kProtocol, "tus upload " + RedactUrl(self->upload_url) +
                                                         ": the server's offset " + std::to_string(server->offset) +
                                                         " is beyond the data's " + std::to_string(self->length) +
                                                         " bytes"),
                     {FailureClass::kProtocol, {}});
        return;
      }
      self->offset = server->offset;
      if (self->options.on_progress) self->options.on_progress(self->offset);
      self->Next();
    });
  }

  void Finish(Expected<std::uint64_t> result, Failure failure) {
    if (finished) return;
    finished = true;
    auto completion = std::move(done);
    completion(std::move(result), std::move(failure));
  }

  Context ctx;
  std::string upload_url;
  std::optional<FileBody> file;                         // the body: a file range...
  std::shared_ptr<const std::vector<std::uint8_t>> data;  // ...or bytes in memory
  std::uint64_t length;
  std::uint64_t offset;
  std::uint64_t patch_bytes;
  AsyncUploadOptions options;
  AsyncDone<std::uint64_t> done;
  PatchRecovery recovery;
  AsyncHttp::RequestId in_flight = 0;
  bool cancelled = false;
  bool finished = false;
};

std::shared_ptr<AsyncUpload> AsyncClient::UploadFile(const std::string& upload_url, const FileBody& file,
                                                     std::uint64_t offset, std::uint64_t patch_bytes,
                                                     AsyncUploadOptions options, AsyncDone<std::uint64_t> done) {
  return StartUpload(std::make_shared<Upload>(Context{io_, http_, protocol_}, upload_url, file, nullptr, offset,
                                              patch_bytes, std::move(options), std::move(done)));
}

std::shared_ptr<AsyncUpload> AsyncClient::UploadBytes(const std::string& upload_url,
                                                      std::shared_ptr<const std::vector<std::uint8_t>> data,
                                                      std::uint64_t offset, std::uint64_t patch_bytes,
                                                      AsyncUploadOptions options, AsyncDone<std::uint64_t> done) {
  if (!data) data = std::make_shared<const std::vector<std::uint8_t>>();
  return StartUpload(std::make_shared<Upload>(Context{io_, http_, protocol_}, upload_url, std::nullopt, std::move(data),
                                              offset, patch_bytes, std::move(options), std::move(done)));
}

std::shared_ptr<AsyncUpload> AsyncClient::StartUpload(std::shared_ptr<Upload> upload) {
  if (upload->patch_bytes == 0 || upload->offset > upload->length) {
    const std::string why = upload->patch_bytes == 0 ? "tus upload: patch size must be at least 1 byte"
                                                     : "tus upload " + RedactUrl(upload->upload_url) + ": offset " +
                                                           std::to_string(upload->offset) + " is beyond the data's " +
                                                           std::to_string(upload->length) + " bytes";
    upload->finished = true;
    PostFailure(io_, std::move(upload->done), Error(ErrorKind::kInvalidInput, why), {FailureClass::kLocal, {}});
    return upload;
  }
  // Started from the loop, so the first completion never runs inside this call.
  boost::asio::post(io_, [upload] { upload->Next(); });
  return upload;
}

}  // namespace ctagent::transport::tus
