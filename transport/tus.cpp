// tus 1.0 client: core protocol (OPTIONS, HEAD, PATCH) and the creation, creation-with-upload,
// checksum, termination and expiration extensions.
#include "transport/tus.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <iomanip>
#include <locale>
#include <set>
#include <sstream>
#include <string_view>

#include "base/url.hpp"

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

bool ParseOffset(std::string_view text, std::uint64_t* out) {
  const auto parsed = ParseUploadOffset(text);
  if (parsed) *out = *parsed;
  return parsed.has_value();
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

// URLs in messages: a server-given URL may carry user:password@ or control characters.
std::string Shown(std::string_view url) { return RedactUrl(url); }

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string HeaderOf(const HeaderList& headers, std::string_view lower_name) {
  for (const auto& [name, value] : headers) {
    if (Lower(name) == lower_name) return value;
  }
  return {};
}

}  // namespace

std::optional<std::uint64_t> ParseUploadOffset(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::vector<std::string> ParseList(std::string_view text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  // Each round consumes at least one character or ends, and the list is capped.
  while (pos <= text.size() && out.size() < kMaxListItems) {
    const auto comma = text.find(',', pos);
    std::string_view item = text.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    const auto first = item.find_first_not_of(" \t");
    item = first == std::string_view::npos ? std::string_view{} : item.substr(first);
    item = item.substr(0, item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::string Origin::ToString() const { return scheme + "://" + host + ":" + std::to_string(port); }

std::optional<Origin> ParseOrigin(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  Origin origin;
  origin.scheme = Lower(url.substr(0, scheme_end));
  if (origin.scheme != "https" && origin.scheme != "http") return std::nullopt;
  const std::size_t begin = scheme_end + 3;
  const auto end = url.find_first_of("/?#", begin);
  std::string_view authority = url.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin);
  // Userinfo is not part of the origin (ResolveUploadLocation refuses it separately).
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) authority = authority.substr(at + 1);
  std::string_view host = authority;
  std::string_view port_text;
  if (authority.starts_with('[')) {  // IPv6 literal: [::1]:443
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(0, close + 1);
    const std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return std::nullopt;
      port_text = rest.substr(1);
    }
  } else if (const auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port_text = authority.substr(colon + 1);
  }
  if (host.empty()) return std::nullopt;
  origin.host = Lower(host);
  origin.port = origin.scheme == "https" ? 443 : 80;
  if (!port_text.empty()) {
    const auto port = ParseUploadOffset(port_text);
    if (!port || *port == 0 || *port > 65535) return std::nullopt;
    origin.port = static_cast<std::uint16_t>(*port);
  }
  return origin;
}

std::vector<Origin> ParseOriginList(std::string_view space_separated) {
  std::vector<Origin> out;
  std::size_t pos = 0;
  while (pos < space_separated.size()) {
    const auto space = space_separated.find(' ', pos);
    const auto item = space_separated.substr(pos, space == std::string_view::npos ? std::string_view::npos : space - pos);
    if (auto origin = ParseOrigin(item)) out.push_back(std::move(*origin));
    if (space == std::string_view::npos) break;
    pos = space + 1;
  }
  return out;
}

Expected<std::string> ResolveUploadLocation(const std::string& endpoint, std::string_view location,
                                            const std::vector<Origin>& allowed) {
  const std::string shown = Shown(location);
  if (location.empty()) {
    return MakeError(ErrorKind::kProtocol, "tus create at " + Shown(endpoint) + ": HTTP 201 without a Location header");
  }
  // A URL we journal and send requests to must be one line of printable ASCII: no CR/LF that
  // could split a log line or a request, no spaces.
  for (const char c : location) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return MakeError(ErrorKind::kProtocol, "tus create at " + Shown(endpoint) + ": the server's Location \"" + shown +
                                                 "\" contains spaces, control or non-ASCII characters; the imaging "
                                                 "center's upload server must send a plain URL");
    }
  }
  const std::string url = ResolveUrl(endpoint, std::string(location));
  const auto origin = ParseOrigin(url);
  if (!origin) {
    return MakeError(ErrorKind::kProtocol, "tus create at " + Shown(endpoint) + ": the server's Location \"" + shown +
                                               "\" is not an http(s) URL with a host");
  }
  const auto scheme_end = url.find("://");
  const auto authority_end = url.find_first_of("/?#", scheme_end + 3);
  if (url.substr(scheme_end + 3, authority_end - (scheme_end + 3)).find('@') != std::string::npos) {
    return MakeError(ErrorKind::kProtocol, "tus create at " + Shown(endpoint) + ": the server's Location \"" + shown +
                                               "\" carries user credentials (user:password@); they are not sent or "
                                               "stored; the imaging center's upload server must send a plain URL");
  }
  const auto own = ParseOrigin(endpoint);
  if (own && *origin == *own) return url;
  if (std::find(allowed.begin(), allowed.end(), *origin) != allowed.end()) return url;
  return MakeError(ErrorKind::kPermission,
                   "tus create at " + Shown(endpoint) + ": the server sent the upload to " + Shown(origin->ToString()) +
                       " (Location \"" + shown + "\"), which is not the upload origin " +
                       (own ? Shown(own->ToString()) : Shown(endpoint)) +
                       "; no byte was sent there. If that server belongs to the imaging center, add " +
                       Shown(origin->ToString()) + " to cloud.upload_origins_allowed");
}

