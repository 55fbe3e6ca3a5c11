// The metrics endpoint of the real `ctagent run` (issue 13 item 6, docs/metrics.md): a sim
// scanner that announces scans, the official tus server over HTTPS, and /metrics scraped over
// loopback and read by a strict parser. The bytes it says were uploaded are the bytes the
// spool holds and the tus server stored; the scans by state are the spool's; the chunk-buffer
// budget's figures are the ones the control socket's status gives. And without a
// metrics section the daemon opens no TCP port at all.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/control/control.hpp"
#include "config/config.hpp"
#include "tests/cli/json_schema.hpp"
#include "tests/metrics/exposition_parser.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr int kScans = 2;
// Each announced scan: 240 views of 4 x 128 uint16 samples, acquired as fast as the sim goes.
constexpr std::uint64_t kViews = 240, kRows = 4, kChannels = 128;

nlohmann::json DaemonConfig(const fs::path& dir, const std::string& upload_url, const fs::path& ca) {
  const nlohmann::json scan = {{"geometry", "parallel"}, {"views_per_rotation", kViews}, {"rotations", 1},
                               {"rows", kRows}, {"channels", kChannels}, {"seed", 7}, {"real_time", false}};
  const nlohmann::json announce = {{"every_s", 1}, {"first_after_s", 0.5}, {"count", kScans}, {"protocol", scan}};
  return {{"terminal_id", "metrics-test"},
          {"log_level", "info"},
          {"driver", {{"name", "sim"}, {"options", {{"announce", announce}}}}},
          {"scan", scan},
          {"codec", {{"views_per_chunk", 32}}},
          {"spool", {{"directory", (dir / "spool").string()}, {"min_free_bytes", 0}}},
          {"cloud", {{"upload_url", upload_url}, {"tls", {{"ca_file", ca.string()}}}, {"parallel_uploads", 2}}},
          {"results", {{"enabled", false}}},
          {"console", {{"enabled", false}}}};
}

std::uint64_t SizeOfFiles(const fs::path& dir, const std::function<bool(const fs::path&)>& take) {
  std::uint64_t total = 0;
  if (!fs::exists(dir)) return 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && take(e.path())) total += e.file_size();
  }
  return total;
}

// The socket inodes of the process's open files.
std::set<std::string> SocketInodes(pid_t pid) {
  std::set<std::string> inodes;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code ec2;
    const std::string target = fs::read_symlink(e.path(), ec2).string();
    if (target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
  }
  return inodes;
}

// TCP sockets in LISTEN state (/proc/net/tcp and tcp6, state 0A) among `inodes`.
int ListeningAmong(const std::set<std::string>& inodes) {
  int listening = 0;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream in(test::ReadText(table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
      fields >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state == "0A" && inodes.count(inode) > 0) ++listening;
    }
  }
  return listening;
}

}  // namespace

