// Seed generator for dicom_validate_fuzz: writes DICOM Part 10 instances of the fuzz study into
// the folder given as the only argument: CT slices in three transfer syntaxes, a multi-frame
// image, a Secondary Capture, a Comprehensive SR, and instances each validation step refuses
// (another study, a disallowed SOP class, a missing UID, short pixel data, absurd dimensions).
#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

namespace {

constexpr const char* kStudy = "1.2.826.0.1.3680043.10.1018.1";  // dicom_validate_fuzz.cpp's kFuzzStudy
constexpr const char* kSeries = "1.2.826.0.1.3680043.10.1018.2";

struct Image {
  const char* sop_class = UID_CTImageStorage;
  const char* study = kStudy;
  const char* sop_instance = "1.2.826.0.1.3680043.10.1018.3";
  Uint16 rows = 16;
  Uint16 columns = 16;
  Uint16 bits = 16;
  Uint16 samples = 1;
  const char* frames = nullptr;
  long pixel_values = -1;  // -1: rows * columns * samples * frames
  bool pixels = true;
};

bool Write(const Image& image, const std::filesystem::path& path, E_TransferSyntax xfer) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  ds.putAndInsertString(DCM_SOPClassUID, image.sop_class);
  if (image.sop_instance != nullptr) ds.putAndInsertString(DCM_SOPInstanceUID, image.sop_instance);
  ds.putAndInsertString(DCM_StudyInstanceUID, image.study);
  ds.putAndInsertString(DCM_SeriesInstanceUID, kSeries);
  ds.putAndInsertString(DCM_Modality, "CT");
  ds.putAndInsertString(DCM_ImagesInAcquisition, "3");
  ds.putAndInsertUint16(DCM_Rows, image.rows);
  ds.putAndInsertUint16(DCM_Columns, image.columns);
  ds.putAndInsertUint16(DCM_BitsAllocated, image.bits);
  ds.putAndInsertUint16(DCM_BitsStored, image.bits);
  ds.putAndInsertUint16(DCM_HighBit, static_cast<Uint16>(image.bits - 1));
  ds.putAndInsertUint16(DCM_SamplesPerPixel, image.samples);
  ds.putAndInsertString(DCM_PhotometricInterpretation, image.samples == 3 ? "RGB" : "MONOCHROME2");
  long frames = 1;
  if (image.frames != nullptr) {
    ds.putAndInsertString(DCM_NumberOfFrames, image.frames);
    frames = std::stol(image.frames);
  }
  if (image.pixels) {
    const long values = image.pixel_values >= 0 ? image.pixel_values
                                                : long{image.rows} * image.columns * image.samples * frames;
    if (image.bits == 16) {
      std::vector<Uint16> pixels(static_cast<std::size_t>(values));
      for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>(i * 37);
      ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size()));
    } else {
      std::vector<Uint8> pixels(static_cast<std::size_t>(values));
      for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint8>(i * 37);
      ds.putAndInsertUint8Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size()));
    }
  }
  return file.saveFile(OFFilename(path.c_str()), xfer).good();
}

bool WriteSr(const std::filesystem::path& path) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  ds.putAndInsertString(DCM_SOPClassUID, UID_ComprehensiveSRStorage);
  ds.putAndInsertString(DCM_SOPInstanceUID, "1.2.826.0.1.3680043.10.1018.9");
  ds.putAndInsertString(DCM_StudyInstanceUID, kStudy);
  ds.putAndInsertString(DCM_SeriesInstanceUID, kSeries);
  ds.putAndInsertString(DCM_Modality, "SR");
  ds.putAndInsertString(DCM_ValueType, "CONTAINER");
  ds.putAndInsertString(DCM_CompletionFlag, "COMPLETE");
  return file.saveFile(OFFilename(path.c_str()), EXS_LittleEndianExplicit).good();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  bool ok = true;
  ok = Write(Image{}, dir / "ct_explicit.dcm", EXS_LittleEndianExplicit) && ok;
  ok = Write(Image{}, dir / "ct_implicit.dcm", EXS_LittleEndianImplicit) && ok;
  ok = Write(Image{}, dir / "ct_big_endian.dcm", EXS_BigEndianExplicit) && ok;
  Image multi;
  multi.frames = "3";
  ok = Write(multi, dir / "ct_frames.dcm", EXS_LittleEndianExplicit) && ok;
  Image capture;
  capture.sop_class = UID_SecondaryCaptureImageStorage;
  capture.bits = 8;
  capture.samples = 3;
  ok = Write(capture, dir / "secondary_capture.dcm", EXS_LittleEndianExplicit) && ok;
  ok = WriteSr(dir / "sr.dcm") && ok;
  Image other_study;
  other_study.study = "1.2.3.4";
  ok = Write(other_study, dir / "other_study.dcm", EXS_LittleEndianExplicit) && ok;
  Image mr;
  mr.sop_class = UID_MRImageStorage;
  ok = Write(mr, dir / "disallowed_class.dcm", EXS_LittleEndianExplicit) && ok;
  Image no_uid;
  no_uid.sop_instance = nullptr;
  ok = Write(no_uid, dir / "no_instance_uid.dcm", EXS_LittleEndianExplicit) && ok;
  Image short_pixels;
  short_pixels.pixel_values = 100;
  ok = Write(short_pixels, dir / "short_pixels.dcm", EXS_LittleEndianExplicit) && ok;
  Image no_pixels;
  no_pixels.pixels = false;
  ok = Write(no_pixels, dir / "no_pixels.dcm", EXS_LittleEndianExplicit) && ok;
  Image huge;
  huge.rows = 60000;
  huge.pixel_values = 16;
  ok = Write(huge, dir / "absurd_rows.dcm", EXS_LittleEndianExplicit) && ok;
  if (!ok) {
    std::fprintf(stderr, "dicom_validate_fuzz_seeds: could not write every seed into %s\n", dir.c_str());
    return 1;
  }
  return 0;
}
