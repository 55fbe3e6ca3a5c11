// The AI result set encoders (cloud/worker/result_encoding.hpp) on a small synthetic CT series
// and a hand-made AnalysisResult (the analysis itself is tested elsewhere): the SR parses with
// dsrdump and reads back with DCMTK with the category, lesion count and per-lung involvement where
// docs/results.md says; dcmseg reads the SEG back with the right segments, frames and references;
// the report pages are valid Secondary Capture images that dcm2pnm renders.
#include <catch2/catch.hpp>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcsequen.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>
#include <dcmtk/dcmsr/dsrdoc.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "base/uid.hpp"
#include "agent/results/result_set.hpp"
#include "agent/results/results.hpp"
#include "cloud/worker/dicom_writer.hpp"
#include "cloud/worker/result_encoding.hpp"
#include "tests/support/process.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ctagent::cloud;
using namespace std::chrono_literals;

constexpr std::uint32_t kSize = 48;
constexpr std::uint32_t kSlices = 6;
constexpr double kSpacing = 8.0;

struct Fixture {
  ctagent::test::TempDir dir{"result-encoding"};
  std::vector<HuImage> slices;
  ResultInput input;
  AnalysisResult analysis;

  // Lungs: two discs; lesions (when asked): a ground-glass blob in the right lung on slices 1-2,
  // a consolidation in the left lung on slice 4.
  explicit Fixture(int lesions, bool failed = false) {
    input.ct.scan_uid = ctagent::MintDicomUid();
    input.ct.study_uid = ctagent::MintDicomUid();
    input.ct.series_uid = DerivedDicomUid("ctcloud-worker series " + input.ct.scan_uid);
    input.ct.frame_of_reference_uid = DerivedDicomUid("ctcloud-worker frame-of-reference " + input.ct.scan_uid);
    input.ct.patient_id = "PSEUDO-7";
    input.ct.patient_name = "Phantom^Chest";
    input.ct.study_description = "encoding test";
    input.ct.acquisition_date_time = "20240501102030";
    input.ct.slice_thickness_mm = 5;
    analysis.lung_mask = {kSlices, kSize, std::vector<std::uint8_t>(kSlices * kSize * kSize, 0)};
    analysis.lesion_mask = analysis.lung_mask;
    for (std::uint32_t z = 0; z < kSlices; ++z) {
      HuImage image;
      image.size = kSize;
      image.pixel_spacing_mm = kSpacing;
      image.z_mm = 100 + 5.0 * z;
      image.hu.assign(std::size_t{kSize} * kSize, 40.0f);
      for (std::uint32_t row = 0; row < kSize; ++row) {
        for (std::uint32_t col = 0; col < kSize; ++col) {
          const std::size_t at = (std::size_t{z} * kSize + row) * kSize + col;
          // Image column grows to the patient's left: the right lung is on the image's left.
          const double dr = row - 24.0, dl = col - 13.0, dr2 = col - 35.0;
          if (dr * dr + dl * dl < 64) analysis.lung_mask.labels[at] = 1;
          if (dr * dr + dr2 * dr2 < 64) analysis.lung_mask.labels[at] = 2;
          if (analysis.lung_mask.labels[at]) image.hu[std::size_t{row} * kSize + col] = -850.0f;
          if (lesions >= 1 && (z == 1 || z == 2) && std::abs(dr) <= 1 && std::abs(dl) <= 1) {
            analysis.lesion_mask.labels[at] = 1;
            image.hu[std::size_t{row} * kSize + col] = -550.0f;
          }
          if (lesions >= 2 && z == 4 && std::abs(dr) <= 2 && std::abs(dr2) <= 1) {
            analysis.lesion_mask.labels[at] = 2;
            image.hu[std::size_t{row} * kSize + col] = 20.0f;
          }
        }
      }
      slices.push_back(std::move(image));
      input.ct_instances.push_back(
          {DerivedDicomUid("ctcloud-worker instance " + input.ct.scan_uid + " " + std::to_string(z + 1)), 100 + 5.0 * z});
    }
    input.slices = slices;
    analysis.lungs[0] = {Lung::kRight, 1200.0, 0, 0, {}};
    analysis.lungs[1] = {Lung::kLeft, 1100.0, 0, 0, {}};
    for (std::size_t b = 0; b < analysis.lungs[0].histogram.size(); ++b) {
      analysis.lungs[0].histogram[b] = 100 + 30 * b;
      analysis.lungs[1].histogram[b] = 700 - 20 * b;
    }
    if (lesions >= 1) {
      analysis.lesions.push_back({1, LesionType::kGroundGlass, Lung::kRight, -88, 0, 102.5, 3.46, -550, 24, 1, 2});
      analysis.lungs[0].lesion_volume_ml = 3.46;
      analysis.lungs[0].involvement_percent = 0.29;
    }
    if (lesions >= 2) {
      analysis.lesions.push_back({2, LesionType::kConsolidation, Lung::kLeft, 88, 0, 120, 4.8, 20, 40, 4, 4});
      analysis.lungs[1].lesion_volume_ml = 4.8;
      analysis.lungs[1].involvement_percent = 0.44;
    }
    analysis.category = lesions > 0 ? StudyCategory::kHighRisk : StudyCategory::kNormal;
    analysis.category_rule = "high risk when any lesion is consolidation or involvement >= 5 % (test rule)";
    if (failed) {
      analysis = AnalysisResult{};
      analysis.category = StudyCategory::kFailed;
      analysis.failure_reason = "no lungs found (test)";
    }
  }
};

