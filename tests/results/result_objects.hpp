// DICOM objects of an AI result set built here with DCMTK, as the reference imaging center builds
// them (docs/results.md, "The AI result set"): CT slices, a TID 1500-shaped measurement report
// (Comprehensive SR with the 99CTAGENT items), a binary segmentation and a readable report page
// (RGB Secondary Capture). Small on purpose: 16x16 images.
#pragma once

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcitem.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmsr/dsrdoc.h>

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "agent/results/result_set.hpp"
#include "tests/support/process.hpp"

namespace ctagent::test::result_objects {

constexpr std::uint16_t kSide = 16;

inline void PutIdentity(DcmDataset& ds, const char* sop_class, const std::string& sop, const std::string& study,
                        const std::string& series, const char* modality, const char* series_number) {
  REQUIRE(ds.putAndInsertString(DCM_SOPClassUID, sop_class).good());
  REQUIRE(ds.putAndInsertString(DCM_SOPInstanceUID, sop.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_StudyInstanceUID, study.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesInstanceUID, series.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_Modality, modality).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesNumber, series_number).good());
  REQUIRE(ds.putAndInsertString(DCM_InstanceNumber, "1").good());
}

inline std::vector<std::uint8_t> SaveBytes(DcmFileFormat& file, const std::filesystem::path& path) {
  const OFCondition cond = file.saveFile(OFFilename(path.c_str()), EXS_LittleEndianExplicit);
  INFO(cond.text());
  REQUIRE(cond.good());
  const std::string text = ReadText(path);
  return {text.begin(), text.end()};
}

