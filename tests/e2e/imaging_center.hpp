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

  // The agent's `cloud` section for this center (upload and DICOMweb URLs, its user, password
  // file and CA), with `extra` keys (parallel_uploads, patch_bytes...) added.
  nlohmann::json CloudSection(const nlohmann::json& extra = nlohmann::json::object()) const {
    const auto get = [this](const char* key) {
      const auto it = env.find(key);
      return it == env.end() ? std::string() : it->second;
    };
    nlohmann::json cloud = {{"upload_url", get("TUS_URL")},
                            {"dicomweb_url", get("DICOMWEB_URL")},
                            {"username", get("AGENT_USER")},
                            {"password_file", get("AGENT_PASSWORD_FILE")},
                            {"tls", {{"ca_file", get("CA_FILE")}}}};
    cloud.update(extra);
    return cloud;
  }
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
  ::setenv("CTCLOUD_WORKER", (std::filesystem::path(CTAGENT_BINARY_DIR) / "cloud/worker/ctcloud-worker").c_str(), 1);
  const std::string start_log = run_dir.string() + "-start.log";
  int rc = -1;
  // The ports are free when chosen, but not reserved: another test's server or outgoing
  // connection may take one before a service binds it. A start that failed on a port in use (in
  // this attempt's part of the log) is tried once more on new ports; any other failure fails the
  // test. Orthanc's own HTTP port, behind the TLS proxy, is bound on every interface, so it is
  // chosen free there (FreeWildcardPort says why not "the Orthanc port + 1").
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto log_before = ReadText(start_log).size();
    const auto tus_port = FreeLoopbackPort();
    auto orthanc_port = FreeLoopbackPort();
    auto internal_port = FreeWildcardPort();
    for (int i = 0; i < 100 && (orthanc_port == tus_port || internal_port == tus_port || internal_port == orthanc_port);
         ++i) {
      orthanc_port = FreeLoopbackPort();
      internal_port = FreeWildcardPort();
    }
    const std::string cmd = std::string("'") + CTAGENT_SOURCE_DIR + "/cloud/imaging-center.sh' start '" +
                            run_dir.string() + "' --tus-port " + std::to_string(tus_port) + " --orthanc-port " +
                            std::to_string(orthanc_port) + " --orthanc-internal-port " + std::to_string(internal_port) +
                            (extra_args.empty() ? "" : " " + extra_args) + " >> '" + start_log + "' 2>&1";
    rc = std::system(cmd.c_str());
    if (rc == 0) break;
    const std::string attempt_log = ReadText(start_log).substr(log_before);
    if (attempt_log.find("already in use") == std::string::npos &&
        attempt_log.find("EADDRINUSE") == std::string::npos) {
      break;
    }
    WARN("the reference center's start found a port taken; starting it again on other ports:\n" << attempt_log);
  }
  INFO(ReadText(start_log));
  REQUIRE(rc == 0);
  center->env = ReadEnvFile(run_dir / "center.env");
  REQUIRE(center->env.count("TUS_URL"));
  REQUIRE(center->env.count("DICOMWEB_URL"));
  return center;
}

// The scanner console: DCMTK's storescp (AE title CONSOLE) on a free loopback port, writing
// every object it receives into `dir`; stopped by its PID when the handle goes.
struct Console {
  std::filesystem::path dir;
  std::uint16_t port = 0;
  std::unique_ptr<ChildProcess> process;
};

inline Console StartConsole(const std::filesystem::path& dir, const std::filesystem::path& log) {
  Console console;
  console.dir = dir;
  std::filesystem::create_directories(dir);
  console.port = FreeLoopbackPort();
  console.process = std::make_unique<ChildProcess>(
      std::vector<std::string>{"storescp", "--aetitle", "CONSOLE", "--output-directory", dir.string(),
                               std::to_string(console.port)},
      log);
  INFO("storescp log: " << ReadText(log));
  REQUIRE(WaitFor([&] { return PortAcceptsConnections(console.port); }, std::chrono::seconds(20)));
  return console;
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
