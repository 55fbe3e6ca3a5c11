// Re-identification of returned objects (issue 15): CT, SR and SEG objects built here with DCMTK
// as the imaging center builds them, carrying only the scan's pseudonyms, get the real patient
// module, accession and study UID back, with every study reference inside SR and SEG mapped the
// same way and the text in UTF-8 (ISO_IR 192); an object of another scan is refused.
#include "agent/results/reidentify.hpp"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcistrmb.h>

#include <catch2/catch.hpp>

#include <array>
#include <fstream>
#include <memory>

#include "agent/results/result_set.hpp"
#include "agent/results/results.hpp"
#include "tests/results/result_objects.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace ctagent::test::result_objects;
namespace fs = std::filesystem;

namespace {

// 王小明, UTF-8.
const std::string kChineseName = "\xE7\x8E\x8B^\xE5\xB0\x8F\xE6\x98\x8E";
const std::string kRealStudy = "1.2.826.0.1.3680043.2.1125.77.4242";
// Minted by the center: not the terminal's to map.
const std::string kCtSeries = "2.25.1001";
const std::string kSegSeries = "2.25.1002";
const std::string kSrSeries = "2.25.1003";

privacy::MappingRecord Mapping() {
  std::array<std::uint8_t, privacy::SiteKey::kBytes> bytes{};
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 13 + 1);
  const auto key = privacy::SiteKey::FromBytes(bytes);
  privacy::RealIdentity real;
  real.patient_name = kChineseName;
  real.patient_id = "PID-ZH-8812";
  real.patient_birth_date = "19580611";
  real.patient_sex = "M";
  real.accession_number = "ACCZH0042";
  real.study_instance_uid = kRealStudy;
  return privacy::Pseudonymise(key, "2.25.555", real);
}

std::unique_ptr<DcmFileFormat> Parse(const std::vector<std::uint8_t>& bytes) {
  DcmInputBufferStream in;
  in.setBuffer(bytes.data(), static_cast<offile_off_t>(bytes.size()));
  in.setEos();
  auto file = std::make_unique<DcmFileFormat>();
  file->transferInit();
  REQUIRE(file->read(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength).good());
  file->transferEnd();
  return file;
}

std::string Get(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  item.findAndGetOFStringArray(tag, value);
  return value.c_str();
}

// What the center sends: the pseudonyms (Patient ID, accession), no name, an age band, and here
// a study description in ISO_IR 100 (Latin-1 "Thorax, Übersicht") that must become UTF-8.
std::vector<std::uint8_t> AsFromCenter(const std::vector<std::uint8_t>& bytes, const privacy::MappingRecord& m,
                                       const fs::path& path) {
  auto file = Parse(bytes);
  DcmDataset& ds = *file->getDataset();
  REQUIRE(ds.putAndInsertString(DCM_SpecificCharacterSet, "ISO_IR 100").good());
  REQUIRE(ds.putAndInsertString(DCM_PatientID, m.patient_id.pseudonymous.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_PatientName, "").good());
  REQUIRE(ds.putAndInsertString(DCM_PatientAge, "055Y").good());
  REQUIRE(ds.putAndInsertString(DCM_AccessionNumber, m.accession_number.pseudonymous.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_StudyDescription, "Thorax, \xDC" "bersicht").good());
  return SaveBytes(*file, path);
}

void CheckIdentityRestored(DcmDataset& ds, const privacy::MappingRecord& m) {
  CHECK(Get(ds, DCM_SpecificCharacterSet) == "ISO_IR 192");
  CHECK(Get(ds, DCM_PatientName) == kChineseName);
  CHECK(Get(ds, DCM_PatientID) == "PID-ZH-8812");
  CHECK(Get(ds, DCM_PatientBirthDate) == "19580611");
  CHECK(Get(ds, DCM_PatientSex) == "M");
  CHECK(Get(ds, DCM_AccessionNumber) == "ACCZH0042");
  CHECK(Get(ds, DCM_StudyInstanceUID) == kRealStudy);
  CHECK(Get(ds, DCM_StudyDescription) == "Thorax, \xC3\x9C" "bersicht");  // now UTF-8
  CHECK(Get(ds, DCM_PatientAge) == "055Y");
  (void)m;
}

}  // namespace

