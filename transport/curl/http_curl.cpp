// HttpClient over one reused libcurl easy handle. curl_easy_reset() between requests clears the
// options but keeps the live connection and the TLS session cache, so consecutive requests to
// the same server skip the TCP and TLS handshakes.
#include <curl/curl.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>

#include "agent/common/log.hpp"
#include "transport/text.hpp"
#include "transport/http.hpp"

namespace ctagent::transport {
namespace {

constexpr std::string_view kComponent = "http";

using detail::ToLower;

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r' || text.back() == '\n')) {
    text.remove_suffix(1);
  }
  return text;
}

// curl_global_init is not thread-safe and must run once per process, before any handle exists.
CURLcode GlobalInit() {
  static std::once_flag once;
  static CURLcode result = CURLE_OK;
  std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  return result;
}

// "scheme" of a URL in lower case, or "" when the URL has none.
std::string SchemeOf(std::string_view url) {
  const auto colon = url.find("://");
  if (colon == std::string_view::npos || colon == 0) return {};
  return ToLower(url.substr(0, colon));
}

// The URL with any "user:password@" removed, so it can go into messages and logs.
std::string RedactUrl(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return std::string(url);
  const auto authority_begin = scheme_end + 3;
  const auto authority_end = url.find_first_of("/?#", authority_begin);
  const auto authority =
      url.substr(authority_begin, authority_end == std::string_view::npos ? std::string_view::npos
                                                                           : authority_end - authority_begin);
  const auto at = authority.rfind('@');
  if (at == std::string_view::npos) return std::string(url);
  std::string out(url.substr(0, authority_begin));
  out += authority.substr(at + 1);
  if (authority_end != std::string_view::npos) out += url.substr(authority_end);
  return out;
}

struct Transfer {
  HttpResponse response;
  std::uint64_t max_body = 0;
  bool body_too_large = false;
  const std::function<void(std::uint64_t)>* on_upload_progress = nullptr;
  curl_off_t last_reported_upload = -1;
};

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (transfer->response.body.size() + n > transfer->max_body) {
    transfer->body_too_large = true;
    return 0;  // makes curl abort the transfer with CURLE_WRITE_ERROR
  }
  transfer->response.body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t n = size * count;
  const std::string_view line(data, n);
  // A status line starts a new response (after a 100 Continue or a redirect): only the final
  // response's headers are kept.
  if (line.starts_with("HTTP/")) {
    transfer->response.headers.clear();
    return n;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return n;  // the blank line that ends the header block
  transfer->response.headers.emplace_back(ToLower(Trim(line.substr(0, colon))),
                                          std::string(Trim(line.substr(colon + 1))));
  return n;
}

int OnProgress(void* user, curl_off_t /*dltotal*/, curl_off_t /*dlnow*/, curl_off_t /*ultotal*/, curl_off_t ulnow) {
  auto* transfer = static_cast<Transfer*>(user);
  if (transfer->on_upload_progress != nullptr && *transfer->on_upload_progress && ulnow != transfer->last_reported_upload) {
    transfer->last_reported_upload = ulnow;
    (*transfer->on_upload_progress)(static_cast<std::uint64_t>(ulnow));
  }
  return 0;
}

struct HeaderListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using CurlHeaders = std::unique_ptr<curl_slist, HeaderListDeleter>;

bool AppendHeader(CurlHeaders& list, const std::string& line) {
  curl_slist* next = curl_slist_append(list.get(), line.c_str());
  if (next == nullptr) return false;
  list.release();
  list.reset(next);
  return true;
}

bool HasHeader(const HeaderList& headers, std::string_view name) {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const auto& h) { return ToLower(h.first) == ToLower(name); });
}

bool IsUnknownIssuer(long verify_result) {
  switch (verify_result) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      return true;
    default:
      return false;
  }
}

}  // namespace

struct HttpClient::Impl {
  HttpOptions options;
  CURL* easy = nullptr;
  bool warned_plain_http = false;
  char error_buffer[CURL_ERROR_SIZE] = {};

