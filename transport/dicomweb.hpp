// DICOMweb client: QIDO-RS search and WADO-RS retrieve (PS3.18), as the results path needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/common/error.hpp"
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

class Client {
 public:
  // `root`: e.g. https://127.0.0.1:8042/dicom-web (no trailing slash needed)
  Client(HttpClient& http, std::string root);

  // QIDO-RS GET {root}/studies/{study}/series. An unknown study is an empty list, not an error.
  Expected<std::vector<SeriesRef>> SearchSeries(const std::string& study_uid);
  // QIDO-RS GET {root}/studies/{study}/series/{series}/instances
  Expected<std::vector<InstanceRef>> SearchInstances(const std::string& study_uid, const std::string& series_uid);
  // WADO-RS GET {root}/studies/{s}/series/{se}/instances/{i}: the instance's DICOM Part 10 bytes.
  Expected<std::vector<std::uint8_t>> RetrieveInstance(const std::string& study_uid, const std::string& series_uid,
                                                       const std::string& sop_instance_uid,
                                                       std::uint64_t max_bytes);

 private:
  HttpClient& http_;
  std::string root_;
};

// Splits a multipart/related body into its parts' bodies. `content_type` is the response's
// Content-Type header (the boundary is taken from it).
Expected<std::vector<std::string>> ParseMultipartRelated(const std::string& content_type, const std::string& body);

// Reads a DICOM JSON attribute value (PS3.18 F.2) as a string, e.g. Tag "0020000E"; "" if absent.
std::string JsonTagString(const nlohmann::json& dataset, const std::string& tag);

}  // namespace ctagent::transport::dicomweb
