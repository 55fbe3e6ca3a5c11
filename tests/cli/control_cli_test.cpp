// The command line's side of issue 13 item 4, against the real ctagent binary: unknown options
// and the documented exit statuses of every command, status --json and check --json validated
// against docs/schemas/, and the commands that go to a running daemon over the control socket
// (answered here by a fake daemon: agent/control's real Server with a Handler of the test).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include "base/durable_file.hpp"
#include "agent/control/control.hpp"
#include "agent/control/status.hpp"
#include "agent/privacy/privacy.hpp"
#include "agent/results/result_set.hpp"
#include "agent/spool/spool.hpp"
#include "tests/cli/json_schema.hpp"
#include "tests/support/process.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

struct Output {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string Quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// ctagent with stdout and stderr apart (the JSON is on stdout alone), at most `timeout`.
Output Run(const fs::path& dir, const std::vector<std::string>& args, std::chrono::milliseconds timeout = 60s) {
  static int serial = 0;
  const std::string n = std::to_string(++serial);
  const fs::path out = dir / ("out-" + n), err = dir / ("err-" + n);
  std::string command = "exec " + Quoted(test::CtagentBinary());
  for (const auto& a : args) command += " " + Quoted(a);
  command += " 2>" + Quoted(err.string());
  Output o;
  {
    test::ChildProcess child({"/bin/sh", "-c", command}, out);
    o.exit_code = child.Wait(timeout);
  }
  o.out = test::ReadText(out);
  o.err = test::ReadText(err);
  return o;
}

Json Schema(const std::string& name) {
  return Json::parse(test::ReadText(fs::path(CTAGENT_SOURCE_DIR) / "docs" / "schemas" / name));
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  return all;
}

// A config whose checks are all local and quick (no link, PACS or console to reach).
fs::path WriteConfig(const fs::path& dir, const Json& extra = Json::object()) {
  Json cfg = {{"terminal_id", "cli-control"},
              {"driver", {{"name", "sim"}, {"options", Json::object()}}},
              {"scan",
               {{"geometry", "parallel"}, {"views_per_rotation", 120}, {"rotations", 1}, {"rows", 4}, {"channels", 64},
                {"table_start_mm", 0.0}, {"table_speed_mm_per_rotation", 0.0}, {"real_time", false}}},
              {"spool", {{"directory", (dir / "spool").string()}, {"min_free_bytes", 0}}},
              {"cloud", {{"upload_url", "https://127.0.0.1:9/files/"}, {"dicomweb_url", "https://127.0.0.1:9/dicom-web"}}},
              {"results", {{"enabled", true}}},
              {"console", {{"enabled", false}}}};
  cfg.merge_patch(extra);
  const fs::path path = dir / "ctagent.json";
  std::ofstream(path) << cfg.dump(2);
  return path;
}

// A spool with a failed scan and one still being acquired, written as the agent writes them.
void FillSpool(const fs::path& spool_dir) {
  PosixFileStore files;
  auto spool = spool::Spool::Open({spool_dir, 1ull << 30, 0}, files);
  REQUIRE(spool.has_value());
  for (const char* uid : {"2.25.501", "2.25.502"}) {
    spool::ScanRecord record;
    record.scan_uid = uid;
    record.study_uid = std::string(uid) + "1";
    record.created_utc = "2026-12-05T00:00:00Z";
    // The failed one an emergency scan (a minted identity to reconcile), the other from the worklist.
    record.patient_source = std::string(uid) == "2.25.501" ? "emergency" : "worklist";
    REQUIRE((*spool)->BeginScan(record, 0).has_value());
  }
  REQUIRE((*spool)
              ->Update("2.25.501",
                       [](spool::ScanRecord& r) {
                         r.state = spool::ScanState::kFailed;
                         r.failure_reason = "the driver refused to arm: detector offline";
                       })
              .has_value());
  // The other one delivered, with the AI result set's findings in its results folder.
  REQUIRE((*spool)->Update("2.25.502", [](spool::ScanRecord& r) { r.state = spool::ScanState::kDelivered; }).has_value());
  results::ScanFindings findings;
  findings.report = "received";
  findings.findings.category = "HIGH-RISK";
  findings.findings.lesion_count = 3;
  findings.findings.involvement_right_percent = 4.2;
  findings.findings.involvement_left_percent = 0.8;
  REQUIRE(results::WriteScanFindings((*spool)->ResultPath("2.25.502", "x").parent_path(), findings).has_value());
}

// A daemon as the CLI sees it: the real control Server, answered by the test.
class FakeDaemon : public control::Handler {
 public:
  void Status(control::Reply reply) override {
    ++status_calls;
    Json scans = Json::array();
    if (taken) {
      // The scan the CLI asked for moves on at each status: acquiring, uploaded, delivered.
      const int step = ++scan_steps;
      Json scan = {{"scan_uid", "2.25.77"},     {"study_uid", "2.25.771"},     {"created_utc", "2026-12-05T00:00:00Z"},
                   {"views_acquired", 60},      {"chunks_total", 2},           {"chunks_uploaded", 0},
                   {"bytes_to_upload", 1000},   {"manifest", "none"},          {"results", 0},
                   {"state", "acquiring"}};
      if (step == 1) {
        scan["progress"] = {{"phase", "acquiring"}, {"views_acquired", 60}, {"views_total", 120},
                            {"chunks_stored", 1},   {"chunks_uploaded", 0}};
      } else {
        scan["state"] = step == 2 ? "uploaded" : "delivered";
        scan["chunks_uploaded"] = 2;
        scan["bytes_to_upload"] = 0;
        scan["manifest"] = "sent";
        scan["results"] = step == 2 ? 0 : 3;
      }
      scans.push_back(scan);
    }
    reply(Json{{"source", "daemon"},
               {"spool",
                {{"directory", "/var/spool/ctagent"}, {"used_bytes", 4096}, {"reserved_bytes", 0},
                 {"budget_bytes", 1 << 30}, {"filesystem_free_bytes", 1 << 30}}},
               {"backlog",
                {{"bytes", 0}, {"scans", 0}, {"failed_scans", 0}, {"rate_bytes_per_second", 1.5e6},
                 {"rate_age_s", 12.0}, {"rate_window_s", 60.0}, {"rate_measured_utc", "2026-12-05T00:00:00Z"},
                 {"eta_s", 0.0}}},
               {"daemon",
                {{"pid", 4242},
                 {"uploads_paused", paused.load()},
                 {"chunk_buffers",
                  {{"capacity_bytes", 12 << 20}, {"in_use_bytes", 3 << 20}, {"high_water_bytes", 12 << 20},
                   {"acquisition_waits", 2}, {"upload_waits", 57}}}}},
               {"scans", scans}});
  }
  void Check(control::Reply reply) override {
    reply(Json{{"verdict", "ok"},
               {"failures", 0},
               {"warnings", 1},
               {"checks", Json::array({Json{{"name", "queue"}, {"outcome", "warn"}, {"message", "from the fake daemon"}}})}});
  }
  void TakeScan(const control::TakeScanRequest&, control::Reply reply) override {
    taken = true;
    reply(Json{{"scan_uid", "2.25.77"}});
  }
  void Acknowledge(const std::string& scan_uid, control::Reply reply) override {
    if (scan_uid != "2.25.501") return reply(MakeError(ErrorKind::kNotFound, "no scan " + scan_uid + " in the spool"));
    acknowledged = scan_uid;
    reply(Json{{"scan_uid", scan_uid}, {"state", "failed"}});
  }
  void Confirm(const std::string& scan_uid, const std::string& by, control::Reply reply) override {
    if (scan_uid != "2.25.502") return reply(MakeError(ErrorKind::kNotFound, "no scan " + scan_uid + " in the spool"));
    confirmed_by = by;
    reply(Json{{"scan_uid", scan_uid}, {"high_risk_confirmed_utc", "2026-12-05T10:00:00Z"},
               {"high_risk_confirmed_by", by.empty() ? "operator at this terminal" : by}});
  }
  void Pause(control::Reply reply) override {
    paused = true;
    reply(Json{{"paused", true}});
  }
  void Resume(control::Reply reply) override {
    paused = false;
    reply(Json{{"paused", false}});
  }

