#include "base/error.hpp"

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

}  // namespace ctagent
