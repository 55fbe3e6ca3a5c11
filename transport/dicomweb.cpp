// DICOMweb client: QIDO-RS searches (JSON) and WADO-RS instance retrieval (multipart/related).
#include "transport/dicomweb.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <string_view>

#include "base/url.hpp"
#include "transport/text.hpp"

namespace ctagent::transport::dicomweb {
namespace {

constexpr const char* kDicomJson = "application/dicom+json";
// Headroom for the multipart framing around one instance's bytes.
constexpr std::uint64_t kMultipartOverhead = 64 * 1024;
// The largest QIDO-RS answer read at all; its content is bounded further by JsonLimits.
constexpr std::uint64_t kMaxQidoBytes = 64ull << 20;

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

Unexpected StatusError(const std::string& what, const std::string& raw_url, long status) {
  const std::string url = RedactUrl(raw_url);
  const std::string text = "HTTP " + std::to_string(status);
  if (status == 401 || status == 403) {
    return MakeError(ErrorKind::kPermission, what + " " + url + " refused (" + text + "); check the DICOMweb credentials",
                     FailureClass::kAuth);
  }
  if (status == 404) {
    // A search that finds no endpoint is a wrong cloud.dicomweb_url (a study the center does not
    // know is an empty answer); an instance its own search listed and then not found is an answer
    // the contract does not allow, retried like one.
    const bool search = what.rfind("QIDO", 0) == 0;
    return MakeError(ErrorKind::kNotFound, what + " " + url + ": not found (" + text + ")",
                     search ? FailureClass::kEndpoint : FailureClass::kProtocol);
  }
  if (status >= 500) {
    return MakeError(ErrorKind::kNetwork, what + " " + url + ": temporary server failure (" + text + "); retry later",
                     FailureClass::kServerError);
  }
  return MakeError(ErrorKind::kProtocol, what + " " + url + ": unexpected " + text, FailureClass::kProtocol);
}

// SAX handler for a QIDO-RS answer: checks the shape (an array of objects) and the limits at
// every event, and keeps only the first value of the wanted attributes of each entry, exactly as
// JsonTagString reads it from a parsed document (a repeated key replaces the earlier one, as it
// does in a document; the qido_fuzz target compares the two). Returning false from any event
// stops the parse at once, so nothing past a broken limit is read.
class QidoSax {
 public:
  using json = nlohmann::json;

  QidoSax(const std::vector<std::string>& tags, const JsonLimits& limits) : tags_(tags), limits_(limits) {}

  bool null() { return Scalar(Kind::kOther, nullptr); }
  bool boolean(bool) { return Scalar(Kind::kOther, nullptr); }
  bool number_integer(json::number_integer_t value) {
    const std::string text = std::to_string(value);
    return Scalar(Kind::kNumber, &text);
  }
  bool number_unsigned(json::number_unsigned_t value) {
    const std::string text = std::to_string(value);
    return Scalar(Kind::kNumber, &text);
  }
  bool number_float(json::number_float_t value, const json::string_t&) {
    const std::string text = json(value).dump();  // as JsonTagString shows it
    return Scalar(Kind::kNumber, &text);
  }
  bool string(json::string_t& value) { return Scalar(Kind::kString, &value); }
  bool binary(json::binary_t&) { return Fail("the answer holds binary data, which JSON cannot"); }
  bool key(json::string_t& name) {
    if (!Count()) return false;
    stack_.back().key = name.size() <= 64 ? name : std::string();  // DICOM JSON keys are short
    return true;
  }
  bool start_object(std::size_t) { return Open(/*object=*/true); }
  bool end_object() {
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) { return Open(/*object=*/false); }
  bool end_array() {
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception&) {
    if (error_.empty()) error_ = "the answer is not valid JSON (syntax error at byte " + std::to_string(position) + ")";
    return false;
  }

  const std::string& error() const { return error_; }
  std::vector<QidoDataset>& datasets() { return datasets_; }

