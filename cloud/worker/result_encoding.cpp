// The SEG and the TID 1500 SR of the result set (result_encoding.hpp); the report pages are in
// report_render.cpp.
#include "cloud/worker/result_encoding.hpp"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/dcmfg/fgderimg.h>
#include <dcmtk/dcmfg/fgfracon.h>
#include <dcmtk/dcmfg/fgpixmsr.h>
#include <dcmtk/dcmfg/fgplanor.h>
#include <dcmtk/dcmfg/fgplanpo.h>
#include <dcmtk/dcmfg/fgseg.h>
#include <dcmtk/dcmiod/iodmacro.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>
#include <dcmtk/dcmsr/cmr/tid1500.h>
#include <dcmtk/dcmsr/dsrdoc.h>

#include <array>
#include <cstdio>
#include <ctime>
#include <memory>

#include "base/durable_file.hpp"
#include "base/uid.hpp"
#include "cloud/worker/result_encoding_internal.hpp"

namespace ctagent::cloud {
namespace fs = std::filesystem;

std::string SegSeriesUid(const std::string& scan_uid) { return DerivedDicomUid(scan_uid + "/seg"); }
std::string SegInstanceUid(const std::string& scan_uid) { return DerivedDicomUid(scan_uid + "/seg/1"); }
std::string ReportSeriesUid(const std::string& scan_uid) { return DerivedDicomUid(scan_uid + "/report"); }
std::string ReportInstanceUid(const std::string& scan_uid, int page) {
  return DerivedDicomUid(scan_uid + "/report/" + std::to_string(page));
}
std::string SrSeriesUid(const std::string& scan_uid) { return DerivedDicomUid(scan_uid + "/sr"); }
std::string SrInstanceUid(const std::string& scan_uid) { return DerivedDicomUid(scan_uid + "/sr/1"); }

namespace encoding {

const char* CategoryName(StudyCategory category) {
  switch (category) {
    case StudyCategory::kNormal: return "Normal";
    case StudyCategory::kHighRisk: return "High risk";
    case StudyCategory::kFailed: return "Analysis failed";
  }
  return "?";
}

const char* LesionTypeName(LesionType type) {
  return type == LesionType::kConsolidation ? "Consolidation" : "Ground glass opacity";
}

const char* LungName(Lung lung) { return lung == Lung::kLeft ? "Left lung" : "Right lung"; }

std::string Decimal(double value, int digits) {
  char text[48];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}

DicomNow Now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char date[16], time[16];
  std::strftime(date, sizeof date, "%Y%m%d", &tm);
  std::strftime(time, sizeof time, "%H%M%S", &tm);
  return {date, time};
}

Status CheckInput(const ResultInput& input) {
  const SeriesInfo& ct = input.ct;
  if (!IsValidDicomUid(ct.scan_uid) || !IsValidDicomUid(ct.study_uid) || !IsValidDicomUid(ct.series_uid) ||
      !IsValidDicomUid(ct.frame_of_reference_uid)) {
    return MakeError(ErrorKind::kInvalidInput, "result set: scan, study, series and frame of reference UIDs must be "
                                               "valid DICOM UIDs");
  }
  if (input.ct_instances.empty() || input.slices.size() != input.ct_instances.size()) {
    return MakeError(ErrorKind::kInvalidInput, "result set: " + std::to_string(input.slices.size()) + " slices for " +
                                                   std::to_string(input.ct_instances.size()) +
                                                   " CT instances (they must match, at least one)");
  }
  for (const auto& instance : input.ct_instances) {
    if (!IsValidDicomUid(instance.sop_instance_uid)) {
      return MakeError(ErrorKind::kInvalidInput, "result set: a CT instance has no valid SOP Instance UID");
    }
  }
  return Ok();
}

Status SaveDurably(DcmFileFormat& file, const fs::path& path) {
  const auto temp = fs::path(path.string() + ".dcmtk");
  const OFCondition saved = file.saveFile(temp.c_str(), EXS_LittleEndianExplicit);
  if (saved.bad()) {
    return MakeError(ErrorKind::kIo, "cannot write " + temp.string() + ": " + saved.text() +
                                         " (check free space and permissions of the work directory)");
  }
  const auto file_store = MakeProcessFileStore();
  FileStore& store = *file_store;
  auto bytes = store.ReadAll(temp, 1ull << 30);
  if (!bytes) return MakeError(bytes.error().WithContext("reading back " + temp.string()));
  if (auto st = store.WriteDurably(path, *bytes); !st) return MakeError(st.error().WithContext(path.string()));
  std::error_code ec;
  fs::remove(temp, ec);
  return Ok();
}

void Putter::Check(const OFCondition& cond, const std::string& what) {
  if (cond.bad() && failure_.empty()) failure_ = what + ": " + cond.text();
}

}  // namespace encoding

