// Store: immutable objects in shared memory or a mapped file, read without copying.
//
// An object is a small metadata blob plus N buffers (the big arrays). Its life:
//
//   CreateObject(id, sizes) -> ObjectBuilder   space reserved, mapped writable
//   ... the writer fills metadata and buffers in place ...
//   builder.Seal()                             immutable, visible to every Get
//   (or builder.Abort(), or the builder dies)  space returned, never visible
//   Get(id) -> ObjectView                      pinned read-only view, no copy
//   Delete(id)                                 gone for new Gets; space reused
//                                              once the last pin is released
//
// Backings, chosen at Create:
//   kSharedMemory  a named segment in /dev/shm (the default). Other processes
//                  open it by name. Removed when the creating handle closes,
//                  unless StoreOptions::persistent.
//   kFile          a file on disk, mapped. Persistent: a later run, even after a
//                  reboot, opens it (read-only is typical). Buffers are
//                  page-aligned and checksums are always on.
//   kMemfd         an anonymous memfd. No name: a process hands fd() to the
//                  processes it starts, which call OpenFd(). It disappears with
//                  its last user, so nothing is ever left behind.
//
// Memory: storage is reserved (fallocate) before it is written: the tables at
// Create, each object's extent at CreateObject. A full /dev/shm or disk is a
// StoreFull from Create or Put, never a SIGBUS later.
// Every process maps the data region PROT_READ, and every ObjectView points
// there, so writing through a view faults. A process that creates objects
// also maps the data region writable, once, and builders write through that
// mapping only; processes that only read never map anything writable.
//
// Crash model (docs/architecture.md has the details): any process may die at any
// instruction. Survivors never deadlock, never see a half-written object, and the
// pins and unsealed objects of dead processes are reclaimed.
//
// Threads: a Store and its views may be used from many threads at once.
// Processes: each process opens its own Store handle. A handle is alive while
// the kernel says its process is (a lock it holds on the store file), so
// users may sit in different PID namespaces. A child forked from a process
// with open handles may read the views it inherited; every call on an
// inherited handle is InvalidArgument, and dropping one releases nothing of
// the parent's: the child opens its own (Open, or OpenFd on the inherited fd).
// Trust: a store is opened only if it is a regular file of the effective
// user that group and others cannot write (see OpenOptions), never through a
// symbolic link; every value read from the store is checked from a private
// copy, since another writer may change it while it is read.
#ifndef ZCSTORE_STORE_H_
#define ZCSTORE_STORE_H_

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "zcstore/export.h"
#include "zcstore/object_id.h"
#include "zcstore/serializer_options.h"
#include "zcstore/status.h"

