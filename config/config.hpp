// The agent's configuration: one JSON file, validated on load against a schema table
// (config/schema.cpp). Every error names the file, the JSON path, what was expected and what
// was found. Unknown keys are errors. Relative paths are resolved against the config file's
// directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "drivers/scan_types.hpp"

namespace ctagent::config {

struct DriverConfig {
  std::string name = "sim";          // built-in driver name
  nlohmann::json options = nlohmann::json::object();  // passed to the driver as-is
};

struct CodecConfig {
  int zstd_level = 3;
  std::string filter = "predict";    // agent/codec/filter.hpp; chosen by measurement (docs/codec.md)
  // agent/codec/chunk.hpp Codec: context_rans (codec 2) has the better ratio and codes at
  // >= 270 MB/s per core both ways on the bench (docs/codec.md, "How the defaults were chosen").
  std::string coder = "context_rans";
  std::uint32_t views_per_chunk = 64;
  std::uint32_t threads = 2;         // compression workers
  std::uint64_t queue_bytes = 4ull << 20;  // raw chunks waiting for the workers (agent/codec/chunk_stage.hpp)
  // Chunk buffers held at once: raw chunks from acquisition until stored, chunks read back for
  // upload (base/byte_budget.hpp, docs/configuration.md "Memory"); 0: no such bound.
  std::uint64_t buffer_bytes = 12ull << 20;
};

struct SpoolConfig {
  std::filesystem::path directory;   // required
  std::uint64_t max_bytes = 64ull << 30;
  std::uint64_t min_free_bytes = 1ull << 30;
  std::string retention = "after_delivery";  // agent/spool/spool.hpp RetentionPolicy
  std::uint32_t keep_days = 7;               // with retention "keep_days"
  std::uint64_t sync_batch_bytes = 8ull << 20;  // chunks are made durable in batches of this many bytes
  std::uint32_t sync_interval_ms = 500;         // ... or when the oldest unsynced chunk waited this long
};

struct TlsConfig {
  std::filesystem::path ca_file;          // empty: the system's CA store
  std::filesystem::path client_cert_file; // mTLS, optional (with client_key_file)
  std::filesystem::path client_key_file;
  std::string pinned_public_key;          // optional: "sha256//<base64>[;sha256//<base64>...]"
};

struct CloudConfig {
  std::string upload_url;            // tus creation endpoint, https://...
  std::string dicomweb_url;          // DICOMweb root, https://.../dicom-web
  std::string username;              // HTTP basic auth for DICOMweb (optional)
  std::filesystem::path password_file;  // file holding the password (never inline in config)
  TlsConfig tls;
  bool allow_plain_http = false;     // development only; loudly logged
  // Uploads sending at once: at least parallel_uploads, more while the link's measured rate x
  // round trip asks for them, at most max_uploads_in_flight (each holds its chunk in memory).
  std::uint32_t parallel_uploads = 8;
  std::uint32_t max_uploads_in_flight = 32;
  std::uint64_t patch_bytes = 4ull << 20;  // bytes per PATCH request
  std::uint32_t connect_timeout_s = 10;
  std::uint32_t stall_timeout_s = 30;  // abort a request that moves no byte for this long
  // The slowest rate a link is expected to sustain: with connect_timeout_s and stall_timeout_s
  // it sets every request's overall deadline (docs/transport.md).
  std::uint64_t floor_rate_bits_per_s = 1'000'000;
  // Origins ("https://host:port", space-separated) besides upload_url's own that a tus server's
  // Location header may point at. Empty: only upload_url's origin.
  std::string upload_origins_allowed;
  bool http2 = true;                 // offer HTTP/2 by ALPN (the server may still pick HTTP/1.1)
  // Network links (wired, 5G, ...) keyed by name; parsed and checked by core::ParseLinks
  // (agent/core/links.hpp, docs/links.md). Empty: the system's routing, uncapped.
  nlohmann::json links = nlohmann::json::object();
};

struct ResultsConfig {
  bool enabled = true;
  std::uint32_t poll_interval_ms = 1000;  // first poll interval; backs off to max
  std::uint32_t poll_max_interval_ms = 15000;
  std::uint32_t timeout_s = 900;           // give up waiting (results stay fetchable later)
  std::uint64_t max_instance_bytes = 64ull << 20;
};

struct ConsoleConfig {
  bool enabled = true;
  std::string host = "127.0.0.1";
  std::uint16_t port = 11112;
  std::string called_ae = "CONSOLE";
  std::string calling_ae = "CTAGENT";
};

// The daemon's control socket (agent/control/control.hpp, docs/control-protocol.md).
struct ControlConfig {
  std::filesystem::path socket;  // empty: <spool.directory>/control.sock (ControlSocketPath)
  std::string group;             // members may use the socket besides root and the daemon's user
};

// The daemon's metrics endpoint (agent/metrics, docs/metrics.md): Prometheus text on GET /metrics.
// It has no authentication, so it listens on loopback unless allow_non_loopback says otherwise.
struct MetricsConfig {
  bool enabled = false;
  std::string address = "127.0.0.1";  // an IPv4 or IPv6 address of this machine
  std::uint16_t port = 9464;
  bool allow_non_loopback = false;
};

// The operator's local page (agent/ui, docs/operator-guide.md): plain HTTP on loopback by
// default; any other address needs TLS and a password or a client CA (config validation).
struct UiTlsConfig {
  std::filesystem::path cert_file;       // the page's certificate chain (PEM); empty: no TLS
  std::filesystem::path key_file;        // its private key (PEM), not readable by other users
  std::filesystem::path client_ca_file;  // empty: no client certificate asked for
};

struct UiConfig {
  // Off unless configured, like the metrics: the package's configuration and the demo turn it on,
  // and tests that start daemons on shared machines open no fixed port by default.
  bool enabled = false;
  std::string address = "127.0.0.1";  // loopback; another address only with tls and a password or client CA
  std::uint16_t port = 8471;
  std::string server_name;  // a host name the page is opened by (Host check off loopback); empty: the address
  UiTlsConfig tls;
  std::filesystem::path password_file;  // `ctagent ui-password` writes it; empty: no password
  // Who confirms a high-risk finding at this terminal's page (recorded with the confirmation);
  // empty: "operator at this terminal".
  std::string console_user;
};

// The hospital's Modality Worklist server (agent/worklist/worklist.hpp, docs/privacy.md). Off by
// default: without it every scan carries the `study` identity, as before.
struct WorklistConfig {
  bool enabled = false;
  std::string host;                    // required when enabled
  std::uint16_t port = 104;
  std::string called_ae;               // the worklist server's AE title; required when enabled
  std::string calling_ae = "CTAGENT";  // this station's AE title, also the Scheduled Station AE Title asked for
  std::uint32_t timeout_s = 10;        // connect, association, and each answer
  std::uint32_t max_answers = 500;     // more answers than this: the query is cancelled and fails
};

// Pseudonymisation (agent/privacy/privacy.hpp, docs/privacy.md).
struct PrivacyConfig {
  std::filesystem::path key_file;  // the per-site secret; empty: <spool.directory>/site.key (SiteKeyPath)
  bool age_band = false;           // disclose a five-year band of the patient's age
  bool sex = false;                // disclose the patient's sex
};

struct StudyConfig {
  // The identity the cloud may see. A real deployment takes these from the worklist; the
  // demo uses pseudonyms. Never logged.
  std::string patient_id = "ANON";
  std::string patient_name = "ANONYMOUS";
  std::string study_uid;            // empty: minted per scan
  std::string study_description = "CT CHEST";
};

// The `scan` defaults: a 16-slice county-hospital chest scanner in fan beam (SID 570 mm, SDD
// 1040 mm, 16 x 0.75 mm rows, 896 channels of 0.55 mm at isocenter, 1160 views per 0.5 s
// rotation), one axial rotation at table position 0 (16 slices, z -5.6 .. +5.6 mm). Axial so
// that a config that sets only some scan keys never gets a moving table it did not ask for;
// drivers/sim/sim_detector.hpp's SixteenSliceFanProtocol() is the helical form of this scan.
inline drivers::ScanProtocol DefaultScanProtocol() { return drivers::SixteenSliceAxialProtocol(); }

struct AgentConfig {
  std::filesystem::path source_file;  // where it was loaded from
  std::string terminal_id = "ct-terminal";
  std::string log_level = "info";
  DriverConfig driver;
  drivers::ScanProtocol protocol = DefaultScanProtocol();  // the "scan" object
  StudyConfig study;
  CodecConfig codec;
  SpoolConfig spool;
  CloudConfig cloud;
  ResultsConfig results;
  ConsoleConfig console;
  WorklistConfig worklist;
  PrivacyConfig privacy;
  ControlConfig control;
  MetricsConfig metrics;
  UiConfig ui;
};

// Where the daemon listens and the CLI connects: control.socket, or control.sock in the spool.
inline std::filesystem::path ControlSocketPath(const AgentConfig& config) {
  return config.control.socket.empty() ? config.spool.directory / "control.sock" : config.control.socket;
}

// The site key file: privacy.key_file, or site.key in the spool.
inline std::filesystem::path SiteKeyPath(const AgentConfig& config) {
  return config.privacy.key_file.empty() ? config.spool.directory / "site.key" : config.privacy.key_file;
}

// Loads and validates. Error messages look like:
//   config/demo.json: /cloud/parallel_uploads: expected an integer from 1 to 64, found string "four"
Expected<AgentConfig> LoadConfig(const std::filesystem::path& path);
Expected<AgentConfig> ParseConfig(const std::string& text, const std::filesystem::path& source_for_messages);

// The files a loaded config names, as `config check` sees them (docs/configuration.md, "Files
// and secrets"): the CA bundle, client certificate, client key and password file must be
// regular files this user can read; the secret ones (client key, password file) must not be
// readable by others (mode & 0004; group-readable is allowed, for the service's group).
struct FileFinding {
  bool readable_by_others = false;  // the secret-file rule (`ctagent check` warns, `config check` refuses)
  std::string message;              // "FILE: /cloud/password_file: ..."
};
std::vector<FileFinding> CheckFiles(const AgentConfig& config);

// LoadConfig plus CheckFiles: what `ctagent config check` runs. Every finding of CheckFiles is
// an error here, one per line of the message.
Expected<AgentConfig> CheckConfig(const std::filesystem::path& path);

// The schema as Markdown (a table per section), for docs/configuration.md.
std::string SchemaMarkdown();

}  // namespace ctagent::config
