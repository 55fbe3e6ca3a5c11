// The DICOMweb client on AsyncHttp: the same QIDO-RS and WADO-RS requests and the same reading of
// their answers as the blocking dicomweb::Client (both use dicomweb::Protocol, dicomweb.hpp), but
// every request runs on the event loop and completes there, so the results of many scans are
// searched and retrieved on one thread. Call everything on the loop's thread.
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/error.hpp"
#include "transport/dicomweb.hpp"
#include "transport/http_async.hpp"

namespace ctagent::transport::dicomweb {

// A completion: always called on the event loop, never from inside the call that started it.
template <typename T>
using AsyncDone = std::function<void(Expected<T>)>;
// A retrieve's completion; `over_limit` as for Client::RetrieveInstance.
using RetrieveDone = std::function<void(Expected<std::vector<std::uint8_t>>, bool over_limit)>;

class AsyncClient {
 public:
  // `io`: the loop `http` runs on (requests refused before sending complete there too). `http`
  // must outlive every request started here. `root`: e.g. https://127.0.0.1:8042/dicom-web.
  AsyncClient(boost::asio::io_context& io, AsyncHttp& http, std::string root, JsonLimits limits = {});

  // As Client::SetDeadline, for the requests started after it.
  void SetDeadline(std::chrono::steady_clock::time_point deadline, std::function<bool()> keep_going = {});

  // Each returns the request's id for AsyncHttp::Cancel (0 when it was refused before sending:
  // an invalid UID, a passed deadline; the completion gets the error all the same).
  // QIDO-RS GET {root}/studies/{study}/series. An unknown study is an empty list, not an error.
  AsyncHttp::RequestId SearchSeries(const std::string& study_uid, AsyncDone<std::vector<SeriesRef>> done);
  // QIDO-RS GET {root}/studies/{study}/series/{series}/instances
  AsyncHttp::RequestId SearchInstances(const std::string& study_uid, const std::string& series_uid,
                                       AsyncDone<std::vector<InstanceRef>> done);
  // WADO-RS GET of one instance's DICOM Part 10 bytes, refused (kProtocol, over_limit) past
  // `max_bytes`; the download stops there.
  AsyncHttp::RequestId RetrieveInstance(const std::string& study_uid, const std::string& series_uid,
                                        const std::string& sop_instance_uid, std::uint64_t max_bytes,
                                        RetrieveDone done);

 private:
  // Sends `get` and hands its answer, read by `read` against the protocol as it was when the
  // request was built, to the completion.
  using Reader = std::function<void(const Protocol&, const PreparedGet&, Expected<HttpResponse>)>;
  AsyncHttp::RequestId Send(Expected<PreparedGet> get, Reader read, std::function<void(const Error&)> refused);

  boost::asio::io_context& io_;
  AsyncHttp& http_;
  std::shared_ptr<Protocol> protocol_;  // replaced (not changed) by SetDeadline: requests in flight keep theirs
};

}  // namespace ctagent::transport::dicomweb
