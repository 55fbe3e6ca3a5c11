// The configuration loader: examples, defaults, path resolution, and one test per kind of
// error, each checking that the message names the file, the JSON path, what was expected
// and what was found.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include "base/url.hpp"
#include "config/config.hpp"
#include "config/schema.hpp"
#include "tests/support/process.hpp"

using ctagent::ErrorKind;
using namespace ctagent::config;
namespace fs = std::filesystem;

namespace {

const fs::path kExamples = fs::path(CTAGENT_SOURCE_DIR) / "config" / "examples";

nlohmann::json Minimal() {
  return nlohmann::json::parse(R"({
    "spool": {"directory": "/var/spool/ctagent"},
    "cloud": {"upload_url": "https://imaging.example.org/files/",
              "dicomweb_url": "https://imaging.example.org/dicom-web"}
  })");
}

// Sets `value` at JSON pointer `pointer` in a copy of the minimal config.
nlohmann::json With(const std::string& pointer, const nlohmann::json& value, nlohmann::json base = Minimal()) {
  base[nlohmann::json::json_pointer(pointer)] = value;
  return base;
}

std::string ErrorOf(const nlohmann::json& document) {
  auto c = ParseConfig(document.dump(2), "site/agent.json");
  REQUIRE_FALSE(c);
  CHECK(c.error().kind() == ErrorKind::kInvalidInput);
  return c.error().message();
}

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// Every leaf JSON pointer of a document.
void Leaves(const nlohmann::json& j, const std::string& prefix, std::set<std::string>& out) {
  for (const auto& [key, value] : j.items()) {
    const std::string path = prefix + "/" + key;
    // Free-form objects (driver options, links keyed by name) are one key of the schema.
    const auto* entry = schema::Find(path);
    const bool pass_through = entry != nullptr && entry->type == schema::Type::kObject;
    if (value.is_object() && !pass_through) {
      Leaves(value, path, out);
    } else {
      out.insert(path);
    }
  }
}

}  // namespace

TEST_CASE("config: minimal example loads and takes every default from the structs") {
  auto c = LoadConfig(kExamples / "minimal.json");
  REQUIRE(c);
  const AgentConfig defaults;
  CHECK(c->source_file == kExamples / "minimal.json");
  CHECK(c->terminal_id == defaults.terminal_id);
  CHECK(c->log_level == "info");
  CHECK(c->driver.name == "sim");
  CHECK(c->driver.options == nlohmann::json::object());
  CHECK(ctagent::drivers::ToJson(c->protocol) == ctagent::drivers::ToJson(defaults.protocol));
  CHECK(c->codec.zstd_level == 3);
  CHECK(c->codec.filter == "predict");
  CHECK(c->codec.coder == "context_rans");
  CHECK(c->codec.views_per_chunk == 64);
  CHECK(c->codec.queue_bytes == (4ull << 20));  // docs/configuration.md, "Memory"
  CHECK(c->spool.directory == "/var/spool/ctagent");
  CHECK(c->spool.max_bytes == (64ull << 30));
  CHECK(c->cloud.parallel_uploads == 8);
  CHECK(c->cloud.patch_bytes == (4ull << 20));
  CHECK(c->cloud.floor_rate_bits_per_s == 1'000'000);
  CHECK(c->cloud.upload_origins_allowed.empty());
  CHECK(c->cloud.tls.ca_file.empty());
  CHECK_FALSE(c->cloud.allow_plain_http);
  CHECK(c->results.enabled);
  CHECK(c->results.max_instance_bytes == (64ull << 20));
  CHECK(c->console.port == 11112);
  CHECK(c->console.called_ae == "CONSOLE");
  CHECK(c->study.study_uid.empty());
}

TEST_CASE("config: full example sets every key of the schema and resolves relative paths") {
  const fs::path file = kExamples / "full.json";
  auto c = LoadConfig(file);
  REQUIRE(c);
  std::set<std::string> in_example;
  Leaves(nlohmann::json::parse(ctagent::test::ReadText(file)), "", in_example);
  for (const schema::Entry& e : schema::Entries()) {
    if (e.type == schema::Type::kSection) continue;
    INFO(e.path);
    CHECK(in_example.count(std::string(e.path)) == 1);
  }
  const fs::path dir = fs::absolute(kExamples).lexically_normal();
  CHECK(c->terminal_id == "ct-terminal-07");
  CHECK(c->driver.options == nlohmann::json{{"model", "sim-chest-parallel"}});
  CHECK(c->protocol.rotations == 2);
  CHECK(c->protocol.table_speed_mm_per_rotation == 20.0);
  CHECK(c->protocol.dose_fraction == 0.25);
  CHECK(c->study.study_description == "CT CHEST LOW DOSE");
  CHECK(c->spool.directory == dir / "spool");
  CHECK(c->spool.min_free_bytes == (1ull << 30));
  CHECK(c->cloud.password_file == dir / "secrets" / "dicomweb-password");
  CHECK(c->cloud.tls.ca_file == dir / "pki" / "ca.pem");
  CHECK(c->cloud.tls.client_cert_file == dir / "pki" / "client.pem");
  CHECK(c->cloud.tls.client_key_file == dir / "pki" / "client.key");
  CHECK(c->cloud.patch_bytes == (4ull << 20));
  CHECK(c->cloud.floor_rate_bits_per_s == 2'000'000);
  CHECK(c->cloud.upload_origins_allowed == "https://uploads-2.imaging-center.example:8443");
  CHECK(c->privacy.key_file == dir / "secrets" / "site.key");
  CHECK(SiteKeyPath(*c) == dir / "secrets" / "site.key");
  CHECK(c->privacy.age_band);
}

