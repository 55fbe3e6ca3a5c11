// A strict reader of the Prometheus text exposition format 0.0.4, for tests: every line must be a
// # HELP, a # TYPE (before its family's samples, once) or a sample `name{labels} value`; label
// values are unescaped. Anything else is a parse error naming the line, so a test that scrapes
// the daemon also checks that what it serves is well formed. ScrapeMetrics: GET /metrics on loopback.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ctagent::test {

struct ParsedSample {
  std::string name;  // with its suffix (_bucket, _sum, _count)
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct ParsedPage {
  std::map<std::string, std::string> types;  // family name -> counter, gauge, histogram
  std::map<std::string, std::string> helps;
  std::vector<ParsedSample> samples;
  std::string error;  // empty when the whole page parsed

  // The value of the one sample with this name and these labels (others ignored), if any.
  std::optional<double> Value(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = s.labels.find(k);
        if (it == s.labels.end() || it->second != v) match = false;
      }
      if (match) return s.value;
    }
    return std::nullopt;
  }
  // Sum of every sample with this name.
  double Sum(const std::string& name) const {
    double total = 0;
    for (const auto& s : samples) total += s.name == name ? s.value : 0;
    return total;
  }
};

inline ParsedPage ParseExposition(const std::string& text) {
  ParsedPage page;
  std::size_t pos = 0;
  int line_no = 0;
  const auto fail = [&](const std::string& why, const std::string& line) {
    page.error = "line " + std::to_string(line_no) + ": " + why + ": " + line;
    return page;
  };
  const auto family_of = [&](const std::string& name) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s = suffix;
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
        const std::string base = name.substr(0, name.size() - s.size());
        if (page.types.count(base) && page.types[base] == "histogram") return base;
      }
    }
    return name;
  };
  while (pos < text.size()) {
    const auto end = text.find('\n', pos);
    if (end == std::string::npos) return fail("no final line feed", text.substr(pos));
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const auto sp = rest.find(' ');
      if (sp == std::string::npos) return fail("no text after the name", line);
      const std::string name = rest.substr(0, sp);
      if (line[2] == 'T') {
        const std::string type = rest.substr(sp + 1);
        if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" && type != "untyped") {
          return fail("unknown type", line);
        }
        if (page.types.count(name)) return fail("second TYPE", line);
        for (const auto& s : page.samples) {
          if (family_of(s.name) == name) return fail("TYPE after samples", line);
        }
        page.types[name] = type;
      } else {
        page.helps[name] = rest.substr(sp + 1);
      }
      continue;
    }
    if (line.empty() || line[0] == '#') return fail("unexpected line", line);
    ParsedSample sample;
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    sample.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const auto eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return fail("bad label", line);
        const std::string label = line.substr(i, eq - i);
        std::string value;
        std::size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\') {
            if (j + 1 >= line.size()) return fail("bad escape", line);
            const char e = line[++j];
            if (e == 'n') value += '\n';
            else if (e == '\\' || e == '"') value += e;
            else return fail("bad escape", line);
          } else {
            value += line[j];
          }
        }
        if (j >= line.size()) return fail("unterminated label value", line);
        sample.labels[label] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return fail("unterminated labels", line);
      ++i;
    }
    if (i >= line.size() || line[i] != ' ') return fail("no value", line);
    const std::string value = line.substr(i + 1);
    if (value == "+Inf") {
      sample.value = HUGE_VAL;
    } else if (value == "-Inf") {
      sample.value = -HUGE_VAL;
    } else if (value == "NaN") {
      sample.value = std::nan("");
    } else {
      char* endp = nullptr;
      sample.value = std::strtod(value.c_str(), &endp);
      if (endp == value.c_str() || *endp != '\0') return fail("bad value", line);
    }
    if (!page.types.count(family_of(sample.name))) return fail("sample without TYPE", line);
    page.samples.push_back(std::move(sample));
  }
  return page;
}

// GET /metrics over a plain loopback socket (every call bounded by a 5 s socket timeout); the
// body, or "" when nobody answers.
inline std::string ScrapeMetrics(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char buffer[8192];
      for (int i = 0; i < 1000; ++i) {  // bounded: 8 MB
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) break;
        response.append(buffer, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(fd);
  if (response.rfind("HTTP/1.1 200 ", 0) != 0) return "";
  const auto at = response.find("\r\n\r\n");
  return at == std::string::npos ? "" : response.substr(at + 4);
}

}  // namespace ctagent::test
