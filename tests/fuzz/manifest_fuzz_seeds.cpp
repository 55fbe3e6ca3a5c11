// Writes valid manifests (complete, incomplete with a gap, axial and helical) into a directory as
// the starting corpus of manifest_fuzz.
//   manifest_fuzz_seeds DIR
#include <cstdio>
#include <fstream>
#include <string>

#include "agent/codec/manifest.hpp"
#include "drivers/detector.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: manifest_fuzz_seeds DIR\n");
    return 2;
  }
  int written = 0;
  for (const bool complete : {true, false}) {
    for (const bool helical : {false, true}) {
      ctagent::codec::Manifest m;
      m.scan_uid = "2.25.1";
      m.study_uid = "2.25.2";
      m.patient_id = "PSEUDO-1";
      m.patient_name = "Anon^Test";
      m.study_description = "CT chest";
      m.terminal_id = "ct-terminal";
      m.acquisition_start_utc = "2026-01-01T00:00:00Z";
      m.acquisition_end_utc = "2026-01-01T00:00:10Z";
      m.protocol = ctagent::drivers::SixteenSliceAxialProtocol();
      if (helical) m.protocol.table_speed_mm_per_rotation = 20.0;
      m.views_acquired = 300;
      m.complete = complete;
      if (!complete) m.incomplete_reason = "disk full";
      const auto digest = [](char digit) { return ctagent::Sha256Digest::FromHex(std::string(64, digit)).value(); };
      for (std::uint32_t i = 0; i < 3; ++i) {
        if (!complete && i == 1) continue;  // a gap, as an interrupted scan may leave
        m.chunks.push_back({i, 100ull * i, 100, 1000000, 400000, digest('a'), digest('b')});
      }
      const std::string path = std::string(argv[1]) + "/manifest-" + std::to_string(written++) + ".json";
      std::ofstream(path) << ctagent::codec::ToJson(m).dump(1);
    }
  }
  std::printf("%d seed manifests written to %s\n", written, argv[1]);
  return 0;
}