TEST_CASE("config: relative paths resolve against the config file's directory, absolute ones stay") {
  ctagent::test::TempDir tmp("config-paths");
  fs::create_directories(tmp.path() / "etc");
  auto doc = With("/spool/directory", "../var/spool");
  doc["cloud"]["tls"] = {{"ca_file", "/etc/ssl/ca.pem"}};
  doc["cloud"]["password_file"] = "pw.txt";
  WriteText(tmp.path() / "etc" / "agent.json", doc.dump());
  auto c = LoadConfig(tmp.path() / "etc" / "agent.json");
  REQUIRE(c);
  const fs::path root = fs::absolute(tmp.path()).lexically_normal();
  CHECK(c->spool.directory == root / "var" / "spool");
  CHECK(c->cloud.password_file == root / "etc" / "pw.txt");
  CHECK(c->cloud.tls.ca_file == "/etc/ssl/ca.pem");
}

TEST_CASE("config: byte sizes take integers and strings with binary units") {
  auto bytes = [](const nlohmann::json& v) {
    auto c = ParseConfig(With("/spool/max_bytes", v).dump(), "b.json");
    REQUIRE(c);
    return c->spool.max_bytes;
  };
  CHECK(bytes(1048576) == 1048576);
  CHECK(bytes("4 MiB") == (4ull << 20));
  CHECK(bytes("64GiB") == (64ull << 30));
  CHECK(bytes("2048 KiB") == (2ull << 20));
  CHECK(bytes("1 TiB") == (1ull << 40));
  CHECK(bytes("3000000 B") == 3000000);
  auto ok = ParseConfig(With("/cloud/patch_bytes", "512 KiB").dump(), "b.json");
  REQUIRE(ok);
  CHECK(ok->cloud.patch_bytes == 512u * 1024);
}

TEST_CASE("config: driver options pass through untouched") {
  const nlohmann::json options = {{"model", "x"}, {"anything", {1, 2, 3}}};
  auto c = ParseConfig(With("/driver/options", options).dump(), "d.json");
  REQUIRE(c);
  CHECK(c->driver.options == options);
  CHECK(ErrorOf(With("/driver/options", "model=x")) ==
        "site/agent.json: /driver/options: expected an object, found string \"model=x\"");
}

TEST_CASE("config: a missing file names the file and the OS reason") {
  auto c = LoadConfig("/nonexistent-dir/agent.json");
  REQUIRE_FALSE(c);
  CHECK(c.error().kind() == ErrorKind::kNotFound);
  CHECK(c.error().message() == "/nonexistent-dir/agent.json: cannot read the configuration: No such file or directory");

  ctagent::test::TempDir tmp("config-dir");
  auto d = LoadConfig(tmp.path());
  REQUIRE_FALSE(d);
  CHECK(d.error().message().find("it is a directory") != std::string::npos);

  if (geteuid() != 0) {  // root reads anything
    WriteText(tmp.path() / "locked.json", "{}");
    fs::permissions(tmp.path() / "locked.json", fs::perms::none);
    auto locked = LoadConfig(tmp.path() / "locked.json");
    REQUIRE_FALSE(locked);
    CHECK(locked.error().message().find("locked.json: cannot read the configuration: Permission denied") !=
          std::string::npos);
  }
}

TEST_CASE("config: invalid JSON names file:line:column and the parser's reason") {
  ctagent::test::TempDir tmp("config-json");
  WriteText(tmp.path() / "bad.json", "{\n  \"terminal_id\": \"a\",\n  \"log_level\": }\n");
  auto c = LoadConfig(tmp.path() / "bad.json");
  REQUIRE_FALSE(c);
  const std::string m = c.error().message();
  INFO(m);
  CHECK(m.rfind((tmp.path() / "bad.json").string() + ":3:16: invalid JSON: syntax error while parsing value", 0) == 0);
  CHECK(m.find("unexpected '}'") != std::string::npos);

  // Error on the first line, and truncated input.
  auto first = ParseConfig("{\"a\" 1}", "x.json");
  REQUIRE_FALSE(first);
  CHECK(first.error().message().rfind("x.json:1:6: invalid JSON: ", 0) == 0);
  auto truncated = ParseConfig("{\n\"spool\": {", "x.json");
  REQUIRE_FALSE(truncated);
  CHECK(truncated.error().message().rfind("x.json:2:11: invalid JSON: ", 0) == 0);

  // The parser's echo of the token is dropped: it could be part of a patient's name.
  auto echoed = ParseConfig("{\"study\": {\"patient_name\": \"DOE^JANE\n\"}}", "x.json");
  REQUIRE_FALSE(echoed);
  CHECK(echoed.error().message().find("DOE") == std::string::npos);

  CHECK(ErrorOf(nlohmann::json::array()) == "site/agent.json: expected a JSON object at the top level, found an array");
}

