#include "config/config.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <set>
#include <string_view>
#include <system_error>
#include <utility>

#include "base/private_file.hpp"
#include "config/schema.hpp"

namespace ctagent::config {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using schema::Entry;
using schema::Type;

// A config file is a few KiB; anything this large is the wrong file.
constexpr std::uintmax_t kMaxConfigBytes = 1u << 20;

std::string_view Parent(std::string_view path) { return path.substr(0, path.rfind('/')); }
std::string_view LastSegment(std::string_view path) { return path.substr(path.rfind('/') + 1); }

std::size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "unknown key; did you mean "x"?" when a sibling is close, else the list of siblings.
std::string UnknownKeyMessage(std::string_view parent, std::string_view key) {
  std::vector<std::string_view> siblings;
  for (const Entry& e : schema::Entries()) {
    if (Parent(e.path) == parent) siblings.push_back(LastSegment(e.path));
  }
  std::string_view best;
  std::size_t best_distance = SIZE_MAX;
  for (std::string_view s : siblings) {
    const std::size_t d = EditDistance(key, s);
    if (d < best_distance) {
      best = s;
      best_distance = d;
    }
  }
  if (!best.empty() && best_distance <= std::max<std::size_t>(2, best.size() / 3)) {
    return "unknown key; did you mean \"" + std::string(best) + "\"?";
  }
  std::string list;
  for (std::string_view s : siblings) list += (list.empty() ? "" : ", ") + std::string(s);
  return "unknown key; known keys here: " + list;
}

class Loader {
 public:
  Loader(std::string source_name, fs::path base_dir) : source_(std::move(source_name)), base_dir_(std::move(base_dir)) {}

  Status Walk(const json& object, const std::string& prefix, AgentConfig& config) {
    for (const auto& [key, value] : object.items()) {
      const std::string path = prefix + "/" + key;
      const Entry* entry = schema::Find(path);
      if (entry == nullptr) return Fail(path, UnknownKeyMessage(prefix, key));
      json normalised;
      std::string problem;
      if (!schema::CheckValue(*entry, value, base_dir_, &normalised, &problem)) return Fail(path, problem);
      seen_.insert(path);
      if (entry->type == Type::kSection) {
        if (auto s = Walk(value, path, config); !s) return s;
      } else {
        entry->set(config, normalised);
      }
    }
    return Ok();
  }

  Status CheckRequired() const {
    for (const Entry& e : schema::Entries()) {
      if (e.required && seen_.count(std::string(e.path)) == 0) {
        return Fail(std::string(e.path), "required key missing (expected " + schema::Expectation(e) + ")");
      }
    }
    return Ok();
  }

  bool Seen(const std::string& path) const { return seen_.count(path) != 0; }

  Unexpected Fail(const std::string& path, const std::string& what) const {
    return MakeError(ErrorKind::kInvalidInput, source_ + ": " + path + ": " + what);
  }

