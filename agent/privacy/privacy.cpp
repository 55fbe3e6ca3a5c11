#include "agent/privacy/privacy.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <system_error>

#include <nlohmann/json.hpp>

#include "base/uid.hpp"

namespace ctagent::privacy {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Domain labels: one per kind of value, so that a patient ID and an accession number that
// happen to be equal still get unrelated pseudonyms.
constexpr std::string_view kPatientIdDomain = "ctagent/patient-id/v1";
constexpr std::string_view kAccessionDomain = "ctagent/accession/v1";
constexpr std::string_view kUidDomain = "ctagent/uid/v1";
constexpr std::string_view kFingerprintDomain = "ctagent/key-fingerprint/v1";

// A key file is 64 hex digits and a newline; anything much larger is the wrong file.
constexpr std::size_t kMaxKeyFileBytes = 256;
constexpr std::uint64_t kMaxMappingBytes = 4u << 20;

std::string Hex(const std::uint8_t* bytes, std::size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (std::size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[bytes[i] >> 4]);
    out.push_back(kDigits[bytes[i] & 0x0f]);
  }
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string ErrnoText(int err) { return std::generic_category().message(err); }

bool IsDate(std::string_view s, int* year, int* month, int* day) {
  if (s.size() != 8) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  *year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
  *month = (s[4] - '0') * 10 + (s[5] - '0');
  *day = (s[6] - '0') * 10 + (s[7] - '0');
  if (*month < 1 || *month > 12 || *day < 1) return false;
  static constexpr int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (*day > kDays[*month - 1]) return false;
  const bool leap = (*year % 4 == 0 && *year % 100 != 0) || *year % 400 == 0;
  return !(*month == 2 && *day == 29 && !leap);
}

json PairJson(const MappingRecord::Pair& p) { return json{{"real", p.real}, {"pseudonymous", p.pseudonymous}}; }

}  // namespace

// ---- The site key ---------------------------------------------------------------------------

Expected<SiteKey> SiteKey::Load(const fs::path& file) {
  const std::string name = file.string();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    return MakeError(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIo,
                     "cannot read the site key " + name + ": " + ErrnoText(err) +
                         (err == ELOOP ? " (it is a symbolic link; point the config at the file itself)" : ""));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return MakeError(ErrorKind::kIo, "cannot stat the site key " + name + ": " + ErrnoText(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return MakeError(ErrorKind::kInvalidInput, "the site key " + name + " is not a regular file");
  }
  if (st.st_uid != ::geteuid()) {
    ::close(fd);
    return MakeError(ErrorKind::kPermission, "the site key " + name + " belongs to user id " +
                                                 std::to_string(st.st_uid) + ", not to the agent's user (" +
                                                 std::to_string(::geteuid()) + "); chown it to the agent's user");
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return MakeError(ErrorKind::kPermission,
                     "the site key " + name + " may be read by other users (mode " + mode + "); run chmod 600 " +
                         name + " (and consider the key exposed: see docs/privacy.md on rotating it)");
  }
  char buffer[kMaxKeyFileBytes + 1];
  std::size_t size = 0;
  while (size < sizeof buffer) {
    const ssize_t n = ::read(fd, buffer + size, sizeof buffer - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return MakeError(ErrorKind::kIo, "cannot read the site key " + name + ": " + ErrnoText(err));
    }
    if (n == 0) break;
    size += static_cast<std::size_t>(n);
  }
  ::close(fd);
  std::string_view text(buffer, size);
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  std::array<std::uint8_t, kBytes> bytes{};
  bool ok = text.size() == kBytes * 2;
  for (std::size_t i = 0; ok && i < kBytes; ++i) {
    const int hi = HexValue(text[2 * i]);
    const int lo = HexValue(text[2 * i + 1]);
    ok = hi >= 0 && lo >= 0;
    if (ok) bytes[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  OPENSSL_cleanse(buffer, sizeof buffer);
  if (!ok) {
    return MakeError(ErrorKind::kCorrupt, "the site key " + name +
                                              " does not hold 64 hex digits; restore it from the site's backup "
                                              "(a new key gives every patient new pseudonyms, see docs/privacy.md)");
  }
  return SiteKey(bytes);
}

namespace {

// A new random key written owner-only and durably to `file` (replacing what is there).
Expected<std::array<std::uint8_t, SiteKey::kBytes>> WriteNewKey(const fs::path& file, FileStore& store,
                                                                const char* what) {
  std::array<std::uint8_t, SiteKey::kBytes> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    return MakeError(ErrorKind::kInternal, std::string("cannot ") + what + " the site key " + file.string() +
                                               ": the system's random number generator failed");
  }
  std::string text = Hex(bytes.data(), bytes.size()) + "\n";
  const Status written = store.WriteDurablyOwnerOnly(file, AsBytes(text));
  OPENSSL_cleanse(text.data(), text.size());
  if (!written) {
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return MakeError(written.error().WithContext(std::string("cannot ") + what + " the site key " + file.string()));
  }
  return bytes;
}

}  // namespace

Expected<SiteKey> SiteKey::LoadOrCreate(const fs::path& file, FileStore& store) {
  Expected<SiteKey> loaded = Load(file);
  if (loaded || loaded.error().kind() != ErrorKind::kNotFound) return loaded;
  auto bytes = WriteNewKey(file, store, "create");
  if (!bytes) return MakeError(bytes.error());
  return SiteKey(*bytes);
}

Expected<SiteKey::Rotation> SiteKey::Rotate(const fs::path& file, FileStore& store) {
  auto lock = store.LockExclusive(fs::path(file.string() + ".lock"));
  if (!lock) return MakeError(lock.error().WithContext("another rotation of the site key " + file.string() + " is running"));
  Expected<SiteKey> current = Load(file);
  if (!current) {
    if (current.error().kind() == ErrorKind::kNotFound) {
      return MakeError(ErrorKind::kNotFound, "there is no site key at " + file.string() +
                                                 " yet, so nothing to rotate: the agent makes one at the first "
                                                 "worklist or emergency scan");
    }
    return MakeError(current.error().WithContext("the site key was not rotated"));
  }
  Rotation rotation;
  rotation.old_fingerprint = current->Fingerprint();
  auto bytes = WriteNewKey(file, store, "rotate");
  if (!bytes) return MakeError(bytes.error());
  rotation.new_fingerprint = SiteKey(*bytes).Fingerprint();
  OPENSSL_cleanse(bytes->data(), bytes->size());
  return rotation;
}

std::array<std::uint8_t, 32> SiteKey::Mac(std::string_view domain, std::string_view value) const {
  std::string message;
  message.reserve(domain.size() + 1 + value.size());
  message.append(domain).push_back('\0');
  message.append(value);
  std::array<std::uint8_t, 32> out{};
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), out.data(), &length);
  OPENSSL_cleanse(message.data(), message.size());
  return out;
}