std::string Get(DcmItem* item, const DcmTagKey& tag) {
  OFString value;
  if (item->findAndGetOFStringArray(tag, value).bad()) return {};
  return value.c_str();
}

// SOP instance UIDs listed in the SR's Current Requested Procedure Evidence Sequence, with class.
std::map<std::string, std::string> Evidence(DcmDataset* ds) {
  std::map<std::string, std::string> listed;
  DcmSequenceOfItems* studies = nullptr;
  if (ds->findAndGetSequence(DCM_CurrentRequestedProcedureEvidenceSequence, studies).bad() || !studies) return listed;
  for (unsigned long s = 0; s < studies->card(); ++s) {
    DcmSequenceOfItems* series = nullptr;
    if (studies->getItem(s)->findAndGetSequence(DCM_ReferencedSeriesSequence, series).bad() || !series) continue;
    for (unsigned long r = 0; r < series->card(); ++r) {
      DcmSequenceOfItems* sops = nullptr;
      if (series->getItem(r)->findAndGetSequence(DCM_ReferencedSOPSequence, sops).bad() || !sops) continue;
      for (unsigned long i = 0; i < sops->card(); ++i) {
        listed[Get(sops->getItem(i), DCM_ReferencedSOPInstanceUID)] = Get(sops->getItem(i), DCM_ReferencedSOPClassUID);
      }
    }
  }
  return listed;
}

// What the agent reads from the SR: every 99CTAGENT item, and for INVOLVEMENT the Finding Site
// of the nearest enclosing group.
struct SrFacts {
  std::string category;
  std::string failure_reason;
  std::string lesion_count;
  std::map<std::string, std::string> involvement_by_site;  // SCT code -> value
  std::set<std::string> involvement_units;
  int lesion_groups = 0;
};

