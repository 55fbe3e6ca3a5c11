// tus 1.0 client: core protocol (OPTIONS, HEAD, PATCH) and the creation, creation-with-upload,
// checksum, termination and expiration extensions.
#include "transport/tus.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <ctime>
#include <iomanip>
#include <locale>
#include <set>
#include <sstream>
#include <string_view>

namespace ctagent::transport::tus {
namespace {

constexpr const char* kTusVersion = "1.0.0";

// Metadata keys: non-empty ASCII without spaces or commas (tus 1.0, Upload-Metadata). Control
// characters are refused too, since they cannot travel in an HTTP header.
bool ValidMetadataKey(const std::string& key) {
  if (key.empty()) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f && c != ',';
  });
}

Status ValidateMetadata(const Metadata& metadata) {
  std::set<std::string> seen;
  for (const auto& [key, value] : metadata) {
    if (!ValidMetadataKey(key)) {
      return MakeError(ErrorKind::kInvalidInput, "tus metadata key \"" + key +
                                                     "\" is invalid: keys must be non-empty printable ASCII "
                                                     "without spaces or commas");
    }
    if (!seen.insert(key).second) {
      return MakeError(ErrorKind::kInvalidInput, "tus metadata key \"" + key + "\" appears twice: keys must be unique");
    }
  }
  return Ok();
}

// Upload-Offset / Upload-Length: a non-negative decimal integer, nothing else.
bool ParseOffset(std::string_view text, std::uint64_t* out) {
  if (text.empty() || text.size() > 20) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size();
}

std::string Excerpt(const std::string& body) {
  constexpr std::size_t kMax = 200;
  std::string out = body.substr(0, kMax);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = ' ';
  }
  if (body.size() > kMax) out += "...";
  return out;
}

HeaderList BaseHeaders() { return {{"Tus-Resumable", kTusVersion}}; }

}  // namespace


