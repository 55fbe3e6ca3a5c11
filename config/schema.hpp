// The configuration schema as data (in the manner of Fluent Bit's config_map): one row per
// JSON key with its type, range, default (read from the structs) and the field it sets.
// The loader (config.cpp) walks a document against it and SchemaMarkdown() renders it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"

namespace ctagent::config::schema {

enum class Type {
  kSection,  // a JSON object holding more keys of the schema
  kObject,   // a JSON object passed through unchecked (driver options)
  kBool,
  kInteger,  // non-negative integer in [min, max]
  kBytes,    // byte size: integer or "4 MiB"; in [min, max]
  kNumber,   // finite number in [min_number, max_number] (or (min_number, ...] when min_open)
  kString,   // string accepted by string_ok (any string when null)
  kEnum,     // one of `choices`
  kPath,     // file system path; relative ones are resolved against the config file's directory
};

struct Entry {
  std::string_view path = {};  // JSON pointer, e.g. "/cloud/parallel_uploads"
  Type type = Type::kString;
  std::string_view description = {};
  bool required = false;
  bool sensitive = false;  // never echo the value in messages (patient identity)
  std::uint64_t min = 0;
  std::uint64_t max = 0;
  double min_number = 0;
  double max_number = 0;
  bool min_open = false;
  std::vector<std::string_view> choices = {};
  bool (*string_ok)(const std::string&) = nullptr;
  std::string_view string_rule = {};  // what string_ok accepts, for "expected ..."
  bool url = false;  // an http(s) URL: checked by UrlProblem, shown redacted by RedactUrl (base/url.hpp)
  void (*set)(AgentConfig&, const nlohmann::json&) = nullptr;  // value already checked and normalised
  nlohmann::json (*get)(const AgentConfig&) = nullptr;         // for defaults in the docs
};

const std::vector<Entry>& Entries();
const Entry* Find(std::string_view path);

// "an integer from 1 to 16", "one of \"none\", \"shuffle\"", ...
std::string Expectation(const Entry& e);
// "string \"four\"", "12", "an object", ...; sensitive entries show only the kind and length.
std::string Describe(const nlohmann::json& value, bool sensitive);
// Checks `value` against the entry. On success returns the normalised value to hand to
// `set` (byte sizes as integers, paths resolved against `base_dir`); on failure the
// "expected ..., found ..." text.
bool CheckValue(const Entry& e, const nlohmann::json& value, const std::filesystem::path& base_dir,
                nlohmann::json* normalised, std::string* problem);

std::optional<std::uint64_t> ParseByteSize(std::string_view text);
std::string FormatBytes(std::uint64_t bytes);  // "4 MiB" when exact, else the integer

bool IsHttpUrl(const std::string& s);
bool IsHttpsUrl(const std::string& s);

// Why `url` is not a usable http:// or https:// URL ("" when it is): userinfo
// (`user:password@`), an empty host, a port outside 1..65535, spaces or control characters.
// The message never contains the URL's password.
std::string UrlProblem(const std::string& url);

}  // namespace ctagent::config::schema
