#include "agent/core/http_options.hpp"

#include <fstream>

namespace ctagent::core {

transport::HttpOptions MakeHttpOptions(const config::CloudConfig& cloud) {
  transport::HttpOptions options;
  options.tls.ca_file = cloud.tls.ca_file;
  options.tls.client_cert_file = cloud.tls.client_cert_file;
  options.tls.client_key_file = cloud.tls.client_key_file;
  options.tls.pinned_public_key = cloud.tls.pinned_public_key;
  options.http2 = cloud.http2;
  options.allow_plain_http = cloud.allow_plain_http;
  options.connect_timeout_s = cloud.connect_timeout_s;
  options.stall_timeout_s = cloud.stall_timeout_s;
  // With the two timeouts above it sets every request's overall deadline (transport/http.hpp).
  options.floor_rate_bits_per_s = cloud.floor_rate_bits_per_s;
  options.user_agent = "ctagent";
  return options;
}

Expected<transport::HttpOptions> MakeDicomWebHttpOptions(const config::CloudConfig& cloud) {
  transport::HttpOptions options = MakeHttpOptions(cloud);
  if (cloud.username.empty()) return options;
  options.basic_auth_user = cloud.username;
  if (!cloud.password_file.empty()) {
    std::ifstream in(cloud.password_file);
    if (!in) {
      return MakeError(ErrorKind::kInvalidInput, "cannot read the DICOMweb password file " +
                                                     cloud.password_file.string() + " (cloud.password_file)");
    }
    std::getline(in, options.basic_auth_password);
  }
  return options;
}

}  // namespace ctagent::core
