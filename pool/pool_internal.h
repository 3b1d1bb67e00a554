// What the parent and its workers share: the control segment, the messages
// on its rings, and the worker side's state. docs/format.md draws the bytes.
#ifndef ZCSTORE_POOL_POOL_INTERNAL_H_
#define ZCSTORE_POOL_POOL_INTERNAL_H_

#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <typeindex>
#include <unordered_map>
#include <vector>

#include "pool/ring_internal.h"
#include "zcstore/pool.h"

namespace zcstore::internal {

// Bytes of each ring's message area (every page of it is touched as it
// wraps). A message is at most a quarter of it: 64 KiB.
inline constexpr uint64_t kRingCapacity = uint64_t{1} << 18;
// Descriptors a spawned worker finds its resources at.
inline constexpr int kControlFd = 3, kStoreFd = 4, kDoorbellFd = 5;
inline constexpr char kWorkerFlag[] = "--zcstore-worker";
// In a spawned worker's environment: the parent's pid. Read (and removed)
// before main() runs, so that a worker dies with its parent even if main
// never reaches ZCSTORE_WORKER_MAIN, and a Pool it creates can be refused.
inline constexpr char kWorkerEnv[] = "ZCSTORE_WORKER_OF";
// Set by RunWorkerProcess: this process runs the worker loop (tasks may
// start pools of their own). pool.cc reads it with the environment's verdict.
void EnterWorkerLoop();

// The start of the control segment: how a worker tells who waits for its
// answers. A caller that waits drains the response rings itself, so an
// answer costs one wake-up (the caller's) rather than two (the pool
// thread's, then the caller's):
//   callers_spinning > 0  a caller is polling the rings: nothing to do;
//   callers_sleeping > 0  bump `answer_seq` and FUTEX_WAKE it;
//   otherwise             ring the doorbell: the pool thread takes it.
// The parent never trusts these words: a wrong value costs a spurious
// wake-up or a late one, and the pool thread still drains within 100 ms.
struct alignas(64) ControlHeader {
  std::atomic<uint32_t> answer_seq;        // the sleeping callers' futex word
  std::atomic<uint32_t> callers_sleeping;  // parent threads asleep on answer_seq
  uint8_t pad0[56];
  std::atomic<uint32_t> callers_spinning;  // parent threads polling the rings
  uint8_t reserved[188];
};
static_assert(sizeof(ControlHeader) == 256 && offsetof(ControlHeader, callers_spinning) == 64);

// The version of the control segment's layout and messages (docs/format.md):
// part of the registry hash a worker sends at hand-shake, so a worker of
// another layout is refused. Raise it with every change to them.
inline constexpr int kControlLayout = 2;

// Chunks one worker may hold at once (PoolOptions::max_in_flight_per_worker
// at most): each has a claim word (below).
inline constexpr int kClaimsPerWorker = 64;

// A chunk's claim word: how many of its items the worker has started, and
// the kWithdrawn bit, which the parent sets to take back the rest. The
// worker starts an item only by raising the count with a compare-and-swap
// that fails once the bit is set; the parent sets the bit with one
// fetch_or, which returns the count. So each item is either started or
// withdrawn, never both, and the parent learns which without waiting.
inline constexpr uint64_t kWithdrawn = uint64_t{1} << 63;

// Control segment: the header, then for worker i its request ring and its
// response ring, then for worker i its kClaimsPerWorker claim words.
inline uint64_t RingsEnd(int workers) {
  return sizeof(ControlHeader) + uint64_t(workers) * 2 * Ring::Footprint(kRingCapacity);
}
inline uint64_t ControlSize(int workers) {
  return RingsEnd(workers) + uint64_t(workers) * kClaimsPerWorker * sizeof(uint64_t);
}
inline std::atomic<uint64_t>* Claims(std::byte* control, int workers, int i) {
  return reinterpret_cast<std::atomic<uint64_t>*>(control + RingsEnd(workers)) +
         uint64_t(i) * kClaimsPerWorker;
}
inline ControlHeader* Header(std::byte* control) { return reinterpret_cast<ControlHeader*>(control); }
inline Ring RequestRing(std::byte* control, int i) {
  return Ring(control + sizeof(ControlHeader) + uint64_t(i) * 2 * Ring::Footprint(kRingCapacity),
              kRingCapacity);
}
inline Ring ResponseRing(std::byte* control, int i) {
  return Ring(
      control + sizeof(ControlHeader) + (uint64_t(i) * 2 + 1) * Ring::Footprint(kRingCapacity),
      kRingCapacity);
}

enum MessageKind : uint8_t { kHello = 1, kRun = 2, kDone = 3, kDetach = 4, kStop = 5 };

// The store id of the result of item `item` of the chunk the parent sent
// with `nonce` (a Run message's), when that result goes through the store.
// Both sides compute it: the parent deletes what a worker killed before it
// reported its results left behind.
inline ObjectId ResultId(uint64_t nonce, uint64_t item) {
  return ObjectId{0x7A6372657375ull << 16 ^ nonce, item};
}

// Run message flags.
inline constexpr uint8_t kRunTimed = 1;  // record each task's start: a deadline applies

// Error messages longer than this are cut (a message must fit a ring).
inline constexpr size_t kMaxErrorMessage = 16 << 10;

// Little-endian fixed fields and varints into a message. Clear() keeps the
// buffer, so a writer reused from message to message allocates only while
// its messages grow.
class MessageWriter {
 public:
  void Clear() { size_ = 0; }
  void U8(uint8_t v) { Raw(&v, 1); }
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void Varint(uint64_t v) {
    for (; v >= 0x80; v >>= 7) U8(static_cast<uint8_t>(v) | 0x80);
    U8(static_cast<uint8_t>(v));
  }
  void Raw(const void* p, size_t n) {
    if (buf_.size() - size_ < n) buf_.resize(std::max({2 * buf_.size(), size_ + n, size_t{256}}));
    if (n != 0) std::memcpy(buf_.data() + size_, p, n);
    size_ += n;
  }
  void Id(ObjectId id) {
    U64(id.hi);
    U64(id.lo);
  }
  // A u32 written later (a count known only at the end): returns its place.
  size_t Placeholder32() {
    U32(0);
    return size_ - 4;
  }
  void Patch32(size_t at, uint32_t v) { std::memcpy(buf_.data() + at, &v, 4); }
  std::span<const std::byte> bytes() const { return {buf_.data(), size_}; }
  size_t size() const { return size_; }

