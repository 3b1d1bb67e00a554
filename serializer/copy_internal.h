// Copying buffers into a store, and checksums.
#ifndef ZCSTORE_SERIALIZER_COPY_INTERNAL_H_
#define ZCSTORE_SERIALIZER_COPY_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <span>

namespace zcstore::internal {

// Copies `size` bytes from `src` to `dst`, a store's pages (which may be
// fresh): from 8 MiB up, a second thread faults `dst` in ahead of the copy
// (MADV_POPULATE_WRITE), which on these VMs takes a 1 GiB copy into fresh
// pages below the time of a plain memcpy into fresh memory (make bench:
// BM_PutIntoFreshPages). With `drop_source`, the caller owns the source
// exclusively and is about to free it: each whole source page is handed back
// to the kernel (MADV_DONTNEED) as soon as it is copied, so the process
// holds about one copy of the data, not two, at every instant.
void CopyOut(std::byte* dst, const std::byte* src, size_t size, bool drop_source);

// XXH3-64, seed 0.
uint64_t Checksum(std::span<const std::byte> bytes);

}  // namespace zcstore::internal

#endif  // ZCSTORE_SERIALIZER_COPY_INTERNAL_H_