std::string SiteKey::Fingerprint() const {
  const auto mac = Mac(kFingerprintDomain, "");
  return Hex(mac.data(), 8);
}

// ---- Pseudonyms ----------------------------------------------------------------------------

std::string PseudonymousPatientId(const SiteKey& key, std::string_view patient_id) {
  const auto mac = key.Mac(kPatientIdDomain, patient_id);
  return Hex(mac.data(), 16);
}

std::string PseudonymousAccession(const SiteKey& key, std::string_view accession_number) {
  const auto mac = key.Mac(kAccessionDomain, accession_number);
  return Hex(mac.data(), 8);
}

std::string RemapUid(const SiteKey& key, std::string_view uid) {
  const auto mac = key.Mac(kUidDomain, uid);
  std::array<std::uint8_t, 16> uuid{};
  std::copy_n(mac.begin(), uuid.size(), uuid.begin());
  uuid[6] = static_cast<std::uint8_t>((uuid[6] & 0x0f) | 0x80);  // UUID version 8 (RFC 9562: custom)
  uuid[8] = static_cast<std::uint8_t>((uuid[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return DicomUidFromUuid(uuid);
}

// ---- Age and sex ---------------------------------------------------------------------------

std::string AgeBand::ToAgeString() const {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%03dY", std::min(lower_years, 999));
  return buf;
}

std::optional<AgeBand> CoarsenAge(std::string_view birth_date, std::string_view on_date) {
  int by = 0, bm = 0, bd = 0, y = 0, m = 0, d = 0;
  if (!IsDate(birth_date, &by, &bm, &bd) || !IsDate(on_date, &y, &m, &d)) return std::nullopt;
  int age = y - by;
  if (m < bm || (m == bm && d < bd)) --age;  // the birthday of this year is still to come
  if (age < 0) return std::nullopt;
  if (age >= 90) return AgeBand{90, std::nullopt};
  const int lower = age / 5 * 5;
  return AgeBand{lower, lower + 4};
}

std::string DisclosedSex(const DisclosureOptions& options, std::string_view sex) {
  if (!options.sex) return "";
  return sex == "M" || sex == "F" || sex == "O" ? std::string(sex) : "";
}

// ---- The mapping record --------------------------------------------------------------------

MappingRecord Pseudonymise(const SiteKey& key, const std::string& scan_uid, const RealIdentity& identity) {
  MappingRecord record;
  record.scan_uid = scan_uid;
  record.key_fingerprint = key.Fingerprint();
  record.patient_name = identity.patient_name;
  record.patient_birth_date = identity.patient_birth_date;
  record.patient_sex = identity.patient_sex;
  record.patient_id = {identity.patient_id, PseudonymousPatientId(key, identity.patient_id)};
  record.accession_number = {identity.accession_number, identity.accession_number.empty()
                                                            ? std::string()
                                                            : PseudonymousAccession(key, identity.accession_number)};
  record.study_instance_uid = {identity.study_instance_uid, RemapUid(key, identity.study_instance_uid)};
  return record;
}

std::string RemapAndRecord(const SiteKey& key, MappingRecord& record, const std::string& real_uid) {
  if (real_uid == record.study_instance_uid.real) return record.study_instance_uid.pseudonymous;
  for (const MappingRecord::Pair& p : record.uids) {
    if (p.real == real_uid) return p.pseudonymous;
  }
  record.uids.push_back({real_uid, RemapUid(key, real_uid)});
  return record.uids.back().pseudonymous;
}

std::string ToJson(const MappingRecord& r) {
  json uids = json::array();
  for (const MappingRecord::Pair& p : r.uids) uids.push_back(PairJson(p));
  const json j = {
      {"version", 1},
      {"scan_uid", r.scan_uid},
      {"key_fingerprint", r.key_fingerprint},
      {"patient", {{"name", r.patient_name}, {"birth_date", r.patient_birth_date}, {"sex", r.patient_sex}}},
      {"patient_id", PairJson(r.patient_id)},
      {"accession_number", PairJson(r.accession_number)},
      {"study_instance_uid", PairJson(r.study_instance_uid)},
      {"uids", uids},
      {"reconcile", r.reconcile},
  };
  // Names stay UTF-8 in the file (no \u escapes), as the worklist gave them.
  return j.dump(2) + "\n";
}

Expected<MappingRecord> MappingFromJson(std::string_view text, const std::string& source) {
  // Messages never quote the file's values: they are patient identity.
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeError(ErrorKind::kCorrupt, source + ": not a JSON object; the pseudonym mapping is damaged");
  }
  std::string problem;
  auto text_at = [&](const json& parent, const char* key, const std::string& where) -> std::string {
    if (!parent.is_object() || !parent.contains(key) || !parent[key].is_string()) {
      if (problem.empty()) problem = where + key + ": expected a string";
      return "";
    }
    return parent[key].get<std::string>();
  };
  auto pair_at = [&](const char* key) -> MappingRecord::Pair {
    const json empty;
    const json& p = j.contains(key) ? j[key] : empty;
    const std::string where = std::string("/") + key + "/";
    return {text_at(p, "real", where), text_at(p, "pseudonymous", where)};
  };
  if (!j.contains("version") || j["version"] != 1) {
    return MakeError(ErrorKind::kUnsupported, source + ": /version: expected 1 (a mapping from another agent version)");
  }
  MappingRecord r;
  r.scan_uid = text_at(j, "scan_uid", "/");
  r.key_fingerprint = text_at(j, "key_fingerprint", "/");
  const json empty;
  const json& patient = j.contains("patient") ? j["patient"] : empty;
  r.patient_name = text_at(patient, "name", "/patient/");
  r.patient_birth_date = text_at(patient, "birth_date", "/patient/");
  r.patient_sex = text_at(patient, "sex", "/patient/");
  r.patient_id = pair_at("patient_id");
  r.accession_number = pair_at("accession_number");
  r.study_instance_uid = pair_at("study_instance_uid");
  if (j.contains("reconcile")) {
    if (j["reconcile"].is_boolean()) {
      r.reconcile = j["reconcile"].get<bool>();
    } else if (problem.empty()) {
      problem = "/reconcile: expected true or false";
    }
  }
  if (!j.contains("uids") || !j["uids"].is_array()) {
    if (problem.empty()) problem = "/uids: expected an array";
  } else {
    for (std::size_t i = 0; i < j["uids"].size() && problem.empty(); ++i) {
      const std::string where = "/uids/" + std::to_string(i) + "/";
      r.uids.push_back({text_at(j["uids"][i], "real", where), text_at(j["uids"][i], "pseudonymous", where)});
    }
  }
  if (!problem.empty()) return MakeError(ErrorKind::kCorrupt, source + ": " + problem);
  return r;
}

Status WriteMapping(FileStore& store, const fs::path& path, const MappingRecord& record) {
  std::string text = ToJson(record);
  Status s = store.WriteDurablyOwnerOnly(path, AsBytes(text));
  OPENSSL_cleanse(text.data(), text.size());
  if (!s) return MakeError(s.error().WithContext("cannot write the pseudonym mapping " + path.string()));
  return Ok();
}

Expected<MappingRecord> ReadMapping(FileStore& store, const fs::path& path) {
  auto bytes = store.ReadAll(path, kMaxMappingBytes);
  if (!bytes) return MakeError(bytes.error().WithContext("cannot read the pseudonym mapping"));
  return MappingFromJson(std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()),
                         path.string());
}

}  // namespace ctagent::privacy
