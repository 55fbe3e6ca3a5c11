#include "agent/metrics/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ctagent::metrics {
namespace {

bool NameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool NameChar(char c) { return NameStart(c) || (c >= '0' && c <= '9'); }

void AppendSample(std::string& out, const Family& family, const Sample& sample) {
  out += family.name;
  out += sample.suffix;
  bool first = true;
  for (const auto& [name, value] : sample.labels) {
    if (!ValidLabelName(name)) continue;
    out += first ? '{' : ',';
    first = false;
    out += name;
    out += "=\"";
    out += EscapeLabelValue(value);
    out += '"';
  }
  if (!first) out += '}';
  out += ' ';
  out += FormatValue(sample.value);
  out += '\n';
}

}  // namespace

const char* ToString(Type type) {
  switch (type) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

Family& Family::Add(Labels labels, double value) {
  samples.push_back(Sample{"", std::move(labels), value});
  return *this;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bucket whose bound is >= value; past the last bound, the +Inf bucket.
  const auto it = std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value);
  ++counts_[static_cast<std::size_t>(it - upper_bounds_.begin())];
  ++count_;
  sum_ += value;
}

void Histogram::AppendTo(Family& family, const Labels& labels) const {
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i <= upper_bounds_.size(); ++i) {
    cumulative += counts_[i];
    Labels with_le = labels;
    with_le.emplace_back("le", i < upper_bounds_.size() ? FormatValue(upper_bounds_[i]) : "+Inf");
    family.samples.push_back(Sample{"_bucket", std::move(with_le), static_cast<double>(cumulative)});
  }
  family.samples.push_back(Sample{"_sum", labels, sum_});
  family.samples.push_back(Sample{"_count", labels, static_cast<double>(count_)});
}

Family& Registry::Get(const std::string& name, const std::string& help, Type type) {
  for (auto& f : families_) {
    if (f.name == name) return f;
  }
  families_.push_back(Family{name, help, type, {}});
  return families_.back();
}

Family& Registry::Counter(const std::string& name, const std::string& help) { return Get(name, help, Type::kCounter); }
Family& Registry::Gauge(const std::string& name, const std::string& help) { return Get(name, help, Type::kGauge); }
Family& Registry::HistogramFamily(const std::string& name, const std::string& help) {
  return Get(name, help, Type::kHistogram);
}

std::string Registry::Render() const {
  std::string out;
  for (const auto& family : families_) {
    if (!ValidMetricName(family.name)) continue;
    out += "# HELP " + family.name + " " + EscapeHelp(family.help) + "\n";
    out += "# TYPE " + family.name + " " + ToString(family.type) + "\n";
    for (const auto& sample : family.samples) AppendSample(out, family, sample);
  }
  return out;
}

bool ValidMetricName(std::string_view name) {
  if (name.empty() || !(NameStart(name[0]) || name[0] == ':')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return NameChar(c) || c == ':'; });
}

bool ValidLabelName(std::string_view name) {
  if (name.empty() || !NameStart(name[0]) || name.substr(0, 2) == "__") return false;
  return std::all_of(name.begin(), name.end(), NameChar);
}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  // Whole numbers (counters, byte counts) exactly, up to 2^53.
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) {
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
  } else {
    // The shortest of 15..17 significant digits that reads back as the same double (0.1, not
    // 0.10000000000000001).
    for (int digits = 15; digits <= 17; ++digits) {
      std::snprintf(buffer, sizeof buffer, "%.*g", digits, value);
      if (std::strtod(buffer, nullptr) == value) break;
    }
  }
  return buffer;
}

}  // namespace ctagent::metrics
