#include <cstdio>

#include "agent/cli.hpp"
#include "agent/codec/chunk.hpp"
#include "agent/common/durable_file.hpp"

namespace ctagent::cli {
namespace {

constexpr const char* kHelp = R"(Usage: ctagent chunk <inspect|verify|decode> FILE... [--out FILE]

  inspect FILE...      print each chunk's header (identity, shape, codec, sizes, checksums)
  verify FILE...       fully decode each chunk and check every checksum; exit 1 if any fails
  decode FILE --out F  write the decoded samples (raw, little-endian) to F
)";

constexpr std::uint64_t kMaxChunkFile = 1ull << 30;

void PrintInfo(const std::string& path, const codec::ChunkInfo& info) {
  std::printf("%s\n", path.c_str());
  std::printf("  format          %u.%u\n", info.format_major, info.format_minor);
  std::printf("  scan            %s\n", info.scan_uid.c_str());
  std::printf("  chunk           %u, views %llu..%llu (%zu)\n", info.chunk_index,
              static_cast<unsigned long long>(info.FirstView()),
              static_cast<unsigned long long>(info.FirstView() + info.views.size() - 1), info.views.size());
  std::printf("  shape           %u rows x %u channels, %s\n", info.rows, info.channels, drivers::ToString(info.sample_type));
  std::printf("  codec           zstd level %d, filter %s\n", info.zstd_level, codec::ToString(info.filter));
  std::printf("  raw             %llu bytes, sha256 %s\n", static_cast<unsigned long long>(info.raw_length),
              info.raw_sha256.c_str());
  std::printf("  compressed      %llu bytes, sha256 %s, ratio %.2f:1\n",
              static_cast<unsigned long long>(info.compressed_length), info.compressed_sha256.c_str(),
              info.compressed_length ? static_cast<double>(info.raw_length) / static_cast<double>(info.compressed_length) : 0.0);
}

}  // namespace

int CmdChunk(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s", kHelp);
    return args.empty() ? 2 : 0;
  }
  const std::string& action = args[0];
  if (action != "inspect" && action != "verify" && action != "decode") {
    std::fprintf(stderr, "ctagent chunk: unknown action \"%s\"\n\n%s", action.c_str(), kHelp);
    return 2;
  }
  std::vector<std::string> paths;
  std::string out;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--out" && i + 1 < args.size()) {
      out = args[++i];
    } else {
      paths.push_back(args[i]);
    }
  }
  if (paths.empty() || (action == "decode" && (paths.size() != 1 || out.empty()))) {
    std::fprintf(stderr, "ctagent chunk: missing file arguments\n\n%s", kHelp);
    return 2;
  }
  PosixFileStore files;
  int failures = 0;
  for (const auto& path : paths) {
    auto bytes = files.ReadAll(path, kMaxChunkFile);
    if (!bytes) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), bytes.error().message().c_str());
      ++failures;
      continue;
    }
    if (action == "inspect") {
      auto info = codec::ParseChunkHeader(*bytes);
      if (!info) {
        std::fprintf(stderr, "%s: %s\n", path.c_str(), info.error().message().c_str());
        ++failures;
        continue;
      }
      PrintInfo(path, *info);
      continue;
    }
    auto decoded = codec::DecodeChunk(*bytes);
    if (!decoded) {
      std::fprintf(stderr, "%s: FAILED: %s\n", path.c_str(), decoded.error().message().c_str());
      ++failures;
      continue;
    }
    if (action == "verify") {
      std::printf("%s: OK (chunk %u of scan %s, %zu views, raw sha256 %s)\n", path.c_str(), decoded->info.chunk_index,
                  decoded->info.scan_uid.c_str(), decoded->info.views.size(), decoded->info.raw_sha256.c_str());
    } else {
      if (auto st = files.WriteDurably(out, decoded->samples); !st) {
        std::fprintf(stderr, "%s: %s\n", out.c_str(), st.error().message().c_str());
        return 1;
      }
      std::printf("%s: %zu bytes of samples written to %s\n", path.c_str(), decoded->samples.size(), out.c_str());
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace ctagent::cli
