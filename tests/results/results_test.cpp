// Results path: validation of DICOM instances built here with DCMTK, and delivery by C-STORE to
// the real DCMTK storescp (and dcmqrscp for AE title checking) on loopback.
#include <vector>

#include "agent/results/results.hpp"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "base/uid.hpp"
#include "tests/results/result_objects.hpp"
#include "tests/support/process.hpp"

namespace fs = std::filesystem;
using ctagent::ErrorKind;
using ctagent::MintDicomUid;
using ctagent::results::ConsoleNode;
using ctagent::results::DefaultAllowedSopClasses;
using ctagent::results::EchoConsole;
using ctagent::results::SendToConsole;
using ctagent::results::ValidateInstance;
using ctagent::results::ValidateInstanceFile;
using ctagent::test::ChildProcess;
using ctagent::test::FreeLoopbackPort;
using ctagent::test::PortAcceptsConnections;
using ctagent::test::ReadText;
using ctagent::test::TempDir;
using ctagent::test::WaitFor;

namespace {

constexpr std::uint16_t kSide = 64;

struct Ids {
  std::string study = MintDicomUid();
  std::string series = MintDicomUid();
};

void PutCommon(DcmDataset& ds, const char* sop_class, const std::string& sop_instance, const Ids& ids,
               const char* modality) {
  REQUIRE(ds.putAndInsertString(DCM_SOPClassUID, sop_class).good());
  if (!sop_instance.empty()) REQUIRE(ds.putAndInsertString(DCM_SOPInstanceUID, sop_instance.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_StudyInstanceUID, ids.study.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesInstanceUID, ids.series.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_Modality, modality).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesNumber, "1").good());
  REQUIRE(ds.putAndInsertString(DCM_InstanceNumber, "1").good());
}

