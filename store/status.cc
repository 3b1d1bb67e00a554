#include <cstdio>
#include <cstdlib>

#include "zcstore/status.h"

namespace zcstore {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kAlreadyExists: return "AlreadyExists";
    case StatusCode::kStoreFull: return "StoreFull";
    case StatusCode::kCorrupt: return "Corrupt";
    case StatusCode::kTypeMismatch: return "TypeMismatch";
    case StatusCode::kVersionMismatch: return "VersionMismatch";
    case StatusCode::kPermissionDenied: return "PermissionDenied";
    case StatusCode::kWorkerCrashed: return "WorkerCrashed";
    case StatusCode::kTimeout: return "Timeout";
    case StatusCode::kCancelled: return "Cancelled";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kIOError: return "IOError";
    case StatusCode::kTaskFailed: return "TaskFailed";
    case StatusCode::kTooManyPins: return "TooManyPins";
    case StatusCode::kMisuse: return "Misuse";
  }
  return "Unknown";
}

Status::Status(StatusCode code, std::string message)
    : code_(code), message_(code == StatusCode::kOk ? std::string() : std::move(message)) {}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

namespace internal {
void DieWithMessage(const char* what) {
  std::fprintf(stderr, "zcstore: fatal: %s\n", what);
  std::abort();
}
}  // namespace internal

}  // namespace zcstore