TEST_CASE("reidentify: a CT image gets the real patient, accession and study back in UTF-8", "[results][privacy]") {
  test::TempDir dir("reidentify");
  const auto m = Mapping();
  const std::string study = m.study_instance_uid.pseudonymous;
  auto sent = AsFromCenter(MakeCt(study, kCtSeries, "2.25.2001", 1, dir.path() / "ct0.dcm"), m, dir.path() / "ct.dcm");
  auto back = results::ReidentifyPart10(sent, m);
  INFO((back ? "" : back.error().message()));
  REQUIRE(back);
  auto file = Parse(*back);
  DcmDataset& ds = *file->getDataset();
  CheckIdentityRestored(ds, m);
  CHECK(Get(ds, DCM_SeriesInstanceUID) == kCtSeries);  // the center's own UIDs stay
  CHECK(Get(ds, DCM_SOPInstanceUID) == "2.25.2001");
  // Still a valid image of the real study (the checks the results path applies).
  auto info = results::ValidateInstance(*back, kRealStudy, results::DefaultAllowedSopClasses());
  INFO((info ? "" : info.error().message()));
  CHECK(info);
  // Nothing of the pseudonyms is left to reach the console.
  const std::string text(back->begin(), back->end());
  CHECK(text.find(m.patient_id.pseudonymous) == std::string::npos);
  CHECK(text.find(m.study_instance_uid.pseudonymous) == std::string::npos);
  CHECK(text.find(m.accession_number.pseudonymous) == std::string::npos);
}

TEST_CASE("reidentify: the study references inside an SR and a SEG are mapped with the object", "[results][privacy]") {
  test::TempDir dir("reidentify");
  const auto m = Mapping();
  const std::string study = m.study_instance_uid.pseudonymous;
  const std::vector<std::string> cts = {"2.25.2001", "2.25.2002"};

  SrSpec sr;
  sr.study = study;
  sr.series = kSrSeries;
  sr.sop = "2.25.3001";
  sr.image_refs = cts;
  for (const auto& ct : cts) sr.evidence.push_back({study, kCtSeries, UID_CTImageStorage, ct});
  sr.evidence.push_back({study, kSegSeries, UID_SegmentationStorage, "2.25.4001"});
  auto sr_sent = AsFromCenter(MakeSr(sr, dir.path() / "sr0.dcm"), m, dir.path() / "sr1.dcm");
  auto sr_back = results::ReidentifyPart10(sr_sent, m);
  INFO((sr_back ? "" : sr_back.error().message()));
  REQUIRE(sr_back);
  CheckIdentityRestored(*Parse(*sr_back)->getDataset(), m);
  std::ofstream(dir.path() / "sr.dcm", std::ios::binary)
      .write(reinterpret_cast<const char*>(sr_back->data()), static_cast<std::streamsize>(sr_back->size()));
  auto summary = results::ReadSrSummary(dir.path() / "sr.dcm");
  INFO((summary ? "" : summary.error().message()));
  REQUIRE(summary);
  CHECK(summary->study_uid == kRealStudy);
  REQUIRE(summary->evidence.size() == 3);
  for (const auto& ref : summary->evidence) CHECK(ref.study_uid == kRealStudy);
  CHECK(summary->evidence[0].sop_instance_uid == cts[0]);
  REQUIRE(summary->image_references.size() == 2);
  CHECK(summary->image_references[1].sop_instance_uid == cts[1]);

  SegSpec seg;
  seg.study = study;
  seg.series = kSegSeries;
  seg.sop = "2.25.4001";
  seg.referenced_series = kCtSeries;
  seg.source_instances = cts;
  auto seg_object = Parse(MakeSeg(seg, dir.path() / "seg0.dcm"));
  // A referenced study, as a SEG may carry it (Referenced Study Sequence).
  DcmItem* referenced = nullptr;
  REQUIRE(seg_object->getDataset()->findOrCreateSequenceItem(DCM_ReferencedStudySequence, referenced, 0).good());
  REQUIRE(referenced->putAndInsertString(DCM_ReferencedSOPClassUID, "1.2.840.10008.3.1.2.3.1").good());
  REQUIRE(referenced->putAndInsertString(DCM_ReferencedSOPInstanceUID, study.c_str()).good());
  auto seg_sent = AsFromCenter(SaveBytes(*seg_object, dir.path() / "seg1.dcm"), m, dir.path() / "seg2.dcm");
  auto seg_back = results::ReidentifyPart10(seg_sent, m);
  INFO((seg_back ? "" : seg_back.error().message()));
  REQUIRE(seg_back);
  auto seg_file = Parse(*seg_back);
  CheckIdentityRestored(*seg_file->getDataset(), m);
  DcmItem* ref_back = nullptr;
  REQUIRE(seg_file->getDataset()->findAndGetSequenceItem(DCM_ReferencedStudySequence, ref_back, 0).good());
  CHECK(Get(*ref_back, DCM_ReferencedSOPInstanceUID) == kRealStudy);
  std::ofstream(dir.path() / "seg.dcm", std::ios::binary)
      .write(reinterpret_cast<const char*>(seg_back->data()), static_cast<std::streamsize>(seg_back->size()));
  auto refs = results::ReadSegReferences(dir.path() / "seg.dcm");
  REQUIRE(refs);
  REQUIRE(refs->referenced_series.size() == 1);
  CHECK(refs->referenced_series[0] == kCtSeries);
}

