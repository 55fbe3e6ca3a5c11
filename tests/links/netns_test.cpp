// Real networks in network namespaces: a "scanner" namespace and a "cloud" namespace joined by
// two veth pairs (wired, 5g) with distinct subnets, each shaped by tc tbf; the real tus server
// in "cloud" on an address reachable over both. In "scanner", the LinkManager with two links
// bound to the two interfaces, and a tus upload loop over its leases (the uploader's contract:
// Acquire per request, Report the outcome, resume from the server's offset with HEAD). And the
// real `ctagent scan` in "scanner" with cloud.links naming the two interfaces, the wired one cut
// mid-upload: the scan must arrive bit-exact, re-sending at most one PATCH per upload (the
// uploader logs what each resumed upload re-sent).
//
// Needs root (ip netns, tc). When namespaces cannot be created the test exits with code 4,
// which ctest reports as skipped, with the reason printed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "agent/core/links.hpp"
#include "tests/links/scan_support.hpp"
#include "tests/support/process.hpp"
#include "transport/http.hpp"

using namespace ctagent;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kSkipped = 4;

int Sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// Two namespaces, two shaped veth pairs, a service address in "cloud" routed over both.
// Everything is deleted by the destructor (deleting a namespace deletes its veth ends).
class NetnsLab {
 public:
  explicit NetnsLab(std::uint64_t wired_mbit, std::uint64_t g5_mbit) {
    const std::string id = std::to_string(::getpid() % 100000);
    scanner = "ctl-scan-" + id;
    cloud = "ctl-cloud-" + id;
    wired_if = "lw" + id + "s";
    g5_if = "lg" + id + "s";
    if (Sh("ip netns add " + scanner) != 0) {
      std::printf("SKIPPED: cannot create a network namespace (ip netns add %s refused; needs root and "
                  "CAP_SYS_ADMIN)\n", scanner.c_str());
      std::fflush(stdout);
      std::_Exit(kSkipped);
    }
    ok_scanner_ = true;
    REQUIRE(Sh("ip netns add " + cloud) == 0);
    ok_cloud_ = true;
    const std::string s = "ip -n " + scanner + " ";
    const std::string c = "ip -n " + cloud + " ";
    std::vector<std::string> cmds = {
        "ip link add " + wired_if + " netns " + scanner + " type veth peer name lw" + id + "c netns " + cloud,
        "ip link add " + g5_if + " netns " + scanner + " type veth peer name lg" + id + "c netns " + cloud,
        s + "addr add 10.77.1.2/24 dev " + wired_if,
        s + "addr add 10.77.2.2/24 dev " + g5_if,
        c + "addr add 10.77.1.1/24 dev lw" + id + "c",
        c + "addr add 10.77.2.1/24 dev lg" + id + "c",
        c + "addr add " + service + "/32 dev lo",
        s + "link set lo up",
        c + "link set lo up",
        s + "link set " + wired_if + " up",
        s + "link set " + g5_if + " up",
        c + "link set lw" + id + "c up",
        c + "link set lg" + id + "c up",
        // The service address over either link; a socket bound to an interface uses its route.
        s + "route add " + service + "/32 via 10.77.1.1 dev " + wired_if + " metric 10",
        s + "route add " + service + "/32 via 10.77.2.1 dev " + g5_if + " metric 20",
        "tc -n " + scanner + " qdisc add dev " + wired_if + " root tbf rate " + std::to_string(wired_mbit) +
            "mbit burst 256kb latency 50ms",
        "tc -n " + scanner + " qdisc add dev " + g5_if + " root tbf rate " + std::to_string(g5_mbit) +
            "mbit burst 64kb latency 50ms",
    };
    for (const auto& cmd : cmds) {
      INFO(cmd);
      REQUIRE(Sh(cmd) == 0);
    }
  }
  ~NetnsLab() {
    if (ok_scanner_) Sh("ip netns del " + scanner);
    if (ok_cloud_) Sh("ip netns del " + cloud);
  }

  std::string scanner, cloud, wired_if, g5_if;
  const std::string service = "10.77.9.1";

 private:
  bool ok_scanner_ = false;
  bool ok_cloud_ = false;
};