  std::atomic<bool> paused{false};
  std::atomic<bool> taken{false};
  std::atomic<int> scan_steps{0};
  std::atomic<int> status_calls{0};
  std::string acknowledged;  // written on the loop thread, read after the command ended
  std::string confirmed_by = "(not asked)";  // likewise
};

class DaemonOnSocket {
 public:
  explicit DaemonOnSocket(const fs::path& socket) : work_(io_.get_executor()) {
    control::ServerSettings settings;
    settings.socket_path = socket;
    auto server = control::Server::Open(io_, settings, daemon);
    if (!server) FAIL(server.error().message());
    server_ = std::move(*server);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~DaemonOnSocket() {
    boost::asio::post(io_, [this] { server_.reset(); });
    work_.reset();
    thread_.join();
  }
  FakeDaemon daemon;

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<control::Server> server_;
  std::thread thread_;
};

}  // namespace

TEST_CASE("every command refuses an unknown option with exit status 2", "[cli][control]") {
  test::TempDir dir("cli-unknown-flag");
  const std::string cfg = WriteConfig(dir.path()).string();
  const std::vector<std::vector<std::string>> commands = {
      {"scan", "--config", cfg},        {"run", "--config", cfg},      {"status", "--config", cfg},
      {"check", "--config", cfg},       {"pause", "--config", cfg},    {"resume", "--config", cfg},
      {"acknowledge", "--config", cfg, "2.25.1"},                      {"config", "check", cfg},
      {"confirm", "--config", cfg, "2.25.1"},
      {"chunk", "inspect", cfg},        {"record", "--config", cfg, "--out", (dir.path() / "rec").string()},
      {"rotate-key", "--config", cfg, "--yes"}, {"ui-password", "--config", cfg}};
  for (auto command : commands) {
    command.push_back("--frobnicate");
    INFO(command[0]);
    const auto r = Run(dir.path(), command);
    INFO(r.out + r.err);
    CHECK(r.exit_code == 2);
    if (command[0] != "record") CHECK_THAT(r.err, Catch::Contains("--frobnicate"));
  }
  // An option without its value, and an argument too many.
  CHECK(Run(dir.path(), {"status", "--config"}).exit_code == 2);
  CHECK(Run(dir.path(), {"pause", "--config", cfg, "extra"}).exit_code == 2);
  CHECK(Run(dir.path(), {"acknowledge", "--config", cfg}).exit_code == 2);
  // The help of each says what its exit statuses mean.
  for (const char* command :
       {"scan", "run", "status", "check", "pause", "resume", "acknowledge", "confirm", "chunk", "config", "rotate-key",
        "ui-password"}) {
    INFO(command);
    const auto help = Run(dir.path(), {command, "--help"});
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.out, Catch::Contains("Exit status"));
  }
}

