// DICOMweb client: QIDO-RS searches (JSON) and WADO-RS instance retrieval (multipart/related).
#include "transport/text.hpp"
#include "transport/dicomweb.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <string_view>

namespace ctagent::transport::dicomweb {
namespace {

constexpr const char* kDicomJson = "application/dicom+json";
// Headroom for the multipart framing around one instance's bytes.
constexpr std::uint64_t kMultipartOverhead = 64 * 1024;

using detail::ToLower;

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// DICOM UIDs are digits and dots (PS3.5 9.1); anything else would also change the URL's meaning.
Status CheckUid(const std::string& uid, const char* what) {
  const bool ok = !uid.empty() && uid.size() <= 64 &&
                  std::all_of(uid.begin(), uid.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
  if (!ok) return MakeError(ErrorKind::kInvalidInput, std::string("invalid DICOM UID for ") + what + ": \"" + uid + "\"");
  return Ok();
}

Unexpected StatusError(const std::string& what, const std::string& url, long status) {
  const std::string text = "HTTP " + std::to_string(status);
  if (status == 401 || status == 403) {
    return MakeError(ErrorKind::kPermission, what + " " + url + " refused (" + text +
                                                 "); check the DICOMweb credentials");
  }
  if (status == 404) return MakeError(ErrorKind::kNotFound, what + " " + url + ": not found (" + text + ")");
  if (status >= 500) {
    return MakeError(ErrorKind::kNetwork, what + " " + url + ": temporary server failure (" + text + "); retry later");
  }
  return MakeError(ErrorKind::kProtocol, what + " " + url + ": unexpected " + text);
}

// GET a QIDO-RS URL and return the JSON array of datasets (empty for 204).
Expected<nlohmann::json> Qido(HttpClient& http, const std::string& url) {
  HttpRequest request;
  request.url = url;
  request.headers = {{"Accept", kDicomJson}};
  auto response = http.Perform(request, 64ull << 20);
  if (!response) return MakeError(response.error().WithContext("QIDO-RS search"));
  if (response->status == 204) return nlohmann::json::array();
  if (response->status != 200) return StatusError("QIDO-RS search", url, response->status);
  if (response->body.empty()) return nlohmann::json::array();
  auto parsed = nlohmann::json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_array()) {
    return MakeError(ErrorKind::kProtocol, "QIDO-RS search " + url + ": the response is not a DICOM JSON array");
  }
  for (const auto& item : parsed) {
    if (!item.is_object()) {
      return MakeError(ErrorKind::kProtocol, "QIDO-RS search " + url + ": an element of the response is not an object");
    }
  }
  return parsed;
}

struct MediaType {
  std::string type;  // lower-cased "type/subtype"
  std::vector<std::pair<std::string, std::string>> parameters;  // names lower-cased, values unquoted
};

// Parses `type/subtype; name=value; name="quoted value"` (RFC 7231 3.1.1.1).
Expected<MediaType> ParseMediaType(std::string_view text) {
  MediaType out;
  const auto semicolon = text.find(';');
  out.type = ToLower(Trim(text.substr(0, semicolon)));
  std::size_t pos = semicolon == std::string_view::npos ? text.size() : semicolon + 1;
  while (pos < text.size()) {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == ';')) ++pos;
    if (pos >= text.size()) break;
    const auto eq = text.find('=', pos);
    if (eq == std::string_view::npos) return MakeError(ErrorKind::kProtocol, "media type parameter without '='");
    const std::string name = ToLower(Trim(text.substr(pos, eq - pos)));
    pos = eq + 1;
    std::string value;
    if (pos < text.size() && text[pos] == '"') {
      ++pos;
      bool closed = false;
      while (pos < text.size()) {
        const char c = text[pos++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c == '\\') {
          if (pos >= text.size()) break;
          value += text[pos++];
        } else {
          value += c;
        }
      }
      if (!closed) return MakeError(ErrorKind::kProtocol, "unterminated quoted media type parameter " + name);
    } else {
      const auto end = text.find(';', pos);
      value = std::string(Trim(text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos)));
      pos = end == std::string_view::npos ? text.size() : end;
    }
    out.parameters.emplace_back(name, value);
  }
  return out;
}

bool IsBoundaryChar(char c) {
  // RFC 2046 bchars
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || std::string_view("'()+_,-./:=? ").find(c) != std::string_view::npos;
}

// After a delimiter: optional transport padding (spaces, tabs), then CRLF. Returns the position
// after the CRLF, or npos.
std::size_t SkipPaddingAndCrlf(std::string_view body, std::size_t pos) {
  while (pos < body.size() && (body[pos] == ' ' || body[pos] == '\t')) ++pos;
  if (body.substr(pos, 2) != "\r\n") return std::string_view::npos;
  return pos + 2;
}

}  // namespace

