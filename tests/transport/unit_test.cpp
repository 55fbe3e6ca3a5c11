// Unit tests: base64 (RFC 4648 vectors), tus Upload-Metadata, URL resolution, multipart parsing,
// DICOM JSON attribute reading. No network.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "transport/dicomweb.hpp"
#include "transport/http.hpp"
#include "transport/tus.hpp"

namespace {

using ctagent::ErrorKind;
namespace tus = ctagent::transport::tus;
namespace dicomweb = ctagent::transport::dicomweb;

std::string B64(const std::string& text) {
  return tus::Base64Encode(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

const std::string kDicomType = "multipart/related; type=\"application/dicom\"; boundary=XyZ";

}  // namespace

TEST_CASE("Base64Encode matches the RFC 4648 test vectors", "[transport][unit]") {
  CHECK(B64("") == "");
  CHECK(B64("f") == "Zg==");
  CHECK(B64("fo") == "Zm8=");
  CHECK(B64("foo") == "Zm9v");
  CHECK(B64("foob") == "Zm9vYg==");
  CHECK(B64("fooba") == "Zm9vYmE=");
  CHECK(B64("foobar") == "Zm9vYmFy");
  // The last two alphabet characters and all-zero bytes.
  const std::vector<std::uint8_t> high{0xfb, 0xff, 0xbf};
  CHECK(tus::Base64Encode(high) == "+/+/");
  const std::vector<std::uint8_t> zeros{0, 0, 0, 0};
  CHECK(tus::Base64Encode(zeros) == "AAAAAA==");
}

TEST_CASE("EncodeMetadata follows the tus Upload-Metadata syntax", "[transport][unit]") {
  // The example of the tus 1.0 creation extension.
  CHECK(tus::EncodeMetadata({{"filename", "world_domination_plan.pdf"}, {"is_confidential", ""}}) ==
        "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential");
  CHECK(tus::EncodeMetadata({}) == "");
  CHECK(tus::EncodeMetadata({{"kind", "chunk"}, {"chunk_index", "7"}}) == "kind Y2h1bms=,chunk_index Nw==");
  // Keys that would change how the server splits the header are never sent.
  CHECK(tus::EncodeMetadata({{"bad key", "x"}, {"a,b", "x"}, {"", "x"}, {"ok", "x"}}) == "ok eA==");
}

TEST_CASE("tus Create refuses invalid metadata keys before any request", "[transport][unit]") {
  ctagent::transport::HttpClient http({});
  // Port 9 on loopback: nothing would answer, so an error other than kInvalidInput means a request was made.
  tus::Client client(http, "https://127.0.0.1:9/files/");
  for (const std::string key : {"has space", "has,comma", "", "caf\xc3\xa9"}) {
    auto created = client.Create(10, {{key, "value"}});
    REQUIRE_FALSE(created);
    CHECK(created.error().kind() == ErrorKind::kInvalidInput);
  }
  auto duplicate = client.Create(10, {{"kind", "a"}, {"kind", "b"}});
  REQUIRE_FALSE(duplicate);
  CHECK(duplicate.error().kind() == ErrorKind::kInvalidInput);
}

TEST_CASE("ResolveUrl resolves Location headers against the request URL", "[transport][unit]") {
  using ctagent::transport::ResolveUrl;
  CHECK(ResolveUrl("https://h:1/files/", "https://other:2/x/y") == "https://other:2/x/y");
  CHECK(ResolveUrl("https://h:1/files/", "/files/abc") == "https://h:1/files/abc");
  CHECK(ResolveUrl("https://h:1/files/", "abc") == "https://h:1/files/abc");
  CHECK(ResolveUrl("https://h:1/files", "abc") == "https://h:1/abc");
  CHECK(ResolveUrl("https://h:1", "abc") == "https://h:1/abc");
  CHECK(ResolveUrl("https://h:1", "/abc") == "https://h:1/abc");
  CHECK(ResolveUrl("https://h:1/a/b/c?q=1", "../d") == "https://h:1/a/d");
  CHECK(ResolveUrl("https://h:1/a/b/c", "./d?x=/../y") == "https://h:1/a/b/d?x=/../y");
  CHECK(ResolveUrl("https://h:1/files/?a=b", "x") == "https://h:1/files/x");
  CHECK(ResolveUrl("https://h:1/files/", "//cdn.example/x") == "https://cdn.example/x");
  CHECK(ResolveUrl("https://h:1/files/", "") == "https://h:1/files/");
}

TEST_CASE("ParseMultipartRelated returns the part of a well-formed body", "[transport][unit]") {
  // Binary content with CR, LF, NUL and dashes that are not a delimiter.
  const std::string content = std::string("DICM\0\r\n--Xy\r\n-\x01\xff", 16);
  const std::string body = "--XyZ\r\nContent-Type: application/dicom\r\nContent-Length: 16\r\n\r\n" + content +
                           "\r\n--XyZ--\r\n";
  auto parts = dicomweb::ParseMultipartRelated(kDicomType, body);
  REQUIRE(parts);
  REQUIRE(parts->size() == 1);
  CHECK(parts->front() == content);
}

TEST_CASE("ParseMultipartRelated handles quoted boundaries, preambles, padding and header-less parts",
          "[transport][unit]") {
  auto quoted = dicomweb::ParseMultipartRelated("Multipart/Related; boundary=\"a b:c=d\"; type=application/dicom",
                                                "preamble\r\n--a b:c=d  \r\n\r\nPAYLOAD\r\n--a b:c=d--");
  REQUIRE(quoted);
  REQUIRE(quoted->size() == 1);
  CHECK(quoted->front() == "PAYLOAD");

  auto two = dicomweb::ParseMultipartRelated(kDicomType,
                                             "--XyZ\r\nContent-Type: application/dicom\r\n\r\none\r\n"
                                             "--XyZ\r\nContent-Type: application/dicom\r\n\r\ntwo\r\n--XyZ--\r\nepilogue");
  REQUIRE(two);
  REQUIRE(two->size() == 2);
  CHECK((*two)[0] == "one");
  CHECK((*two)[1] == "two");

  auto empty_part = dicomweb::ParseMultipartRelated(kDicomType, "--XyZ\r\n\r\n\r\n--XyZ--");
  REQUIRE(empty_part);
  REQUIRE(empty_part->size() == 1);
  CHECK(empty_part->front().empty());
}

TEST_CASE("ParseMultipartRelated rejects malformed bodies with kProtocol", "[transport][unit]") {
  struct Case {
    const char* what;
    std::string content_type;
    std::string body;
  };
  const std::vector<Case> cases = {
      {"missing boundary", "multipart/related; type=\"application/dicom\"", "--XyZ\r\n\r\nx\r\n--XyZ--"},
      {"not multipart", "application/dicom", "--XyZ\r\n\r\nx\r\n--XyZ--"},
      {"unterminated quote", "multipart/related; boundary=\"XyZ", "--XyZ\r\n\r\nx\r\n--XyZ--"},
      {"boundary too long", "multipart/related; boundary=" + std::string(71, 'a'), "x"},
      {"truncated content", kDicomType, "--XyZ\r\nContent-Type: application/dicom\r\n\r\nDICM-and-then-noth"},
      {"truncated headers", kDicomType, "--XyZ\r\nContent-Type: appl"},
      {"truncated after boundary", kDicomType, "--XyZ"},
      {"truncated after a part", kDicomType, "--XyZ\r\n\r\nx\r\n--XyZ"},
      {"garbage", kDicomType, "this is not a multipart body at all"},
      {"empty body", kDicomType, ""},
      {"boundary not followed by CRLF", kDicomType, "--XyZjunk\r\n\r\nx\r\n--XyZ--"},
      {"header line without colon", kDicomType, "--XyZ\r\nnot a header\r\n\r\nx\r\n--XyZ--"},
      {"wrong part type", kDicomType, "--XyZ\r\nContent-Type: text/html\r\n\r\nx\r\n--XyZ--"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto parts = dicomweb::ParseMultipartRelated(c.content_type, c.body);
    REQUIRE_FALSE(parts);
    CHECK(parts.error().kind() == ErrorKind::kProtocol);
    CHECK_FALSE(parts.error().message().empty());
  }
}

TEST_CASE("JsonTagString reads DICOM JSON values", "[transport][unit]") {
  const auto dataset = nlohmann::json::parse(R"({
    "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]},
    "00201209": {"vr": "IS", "Value": [42]},
    "00080060": {"vr": "CS"},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    "00081030": {"vr": "LO", "Value": []}
  })");
  CHECK(dicomweb::JsonTagString(dataset, "0020000E") == "1.2.3.4");
  CHECK(dicomweb::JsonTagString(dataset, "00201209") == "42");
  CHECK(dicomweb::JsonTagString(dataset, "00080060") == "");
  CHECK(dicomweb::JsonTagString(dataset, "00100010") == "Doe^Jane");
  CHECK(dicomweb::JsonTagString(dataset, "00081030") == "");
  CHECK(dicomweb::JsonTagString(dataset, "7FE00010") == "");
  CHECK(dicomweb::JsonTagString(nlohmann::json::array(), "0020000E") == "");
}
