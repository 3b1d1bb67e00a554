// The store: creation and opening, the object table, allocation, pins.
// Recovery after a crash lives in store_recovery.cc.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "store/platform_internal.h"
#include "store/store_internal.h"

namespace zcstore {
namespace internal {
constexpr const char* kTempMarker = ".init-";

bool ValidStoreName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
  }) && name.find(kTempMarker) == std::string_view::npos && name != "." && name != "..";
}

namespace {

std::string Mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

bool AddOverflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }

// Where the pieces of a new object go inside its extent.
struct ExtentPlan {
  uint64_t metadata_offset = 0;
  std::vector<uint64_t> buffer_offsets;
  uint64_t extent_size = 0;
};

// Buffers of this size or more start on a page: a large memcpy whose
// destination sits a few bytes past its source's page offset runs at a third
// of full speed with glibc (measured here: 3.5 vs 12 GB/s), and sources are
// usually page-aligned or malloc's +16.
constexpr uint64_t kPageAlignFrom = 64 << 10;

Result<ExtentPlan> PlanExtent(size_t metadata_size, std::span<const size_t> sizes,
                              size_t adopted, uint64_t alignment) {
  ExtentPlan plan;
  uint64_t end = sizeof(ObjectHeader) + (sizes.size() + adopted) * sizeof(BufferDesc);
  plan.metadata_offset = AlignUp(end, kBufferAlignment);
  if (AddOverflows(plan.metadata_offset, metadata_size, &end)) {
    return InvalidArgument("metadata size overflows");
  }
  plan.buffer_offsets.reserve(sizes.size());
  for (size_t s : sizes) {
    uint64_t off = AlignUp(end, s >= kPageAlignFrom ? kPageSize : alignment);
    if (off < end || AddOverflows(off, s, &end)) return InvalidArgument("buffer sizes overflow");
    plan.buffer_offsets.push_back(off);
  }
  plan.extent_size = AlignUp(end, kPageSize);
  if (plan.extent_size < end) return InvalidArgument("object size overflows");
  return plan;
}

}  // namespace

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
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&h->mutex, &attr);
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
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&header_->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (Status st = LockWithin(timeout_ms); !st.ok()) return st;
    RecoverLocked();
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
      s->name_ = n;
      s->path_ = SegmentPath(options.shm_dir, n);
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
  constexpr int kOpenTimeoutMs = 5000;  // as OpenOptions::lock_timeout
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
  if (base_ != nullptr && client_ != kNone && !InForkedChild()) {
    Lock();
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
  struct stat mine, theirs;
  if (fstat(fd_, &mine) == 0 && stat(path_.c_str(), &theirs) == 0 && mine.st_ino == theirs.st_ino &&
      mine.st_dev == theirs.st_dev) {
    (void)platform::RemoveFile(path_);
  }
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
  timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    ++deadline.tv_sec;
    deadline.tv_nsec -= 1000000000L;
  }
  // Try first: a free lock (the usual case), or one whose owner died, is
  // taken without the timed path (whose EOWNERDEAD ThreadSanitizer does not
  // count as taking the lock).
  int rc = pthread_mutex_trylock(&header_->mutex);
  if (rc == EBUSY) rc = pthread_mutex_timedlock(&header_->mutex, &deadline);
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

bool StoreImpl::Allocate(uint64_t size, uint32_t slot) {
  uint64_t prev_end = 0;
  uint32_t prev = kNone;
  uint32_t cur = header_->extent_head;
  for (uint32_t steps = 0; cur != kNone && steps <= geo_.max_objects; ++steps) {
    const ObjectEntry& e = objects_[cur];
    if (e.offset >= prev_end && e.offset - prev_end >= size) break;
    prev_end = e.offset + e.size;
    prev = cur;
    cur = e.next;
    if (cur != kNone && cur >= geo_.max_objects) return false;  // torn list: recovery fixes it
  }
  if (cur == kNone && (prev_end > geo_.data_size || geo_.data_size - prev_end < size)) return false;
  ObjectEntry& n = objects_[slot];
  n.offset = prev_end;
  n.size = size;
  n.prev = prev;
  n.next = cur;
  if (cur != kNone) objects_[cur].prev = slot;
  if (prev != kNone) objects_[prev].next = slot;
  else header_->extent_head = slot;
  header_->used += size;
  return true;
}

