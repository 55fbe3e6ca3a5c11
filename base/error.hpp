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

class Error {
 public:
  Error(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}

  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with where the error happened, as it rises through layers.
  Error WithContext(const std::string& context) const {
    return Error(kind_, context + ": " + message_);
  }

  // Transient errors are worth retrying with backoff; the others need a person.
  bool IsTransient() const { return kind_ == ErrorKind::kNetwork; }

 private:
  ErrorKind kind_;
  std::string message_;
};

struct Unexpected {
  Error error;
};

inline Unexpected MakeError(ErrorKind kind, std::string message) {
  return Unexpected{Error(kind, std::move(message))};
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
