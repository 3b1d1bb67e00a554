/* zcstore's C ABI: the store, for any runtime that can call C.
 *
 * Plain C11. Handles are opaque pointer-sized tokens (never dereference
 * them); sizes are size_t; everything else
 * is a fixed-width integer. No C++ type and no exception crosses this header.
 * The structs that do cross it are plain data: zcs_id, zcs_buffer and
 * zcs_object_info are fixed for this ABI version; the option and stats
 * structs begin with their own size, so they can grow without breaking old
 * callers. Link with -lzcstore_c (pkg-config zcstore_c): libzcstore_c.so.1,
 * whose SONAME follows ZCS_ABI_VERSION and which exports zcs_* only.
 *
 * Errors: every function that can fail returns an int status, ZCS_OK (0)
 * or one of the ZCS_* codes below (the same closed set, with the same
 * values, as the C++ zcstore::StatusCode). On failure, zcs_last_error() gives this thread's
 * message: what went wrong and what to do. Out-parameters are written only
 * on success.
 *
 * Ownership, in one place (docs/c_api.md has the long form):
 *   zcs_store*    from zcs_store_create/open/open_fd; freed by zcs_store_close.
 *   zcs_view*     from zcs_get; a pinned, read-only view of one object; freed
 *                 by zcs_view_release. Its pointers stay valid until then,
 *                 even after zcs_store_close or zcs_delete of the object.
 *   zcs_builder*  from zcs_create_object; freed by zcs_builder_seal or
 *                 zcs_builder_abort (both free it, whatever they return).
 *                 It needs its store: once the store is closed, its calls
 *                 return ZCS_MISUSE (seal drops the object and frees it).
 *   const char*   returned strings belong to the library: see each function.
 *
 * Misuse is an error, never a crash (as SQLite's SQLITE_MISUSE): a handle
 * closed or freed already (zcs_store_close or zcs_view_release twice, a
 * builder sealed twice, a call after close), a handle of another kind, or
 * a value that was never a handle gets ZCS_MISUSE, and nothing else
 * happens. A handle is a token checked against a table with a generation
 * per slot, so a stale one never reaches a newer handle. A close while
 * other threads are inside calls on the same handle lets those calls
 * finish: the handle's resources go when the last of them returns, and
 * calls that start after the close get ZCS_MISUSE.
 *
 * Threads: a zcs_store may be used from many threads at once; a zcs_view may
 * be read from many threads at once; a zcs_builder is used by one thread at
 * a time. Processes: each process opens its own store handle; a
 * child forked from a process with open handles gets ZCS_INVALID_ARGUMENT
 * from every call on the inherited ones (open the store again). */
#ifndef ZCSTORE_ZCSTORE_C_H_
#define ZCSTORE_ZCSTORE_C_H_

#include <stddef.h>
#include <stdint.h>

#if defined(ZCS_BUILDING_LIBRARY)
#define ZCS_API __attribute__((visibility("default")))
#else
#define ZCS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI's version: bumped (with the SONAME) only by an incompatible change. */
#define ZCS_ABI_VERSION 1

/* Status codes: the values of zcstore::StatusCode; they never change and new
 * ones are only appended. */
enum {
  ZCS_OK = 0,
  ZCS_NOT_FOUND = 1,         /* no such object, name, store or file */
  ZCS_ALREADY_EXISTS = 2,    /* an object id, name or store name is taken */
  ZCS_STORE_FULL = 3,        /* no room: capacity, object table, /dev/shm or disk */
  ZCS_CORRUPT = 4,           /* bytes read from shared memory or a file fail a check */
  ZCS_TYPE_MISMATCH = 5,     /* data of another type than the one asked for */
  ZCS_VERSION_MISMATCH = 6,  /* a format version this build cannot read */
  ZCS_PERMISSION_DENIED = 7, /* the OS refused, or a read-only handle was asked to write */
  ZCS_WORKER_CRASHED = 8,    /* (pool) a worker died while running a task */
  ZCS_TIMEOUT = 9,           /* a deadline passed (another process held a lock) */
  ZCS_CANCELLED = 10,        /* the caller cancelled the work */
  ZCS_INVALID_ARGUMENT = 11, /* an argument that can never work (NULL, a bad handle, sizes) */
  ZCS_IO_ERROR = 12,         /* any other OS error; the message holds errno's text */
  ZCS_TASK_FAILED = 13,      /* (pool) a task failed */
  ZCS_TOO_MANY_PINS = 14,    /* this handle already pins max_pins_per_client objects */
  ZCS_MISUSE = 15            /* a handle closed or freed already, of another kind, or no handle */
};

