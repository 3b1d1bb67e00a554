// Creating and opening stores: the geometry of the tables, the file (or
// segment, or memfd) and its mappings, registering a handle, the store lock,
// and what a handle does when it closes (or finds itself in a forked child).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "store/platform_internal.h"
#include "store/store_internal.h"

namespace zcstore {
namespace internal {

bool ValidStoreName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
  }) && name.find(kTempMarker) == std::string_view::npos && name != "." && name != "..";
}

// ---------------------------------------------------------------- geometry

Result<Geometry> Geometry::Plan(const StoreOptions& o) {
  if (o.max_objects == 0 || o.max_objects > kMaxObjectsLimit || o.max_clients == 0 ||
      o.max_clients > kMaxClientsLimit || o.max_pins_per_client == 0 ||
      o.max_pins_per_client > kMaxPinsLimit || o.max_names > kMaxNamesLimit) {
    return InvalidArgument("store limits out of range (max_objects 1.." +
                           std::to_string(kMaxObjectsLimit) + ", max_clients 1.." +
                           std::to_string(kMaxClientsLimit) + ", max_pins_per_client 1.." +
                           std::to_string(kMaxPinsLimit) + ")");
  }
  if (o.capacity == 0 || o.capacity > (uint64_t{1} << 46)) {
    return InvalidArgument("capacity must be between 1 byte and 64 TiB");
  }
  Geometry g;
  g.max_objects = o.max_objects;
  g.max_clients = o.max_clients;
  g.max_pins = o.max_pins_per_client;
  g.max_names = o.max_names;
  g.alignment = o.backing == Backing::kFile ? kPageSize : kBufferAlignment;
  g.flags = (o.checksums || o.backing == Backing::kFile ? uint32_t{kFlagChecksums} : 0u) |
            (o.persistent ? uint32_t{kFlagPersistent} : 0u);
  g.objects_offset = sizeof(StoreHeader);
  g.clients_offset = g.objects_offset + uint64_t{g.max_objects} * sizeof(ObjectEntry);
  g.pins_offset = g.clients_offset + uint64_t{g.max_clients} * sizeof(ClientEntry);
  g.names_offset = g.pins_offset + uint64_t{g.max_clients} * g.max_pins * sizeof(PinRecord);
  g.data_offset = AlignUp(g.names_offset + uint64_t{g.max_names} * sizeof(NameEntry), kPageSize);
  g.data_size = AlignUp(o.capacity, kPageSize);
  g.total_size = g.data_offset + g.data_size;
  return g;
}

Result<Geometry> Geometry::FromHeader(const StoreHeader& h, uint64_t file_size,
                                      const std::string& what) {
  if (file_size < sizeof(StoreHeader) || std::memcmp(h.magic, kStoreMagic, 8) != 0) {
    return Corrupt(what + " is not a zcstore store (no ZCSTORE magic)");
  }
  if (h.format_version != kFormatVersion) {
    return VersionMismatch(what + " has format version " + std::to_string(h.format_version) +
                           "; this build reads version " + std::to_string(kFormatVersion));
  }
  if (h.header_size != sizeof(StoreHeader)) return Corrupt(what + ": bad header size");
  StoreOptions o;
  o.backing = static_cast<Backing>(h.backing);
  if (h.backing < 1 || h.backing > 3) return Corrupt(what + ": unknown backing kind");
  o.max_objects = h.max_objects;
  o.max_clients = h.max_clients;
  o.max_pins_per_client = h.max_pins_per_client;
  o.max_names = h.max_names;
  o.capacity = h.data_size;
  o.checksums = h.flags & kFlagChecksums;
  o.persistent = h.flags & kFlagPersistent;
  auto planned = Plan(o);
  if (!planned.ok()) return Corrupt(what + ": table sizes out of range");
  Geometry g = *planned;
  g.flags = h.flags;
  // The tables must sit exactly where Plan puts them: a header that points
  // elsewhere (overlapping tables, data over the header) is corrupt.
  if (h.objects_offset != g.objects_offset || h.clients_offset != g.clients_offset ||
      h.pins_offset != g.pins_offset || h.names_offset != g.names_offset ||
      h.data_offset != g.data_offset || h.data_size != g.data_size ||
      h.total_size != g.total_size || h.alignment != g.alignment) {
    return Corrupt(what + ": table offsets in the header are inconsistent");
  }
  if (file_size < g.total_size) {
    return Corrupt(what + " is truncated: " + std::to_string(file_size) +
                   " bytes, but its header says " + std::to_string(g.total_size));
  }
  return g;
}