TEST_CASE("config: a wrong type names the path, the expectation and what was found") {
  CHECK(ErrorOf(With("/cloud/parallel_uploads", "four")) ==
        "site/agent.json: /cloud/parallel_uploads: expected an integer from 1 to 64, found string \"four\"");
  CHECK(ErrorOf(With("/results/enabled", "yes")) ==
        "site/agent.json: /results/enabled: expected true or false, found string \"yes\"");
  CHECK(ErrorOf(With("/scan/channel_pitch_mm", "1.6")) ==
        "site/agent.json: /scan/channel_pitch_mm: expected a number > 0 and <= 100, found string \"1.6\"");
  CHECK(ErrorOf(With("/codec", 5)) == "site/agent.json: /codec: expected an object, found 5");
  CHECK(ErrorOf(With("/spool/directory", nullptr)) ==
        "site/agent.json: /spool/directory: expected a non-empty path, found null");
  CHECK(ErrorOf(With("/codec/threads", 2.5)) ==
        "site/agent.json: /codec/threads: expected an integer from 1 to 16, found 2.5");
}

TEST_CASE("config: out-of-range values name the range and the value") {
  CHECK(ErrorOf(With("/cloud/parallel_uploads", 65)) ==
        "site/agent.json: /cloud/parallel_uploads: expected an integer from 1 to 64, found 65");
  CHECK(ErrorOf(With("/codec/zstd_level", 0)) ==
        "site/agent.json: /codec/zstd_level: expected an integer from 1 to 19, found 0");
  CHECK(ErrorOf(With("/codec/views_per_chunk", 5000)) ==
        "site/agent.json: /codec/views_per_chunk: expected an integer from 1 to 4096, found 5000");
  CHECK(ErrorOf(With("/console/port", -1)) ==
        "site/agent.json: /console/port: expected an integer from 1 to 65535, found -1");
  CHECK(ErrorOf(With("/scan/dose_fraction", 0)) ==
        "site/agent.json: /scan/dose_fraction: expected a number > 0 and <= 1, found 0");
  CHECK(ErrorOf(With("/scan/dose_fraction", 1.5)) ==
        "site/agent.json: /scan/dose_fraction: expected a number > 0 and <= 1, found 1.5");
  CHECK(ErrorOf(With("/cloud/patch_bytes", "32 KiB")) ==
        "site/agent.json: /cloud/patch_bytes: expected a byte size from 64 KiB to 256 MiB (an integer or a "
        "string like \"4 MiB\"), found string \"32 KiB\"");
  CHECK(ErrorOf(With("/cloud/patch_bytes", "4 MB")).find("found string \"4 MB\"") != std::string::npos);
  CHECK(ErrorOf(With("/log_level", "verbose")) ==
        "site/agent.json: /log_level: expected one of \"debug\", \"info\", \"warn\", \"error\", found string "
        "\"verbose\"");
  CHECK(ErrorOf(With("/codec/filter", "bitshuffle")) ==
        "site/agent.json: /codec/filter: expected one of \"none\", \"shuffle\", \"delta_channel\", \"delta_view\", "
        "\"med\", \"predict\", found string \"bitshuffle\"");
  CHECK(ErrorOf(With("/scan/sample_type", "int8")).find("/scan/sample_type: expected one of \"uint16\", \"float32\"") !=
        std::string::npos);
  CHECK(ErrorOf(With("/console/calling_ae", "CTAGENT-TERMINAL-7")) ==
        "site/agent.json: /console/calling_ae: expected an AE title of 1 to 16 characters without backslash, "
        "found string \"CTAGENT-TERMINAL-7\"");
  CHECK(ErrorOf(With("/console/called_ae", "A\\B")).find("/console/called_ae: expected an AE title") !=
        std::string::npos);
  CHECK(ErrorOf(With("/console/called_ae", "")).find("/console/called_ae: expected an AE title") != std::string::npos);
  CHECK(ErrorOf(With("/study/study_uid", "1.2.abc")) ==
        "site/agent.json: /study/study_uid: expected a valid DICOM UID (digits and dots, at most 64 characters) "
        "or \"\", found string \"1.2.abc\"");
  CHECK(ErrorOf(With("/terminal_id", "ct terminal")).find("/terminal_id: expected 1 to 64 characters") !=
        std::string::npos);
}

TEST_CASE("config: patient identity is never echoed in messages") {
  const std::string name = "VERYLONGFAMILYNAME^GIVEN" + std::string(50, 'X');
  const std::string m = ErrorOf(With("/study/patient_name", name));
  CHECK(m == "site/agent.json: /study/patient_name: expected at most 64 characters without backslash, found a "
             "string of 74 characters");
  CHECK(m.find("VERYLONG") == std::string::npos);
  CHECK(ErrorOf(With("/study/patient_id", 12345)).find("12345") == std::string::npos);
}

TEST_CASE("config: an unknown key is named, with the closest known key suggested") {
  auto doc = Minimal();
  doc["cloud"]["paralel_uploads"] = 4;
  CHECK(ErrorOf(doc) == "site/agent.json: /cloud/paralel_uploads: unknown key; did you mean \"parallel_uploads\"?");
  CHECK(ErrorOf(With("/spoool", nlohmann::json::object())) ==
        "site/agent.json: /spoool: unknown key; did you mean \"spool\"?");
  CHECK(ErrorOf(With("/cloud/tls/ca_fle", "x")) == "site/agent.json: /cloud/tls/ca_fle: unknown key; did you mean \"ca_file\"?");
  CHECK(ErrorOf(With("/codec/banana", 1)) ==
        "site/agent.json: /codec/banana: unknown key; known keys here: zstd_level, filter, coder, views_per_chunk, threads, queue_bytes, buffer_bytes");
}