TEST_CASE("a configuration that cannot be read is exit status 3", "[cli][control]") {
  test::TempDir dir("cli-bad-config");
  const fs::path bad = dir.path() / "bad.json";
  std::ofstream(bad) << "{\"spool\": ";
  for (const char* command : {"scan", "run", "status", "pause", "resume", "rotate-key", "ui-password"}) {
    INFO(command);
    const auto r = Run(dir.path(), {command, "--config", bad.string()});
    INFO(r.err);
    CHECK(r.exit_code == 3);
    CHECK_THAT(r.err, Catch::Contains(bad.string()));
  }
  CHECK(Run(dir.path(), {"config", "check", bad.string()}).exit_code == 3);
}

TEST_CASE("rotate-key replaces the site key only with --yes, and counts the scans made under the old one",
          "[cli][privacy]") {
  test::TempDir dir("cli-rotate-key");
  const std::string cfg = WriteConfig(dir.path()).string();
  const fs::path key_file = dir.path() / "spool" / "site.key";
  fs::create_directories(dir.path() / "spool");

  const auto none = Run(dir.path(), {"rotate-key", "--config", cfg, "--yes"});
  INFO(none.out + none.err);
  CHECK(none.exit_code == 1);
  CHECK_THAT(none.err, Catch::Contains(key_file.string()) && Catch::Contains("nothing to rotate"));

  PosixFileStore files;
  auto old_key = privacy::SiteKey::LoadOrCreate(key_file, files);
  REQUIRE(old_key);
  // Two scans pseudonymised under the old key, as the agent writes their mapping records.
  for (const char* uid : {"2.25.601", "2.25.602"}) {
    const fs::path mapping = dir.path() / "spool" / "scans" / uid / "mapping.json";
    fs::create_directories(mapping.parent_path());
    const auto record = privacy::Pseudonymise(*old_key, uid, {"Li^Na", "PID-1", "19800101", "F", "ACC-1", "1.2.3"});
    REQUIRE(privacy::WriteMapping(files, mapping, record));
  }
  const std::string old_text = test::ReadText(key_file);

  const auto unconfirmed = Run(dir.path(), {"rotate-key", "--config", cfg});
  CHECK(unconfirmed.exit_code == 2);
  CHECK_THAT(unconfirmed.err, Catch::Contains("--yes") && Catch::Contains("cannot be undone"));
  CHECK(test::ReadText(key_file) == old_text);

  const auto rotated = Run(dir.path(), {"rotate-key", "--config", cfg, "--yes"});
  INFO(rotated.out + rotated.err);
  REQUIRE(rotated.exit_code == 0);
  auto new_key = privacy::SiteKey::Load(key_file);
  REQUIRE(new_key);
  CHECK(new_key->Fingerprint() != old_key->Fingerprint());
  CHECK_THAT(rotated.out, Catch::Contains(old_key->Fingerprint() + " -> " + new_key->Fingerprint()) &&
                              Catch::Contains("2 scan(s) in the spool were pseudonymised under the old key"));
  CHECK_THAT(rotated.out + rotated.err, !Catch::Contains("Li^Na") && !Catch::Contains("PID-1"));
  // The old records still read back whole: their results are re-identified from them.
  auto kept = privacy::ReadMapping(files, dir.path() / "spool" / "scans" / "2.25.601" / "mapping.json");
  REQUIRE(kept);
  CHECK(kept->patient_id.real == "PID-1");
}

