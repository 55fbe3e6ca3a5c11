#include "agent/codec/manifest.hpp"

#include <limits>
#include <optional>
#include <string_view>
#include <type_traits>
#include <utility>

#include "base/json_integer.hpp"

namespace ctagent::codec {
namespace {

// Reads a required member of the expected JSON type, naming the path on failure.
template <typename T>
Status Read(const nlohmann::json& obj, const std::string& key, const std::string& path, T* out) {
  const auto it = obj.find(key);
  if (it == obj.end()) return MakeError(ErrorKind::kInvalidInput, "manifest " + path + "/" + key + ": missing");
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // Only an integer that fits is a count or an index (base/json_integer.hpp says why).
    const auto out_of_range = [&] {
      return MakeError(ErrorKind::kInvalidInput, "manifest " + path + "/" + key + ": " + it->dump() +
                                                     " is not an integer from " +
                                                     std::to_string(std::numeric_limits<T>::min()) + " to " +
                                                     std::to_string(std::numeric_limits<T>::max()));
    };
    if (!it->is_number()) {
      return MakeError(ErrorKind::kInvalidInput, "manifest " + path + "/" + key + ": wrong type (found " +
                                                     std::string(it->type_name()) + ")");
    }
    const std::optional<T> n = IntegerAs<T>(*it);
    if (!n) return out_of_range();
    *out = *n;
    return Ok();
  }
  try {
    *out = it->get<T>();
  } catch (const nlohmann::json::exception&) {
    return MakeError(ErrorKind::kInvalidInput, "manifest " + path + "/" + key + ": wrong type (found " +
                                                   std::string(it->type_name()) + ")");
  }
  return Ok();
}

}  // namespace

namespace {

nlohmann::json ChunkToJson(const ManifestChunk& c) {
  return {{"index", c.index},
          {"first_view", c.first_view},
          {"view_count", c.view_count},
          {"raw_bytes", c.raw_bytes},
          {"compressed_bytes", c.compressed_bytes},
          {"raw_sha256", c.raw_sha256.Hex()},
          {"sha256", c.sha256.Hex()}};
}

nlohmann::json ToJsonWithChunks(const Manifest& m, nlohmann::json chunks) {
  nlohmann::json patient = {{"id", m.patient_id}, {"name", m.patient_name}};
  if (!m.accession_number.empty()) patient["accession"] = m.accession_number;
  if (!m.patient_age.empty()) patient["age"] = m.patient_age;
  if (!m.patient_sex.empty()) patient["sex"] = m.patient_sex;
  return {{"format", "ctagent-manifest"},
          {"version", kManifestVersion},
          {"scan_uid", m.scan_uid},
          {"study_uid", m.study_uid},
          {"patient", patient},
          {"study_description", m.study_description},
          {"terminal_id", m.terminal_id},
          {"acquisition", {{"start_utc", m.acquisition_start_utc},
                           {"end_utc", m.acquisition_end_utc},
                           {"views", m.views_acquired},
                           {"complete", m.complete},
                           {"incomplete_reason", m.incomplete_reason}}},
          {"protocol", drivers::ToJson(m.protocol)},
          {"chunks", std::move(chunks)}};
}

}  // namespace

nlohmann::json ToJson(const Manifest& m) {
  nlohmann::json chunks = nlohmann::json::array();
  for (const auto& c : m.chunks) chunks.push_back(ChunkToJson(c));
  return ToJsonWithChunks(m, std::move(chunks));
}

std::string ManifestText(const Manifest& head, std::span<const ManifestChunk* const> chunks) {
  const std::string text_without = ToJsonWithChunks(head, nlohmann::json::array()).dump(1);
  // The top level's "chunks" member, empty: at indent 1 it is the only line that starts with one
  // space and this key (a line break inside a string value is escaped, so cannot match).
  constexpr std::string_view kEmptyChunks = "\n \"chunks\": []";
  if (chunks.empty()) return text_without;
  const std::size_t at = text_without.find(kEmptyChunks);
  if (at == std::string::npos) {  // not reached: dump(1)'s layout is fixed
    Manifest whole = head;
    whole.chunks.clear();
    for (const ManifestChunk* c : chunks) whole.chunks.push_back(*c);
    return ToJson(whole).dump(1);
  }
  const std::size_t open_bracket = at + kEmptyChunks.size() - 2;
  std::string text;
  text.reserve(text_without.size() + chunks.size() * 330);
  text.append(text_without, 0, open_bracket);
  text += '[';
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const std::string one = ChunkToJson(*chunks[i]).dump(1);
    text += i == 0 ? "\n  " : ",\n  ";
    // Dumped alone the chunk's object starts at indent 0; in the file it is two levels deeper
    // (the top-level object's and the array's).
    for (const char ch : one) {
      text += ch;
      if (ch == '\n') text += "  ";
    }
  }
  text += "\n ]";
  text.append(text_without, open_bracket + 2);
  return text;
}

