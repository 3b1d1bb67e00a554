#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <system_error>
#include <thread>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "serializer/copy_internal.h"

namespace zcstore::internal {

namespace {
// Big enough that an madvise's cost vanishes beside the copy, small enough
// that the overlap of the two copies stays a small fraction of any large
// buffer, and that the first chunk is ready soon.
constexpr size_t kChunk = size_t{2} << 20;
constexpr uintptr_t kPage = 4096;
// From this size up, a second thread faults the destination in ahead of
// the copy (below); smaller copies are not worth a thread.
constexpr size_t kFaultAheadMin = size_t{8} << 20;
// How far that thread may run ahead of a copy that drops its source: every
// byte it faults in before the copy reaches it is held twice. Unbounded, it
// led a 1 GiB move by about 100 MiB here (freeing the source's huge pages
// is slower than faulting in the store's). 1/64 of the buffer (1.6% more
// than one copy at the peak), from 2 to 8 chunks: a tighter lead slowed
// that move by a quarter, as the two threads wait on each other.
size_t MaxLead(size_t size, bool drop_source) {
  if (!drop_source) return SIZE_MAX;  // the source stays: nothing to bound
  return std::clamp(size / 64 / kChunk * kChunk, 2 * kChunk, 8 * kChunk);
}

// Faults in the whole pages of [p, p + n) for writing in one call, where a
// plain write takes one fault per page. False if the kernel cannot (before
// Linux 5.14: the copy then faults as it goes).
bool PopulateForWrite(std::byte* p, size_t n) {
#ifdef MADV_POPULATE_WRITE
  auto begin = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  auto end = (reinterpret_cast<uintptr_t>(p) + n) & ~(kPage - 1);
  return end <= begin || madvise(reinterpret_cast<void*>(begin), end - begin,
                                 MADV_POPULATE_WRITE) == 0;
#else
  (void)p;
  (void)n;
  return false;
#endif
}
}  // namespace

void CopyOut(std::byte* dst, const std::byte* src, size_t size, bool drop_source) {
  if (size < kFaultAheadMin && (!drop_source || size < 2 * kChunk)) {
    std::memcpy(dst, src, size);
    return;
  }
  // Fresh pages of a store cost a fault each (zeroing included), several
  // times the copy itself on some machines. A second thread faults them in a
  // chunk at a time (MADV_POPULATE_WRITE) while this one copies the chunks
  // already faulted: the two costs overlap instead of adding up.
  std::atomic<size_t> ready{0};   // bytes of dst faulted in
  std::atomic<size_t> copied{0};  // bytes of dst copied
  const size_t lead = MaxLead(size, drop_source);
  std::thread ahead;
  if (size >= kFaultAheadMin) {
    try {
      ahead = std::thread([&] {
        size_t off = 0;
        for (; off < size; off += kChunk) {
          for (size_t c; off - (c = copied.load(std::memory_order_acquire)) > lead && off > c;) {
            copied.wait(c, std::memory_order_acquire);
          }
          if (!PopulateForWrite(dst + off, std::min(kChunk, size - off))) break;
          ready.store(std::min(off + kChunk, size), std::memory_order_release);
          ready.notify_one();
        }
        ready.store(size, std::memory_order_release);  // done, or the kernel cannot
        ready.notify_one();
      });
    } catch (const std::system_error&) {  // no thread to be had: fault as we go
      ready.store(size, std::memory_order_relaxed);
    }
  } else {
    ready.store(size, std::memory_order_relaxed);
  }
  auto base = reinterpret_cast<uintptr_t>(src);
  uintptr_t dropped = (base + kPage - 1) & ~(kPage - 1);  // first whole page
  for (size_t off = 0; off < size; off += kChunk) {
    size_t n = std::min(kChunk, size - off);
    for (size_t r; (r = ready.load(std::memory_order_acquire)) < off + n;) {
      ready.wait(r, std::memory_order_acquire);
    }
    std::memcpy(dst + off, src + off, n);
    if (drop_source) {
      // With `drop_source`, each whole source page goes back to the kernel
      // as soon as it is copied: the process holds about one copy, not two.
      uintptr_t copied_to = (base + off + n) & ~(kPage - 1);  // end of the last whole page
      if (copied_to > dropped) {
        madvise(reinterpret_cast<void*>(dropped), copied_to - dropped, MADV_DONTNEED);
        dropped = copied_to;
      }
    }
    copied.store(off + n, std::memory_order_release);
    copied.notify_one();
  }
  if (ahead.joinable()) ahead.join();
}

uint64_t Checksum(std::span<const std::byte> bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

}  // namespace zcstore::internal
