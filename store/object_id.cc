#include "zcstore/object_id.h"

#include <cstdio>

#include "store/platform_internal.h"

namespace zcstore {

ObjectId ObjectId::Random() {
  ObjectId id;
  do {
    internal::platform::FillRandom(&id, sizeof(id));
  } while (id.is_nil());
  return id;
}

Result<ObjectId> ObjectId::FromString(std::string_view hex) {
  if (hex.size() != 32) {
    return InvalidArgument("an object id is 32 hex digits, got " + std::to_string(hex.size()) +
                           " characters: '" + std::string(hex) + "'");
  }
  uint64_t parts[2] = {0, 0};
  for (size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    uint64_t v;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    else return InvalidArgument("'" + std::string(hex) + "' is not a hex object id");
    parts[i / 16] = (parts[i / 16] << 4) | v;
  }
  return ObjectId{parts[0], parts[1]};
}

std::string ObjectId::ToString() const {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
}

}  // namespace zcstore
