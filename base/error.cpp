#include "base/error.hpp"

#include "base/retry.hpp"

namespace ctagent {

const char* ToString(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidInput: return "invalid input";
    case ErrorKind::kIo: return "I/O error";
    case ErrorKind::kCorrupt: return "corrupt data";
    case ErrorKind::kNoSpace: return "no space";
    case ErrorKind::kNetwork: return "network error";
    case ErrorKind::kTls: return "TLS error";
    case ErrorKind::kProtocol: return "protocol error";
    case ErrorKind::kNotFound: return "not found";
    case ErrorKind::kPermission: return "permission denied";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kCancelled: return "cancelled";
    case ErrorKind::kBusy: return "busy";
    case ErrorKind::kInternal: return "internal error";
  }
  return "unknown error";
}

const char* ToString(FailureClass failure) {
  switch (failure) {
    case FailureClass::kNone: return "none";
    case FailureClass::kDns: return "dns";
    case FailureClass::kConnect: return "connect";
    case FailureClass::kTlsHandshake: return "tls-handshake";
    case FailureClass::kTlsRejected: return "tls-rejected";
    case FailureClass::kClockSkew: return "clock-skew";
    case FailureClass::kStall: return "stall";
    case FailureClass::kTimeout: return "timeout";
    case FailureClass::kConnectionLost: return "connection-lost";
    case FailureClass::kServerError: return "http-5xx";
    case FailureClass::kConflict: return "http-409";
    case FailureClass::kLocked: return "http-423";
    case FailureClass::kChecksum: return "http-460";
    case FailureClass::kUploadGone: return "upload-gone";
    case FailureClass::kAuth: return "http-401/403";
    case FailureClass::kVersion: return "http-412";
    case FailureClass::kTooLarge: return "http-413";
    case FailureClass::kEndpoint: return "endpoint-missing";
    case FailureClass::kProtocol: return "protocol";
    case FailureClass::kLinkDown: return "link-down";
    case FailureClass::kCancelled: return "cancelled";
    case FailureClass::kLocal: return "local";
  }
  return "unknown";
}

bool Error::IsTransient() const { return !RetryPolicy::Shared().For(failure_).permanent; }

}  // namespace ctagent