namespace {

using encoding::Putter;

// ---------------------------------------------------------------------------------------------
// Segmentation

struct SegmentSpec {
  std::string label;
  CodeSequenceMacro category;
  CodeSequenceMacro type;
  std::uint8_t mask_value = 0;
  bool from_lesions = false;  // which mask: lesion or lung
};

}  // namespace

Expected<ResultObject> WriteSegmentation(const fs::path& path, const ResultInput& input,
                                         const AnalysisResult& analysis) {
  if (auto st = encoding::CheckInput(input); !st) return MakeError(st.error());
  if (analysis.category == StudyCategory::kFailed) {
    return MakeError(ErrorKind::kInvalidInput, "a failed analysis has no segmentation");
  }
  const std::uint32_t size = input.slices[0].size;
  const std::size_t slice_count = input.slices.size();
  for (const LabelVolume* mask : {&analysis.lung_mask, &analysis.lesion_mask}) {
    if (mask->slices != slice_count || mask->size != size ||
        mask->labels.size() != slice_count * std::size_t{size} * size) {
      return MakeError(ErrorKind::kInvalidInput, "segmentation: a mask is " + std::to_string(mask->slices) + " x " +
                                                     std::to_string(mask->size) + " but the volume is " +
                                                     std::to_string(slice_count) + " slices of " +
                                                     std::to_string(size));
    }
  }
  if (size == 0 || size > 65535) return MakeError(ErrorKind::kInvalidInput, "segmentation: bad slice size");

  const std::string& scan_uid = input.ct.scan_uid;
  const std::string series_uid = SegSeriesUid(scan_uid);
  const std::string sop_uid = SegInstanceUid(scan_uid);
  const auto now = encoding::Now();

  IODGeneralEquipmentModule::EquipmentInfo equipment(kManufacturer, "ctcloud-worker", "reference", "1");
  ContentIdentificationMacro content("1", "LUNG_ANALYSIS", "Reference lung analysis - not for diagnosis",
                                     "ctcloud-worker");
  DcmSegmentation* raw_seg = nullptr;
  OFCondition cond = DcmSegmentation::createBinarySegmentation(raw_seg, static_cast<Uint16>(size),
                                                               static_cast<Uint16>(size), equipment, content);
  std::unique_ptr<DcmSegmentation> seg(raw_seg);
  if (cond.bad() || !seg) {
    return MakeError(ErrorKind::kInternal, std::string("cannot create the segmentation: ") + cond.text());
  }
  Putter put;
  put(seg->getPatient().setPatientID(input.ct.patient_id.c_str()), "PatientID");
  put(seg->getStudy().setStudyInstanceUID(input.ct.study_uid.c_str()), "StudyInstanceUID");
  const std::string study_date =
      input.ct.acquisition_date_time.size() >= 14 ? input.ct.acquisition_date_time.substr(0, 8) : now.date;
  const std::string study_time =
      input.ct.acquisition_date_time.size() >= 14 ? input.ct.acquisition_date_time.substr(8, 6) : now.time;
  put(seg->getStudy().setStudyDate(study_date.c_str()), "StudyDate");
  put(seg->getStudy().setStudyTime(study_time.c_str()), "StudyTime");
  put(seg->getStudy().setStudyDescription(input.ct.study_description.c_str()), "StudyDescription");
  put(seg->getSeries().setSeriesInstanceUID(series_uid.c_str()), "SeriesInstanceUID");
  put(seg->getSeries().setSeriesNumber(std::to_string(kSegSeriesNumber).c_str()), "SeriesNumber");
  put(seg->getSeries().setSeriesDescription("Reference lung segmentation - not for diagnosis"), "SeriesDescription");
  put(seg->getFrameOfReference().setFrameOfReferenceUID(input.ct.frame_of_reference_uid.c_str()),
      "FrameOfReferenceUID");
  put(seg->getSOPCommon().setSOPInstanceUID(sop_uid.c_str()), "SOPInstanceUID");
  put(seg->getGeneralImage().setContentDate(now.date.c_str()), "ContentDate");
  put(seg->getGeneralImage().setContentTime(now.time.c_str()), "ContentTime");

  // Geometry shared by every frame: the CT's pixel spacing and orientation.
  const HuImage& first = input.slices[0];
  FGPixelMeasures measures;
  const std::string spacing = encoding::Decimal(first.pixel_spacing_mm, 6);
  put(measures.setPixelSpacing((spacing + "\\" + spacing).c_str()), "PixelSpacing");
  put(measures.setSliceThickness(encoding::Decimal(input.ct.slice_thickness_mm > 0 ? input.ct.slice_thickness_mm : 1, 6).c_str()),
      "SliceThickness");
  FGPlaneOrientationPatient orientation;
  put(orientation.setImageOrientationPatient("1", "0", "0", "0", "1", "0"), "ImageOrientationPatient");
  put(seg->addForAllFrames(measures), "shared PixelMeasures");
  put(seg->addForAllFrames(orientation), "shared PlaneOrientation");

  // Segments: the two lungs, then one per lesion.
  std::vector<SegmentSpec> specs;
  const CodeSequenceMacro anatomy("123037004", "SCT", "Anatomical Structure");
  const CodeSequenceMacro morphology("49755003", "SCT", "Morphologically Altered Structure");
  specs.push_back({"Right lung", anatomy, CodeSequenceMacro("3341006", "SCT", "Right lung"), 1, false});
  specs.push_back({"Left lung", anatomy, CodeSequenceMacro("44029006", "SCT", "Left lung"), 2, false});
  for (std::size_t i = 0; i < analysis.lesions.size(); ++i) {
    const LesionFinding& lesion = analysis.lesions[i];
    if (lesion.label == 0 || lesion.label > 255) {
      return MakeError(ErrorKind::kInvalidInput, "segmentation: lesion " + std::to_string(i + 1) + " has label " +
                                                     std::to_string(lesion.label) + " (1..255 expected)");
    }
    const CodeSequenceMacro type = lesion.type == LesionType::kConsolidation
                                       ? CodeSequenceMacro("CONSOLIDATION", kPrivateCodingScheme, "Consolidation")
                                       : CodeSequenceMacro("GROUND-GLASS", kPrivateCodingScheme, "Ground glass opacity");
    specs.push_back({"Lesion " + std::to_string(i + 1), morphology, type, static_cast<std::uint8_t>(lesion.label), true});
  }
  for (const auto& spec : specs) {
    DcmSegment* segment = nullptr;
    cond = DcmSegment::create(segment, spec.label.c_str(), spec.category, spec.type, DcmSegTypes::SAT_AUTOMATIC,
                              "ctagent reference lung analysis");
    if (cond.bad() || !segment) {
      return MakeError(ErrorKind::kInternal, "cannot create segment '" + spec.label + "': " + cond.text());
    }
    Uint16 number = 0;
    cond = seg->addSegment(segment, number);
    if (cond.bad()) {
      delete segment;
      return MakeError(ErrorKind::kInternal, "cannot add segment '" + spec.label + "': " + cond.text());
    }
  }

  // Frames: one per segment and slice on which the segment has voxels. One pass over each mask
  // finds which labels each slice holds, so a frame is only built where there is one.
  const std::size_t plane = std::size_t{size} * size;
  std::vector<std::array<bool, 256>> lung_present(slice_count), lesion_present(slice_count);
  for (std::size_t z = 0; z < slice_count; ++z) {
    lung_present[z].fill(false);
    lesion_present[z].fill(false);
    for (std::size_t i = 0; i < plane; ++i) {
      lung_present[z][analysis.lung_mask.labels[z * plane + i]] = true;
      lesion_present[z][analysis.lesion_mask.labels[z * plane + i]] = true;
    }
  }
  std::vector<Uint8> frame(plane);
  std::size_t frames = 0;
  for (std::size_t s = 0; s < specs.size(); ++s) {
    const SegmentSpec& spec = specs[s];
    const LabelVolume& mask = spec.from_lesions ? analysis.lesion_mask : analysis.lung_mask;
    for (std::size_t z = 0; z < slice_count; ++z) {
      if (!(spec.from_lesions ? lesion_present : lung_present)[z][spec.mask_value]) continue;
      const std::uint8_t* labels = mask.labels.data() + z * plane;
      for (std::size_t i = 0; i < plane; ++i) frame[i] = labels[i] == spec.mask_value ? 1 : 0;
      const HuImage& image = input.slices[z];
      const double half = (image.size - 1) / 2.0 * image.pixel_spacing_mm;
      FGPlanePosPatient position;
      put(position.setImagePositionPatient(encoding::Decimal(-half, 4).c_str(), encoding::Decimal(-half, 4).c_str(),
                                           encoding::Decimal(input.ct_instances[z].z_mm, 4).c_str()),
          "ImagePositionPatient");
      FGFrameContent content_fg;
      put(content_fg.setDimensionIndexValues(static_cast<Uint32>(s + 1), 0), "DimensionIndexValues");
      put(content_fg.setDimensionIndexValues(static_cast<Uint32>(z + 1), 1), "DimensionIndexValues");
      FGSegmentation segmentation_fg;
      put(segmentation_fg.setReferencedSegmentNumber(static_cast<Uint16>(s + 1)), "ReferencedSegmentNumber");
      ImageSOPInstanceReferenceMacro source;
      put(source.setReferencedSOPClassUID(kCtImageStorage), "ReferencedSOPClassUID");
      put(source.setReferencedSOPInstanceUID(input.ct_instances[z].sop_instance_uid.c_str()),
          "ReferencedSOPInstanceUID");
      OFVector<ImageSOPInstanceReferenceMacro> sources;
      sources.push_back(source);
      std::unique_ptr<FGDerivationImage> derivation(FGDerivationImage::createMinimal(
          sources, "Reference lung analysis (thresholds, connected components)",
          CodeSequenceMacro("113076", "DCM", "Segmentation"),
          CodeSequenceMacro("121322", "DCM", "Source image for image processing operation")));
      if (!derivation) return MakeError(ErrorKind::kInternal, "cannot build a Derivation Image Sequence");
      OFVector<FGBase*> per_frame;
      per_frame.push_back(&position);
      per_frame.push_back(&content_fg);
      per_frame.push_back(&segmentation_fg);
      per_frame.push_back(derivation.get());
      put(seg->addFrame(frame.data(), static_cast<Uint16>(s + 1), per_frame), "frame of " + spec.label);
      ++frames;
    }
  }
  if (frames == 0) return MakeError(ErrorKind::kInvalidInput, "segmentation: the lung mask is empty");
  const std::string dimension_uid = DerivedDicomUid(scan_uid + "/seg/dimensions");
  IODMultiframeDimensionModule& dims = seg->getDimensions();
  put(dims.addDimensionIndex(DCM_ReferencedSegmentNumber, dimension_uid.c_str(), DCM_SegmentIdentificationSequence,
                             "Segment"),
      "dimension segment");
  put(dims.addDimensionIndex(DCM_ImagePositionPatient, dimension_uid.c_str(), DCM_PlanePositionSequence,
                             "Position"),
      "dimension position");
  if (!put.failure().empty()) return MakeError(ErrorKind::kInternal, "cannot build the segmentation: " + put.failure());

  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  cond = seg->writeDataset(*ds);
  if (cond.bad()) return MakeError(ErrorKind::kInternal, std::string("cannot write the segmentation: ") + cond.text());
  // Referenced Series Sequence: the CT series and its instances this segmentation was made from.
  DcmItem* series_item = nullptr;
  put(ds->findOrCreateSequenceItem(DCM_ReferencedSeriesSequence, series_item, 0), "ReferencedSeriesSequence");
  if (series_item) {
    put(series_item->putAndInsertString(DCM_SeriesInstanceUID, input.ct.series_uid.c_str()), "SeriesInstanceUID");
    for (const auto& instance : input.ct_instances) {
      DcmItem* ref = nullptr;
      put(series_item->findOrCreateSequenceItem(DCM_ReferencedInstanceSequence, ref, -2), "ReferencedInstanceSequence");
      if (!ref) continue;
      put(ref->putAndInsertString(DCM_ReferencedSOPClassUID, kCtImageStorage), "ReferencedSOPClassUID");
      put(ref->putAndInsertString(DCM_ReferencedSOPInstanceUID, instance.sop_instance_uid.c_str()),
          "ReferencedSOPInstanceUID");
    }
  }
  put(ds->putAndInsertString(DCM_SpecificCharacterSet, "ISO_IR 192"), "SpecificCharacterSet");
  // The name goes into the written data set, not through dcmiod: its value checks (when set and
  // again on write) know no character set and refuse any name beyond ASCII ("Invalid character").
  put(ds->putAndInsertString(DCM_PatientName, input.ct.patient_name.c_str()), "PatientName");
  put(ds->putAndInsertString(DCM_ImageComments, "Reference lung analysis from the ctagent reference imaging center. "
                                                "NOT A DIAGNOSTIC PRODUCT."),
      "ImageComments");
  if (!put.failure().empty()) return MakeError(ErrorKind::kInternal, "cannot build the segmentation: " + put.failure());
  if (auto st = encoding::SaveDurably(file, path); !st) return MakeError(st.error().WithContext("segmentation"));
  return ResultObject{"seg", kSegmentationStorage, series_uid, sop_uid, path};
}

