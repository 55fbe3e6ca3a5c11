// tus 1.0 resumable upload client: core protocol plus the creation, creation-with-upload,
// checksum, termination and expiration extensions (docs/tus-conformance.md lists every MUST and
// the test that checks it). Resume policy (journaling the URL first, re-creating forgotten
// uploads) is the caller's: see agent/core/uploader.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/error.hpp"
#include "transport/http.hpp"

namespace ctagent::transport::tus {

using Metadata = std::vector<std::pair<std::string, std::string>>;  // values are base64-encoded on the wire

// Encodes Upload-Metadata: "key base64(value),key2 base64(value2)". Pairs with an invalid key
// (empty, non-ASCII, space or comma) are left out; Client::Create refuses them with kInvalidInput.
std::string EncodeMetadata(const Metadata& metadata);
std::string Base64Encode(std::span<const std::uint8_t> bytes);

// Parses an RFC 9110 IMF-fixdate ("Wed, 25 Jun 2025 16:00:00 GMT", the form tus servers send
// in Upload-Expires) to seconds since the Unix epoch; nullopt when it is not one.
std::optional<std::int64_t> ParseHttpDate(const std::string& text);

// Upload-Offset / Upload-Length / Tus-Max-Size: a non-negative decimal integer of at most 20
// digits and nothing else (no sign, space or second value); nullopt otherwise.
std::optional<std::uint64_t> ParseUploadOffset(std::string_view text);

// A comma-separated header list (Tus-Version, Tus-Extension, Tus-Checksum-Algorithm): items
// trimmed of spaces and tabs, empty ones dropped. At most kMaxListItems items are kept (a server
// cannot make us hold an unbounded list).
inline constexpr std::size_t kMaxListItems = 64;
std::vector<std::string> ParseList(std::string_view text);

// scheme://host[:port] of an http(s) URL, lower-cased, with the scheme's default port filled in;
// nullopt when `url` is not an absolute http(s) URL with a host.
struct Origin {
  std::string scheme;
  std::string host;
  std::uint16_t port = 0;
  bool operator==(const Origin&) const = default;
  std::string ToString() const;  // "https://host:port"
};
std::optional<Origin> ParseOrigin(std::string_view url);
// "https://a:1 https://b" -> its origins; entries that are not origins are left out (config
// check refuses them before the agent starts).
std::vector<Origin> ParseOriginList(std::string_view space_separated);

// Turns a creation answer's Location header into the absolute upload URL, or says why it cannot
// be used: empty, control characters or spaces, user:password@, not http(s), or an origin
// (scheme, host, port) other than the endpoint's and not in `allowed` (the messages name both
// origins, redacted). Relative and scheme-relative ("//host/...") Locations are resolved
// against `endpoint`. Returns kProtocol for a malformed Location, kPermission for a foreign one.
Expected<std::string> ResolveUploadLocation(const std::string& endpoint, std::string_view location,
                                            const std::vector<Origin>& allowed);

// What the server said in its OPTIONS answer.
struct ServerCapabilities {
  std::vector<std::string> versions;             // Tus-Version, preferred first
  std::vector<std::string> extensions;           // Tus-Extension
  std::vector<std::string> checksum_algorithms;  // Tus-Checksum-Algorithm
  std::uint64_t max_size = 0;                    // Tus-Max-Size; 0: not announced
  // No Tus-Version in the answer: usable because it carried Tus-Resumable: 1.0.0 (a legacy
  // server; versions is then {"1.0.0"}).
  bool version_inferred = false;
  bool Has(const std::string& extension) const;
  // The checksum algorithm we use: sha256 or sha1 when offered (in that order), else "".
  std::string ChecksumAlgorithm() const;
};

// Reads an OPTIONS answer (`status`, lower-cased `headers`). The server is usable when the
// answer is 2xx and either lists 1.0.0 in Tus-Version or, without Tus-Version, carries
// Tus-Resumable: 1.0.0 (older servers, and @uploadx/core today, omit Tus-Version). Errors say
// what the answer really was; `shown_endpoint` is the (redacted) URL named in them. The
// FailureClass goes to `*failure` (kVersion, kProtocol or kEndpoint) and a short label of what
// happened to `*label` ("tus-version", "not-tus", ...).
Expected<ServerCapabilities> ParseDiscovery(long status, const HeaderList& headers, const std::string& shown_endpoint,
                                            FailureClass* failure, std::string* label);

// Upload-Checksum value ("sha1 <base64 digest>") for `algorithm` (sha1 or sha256).
std::string ChecksumHeader(const std::string& algorithm, std::span<const std::uint8_t> bytes);

// What HEAD reports about an upload.
struct UploadInfo {
  std::uint64_t offset = 0;
  std::optional<std::uint64_t> length;   // Upload-Length, when the server sends it
  std::optional<std::int64_t> expires;   // Upload-Expires (Unix seconds), when announced
};

struct Created {
  std::string url;          // absolute upload URL
  std::uint64_t offset = 0; // bytes the server accepted with the creation request
  std::optional<std::int64_t> expires;
};

// How a tus request failed: its class (what the retry policy keys on) and what happened, for
// logs and error labels. kNone after a success.
struct Failure {
  FailureClass failure = FailureClass::kNone;
  // "http-412" only when a 412 arrived; "tus-version" when the server named other versions,
  // "not-tus" for an answer without tus headers, "foreign-location" for a Location off the upload
  // origin, "tus-max-size" for a length over an announced Tus-Max-Size... "": the class's name.
  std::string label;
  std::string Label() const;  // label, or ToString(failure) when it is empty
};

// The tus protocol without the transport: how each request is built and how its answer is read,
// shared by the blocking Client and AsyncClient (transport/tus_async.hpp) so the two cannot
// drift. The Make* functions return the request to send, or an error for a request that must not
// be sent (foreign upload URL, invalid metadata, length over Tus-Max-Size). The Read* functions
// take what the HTTP layer returned (a response, or its error) and return the result or the
// error; both set `*failure` (the class the returned error carries, and a label).
class Protocol {
 public:
  // `endpoint`: the creation URL, e.g. https://127.0.0.1:1080/files/
  explicit Protocol(std::string endpoint);
  const std::string& endpoint() const { return endpoint_; }