/* Backings (zcstore::Backing). */
enum {
  ZCS_BACKING_SHM = 1,  /* a named segment in /dev/shm (the default) */
  ZCS_BACKING_FILE = 2, /* a file on disk, by path */
  ZCS_BACKING_MEMFD = 3 /* an anonymous memfd, handed down by its fd */
};

/* Object states in zcs_object_info. */
enum { ZCS_UNSEALED = 0, ZCS_SEALED = 1, ZCS_DELETED_PINNED = 2 };

typedef struct zcs_store zcs_store;
typedef struct zcs_view zcs_view;
typedef struct zcs_builder zcs_builder;

/* An object's 128-bit name. All zeros is reserved ("no object"). */
typedef struct zcs_id {
  uint64_t hi;
  uint64_t lo;
} zcs_id;

/* A buffer to copy from, for zcs_put. */
typedef struct zcs_buffer {
  const void* data;
  size_t size;
} zcs_buffer;

/* Options for zcs_store_create. Fill with zcs_store_options_init, then
 * change what you need; the defaults are those of zcstore::StoreOptions. */
typedef struct zcs_store_options {
  uint32_t struct_size;         /* set by zcs_store_options_init */
  uint32_t backing;             /* ZCS_BACKING_SHM */
  uint64_t capacity;            /* 1 GiB: bytes available to objects */
  uint32_t max_objects;         /* 65536: 64 bytes of tables each */
  uint32_t max_clients;         /* 128 handles, all processes together */
  uint32_t max_pins_per_client; /* 1024 */
  uint32_t max_names;           /* 256 */
  uint32_t checksums;           /* 0; file stores always have them */
  uint32_t mode;                /* 0600, applied regardless of umask; bits beyond 0777 are ignored */
  uint32_t persistent;          /* 0: a shm store goes when its creator closes */
  const char* shm_dir;          /* NULL: /dev/shm; else an absolute path ("" and relative
                                   paths are INVALID_ARGUMENT). Copied by zcs_store_create. */
} zcs_store_options;

/* Options for zcs_store_open (zcstore::OpenOptions). Fill with
 * zcs_open_options_init. */
typedef struct zcs_open_options {
  uint32_t struct_size;        /* set by zcs_open_options_init */
  uint32_t backing;            /* ZCS_BACKING_SHM; a name with '/' is a path anyway */
  uint32_t read_only;          /* 0 */
  uint32_t allow_shared_write; /* 0: refuse a store group or others may write */
  uint64_t lock_timeout_ms;    /* 5000; from 2^63 up: no limit */
  const char* shm_dir;         /* NULL: /dev/shm; else an absolute path */
} zcs_open_options;

/* zcstore::StoreStats. */
typedef struct zcs_stats {
  uint32_t struct_size; /* the caller sets it to sizeof(zcs_stats) */
  uint32_t objects;     /* sealed objects visible to zcs_get */
  uint64_t capacity;
  uint64_t used;        /* bytes held by objects (deleted-but-pinned too) */
  uint64_t largest_free;
  uint64_t pins;
  uint32_t unsealed;
  uint32_t deleted_pinned;
  uint32_t clients;
  uint32_t max_objects;
  uint32_t max_clients;
  uint32_t names;
} zcs_stats;

/* What zcs_list reports per object (zcstore::ObjectInfo). */
typedef struct zcs_object_info {
  zcs_id id;
  uint32_t state; /* ZCS_UNSEALED, ZCS_SEALED or ZCS_DELETED_PINNED */
  uint32_t num_buffers;
  uint64_t extent_bytes;
  uint64_t metadata_bytes;
  uint64_t data_bytes;
  uint32_t pins;
  uint32_t has_checksums;
  int64_t sealed_unix_ns;
} zcs_object_info;

/* ---- library ---- */

/* The library's version, "MAJOR.MINOR.PATCH"; a static string. */
ZCS_API const char* zcs_version(void);
/* The library's version as a number: MAJOR * 1000000 + MINOR * 1000 +
 * PATCH (0.1.0 is 1000), to compare against at run time. */
ZCS_API uint32_t zcs_version_number(void);
/* The ABI version the library implements (ZCS_ABI_VERSION when it was built). */
ZCS_API uint32_t zcs_abi_version(void);
/* This thread's message for its last failed call ("" if none yet). Valid
 * until this thread's next failing zcs_ call. Messages begin with the
 * function's name ("zcs_put: ..."). */
