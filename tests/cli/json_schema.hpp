// A validator for the part of JSON Schema (2020-12) that docs/schemas/*.schema.json use: type
// (a name or a list), enum, required, properties, items, minimum. Stricter than the schemas in one
// way, on purpose: a property the schema does not list is reported, so everything the agent
// prints is documented (the schemas themselves let readers ignore unknown fields).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ctagent::test {

inline bool HasType(const nlohmann::json& value, const std::string& type) {
  if (type == "object") return value.is_object();
  if (type == "array") return value.is_array();
  if (type == "string") return value.is_string();
  if (type == "boolean") return value.is_boolean();
  if (type == "null") return value.is_null();
  if (type == "integer") return value.is_number_integer();
  if (type == "number") return value.is_number();
  return false;
}

// Every way `value` breaks `schema`, each naming its JSON pointer; empty when it conforms.
inline void SchemaErrors(const nlohmann::json& schema, const nlohmann::json& value, const std::string& at,
                         std::vector<std::string>& errors) {
  const std::string where = at.empty() ? "/" : at;
  if (schema.contains("type")) {
    bool ok = false;
    if (schema["type"].is_array()) {
      for (const auto& t : schema["type"]) ok = ok || HasType(value, t.get<std::string>());
    } else {
      ok = HasType(value, schema["type"].get<std::string>());
    }
    if (!ok) {
      errors.push_back(where + ": expected type " + schema["type"].dump() + ", found " + value.dump());
      return;
    }
  }
  if (schema.contains("enum")) {
    bool found = false;
    for (const auto& v : schema["enum"]) found = found || v == value;
    if (!found) errors.push_back(where + ": " + value.dump() + " is not one of " + schema["enum"].dump());
  }
  if (schema.contains("minimum") && value.is_number() && value.get<double>() < schema["minimum"].get<double>()) {
    errors.push_back(where + ": " + value.dump() + " is below the minimum " + schema["minimum"].dump());
  }
  if (value.is_object()) {
    for (const auto& name : schema.value("required", nlohmann::json::array())) {
      if (!value.contains(name.get<std::string>())) errors.push_back(where + ": \"" + name.get<std::string>() + "\" is required");
    }
    const auto properties = schema.value("properties", nlohmann::json::object());
    for (const auto& [key, item] : value.items()) {
      if (!properties.contains(key)) {
        errors.push_back(at + "/" + key + ": not in the schema (undocumented field)");
        continue;
      }
      SchemaErrors(properties[key], item, at + "/" + key, errors);
    }
  }
  if (value.is_array() && schema.contains("items")) {
    for (std::size_t i = 0; i < value.size(); ++i) SchemaErrors(schema["items"], value[i], at + "/" + std::to_string(i), errors);
  }
}

inline std::vector<std::string> SchemaErrors(const nlohmann::json& schema, const nlohmann::json& value) {
  std::vector<std::string> errors;
  SchemaErrors(schema, value, "", errors);
  return errors;
}

}  // namespace ctagent::test
