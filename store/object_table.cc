// The object table and what is done with it: finding and freeing slots,
// reading an object's header and buffers (from private copies, checked
// once), creating, sealing, getting, deleting, listing and verifying
// objects, and the name table. Every shared value is checked before use.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "store/platform_internal.h"
#include "store/store_internal.h"

namespace zcstore::internal {
namespace {

// "1.5 MiB" where that is exact, else the bytes too ("1073745920 bytes
// (1024.004 MiB)"): a message must not round a need into what is free.
std::string Bytes(uint64_t bytes) {
  char buf[64];
  double mib = static_cast<double>(bytes) / (1 << 20);
  if (bytes % (1 << 19) == 0) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", mib);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu bytes (%.3f MiB)", static_cast<unsigned long long>(bytes), mib);
  }
  return buf;
}

}  // namespace

// ---------------------------------------------------------------- the table

uint32_t StoreImpl::Find(ObjectId id) const {
  uint32_t n = geo_.max_objects;
  uint32_t s = HomeSlot(id, n);
  for (uint32_t i = 0; i < n; ++i, s = (s + 1 == n ? 0 : s + 1)) {
    const ObjectEntry& e = objects_[s];
    if (e.state == kEmpty) return kNone;
    if (e.state >= kUnsealed && e.id_hi == id.hi && e.id_lo == id.lo) return s;
  }
  return kNone;
}

uint32_t StoreImpl::FindInsertSlot(ObjectId id, bool* exists) const {
  uint32_t n = geo_.max_objects;
  uint32_t s = HomeSlot(id, n);
  uint32_t free_slot = kNone;
  *exists = false;
  for (uint32_t i = 0; i < n; ++i, s = (s + 1 == n ? 0 : s + 1)) {
    const ObjectEntry& e = objects_[s];
    if (e.state == kEmpty) return free_slot == kNone ? s : free_slot;
    if (e.state == kTombstone || e.state > kChild) {
      if (free_slot == kNone) free_slot = s;
    } else if (e.id_hi == id.hi && e.id_lo == id.lo) {
      *exists = true;
      return s;
    }
  }
  return free_slot;
}

void StoreImpl::FreeSlot(uint32_t slot) {
  ObjectEntry& e = objects_[slot];
  if (e.state == kSealed || e.state == kDeleted) {
    // Free the children listed in the object's header. The header is not
    // trusted: a listed slot is freed only if it names this object as parent.
    if (ExtentInRange(e.offset, e.size)) {
      const auto* h = reinterpret_cast<const ObjectHeader*>(data_ + e.offset);
      uint64_t n = h->num_buffers;
      if (h->magic == kObjectMagic && n <= kMaxBuffersPerObject &&
          sizeof(ObjectHeader) + n * sizeof(BufferDesc) <= e.size) {
        const auto* descs = reinterpret_cast<const BufferDesc*>(h + 1);
        for (uint64_t i = 0; i < n; ++i) {
          uint32_t c = descs[i].child_slot_plus1 - 1;
          if (descs[i].child_slot_plus1 != 0 && c < geo_.max_objects &&
              objects_[c].state == kChild && objects_[c].parent == slot) {
            FreeSlot(c);
          }
        }
      }
    }
  }
  // Hide first (one store), then unlink: a crash in between leaves a
  // tombstone still in the list, which recovery drops when it relinks.
  __atomic_store_n(&e.state, kTombstone, __ATOMIC_RELEASE);
  // A gap opens at e.offset: the run without gaps now ends before it.
  if (uint32_t h = header_->fit_hint_plus1 - 1;
      h == slot || (h < geo_.max_objects && objects_[h].offset >= e.offset)) {
    header_->fit_hint_plus1 = e.prev < geo_.max_objects ? e.prev + 1 : 0;
  }
  if (e.prev < geo_.max_objects) objects_[e.prev].next = e.next;
  else header_->extent_head = e.next;
  if (e.next < geo_.max_objects) objects_[e.next].prev = e.prev;
  header_->used -= std::min(header_->used, e.size);
  e.pins = 0;
  // A tombstone followed by an empty slot ends no probe that matters: turn
  // it, and the tombstones before it, back into empties so probes stay short.
  uint32_t n = geo_.max_objects;
  uint32_t s = slot;
  if (objects_[(s + 1) % n].state != kEmpty) return;
  for (uint32_t i = 0; i < n && objects_[s].state == kTombstone; ++i) {
    objects_[s].state = kEmpty;
    s = (s == 0 ? n - 1 : s - 1);
  }
}