// ---------------------------------------------------------------- naming

std::string StoreImpl::SegmentPrefix() {
  return "zcstore." + std::to_string(platform::UserId()) + ".";
}

Status CheckShmDir(const std::string& dir) {
  // "" would put segments in "/", and a relative directory would depend on
  // the working directory: another process would not find the store.
  if (dir.empty() || dir[0] != '/') {
    return InvalidArgument("shm_dir '" + dir +
                           "' must be an absolute directory (the default is /dev/shm)");
  }
  return Status::OK();
}

std::string StoreImpl::SegmentPath(const std::string& dir, std::string_view name) {
  return dir + "/" + SegmentPrefix() + std::string(name);
}

std::string StoreImpl::Describe() const {
  return (backing_ == Backing::kFile ? "store file '" : "store '") + name_ + "'";
}

// ---------------------------------------------------------------- set-up

void StoreImpl::InitializeHeader(Backing backing) {
  StoreHeader* h = header_;
  std::memcpy(h->magic, kStoreMagic, 8);
  h->format_version = kFormatVersion;
  h->header_size = sizeof(StoreHeader);
  h->backing = static_cast<uint32_t>(backing);
  h->flags = geo_.flags;
  h->total_size = geo_.total_size;
  h->data_offset = geo_.data_offset;
  h->data_size = geo_.data_size;
  h->alignment = geo_.alignment;
  h->max_objects = geo_.max_objects;
  h->max_clients = geo_.max_clients;
  h->max_pins_per_client = geo_.max_pins;
  h->max_names = geo_.max_names;
  h->objects_offset = geo_.objects_offset;
  h->clients_offset = geo_.clients_offset;
  h->pins_offset = geo_.pins_offset;
  h->names_offset = geo_.names_offset;
  h->created_unix_ns = platform::UnixNanos();
  h->creator = platform::SelfStamp();
  h->extent_head = kNone;
  h->names_bound = 0;
  h->used = 0;
  h->epoch = 0;
  h->reserved_bytes = 0;
  InitializeMutex();
}

void StoreImpl::InitializeMutex() {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&header_->mutex, &attr);
  pthread_mutexattr_destroy(&attr);
}

Status StoreImpl::MapAndCheck(int fd, bool control_writable, const std::string& what) {
  auto size = platform::FileSize(fd);
  if (!size.ok()) return size.status();
  StoreHeader copy;
  if (*size < sizeof(StoreHeader)) {
    return Corrupt(what + " is not a zcstore store: only " + std::to_string(*size) + " bytes");
  }
  // Check the header from a private copy before mapping anything, so that a
  // short or hostile file is refused before it could cause a fault.
  if (pread(fd, &copy, sizeof(copy), 0) != static_cast<ssize_t>(sizeof(copy))) {
    return platform::ErrnoStatus(errno, "cannot read " + what);
  }
  auto geo = Geometry::FromHeader(copy, *size, what);
  if (!geo.ok()) return geo.status();
  geo_ = *geo;
  auto base = platform::MapFile(fd, geo_.total_size, control_writable);
  if (!base.ok()) return base.status().WithContext(what);
  base_ = *base;
  mapped_size_ = geo_.total_size;
  header_ = reinterpret_cast<StoreHeader*>(base_);
  objects_ = reinterpret_cast<ObjectEntry*>(base_ + geo_.objects_offset);
  clients_ = reinterpret_cast<ClientEntry*>(base_ + geo_.clients_offset);
  pins_ = reinterpret_cast<PinRecord*>(base_ + geo_.pins_offset);
  names_ = reinterpret_cast<NameEntry*>(base_ + geo_.names_offset);
  data_ = base_ + geo_.data_offset;
  // Readers and writers alike see the data region read-only; a writer opens
  // one extent at a time for writing (CreateObject .. Seal).
  if (control_writable) return platform::Protect(data_, geo_.data_size, false);
  return Status::OK();
}