namespace zcstore {

namespace internal {
class StoreImpl;
struct StoreTestPeer;
}  // namespace internal

template <typename T>
class Pinned;
class Store;

// True for the argument types of the raw Put (spans of bytes), which the
// typed Put must never capture.
template <typename T>
concept RawBytes = std::is_convertible_v<T, std::span<const std::byte>>;

enum class Backing : uint32_t { kSharedMemory = 1, kFile = 2, kMemfd = 3 };

// Options for Store::Create. Defaults are written beside each field.
struct StoreOptions {
  Backing backing = Backing::kSharedMemory;
  // Bytes available to objects (headers, metadata, buffers, alignment padding).
  // The segment or file is a little larger (the tables). Storage is reserved
  // as objects claim it (see CreateObject), not at Create.
  uint64_t capacity = uint64_t{1} << 30;  // 1 GiB
  // Most objects alive at once (sealed, being written, or deleted but pinned),
  // 1..2^24. Each slot is 64 bytes of the tables, reserved at Create: the
  // default's 4 MiB lets a model of 20,000 arrays and a task of 5,000 more
  // fit, and costs about 3 ms of page faults at Create (bench BM_StoreTable).
  uint32_t max_objects = 65536;
  // Most Store handles open on this store at once, across all processes.
  uint32_t max_clients = 128;
  // Most distinct objects one handle can hold pinned at once (1..2^20):
  // a Get past it fails with TooManyPins. Each costs 8 bytes per client in
  // the tables.
  uint32_t max_pins_per_client = 1024;
  // Most string names bound at once.
  uint32_t max_names = 256;
  // Compute an XXH3 checksum of each buffer and the metadata at Seal, so that
  // Verify can check them. Off by default for shared memory and memfd (Seal
  // then costs nothing per byte); always on for file stores.
  bool checksums = false;
  // Permission bits of the segment or file, applied regardless of umask.
  mode_t mode = 0600;
  // Shared memory only: keep the segment after the creating handle closes; it
  // is then removed only by Store::Remove or `zcstore rm`. When false (the
  // default), closing the creator unlinks the name (open handles keep working)
  // and a crashed creator's segment is removed by `zcstore gc` or by the next
  // Create of that name once every user has died.
  bool persistent = false;
  // Shared memory only: the tmpfs directory where segments live.
  std::string shm_dir = "/dev/shm";
};

struct OpenOptions {
  // kSharedMemory opens `name` in shm_dir; kFile opens the path `name`.
  // (kMemfd stores are opened with OpenFd.)
  Backing backing = Backing::kSharedMemory;
  // A read-only handle cannot create, delete, bind or unbind. A read-only file
  // store is opened O_RDONLY and treated as a snapshot: it takes a shared
  // file lock (so no writer can open it meanwhile) and pins nothing.
  bool read_only = false;
  std::string shm_dir = "/dev/shm";
  // A store is trusted only if it is a regular file owned by the effective
  // user that neither group nor others may write (else PermissionDenied):
  // whoever can write its tables can corrupt it or hold its lock. Set this to
  // open a store created with a group-writable StoreOptions::mode on purpose.
  bool allow_shared_write = false;
  // Longest wait for another process that is opening the store, or holding
  // its lock: Open, and every later call of this handle that takes the
  // store's lock (Get, Put, CreateObject, Seal, Delete, Bind, Lookup, Stats,
  // List, ...), gives up with Timeout after it. Contains then answers
  // false. A view's Release, and closing the handle, give up too rather
  // than hang: what they could not release (a pin, the handle's record) is
  // reclaimed when the handle closes or its process dies, as a dead
  // process's is. A handle from Create or OpenFd waits the default, 5 s.
  std::chrono::milliseconds lock_timeout{5000};
};

// Numbers describing a store at one instant.
struct StoreStats {
  uint64_t capacity = 0;        // bytes available to objects
  uint64_t used = 0;            // bytes held by objects (incl. deleted-but-pinned)
  uint64_t largest_free = 0;    // largest object extent that would fit now
  uint32_t objects = 0;         // sealed objects visible to Get
  uint32_t unsealed = 0;        // objects being written
  uint32_t deleted_pinned = 0;  // deleted objects waiting for their last pin
  uint64_t pins = 0;            // pins held, all processes together
  uint32_t clients = 0;         // open handles, all processes together
  uint32_t max_objects = 0;
  uint32_t max_clients = 0;
  uint32_t names = 0;           // bound names
};

// What List reports per object.
struct ObjectInfo {
  ObjectId id;
  enum class State { kUnsealed, kSealed, kDeletedPinned } state = State::kSealed;
  uint64_t extent_bytes = 0;    // store bytes the object occupies
  uint64_t metadata_bytes = 0;
  uint64_t data_bytes = 0;      // the buffers' bytes, without padding
  uint32_t num_buffers = 0;
  uint32_t pins = 0;
  bool has_checksums = false;
  int64_t sealed_unix_ns = 0;   // 0 while unsealed
};

// A pinned, read-only view of a sealed object. Move-only.
//
// While the view lives, the object's bytes stay where they are and unchanged,
// even if the object is deleted meanwhile. The spans point into the store's
// read-only mapping: writing through them faults (SIGSEGV). The view keeps the
// store mapped, so it may outlive the Store handle it came from.
// Destroying the view releases its pin; Release() does so explicitly.
// Thread-safe to read from many threads; Release from one.
class ZCSTORE_EXPORT ObjectView {
 public:
  ObjectView() = default;
  ObjectView(ObjectView&& other) noexcept;
  ObjectView& operator=(ObjectView&& other) noexcept;
  ObjectView(const ObjectView&) = delete;
  ObjectView& operator=(const ObjectView&) = delete;
  ~ObjectView();

