// Pseudonymisation primitives: determinism per key, unrelated pseudonyms across keys and
// kinds, no trace of the input in the output, valid DICOM UIDs, age bands, the site key file's
// mode rules, and the mapping record written durably with mode 0600.
#include "agent/privacy/privacy.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "base/durable_file.hpp"
#include "base/uid.hpp"
#include "tests/support/process.hpp"

namespace fs = std::filesystem;
using ctagent::ErrorKind;
using ctagent::IsValidDicomUid;
using ctagent::PosixFileStore;
using ctagent::test::ReadText;
using ctagent::test::TempDir;
using namespace ctagent::privacy;

namespace {

SiteKey KeyOf(std::uint8_t fill) {
  std::array<std::uint8_t, SiteKey::kBytes> bytes{};
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(fill + i * 7);
  return SiteKey::FromBytes(bytes);
}

unsigned ModeOf(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

void WriteFile(const fs::path& path, const std::string& text, unsigned mode) {
  { std::ofstream(path, std::ios::binary) << text; }
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

// Realistic identifiers, including ones that are all digits (hex output could hold digits).
const std::vector<std::string> kPatientIds = {"PID-0001", "10023456", "0000000001", "HN2026120512", "A7\xE7\x8E\x8B"};
const std::vector<std::string> kAccessions = {"ACC0001", "2026120500017", "RIS-77-1234", "9"};

// Every substring of `input` with at least `min_bytes` bytes.
std::set<std::string> Substrings(const std::string& input, std::size_t min_bytes) {
  std::set<std::string> out;
  for (std::size_t i = 0; i < input.size(); ++i) {
    for (std::size_t n = min_bytes; i + n <= input.size(); ++n) out.insert(input.substr(i, n));
  }
  return out;
}

// Restores the process umask when the test ends.
struct UmaskGuard {
  explicit UmaskGuard(mode_t mask) : old(::umask(mask)) {}
  ~UmaskGuard() { ::umask(old); }
  mode_t old;
};

}  // namespace

TEST_CASE("privacy: pseudonyms are deterministic per key and differ across keys and kinds", "[privacy]") {
  const SiteKey a = KeyOf(1);
  const SiteKey a_again = KeyOf(1);
  const SiteKey b = KeyOf(2);
  for (const std::string& id : kPatientIds) {
    INFO("patient id #" << id.size());
    const std::string p = PseudonymousPatientId(a, id);
    CHECK(p == PseudonymousPatientId(a_again, id));
    CHECK(p != PseudonymousPatientId(b, id));
    CHECK(p.size() == 32);
    CHECK(p.find_first_not_of("0123456789abcdef") == std::string::npos);
    // The same text as an accession gets an unrelated pseudonym (domain separation).
    CHECK(p.find(PseudonymousAccession(a, id)) == std::string::npos);
  }
  for (const std::string& acc : kAccessions) {
    const std::string p = PseudonymousAccession(a, acc);
    CHECK(p == PseudonymousAccession(a_again, acc));
    CHECK(p != PseudonymousAccession(b, acc));
    CHECK(p.size() == 16);  // Accession Number is SH: at most 16 characters
  }
  // Distinct inputs, distinct pseudonyms.
  std::set<std::string> seen;
  for (const std::string& id : kPatientIds) seen.insert(PseudonymousPatientId(a, id));
  CHECK(seen.size() == kPatientIds.size());
  CHECK(a.Fingerprint() == a_again.Fingerprint());
  CHECK(a.Fingerprint() != b.Fingerprint());
}

TEST_CASE("privacy: no part of an input appears in its pseudonym or remapped UID", "[privacy]") {
  const SiteKey key = KeyOf(3);
  const std::vector<std::string> uids = {"1.2.826.0.1.3680043.2.1125.99.1", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"};
  struct Item {
    std::string input;
    std::string output;
    std::size_t min_bytes;  // shorter runs of digits turn up by chance in 39 random decimal digits
  };
  std::vector<Item> items;
  for (const auto& id : kPatientIds) items.push_back({id, PseudonymousPatientId(key, id), 4});
  for (const auto& acc : kAccessions) items.push_back({acc, PseudonymousAccession(key, acc), 4});
  for (const auto& uid : uids) items.push_back({uid, RemapUid(key, uid), 8});
  for (const Item& item : items) {
    INFO("input of " << item.input.size() << " bytes");
    CHECK(item.output != item.input);
    for (const std::string& part : Substrings(item.input, item.min_bytes)) {
      CHECK(item.output.find(part) == std::string::npos);
    }
  }
}

TEST_CASE("privacy: remapped UIDs are valid DICOM UIDs under 2.25, deterministic per key", "[privacy]") {
  const SiteKey a = KeyOf(4);
  const SiteKey b = KeyOf(5);
  std::set<std::string> seen;
  for (int i = 0; i < 2000; ++i) {
    const std::string real = "1.2.826.0.1.3680043.2.1125." + std::to_string(i);
    const std::string uid = RemapUid(a, real);
    INFO(uid);
    REQUIRE(IsValidDicomUid(uid));
    REQUIRE(uid.size() <= 64);
    REQUIRE(uid.rfind("2.25.", 0) == 0);
    REQUIRE(uid == RemapUid(a, real));
    REQUIRE(uid != RemapUid(b, real));
    seen.insert(uid);
  }
  CHECK(seen.size() == 2000);
}

TEST_CASE("privacy: ages coarsen to five-year bands and 90 and over to one band", "[privacy]") {
  auto band = [](const char* birth, const char* on) { return CoarsenAge(birth, on); };
  REQUIRE(band("19850310", "20261205"));
  CHECK(band("19850310", "20261205")->lower_years == 40);
  CHECK(band("19850310", "20261205")->upper_years == 44);
  CHECK(band("19850310", "20261205")->ToAgeString() == "040Y");
  // The day before the 45th birthday is still 40-44; the birthday is 45-49.
  CHECK(band("19811206", "20261205")->lower_years == 40);
  CHECK(band("19811205", "20261205")->lower_years == 45);
  // Born on 29 February.
  CHECK(band("20000229", "20250228")->lower_years == 20);
  CHECK(band("20260101", "20261205")->lower_years == 0);
  CHECK(band("20260101", "20261205")->upper_years == 4);
  CHECK(band("19300101", "20261205")->lower_years == 90);
  CHECK_FALSE(band("19300101", "20261205")->upper_years.has_value());
  CHECK(band("19300101", "20261205")->ToAgeString() == "090Y");
  CHECK_FALSE(band("20270101", "20261205"));  // born after the scan
  CHECK_FALSE(band("19850230", "20261205"));  // no such day
  CHECK_FALSE(band("19010229", "20261205"));  // 1901 is not a leap year
  CHECK_FALSE(band("", "20261205"));
  CHECK_FALSE(band("1985-03-10", "20261205"));
}

TEST_CASE("privacy: sex leaves only when configured, and only M, F or O", "[privacy]") {
  CHECK(DisclosedSex(DisclosureOptions{}, "F").empty());
  DisclosureOptions with_sex;
  with_sex.sex = true;
  CHECK(DisclosedSex(with_sex, "F") == "F");
  CHECK(DisclosedSex(with_sex, "M") == "M");
  CHECK(DisclosedSex(with_sex, "O") == "O");
  CHECK(DisclosedSex(with_sex, "female").empty());
}

TEST_CASE("privacy: the site key is made at first start with mode 0600 and read back the same", "[privacy]") {
  TempDir dir("privacy-key");
  const fs::path file = dir.path() / "site.key";
  UmaskGuard permissive(0);  // the key must not depend on the umask to stay private
  PosixFileStore store;
  auto made = SiteKey::LoadOrCreate(file, store);
  INFO((made ? "" : made.error().message()));
  REQUIRE(made);
  CHECK(ModeOf(file) == 0600);
  const std::string text = ReadText(file);
  CHECK(text.size() == 65);
  CHECK(text.back() == '\n');
  CHECK(text.find_first_not_of("0123456789abcdef\n") == std::string::npos);
  CHECK_FALSE(fs::exists(file.string() + ".tmp"));

  auto again = SiteKey::LoadOrCreate(file, store);
  REQUIRE(again);
  CHECK(PseudonymousPatientId(*again, "PID-0001") == PseudonymousPatientId(*made, "PID-0001"));
  CHECK(ReadText(file) == text);  // not replaced

  TempDir other_dir("privacy-key-2");
  auto other = SiteKey::LoadOrCreate(other_dir.path() / "site.key", store);
  REQUIRE(other);
  CHECK(PseudonymousPatientId(*other, "PID-0001") != PseudonymousPatientId(*made, "PID-0001"));
}

TEST_CASE("privacy: a site key others may read, or that is not 64 hex digits, is refused", "[privacy]") {
  TempDir dir("privacy-key-bad");
  const fs::path file = dir.path() / "site.key";
  const std::string good(64, 'a');
  PosixFileStore store;

  WriteFile(file, good + "\n", 0640);
  auto readable = SiteKey::LoadOrCreate(file, store);
  REQUIRE_FALSE(readable);
  CHECK(readable.error().kind() == ErrorKind::kPermission);
  CHECK_THAT(readable.error().message(),
             Catch::Contains(file.string()) && Catch::Contains("mode 0640") && Catch::Contains("chmod 600"));
  CHECK(ReadText(file) == good + "\n");  // a refused key is never replaced

  WriteFile(file, good.substr(0, 63) + "\n", 0600);
  auto short_key = SiteKey::Load(file);
  REQUIRE_FALSE(short_key);
  CHECK(short_key.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(short_key.error().message(), Catch::Contains("64 hex digits"));

  WriteFile(file, std::string(63, 'a') + "g\n", 0600);
  CHECK_FALSE(SiteKey::Load(file));

  WriteFile(file, good, 0600);  // without the newline
  CHECK(SiteKey::Load(file));

  const fs::path link = dir.path() / "link.key";
  fs::create_symlink(file, link);
  auto via_link = SiteKey::Load(link);
  REQUIRE_FALSE(via_link);
  CHECK_THAT(via_link.error().message(), Catch::Contains("symbolic link"));
}

TEST_CASE("privacy: rotating the site key replaces it with a new one, 0600, and needs an existing, sound key",
          "[privacy]") {
  TempDir dir("privacy-rotate");
  const fs::path file = dir.path() / "site.key";
  UmaskGuard permissive(0);
  PosixFileStore store;

  auto none = SiteKey::Rotate(file, store);
  REQUIRE_FALSE(none);
  CHECK(none.error().kind() == ErrorKind::kNotFound);
  CHECK_THAT(none.error().message(), Catch::Contains(file.string()) && Catch::Contains("nothing to rotate"));
  CHECK_FALSE(fs::exists(file));  // a rotation never makes the first key

  auto old_key = SiteKey::LoadOrCreate(file, store);
  REQUIRE(old_key);
  const std::string old_text = ReadText(file);
  // A scan pseudonymised under the old key: its record keeps the real values.
  const MappingRecord before = Pseudonymise(*old_key, "2.25.1", {"Wang^Xiaoming", "PID-7", "19700101", "M", "ACC-1", "1.2.3"});

  auto rotation = SiteKey::Rotate(file, store);
  INFO((rotation ? "" : rotation.error().message()));
  REQUIRE(rotation);
  CHECK(rotation->old_fingerprint == old_key->Fingerprint());
  CHECK(rotation->new_fingerprint != rotation->old_fingerprint);
  CHECK(ModeOf(file) == 0600);
  CHECK(ReadText(file) != old_text);
  CHECK_FALSE(fs::exists(file.string() + ".tmp"));
  auto new_key = SiteKey::Load(file);
  REQUIRE(new_key);
  CHECK(new_key->Fingerprint() == rotation->new_fingerprint);
  // New pseudonyms from now on; the old record still maps back without any key.
  const MappingRecord after = Pseudonymise(*new_key, "2.25.2", {"Wang^Xiaoming", "PID-7", "19700101", "M", "ACC-1", "1.2.3"});
  CHECK(after.patient_id.pseudonymous != before.patient_id.pseudonymous);
  CHECK(after.study_instance_uid.pseudonymous != before.study_instance_uid.pseudonymous);
  CHECK(after.key_fingerprint == rotation->new_fingerprint);
  CHECK(before.patient_id.real == "PID-7");

  // A key file that is refused is left alone: no rotation on a doubt.
  ::chmod(file.c_str(), 0644);
  const std::string current = ReadText(file);
  auto refused = SiteKey::Rotate(file, store);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().kind() == ErrorKind::kPermission);
  CHECK_THAT(refused.error().message(), Catch::Contains("chmod 600") && Catch::Contains("not rotated"));
  CHECK(ReadText(file) == current);

  // Two rotations cannot interleave: the second is refused while the first holds the lock.
  ::chmod(file.c_str(), 0600);
  auto held = store.LockExclusive(fs::path(file.string() + ".lock"));
  REQUIRE(held);
  auto busy = SiteKey::Rotate(file, store);
  REQUIRE_FALSE(busy);
  CHECK_THAT(busy.error().message(), Catch::Contains("another rotation"));
  CHECK(ReadText(file) == current);
}

TEST_CASE("privacy: the mapping record is written atomically with mode 0600 and reads back", "[privacy]") {
  TempDir dir("privacy-mapping");
  const SiteKey key = KeyOf(6);
  RealIdentity real;
  real.patient_name = "\xE7\x8E\x8B^\xE5\xB0\x8F\xE6\x98\x8E";
  real.patient_id = "PID-0001";
  real.patient_birth_date = "19640229";
  real.patient_sex = "F";
  real.accession_number = "ACC0001";
  real.study_instance_uid = "1.2.826.0.1.3680043.2.1125.99.1";
  MappingRecord record = Pseudonymise(key, "2.25.1234", real);
  CHECK(record.patient_id.pseudonymous == PseudonymousPatientId(key, real.patient_id));
  CHECK(record.accession_number.pseudonymous == PseudonymousAccession(key, real.accession_number));
  CHECK(record.study_instance_uid.pseudonymous == RemapUid(key, real.study_instance_uid));
  CHECK(record.key_fingerprint == key.Fingerprint());
  const std::string series = RemapAndRecord(key, record, "1.2.826.0.1.3680043.2.1125.99.1.2");
  CHECK(RemapAndRecord(key, record, "1.2.826.0.1.3680043.2.1125.99.1.2") == series);  // recorded once
  CHECK(RemapAndRecord(key, record, real.study_instance_uid) == record.study_instance_uid.pseudonymous);
  CHECK(record.uids.size() == 1);

  const fs::path path = dir.path() / "mapping.json";
  // A temporary left by a crash with a wide mode must not pass its mode on.
  WriteFile(path.string() + ".tmp", "stale", 0644);
  UmaskGuard permissive(0);
  PosixFileStore store;
  REQUIRE(WriteMapping(store, path, record));
  CHECK(ModeOf(path) == 0600);
  CHECK_FALSE(fs::exists(path.string() + ".tmp"));
  CHECK(ReadText(path).find(real.patient_name) != std::string::npos);  // UTF-8 as is, not \u escapes

  auto back = ReadMapping(store, path);
  INFO((back ? "" : back.error().message()));
  REQUIRE(back);
  CHECK(back->scan_uid == "2.25.1234");
  CHECK(back->patient_name == real.patient_name);
  CHECK(back->patient_birth_date == real.patient_birth_date);
  CHECK(back->patient_sex == "F");
  CHECK(back->patient_id.real == real.patient_id);
  CHECK(back->patient_id.pseudonymous == record.patient_id.pseudonymous);
  CHECK(back->accession_number.pseudonymous == record.accession_number.pseudonymous);
  CHECK(back->study_instance_uid.real == real.study_instance_uid);
  REQUIRE(back->uids.size() == 1);
  CHECK(back->uids[0].pseudonymous == series);

  // A damaged record names the file and the field, never a value.
  WriteFile(path, R"({"version": 1, "scan_uid": "2.25.1", "patient_id": {"real": "PID-0001"}})", 0600);
  auto damaged = ReadMapping(store, path);
  REQUIRE_FALSE(damaged);
  CHECK(damaged.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(damaged.error().message(), Catch::Contains(path.string()) && Catch::Contains("/key_fingerprint"));
  CHECK(damaged.error().message().find("PID-0001") == std::string::npos);
}
