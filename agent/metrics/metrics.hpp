// Metrics in the Prometheus text exposition format 0.0.4 (docs/metrics.md): a registry of metric
// families (counters, gauges, histograms) filled at each scrape, rendered with # HELP and # TYPE
// lines, escaped label values and Prometheus' spelling of numbers (+Inf, NaN). The daemon builds
// one registry per scrape from what it knows (agent/daemon/metrics_collector.hpp); a Histogram
// keeps its buckets between scrapes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ctagent::metrics {

enum class Type { kCounter, kGauge, kHistogram };
const char* ToString(Type type);  // "counter", "gauge", "histogram"

using Labels = std::vector<std::pair<std::string, std::string>>;  // name, value; in this order

struct Sample {
  std::string suffix;  // "" or, for a histogram, "_bucket", "_sum", "_count"
  Labels labels;
  double value = 0;
};

struct Family {
  std::string name;
  std::string help;
  Type type = Type::kGauge;
  std::vector<Sample> samples;

  // Adds a sample (a counter's or a gauge's value for these labels).
  Family& Add(Labels labels, double value);
};

// Cumulative buckets of observed values (seconds, bytes...): kept across scrapes.
class Histogram {
 public:
  // `upper_bounds`: increasing, finite; the +Inf bucket is implied.
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  // The _bucket (with "le"), _sum and _count samples, after `labels`.
  void AppendTo(Family& family, const Labels& labels = {}) const;
  std::uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> upper_bounds_;
  std::vector<std::uint64_t> counts_;  // per bucket, not cumulative
  std::uint64_t count_ = 0;
  double sum_ = 0;
};

// The families of one scrape, in the order they were added.
class Registry {
 public:
  // Names must match [a-zA-Z_:][a-zA-Z0-9_:]* (a counter's should end in _total); a name added
  // twice returns the family already there.
  Family& Counter(const std::string& name, const std::string& help);
  Family& Gauge(const std::string& name, const std::string& help);
  Family& HistogramFamily(const std::string& name, const std::string& help);

  // The exposition text (Content-Type kContentType). A family or label whose name is not
  // valid is left out, so one bad name never makes the whole page unreadable.
  std::string Render() const;
  const std::vector<Family>& families() const { return families_; }

 private:
  Family& Get(const std::string& name, const std::string& help, Type type);
  std::vector<Family> families_;
};

inline constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

bool ValidMetricName(std::string_view name);
bool ValidLabelName(std::string_view name);  // [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__"
// A label value: backslash, double quote and line feed escaped as \\, \" and \n.
std::string EscapeLabelValue(std::string_view value);
// A HELP text: backslash and line feed escaped.
std::string EscapeHelp(std::string_view help);
// A sample value: integers without exponent or fraction, others with up to 17 significant
// digits, and +Inf, -Inf, NaN.
std::string FormatValue(double value);

}  // namespace ctagent::metrics