TEST_CASE("config: a missing required key is named with what it expects") {
  auto no_spool = Minimal();
  no_spool.erase("spool");
  CHECK(ErrorOf(no_spool) == "site/agent.json: /spool/directory: required key missing (expected a non-empty path)");
  auto no_upload = Minimal();
  no_upload["cloud"].erase("upload_url");
  CHECK(ErrorOf(no_upload) == "site/agent.json: /cloud/upload_url: required key missing (expected an https:// URL)");
  CHECK(ErrorOf(With("/spool/directory", "")) ==
        "site/agent.json: /spool/directory: expected a non-empty path, found string \"\"");
}

TEST_CASE("config: cross-field rules") {
  // mTLS needs both halves.
  CHECK(ErrorOf(With("/cloud/tls/client_cert_file", "client.pem")) ==
        "site/agent.json: /cloud/tls/client_cert_file: set without /cloud/tls/client_key_file; mTLS needs both the "
        "certificate and its key");
  CHECK(ErrorOf(With("/cloud/tls/client_key_file", "client.key")).find("/cloud/tls/client_key_file: set without "
                                                                       "/cloud/tls/client_cert_file") !=
        std::string::npos);

  // Plain HTTP only with the development flag.
  CHECK(ErrorOf(With("/cloud/upload_url", "http://127.0.0.1:1080/files/")) ==
        "site/agent.json: /cloud/upload_url: plain http:// (found string \"http://127.0.0.1:1080/files/\") needs "
        "/cloud/allow_plain_http set to true, for development only; use https://");
  CHECK(ErrorOf(With("/cloud/dicomweb_url", "http://127.0.0.1:8042/dicom-web")).find("/cloud/dicomweb_url: plain http://") !=
        std::string::npos);
  auto dev = With("/cloud/upload_url", "http://127.0.0.1:1080/files/");
  dev["cloud"]["allow_plain_http"] = true;
  CHECK(ParseConfig(dev.dump(), "dev.json"));
  CHECK(ErrorOf(With("/cloud/upload_url", "ftp://x/")).find("/cloud/upload_url: expected an https:// URL, found string") !=
        std::string::npos);

  // Results need a DICOMweb root, unless disabled.
  auto no_dicomweb = Minimal();
  no_dicomweb["cloud"].erase("dicomweb_url");
  CHECK(ErrorOf(no_dicomweb) ==
        "site/agent.json: /cloud/dicomweb_url: required when /results/enabled is true (set the DICOMweb root, or set "
        "/results/enabled to false)");
  no_dicomweb["results"] = {{"enabled", false}};
  CHECK(ParseConfig(no_dicomweb.dump(), "r.json"));

  // Backoff must be able to grow.
  auto polls = With("/results/poll_interval_ms", 5000);
  polls["results"]["poll_max_interval_ms"] = 1000;
  CHECK(ErrorOf(polls) ==
        "site/agent.json: /results/poll_max_interval_ms: expected at least /results/poll_interval_ms (5000), found 1000");
}

TEST_CASE("config: the schema renders as Markdown and docs/configuration.md carries it") {
  const std::string md = SchemaMarkdown();
  for (const schema::Entry& e : schema::Entries()) {
    INFO(e.path);
    const std::string quoted = std::string("`").append(e.path).append("`");  // GCC 12 -Wrestrict at -O3
    CHECK(md.find(quoted) != std::string::npos);
  }
  CHECK(md.find("| `/cloud/parallel_uploads` | integer, 1 to 64 | `8` |") !=
        std::string::npos);
  CHECK(md.find("| `/spool/directory` | path | required |") != std::string::npos);
  CHECK(md.find("| `/cloud/patch_bytes` | byte size, 64 KiB to 256 MiB | `4 MiB` |") != std::string::npos);
  const std::string doc = ctagent::test::ReadText(fs::path(CTAGENT_SOURCE_DIR) / "docs" / "configuration.md");
  CHECK(doc.find(md) != std::string::npos);  // regenerate the doc when the schema changes
}

// ---- issue 18, item 4: what `config check` can see must not wait for run time ---------------

TEST_CASE("config: URLs with user:password@ are refused and the password is never printed") {
  for (const char* key : {"/cloud/upload_url", "/cloud/dicomweb_url"}) {
    INFO(key);
    const std::string message = ErrorOf(With(key, "https://agent:s3cretPW@imaging.example.org/files/"));
    CHECK(message.find(std::string("site/agent.json: ") + key + ": expected an https:// URL") == 0);
    CHECK(message.find("s3cretPW") == std::string::npos);
    CHECK(message.find("agent:") == std::string::npos);
    CHECK(message.find("https://***@imaging.example.org/files/") != std::string::npos);
    CHECK(message.find("user name or password") != std::string::npos);
  }
  // A bare '@' in the authority (no password) is still userinfo; one in the path is not.
  CHECK(ErrorOf(With("/cloud/upload_url", "https://@imaging.example.org/files/")).find("user name or password") !=
        std::string::npos);
  CHECK(ParseConfig(With("/cloud/upload_url", "https://imaging.example.org/files/a@b").dump(), "u.json"));
}