Expected<ServerCapabilities> ParseDiscovery(long status, const HeaderList& headers, const std::string& shown_endpoint,
                                            FailureClass* failure, std::string* label) {
  const std::string version_header = HeaderOf(headers, "tus-version");
  const std::string resumable = HeaderOf(headers, "tus-resumable");
  auto fail = [&](FailureClass f, std::string l, Error error) -> Expected<ServerCapabilities> {
    *failure = f;
    *label = std::move(l);
    return MakeError(error.WithFailure(f));
  };
  ServerCapabilities caps;
  const bool success = status == 200 || status == 204;
  // A tus server that does not implement OPTIONS (the protocol lets a client skip discovery)
  // but labels its answer as tus 1.0.0: usable with the core protocol and creation.
  if (!success && (status == 405 || status == 501) && version_header.empty() && resumable == kTusVersion) {
    caps.versions = {kTusVersion};
    caps.extensions = {"creation"};
    caps.version_inferred = true;
    *failure = FailureClass::kNone;
    label->clear();
    return caps;
  }
  if (!success) {
    // Without Tus-Resumable the answer is not from a tus server at all (a redirect, a web
    // server's 405): a wrong cloud.upload_url, which no retry mends.
    const bool tus_answer = !resumable.empty() || !version_header.empty();
    return fail(tus_answer ? FailureClass::kProtocol : FailureClass::kEndpoint, "http-" + std::to_string(status),
                Error(ErrorKind::kProtocol, "tus discovery (OPTIONS): " + shown_endpoint + " answered HTTP " +
                                                std::to_string(status) + " instead of 200 or 204" +
                                                (tus_answer ? std::string() : ", without tus headers; check cloud.upload_url") +
                                                " (nothing was uploaded)"));
  }
  caps.versions = ParseList(version_header);
  caps.extensions = ParseList(HeaderOf(headers, "tus-extension"));
  caps.checksum_algorithms = ParseList(HeaderOf(headers, "tus-checksum-algorithm"));
  const std::string max = HeaderOf(headers, "tus-max-size");
  if (!max.empty()) {
    const auto parsed = ParseUploadOffset(max);
    if (!parsed) {
      return fail(FailureClass::kProtocol, "tus-max-size",
                  Error(ErrorKind::kProtocol, "tus discovery: " + shown_endpoint + " sent an invalid Tus-Max-Size \"" +
                                                  Excerpt(max) + "\" (HTTP " + std::to_string(status) +
                                                  "); it must be a decimal number of bytes"));
    }
    caps.max_size = *parsed;
  }
  if (version_header.empty()) {
    if (resumable == kTusVersion) {
      // Tus-Version is a MUST of the OPTIONS answer, but servers that leave it out and label every
      // answer Tus-Resumable: 1.0.0 speak 1.0.0: take them at their word.
      caps.versions = {kTusVersion};
      caps.version_inferred = true;
      *failure = FailureClass::kNone;
      label->clear();
      return caps;
    }
    if (resumable.empty()) {
      return fail(FailureClass::kEndpoint, "not-tus",
                  Error(ErrorKind::kProtocol,
                        "tus discovery: " + shown_endpoint + " answered OPTIONS with HTTP " + std::to_string(status) +
                            " but without Tus-Version or Tus-Resumable: it is not a tus upload endpoint; check "
                            "cloud.upload_url (nothing was uploaded)"));
    }
    return fail(FailureClass::kVersion, "tus-version",
                Error(ErrorKind::kUnsupported, "tus discovery: " + shown_endpoint + " answered OPTIONS with HTTP " +
                                                   std::to_string(status) + ", Tus-Resumable \"" + Excerpt(resumable) +
                                                   "\" and no Tus-Version: it does not speak tus " + kTusVersion +
                                                   "; the imaging center must offer tus 1.0.0 (nothing was uploaded)"));
  }
  if (std::find(caps.versions.begin(), caps.versions.end(), kTusVersion) == caps.versions.end()) {
    return fail(FailureClass::kVersion, "tus-version",
                Error(ErrorKind::kUnsupported, "tus discovery: " + shown_endpoint + " offers tus versions \"" +
                                                   Excerpt(version_header) + "\" (Tus-Version, HTTP " +
                                                   std::to_string(status) + "), not " + kTusVersion +
                                                   "; the imaging center must offer tus 1.0.0 (nothing was uploaded)"));
  }
  *failure = FailureClass::kNone;
  label->clear();
  return caps;
}


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

