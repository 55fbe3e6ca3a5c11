// HTTP client options derived from the configuration, shared by the uploader, the results
// fetcher and the diagnostics.
#pragma once

#include "base/error.hpp"
#include "config/config.hpp"
#include "transport/http.hpp"

namespace ctagent::core {

// TLS, timeouts (connect, stall, and the overall deadline's floor rate) and the plain-HTTP
// development flag, for the upload endpoint.
transport::HttpOptions MakeHttpOptions(const config::CloudConfig& cloud);

// The same plus DICOMweb basic authentication (password read from cloud.password_file).
Expected<transport::HttpOptions> MakeDicomWebHttpOptions(const config::CloudConfig& cloud);

}  // namespace ctagent::core