Status StoreImpl::FinishOpen(int timeout_ms) {
  if (!AnyLiveClient()) {
    // Nobody uses the store: the lock may be held by a process from before a
    // crash or reboot that the kernel can no longer mark dead. Reinitialise
    // it (we hold the file lock, so nobody else is opening) and repair.
    InitializeMutex();
    if (Status st = LockWithin(timeout_ms); !st.ok()) return st;
    // A store this handle has just made is all zeros and seen by no one:
    // nothing to repair, and walking its tables would fault in every page
    // of them (4 ms for the default 65,536 object slots).
    if (!created_) RecoverLocked();
  } else {
    if (Status st = LockWithin(timeout_ms); !st.ok()) return st;
    ReapDeadLocked();
  }
  // A free record whose liveness lock is still held belongs to a handle
  // that is closing (it frees its record before it closes its descriptor):
  // take another.
  uint32_t slot = kNone;
  for (uint32_t c = 0; c < geo_.max_clients && slot == kNone; ++c) {
    if (clients_[c].state != kClientFree) continue;
    if (!private_description_ || platform::LockByte(fd_, ClientLockOffset(c))) slot = c;
  }
  if (slot == kNone) {
    Unlock();
    return StoreFull(Describe() + " has " + std::to_string(geo_.max_clients) +
                     " handles open already (max_clients); close some or create the store "
                     "with a larger max_clients");
  }
  PinRecord* pins = Pins(slot);
  std::fill(pins, pins + geo_.max_pins, PinRecord{0, 0});
  pin_of_slot_.assign(geo_.max_objects, 0);
  free_records_.resize(geo_.max_pins);
  for (uint32_t i = 0; i < geo_.max_pins; ++i) free_records_[i] = geo_.max_pins - 1 - i;
  clients_[slot].process = platform::SelfStamp();
  clients_[slot].liveness = private_description_ ? kLivenessLock : kLivenessStamp;
  __atomic_store_n(&clients_[slot].state, kClientLive, __ATOMIC_RELEASE);
  client_ = slot;
  Unlock();
  return Status::OK();
}

