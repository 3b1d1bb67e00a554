// Status and Result<T>: how every public zcstore function reports failure.
//
// No exception crosses the public API. A function that can fail returns a
// [[nodiscard]] Status, or a Result<T> holding either a T or a non-OK Status.
// A Status carries a code that callers branch on and a message a person can
// act on ("store 'lk' is full: ...; raise capacity or delete objects").
//
// Both types are plain values: copyable, movable, safe to pass between threads.
#ifndef ZCSTORE_STATUS_H_
#define ZCSTORE_STATUS_H_

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "zcstore/export.h"

namespace zcstore {

// The codes a caller can branch on. Their numeric values are stable (they
// travel between processes, and a C ABI will expose them): they never
// change; new codes are only appended.
enum class StatusCode : int {
  kOk = 0,
  kNotFound = 1,         // no such object, name, store or file
  kAlreadyExists = 2,    // an object id, name or store name is taken
  kStoreFull = 3,        // no room: store capacity, object table, /dev/shm or disk
  kCorrupt = 4,          // bytes read from shared memory or a file fail a check
  kTypeMismatch = 5,     // data of another type than the one asked for
  kVersionMismatch = 6,  // a format version this build cannot read
  kPermissionDenied = 7, // the OS refused access, or a read-only handle was asked to write
  kWorkerCrashed = 8,    // a worker process died while running a task
  kTimeout = 9,          // a deadline passed
  kCancelled = 10,       // the caller cancelled the work
  kInvalidArgument = 11, // the caller passed something that can never work
  kIOError = 12,         // any other OS error; the message holds errno's text
  kTaskFailed = 13,      // a pool task threw: the message has the exception's type and what()
  kTooManyPins = 14,     // this handle already pins StoreOptions::max_pins_per_client objects
  kMisuse = 15,          // (C ABI) a handle used after it was closed or freed, or not a handle
};
// The highest code: values above it read from another process are not codes.
inline constexpr StatusCode kLastStatusCode = StatusCode::kMisuse;

// Returns the code's name without the leading 'k', e.g. "StoreFull".
ZCSTORE_EXPORT std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] ZCSTORE_EXPORT Status {
 public:
  // An OK status. Cheap: no allocation.
  Status() = default;
  // A status with `code` and `message`. A kOk code ignores the message.
  Status(StatusCode code, std::string message);

  static Status OK() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  // The message as given; empty for OK.
  const std::string& message() const { return message_; }
  // "StoreFull: store 'lk' is full ..." or "OK".
  std::string ToString() const;

  // Returns a copy with `context + ": "` put before the message; OK stays OK.
  Status WithContext(std::string_view context) const;

  bool operator==(const Status& other) const = default;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Shorthand constructors, one per code.
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
inline Status StoreFull(std::string m) { return {StatusCode::kStoreFull, std::move(m)}; }
inline Status Corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status TypeMismatch(std::string m) { return {StatusCode::kTypeMismatch, std::move(m)}; }
inline Status VersionMismatch(std::string m) {
  return {StatusCode::kVersionMismatch, std::move(m)};
}
inline Status PermissionDenied(std::string m) {
  return {StatusCode::kPermissionDenied, std::move(m)};
}
inline Status WorkerCrashed(std::string m) { return {StatusCode::kWorkerCrashed, std::move(m)}; }
inline Status Timeout(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status InvalidArgument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status IOError(std::string m) { return {StatusCode::kIOError, std::move(m)}; }
inline Status TaskFailed(std::string m) { return {StatusCode::kTaskFailed, std::move(m)}; }
inline Status TooManyPins(std::string m) { return {StatusCode::kTooManyPins, std::move(m)}; }
inline Status Misuse(std::string m) { return {StatusCode::kMisuse, std::move(m)}; }

// Either a T or the non-OK Status that explains why there is none.
//
// Accessing the value of an error Result is a bug, not an error: value(),
// operator* and operator-> on one stop the process (abort), after printing
// "zcstore: fatal: value() of an error Result: <status>" on stderr. A host
// process that must never stop (an interpreter, a server) checks first:
// `if (!r) ...`, r.ok(), r.value_or(fallback), or the ZCSTORE_ASSIGN_OR_RETURN
// and ZCSTORE_RETURN_IF_ERROR macros below.
template <typename T>
class [[nodiscard]] Result {
 public:
  // Implicit from a value or from a non-OK Status, so `return value;` and
  // `return NotFound(...);` both work in a function returning Result<T>.
  Result(T value) : value_(std::move(value)) {}  // NOLINT(runtime/explicit)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(runtime/explicit)
    if (status_.ok()) Die("Result constructed from an OK Status without a value");
  }

  bool ok() const { return status_.ok(); }
  explicit operator bool() const { return ok(); }
  const Status& status() const& { return status_; }
  Status status() && { return std::move(status_); }

  T& value() & { Check(); return *value_; }
  const T& value() const& { Check(); return *value_; }
  T&& value() && { Check(); return std::move(*value_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // The value, or `fallback` for an error Result; never stops the process.
  template <typename U>
  T value_or(U&& fallback) const& {
    return ok() ? *value_ : static_cast<T>(std::forward<U>(fallback));
  }
  template <typename U>
  T value_or(U&& fallback) && {
    return ok() ? std::move(*value_) : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  void Check() const {
    if (!status_.ok()) Die(("value() of an error Result: " + status_.ToString()).c_str());
  }
  [[noreturn]] static void Die(const char* what);

  Status status_;
  std::optional<T> value_;
};

namespace internal {
[[noreturn]] ZCSTORE_EXPORT void DieWithMessage(const char* what);
}  // namespace internal

template <typename T>
void Result<T>::Die(const char* what) {
  internal::DieWithMessage(what);
}

}  // namespace zcstore

// In a function returning Status (or a Result): returns the Status of `expr`
// if it is not OK.
#define ZCSTORE_RETURN_IF_ERROR(expr)                            \
  do {                                                           \
    ::zcstore::Status zcstore_status_ = ::zcstore::internal::ToStatus(expr); \
    if (!zcstore_status_.ok()) return zcstore_status_;           \
  } while (0)

// In a function returning Status (or a Result): evaluates `rexpr`, a
// Result<T>; returns its Status if it is an error, else moves its value into
// `lhs` (a declaration such as `auto store`, or an existing variable).
#define ZCSTORE_ASSIGN_OR_RETURN(lhs, rexpr) \
  ZCSTORE_ASSIGN_OR_RETURN_IMPL_(ZCSTORE_CONCAT_(zcstore_result_, __LINE__), lhs, rexpr)
#define ZCSTORE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();        \
  lhs = std::move(tmp).value()
#define ZCSTORE_CONCAT_(a, b) ZCSTORE_CONCAT_INNER_(a, b)
#define ZCSTORE_CONCAT_INNER_(a, b) a##b

namespace zcstore::internal {
inline const Status& ToStatus(const Status& s) { return s; }
template <typename T>
const Status& ToStatus(const Result<T>& r) {
  return r.status();
}
}  // namespace zcstore::internal

#endif  // ZCSTORE_STATUS_H_
