// Pseudonymisation primitives (issue 15, docs/privacy.md): what the terminal sends the imaging
// center instead of the patient's identity, and the record that maps it back.
//
// Every pseudonym is a keyed HMAC-SHA256 of the real value under a per-site secret (SiteKey),
// with a different domain label per kind of value, so the same input always gives the same
// pseudonym at one site, different sites give unrelated ones, and nobody without the key can
// compute or invert them. The real values live only in the scan's MappingRecord (mode 0600) on
// the terminal.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/durable_file.hpp"
#include "base/error.hpp"

namespace ctagent::privacy {

// The per-site secret: 32 random bytes, stored as 64 hex digits and a newline in a file that
// only the agent's user may read (mode 0600, owned by that user).
class SiteKey {
 public:
  static constexpr std::size_t kBytes = 32;

  // Reads the key file. Refuses a file that is not a regular file owned by this user, that
  // group or others may access (mode & 077), or that does not hold exactly 64 hex digits.
  static Expected<SiteKey> Load(const std::filesystem::path& file);
  // Load(), or when the file does not exist, a new random key written owner-only and durably
  // through `store` (the directory must exist). Only one process may call it for a file at a
  // time (the daemon holds the spool lock).
  static Expected<SiteKey> LoadOrCreate(const std::filesystem::path& file, FileStore& store);
  // Replaces an existing key with a new random one (a key that leaked, or a site's scheduled
  // rotation): loads the current key (refusing it as Load does: nothing is replaced on a doubt),
  // then writes the new one owner-only and durably in its place, under `<file>.lock` so two
  // rotations cannot interleave. The old key is not kept: re-identification reads the real values
  // from each scan's mapping record and never needs a key. kNotFound when there is no key yet.
  struct Rotation {
    std::string old_fingerprint;
    std::string new_fingerprint;
  };
  static Expected<Rotation> Rotate(const std::filesystem::path& file, FileStore& store);
  static SiteKey FromBytes(const std::array<std::uint8_t, kBytes>& bytes) { return SiteKey(bytes); }

  // HMAC-SHA256(key, domain || 0x00 || value).
  std::array<std::uint8_t, 32> Mac(std::string_view domain, std::string_view value) const;
  // 16 hex digits naming this key (an HMAC of a fixed label, so it reveals nothing of the key):
  // a mapping record says which key made it, so a rotated key is noticed, not misapplied.
  std::string Fingerprint() const;

 private:
  explicit SiteKey(const std::array<std::uint8_t, kBytes>& bytes) : key_(bytes) {}
  std::array<std::uint8_t, kBytes> key_;
};

// Patient ID (LO, 64 characters) -> 32 lowercase hex digits (128 bits of the HMAC).
std::string PseudonymousPatientId(const SiteKey& key, std::string_view patient_id);
// Accession Number (SH, at most 16 characters) -> 16 lowercase hex digits (64 bits).
std::string PseudonymousAccession(const SiteKey& key, std::string_view accession_number);
// Any DICOM UID -> "2.25." + the decimal of a UUID made of the HMAC's first 128 bits, with the
// version (8, custom) and variant bits set as ISO/IEC 9834-8 requires of a 2.25 UID: at most 44
// characters. Deterministic per key, so a study's UIDs map the same way in every object.
std::string RemapUid(const SiteKey& key, std::string_view uid);

// A five-year age band, e.g. {40, 44}; 90 and over is one band {90, nullopt} (as HIPAA's Safe
// Harbor method does: very old ages are rare enough to identify).
struct AgeBand {
  int lower_years = 0;
  std::optional<int> upper_years;
  // As DICOM Patient's Age (AS): the band's lower bound, "040Y".
  std::string ToAgeString() const;
};
// The band of the age on `on_date` of someone born on `birth_date` (both YYYYMMDD); nullopt
// when either is not a valid date or the birth is after the date.
std::optional<AgeBand> CoarsenAge(std::string_view birth_date, std::string_view on_date);

// What may leave besides pseudonyms; both off unless the site configures them.
struct DisclosureOptions {
  bool age_band = false;  // a five-year band of the age at the scan
  bool sex = false;       // Patient's Sex, M/F/O only
};
// Patient's Sex as it may leave: "" unless options.sex and the value is M, F or O.
std::string DisclosedSex(const DisclosureOptions& options, std::string_view sex);

// One scan's map between the real identity and what was sent, kept on the terminal only.
struct MappingRecord {
  struct Pair {
    std::string real;
    std::string pseudonymous;
  };
  std::string scan_uid;          // the agent's scan UID (itself no identity)
  std::string key_fingerprint;   // SiteKey::Fingerprint() of the key that made the pseudonyms
  std::string patient_name;      // real, UTF-8 DICOM PN: restored into returned objects
  std::string patient_birth_date;
  std::string patient_sex;
  Pair patient_id;
  Pair accession_number;
  Pair study_instance_uid;
  std::vector<Pair> uids;        // every other UID remapped for this scan (series, instances)
  bool reconcile = false;        // an emergency scan's minted identity: a person must reconcile it
};

// The real identity a scan starts from (from the worklist).
struct RealIdentity {
  std::string patient_name;
  std::string patient_id;
  std::string patient_birth_date;
  std::string patient_sex;
  std::string accession_number;
  std::string study_instance_uid;
};
MappingRecord Pseudonymise(const SiteKey& key, const std::string& scan_uid, const RealIdentity& identity);
// Remaps `real_uid` and records the pair in `record` (once per UID); returns the pseudonymous UID.
std::string RemapAndRecord(const SiteKey& key, MappingRecord& record, const std::string& real_uid);

std::string ToJson(const MappingRecord& record);
// Parses a record; errors name `source` and the field.
Expected<MappingRecord> MappingFromJson(std::string_view text, const std::string& source);

// Writes the record durably (temporary file, fsync, rename, directory fsync) with mode 0600.
Status WriteMapping(FileStore& store, const std::filesystem::path& path, const MappingRecord& record);
Expected<MappingRecord> ReadMapping(FileStore& store, const std::filesystem::path& path);

}  // namespace ctagent::privacy