Result<std::shared_ptr<StoreImpl>> StoreImpl::Create(std::string_view name,
                                                     const StoreOptions& options) {
  auto geo = Geometry::Plan(options);
  if (!geo.ok()) return geo.status();
  std::shared_ptr<StoreImpl> s(new StoreImpl());
  s->backing_ = options.backing;
  s->created_ = true;
  s->private_description_ = true;  // its own open(2) or memfd_create
  s->persistent_ = options.persistent;
  s->geo_ = *geo;
  std::string temp;
  if (options.backing == Backing::kMemfd) {
    s->name_ = name.empty() ? "memfd" : std::string(name);
    auto fd = platform::CreateMemoryFile(s->name_);
    if (!fd.ok()) return fd.status();
    s->fd_ = *fd;
  } else {
    if (options.backing == Backing::kSharedMemory) {
      std::string n = name.empty() ? "anon-" + std::to_string(getpid()) + "-" +
                                         ObjectId::Random().ToString().substr(0, 12)
                                   : std::string(name);
      if (!ValidStoreName(n)) {
        return InvalidArgument("store name '" + n +
                               "' must be 1-64 characters from [A-Za-z0-9._-]");
      }
      if (Status st = CheckShmDir(options.shm_dir); !st.ok()) return st;
      s->name_ = n;
      s->path_ = SegmentPath(options.shm_dir, n);
      // Storage is reserved as objects claim it, so a store larger than its
      // filesystem could be created, and fail put after put later: a
      // container's 64 MiB /dev/shm under a 1 GiB store. Say so now.
      if (auto space = platform::SpaceOf(options.shm_dir);
          space.ok() && s->geo_.total_size > space->free) {
        auto mib = [](uint64_t b) {
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(b) / (1 << 20));
          return std::string(buf);
        };
        return StoreFull(s->Describe() + " cannot be created: it needs " +
                         mib(s->geo_.total_size) + " (capacity and tables) but " +
                         options.shm_dir + " has " + mib(space->free) + " free of " +
                         mib(space->total) +
                         "; ask for less capacity, free space in /dev/shm (a container: "
                         "--shm-size), or use a file store (Python: backing=\"auto\" falls "
                         "back to one)");
      }
      // A store of this name whose users all died is replaced, as `gc` would.
      (void)RemoveIfAbandoned(s->path_);
    } else {
      if (name.empty()) return InvalidArgument("a file store needs a path");
      s->name_ = s->path_ = std::string(name);
    }
    if (auto owner = platform::FileOwner(s->path_); owner.status().code() != StatusCode::kNotFound) {
      if (options.backing == Backing::kSharedMemory && (!owner.ok() || *owner != platform::UserId())) {
        return PermissionDenied(
            s->Describe() + " cannot be created: '" + s->path_ + "' is taken by " +
            (owner.ok() ? "a file of uid " + std::to_string(*owner) : "something that is not a store") +
            ", not by a store of yours (another user may have planted it; its owner or root can "
            "remove it), or choose another name");
      }
      return AlreadyExists(s->Describe() + " already exists; open it, or remove it first (" +
                           (options.backing == Backing::kFile ? "delete the file"
                                                              : "zcstore rm " + s->name_) +
                           ")");
    }
    // Build the store under a temporary name and publish it with an atomic
    // rename, so that no process ever opens a half-initialised store.
    std::string rnd = ObjectId::Random().ToString().substr(0, 8);
    temp = s->path_ + kTempMarker + std::to_string(getpid()) + "-" + rnd;
    auto fd = platform::OpenFile(temp, O_RDWR | O_CREAT | O_EXCL, options.mode);
    if (!fd.ok()) return fd.status();
    s->fd_ = *fd;
  }
  auto cleanup_temp = [&] {
    if (!temp.empty()) (void)platform::RemoveFile(temp);
  };
  // The tables are reserved now; the data region as objects claim it (see
  // CreateObject), so creating a large store costs no time per byte.
  Status st = platform::ReserveFile(s->fd_, s->geo_.total_size, s->Describe(), s->geo_.data_offset);
  if (st.ok() && options.backing == Backing::kMemfd) st = platform::SealFileSize(s->fd_);
  if (st.ok()) {
    auto base = platform::MapFile(s->fd_, s->geo_.total_size, true);
    if (base.ok()) {
      s->base_ = *base;
      s->mapped_size_ = s->geo_.total_size;
    } else {
      st = base.status();
    }
  }
  if (!st.ok()) {
    cleanup_temp();
    return st;
  }
  s->header_ = reinterpret_cast<StoreHeader*>(s->base_);
  s->InitializeHeader(options.backing);
  s->objects_ = reinterpret_cast<ObjectEntry*>(s->base_ + s->geo_.objects_offset);
  s->clients_ = reinterpret_cast<ClientEntry*>(s->base_ + s->geo_.clients_offset);
  s->pins_ = reinterpret_cast<PinRecord*>(s->base_ + s->geo_.pins_offset);
  s->names_ = reinterpret_cast<NameEntry*>(s->base_ + s->geo_.names_offset);
  s->data_ = s->base_ + s->geo_.data_offset;
  st = platform::Protect(s->data_, s->geo_.data_size, false);
  if (st.ok()) st = platform::LockFile(s->fd_, true, -1, s->Describe());
  if (st.ok()) st = s->FinishOpen(-1);
  if (st.ok() && options.backing == Backing::kFile) st = platform::SyncRange(s->base_, s->geo_.data_offset);
  if (st.ok() && !temp.empty()) st = platform::RenameNoReplace(temp, s->path_);
  if (!st.ok()) {
    cleanup_temp();
    return st.code() == StatusCode::kAlreadyExists
               ? AlreadyExists(s->Describe() + " was created by another process meanwhile")
               : st;
  }
  // A file store keeps its exclusive lock for the handle's life (one writer);
  // other backings only hold it while opening.
  if (options.backing != Backing::kFile) platform::UnlockFile(s->fd_);
  return s;
}

