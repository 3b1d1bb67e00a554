// Ring: a single-producer single-consumer queue of byte messages in shared
// memory, with futex wake-ups. One per direction per worker, in the pool's
// control segment (a memfd). docs/format.md draws the layout.
//
//   [RingHeader, 256 bytes][capacity bytes of messages]
//   message: [u32 length][u32 reserved][payload, padded to 8 bytes]
//   length 0xFFFFFFFF: skip to the start of the buffer (wrap)
//
// The producer writes a message, then publishes it by advancing `head`
// (release); the consumer reads up to `head` (acquire) and frees space by
// advancing `tail`. A side about to sleep raises its `*_waiting` flag, looks
// once more, and sleeps on its `*_seq` futex word; the other side, after a
// full fence, bumps that word and wakes it only if the flag is up. So while
// nobody sleeps, the words of line 128 are only read, and a message costs no
// atomic read-modify-write and no cache line bouncing beyond head, tail and
// the message itself.
// The consumer trusts nothing it reads: a length out of range is Corrupt.
#ifndef ZCSTORE_POOL_RING_INTERNAL_H_
#define ZCSTORE_POOL_RING_INTERNAL_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <span>
#include <vector>

#include "zcstore/status.h"

namespace zcstore::internal {

// Tells the CPU we are busy-waiting (frees the sibling hyperthread).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct alignas(64) RingHeader {
  std::atomic<uint64_t> head;  // bytes published, ever (producer)
  uint8_t pad0[56];
  std::atomic<uint64_t> tail;  // bytes consumed, ever (consumer)
  uint8_t pad1[56];
  std::atomic<uint32_t> data_seq;       // the consumer's futex: bumped to wake it
  std::atomic<uint32_t> data_waiting;   // consumer going to sleep
  std::atomic<uint32_t> space_seq;      // the producer's futex: bumped to wake it
  std::atomic<uint32_t> space_waiting;  // producer going to sleep
  uint8_t pad2[48];
  // Request rings only: the job (its seq) and item the worker is running
  // now and when it started it (MonotonicNanos), written before each task
  // starts (the item last), read by the parent to blame a crash and to time
  // a task from its start, not from when it was queued.
  std::atomic<uint64_t> current_job;
  std::atomic<uint64_t> current_item;
  std::atomic<int64_t> current_started_ns;
  uint8_t reserved[40];
};
static_assert(sizeof(RingHeader) == 256);
static_assert(offsetof(RingHeader, tail) == 64 && offsetof(RingHeader, data_seq) == 128 &&
              offsetof(RingHeader, current_job) == 192);
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

class Ring {
 public:
  static constexpr uint32_t kWrap = 0xFFFFFFFFu;
  Ring() = default;
  // `memory` holds a RingHeader then `capacity` bytes (a power of two).
  Ring(std::byte* memory, uint64_t capacity)
      : h_(reinterpret_cast<RingHeader*>(memory)), data_(memory + sizeof(RingHeader)), cap_(capacity) {}
  static uint64_t Footprint(uint64_t capacity) { return sizeof(RingHeader) + capacity; }
  void Reset();  // both ends idle: empties the ring
  RingHeader* header() const { return h_; }
  // The largest message Push accepts.
  uint64_t max_message() const { return cap_ / 4; }

  // Producer: false if there is no room now. Wakes a sleeping consumer,
  // unless `wake` is false: the caller then calls WakeConsumer() later (after
  // letting go of a lock, say).
  bool TryPush(std::span<const std::byte> msg, bool wake = true);
  // Producer: wakes the consumer if it is asleep (or going to sleep).
  void WakeConsumer() const;
  // Producer: waits for room, spinning `spin_us` first, in slices of
  // `slice_ms`; calls `keep_waiting()` after each slice and gives up (false)
  // when it returns false.
  template <typename F>
  bool Push(std::span<const std::byte> msg, int spin_us, int slice_ms, F keep_waiting);

  // Consumer: the next message into *out, or false if none (or Corrupt set).
  bool TryPop(std::vector<std::byte>* out, Status* corrupt);
  bool Empty() const;
  // Consumer: waits for a message, spinning `spin_us` first, then sleeping at
  // most `timeout_ms`. True if one is there.
  bool WaitForData(int spin_us, int timeout_ms);

 private:
  // Where a message of `size` bytes would go: false if it does not fit now.
  bool Place(uint64_t size, uint64_t* head, uint64_t* skip) const;
  void WaitForSpace(uint64_t size, int timeout_ms);
  RingHeader* h_ = nullptr;
  std::byte* data_ = nullptr;
  uint64_t cap_ = 0;
};

template <typename F>
bool Ring::Push(std::span<const std::byte> msg, int spin_us, int slice_ms, F keep_waiting) {
  if (msg.size() > max_message()) return false;
  if (TryPush(msg)) return true;
  auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  while (true) {
    if (TryPush(msg)) return true;
    if (std::chrono::steady_clock::now() < spin_until) continue;
    WaitForSpace(msg.size(), slice_ms);
    if (!keep_waiting()) return false;
  }
}

}  // namespace zcstore::internal

#endif  // ZCSTORE_POOL_RING_INTERNAL_H_
