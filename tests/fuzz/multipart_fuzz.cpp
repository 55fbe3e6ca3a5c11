// libFuzzer target for the WADO-RS multipart/related parser (transport/dicomweb.hpp
// ParseMultipartRelated): the input's first line is the Content-Type header, the rest the body.
// Any bytes must end in parts or an error, never a crash or over-read (ASan + UBSan); accepted
// parts are at most max_parts, each a piece of the body, together no larger than it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "transport/dicomweb.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto newline = input.find('\n');
  const std::string content_type(input.substr(0, newline));
  const std::string body(newline == std::string_view::npos ? std::string_view() : input.substr(newline + 1));
  constexpr std::size_t kMaxParts = 4;
  auto parts = ctagent::transport::dicomweb::ParseMultipartRelated(content_type, body, kMaxParts);
  if (!parts) {
    if (parts.error().message().empty()) std::abort();  // every refusal says why
    return 0;
  }
  if (parts->size() > kMaxParts) std::abort();
  std::size_t total = 0;
  for (const auto& part : *parts) {
    total += part.size();
    if (body.find(part) == std::string::npos) std::abort();
  }
  if (total > body.size()) std::abort();
  return 0;
}