ZCS_API const char* zcs_last_error(void);
/* A code's name, "StoreFull"; "Unknown" for a value outside the set. Static. */
ZCS_API const char* zcs_status_name(int status);

/* ---- ids ---- */

/* 128 random bits from the kernel. Never fails but for a NULL `out`. */
ZCS_API int zcs_id_random(zcs_id* out);
/* Writes the 32 lower-case hex digits and a NUL into `out` (33 bytes). */
ZCS_API int zcs_id_to_string(zcs_id id, char out[33]);
/* Parses 32 hex digits; anything else is ZCS_INVALID_ARGUMENT. */
ZCS_API int zcs_id_from_string(const char* hex, zcs_id* out);

/* ---- stores ---- */

/* Fill `options` with the defaults (and its struct_size). */
ZCS_API int zcs_store_options_init(zcs_store_options* options);
ZCS_API int zcs_open_options_init(zcs_open_options* options);

/* Creates a store (zcstore::Store::Create): `name` as there (NULL or "" for
 * a generated shm name; a path for ZCS_BACKING_FILE). `options` may be NULL
 * (the defaults). Errors: ALREADY_EXISTS, PERMISSION_DENIED, STORE_FULL,
 * INVALID_ARGUMENT (a NULL `out`, options whose struct_size is unknown). */
ZCS_API int zcs_store_create(const char* name, const zcs_store_options* options,
                             zcs_store** out);
/* Opens an existing store by name or path (zcstore::Store::Open); `options`
 * may be NULL. Errors: NOT_FOUND, PERMISSION_DENIED, CORRUPT,
 * VERSION_MISMATCH, STORE_FULL (client table), IO_ERROR, TIMEOUT. */
ZCS_API int zcs_store_open(const char* name, const zcs_open_options* options, zcs_store** out);
/* Opens a memfd store from a descriptor its creator handed down; the caller
 * keeps `fd`. Errors as zcs_store_open; a negative fd is INVALID_ARGUMENT. */
ZCS_API int zcs_store_open_fd(int fd, int read_only, zcs_store** out);
/* Closes the handle (and frees it). Views from it stay valid until released;
 * builders from it do not (their calls get ZCS_MISUSE). A shm store this
 * handle created is unlinked unless persistent. NULL is a no-op (ZCS_OK);
 * a handle closed already is ZCS_MISUSE. */
ZCS_API int zcs_store_close(zcs_store* store);
/* Removes a shm store's name (shm_dir NULL: /dev/shm), or deletes a file
 * store: a name with '/' or ending in ".zcs" is a file's path, and a bare
 * name that no shm store has is tried as a file in the working directory
 * (where zcs_store_create put a file store created by a bare name).
 * NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT. */
ZCS_API int zcs_store_remove(const char* name, const char* shm_dir);
/* The message of the last call on this handle that failed, from any
 * thread ("" if none): copied into `buf` (at most size - 1 bytes and a
 * NUL; `buf` may be NULL when size is 0), its full length into *length
 * (if not NULL). For runtimes whose calls may run on other threads than
 * the one that reads the error (zcs_last_error is per thread). */
ZCS_API int zcs_store_last_error(const zcs_store* store, char* buf, size_t size, size_t* length);
/* The capacity an object of `metadata_size` bytes and `num_buffers` buffers
 * of `buffer_sizes` takes in a store of `backing` (ZCS_BACKING_*): headers,
 * alignment and pages included. A store holds objects whose capacities add
 * up to its capacity. INVALID_ARGUMENT if the sizes overflow. */
ZCS_API int zcs_capacity_for(size_t metadata_size, const size_t* buffer_sizes, size_t num_buffers,
                             uint32_t backing, uint64_t* out);

/* The store's name (path for file stores), owned by the handle: valid until
 * zcs_store_close. */
ZCS_API int zcs_store_name(const zcs_store* store, const char** out);
/* The store's descriptor (close-on-exec; for memfd stores, what children
 * pass to zcs_store_open_fd), owned by the handle. */
ZCS_API int zcs_store_fd(const zcs_store* store, int* out);
/* The backing (ZCS_BACKING_*) and whether the handle is read-only. */
ZCS_API int zcs_store_backing(const zcs_store* store, uint32_t* backing, int* read_only);
/* Fills `out`; set out->struct_size = sizeof(zcs_stats) first. */
ZCS_API int zcs_stats_get(const zcs_store* store, zcs_stats* out);
/* Lists every object (unsealed and deleted-but-pinned too), in table order:
 * writes min(count, capacity) entries to `out` (which may be NULL when
 * capacity is 0) and the total to *count. Call with capacity 0 to size. */