Result<std::shared_ptr<StoreImpl>> StoreImpl::Open(std::string_view name,
                                                   const OpenOptions& options) {
  std::shared_ptr<StoreImpl> s(new StoreImpl());
  s->backing_ = options.backing;
  s->read_only_ = options.read_only;
  if (options.backing == Backing::kMemfd) {
    return InvalidArgument("memfd stores have no name: open them with Store::OpenFd");
  }
  if (options.backing == Backing::kSharedMemory) {
    if (!ValidStoreName(name)) {
      return InvalidArgument("store name '" + std::string(name) +
                             "' must be 1-64 characters from [A-Za-z0-9._-]");
    }
    if (Status st = CheckShmDir(options.shm_dir); !st.ok()) return st;
    s->path_ = SegmentPath(options.shm_dir, name);
  } else {
    s->path_ = std::string(name);
  }
  s->name_ = std::string(name);
  bool snapshot = options.backing == Backing::kFile && options.read_only;
  auto fd = platform::OpenStoreFile(s->path_, snapshot ? O_RDONLY : O_RDWR,
                                    options.allow_shared_write);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) {
      return NotFound(s->Describe() + " does not exist");
    }
    return fd.status().WithContext(s->Describe());
  }
  s->fd_ = *fd;
  s->private_description_ = true;
  s->snapshot_ = snapshot;
  // File stores: one read-write handle, or any number of read-only ones.
  // Shared memory: the lock only serialises opening (and gc, which takes it
  // before it removes a store).
  bool file = options.backing == Backing::kFile;
  int timeout_ms = static_cast<int>(std::clamp<int64_t>(options.lock_timeout.count(), 0, INT32_MAX));
  s->lock_timeout_ms_ = timeout_ms;
  Status st = platform::LockFile(s->fd_, !snapshot, file ? 0 : timeout_ms, s->Describe());
  if (!st.ok()) return st;
  if (!file && !platform::NamesFile(s->path_, s->fd_)) {
    // gc (or Remove) unlinked it while we waited for the lock.
    return NotFound(s->Describe() + " was removed while it was being opened");
  }
  st = s->MapAndCheck(s->fd_, !snapshot, s->Describe());
  if (st.ok() && s->header_->backing != static_cast<uint32_t>(options.backing)) {
    st = InvalidArgument(s->Describe() + " is not a " +
                         (file ? "file store" : "shared-memory store"));
  }
  if (st.ok() && !snapshot) st = s->FinishOpen(timeout_ms);
  if (!st.ok()) return st;
  s->persistent_ = s->geo_.flags & kFlagPersistent;
  if (!file) platform::UnlockFile(s->fd_);
  return s;
}

Result<std::shared_ptr<StoreImpl>> StoreImpl::OpenFd(int fd, bool read_only) {
  std::shared_ptr<StoreImpl> s(new StoreImpl());
  s->backing_ = Backing::kMemfd;
  s->read_only_ = read_only;
  s->name_ = "memfd:" + std::to_string(fd);
  // A descriptor of our own: a dup would share the description (and so the
  // liveness lock) with whoever handed us `fd`.
  s->fd_ = platform::ReopenFile(fd, O_RDWR);
  s->private_description_ = s->fd_ >= 0;
  if (s->fd_ < 0) s->fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (s->fd_ < 0) return platform::ErrnoStatus(errno, "cannot duplicate store fd");
  const int kOpenTimeoutMs = static_cast<int>(OpenOptions{}.lock_timeout.count());
  // A memfd has no name to plant a file under, and always shows mode 0777:
  // only check that it is a regular file of this user.
  Status st = platform::CheckStoreFile(s->fd_, s->name_, /*allow_shared_write=*/true);
  if (st.ok()) st = platform::LockFile(s->fd_, true, kOpenTimeoutMs, s->Describe());
  if (st.ok()) st = s->MapAndCheck(s->fd_, true, s->Describe());
  if (st.ok() && s->header_->backing != static_cast<uint32_t>(Backing::kMemfd)) {
    st = InvalidArgument("fd " + std::to_string(fd) + " is not a memfd store");
  }
  if (st.ok()) st = s->FinishOpen(kOpenTimeoutMs);
  if (!st.ok()) return st;
  platform::UnlockFile(s->fd_);
  return s;
}

