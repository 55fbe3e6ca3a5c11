// Helper process for the fault-injection tests (MakeProcessFileStore(), whose test builds
// decorate the PosixFileStore: base/fault_injecting_file_store.hpp): opens a spool and either adds chunks
// to a new scan (printing "ok <index>" after each AddChunk that returned OK) or reads a chunk
// back ("read <index>" / "error <message>").
//   spool_fault_child <dir> write <scan_uid> <chunks>
//   spool_fault_child <dir> read <scan_uid> <index>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/sha256.hpp"
#include "agent/spool/spool.hpp"

using namespace ctagent;

int main(int argc, char** argv) {
  if (argc != 5) return 2;
  const auto file_store = MakeProcessFileStore();
  FileStore& files = *file_store;
  auto s = spool::Spool::Open({argv[1], 1ull << 30, 0}, files);
  if (!s) return std::printf("error %s\n", s.error().message().c_str()), 1;
  const std::string mode = argv[2];
  const std::string uid = argv[3];
  const auto n = static_cast<std::uint32_t>(std::strtoul(argv[4], nullptr, 10));
  if (mode == "read") {
    auto bytes = (*s)->ReadChunk(uid, n);
    if (!bytes) return std::printf("error %s\n", bytes.error().message().c_str()), 1;
    return std::printf("read %u\n", n), 0;
  }
  spool::ScanRecord r;
  r.scan_uid = uid;
  r.study_uid = uid + ".1";
  if (auto st = (*s)->BeginScan(r, 1 << 20); !st) return std::printf("error %s\n", st.error().message().c_str()), 1;
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::vector<std::uint8_t> bytes(3000 + i, static_cast<std::uint8_t>(i));
    const codec::ManifestChunk mc{i, i * 64ull, 64, bytes.size(), bytes.size(), Sha256Of(bytes), Sha256Of(bytes)};
    if (auto st = (*s)->AddChunk(uid, mc, bytes); !st) return std::printf("error %s\n", st.error().message().c_str()), 1;
    std::printf("ok %u\n", i);
    std::fflush(stdout);
  }
  return 0;
}