SrFacts ReadSr(const fs::path& path) {
  DcmFileFormat file;
  REQUIRE(file.loadFile(path.c_str()).good());
  DSRDocument doc;
  REQUIRE(doc.read(*file.getDataset()).good());
  DSRDocumentTree& tree = doc.getTree();
  SrFacts facts;
  REQUIRE(tree.gotoRoot() > 0);
  int guard = 0;
  do {
    REQUIRE(++guard < 100000);
    const DSRContentItem& item = tree.getCurrentContentItem();
    const DSRCodedEntryValue& concept_name = item.getConceptName();
    if (concept_name.getCodeMeaning() == "Tracking Identifier" && item.getStringValue().substr(0, 7) == "Lesion ") {
      ++facts.lesion_groups;
    }
    if (concept_name.getCodingSchemeDesignator() != "99CTAGENT") continue;
    const std::string code = concept_name.getCodeValue().c_str();
    if (code == "CATEGORY") {
      REQUIRE(item.getValueType() == DSRTypes::VT_Code);
      CHECK(item.getCodeValue().getCodingSchemeDesignator() == "99CTAGENT");
      facts.category = item.getCodeValue().getCodeValue().c_str();
    } else if (code == "FAILURE-REASON") {
      facts.failure_reason = item.getStringValue().c_str();
    } else if (code == "LESION-COUNT") {
      REQUIRE(item.getValueType() == DSRTypes::VT_Num);
      CHECK(item.getNumericValue().getMeasurementUnit().getCodeValue() == "{lesions}");
      facts.lesion_count = item.getNumericValue().getNumericValue().c_str();
    } else if (code == "INVOLVEMENT") {
      REQUIRE(item.getValueType() == DSRTypes::VT_Num);
      facts.involvement_units.insert(item.getNumericValue().getMeasurementUnit().getCodeValue().c_str());
      const std::string value = item.getNumericValue().getNumericValue().c_str();
      const size_t here = tree.getNodeID();
      REQUIRE(tree.goUp() > 0);  // the measurement group
      REQUIRE(tree.goDown() > 0);
      std::string site;
      do {
        if (tree.getCurrentContentItem().getConceptName().getCodeMeaning() == "Finding Site") {
          site = tree.getCurrentContentItem().getCodeValue().getCodeValue().c_str();
        }
      } while (tree.gotoNext() > 0);
      facts.involvement_by_site[site] = value;
      REQUIRE(tree.gotoNode(here) == here);
    }
  } while (tree.iterate() > 0);
  return facts;
}

int Run(const std::vector<std::string>& argv, const fs::path& log) {
  ctagent::test::ChildProcess child(argv, log);
  const int code = child.Wait(60s);
  if (code == -1) child.Stop();
  return code;
}

// Bytes of a binary PPM (P6) written by dcm2pnm: width, height and the pixels.
struct Ppm {
  int width = 0, height = 0;
  std::string pixels;
};
Ppm ReadPpm(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string magic;
  int max = 0;
  Ppm ppm;
  in >> magic >> ppm.width >> ppm.height >> max;
  in.get();
  REQUIRE(magic == "P6");
  REQUIRE(max == 255);
  // Read by size, not with istreambuf_iterator (GCC 12 -O2 reports a false -Wnull-dereference
  // inside std::streambuf there): exactly width x height x 3 bytes, and nothing after them.
  REQUIRE(ppm.width > 0);
  REQUIRE(ppm.height > 0);
  ppm.pixels.resize(std::size_t(ppm.width) * ppm.height * 3);
  in.read(ppm.pixels.data(), static_cast<std::streamsize>(ppm.pixels.size()));
  REQUIRE(static_cast<std::size_t>(in.gcount()) == ppm.pixels.size());
  REQUIRE(in.peek() == std::char_traits<char>::eof());
  return ppm;
}

std::size_t CountColour(const Ppm& ppm, int r, int g, int b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i + 2 < ppm.pixels.size(); i += 3) {
    n += static_cast<std::uint8_t>(ppm.pixels[i]) == r && static_cast<std::uint8_t>(ppm.pixels[i + 1]) == g &&
         static_cast<std::uint8_t>(ppm.pixels[i + 2]) == b;
  }
  return n;
}

}  // namespace

