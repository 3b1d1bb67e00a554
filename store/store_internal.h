// StoreImpl: one process's handle on a store mapping. Shared (shared_ptr) by
// the Store handle and every ObjectView/ObjectBuilder it made, so the mapping
// and the client registration live until the last of them is gone.
//
// Trust: the geometry (table sizes, offsets) is read from the header once,
// checked, and cached in members; after that only the cached copies are used,
// so another process scribbling on the header cannot move our tables. Every
// per-object offset and length read from shared memory is checked before use.
#ifndef ZCSTORE_STORE_STORE_INTERNAL_H_
#define ZCSTORE_STORE_STORE_INTERNAL_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

#include "store/layout_internal.h"
#include "store/platform_internal.h"
#include "zcstore/store.h"

namespace zcstore::internal {

// Marks a store file still being created: "<path>.init-<pid>-<random>".
inline constexpr const char* kTempMarker = ".init-";

// Where the pieces of a new object go inside its extent (extent_allocator.cc).
struct ExtentPlan {
  uint64_t metadata_offset = 0;
  std::vector<uint64_t> buffer_offsets;
  uint64_t extent_size = 0;
};
// Lays out an object of `metadata_size` bytes and buffers of `sizes` (plus
// `adopted` buffers that live in child objects) with `alignment`.
// InvalidArgument if the sizes overflow.
Result<ExtentPlan> PlanExtent(size_t metadata_size, std::span<const size_t> sizes,
                              size_t adopted, uint64_t alignment);

// True for a valid shared-memory store name: 1-64 characters from
// [A-Za-z0-9._-], not "." or "..", never a temporary file's name.
bool ValidStoreName(std::string_view name);

// The cached, checked shape of a store.
struct Geometry {
  uint64_t total_size = 0;
  uint64_t objects_offset = 0, clients_offset = 0, pins_offset = 0, names_offset = 0;
  uint64_t data_offset = 0, data_size = 0;
  uint32_t max_objects = 0, max_clients = 0, max_pins = 0, max_names = 0;
  uint32_t alignment = 0;
  uint32_t flags = 0;

  // Lays out the tables for the given limits and capacity. InvalidArgument if
  // a limit is out of range or the sizes overflow.
  static Result<Geometry> Plan(const StoreOptions& options);
  // Reads and checks a header against `file_size`: magic, version, every
  // table inside the file and in the order Plan puts them.
  static Result<Geometry> FromHeader(const StoreHeader& h, uint64_t file_size,
                                     const std::string& what);
};

// OK if `dir` may hold shared-memory stores: an absolute path.
Status CheckShmDir(const std::string& dir);

class StoreImpl : public std::enable_shared_from_this<StoreImpl> {
 public:
  static Result<std::shared_ptr<StoreImpl>> Create(std::string_view name,
                                                   const StoreOptions& options);
  static Result<std::shared_ptr<StoreImpl>> Open(std::string_view name,
                                                 const OpenOptions& options);
  static Result<std::shared_ptr<StoreImpl>> OpenFd(int fd, bool read_only);
  ~StoreImpl();

  Result<ObjectBuilder> CreateObject(ObjectId id, size_t metadata_size,
                                     std::span<const size_t> buffer_sizes,
                                     std::span<ObjectBuilder> adopt);
  // `pinned`, if given, also receives a view pinned under the same lock;
  // TooManyPins (nothing sealed) if no pin record is free.
  Status Seal(ObjectBuilder& builder, ObjectView* pinned = nullptr);
  Status Abort(ObjectBuilder& builder);
  // `checksums`, if given, receives each buffer's stored checksum.
  Result<ObjectView> Get(ObjectId id, std::vector<uint64_t>* checksums = nullptr);
  Status Release(ObjectView& view);
  Status Delete(ObjectId id);
  bool Contains(ObjectId id);
  Result<std::vector<ObjectInfo>> List();
  Result<StoreStats> Stats();
  Result<uint32_t> FreeClientSlots();
  Status Verify(ObjectId id);
  // Checks every table entry (object states and extents, names and what
  // they are bound to). Corrupt, naming the first bad entry.
  Status VerifyTables();
  Status Bind(std::string_view name, ObjectId id);
  Result<ObjectId> Lookup(std::string_view name);
  Status Unbind(std::string_view name);
  Result<std::vector<std::pair<std::string, ObjectId>>> ListNames();
  Result<uint32_t> ReclaimDead();

