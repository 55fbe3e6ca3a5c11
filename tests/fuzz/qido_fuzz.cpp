// libFuzzer target for the QIDO-RS answer parser (transport/dicomweb.hpp ParseQidoDatasets), which
// reads JSON from the imaging center under JsonLimits: any bytes must end in entries or an error,
// never a crash or an allocation past the limits (ASan + UBSan). Differential check: whenever the
// bytes are also a JSON document, what the SAX parse keeps must equal what JsonTagString reads
// from the document, and an array of objects within the limits must be accepted.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "transport/dicomweb.hpp"

namespace {

namespace dicomweb = ctagent::transport::dicomweb;

// Small limits, so the fuzzer reaches each of them with short inputs.
dicomweb::JsonLimits Limits() {
  dicomweb::JsonLimits limits;
  limits.max_depth = 8;
  limits.max_elements = 2000;
  limits.max_datasets = 50;
  limits.max_value_chars = 64;
  return limits;
}

const std::vector<std::string> kTags = {"0020000E", "00080018", "00080060", "00201209", "00100010"};

bool IsLimitError(const std::string& message) {
  return message.find("(the limit for one answer)") != std::string::npos ||
         message.find("characters, more than") != std::string::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto limits = Limits();
  auto parsed = dicomweb::ParseQidoDatasets(text, kTags, limits);
  if (parsed) {
    if (parsed->size() > limits.max_datasets) std::abort();
    for (const auto& dataset : *parsed) {
      for (const auto& [tag, value] : dataset) {
        if (value.size() > limits.max_value_chars) std::abort();
        bool asked = false;
        for (const auto& t : kTags) asked = asked || t == tag;
        if (!asked) std::abort();
      }
    }
  } else if (parsed.error().message().empty()) {
    std::abort();  // every refusal says why
  }

  const nlohmann::json document = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) {
    if (parsed) std::abort();  // the SAX parse accepted what is not JSON
    return 0;
  }
  bool array_of_objects = document.is_array();
  if (array_of_objects) {
    for (const auto& item : document) array_of_objects = array_of_objects && item.is_object();
  }
  if (!parsed) {
    // Valid JSON of the right shape may only be refused for a limit.
    if (array_of_objects && !IsLimitError(parsed.error().message())) std::abort();
    return 0;
  }
  if (!array_of_objects || document.size() != parsed->size()) std::abort();
  for (std::size_t i = 0; i < parsed->size(); ++i) {
    for (const auto& tag : kTags) {
      const auto it = (*parsed)[i].find(tag);
      const std::string kept = it == (*parsed)[i].end() ? std::string() : it->second;
      if (kept != dicomweb::JsonTagString(document[i], tag)) std::abort();
    }
  }
  return 0;
}
