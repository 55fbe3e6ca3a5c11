// The field checks (`ctagent check`, the control socket's `check`): each gives OK, WARN or FAIL,
// what was checked and, for a failure, what to do.
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <memory>

#include "agent/control/check.hpp"
#include "base/durable_file.hpp"
#include "agent/core/http_options.hpp"
#include "agent/core/links.hpp"
#include "agent/results/results.hpp"
#include "agent/spool/spool.hpp"
#include "config/config.hpp"
#include "drivers/detector.hpp"
#include "drivers/replay/recording.hpp"
#include "transport/dicomweb.hpp"
#include "transport/http.hpp"

namespace ctagent::control {
namespace {

// Collects the lines; text and JSON are printed from the report by the caller.
struct Recorder {
  CheckReport report;
  void Add(const std::string& name, const char* outcome, const std::string& what) {
    report.lines.push_back({name, outcome, what});
  }
  void Ok(const std::string& name, const std::string& what) { Add(name, "ok", what); }
  void Warn(const std::string& name, const std::string& what) {
    ++report.warnings;
    Add(name, "warn", what);
  }
  void Fail(const std::string& name, const std::string& what) {
    ++report.failures;
    Add(name, "fail", what);
  }
};

std::string Mib(std::uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

void CheckCertificate(Recorder& report, const std::string& label, const std::filesystem::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "r"), std::fclose);
  if (!file) {
    report.Fail("certificates", label + " " + path.string() + " cannot be opened; check cloud.tls in the config");
    return;
  }
  X509* cert = PEM_read_X509(file.get(), nullptr, nullptr, nullptr);
  if (cert == nullptr) {
    report.Fail("certificates", label + " " + path.string() + " holds no PEM certificate");
    return;
  }
  int days = 0, seconds = 0;
  ASN1_TIME_diff(&days, &seconds, nullptr, X509_get0_notAfter(cert));
  char subject[256];
  X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
  X509_free(cert);
  if (days < 0 || (days == 0 && seconds < 0)) {
    report.Fail("certificates", label + " " + path.string() + " (" + subject + ") has EXPIRED; install a renewed one");
  } else if (days < 30) {
    report.Warn("certificates", label + " (" + subject + ") expires in " + std::to_string(days) + " days; renew it soon");
  } else {
    report.Ok("certificates", label + " (" + subject + ") valid for " + std::to_string(days) + " more days");
  }
}

}  // namespace

nlohmann::json CheckReport::ToJson() const {
  nlohmann::json checks = nlohmann::json::array();
  for (const auto& line : lines) checks.push_back({{"name", line.name}, {"outcome", line.outcome}, {"message", line.message}});
  return {{"verdict", failures > 0 ? "fail" : "ok"}, {"failures", failures}, {"warnings", warnings}, {"checks", checks}};
}