Status StoreImpl::CheckExtent(uint32_t slot, const ObjectEntry& e) const {
  // Extents are whole pages: a size that is not would place the next object
  // off a page and its header off its alignment.
  if (!ExtentInRange(e.offset, e.size)) {
    return Corrupt(Describe() + ": object slot " + std::to_string(slot) +
                   " has an extent out of range (offset " + std::to_string(e.offset) + ", size " +
                   std::to_string(e.size) + ")");
  }
  return Status::OK();
}

Status StoreImpl::ReadObject(uint32_t slot, ObjectId id, std::span<const std::byte>* metadata,
                             std::vector<std::span<const std::byte>>* buffers,
                             std::optional<uint64_t>* metadata_checksum,
                             std::vector<uint64_t>* checksums) const {
  // Any process with a writable mapping can change these bytes while we
  // read them: each value is read once, into a copy, and only the copy is
  // checked and used.
  ObjectEntry entry;
  entry.offset = __atomic_load_n(&objects_[slot].offset, __ATOMIC_RELAXED);
  entry.size = __atomic_load_n(&objects_[slot].size, __ATOMIC_RELAXED);
  if (!ExtentInRange(entry.offset, entry.size)) return CheckExtent(slot, entry);
  const std::byte* extent = data_ + entry.offset;
  ObjectHeader h;
  std::memcpy(&h, extent, sizeof(h));
  // Built only on failure: Get must stay a lookup and a pin.
  auto what = [&] { return Describe() + ": object " + id.ToString(); };
  if (h.magic != kObjectMagic || h.id_hi != id.hi || h.id_lo != id.lo || h.has_checksums > 1) {
    return Corrupt(what() + " has a bad header (magic, id or checksum flag)");
  }
  if (!h.has_checksums && (geo_.flags & kFlagChecksums)) {
    // The store seals every object with checksums: a header without them was
    // damaged after Seal, and so may be everything it describes.
    return Corrupt(what() + " has no checksums although its store gives every object some: "
                   "its header is damaged");
  }
  uint64_t n = h.num_buffers;
  if (n > kMaxBuffersPerObject || sizeof(ObjectHeader) + n * sizeof(BufferDesc) > entry.size) {
    return Corrupt(what() + " claims " + std::to_string(n) + " buffers, more than its extent holds");
  }
  auto in_extent = [&](uint64_t off, uint64_t len) {
    return off <= entry.size && len <= entry.size - off;
  };
  if (!in_extent(h.metadata_offset, h.metadata_size)) {
    return Corrupt(what() + ": metadata out of range");
  }
  *metadata = {extent + h.metadata_offset, h.metadata_size};
  const std::byte* descs = extent + sizeof(ObjectHeader);
  buffers->clear();
  buffers->reserve(n);
  if (checksums) checksums->resize(n);
  for (uint64_t i = 0; i < n; ++i) {
    BufferDesc d;
    std::memcpy(&d, descs + i * sizeof(BufferDesc), sizeof(d));
    if (checksums) (*checksums)[i] = d.checksum;
    if (d.child_slot_plus1 != 0) {
      // A buffer adopted from another object: that object must be our child,
      // and the range must lie inside its extent.
      uint32_t c = d.child_slot_plus1 - 1;
      ObjectEntry child{};
      if (c < geo_.max_objects) {
        child.state = __atomic_load_n(&objects_[c].state, __ATOMIC_ACQUIRE);
        child.parent = __atomic_load_n(&objects_[c].parent, __ATOMIC_RELAXED);
        child.offset = __atomic_load_n(&objects_[c].offset, __ATOMIC_RELAXED);
        child.size = __atomic_load_n(&objects_[c].size, __ATOMIC_RELAXED);
      }
      if (c >= geo_.max_objects || child.state != kChild || child.parent != slot ||
          !ExtentInRange(child.offset, child.size) || d.offset > child.size ||
          d.size > child.size - d.offset) {
        return Corrupt(what() + ": buffer " + std::to_string(i) +
                       " refers to a child object that is not one (slot " + std::to_string(c) +
                       ")");
      }
      buffers->emplace_back(data_ + child.offset + d.offset, d.size);
      continue;
    }
    if (!in_extent(d.offset, d.size)) {
      return Corrupt(what() + ": buffer " + std::to_string(i) + " out of range (offset " +
                     std::to_string(d.offset) + ", length " + std::to_string(d.size) + ")");
    }
    buffers->emplace_back(extent + d.offset, d.size);
  }
  *metadata_checksum = h.has_checksums ? std::optional<uint64_t>(h.metadata_checksum) : std::nullopt;
  return Status::OK();
}