std::string Base64Encode(std::span<const std::uint8_t> bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t{bytes[i]} << 16) | (std::uint32_t{bytes[i + 1]} << 8) | bytes[i + 2];
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    const std::uint32_t v = std::uint32_t{bytes[i]} << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (rest == 2) {
    const std::uint32_t v = (std::uint32_t{bytes[i]} << 16) | (std::uint32_t{bytes[i + 1]} << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::string EncodeMetadata(const Metadata& metadata) {
  std::string out;
  for (const auto& [key, value] : metadata) {
    // An invalid key would change how the server splits the header; Create() refuses such
    // metadata with an error, and here it is left out rather than sent garbled.
    if (!ValidMetadataKey(key)) continue;
    if (!out.empty()) out += ',';
    out += key;
    if (!value.empty()) {
      out += ' ';
      out += Base64Encode(std::span(reinterpret_cast<const std::uint8_t*>(value.data()), value.size()));
    }
  }
  return out;
}


namespace {

// "a, b,c" -> {"a", "b", "c"}
std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const auto comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace

std::optional<std::int64_t> ParseHttpDate(const std::string& text) {
  std::tm tm{};
  std::istringstream in(text);
  in.imbue(std::locale::classic());
  in >> std::get_time(&tm, "%a, %d %b %Y %H:%M:%S");
  std::string zone;
  in >> zone;
  if (in.fail() || zone != "GMT") return std::nullopt;
  return static_cast<std::int64_t>(timegm(&tm));
}

bool ServerCapabilities::Has(const std::string& extension) const {
  return std::find(extensions.begin(), extensions.end(), extension) != extensions.end();
}

std::string ServerCapabilities::ChecksumAlgorithm() const {
  for (const char* preferred : {"sha256", "sha1"}) {
    if (std::find(checksum_algorithms.begin(), checksum_algorithms.end(), preferred) != checksum_algorithms.end()) {
      return preferred;
    }
  }
  return {};
}

std::string ChecksumHeader(const std::string& algorithm, std::span<const std::uint8_t> bytes) {
  const EVP_MD* md = algorithm == "sha256" ? EVP_sha256() : EVP_sha1();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &size, md, nullptr) != 1) return {};
  return algorithm + " " + Base64Encode(std::span<const std::uint8_t>(digest, size));
}

Client::Client(HttpClient& http, std::string endpoint) : http_(http), endpoint_(std::move(endpoint)) {}

Unexpected Client::Fail(FailureClass failure, Unexpected error) {
  last_failure_ = failure;
  return error;
}

Unexpected Client::FromHttp(const Error& error, const std::string& context) {
  last_failure_ = http_.last_failure();
  return MakeError(error.WithContext(context));
}

void Client::NoteExpires(const HttpResponse& response) {
  const std::string text = response.Header("Upload-Expires");
  if (text.empty()) return;
  if (auto parsed = ParseHttpDate(text)) last_expires_ = parsed;
}

// Statuses every tus request treats the same way. `what` names the request ("tus patch").
Unexpected Client::StatusError(const std::string& what, const std::string& url, const HttpResponse& response,
                               std::uint64_t length) {
  const long s = response.status;
  const std::string status = "HTTP " + std::to_string(s);
  if (s == 404 || s == 410) {
    return Fail(FailureClass::kUploadGone,
                MakeError(ErrorKind::kNotFound, what + ": the server no longer knows upload URL " + url + " (" +
                                                    status + (s == 410 ? ", expired or terminated" : "") +
                                                    "); create it again"));
  }
  if (s == 401 || s == 403) {
    return Fail(FailureClass::kAuth, MakeError(ErrorKind::kPermission,
                                               what + ": " + url + " refused this terminal (" + status +
                                                   "); check its credentials or client certificate with the "
                                                   "imaging center"));
  }
  if (s == 413) {
    std::string max = response.Header("Tus-Max-Size");
    if (max.empty() && capabilities_ && capabilities_->max_size > 0) max = std::to_string(capabilities_->max_size);
    return Fail(FailureClass::kTooLarge,
                MakeError(ErrorKind::kInvalidInput,
                          what + ": " + url + " refuses an upload of " + std::to_string(length) + " bytes (" + status +
                              ": too large; the server accepts at most " + (max.empty() ? "an unannounced" : max) +
                              " bytes); lower the chunk size or ask the imaging center to raise its limit"));
  }
  if (s == 412) {
    return Fail(FailureClass::kVersion,
                MakeError(ErrorKind::kUnsupported, what + ": " + url + " does not speak tus " + kTusVersion + " (" +
                                                       status + ", server versions: " +
                                                       response.Header("Tus-Version") +
                                                       "); the imaging center must offer tus 1.0.0"));
  }
  if (s == 409) {
    return Fail(FailureClass::kConflict, MakeError(ErrorKind::kProtocol, what + ": " + url + " answered " + status +
                                                                           " (conflict); query the offset again"));
  }
  if (s == 423) {
    return Fail(FailureClass::kLocked, MakeError(ErrorKind::kNetwork, what + ": upload " + url + " is locked by "
                                                                          "another request (" + status +
                                                                          "); retry after a backoff"));
  }
  if (s == 460) {
    return Fail(FailureClass::kChecksum,
                MakeError(ErrorKind::kNetwork, what + ": " + url + " reports a checksum mismatch (" + status +
                                                   "): the bytes were damaged on the way; resend them"));
  }
  if (s >= 500) {
    return Fail(FailureClass::kServerError,
                MakeError(ErrorKind::kNetwork, what + ": temporary failure at " + url + " (" + status + "); retry later"));
  }
  return Fail(FailureClass::kProtocol, MakeError(ErrorKind::kProtocol, what + ": " + url + " answered unexpected " +
                                                                           status + ": " + Excerpt(response.body)));
}

Expected<ServerCapabilities> Client::Discover() {
  HttpRequest request;
  request.method = "OPTIONS";
  request.url = endpoint_;
  request.headers = BaseHeaders();
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return FromHttp(response.error(), "tus discovery (OPTIONS)");
  if (response->status != 200 && response->status != 204) {
    if (response->status == 404) {
      return Fail(FailureClass::kEndpoint, MakeError(ErrorKind::kNotFound, "tus discovery: no upload endpoint at " +
                                                                               endpoint_ +
                                                                               " (HTTP 404); check cloud.upload_url"));
    }
    return StatusError("tus discovery (OPTIONS)", endpoint_, *response);
  }
  ServerCapabilities caps;
  caps.versions = SplitList(response->Header("Tus-Version"));
  caps.extensions = SplitList(response->Header("Tus-Extension"));
  caps.checksum_algorithms = SplitList(response->Header("Tus-Checksum-Algorithm"));
  const std::string max = response->Header("Tus-Max-Size");
  if (!max.empty() && !ParseOffset(max, &caps.max_size)) {
    return Fail(FailureClass::kProtocol, MakeError(ErrorKind::kProtocol, "tus discovery: " + endpoint_ +
                                                                             " sent an invalid Tus-Max-Size \"" +
                                                                             Excerpt(max) + "\""));
  }
  if (std::find(caps.versions.begin(), caps.versions.end(), kTusVersion) == caps.versions.end()) {
    return Fail(FailureClass::kVersion,
                MakeError(ErrorKind::kUnsupported, "tus discovery: " + endpoint_ + " does not offer tus " +
                                                       kTusVersion + " (Tus-Version: \"" +
                                                       Excerpt(response->Header("Tus-Version")) +
                                                       "\"); the imaging center must offer tus 1.0.0"));
  }
  capabilities_ = caps;
  last_failure_ = FailureClass::kNone;
  return caps;
}

Expected<std::string> Client::Create(std::uint64_t length, const Metadata& metadata) {
  auto created = CreateWithUpload(length, metadata, {});
  if (!created) return MakeError(created.error());
  return created->url;
}

Expected<Created> Client::CreateWithUpload(std::uint64_t length, const Metadata& metadata,
                                           std::span<const std::uint8_t> first_bytes) {
  if (auto valid = ValidateMetadata(metadata); !valid) return Fail(FailureClass::kLocal, MakeError(valid.error()));
  if (capabilities_ && capabilities_->max_size > 0 && length > capabilities_->max_size) {
    return Fail(FailureClass::kTooLarge,
                MakeError(ErrorKind::kInvalidInput,
                          "tus create: " + endpoint_ + " accepts uploads of at most " +
                              std::to_string(capabilities_->max_size) + " bytes (Tus-Max-Size) and this one has " +
                              std::to_string(length) +
                              "; lower the chunk size or ask the imaging center to raise its limit"));
  }
  const bool with_upload = capabilities_ && capabilities_->Has("creation-with-upload") && !first_bytes.empty();
  HttpRequest request;
  request.method = "POST";
  request.url = endpoint_;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Upload-Length", std::to_string(length));
  const std::string encoded = EncodeMetadata(metadata);
  if (!encoded.empty()) request.headers.emplace_back("Upload-Metadata", encoded);
  if (with_upload) {
    request.headers.emplace_back("Content-Type", "application/offset+octet-stream");
    request.body = first_bytes.subspan(0, std::min<std::size_t>(first_bytes.size(), length));
    request.before_send = before_send_;
  }
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return FromHttp(response.error(), "tus create");
  if (response->status == 404) {
    return Fail(FailureClass::kEndpoint, MakeError(ErrorKind::kNotFound, "tus create: no upload endpoint at " +
                                                                             endpoint_ +
                                                                             " (HTTP 404); check cloud.upload_url"));
  }
  if (response->status != 201) return StatusError("tus create", endpoint_, *response, length);
  const std::string location = response->Header("Location");
  if (location.empty()) {
    return Fail(FailureClass::kProtocol, MakeError(ErrorKind::kProtocol, "tus create at " + endpoint_ +
                                                                             ": HTTP 201 without a Location header"));
  }
  NoteExpires(*response);
  Created created;
  created.url = ResolveUrl(endpoint_, location);
  created.expires = last_expires_;
  if (with_upload) {
    // The server says how much of the body it kept; without the header, assume nothing (the
    // next PATCH at 0 then either succeeds or gets a 409 and resynchronises).
    std::uint64_t accepted = 0;
    const std::string text = response->Header("Upload-Offset");
    if (!text.empty() && (!ParseOffset(text, &accepted) || accepted > request.body.size())) {
      return Fail(FailureClass::kProtocol, MakeError(ErrorKind::kProtocol, "tus create at " + endpoint_ +
                                                                               ": invalid Upload-Offset \"" +
                                                                               Excerpt(text) + "\" in HTTP 201"));
    }
    created.offset = accepted;
  }
  last_failure_ = FailureClass::kNone;
  return created;
}

Expected<std::uint64_t> Client::QueryOffset(const std::string& upload_url) {
  auto info = Query(upload_url);
  if (!info) return MakeError(info.error());
  return info->offset;
}

Expected<UploadInfo> Client::Query(const std::string& upload_url) {
  HttpRequest request;
  request.method = "HEAD";
  request.url = upload_url;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Cache-Control", "no-store");
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return FromHttp(response.error(), "tus offset query");
  if (response->status != 200 && response->status != 204) {
    return StatusError("tus offset query", upload_url, *response);
  }
  UploadInfo info;
  const std::string text = response->Header("Upload-Offset");
  if (!ParseOffset(text, &info.offset)) {
    return Fail(FailureClass::kProtocol,
                MakeError(ErrorKind::kProtocol, "tus offset query " + upload_url + ": invalid Upload-Offset \"" +
                                                    Excerpt(text) + "\" in HTTP " + std::to_string(response->status)));
  }
  std::uint64_t length = 0;
  if (ParseOffset(response->Header("Upload-Length"), &length)) info.length = length;
  NoteExpires(*response);
  if (!response->Header("Upload-Expires").empty()) info.expires = last_expires_;
  last_failure_ = FailureClass::kNone;
  return info;
}

Expected<std::uint64_t> Client::Patch(const std::string& upload_url, std::uint64_t offset,
                                      std::span<const std::uint8_t> bytes) {
  HttpRequest request;
  request.method = "PATCH";
  request.url = upload_url;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Upload-Offset", std::to_string(offset));
  request.headers.emplace_back("Content-Type", "application/offset+octet-stream");
  if (capabilities_ && capabilities_->Has("checksum")) {
    const std::string algorithm = capabilities_->ChecksumAlgorithm();
    if (!algorithm.empty()) request.headers.emplace_back("Upload-Checksum", ChecksumHeader(algorithm, bytes));
  }
  request.body = bytes;
  request.before_send = before_send_;
  std::uint64_t sent = 0;
  request.on_upload_progress = [&sent](std::uint64_t n) { sent = n; };
  auto response = http_.Perform(request, 1 << 20);
  body_bytes_sent_ += sent;
  if (!response) return FromHttp(response.error(), "tus patch at offset " + std::to_string(offset));
  if (response->status == 409) {
    const std::string server_offset = response->Header("Upload-Offset");
    return Fail(FailureClass::kConflict,
                MakeError(ErrorKind::kProtocol, "tus patch " + upload_url +
                                                    ": offset mismatch (HTTP 409): we sent Upload-Offset " +
                                                    std::to_string(offset) + " but the server's offset differs" +
                                                    (server_offset.empty() ? "" : " (server: " + server_offset + ")") +
                                                    "; query the offset with HEAD again and continue from there"));
  }
  if (response->status != 204) return StatusError("tus patch", upload_url, *response);
  NoteExpires(*response);
  std::uint64_t new_offset = 0;
  const std::string text = response->Header("Upload-Offset");
  if (!ParseOffset(text, &new_offset)) {
    return Fail(FailureClass::kProtocol, MakeError(ErrorKind::kProtocol, "tus patch " + upload_url +
                                                                             ": invalid Upload-Offset \"" +
                                                                             Excerpt(text) + "\" in HTTP 204"));
  }
  if (new_offset < offset || new_offset - offset > bytes.size()) {
    return Fail(FailureClass::kProtocol,
                MakeError(ErrorKind::kProtocol, "tus patch " + upload_url + ": the server reports offset " + text +
                                                    " after we sent " + std::to_string(bytes.size()) +
                                                    " bytes at offset " + std::to_string(offset)));
  }
  last_failure_ = FailureClass::kNone;
  return new_offset;
}

Status Client::Terminate(const std::string& upload_url) {
  HttpRequest request;
  request.method = "DELETE";
  request.url = upload_url;
  request.headers = BaseHeaders();
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return FromHttp(response.error(), "tus termination");
  if (response->status == 204 || response->status == 404 || response->status == 410) {
    last_failure_ = FailureClass::kNone;
    return Ok();
  }
  return StatusError("tus termination", upload_url, *response);
}

Expected<std::uint64_t> Client::UploadFrom(const std::string& upload_url, std::span<const std::uint8_t> data,
                                           std::uint64_t offset, std::uint64_t patch_bytes,
                                           const std::function<void(std::uint64_t)>& on_progress) {
  if (patch_bytes == 0) {
    return Fail(FailureClass::kLocal,
                MakeError(ErrorKind::kInvalidInput, "tus upload: patch size must be at least 1 byte"));
  }
  if (offset > data.size()) {
    return Fail(FailureClass::kLocal, MakeError(ErrorKind::kInvalidInput, "tus upload " + upload_url + ": offset " +
                                                                              std::to_string(offset) +
                                                                              " is beyond the data's " +
                                                                              std::to_string(data.size()) + " bytes"));
  }
  int checksum_resends = 0;
  int resyncs = 0;
  int lost_resyncs = 0;
  // Each round either fails, moves the offset forward, or spends one of the bounded resends
  // or resyncs, so the loop ends.
  while (offset < data.size()) {
    const std::uint64_t n = std::min<std::uint64_t>(patch_bytes, data.size() - offset);
    auto next = Patch(upload_url, offset, data.subspan(offset, n));
    if (!next) {
      if (last_failure_ == FailureClass::kChecksum && checksum_resends < kMaxChecksumResends) {
        ++checksum_resends;  // the server kept nothing of that PATCH: send the same bytes again
        continue;
      }
      // A connection lost during the PATCH leaves the server's offset unknown: it may have kept
      // part of the bytes, or answered before reading them (@tus/server sends its 409 and closes)
      // while our send failed. One HEAD tells; if the network is really gone it fails too, and
      // the caller's retry policy takes over.
      const bool lost = last_failure_ == FailureClass::kConnectionLost && lost_resyncs < kMaxLostResyncs;
      if (lost) ++lost_resyncs;
      if (lost || (last_failure_ == FailureClass::kConflict && resyncs < kMaxConflictResyncs)) {
        if (!lost) ++resyncs;
        auto server = Query(upload_url);
        if (!server) return MakeError(server.error());
        if (server->offset > data.size()) {
          return Fail(FailureClass::kProtocol,
                      MakeError(ErrorKind::kProtocol, "tus upload " + upload_url + ": the server's offset " +
                                                          std::to_string(server->offset) + " is beyond the data's " +
                                                          std::to_string(data.size()) + " bytes"));
        }
        offset = server->offset;
        if (on_progress) on_progress(offset);
        continue;
      }
      return next;
    }
    if (*next <= offset) {
      return Fail(FailureClass::kProtocol,
                  MakeError(ErrorKind::kProtocol, "tus upload " + upload_url + ": the server accepted no bytes at offset " +
                                                      std::to_string(offset)));
    }
    offset = *next;
    if (on_progress) on_progress(offset);
  }
  return offset;
}

}  // namespace ctagent::transport::tus