std::string Failure::Label() const { return label.empty() ? std::string(ToString(failure)) : label; }

namespace {

// Sets `*failure` and hands the error on, carrying the same class.
Unexpected Fail(Failure* failure, FailureClass failure_class, Unexpected error, std::string label = {}) {
  failure->failure = failure_class;
  failure->label = std::move(label);
  return MakeError(error.error.WithFailure(failure_class));
}

// No usable answer: the HTTP layer's error, in the request's words, with its class.
Unexpected FromHttp(const Error& error, const std::string& context, Failure* failure) {
  return Fail(failure, error.failure(), MakeError(error.WithContext(context)));
}

void Succeeded(Failure* failure) {
  failure->failure = FailureClass::kNone;
  failure->label.clear();
}

std::optional<std::int64_t> ExpiresOf(const HttpResponse& response) {
  const std::string text = response.Header("Upload-Expires");
  if (text.empty()) return std::nullopt;
  return ParseHttpDate(text);
}

}  // namespace

Protocol::Protocol(std::string endpoint) : endpoint_(std::move(endpoint)) {}

bool Protocol::OriginAllowed(const std::string& upload_url) const {
  const auto origin = ParseOrigin(upload_url);
  if (!origin) return false;
  if (const auto own = ParseOrigin(endpoint_); own && *own == *origin) return true;
  return std::find(allowed_origins_.begin(), allowed_origins_.end(), *origin) != allowed_origins_.end();
}

// An upload URL (journaled by an earlier run, or handed in) that is off the upload origin gets
// no request: the bytes it would carry must not leave for a host nobody configured.
Unexpected Protocol::ForeignUrl(const std::string& what, const std::string& url, Failure* failure) const {
  const auto own = ParseOrigin(endpoint_);
  const auto origin = ParseOrigin(url);
  return Fail(failure, FailureClass::kLocal,
              MakeError(ErrorKind::kPermission,
                        what + ": upload URL " + Shown(url) + " is not on the upload origin " +
                            (own ? Shown(own->ToString()) : Shown(endpoint_)) + (origin ? "" : " (not an http(s) URL)") +
                            " nor in cloud.upload_origins_allowed; no request was sent to it"),
              "foreign-location");
}