 private:
  std::vector<std::byte> buf_;
  size_t size_ = 0;
};

// Reads a message from the other side; every read is bounds-checked.
class MessageReader {
 public:
  explicit MessageReader(std::span<const std::byte> b) : b_(b) {}
  bool U8(uint8_t* v) { return Raw(v, 1); }
  bool U32(uint32_t* v) { return Raw(v, 4); }
  bool U64(uint64_t* v) { return Raw(v, 8); }
  bool Raw(void* out, size_t n) {
    if (n > b_.size() - pos_) return false;
    std::memcpy(out, b_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool Varint(uint64_t* v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64 && pos_ < b_.size(); shift += 7) {
      auto c = static_cast<uint8_t>(b_[pos_++]);
      r |= uint64_t(c & 0x7F) << shift;
      if (!(c & 0x80)) {
        *v = r;
        return true;
      }
    }
    return false;
  }
  bool Bytes(size_t n, std::span<const std::byte>* out) {
    if (n > b_.size() - pos_) return false;
    *out = b_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  bool Id(ObjectId* id) { return U64(&id->hi) && U64(&id->lo); }
  bool done() const { return pos_ == b_.size(); }

 private:
  std::span<const std::byte> b_;
  size_t pos_ = 0;
};

// The worker side: one per worker process (or thread, for kThreads).
struct WorkerState {
  int index = 0;
  pid_t parent = 0;  // 0 for thread workers (no parent to watch)
  int spin_us = 0;
  ControlHeader* control = nullptr;
  Ring requests, responses;
  std::atomic<uint64_t>* claims = nullptr;  // this worker's kClaimsPerWorker claim words
  int doorbell = -1;
  std::shared_ptr<Store> store;  // shared with ForkHooks::child
  struct Attached {
    std::type_index type;
    std::shared_ptr<const void> holder;
    const void* value;
  };
  std::unordered_map<ObjectId, Attached> attached;
  TaskContext context{this};
  // Buffers reused from task to task: a task allocates nothing here.
  std::vector<std::byte> request, result;
  MessageWriter answer;
  ObjectId result_id;  // where the running task's result goes if it goes through the store
};

// Runs a worker until it is told to stop or its parent is gone. Returns the
// process exit code.
int WorkerLoop(WorkerState& w);

}  // namespace zcstore::internal

#endif  // ZCSTORE_POOL_POOL_INTERNAL_H_