TEST_CASE("config: URLs need a host, a port from 1 to 65535 and no spaces or control characters") {
  auto problem = [](const std::string& url) { return ErrorOf(With("/cloud/upload_url", url)); };
  CHECK(problem("https:///files/").find("has no host") != std::string::npos);
  CHECK(problem("https://:8443/files/").find("has no host") != std::string::npos);
  CHECK(problem("https://imaging.example.org:99999/files/").find("the port 99999 is not a number from 1 to 65535") !=
        std::string::npos);
  CHECK(problem("https://imaging.example.org:0/files/").find("the port 0 is not") != std::string::npos);
  CHECK(problem("https://imaging.example.org:/files/").find("expected a port") != std::string::npos);
  CHECK(problem("https://imaging.example.org:84x/files/").find("the port 84x is not") != std::string::npos);
  CHECK(problem("https://[::1/files/").find("closing ']'") != std::string::npos);
  CHECK(problem("https://imaging.example.org/my files/").find("cannot contain spaces") != std::string::npos);
  const std::string crlf = problem("https://imaging.example.org/files/\r\nX-Injected: 1");
  CHECK(crlf.find("control characters") != std::string::npos);
  CHECK(crlf.find('\n') == std::string::npos);  // one line in `config check`'s output
  CHECK(crlf.find('\r') == std::string::npos);
  CHECK(crlf.find("found string \"https://imaging.example.org/files/\\x0d\\x0aX-Injected: 1\"") != std::string::npos);
  CHECK(problem("https://imaging.example.org/\tfiles/").find("control characters") != std::string::npos);
  CHECK(ErrorOf(With("/cloud/dicomweb_url", "https://imaging.example.org:65536/dicom-web"))
            .find("/cloud/dicomweb_url: expected an https:// URL or \"\"") != std::string::npos);
  // The scheme rule is unchanged.
  CHECK(problem("ftp://imaging.example.org/files/").find("expected an https:// URL") != std::string::npos);
  // Still accepted: explicit ports at both ends of the range, IPv6 literals, query strings.
  for (const char* url : {"https://imaging.example.org:1/files/", "https://imaging.example.org:65535/files/",
                          "https://[2001:db8::1]:8443/files/", "https://[::1]/files/", "https://10.0.0.5/files/?a=b"}) {
    INFO(url);
    CHECK(ParseConfig(With("/cloud/upload_url", url).dump(), "u.json"));
  }
}

TEST_CASE("config: RedactUrl hides userinfo and control characters") {
  CHECK(ctagent::RedactUrl("https://u:p@h:1/x@y") == "https://***@h:1/x@y");
  CHECK(ctagent::RedactUrl("https://h/x") == "https://h/x");
  CHECK(ctagent::RedactUrl("https://h/\r\n") == "https://h/\\x0d\\x0a");
  CHECK(ctagent::RedactUrl("not a url") == "not a url");
}

TEST_CASE("config: link source addresses must be IPv4 or IPv6 literals") {
  auto links = [](const std::string& address) {
    return With("/cloud/links", {{"wired", {{"source_address", address}, {"priority", 1}}}});
  };
  CHECK(ErrorOf(links("999.1.1.1")) ==
        "site/agent.json: /cloud/links/wired/source_address: expected an IPv4 or IPv6 address of this machine (like "
        "192.0.2.10 or 2001:db8::10), found string \"999.1.1.1\"");
  CHECK(ErrorOf(links("eth0")).find("/cloud/links/wired/source_address") != std::string::npos);
  CHECK(ErrorOf(links("192.0.2.10 ")).find("/cloud/links/wired/source_address") != std::string::npos);
  CHECK(ParseConfig(links("192.0.2.10").dump(), "l.json"));
  CHECK(ParseConfig(links("2001:db8::10").dump(), "l.json"));
}

TEST_CASE("config: the largest byte size named in a message is one the parser accepts") {
  auto max_bytes = [](const nlohmann::json& v) { return ParseConfig(With("/spool/max_bytes", v).dump(), "b.json"); };
  // The schema's maximum is 1 PiB and the message says so; "1 PiB" itself must then parse.
  const std::string message = ErrorOf(With("/spool/max_bytes", "2 PiB"));
  CHECK(message.find("from 1 MiB to 1 PiB") != std::string::npos);
  for (const nlohmann::json& at_limit : {nlohmann::json("1 PiB"), nlohmann::json("1024 TiB"), nlohmann::json(1ull << 50)}) {
    INFO(at_limit.dump());
    auto c = max_bytes(at_limit);
    REQUIRE(c);
    CHECK(c->spool.max_bytes == (1ull << 50));
  }
  CHECK_FALSE(max_bytes((1ull << 50) + 1));
  CHECK_FALSE(max_bytes("1025 TiB"));
  CHECK_FALSE(max_bytes("16384 PiB"));  // overflows 64 bits
  // Every byte-size maximum in the schema round-trips through its own message text.
  for (const schema::Entry& e : schema::Entries()) {
    if (e.type != schema::Type::kBytes) continue;
    INFO(e.path);
    CHECK(schema::ParseByteSize(schema::FormatBytes(e.max)) == e.max);
    CHECK(schema::ParseByteSize(schema::FormatBytes(e.min)) == e.min);
  }
}

