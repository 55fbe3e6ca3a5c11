// One tus upload of a file with the agent's upload path (transport::HttpClient + tus::Client,
// the same HTTP options and PATCH size the uploader uses), timed. Used by run.sh; prints
// "seconds=<s> bytes=<n>" on success.
//
//   upload_bench --url https://HOST:PORT/files/ --file F --ca CA.pem [--patch-bytes N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "transport/http.hpp"
#include "transport/tus.hpp"

using namespace ctagent;

int main(int argc, char** argv) {
  std::string url, file, ca;
  std::uint64_t patch_bytes = 4ull << 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--url") url = argv[i + 1];
    else if (a == "--file") file = argv[i + 1];
    else if (a == "--ca") ca = argv[i + 1];
    else if (a == "--patch-bytes") patch_bytes = std::strtoull(argv[i + 1], nullptr, 10);
    else {
      std::fprintf(stderr, "upload_bench: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (url.empty() || file.empty()) {
    std::fprintf(stderr, "usage: upload_bench --url URL --file F --ca CA.pem [--patch-bytes N]\n");
    return 2;
  }
  std::ifstream in(file, std::ios::binary);
  const std::vector<std::uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  transport::HttpOptions options;
  options.tls.ca_file = ca;
  transport::HttpClient http(options);
  transport::tus::Client tus(http, url);
  const auto t0 = std::chrono::steady_clock::now();
  auto upload = tus.Create(data.size(), {{"filename", "bench.bin"}});
  if (!upload) {
    std::fprintf(stderr, "upload_bench: create: %s\n", upload.error().message().c_str());
    return 1;
  }
  auto done = tus.UploadFrom(*upload, data, 0, patch_bytes);
  if (!done) {
    std::fprintf(stderr, "upload_bench: upload: %s\n", done.error().message().c_str());
    return 1;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("seconds=%.4f bytes=%zu\n", seconds, data.size());
  return 0;
}