// Statuses every tus request treats the same way. `what` names the request ("tus patch").
Unexpected Protocol::StatusError(const std::string& what, const std::string& url, const HttpResponse& response,
                                 std::uint64_t length, Failure* failure) const {
  const long s = response.status;
  const std::string status = "HTTP " + std::to_string(s);
  const std::string shown = Shown(url);
  if (s == 404 || s == 410) {
    return Fail(failure, FailureClass::kUploadGone,
                MakeError(ErrorKind::kNotFound, what + ": the server no longer knows upload URL " + shown + " (" +
                                                    status + (s == 410 ? ", expired or terminated" : "") +
                                                    "); create it again"));
  }
  if (s == 401 || s == 403) {
    return Fail(failure, FailureClass::kAuth,
                MakeError(ErrorKind::kPermission, what + ": " + shown + " refused this terminal (" + status +
                                                      "); check its credentials or client certificate with the "
                                                      "imaging center"));
  }
  if (s == 413) {
    std::string max = response.Header("Tus-Max-Size");
    if (max.empty() && capabilities_ && capabilities_->max_size > 0) max = std::to_string(capabilities_->max_size);
    return Fail(failure, FailureClass::kTooLarge,
                MakeError(ErrorKind::kInvalidInput,
                          what + ": " + shown + " refuses an upload of " + std::to_string(length) + " bytes (" + status +
                              ": too large; the server accepts at most " +
                              (max.empty() ? "an unannounced" : Excerpt(max)) +
                              " bytes); lower the chunk size or ask the imaging center to raise its limit"));
  }
  if (s == 412) {
    return Fail(failure, FailureClass::kVersion,
                MakeError(ErrorKind::kUnsupported, what + ": " + shown + " does not speak tus " + kTusVersion + " (" +
                                                       status + ", server versions: \"" +
                                                       Excerpt(response.Header("Tus-Version")) +
                                                       "\"); the imaging center must offer tus 1.0.0"),
                "http-412");
  }
  if (s == 409) {
    return Fail(failure, FailureClass::kConflict,
                MakeError(ErrorKind::kProtocol,
                          what + ": " + shown + " answered " + status + " (conflict); query the offset again"));
  }
  if (s == 423) {
    return Fail(failure, FailureClass::kLocked,
                MakeError(ErrorKind::kNetwork, what + ": upload " + shown + " is locked by another request (" +
                                                   status + "); retry after a backoff"));
  }
  if (s == 460) {
    return Fail(failure, FailureClass::kChecksum,
                MakeError(ErrorKind::kNetwork, what + ": " + shown + " reports a checksum mismatch (" + status +
                                                   "): the bytes were damaged on the way; resend them"));
  }
  if (s >= 500) {
    return Fail(failure, FailureClass::kServerError,
                MakeError(ErrorKind::kNetwork, what + ": temporary failure at " + shown + " (" + status + "); retry later"));
  }
  return Fail(failure, FailureClass::kProtocol,
              MakeError(ErrorKind::kProtocol, what + ": " + shown + " answered unexpected " + status + ": " +
                                                  Excerpt(response.body)),
              "http-" + std::to_string(s));
}

HttpRequest Protocol::DiscoverRequest() const {
  HttpRequest request;
  request.method = "OPTIONS";
  request.url = endpoint_;
  request.headers = BaseHeaders();
  return request;
}