TEST_CASE("config: files named by the config must exist and be readable, secrets not by others") {
  ctagent::test::TempDir tmp("config-files");
  const fs::path dir = fs::absolute(tmp.path());
  auto doc = Minimal();
  doc["cloud"]["tls"] = {{"ca_file", "pki/ca.pem"}, {"client_cert_file", "pki/client.pem"},
                         {"client_key_file", "pki/client.key"}};
  doc["cloud"]["password_file"] = "secrets/password";
  const fs::path file = dir / "agent.json";
  WriteText(file, doc.dump());

  // Nothing exists yet: LoadConfig (what `run` uses) still loads; the check names each file.
  REQUIRE(LoadConfig(file));
  auto missing = CheckConfig(file);
  REQUIRE_FALSE(missing);
  const std::string m = missing.error().message();
  CHECK(m.find(file.string() + ": /cloud/tls/ca_file: " + (dir / "pki" / "ca.pem").string() +
               " cannot be read: No such file or directory") != std::string::npos);
  CHECK(m.find("/cloud/tls/client_cert_file: ") != std::string::npos);
  CHECK(m.find("/cloud/tls/client_key_file: ") != std::string::npos);
  CHECK(m.find("/cloud/password_file: " + (dir / "secrets" / "password").string() + " cannot be read") !=
        std::string::npos);

  fs::create_directories(dir / "pki");
  fs::create_directories(dir / "secrets");
  for (const char* name : {"pki/ca.pem", "pki/client.pem", "pki/client.key", "secrets/password"}) {
    WriteText(dir / name, "x\n");
    fs::permissions(dir / name, fs::perms(0644));
  }
  // World-readable secrets: refused by config check, named, with the fix.
  auto open_secrets = CheckConfig(file);
  REQUIRE_FALSE(open_secrets);
  const std::string s = open_secrets.error().message();
  CHECK(s.find(file.string() + ": /cloud/password_file: " + (dir / "secrets" / "password").string() +
               " is a secret but readable by every user (mode 0644); run chmod o-r " +
               (dir / "secrets" / "password").string()) != std::string::npos);
  CHECK(s.find("/cloud/tls/client_key_file: ") != std::string::npos);
  CHECK(s.find("/cloud/tls/ca_file") == std::string::npos);  // certificates are public
  auto findings = CheckFiles(*LoadConfig(file));
  REQUIRE(findings.size() == 2);
  CHECK(findings[0].readable_by_others);
  CHECK(findings[1].readable_by_others);

  // Group-readable secrets pass (the service's group).
  fs::permissions(dir / "secrets" / "password", fs::perms(0640));
  fs::permissions(dir / "pki" / "client.key", fs::perms(0600));
  CHECK(CheckConfig(file));

  // A directory is not a file.
  fs::remove(dir / "pki" / "ca.pem");
  fs::create_directories(dir / "pki" / "ca.pem");
  auto directory = CheckConfig(file);
  REQUIRE_FALSE(directory);
  CHECK(directory.error().message() ==
        file.string() + ": /cloud/tls/ca_file: " + (dir / "pki" / "ca.pem").string() + " is not a regular file");
  fs::remove(dir / "pki" / "ca.pem");
  WriteText(dir / "pki" / "ca.pem", "x\n");

  // Unreadable for this user (root reads everything, so only checked as another user).
  if (::geteuid() != 0) {
    fs::permissions(dir / "secrets" / "password", fs::perms(0200));
    auto unreadable = CheckConfig(file);
    REQUIRE_FALSE(unreadable);
    CHECK(unreadable.error().message().find("/cloud/password_file: " + (dir / "secrets" / "password").string() +
                                            " cannot be read: Permission denied") != std::string::npos);
    fs::permissions(dir / "secrets" / "password", fs::perms(0600));
  }
}

TEST_CASE("config: the shipped examples pass CheckConfig except for the files they name") {
  auto minimal = CheckConfig(kExamples / "minimal.json");
  CHECK(minimal);
  // full.json names placeholder PKI and password files relative to config/examples/.
  auto full = CheckConfig(kExamples / "full.json");
  REQUIRE_FALSE(full);
  CHECK(full.error().message().find("cannot be read: No such file or directory") != std::string::npos);
}

TEST_CASE("config: upload_origins_allowed takes origins only, and pins take sha256// digests") {
  auto origins = [](const std::string& v) {
    return static_cast<bool>(ParseConfig(With("/cloud/upload_origins_allowed", v).dump(), "o.json"));
  };
  CHECK(origins(""));
  CHECK(origins("https://uploads-2.example:8443"));
  CHECK(origins("https://a.example http://127.0.0.2:9000 https://[::1]:443"));
  CHECK_FALSE(origins("https://a.example/files/"));   // a path is not an origin
  CHECK_FALSE(origins("https://user@a.example"));     // nor userinfo
  CHECK_FALSE(origins("ftp://a.example"));
  CHECK_FALSE(origins("https://"));
  CHECK_FALSE(origins("https://a.example  https://b.example"));  // one space between entries
  auto refused = ParseConfig(With("/cloud/upload_origins_allowed", "https://a.example/x").dump(), "o.json");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("/cloud/upload_origins_allowed") != std::string::npos);

  auto pins = [](const std::string& v) {
    return static_cast<bool>(ParseConfig(With("/cloud/tls/pinned_public_key", v).dump(), "p.json"));
  };
  const std::string pin = "sha256//" + std::string(43, 'A') + "=";
  CHECK(pins(pin));
  CHECK(pins(pin + ";" + pin));
  CHECK_FALSE(pins(pin + ";"));
  CHECK_FALSE(pins("sha1//" + std::string(46, 'A')));
}

// ---- issue 13, item 4: the control socket's section ------------------------------------------

TEST_CASE("config: the control socket defaults to the spool, and takes a path and a group") {
  auto c = ParseConfig(Minimal().dump(), "site/agent.json");
  REQUIRE(c);
  CHECK(c->control.socket.empty());
  CHECK(c->control.group.empty());
  CHECK(ControlSocketPath(*c) == fs::path("/var/spool/ctagent/control.sock"));

  auto set = ParseConfig(With("/control", {{"socket", "/run/ctagent/control.sock"}, {"group", "ctagent-ops"}}).dump(),
                         "site/agent.json");
  REQUIRE(set);
  CHECK(ControlSocketPath(*set) == fs::path("/run/ctagent/control.sock"));
  CHECK(set->control.group == "ctagent-ops");

  const std::string message = ErrorOf(With("/control/group", "-rf"));
  CHECK(message.find("site/agent.json: /control/group: expected") == 0);
  CHECK(message.find("group name") != std::string::npos);
  CHECK(ErrorOf(With("/control/group", "ops staff")).find("/control/group") != std::string::npos);
  CHECK(ErrorOf(With("/control/mode", "0777")).find("/control/mode") != std::string::npos);  // unknown key
}