std::string JsonTagString(const nlohmann::json& dataset, const std::string& tag) {
  if (!dataset.is_object()) return {};
  const auto element = dataset.find(tag);
  if (element == dataset.end() || !element->is_object()) return {};
  const auto values = element->find("Value");
  if (values == element->end() || !values->is_array() || values->empty()) return {};
  const auto& first = values->front();
  if (first.is_string()) return first.get<std::string>();
  if (first.is_number_unsigned()) return std::to_string(first.get<std::uint64_t>());
  if (first.is_number_integer()) return std::to_string(first.get<std::int64_t>());
  if (first.is_number_float()) return first.dump();
  if (first.is_object()) {  // person name (PN): its alphabetic form
    const auto alphabetic = first.find("Alphabetic");
    if (alphabetic != first.end() && alphabetic->is_string()) return alphabetic->get<std::string>();
  }
  return {};
}

Expected<std::vector<std::string>> ParseMultipartRelated(const std::string& content_type, const std::string& body_text) {
  auto media = ParseMediaType(content_type);
  if (!media) return MakeError(media.error().WithContext("multipart Content-Type \"" + content_type + "\""));
  if (!media->type.starts_with("multipart/")) {
    return MakeError(ErrorKind::kProtocol, "expected a multipart response but got Content-Type \"" + content_type + "\"");
  }
  std::string boundary;
  for (const auto& [name, value] : media->parameters) {
    if (name == "boundary") boundary = value;
  }
  if (boundary.empty()) {
    return MakeError(ErrorKind::kProtocol, "multipart Content-Type \"" + content_type + "\" has no boundary");
  }
  if (boundary.size() > 70 || !std::all_of(boundary.begin(), boundary.end(), IsBoundaryChar) || boundary.back() == ' ') {
    return MakeError(ErrorKind::kProtocol, "multipart boundary \"" + boundary + "\" is not valid (RFC 2046)");
  }

  const std::string_view body(body_text);
  const std::string dash_boundary = "--" + boundary;
  const std::string delimiter = "\r\n" + dash_boundary;

  // The first boundary may open the body directly (empty preamble) or follow a preamble.
  std::size_t pos = 0;
  if (body.starts_with(dash_boundary)) {
    pos = dash_boundary.size();
  } else {
    const auto found = body.find(delimiter);
    if (found == std::string_view::npos) {
      return MakeError(ErrorKind::kProtocol, "multipart body has no opening boundary \"" + boundary + "\"");
    }
    pos = found + delimiter.size();
  }

  std::vector<std::string> parts;
  // Each round consumes one delimiter and the part after it, so pos strictly grows.
  while (true) {
    if (body.substr(pos, 2) == "--") return parts;  // close delimiter; the epilogue is ignored
    pos = SkipPaddingAndCrlf(body, pos);
    if (pos == std::string_view::npos) {
      return MakeError(ErrorKind::kProtocol, "multipart boundary line is not followed by CRLF (malformed or truncated)");
    }
    // The part's own headers end at an empty line; a part without headers starts with CRLF.
    std::size_t content_begin = 0;
    if (body.substr(pos, 2) == "\r\n") {
      content_begin = pos + 2;
    } else {
      const auto headers_end = body.find("\r\n\r\n", pos);
      const auto next = body.find(delimiter, pos);
      if (headers_end == std::string_view::npos || (next != std::string_view::npos && next < headers_end)) {
        return MakeError(ErrorKind::kProtocol, "multipart part " + std::to_string(parts.size() + 1) +
                                                   " has unterminated headers (malformed or truncated)");
      }
      std::string_view headers = body.substr(pos, headers_end - pos);
      while (!headers.empty()) {
        const auto eol = headers.find("\r\n");
        const auto line = headers.substr(0, eol);
        headers = eol == std::string_view::npos ? std::string_view() : headers.substr(eol + 2);
        const auto colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0) {
          return MakeError(ErrorKind::kProtocol, "multipart part " + std::to_string(parts.size() + 1) +
                                                     " has a malformed header line");
        }
        if (ToLower(Trim(line.substr(0, colon))) == "content-type") {
          const std::string type = ToLower(Trim(line.substr(colon + 1)));
          if (!type.starts_with("application/dicom")) {
            return MakeError(ErrorKind::kProtocol, "multipart part " + std::to_string(parts.size() + 1) +
                                                       " has Content-Type \"" + type + "\", expected application/dicom");
          }
        }
      }
      content_begin = headers_end + 4;
    }
    const auto content_end = body.find(delimiter, content_begin);
    if (content_end == std::string_view::npos) {
      return MakeError(ErrorKind::kProtocol, "multipart part " + std::to_string(parts.size() + 1) +
                                                 " has no closing boundary (truncated body)");
    }
    parts.emplace_back(body.substr(content_begin, content_end - content_begin));
    pos = content_end + delimiter.size();
  }
}