Expected<ServerCapabilities> Protocol::ReadDiscover(const Expected<HttpResponse>& response,
                                                    Failure* failure) const {
  if (!response) return FromHttp(response.error(), "tus discovery (OPTIONS)", failure);
  const long s = response->status;
  if (s == 404) {
    return Fail(failure, FailureClass::kEndpoint,
                MakeError(ErrorKind::kNotFound, "tus discovery: no upload endpoint at " + Shown(endpoint_) +
                                                    " (HTTP 404); check cloud.upload_url"),
                "http-404");
  }
  // Statuses with a meaning of their own (auth, 412, 5xx...) keep it; the rest is read below.
  if (s == 401 || s == 403 || s == 412 || s == 413 || s == 423 || s >= 500) {
    return StatusError("tus discovery (OPTIONS)", endpoint_, *response, 0, failure);
  }
  FailureClass failure_class = FailureClass::kNone;
  std::string label;
  auto caps = ParseDiscovery(s, response->headers, Shown(endpoint_), &failure_class, &label);
  if (!caps) return Fail(failure, failure_class, MakeError(caps.error()), std::move(label));
  Succeeded(failure);
  return caps;
}

Expected<HttpRequest> Protocol::CreateRequest(std::uint64_t length, const Metadata& metadata,
                                              std::span<const std::uint8_t> first_bytes, Failure* failure) const {
  if (auto valid = ValidateMetadata(metadata); !valid) {
    return Fail(failure, FailureClass::kLocal, MakeError(valid.error()));
  }
  if (capabilities_ && capabilities_->max_size > 0 && length > capabilities_->max_size) {
    return Fail(failure, FailureClass::kTooLarge,
                MakeError(ErrorKind::kInvalidInput,
                          "tus create: " + Shown(endpoint_) + " accepts uploads of at most " +
                              std::to_string(capabilities_->max_size) + " bytes (Tus-Max-Size) and this one has " +
                              std::to_string(length) +
                              "; lower the chunk size or ask the imaging center to raise its limit"),
                "tus-max-size");
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
  }
  Succeeded(failure);
  return request;
}

Expected<Created> Protocol::ReadCreate(const Expected<HttpResponse>& response,
                                       std::uint64_t length, std::size_t body_size, Failure* failure) const {
  if (!response) return FromHttp(response.error(), "tus create", failure);
  if (response->status == 404) {
    return Fail(failure, FailureClass::kEndpoint,
                MakeError(ErrorKind::kNotFound, "tus create: no upload endpoint at " + Shown(endpoint_) +
                                                    " (HTTP 404); check cloud.upload_url"),
                "http-404");
  }
  // 201 Created is the protocol's answer; @uploadx/core answers 200 when the POST carried bytes
  // (creation-with-upload). Either way the Location is what matters.
  if (response->status != 201 && response->status != 200) {
    return StatusError("tus create", endpoint_, *response, length, failure);
  }
  auto url = ResolveUploadLocation(endpoint_, response->Header("Location"), allowed_origins_);
  if (!url) {
    const bool foreign = url.error().kind() == ErrorKind::kPermission;
    // A foreign origin needs a person (configuration or the server); a malformed Location is
    // the server's protocol error.
    return Fail(failure, foreign ? FailureClass::kLocal : FailureClass::kProtocol, MakeError(url.error()),
                foreign ? "foreign-location" : "bad-location");
  }
  Created created;
  created.url = std::move(*url);
  created.expires = ExpiresOf(*response);
  if (body_size > 0) {
    // The server says how much of the body it kept; without the header, assume nothing (the
    // next PATCH at 0 then either succeeds or gets a 409 and resynchronises).
    std::uint64_t accepted = 0;
    const std::string text = response->Header("Upload-Offset");
    if (!text.empty() && (!ParseOffset(text, &accepted) || accepted > body_size)) {
      return Fail(failure, FailureClass::kProtocol,
                  MakeError(ErrorKind::kProtocol, "tus create at " + Shown(endpoint_) + ": invalid Upload-Offset \"" +
                                                      Excerpt(text) + "\" in HTTP " + std::to_string(response->status)));
    }
    created.offset = accepted;
  }
  Succeeded(failure);
  return created;
}