TEST_CASE("pause, resume and acknowledge with no daemon running exit 4 and say so", "[cli][control]") {
  test::TempDir dir("cli-no-daemon");
  const std::string cfg = WriteConfig(dir.path()).string();
  for (std::vector<std::string> command : {std::vector<std::string>{"pause", "--config", cfg},
                                           {"resume", "--config", cfg},
                                           {"acknowledge", "--config", cfg, "2.25.1"}}) {
    INFO(command[0]);
    const auto r = Run(dir.path(), command);
    INFO(r.err);
    CHECK(r.exit_code == 4);
    CHECK_THAT(r.err, Catch::Contains("no daemon") && Catch::Contains("control.sock"));
  }
}

TEST_CASE("status --json and check --json follow their schemas when no daemon runs", "[cli][control]") {
  test::TempDir dir("cli-json");
  const std::string cfg = WriteConfig(dir.path()).string();
  FillSpool(dir.path() / "spool");
  const Json status_schema = Schema("status.schema.json");
  const Json check_schema = Schema("check.schema.json");

  // The validator is no rubber stamp: it sees a missing field, a wrong type and an unknown one.
  CHECK(test::SchemaErrors(status_schema, Json{{"source", "spool"}}).size() == 3);
  CHECK_FALSE(test::SchemaErrors(check_schema, Json{{"verdict", "maybe"}, {"failures", -1}, {"warnings", 0},
                                                    {"checks", Json::array()}, {"source", "cli"}, {"extra", 1}})
                  .empty());

  const auto status = Run(dir.path(), {"status", "--json", "--config", cfg});
  INFO(status.out + status.err);
  REQUIRE(status.exit_code == 0);
  const Json s = Json::parse(status.out);
  INFO(Joined(test::SchemaErrors(status_schema, s)));
  CHECK(test::SchemaErrors(status_schema, s).empty());
  CHECK(s["source"] == "spool");
  CHECK_FALSE(s.contains("daemon"));
  REQUIRE(s["scans"].size() == 2);
  CHECK(s["backlog"]["failed_scans"] == 1);
  bool saw_failed = false;
  for (const auto& scan : s["scans"]) {
    if (scan["scan_uid"] == "2.25.501") {
      saw_failed = true;
      CHECK(scan["state"] == "failed");
      CHECK(scan["failure_reason"] == "the driver refused to arm: detector offline");
      CHECK(scan["patient_source"] == "emergency");
      CHECK(scan["reconcile"] == true);
    }
  }
  CHECK(saw_failed);
  const auto delivered = std::find_if(s["scans"].begin(), s["scans"].end(),
                                      [](const Json& scan) { return scan["scan_uid"] == "2.25.502"; });
  REQUIRE(delivered != s["scans"].end());
  CHECK((*delivered)["state"] == "delivered");
  CHECK((*delivered)["findings"]["category"] == "HIGH-RISK");
  CHECK((*delivered)["findings"]["lesion_count"] == 3);
  CHECK((*delivered)["patient_source"] == "worklist");
  CHECK((*delivered)["reconcile"] == false);

  // The text form tells the same.
  const auto text = Run(dir.path(), {"status", "--config", cfg});
  CHECK(text.exit_code == 0);
  CHECK_THAT(text.out, Catch::Contains("2.25.501  failed") && Catch::Contains("1 scan(s) FAILED"));
  CHECK_THAT(text.out, Catch::Contains("AI: HIGH-RISK"));
  // The emergency scan says so, once (the worklist scan does not).
  const auto emergency_at = text.out.find("EMERGENCY identity");
  REQUIRE(emergency_at != std::string::npos);
  CHECK(text.out.find("EMERGENCY identity", emergency_at + 1) == std::string::npos);
  CHECK(text.out.find("2.25.501  failed") < emergency_at);
  CHECK(text.out.find("2.25.502  delivered") > emergency_at);

  const auto check = Run(dir.path(), {"check", "--json", "--only", "config,detector,disk,queue,certificates", "--config", cfg});
  INFO(check.out + check.err);
  REQUIRE(check.exit_code == 0);
  const Json c = Json::parse(check.out);
  INFO(Joined(test::SchemaErrors(check_schema, c)));
  CHECK(test::SchemaErrors(check_schema, c).empty());
  CHECK(c["source"] == "cli");
  CHECK(c["verdict"] == "ok");
  CHECK(c["warnings"] == 1);  // the failed scan in the queue
  CHECK(c["checks"].size() == 5);

  // A check that fails: still one object by the schema, exit status 1.
  const fs::path bad = dir.path() / "bad.json";
  std::ofstream(bad) << "{\"spool\": 3}";
  const auto failing = Run(dir.path(), {"check", "--json", "--config", bad.string()});
  INFO(failing.out + failing.err);
  CHECK(failing.exit_code == 1);
  const Json f = Json::parse(failing.out);
  CHECK(test::SchemaErrors(check_schema, f).empty());
  CHECK(f["verdict"] == "fail");
  CHECK(f["checks"][0]["name"] == "config");
  CHECK(f["checks"][0]["outcome"] == "fail");
}