TEST_CASE("result set: two lesions give a SEG, a report with key images and a TID 1500 SR listing all",
          "[cloud][encoding]") {
  Fixture f(2);
  auto objects = WriteResultSet(f.dir.path(), f.input, f.analysis);
  INFO((objects ? "" : objects.error().message()));
  REQUIRE(objects);
  REQUIRE(objects->size() == 5);  // seg, summary page, 2 key images, sr
  CHECK((*objects)[0].kind == "seg");
  CHECK((*objects)[1].kind == "report");
  CHECK((*objects)[3].kind == "report");
  CHECK(objects->back().kind == "sr");
  CHECK((*objects)[0].sop_instance_uid == SegInstanceUid(f.input.ct.scan_uid));
  CHECK((*objects)[0].series_uid == DerivedDicomUid(f.input.ct.scan_uid + "/seg"));
  CHECK((*objects)[2].sop_instance_uid == DerivedDicomUid(f.input.ct.scan_uid + "/report/2"));
  CHECK(objects->back().sop_instance_uid == DerivedDicomUid(f.input.ct.scan_uid + "/sr/1"));

  // The SR: dsrdump (a separate DCMTK program) parses it; the agent's items are where documented.
  const fs::path sr = objects->back().file;
  const fs::path dump = f.dir.path() / "dsrdump.txt";
  REQUIRE(Run({"dsrdump", "-Ee", "-Ec", sr.string()}, dump) == 0);
  const std::string text = ctagent::test::ReadText(dump);
  CHECK_THAT(text, Catch::Contains("Imaging Measurement Report") && Catch::Contains("HIGH-RISK") &&
                       Catch::Contains("Lung involvement") && Catch::Contains("Enhanced SR"));
  const SrFacts facts = ReadSr(sr);
  CHECK(facts.category == "HIGH-RISK");
  CHECK(facts.failure_reason.empty());
  CHECK(facts.lesion_count == "2");
  CHECK(facts.lesion_groups == 2);
  REQUIRE(facts.involvement_by_site.size() == 2);
  CHECK(facts.involvement_by_site.at("3341006") == "0.29");   // right lung
  CHECK(facts.involvement_by_site.at("44029006") == "0.44");  // left lung
  CHECK(facts.involvement_units == std::set<std::string>{"%"});

  DcmFileFormat sr_file;
  REQUIRE(sr_file.loadFile(sr.c_str()).good());
  DcmDataset* sr_ds = sr_file.getDataset();
  CHECK(Get(sr_ds, DCM_SOPClassUID) == kEnhancedSrStorage);
  CHECK(Get(sr_ds, DCM_StudyInstanceUID) == f.input.ct.study_uid);
  CHECK(Get(sr_ds, DCM_SeriesNumber) == "1003");
  CHECK(Get(sr_ds, DCM_SeriesInstanceUID) == SrSeriesUid(f.input.ct.scan_uid));
  CHECK(Get(sr_ds, DCM_SOPInstanceUID) == SrInstanceUid(f.input.ct.scan_uid));
  const auto evidence = Evidence(sr_ds);
  CHECK(evidence.size() == f.input.ct_instances.size() + 4);
  for (const auto& ct : f.input.ct_instances) CHECK(evidence.count(ct.sop_instance_uid) == 1);
  for (std::size_t i = 0; i + 1 < objects->size(); ++i) {
    CHECK(evidence.count((*objects)[i].sop_instance_uid) == 1);
    if (evidence.count((*objects)[i].sop_instance_uid)) CHECK(evidence.at((*objects)[i].sop_instance_uid) == (*objects)[i].sop_class_uid);
  }

  // The SEG: dcmseg reads it back; segments, frames and each frame's source CT instance.
  DcmSegmentation* raw = nullptr;
  REQUIRE(DcmSegmentation::loadFile((*objects)[0].file.c_str(), raw).good());
  std::unique_ptr<DcmSegmentation> seg(raw);
  REQUIRE(seg->getNumberOfSegments() == 4);
  OFString label;
  REQUIRE(seg->getSegment(1)->getSegmentLabel(label).good());
  CHECK(label == "Right lung");
  REQUIRE(seg->getSegment(3)->getSegmentLabel(label).good());
  CHECK(label == "Lesion 1");
  CodeSequenceMacro& type = seg->getSegment(4)->getSegmentedPropertyTypeCode();
  OFString code;
  REQUIRE(type.getCodeValue(code).good());
  CHECK(code == "CONSOLIDATION");
  // Lungs on all 6 slices (x2), lesion 1 on 2 slices, lesion 2 on 1.
  CHECK(seg->getNumberOfFrames() == 2 * kSlices + 2 + 1);

  DcmFileFormat seg_file;
  REQUIRE(seg_file.loadFile((*objects)[0].file.c_str()).good());
  DcmDataset* seg_ds = seg_file.getDataset();
  CHECK(Get(seg_ds, DCM_SOPClassUID) == kSegmentationStorage);
  CHECK(Get(seg_ds, DCM_FrameOfReferenceUID) == f.input.ct.frame_of_reference_uid);
  CHECK(Get(seg_ds, DCM_StudyInstanceUID) == f.input.ct.study_uid);
  CHECK(Get(seg_ds, DCM_SeriesNumber) == "1001");
  DcmItem* referenced_series = nullptr;
  REQUIRE(seg_ds->findAndGetSequenceItem(DCM_ReferencedSeriesSequence, referenced_series, 0).good());
  CHECK(Get(referenced_series, DCM_SeriesInstanceUID) == f.input.ct.series_uid);
  DcmSequenceOfItems* per_frame = nullptr;
  REQUIRE(seg_ds->findAndGetSequence(DCM_PerFrameFunctionalGroupsSequence, per_frame).good());
  REQUIRE(per_frame->card() == 2 * kSlices + 3);
  std::multiset<std::pair<std::string, std::string>> frames;  // (segment, source SOP instance)
  for (unsigned long i = 0; i < per_frame->card(); ++i) {
    DcmItem* frame = per_frame->getItem(i);
    DcmItem *derivation = nullptr, *source = nullptr, *segment = nullptr;
    REQUIRE(frame->findAndGetSequenceItem(DCM_DerivationImageSequence, derivation, 0).good());
    REQUIRE(derivation->findAndGetSequenceItem(DCM_SourceImageSequence, source, 0).good());
    REQUIRE(frame->findAndGetSequenceItem(DCM_SegmentIdentificationSequence, segment, 0).good());
    frames.insert({Get(segment, DCM_ReferencedSegmentNumber), Get(source, DCM_ReferencedSOPInstanceUID)});
  }
  CHECK(frames.count({"3", f.input.ct_instances[1].sop_instance_uid}) == 1);
  CHECK(frames.count({"3", f.input.ct_instances[2].sop_instance_uid}) == 1);
  CHECK(frames.count({"4", f.input.ct_instances[4].sop_instance_uid}) == 1);
  CHECK(frames.count({"1", f.input.ct_instances[0].sop_instance_uid}) == 1);
  CHECK(frames.count({"3", f.input.ct_instances[0].sop_instance_uid}) == 0);

  // The report: valid SC pages that dcm2pnm renders; page 1 carries the red warning title, the
  // key image of the consolidation its red outline.
  for (std::size_t page = 1; page <= 3; ++page) {
    const ResultObject& object = (*objects)[page];
    REQUIRE(Run({"dcmdump", "-q", object.file.string()}, f.dir.path() / "dcmdump.txt") == 0);
    DcmFileFormat sc;
    REQUIRE(sc.loadFile(object.file.c_str()).good());
    CHECK(Get(sc.getDataset(), DCM_SOPClassUID) == kSecondaryCaptureStorage);
    CHECK(Get(sc.getDataset(), DCM_PhotometricInterpretation) == "RGB");
    CHECK(Get(sc.getDataset(), DCM_SeriesNumber) == "1002");
    CHECK(Get(sc.getDataset(), DCM_InstanceNumber) == std::to_string(page));
    const fs::path ppm_path = f.dir.path() / ("page-" + std::to_string(page) + ".ppm");
    REQUIRE(Run({"dcm2pnm", "--write-raw-pnm", object.file.string(), ppm_path.string()}, f.dir.path() / "dcm2pnm.txt") ==
            0);
    const Ppm ppm = ReadPpm(ppm_path);
    CHECK(CountColour(ppm, 255, 90, 70) > 500);  // the warning title
    if (page == 3) CHECK(CountColour(ppm, 255, 60, 60) > 20);  // the consolidation's outline
    if (page == 2) CHECK(CountColour(ppm, 255, 220, 0) > 20);  // the ground glass outline
  }
  DcmFileFormat key_image;
  REQUIRE(key_image.loadFile((*objects)[3].file.c_str()).good());
  DcmItem* source_image = nullptr;
  REQUIRE(key_image.getDataset()->findAndGetSequenceItem(DCM_SourceImageSequence, source_image, 0).good());
  CHECK(Get(source_image, DCM_ReferencedSOPInstanceUID) == f.input.ct_instances[4].sop_instance_uid);
}