TEST_CASE("ctagent run serves /metrics: bytes uploaded equal the bytes spooled and stored, scans by state from the spool",
          "[metrics][service]") {
  test::TempDir dir("metrics-daemon");
  test::MakeTestPki(dir.path() / "pki");
  fs::create_directories(dir.path() / "store");
  auto tus = test::StartTusServer(dir.path() / "pki", dir.path() / "store", dir.path() / "tus.log");
  auto cfg = DaemonConfig(dir.path(), tus.endpoint, dir.path() / "pki" / "ca.pem");
  const std::uint16_t port = test::FreeLoopbackPort();
  cfg["metrics"] = {{"enabled", true}, {"port", port}};
  const fs::path cfg_path = dir.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);
  const fs::path log_path = dir.path() / "daemon.log";
  test::ChildProcess daemon({test::CtagentBinary(), "run", "--config", cfg_path.string()}, log_path);

  // Bounded: two small scans, announced 1 s apart, uploaded over loopback.
  test::ParsedPage page;
  std::string text;
  int scrapes = 0;
  const bool uploaded = test::WaitFor(
      [&] {
        text = test::ScrapeMetrics(port);
        if (text.empty()) return !daemon.Running();
        ++scrapes;
        page = test::ParseExposition(text);
        return !page.error.empty() || page.Value("ctagent_scans", {{"state", "uploaded"}}) == kScans;
      },
      90s);
  INFO("daemon log:\n" << test::ReadText(log_path));
  INFO("last page:\n" << text);
  REQUIRE(daemon.Running());
  REQUIRE(page.error.empty());
  REQUIRE(uploaded);
  CHECK(scrapes >= 1);

  // Every family documented in docs/metrics.md has its type.
  CHECK(page.types["ctagent_scans"] == "gauge");
  CHECK(page.types["ctagent_acquired_bytes_total"] == "counter");
  CHECK(page.types["ctagent_spooled_bytes_total"] == "counter");
  CHECK(page.types["ctagent_uploaded_bytes_total"] == "counter");
  CHECK(page.types["ctagent_backlog_bytes"] == "gauge");
  CHECK(page.types["ctagent_backlog_eta_seconds"] == "gauge");
  CHECK(page.types["ctagent_upload_rate_bytes_per_second"] == "gauge");
  CHECK(page.types["ctagent_link_in_use"] == "gauge");
  CHECK(page.types["ctagent_link_throughput_bytes_per_second"] == "gauge");
  CHECK(page.types["ctagent_retries_total"] == "counter");
  CHECK(page.types["ctagent_scan_images_latency_seconds"] == "histogram");

  // Scans by state: the spool's, every state present.
  for (const char* state : {"acquiring", "acquired", "results_received", "delivered", "failed"}) {
    INFO(state);
    CHECK(page.Value("ctagent_scans", {{"state", state}}) == 0.0);
  }
  // Bytes: what was acquired (raw uint16 samples), what the spool holds (its chunk files), what
  // the cloud confirmed (chunks and manifests), and what the tus server stored.
  const double spooled_chunk_bytes = static_cast<double>(
      SizeOfFiles(dir.path() / "spool" / "scans", [](const fs::path& p) { return p.extension() == ".ctc"; }));
  const double manifest_bytes = static_cast<double>(
      SizeOfFiles(dir.path() / "spool" / "scans", [](const fs::path& p) { return p.filename() == "manifest.json"; }));
  const double stored_bytes = static_cast<double>(
      SizeOfFiles(dir.path() / "store", [](const fs::path& p) { return p.extension() != ".json"; }));
  REQUIRE(spooled_chunk_bytes > 0);
  CHECK(page.Value("ctagent_acquired_bytes_total") == static_cast<double>(kScans * kViews * kRows * kChannels * 2));
  CHECK(page.Value("ctagent_spooled_bytes_total") == spooled_chunk_bytes);
  CHECK(page.Value("ctagent_uploaded_bytes_total", {{"kind", "chunk"}}) == spooled_chunk_bytes);
  CHECK(page.Value("ctagent_uploaded_bytes_total", {{"kind", "manifest"}}) == manifest_bytes);
  CHECK(page.Sum("ctagent_uploaded_bytes_total") == stored_bytes);
  // Nothing left to send: no backlog, no wait.
  CHECK(page.Value("ctagent_backlog_bytes") == 0.0);
  CHECK(page.Value("ctagent_backlog_eta_seconds") == 0.0);
  // No cloud.links: the system's routing is the link in use.
  CHECK(page.Value("ctagent_link_in_use", {{"link", "system"}}) == 1.0);
  CHECK(page.Value("ctagent_link_throughput_bytes_per_second", {{"link", "system"}}).has_value());
  // Results are off here: no scan has a scan end -> images latency.
  CHECK(page.Value("ctagent_scan_images_latency_seconds_count") == 0.0);
  // No scan UID, patient or study in any label.
  CHECK(text.find("scan_uid") == std::string::npos);
  CHECK(text.find("1.2.") == std::string::npos);

  // The chunk-buffer budget (codec.buffer_bytes, default 12 MiB): every raw chunk (32 views of
  // 4 x 128 uint16, 32 KiB) was held in it, none is any more, and it never held more than it has.
  const double raw_chunk_bytes = 32.0 * kRows * kChannels * 2;
  CHECK(page.types["ctagent_chunk_buffer_capacity_bytes"] == "gauge");
  CHECK(page.types["ctagent_chunk_buffer_bytes"] == "gauge");
  CHECK(page.types["ctagent_chunk_buffer_high_water_bytes"] == "gauge");
  CHECK(page.types["ctagent_chunk_buffer_waits_total"] == "counter");
  CHECK(page.Value("ctagent_chunk_buffer_capacity_bytes") == static_cast<double>(12 << 20));
  CHECK(page.Value("ctagent_chunk_buffer_bytes") == 0.0);
  const double high_water = page.Value("ctagent_chunk_buffer_high_water_bytes").value_or(-1);
  CHECK(high_water >= raw_chunk_bytes);
  CHECK(high_water <= static_cast<double>(12 << 20));
  CHECK(page.Value("ctagent_chunk_buffer_waits_total", {{"stage", "acquisition"}}).has_value());
  // Uploads take nothing from the budget (they send from the spool file): no series for them.
  CHECK_FALSE(page.Value("ctagent_chunk_buffer_waits_total", {{"stage", "upload"}}).has_value());
  // The same figures in the control socket's status, by its schema.
  {
    auto loaded = config::LoadConfig(cfg_path);
    REQUIRE(loaded.has_value());
    auto client = control::Client::Connect(config::ControlSocketPath(*loaded));
    REQUIRE(client.has_value());
    auto status = client->Call("status");
    REQUIRE(status.has_value());
    const nlohmann::json schema = nlohmann::json::parse(
        test::ReadText(fs::path(CTAGENT_SOURCE_DIR) / "docs" / "schemas" / "status.schema.json"));
    const auto errors = test::SchemaErrors(schema, *status);
    for (const auto& e : errors) UNSCOPED_INFO(e);
    CHECK(errors.empty());
    const nlohmann::json buffers = (*status)["daemon"].value("chunk_buffers", nlohmann::json::object());
    CHECK(buffers.value("capacity_bytes", 0ULL) == (12ULL << 20));
    CHECK(buffers.value("in_use_bytes", 1ULL) == 0ULL);
    CHECK(static_cast<double>(buffers.value("high_water_bytes", 0ULL)) == high_water);
  }

  // The daemon's scan summaries now carry the bytes the cloud confirmed (they said 0), so the
  // daemon records the measured rate for `ctagent status` as a scan ends.
  CHECK(fs::exists(dir.path() / "spool" / "upload-rate.json"));

  daemon.Kill(SIGTERM);
  CHECK(daemon.Wait(30s) == 0);
  // Stopped, the port is closed.
  CHECK_FALSE(test::PortAcceptsConnections(port));
}