  // False for a default-constructed, moved-from or released view.
  bool valid() const { return impl_ != nullptr; }
  const ObjectId& id() const { return id_; }
  std::span<const std::byte> metadata() const { return metadata_; }
  size_t num_buffers() const { return buffers_.size(); }
  // Buffer `i` (0-based). i >= num_buffers() is a bug (stops the process).
  std::span<const std::byte> buffer(size_t i) const;
  const std::vector<std::span<const std::byte>>& buffers() const { return buffers_; }
  // The metadata's checksum recorded at Seal, if the object has checksums
  // (StoreOptions::checksums; always in file stores). The typed Get checks
  // it; a raw reader may.
  std::optional<uint64_t> metadata_checksum() const { return metadata_checksum_; }

  // Unpins the object. InvalidArgument if this view was already released or
  // moved from. After it, the spans must not be used.
  Status Release();

 private:
  friend class internal::StoreImpl;
  std::shared_ptr<internal::StoreImpl> impl_;
  uint32_t slot_ = 0;
  ObjectId id_;
  std::span<const std::byte> metadata_;
  std::vector<std::span<const std::byte>> buffers_;
  std::optional<uint64_t> metadata_checksum_;
};

// An object being written. Move-only; not thread-safe (one writer).
//
// metadata() and buffer(i) are writable spans of exactly the sizes asked for,
// each buffer aligned to 64 bytes, and to a page if it is 64 KiB or larger
// (all buffers are page-aligned in file stores). Nothing is visible to other
// handles until Seal. Destroying an unsealed builder aborts it. After Seal or
// Abort the spans are gone (empty): read the object back with Store::Get.
class ZCSTORE_EXPORT ObjectBuilder {
 public:
  ObjectBuilder() = default;
  ObjectBuilder(ObjectBuilder&& other) noexcept;
  ObjectBuilder& operator=(ObjectBuilder&& other) noexcept;
  ObjectBuilder(const ObjectBuilder&) = delete;
  ObjectBuilder& operator=(const ObjectBuilder&) = delete;
  ~ObjectBuilder();

  bool valid() const { return impl_ != nullptr; }
  const ObjectId& id() const { return id_; }
  std::span<std::byte> metadata() const { return metadata_; }
  size_t num_buffers() const { return buffers_.size(); }
  std::span<std::byte> buffer(size_t i) const;
  // True if this builder came from `store`'s handle (so `store` can adopt it).
  bool BelongsTo(const Store& store) const;

  // Makes the object immutable and visible. Computes checksums when the store
  // has them on (cost: one read of every byte, ~10 GB/s); otherwise O(1),
  // whatever the size (file stores also msync the object). Corrupt if the
  // object was reclaimed meanwhile (this process was judged dead); then it
  // is aborted. InvalidArgument if already sealed or aborted.
  Status Seal();
  // Seal, and a view of the sealed object pinned by this handle, taken under
  // the same lock: no other process can delete the object in between, so
  // memory that points into it (an array built in place and adopted) stays
  // valid as long as the view. TooManyPins if this handle's pins are at
  // their limit: then nothing is sealed and the builder is as it was (to
  // seal later, abort, or take its adopted builders back). Other errors as
  // Seal.
  Result<ObjectView> SealPinned();
  // Gives back the builders this unsealed object adopted (CreateObject's
  // `adopt`), unsealed and usable, and aborts this one. Nothing if it adopted
  // none; empty if it is no longer valid.
  std::vector<ObjectBuilder> ReleaseAdopted();
  // Drops the object; its space is free at once. InvalidArgument if already
  // sealed or aborted.
  Status Abort();