  Unexpected CertificateError(const std::string& url) const {
    long verify_result = X509_V_OK;
    curl_easy_getinfo(easy, CURLINFO_SSL_VERIFYRESULT, &verify_result);
    const std::string detail = error_buffer[0] != '\0' ? std::string(error_buffer) : "";
    const std::string ca = options.tls.ca_file.empty() ? std::string("the system CA store")
                                                      : "CA file " + options.tls.ca_file.string();
    if (verify_result == X509_V_ERR_CERT_HAS_EXPIRED) {
      return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url +
                                            " has expired; the imaging center must renew it (" + detail + ")");
    }
    if (verify_result == X509_V_ERR_CERT_NOT_YET_VALID) {
      return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url +
                                            " is not yet valid; check this terminal's clock (" + detail + ")");
    }
    if (IsUnknownIssuer(verify_result)) {
      return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url +
                                            " is not signed by a trusted CA (unknown or self-signed issuer: " +
                                            X509_verify_cert_error_string(verify_result) + "); check that " + ca +
                                            " holds the imaging center's CA");
    }
    // curl checks the host name itself after the chain verified, and then reports no specific
    // OpenSSL code (X509_V_OK or "unspecified"): its message names the host name.
    if (verify_result == X509_V_ERR_HOSTNAME_MISMATCH || verify_result == X509_V_ERR_IP_ADDRESS_MISMATCH ||
        detail.find("host name") != std::string::npos) {
      return MakeError(ErrorKind::kTls, "TLS: host name mismatch: the server certificate of " + url +
                                            " was not issued for this host; check the URL's host name (" +
                                            detail + ")");
    }
    return MakeError(ErrorKind::kTls, "TLS: the server certificate of " + url + " failed verification: " +
                                          X509_verify_cert_error_string(verify_result) + " (" + detail + ")");
  }

  Unexpected MapError(CURLcode code, const std::string& url, const Transfer& transfer) const {
    const std::string detail = error_buffer[0] != '\0' ? std::string(error_buffer) : curl_easy_strerror(code);
    switch (code) {
      case CURLE_PEER_FAILED_VERIFICATION:
        return CertificateError(url);
      case CURLE_SSL_CERTPROBLEM:
        return MakeError(ErrorKind::kTls, "TLS: the client certificate " + options.tls.client_cert_file.string() +
                                              " or key " + options.tls.client_key_file.string() +
                                              " cannot be used (" + detail + "); check both files are PEM and match");
      case CURLE_SSL_CACERT_BADFILE:
        return MakeError(ErrorKind::kInvalidInput, "TLS: cannot load the CA file " + options.tls.ca_file.string() +
                                                       " (" + detail + "); check the path and that it is PEM");
      case CURLE_SSL_CONNECT_ERROR:
      case CURLE_SSL_ENGINE_NOTFOUND:
      case CURLE_SSL_ENGINE_SETFAILED:
      case CURLE_SSL_CIPHER:
      case CURLE_SSL_ENGINE_INITFAILED:
      case CURLE_SSL_SHUTDOWN_FAILED:
      case CURLE_SSL_CRL_BADFILE:
      case CURLE_SSL_ISSUER_ERROR:
      case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      case CURLE_SSL_INVALIDCERTSTATUS:
      case CURLE_SSL_CLIENTCERT:
        return MakeError(ErrorKind::kTls, "TLS handshake with " + url + " failed: " + detail +
                                              " (the server may require a client certificate or a newer TLS version)");
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_RESOLVE_PROXY:
        return MakeError(ErrorKind::kNetwork, "cannot resolve the host of " + url + " (" + detail +
                                                  "); check DNS and the link");
      case CURLE_COULDNT_CONNECT:
        return MakeError(ErrorKind::kNetwork, "cannot connect to " + url + " (" + detail +
                                                  "); the server is down or unreachable, will retry");
      case CURLE_OPERATION_TIMEDOUT:
        if (std::strstr(error_buffer, "too slow") != nullptr) {
          return MakeError(ErrorKind::kNetwork, "transfer with " + url + " stalled: no progress for " +
                                                    std::to_string(options.stall_timeout_s) + " s");
        }
        return MakeError(ErrorKind::kNetwork, "request to " + url + " timed out (" + detail + ")");
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_GOT_NOTHING:
      case CURLE_PARTIAL_FILE:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
        return MakeError(ErrorKind::kNetwork, "connection to " + url + " was lost (" + detail + ")");
      case CURLE_WRITE_ERROR:
        if (transfer.body_too_large) {
          return MakeError(ErrorKind::kProtocol, "the response body from " + url + " exceeds the limit of " +
                                                     std::to_string(transfer.max_body) + " bytes; transfer aborted");
        }
        return MakeError(ErrorKind::kInternal, "cannot store the response from " + url + " (" + detail + ")");
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
        return MakeError(ErrorKind::kInvalidInput, "invalid URL " + url + " (" + detail + ")");
      case CURLE_ABORTED_BY_CALLBACK:
        return MakeError(ErrorKind::kCancelled, "request to " + url + " was cancelled");
      case CURLE_OUT_OF_MEMORY:
        return MakeError(ErrorKind::kInternal, "out of memory during the request to " + url);
      default:
        return MakeError(ErrorKind::kNetwork, "request to " + url + " failed: " + detail);
    }
  }
};

