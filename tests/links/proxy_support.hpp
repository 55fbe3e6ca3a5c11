// Test helpers for the fault proxy: start it on a free loopback port in front of a target,
// change its faults at run time through its control file, read its counters.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "tests/support/process.hpp"

namespace ctagent::test {

class FaultProxy {
 public:
  FaultProxy(const std::filesystem::path& dir, const std::string& name, std::uint16_t target_port,
             const std::string& initial_control = "")
      : dir_(dir), name_(name) {
    control_ = dir / (name + ".control");
    stats_ = dir / (name + ".stats");
    const auto ready = dir / (name + ".port");
    std::filesystem::remove(ready);
    std::ofstream(control_) << initial_control << "# start\n";
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{FAULT_PROXY_EXE, "--target", "127.0.0.1:" + std::to_string(target_port),
                                 "--listen-port", "0", "--ready-file", ready.string(), "--control-file",
                                 control_.string(), "--stats-file", stats_.string()},
        log());
    if (!WaitFor([&] { return !ReadText(ready).empty() || !process_->Running(); }, std::chrono::seconds(10)) ||
        ReadText(ready).empty()) {
      throw std::runtime_error("fault_proxy did not start; see " + log().string() + ":\n" + ReadText(log()));
    }
    port_ = static_cast<std::uint16_t>(std::stoi(ReadText(ready)));
    // The proxy applies the control file within 20 ms; wait until the initial one is in force.
    WaitFor([&] { return ReadText(log()).find("control file applied") != std::string::npos; },
            std::chrono::seconds(5));
  }

  std::uint16_t port() const { return port_; }
  std::filesystem::path log() const { return dir_ / (name_ + ".log"); }

  // Replaces the control file (whole, by rename) and waits until the proxy has applied it.
  void Control(const std::string& text) {
    const auto before = Count(ReadText(log()), "control file applied");
    const auto tmp = control_.string() + ".tmp";
    std::ofstream(tmp) << text << "# generation " << ++generation_ << "\n";
    std::filesystem::rename(tmp, control_);
    // Bounded; a proxy that did not apply it (starved of CPU, or dead) fails the test here, not
    // later as a fault that mysteriously never happened.
    if (!WaitFor([&] { return Count(ReadText(log()), "control file applied") > before; }, std::chrono::seconds(30))) {
      throw std::runtime_error("fault_proxy did not apply the control file within 30 s; see " + log().string());
    }
  }

  std::map<std::string, std::uint64_t> Stats() const {
    std::map<std::string, std::uint64_t> out;
    std::istringstream in(ReadText(stats_));
    std::string line;
    while (std::getline(in, line)) {
      const auto eq = line.find('=');
      if (eq != std::string::npos) out[line.substr(0, eq)] = std::stoull(line.substr(eq + 1));
    }
    return out;
  }

  // Counters as of now: waits for a copy of the stats file written after this call (the proxy
  // rewrites it every 100 ms, and stamps each copy), rather than for a fixed time, which a loaded
  // machine can outlast. Bounded by 30 s.
  std::map<std::string, std::uint64_t> FreshStats() const {
    const auto asked = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
    std::map<std::string, std::uint64_t> stats;
    const bool fresh = WaitFor(
        [&] {
          stats = Stats();
          const auto written = stats.find("written_unix_ms");
          return written != stats.end() && written->second > asked;
        },
        std::chrono::seconds(30));
    if (!fresh) throw std::runtime_error("fault_proxy wrote no stats within 30 s; see " + log().string());
    return stats;
  }

  ChildProcess& process() { return *process_; }

 private:
  static std::size_t Count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
    return n;
  }

  std::filesystem::path dir_;
  std::string name_;
  std::filesystem::path control_;
  std::filesystem::path stats_;
  std::uint16_t port_ = 0;
  int generation_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace ctagent::test