 private:
  friend class internal::StoreImpl;
  std::shared_ptr<internal::StoreImpl> impl_;
  uint32_t slot_ = 0;
  ObjectId id_;
  std::span<std::byte> extent_;  // the whole object, header included
  std::span<std::byte> metadata_;
  std::vector<std::span<std::byte>> buffers_;
  std::vector<ObjectBuilder> children_;  // adopted builders, sealed with this one
};

// A handle on one store. Move-only. See the file comment for the model.
class ZCSTORE_EXPORT Store {
 public:
  // Creates a store. `name`: for kSharedMemory, a store name of 1-64 characters
  // from [A-Za-z0-9._-] (empty: a unique name is generated; see name());
  // for kFile, the file's path; for kMemfd, a label shown in /proc (may be empty).
  // Errors: AlreadyExists (a live store or existing file has that name; a
  // shared-memory store whose users all died is replaced), PermissionDenied
  // (the OS refused, or the name is taken by another user's file or a link),
  // StoreFull (no room in /dev/shm or on disk for the tables; or, for
  // kSharedMemory, capacity and tables larger than shm_dir's free space:
  // the message says what it needs and what is free), InvalidArgument (an
  // options limit out of range; shm_dir "" or relative).
  // Cost: O(1) in capacity: the data region is reserved as objects claim it.
  static Result<Store> Create(std::string_view name, const StoreOptions& options = {});

  // Opens an existing store: a shared-memory store by name, or a file store
  // by path (options.backing = kFile; a name with a '/' is taken as a path
  // whatever the backing). Never follows a symbolic link and never blocks
  // on a FIFO or device planted under the name. Errors: NotFound,
  // PermissionDenied (a symbolic link; a file owned by another user, or that
  // group or others may write: see OpenOptions::allow_shared_write),
  // InvalidArgument (not a regular file), Corrupt (not a store, truncated, a
  // table out of range), VersionMismatch, StoreFull (its client table is
  // full), IOError (a file store locked by another handle), Timeout (another
  // process held the store's lock longer than options.lock_timeout).
  // Reclaims the pins and unsealed objects of processes that died.
  static Result<Store> Open(std::string_view name, const OpenOptions& options = {});

  // Opens the store, or creates it with `options` if there is none (a
  // creator racing us makes this an Open); created() tells which happened.
  // If this handle created a shared-memory store, the store is removed when
  // the handle closes unless options.persistent. Errors: those of Open and
  // Create; InvalidArgument for kMemfd (no name to find it by).
  static Result<Store> OpenOrCreate(std::string_view name, const StoreOptions& options = {});

  // The capacity (StoreOptions::capacity) that an object of `metadata_size`
  // bytes and buffers of `buffer_sizes` takes in a store of `backing`: its
  // headers, buffers and alignment, rounded to pages. A store holds objects
  // whose CapacityFor add up to at most its capacity. 0 if the sizes overflow.
  static uint64_t CapacityFor(size_t metadata_size, std::span<const size_t> buffer_sizes,
                              Backing backing = Backing::kSharedMemory);

  // Opens a kMemfd store from a file descriptor handed down by its creator.
  // The handle gets an open file description of its own (reopened through
  // /proc/self/fd, a dup where /proc is missing); the caller keeps `fd`.
  // Waits for the store's lock as Open does by default (5 s). Errors as Open,
  // except that a memfd's mode is not checked (nobody can plant one).
  static Result<Store> OpenFd(int fd, bool read_only = false);

  // Removes a shared-memory store's name (or deletes a file store's file).
  // Processes that have it open keep working. Only a zcstore store of the
  // calling user is removed: NotFound if absent, InvalidArgument for a name
  // that is not a store name (a '/' or "..": use Backing::kFile for paths)
  // or a file that is not a store, PermissionDenied for another user's file.
  static Status Remove(std::string_view name, const OpenOptions& options = {});

  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;
  // Closes the handle: releases nothing that views still hold (they keep the
  // store mapped), unregisters this handle once the last of them is gone, and
  // unlinks a non-persistent shared-memory store if this handle created it.
  ~Store();