// ---- issue 13, item 6: the metrics endpoint, off by default and on loopback ------------------

TEST_CASE("config: metrics are off by default, on 127.0.0.1, and another address needs allow_non_loopback") {
  auto defaults = ParseConfig(Minimal().dump(), "site/agent.json");
  REQUIRE(defaults.has_value());
  CHECK_FALSE(defaults->metrics.enabled);
  CHECK(defaults->metrics.address == "127.0.0.1");
  CHECK_FALSE(defaults->metrics.allow_non_loopback);

  for (const char* loopback : {"127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"}) {
    INFO(loopback);
    auto doc = With("/metrics", {{"enabled", true}, {"address", loopback}, {"port", 9500}});
    auto c = ParseConfig(doc.dump(), "site/agent.json");
    REQUIRE(c.has_value());
    CHECK(c->metrics.port == 9500);
  }
  for (const char* remote : {"0.0.0.0", "192.0.2.10", "::", "2001:db8::10"}) {
    INFO(remote);
    auto doc = With("/metrics", {{"enabled", true}, {"address", remote}});
    const std::string message = ErrorOf(doc);
    CHECK(message.find("site/agent.json: /metrics/address: \"" + std::string(remote) + "\" is not a loopback address") == 0);
    CHECK(message.find("no authentication") != std::string::npos);
    CHECK(message.find("/metrics/allow_non_loopback") != std::string::npos);
    doc["metrics"]["allow_non_loopback"] = true;
    CHECK(ParseConfig(doc.dump(), "site/agent.json").has_value());
    // Off, the address is not a listening one: nothing to refuse.
    auto off = With("/metrics", {{"enabled", false}, {"address", remote}});
    CHECK(ParseConfig(off.dump(), "site/agent.json").has_value());
  }
  CHECK(ErrorOf(With("/metrics/address", "localhost")) ==
        "site/agent.json: /metrics/address: expected an IPv4 or IPv6 address (like 127.0.0.1 or ::1), found string "
        "\"localhost\"");
  CHECK(ErrorOf(With("/metrics/port", 0)) ==
        "site/agent.json: /metrics/port: expected an integer from 1 to 65535, found 0");
}

// ---- issue 15: the worklist section ---------------------------------------------------------

TEST_CASE("config: no worklist section keeps the study identity, and an enabled one needs host and called AE") {
  auto plain = ParseConfig(Minimal().dump(), "site/agent.json");
  REQUIRE(plain);
  CHECK_FALSE(plain->worklist.enabled);
  CHECK(SiteKeyPath(*plain) == "/var/spool/ctagent/site.key");
  CHECK_FALSE(plain->privacy.age_band);
  CHECK_FALSE(plain->privacy.sex);
  CHECK(plain->worklist.max_answers == 500);

  auto full = Minimal();
  full["worklist"] = nlohmann::json::parse(R"({"enabled": true, "host": "ris.hospital.example", "port": 4242,
      "called_ae": "RISWL", "calling_ae": "CT1", "timeout_s": 5, "max_answers": 50})");
  auto c = ParseConfig(full.dump(), "site/agent.json");
  INFO((c ? "" : c.error().message()));
  REQUIRE(c);
  CHECK(c->worklist.enabled);
  CHECK(c->worklist.host == "ris.hospital.example");
  CHECK(c->worklist.port == 4242);
  CHECK(c->worklist.called_ae == "RISWL");
  CHECK(c->worklist.calling_ae == "CT1");
  CHECK(c->worklist.timeout_s == 5);
  CHECK(c->worklist.max_answers == 50);

  CHECK(ErrorOf(With("/worklist/enabled", true)) ==
        "site/agent.json: /worklist/host: required when /worklist/enabled is true (the RIS worklist server's host "
        "name or address)");
  CHECK(ErrorOf(With("/worklist/called_ae", "", With("/worklist/host", "ris", With("/worklist/enabled", true)))) ==
        "site/agent.json: /worklist/called_ae: required when /worklist/enabled is true (the RIS worklist server's AE "
        "title)");
  CHECK(ErrorOf(With("/worklist/max_answers", 0)) ==
        "site/agent.json: /worklist/max_answers: expected an integer from 1 to 100000, found 0");
  CHECK(ErrorOf(With("/worklist/calling_ae", "A\\B")) ==
        "site/agent.json: /worklist/calling_ae: expected an AE title of 1 to 16 characters without backslash, found "
        "string \"A\\\\B\"");
  CHECK_THAT(ErrorOf(With("/worklist/hots", "ris")), Catch::Contains("unknown key; did you mean \"host\"?"));
}

// ---- issue 16: the operator's page, off unless configured, and on loopback only -------------