TEST_CASE("reidentify: an object with an unknown pseudonym or a foreign study is refused", "[results][privacy]") {
  test::TempDir dir("reidentify");
  const auto m = Mapping();
  const std::string study = m.study_instance_uid.pseudonymous;
  auto good = AsFromCenter(MakeCt(study, kCtSeries, "2.25.2001", 1, dir.path() / "ct0.dcm"), m, dir.path() / "ct.dcm");

  SECTION("another patient's pseudonym") {
    auto file = Parse(good);
    REQUIRE(file->getDataset()->putAndInsertString(DCM_PatientID, "0123456789abcdef0123456789abcdef").good());
    auto back = results::ReidentifyPart10(SaveBytes(*file, dir.path() / "x.dcm"), m);
    REQUIRE_FALSE(back);
    CHECK(back.error().kind() == ErrorKind::kProtocol);
    CHECK(back.error().message().find("Patient ID (0010,0020)") != std::string::npos);
  }
  SECTION("another scan's study") {
    auto file = Parse(good);
    REQUIRE(file->getDataset()->putAndInsertString(DCM_StudyInstanceUID, "2.25.999").good());
    auto back = results::ReidentifyPart10(SaveBytes(*file, dir.path() / "x.dcm"), m);
    REQUIRE_FALSE(back);
    CHECK(back.error().kind() == ErrorKind::kProtocol);
    CHECK(back.error().message().find("Study Instance UID (0020,000D)") != std::string::npos);
  }
  SECTION("an SR whose evidence names another study") {
    SrSpec sr;
    sr.study = study;
    sr.series = kSrSeries;
    sr.sop = "2.25.3001";
    sr.evidence.push_back({"2.25.999", kCtSeries, UID_CTImageStorage, "2.25.2001"});
    auto back = results::ReidentifyPart10(AsFromCenter(MakeSr(sr, dir.path() / "sr0.dcm"), m, dir.path() / "sr.dcm"), m);
    REQUIRE_FALSE(back);
    CHECK(back.error().kind() == ErrorKind::kProtocol);
  }
  SECTION("another accession") {
    auto file = Parse(good);
    REQUIRE(file->getDataset()->putAndInsertString(DCM_AccessionNumber, "feedfacefeedface").good());
    auto back = results::ReidentifyPart10(SaveBytes(*file, dir.path() / "x.dcm"), m);
    REQUIRE_FALSE(back);
    CHECK(back.error().message().find("Accession Number (0008,0050)") != std::string::npos);
  }
  // The message names attributes, never the real identity.
  auto file = Parse(good);
  REQUIRE(file->getDataset()->putAndInsertString(DCM_PatientID, "nobody").good());
  auto back = results::ReidentifyPart10(SaveBytes(*file, dir.path() / "y.dcm"), m);
  REQUIRE_FALSE(back);
  for (const std::string& real : {kChineseName, std::string("PID-ZH-8812"), std::string("ACCZH0042"), kRealStudy}) {
    CHECK(back.error().message().find(real) == std::string::npos);
  }
}
