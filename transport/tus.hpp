// tus 1.0 resumable upload client (core protocol + creation extension).
// Resume policy (journaling the URL first, re-creating forgotten uploads) is the caller's:
// see agent/core/uploader.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "agent/common/error.hpp"
#include "transport/http.hpp"

namespace ctagent::transport::tus {

using Metadata = std::vector<std::pair<std::string, std::string>>;  // values are base64-encoded on the wire

// Encodes Upload-Metadata: "key base64(value),key2 base64(value2)". Pairs with an invalid key
// (empty, non-ASCII, space or comma) are left out; Client::Create refuses them with kInvalidInput.
std::string EncodeMetadata(const Metadata& metadata);
std::string Base64Encode(std::span<const std::uint8_t> bytes);

class Client {
 public:
  // `endpoint`: the creation URL, e.g. https://127.0.0.1:1080/files/
  Client(HttpClient& http, std::string endpoint);

  // POST: creates an upload of `length` bytes; returns its absolute URL.
  Expected<std::string> Create(std::uint64_t length, const Metadata& metadata);
  // HEAD: the server's offset for an upload. kNotFound when the server no longer knows it
  // (404, 410), which means: create it again.
  Expected<std::uint64_t> QueryOffset(const std::string& upload_url);
  // PATCH: sends `bytes` at `offset`; returns the new offset the server reports.
  // 409 (offset mismatch) comes back as kProtocol naming our offset (and the server's when it
  // sends one) and asking to query the offset again.
  Expected<std::uint64_t> Patch(const std::string& upload_url, std::uint64_t offset,
                                std::span<const std::uint8_t> bytes);
  // Sends data[offset..] in PATCH requests of at most `patch_bytes`; calls on_progress with
  // the confirmed offset after each request. Returns the final offset (== data.size()).
  Expected<std::uint64_t> UploadFrom(const std::string& upload_url, std::span<const std::uint8_t> data,
                                     std::uint64_t offset, std::uint64_t patch_bytes,
                                     const std::function<void(std::uint64_t)>& on_progress = {});

 private:
  HttpClient& http_;
  std::string endpoint_;
};

}  // namespace ctagent::transport::tus