ZCS_API int zcs_list(const zcs_store* store, zcs_object_info* out, size_t capacity,
                     size_t* count);
/* Recomputes one object's checksums (CORRUPT naming the buffer on a
 * mismatch; INVALID_ARGUMENT if sealed without checksums). */
ZCS_API int zcs_verify(const zcs_store* store, zcs_id id);
/* Checks the tables, then every object with checksums. */
ZCS_API int zcs_verify_all(const zcs_store* store);

/* ---- objects ---- */

/* Creates and seals object `id` from `metadata` (may be NULL when
 * metadata_size is 0) and `num_buffers` buffers, copying each byte once.
 * Errors: ALREADY_EXISTS, STORE_FULL, PERMISSION_DENIED (read-only),
 * INVALID_ARGUMENT (nil id; NULL data with a non-zero size). Nothing is
 * left in the store on error. */
ZCS_API int zcs_put(zcs_store* store, zcs_id id, const void* metadata, size_t metadata_size,
                    const zcs_buffer* buffers, size_t num_buffers);
/* Reserves an unsealed object of `metadata_size` bytes of metadata and one
 * buffer per entry of `buffer_sizes`, to be written in place through
 * zcs_builder_metadata/zcs_builder_buffer, then sealed. Invisible to zcs_get
 * until sealed. Errors as zcs_put. */
ZCS_API int zcs_create_object(zcs_store* store, zcs_id id, size_t metadata_size,
                              const size_t* buffer_sizes, size_t num_buffers, zcs_builder** out);
/* The writable metadata of a builder: valid until seal or abort. */
ZCS_API int zcs_builder_metadata(zcs_builder* builder, void** data, size_t* size);
/* Writable buffer `index` (64-byte aligned; page-aligned from 64 KiB up).
 * INVALID_ARGUMENT if index >= the number of buffers. */
ZCS_API int zcs_builder_buffer(zcs_builder* builder, size_t index, void** data, size_t* size);
/* Makes the object immutable and visible, and frees the builder. CORRUPT if
 * the object was reclaimed meanwhile (then it is dropped). */
ZCS_API int zcs_builder_seal(zcs_builder* builder);
/* Drops the unsealed object (its space is free at once) and frees the builder. */
ZCS_API int zcs_builder_abort(zcs_builder* builder);

/* Pins object `id` and returns a read-only view of it. No byte is copied.
 * Errors: NOT_FOUND (unknown, unsealed or deleted), TOO_MANY_PINS (this
 * handle already pins max_pins_per_client objects: release views first, or
 * create the store with a larger zcs_store_options.max_pins_per_client),
 * CORRUPT (its header fails a check). */
ZCS_API int zcs_get(const zcs_store* store, zcs_id id, zcs_view** out);
/* The view's id, metadata and buffers. The pointers point into the store's
 * read-only mapping (writing through them faults) and are valid until
 * zcs_view_release. */
ZCS_API int zcs_view_id(const zcs_view* view, zcs_id* out);
ZCS_API int zcs_view_metadata(const zcs_view* view, const void** data, size_t* size);
ZCS_API int zcs_view_num_buffers(const zcs_view* view, size_t* out);
/* INVALID_ARGUMENT if index >= the number of buffers. */
ZCS_API int zcs_view_buffer(const zcs_view* view, size_t index, const void** data, size_t* size);
/* Unpins the object and frees the view. NULL is a no-op (ZCS_OK); a view
 * released already is ZCS_MISUSE. */
ZCS_API int zcs_view_release(zcs_view* view);

/* Hides the object from new gets; its space is reused when no view pins it.
 * Unbinds its names. NOT_FOUND, PERMISSION_DENIED. */
ZCS_API int zcs_delete(zcs_store* store, zcs_id id);
/* *out = 1 if `id` names a sealed, undeleted object, else 0. */
ZCS_API int zcs_contains(const zcs_store* store, zcs_id id, int* out);

/* ---- names (1-63 bytes, NUL-terminated) ---- */

/* ALREADY_EXISTS if bound; NOT_FOUND if `id` is not a sealed object. */
ZCS_API int zcs_bind(zcs_store* store, const char* name, zcs_id id);
/* NOT_FOUND if unbound. */
ZCS_API int zcs_lookup(const zcs_store* store, const char* name, zcs_id* out);
/* NOT_FOUND if unbound; the object stays. */
ZCS_API int zcs_unbind(zcs_store* store, const char* name);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ZCSTORE_ZCSTORE_C_H_ */