// ---------------------------------------------------------------------------------------------
// Measurement report (TID 1500)

namespace {

DSRCodedEntryValue Private(const char* value, const char* meaning) {
  return DSRCodedEntryValue(value, kPrivateCodingScheme, meaning);
}

using Units = CID7181_AbstractMultiDimensionalImageModelComponentUnits;
using Group = TID1500_MeasurementReport::TID1501_Measurements;

Units Ucum(const char* code, const char* meaning) { return Units(DSRCodedEntryValue(code, "UCUM", meaning)); }

// Adds one NUM to the current measurement group, unchecked (private concepts and units).
void AddNum(Group& group, Putter& put, const DSRCodedEntryValue& concept_name, double value, int digits,
            const Units& unit, const char* what) {
  const Group::MeasurementValue number(encoding::Decimal(value, digits).c_str(), unit, /*check=*/OFFalse);
  put(group.addMeasurement(CID7469_GenericIntensityAndSizeMeasurements(concept_name), number, /*checkEmpty=*/OFFalse,
                           /*checkValue=*/OFFalse),
      what);
}

}  // namespace

Expected<ResultObject> WriteMeasurementReport(const fs::path& path, const ResultInput& input,
                                              const AnalysisResult& analysis,
                                              std::span<const ResultObject> evidence) {
  if (auto st = encoding::CheckInput(input); !st) return MakeError(st.error());
  const std::string& scan_uid = input.ct.scan_uid;
  const bool failed = analysis.category == StudyCategory::kFailed;
  Putter put;

  TID1500_MeasurementReport report(CMR_CID7021::ImagingMeasurementReport);
  put(report.getObservationContext().addDeviceObserver(DerivedDicomUid(scan_uid + "/sr/observer").c_str(),
                                                       "ctcloud-worker", kManufacturer, "reference lung analysis"),
      "device observer");
  put(report.addProcedureReported(CMR_CID100::CTUnspecifiedBodyRegion), "procedure reported");

  // Image library: the CT instances the measurements were computed from.
  put(report.getImageLibrary().createNewImageLibrary(), "image library");
  put(report.getImageLibrary().addImageGroup(), "image library group");
  for (const auto& instance : input.ct_instances) {
    DcmItem item;
    item.putAndInsertString(DCM_SOPClassUID, kCtImageStorage);
    item.putAndInsertString(DCM_SOPInstanceUID, instance.sop_instance_uid.c_str());
    item.putAndInsertString(DCM_Modality, "CT");
    const OFCondition added = report.getImageLibrary().addImageEntry(item, TID1600_ImageLibrary::withoutDescriptors);
    if (added != CMR_EC_NoImageLibraryEntryDescriptorsToBeAdded) put(added, "image library entry");
  }

  // Study summary group: the lesion count.
  Group& summary = report.getIndividualMeasurements();
  put(summary.setTrackingIdentifier("Study summary"), "tracking identifier");
  put(summary.setTrackingUniqueIdentifier(DerivedDicomUid(scan_uid + "/sr/summary").c_str()), "tracking UID");
  put(summary.setFinding(DSRCodedEntryValue("39607008", "SCT", "Lung structure")), "finding");
  AddNum(summary, put, Private("LESION-COUNT", "Lesion count"), failed ? 0 : double(analysis.lesions.size()), 0,
         Ucum("{lesions}", "lesions"), "lesion count");

  if (!failed) {
    for (const LungFindings& lung : analysis.lungs) {
      const bool left = lung.lung == Lung::kLeft;
      put(report.addIndividualMeasurements(/*checkEmpty=*/OFFalse), "lung group");
      Group& group = report.getIndividualMeasurements();
      put(group.setTrackingIdentifier(left ? "Left lung" : "Right lung"), "tracking identifier");
      put(group.setTrackingUniqueIdentifier(
              DerivedDicomUid(scan_uid + (left ? "/sr/lung/left" : "/sr/lung/right")).c_str()),
          "tracking UID");
      put(group.setFinding(DSRCodedEntryValue("39607008", "SCT", "Lung structure")), "finding");
      put(group.addFindingSite(left ? DSRCodedEntryValue("44029006", "SCT", "Left lung")
                                    : DSRCodedEntryValue("3341006", "SCT", "Right lung"),
                               CID244e_Laterality(), DSRCodedEntryValue(), OFFalse),
          "finding site");
      AddNum(group, put, DSRCodedEntryValue("118565006", "SCT", "Volume"), lung.volume_ml, 1,
             Ucum("ml", "milliliter"), "lung volume");
      AddNum(group, put, Private("LESION-VOLUME", "Lesion volume"), lung.lesion_volume_ml, 2,
             Ucum("ml", "milliliter"), "lesion volume");
      AddNum(group, put, Private("INVOLVEMENT", "Lung involvement"), lung.involvement_percent, 2,
             Ucum("%", "Percent"), "involvement");
    }
    for (std::size_t i = 0; i < analysis.lesions.size(); ++i) {
      const LesionFinding& lesion = analysis.lesions[i];
      put(report.addIndividualMeasurements(/*checkEmpty=*/OFFalse), "lesion group");
      Group& group = report.getIndividualMeasurements();
      put(group.setTrackingIdentifier(("Lesion " + std::to_string(i + 1)).c_str()), "tracking identifier");
      put(group.setTrackingUniqueIdentifier(DerivedDicomUid(scan_uid + "/sr/lesion/" + std::to_string(i + 1)).c_str()),
          "tracking UID");
      put(group.setFinding(lesion.type == LesionType::kConsolidation
                               ? Private("CONSOLIDATION", "Consolidation")
                               : Private("GROUND-GLASS", "Ground glass opacity"),
                           OFFalse),
          "finding");
      put(group.addFindingSite(lesion.lung == Lung::kLeft ? DSRCodedEntryValue("44029006", "SCT", "Left lung")
                                                          : DSRCodedEntryValue("3341006", "SCT", "Right lung"),
                               CID244e_Laterality(), DSRCodedEntryValue(), OFFalse),
          "finding site");
      AddNum(group, put, DSRCodedEntryValue("118565006", "SCT", "Volume"), lesion.volume_ml, 2,
             Ucum("ml", "milliliter"), "lesion volume");
      AddNum(group, put, DSRCodedEntryValue("112031", "DCM", "Attenuation Coefficient"), lesion.mean_hu, 0,
             Ucum("[hnsf'U]", "Hounsfield unit"), "lesion mean HU");
      put(group.getMeasurement().setDerivation(CMR_CID7464::Mean), "derivation mean");
    }
  }

  // For the agent: the category (and why).
  const DSRCodedEntryValue category_value =
      analysis.category == StudyCategory::kNormal     ? Private("NORMAL", "Normal")
      : analysis.category == StudyCategory::kHighRisk ? Private("HIGH-RISK", "High risk")
                                                      : Private("FAILED", "Analysis failed");
  put(report.addQualitativeEvaluation(Private("CATEGORY", "Study category"), category_value, OFFalse), "category");
  if (failed) {
    const std::string reason = analysis.failure_reason.empty() ? "unknown" : analysis.failure_reason;
    put(report.addQualitativeEvaluation(Private("FAILURE-REASON", "Failure reason"), reason.c_str(), OFFalse),
        "failure reason");
  }
  if (!analysis.category_rule.empty()) {
    put(report.addQualitativeEvaluation(Private("CATEGORY-RULE", "Category rule"), analysis.category_rule.c_str(),
                                        OFFalse),
        "category rule");
  }
  if (!put.failure().empty()) return MakeError(ErrorKind::kInternal, "cannot build the measurement report: " + put.failure());

  DSRDocument doc(DSRTypes::DT_EnhancedSR);
  doc.setSpecificCharacterSetType(DSRTypes::CS_UTF8);
  OFCondition cond = doc.setTreeFromRootTemplate(report, /*expandTree=*/OFTrue);
  if (cond.bad()) {
    return MakeError(ErrorKind::kInternal, std::string("the TID 1500 report does not fit an Enhanced SR: ") +
                                               cond.text());
  }
  put(doc.createNewSeriesInStudy(input.ct.study_uid.c_str()), "study");
  put(doc.setPatientName(input.ct.patient_name.c_str()), "PatientName");
  put(doc.setPatientID(input.ct.patient_id.c_str()), "PatientID");
  put(doc.setStudyDescription(input.ct.study_description.c_str()), "StudyDescription");
  put(doc.setSeriesDescription("Reference lung analysis - not for diagnosis"), "SeriesDescription");
  put(doc.setSeriesNumber(std::to_string(kSrSeriesNumber).c_str()), "SeriesNumber");
  put(doc.setInstanceNumber("1"), "InstanceNumber");
  put(doc.setManufacturer(kManufacturer), "Manufacturer");
  if (input.ct.acquisition_date_time.size() >= 14) {
    put(doc.setStudyDate(input.ct.acquisition_date_time.substr(0, 8).c_str()), "StudyDate");
    put(doc.setStudyTime(input.ct.acquisition_date_time.substr(8, 6).c_str()), "StudyTime");
  }
  // Evidence: every CT instance and every other object of the set.
  DSRSOPInstanceReferenceList& list = doc.getCurrentRequestedProcedureEvidence();
  for (const auto& instance : input.ct_instances) {
    put(list.addItem(input.ct.study_uid.c_str(), input.ct.series_uid.c_str(), kCtImageStorage,
                     instance.sop_instance_uid.c_str()),
        "evidence CT");
  }
  for (const auto& object : evidence) {
    put(list.addItem(input.ct.study_uid.c_str(), object.series_uid.c_str(), object.sop_class_uid.c_str(),
                     object.sop_instance_uid.c_str()),
        "evidence " + object.kind);
  }
  if (!put.failure().empty()) return MakeError(ErrorKind::kInternal, "cannot build the measurement report: " + put.failure());

  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  cond = doc.write(*ds);
  if (cond.bad()) return MakeError(ErrorKind::kInternal, std::string("cannot write the measurement report: ") + cond.text());
  // DCMTK mints series and instance UIDs; the set's are derived from the scan UID.
  const std::string series_uid = SrSeriesUid(scan_uid);
  const std::string sop_uid = SrInstanceUid(scan_uid);
  put(ds->putAndInsertString(DCM_SeriesInstanceUID, series_uid.c_str()), "SeriesInstanceUID");
  put(ds->putAndInsertString(DCM_SOPInstanceUID, sop_uid.c_str()), "SOPInstanceUID");
  if (!put.failure().empty()) return MakeError(ErrorKind::kInternal, "cannot build the measurement report: " + put.failure());
  if (auto st = encoding::SaveDurably(file, path); !st) return MakeError(st.error().WithContext("measurement report"));
  OFString sop_class;
  ds->findAndGetOFString(DCM_SOPClassUID, sop_class);
  if (sop_class != kEnhancedSrStorage) {
    return MakeError(ErrorKind::kInternal, std::string("DCMTK wrote the measurement report as SOP class ") +
                                               sop_class.c_str() + ", not Enhanced SR");
  }
  return ResultObject{"sr", kEnhancedSrStorage, series_uid, sop_uid, path};
}

Expected<std::vector<ResultObject>> WriteResultSet(const fs::path& dir, const ResultInput& input,
                                                   const AnalysisResult& analysis) {
  std::vector<ResultObject> objects;
  if (analysis.category != StudyCategory::kFailed) {
    auto seg = WriteSegmentation(dir / "seg.dcm", input, analysis);
    if (!seg) return MakeError(seg.error());
    objects.push_back(std::move(*seg));
  }
  auto pages = WriteReport(dir, input, analysis);
  if (!pages) return MakeError(pages.error());
  for (auto& page : *pages) objects.push_back(std::move(page));
  auto sr = WriteMeasurementReport(dir / "sr.dcm", input, analysis, objects);
  if (!sr) return MakeError(sr.error());
  objects.push_back(std::move(*sr));
  return objects;
}

}  // namespace ctagent::cloud