void StoreImpl::SyncEntry(uint32_t slot) {
  if (backing_ != Backing::kFile) return;
  (void)platform::SyncRange(reinterpret_cast<std::byte*>(&objects_[slot]), sizeof(ObjectEntry));
  (void)platform::SyncRange(base_, sizeof(StoreHeader));
}

// ---------------------------------------------------------------- objects

Result<std::byte*> StoreImpl::WritableData() {
  std::lock_guard<std::mutex> guard(write_map_mutex_);
  if (write_data_ == nullptr) {
    auto p = platform::MapFile(fd_, geo_.data_size, true, geo_.data_offset);
    if (!p.ok()) return p.status().WithContext(Describe());
    write_data_ = *p;
  }
  return write_data_;
}

Result<uint64_t> StoreImpl::FileOffsetOf(const void* p) const {
  auto at = reinterpret_cast<uintptr_t>(p);
  auto in = [&](const std::byte* region) {
    return region != nullptr && at >= reinterpret_cast<uintptr_t>(region) &&
           at - reinterpret_cast<uintptr_t>(region) < geo_.data_size;
  };
  if (in(data_)) return geo_.data_offset + (at - reinterpret_cast<uintptr_t>(data_));
  std::lock_guard<std::mutex> guard(write_map_mutex_);
  if (in(write_data_)) return geo_.data_offset + (at - reinterpret_cast<uintptr_t>(write_data_));
  return InvalidArgument("FileOffsetOf: the address is not in this store's data region");
}