// A server certificate for the service address, signed by the test CA.
void MakeServiceCert(const fs::path& pki, const fs::path& out_dir, const std::string& ip) {
  const std::string base = (out_dir / "service").string();
  std::ofstream(base + ".cnf") << "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=ctagent-netns\n[ext]\n"
                                  "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:"
                               << ip << "\n";
  REQUIRE(Sh("openssl req -new -newkey rsa:2048 -nodes -keyout " + base + ".key -out " + base + ".csr -config " +
             base + ".cnf") == 0);
  REQUIRE(Sh("openssl x509 -req -in " + base + ".csr -CA " + (pki / "ca.pem").string() + " -CAkey " +
             (pki / "ca.key").string() + " -CAcreateserial -CAserial " + base + ".srl -out " + base +
             ".pem -days 2 -extfile " + base + ".cnf -extensions ext") == 0);
}

struct TusInCloud {
  std::unique_ptr<test::ChildProcess> process;
  std::string endpoint;
};

TusInCloud StartTusInCloud(const NetnsLab& lab, const fs::path& dir, const fs::path& pki) {
  MakeServiceCert(pki, dir, lab.service);
  const fs::path ready = dir / "tus.port";
  TusInCloud tus;
  tus.process = std::make_unique<test::ChildProcess>(
      std::vector<std::string>{"ip", "netns", "exec", lab.cloud, "node",
                               std::string(CTAGENT_SOURCE_DIR) + "/cloud/tus-server/server.mjs", "--host",
                               lab.service, "--port", "0", "--dir", (dir / "store").string(), "--cert",
                               (dir / "service.pem").string(), "--key", (dir / "service.key").string(),
                               "--ready-file", ready.string()},
      dir / "tus.log");
  INFO(test::ReadText(dir / "tus.log"));
  REQUIRE(test::WaitFor([&] { return !test::ReadText(ready).empty() || !tus.process->Running(); }, 20s));
  REQUIRE(!test::ReadText(ready).empty());
  tus.endpoint = "https://" + lab.service + ":" + test::ReadText(ready) + "/files/";
  return tus;
}

// Runs `body` on a thread that has entered the namespace (setns is per thread; threads it
// starts, like the LinkManager's probes, inherit it).
void InNamespace(const std::string& netns, const std::function<void()>& body, std::string* error) {
  std::thread t([&] {
    const int fd = ::open(("/var/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
      *error = "setns into " + netns + " failed";
      if (fd >= 0) ::close(fd);
      return;
    }
    ::close(fd);
    body();
  });
  t.join();
}

using ctagent::test::RandomBytes;

struct UploadResult {
  std::string error;               // "" : complete
  std::string url;
  std::uint64_t body_bytes_sent = 0;  // all PATCH body bytes handed to the connection
  std::vector<std::string> links_used;
  int attempts = 0;
};

// The uploader's contract, minimal: per attempt Acquire a lease, HEAD for the offset (or POST to
// create), PATCH the rest paced by the lease, Report the outcome; retry after a short pause.
UploadResult Upload(core::LinkManager& links, const transport::HttpOptions& base, const std::string& endpoint,
                    const std::vector<std::uint8_t>& data, std::uint64_t patch_bytes) {
  UploadResult r;
  std::uint64_t offset = 0;
  for (r.attempts = 1; r.attempts <= 40; ++r.attempts) {
    auto lease = links.Acquire();
    if (!lease) {
      std::this_thread::sleep_for(250ms);
      continue;
    }
    if (r.links_used.empty() || r.links_used.back() != lease->link_name) r.links_used.push_back(lease->link_name);
    transport::HttpOptions options = base;
    options.interface_name = lease->interface_name;
    options.source_address = lease->source_address;
    transport::HttpClient http(options);
    Status outcome = Ok();
    auto fail = [&](Expected<transport::HttpResponse>& resp, const char* what) {
      if (!resp) return MakeError(resp.error());
      return MakeError(ErrorKind::kProtocol, std::string(what) + " answered HTTP " + std::to_string(resp->status));
    };
    if (r.url.empty()) {
      transport::HttpRequest create;
      create.method = "POST";
      create.url = endpoint;
      create.headers = {{"Tus-Resumable", "1.0.0"}, {"Upload-Length", std::to_string(data.size())}};
      auto resp = http.Perform(create);
      if (!resp || resp->status != 201) {
        outcome = fail(resp, "POST");
      } else {
        r.url = transport::ResolveUrl(endpoint, resp->Header("location"));
        offset = 0;
      }
    } else {
      transport::HttpRequest head;
      head.method = "HEAD";
      head.url = r.url;
      head.headers = {{"Tus-Resumable", "1.0.0"}};
      auto resp = http.Perform(head);
      if (!resp || resp->status != 200) {
        outcome = fail(resp, "HEAD");
      } else {
        offset = std::stoull(resp->Header("upload-offset"));
      }
    }
    while (outcome && offset < data.size()) {
      const std::uint64_t n = std::min<std::uint64_t>(patch_bytes, data.size() - offset);
      std::uint64_t sent_in_request = 0;
      transport::HttpRequest patch;
      patch.method = "PATCH";
      patch.url = r.url;
      patch.headers = {{"Tus-Resumable", "1.0.0"},
                       {"Upload-Offset", std::to_string(offset)},
                       {"Content-Type", "application/offset+octet-stream"}};
      patch.body = std::span<const std::uint8_t>(data.data() + offset, n);
      patch.on_upload_progress = [&](std::uint64_t sent) { sent_in_request = sent; };
      patch.before_send = lease->before_send;
      auto resp = http.Perform(patch);
      r.body_bytes_sent += sent_in_request;
      if (!resp || resp->status != 204) {
        outcome = fail(resp, "PATCH");
      } else {
        offset = std::stoull(resp->Header("upload-offset"));
      }
    }
    links.Report(lease->link_name, outcome);
    if (outcome) return r;
    r.error = outcome.error().message();
    std::this_thread::sleep_for(200ms);
  }
  return r;
}

std::string StoredBytes(const fs::path& store, const std::string& url) {
  return test::ReadText(store / url.substr(url.rfind('/') + 1));
}

std::vector<core::LinkConfig> Links(const NetnsLab& lab, std::uint64_t wired_cap) {
  core::LinkConfig wired;
  wired.name = "wired";
  wired.interface_name = lab.wired_if;
  wired.priority = 1;
  wired.max_bits_per_s = wired_cap;
  wired.probe_interval_ms = 500;
  wired.probe_timeout_s = 2;
  core::LinkConfig g5;
  g5.name = "5g";
  g5.interface_name = lab.g5_if;
  g5.priority = 2;
  g5.probe_interval_ms = 500;
  g5.probe_timeout_s = 2;
  return {wired, g5};
}

}  // namespace

