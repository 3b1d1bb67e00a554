// The byte layout of a store segment or file. docs/format.md draws it.
//
// Everything here lives in memory shared with other processes, or in a file:
// offsets never pointers, fixed-width fields, and every value read back is
// untrusted until checked (see StoreImpl::CheckLayout and ReadObjectHeader).
//
//   [StoreHeader, 4 KiB][ObjectEntry x max_objects][ClientEntry x max_clients]
//   [PinRecord x max_pins_per_client x max_clients][NameEntry x max_names]
//   (padding to a page)[data region: object extents, page-aligned]
//
// Each object extent: [ObjectHeader][BufferDesc x n][metadata][pad][buf 0]...
#ifndef ZCSTORE_STORE_LAYOUT_INTERNAL_H_
#define ZCSTORE_STORE_LAYOUT_INTERNAL_H_

#include <pthread.h>

#include <cstddef>
#include <cstdint>

namespace zcstore::internal {

inline constexpr char kStoreMagic[8] = {'Z', 'C', 'S', 'T', 'O', 'R', 'E', '\0'};
// Bump on any change to a struct below; readers refuse other versions.
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint32_t kObjectMagic = 0x4A424F5A;  // "ZOBJ" little-endian
inline constexpr uint32_t kNone = 0xFFFFFFFFu;        // "no entry" in index fields
inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kBufferAlignment = 64;      // shm and memfd stores
inline constexpr uint32_t kMaxBuffersPerObject = 1u << 20;
// Upper bounds on table sizes, so that a corrupt header cannot make us
// compute a table size that overflows or maps absurd amounts.
inline constexpr uint32_t kMaxObjectsLimit = 1u << 24;
inline constexpr uint32_t kMaxClientsLimit = 1u << 16;
inline constexpr uint32_t kMaxPinsLimit = 1u << 20;
inline constexpr uint32_t kMaxNamesLimit = 1u << 20;
inline constexpr size_t kMaxNameLength = 63;

// Identifies a process across PID reuse and reboots.
struct ProcessStamp {
  uint32_t pid;
  uint32_t reserved;
  uint64_t start_ticks;  // /proc/<pid>/stat field 22
  uint64_t boot_id;      // hash of /proc/sys/kernel/random/boot_id
};
static_assert(sizeof(ProcessStamp) == 24);

enum StoreFlags : uint32_t {
  kFlagChecksums = 1u << 0,   // Seal computes checksums
  kFlagPersistent = 1u << 1,  // shm: survives its creator
};

// Page 0 of every store. The fields up to `mutex` are written once, before
// the store is published, and never change; the rest change under `mutex`.
struct alignas(64) StoreHeader {
  char magic[8];             // kStoreMagic
  uint32_t format_version;   // kFormatVersion
  uint32_t header_size;      // sizeof(StoreHeader)
  uint32_t backing;          // zcstore::Backing
  uint32_t flags;            // StoreFlags
  uint64_t total_size;       // bytes of the whole segment or file
  uint64_t data_offset;      // start of the data region (page-aligned)
  uint64_t data_size;        // bytes of the data region (the capacity)
  uint32_t alignment;        // buffer alignment inside extents
  uint32_t max_objects;
  uint32_t max_clients;
  uint32_t max_pins_per_client;
  uint32_t max_names;
  uint32_t reserved0;
  uint64_t objects_offset;   // ObjectEntry[max_objects]
  uint64_t clients_offset;   // ClientEntry[max_clients]
  uint64_t pins_offset;      // PinRecord[max_clients][max_pins_per_client]
  uint64_t names_offset;     // NameEntry[max_names]
  int64_t created_unix_ns;
  ProcessStamp creator;
  uint8_t reserved1[40];
  // --- offset 192: mutable state, guarded by `mutex` ---
  alignas(64) pthread_mutex_t mutex;  // robust, process-shared
  uint8_t mutex_pad[64 - sizeof(pthread_mutex_t)];
  uint32_t extent_head;      // first ObjectEntry in data-offset order, or kNone
  uint32_t names_bound;      // derived: NameEntries in use (Delete skips the scan at 0)
  uint64_t used;             // bytes of live extents (derived; rebuilt on recovery)
  uint64_t epoch;            // +1 per recovery, for diagnostics
  // Bytes at the start of the data region whose storage is reserved
  // (fallocate). Grown by CreateObject, only after the reservation succeeded.
  uint64_t reserved_bytes;
  // Derived: 1 + the slot whose extent ends a run from offset 0 with no
  // gap, so that allocation need not walk it again; 0 when none is known
  // (then it walks from extent_head). A wrong value (stores written by
  // builds before it) costs free space, never an overlap: the walk from it
  // still follows the list's offset order.
  uint32_t fit_hint_plus1;
  uint32_t reserved2;
  uint8_t reserved3[4096 - 256 - 40];
};
static_assert(sizeof(pthread_mutex_t) <= 64);
static_assert(offsetof(StoreHeader, mutex) == 192);
static_assert(offsetof(StoreHeader, extent_head) == 256);
static_assert(offsetof(StoreHeader, reserved_bytes) == 280);
static_assert(offsetof(StoreHeader, fit_hint_plus1) == 288);
static_assert(sizeof(StoreHeader) == 4096);

enum ObjectState : uint32_t {
  kEmpty = 0,      // never used since the last run of empties: ends a probe
  kTombstone = 1,  // was used: a probe continues past it
  kUnsealed = 2,   // being written by `creator_client`; invisible to Get
  kSealed = 3,     // immutable, visible
  kDeleted = 4,    // invisible; extent held until `pins` reaches 0
  kChild = 5,      // holds a buffer of the object in slot `parent`; freed with it
};

// States whose extent is in use.
constexpr bool IsLive(uint32_t state) { return state >= kUnsealed && state <= kChild; }

// One slot of the object table, an open-addressing hash table keyed by id
// (linear probing from Hash(id) % max_objects). The slot also is a node of
// the extent list, which orders live extents by data offset for allocation.
struct alignas(64) ObjectEntry {
  uint64_t id_hi;
  uint64_t id_lo;
  uint32_t state;           // ObjectState; written last when a slot is filled
  uint32_t creator_client;  // ClientEntry index of the writer (while unsealed)
  uint64_t offset;          // extent start, relative to the data region
  uint64_t size;            // extent bytes (a multiple of kPageSize)
  uint32_t pins;            // derived: sum of live clients' PinRecords
  uint32_t prev;            // extent list, kNone at the ends
  uint32_t next;
  uint32_t parent;          // kChild only: the owning object's slot
  int64_t sealed_unix_ns;
};
static_assert(sizeof(ObjectEntry) == 64);

enum ClientState : uint32_t { kClientFree = 0, kClientLive = 1 };

// How others tell that a client's process still runs.
enum ClientLiveness : uint32_t {
  // By its ProcessStamp (PID, start time, boot): handles that share their
  // open file description with another handle, and stores of old builds.
  kLivenessStamp = 0,
  // By a lock on the entry's first byte (in the store file), held by the
  // handle's own open file description: the kernel drops it when the
  // process dies, so nothing needs /proc or a shared PID namespace.
  kLivenessLock = 1,
};

// One open Store handle. Its pins are PinRecord[max_pins_per_client] at
// pins_offset + index * max_pins_per_client * sizeof(PinRecord).
struct alignas(32) ClientEntry {
  uint32_t state;     // ClientState; written last when registering
  uint32_t liveness;  // ClientLiveness
  ProcessStamp process;
};
static_assert(sizeof(ClientEntry) == 32);

// `count` pins of object slot `slot` by one client. count == 0: unused.
struct PinRecord {
  uint32_t slot;
  uint32_t count;
};
static_assert(sizeof(PinRecord) == 8);

struct NameEntry {
  char name[64];  // NUL-terminated, 1..63 bytes; name[0] == 0: unused
  uint64_t id_hi;
  uint64_t id_lo;
  uint32_t used;  // 1 once name and id are written
  // NameChecksum of name and id, written before `used`; 0 in entries of
  // builds before it (then only the other checks apply).
  uint32_t checksum;
  uint32_t reserved[2];
};
static_assert(sizeof(NameEntry) == 96);

// At the start of every object extent, written by the writer before Seal.
struct alignas(64) ObjectHeader {
  uint32_t magic;  // kObjectMagic
  uint32_t num_buffers;
  uint64_t id_hi;  // must match the table entry
  uint64_t id_lo;
  uint64_t metadata_offset;  // relative to the extent start
  uint64_t metadata_size;
  uint64_t metadata_checksum;  // XXH3-64, when has_checksums
  uint32_t has_checksums;
  uint32_t reserved[3];
};
static_assert(sizeof(ObjectHeader) == 64);

struct BufferDesc {
  uint64_t offset;  // relative to the start of the extent that holds the buffer
  uint64_t size;
  uint64_t checksum;  // XXH3-64, when has_checksums
  // 0: the buffer is in this object's extent. Otherwise it is buffer 0 of
  // the kChild object in slot child_slot_plus1 - 1, whose parent is this one.
  uint32_t child_slot_plus1;
  uint32_t reserved;
};
static_assert(sizeof(BufferDesc) == 32);

constexpr uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace zcstore::internal

#endif  // ZCSTORE_STORE_LAYOUT_INTERNAL_H_