 private:
  // What a container on the stack is, for the attributes we keep:
  // top array > dataset object > wanted attribute object > its "Value" array > a PN object.
  enum class Role { kTop, kDataset, kAttribute, kValues, kPersonName, kOther };
  enum class Kind { kObject, kArray, kString, kNumber, kOther };
  struct Frame {
    Role role;
    std::string key;  // objects: the key of the value being read
    std::uint64_t items = 0;  // arrays: values seen so far
  };

  bool Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    return false;
  }

  bool Count() {
    if (++elements_ > limits_.max_elements) {
      return Fail("the answer has more than " + std::to_string(limits_.max_elements) +
                  " JSON values and keys (the limit for one answer)");
    }
    return true;
  }

  bool IsWanted(const std::string& tag) const {
    return std::find(tags_.begin(), tags_.end(), tag) != tags_.end();
  }

  // Files a new value where it stands: returns the role it has if it is a container, keeps it
  // if it is the value of a wanted attribute, and checks the top-level shape.
  Expected<Role> Place(Kind kind, const std::string* text) {
    if (stack_.empty()) {
      if (kind == Kind::kArray) return Role::kTop;
      return MakeError(ErrorKind::kProtocol, "the answer is not a DICOM JSON array");
    }
    Frame& parent = stack_.back();
    const std::uint64_t index = parent.items++;
    switch (parent.role) {
      case Role::kTop:
        if (kind != Kind::kObject) return MakeError(ErrorKind::kProtocol, "an element of the answer is not an object");
        if (datasets_.size() >= limits_.max_datasets) {
          return MakeError(ErrorKind::kProtocol, "the answer lists more than " + std::to_string(limits_.max_datasets) +
                                                     " entries (the limit for one answer)");
        }
        datasets_.emplace_back();
        return Role::kDataset;
      case Role::kDataset:
        if (!IsWanted(parent.key)) return Role::kOther;
        tag_ = parent.key;
        datasets_.back().erase(tag_);  // a repeated attribute replaces the earlier one
        return kind == Kind::kObject ? Role::kAttribute : Role::kOther;
      case Role::kAttribute:
        if (parent.key != "Value") return Role::kOther;
        datasets_.back().erase(tag_);
        return kind == Kind::kArray ? Role::kValues : Role::kOther;
      case Role::kValues:
        if (index != 0) return Role::kOther;
        if (kind == Kind::kObject) return Role::kPersonName;  // PN: its "Alphabetic" form
        if (kind == Kind::kString || kind == Kind::kNumber) {
          if (auto kept = Keep(*text); !kept) return MakeError(kept.error());
        }
        return Role::kOther;
      case Role::kPersonName:
        if (parent.key != "Alphabetic") return Role::kOther;
        datasets_.back().erase(tag_);
        if (kind == Kind::kString) {
          if (auto kept = Keep(*text); !kept) return MakeError(kept.error());
        }
        return Role::kOther;
      case Role::kOther:
        return Role::kOther;
    }
    return Role::kOther;
  }

  bool Open(bool object) {
    if (!Count()) return false;
    if (stack_.size() >= limits_.max_depth) {
      return Fail("the answer nests arrays and objects deeper than " + std::to_string(limits_.max_depth) +
                  " levels (the limit for one answer)");
    }
    auto role = Place(object ? Kind::kObject : Kind::kArray, nullptr);
    if (!role) return Fail(role.error().message());
    stack_.push_back(Frame{*role, {}, 0});
    return true;
  }

  // A scalar value; `text` is its text when it is a string or a number.
  bool Scalar(Kind kind, const std::string* text) {
    if (!Count()) return false;
    auto role = Place(kind, text);
    if (!role) return Fail(role.error().message());
    return true;
  }

  Status Keep(const std::string& value) {
    if (value.size() > limits_.max_value_chars) {
      return MakeError(ErrorKind::kProtocol, "attribute " + tag_ + " has a value of " + std::to_string(value.size()) +
                                                 " characters, more than " + std::to_string(limits_.max_value_chars));
    }
    datasets_.back().insert_or_assign(tag_, value);
    return Ok();
  }

