// libFuzzer target for the scan manifest reader (the imaging center reads what arrives as
// kind=manifest; the agent reads its own back from the spool): any bytes must end in a value or an
// error, never a crash, over-read or unbounded allocation (ASan + UBSan). A manifest that is
// accepted must survive a round trip: written back and read again, it reads the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include <nlohmann/json.hpp>

#include "agent/codec/manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  auto manifest = ctagent::codec::ManifestFromJson(j);
  if (!manifest) {
    if (manifest.error().message().empty()) std::abort();  // every refusal says why
    return 0;
  }
  const nlohmann::json written = ctagent::codec::ToJson(*manifest);
  auto again = ctagent::codec::ManifestFromJson(written);
  if (!again || ctagent::codec::ToJson(*again) != written) std::abort();
  return 0;
}
