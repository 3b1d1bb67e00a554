// ObjectId: the 128-bit name of an object in a store.
//
// Ids are chosen by the caller (any 128 bits but all-zero, which is reserved
// as "no object") or drawn at random with ObjectId::Random(). They are plain
// values: copy them freely, send them to other processes as 16 bytes or as
// their 32-digit hex string.
#ifndef ZCSTORE_OBJECT_ID_H_
#define ZCSTORE_OBJECT_ID_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "zcstore/export.h"
#include "zcstore/status.h"

namespace zcstore {

struct ZCSTORE_EXPORT ObjectId {
  uint64_t hi = 0;
  uint64_t lo = 0;

  // 128 bits from the kernel's random source (getrandom). Two calls collide
  // with probability 2^-128, across processes, users and runs.
  static ObjectId Random();
  // Parses 32 hex digits (either case). Anything else is InvalidArgument.
  static Result<ObjectId> FromString(std::string_view hex);

  // 32 lower-case hex digits, hi first.
  std::string ToString() const;
  bool is_nil() const { return hi == 0 && lo == 0; }

  friend bool operator==(const ObjectId&, const ObjectId&) = default;
};

}  // namespace zcstore

template <>
struct std::hash<zcstore::ObjectId> {
  size_t operator()(const zcstore::ObjectId& id) const noexcept {
    return static_cast<size_t>(id.hi * 0x9E3779B97F4A7C15ull ^ id.lo);
  }
};

#endif  // ZCSTORE_OBJECT_ID_H_
