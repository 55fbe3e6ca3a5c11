// The scan manifest (JSON), written when a scan ends and uploaded last (tus metadata
// kind=manifest). The imaging center treats a scan as complete when its manifest has arrived and
// every chunk it lists is complete and matches its SHA-256. Schema: docs/wire-format.md.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "base/sha256.hpp"
#include "drivers/scan_types.hpp"

namespace ctagent::codec {

inline constexpr int kManifestVersion = 1;

struct ManifestChunk {
  std::uint32_t index = 0;
  std::uint64_t first_view = 0;
  std::uint32_t view_count = 0;
  std::uint64_t raw_bytes = 0;
  std::uint64_t compressed_bytes = 0;
  Sha256Digest raw_sha256;  // of the decoded samples
  Sha256Digest sha256;      // of the chunk file as uploaded (header + payload)
};

struct Manifest {
  std::string scan_uid;
  std::string study_uid;
  // The identity the cloud may see: with a worklist, only pseudonyms (docs/privacy.md): the
  // pseudonymous patient ID, no name, the pseudonymous accession; the age band ("040Y") and sex
  // only when the site discloses them. Empty optional fields are left out of the JSON.
  std::string patient_id;
  std::string patient_name;
  std::string accession_number;
  std::string patient_age;
  std::string patient_sex;
  std::string study_description;
  std::string terminal_id;
  std::string acquisition_start_utc;  // ISO 8601
  std::string acquisition_end_utc;
  drivers::ScanProtocol protocol;
  std::uint64_t views_acquired = 0;
  bool complete = true;         // false: the scan stopped early (reason says why)
  std::string incomplete_reason;
  std::vector<ManifestChunk> chunks;
};

nlohmann::json ToJson(const Manifest& manifest);
// The text of manifest.json: ToJson(manifest).dump(1), byte for byte, built one chunk's JSON
// tree at a time. At the end of an 8 GiB scan (4,700 chunks) the tree of every chunk at once was
// ~4 MiB of small heap blocks on top of the scan's buffers (docs/configuration.md, "Memory").
std::string ManifestText(const Manifest& manifest);
// The same for `head` with `chunks` as its chunk list (head.chunks is not read): the spool
// writes the manifest from its record's chunks without copying them.
std::string ManifestText(const Manifest& head, std::span<const ManifestChunk* const> chunks);
// Validates types and required fields; the error names the JSON path.
Expected<Manifest> ManifestFromJson(const nlohmann::json& j);

}  // namespace ctagent::codec