 private:
  std::string source_;
  fs::path base_dir_;
  std::set<std::string> seen_;
};

Status CheckUrlScheme(const Loader& loader, const std::string& path, const std::string& url, bool allow_plain_http) {
  if (schema::IsHttpUrl(url) && !allow_plain_http) {
    return loader.Fail(path, "plain http:// (found string " + json(url).dump() +
                                 ") needs /cloud/allow_plain_http set to true, for development only; use https://");
  }
  return Ok();
}

// 127.0.0.0/8, ::1, or ::ffff:127.x.y.z.
bool IsLoopbackAddress(const std::string& address) {
  in_addr v4{};
  if (inet_pton(AF_INET, address.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, address.c_str(), &v6) != 1) return false;
  if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
  return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
}

// The operator's page: TLS needs its certificate and key; off loopback it needs TLS and a way to
// tell the operator from anyone else on the network (a password, a client certificate or both).
// Secret files that exist must not be readable by other users (a missing password file is made by
// `ctagent ui-password`, which reads this configuration first; the page refuses to start without it).
Status CheckUi(const Loader& loader, const UiConfig& ui) {
  const bool tls = !ui.tls.cert_file.empty() || !ui.tls.key_file.empty() || !ui.tls.client_ca_file.empty();
  if (tls && ui.tls.cert_file.empty()) {
    return loader.Fail("/ui/tls/cert_file", "required when /ui/tls is set (the page's certificate chain, PEM)");
  }
  if (tls && ui.tls.key_file.empty()) {
    return loader.Fail("/ui/tls/key_file", "required when /ui/tls is set (the private key of /ui/tls/cert_file, PEM)");
  }
  if (!tls && !ui.password_file.empty()) {
    return loader.Fail("/ui/password_file", "needs /ui/tls (set /ui/tls/cert_file and /ui/tls/key_file): a password "
                                            "sent over plain HTTP could be read on the way");
  }
  if (!ui.enabled) return Ok();
  if (!IsLoopbackAddress(ui.address) && (!tls || (ui.password_file.empty() && ui.tls.client_ca_file.empty()))) {
    return loader.Fail("/ui/address",
                       "\"" + ui.address + "\" is not a loopback address; the page may listen there only with TLS "
                       "(set /ui/tls/cert_file and /ui/tls/key_file) and a password (set /ui/password_file and run "
                       "`ctagent ui-password`) or a client certificate (set /ui/tls/client_ca_file); or use 127.0.0.1");
  }
  struct Secret {
    const fs::path& file;
    const char* what;
    const char* key;
  };
  for (const Secret& secret : {Secret{ui.tls.key_file, "the page's TLS key", "/ui/tls/key_file"},
                               Secret{ui.password_file, "the page's password file", "/ui/password_file"}}) {
    if (secret.file.empty()) continue;
    auto s = CheckPrivateFile(secret.file, secret.what, secret.key);
    if (!s && s.error().kind() != ErrorKind::kNotFound) return loader.Fail(secret.key, s.error().message());
  }
  return Ok();
}

Status CrossChecks(const Loader& loader, const AgentConfig& c) {
  const TlsConfig& tls = c.cloud.tls;
  if (!tls.client_cert_file.empty() && tls.client_key_file.empty()) {
    return loader.Fail("/cloud/tls/client_cert_file",
                       "set without /cloud/tls/client_key_file; mTLS needs both the certificate and its key");
  }
  if (!tls.client_key_file.empty() && tls.client_cert_file.empty()) {
    return loader.Fail("/cloud/tls/client_key_file",
                       "set without /cloud/tls/client_cert_file; mTLS needs both the certificate and its key");
  }
  if (auto s = CheckUrlScheme(loader, "/cloud/upload_url", c.cloud.upload_url, c.cloud.allow_plain_http); !s) return s;
  if (auto s = CheckUrlScheme(loader, "/cloud/dicomweb_url", c.cloud.dicomweb_url, c.cloud.allow_plain_http); !s) {
    return s;
  }
  // Links are parsed by core::ParseLinks at run time; their source addresses are checked here
  // too so that `config check` sees what bind() would refuse later.
  if (c.cloud.links.is_object()) {
    for (const auto& [name, link] : c.cloud.links.items()) {
      if (!link.is_object() || !link.contains("source_address") || !link["source_address"].is_string()) continue;
      const std::string address = link["source_address"].get<std::string>();
      if (address.empty()) continue;
      unsigned char buffer[sizeof(in6_addr)];
      if (inet_pton(AF_INET, address.c_str(), buffer) != 1 && inet_pton(AF_INET6, address.c_str(), buffer) != 1) {
        return loader.Fail("/cloud/links/" + name + "/source_address",
                           "expected an IPv4 or IPv6 address of this machine (like 192.0.2.10 or 2001:db8::10), found " +
                               schema::Describe(link["source_address"], false));
      }
    }
  }
  if (c.results.enabled && c.cloud.dicomweb_url.empty()) {
    return loader.Fail("/cloud/dicomweb_url",
                       "required when /results/enabled is true (set the DICOMweb root, or set /results/enabled to false)");
  }
  // The metrics endpoint answers anyone who can reach it: loopback only, unless asked for.
  if (c.metrics.enabled && !c.metrics.allow_non_loopback && !IsLoopbackAddress(c.metrics.address)) {
    return loader.Fail("/metrics/address",
                       "\"" + c.metrics.address + "\" is not a loopback address, and the metrics endpoint has no "
                       "authentication; use 127.0.0.1 (and a proxy or SSH tunnel for remote reading), or set "
                       "/metrics/allow_non_loopback to true behind a firewall");
  }
  if (auto s = CheckUi(loader, c.ui); !s) return s;
  // A worklist without a server to ask would leave every scan without a patient.
  if (c.worklist.enabled && c.worklist.host.empty()) {
    return loader.Fail("/worklist/host",
                       "required when /worklist/enabled is true (the RIS worklist server's host name or address)");
  }
  if (c.worklist.enabled && c.worklist.called_ae.empty()) {
    return loader.Fail("/worklist/called_ae",
                       "required when /worklist/enabled is true (the RIS worklist server's AE title)");
  }
  if (c.results.poll_max_interval_ms < c.results.poll_interval_ms) {
    return loader.Fail("/results/poll_max_interval_ms",
                       "expected at least /results/poll_interval_ms (" + std::to_string(c.results.poll_interval_ms) +
                           "), found " + std::to_string(c.results.poll_max_interval_ms));
  }
  return Ok();
}

// 1-based line and column of the byte at 0-based `offset`.
std::pair<std::size_t, std::size_t> LineColumn(const std::string& text, std::size_t offset) {
  offset = std::min(offset, text.size());
  std::size_t line = 1;
  std::size_t line_start = 0;
  for (std::size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, offset - line_start + 1};
}

// The parser's reason without its own position prefix and without the echoed token, which
// could be part of a patient's name.
std::string ParseReason(const std::string& what) {
  std::string reason = what;
  if (auto at = reason.find("parse error"); at != std::string::npos) {
    if (auto colon = reason.find(": ", at); colon != std::string::npos) reason = reason.substr(colon + 2);
  }
  if (auto last = reason.find("; last read: "); last != std::string::npos) {
    const auto quote_end = reason.find("'", last + 14);
    reason.erase(last, quote_end == std::string::npos ? std::string::npos : quote_end + 1 - last);
  }
  return reason;
}

Expected<AgentConfig> Parse(const std::string& text, const fs::path& source) {
  const std::string name = source.string();
  json document;
  try {
    document = json::parse(text);
  } catch (const json::parse_error& e) {
    // nlohmann reports the 1-based index of the last byte it read.
    const auto [line, column] = LineColumn(text, e.byte == 0 ? 0 : e.byte - 1);
    return MakeError(ErrorKind::kInvalidInput, name + ":" + std::to_string(line) + ":" + std::to_string(column) +
                                                   ": invalid JSON: " + ParseReason(e.what()));
  }
  if (!document.is_object()) {
    return MakeError(ErrorKind::kInvalidInput,
                     name + ": expected a JSON object at the top level, found " + schema::Describe(document, false));
  }

  std::error_code ec;
  fs::path base_dir = fs::absolute(source, ec).parent_path();
  if (ec) base_dir = source.parent_path();

  AgentConfig config;
  config.source_file = source;
  Loader loader(name, base_dir);
  if (auto s = loader.Walk(document, "", config); !s) return MakeError(s.error());
  if (auto s = loader.CheckRequired(); !s) return MakeError(s.error());
  if (auto s = CrossChecks(loader, config); !s) return MakeError(s.error());
  return config;
}

std::string MarkdownCell(std::string text) {
  std::string out;
  for (char ch : text) {
    if (ch == '|') out += "\\|";
    else if (ch == '\n') out += ' ';
    else out += ch;
  }
  return out;
}

std::string TypeCell(const Entry& e) {
  switch (e.type) {
    case Type::kObject:
      return "object";
    case Type::kBool:
      return "boolean";
    case Type::kInteger:
      return "integer, " + std::to_string(e.min) + " to " + std::to_string(e.max);
    case Type::kBytes:
      return "byte size, " + schema::FormatBytes(e.min) + " to " + schema::FormatBytes(e.max);
    case Type::kNumber: {
      std::string range = schema::Expectation(e);
      return "number, " + range.substr(std::string_view("a number ").size());
    }
    case Type::kString:
      return e.string_rule.empty() ? "string" : "string: " + std::string(e.string_rule);
    case Type::kEnum:
      return "string: " + schema::Expectation(e);
    case Type::kPath:
      return "path";
    case Type::kSection:
      return "section";
  }
  return "";
}

std::string DefaultCell(const Entry& e, const AgentConfig& defaults) {
  if (e.required) return "required";
  const json v = e.get(defaults);
  if (e.type == Type::kBytes) return "`" + schema::FormatBytes(v.get<std::uint64_t>()) + "`";
  if (e.type == Type::kPath && v.get<std::string>().empty()) return "(none)";
  return "`" + v.dump() + "`";
}

}  // namespace