TEST_CASE("a high-risk finding awaits confirmation in status until confirmed, then says when and by whom",
          "[cli][control]") {
  test::TempDir dir("cli-confirm");
  const std::string cfg = WriteConfig(dir.path()).string();
  FillSpool(dir.path() / "spool");

  auto text = Run(dir.path(), {"status", "--config", cfg});
  CHECK(text.exit_code == 0);
  CHECK_THAT(text.out, Catch::Contains("HIGH RISK - awaiting confirmation (the operator's page, or `ctagent confirm "
                                       "2.25.502`)"));
  {
    // The one function the control socket's `confirm` and the page's Confirm button both take.
    PosixFileStore files;
    auto spool = spool::Spool::Open({dir.path() / "spool", 1ull << 30, 0}, files);
    REQUIRE(spool.has_value());
    auto unknown = control::ConfirmHighRisk(**spool, "2.25.9", "Nurse Wang");
    REQUIRE_FALSE(unknown.has_value());
    CHECK(unknown.error().kind() == ErrorKind::kNotFound);
    auto failed = control::ConfirmHighRisk(**spool, "2.25.501", "Nurse Wang");  // no report: nothing to confirm
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().kind() == ErrorKind::kInvalidInput);
    CHECK_THAT(failed.error().message(), Catch::Contains("not HIGH-RISK"));
    auto confirmed = control::ConfirmHighRisk(**spool, "2.25.502", "Nurse Wang");
    INFO((confirmed ? "" : confirmed.error().message()));
    REQUIRE(confirmed.has_value());
    CHECK((*confirmed)["high_risk_confirmed_by"] == "Nurse Wang");
    const std::string when = (*confirmed)["high_risk_confirmed_utc"].get<std::string>();
    CHECK(when.size() == 20);  // 2026-12-05T10:00:00Z
    // Again (another person, later): the first confirmation stands.
    auto again = control::ConfirmHighRisk(**spool, "2.25.502", "Dr Li");
    REQUIRE(again.has_value());
    CHECK(*again == *confirmed);
  }
  // Read back from the spool by another process (durable): JSON by the schema, and the text.
  const auto status = Run(dir.path(), {"status", "--json", "--config", cfg});
  REQUIRE(status.exit_code == 0);
  const Json s = Json::parse(status.out);
  INFO(Joined(test::SchemaErrors(Schema("status.schema.json"), s)));
  CHECK(test::SchemaErrors(Schema("status.schema.json"), s).empty());
  bool seen = false;
  for (const auto& scan : s["scans"]) {
    if (scan["scan_uid"] == "2.25.502") {
      seen = true;
      CHECK(scan["high_risk_confirmed_by"] == "Nurse Wang");
      CHECK(scan["high_risk_confirmed_utc"].is_string());
    } else {
      CHECK_FALSE(scan.contains("high_risk_confirmed_utc"));
    }
  }
  CHECK(seen);
  text = Run(dir.path(), {"status", "--config", cfg});
  CHECK_THAT(text.out, Catch::Contains("HIGH RISK - confirmed at 20") && Catch::Contains(" by Nurse Wang"));
  CHECK_THAT(text.out, !Catch::Contains("awaiting confirmation"));
}