TEST_CASE("netns: cutting the active link mid-upload fails over to the other, and every upload arrives bit-exact",
          "[netns]") {
  NetnsLab lab(100, 20);
  test::TempDir dir("netns-failover");
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  auto tus = StartTusInCloud(lab, dir.path(), pki);

  transport::HttpOptions base;
  base.tls.ca_file = pki / "ca.pem";
  base.connect_timeout_s = 2;
  base.stall_timeout_s = 2;
  constexpr std::uint64_t kPatch = 1u << 20;
  constexpr int kUploads = 3;
  constexpr std::size_t kSize = 12u << 20;  // ~1 s each on the 100 Mbit/s link, ~5 s on 20 Mbit/s

  std::string ns_error;
  std::vector<UploadResult> results(kUploads);
  std::vector<std::vector<std::uint8_t>> data;
  for (int i = 0; i < kUploads; ++i) data.push_back(RandomBytes(kSize, 100 + static_cast<unsigned>(i)));
  double failover_s = -1;
  std::string active_before;
  InNamespace(lab.scanner, [&] {
    core::LinkManager links(Links(lab, 0), core::MakeHttpProber(tus.endpoint, base));
    links.Start();
    active_before = links.ActiveLink();
    // Two uploads at once, a third after; the cut comes while the first two are mid-PATCH.
    std::vector<std::thread> uploads;
    for (int i = 0; i < kUploads; ++i) {
      uploads.emplace_back([&, i] {
        if (i == 2) std::this_thread::sleep_for(1500ms);
        results[static_cast<std::size_t>(i)] = Upload(links, base, tus.endpoint, data[static_cast<std::size_t>(i)], kPatch);
      });
    }
    std::this_thread::sleep_for(600ms);
    const auto cut = Clock::now();
    Sh("ip -n " + lab.scanner + " link set " + lab.wired_if + " down");
    for (int i = 0; i < 200 && links.ActiveLink() != "5g"; ++i) std::this_thread::sleep_for(50ms);
    if (links.ActiveLink() == "5g") failover_s = std::chrono::duration<double>(Clock::now() - cut).count();
    for (auto& t : uploads) t.join();
    links.Stop();
  }, &ns_error);
  REQUIRE(ns_error.empty());
  CHECK(active_before == "wired");
  std::printf("netns failover: 5g active %.2f s after the wired link was cut\n", failover_s);
  REQUIRE(failover_s >= 0);
  CHECK(failover_s <= 5.0);  // two failed probes 500 ms apart, or a failed request plus one probe

  for (int i = 0; i < kUploads; ++i) {
    const auto& r = results[static_cast<std::size_t>(i)];
    INFO("upload " << i << ": " << r.error);
    REQUIRE(!r.url.empty());
    const std::string stored = StoredBytes(dir.path() / "store", r.url);
    REQUIRE(stored.size() == kSize);
    CHECK(std::equal(stored.begin(), stored.end(), data[static_cast<std::size_t>(i)].begin(),
                     [](char a, std::uint8_t b) { return static_cast<std::uint8_t>(a) == b; }));
    // Progress callbacks can under-report the bytes of a request aborted between two of them,
    // so the count may fall short of the size; never wrap around.
    const std::uint64_t resent = r.body_bytes_sent > kSize ? r.body_bytes_sent - kSize : 0;
    std::string used;
    for (const auto& l : r.links_used) used += (used.empty() ? "" : " -> ") + l;
    std::printf("netns upload %d: %zu bytes, %d attempt(s), links %s, re-sent %llu bytes\n", i, kSize, r.attempts,
                used.c_str(), static_cast<unsigned long long>(resent));
    // At most the interrupted request's worth per upload.
    CHECK(resent <= kPatch);
  }
  // The uploads in flight at the cut finished over the 5g link.
  CHECK(results[0].links_used.back() == "5g");
  CHECK(results[1].links_used.back() == "5g");
}