// A 64x64 signed 16-bit CT slice whose pixels depend on `seed`, so every slice differs.
std::unique_ptr<DcmFileFormat> MakeCt(const Ids& ids, const std::string& sop_instance, int seed,
                                      std::size_t pixel_count = std::size_t{kSide} * kSide,
                                      const char* sop_class = UID_CTImageStorage) {
  auto file = std::make_unique<DcmFileFormat>();
  DcmDataset& ds = *file->getDataset();
  PutCommon(ds, sop_class, sop_instance, ids, "CT");
  REQUIRE(ds.putAndInsertString(DCM_ImageType, "DERIVED\\SECONDARY\\AXIAL").good());
  REQUIRE(ds.putAndInsertString(DCM_ImagesInAcquisition, "3").good());
  REQUIRE(ds.putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
  REQUIRE(ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
  REQUIRE(ds.putAndInsertUint16(DCM_Rows, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Columns, kSide).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsAllocated, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsStored, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_HighBit, 15).good());
  REQUIRE(ds.putAndInsertUint16(DCM_PixelRepresentation, 1).good());
  REQUIRE(ds.putAndInsertString(DCM_RescaleIntercept, "0").good());
  REQUIRE(ds.putAndInsertString(DCM_RescaleSlope, "1").good());
  std::vector<Uint16> pixels(pixel_count);
  for (std::size_t i = 0; i < pixels.size(); ++i) {
    const int hu = static_cast<int>((i * 7 + static_cast<std::size_t>(seed) * 131) % 3000) - 1000;
    pixels[i] = static_cast<Uint16>(static_cast<std::int16_t>(hu));
  }
  REQUIRE(ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  return file;
}

// A Comprehensive SR with a measurement report's content tree (tests/results/result_objects.hpp),
// loaded back as a file format.
std::unique_ptr<DcmFileFormat> MakeSr(const Ids& ids, const std::string& sop_instance) {
  ctagent::test::result_objects::SrSpec spec;
  spec.study = ids.study;
  spec.series = ids.series;
  spec.sop = sop_instance;
  const fs::path path = fs::temp_directory_path() / ("ctagent-results-test-" + sop_instance + ".dcm");
  ctagent::test::result_objects::MakeSr(spec, path);
  auto file = std::make_unique<DcmFileFormat>();
  REQUIRE(file->loadFile(OFFilename(path.c_str())).good());
  REQUIRE(file->loadAllDataIntoMemory().good());
  fs::remove(path);
  return file;
}

fs::path Save(DcmFileFormat& file, const fs::path& path, E_TransferSyntax xfer = EXS_LittleEndianExplicit) {
  const OFCondition cond = file.saveFile(OFFilename(path.c_str()), xfer);
  INFO(cond.text());
  REQUIRE(cond.good());
  return path;
}

std::vector<std::uint8_t> ReadBytes(const fs::path& path) {
  const std::string text = ReadText(path);
  return {text.begin(), text.end()};
}

std::vector<std::uint8_t> Bytes(DcmFileFormat& file, const TempDir& dir, const std::string& name) {
  return ReadBytes(Save(file, dir.path() / name));
}

std::vector<std::uint8_t> PixelBytes(DcmDataset& ds) {
  const Uint8* data = nullptr;
  unsigned long count = 0;
  REQUIRE(ds.findAndGetUint8Array(DCM_PixelData, data, &count).good());
  REQUIRE(data != nullptr);
  return {data, data + count};
}

std::string Str(DcmDataset& ds, const DcmTagKey& tag) {
  OFString value;
  (void)ds.findAndGetOFString(tag, value);
  return value.c_str();
}

// storescp on a free loopback port, ready when it accepts TCP connections.
std::unique_ptr<ChildProcess> StartStorescp(const fs::path& out_dir, const fs::path& log, std::uint16_t port,
                                            std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {"storescp", "-aet", "CONSOLE", "-od", out_dir.string(), "+xa"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(std::to_string(port));
  auto process = std::make_unique<ChildProcess>(argv, log);
  INFO("storescp log: " << ReadText(log));
  REQUIRE(WaitFor([&] { return PortAcceptsConnections(port) || !process->Running(); }, std::chrono::seconds(10)));
  REQUIRE(process->Running());
  return process;
}

ConsoleNode Node(std::uint16_t port, const std::string& called_ae = "CONSOLE") {
  ConsoleNode node;
  node.host = "127.0.0.1";
  node.port = port;
  node.called_ae = called_ae;
  node.calling_ae = "CTAGENT";
  node.timeout_s = 10;
  return node;
}

}  // namespace

TEST_CASE("results: a well-formed CT slice and SR validate", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  const std::string ct_uid = MintDicomUid();
  auto ct = MakeCt(ids, ct_uid, 1);
  auto info = ValidateInstance(Bytes(*ct, dir, "ct.dcm"), ids.study, DefaultAllowedSopClasses());
  INFO((info ? std::string() : info.error().message()));
  REQUIRE(info);
  CHECK(info->sop_class_uid == UID_CTImageStorage);
  CHECK(info->sop_instance_uid == ct_uid);
  CHECK(info->study_uid == ids.study);
  CHECK(info->series_uid == ids.series);
  CHECK(info->modality == "CT");
  CHECK(info->rows == kSide);
  CHECK(info->columns == kSide);
  CHECK(info->images_in_acquisition == 3);

  // Implicit VR little endian is read as well, and from a file.
  const fs::path implicit = Save(*ct, dir.path() / "ct-implicit.dcm", EXS_LittleEndianImplicit);
  auto from_file = ValidateInstanceFile(implicit, ids.study, DefaultAllowedSopClasses());
  INFO((from_file ? std::string() : from_file.error().message()));
  REQUIRE(from_file);
  CHECK(from_file->sop_instance_uid == ct_uid);

  const std::string sr_uid = MintDicomUid();
  auto sr = MakeSr(ids, sr_uid);
  auto sr_info = ValidateInstance(Bytes(*sr, dir, "sr.dcm"), ids.study, DefaultAllowedSopClasses());
  INFO((sr_info ? std::string() : sr_info.error().message()));
  REQUIRE(sr_info);
  CHECK(sr_info->sop_class_uid == UID_ComprehensiveSRStorage);
  CHECK(sr_info->sop_instance_uid == sr_uid);
}

TEST_CASE("results: the default allowed SOP classes are exactly the contract's", "[results][validate]") {
  const auto& allowed = DefaultAllowedSopClasses();
  CHECK(allowed == std::set<std::string>{UID_CTImageStorage, UID_EnhancedCTImageStorage,
                                         UID_SecondaryCaptureImageStorage, UID_BasicTextSRStorage,
                                         UID_EnhancedSRStorage, UID_ComprehensiveSRStorage,
                                         UID_Comprehensive3DSRStorage, UID_SegmentationStorage});
}

TEST_CASE("results: an instance of another study is refused", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  const std::string uid = MintDicomUid();
  const std::string expected_study = MintDicomUid();
  auto ct = MakeCt(ids, uid, 1);
  auto info = ValidateInstance(Bytes(*ct, dir, "ct.dcm"), expected_study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(info);
  CHECK(info.error().kind() == ErrorKind::kProtocol);
  CHECK(info.error().message() == "instance " + uid + " belongs to study " + ids.study + ", expected " +
                                      expected_study);
}

TEST_CASE("results: a SOP class outside the allowed set is refused", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  const std::string uid = MintDicomUid();
  auto mr = MakeCt(ids, uid, 1, std::size_t{kSide} * kSide, UID_MRImageStorage);
  auto info = ValidateInstance(Bytes(*mr, dir, "mr.dcm"), ids.study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(info);
  CHECK(info.error().kind() == ErrorKind::kProtocol);
  CHECK_THAT(info.error().message(), Catch::Contains("instance " + uid) && Catch::Contains(UID_MRImageStorage) &&
                                         Catch::Contains("MRImageStorage") && Catch::Contains("not allowed"));
}

TEST_CASE("results: a missing SOPInstanceUID is refused", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  auto ct = MakeCt(ids, MintDicomUid(), 1);
  const auto good = Bytes(*ct, dir, "ct.dcm");
  // Remove it after the meta header was written, as a broken producer would.
  delete ct->getDataset()->remove(DCM_SOPInstanceUID);
  const OFCondition cond = ct->saveFile(OFFilename((dir.path() / "no-uid.dcm").c_str()), EXS_LittleEndianExplicit,
                                        EET_UndefinedLength, EGL_recalcGL, EPD_noChange, 0, 0, EWM_dontUpdateMeta);
  REQUIRE(cond.good());
  auto info = ValidateInstance(ReadBytes(dir.path() / "no-uid.dcm"), ids.study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(info);
  CHECK(info.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(info.error().message(), Catch::Contains("missing SOPInstanceUID (0008,0018)"));
  REQUIRE(ValidateInstance(good, ids.study, DefaultAllowedSopClasses()));
}

TEST_CASE("results: pixel data of the wrong length is refused", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  const std::string uid = MintDicomUid();
  auto ct = MakeCt(ids, uid, 1, std::size_t{kSide} * kSide - 10);
  auto info = ValidateInstance(Bytes(*ct, dir, "short.dcm"), ids.study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(info);
  CHECK(info.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(info.error().message(), Catch::Contains("instance " + uid) &&
                                         Catch::Contains("PixelData is " + std::to_string((64 * 64 - 10) * 2)) &&
                                         Catch::Contains("needs " + std::to_string(64 * 64 * 2) + " bytes"));
}

TEST_CASE("results: an image without pixel data or with absurd dimensions is refused", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  auto ct = MakeCt(ids, MintDicomUid(), 1);
  delete ct->getDataset()->remove(DCM_PixelData);
  auto no_pixels = ValidateInstance(Bytes(*ct, dir, "nopix.dcm"), ids.study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(no_pixels);
  CHECK(no_pixels.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(no_pixels.error().message(), Catch::Contains("no PixelData"));

  auto big = MakeCt(ids, MintDicomUid(), 1);
  REQUIRE(big->getDataset()->putAndInsertUint16(DCM_Rows, 9000).good());
  auto too_big = ValidateInstance(Bytes(*big, dir, "big.dcm"), ids.study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(too_big);
  CHECK(too_big.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(too_big.error().message(), Catch::Contains("9000 rows") && Catch::Contains("1..8192"));

  auto bits = MakeCt(ids, MintDicomUid(), 1);
  REQUIRE(bits->getDataset()->putAndInsertUint16(DCM_BitsAllocated, 12).good());
  auto bad_bits = ValidateInstance(Bytes(*bits, dir, "bits.dcm"), ids.study, DefaultAllowedSopClasses());
  REQUIRE_FALSE(bad_bits);
  CHECK(bad_bits.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(bad_bits.error().message(), Catch::Contains("BitsAllocated is 12"));
}

TEST_CASE("results: truncated bytes are refused", "[results][validate]") {
  TempDir dir("results-validate");
  const Ids ids;
  auto ct = MakeCt(ids, MintDicomUid(), 1);
  const auto good = Bytes(*ct, dir, "ct.dcm");
  REQUIRE(good.size() > 8192);
  for (const std::size_t keep : {std::size_t{100}, std::size_t{140}, std::size_t{300}, good.size() / 2,
                                 good.size() - 1}) {
    INFO("kept " << keep << " of " << good.size() << " bytes");
    auto info = ValidateInstance(std::span(good.data(), keep), ids.study, DefaultAllowedSopClasses());
    REQUIRE_FALSE(info);
    CHECK(info.error().kind() == ErrorKind::kCorrupt);
    CHECK_THAT(info.error().message(), Catch::Contains("not a DICOM Part 10 file"));
  }
}

TEST_CASE("results: random garbage and empty input are refused", "[results][validate]") {
  std::mt19937 rng(42);
  std::vector<std::uint8_t> garbage(4096);
  for (auto& b : garbage) b = static_cast<std::uint8_t>(rng());
  auto info = ValidateInstance(garbage, MintDicomUid(), DefaultAllowedSopClasses());
  REQUIRE_FALSE(info);
  CHECK(info.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(info.error().message(), Catch::StartsWith("not a DICOM Part 10 file") && Catch::Contains("DICM"));

  // Garbage behind a valid-looking preamble must fail in DCMTK's parser, not crash it.
  std::copy_n("DICM", 4, garbage.begin() + 128);
  auto behind_prefix = ValidateInstance(garbage, MintDicomUid(), DefaultAllowedSopClasses());
  REQUIRE_FALSE(behind_prefix);
  CHECK(behind_prefix.error().kind() == ErrorKind::kCorrupt);
  CHECK_THAT(behind_prefix.error().message(), Catch::StartsWith("not a DICOM Part 10 file"));

  auto empty = ValidateInstance(std::span<const std::uint8_t>(), MintDicomUid(), DefaultAllowedSopClasses());
  REQUIRE_FALSE(empty);
  CHECK(empty.error().kind() == ErrorKind::kCorrupt);
  CHECK(empty.error().message() == "not a DICOM Part 10 file: the input is empty (0 bytes)");

  auto missing = ValidateInstanceFile("/nonexistent/ctagent/none.dcm", MintDicomUid(), DefaultAllowedSopClasses());
  REQUIRE_FALSE(missing);
  CHECK(missing.error().kind() == ErrorKind::kIo);
  CHECK_THAT(missing.error().message(), Catch::Contains("/nonexistent/ctagent/none.dcm"));
}

TEST_CASE("results: C-STORE of three files arrives intact at storescp", "[results][console]") {
  TempDir dir("results-store");
  const fs::path out = dir.path() / "received";
  fs::create_directories(out);
  const std::uint16_t port = FreeLoopbackPort();
  auto storescp = StartStorescp(out, dir.path() / "storescp.log", port);

  const Ids ids;
  std::vector<std::unique_ptr<DcmFileFormat>> sent;
  sent.push_back(MakeCt(ids, MintDicomUid(), 1));
  sent.push_back(MakeCt(ids, MintDicomUid(), 2));
  sent.push_back(MakeSr(ids, MintDicomUid()));
  std::vector<fs::path> files = {
      Save(*sent[0], dir.path() / "ct1.dcm"),
      Save(*sent[1], dir.path() / "ct2.dcm", EXS_LittleEndianImplicit),  // a second transfer syntax
      Save(*sent[2], dir.path() / "sr.dcm"),
  };

  const ConsoleNode node = Node(port);
  // Repeated use in one process: echo, store, echo again, store again.
  auto echo = EchoConsole(node);
  INFO((echo ? std::string() : echo.error().message()));
  REQUIRE(echo);
  auto status = SendToConsole(node, files);
  INFO((status ? std::string() : status.error().message())
       << "\nstorescp log:\n" << ReadText(dir.path() / "storescp.log"));
  REQUIRE(status);
  REQUIRE(EchoConsole(node));

  // Negative control: the comparison below does tell two different slices apart.
  REQUIRE(sent[0]->getDataset()->compare(*sent[1]->getDataset()) != 0);
  std::map<std::string, DcmDataset*> by_uid;
  for (auto& f : sent) by_uid[Str(*f->getDataset(), DCM_SOPInstanceUID)] = f->getDataset();

  std::vector<fs::path> received;
  for (const auto& entry : fs::directory_iterator(out)) received.push_back(entry.path());
  REQUIRE(received.size() == 3);
  std::set<std::string> seen;
  for (const auto& path : received) {
    DcmFileFormat got;
    REQUIRE(got.loadFile(OFFilename(path.c_str())).good());
    DcmDataset& ds = *got.getDataset();
    const std::string uid = Str(ds, DCM_SOPInstanceUID);
    INFO("received " << path << " with SOP instance " << uid);
    REQUIRE(by_uid.count(uid) == 1);
    seen.insert(uid);
    DcmDataset& want = *by_uid[uid];
    CHECK(ds.compare(want) == 0);  // every attribute, value by value
    if (Str(want, DCM_SOPClassUID) == UID_CTImageStorage) {
      const auto got_pixels = PixelBytes(ds);
      CHECK(got_pixels.size() == std::size_t{kSide} * kSide * 2);
      CHECK(got_pixels == PixelBytes(want));
    }
  }
  CHECK(seen.size() == 3);

  // A second batch over a new association in the same process works too.
  auto again = MakeCt(ids, MintDicomUid(), 3);
  REQUIRE(SendToConsole(node, {Save(*again, dir.path() / "ct3.dcm")}));
  REQUIRE(WaitFor([&] { return std::distance(fs::directory_iterator(out), fs::directory_iterator()) == 4; },
                  std::chrono::seconds(5)));
  storescp->Stop();
}

TEST_CASE("results: a console that is not running is a network error", "[results][console]") {
  TempDir dir("results-down");
  const Ids ids;
  auto ct = MakeCt(ids, MintDicomUid(), 1);
  const fs::path file = Save(*ct, dir.path() / "ct.dcm");
  const std::uint16_t port = FreeLoopbackPort();  // nothing listens here
  const ConsoleNode node = Node(port);
  const std::string expected_prefix = "console CONSOLE@127.0.0.1:" + std::to_string(port) + " is not reachable: ";

  const auto started = std::chrono::steady_clock::now();
  auto status = SendToConsole(node, {file});
  REQUIRE_FALSE(status);
  CHECK(status.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(status.error().message(), Catch::StartsWith(expected_prefix) &&
                                           Catch::EndsWith("; is the console's DICOM node running?"));
  CHECK(status.error().IsTransient());

  auto echo = EchoConsole(node);
  REQUIRE_FALSE(echo);
  CHECK(echo.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(echo.error().message(), Catch::StartsWith(expected_prefix));
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(10));
}

TEST_CASE("results: a console that rejects our called AE title is a clear protocol error", "[results][console]") {
  TempDir dir("results-aet");
  const fs::path db = dir.path() / "db";
  fs::create_directories(db);
  const std::uint16_t port = FreeLoopbackPort();
  // dcmqrscp refuses associations whose called AE title is not in its AETable (storescp
  // accepts any called AE title). It runs in its default fork mode: in --single-process mode
  // dcmqrscp 3.6.7 crashes when it rejects an association after having served one.
  const fs::path config = dir.path() / "dcmqrscp.cfg";
  {
    std::ofstream cfg(config);
    cfg << "NetworkTCPPort = " << port << "\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
        << "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        << "AETable BEGIN\nCONSOLE " << db.string() << " RW (10, 64mb) ANY\nAETable END\n";
  }
  const fs::path log = dir.path() / "dcmqrscp.log";
  ChildProcess dcmqrscp({"dcmqrscp", "-c", config.string(), std::to_string(port)}, log);
  REQUIRE(WaitFor([&] { return PortAcceptsConnections(port) || !dcmqrscp.Running(); }, std::chrono::seconds(10)));
  INFO("dcmqrscp log: " << ReadText(log));
  REQUIRE(dcmqrscp.Running());

  // The right AE title is accepted, so the failure below is due to the title alone.
  auto right = EchoConsole(Node(port, "CONSOLE"));
  INFO((right ? std::string() : right.error().message()));
  REQUIRE(right);

  const Ids ids;
  auto ct = MakeCt(ids, MintDicomUid(), 1);
  const fs::path file = Save(*ct, dir.path() / "ct.dcm");
  auto status = SendToConsole(Node(port, "WRONGAE"), {file});
  REQUIRE_FALSE(status);
  CHECK(status.error().kind() == ErrorKind::kProtocol);
  CHECK_THAT(status.error().message(),
             Catch::Contains("rejected the association") && Catch::Contains("called AE 'WRONGAE'") &&
                 Catch::Contains("calling AE 'CTAGENT'"));
  CHECK_FALSE(status.error().IsTransient());

  auto echo = EchoConsole(Node(port, "WRONGAE"));
  REQUIRE_FALSE(echo);
  CHECK(echo.error().kind() == ErrorKind::kProtocol);
  dcmqrscp.Stop();
}

TEST_CASE("results: a console that stops answering fails within the DIMSE timeout", "[results][console]") {
  TempDir dir("results-slow");
  const fs::path out = dir.path() / "received";
  fs::create_directories(out);
  const std::uint16_t port = FreeLoopbackPort();
  // storescp holds each C-STORE response back for 8 s; our timeout is 1 s.
  auto storescp = StartStorescp(out, dir.path() / "storescp.log", port, {"--sleep-during", "8"});
  const Ids ids;
  auto ct = MakeCt(ids, MintDicomUid(), 1);
  const fs::path file = Save(*ct, dir.path() / "ct.dcm");
  ConsoleNode node = Node(port);
  node.timeout_s = 1;
  const auto started = std::chrono::steady_clock::now();
  auto status = SendToConsole(node, {file});
  const auto elapsed = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(status);
  CHECK(status.error().kind() == ErrorKind::kNetwork);
  CHECK_THAT(status.error().message(), Catch::Contains("C-STORE of " + file.string()));
  CHECK(elapsed < std::chrono::seconds(6));
  storescp->Stop();
}

TEST_CASE("results: a failure status from the console names the file and the status", "[results][console]") {
  TempDir dir("results-refused");
  const fs::path out = dir.path() / "received";
  fs::create_directories(out);
  const std::uint16_t port = FreeLoopbackPort();
  auto storescp = StartStorescp(out, dir.path() / "storescp.log", port);
  // With its output directory gone, storescp cannot write and answers 0xA700 (out of resources).
  fs::remove_all(out);
  const Ids ids;
  auto ct1 = MakeCt(ids, MintDicomUid(), 1);
  auto ct2 = MakeCt(ids, MintDicomUid(), 2);
  const std::vector<fs::path> files = {Save(*ct1, dir.path() / "ct1.dcm"), Save(*ct2, dir.path() / "ct2.dcm")};
  auto status = SendToConsole(Node(port), files);
  REQUIRE_FALSE(status);
  CHECK(status.error().kind() == ErrorKind::kProtocol);
  CHECK_THAT(status.error().message(),
             Catch::StartsWith("console CONSOLE@127.0.0.1:" + std::to_string(port) + " refused " + files[0].string() +
                               ": C-STORE status 0xA700") &&
                 Catch::EndsWith("(and 1 more of 2 files failed)"));
  // Both files were tried on the one association, and storescp is still serving.
  REQUIRE(EchoConsole(Node(port)));
  storescp->Stop();
}