Result<ObjectBuilder> StoreImpl::CreateObject(ObjectId id, size_t metadata_size,
                                              std::span<const size_t> buffer_sizes,
                                              std::span<ObjectBuilder> adopt) {
  if (read_only_) return PermissionDenied(Describe() + " was opened read-only");
  if (id.is_nil()) return InvalidArgument("the nil object id is reserved");
  if (buffer_sizes.size() + adopt.size() > kMaxBuffersPerObject) {
    return InvalidArgument("an object has at most " + std::to_string(kMaxBuffersPerObject) +
                           " buffers");
  }
  for (const ObjectBuilder& child : adopt) {
    if (child.impl_.get() != this || child.buffers_.size() != 1 || !child.children_.empty()) {
      return InvalidArgument(
          "an adopted builder must be an unsealed single-buffer object of the same handle");
    }
  }
  auto plan = PlanExtent(metadata_size, buffer_sizes, adopt.size(), geo_.alignment);
  if (!plan.ok()) return plan.status();
  uint64_t size = plan->extent_size;
  if (Status st = LockForCall(); !st.ok()) return st;
  bool exists = false;
  uint32_t slot = FindInsertSlot(id, &exists);
  if (exists) {
    bool deleted = objects_[slot].state == kDeleted;
    Unlock();
    return AlreadyExists("object " + id.ToString() + " already exists in " + Describe() +
                         (deleted ? " (deleted, but still pinned by a view)" : ""));
  }
  bool placed = slot != kNone && Allocate(size, slot);
  if (!placed && ReapDeadLocked() > 0) {
    slot = FindInsertSlot(id, &exists);
    placed = slot != kNone && Allocate(size, slot);
  }
  if (!placed) {
    std::string msg =
        slot == kNone
            ? Describe() + " is full: all " + std::to_string(geo_.max_objects) +
                  " object slots are used; delete objects or raise max_objects"
            : Describe() + " is full: the object needs " + Bytes(size) +
                  " (its metadata and buffers with their headers and alignment; "
                  "Store::CapacityFor computes it), " + Bytes(header_->used) + " of " +
                  Bytes(geo_.data_size) + " are used and the largest free extent is " +
                  Bytes(LargestFree()) + "; raise capacity or delete objects";
    Unlock();
    return StoreFull(msg);
  }
  // Back the extent with storage before anyone writes to it, so a full
  // /dev/shm or disk is a StoreFull here and never a SIGBUS later. Each byte
  // of the data region is reserved once: `reserved_bytes` only grows.
  if (uint64_t end = objects_[slot].offset + size; end > header_->reserved_bytes) {
    uint64_t from = std::min(header_->reserved_bytes, geo_.data_size);
    Status st = platform::ReserveRange(fd_, geo_.data_offset + from, end - from, Describe());
    if (!st.ok()) {
      FreeSlot(slot);
      Unlock();
      return st;
    }
    header_->reserved_bytes = end;
  }
  ObjectEntry& e = objects_[slot];
  e.id_hi = id.hi;
  e.id_lo = id.lo;
  e.creator_client = client_;
  e.pins = 0;
  e.sealed_unix_ns = 0;
  __atomic_store_n(&e.state, kUnsealed, __ATOMIC_RELEASE);
  uint64_t offset = e.offset;
  Unlock();

  auto write_data = WritableData();
  if (!write_data.ok()) {
    // If the lock cannot be had, the unsealed slot goes when this handle
    // closes (or its process dies): reclaimed like any dead writer's.
    if (LockForCall().ok()) {
      FreeSlot(slot);
      Unlock();
    }
    return write_data.status();
  }
  std::byte* extent = *write_data + offset;
  auto* h = reinterpret_cast<ObjectHeader*>(extent);
  *h = ObjectHeader{};
  h->magic = kObjectMagic;
  h->num_buffers = static_cast<uint32_t>(buffer_sizes.size() + adopt.size());
  h->id_hi = id.hi;
  h->id_lo = id.lo;
  h->metadata_offset = plan->metadata_offset;
  h->metadata_size = metadata_size;
  auto* descs = reinterpret_cast<BufferDesc*>(h + 1);
  ObjectBuilder b;
  b.impl_ = shared_from_this();
  b.slot_ = slot;
  b.id_ = id;
  b.extent_ = {extent, size};
  b.metadata_ = {extent + plan->metadata_offset, metadata_size};
  b.buffers_.reserve(buffer_sizes.size());
  for (size_t i = 0; i < buffer_sizes.size(); ++i) {
    descs[i] = BufferDesc{plan->buffer_offsets[i], buffer_sizes[i], 0, 0, 0};
    b.buffers_.emplace_back(extent + plan->buffer_offsets[i], buffer_sizes[i]);
  }
  b.children_.reserve(adopt.size());
  for (size_t k = 0; k < adopt.size(); ++k) {
    ObjectBuilder& child = adopt[k];
    std::span<std::byte> buf = child.buffers_[0];
    descs[buffer_sizes.size() + k] = BufferDesc{
        static_cast<uint64_t>(buf.data() - child.extent_.data()), buf.size(), 0, child.slot_ + 1, 0};
    b.buffers_.push_back(buf);
    b.children_.push_back(std::move(child));
  }
  return b;
}

