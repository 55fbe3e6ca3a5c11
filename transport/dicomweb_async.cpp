// The DICOMweb client on AsyncHttp: requests built and answers read by dicomweb::Protocol (shared
// with the blocking Client), sent on the event loop.
#include "transport/dicomweb_async.hpp"

#include <boost/asio/post.hpp>

#include <utility>

namespace ctagent::transport::dicomweb {

AsyncClient::AsyncClient(boost::asio::io_context& io, AsyncHttp& http, std::string root, JsonLimits limits)
    : io_(io), http_(http), protocol_(std::make_shared<Protocol>(std::move(root), limits)) {}

void AsyncClient::SetDeadline(std::chrono::steady_clock::time_point deadline, std::function<bool()> keep_going) {
  auto next = std::make_shared<Protocol>(*protocol_);
  next->SetDeadline(deadline, std::move(keep_going));
  protocol_ = std::move(next);
}

AsyncHttp::RequestId AsyncClient::Send(Expected<PreparedGet> get, Reader read,
                                       std::function<void(const Error&)> refused) {
  if (!get) {
    boost::asio::post(io_, [refused = std::move(refused), error = get.error()] { refused(error); });
    return 0;
  }
  auto prepared = std::make_shared<const PreparedGet>(std::move(*get));
  AsyncRequest request;
  request.request = prepared->request;
  request.max_response_bytes = prepared->max_response_bytes;
  return http_.Start(std::move(request), [protocol = protocol_, prepared, read = std::move(read)](
                                             Expected<HttpResponse> response) {
    read(*protocol, *prepared, std::move(response));
  });
}

AsyncHttp::RequestId AsyncClient::SearchSeries(const std::string& study_uid, AsyncDone<std::vector<SeriesRef>> done) {
  auto shared = std::make_shared<AsyncDone<std::vector<SeriesRef>>>(std::move(done));
  return Send(
      protocol_->SearchSeriesRequest(study_uid),
      [shared](const Protocol& protocol, const PreparedGet& get, Expected<HttpResponse> response) {
        (*shared)(protocol.ReadSearchSeries(get, response));
      },
      [shared](const Error& error) { (*shared)(MakeError(error)); });
}

AsyncHttp::RequestId AsyncClient::SearchInstances(const std::string& study_uid, const std::string& series_uid,
                                                  AsyncDone<std::vector<InstanceRef>> done) {
  auto shared = std::make_shared<AsyncDone<std::vector<InstanceRef>>>(std::move(done));
  return Send(
      protocol_->SearchInstancesRequest(study_uid, series_uid),
      [shared](const Protocol& protocol, const PreparedGet& get, Expected<HttpResponse> response) {
        (*shared)(protocol.ReadSearchInstances(get, response));
      },
      [shared](const Error& error) { (*shared)(MakeError(error)); });
}

AsyncHttp::RequestId AsyncClient::RetrieveInstance(const std::string& study_uid, const std::string& series_uid,
                                                   const std::string& sop_instance_uid, std::uint64_t max_bytes,
                                                   RetrieveDone done) {
  auto shared = std::make_shared<RetrieveDone>(std::move(done));
  return Send(
      protocol_->RetrieveRequest(study_uid, series_uid, sop_instance_uid, max_bytes),
      [shared](const Protocol& protocol, const PreparedGet& get, Expected<HttpResponse> response) {
        bool over_limit = false;
        auto bytes = protocol.ReadRetrieve(get, response, &over_limit);
        (*shared)(std::move(bytes), over_limit);
      },
      [shared](const Error& error) { (*shared)(MakeError(error), false); });
}

}  // namespace ctagent::transport::dicomweb
