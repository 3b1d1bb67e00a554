#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "serializer/copy_internal.h"

namespace zcstore::internal {

namespace {
// Big enough that madvise's cost vanishes beside the copy, small enough that
// the overlap of the two copies stays a small fraction of any large buffer.
constexpr size_t kChunk = size_t{2} << 20;
constexpr uintptr_t kPage = 4096;
}  // namespace

void CopyOut(std::byte* dst, const std::byte* src, size_t size, bool drop_source) {
  if (!drop_source || size < 2 * kChunk) {
    std::memcpy(dst, src, size);
    return;
  }
  auto base = reinterpret_cast<uintptr_t>(src);
  uintptr_t dropped = (base + kPage - 1) & ~(kPage - 1);  // first whole page
  for (size_t off = 0; off < size; off += kChunk) {
    size_t n = std::min(kChunk, size - off);
    std::memcpy(dst + off, src + off, n);
    uintptr_t copied_to = (base + off + n) & ~(kPage - 1);  // end of the last whole page
    if (copied_to > dropped) {
      madvise(reinterpret_cast<void*>(dropped), copied_to - dropped, MADV_DONTNEED);
      dropped = copied_to;
    }
  }
}

uint64_t Checksum(std::span<const std::byte> bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

}  // namespace zcstore::internal