  void SetCapabilities(ServerCapabilities capabilities) { capabilities_ = std::move(capabilities); }
  const std::optional<ServerCapabilities>& capabilities() const { return capabilities_; }
  void SetAllowedOrigins(std::vector<Origin> origins) { allowed_origins_ = std::move(origins); }
  bool OriginAllowed(const std::string& upload_url) const;

  HttpRequest DiscoverRequest() const;
  Expected<ServerCapabilities> ReadDiscover(const Expected<HttpResponse>& response,
                                            Failure* failure) const;
  // POST; with creation-with-upload (offered and `first_bytes` not empty) the body is the first
  // bytes (the caller keeps them alive until the answer).
  Expected<HttpRequest> CreateRequest(std::uint64_t length, const Metadata& metadata,
                                      std::span<const std::uint8_t> first_bytes, Failure* failure) const;
  Expected<Created> ReadCreate(const Expected<HttpResponse>& response,
                               std::uint64_t length, std::size_t body_size, Failure* failure) const;
  Expected<HttpRequest> QueryRequest(const std::string& upload_url, Failure* failure) const;
  Expected<UploadInfo> ReadQuery(const Expected<HttpResponse>& response,
                                 const std::string& upload_url, Failure* failure) const;
  // PATCH of `size` bytes at `offset`. `bytes` (the body's bytes) is needed only for the
  // Upload-Checksum header, sent when a checksum algorithm is known from discovery; the body
  // itself is the caller's to attach.
  Expected<HttpRequest> PatchRequest(const std::string& upload_url, std::uint64_t offset,
                                     std::span<const std::uint8_t> bytes, Failure* failure) const;
  bool PatchNeedsBytes() const;  // whether PatchRequest computes a checksum from `bytes`
  // The new offset; `*expires` gets Upload-Expires when the answer carries one.
  Expected<std::uint64_t> ReadPatch(const Expected<HttpResponse>& response,
                                    const std::string& upload_url, std::uint64_t offset, std::uint64_t size,
                                    Failure* failure, std::optional<std::int64_t>* expires) const;
  Expected<HttpRequest> TerminateRequest(const std::string& upload_url, Failure* failure) const;
  Status ReadTerminate(const Expected<HttpResponse>& response,
                       const std::string& upload_url, Failure* failure) const;

 private:
  Unexpected ForeignUrl(const std::string& what, const std::string& url, Failure* failure) const;
  Unexpected StatusError(const std::string& what, const std::string& url, const HttpResponse& response,
                         std::uint64_t length, Failure* failure) const;

  std::string endpoint_;
  std::optional<ServerCapabilities> capabilities_;
  std::vector<Origin> allowed_origins_;
};

// What UploadFrom (blocking or asynchronous) does after a failed PATCH: send the same bytes again
// (a 460: the server kept none of them), ask the server's offset with HEAD and go on from there
// (a 409, or a connection lost mid-PATCH), or give up. Each is bounded per upload call.
struct PatchRecovery {
  static constexpr int kMaxChecksumResends = 3;
  static constexpr int kMaxConflictResyncs = 3;
  static constexpr int kMaxLostResyncs = 1;  // a HEAD after a connection lost mid-PATCH
  enum class Step { kResend, kResync, kGiveUp };
  int checksum_resends = 0;
  int conflict_resyncs = 0;
  int lost_resyncs = 0;
  Step After(FailureClass failure);  // counts the step it returns
};

class Client {
 public:
  // `endpoint`: the creation URL, e.g. https://127.0.0.1:1080/files/
  Client(HttpClient& http, std::string endpoint);

