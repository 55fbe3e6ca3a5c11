#include "base/retry.hpp"

namespace ctagent {

const RetryTable& DefaultRetryTable() {
  using std::chrono::milliseconds;
  static const RetryTable table = [] {
    const ClassRetry permanent{milliseconds(0), milliseconds(0), 1, true};
    return RetryTable{
        {FailureClass::kDns, {milliseconds(2000), milliseconds(60000), 10, false}},
        {FailureClass::kConnect, {milliseconds(1000), milliseconds(30000), 10, false}},
        {FailureClass::kTlsHandshake, {milliseconds(1000), milliseconds(30000), 6, false}},
        {FailureClass::kTlsRejected, permanent},
        // A wall clock that jumped back (or a dead RTC battery) until NTP corrects it.
        {FailureClass::kClockSkew, {milliseconds(5000), milliseconds(60000), 10, false}},
        {FailureClass::kStall, {milliseconds(1000), milliseconds(30000), 10, false}},
        // A request past its overall deadline (an answer trickling in, a link far below the floor
        // rate) already waited connect + stall + its bytes at the floor rate: transient, but a few
        // attempts only, so a scan against such a server ends on its own within about three
        // deadlines, its data in the spool for the next run.
        {FailureClass::kTimeout, {milliseconds(1000), milliseconds(30000), 3, false}},
        {FailureClass::kConnectionLost, {milliseconds(500), milliseconds(30000), 10, false}},
        {FailureClass::kServerError, {milliseconds(2000), milliseconds(60000), 8, false}},
        // 409 and 460 are first handled inside the tus client (HEAD + resume, resend); what
        // reaches the job is a repeated failure, retried soon and a few times.
        {FailureClass::kConflict, {milliseconds(200), milliseconds(5000), 5, false}},
        {FailureClass::kLocked, {milliseconds(1000), milliseconds(30000), 10, false}},
        {FailureClass::kChecksum, {milliseconds(200), milliseconds(5000), 5, false}},
        {FailureClass::kUploadGone, {milliseconds(200), milliseconds(5000), 3, false}},
        {FailureClass::kAuth, permanent},
        {FailureClass::kVersion, permanent},
        {FailureClass::kTooLarge, permanent},
        {FailureClass::kEndpoint, permanent},
        {FailureClass::kProtocol, {milliseconds(2000), milliseconds(30000), 3, false}},
        {FailureClass::kLinkDown, {milliseconds(1000), milliseconds(30000), 20, false}},
        {FailureClass::kCancelled, permanent},
        {FailureClass::kLocal, permanent},
        {FailureClass::kNone, permanent},
    };
  }();
  return table;
}

const RetryPolicy& RetryPolicy::Shared() {
  static const RetryPolicy policy;
  return policy;
}

std::string PermanentAdvice(FailureClass failure) {
  switch (failure) {
    case FailureClass::kTlsRejected:
      return "TLS was refused (certificate, host name, pin or client certificate): fix the certificate or "
             "cloud.tls settings";
    case FailureClass::kAuth:
      return "the imaging center refused this terminal: fix its credentials or client certificate";
    case FailureClass::kVersion:
      return "the server does not speak tus 1.0.0: the imaging center must update its endpoint";
    case FailureClass::kTooLarge:
      return "the upload is larger than the server accepts: raise the server's limit or lower the chunk size";
    case FailureClass::kEndpoint:
      return "the endpoint does not exist or is not the expected service: fix its address in the configuration "
             "(cloud.upload_url for uploads, cloud.dicomweb_url for results)";
    default:
      return "";
  }
}

}  // namespace ctagent