Expected<AgentConfig> ParseConfig(const std::string& text, const fs::path& source_for_messages) {
  try {
    return Parse(text, source_for_messages);
  } catch (const std::exception& e) {
    // Only allocation failures can get here; keep them inside the module boundary.
    return MakeError(ErrorKind::kInternal, source_for_messages.string() + ": loading failed: " + e.what());
  }
}

Expected<AgentConfig> LoadConfig(const fs::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    return MakeError(ErrorKind::kIo, name + ": cannot read the configuration: it is a directory, not a file");
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) {
    const int err = errno;
    return MakeError(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIo,
                     name + ": cannot read the configuration: " + std::generic_category().message(err));
  }
  std::string text;
  char buffer[8192];
  while (true) {
    const std::size_t n = std::fread(buffer, 1, sizeof buffer, file.get());
    text.append(buffer, n);
    if (text.size() > kMaxConfigBytes) {
      return MakeError(ErrorKind::kInvalidInput,
                       name + ": larger than 1 MiB; is this really the agent's configuration file?");
    }
    if (n < sizeof buffer) break;
  }
  if (std::ferror(file.get()) != 0) {
    return MakeError(ErrorKind::kIo, name + ": cannot read the configuration: read error");
  }
  return ParseConfig(text, path);
}

std::vector<FileFinding> CheckFiles(const AgentConfig& c) {
  static const fs::path kNoFile;
  struct Named {
    const char* key;
    const fs::path* path;
    bool secret;
  };
  const Named files[] = {
      {"/cloud/tls/ca_file", &c.cloud.tls.ca_file, false},
      {"/cloud/tls/client_cert_file", &c.cloud.tls.client_cert_file, false},
      {"/cloud/tls/client_key_file", &c.cloud.tls.client_key_file, true},
      {"/cloud/password_file", &c.cloud.password_file, true},
      // The operator's page's files, when it runs (a missing password file: `ctagent ui-password`).
      {"/ui/tls/cert_file", c.ui.enabled ? &c.ui.tls.cert_file : &kNoFile, false},
      {"/ui/tls/key_file", c.ui.enabled ? &c.ui.tls.key_file : &kNoFile, true},
      {"/ui/tls/client_ca_file", c.ui.enabled ? &c.ui.tls.client_ca_file : &kNoFile, false},
      {"/ui/password_file", c.ui.enabled ? &c.ui.password_file : &kNoFile, true},
  };
  const std::string source = c.source_file.string();
  std::vector<FileFinding> out;
  for (const Named& f : files) {
    if (f.path->empty()) continue;
    const std::string prefix = source + ": " + f.key + ": " + f.path->string();
    // open() as this user, not stat(): permissions, ACLs and missing directories all show.
    const int fd = ::open(f.path->c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
      const int err = errno;
      out.push_back({false, prefix + " cannot be read: " + std::generic_category().message(err) +
                                " (the agent needs it; check the path and that this user may read it)"});
      continue;
    }
    struct stat st {};
    const bool stat_ok = ::fstat(fd, &st) == 0;
    ::close(fd);
    if (!stat_ok || !S_ISREG(st.st_mode)) {
      out.push_back({false, prefix + " is not a regular file"});
      continue;
    }
    if (f.secret && (st.st_mode & S_IROTH) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
      out.push_back({true, prefix + " is a secret but readable by every user (mode " + mode + "); run chmod o-r " +
                               f.path->string() + " (group-readable is fine for the service's group)"});
    }
  }
  return out;
}

