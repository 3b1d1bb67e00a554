// The client and pin registry: one record per open handle, each with its
// pins, and how a dead handle's pins and unsealed objects are reclaimed.
// A client's liveness is the kernel's word (an OFD lock on its record: see
// docs/format.md), with the process stamp as the fallback.
#include <algorithm>

#include "store/platform_internal.h"
#include "store/store_internal.h"

namespace zcstore::internal {

Status StoreImpl::PinLocked(uint32_t slot) {
  PinRecord* pins = Pins(client_);
  if (uint32_t r = pin_of_slot_[slot]; r != 0 && pins[r - 1].slot == slot && pins[r - 1].count) {
    ++pins[r - 1].count;
    ++objects_[slot].pins;
    return Status::OK();
  }
  if (free_records_.empty()) {
    return TooManyPins("this handle already pins " + std::to_string(geo_.max_pins) +
                       " objects of " + Describe() +
                       " (StoreOptions::max_pins_per_client); release some views first, or "
                       "create the store with a larger limit");
  }
  uint32_t r = free_records_.back();
  free_records_.pop_back();
  pins[r].slot = slot;  // slot first: count != 0 publishes the record
  __atomic_store_n(&pins[r].count, 1u, __ATOMIC_RELEASE);
  pin_of_slot_[slot] = r + 1;
  ++objects_[slot].pins;
  return Status::OK();
}

void StoreImpl::UnpinLocked(uint32_t slot) {
  PinRecord* pins = Pins(client_);
  uint32_t r = pin_of_slot_[slot];
  if (r == 0 || pins[r - 1].slot != slot || pins[r - 1].count == 0) return;  // not ours
  PinRecord& rec = pins[r - 1];
  if (--rec.count == 0) {
    pin_of_slot_[slot] = 0;
    free_records_.push_back(r - 1);
  }
  ObjectEntry& e = objects_[slot];
  if (e.pins > 0) --e.pins;
  if (e.pins == 0 && e.state == kDeleted) FreeSlot(slot);
}

void StoreImpl::ReleaseClientLocked(uint32_t client, bool dead, bool free_record) {
  PinRecord* pins = Pins(client);
  for (uint32_t i = 0; i < geo_.max_pins; ++i) {
    PinRecord& r = pins[i];
    if (r.count != 0 && r.slot < geo_.max_objects) {
      ObjectEntry& e = objects_[r.slot];
      if (e.state == kSealed || e.state == kDeleted) {
        e.pins -= std::min(e.pins, r.count);
        if (e.pins == 0 && e.state == kDeleted) FreeSlot(r.slot);
      }
    }
    r = PinRecord{0, 0};
  }
  // Objects a dead process was writing can never be sealed: free them. (A
  // live handle cannot reach here with unsealed objects: builders keep it.)
  if (dead) {
    for (uint32_t s = 0; s < geo_.max_objects; ++s) {
      if (objects_[s].state == kUnsealed && objects_[s].creator_client == client) FreeSlot(s);
    }
  }
  if (free_record) __atomic_store_n(&clients_[client].state, kClientFree, __ATOMIC_RELEASE);
}

uint32_t StoreImpl::ReapDeadLocked() {
  uint32_t reaped = 0;
  for (uint32_t c = 0; c < geo_.max_clients; ++c) {
    if (c != client_ && clients_[c].state == kClientLive && !ClientAlive(c)) {
      ReleaseClientLocked(c, /*dead=*/true);
      ++reaped;
    }
  }
  return reaped;
}

bool StoreImpl::ClientAlive(uint32_t c) const {
  if (c == client_) return true;
  const ClientEntry& ce = clients_[c];
  if (ce.liveness == kLivenessLock && private_description_) {
    return platform::ByteRangeLocked(fd_, ClientLockOffset(c), 1);
  }
  return platform::IsAlive(ce.process);
}

bool StoreImpl::AnyLiveClient() const {
  // Any liveness lock held at all (by a live handle, or by one closing
  // that has freed its record already) means somebody may be inside.
  if (private_description_ &&
      platform::ByteRangeLocked(fd_, geo_.clients_offset,
                                uint64_t{geo_.max_clients} * sizeof(ClientEntry))) {
    return true;
  }
  for (uint32_t c = 0; c < geo_.max_clients; ++c) {
    if (clients_[c].state == kClientLive && ClientAlive(c)) return true;
  }
  return false;
}

}  // namespace zcstore::internal
