#include <chrono>
#include <cstring>

#include "pool/ring_internal.h"
#include "store/platform_internal.h"

namespace zcstore::internal {

namespace {
uint64_t Padded(uint64_t n) { return (n + 7) & ~uint64_t{7}; }
uint32_t* Word(std::atomic<uint32_t>& a) { return reinterpret_cast<uint32_t*>(&a); }
}  // namespace

void Ring::Reset() {
  h_->head.store(0);
  h_->tail.store(0);
  h_->data_seq.store(0);
  h_->data_waiting.store(0);
  h_->space_seq.store(0);
  h_->space_waiting.store(0);
  h_->current_job.store(0);
  h_->current_item.store(0);
}

bool Ring::Place(uint64_t size, uint64_t* head, uint64_t* skip) const {
  *head = h_->head.load(std::memory_order_relaxed);
  uint64_t tail = h_->tail.load(std::memory_order_acquire);
  uint64_t pos = *head & (cap_ - 1);
  uint64_t need = 8 + Padded(size);
  *skip = pos + need > cap_ ? cap_ - pos : 0;  // wrap: the rest of the buffer is skipped
  return cap_ - (*head - tail) >= *skip + need;
}

bool Ring::TryPush(std::span<const std::byte> msg, bool wake) {
  uint64_t head, skip;
  if (!Place(msg.size(), &head, &skip)) return false;
  if (skip) {
    uint32_t wrap = kWrap;
    std::memcpy(data_ + (head & (cap_ - 1)), &wrap, 4);
    head += skip;
  }
  uint64_t pos = head & (cap_ - 1);
  uint32_t len = static_cast<uint32_t>(msg.size());
  std::memcpy(data_ + pos, &len, 4);
  if (!msg.empty()) std::memcpy(data_ + pos + 8, msg.data(), msg.size());
  h_->head.store(head + 8 + Padded(msg.size()), std::memory_order_release);
  if (wake) WakeConsumer();
  return true;
}

void Ring::WakeConsumer() const {
  // Pairs with the fence in WaitForData: either the consumer sees the new
  // head before it sleeps, or we see its flag and wake it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (h_->data_waiting.load(std::memory_order_relaxed)) {
    h_->data_seq.fetch_add(1, std::memory_order_release);
    platform::FutexWake(Word(h_->data_seq));
  }
}

bool Ring::Empty() const {
  return h_->head.load(std::memory_order_acquire) == h_->tail.load(std::memory_order_relaxed);
}

bool Ring::TryPop(std::vector<std::byte>* out, Status* corrupt) {
  while (true) {
    uint64_t tail = h_->tail.load(std::memory_order_relaxed);
    uint64_t head = h_->head.load(std::memory_order_acquire);
    if (head == tail) return false;
    if (head - tail > cap_ || (tail & 7) != 0) {
      *corrupt = Corrupt("ring indexes out of range");
      return false;
    }
    uint64_t pos = tail & (cap_ - 1);
    uint32_t len;
    std::memcpy(&len, data_ + pos, 4);
    if (len == kWrap) {
      h_->tail.store(tail + (cap_ - pos), std::memory_order_release);
      continue;
    }
    if (len > max_message() || pos + 8 + len > cap_ || 8 + Padded(len) > head - tail) {
      *corrupt = Corrupt("ring message of " + std::to_string(len) + " bytes is out of range");
      return false;
    }
    out->assign(data_ + pos + 8, data_ + pos + 8 + len);
    h_->tail.store(tail + 8 + Padded(len), std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with WaitForSpace's
    if (h_->space_waiting.load(std::memory_order_relaxed)) {
      h_->space_seq.fetch_add(1, std::memory_order_release);
      platform::FutexWake(Word(h_->space_seq));
    }
    return true;
  }
}

bool Ring::WaitForData(int spin_us, int timeout_ms) {
  if (!Empty()) return true;
  auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  for (uint32_t round = 1; Empty(); ++round) {
    // The clock costs more than a look at the ring: read it every 64 rounds.
    if (spin_us > 0 && (round % 64 != 0 || std::chrono::steady_clock::now() < spin_until)) {
      CpuRelax();
      continue;
    }
    uint32_t seen = h_->data_seq.load(std::memory_order_acquire);
    h_->data_waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with WakeConsumer's
    if (Empty()) platform::FutexWait(Word(h_->data_seq), seen, timeout_ms);
    h_->data_waiting.store(0, std::memory_order_relaxed);
    return !Empty();
  }
  return true;
}

void Ring::WaitForSpace(uint64_t size, int timeout_ms) {
  uint32_t seen = h_->space_seq.load(std::memory_order_acquire);
  h_->space_waiting.store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with TryPop's
  uint64_t head, skip;
  if (!Place(size, &head, &skip)) platform::FutexWait(Word(h_->space_seq), seen, timeout_ms);
  h_->space_waiting.store(0, std::memory_order_relaxed);
}

}  // namespace zcstore::internal
