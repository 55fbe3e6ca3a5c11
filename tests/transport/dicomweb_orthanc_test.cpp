// DICOMweb client against the real Orthanc with its DICOMweb plugin on loopback: an instance
// built here is stored through Orthanc's REST API, then found with QIDO-RS and retrieved with
// WADO-RS; the retrieved bytes must equal the stored ones. The same through the asynchronous
// client (AsyncHttp on one io_context): several retrieves in flight at once on the test's thread,
// and the same errors as the blocking client for the same refusals, deadline and stop.
// Orthanc runs over plain HTTP (with the client's development flag): Debian 12's Orthanc crashes
// on its first HTTPS connection, and TLS itself is covered by the tus tests.
#include <catch2/catch.hpp>

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"
#include "transport/dicomweb.hpp"
#include "transport/dicomweb_async.hpp"
#include "transport/http.hpp"
#include "transport/http_async.hpp"

#include <boost/asio/io_context.hpp>

#include <optional>

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

// Runs `io` until `done` holds, at most 30 s (a lost completion fails the test, never hangs it).
template <typename Pred>
bool RunUntil(boost::asio::io_context& io, Pred done) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  io.restart();
  while (!done() && std::chrono::steady_clock::now() < give_up) {
    io.run_for(std::chrono::milliseconds(50));
    io.restart();
  }
  return done();
}

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

TEST_CASE("DICOMweb async: QIDO-RS and several WADO-RS retrieves in flight on one thread, byte for byte",
          "[transport][dicomweb][async][integration]") {
  if (!fs::exists(kOrthancDicomWebPlugin)) FAIL("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb");
  OrthancFixture f;
  HttpClient http(OrthancFixture::Options());
  constexpr std::size_t kInstances = 4;
  Ids ids;
  std::vector<std::string> uids;
  std::vector<std::vector<std::uint8_t>> stored;
  for (std::size_t i = 0; i < kInstances; ++i) {
    if (i > 0) ids.instance = NewUid();
    uids.push_back(ids.instance);
    stored.push_back(MakeCtInstance(ids, f.dir.path()));
    f.Store(http, stored.back());
  }

  boost::asio::io_context io;
  ctagent::transport::AsyncHttp engine(io, OrthancFixture::Options());
  dicomweb::AsyncClient client(io, engine, f.base + "/dicom-web/");

  std::optional<ctagent::Expected<std::vector<dicomweb::SeriesRef>>> series;
  CHECK(client.SearchSeries(ids.study, [&](auto result) { series = std::move(result); }) != 0);
  CHECK_FALSE(series);  // never from inside the call that started it
  REQUIRE(RunUntil(io, [&] { return series.has_value(); }));
  REQUIRE(*series);
  REQUIRE((*series)->size() == 1);
  CHECK((*series)->front().series_uid == ids.series);
  CHECK((*series)->front().modality == "CT");
  CHECK((*series)->front().instance_count == kInstances);

  std::optional<ctagent::Expected<std::vector<dicomweb::InstanceRef>>> instances;
  client.SearchInstances(ids.study, ids.series, [&](auto result) { instances = std::move(result); });
  REQUIRE(RunUntil(io, [&] { return instances.has_value(); }));
  REQUIRE(*instances);
  REQUIRE((*instances)->size() == kInstances);
  std::vector<std::string> listed;
  for (const auto& inst : **instances) {
    listed.push_back(inst.sop_instance_uid);
    CHECK(inst.sop_class_uid == UID_CTImageStorage);
  }
  std::sort(listed.begin(), listed.end());
  std::vector<std::string> expected_uids = uids;
  std::sort(expected_uids.begin(), expected_uids.end());
  CHECK(listed == expected_uids);

  // All retrieves started before the loop runs: they are in flight together on this thread.
  std::vector<std::optional<ctagent::Expected<std::vector<std::uint8_t>>>> bytes(kInstances);
  std::size_t finished = 0;
  for (std::size_t i = 0; i < kInstances; ++i) {
    client.RetrieveInstance(ids.study, ids.series, uids[i], 1 << 20, [&, i](auto result, bool over_limit) {
      CHECK_FALSE(over_limit);
      bytes[i] = std::move(result);
      ++finished;
    });
  }
  CHECK(engine.in_flight() == kInstances);
  REQUIRE(RunUntil(io, [&] { return finished == kInstances; }));
  for (std::size_t i = 0; i < kInstances; ++i) {
    REQUIRE(*bytes[i]);
    CHECK(**bytes[i] == stored[i]);
  }

  // Over the cap: refused as the blocking client refuses it, over_limit set.
  std::optional<ctagent::Expected<std::vector<std::uint8_t>>> too_big;
  bool too_big_over = false;
  client.RetrieveInstance(ids.study, ids.series, uids[0], 100, [&](auto result, bool over_limit) {
    too_big = std::move(result);
    too_big_over = over_limit;
  });
  REQUIRE(RunUntil(io, [&] { return too_big.has_value(); }));
  REQUIRE_FALSE(*too_big);
  CHECK(too_big->error().kind() == ErrorKind::kProtocol);
  CHECK(too_big_over);
  bool blocking_over = false;
  dicomweb::Client blocking(http, f.base + "/dicom-web/");
  auto blocking_too_big = blocking.RetrieveInstance(ids.study, ids.series, uids[0], 100, &blocking_over);
  REQUIRE_FALSE(blocking_too_big);
  CHECK(blocking_over);
  CHECK(too_big->error().message() == blocking_too_big.error().message());
}