Status StoreImpl::InheritedByFork() const {
  return InvalidArgument(Describe() + " was opened by process " + std::to_string(opener_pid_) +
                         ", and this process is a fork of it: a forked child may read the views "
                         "it inherited, and must open the store again for anything else");
}

StoreImpl::~StoreImpl() {
  // In a forked child the registration, the pins and the name are the
  // parent's: drop only this process's mappings and descriptor.
  // If a stuck process holds the lock too long, the record is left: closing
  // fd_ drops its liveness lock, so the next locker reaps it as a dead one's.
  if (base_ != nullptr && client_ != kNone && !InForkedChild() && LockForCall().ok()) {
    ReleaseClientLocked(client_, /*dead=*/false, /*free_record=*/false);
    Unlock();
    // Freed only once we are out of the lock: while the record is live, an
    // opener never judges that nobody uses the store (and re-initialises a
    // mutex we hold). Closing fd_ below drops the liveness lock.
    __atomic_store_n(&clients_[client_].state, kClientFree, __ATOMIC_RELEASE);
    if (backing_ == Backing::kFile) (void)platform::SyncRange(base_, geo_.data_offset);
  }
  platform::Unmap(write_data_, geo_.data_size);
  platform::Unmap(base_, mapped_size_);
  platform::CloseFile(fd_);  // also drops any file lock
}

void StoreImpl::UnlinkIfOwner() {
  if (!created_ || persistent_ || backing_ != Backing::kSharedMemory || InForkedChild()) return;
  // Unlink only if the name still refers to our segment (not a newer store
  // that replaced ours after it was removed).
  if (platform::NamesFile(path_, fd_)) (void)platform::RemoveFile(path_);
}

// ---------------------------------------------------------------- locking

void StoreImpl::Lock() {
  int rc = pthread_mutex_lock(&header_->mutex);
  if (rc == EOWNERDEAD) {
    // The previous holder died inside the lock: derived state may be torn.
    RecoverLocked();
    pthread_mutex_consistent(&header_->mutex);
  } else if (rc != 0) {
    DieWithMessage(("zcstore: store lock is unusable: " + std::string(std::strerror(rc))).c_str());
  }
}

Status StoreImpl::LockWithin(int timeout_ms) {
  if (timeout_ms < 0) {
    Lock();
    return Status::OK();
  }
  // Try first: a free lock (the usual case), or one whose owner died, is
  // taken without the timed path (whose EOWNERDEAD ThreadSanitizer does not
  // count as taking the lock), and without reading the clock.
  int rc = pthread_mutex_trylock(&header_->mutex);
  if (rc == EBUSY) {
    timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      ++deadline.tv_sec;
      deadline.tv_nsec -= 1000000000L;
    }
    rc = pthread_mutex_timedlock(&header_->mutex, &deadline);
  }
  if (rc == EOWNERDEAD) {
    RecoverLocked();
    pthread_mutex_consistent(&header_->mutex);
  } else if (rc == ETIMEDOUT) {
    return Timeout(Describe() + " has been locked by another process for " +
                   std::to_string(timeout_ms) +
                   " ms: one of its users is stuck inside it (stopped, or traced); try again, or "
                   "raise OpenOptions::lock_timeout");
  } else if (rc != 0) {
    return IOError(Describe() + ": its lock is unusable (" + std::strerror(rc) +
                   "); the store is damaged: remove it and create it again");
  }
  return Status::OK();
}

void StoreImpl::Unlock() { pthread_mutex_unlock(&header_->mutex); }

void StoreImpl::LockForever() { Lock(); }

}  // namespace internal
}  // namespace zcstore