  // --- objects ---

  // Reserves an unsealed object: a metadata blob and one buffer per entry of
  // `buffer_sizes`. Errors: AlreadyExists (id in use, also by a deleted object
  // still pinned), StoreFull (no contiguous room, or the object table is
  // full, or /dev/shm or the disk cannot back the extent; the pins of dead
  // processes are reclaimed before giving up), InvalidArgument (nil id, too
  // many buffers), PermissionDenied (read-only).
  // Cost: O(objects) to find room; no page of the new object is touched. The
  // first use of a region reserves its storage (fallocate, ~0.4 s per GiB).
  //
  // `adopt`: unsealed single-buffer builders of this handle, already filled
  // in place, whose buffer 0 become this object's buffers after the
  // `buffer_sizes` ones, without copying a byte. They are moved from. At Seal
  // they become part of this object (invisible to Get, freed with it); if
  // this object is aborted, they are aborted too. InvalidArgument if one is
  // invalid, from another handle, or has other than one buffer (then nothing
  // is moved).
  Result<ObjectBuilder> CreateObject(ObjectId id, size_t metadata_size,
                                     std::span<const size_t> buffer_sizes,
                                     std::span<ObjectBuilder> adopt = {});

  // CreateObject + copy + Seal. Errors as CreateObject. Cost: one memcpy of
  // every byte (plus checksums when on).
  Status Put(ObjectId id, std::span<const std::byte> metadata,
             std::span<const std::span<const std::byte>> buffers);

  // --- typed objects: defined in zcstore/serializer.h (include it to use them) ---

  // Serializes `object` (see serializer.h) into a new object with a random id
  // and returns the id. An lvalue is copied: peak memory is about twice the
  // object. An rvalue (std::move(obj)) is moved: each out-of-band buffer the
  // object exclusively owns is released as soon as it is in the store (its
  // pages are dropped as they are copied), so peak memory stays near one copy;
  // arrays allocated in this store are adopted with no copy at all; the
  // moved-from object is left valid and empty. Errors: those of CreateObject,
  // InvalidArgument (nesting deeper than options.max_depth).
  template <typename T>
    requires(!RawBytes<T>)
  Result<ObjectId> Put(T&& object, const SerializeOptions& options = {});
  // The same under a chosen id.
  template <typename T>
    requires(!RawBytes<T>)
  Status Put(ObjectId id, T&& object, const SerializeOptions& options = {});
  // Loads object `id` as a T whose Arrays view the store (zero copies) and
  // whose other members are rebuilt from the envelope; the returned handle
  // pins the object. Errors: those of Get, TypeMismatch (stored as another
  // type, or the layout differs from what T's Serialize describes for the
  // stored version), VersionMismatch (another envelope format, or a type
  // version outside T's kZcstoreMinVersion..kZcstoreVersion), Corrupt (the
  // envelope, its metadata checksum or a buffer fails a check). Cost: the
  // envelope (small) is copied and checked; Arrays are not copied.
  template <typename T>
  Result<Pinned<T>> Get(ObjectId id, const LoadOptions& options = {}) const;

  // A pinned view of a sealed object. NotFound if the id is unknown, unsealed
  // or deleted; TooManyPins if this handle already pins max_pins_per_client
  // distinct objects (release views, or create the store with a larger limit); Corrupt if the object's header fails its checks.
  // Cost: a table lookup and a pin under the store lock; the object's first
  // page is read, no buffer byte is touched or copied, whatever the size.
  Result<ObjectView> Get(ObjectId id) const;

  // Hides the object from new Gets. Its space is reused once no view pins it.
  // Also unbinds every name bound to it. NotFound if unknown or already
  // deleted; PermissionDenied if read-only.
  Status Delete(ObjectId id);

