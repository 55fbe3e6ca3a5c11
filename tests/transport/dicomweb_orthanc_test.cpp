// DICOMweb client against the real Orthanc with its DICOMweb plugin on loopback: an instance
// built here is stored through Orthanc's REST API, then found with QIDO-RS and retrieved with
// WADO-RS; the retrieved bytes must equal the stored ones.
// Orthanc runs over plain HTTP (with the client's development flag): Debian 12's Orthanc crashes
// on its first HTTPS connection, and TLS itself is covered by the tus tests.
#include <catch2/catch.hpp>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"
#include "transport/dicomweb.hpp"
#include "transport/http.hpp"

namespace {

using ctagent::ErrorKind;
using ctagent::transport::HttpClient;
using ctagent::transport::HttpOptions;
using ctagent::transport::HttpRequest;
namespace dicomweb = ctagent::transport::dicomweb;
namespace fs = std::filesystem;

constexpr const char* kOrthancDicomWebPlugin = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

std::string NewUid() {
  char buffer[100];
  return dcmGenerateUniqueIdentifier(buffer, SITE_INSTANCE_UID_ROOT);
}

struct Ids {
  std::string study = NewUid();
  std::string series = NewUid();
  std::string instance = NewUid();
};

// A small CT image as DICOM Part 10 bytes (no patient data beyond a placeholder ID).
std::vector<std::uint8_t> MakeCtInstance(const Ids& ids, const fs::path& scratch) {
  DcmFileFormat file;
  DcmDataset& ds = *file.getDataset();
  REQUIRE(ds.putAndInsertString(DCM_SOPClassUID, UID_CTImageStorage).good());
  REQUIRE(ds.putAndInsertString(DCM_SOPInstanceUID, ids.instance.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_StudyInstanceUID, ids.study.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_SeriesInstanceUID, ids.series.c_str()).good());
  REQUIRE(ds.putAndInsertString(DCM_Modality, "CT").good());
  REQUIRE(ds.putAndInsertString(DCM_PatientID, "TEST").good());
  REQUIRE(ds.putAndInsertUint16(DCM_SamplesPerPixel, 1).good());
  REQUIRE(ds.putAndInsertString(DCM_PhotometricInterpretation, "MONOCHROME2").good());
  REQUIRE(ds.putAndInsertUint16(DCM_Rows, 8).good());
  REQUIRE(ds.putAndInsertUint16(DCM_Columns, 8).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsAllocated, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_BitsStored, 16).good());
  REQUIRE(ds.putAndInsertUint16(DCM_HighBit, 15).good());
  REQUIRE(ds.putAndInsertUint16(DCM_PixelRepresentation, 1).good());
  std::vector<Uint16> pixels(64);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<Uint16>(i * 37);
  REQUIRE(ds.putAndInsertUint16Array(DCM_PixelData, pixels.data(), static_cast<unsigned long>(pixels.size())).good());
  const fs::path path = scratch / "instance.dcm";
  REQUIRE(file.saveFile(path.c_str(), EXS_LittleEndianExplicit).good());
  const std::string text = ctagent::test::ReadText(path);
  return {text.begin(), text.end()};
}

struct OrthancFixture {
  ctagent::test::TempDir dir{"transport-orthanc"};
  std::uint16_t port = ctagent::test::FreeLoopbackPort();
  std::unique_ptr<ctagent::test::ChildProcess> orthanc;
  std::string base;

  OrthancFixture() {
    const nlohmann::json config = {
        {"Name", "ctagent-transport-test"},
        {"StorageDirectory", (dir.path() / "db").string()},
        {"IndexDirectory", (dir.path() / "db").string()},
        {"HttpPort", port},
        {"DicomServerEnabled", false},
        {"RemoteAccessAllowed", false},
        {"AuthenticationEnabled", false},
        {"Plugins", {kOrthancDicomWebPlugin}},
        {"DicomWeb", {{"Enable", true}, {"Root", "/dicom-web/"}}},
    };
    const fs::path config_file = dir.path() / "orthanc.json";
    std::ofstream(config_file) << config.dump(2);
    orthanc = std::make_unique<ctagent::test::ChildProcess>(std::vector<std::string>{"Orthanc", config_file.string()},
                                                            dir.path() / "orthanc.log");
    REQUIRE(ctagent::test::WaitFor([&] { return ctagent::test::PortAcceptsConnections(port) || !orthanc->Running(); },
                                   std::chrono::seconds(30)));
    INFO(ctagent::test::ReadText(dir.path() / "orthanc.log"));
    REQUIRE(orthanc->Running());
    base = "http://127.0.0.1:" + std::to_string(port);
  }

  static HttpOptions Options() {
    HttpOptions options;
    options.allow_plain_http = true;
    options.connect_timeout_s = 5;
    options.request_timeout_s = 30;
    return options;
  }

  void Store(HttpClient& http, const std::vector<std::uint8_t>& instance) const {
    HttpRequest post;
    post.method = "POST";
    post.url = base + "/instances";
    post.headers = {{"Content-Type", "application/dicom"}};
    post.body = instance;
    auto stored = http.Perform(post);
    REQUIRE(stored);
    INFO(stored->body);
    REQUIRE(stored->status == 200);
  }
};

}  // namespace

TEST_CASE("DICOMweb: QIDO-RS finds and WADO-RS retrieves a stored instance byte for byte",
          "[transport][dicomweb][integration]") {
  if (!fs::exists(kOrthancDicomWebPlugin)) FAIL("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb");
  OrthancFixture f;
  HttpClient http(OrthancFixture::Options());
  const Ids ids;
  const auto instance = MakeCtInstance(ids, f.dir.path());
  f.Store(http, instance);

  dicomweb::Client client(http, f.base + "/dicom-web/");
  auto series = client.SearchSeries(ids.study);
  REQUIRE(series);
  REQUIRE(series->size() == 1);
  CHECK(series->front().series_uid == ids.series);
  CHECK(series->front().modality == "CT");
  CHECK(series->front().instance_count == 1);

  auto instances = client.SearchInstances(ids.study, ids.series);
  REQUIRE(instances);
  REQUIRE(instances->size() == 1);
  CHECK(instances->front().sop_instance_uid == ids.instance);
  CHECK(instances->front().sop_class_uid == UID_CTImageStorage);

  auto bytes = client.RetrieveInstance(ids.study, ids.series, ids.instance, 1 << 20);
  REQUIRE(bytes);
  CHECK(*bytes == instance);

  auto too_big = client.RetrieveInstance(ids.study, ids.series, ids.instance, 100);
  REQUIRE_FALSE(too_big);
  CHECK(too_big.error().kind() == ErrorKind::kProtocol);
}

TEST_CASE("DICOMweb: unknown studies are empty, unknown instances kNotFound, bad UIDs refused",
          "[transport][dicomweb][integration]") {
  if (!fs::exists(kOrthancDicomWebPlugin)) FAIL("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb");
  OrthancFixture f;
  HttpClient http(OrthancFixture::Options());
  dicomweb::Client client(http, f.base + "/dicom-web");
  const Ids ids;

  auto series = client.SearchSeries(ids.study);
  REQUIRE(series);
  CHECK(series->empty());
  auto instances = client.SearchInstances(ids.study, ids.series);
  REQUIRE(instances);
  CHECK(instances->empty());

  auto missing = client.RetrieveInstance(ids.study, ids.series, ids.instance, 1 << 20);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().kind() == ErrorKind::kNotFound);

  auto injected = client.SearchSeries("1.2.3/../../instances");
  REQUIRE_FALSE(injected);
  CHECK(injected.error().kind() == ErrorKind::kInvalidInput);
}