Expected<AgentConfig> CheckConfig(const fs::path& path) {
  auto config = LoadConfig(path);
  if (!config) return config;
  std::string problems;
  for (const FileFinding& f : CheckFiles(*config)) problems += (problems.empty() ? "" : "\n") + f.message;
  if (!problems.empty()) return MakeError(ErrorKind::kInvalidInput, problems);
  return config;
}

std::string SchemaMarkdown() {
  const AgentConfig defaults;
  std::string out;
  auto table = [&out, &defaults](std::string_view section, const std::string& title, std::string_view description) {
    if (!out.empty()) out += "\n";
    out += "### " + title + "\n\n";
    if (!description.empty()) out += std::string(description) + "\n\n";
    out += "| Key | Type | Default | Description |\n|---|---|---|---|\n";
    for (const Entry& e : schema::Entries()) {
      if (e.type == Type::kSection || Parent(e.path) != section) continue;
      out += "| `" + std::string(e.path) + "` | " + MarkdownCell(TypeCell(e)) + " | " +
             MarkdownCell(DefaultCell(e, defaults)) + " | " + MarkdownCell(std::string(e.description)) + " |\n";
    }
  };
  table("", "Top level", "");
  for (const Entry& e : schema::Entries()) {
    // Appended, not `"`" + std::string(...)`: GCC 12's -Wrestrict misfires on that at -O3.
    if (e.type == Type::kSection) table(e.path, std::string("`").append(e.path).append("`"), e.description);
  }
  return out;
}

}  // namespace ctagent::config
