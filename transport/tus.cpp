// tus 1.0 client: core protocol (HEAD, PATCH) and the creation extension (POST).
#include "transport/tus.hpp"

#include <algorithm>
#include <charconv>
#include <set>
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

// Statuses every tus request treats the same way. `what` names the request ("tus patch").
Unexpected StatusError(const std::string& what, const std::string& url, const HttpResponse& response) {
  const long s = response.status;
  const std::string status = "HTTP " + std::to_string(s);
  if (s == 404 || s == 410) {
    return MakeError(ErrorKind::kNotFound, what + ": the server no longer knows upload URL " + url + " (" + status +
                                               "); create it again");
  }
  if (s == 401 || s == 403) {
    return MakeError(ErrorKind::kPermission, what + ": " + url + " refused this terminal (" + status +
                                                 "); check its credentials or client certificate");
  }
  if (s == 413) {
    return MakeError(ErrorKind::kInvalidInput, what + ": " + url + " refuses the size (" + status +
                                                   ": larger than the server accepts)");
  }
  if (s == 412) {
    return MakeError(ErrorKind::kUnsupported, what + ": " + url + " does not speak tus " + kTusVersion + " (" +
                                                  status + ", server versions: " + response.Header("Tus-Version") +
                                                  ")");
  }
  if (s == 423 || s == 460 || s >= 500) {
    return MakeError(ErrorKind::kNetwork, what + ": temporary failure at " + url + " (" + status + "); retry later");
  }
  return MakeError(ErrorKind::kProtocol, what + ": " + url + " answered unexpected " + status + ": " +
                                             Excerpt(response.body));
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

Client::Client(HttpClient& http, std::string endpoint) : http_(http), endpoint_(std::move(endpoint)) {}

Expected<std::string> Client::Create(std::uint64_t length, const Metadata& metadata) {
  if (auto valid = ValidateMetadata(metadata); !valid) return MakeError(valid.error());
  HttpRequest request;
  request.method = "POST";
  request.url = endpoint_;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Upload-Length", std::to_string(length));
  const std::string encoded = EncodeMetadata(metadata);
  if (!encoded.empty()) request.headers.emplace_back("Upload-Metadata", encoded);
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return MakeError(response.error().WithContext("tus create"));
  if (response->status == 404) {
    return MakeError(ErrorKind::kNotFound, "tus create: no upload endpoint at " + endpoint_ +
                                               " (HTTP 404); check the configured upload URL");
  }
  if (response->status != 201) return StatusError("tus create", endpoint_, *response);
  const std::string location = response->Header("Location");
  if (location.empty()) {
    return MakeError(ErrorKind::kProtocol, "tus create at " + endpoint_ + ": HTTP 201 without a Location header");
  }
  return ResolveUrl(endpoint_, location);
}

Expected<std::uint64_t> Client::QueryOffset(const std::string& upload_url) {
  HttpRequest request;
  request.method = "HEAD";
  request.url = upload_url;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Cache-Control", "no-store");
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return MakeError(response.error().WithContext("tus offset query"));
  if (response->status != 200 && response->status != 204) {
    return StatusError("tus offset query", upload_url, *response);
  }
  const std::string text = response->Header("Upload-Offset");
  std::uint64_t offset = 0;
  if (!ParseOffset(text, &offset)) {
    return MakeError(ErrorKind::kProtocol, "tus offset query " + upload_url + ": invalid Upload-Offset \"" +
                                               Excerpt(text) + "\" in HTTP " + std::to_string(response->status));
  }
  return offset;
}

Expected<std::uint64_t> Client::Patch(const std::string& upload_url, std::uint64_t offset,
                                      std::span<const std::uint8_t> bytes) {
  HttpRequest request;
  request.method = "PATCH";
  request.url = upload_url;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Upload-Offset", std::to_string(offset));
  request.headers.emplace_back("Content-Type", "application/offset+octet-stream");
  request.body = bytes;
  auto response = http_.Perform(request, 1 << 20);
  if (!response) return MakeError(response.error().WithContext("tus patch at offset " + std::to_string(offset)));
  if (response->status == 409) {
    const std::string server_offset = response->Header("Upload-Offset");
    return MakeError(ErrorKind::kProtocol,
                     "tus patch " + upload_url + ": offset mismatch (HTTP 409): we sent Upload-Offset " +
                         std::to_string(offset) + " but the server's offset differs" +
                         (server_offset.empty() ? "" : " (server: " + server_offset + ")") +
                         "; query the offset with HEAD again and continue from there");
  }
  if (response->status != 204) return StatusError("tus patch", upload_url, *response);
  std::uint64_t new_offset = 0;
  const std::string text = response->Header("Upload-Offset");
  if (!ParseOffset(text, &new_offset)) {
    return MakeError(ErrorKind::kProtocol, "tus patch " + upload_url + ": invalid Upload-Offset \"" + Excerpt(text) +
                                               "\" in HTTP 204");
  }
  if (new_offset < offset || new_offset - offset > bytes.size()) {
    return MakeError(ErrorKind::kProtocol, "tus patch " + upload_url + ": the server reports offset " + text +
                                               " after we sent " + std::to_string(bytes.size()) +
                                               " bytes at offset " + std::to_string(offset));
  }
  return new_offset;
}

Expected<std::uint64_t> Client::UploadFrom(const std::string& upload_url, std::span<const std::uint8_t> data,
                                           std::uint64_t offset, std::uint64_t patch_bytes,
                                           const std::function<void(std::uint64_t)>& on_progress) {
  if (patch_bytes == 0) return MakeError(ErrorKind::kInvalidInput, "tus upload: patch size must be at least 1 byte");
  if (offset > data.size()) {
    return MakeError(ErrorKind::kInvalidInput, "tus upload " + upload_url + ": offset " + std::to_string(offset) +
                                                   " is beyond the data's " + std::to_string(data.size()) + " bytes");
  }
  // Each round either fails or moves the offset forward, so the loop ends after at most
  // data.size() rounds (and normally data.size() / patch_bytes).
  while (offset < data.size()) {
    const std::uint64_t n = std::min<std::uint64_t>(patch_bytes, data.size() - offset);
    auto next = Patch(upload_url, offset, data.subspan(offset, n));
    if (!next) return next;
    if (*next <= offset) {
      return MakeError(ErrorKind::kProtocol, "tus upload " + upload_url + ": the server accepted no bytes at offset " +
                                                 std::to_string(offset));
    }
    offset = *next;
    if (on_progress) on_progress(offset);
  }
  return offset;
}

}  // namespace ctagent::transport::tus
