#include "tests/support/hostile_server.hpp"

#include <catch2/catch.hpp>

#include <signal.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ctagent::test {

namespace {

// Written whole under a temporary name: the server re-reads the file on every request and must
// never see half of it.
void WriteRules(const std::filesystem::path& file, const nlohmann::json& rules) {
  if (!rules.is_array()) throw std::invalid_argument("hostile_server rules must be a JSON array, got " + rules.dump());
  const auto tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << rules.dump(2);
  }
  std::filesystem::rename(tmp, file);
}

// One PKI for every hostile server of a build tree (tests run in parallel; make_pki.sh locks).
std::filesystem::path HostilePki() {
  const auto dir = std::filesystem::path(CTAGENT_BINARY_DIR) / "test-scratch" / "hostile-pki";
  std::filesystem::create_directories(dir);
  MakeTestPki(dir);
  return dir;
}

}  // namespace

std::unique_ptr<HostileServer> HostileServer::Start(const nlohmann::json& rules, HostileOptions options) {
  std::unique_ptr<HostileServer> s(new HostileServer());
  if (options.work_dir.empty()) {
    s->temp_ = std::make_unique<TempDir>("hostile");
    options.work_dir = s->temp_->path();
  }
  std::filesystem::create_directories(options.work_dir);
  s->dir_ = options.work_dir;
  s->options_ = options;
  const auto rules_file = s->dir_ / "rules.json";
  const auto ready_file = s->dir_ / "port";
  std::filesystem::remove(ready_file);
  std::filesystem::remove(s->dir_ / "requests.jsonl");
  WriteRules(rules_file, rules);
  std::vector<std::string> argv{HOSTILE_SERVER_EXE,       "--rules",       rules_file.string(),
                                "--log",                  (s->dir_ / "requests.jsonl").string(),
                                "--ready-file",           ready_file.string(),
                                "--listen-host",          options.listen_host};
  if (!options.upstream.empty()) argv.insert(argv.end(), {"--upstream", options.upstream});
  if (options.plain_http) {
    argv.push_back("--plain-http");
  } else {
    s->pki_ = HostilePki();
    argv.insert(argv.end(), {"--cert", (s->pki_ / (options.certificate + ".pem")).string(), "--key",
                             (s->pki_ / (options.certificate + ".key")).string()});
  }
  if (!options.tls_max.empty()) argv.insert(argv.end(), {"--tls-max", options.tls_max});
  s->process_ = std::make_unique<ChildProcess>(argv, s->log_file());
  const bool started = WaitFor([&] { return !ReadText(ready_file).empty() || !s->process_->Running(); },
                               std::chrono::seconds(20)) &&
                       !ReadText(ready_file).empty();
  INFO("hostile_server did not start; its log " << s->log_file().string() << ":\n" << ReadText(s->log_file()));
  REQUIRE(started);
  s->port_ = static_cast<std::uint16_t>(std::stoi(ReadText(ready_file)));
  return s;
}

HostileServer::~HostileServer() { Stop(); }

int HostileServer::Stop() {
  if (!process_) return -1;
  if (!process_->Running()) return process_->Wait(std::chrono::milliseconds(0));
  process_->Kill(SIGTERM);
  int code = process_->Wait(std::chrono::seconds(5));
  if (code == -1) {
    process_->Kill(SIGKILL);
    code = process_->Wait(std::chrono::seconds(5));
  }
  return code;
}

std::string HostileServer::origin() const {
  return (options_.plain_http ? "http://" : "https://") + options_.listen_host + ":" + std::to_string(port_);
}

std::filesystem::path HostileServer::ca_file() const { return pki_.empty() ? pki_ : pki_ / "ca.pem"; }

std::filesystem::path HostileServer::log_file() const { return dir_ / "hostile_server.log"; }

std::vector<nlohmann::json> HostileServer::Requests() const {
  std::vector<nlohmann::json> out;
  std::istringstream in(ReadText(dir_ / "requests.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto entry = nlohmann::json::parse(line, nullptr, false);
    // The server writes each line with one write(); a line cut short would be the last one, still
    // being written: leave it for the next call.
    if (entry.is_discarded()) break;
    out.push_back(std::move(entry));
  }
  return out;
}

void HostileServer::SetRules(const nlohmann::json& rules) { WriteRules(dir_ / "rules.json", rules); }

}  // namespace ctagent::test
