// The reference imaging center (cloud/imaging-center.sh: the tus server, the reconstruction
// worker, Orthanc with DICOMweb behind its TLS proxy) started on free loopback ports for an end
// to end test, and stopped when the handle goes; and the uploads its tus store holds.
// Header-only, for the tests in tests/e2e (they define CTAGENT_SOURCE_DIR and CTAGENT_BINARY_DIR).
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.hpp"

namespace ctagent::test {

// KEY=VALUE lines (quotes around a value removed), as imaging-center.sh writes center.env.
inline std::map<std::string, std::string> ReadEnvFile(const std::filesystem::path& path) {
  std::map<std::string, std::string> env;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos || line.starts_with("#")) continue;
    std::string value = line.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'')) value = value.substr(1, value.size() - 2);
    env[line.substr(0, eq)] = value;
  }
  return env;
}

struct ImagingCenter {
  std::filesystem::path run_dir;
  std::map<std::string, std::string> env;  // center.env: TUS_URL, DICOMWEB_URL, the CA, the password file...
  ~ImagingCenter() {
    const std::string cmd = std::string("'") + CTAGENT_SOURCE_DIR + "/cloud/imaging-center.sh' stop '" +
                            run_dir.string() + "' >/dev/null 2>&1";
    (void)std::system(cmd.c_str());
  }
};

// Starts the center in run_dir; extra_args go to imaging-center.sh start (e.g. "--image-size 256").
inline std::unique_ptr<ImagingCenter> StartImagingCenter(const std::filesystem::path& run_dir,
                                                         const std::string& extra_args = "") {
  auto center = std::make_unique<ImagingCenter>();
  center->run_dir = run_dir;
  const auto tus_port = FreeLoopbackPort();
  // Orthanc itself listens on orthanc_port + 1 behind the TLS proxy (docs/reference-imaging-center.md).
  auto orthanc_port = FreeLoopbackPort();
  for (int i = 0; i < 100 && (orthanc_port == tus_port || orthanc_port + 1 == tus_port || orthanc_port == 65535 ||
                              PortAcceptsConnections(static_cast<std::uint16_t>(orthanc_port + 1)));
       ++i) {
    orthanc_port = FreeLoopbackPort();
  }
  ::setenv("CTCLOUD_WORKER", (std::filesystem::path(CTAGENT_BINARY_DIR) / "cloud/worker/ctcloud-worker").c_str(), 1);
  const std::string cmd = std::string("'") + CTAGENT_SOURCE_DIR + "/cloud/imaging-center.sh' start '" +
                          run_dir.string() + "' --tus-port " + std::to_string(tus_port) + " --orthanc-port " +
                          std::to_string(orthanc_port) + (extra_args.empty() ? "" : " " + extra_args) + " > '" +
                          (run_dir.string() + "-start.log") + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO(ReadText(run_dir.string() + "-start.log"));
  REQUIRE(rc == 0);
  center->env = ReadEnvFile(run_dir / "center.env");
  REQUIRE(center->env.count("TUS_URL"));
  REQUIRE(center->env.count("DICOMWEB_URL"));
  return center;
}

// An upload in the tus file store: data file DIR/<id>, info DIR/<id>.json.
struct StoredUpload {
  std::filesystem::path data;
  nlohmann::json metadata;
  std::uint64_t size = 0;
};

inline std::vector<StoredUpload> ListUploads(const std::filesystem::path& store) {
  std::vector<StoredUpload> uploads;
  for (const auto& entry : std::filesystem::directory_iterator(store)) {
    if (entry.path().extension() != ".json") continue;
    auto info = nlohmann::json::parse(ReadText(entry.path()), nullptr, false);
    if (info.is_discarded()) continue;
    StoredUpload u;
    u.data = entry.path().parent_path() / entry.path().stem();
    u.metadata = info.value("metadata", nlohmann::json::object());
    u.size = info.value("size", std::uint64_t{0});
    uploads.push_back(std::move(u));
  }
  return uploads;
}

inline std::vector<std::uint8_t> ReadBytes(const std::filesystem::path& path) {
  const std::string text = ReadText(path);
  return {text.begin(), text.end()};
}

}  // namespace ctagent::test
