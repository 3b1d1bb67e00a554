// Recovery: putting a store back in order after a process died at any
// instruction, and sweeping away stores whose every user died.
//
// The object table's per-slot fields (id, state, offset, size, creator) and
// the clients' pin records are the primary state; each is published by one
// aligned store written last (state, count, used). Everything else is
// derived: the extent list, `used`, and each object's `pins`. Recovery throws
// the derived state away and rebuilds it from the primary state, dropping
// whatever a dead process left half-done.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "store/platform_internal.h"
#include "store/store_internal.h"

namespace zcstore {
namespace internal {

bool StoreImpl::HeaderNames(const ObjectEntry& e) const {
  ObjectHeader h;
  std::memcpy(&h, data_ + e.offset, sizeof(h));  // e passed ExtentInRange
  return h.magic == kObjectMagic && h.id_hi == e.id_hi && h.id_lo == e.id_lo &&
         h.num_buffers <= kMaxBuffersPerObject &&
         sizeof(ObjectHeader) + uint64_t{h.num_buffers} * sizeof(BufferDesc) <= e.size;
}

void StoreImpl::RecoverLocked() {
  const uint32_t n = geo_.max_objects;
  // 1. Clients: drop the dead (their pin records go with them) and any slot
  //    in a state we do not know.
  for (uint32_t c = 0; c < geo_.max_clients; ++c) {
    ClientEntry& ce = clients_[c];
    bool live = ce.state == kClientLive && ClientAlive(c);
    if (!live) {
      PinRecord* pins = Pins(c);
      std::fill(pins, pins + geo_.max_pins, PinRecord{0, 0});
      ce.state = kClientFree;
    }
  }
  // 2. Objects: unsealed ones whose writer is gone can never be sealed;
  //    unknown states, extents out of range and written objects whose own
  //    header does not name them (a damaged offset points at a neighbour)
  //    are dropped. Only an entry that fails its own checks is dropped.
  for (uint32_t s = 0; s < n; ++s) {
    ObjectEntry& e = objects_[s];
    if (e.state > kChild) {
      e.state = kTombstone;
    } else if (e.state >= kUnsealed) {
      bool writer_gone = e.state == kUnsealed &&
                         (e.creator_client >= geo_.max_clients ||
                          clients_[e.creator_client].state != kClientLive);
      if (writer_gone || !ExtentInRange(e.offset, e.size) ||
          (e.state != kUnsealed && !HeaderNames(e))) {
        e.state = kTombstone;
      }
    }
    e.pins = 0;
  }
  // 3. Pins: recount from the live clients' records.
  for (uint32_t c = 0; c < geo_.max_clients; ++c) {
    if (clients_[c].state != kClientLive) continue;
    PinRecord* pins = Pins(c);
    for (uint32_t i = 0; i < geo_.max_pins; ++i) {
      PinRecord& r = pins[i];
      if (r.count == 0) continue;
      if (r.slot >= n || (objects_[r.slot].state != kSealed && objects_[r.slot].state != kDeleted)) {
        r = PinRecord{0, 0};
        continue;
      }
      objects_[r.slot].pins += r.count;
    }
  }
  // 4. Deleted objects nobody pins any more are free, and so are children
  //    whose parent is not a sealed or deleted object any more.
  for (uint32_t s = 0; s < n; ++s) {
    if (objects_[s].state == kDeleted && objects_[s].pins == 0) objects_[s].state = kTombstone;
  }
  for (uint32_t s = 0; s < n; ++s) {
    ObjectEntry& e = objects_[s];
    if (e.state != kChild) continue;
    if (e.parent >= n ||
        (objects_[e.parent].state != kSealed && objects_[e.parent].state != kDeleted)) {
      e.state = kTombstone;
    }
  }
  // 5. The extent list: live extents in offset order. Two that still
  //    overlap both passed their checks (or one is being written, which has
  //    no header to check yet): a written object wins over one being
  //    written, else the earlier one stays.
  std::vector<uint32_t> live;
  for (uint32_t s = 0; s < n; ++s) {
    if (IsLive(objects_[s].state)) live.push_back(s);
  }
  std::sort(live.begin(), live.end(), [&](uint32_t a, uint32_t b) {
    return objects_[a].offset != objects_[b].offset ? objects_[a].offset < objects_[b].offset
                                                    : objects_[a].state > objects_[b].state;
  });
  std::vector<uint32_t> kept;
  for (uint32_t s : live) {
    ObjectEntry& e = objects_[s];
    if (!kept.empty()) {
      ObjectEntry& p = objects_[kept.back()];
      if (e.offset < p.offset + p.size) {
        if (p.state == kUnsealed && e.state != kUnsealed) {
          p.state = kTombstone;
          kept.pop_back();
          // `e` may overlap what came before `p` too; the loop below skips it then.
        } else {
          e.state = kTombstone;
          continue;
        }
      }
    }
    kept.push_back(s);
  }
  uint32_t prev = kNone;
  uint64_t prev_end = 0, used = 0;
  header_->extent_head = kNone;
  header_->fit_hint_plus1 = 0;
  for (uint32_t s : kept) {
    ObjectEntry& e = objects_[s];
    if (e.offset < prev_end) {
      e.state = kTombstone;
      continue;
    }
    e.prev = prev;
    e.next = kNone;
    if (prev == kNone) header_->extent_head = s;
    else objects_[prev].next = s;
    prev = s;
    prev_end = e.offset + e.size;
    used += e.size;
  }
  header_->used = used;
  // 6. Names: an entry must be NUL-terminated to be used; recount them.
  uint32_t bound = 0;
  for (uint32_t i = 0; i < geo_.max_names; ++i) {
    NameEntry& ne = names_[i];
    if (ne.used != 0 && (ne.used != 1 || strnlen(ne.name, sizeof(ne.name)) == sizeof(ne.name) ||
                         ne.name[0] == '\0')) {
      ne.used = 0;
      ne.name[0] = '\0';
    }
    bound += ne.used == 1;
  }
  header_->names_bound = bound;
  ++header_->epoch;
}

bool StoreImpl::RemoveIfAbandoned(const std::string& path) {
  // As Open opens it: no link, no FIFO, only a file of this user.
  auto fd = platform::OpenStoreFile(path, O_RDONLY, /*allow_shared_write=*/true);
  if (!fd.ok()) return false;
  bool removed = false;
  // A process opening the store holds this lock until it is registered, so
  // holding it here means no opener is between its open(2) and its client
  // record; an opener that comes after the unlink sees the name gone.
  if (platform::LockFile(*fd, /*exclusive=*/true, /*timeout_ms=*/0, path).ok()) {
    StoreHeader h;
    auto size = platform::FileSize(*fd);
    bool abandoned = false;
    if (size.ok() && pread(*fd, &h, sizeof(h), 0) == static_cast<ssize_t>(sizeof(h))) {
      auto geo = Geometry::FromHeader(h, *size, path);
      if (geo.ok() && !(geo->flags & kFlagPersistent) && !platform::IsAlive(h.creator)) {
        uint64_t table = uint64_t{geo->max_clients} * sizeof(ClientEntry);
        // A liveness lock held anywhere in the client table: in use.
        abandoned = !platform::ByteRangeLocked(*fd, geo->clients_offset, table);
        std::vector<ClientEntry> clients(geo->max_clients);
        ssize_t want = static_cast<ssize_t>(table);
        if (pread(*fd, clients.data(), want, static_cast<off_t>(geo->clients_offset)) != want) {
          abandoned = false;
        }
        for (const ClientEntry& c : clients) {
          if (c.state == kClientLive && c.liveness != kLivenessLock && platform::IsAlive(c.process)) {
            abandoned = false;
          }
        }
      }
    }
    removed = abandoned && platform::NamesFile(path, *fd) && platform::RemoveFile(path).ok();
  }
  platform::CloseFile(*fd);
  return removed;
}

}  // namespace internal

Result<std::vector<std::string>> Store::ListStores(const std::string& shm_dir) {
  if (Status st = internal::CheckShmDir(shm_dir); !st.ok()) return st;
  auto entries = internal::platform::ListDirectory(shm_dir);
  if (!entries.ok()) return entries.status();
  std::string prefix = internal::StoreImpl::SegmentPrefix();
  std::vector<std::string> names;
  for (const std::string& e : *entries) {
    if (e.rfind(prefix, 0) != 0 || e.find(".init-") != std::string::npos) continue;
    // Only stores this user could open: not another user's file planted
    // under our prefix, not a link or a FIFO.
    auto owner = internal::platform::FileOwner(shm_dir + "/" + e);
    if (owner.ok() && *owner == internal::platform::UserId()) names.push_back(e.substr(prefix.size()));
  }
  std::sort(names.begin(), names.end());
  return names;
}

Result<std::vector<std::string>> Store::CollectGarbage(const std::string& shm_dir) {
  if (Status st = internal::CheckShmDir(shm_dir); !st.ok()) return st;
  auto entries = internal::platform::ListDirectory(shm_dir);
  if (!entries.ok()) return entries.status();
  std::string prefix = internal::StoreImpl::SegmentPrefix();
  std::vector<std::string> removed;
  for (const std::string& e : *entries) {
    if (e.rfind(prefix, 0) != 0) continue;
    std::string path = shm_dir + "/" + e;
    // Never touch what is not this user's regular file (sticky /dev/shm
    // would stop most of it, but not root).
    auto owner = internal::platform::FileOwner(path);
    if (!owner.ok() || *owner != internal::platform::UserId()) continue;
    size_t temp = e.find(".init-");
    bool gone = false;
    if (temp != std::string::npos) {
      // "<name>.init-<pid>-<random>": a store whose creator died mid-create.
      pid_t pid = static_cast<pid_t>(std::strtol(e.c_str() + temp + 6, nullptr, 10));
      gone = pid > 0 && kill(pid, 0) != 0 && errno == ESRCH &&
             internal::platform::RemoveFile(path).ok();
    } else {
      gone = internal::StoreImpl::RemoveIfAbandoned(path);
    }
    if (gone) removed.push_back(e.substr(prefix.size()));
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

}  // namespace zcstore