TEST_CASE("result set: the same scan encoded twice has the same UIDs", "[cloud][encoding]") {
  Fixture f(1);
  fs::create_directories(f.dir.path() / "a");
  fs::create_directories(f.dir.path() / "b");
  auto first = WriteResultSet(f.dir.path() / "a", f.input, f.analysis);
  auto second = WriteResultSet(f.dir.path() / "b", f.input, f.analysis);
  REQUIRE(first);
  REQUIRE(second);
  REQUIRE(first->size() == second->size());
  for (std::size_t i = 0; i < first->size(); ++i) {
    CHECK((*first)[i].sop_instance_uid == (*second)[i].sop_instance_uid);
    CHECK((*first)[i].series_uid == (*second)[i].series_uid);
  }
  DcmFileFormat a, b;
  REQUIRE(a.loadFile(first->back().file.c_str()).good());
  REQUIRE(b.loadFile(second->back().file.c_str()).good());
  CHECK(Get(a.getDataset(), DCM_SOPInstanceUID) == Get(b.getDataset(), DCM_SOPInstanceUID));
}

TEST_CASE("result set: no lesions give category NORMAL, the two lung segments and one report page",
          "[cloud][encoding]") {
  Fixture f(0);
  auto objects = WriteResultSet(f.dir.path(), f.input, f.analysis);
  INFO((objects ? "" : objects.error().message()));
  REQUIRE(objects);
  REQUIRE(objects->size() == 3);  // seg, summary page, sr
  const SrFacts facts = ReadSr(objects->back().file);
  CHECK(facts.category == "NORMAL");
  CHECK(facts.lesion_count == "0");
  CHECK(facts.lesion_groups == 0);
  CHECK(facts.involvement_by_site.size() == 2);
  CHECK(facts.involvement_by_site.count("3341006") == 1);
  CHECK(facts.involvement_by_site.at("3341006") == "0.00");
  DcmSegmentation* raw = nullptr;
  REQUIRE(DcmSegmentation::loadFile((*objects)[0].file.c_str(), raw).good());
  std::unique_ptr<DcmSegmentation> seg(raw);
  CHECK(seg->getNumberOfSegments() == 2);
  CHECK(seg->getNumberOfFrames() == 2 * kSlices);
  DcmFileFormat sr;
  REQUIRE(sr.loadFile(objects->back().file.c_str()).good());
  CHECK(Evidence(sr.getDataset()).size() == kSlices + 2);
  REQUIRE(Run({"dsrdump", objects->back().file.string()}, f.dir.path() / "dsrdump.txt") == 0);
}