Status StoreImpl::Seal(ObjectBuilder& b, ObjectView* pinned) {
  if (Status st = CheckProcess(); !st.ok()) return st;
  // The builder remembers its extent: nothing here is re-read from the
  // shared table, which another process could have scribbled on.
  std::byte* extent = b.extent_.data();
  uint64_t size = b.extent_.size();
  auto* h = reinterpret_cast<ObjectHeader*>(extent);
  if (geo_.flags & kFlagChecksums) {
    auto* descs = reinterpret_cast<BufferDesc*>(h + 1);
    h->metadata_checksum = XXH3_64bits(b.metadata_.data(), b.metadata_.size());
    for (size_t i = 0; i < b.buffers_.size(); ++i) {
      descs[i].checksum = XXH3_64bits(b.buffers_[i].data(), b.buffers_[i].size());
    }
    h->has_checksums = 1;
  }
  if (backing_ == Backing::kFile) {
    Status st = platform::SyncRange(extent, size);
    for (const ObjectBuilder& c : b.children_) {
      if (st.ok()) st = platform::SyncRange(c.extent_.data(), c.extent_.size());
    }
    if (!st.ok()) return st;
  }
  auto ours = [&](const ObjectBuilder& x) {
    const ObjectEntry& e = objects_[x.slot_];
    return e.state == kUnsealed && e.creator_client == client_ && e.id_hi == x.id_.hi &&
           e.id_lo == x.id_.lo;
  };
  if (Status st = LockForCall(); !st.ok()) return st;
  bool all_ours = ours(b);
  for (const ObjectBuilder& c : b.children_) all_ours = all_ours && ours(c);
  if (!all_ours) {
    Unlock();
    return Corrupt(Describe() + ": object " + b.id_.ToString() +
                   " was taken away while being written (was this process judged dead?)");
  }
  // The pin first: if none can be had, nothing is published.
  if (pinned != nullptr) {
    if (Status st = PinLocked(b.slot_); !st.ok()) {
      Unlock();
      return st;
    }
  }
  // Children first: a crash between these stores leaves an unsealed parent,
  // which recovery frees together with the children that name it.
  for (ObjectBuilder& c : b.children_) {
    objects_[c.slot_].parent = b.slot_;
    __atomic_store_n(&objects_[c.slot_].state, kChild, __ATOMIC_RELEASE);
    SyncEntry(c.slot_);
  }
  ObjectEntry& e = objects_[b.slot_];
  e.sealed_unix_ns = platform::UnixNanos();
  __atomic_store_n(&e.state, kSealed, __ATOMIC_RELEASE);
  SyncEntry(b.slot_);
  Unlock();
  for (ObjectBuilder& c : b.children_) c.impl_.reset();  // now owned by the parent
  b.children_.clear();
  if (pinned != nullptr) {
    ObjectView v;
    Status st = ReadObject(b.slot_, b.id_, &v.metadata_, &v.buffers_, &v.metadata_checksum_,
                           nullptr);
    if (!st.ok()) {
      if (LockForCall().ok()) {  // else the pin goes with this handle
        UnpinLocked(b.slot_);
        Unlock();
      }
      return st;
    }
    v.impl_ = shared_from_this();
    v.slot_ = b.slot_;
    v.id_ = b.id_;
    *pinned = std::move(v);
  }
  return Status::OK();
}

Status StoreImpl::Abort(ObjectBuilder& b) {
  if (InForkedChild()) return Status::OK();  // the parent's object, not ours to drop
  ObjectEntry& e = objects_[b.slot_];
  if (Status st = LockForCall(); !st.ok()) return st;
  if (e.state == kUnsealed && e.creator_client == client_ && e.id_hi == b.id_.hi &&
      e.id_lo == b.id_.lo) {
    FreeSlot(b.slot_);
  }
  Unlock();
  b.children_.clear();  // each child aborts itself
  return Status::OK();
}

Result<ObjectView> StoreImpl::Get(ObjectId id, std::vector<uint64_t>* checksums) {
  uint32_t slot;
  if (!snapshot_) {
    if (Status st = LockForCall(); !st.ok()) return st;
    slot = Find(id);
    if (slot == kNone || objects_[slot].state != kSealed) {
      Unlock();
      return NotFound("object " + id.ToString() + " is not in " + Describe() +
                      (slot != kNone ? " (it is deleted or not yet sealed)" : ""));
    }
    Status st = PinLocked(slot);
    Unlock();
    if (!st.ok()) return st;
  } else {
    slot = Find(id);
    if (slot == kNone || objects_[slot].state != kSealed) {
      return NotFound("object " + id.ToString() + " is not in " + Describe());
    }
  }
  ObjectView v;
  Status st = ReadObject(slot, id, &v.metadata_, &v.buffers_, &v.metadata_checksum_, checksums);
  if (!st.ok()) {
    if (!snapshot_ && LockForCall().ok()) {  // else the pin goes with this handle
      UnpinLocked(slot);
      Unlock();
    }
    return st;
  }
  v.impl_ = shared_from_this();
  v.slot_ = slot;
  v.id_ = id;
  return v;
}

Status StoreImpl::Release(ObjectView& v) {
  if (!snapshot_ && !InForkedChild()) {  // a fork's pins are its parent's
    // A lock held too long by a stuck process: the pin stays until this
    // handle closes or its process dies, which release every pin of it.
    if (Status st = LockForCall(); !st.ok()) return st;
    UnpinLocked(v.slot_);
    Unlock();
  }
  return Status::OK();
}