CheckReport RunChecks(const std::filesystem::path& config_path, const std::vector<std::string>& only) {
  auto want = [&](const char* name) { return only.empty() || std::find(only.begin(), only.end(), name) != only.end(); };
  Recorder report;

  auto cfg = config::LoadConfig(config_path);
  if (!cfg) {
    report.Fail("config", cfg.error().message());
    return std::move(report.report);
  }
  report.Ok("config", config_path.string() + " is valid");
  // The files the config names, as `config check` sees them; here a secret readable by others
  // is a warning (the agent still runs), a file it cannot read a failure (it would not).
  for (const config::FileFinding& f : config::CheckFiles(*cfg)) {
    if (f.readable_by_others) {
      report.Warn("secrets", f.message);
    } else {
      report.Fail("files", f.message);
    }
  }

  // A replayed recording sets the scan's shape and geometry (the config needs none): the
  // detector and disk checks use the protocol a scan would be armed with.
  drivers::ScanProtocol protocol = cfg->protocol;
  auto adopted = drivers::replay::ScanProtocolFor(cfg->driver.name, cfg->driver.options, cfg->protocol);
  if (!adopted) {
    if (want("detector")) report.Fail("detector", adopted.error().message());
  } else {
    protocol = adopted->protocol;
  }
  if (want("detector") && adopted) {
    auto detector = drivers::MakeDetector(cfg->driver.name, cfg->driver.options);
    if (!detector) {
      report.Fail("detector", detector.error().message());
    } else {
      const auto info = (*detector)->Info();
      if (auto st = (*detector)->Arm(protocol); !st) {
        report.Fail("detector", info.name + " refuses the configured protocol: " + st.error().message());
      } else {
        (*detector)->Abort();
        std::string from_recording;
        for (const std::string& change : adopted->changes) {
          from_recording += (from_recording.empty() ? "; from the recording: " : ", ") + change;
        }
        report.Ok("detector", info.name + " (" + info.model + ") accepts " + std::to_string(protocol.rows) + " x " +
                                  std::to_string(protocol.channels) + ", " + std::to_string(protocol.TotalViews()) +
                                  " views" + from_recording);
      }
    }
  }

  const auto file_store = MakeProcessFileStore();
  FileStore& files = *file_store;
  std::unique_ptr<spool::Spool> spool;
  if (want("disk") || want("queue")) {
    // Read-only: a check may run while `ctagent scan` or `ctagent run` writes the spool.
    spool::SpoolOptions options{cfg->spool.directory, cfg->spool.max_bytes, cfg->spool.min_free_bytes};
    options.read_only = true;
    auto opened = spool::Spool::Open(options, files);
    if (!opened) {
      report.Fail("disk", opened.error().message());
    } else {
      spool = std::move(*opened);
    }
  }
  if (spool && want("disk")) {
    const auto probe = cfg->spool.directory / ".ctagent-check";
    Status st = files.CreateDirectories(cfg->spool.directory);  // a new install has none yet
    if (st) st = files.WriteDurably(probe, AsBytes("probe"));
    if (!st) {
      report.Fail("disk", "spool " + cfg->spool.directory.string() + " is not writable: " + st.error().message());
    } else {
      (void)files.Remove(probe);
      const auto space = spool->Space();
      const auto need = protocol.RawBytes();
      const std::string figures = Mib(space.used_bytes) + " used of " + Mib(cfg->spool.max_bytes) + ", " +
                                  Mib(space.filesystem_free_bytes) + " free on disk, one scan needs up to " + Mib(need);
      if (space.used_bytes + space.reserved_bytes + need > cfg->spool.max_bytes ||
          space.filesystem_free_bytes < need + cfg->spool.min_free_bytes) {
        report.Fail("disk", figures + ": the next scan would be refused; free space or let uploads finish");
      } else {
        report.Ok("disk", figures);
      }
    }
  }
  if (spool && want("queue")) {
    int pending = 0, failed = 0;
    std::uint64_t to_send = 0;
    for (const spool::ScanHead& head : spool->ScanHeads()) {
      const spool::ScanState state = head.record.state;
      if (state == spool::ScanState::kFailed) ++failed;
      if (state == spool::ScanState::kDelivered || state == spool::ScanState::kFailed) continue;
      ++pending;
      to_send += head.chunk_bytes_to_upload;
    }
    const std::string text = std::to_string(pending) + " scan(s) in progress, " + Mib(to_send) + " still to upload, " +
                             std::to_string(failed) + " failed";
    if (failed > 0) {
      report.Warn("queue", text + "; see `ctagent status`");
    } else {
      report.Ok("queue", text);
    }
  }

  if (want("certificates")) {
    if (!cfg->cloud.tls.ca_file.empty()) CheckCertificate(report, "CA bundle", cfg->cloud.tls.ca_file);
    if (!cfg->cloud.tls.client_cert_file.empty()) CheckCertificate(report, "client certificate", cfg->cloud.tls.client_cert_file);
    if (cfg->cloud.tls.ca_file.empty() && cfg->cloud.tls.client_cert_file.empty()) {
      report.Ok("certificates", "using the system CA store; no client certificate configured");
    }
  }

  if (want("link")) {
    // Every configured link on its own (bound to its interface or source address), so a dead
    // 5G modem shows even while the wired link carries the uploads.
    auto links = core::ParseLinks(cfg->cloud.links);
    if (!links) {
      report.Fail("link", links.error().message() + "; fix cloud.links in " + cfg->source_file.string());
    } else {
      std::vector<core::LinkConfig> targets = *links;
      if (targets.empty()) targets.emplace_back();  // no links configured: the system's routing
      std::stable_sort(targets.begin(), targets.end(),
                       [](const core::LinkConfig& a, const core::LinkConfig& b) { return a.priority < b.priority; });
      for (const auto& link : targets) {
        const std::string label = link.name.empty() ? "link" : "link " + link.name;
        std::string via;
        if (!link.interface_name.empty()) via = " via " + link.interface_name;
        if (!link.source_address.empty()) via = " from " + link.source_address;
        if (link.max_bits_per_s > 0) via += ", capped at " + std::to_string(link.max_bits_per_s / 1000000) + " Mbit/s";
        auto options = core::MakeHttpOptions(cfg->cloud);
        options.interface_name = link.interface_name;
        options.source_address = link.source_address;
        transport::HttpClient http(options);
        transport::HttpRequest request;
        request.method = "OPTIONS";
        request.url = cfg->cloud.upload_url;
        request.headers = {{"Tus-Resumable", "1.0.0"}};
        // An OPTIONS answer is headers only: the 1 MiB cap the tus client uses keeps the request's
        // overall deadline as short (48 s with the defaults; docs/transport.md, "Deadlines").
        constexpr std::uint64_t kOptionsAnswerCap = 1 << 20;
        const auto t0 = std::chrono::steady_clock::now();
        auto response = http.Perform(request, kOptionsAnswerCap);
        const auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
        if (!response) {
          report.Fail(label, cfg->cloud.upload_url + via + ": " + response.error().message());
        } else if (response->status != 200 && response->status != 204) {
          report.Fail(label, cfg->cloud.upload_url + via + " answered HTTP " + std::to_string(response->status) +
                                 " to OPTIONS; is this the tus endpoint?");
        } else {
          // The first answer includes the TCP and TLS set-up; each later one on the kept
          // connection is one round trip: the figure `cloud.parallel_uploads` is sized by.
          long long round_trip_ms = -1;
          for (int i = 0; i < 3; ++i) {
            const auto t1 = std::chrono::steady_clock::now();
            auto again = http.Perform(request, kOptionsAnswerCap);
            if (!again || (again->status != 200 && again->status != 204)) break;
            const long long r =
                std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t1).count();
            if (round_trip_ms < 0 || r < round_trip_ms) round_trip_ms = r;
          }
          std::string timing = " in " + std::to_string(ms) + " ms";
          if (round_trip_ms >= 0) {
            timing += " with connection set-up, round trip " + std::to_string(round_trip_ms) + " ms";
          }
          report.Ok(label, cfg->cloud.upload_url + via + " answers (tus " + response->Header("tus-version") +
                               ", extensions " + response->Header("tus-extension") + ")" + timing);
        }
      }
    }
  }

  if (want("pacs") && cfg->results.enabled) {
    auto options = core::MakeDicomWebHttpOptions(cfg->cloud);
    if (!options) {
      report.Fail("pacs", options.error().message());
    } else {
      transport::HttpClient http(*options);
      transport::dicomweb::Client dicomweb(http, cfg->cloud.dicomweb_url);
      // A study UID that cannot exist: the answer proves reachability and credentials.
      auto series = dicomweb.SearchSeries("2.25.0");
      if (!series) {
        report.Fail("pacs", cfg->cloud.dicomweb_url + ": " + series.error().message());
      } else {
        report.Ok("pacs", cfg->cloud.dicomweb_url + " answers QIDO-RS and accepts our credentials");
      }
    }
  }

  if (want("console") && cfg->console.enabled) {
    results::ConsoleNode node{cfg->console.host, cfg->console.port, cfg->console.called_ae, cfg->console.calling_ae, 10};
    if (auto st = results::EchoConsole(node); !st) {
      report.Fail("console", st.error().message());
    } else {
      report.Ok("console", cfg->console.called_ae + "@" + cfg->console.host + ":" + std::to_string(cfg->console.port) +
                               " answers C-ECHO");
    }
  }

  return std::move(report.report);
}

}  // namespace ctagent::control