uint64_t StoreImpl::LargestFree() const {
  uint64_t prev_end = 0, best = 0;
  uint32_t cur = header_->extent_head;
  for (uint32_t steps = 0; cur < geo_.max_objects && steps <= geo_.max_objects; ++steps) {
    const ObjectEntry& e = objects_[cur];
    if (e.offset > prev_end) best = std::max(best, e.offset - prev_end);
    prev_end = std::max(prev_end, e.offset + e.size);
    cur = e.next;
  }
  if (geo_.data_size > prev_end) best = std::max(best, geo_.data_size - prev_end);
  return best;
}

void StoreImpl::FreeSlot(uint32_t slot) {
  ObjectEntry& e = objects_[slot];
  if (e.state == kSealed || e.state == kDeleted) {
    // Free the children listed in the object's header. The header is not
    // trusted: a listed slot is freed only if it names this object as parent.
    if (CheckExtent(slot, e).ok()) {
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

Status StoreImpl::PinLocked(uint32_t slot) {
  PinRecord* pins = Pins(client_);
  if (uint32_t r = pin_of_slot_[slot]; r != 0 && pins[r - 1].slot == slot && pins[r - 1].count) {
    ++pins[r - 1].count;
    ++objects_[slot].pins;
    return Status::OK();
  }
  if (free_records_.empty()) {
    return StoreFull("this handle already pins " + std::to_string(geo_.max_pins) +
                     " objects of " + Describe() +
                     " (max_pins_per_client); release some views first");
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

Status StoreImpl::CheckExtent(uint32_t slot, const ObjectEntry& e) const {
  // Extents are whole pages (format.md): a size that is not would place the
  // next object off a page and its header off its alignment.
  if (e.offset % kPageSize != 0 || e.size % kPageSize != 0 || e.size < sizeof(ObjectHeader) ||
      e.offset > geo_.data_size || e.size > geo_.data_size - e.offset) {
    return Corrupt(Describe() + ": object slot " + std::to_string(slot) +
                   " has an extent out of range (offset " + std::to_string(e.offset) + ", size " +
                   std::to_string(e.size) + ")");
  }
  return Status::OK();
}

Status StoreImpl::ReadObject(uint32_t slot, ObjectId id, std::span<const std::byte>* metadata,
                             std::vector<std::span<const std::byte>>* buffers,
                             ObjectHeader* header_out, std::vector<uint64_t>* checksums) const {
  // Any process with a writable mapping can change these bytes while we
  // read them: each value is read once, into a copy, and only the copy is
  // checked and used.
  ObjectEntry entry{};
  entry.offset = __atomic_load_n(&objects_[slot].offset, __ATOMIC_RELAXED);
  entry.size = __atomic_load_n(&objects_[slot].size, __ATOMIC_RELAXED);
  Status st = CheckExtent(slot, entry);
  if (!st.ok()) return st;
  const std::byte* extent = data_ + entry.offset;
  ObjectHeader h;
  std::memcpy(&h, extent, sizeof(h));
  // Built only on failure: Get must stay a lookup and a pin.
  auto what = [&] { return Describe() + ": object " + id.ToString(); };
  if (h.magic != kObjectMagic || h.id_hi != id.hi || h.id_lo != id.lo) {
    return Corrupt(what() + " has a bad header (magic or id)");
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
          !CheckExtent(c, child).ok() || d.offset > child.size || d.size > child.size - d.offset) {
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
  if (header_out) *header_out = h;
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
  Lock();
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
            : Describe() + " is full: the object needs " + Mib(size) + ", " +
                  Mib(header_->used) + " of " + Mib(geo_.data_size) + " are used (largest free " +
                  Mib(LargestFree()) + "); raise capacity or delete objects";
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
    Lock();
    FreeSlot(slot);
    Unlock();
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

Status StoreImpl::Seal(ObjectBuilder& b) {
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
  Lock();
  bool all_ours = ours(b);
  for (const ObjectBuilder& c : b.children_) all_ours = all_ours && ours(c);
  if (!all_ours) {
    Unlock();
    return Corrupt(Describe() + ": object " + b.id_.ToString() +
                   " was taken away while being written (was this process judged dead?)");
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
  return Status::OK();
}

Status StoreImpl::Abort(ObjectBuilder& b) {
  if (InForkedChild()) return Status::OK();  // the parent's object, not ours to drop
  ObjectEntry& e = objects_[b.slot_];
  Lock();
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
    Lock();
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
  ObjectHeader h;
  Status st = ReadObject(slot, id, &v.metadata_, &v.buffers_, &h, checksums);
  if (st.ok() && h.has_checksums > 1) st = Corrupt(Describe() + ": object " + id.ToString() + " has a bad header (checksum flag)");
  if (st.ok() && !h.has_checksums && (geo_.flags & kFlagChecksums)) {
    // The store seals every object with checksums: a header without them was
    // damaged after Seal, and so may be everything it describes.
    st = Corrupt(Describe() + ": object " + id.ToString() +
                 " has no checksums although its store gives every object some: its header is "
                 "damaged");
  }
  v.has_checksums_ = h.has_checksums == 1;
  v.metadata_checksum_ = h.metadata_checksum;
  if (!st.ok()) {
    if (!snapshot_) {
      Lock();
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
    Lock();
    UnpinLocked(v.slot_);
    Unlock();
  }
  return Status::OK();
}

Status StoreImpl::Delete(ObjectId id) {
  if (read_only_) return PermissionDenied(Describe() + " was opened read-only");
  Lock();
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
  Lock();
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
  if (!snapshot_) Lock();
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
      ObjectHeader h;
      st = ReadObject(slot, info.id, &md, &bufs, &h, nullptr);
      info.metadata_bytes = md.size();
      info.num_buffers = static_cast<uint32_t>(bufs.size());
      for (auto& b : bufs) info.data_bytes += b.size();
      info.has_checksums = h.has_checksums != 0;
    }
    out.push_back(info);
  }
  if (!snapshot_) Unlock();
  if (!st.ok()) return st;
  return out;
}

Result<StoreStats> StoreImpl::Stats() {
  StoreStats s;
  if (!snapshot_) {
    Lock();
    ReapDeadLocked();
  }
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
  for (uint32_t c = 0; c < geo_.max_clients; ++c) s.clients += clients_[c].state == kClientLive;
  for (uint32_t n = 0; n < geo_.max_names; ++n) s.names += names_[n].used == 1;
  if (!snapshot_) Unlock();
  return s;
}

Status StoreImpl::Verify(ObjectId id) {
  std::vector<uint64_t> checksums;
  auto view = Get(id, &checksums);  // pinned while we read; Corrupt if it lost its checksums
  if (!view.ok()) return view.status();
  std::span<const std::byte> md = view->metadata();
  const std::vector<std::span<const std::byte>>& bufs = view->buffers();
  std::string what = Describe() + ": object " + id.ToString();
  if (!view->has_checksums_) {
    return InvalidArgument(what + " was sealed without checksums; nothing to verify");
  }
  if (XXH3_64bits(md.data(), md.size()) != view->metadata_checksum_) {
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
Status CheckName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name.find('\0') != std::string_view::npos) {
    return InvalidArgument("an object name is 1-" + std::to_string(kMaxNameLength) +
                           " bytes without NUL");
  }
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
  if (!snapshot_) Lock();
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
  Lock();
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
  if (!snapshot_) Lock();
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
  Lock();
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

Result<uint32_t> StoreImpl::ReclaimDead() {
  if (snapshot_) return 0u;
  Lock();
  uint32_t n = ReapDeadLocked();
  Unlock();
  return n;
}

}  // namespace internal

// ================================================================ handles

ObjectView::ObjectView(ObjectView&& o) noexcept { *this = std::move(o); }

ObjectView& ObjectView::operator=(ObjectView&& o) noexcept {
  if (this != &o) {
    if (impl_) (void)Release();
    impl_ = std::move(o.impl_);
    slot_ = o.slot_;
    id_ = o.id_;
    metadata_ = o.metadata_;
    buffers_ = std::move(o.buffers_);
    has_checksums_ = o.has_checksums_;
    metadata_checksum_ = o.metadata_checksum_;
    o.impl_.reset();
    o.buffers_.clear();
    o.metadata_ = {};
  }
  return *this;
}

ObjectView::~ObjectView() {
  if (impl_) (void)Release();
}

std::span<const std::byte> ObjectView::buffer(size_t i) const {
  if (i >= buffers_.size()) {
    internal::DieWithMessage("ObjectView::buffer: index out of range");
  }
  return buffers_[i];
}

Status ObjectView::Release() {
  if (!impl_) return InvalidArgument("this view was already released (or moved from)");
  Status st = impl_->Release(*this);
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  return st;
}

ObjectBuilder::ObjectBuilder(ObjectBuilder&& o) noexcept { *this = std::move(o); }

ObjectBuilder& ObjectBuilder::operator=(ObjectBuilder&& o) noexcept {
  if (this != &o) {
    if (impl_) (void)Abort();
    impl_ = std::move(o.impl_);
    slot_ = o.slot_;
    id_ = o.id_;
    extent_ = o.extent_;
    metadata_ = o.metadata_;
    buffers_ = std::move(o.buffers_);
    children_ = std::move(o.children_);
    o.impl_.reset();
    o.buffers_.clear();
    o.metadata_ = {};
  }
  return *this;
}

ObjectBuilder::~ObjectBuilder() {
  if (impl_) (void)Abort();
}

std::span<std::byte> ObjectBuilder::buffer(size_t i) const {
  if (i >= buffers_.size()) {
    internal::DieWithMessage("ObjectBuilder::buffer: index out of range");
  }
  return buffers_[i];
}

bool ObjectBuilder::BelongsTo(const Store& store) const {
  return impl_ != nullptr && impl_ == store.impl_;
}

Status ObjectBuilder::Seal() {
  if (!impl_) return InvalidArgument("this object was already sealed or aborted");
  Status st = impl_->Seal(*this);
  if (!st.ok()) {
    (void)impl_->Abort(*this);
  }
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  extent_ = {};
  return st;
}

Status ObjectBuilder::Abort() {
  if (!impl_) return InvalidArgument("this object was already sealed or aborted");
  Status st = impl_->Abort(*this);
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  return st;
}

Store::Store(std::shared_ptr<internal::StoreImpl> impl) : impl_(std::move(impl)) {}
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&& o) noexcept {
  if (this != &o) {
    if (impl_) impl_->UnlinkIfOwner();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
Store::~Store() {
  if (impl_) impl_->UnlinkIfOwner();
}

Result<Store> Store::Create(std::string_view name, const StoreOptions& options) {
  auto impl = internal::StoreImpl::Create(name, options);
  if (!impl.ok()) return impl.status();
  return Store(std::move(*impl));
}

Result<Store> Store::Open(std::string_view name, const OpenOptions& options) {
  auto impl = internal::StoreImpl::Open(name, options);
  if (!impl.ok()) return impl.status();
  return Store(std::move(*impl));
}

Result<Store> Store::OpenFd(int fd, bool read_only) {
  auto impl = internal::StoreImpl::OpenFd(fd, read_only);
  if (!impl.ok()) return impl.status();
  return Store(std::move(*impl));
}

Status Store::Remove(std::string_view name, const OpenOptions& options) {
  namespace platform = internal::platform;
  bool file = options.backing == Backing::kFile;
  if (!file && !internal::ValidStoreName(name)) {
    return InvalidArgument("store name '" + std::string(name) +
                           "' must be 1-64 characters from [A-Za-z0-9._-] (a file store's path "
                           "needs OpenOptions::backing = Backing::kFile)");
  }
  std::string path = file ? std::string(name) : internal::StoreImpl::SegmentPath(options.shm_dir, name);
  std::string what = std::string(file ? "store file '" : "store '") + std::string(name) + "'";
  // Only a store of this user is removed: open it as Open would (no link,
  // no FIFO, our own file), check its magic, and unlink the name only while
  // it still names the file checked.
  auto fd = platform::OpenStoreFile(path, O_RDONLY, /*allow_shared_write=*/true);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) return NotFound(what + " does not exist");
    return fd.status().WithContext("not removed");
  }
  char magic[sizeof(internal::kStoreMagic)] = {};
  bool is_store = pread(*fd, magic, sizeof(magic), 0) == static_cast<ssize_t>(sizeof(magic)) &&
                  std::memcmp(magic, internal::kStoreMagic, sizeof(magic)) == 0;
  bool same = platform::NamesFile(path, *fd);
  platform::CloseFile(*fd);
  if (!is_store) return InvalidArgument("'" + path + "' is not a zcstore store; not removed");
  if (!same) return NotFound(what + " was replaced or removed meanwhile; not removed");
  Status st = platform::RemoveFile(path);
  if (st.code() == StatusCode::kNotFound) return NotFound(what + " does not exist");
  return st;
}

Result<ObjectBuilder> Store::CreateObject(ObjectId id, size_t metadata_size,
                                          std::span<const size_t> buffer_sizes,
                                          std::span<ObjectBuilder> adopt) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->CreateObject(id, metadata_size, buffer_sizes, adopt);
}

Status Store::Put(ObjectId id, std::span<const std::byte> metadata,
                  std::span<const std::span<const std::byte>> buffers) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  std::vector<size_t> sizes;
  sizes.reserve(buffers.size());
  for (auto& b : buffers) sizes.push_back(b.size());
  auto builder = impl_->CreateObject(id, metadata.size(), sizes, {});
  if (!builder.ok()) return builder.status();
  if (!metadata.empty()) std::memcpy(builder->metadata().data(), metadata.data(), metadata.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (!buffers[i].empty()) {
      std::memcpy(builder->buffer(i).data(), buffers[i].data(), buffers[i].size());
    }
  }
  return builder->Seal();
}

Result<ObjectView> Store::Get(ObjectId id) const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Get(id);
}
Status Store::Delete(ObjectId id) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Delete(id);
}
bool Store::Contains(ObjectId id) const { return impl_->CheckProcess().ok() && impl_->Contains(id); }
Result<std::vector<ObjectInfo>> Store::List() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->List();
}
Result<StoreStats> Store::Stats() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Stats();
}
Status Store::Verify(ObjectId id) const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Verify(id);
}

Status Store::VerifyAll() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  if (Status st = impl_->VerifyTables(); !st.ok()) return st;
  auto objects = impl_->List();
  if (!objects.ok()) return objects.status();
  for (const ObjectInfo& o : *objects) {
    if (o.state != ObjectInfo::State::kSealed) continue;
    Status st = impl_->Verify(o.id);
    if (!st.ok() && st.code() != StatusCode::kNotFound) return st;  // NotFound: deleted meanwhile
  }
  return Status::OK();
}

Status Store::Bind(std::string_view name, ObjectId id) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Bind(name, id);
}
Result<ObjectId> Store::Lookup(std::string_view name) const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Lookup(name);
}
Status Store::Unbind(std::string_view name) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Unbind(name);
}
Result<uint32_t> Store::ReclaimDead() {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->ReclaimDead();
}
const std::string& Store::name() const { return impl_->name(); }
Backing Store::backing() const { return impl_->backing(); }
bool Store::read_only() const { return impl_->read_only(); }
int Store::fd() const { return impl_->fd(); }

}  // namespace zcstore