Status StoreImpl::Delete(ObjectId id) {
  if (read_only_) return PermissionDenied(Describe() + " was opened read-only");
  if (Status st = LockForCall(); !st.ok()) return st;
  uint32_t slot = Find(id);
  if (slot == kNone || objects_[slot].state != kSealed) {
    Unlock();
    return NotFound("object " + id.ToString() + " is not in " + Describe() +
                    (slot != kNone ? " (already deleted, or not yet sealed)" : ""));
  }
  UnbindAllLocked(id);
  if (objects_[slot].pins == 0) {
    FreeSlot(slot);
  } else {
    __atomic_store_n(&objects_[slot].state, kDeleted, __ATOMIC_RELEASE);
  }
  SyncEntry(slot);
  Unlock();
  return Status::OK();
}

bool StoreImpl::Contains(ObjectId id) {
  if (snapshot_) {
    uint32_t s = Find(id);
    return s != kNone && objects_[s].state == kSealed;
  }
  if (!LockForCall().ok()) return false;  // a stuck lock holder: not known to be there
  uint32_t s = Find(id);
  bool found = s != kNone && objects_[s].state == kSealed;
  Unlock();
  return found;
}

Result<std::vector<ObjectInfo>> StoreImpl::List() {
  // Everything is read under the lock: outside it, a concurrent Delete could
  // free an extent and a Put reuse it while we read its header.
  std::vector<ObjectInfo> out;
  std::span<const std::byte> md;
  std::vector<std::span<const std::byte>> bufs;
  Status st;
  if (!snapshot_) {
    if (Status st = LockForCall(); !st.ok()) return st;
  }
  for (uint32_t slot = 0; slot < geo_.max_objects && st.ok(); ++slot) {
    ObjectEntry e = objects_[slot];
    if (!IsLive(e.state) || e.state == kChild) continue;
    ObjectInfo info;
    info.id = ObjectId{e.id_hi, e.id_lo};
    info.state = e.state == kUnsealed  ? ObjectInfo::State::kUnsealed
                 : e.state == kSealed ? ObjectInfo::State::kSealed
                                      : ObjectInfo::State::kDeletedPinned;
    info.extent_bytes = e.size;
    info.pins = e.pins;
    info.sealed_unix_ns = e.sealed_unix_ns;
    if (e.state != kUnsealed) {
      std::optional<uint64_t> md_checksum;
      st = ReadObject(slot, info.id, &md, &bufs, &md_checksum, nullptr);
      info.metadata_bytes = md.size();
      info.num_buffers = static_cast<uint32_t>(bufs.size());
      for (auto& b : bufs) info.data_bytes += b.size();
      info.has_checksums = md_checksum.has_value();
    }
    out.push_back(info);
  }
  if (!snapshot_) Unlock();
  if (!st.ok()) return st;
  return out;
}

Status StoreImpl::LockAndReap() {
  if (snapshot_) return Status::OK();
  if (Status st = LockForCall(); !st.ok()) return st;
  ReapDeadLocked();
  return Status::OK();
}

uint32_t StoreImpl::LiveClientsLocked() const {
  uint32_t live = 0;
  for (uint32_t c = 0; c < geo_.max_clients; ++c) live += clients_[c].state == kClientLive;
  return live;
}

Result<StoreStats> StoreImpl::Stats() {
  StoreStats s;
  if (Status st = LockAndReap(); !st.ok()) return st;
  s.capacity = geo_.data_size;
  s.used = header_->used;
  s.largest_free = LargestFree();
  s.max_objects = geo_.max_objects;
  s.max_clients = geo_.max_clients;
  for (uint32_t i = 0; i < geo_.max_objects; ++i) {
    const ObjectEntry& e = objects_[i];
    if (e.state == kSealed) ++s.objects;
    if (e.state == kUnsealed) ++s.unsealed;
    if (e.state == kDeleted) ++s.deleted_pinned;
    if (e.state == kSealed || e.state == kDeleted) s.pins += e.pins;
  }
  s.clients = LiveClientsLocked();
  for (uint32_t n = 0; n < geo_.max_names; ++n) s.names += names_[n].used == 1;
  if (!snapshot_) Unlock();
  return s;
}