TEST_CASE("with a daemon on the control socket, status, check, pause, resume, acknowledge and scan go to it",
          "[cli][control]") {
  test::TempDir dir("cli-daemon");
  const fs::path socket = dir.path() / "ctl.sock";
  const std::string cfg = WriteConfig(dir.path(), {{"control", {{"socket", socket.string()}}}}).string();
  DaemonOnSocket d(socket);

  const auto status = Run(dir.path(), {"status", "--json", "--config", cfg});
  INFO(status.out + status.err);
  REQUIRE(status.exit_code == 0);
  const Json s = Json::parse(status.out);
  CHECK(s["source"] == "daemon");
  CHECK(s["daemon"]["pid"] == 4242);
  CHECK(test::SchemaErrors(Schema("status.schema.json"), s).empty());

  const auto check = Run(dir.path(), {"check", "--json", "--config", cfg});
  INFO(check.out + check.err);
  REQUIRE(check.exit_code == 0);
  const Json c = Json::parse(check.out);
  CHECK(c["source"] == "daemon");
  CHECK(c["checks"][0]["message"] == "from the fake daemon");
  CHECK(test::SchemaErrors(Schema("check.schema.json"), c).empty());

  auto r = Run(dir.path(), {"pause", "--config", cfg});
  CHECK(r.exit_code == 0);
  CHECK(d.daemon.paused);
  CHECK_THAT(r.out, Catch::Contains("uploads paused"));
  const auto paused_status = Run(dir.path(), {"status", "--config", cfg});
  CHECK_THAT(paused_status.out, Catch::Contains("daemon pid 4242: uploads PAUSED"));
  CHECK_THAT(paused_status.out, Catch::Contains("chunk buffers (codec.buffer_bytes): 3.00 MiB in use of 12.00 MiB, at "
                                                "most 12.00 MiB so far; acquisition waited 2 times"));
  r = Run(dir.path(), {"resume", "--config", cfg});
  CHECK(r.exit_code == 0);
  CHECK_FALSE(d.daemon.paused);

  r = Run(dir.path(), {"acknowledge", "--config", cfg, "2.25.9"});
  INFO(r.err);
  CHECK(r.exit_code == 5);
  CHECK_THAT(r.err, Catch::Contains("no scan 2.25.9"));
  r = Run(dir.path(), {"acknowledge", "--json", "--config", cfg, "2.25.501"});
  CHECK(r.exit_code == 0);
  CHECK(Json::parse(r.out)["scan_uid"] == "2.25.501");
  CHECK(d.daemon.acknowledged == "2.25.501");

  // confirm: a high-risk finding seen by a person, by the name given (or the daemon's default).
  r = Run(dir.path(), {"confirm", "--config", cfg, "2.25.9"});
  CHECK(r.exit_code == 5);
  CHECK_THAT(r.err, Catch::Contains("no scan 2.25.9"));
  r = Run(dir.path(), {"confirm", "--config", cfg, "--by", "Dr Li", "2.25.502"});
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(d.daemon.confirmed_by == "Dr Li");
  CHECK_THAT(r.out, Catch::Contains("2.25.502: HIGH RISK - confirmed at 2026-12-05T10:00:00Z by Dr Li"));
  r = Run(dir.path(), {"confirm", "--json", "--config", cfg, "2.25.502"});
  CHECK(r.exit_code == 0);
  CHECK(d.daemon.confirmed_by.empty());
  CHECK(Json::parse(r.out)["high_risk_confirmed_by"] == "operator at this terminal");
  CHECK(Run(dir.path(), {"confirm", "--config", cfg}).exit_code == 2);  // no SCAN_UID

  // scan: the daemon takes it; the CLI follows it through status until it is delivered.
  const auto scan = Run(dir.path(), {"scan", "--config", cfg}, 60s);
  INFO(scan.out + scan.err);
  CHECK(scan.exit_code == 0);
  CHECK(d.daemon.taken);
  CHECK(d.daemon.scan_steps >= 3);
  CHECK_THAT(scan.err, Catch::Contains("takes scan 2.25.77"));
  CHECK_THAT(scan.out, Catch::Contains("taken by the background agent") && Catch::Contains("2.25.77") &&
                           Catch::Contains("delivered"));
  CHECK_FALSE(fs::exists(dir.path() / "spool" / "scans"));  // nothing ran here
}