  // OPTIONS: learns the server's versions, extensions, checksum algorithms and max size, and
  // keeps them for the requests that follow (see ParseDiscovery for what counts as usable).
  // kUnsupported (class kVersion) when the server names versions without 1.0.0 or answers 412;
  // kProtocol when the answer is not a tus answer at all.
  Expected<ServerCapabilities> Discover();
  // Capabilities from an earlier Discover() (possibly by another Client); empty: none known.
  void SetCapabilities(ServerCapabilities capabilities) { protocol_.SetCapabilities(std::move(capabilities)); }
  const std::optional<ServerCapabilities>& capabilities() const { return protocol_.capabilities(); }

  // POST: creates an upload of `length` bytes; returns its absolute URL.
  Expected<std::string> Create(std::uint64_t length, const Metadata& metadata);
  // POST with creation-with-upload: also sends `first_bytes` (data[0..]) in the POST body when
  // the server offers the extension (known from Discover()); otherwise like Create (offset 0).
  Expected<Created> CreateWithUpload(std::uint64_t length, const Metadata& metadata,
                                     std::span<const std::uint8_t> first_bytes);
  // HEAD: the server's offset for an upload. kNotFound when the server no longer knows it
  // (404, 410), which means: create it again.
  Expected<std::uint64_t> QueryOffset(const std::string& upload_url);
  Expected<UploadInfo> Query(const std::string& upload_url);
  // PATCH: sends `bytes` at `offset`; returns the new offset the server reports. With a
  // checksum algorithm known from Discover(), the PATCH carries Upload-Checksum.
  // 409 (offset mismatch) comes back as kProtocol naming our offset (and the server's when it
  // sends one) and asking to query the offset again; 460 as kNetwork (resend).
  Expected<std::uint64_t> Patch(const std::string& upload_url, std::uint64_t offset,
                                std::span<const std::uint8_t> bytes);
  // DELETE (termination extension): the server frees the upload. An upload it no longer
  // knows counts as terminated.
  Status Terminate(const std::string& upload_url);
  // Sends data[offset..] in PATCH requests of at most `patch_bytes`; calls on_progress with
  // the confirmed offset after each request. A 460 resends that PATCH, a 409 or a connection
  // lost mid-PATCH asks HEAD and continues from the server's offset (each a bounded number of
  // times). Returns the final offset (== data.size()).
  Expected<std::uint64_t> UploadFrom(const std::string& upload_url, std::span<const std::uint8_t> data,
                                     std::uint64_t offset, std::uint64_t patch_bytes,
                                     const std::function<void(std::uint64_t)>& on_progress = {});

  // Origins besides the endpoint's that a creation's Location may point at
  // (cloud.upload_origins_allowed). Upload URLs on any other origin are refused before a request
  // is sent to them (creation, HEAD, PATCH, DELETE).
  void SetAllowedOrigins(std::vector<Origin> origins) { protocol_.SetAllowedOrigins(std::move(origins)); }
  // Whether `upload_url` may receive requests: on the endpoint's origin or an allowed one.
  bool OriginAllowed(const std::string& upload_url) const { return protocol_.OriginAllowed(upload_url); }

  // Called before each block of request body bytes (see HttpRequest::before_send).
  void SetBeforeSend(std::function<bool(std::size_t)> before_send) { before_send_ = std::move(before_send); }

  // A failed call's error carries its class (Error::failure(): what the retry policy keys on).
  // What happened, for logs and error labels: "http-412" only when a 412 arrived; "tus-version"
  // when the server named other versions, "not-tus" for an answer without tus headers,
  // "foreign-location" for a Location off the upload origin, "tus-max-size" for a length over an
  // announced Tus-Max-Size... and the class's name (ToString) otherwise. "none" after success.
  std::string last_failure_label() const { return last_failure_.Label(); }
  // Upload-Expires of the last response that carried one (Unix seconds).
  std::optional<std::int64_t> last_expires() const { return last_expires_; }
  // PATCH body bytes handed to the connection by this client so far, including those of
  // requests that failed (what a resume may send again).
  std::uint64_t body_bytes_sent() const { return body_bytes_sent_; }

  // Bounds for the in-call recoveries of UploadFrom.
  static constexpr int kMaxChecksumResends = PatchRecovery::kMaxChecksumResends;
  static constexpr int kMaxConflictResyncs = PatchRecovery::kMaxConflictResyncs;
  static constexpr int kMaxLostResyncs = PatchRecovery::kMaxLostResyncs;

 private:
  // Keeps `failure` as the last failure and hands `result` on, its error carrying that class.
  template <typename T>
  Expected<T> Note(Expected<T> result, const Failure& failure) {
    last_failure_ = failure;
    if (!result && failure.failure != FailureClass::kNone) return MakeError(result.error().WithFailure(failure.failure));
    return result;
  }
  Expected<HttpResponse> Send(const HttpRequest& request);

  HttpClient& http_;
  Protocol protocol_;
  std::function<bool(std::size_t)> before_send_;
  Failure last_failure_;
  std::optional<std::int64_t> last_expires_;
  std::uint64_t body_bytes_sent_ = 0;
};

}  // namespace ctagent::transport::tus
