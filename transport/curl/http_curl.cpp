// HttpClient over one reused libcurl easy handle. curl_easy_reset() between requests clears the
// options but keeps the live connection and the TLS session cache, so consecutive requests to
// the same server skip the TCP and TLS handshakes. The options, callbacks and error mapping are
// shared with AsyncHttp (curl/easy.hpp).
#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "base/log.hpp"
#include "base/url.hpp"
#include "transport/curl/easy.hpp"
#include "transport/http.hpp"
#include "transport/text.hpp"

namespace ctagent::transport {

using detail::ToLower;

// HttpShare::Impl is in curl/easy.hpp (ConfigureEasy hands its CURLSH to each handle).

HttpShare::HttpShare() : impl_(std::make_unique<Impl>()) {
  if (curl::GlobalInit() != CURLE_OK) return;
  impl_->share = curl_share_init();
  if (impl_->share == nullptr) return;  // clients then work unshared
  curl_share_setopt(impl_->share, CURLSHOPT_LOCKFUNC, &Impl::Lock);
  curl_share_setopt(impl_->share, CURLSHOPT_UNLOCKFUNC, &Impl::Unlock);
  curl_share_setopt(impl_->share, CURLSHOPT_USERDATA, impl_.get());
  curl_share_setopt(impl_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(impl_->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  // Not CURL_LOCK_DATA_CONNECT: each client keeps its own connection (one per thread, a thread's
  // requests are sequential anyway). A shared connection cache is capped by each handle's
  // CURLOPT_MAXCONNECTS (5) over *all* sharing handles, so with 16 clients libcurl closed a
  // connection after nearly every request and the next one paid a new TCP + TLS handshake.
}

// Every client using the share must be gone first (it holds a shared_ptr to it).
HttpShare::~HttpShare() {
  if (impl_->share != nullptr) curl_share_cleanup(impl_->share);
}

struct HttpClient::Impl {
  HttpOptions options;
  CURL* easy = nullptr;
  bool warned_plain_http = false;
  char error_buffer[CURL_ERROR_SIZE] = {};
};

HttpClient::HttpClient(HttpOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  if (curl::GlobalInit() == CURLE_OK) impl_->easy = curl_easy_init();
}

HttpClient::~HttpClient() {
  if (impl_->easy != nullptr) curl_easy_cleanup(impl_->easy);
}

Expected<HttpResponse> HttpClient::Perform(const HttpRequest& request, std::uint64_t max_response_bytes) {
  Impl& impl = *impl_;
  const std::string shown_url = RedactUrl(request.url);
  if (auto checked = curl::CheckUrl(impl.options, request.url, &impl.warned_plain_http); !checked) {
    return MakeError(checked.error());
  }
  if (impl.easy == nullptr) {
    return MakeError(ErrorKind::kInternal, "libcurl could not be initialised (curl_global_init/curl_easy_init failed)");
  }

  CURL* easy = impl.easy;
  curl_easy_reset(easy);
  impl.error_buffer[0] = '\0';
  const curl::FailureMapper mapper(impl.options, easy, impl.error_buffer);

  // The deadlines count from here, and hold across the one resend below (same time points).
  const auto started = std::chrono::steady_clock::now();
  const auto derived = curl::DeriveDeadline(impl.options, request.body.size(), max_response_bytes);
  const auto fresh_transfer = [&] {
    return curl::MakeTransfer(impl.options, request, request.body.size(), max_response_bytes, started, derived);
  };
  curl::Transfer transfer = fresh_transfer();
  if (curl::ShouldCancel(transfer)) return mapper.Cancelled(shown_url);
  if (curl::PastDeadline(transfer, started)) return mapper.DeadlineError(shown_url, transfer);

  curl::CurlHeaders headers;
  if (auto configured = curl::ConfigureEasy(easy, impl.options, request, transfer, &headers, impl.error_buffer);
      !configured) {
    return MakeError(configured.error());
  }

  CURLcode code = curl_easy_perform(easy);
  if (code == CURLE_SEND_ERROR && !transfer.send_refused && !transfer.stalled && !transfer.cancelled &&
      curl::ReusedWithoutAnswer(easy)) {
    // A kept-alive connection the server closed just as this request went out on it (its close
    // and our send crossed; seen as "Broken pipe"). No byte of an answer came back, so the server
    // did not act on this request: it goes once more, at once, on a new connection. libcurl does
    // this itself when the read fails, not when sending the body fails. (A tus PATCH is safe to
    // repeat in any case: its Upload-Offset turns a repeat into a 409, never duplicate bytes.)
    log::Debug("http", "connection to " + shown_url + " closed by the server as it was reused (" +
                           std::string(impl.error_buffer) + "); sending the request again on a new connection");
    transfer = fresh_transfer();
    impl.error_buffer[0] = '\0';
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
    code = curl_easy_perform(easy);
  }
  // The header list and the transfer belong to this call: leave no pointers to them in the handle.
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(easy, CURLOPT_READDATA, nullptr);
  curl_easy_setopt(easy, CURLOPT_SEEKDATA, nullptr);
  if (code != CURLE_OK) return mapper.Map(code, shown_url, transfer);
  curl::FinishResponse(easy, transfer);
  return std::move(transfer.response);
}

std::string HttpResponse::Header(const std::string& name) const {
  const std::string lower = ToLower(name);
  for (const auto& [key, value] : headers) {
    if (ToLower(key) == lower) return value;
  }
  return {};
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