TEST_CASE("DICOMweb async: the blocking client's errors for unknown instances, bad UIDs, deadline and stop",
          "[transport][dicomweb][async][integration]") {
  if (!fs::exists(kOrthancDicomWebPlugin)) FAIL("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb");
  OrthancFixture f;
  HttpClient http(OrthancFixture::Options());
  dicomweb::Client blocking(http, f.base + "/dicom-web");
  boost::asio::io_context io;
  ctagent::transport::AsyncHttp engine(io, OrthancFixture::Options());
  dicomweb::AsyncClient client(io, engine, f.base + "/dicom-web");
  const Ids ids;

  std::optional<ctagent::Expected<std::vector<dicomweb::SeriesRef>>> series;
  client.SearchSeries(ids.study, [&](auto result) { series = std::move(result); });
  REQUIRE(RunUntil(io, [&] { return series.has_value(); }));
  REQUIRE(*series);
  CHECK((*series)->empty());

  std::optional<ctagent::Expected<std::vector<std::uint8_t>>> missing;
  client.RetrieveInstance(ids.study, ids.series, ids.instance, 1 << 20,
                          [&](auto result, bool) { missing = std::move(result); });
  REQUIRE(RunUntil(io, [&] { return missing.has_value(); }));
  REQUIRE_FALSE(*missing);
  CHECK(missing->error().kind() == ErrorKind::kNotFound);
  auto blocking_missing = blocking.RetrieveInstance(ids.study, ids.series, ids.instance, 1 << 20);
  REQUIRE_FALSE(blocking_missing);
  CHECK(missing->error().message() == blocking_missing.error().message());

  // Refused before sending: no request id, the completion still runs on the loop.
  std::optional<ctagent::Expected<std::vector<dicomweb::SeriesRef>>> injected;
  CHECK(client.SearchSeries("1.2.3/../../instances", [&](auto result) { injected = std::move(result); }) == 0);
  CHECK_FALSE(injected);
  REQUIRE(RunUntil(io, [&] { return injected.has_value(); }));
  REQUIRE_FALSE(*injected);
  CHECK(injected->error().kind() == ErrorKind::kInvalidInput);
  CHECK(injected->error().message() == blocking.SearchSeries("1.2.3/../../instances").error().message());

  // A deadline already passed: not started, as the blocking client says.
  const auto past = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  client.SetDeadline(past);
  blocking.SetDeadline(past);
  std::optional<ctagent::Expected<std::vector<dicomweb::InstanceRef>>> late;
  CHECK(client.SearchInstances(ids.study, ids.series, [&](auto result) { late = std::move(result); }) == 0);
  REQUIRE(RunUntil(io, [&] { return late.has_value(); }));
  REQUIRE_FALSE(*late);
  CHECK(late->error().kind() == ErrorKind::kNetwork);
  CHECK(late->error().message().find("not started: the deadline has passed") != std::string::npos);
  CHECK(late->error().message() == blocking.SearchInstances(ids.study, ids.series).error().message());

  // Stopping: the request is sent but ends kCancelled with the blocking client's message.
  const auto later = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  client.SetDeadline(later, [] { return false; });
  blocking.SetDeadline(later, [] { return false; });
  std::optional<ctagent::Expected<std::vector<dicomweb::SeriesRef>>> stopped;
  CHECK(client.SearchSeries(ids.study, [&](auto result) { stopped = std::move(result); }) != 0);
  REQUIRE(RunUntil(io, [&] { return stopped.has_value(); }));
  REQUIRE_FALSE(*stopped);
  CHECK(stopped->error().kind() == ErrorKind::kCancelled);
  CHECK(stopped->error().message().find("stopped: the agent is stopping") != std::string::npos);
  CHECK(stopped->error().message() == blocking.SearchSeries(ids.study).error().message());
}
