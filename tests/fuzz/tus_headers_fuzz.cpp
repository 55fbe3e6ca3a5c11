// libFuzzer target for the tus header parsing (transport/tus.hpp): what a tus server sends in
// Upload-Offset, Upload-Length, Tus-Max-Size, Tus-Version, Tus-Extension, Upload-Expires and
// Location must end in a value or an error, never a crash, over-read or unbounded allocation
// (ASan + UBSan), and what is accepted must keep the promises the agent relies on:
// - an accepted offset is all decimal digits;
// - a list has at most kMaxListItems items, none empty, none with a comma or outer space;
// - an accepted origin is http(s) with a host and a non-zero port, and reads the same again;
// - a usable discovery names 1.0.0; a refused one says why and under which label;
// - an accepted Location is printable ASCII without spaces or userinfo, on the endpoint's origin
//   or an allowed one; no message carries a raw control character (they are logged).
//
// Input: lines separated by '\n'. The first line is the Location (and the text given to the
// single-value parsers); the second the allowed origins; the rest are "name: value" header
// lines of an OPTIONS answer whose status is 200 + (first byte % 8) * 100 + (second byte % 16).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace tus = ctagent::transport::tus;

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

bool Printable(std::string_view text) {
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return false;
  }
  return true;
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  std::size_t pos = 0;
  while (pos <= text.size() && out.size() < 64) {
    const auto end = text.find('\n', pos);
    out.push_back(text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos));
    if (end == std::string_view::npos) break;
    pos = end + 1;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto lines = Lines(text);
  const std::string_view first = lines.empty() ? std::string_view{} : lines[0];

  if (const auto offset = tus::ParseUploadOffset(first)) {
    Check(!first.empty() && first.size() <= 20);
    for (const char c : first) Check(c >= '0' && c <= '9');
  }

  for (const auto& item : tus::ParseList(text)) {
    Check(!item.empty());
    Check(item.find(',') == std::string::npos);
    Check(item.front() != ' ' && item.front() != '\t' && item.back() != ' ' && item.back() != '\t');
  }
  Check(tus::ParseList(text).size() <= tus::kMaxListItems);

  if (const auto origin = tus::ParseOrigin(first)) {
    Check(origin->scheme == "http" || origin->scheme == "https");
    Check(!origin->host.empty());
    Check(origin->port != 0);
    const auto again = tus::ParseOrigin(origin->ToString());
    Check(again.has_value() && *again == *origin);
  }

  (void)tus::ParseHttpDate(std::string(first));

  const std::string endpoint = "https://127.0.0.1:8443/files/";
  const auto allowed = tus::ParseOriginList(lines.size() > 1 ? lines[1] : std::string_view{});
  auto location = tus::ResolveUploadLocation(endpoint, first, allowed);
  if (location) {
    Check(!location->empty());
    for (const char c : *location) {
      const auto u = static_cast<unsigned char>(c);
      Check(u > 0x20 && u < 0x7f);
    }
    const auto origin = tus::ParseOrigin(*location);
    Check(origin.has_value());
    bool on_allowed = *origin == *tus::ParseOrigin(endpoint);
    for (const auto& a : allowed) on_allowed = on_allowed || a == *origin;
    Check(on_allowed);
    const auto authority_begin = location->find("://") + 3;
    const auto authority = location->substr(authority_begin, location->find_first_of("/?#", authority_begin) - authority_begin);
    Check(authority.find('@') == std::string::npos);
  } else {
    Check(!location.error().message().empty());
    Check(Printable(location.error().message()));
  }

  ctagent::transport::HeaderList headers;
  for (std::size_t i = 2; i < lines.size(); ++i) {
    const auto colon = lines[i].find(':');
    if (colon == std::string_view::npos) continue;
    std::string name(lines[i].substr(0, colon));
    for (char& c : name) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    std::string_view value = lines[i].substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    headers.emplace_back(std::move(name), std::string(value));
  }
  const long status = size >= 2 ? 200 + (data[0] % 8) * 100 + (data[1] % 16) : 204;
  ctagent::transport::FailureClass failure = ctagent::transport::FailureClass::kCancelled;
  std::string label;
  auto caps = tus::ParseDiscovery(status, headers, endpoint, &failure, &label);
  if (caps) {
    Check(failure == ctagent::transport::FailureClass::kNone);
    bool names_1_0_0 = false;
    for (const auto& v : caps->versions) names_1_0_0 = names_1_0_0 || v == "1.0.0";
    Check(names_1_0_0);
    Check(caps->versions.size() <= tus::kMaxListItems && caps->extensions.size() <= tus::kMaxListItems);
  } else {
    Check(failure != ctagent::transport::FailureClass::kNone && failure != ctagent::transport::FailureClass::kCancelled);
    Check(!label.empty());
    Check(!caps.error().message().empty());
    Check(Printable(caps.error().message()));
  }
  return 0;
}