Expected<HttpRequest> Protocol::QueryRequest(const std::string& upload_url, Failure* failure) const {
  if (!OriginAllowed(upload_url)) return ForeignUrl("tus offset query", upload_url, failure);
  HttpRequest request;
  request.method = "HEAD";
  request.url = upload_url;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Cache-Control", "no-store");
  Succeeded(failure);
  return request;
}

Expected<UploadInfo> Protocol::ReadQuery(const Expected<HttpResponse>& response,
                                         const std::string& upload_url, Failure* failure) const {
  if (!response) return FromHttp(response.error(), "tus offset query", failure);
  if (response->status != 200 && response->status != 204) {
    return StatusError("tus offset query", upload_url, *response, 0, failure);
  }
  UploadInfo info;
  const std::string text = response->Header("Upload-Offset");
  if (!ParseOffset(text, &info.offset)) {
    return Fail(failure, FailureClass::kProtocol,
                MakeError(ErrorKind::kProtocol, "tus offset query " + Shown(upload_url) + ": invalid Upload-Offset \"" +
                                                    Excerpt(text) + "\" in HTTP " + std::to_string(response->status)));
  }
  std::uint64_t length = 0;
  if (ParseOffset(response->Header("Upload-Length"), &length)) info.length = length;
  info.expires = ExpiresOf(*response);
  Succeeded(failure);
  return info;
}

bool Protocol::PatchNeedsBytes() const {
  return capabilities_ && capabilities_->Has("checksum") && !capabilities_->ChecksumAlgorithm().empty();
}

Expected<HttpRequest> Protocol::PatchRequest(const std::string& upload_url, std::uint64_t offset,
                                             std::span<const std::uint8_t> bytes, Failure* failure) const {
  if (!OriginAllowed(upload_url)) return ForeignUrl("tus patch", upload_url, failure);
  HttpRequest request;
  request.method = "PATCH";
  request.url = upload_url;
  request.headers = BaseHeaders();
  request.headers.emplace_back("Upload-Offset", std::to_string(offset));
  request.headers.emplace_back("Content-Type", "application/offset+octet-stream");
  if (PatchNeedsBytes()) {
    request.headers.emplace_back("Upload-Checksum", ChecksumHeader(capabilities_->ChecksumAlgorithm(), bytes));
  }
  Succeeded(failure);
  return request;
}

Expected<std::uint64_t> Protocol::ReadPatch(const Expected<HttpResponse>& response,
                                            const std::string& upload_url, std::uint64_t offset, std::uint64_t size,
                                            Failure* failure, std::optional<std::int64_t>* expires) const {
  if (!response) return FromHttp(response.error(), "tus patch at offset " + std::to_string(offset), failure);
  const std::string shown = Shown(upload_url);
  if (response->status == 409) {
    const std::string server_offset = response->Header("Upload-Offset");
    return Fail(failure, FailureClass::kConflict,
                MakeError(ErrorKind::kProtocol, "tus patch " + shown +
                                                    ": offset mismatch (HTTP 409): we sent Upload-Offset " +
                                                    std::to_string(offset) + " but the server's offset differs" +
                                                    (server_offset.empty() ? "" : " (server: " + Excerpt(server_offset) + ")") +
                                                    "; query the offset with HEAD again and continue from there"));
  }
  // 204 is the protocol's answer; @uploadx/core answers the PATCH that completes an upload with
  // 200 and a JSON description of the file. The Upload-Offset header decides either way.
  if (response->status != 204 && response->status != 200) {
    return StatusError("tus patch", upload_url, *response, 0, failure);
  }
  if (auto when = ExpiresOf(*response)) *expires = when;
  std::uint64_t new_offset = 0;
  const std::string text = response->Header("Upload-Offset");
  if (!ParseOffset(text, &new_offset)) {
    return Fail(failure, FailureClass::kProtocol,
                MakeError(ErrorKind::kProtocol, "tus patch " + shown + ": invalid Upload-Offset \"" + Excerpt(text) +
                                                    "\" in HTTP " + std::to_string(response->status)));
  }
  if (new_offset < offset || new_offset - offset > size) {
    return Fail(failure, FailureClass::kProtocol,
                MakeError(ErrorKind::kProtocol, "tus patch " + shown + ": the server reports offset " + text +
                                                    " after we sent " + std::to_string(size) + " bytes at offset " +
                                                    std::to_string(offset)));
  }
  Succeeded(failure);
  return new_offset;
}

