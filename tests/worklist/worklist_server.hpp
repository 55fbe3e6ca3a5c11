// A real Modality Worklist peer for tests: DCMTK's wlmscpfs serving a worklist folder whose
// entries a test writes with dump2dcm (UTF-8, or re-encoded with iconv, e.g. GB18030), on a free
// loopback port, stopped by PID; and a capture of everything this process writes to its output.
#pragma once

#include <fcntl.h>
#include <iconv.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/worklist/worklist.hpp"
#include "tests/support/process.hpp"

namespace ctagent::test::worklist_peer {

namespace fs = std::filesystem;
using ctagent::worklist::TodaysSteps;
using ctagent::worklist::WorklistNode;
using ctagent::test::ChildProcess;
using ctagent::test::FreeLoopbackPort;
using ctagent::test::PortAcceptsConnections;
using ctagent::test::ReadText;
using ctagent::test::TempDir;
using ctagent::test::WaitFor;

inline constexpr const char* kServerAe = "RISWL";
inline constexpr const char* kStationAe = "CTSTATION1";

// 王小明 ("Wang Xiaoming") and a description with Chinese and ASCII, as UTF-8.
inline const std::string kChineseName = "\xE7\x8E\x8B^\xE5\xB0\x8F\xE6\x98\x8E";
inline const std::string kChineseDescription = "\xE8\x83\xB8\xE9\x83\xA8 CT \xE5\xB9\xB3\xE6\x89\xAB";

inline std::string Today() { return TodaysSteps(std::chrono::system_clock::now()).date_from; }

// One worklist entry; every field a test may vary.
struct Entry {
  std::string charset = "ISO_IR 192";
  std::string accession = "ACC0001";
  std::string patient_name = "DOE^JANE";
  std::string patient_id = "PID-0001";
  std::string birth_date = "19640229";
  std::string sex = "F";
  std::string study_uid = "1.2.826.0.1.3680043.2.1125.99.1";
  std::string requested_procedure_id = "RP-17";
  std::string requested_procedure_description = "CT CHEST LOW DOSE";
  std::string modality = "CT";
  std::string station_ae = kStationAe;
  std::string date = Today();
  std::string time = "093000";
  std::string step_description = "CHEST SCREENING";
  std::string step_id = "SPS-42";
};

// The dcmdump text of an entry, in UTF-8 (the values in brackets are written byte for byte).
inline std::string DumpText(const Entry& e) {
  std::string d;
  auto put = [&d](const char* tag_vr, const std::string& value) {
    d += std::string(tag_vr) + (value.empty() ? "" : " [" + value + "]") + "\n";
  };
  if (!e.charset.empty()) put("(0008,0005) CS", e.charset);
  put("(0008,0050) SH", e.accession);
  put("(0010,0010) PN", e.patient_name);
  put("(0010,0020) LO", e.patient_id);
  put("(0010,0030) DA", e.birth_date);
  put("(0010,0040) CS", e.sex);
  put("(0020,000d) UI", e.study_uid);
  put("(0032,1060) LO", e.requested_procedure_description);
  d += "(0040,0100) SQ\n(fffe,e000) -\n";
  put("(0008,0060) CS", e.modality);
  put("(0040,0001) AE", e.station_ae);
  put("(0040,0002) DA", e.date);
  put("(0040,0003) TM", e.time);
  put("(0040,0006) PN", "");
  put("(0040,0007) LO", e.step_description);
  put("(0040,0009) SH", e.step_id);
  d += "(fffe,e00d) -\n(fffe,e0dd) -\n";
  put("(0040,1001) SH", e.requested_procedure_id);
  return d;
}

// `text` (UTF-8) re-encoded with iconv, e.g. to "GB18030".
inline std::string Encode(const std::string& text, const char* to) {
  iconv_t cd = iconv_open(to, "UTF-8");
  REQUIRE(cd != reinterpret_cast<iconv_t>(-1));
  std::string in = text;
  std::string out(in.size() * 4 + 16, '\0');
  char* in_ptr = in.data();
  std::size_t in_left = in.size();
  char* out_ptr = out.data();
  std::size_t out_left = out.size();
  const std::size_t rc = iconv(cd, &in_ptr, &in_left, &out_ptr, &out_left);
  iconv_close(cd);
  REQUIRE(rc != static_cast<std::size_t>(-1));
  out.resize(out.size() - out_left);
  return out;
}

// wlmscpfs serving <dir>/RISWL/*.wl on a free loopback port.
class WorklistServer {
 public:
  explicit WorklistServer(std::vector<std::string> extra_args = {}) : dir_("worklist") {
    fs::create_directories(folder());
    std::ofstream(folder() / "lockfile").put('\n');
    extra_args_ = std::move(extra_args);
  }