TEST_CASE("ctagent run without a metrics section and with the operator's page off opens no TCP port",
          "[metrics][service]") {
  test::TempDir dir("metrics-off");
  test::MakeTestPki(dir.path() / "pki");
  fs::create_directories(dir.path() / "store");
  auto tus = test::StartTusServer(dir.path() / "pki", dir.path() / "store", dir.path() / "tus.log");
  auto cfg = DaemonConfig(dir.path(), tus.endpoint, dir.path() / "pki" / "ca.pem");
  // The operator's page is on by default (on loopback, docs/operator-guide.md); off here.
  cfg["ui"] = {{"enabled", false}};
  const fs::path cfg_path = dir.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);
  const fs::path log_path = dir.path() / "daemon.log";
  test::ChildProcess daemon({test::CtagentBinary(), "run", "--config", cfg_path.string()}, log_path);
  // Serving (its control socket is up: the daemon's loop runs) and busy with its scans.
  REQUIRE(test::WaitFor([&] { return fs::exists(dir.path() / "spool" / "control.sock") || !daemon.Running(); }, 30s));
  REQUIRE(test::WaitFor(
      [&] { return test::ReadText(log_path).find("announced by the detector") != std::string::npos || !daemon.Running(); },
      30s));
  INFO("daemon log:\n" << test::ReadText(log_path));
  REQUIRE(daemon.Running());
  const auto inodes = SocketInodes(daemon.pid());
  CHECK_FALSE(inodes.empty());  // the control socket at least: the reading works
  CHECK(ListeningAmong(inodes) == 0);
  CHECK(test::ReadText(log_path).find("serving metrics") == std::string::npos);
  // And the default port is not this daemon's.
  CHECK(test::ReadText(log_path).find("9464") == std::string::npos);
  daemon.Kill(SIGTERM);
  CHECK(daemon.Wait(30s) == 0);
}