TEST_CASE("netns: the token-bucket cap holds on a fast link", "[netns]") {
  NetnsLab lab(1000, 20);
  test::TempDir dir("netns-cap");
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  auto tus = StartTusInCloud(lab, dir.path(), pki);
  transport::HttpOptions base;
  base.tls.ca_file = pki / "ca.pem";
  base.stall_timeout_s = 5;

  constexpr std::uint64_t kCap = 40'000'000;  // 40 Mbit/s on a 1000 Mbit/s link
  constexpr std::size_t kSize = 10u << 20;     // ~2 s per upload at the cap
  std::string ns_error;
  std::vector<UploadResult> results(2);
  const auto a = RandomBytes(kSize, 7);
  const auto b = RandomBytes(kSize, 8);
  double seconds = 0;
  InNamespace(lab.scanner, [&] {
    core::LinkManager links(Links(lab, kCap), core::MakeHttpProber(tus.endpoint, base));
    const auto t0 = Clock::now();
    // Two transfers share the one bucket.
    std::thread ta([&] { results[0] = Upload(links, base, tus.endpoint, a, 4u << 20); });
    std::thread tb([&] { results[1] = Upload(links, base, tus.endpoint, b, 4u << 20); });
    ta.join();
    tb.join();
    seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  }, &ns_error);
  REQUIRE(ns_error.empty());
  REQUIRE(results[0].error.empty());
  REQUIRE(results[1].error.empty());
  CHECK(StoredBytes(dir.path() / "store", results[0].url).size() == kSize);
  CHECK(StoredBytes(dir.path() / "store", results[1].url).size() == kSize);
  const double mbit_s = 2.0 * kSize * 8 / seconds / 1e6;
  std::printf("netns cap: 2 x %zu bytes in %.2f s = %.1f Mbit/s (cap %.0f Mbit/s, link 1000 Mbit/s)\n", kSize, seconds,
              mbit_s, static_cast<double>(kCap) / 1e6);
  // Over ~4 s the 50 ms burst is about 1 %; 5 % margin for it and timer granularity.
  CHECK(mbit_s <= static_cast<double>(kCap) / 1e6 * 1.05);
}

namespace {

std::uint64_t TxBytes(const std::string& netns, const std::string& ifname) {
  const std::string cmd = "ip netns exec " + netns + " cat /sys/class/net/" + ifname + "/statistics/tx_bytes";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return 0;
  char buf[64] = {};
  const bool ok = std::fgets(buf, sizeof buf, p) != nullptr;
  ::pclose(p);
  return ok ? std::strtoull(buf, nullptr, 10) : 0;
}

// Sums "re-sent N bytes" over the uploader's log lines for uploads that needed a resume.
std::uint64_t ResentInLog(const std::string& log, std::size_t* uploads, std::uint64_t* worst) {
  std::uint64_t total = 0;
  const std::string key = ", re-sent ";
  for (auto pos = log.find(key); pos != std::string::npos; pos = log.find(key, pos + 1)) {
    const std::uint64_t n = std::strtoull(log.c_str() + pos + key.size(), nullptr, 10);
    total += n;
    *worst = std::max(*worst, n);
    ++*uploads;
  }
  return total;
}

}  // namespace