std::string ManifestText(const Manifest& manifest) {
  std::vector<const ManifestChunk*> chunks;
  chunks.reserve(manifest.chunks.size());
  for (const auto& c : manifest.chunks) chunks.push_back(&c);
  return ManifestText(manifest, chunks);
}

Expected<Manifest> ManifestFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return MakeError(ErrorKind::kInvalidInput, "manifest: not a JSON object");
  Manifest m;
  std::string format;
  int version = 0;
  if (auto s = Read(j, "format", "", &format); !s) return MakeError(s.error());
  if (format != "ctagent-manifest") return MakeError(ErrorKind::kInvalidInput, "manifest /format: not \"ctagent-manifest\"");
  if (auto s = Read(j, "version", "", &version); !s) return MakeError(s.error());
  if (version != kManifestVersion) {
    return MakeError(ErrorKind::kUnsupported, "manifest version " + std::to_string(version) + " is not supported");
  }
  nlohmann::json patient, acquisition, protocol, chunks;
  for (auto [key, out] : {std::pair{"patient", &patient}, std::pair{"acquisition", &acquisition},
                          std::pair{"protocol", &protocol}, std::pair{"chunks", &chunks}}) {
    if (auto s = Read(j, key, "", out); !s) return MakeError(s.error());
  }
  Status st = Ok();
  auto chain = [&st](Status s) {
    if (st && !s) st = s;
  };
  chain(Read(j, "scan_uid", "", &m.scan_uid));
  chain(Read(j, "study_uid", "", &m.study_uid));
  chain(Read(j, "study_description", "", &m.study_description));
  chain(Read(j, "terminal_id", "", &m.terminal_id));
  chain(Read(patient, "id", "/patient", &m.patient_id));
  chain(Read(patient, "name", "/patient", &m.patient_name));
  for (auto [key, out] : {std::pair{"accession", &m.accession_number}, std::pair{"age", &m.patient_age},
                          std::pair{"sex", &m.patient_sex}}) {
    if (patient.contains(key)) chain(Read(patient, key, "/patient", out));
  }
  chain(Read(acquisition, "start_utc", "/acquisition", &m.acquisition_start_utc));
  chain(Read(acquisition, "end_utc", "/acquisition", &m.acquisition_end_utc));
  chain(Read(acquisition, "views", "/acquisition", &m.views_acquired));
  chain(Read(acquisition, "complete", "/acquisition", &m.complete));
  chain(Read(acquisition, "incomplete_reason", "/acquisition", &m.incomplete_reason));
  if (!st) return MakeError(st.error());
  auto proto = drivers::ProtocolFromJson(protocol);
  if (!proto) return MakeError(proto.error().WithContext("manifest /protocol"));
  m.protocol = *proto;
  if (!chunks.is_array()) return MakeError(ErrorKind::kInvalidInput, "manifest /chunks: not an array");
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const std::string path = "/chunks/" + std::to_string(i);
    ManifestChunk c;
    chain(Read(chunks[i], "index", path, &c.index));
    chain(Read(chunks[i], "first_view", path, &c.first_view));
    chain(Read(chunks[i], "view_count", path, &c.view_count));
    chain(Read(chunks[i], "raw_bytes", path, &c.raw_bytes));
    chain(Read(chunks[i], "compressed_bytes", path, &c.compressed_bytes));
    for (auto [key, out] : {std::pair{"raw_sha256", &c.raw_sha256}, std::pair{"sha256", &c.sha256}}) {
      std::string hex;
      chain(Read(chunks[i], key, path, &hex));
      if (!st) break;
      const auto digest = Sha256Digest::FromHex(hex);
      if (!digest) {
        return MakeError(ErrorKind::kInvalidInput, "manifest " + path + "/" + key +
                                                       ": not a SHA-256 (64 lowercase hex digits)");
      }
      *out = *digest;
    }
    if (!st) return MakeError(st.error());
    // A complete scan lists chunks 0, 1, 2, ... An incomplete one may have gaps: chunks are
    // compressed in parallel, so a crash or a full disk can leave chunk N missing after N+1 was
    // stored, and what was stored must still reach the cloud. Order and disjoint views always hold.
    if (m.complete && c.index != i) {
      return MakeError(ErrorKind::kInvalidInput, "manifest " + path + "/index: expected " + std::to_string(i) +
                                                     ", found " + std::to_string(c.index));
    }
    if (!m.chunks.empty()) {
      const ManifestChunk& prev = m.chunks.back();
      if (c.index <= prev.index || c.first_view < prev.first_view + prev.view_count) {
        return MakeError(ErrorKind::kInvalidInput,
                         "manifest " + path + ": chunk " + std::to_string(c.index) + " (views from " +
                             std::to_string(c.first_view) + ") does not follow chunk " + std::to_string(prev.index) +
                             " (views " + std::to_string(prev.first_view) + "+" + std::to_string(prev.view_count) + ")");
      }
    }
    m.chunks.push_back(std::move(c));
  }
  return m;
}

}  // namespace ctagent::codec