  const std::vector<std::string>& tags_;
  const JsonLimits& limits_;
  std::vector<Frame> stack_;
  std::vector<QidoDataset> datasets_;
  std::string tag_;  // the wanted attribute being read
  std::uint64_t elements_ = 0;
  std::string error_;
};

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

Expected<std::vector<std::string>> ParseMultipartRelated(const std::string& content_type, const std::string& body_text,
                                                         std::size_t max_parts) {
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
    // Checked before the part is copied: a body of millions of empty parts costs no memory.
    if (parts.size() >= max_parts) {
      return MakeError(ErrorKind::kProtocol, "multipart body has more than " + std::to_string(max_parts) + " parts");
    }
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

Expected<std::vector<QidoDataset>> ParseQidoDatasets(std::string_view body, const std::vector<std::string>& tags,
                                                     const JsonLimits& limits) {
  QidoSax sax(tags, limits);
  const bool parsed = nlohmann::json::sax_parse(body.begin(), body.end(), &sax, nlohmann::json::input_format_t::json,
                                                /*strict=*/true);
  if (!parsed) {
    return MakeError(ErrorKind::kProtocol, sax.error().empty() ? std::string("the answer is not valid JSON") : sax.error());
  }
  return std::move(sax.datasets());
}

Protocol::Protocol(std::string root, JsonLimits limits) : root_(std::move(root)), limits_(limits) {
  while (root_.ends_with('/')) root_.pop_back();
}

void Protocol::SetDeadline(std::chrono::steady_clock::time_point deadline, std::function<bool()> keep_going) {
  deadline_ = deadline;
  keep_going_ = std::move(keep_going);
}

Expected<PreparedGet> Protocol::Prepare(std::string what, std::string url, HeaderList headers,
                                        std::uint64_t max_bytes) const {
  if (std::chrono::steady_clock::now() >= deadline_) {
    return MakeError(ErrorKind::kNetwork, what + " " + RedactUrl(url) + " not started: the deadline has passed",
                     FailureClass::kTimeout);
  }
  PreparedGet get;
  get.what = std::move(what);
  get.url = std::move(url);
  get.request.url = get.url;
  get.request.headers = std::move(headers);
  // The HTTP layer checks both at every progress call (at least once a second, bytes moving or
  // not), so they bound the whole request, not just the silences the stall check sees.
  if (deadline_ != std::chrono::steady_clock::time_point::max()) get.request.deadline = deadline_;
  if (keep_going_) get.request.cancel = [keep_going = keep_going_] { return !keep_going(); };
  get.max_response_bytes = max_bytes;
  return get;
}

Status Protocol::CheckGet(const PreparedGet& get, const Expected<HttpResponse>& response) const {
  if (response) return Ok();
  if (response.error().failure() == FailureClass::kTimeout && std::chrono::steady_clock::now() >= deadline_) {
    return MakeError(ErrorKind::kNetwork,
                     get.what + " " + RedactUrl(get.url) +
                         " stopped: the answer did not arrive before the deadline (the server sends it too slowly or "
                         "not at all)",
                     FailureClass::kTimeout);
  }
  if (response.error().kind() == ErrorKind::kCancelled && keep_going_ && !keep_going_()) {
    return MakeError(ErrorKind::kCancelled, get.what + " " + RedactUrl(get.url) + " stopped: the agent is stopping");
  }
  return MakeError(response.error().WithContext(get.what));
}

// The entries of a QIDO-RS answer (none for 204 or an empty body).
Expected<std::vector<QidoDataset>> Protocol::ReadQido(const PreparedGet& get, const Expected<HttpResponse>& answer,
                                                      const std::vector<std::string>& tags) const {
  if (Status got = CheckGet(get, answer); !got) return MakeError(got.error());
  const HttpResponse* response = &*answer;
  if (response->status == 204) return std::vector<QidoDataset>{};
  if (response->status != 200) return StatusError(get.what, get.url, response->status);
  if (response->body.empty()) return std::vector<QidoDataset>{};
  auto datasets = ParseQidoDatasets(response->body, tags, limits_);
  if (!datasets) {
    return MakeError(ErrorKind::kProtocol, get.what + " " + RedactUrl(get.url) + ": " + datasets.error().message() +
                                               "; answer refused (limits in docs/results.md)");
  }
  return datasets;
}

namespace {
std::string Lookup(const QidoDataset& dataset, const char* tag) {
  const auto it = dataset.find(tag);
  return it == dataset.end() ? std::string() : it->second;
}
const std::vector<std::string>& SeriesTags() {
  static const std::vector<std::string> tags{"0020000E", "00080060", "00201209"};
  return tags;
}
const std::vector<std::string>& InstanceTags() {
  static const std::vector<std::string> tags{"00080018", "00080016"};
  return tags;
}
}  // namespace

Expected<PreparedGet> Protocol::SearchSeriesRequest(const std::string& study_uid) const {
  if (auto ok = CheckUid(study_uid, "the study"); !ok) return MakeError(ok.error());
  return Prepare("QIDO-RS search", root_ + "/studies/" + study_uid + "/series", {{"Accept", kDicomJson}},
                 kMaxQidoBytes);
}

Expected<std::vector<SeriesRef>> Protocol::ReadSearchSeries(const PreparedGet& get,
                                                            const Expected<HttpResponse>& response) const {
  auto datasets = ReadQido(get, response, SeriesTags());
  if (!datasets) return MakeError(datasets.error());
  const std::string url = RedactUrl(get.url);
  std::vector<SeriesRef> out;
  out.reserve(datasets->size());
  for (const auto& dataset : *datasets) {
    SeriesRef ref;
    ref.series_uid = Lookup(dataset, "0020000E");
    ref.modality = Lookup(dataset, "00080060");
    if (ref.series_uid.empty()) {
      return MakeError(ErrorKind::kProtocol, "QIDO-RS search " + url + ": a series has no SeriesInstanceUID");
    }
    const std::string count = Lookup(dataset, "00201209");
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

Expected<PreparedGet> Protocol::SearchInstancesRequest(const std::string& study_uid,
                                                       const std::string& series_uid) const {
  if (auto ok = CheckUid(study_uid, "the study"); !ok) return MakeError(ok.error());
  if (auto ok = CheckUid(series_uid, "the series"); !ok) return MakeError(ok.error());
  return Prepare("QIDO-RS search", root_ + "/studies/" + study_uid + "/series/" + series_uid + "/instances",
                 {{"Accept", kDicomJson}}, kMaxQidoBytes);
}

Expected<std::vector<InstanceRef>> Protocol::ReadSearchInstances(const PreparedGet& get,
                                                                 const Expected<HttpResponse>& response) const {
  auto datasets = ReadQido(get, response, InstanceTags());
  if (!datasets) return MakeError(datasets.error());
  std::vector<InstanceRef> out;
  out.reserve(datasets->size());
  for (const auto& dataset : *datasets) {
    InstanceRef ref{Lookup(dataset, "00080018"), Lookup(dataset, "00080016")};
    if (ref.sop_instance_uid.empty()) {
      return MakeError(ErrorKind::kProtocol,
                       "QIDO-RS search " + RedactUrl(get.url) + ": an instance has no SOPInstanceUID");
    }
    out.push_back(std::move(ref));
  }
  return out;
}

Expected<PreparedGet> Protocol::RetrieveRequest(const std::string& study_uid, const std::string& series_uid,
                                                const std::string& sop_instance_uid, std::uint64_t max_bytes) const {
  if (auto ok = CheckUid(study_uid, "the study"); !ok) return MakeError(ok.error());
  if (auto ok = CheckUid(series_uid, "the series"); !ok) return MakeError(ok.error());
  if (auto ok = CheckUid(sop_instance_uid, "the instance"); !ok) return MakeError(ok.error());
  auto get = Prepare("WADO-RS retrieve",
                     root_ + "/studies/" + study_uid + "/series/" + series_uid + "/instances/" + sop_instance_uid,
                     {{"Accept", "multipart/related; type=\"application/dicom\""}}, max_bytes + kMultipartOverhead);
  if (get) get->max_instance_bytes = max_bytes;
  return get;
}

Expected<std::vector<std::uint8_t>> Protocol::ReadRetrieve(const PreparedGet& get,
                                                           const Expected<HttpResponse>& answer,
                                                           bool* over_limit) const {
  if (over_limit != nullptr) *over_limit = false;
  const std::string shown = RedactUrl(get.url);
  if (Status got = CheckGet(get, answer); !got) {
    // The HTTP layer's only kProtocol error is a body over the cap it was given.
    if (got.error().kind() == ErrorKind::kProtocol && over_limit != nullptr) *over_limit = true;
    return MakeError(got.error());
  }
  const HttpResponse* response = &*answer;
  if (response->status != 200) return StatusError(get.what, get.url, response->status);
  // One instance was asked for: a second part is refused before it is copied.
  auto parts = ParseMultipartRelated(response->Header("Content-Type"), response->body, 1);
  if (!parts) return MakeError(parts.error().WithContext("WADO-RS retrieve " + shown + " (expected exactly one instance)"));
  if (parts->size() != 1) {
    return MakeError(ErrorKind::kProtocol, "WADO-RS retrieve " + shown + ": expected exactly one instance, got " +
                                               std::to_string(parts->size()) + " parts");
  }
  const std::string& part = parts->front();
  if (part.size() > get.max_instance_bytes) {
    if (over_limit != nullptr) *over_limit = true;
    return MakeError(ErrorKind::kProtocol, "WADO-RS retrieve " + shown + ": the instance has " +
                                               std::to_string(part.size()) + " bytes, more than the limit of " +
                                               std::to_string(get.max_instance_bytes));
  }
  return std::vector<std::uint8_t>(part.begin(), part.end());
}

Client::Client(HttpClient& http, std::string root, JsonLimits limits)
    : http_(http), protocol_(std::move(root), limits) {}

void Client::SetDeadline(std::chrono::steady_clock::time_point deadline, std::function<bool()> keep_going) {
  protocol_.SetDeadline(deadline, std::move(keep_going));
}

Expected<HttpResponse> Client::Send(const PreparedGet& get) {
  return http_.Perform(get.request, get.max_response_bytes);
}

Expected<std::vector<SeriesRef>> Client::SearchSeries(const std::string& study_uid) {
  auto get = protocol_.SearchSeriesRequest(study_uid);
  if (!get) return MakeError(get.error());
  auto response = Send(*get);
  return protocol_.ReadSearchSeries(*get, response);
}

Expected<std::vector<InstanceRef>> Client::SearchInstances(const std::string& study_uid,
                                                           const std::string& series_uid) {
  auto get = protocol_.SearchInstancesRequest(study_uid, series_uid);
  if (!get) return MakeError(get.error());
  auto response = Send(*get);
  return protocol_.ReadSearchInstances(*get, response);
}

Expected<std::vector<std::uint8_t>> Client::RetrieveInstance(const std::string& study_uid,
                                                             const std::string& series_uid,
                                                             const std::string& sop_instance_uid,
                                                             std::uint64_t max_bytes, bool* over_limit) {
  if (over_limit != nullptr) *over_limit = false;
  auto get = protocol_.RetrieveRequest(study_uid, series_uid, sop_instance_uid, max_bytes);
  if (!get) return MakeError(get.error());
  auto response = Send(*get);
  return protocol_.ReadRetrieve(*get, response, over_limit);
}

}  // namespace ctagent::transport::dicomweb