  // Called by ~Store on the creating handle: unlinks a non-persistent
  // shared-memory store's name if it still names this segment.
  void UnlinkIfOwner();

  // OK in the process that opened this handle; InvalidArgument in a child
  // forked from it, which shares the mapping but not the registration: it
  // may read the views it inherited and must open the store again for
  // anything else.
  bool InForkedChild() const { return fork_generation_ != platform::ForkGeneration(); }
  Status CheckProcess() const {
    if (!InForkedChild()) [[likely]] return Status::OK();
    return InheritedByFork();
  }

  const std::string& name() const { return name_; }
  bool created() const { return created_; }
  Backing backing() const { return backing_; }
  bool read_only() const { return read_only_; }
  int fd() const { return fd_; }
  Result<uint64_t> FileOffsetOf(const void* p) const;

  // Shared-memory path of store `name` in `dir` for the calling user.
  static std::string SegmentPath(const std::string& dir, std::string_view name);
  static std::string SegmentPrefix();
  // Removes the segment at `path` if it is a valid, non-persistent store of
  // this user whose every user died. Reads it with pread and maps nothing;
  // holds the file lock that Open takes while it decides and unlinks, so a
  // store being opened is never removed under its opener. True if removed.
  static bool RemoveIfAbandoned(const std::string& path);

  // For tests: takes the store lock and never returns it (the caller is
  // expected to be killed), to exercise lock-owner-death recovery.
  void LockForever();

 private:
  StoreImpl() = default;

  // --- set-up and the lock (store_open.cc) ---
  Status MapAndCheck(int fd, bool control_writable, const std::string& what);
  // Registers this handle; run under the file lock. Waits at most
  // `timeout_ms` (< 0: no limit) for the store lock.
  Status FinishOpen(int timeout_ms);
  void InitializeHeader(Backing backing);
  // (Re)initialises the header's robust, process-shared mutex.
  void InitializeMutex();
  void Lock();
  // Lock() that gives up with Timeout after `timeout_ms` (< 0: no limit), and
  // reports an unusable lock as IOError rather than stopping the process:
  // what Open uses, since the store is not known to be healthy yet.
  Status LockWithin(int timeout_ms);
  // The lock for a call of this handle: LockWithin(lock_timeout_ms_).
  Status LockForCall() { return LockWithin(lock_timeout_ms_); }
  void Unlock();
  std::string Describe() const;  // "store 'x'" for messages
  Status InheritedByFork() const;

  // --- the object table (object_table.cc); the caller holds the lock ---
  Result<std::byte*> WritableData();  // write_data_, mapped on first use
  uint32_t Find(ObjectId id) const;        // slot of a live entry, or kNone
  uint32_t FindInsertSlot(ObjectId id, bool* exists) const;
  void FreeSlot(uint32_t slot);  // and, for a sealed object, its children
  void UnbindAllLocked(ObjectId id);
  // An extent is whole pages inside the data region, big enough for a
  // header (format.md). ExtentInRange is the test, CheckExtent the Corrupt
  // status naming slot `slot` when it fails.
  bool ExtentInRange(uint64_t offset, uint64_t size) const {
    return offset % kPageSize == 0 && size % kPageSize == 0 && size >= sizeof(ObjectHeader) &&
           offset <= geo_.data_size && size <= geo_.data_size - offset;
  }
  Status CheckExtent(uint32_t slot, const ObjectEntry& e) const;
  // Reads and checks object `slot`'s header and buffer descriptors, each
  // once, into private copies: `metadata_checksum` receives the metadata's
  // checksum (nullopt: sealed without checksums), `checksums` (if given)
  // each buffer's stored checksum.
  Status ReadObject(uint32_t slot, ObjectId id, std::span<const std::byte>* metadata,
                    std::vector<std::span<const std::byte>>* buffers,
                    std::optional<uint64_t>* metadata_checksum,
                    std::vector<uint64_t>* checksums) const;
  void SyncEntry(uint32_t slot);

