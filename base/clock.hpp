// Wall-clock timestamps for records and manifests.
#pragma once

#include <string>

namespace ctagent {

// The current UTC time as ISO 8601 with seconds, e.g. "2026-11-23T10:00:00Z".
std::string UtcNowIso8601();

}  // namespace ctagent
