// libFuzzer target for the configuration loader: ParseConfig (what `ctagent config check` and
// every command start with) and CheckFiles must turn any text into a configuration or an error
// that says why, never crash, over-read or allocate without bound (ASan + UBSan). The file checks
// only open() with O_NONBLOCK and fstat(), so fuzzed paths cannot block the run.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = ctagent::config::ParseConfig(text, "fuzz/config.json");
  if (!config) {
    if (config.error().message().empty()) std::abort();  // every refusal says why
    return 0;
  }
  for (const auto& finding : ctagent::config::CheckFiles(*config)) {
    if (finding.message.empty()) std::abort();
  }
  return 0;
}