std::string HttpResponse::Header(const std::string& name) const {
  const std::string lower = ToLower(name);
  for (const auto& [key, value] : headers) {
    if (ToLower(key) == lower) return value;
  }
  return {};
}

HttpClient::HttpClient(HttpOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (GlobalInit() == CURLE_OK) impl_->easy = curl_easy_init();
}

HttpClient::~HttpClient() {
  if (impl_->easy != nullptr) curl_easy_cleanup(impl_->easy);
}

Expected<HttpResponse> HttpClient::Perform(const HttpRequest& request, std::uint64_t max_response_bytes) {
  Impl& impl = *impl_;
  const std::string shown_url = RedactUrl(request.url);
  const std::string scheme = SchemeOf(request.url);
  if (scheme == "http") {
    if (!impl.options.allow_plain_http) {
      return MakeError(ErrorKind::kInvalidInput,
                       "refusing plain http:// URL " + shown_url +
                           ": use https://. Plain HTTP is a development-only setting (allow_plain_http)");
    }
    if (!impl.warned_plain_http) {
      impl.warned_plain_http = true;
      log::Warn(kComponent, "plain HTTP is enabled (development-only setting): traffic to " + shown_url +
                                " and other http:// URLs is NOT encrypted or authenticated");
    }
  } else if (scheme != "https") {
    return MakeError(ErrorKind::kInvalidInput, "unsupported URL " + shown_url + ": only https:// is allowed");
  }
  if (impl.easy == nullptr) {
    return MakeError(ErrorKind::kInternal, "libcurl could not be initialised (curl_global_init/curl_easy_init failed)");
  }

  CURL* easy = impl.easy;
  curl_easy_reset(easy);
  impl.error_buffer[0] = '\0';

  Transfer transfer;
  transfer.max_body = max_response_bytes;
  transfer.on_upload_progress = &request.on_upload_progress;

  CurlHeaders headers;
  bool headers_ok = true;
  for (const auto& [name, value] : request.headers) {
    // "Name;" is curl's syntax for a header with an empty value ("Name:" would remove it).
    headers_ok = headers_ok && AppendHeader(headers, value.empty() ? name + ";" : name + ": " + value);
  }
  // No "Expect: 100-continue": it costs a round trip (or a 1 s wait) before every body.
  headers_ok = headers_ok && AppendHeader(headers, "Expect:");
  if (!HasHeader(request.headers, "content-type")) {
    headers_ok = headers_ok && AppendHeader(headers, "Content-Type:");  // not curl's form-data default
  }
  if (!headers_ok) return MakeError(ErrorKind::kInternal, "out of memory building headers for " + shown_url);

  // The setopt calls below cannot fail with valid arguments on this libcurl; a build without TLS 1.2
  // support would fail at perform time with a TLS error naming the cause.
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, impl.error_buffer);
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, impl.options.allow_plain_http ? "http,https" : "https");
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, impl.options.user_agent.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.get());

  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(easy, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  const std::string ca_file = impl.options.tls.ca_file.string();
  const std::string cert_file = impl.options.tls.client_cert_file.string();
  const std::string key_file = impl.options.tls.client_key_file.string();
  if (!ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file.c_str());
  if (!cert_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLCERT, cert_file.c_str());
    curl_easy_setopt(easy, CURLOPT_SSLCERTTYPE, "PEM");
  }
  if (!key_file.empty()) {
    curl_easy_setopt(easy, CURLOPT_SSLKEY, key_file.c_str());
    curl_easy_setopt(easy, CURLOPT_SSLKEYTYPE, "PEM");
  }

  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, static_cast<long>(impl.options.connect_timeout_s));
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, static_cast<long>(impl.options.stall_timeout_s));
  if (impl.options.request_timeout_s > 0) {
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, static_cast<long>(impl.options.request_timeout_s));
  }

  if (!impl.options.basic_auth_user.empty()) {
    curl_easy_setopt(easy, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_BASIC));
    curl_easy_setopt(easy, CURLOPT_USERNAME, impl.options.basic_auth_user.c_str());
    curl_easy_setopt(easy, CURLOPT_PASSWORD, impl.options.basic_auth_password.c_str());
  }

  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &transfer);

  const std::string method = request.method;
  static const char kEmpty[] = "";
  const char* body = request.body.empty() ? kEmpty : reinterpret_cast<const char*>(request.body.data());
  const auto body_size = static_cast<curl_off_t>(request.body.size());
  if (method == "GET") {
    curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
  } else if (method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (method == "POST" || method == "PATCH" || method == "PUT" || !request.body.empty()) {
    // POSTFIELDS points at the caller's span: no copy of the body. The method name is then
    // replaced for PATCH/PUT/others; curl still sends the body.
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, body_size);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    if (method != "POST") curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method.c_str());
  } else {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method.c_str());  // DELETE, OPTIONS without a body
  }

  const CURLcode code = curl_easy_perform(easy);
  // The header list and the body belong to this call: leave no pointers to them in the handle.
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, nullptr);
  if (code != CURLE_OK) return impl.MapError(code, shown_url, transfer);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &transfer.response.status);
  return std::move(transfer.response);
}