  // --- the extent allocator (extent_allocator.cc); under the lock ---
  bool Allocate(uint64_t size, uint32_t slot);  // links slot into the extent list
  uint64_t LargestFree() const;

  // --- clients and pins (client_registry.cc); under the lock ---
  PinRecord* Pins(uint32_t client) const {
    return pins_ + static_cast<uint64_t>(client) * geo_.max_pins;
  }
  Status PinLocked(uint32_t slot);
  void UnpinLocked(uint32_t slot);
  // Drops client `client`'s pins (and, if `dead`, frees the objects it was
  // writing), then frees its record unless `free_record` is false.
  void ReleaseClientLocked(uint32_t client, bool dead, bool free_record = true);
  uint32_t ReapDeadLocked();
  // LockForCall, then ReapDeadLocked; nothing for a snapshot (no lock).
  Status LockAndReap();
  // Client records in use.
  uint32_t LiveClientsLocked() const;
  bool AnyLiveClient() const;
  // True unless client `c`'s process is known to be gone (its liveness lock
  // is free, or its stamp names a dead process).
  bool ClientAlive(uint32_t c) const;
  uint64_t ClientLockOffset(uint32_t c) const {
    return geo_.clients_offset + uint64_t{c} * sizeof(ClientEntry);
  }

  // --- recovery (store_recovery.cc) ---
  // Rebuilds every derived field from the primary ones after a process died
  // inside the lock, or when the first process opens a store nobody uses.
  void RecoverLocked();
  // True if the header at `e`'s extent (already range-checked) is an object
  // header naming `e`'s id.
  bool HeaderNames(const ObjectEntry& e) const;

  friend class zcstore::Store;
  friend class zcstore::ObjectView;
  friend class zcstore::ObjectBuilder;

  uint64_t fork_generation_ = platform::ForkGeneration();  // of the process that opened it
  pid_t opener_pid_ = getpid();
  std::string name_;
  std::string path_;  // empty for memfd
  Backing backing_ = Backing::kSharedMemory;
  bool read_only_ = false;
  bool snapshot_ = false;  // read-only file: no lock, no pins
  // How long a call waits for the store's lock (OpenOptions::lock_timeout;
  // a created store's handle: its default), then Timeout.
  int lock_timeout_ms_ = static_cast<int>(OpenOptions{}.lock_timeout.count());
  bool created_ = false;
  bool persistent_ = false;
  int fd_ = -1;
  // True if fd_'s open file description is this handle's alone (not a dup
  // another handle shares): only then can it hold and test liveness locks.
  bool private_description_ = false;
  std::byte* base_ = nullptr;
  uint64_t mapped_size_ = 0;
  Geometry geo_;
  StoreHeader* header_ = nullptr;
  ObjectEntry* objects_ = nullptr;
  ClientEntry* clients_ = nullptr;
  PinRecord* pins_ = nullptr;
  NameEntry* names_ = nullptr;
  std::byte* data_ = nullptr;  // the data region, mapped PROT_READ: views point here
  // A second, writable mapping of the data region, made on the first
  // CreateObject of this handle: builders write through it, so readers (and
  // views, even in this process) never see writable pages, and sealing an
  // object costs no mprotect (which is O(pages) once pages are mapped).
  std::byte* write_data_ = nullptr;
  mutable std::mutex write_map_mutex_;
  uint32_t client_ = kNone;  // our ClientEntry, kNone for snapshots
  // Process-local index of our own PinRecords (only this handle writes
  // them while it lives), so a pin or unpin is O(1) rather than a scan of
  // max_pins records. Guarded by the store lock like the records themselves.
  std::vector<uint32_t> pin_of_slot_;    // slot -> record index + 1, 0 = none
  std::vector<uint32_t> free_records_;   // record indices with count == 0
};

// Hash of an id to its home slot.
inline uint32_t HomeSlot(ObjectId id, uint32_t max_objects) {
  uint64_t h = (id.hi ^ (id.lo * 0x9E3779B97F4A7C15ull));
  h ^= h >> 29;
  return static_cast<uint32_t>(h % max_objects);
}

}  // namespace zcstore::internal

#endif  // ZCSTORE_STORE_STORE_INTERNAL_H_
