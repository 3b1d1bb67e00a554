// What the parent and its workers share: the control segment, the messages
// on its rings, and the worker side's state. docs/format.md draws the bytes.
#ifndef ZCSTORE_POOL_POOL_INTERNAL_H_
#define ZCSTORE_POOL_POOL_INTERNAL_H_

#include <sys/types.h>

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

// Control segment: for worker i, its request ring then its response ring.
inline uint64_t ControlSize(int workers) {
  return uint64_t(workers) * 2 * Ring::Footprint(kRingCapacity);
}
inline Ring RequestRing(std::byte* control, int i) {
  return Ring(control + uint64_t(i) * 2 * Ring::Footprint(kRingCapacity), kRingCapacity);
}
inline Ring ResponseRing(std::byte* control, int i) {
  return Ring(control + (uint64_t(i) * 2 + 1) * Ring::Footprint(kRingCapacity), kRingCapacity);
}

enum MessageKind : uint8_t { kHello = 1, kRun = 2, kDone = 3, kDetach = 4, kStop = 5 };

// Little-endian fixed fields and varints into a message.
class MessageWriter {
 public:
  MessageWriter() { bytes.reserve(256); }
  void U8(uint8_t v) { bytes.push_back(std::byte{v}); }
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void Varint(uint64_t v) { PutVarint(bytes, v); }
  void Raw(const void* p, size_t n) {
    auto* b = static_cast<const std::byte*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void Id(ObjectId id) {
    U64(id.hi);
    U64(id.lo);
  }
  // A u32 written later (a count known only at the end): returns its place.
  size_t Placeholder32() {
    U32(0);
    return bytes.size() - 4;
  }
  void Patch32(size_t at, uint32_t v) { std::memcpy(bytes.data() + at, &v, 4); }
  std::vector<std::byte> bytes;
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
  Ring requests, responses;
  int doorbell = -1;
  std::unique_ptr<Store> store;
  struct Attached {
    std::type_index type;
    std::shared_ptr<const void> holder;
    const void* value;
  };
  std::unordered_map<ObjectId, Attached> attached;
  TaskContext context{this};
};

// Runs a worker until it is told to stop or its parent is gone. Returns the
// process exit code.
int WorkerLoop(WorkerState& w);

}  // namespace zcstore::internal

#endif  // ZCSTORE_POOL_POOL_INTERNAL_H_
