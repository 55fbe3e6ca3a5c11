// Errors are values at module boundaries: one Error type, Expected<T> for results.
// A message names what failed, on what (file, URL, key, scan) and, where known, what to do next.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace ctagent {

enum class ErrorKind {
  kInvalidInput,  // bad configuration, arguments or data supplied by a person or a peer
  kIo,            // local file system or device failure
  kCorrupt,       // data failed a checksum or structural check
  kNoSpace,       // disk budget or free space exhausted
  kNetwork,       // transient transport failure (DNS, connect, reset, timeout): retry later
  kTls,           // TLS handshake or certificate failure: needs a person, not a retry
  kProtocol,      // the peer answered something the contract does not allow
  kNotFound,      // the peer or file system does not know the thing asked for
  kPermission,    // authentication or authorisation refused
  kUnsupported,   // a version or feature this build does not handle
  kCancelled,     // stopped on request
  kBusy,          // another process holds the resource (the spool): wait for it or stop it
  kInternal,      // a bug: an invariant did not hold
};

const char* ToString(ErrorKind kind);

// What kind of failure ended an operation, as the retry policy sees it: the one failure model of
// the agent. The transport sets the class when it builds an error from curl or an HTTP status;
// elsewhere it follows from the ErrorKind (DefaultFailureClass). Whether and how a class is
// retried is said in one place only: the retry table in base/retry.hpp.
enum class FailureClass {
  kNone,
  kDns,             // host name did not resolve
  kConnect,         // TCP connect refused or timed out
  kTlsHandshake,    // handshake broke off (reset, EOF): transient
  kTlsRejected,     // certificate, host name, pin or client certificate refused: needs a person
  kClockSkew,       // the server certificate is not yet valid: this terminal's clock is behind;
                    // retried, because NTP or the operator may correct the clock
  kStall,           // no byte sent or received for stall_timeout_s
  kTimeout,         // the request's overall deadline passed (see HttpOptions::floor_rate_bits_per_s)
  kConnectionLost,  // reset or closed mid-request (also a network error without a finer class)
  kServerError,     // HTTP 5xx
  kConflict,        // HTTP 409: offset mismatch (tus)
  kLocked,          // HTTP 423: upload locked by another request (tus)
  kChecksum,        // HTTP 460: checksum mismatch (tus checksum extension)
  kUploadGone,      // HTTP 404/410 on an upload URL: create it again
  kAuth,            // HTTP 401/403
  kVersion,         // HTTP 412: protocol version not supported
  kTooLarge,        // HTTP 413
  kEndpoint,        // the configured endpoint does not exist (404 on tus creation or DICOMweb)
  kProtocol,        // an answer the contract does not allow
  kLinkDown,        // no network link usable, or the link's lease was revoked mid-transfer
  kCancelled,       // stopped on request
  kLocal,           // local problem: refused URL, unreadable file, spool error, a bug
};
// The class's name in logs, error labels and the metric label ctagent_retries_total{class}.
const char* ToString(FailureClass failure);

// The class of an error built without one: kNetwork is a lost connection (retried), kTls a
// rejected certificate, kProtocol a bad answer, kCancelled a stop; everything else (files,
// configuration, permissions on this machine, bugs) is local and needs a person.
constexpr FailureClass DefaultFailureClass(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNetwork: return FailureClass::kConnectionLost;
    case ErrorKind::kTls: return FailureClass::kTlsRejected;
    case ErrorKind::kProtocol: return FailureClass::kProtocol;
    case ErrorKind::kCancelled: return FailureClass::kCancelled;
    default: return FailureClass::kLocal;
  }
}

class Error {
 public:
  Error(ErrorKind kind, std::string message)
      : kind_(kind), failure_(DefaultFailureClass(kind)), message_(std::move(message)) {}
  Error(ErrorKind kind, std::string message, FailureClass failure)
      : kind_(kind), failure_(failure), message_(std::move(message)) {}

  ErrorKind kind() const { return kind_; }
  // The retry class (base/retry.hpp keys on it).
  FailureClass failure() const { return failure_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with where the error happened, as it rises through layers.
  Error WithContext(const std::string& context) const {
    return Error(kind_, context + ": " + message_, failure_);
  }
  // The same error with another retry class (a layer that knows better, e.g. an HTTP status).
  Error WithFailure(FailureClass failure) const { return Error(kind_, message_, failure); }

  // Worth retrying with backoff: the retry table (base/retry.hpp) does not call the error's class
  // permanent. The others need a person.
  bool IsTransient() const;

 private:
  ErrorKind kind_;
  FailureClass failure_;
  std::string message_;
};

struct Unexpected {
  Error error;
};

inline Unexpected MakeError(ErrorKind kind, std::string message) {
  return Unexpected{Error(kind, std::move(message))};
}
inline Unexpected MakeError(ErrorKind kind, std::string message, FailureClass failure) {
  return Unexpected{Error(kind, std::move(message), failure)};
}
inline Unexpected MakeError(Error error) { return Unexpected{std::move(error)}; }

// Minimal std::expected stand-in (std::expected is C++23; we build as C++20).
template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(implicit)
  Expected(Unexpected u) : state_(std::in_place_index<1>, std::move(u.error)) {}  // NOLINT(implicit)

  bool has_value() const { return state_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & {
    assert(has_value());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(has_value());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(has_value());
    return std::get<0>(std::move(state_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const {
    assert(!has_value());
    return std::get<1>(state_);
  }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Unexpected u) : error_(std::move(u.error)), ok_(false) {}  // NOLINT(implicit)

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const {
    assert(!ok_);
    return error_;
  }

 private:
  Error error_{ErrorKind::kInternal, ""};
  bool ok_ = true;
};

using Status = Expected<void>;

inline Status Ok() { return Status{}; }

}  // namespace ctagent