// A 16x16 signed 16-bit CT slice of a series of `images_in_acquisition` slices.
inline std::vector<std::uint8_t> MakeCt(const std::string& study, const std::string& series, const std::string& sop,
                                        int images_in_acquisition, const std::filesystem::path& path) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  PutIdentity(ds, UID_CTImageStorage, sop, study, series, "CT", "1000");
  REQUIRE(ds.putAndInsertString(DCM_ImagesInAcquisition, std::to_string(images_in_acquisition).c_str()).good());
  REQUIRE(ds.putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
  REQUIRE(ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
  REQUIRE(ds.putAndInsertUint16(DCM_Rows, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Columns, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsAllocated, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsStored, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_HighBit, 15).good());
  REQUIRE(ds.putAndInsertUint16(DCM_PixelRepresentation, 1).good());
  std::vector<Uint16> pixels(std::size_t{kSide} * kSide);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>(i * 7);
  REQUIRE(ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  return SaveBytes(file, path);
}

// A binary segmentation with one frame per referenced CT instance.
struct SegSpec {
  std::string study, series, sop;
  std::string referenced_series;               // the CT series (Referenced Series Sequence)
  std::vector<std::string> source_instances;   // one frame per entry (Source Image Sequence)
  std::size_t pixel_bytes_short = 0;           // cut the pixel data by this many bytes
  std::uint16_t bits_allocated = 1;
};

inline std::vector<std::uint8_t> MakeSeg(const SegSpec& spec, const std::filesystem::path& path) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  PutIdentity(ds, UID_SegmentationStorage, spec.sop, spec.study, spec.series, "SEG", "1001");
  REQUIRE(ds.putAndInsertString(DCM_SegmentationType, "BINARY").good());
  REQUIRE(ds.putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
  REQUIRE(ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
  REQUIRE(ds.putAndInsertUint16(DCM_Rows, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Columns, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsAllocated, spec.bits_allocated).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsStored, spec.bits_allocated).good());
  REQUIRE(ds.putAndInsertUint16(DCM_HighBit, static_cast<Uint16>(spec.bits_allocated - 1)).good());
  REQUIRE(ds.putAndInsertUint16(DCM_PixelRepresentation, 0).good());
  const std::size_t frames = spec.source_instances.size();
  REQUIRE(ds.putAndInsertString(DCM_NumberOfFrames, std::to_string(frames).c_str()).good());
  DcmItem* series_item = nullptr;
  REQUIRE(ds.findOrCreateSequenceItem(DCM_ReferencedSeriesSequence, series_item, 0).good());
  REQUIRE(series_item->putAndInsertString(DCM_SeriesInstanceUID, spec.referenced_series.c_str()).good());
  for (std::size_t f = 0; f < frames; ++f) {
    DcmItem* ref = nullptr;
    REQUIRE(series_item->findOrCreateSequenceItem(DCM_ReferencedInstanceSequence, ref, -2).good());
    REQUIRE(ref->putAndInsertString(DCM_ReferencedSOPClassUID, UID_CTImageStorage).good());
    REQUIRE(ref->putAndInsertString(DCM_ReferencedSOPInstanceUID, spec.source_instances[f].c_str()).good());
    DcmItem* frame = nullptr;
    REQUIRE(ds.findOrCreateSequenceItem(DCM_PerFrameFunctionalGroupsSequence, frame, -2).good());
    DcmItem* derivation = nullptr;
    REQUIRE(frame->findOrCreateSequenceItem(DCM_DerivationImageSequence, derivation, 0).good());
    DcmItem* source = nullptr;
    REQUIRE(derivation->findOrCreateSequenceItem(DCM_SourceImageSequence, source, 0).good());
    REQUIRE(source->putAndInsertString(DCM_ReferencedSOPClassUID, UID_CTImageStorage).good());
    REQUIRE(source->putAndInsertString(DCM_ReferencedSOPInstanceUID, spec.source_instances[f].c_str()).good());
  }
  const std::size_t bits = std::size_t{kSide} * kSide * frames * spec.bits_allocated;
  std::vector<Uint8> pixels((bits + 7) / 8 - spec.pixel_bytes_short, 0x0F);
  REQUIRE(ds.putAndInsertUint8Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  return SaveBytes(file, path);
}

// One page of the readable report: 16x16 RGB Secondary Capture.
inline std::vector<std::uint8_t> MakeReportPage(const std::string& study, const std::string& series,
                                                const std::string& sop, const std::filesystem::path& path) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  PutIdentity(ds, UID_SecondaryCaptureImageStorage, sop, study, series, "OT", "1002");
  REQUIRE(ds.putAndInsertUint16(DCM_SamplesPerPixel, 3).good());
  REQUIRE(ds.putAndInsertString(DCM_PhotometricInterpretation, "RGB").good());
  REQUIRE(ds.putAndInsertUint16(DCM_PlanarConfiguration, 0).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Rows, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Columns, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsAllocated, 8).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsStored, 8).good());
  REQUIRE(ds.putAndInsertUint16(DCM_HighBit, 7).good());
  REQUIRE(ds.putAndInsertUint16(DCM_PixelRepresentation, 0).good());
  std::vector<Uint8> pixels(std::size_t{kSide} * kSide * 3, 200);
  REQUIRE(ds.putAndInsertUint8Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  return SaveBytes(file, path);
}

// The measurement report: CATEGORY (and FAILURE-REASON), LESION-COUNT in a study summary group,
// per lung a group with Finding Site and INVOLVEMENT (or the two fixed-place variants), the image
// library's IMAGE items, and the evidence sequence.
struct SrSpec {
  std::string study, series, sop;
  const char* sop_class = UID_ComprehensiveSRStorage;
  std::string category = "HIGH-RISK";
  std::string failure_reason;
  std::optional<int> lesion_count = 2;
  std::optional<double> right = 4.5;
  std::optional<double> left = 1.25;
  bool fixed_place_involvement = false;  // INVOLVEMENT-RIGHT / -LEFT instead of finding sites
  std::vector<results::InstanceRef> evidence;
  std::vector<std::string> image_refs;  // CT instances in the image library
  std::string padding_text;             // a TEXT item of this content (to make a large SR)
};

inline void AddNum(DSRDocumentTree& tree, const char* code, double value, const char* unit, DSRTypes::E_AddMode mode) {
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Num, mode) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue(code, "99CTAGENT", code)).good());
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  REQUIRE(tree.getCurrentContentItem()
              .setNumericValue(DSRNumericMeasurementValue(text, DSRCodedEntryValue(unit, "UCUM", unit)))
              .good());
}

inline void AddLungGroup(DSRDocumentTree& tree, const char* site_code, const char* site_meaning, double involvement) {
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("125007", "DCM", "Measurement Group")).good());
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Num, DSRTypes::AM_belowCurrent) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("INVOLVEMENT", "99CTAGENT", "Lung involvement")).good());
  char text[32];
  std::snprintf(text, sizeof(text), "%g", involvement);
  REQUIRE(tree.getCurrentContentItem()
              .setNumericValue(DSRNumericMeasurementValue(text, DSRCodedEntryValue("%", "UCUM", "percent")))
              .good());
  // The finding site comes after the measurement, as a sibling: the agent must find it anyway.
  REQUIRE(tree.addContentItem(DSRTypes::RT_hasConceptMod, DSRTypes::VT_Code) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("363698007", "SCT", "Finding Site")).good());
  REQUIRE(tree.getCurrentContentItem().setCodeValue(DSRCodedEntryValue(site_code, "SCT", site_meaning)).good());
  REQUIRE(tree.goUp() > 0);
}