  fs::path folder() const { return dir_.path() / "db" / kServerAe; }
  const fs::path& path() const { return dir_.path(); }

  // Writes the entry as <name>.wl; `encoding` other than UTF-8 re-encodes the whole dump text
  // (the charset value in it must say so).
  void Write(const std::string& name, const Entry& entry, const char* encoding = "UTF-8") {
    std::string text = DumpText(entry);
    if (std::string(encoding) != "UTF-8") text = Encode(text, encoding);
    const fs::path dump = dir_.path() / (name + ".dump");
    std::ofstream(dump, std::ios::binary) << text;
    ChildProcess dump2dcm({"dump2dcm", dump.string(), (folder() / (name + ".wl")).string()},
                          dir_.path() / "dump2dcm.log");
    INFO("dump2dcm log: " << ReadText(dir_.path() / "dump2dcm.log"));
    REQUIRE(dump2dcm.Wait(std::chrono::seconds(20)) == 0);
  }

  void Start() {
    port_ = FreeLoopbackPort();
    // -s: one process (stopped by its PID); -csk: answers carry the entry's own character set;
    // -dfr: incomplete entries are served too, so the client's own checks are what is tested.
    std::vector<std::string> argv = {"wlmscpfs", "-s", "-csk", "-dfr", "-dfp", (dir_.path() / "db").string()};
    argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
    argv.push_back(std::to_string(port_));
    process_ = std::make_unique<ChildProcess>(argv, log());
    REQUIRE(WaitFor([&] { return PortAcceptsConnections(port_) || !process_->Running(); }, std::chrono::seconds(10)));
    INFO("wlmscpfs log: " << ReadText(log()));
    REQUIRE(process_->Running());
  }

  WorklistNode Node() const {
    WorklistNode node;
    node.host = "127.0.0.1";
    node.port = port_;
    node.called_ae = kServerAe;
    node.calling_ae = kStationAe;
    node.timeout_s = 20;
    node.max_answers = 500;
    return node;
  }

  fs::path log() const { return dir_.path() / "wlmscpfs.log"; }

 private:
  TempDir dir_;
  std::vector<std::string> extra_args_;
  std::uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

// Everything this process writes to stdout and stderr while `run` runs, captured in `file`.
// The agent configuration's `worklist` section for this node (docs/configuration.md).
inline nlohmann::json WorklistSection(const WorklistNode& node) {
  return {{"enabled", true},
          {"host", node.host},
          {"port", node.port},
          {"called_ae", node.called_ae},
          {"calling_ae", node.calling_ae},
          {"timeout_s", 20}};
}

inline std::string CaptureOutput(const fs::path& file, const std::function<void()>& run) {
  std::fflush(stdout);
  std::fflush(stderr);
  const int saved_out = ::dup(1);
  const int saved_err = ::dup(2);
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE((saved_out >= 0 && saved_err >= 0 && fd >= 0));
  ::dup2(fd, 1);
  ::dup2(fd, 2);
  ::close(fd);
  run();
  std::fflush(stdout);
  std::fflush(stderr);
  ::dup2(saved_out, 1);
  ::dup2(saved_err, 2);
  ::close(saved_out);
  ::close(saved_err);
  return ReadText(file);
}

}  // namespace ctagent::test::worklist_peer