TEST_CASE("result set: a patient name beyond ASCII is kept exactly in the SEG, the report page and the SR",
          "[cloud][encoding]") {
  // A manifest from a terminal without a worklist carries the configuration's name as it is
  // (docs/privacy.md); 王^小明 in UTF-8. The SEG was refused for it ("PatientName: Invalid
  // character") and the analysis stored as FAILED.
  Fixture f(0);
  const std::string name = "\xE7\x8E\x8B^\xE5\xB0\x8F\xE6\x98\x8E";
  f.input.ct.patient_name = name;
  auto objects = WriteResultSet(f.dir.path(), f.input, f.analysis);
  INFO((objects ? "" : objects.error().message()));
  REQUIRE(objects);
  REQUIRE(objects->size() == 3);  // seg, summary page, sr
  for (const auto& object : *objects) {
    INFO(object.kind);
    DcmFileFormat file;
    REQUIRE(file.loadFile(object.file.c_str()).good());
    CHECK(Get(file.getDataset(), DCM_SpecificCharacterSet) == "ISO_IR 192");
    CHECK(Get(file.getDataset(), DCM_PatientName) == name);
  }
  REQUIRE((*objects)[0].kind == "seg");
  DcmSegmentation* raw = nullptr;
  REQUIRE(DcmSegmentation::loadFile((*objects)[0].file.c_str(), raw).good());
  std::unique_ptr<DcmSegmentation> seg(raw);
  CHECK(seg->getNumberOfSegments() == 2);
}