Result<uint32_t> StoreImpl::FreeClientSlots() {
  if (Status st = LockAndReap(); !st.ok()) return st;
  uint32_t free = geo_.max_clients - LiveClientsLocked();
  if (!snapshot_) Unlock();
  return free;
}

Status StoreImpl::Verify(ObjectId id) {
  std::vector<uint64_t> checksums;
  auto view = Get(id, &checksums);  // pinned while we read; Corrupt if it lost its checksums
  if (!view.ok()) return view.status();
  std::span<const std::byte> md = view->metadata();
  const std::vector<std::span<const std::byte>>& bufs = view->buffers();
  std::string what = Describe() + ": object " + id.ToString();
  if (!view->metadata_checksum_) {
    return InvalidArgument(what + " was sealed without checksums; nothing to verify");
  }
  if (XXH3_64bits(md.data(), md.size()) != *view->metadata_checksum_) {
    return Corrupt(what + ": metadata checksum mismatch");
  }
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (XXH3_64bits(bufs[i].data(), bufs[i].size()) != checksums[i]) {
      return Corrupt(what + ": buffer " + std::to_string(i) + " checksum mismatch (" +
                     std::to_string(bufs[i].size()) + " bytes)");
    }
  }
  return Status::OK();
}

// ---------------------------------------------------------------- names

namespace {
// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code
// points past U+10FFFF): names are text to every runtime that lists them.
bool IsUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 0x2) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

Status CheckName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name.find('\0') != std::string_view::npos) {
    return InvalidArgument("an object name is 1-" + std::to_string(kMaxNameLength) +
                           " bytes without NUL");
  }
  if (!IsUtf8(name)) return InvalidArgument("an object name must be valid UTF-8");
  return Status::OK();
}
bool NameIs(const NameEntry& n, std::string_view name) {
  return n.used == 1 && strnlen(n.name, sizeof(n.name)) == name.size() &&
         std::memcmp(n.name, name.data(), name.size()) == 0;
}
// XXH3 of the name bytes and the id, folded to 32 bits, never 0.
uint32_t NameChecksum(const NameEntry& n) {
  uint8_t bytes[sizeof(n.name) + 16];
  std::memcpy(bytes, n.name, sizeof(n.name));
  std::memcpy(bytes + sizeof(n.name), &n.id_hi, 8);
  std::memcpy(bytes + sizeof(n.name) + 8, &n.id_lo, 8);
  uint64_t h = XXH3_64bits(bytes, sizeof(bytes));
  return static_cast<uint32_t>(h ^ (h >> 32)) | 1;
}
// False if the entry carries a checksum that its bytes do not match.
bool NameIntact(const NameEntry& n) { return n.checksum == 0 || n.checksum == NameChecksum(n); }
}  // namespace

Status StoreImpl::VerifyTables() {
  if (!snapshot_) {
    if (Status st = LockForCall(); !st.ok()) return st;
  }
  Status st;
  for (uint32_t s = 0; s < geo_.max_objects && st.ok(); ++s) {
    ObjectEntry e = objects_[s];
    if (e.state > kChild) {
      st = Corrupt(Describe() + ": object slot " + std::to_string(s) + " has an unknown state (" +
                   std::to_string(e.state) + "); the object it held is lost");
    } else if (IsLive(e.state)) {
      st = CheckExtent(s, e);
    }
  }
  for (uint32_t i = 0; i < geo_.max_names && st.ok(); ++i) {
    NameEntry n = names_[i];
    if (n.used == 0) continue;
    uint32_t slot = n.used == 1 && strnlen(n.name, sizeof(n.name)) < sizeof(n.name)
                        ? Find(ObjectId{n.id_hi, n.id_lo})
                        : kNone;
    if (slot == kNone || objects_[slot].state != kSealed || !NameIntact(n)) {
      st = Corrupt(Describe() + ": name entry " + std::to_string(i) +
                   " is damaged, or is bound to an object that is not there");
    }
  }
  if (!snapshot_) Unlock();
  return st;
}

void StoreImpl::UnbindAllLocked(ObjectId id) {
  if (header_->names_bound == 0) return;
  for (uint32_t i = 0; i < geo_.max_names; ++i) {
    NameEntry& n = names_[i];
    if (n.used == 1 && n.id_hi == id.hi && n.id_lo == id.lo) {
      n.used = 0;
      n.name[0] = '\0';
      --header_->names_bound;
    }
  }
}

