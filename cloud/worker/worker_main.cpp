// ctcloud-worker: the reference imaging center's reconstruction and analysis worker (demos and
// tests only; not a diagnostic product). See worker.hpp and docs/reference-imaging-center.md.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

#include "base/durable_file.hpp"
#include "base/log.hpp"
#include "cloud/worker/worker.hpp"

namespace {

constexpr const char* kUsage =
    "usage: ctcloud-worker --store DIR --work DIR --orthanc URL --orthanc-user U --orthanc-password-file F\n"
    "                      --ca FILE [--poll-ms 500] [--once] [--image-size 512] [--window ramlak|shepp-logan]\n"
    "                      [--log-level debug|info|warn|error]\n"
    "Reconstructs every complete scan in the tus upload directory DIR, analyses the lungs (a reference,\n"
    "not a diagnostic product) and stores in Orthanc the CT series, then the result set: segmentation,\n"
    "readable report and, last, the TID 1500 measurement report (docs/results.md).\n"
    "--once: one pass, then exit (0: nothing failed, 3: a scan failed or could not be stored).\n";

std::atomic<bool> g_stop{false};

extern "C" void OnSignal(int) { g_stop = true; }

int Usage(const std::string& problem) {
  std::fprintf(stderr, "ctcloud-worker: %s\n%s", problem.c_str(), kUsage);
  return 2;
}

bool ParseUint(const std::string& text, std::uint32_t min, std::uint32_t max, std::uint32_t* out) {
  char* end = nullptr;
  const unsigned long value = std::strtoul(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < min || value > max) return false;
  *out = static_cast<std::uint32_t>(value);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ctagent;
  cloud::WorkerConfig config;
  std::string password_file;
  std::uint32_t poll_ms = 500;
  bool once = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string text;
    if (arg == "--once") {
      once = true;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!value(&text)) {
      return Usage(std::string(arg) + " needs a value (or is unknown)");
    } else if (arg == "--store") {
      config.store_dir = text;
    } else if (arg == "--work") {
      config.work_dir = text;
    } else if (arg == "--orthanc") {
      config.orthanc_url = text;
    } else if (arg == "--orthanc-user") {
      config.orthanc_user = text;
    } else if (arg == "--orthanc-password-file") {
      password_file = text;
    } else if (arg == "--ca") {
      config.ca_file = text;
    } else if (arg == "--poll-ms") {
      if (!ParseUint(text, 10, 600000, &poll_ms)) return Usage("--poll-ms must be 10..600000");
    } else if (arg == "--image-size") {
      if (!ParseUint(text, 16, 4096, &config.recon.image_size)) return Usage("--image-size must be 16..4096");
    } else if (arg == "--window") {
      if (text == "ramlak") {
        config.recon.window = cloud::RampWindow::kRamLak;
      } else if (text == "shepp-logan") {
        config.recon.window = cloud::RampWindow::kSheppLogan;
      } else {
        return Usage("--window must be ramlak or shepp-logan");
      }
    } else if (arg == "--log-level") {
      log::Level level;
      if (!log::ParseLevel(text, &level)) return Usage("--log-level must be debug, info, warn or error");
      log::SetLevel(level);
    } else {
      return Usage("unknown argument " + std::string(arg));
    }
  }
  if (config.store_dir.empty() || config.work_dir.empty() || config.orthanc_url.empty() ||
      config.orthanc_user.empty() || password_file.empty() || config.ca_file.empty()) {
    return Usage("--store, --work, --orthanc, --orthanc-user, --orthanc-password-file and --ca are required");
  }
  {
    const auto file_store = MakeProcessFileStore();
    FileStore& files = *file_store;
    auto password = files.ReadAll(password_file, 4096);
    if (!password) {
      std::fprintf(stderr, "ctcloud-worker: cannot read the Orthanc password: %s\n", password.error().message().c_str());
      return 2;
    }
    config.orthanc_password.assign(password->begin(), password->end());
    while (!config.orthanc_password.empty() &&
           (config.orthanc_password.back() == '\n' || config.orthanc_password.back() == '\r' ||
            config.orthanc_password.back() == ' ')) {
      config.orthanc_password.pop_back();
    }
    if (config.orthanc_password.empty()) {
      std::fprintf(stderr, "ctcloud-worker: password file %s is empty\n", password_file.c_str());
      return 2;
    }
  }

  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);

  cloud::Worker worker(config);
  if (auto st = worker.Init(); !st) {
    log::Error("worker", st.error().message());
    return 1;
  }
  log::Info("worker", "watching " + config.store_dir.string() + ", storing in " + config.orthanc_url +
                          (once ? " (one pass)" : ""));
  while (!g_stop) {
    const cloud::PassResult pass = worker.RunPass(g_stop);
    if (once) {
      log::Info("worker", "pass done: " + std::to_string(pass.stored) + " stored, " + std::to_string(pass.failed) +
                              " failed, " + std::to_string(pass.waiting) + " waiting, " +
                              std::to_string(pass.retry) + " to retry");
      return pass.failed > 0 || pass.retry > 0 ? 3 : 0;
    }
    // Sleep in short steps so SIGTERM is honoured promptly.
    for (std::uint32_t slept = 0; slept < poll_ms && !g_stop; slept += 50) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<std::uint32_t>(50, poll_ms - slept)));
    }
  }
  log::Info("worker", "stopped");
  return 0;
}