Client::Client(HttpClient& http, std::string root) : http_(http), root_(std::move(root)) {
  while (root_.ends_with('/')) root_.pop_back();
}

Expected<std::vector<SeriesRef>> Client::SearchSeries(const std::string& study_uid) {
  if (auto ok = CheckUid(study_uid, "the study"); !ok) return MakeError(ok.error());
  const std::string url = root_ + "/studies/" + study_uid + "/series";
  auto datasets = Qido(http_, url);
  if (!datasets) return MakeError(datasets.error());
  std::vector<SeriesRef> out;
  for (const auto& dataset : *datasets) {
    SeriesRef ref;
    ref.series_uid = JsonTagString(dataset, "0020000E");
    ref.modality = JsonTagString(dataset, "00080060");
    if (ref.series_uid.empty()) {
      return MakeError(ErrorKind::kProtocol, "QIDO-RS search " + url + ": a series has no SeriesInstanceUID");
    }
    const std::string count = JsonTagString(dataset, "00201209");
    if (!count.empty()) {
      const auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), ref.instance_count);
      if (ec != std::errc() || end != count.data() + count.size()) {
        return MakeError(ErrorKind::kProtocol, "QIDO-RS search " + url + ": series " + ref.series_uid +
                                                   " has an invalid NumberOfSeriesRelatedInstances \"" + count + "\"");
      }
    }
    out.push_back(std::move(ref));
  }
  return out;
}

Expected<std::vector<InstanceRef>> Client::SearchInstances(const std::string& study_uid,
                                                           const std::string& series_uid) {
  if (auto ok = CheckUid(study_uid, "the study"); !ok) return MakeError(ok.error());
  if (auto ok = CheckUid(series_uid, "the series"); !ok) return MakeError(ok.error());
  const std::string url = root_ + "/studies/" + study_uid + "/series/" + series_uid + "/instances";
  auto datasets = Qido(http_, url);
  if (!datasets) return MakeError(datasets.error());
  std::vector<InstanceRef> out;
  for (const auto& dataset : *datasets) {
    InstanceRef ref{JsonTagString(dataset, "00080018"), JsonTagString(dataset, "00080016")};
    if (ref.sop_instance_uid.empty()) {
      return MakeError(ErrorKind::kProtocol, "QIDO-RS search " + url + ": an instance has no SOPInstanceUID");
    }
    out.push_back(std::move(ref));
  }
  return out;
}

Expected<std::vector<std::uint8_t>> Client::RetrieveInstance(const std::string& study_uid,
                                                             const std::string& series_uid,
                                                             const std::string& sop_instance_uid,
                                                             std::uint64_t max_bytes) {
  if (auto ok = CheckUid(study_uid, "the study"); !ok) return MakeError(ok.error());
  if (auto ok = CheckUid(series_uid, "the series"); !ok) return MakeError(ok.error());
  if (auto ok = CheckUid(sop_instance_uid, "the instance"); !ok) return MakeError(ok.error());
  HttpRequest request;
  request.url = root_ + "/studies/" + study_uid + "/series/" + series_uid + "/instances/" + sop_instance_uid;
  request.headers = {{"Accept", "multipart/related; type=\"application/dicom\""}};
  auto response = http_.Perform(request, max_bytes + kMultipartOverhead);
  if (!response) return MakeError(response.error().WithContext("WADO-RS retrieve"));
  if (response->status != 200) return StatusError("WADO-RS retrieve", request.url, response->status);
  auto parts = ParseMultipartRelated(response->Header("Content-Type"), response->body);
  if (!parts) return MakeError(parts.error().WithContext("WADO-RS retrieve " + request.url));
  if (parts->size() != 1) {
    return MakeError(ErrorKind::kProtocol, "WADO-RS retrieve " + request.url + ": expected exactly one instance, got " +
                                               std::to_string(parts->size()) + " parts");
  }
  const std::string& part = parts->front();
  if (part.size() > max_bytes) {
    return MakeError(ErrorKind::kProtocol, "WADO-RS retrieve " + request.url + ": the instance has " +
                                               std::to_string(part.size()) + " bytes, more than the limit of " +
                                               std::to_string(max_bytes));
  }
  return std::vector<std::uint8_t>(part.begin(), part.end());
}

}  // namespace ctagent::transport::dicomweb