inline std::vector<std::uint8_t> MakeSr(const SrSpec& spec, const std::filesystem::path& path) {
  DSRDocument doc(DSRTypes::DT_ComprehensiveSR);
  if (std::string(spec.sop_class) == UID_EnhancedSRStorage) REQUIRE(doc.createNewDocument(DSRTypes::DT_EnhancedSR).good());
  if (std::string(spec.sop_class) == UID_Comprehensive3DSRStorage) {
    REQUIRE(doc.createNewDocument(DSRTypes::DT_Comprehensive3DSR).good());
  }
  DSRDocumentTree& tree = doc.getTree();
  REQUIRE(tree.addContentItem(DSRTypes::RT_isRoot, DSRTypes::VT_Container) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("126000", "DCM", "Imaging Measurement Report")).good());
  // Image library.
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, DSRTypes::AM_belowCurrent) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("111028", "DCM", "Image Library")).good());
  bool first = true;
  for (const auto& uid : spec.image_refs) {
    REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Image,
                                first ? DSRTypes::AM_belowCurrent : DSRTypes::AM_afterCurrent) > 0);
    REQUIRE(tree.getCurrentContentItem().setImageReference(DSRImageReferenceValue(UID_CTImageStorage, uid.c_str())).good());
    first = false;
  }
  if (!first) REQUIRE(tree.goUp() > 0);
  // Qualitative evaluation: the category.
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("C0034375", "UMLS", "Qualitative Evaluations")).good());
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Code, DSRTypes::AM_belowCurrent) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("CATEGORY", "99CTAGENT", "Study category")).good());
  REQUIRE(tree.getCurrentContentItem()
              .setCodeValue(DSRCodedEntryValue(spec.category.c_str(), "99CTAGENT", spec.category.c_str()))
              .good());
  if (!spec.failure_reason.empty()) {
    REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Text) > 0);
    REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("FAILURE-REASON", "99CTAGENT", "Failure reason")).good());
    REQUIRE(tree.getCurrentContentItem().setStringValue(spec.failure_reason.c_str()).good());
  }
  if (!spec.padding_text.empty()) {
    REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Text) > 0);
    REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("CATEGORY-RULE", "99CTAGENT", "Category rule")).good());
    REQUIRE(tree.getCurrentContentItem().setStringValue(spec.padding_text.c_str(), OFFalse).good());
  }
  REQUIRE(tree.goUp() > 0);
  // Imaging measurements: the study summary group and the lung groups.
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("126010", "DCM", "Imaging Measurements")).good());
  REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Container, DSRTypes::AM_belowCurrent) > 0);
  REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("125007", "DCM", "Measurement Group")).good());
  bool below = true;
  if (spec.lesion_count) {
    AddNum(tree, "LESION-COUNT", *spec.lesion_count, "{lesions}", DSRTypes::AM_belowCurrent);
    below = false;
  }
  if (spec.fixed_place_involvement) {
    if (spec.right) AddNum(tree, "INVOLVEMENT-RIGHT", *spec.right, "%", below ? DSRTypes::AM_belowCurrent : DSRTypes::AM_afterCurrent), below = false;
    if (spec.left) AddNum(tree, "INVOLVEMENT-LEFT", *spec.left, "%", below ? DSRTypes::AM_belowCurrent : DSRTypes::AM_afterCurrent), below = false;
  }
  if (below) {
    // An empty group is not allowed: give it a text.
    REQUIRE(tree.addContentItem(DSRTypes::RT_contains, DSRTypes::VT_Text, DSRTypes::AM_belowCurrent) > 0);
    REQUIRE(tree.getCurrentContentItem().setConceptName(DSRCodedEntryValue("112039", "DCM", "Tracking Identifier")).good());
    REQUIRE(tree.getCurrentContentItem().setStringValue("Study summary").good());
  }
  REQUIRE(tree.goUp() > 0);
  if (!spec.fixed_place_involvement) {
    if (spec.right) AddLungGroup(tree, "3341006", "Right lung", *spec.right);
    if (spec.left) AddLungGroup(tree, "44029006", "Left lung", *spec.left);
  }
  for (const auto& ref : spec.evidence) {
    REQUIRE(doc.getCurrentRequestedProcedureEvidence()
                .addItem(ref.study_uid.c_str(), ref.series_uid.c_str(), ref.sop_class_uid.c_str(),
                         ref.sop_instance_uid.c_str())
                .good());
  }
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  const OFCondition written = doc.write(ds);
  INFO(written.text());
  REQUIRE(written.good());
  REQUIRE(ds.putAndInsertString(DCM_SOPInstanceUID, spec.sop.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_StudyInstanceUID, spec.study.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesInstanceUID, spec.series.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesNumber, "1003").good());
  return SaveBytes(file, path);
}

}  // namespace ctagent::test::result_objects