  // True if `id` names a sealed, undeleted object; false also if the store's
  // lock could not be had within OpenOptions::lock_timeout.
  bool Contains(ObjectId id) const;

  // Every object (unsealed and deleted-but-pinned ones too), in table order.
  Result<std::vector<ObjectInfo>> List() const;
  // The store's numbers at one instant (StoreStats), after reclaiming what
  // dead processes held. Walks the whole object table: about 0.2 ms for
  // 65,536 slots, and a few ms in a process that has not read the table
  // yet (its pages fault in). Errors: the lock's (OpenOptions::lock_timeout).
  Result<StoreStats> Stats() const;

  // How many more processes may open this store now: the free client slots,
  // after reclaiming those of dead processes. Reads only the client table,
  // so it is cheap in any process. Errors: the lock's, as Stats.
  Result<uint32_t> FreeClientSlots() const;

  // Recomputes the checksums of one object and compares them with the
  // stored ones. Corrupt, naming the object and buffer, on the first
  // mismatch, or if the object lost its checksums in a store that gives
  // every object some (file stores); InvalidArgument if it was sealed
  // without checksums. Cost: one read of every byte (~10 GB/s).
  Status Verify(ObjectId id) const;
  // Checks the tables (every entry's state and extent; every bound name's
  // checksum and object), then Verify on every sealed object that has
  // checksums (objects sealed without them are skipped). Corrupt on the
  // first problem, naming it.
  Status VerifyAll() const;

  // --- names ---

  // Binds `name` (1-63 bytes) to `id`. AlreadyExists if bound; NotFound if
  // `id` is not a sealed object; StoreFull if the name table is full.
  Status Bind(std::string_view name, ObjectId id);
  // The id bound to `name`, or NotFound.
  Result<ObjectId> Lookup(std::string_view name) const;
  // Removes a binding (the object stays). NotFound if unbound.
  Status Unbind(std::string_view name);
  // Every bound name and its object, sorted by name. Entries that fail their
  // checks are left out (VerifyAll reports them).
  Result<std::vector<std::pair<std::string, ObjectId>>> ListNames() const;

  // --- housekeeping ---

  // Releases the pins and frees the unsealed objects of handles whose process
  // died. Returns how many dead handles were reclaimed. Done also by Open,
  // by Stats and before any StoreFull; callers rarely need it.
  Result<uint32_t> ReclaimDead();

  // The store's name (generated if Create got an empty one), path for kFile.
  const std::string& name() const;
  // True if this handle created the store (Create, or OpenOrCreate that
  // created it).
  bool created() const;
  Backing backing() const;
  bool read_only() const;
  // The segment's file descriptor; for kMemfd stores, what child processes
  // pass to OpenFd (clear FD_CLOEXEC or dup2 it for them: it is close-on-exec).
  int fd() const;
  // Where byte `p` of an object's buffer got through this handle (a view's
  // or a builder's) lies in the file fd(): to map the buffer again with
  // MAP_PRIVATE, as a copy-on-write copy its holder may write to. (Keep the
  // object pinned while that mapping lives: pages not yet written show the
  // file's bytes, which a reused extent would change.) InvalidArgument if
  // `p` is not in this handle's data region.
  Result<uint64_t> FileOffsetOf(const void* p) const;

  // Sweeps `shm_dir` for this user's shared-memory stores whose every user has
  // died (and half-created segments of dead creators), removes them and returns
  // their names. What `zcstore gc` runs.
  static Result<std::vector<std::string>> CollectGarbage(const std::string& shm_dir = "/dev/shm");
  // Names of this user's shared-memory stores in `shm_dir`.
  static Result<std::vector<std::string>> ListStores(const std::string& shm_dir = "/dev/shm");

 private:
  friend struct internal::StoreTestPeer;
  friend class ObjectBuilder;
  explicit Store(std::shared_ptr<internal::StoreImpl> impl);
  std::shared_ptr<internal::StoreImpl> impl_;
};

}  // namespace zcstore

#endif  // ZCSTORE_STORE_H_
