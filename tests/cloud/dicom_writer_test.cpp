// DICOM writer: a slice written with DCMTK reads back with the right UIDs, attributes, transfer
// syntax and HU values (rounded and clamped to int16).
#include <catch2/catch.hpp>

#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <limits>

#include "base/uid.hpp"
#include "cloud/worker/dicom_writer.hpp"
#include "tests/support/process.hpp"

namespace {

std::string Get(DcmDataset* ds, const DcmTagKey& tag, long pos = -1) {
  OFString value;
  const OFCondition cond = pos < 0 ? ds->findAndGetOFStringArray(tag, value)
                                   : ds->findAndGetOFString(tag, value, static_cast<unsigned long>(pos));
  INFO("tag " << tag.toString().c_str());
  REQUIRE(cond.good());
  return value.c_str();
}

}  // namespace

TEST_CASE("cloud dicom: a CT slice round-trips through DCMTK", "[cloud][dicom]") {
  ctagent::test::TempDir dir("cloud-dicom");
  ctagent::cloud::HuImage image;
  image.size = 64;
  image.pixel_spacing_mm = 6.4;
  image.hu.resize(64 * 64);
  for (std::size_t i = 0; i < image.hu.size(); ++i) image.hu[i] = static_cast<float>(static_cast<int>(i % 3000) - 1000) + 0.4f;
  image.hu[5] = 40000.0f;   // clamps to 32767
  image.hu[6] = -40000.0f;  // clamps to -32768
  image.hu[7] = -0.6f;      // rounds to -1

  ctagent::cloud::SeriesInfo series;
  series.scan_uid = ctagent::MintDicomUid();
  series.study_uid = ctagent::MintDicomUid();
  series.series_uid = ctagent::MintDicomUid();
  series.frame_of_reference_uid = ctagent::MintDicomUid();
  series.patient_id = "DEMO-0001";
  series.patient_name = "Demo^Phantom";
  series.study_description = "Chest phantom";
  series.acquisition_date_time = ctagent::cloud::IsoToDicomDateTime("2024-05-01T10:20:30.123Z");
  series.slice_thickness_mm = 5;
  ctagent::cloud::SlicePlacement placement;
  placement.instance_number = 3;
  placement.z_mm = 12.5;

  const auto path = dir.path() / "slice.dcm";
  auto sop = ctagent::cloud::WriteCtSlice(path, series, placement, image);
  REQUIRE(sop);
  CHECK(ctagent::IsValidDicomUid(*sop));
  CHECK_FALSE(std::filesystem::exists(path.string() + ".dcmtk"));

  DcmFileFormat file;
  REQUIRE(file.loadFile(path.c_str()).good());
  OFString xfer;
  REQUIRE(file.getMetaInfo()->findAndGetOFString(DCM_TransferSyntaxUID, xfer).good());
  CHECK(xfer == UID_LittleEndianExplicitTransferSyntax);
  DcmDataset* ds = file.getDataset();
  CHECK(Get(ds, DCM_SOPClassUID) == UID_CTImageStorage);
  CHECK(Get(ds, DCM_SOPInstanceUID) == *sop);
  CHECK(Get(ds, DCM_StudyInstanceUID) == series.study_uid);
  CHECK(Get(ds, DCM_SeriesInstanceUID) == series.series_uid);
  CHECK(Get(ds, DCM_FrameOfReferenceUID) == series.frame_of_reference_uid);
  CHECK(Get(ds, DCM_AcquisitionUID) == series.scan_uid);
  CHECK(Get(ds, DCM_ProtocolName) == "ctagent scan " + series.scan_uid);
  CHECK(Get(ds, DCM_Modality) == "CT");
  CHECK(Get(ds, DCM_PatientID) == "DEMO-0001");
  CHECK(Get(ds, DCM_PatientName) == "Demo^Phantom");
  CHECK(Get(ds, DCM_StudyDescription) == "Chest phantom");
  CHECK(Get(ds, DCM_SeriesDescription) == "Reference FBP reconstruction - not for diagnosis");
  CHECK(Get(ds, DCM_Manufacturer) == "ctagent reference imaging center");
  CHECK_THAT(Get(ds, DCM_ImageComments), Catch::Contains("NOT A DIAGNOSTIC PRODUCT"));
  CHECK(Get(ds, DCM_ImageType) == "DERIVED\\SECONDARY\\AXIAL");
  CHECK(Get(ds, DCM_AcquisitionDateTime) == "20240501102030");
  CHECK(Get(ds, DCM_StudyDate) == "20240501");
  CHECK(Get(ds, DCM_InstanceNumber) == "3");
  CHECK(Get(ds, DCM_PixelSpacing) == "6.4\\6.4");
  CHECK(Get(ds, DCM_SliceThickness) == "5");
  CHECK(Get(ds, DCM_ImagePositionPatient) == "-201.6\\-201.6\\12.5");
  CHECK(Get(ds, DCM_ImageOrientationPatient) == "1\\0\\0\\0\\1\\0");
  CHECK(Get(ds, DCM_SliceLocation) == "12.5");
  CHECK(Get(ds, DCM_RescaleIntercept) == "0");
  CHECK(Get(ds, DCM_RescaleSlope) == "1");
  CHECK(Get(ds, DCM_RescaleType) == "HU");
  CHECK(Get(ds, DCM_PhotometricInterpretation) == "MONOCHROME2");
  CHECK(Get(ds, DCM_WindowCenter) == "-600");
  CHECK(Get(ds, DCM_WindowWidth) == "1500");
  Uint16 value = 0;
  for (const auto& [tag, expected] : std::vector<std::pair<DcmTagKey, Uint16>>{
           {DCM_Rows, 64}, {DCM_Columns, 64}, {DCM_SamplesPerPixel, 1}, {DCM_BitsAllocated, 16},
           {DCM_BitsStored, 16}, {DCM_HighBit, 15}, {DCM_PixelRepresentation, 1}}) {
    REQUIRE(ds->findAndGetUint16(tag, value).good());
    CHECK(value == expected);
  }

  const Uint16* words = nullptr;
  unsigned long count = 0;
  REQUIRE(ds->findAndGetUint16Array(DCM_PixelData, words, &count).good());
  REQUIRE(count == image.hu.size());
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const auto stored = static_cast<std::int16_t>(words[i]);
    long expected = std::lround(static_cast<double>(image.hu[i]));
    expected = std::clamp<long>(expected, std::numeric_limits<std::int16_t>::min(), std::numeric_limits<std::int16_t>::max());
    if (stored != expected) ++mismatches;
  }
  CHECK(mismatches == 0);
  CHECK(static_cast<std::int16_t>(words[5]) == 32767);
  CHECK(static_cast<std::int16_t>(words[6]) == -32768);
  CHECK(static_cast<std::int16_t>(words[7]) == -1);
  CHECK(static_cast<std::int16_t>(words[0]) == -1000);
}

TEST_CASE("cloud dicom: the writer refuses an invalid UID instead of writing a broken instance", "[cloud][dicom]") {
  ctagent::test::TempDir dir("cloud-dicom");
  ctagent::cloud::HuImage image;
  image.size = 16;
  image.pixel_spacing_mm = 1;
  image.hu.assign(256, 0.0f);
  ctagent::cloud::SeriesInfo series;
  series.scan_uid = "1.2.3";
  series.study_uid = "not-a-uid";
  series.series_uid = "1.2.4";
  series.frame_of_reference_uid = "1.2.5";
  auto result = ctagent::cloud::WriteCtSlice(dir.path() / "x.dcm", series, {}, image);
  REQUIRE_FALSE(result);
  CHECK(result.error().kind() == ctagent::ErrorKind::kInvalidInput);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "x.dcm"));
  CHECK(ctagent::cloud::IsoToDicomDateTime("garbage") == "");
}