TEST_CASE("result set: a failed analysis gives no SEG, a report page with the reason and an SR saying FAILED",
          "[cloud][encoding]") {
  Fixture f(0, /*failed=*/true);
  auto objects = WriteResultSet(f.dir.path(), f.input, f.analysis);
  INFO((objects ? "" : objects.error().message()));
  REQUIRE(objects);
  REQUIRE(objects->size() == 2);  // summary page, sr
  CHECK((*objects)[0].kind == "report");
  const SrFacts facts = ReadSr(objects->back().file);
  CHECK(facts.category == "FAILED");
  CHECK(facts.failure_reason == "no lungs found (test)");
  CHECK(facts.involvement_by_site.empty());
  DcmFileFormat sr;
  REQUIRE(sr.loadFile(objects->back().file.c_str()).good());
  const auto evidence = Evidence(sr.getDataset());
  CHECK(evidence.size() == kSlices + 1);
  CHECK(evidence.count((*objects)[0].sop_instance_uid) == 1);
  REQUIRE(Run({"dsrdump", objects->back().file.string()}, f.dir.path() / "dsrdump.txt") == 0);
  CHECK_THAT(ctagent::test::ReadText(f.dir.path() / "dsrdump.txt"), Catch::Contains("FAILED"));
  // And the encoder refuses to make a SEG of it.
  CHECK_FALSE(WriteSegmentation(f.dir.path() / "seg.dcm", f.input, f.analysis));
}

TEST_CASE("result set: masks that do not match the slices are refused with a reason", "[cloud][encoding]") {
  Fixture f(1);
  f.analysis.lesion_mask.slices = kSlices - 1;
  auto seg = WriteSegmentation(f.dir.path() / "seg.dcm", f.input, f.analysis);
  REQUIRE_FALSE(seg);
  CHECK_THAT(seg.error().message(), Catch::Contains("mask"));
  ResultInput short_input = f.input;
  short_input.ct_instances.pop_back();
  auto report = WriteReport(f.dir.path(), short_input, f.analysis);
  REQUIRE_FALSE(report);
  CHECK_THAT(report.error().message(), Catch::Contains("slices"));
}

// The contract with the agent (part of docs/results.md): the agent's own validation and result-set
// check accept what the reference center writes, and read the same findings.
TEST_CASE("result set: the agent's validation and result-set check accept the set and read its findings",
          "[cloud][encoding]") {
  Fixture f(2);
  auto objects = WriteResultSet(f.dir.path(), f.input, f.analysis);
  REQUIRE(objects);
  std::map<std::string, ctagent::results::StoredInstance> stored;
  for (const auto& ct : f.input.ct_instances) stored[ct.sop_instance_uid] = {f.input.ct.series_uid, kCtImageStorage};
  std::vector<ctagent::results::SegReferences> segs;
  for (const ResultObject& object : *objects) {
    auto info = ctagent::results::ValidateInstanceFile(object.file, f.input.ct.study_uid,
                                                       ctagent::results::DefaultAllowedSopClasses());
    INFO(object.file.filename().string() << ": " << (info ? "" : info.error().message()));
    REQUIRE(info);
    CHECK(info->sop_instance_uid == object.sop_instance_uid);
    CHECK(info->series_uid == object.series_uid);
    stored[object.sop_instance_uid] = {object.series_uid, object.sop_class_uid};
    if (object.kind == "seg") {
      auto refs = ctagent::results::ReadSegReferences(object.file);
      REQUIRE(refs);
      segs.push_back(std::move(*refs));
    }
  }
  auto sr = ctagent::results::ReadSrSummary(objects->back().file);
  INFO((sr ? "" : sr.error().message()));
  REQUIRE(sr);
  CHECK(sr->findings.category == "HIGH-RISK");
  REQUIRE(sr->findings.lesion_count.has_value());
  CHECK(*sr->findings.lesion_count == 2);
  REQUIRE(sr->findings.involvement_right_percent.has_value());
  CHECK(*sr->findings.involvement_right_percent == Approx(0.29));
  REQUIRE(sr->findings.involvement_left_percent.has_value());
  CHECK(*sr->findings.involvement_left_percent == Approx(0.44));
  const auto verdict = ctagent::results::CheckResultSet(f.input.ct.study_uid, *sr, stored, {}, {}, segs);
  INFO(verdict.reason);
  CHECK(verdict.state == ctagent::results::ResultSetVerdict::State::kComplete);
  CHECK(verdict.members.size() == objects->size() + f.input.ct_instances.size());

  // The same set with one report page not yet stored: the agent waits for it.
  auto missing = stored;
  missing.erase((*objects)[1].sop_instance_uid);
  const auto waiting = ctagent::results::CheckResultSet(f.input.ct.study_uid, *sr, missing,
                                                        {(*objects)[1].sop_instance_uid}, {}, segs);
  CHECK(waiting.state == ctagent::results::ResultSetVerdict::State::kWaiting);
}
