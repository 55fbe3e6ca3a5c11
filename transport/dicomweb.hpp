// DICOMweb client: QIDO-RS search and WADO-RS retrieve (PS3.18), as the results path needs.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.hpp"
#include "transport/http.hpp"

namespace ctagent::transport::dicomweb {

struct SeriesRef {
  std::string series_uid;
  std::string modality;
  std::uint32_t instance_count = 0;  // 0 when the server does not report it
};

struct InstanceRef {
  std::string sop_instance_uid;
  std::string sop_class_uid;
};

// Limits for JSON that comes from the network (docs/results.md, "Limits"). A QIDO-RS answer is
// parsed as a stream of SAX events and refused at the first event past a limit, so a hostile
// answer under the 64 MiB body cap (deep nesting, millions of empty objects, huge arrays) costs
// bounded memory: only the few attributes the agent reads are kept, never a document tree.
struct JsonLimits {
  std::uint32_t max_depth = 32;            // nested arrays and objects (DICOM JSON needs 5 + 3 per sequence)
  std::uint64_t max_elements = 1'000'000;  // values and object keys in the whole answer
  std::uint32_t max_datasets = 100'000;    // entries of the top-level array (series or instances)
  std::uint32_t max_value_chars = 1024;    // one kept attribute value (UIDs have at most 64)
};

// One entry of a QIDO-RS answer reduced to the attributes asked for: tag (e.g. "0020000E") ->
// its first value as text, as JsonTagString reads it from a parsed document (absent where that
// gives ""; a repeated key replaces the earlier one, as in a document).
using QidoDataset = std::map<std::string, std::string>;

// Parses a QIDO-RS answer (a DICOM JSON array of objects, PS3.18 F.2) under `limits`, keeping
// the first value of each of `tags` per entry. Errors (kProtocol) say which limit or which part
// of the format was broken; the caller adds the URL.
Expected<std::vector<QidoDataset>> ParseQidoDatasets(std::string_view body, const std::vector<std::string>& tags,
                                                     const JsonLimits& limits = {});

// One DICOMweb GET as both clients send it: built by Protocol, sent by the caller's HTTP engine
// (HttpClient::Perform or AsyncHttp::Start), and its answer read by Protocol again.
struct PreparedGet {
  std::string what;  // names the request in errors: "QIDO-RS search", "WADO-RS retrieve"
  std::string url;
  HttpRequest request;  // url, Accept, and the deadline and cancel check of SetDeadline
  std::uint64_t max_response_bytes = 0;
  std::uint64_t max_instance_bytes = 0;  // WADO-RS: the cap asked for (the answer may add framing)
};

// How DICOMweb requests are built and their answers read, shared by the blocking Client and the
// AsyncClient (dicomweb_async.hpp) so both send the same requests and give the same errors.
// Holds no connection and does no I/O.
class Protocol {
 public:
  // `root`: e.g. https://127.0.0.1:8042/dicom-web (no trailing slash needed)
  explicit Protocol(std::string root, JsonLimits limits = {});

  // Every later request ends (kNetwork, "deadline") once `deadline` passes, and (kCancelled)
  // as soon as `keep_going` returns false (HttpRequest::deadline and ::cancel, checked at least
  // once a second while a request runs); one built after the deadline is refused unsent.
  void SetDeadline(std::chrono::steady_clock::time_point deadline, std::function<bool()> keep_going = {});

  // QIDO-RS GET {root}/studies/{study}/series. An unknown study is an empty list, not an error.
  Expected<PreparedGet> SearchSeriesRequest(const std::string& study_uid) const;
  Expected<std::vector<SeriesRef>> ReadSearchSeries(const PreparedGet& get,
                                                    const Expected<HttpResponse>& response) const;
  // QIDO-RS GET {root}/studies/{study}/series/{series}/instances
  Expected<PreparedGet> SearchInstancesRequest(const std::string& study_uid, const std::string& series_uid) const;
  Expected<std::vector<InstanceRef>> ReadSearchInstances(const PreparedGet& get,
                                                         const Expected<HttpResponse>& response) const;
  // WADO-RS GET {root}/studies/{s}/series/{se}/instances/{i}: the instance's DICOM Part 10 bytes.
  // An instance over `max_bytes` is refused (kProtocol) and `*over_limit` (if given) set to true.
  Expected<PreparedGet> RetrieveRequest(const std::string& study_uid, const std::string& series_uid,
                                        const std::string& sop_instance_uid, std::uint64_t max_bytes) const;
  Expected<std::vector<std::uint8_t>> ReadRetrieve(const PreparedGet& get, const Expected<HttpResponse>& response,
                                                   bool* over_limit = nullptr) const;

 private:
  Expected<PreparedGet> Prepare(std::string what, std::string url, HeaderList headers, std::uint64_t max_bytes) const;
  // Ok when a response arrived; else the error with the deadline and stop told apart, and
  // `what` added to other errors; each keeps its failure class (Error::failure()). (The
  // response is read in place: a body is never copied.)
  Status CheckGet(const PreparedGet& get, const Expected<HttpResponse>& response) const;
  Expected<std::vector<QidoDataset>> ReadQido(const PreparedGet& get, const Expected<HttpResponse>& response,
                                              const std::vector<std::string>& tags) const;

  std::string root_;
  JsonLimits limits_;
  std::chrono::steady_clock::time_point deadline_ = std::chrono::steady_clock::time_point::max();
  std::function<bool()> keep_going_;
};

// The blocking client: Protocol's requests sent with HttpClient::Perform on the caller's thread
// (ctagent check's DICOMweb probe). The results fetch uses AsyncClient.
class Client {
 public:
  // `root`: e.g. https://127.0.0.1:8042/dicom-web (no trailing slash needed)
  Client(HttpClient& http, std::string root, JsonLimits limits = {});

  // As Protocol::SetDeadline: a server that trickles its answer cannot hold the caller past it.
  void SetDeadline(std::chrono::steady_clock::time_point deadline, std::function<bool()> keep_going = {});

  // QIDO-RS GET {root}/studies/{study}/series. An unknown study is an empty list, not an error.
  Expected<std::vector<SeriesRef>> SearchSeries(const std::string& study_uid);
  // QIDO-RS GET {root}/studies/{study}/series/{series}/instances
  Expected<std::vector<InstanceRef>> SearchInstances(const std::string& study_uid, const std::string& series_uid);
  // WADO-RS GET {root}/studies/{s}/series/{se}/instances/{i}: the instance's DICOM Part 10 bytes.
  // An instance over `max_bytes` is refused (kProtocol) and `*over_limit` (if given) set to
  // true; the download stops there.
  Expected<std::vector<std::uint8_t>> RetrieveInstance(const std::string& study_uid, const std::string& series_uid,
                                                       const std::string& sop_instance_uid,
                                                       std::uint64_t max_bytes, bool* over_limit = nullptr);

 private:
  Expected<HttpResponse> Send(const PreparedGet& get);

  HttpClient& http_;
  Protocol protocol_;
};

// Splits a multipart/related body into its parts' bodies. `content_type` is the response's
// Content-Type header (the boundary is taken from it). More than `max_parts` parts is an error
// (kProtocol), found before any part past the limit is copied.
Expected<std::vector<std::string>> ParseMultipartRelated(const std::string& content_type, const std::string& body,
                                                         std::size_t max_parts = 10'000);

// Reads a DICOM JSON attribute value (PS3.18 F.2) as a string, e.g. Tag "0020000E"; "" if absent.
std::string JsonTagString(const nlohmann::json& dataset, const std::string& tag);

}  // namespace ctagent::transport::dicomweb