Expected<HttpRequest> Protocol::TerminateRequest(const std::string& upload_url, Failure* failure) const {
  if (!OriginAllowed(upload_url)) return ForeignUrl("tus termination", upload_url, failure);
  HttpRequest request;
  request.method = "DELETE";
  request.url = upload_url;
  request.headers = BaseHeaders();
  Succeeded(failure);
  return request;
}

Status Protocol::ReadTerminate(const Expected<HttpResponse>& response,
                               const std::string& upload_url, Failure* failure) const {
  if (!response) return FromHttp(response.error(), "tus termination", failure);
  if (response->status == 204 || response->status == 404 || response->status == 410) {
    Succeeded(failure);
    return Ok();
  }
  return StatusError("tus termination", upload_url, *response, 0, failure);
}

PatchRecovery::Step PatchRecovery::After(FailureClass failure) {
  if (failure == FailureClass::kChecksum && checksum_resends < kMaxChecksumResends) {
    ++checksum_resends;  // the server kept nothing of that PATCH: send the same bytes again
    return Step::kResend;
  }
  // A connection lost during the PATCH leaves the server's offset unknown: it may have kept
  // part of the bytes, or answered before reading them (@tus/server sends its 409 and closes)
  // while our send failed. One HEAD tells; if the network is really gone it fails too, and
  // the caller's retry policy takes over.
  if (failure == FailureClass::kConnectionLost && lost_resyncs < kMaxLostResyncs) {
    ++lost_resyncs;
    return Step::kResync;
  }
  if (failure == FailureClass::kConflict && conflict_resyncs < kMaxConflictResyncs) {
    ++conflict_resyncs;
    return Step::kResync;
  }
  return Step::kGiveUp;
}

Client::Client(HttpClient& http, std::string endpoint) : http_(http), protocol_(std::move(endpoint)) {}

Expected<HttpResponse> Client::Send(const HttpRequest& request) { return http_.Perform(request, 1 << 20); }

Expected<ServerCapabilities> Client::Discover() {
  const auto response = Send(protocol_.DiscoverRequest());
  Failure failure;
  auto caps = protocol_.ReadDiscover(response, &failure);
  if (caps) protocol_.SetCapabilities(*caps);
  return Note(std::move(caps), failure);
}

Expected<std::string> Client::Create(std::uint64_t length, const Metadata& metadata) {
  auto created = CreateWithUpload(length, metadata, {});
  if (!created) return MakeError(created.error());
  return created->url;
}

Expected<Created> Client::CreateWithUpload(std::uint64_t length, const Metadata& metadata,
                                           std::span<const std::uint8_t> first_bytes) {
  Failure failure;
  auto request = protocol_.CreateRequest(length, metadata, first_bytes, &failure);
  if (!request) return Note<Created>(MakeError(request.error()), failure);
  if (!request->body.empty()) request->before_send = before_send_;
  const auto response = Send(*request);
  auto created = protocol_.ReadCreate(response, length, request->body.size(), &failure);
  if (created && created->expires) last_expires_ = created->expires;
  return Note(std::move(created), failure);
}

Expected<std::uint64_t> Client::QueryOffset(const std::string& upload_url) {
  auto info = Query(upload_url);
  if (!info) return MakeError(info.error());
  return info->offset;
}