TEST_CASE("config: the operator's page is off by default, at 127.0.0.1:8471 when on, and refuses any address but "
          "loopback without TLS") {
  auto defaults = ParseConfig(Minimal().dump(), "site/agent.json");
  REQUIRE(defaults.has_value());
  CHECK_FALSE(defaults->ui.enabled);
  CHECK(defaults->ui.address == "127.0.0.1");
  CHECK(defaults->ui.port == 8471);
  for (const char* loopback : {"127.0.0.1", "::1"}) {
    INFO(loopback);
    auto c = ParseConfig(With("/ui", {{"enabled", true}, {"address", loopback}, {"port", 9600}}).dump(), "site/agent.json");
    REQUIRE(c.has_value());
    CHECK(c->ui.port == 9600);
  }
  for (const char* remote : {"0.0.0.0", "192.0.2.10", "::"}) {
    INFO(remote);
    const std::string message = ErrorOf(With("/ui", {{"enabled", true}, {"address", remote}}));
    CHECK(message.find("site/agent.json: /ui/address: \"" + std::string(remote) + "\" is not a loopback address") == 0);
    CHECK(message.find("only with TLS (set /ui/tls/cert_file and /ui/tls/key_file) and a password (set "
                       "/ui/password_file") != std::string::npos);
    // Off, nothing listens: nothing to refuse.
    CHECK(ParseConfig(With("/ui", {{"enabled", false}, {"address", remote}}).dump(), "site/agent.json").has_value());
  }
  // Who confirms high-risk findings at this terminal: empty by default, a name of at most 64
  // bytes without control characters (UTF-8 welcome).
  CHECK(defaults->ui.console_user.empty());
  auto named = ParseConfig(With("/ui/console_user", "\xE7\x8E\x8B Nurse").dump(), "site/agent.json");
  REQUIRE(named.has_value());
  CHECK(named->ui.console_user == "\xE7\x8E\x8B Nurse");
  CHECK(ErrorOf(With("/ui/console_user", std::string(65, 'a'))).find("site/agent.json: /ui/console_user: expected") == 0);
  CHECK(ErrorOf(With("/ui/console_user", "two\nlines")).find("/ui/console_user") != std::string::npos);
}

// ---- issue 16: the page off loopback, only with TLS and a password or client certificate ------

TEST_CASE("config: the page off loopback needs TLS and a password or a client CA, and its secrets private") {
  ctagent::test::TempDir dir("config_ui_tls");
  const fs::path cert = dir.path() / "page.pem";
  const fs::path key = dir.path() / "page.key";
  const fs::path password = dir.path() / "ui.password";
  WriteText(cert, "not parsed here\n");
  WriteText(key, "secret\n");
  WriteText(password, "pbkdf2-sha256$1000$00$00\n");
  ::chmod(key.c_str(), 0600);
  ::chmod(password.c_str(), 0600);
  const nlohmann::json tls = {{"cert_file", cert.string()}, {"key_file", key.string()}};
  auto ui = [&](nlohmann::json section) {
    section["enabled"] = true;
    return With("/ui", section);
  };
  // Off loopback: TLS alone is not enough, nor a password without TLS.
  CHECK(ErrorOf(ui({{"address", "192.0.2.10"}, {"tls", tls}}))
            .find("site/agent.json: /ui/address: \"192.0.2.10\" is not a loopback address; the page may listen there "
                  "only with TLS") == 0);
  CHECK(ErrorOf(ui({{"address", "192.0.2.10"}, {"password_file", password.string()}})).find("/ui/password_file: needs /ui/tls") !=
        std::string::npos);
  CHECK(ErrorOf(ui({{"address", "0.0.0.0"}, {"tls", {{"cert_file", cert.string()}}}, {"password_file", password.string()}}))
            .find("/ui/tls/key_file: required when /ui/tls is set") != std::string::npos);
  // TLS and a password, or TLS and a client CA: accepted; TLS on loopback too.
  auto with_password = ParseConfig(ui({{"address", "192.0.2.10"}, {"server_name", "ct-terminal.example"},
                                       {"tls", tls}, {"password_file", password.string()}}).dump(), "site/agent.json");
  REQUIRE(with_password.has_value());
  CHECK(with_password->ui.tls.key_file == key);
  CHECK(with_password->ui.password_file == password);
  CHECK(with_password->ui.server_name == "ct-terminal.example");
  nlohmann::json with_ca = tls;
  with_ca["client_ca_file"] = cert.string();
  CHECK(ParseConfig(ui({{"address", "::"}, {"tls", with_ca}}).dump(), "site/agent.json").has_value());
  CHECK(ParseConfig(ui({{"address", "127.0.0.1"}, {"tls", tls}}).dump(), "site/agent.json").has_value());
  // Secret files other users may read are refused, naming the key and what to do.
  ::chmod(key.c_str(), 0644);
  const std::string key_error = ErrorOf(ui({{"address", "127.0.0.1"}, {"tls", tls}}));
  CHECK(key_error.find("site/agent.json: /ui/tls/key_file: the page's TLS key " + key.string()) == 0);
  CHECK(key_error.find("may be read by other users (mode 0644); run chmod 600") != std::string::npos);
  ::chmod(key.c_str(), 0600);
  ::chmod(password.c_str(), 0640);
  CHECK(ParseConfig(ui({{"tls", tls}, {"password_file", password.string()}}).dump(), "site/agent.json").has_value());
  ::chmod(password.c_str(), 0604);
  CHECK(ErrorOf(ui({{"tls", tls}, {"password_file", password.string()}})).find("site/agent.json: /ui/password_file: ") == 0);
  // A password file not made yet is `ctagent ui-password`'s to write: not an error here.
  CHECK(ParseConfig(ui({{"tls", tls}, {"password_file", (dir.path() / "later.password").string()}}).dump(),
                    "site/agent.json")
            .has_value());
}