TEST_CASE("netns: a real `ctagent scan` over cloud.links fails over when the wired link is cut mid-upload, "
          "bit-exact, re-sending at most one request per upload",
          "[netns][scan]") {
  NetnsLab lab(40, 20);
  test::TempDir dir("netns-scan-failover");
  const fs::path pki = fs::path(CTAGENT_BINARY_DIR) / "test-pki";
  test::MakeTestPki(pki);
  auto tus = StartTusInCloud(lab, dir.path(), pki);

  constexpr std::uint64_t kPatch = 256 * 1024;
  auto cfg = test::ScanConfig(dir.path() / "spool", tus.endpoint, pki / "ca.pem", 2, kPatch);
  cfg["scan"]["rotations"] = 4;  // ~24 MB raw: several seconds on the 40 Mbit/s link
  cfg["cloud"]["links"] = {
      {"wired", {{"interface", lab.wired_if}, {"priority", 1}, {"probe_interval_ms", 500}, {"probe_timeout_s", 2}}},
      {"5g", {{"interface", lab.g5_if}, {"priority", 2}, {"probe_interval_ms", 500}, {"probe_timeout_s", 2}}}};
  const fs::path cfg_path = dir.path() / "agent.json";
  std::ofstream(cfg_path) << cfg.dump(2);

  const fs::path agent_log = dir.path() / "agent.log";
  test::ChildProcess agent({"ip", "netns", "exec", lab.scanner,
                            (fs::path(CTAGENT_BINARY_DIR) / "agent/ctagent").string(), "scan", "--config",
                            cfg_path.string(), "--no-results"},
                           agent_log);
  // Cut the wired link once the server holds about 3 MB (mid-upload: the scan is ~4x that).
  auto stored = [&] {
    std::uint64_t n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir.path() / "store", ec)) {
      if (e.path().extension() != ".json") n += e.file_size(ec);
    }
    return n;
  };
  REQUIRE(test::WaitFor([&] { return stored() >= 3'000'000 || !agent.Running(); }, 60s));
  const std::uint64_t wired_tx_at_cut = TxBytes(lab.scanner, lab.wired_if);
  const std::uint64_t g5_tx_at_cut = TxBytes(lab.scanner, lab.g5_if);
  REQUIRE(agent.Running());
  const std::uint64_t stored_at_cut = stored();
  REQUIRE(Sh("ip -n " + lab.scanner + " link set " + lab.wired_if + " down") == 0);

  const int rc = agent.Wait(std::chrono::seconds(180));
  const std::string log = test::ReadText(agent_log);
  INFO("agent log:\n" << log);
  REQUIRE(rc == 0);
  const std::uint64_t payload = test::CheckScanArrivedBitExact(dir.path() / "store", cfg_path);
  const std::uint64_t g5_tx = TxBytes(lab.scanner, lab.g5_if) - g5_tx_at_cut;

  std::size_t resumed = 0;
  std::uint64_t worst = 0;
  const std::uint64_t resent = ResentInLog(log, &resumed, &worst);
  std::printf("netns scan failover: payload %llu bytes, %llu stored at the cut (wired had sent %llu bytes); "
              "5g sent %llu bytes after it; %zu upload(s) resumed, re-sent %llu bytes in all, at most %llu per upload "
              "(PATCH %llu bytes)\n",
              static_cast<unsigned long long>(payload), static_cast<unsigned long long>(stored_at_cut),
              static_cast<unsigned long long>(wired_tx_at_cut), static_cast<unsigned long long>(g5_tx),
              resumed, static_cast<unsigned long long>(resent), static_cast<unsigned long long>(worst),
              static_cast<unsigned long long>(kPatch));
  // The rest of the scan went over the 5g link (less what was still in flight on the wired
  // link when the server's store was measured).
  CHECK(static_cast<double>(g5_tx) >= 0.9 * static_cast<double>(payload - stored_at_cut));
  CHECK(log.find("5g") != std::string::npos);
  // At most the interrupted request's worth per upload.
  CHECK(worst <= kPatch);
}