Expected<UploadInfo> Client::Query(const std::string& upload_url) {
  Failure failure;
  auto request = protocol_.QueryRequest(upload_url, &failure);
  if (!request) return Note<UploadInfo>(MakeError(request.error()), failure);
  const auto response = Send(*request);
  auto info = protocol_.ReadQuery(response, upload_url, &failure);
  if (info && info->expires) last_expires_ = info->expires;
  return Note(std::move(info), failure);
}

Expected<std::uint64_t> Client::Patch(const std::string& upload_url, std::uint64_t offset,
                                      std::span<const std::uint8_t> bytes) {
  Failure failure;
  auto request = protocol_.PatchRequest(upload_url, offset, bytes, &failure);
  if (!request) return Note<std::uint64_t>(MakeError(request.error()), failure);
  request->body = bytes;
  request->before_send = before_send_;
  std::uint64_t sent = 0;
  request->on_upload_progress = [&sent](std::uint64_t n) { sent = n; };
  const auto response = Send(*request);
  body_bytes_sent_ += sent;
  return Note(protocol_.ReadPatch(response, upload_url, offset, bytes.size(), &failure, &last_expires_),
              failure);
}

Status Client::Terminate(const std::string& upload_url) {
  Failure failure;
  auto request = protocol_.TerminateRequest(upload_url, &failure);
  if (!request) return Note<void>(MakeError(request.error()), failure);
  const auto response = Send(*request);
  return Note(protocol_.ReadTerminate(response, upload_url, &failure), failure);
}

Expected<std::uint64_t> Client::UploadFrom(const std::string& upload_url, std::span<const std::uint8_t> data,
                                           std::uint64_t offset, std::uint64_t patch_bytes,
                                           const std::function<void(std::uint64_t)>& on_progress) {
  if (patch_bytes == 0) {
    return Note<std::uint64_t>(MakeError(ErrorKind::kInvalidInput, "tus upload: patch size must be at least 1 byte"),
                               {FailureClass::kLocal, {}});
  }
  if (offset > data.size()) {
    return Note<std::uint64_t>(MakeError(ErrorKind::kInvalidInput, "tus upload " + Shown(upload_url) + ": offset " +
                                                                       std::to_string(offset) + " is beyond the data's " +
                                                                       std::to_string(data.size()) + " bytes"),
                               {FailureClass::kLocal, {}});
  }
  PatchRecovery recovery;
  // Each round either fails, moves the offset forward, or spends one of the bounded resends
  // or resyncs, so the loop ends.
  while (offset < data.size()) {
    const std::uint64_t n = std::min<std::uint64_t>(patch_bytes, data.size() - offset);
    auto next = Patch(upload_url, offset, data.subspan(offset, n));
    if (!next) {
      const PatchRecovery::Step step = recovery.After(last_failure_.failure);
      if (step == PatchRecovery::Step::kResend) continue;
      if (step == PatchRecovery::Step::kGiveUp) return next;
      auto server = Query(upload_url);
      if (!server) return MakeError(server.error());
      if (server->offset > data.size()) {
        return Note<std::uint64_t>(
            MakeError(ErrorKind::kProtocol, "tus upload " + Shown(upload_url) + ": the server's offset " +
                                                std::to_string(server->offset) + " is beyond the data's " +
                                                std::to_string(data.size()) + " bytes"),
            {FailureClass::kProtocol, {}});
      }
      offset = server->offset;
      if (on_progress) on_progress(offset);
      continue;
    }
    if (*next <= offset) {
      return Note<std::uint64_t>(MakeError(ErrorKind::kProtocol, "tus upload " + Shown(upload_url) +
                                                                     ": the server accepted no bytes at offset " +
                                                                     std::to_string(offset)),
                                 {FailureClass::kProtocol, {}});
    }
    offset = *next;
    if (on_progress) on_progress(offset);
  }
  return offset;
}

}  // namespace ctagent::transport::tus