Status StoreImpl::Bind(std::string_view name, ObjectId id) {
  if (read_only_) return PermissionDenied(Describe() + " was opened read-only");
  Status st = CheckName(name);
  if (!st.ok()) return st;
  if (Status st = LockForCall(); !st.ok()) return st;
  uint32_t slot = Find(id);
  NameEntry* free_entry = nullptr;
  if (slot == kNone || objects_[slot].state != kSealed) {
    st = NotFound("cannot bind '" + std::string(name) + "': object " + id.ToString() +
                  " is not a sealed object of " + Describe());
  }
  for (uint32_t i = 0; st.ok() && i < geo_.max_names; ++i) {
    if (NameIs(names_[i], name)) {
      st = AlreadyExists("name '" + std::string(name) + "' is already bound in " + Describe());
    } else if (names_[i].used != 1 && free_entry == nullptr) {
      free_entry = &names_[i];
    }
  }
  if (st.ok() && free_entry == nullptr) {
    st = StoreFull(Describe() + " has all " + std::to_string(geo_.max_names) +
                   " names bound; unbind some or raise max_names");
  }
  if (st.ok()) {
    std::memset(free_entry->name, 0, sizeof(free_entry->name));
    std::memcpy(free_entry->name, name.data(), name.size());
    free_entry->id_hi = id.hi;
    free_entry->id_lo = id.lo;
    free_entry->checksum = NameChecksum(*free_entry);
    __atomic_store_n(&free_entry->used, 1u, __ATOMIC_RELEASE);
    ++header_->names_bound;
  }
  Unlock();
  return st;
}

Result<ObjectId> StoreImpl::Lookup(std::string_view name) {
  Status st = CheckName(name);
  if (!st.ok()) return st;
  if (!snapshot_) {
    if (Status st = LockForCall(); !st.ok()) return st;
  }
  Result<ObjectId> out = NotFound("no object is bound to '" + std::string(name) + "' in " +
                                  Describe());
  for (uint32_t i = 0; i < geo_.max_names; ++i) {
    NameEntry n = names_[i];  // a copy: checked, then used
    if (NameIs(n, name)) {
      out = NameIntact(n) ? Result<ObjectId>(ObjectId{n.id_hi, n.id_lo})
                          : Corrupt(Describe() + ": the entry of name '" + std::string(name) +
                                    "' fails its checksum");
      break;
    }
  }
  if (!snapshot_) Unlock();
  return out;
}

Status StoreImpl::Unbind(std::string_view name) {
  if (read_only_) return PermissionDenied(Describe() + " was opened read-only");
  Status st = CheckName(name);
  if (!st.ok()) return st;
  if (Status st = LockForCall(); !st.ok()) return st;
  st = NotFound("no object is bound to '" + std::string(name) + "' in " + Describe());
  for (uint32_t i = 0; i < geo_.max_names; ++i) {
    if (NameIs(names_[i], name)) {
      names_[i].used = 0;
      names_[i].name[0] = '\0';
      --header_->names_bound;
      st = Status::OK();
      break;
    }
  }
  Unlock();
  return st;
}

Result<std::vector<std::pair<std::string, ObjectId>>> StoreImpl::ListNames() {
  std::vector<std::pair<std::string, ObjectId>> out;
  if (!snapshot_) {
    if (Status st = LockForCall(); !st.ok()) return st;
  }
  for (uint32_t i = 0; i < geo_.max_names; ++i) {
    NameEntry n = names_[i];  // a copy: checked, then used
    size_t len = strnlen(n.name, sizeof(n.name));
    if (n.used == 1 && len > 0 && len < sizeof(n.name) && NameIntact(n)) {
      out.emplace_back(std::string(n.name, len), ObjectId{n.id_hi, n.id_lo});
    }
  }
  if (!snapshot_) Unlock();
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

Result<uint32_t> StoreImpl::ReclaimDead() {
  if (snapshot_) return 0u;
  if (Status st = LockForCall(); !st.ok()) return st;
  uint32_t n = ReapDeadLocked();
  Unlock();
  return n;
}

}  // namespace zcstore::internal