namespace {

// Removes "." and ".." segments from a path (RFC 3986 section 5.2.4).
std::string RemoveDotSegments(std::string_view path) {
  std::vector<std::string_view> out;
  const bool absolute = path.starts_with('/');
  std::size_t pos = absolute ? 1 : 0;
  bool trailing_slash = false;
  while (pos <= path.size()) {
    const auto slash = path.find('/', pos);
    const auto segment = path.substr(pos, slash == std::string_view::npos ? std::string_view::npos : slash - pos);
    const bool last = slash == std::string_view::npos;
    if (segment == ".") {
      trailing_slash = last;
    } else if (segment == "..") {
      if (!out.empty()) out.pop_back();
      trailing_slash = last;
    } else {
      out.push_back(segment);
      trailing_slash = false;
    }
    if (last) break;
    pos = slash + 1;
  }
  std::string result = absolute ? "/" : "";
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (i > 0) result += '/';
    result += out[i];
  }
  if (trailing_slash && !result.ends_with('/')) result += '/';
  return result;
}

bool HasScheme(std::string_view url) {
  const auto colon = url.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  if (std::isalpha(static_cast<unsigned char>(url[0])) == 0) return false;
  return std::all_of(url.begin(), url.begin() + static_cast<std::ptrdiff_t>(colon), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
  });
}

}  // namespace

std::string ResolveUrl(const std::string& base, const std::string& location) {
  if (location.empty()) return base;
  if (HasScheme(location)) return location;
  const auto scheme_end = base.find("://");
  if (scheme_end == std::string::npos) return location;  // base is not absolute: nothing to resolve against
  if (location.starts_with("//")) return base.substr(0, scheme_end + 1) + location;
  const auto authority_end = base.find_first_of("/?#", scheme_end + 3);
  const std::string origin = base.substr(0, authority_end);
  std::string base_path = authority_end == std::string::npos ? "" : base.substr(authority_end);
  const std::string base_without_fragment = origin + base_path.substr(0, base_path.find('#'));
  base_path = base_path.substr(0, base_path.find_first_of("?#"));
  if (base_path.empty()) base_path = "/";
  if (location.starts_with('#')) return base_without_fragment + location;
  if (location.starts_with('?')) return origin + base_path + location;
  // Dot segments are removed from the path only, never from the query or fragment.
  const auto suffix_begin = location.find_first_of("?#");
  const std::string path = location.substr(0, suffix_begin);
  const std::string suffix = suffix_begin == std::string::npos ? "" : location.substr(suffix_begin);
  if (location.starts_with('/')) return origin + RemoveDotSegments(path) + suffix;
  // Relative to the base's directory: the base path up to and including its last '/'.
  const std::string directory = base_path.substr(0, base_path.rfind('/') + 1);
  return origin + RemoveDotSegments(directory + path) + suffix;
}

}  // namespace ctagent::transport
