#include "agent/daemon/metrics_collector.hpp"

#include <boost/asio/steady_timer.hpp>

#include <cmath>
#include <map>

#include "base/log.hpp"
#include "agent/control/status.hpp"

namespace ctagent::daemon {
namespace {

// Scan end -> images: from seconds (a small scan on a fast link) to an hour (a long queue in the
// imaging center; results.timeout_s allows up to a day).
const std::vector<double> kLatencyBuckets = {5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600};

// The spool's state names with '_' for '-', so they read like the other label values.
std::string StateLabel(spool::ScanState state) {
  std::string name = spool::ToString(state);
  for (char& c : name) c = c == '-' ? '_' : c;
  return name;
}

}  // namespace

MetricsCollector::MetricsCollector() : images_latency_(kLatencyBuckets) {}

void MetricsCollector::OnScanEnd(const core::ScanSummary& summary) {
  if (summary.images_seconds) images_latency_.Observe(*summary.images_seconds);
}

void MetricsCollector::SampleRate(Clock::time_point now) {
  rate_samples_.emplace_back(now, counters_.upload.bytes_sent.load());
  while (rate_samples_.size() > 2 && now - rate_samples_[1].first >= kRateWindow) rate_samples_.pop_front();
}

double MetricsCollector::UploadRate() const {
  if (rate_samples_.size() < 2) return 0;
  const auto& [t0, b0] = rate_samples_.front();
  const auto& [t1, b1] = rate_samples_.back();
  const double seconds = std::chrono::duration<double>(t1 - t0).count();
  return seconds > 0 && b1 >= b0 ? static_cast<double>(b1 - b0) / seconds : 0;
}

std::string MetricsCollector::Page(spool::Spool& spool, core::LinkManager* links,
                                   const std::optional<ByteBudget::Usage>& chunk_buffers) {
  metrics::Registry r;

  // Scans by state: every state, 0 included, so a query never misses a series.
  std::map<spool::ScanState, std::uint64_t> by_state = {
      {spool::ScanState::kAcquiring, 0}, {spool::ScanState::kAcquired, 0},  {spool::ScanState::kUploaded, 0},
      {spool::ScanState::kResultsReceived, 0}, {spool::ScanState::kDelivered, 0}, {spool::ScanState::kFailed, 0}};
  spool.VisitScans([&by_state](const spool::ScanRecord& record) { ++by_state[record.state]; });
  auto& scans = r.Gauge("ctagent_scans", "Scans in the spool by state (docs/durability.md).");
  for (const auto& [state, n] : by_state) scans.Add({{"state", StateLabel(state)}}, static_cast<double>(n));

  r.Counter("ctagent_acquired_bytes_total",
            "Raw detector bytes of the chunks this daemon made durable in the spool.")
      .Add({}, static_cast<double>(counters_.acquired_bytes.load()));
  r.Counter("ctagent_spooled_bytes_total", "The same chunks compressed, as stored in the spool and uploaded.")
      .Add({}, static_cast<double>(counters_.spooled_bytes.load()));
  const std::uint64_t uploaded = counters_.upload.bytes_sent.load();
  const std::uint64_t manifests = counters_.upload.manifest_bytes_sent.load();
  r.Counter("ctagent_uploaded_bytes_total", "Bytes the imaging center confirmed (tus offsets), by kind.")
      .Add({{"kind", "chunk"}}, static_cast<double>(uploaded - std::min(uploaded, manifests)))
      .Add({{"kind", "manifest"}}, static_cast<double>(manifests));

  const control::Backlog backlog = control::MeasureBacklog(spool);
  const double rate = UploadRate();
  r.Gauge("ctagent_backlog_bytes", "Compressed bytes in the spool the cloud has not confirmed (failed scans apart).")
      .Add({}, static_cast<double>(backlog.bytes));
  r.Gauge("ctagent_backlog_scans", "Scans with bytes still to upload.").Add({}, static_cast<double>(backlog.scans));
  r.Gauge("ctagent_upload_rate_bytes_per_second", "Bytes confirmed per second over the last 30 s.").Add({}, rate);
  // +Inf while bytes wait and nothing moves (link down, uploads paused): an alert can say so.
  const double eta = backlog.bytes == 0 ? 0 : rate > 0 ? static_cast<double>(backlog.bytes) / rate : HUGE_VAL;
  r.Gauge("ctagent_backlog_eta_seconds", "Backlog bytes / upload rate: when the backlog is sent at today's rate.")
      .Add({}, eta);

  auto& in_use = r.Gauge("ctagent_link_in_use", "1 for the network link uploads use now, 0 for the others.");
  auto& throughput =
      r.Gauge("ctagent_link_throughput_bytes_per_second", "Upload rate over the last 30 s, on the link in use.");
  if (links == nullptr) {
    // No cloud.links: one link, the system's routing.
    in_use.Add({{"link", "system"}}, 1);
    throughput.Add({{"link", "system"}}, rate);
  } else {
    auto& up = r.Gauge("ctagent_link_up", "1 when the link's probes and requests succeed (docs/links.md).");
    auto& cap = r.Gauge("ctagent_link_cap_bits_per_second", "The link's bandwidth cap now; 0: uncapped.");
    for (const core::LinkState& link : links->Snapshot()) {
      in_use.Add({{"link", link.name}}, link.active ? 1 : 0);
      up.Add({{"link", link.name}}, link.up ? 1 : 0);
      cap.Add({{"link", link.name}}, static_cast<double>(link.cap_bits_per_s));
      if (link.active) throughput.Add({{"link", link.name}}, rate);
    }
  }

  auto& retries = r.Counter("ctagent_retries_total",
                            "Requests retried after a transient failure, by stage and failure class.");
  for (const auto& [failure, n] : counters_.upload.retries_by_class) {
    retries.Add({{"stage", "upload"}, {"class", failure}}, static_cast<double>(n));
  }
  for (const auto& [kind, n] : counters_.results_retries_by_class) {
    retries.Add({{"stage", "results"}, {"class", kind}}, static_cast<double>(n));
  }

  if (chunk_buffers) {
    // The budget of codec.buffer_bytes (docs/configuration.md, "Memory"): how full, and whether
    // it held acquisition back.
    r.Gauge("ctagent_chunk_buffer_capacity_bytes", "codec.buffer_bytes: the budget of raw chunk buffers.")
        .Add({}, static_cast<double>(chunk_buffers->capacity));
    r.Gauge("ctagent_chunk_buffer_bytes", "Chunk-buffer bytes held now (raw chunks being acquired or compressed).")
        .Add({}, static_cast<double>(chunk_buffers->in_use));
    r.Gauge("ctagent_chunk_buffer_high_water_bytes", "The most chunk-buffer bytes held at once since the agent started.")
        .Add({}, static_cast<double>(chunk_buffers->high_water));
    r.Counter("ctagent_chunk_buffer_waits_total", "Requests that waited for room in the chunk-buffer budget, by who asked.")
        .Add({{"stage", "acquisition"}}, static_cast<double>(chunk_buffers->blocked_takes));
  }

  images_latency_.AppendTo(r.HistogramFamily(
      "ctagent_scan_images_latency_seconds",
      "From a scan's acquisition end to its results stored and delivered (scans acquired by this daemon)."));
  return r.Render();
}

std::shared_ptr<void> StartMetricsEndpoint(boost::asio::io_context& io, const config::MetricsConfig& config,
                                           MetricsCollector& collector, core::Agent& agent) {
  struct Endpoint {
    explicit Endpoint(boost::asio::io_context& io) : timer(io) {}
    boost::asio::steady_timer timer;
    std::unique_ptr<metrics::Server> server;
    MetricsCollector* collector = nullptr;
    void Tick() {
      collector->SampleRate(MetricsCollector::Clock::now());
      timer.expires_after(std::chrono::seconds(1));
      timer.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) Tick();
      });
    }
    ~Endpoint() { timer.cancel(); }
  };
  metrics::ServerSettings settings;
  settings.address = config.address;
  settings.port = config.port;
  auto server = metrics::Server::Open(io, settings, [&collector, &agent] {
    return collector.Page(agent.spool(), agent.link_manager(), agent.chunk_buffer_usage());
  });
  if (!server) {
    log::Warn("metrics", server.error().message() + "; the daemon goes on without metrics");
    return nullptr;
  }
  const std::string host = config.address.find(':') != std::string::npos ? "[" + config.address + "]" : config.address;
  log::Info("metrics", "serving metrics at http://" + host + ":" + std::to_string(config.port) + "/metrics");
  auto endpoint = std::make_shared<Endpoint>(io);
  endpoint->server = std::move(*server);
  endpoint->collector = &collector;
  endpoint->Tick();
  return endpoint;
}

}  // namespace ctagent::daemon
