// The C ABI (include/zcstore/zcstore_c.h) over the C++ store.
//
// Each entry point checks its pointers, converts the arguments, calls the
// C++ API and turns its Status into a code plus this thread's message. No
// exception leaves: the only ones the C++ side can throw are the standard
// library's (std::bad_alloc), caught at the boundary by Guard().
#include "zcstore/zcstore_c.h"

#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "zcstore/store.h"
#include "zcstore/version.h"

struct zcs_store {
  zcstore::Store store;
};
struct zcs_view {
  zcstore::ObjectView view;
};
struct zcs_builder {
  zcstore::ObjectBuilder builder;
};

namespace {

using zcstore::Status;
using zcstore::StatusCode;

static_assert(ZCS_TASK_FAILED == static_cast<int>(StatusCode::kTaskFailed),
              "the C codes mirror zcstore::StatusCode");
static_assert(ZCS_BACKING_MEMFD == static_cast<int>(zcstore::Backing::kMemfd));

thread_local std::string last_error;

int Fail(StatusCode code, std::string message) {
  last_error = std::move(message);
  return static_cast<int>(code);
}

int Report(const Status& st) {
  if (st.ok()) return ZCS_OK;
  return Fail(st.code(), st.message());
}

int Invalid(std::string message) { return Fail(StatusCode::kInvalidArgument, std::move(message)); }

// Runs `body`, which returns a code; a standard-library exception becomes a
// code too, so none crosses into C.
template <typename F>
int Guard(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return Fail(StatusCode::kIOError, "out of memory");
  } catch (const std::exception& e) {
    return Fail(StatusCode::kIOError, std::string("internal error: ") + e.what());
  } catch (...) {
    return Fail(StatusCode::kIOError, "internal error: unknown exception");
  }
}

zcstore::ObjectId ToId(zcs_id id) { return {id.hi, id.lo}; }
zcs_id FromId(const zcstore::ObjectId& id) { return {id.hi, id.lo}; }

#define ZCS_REQUIRE(ptr) \
  if ((ptr) == nullptr) return Invalid(std::string(__func__) + ": " #ptr " is NULL")

// The checks every options struct gets: a size this library knows (one
// filled by its init function) and a known backing. 0 if both pass.
int CheckOptions(const char* func, uint32_t struct_size, size_t want, const char* init,
                 uint32_t backing) {
  if (struct_size != want) {
    return Invalid(std::string(func) + ": options->struct_size is " +
                   std::to_string(struct_size) + ", not " + std::to_string(want) +
                   ": fill the options with " + init);
  }
  if (backing < ZCS_BACKING_SHM || backing > ZCS_BACKING_MEMFD) {
    return Invalid(std::string(func) + ": unknown backing " + std::to_string(backing));
  }
  return ZCS_OK;
}

}  // namespace

extern "C" {

const char* zcs_version(void) { return ZCSTORE_VERSION_STRING; }
uint32_t zcs_abi_version(void) { return ZCS_ABI_VERSION; }
const char* zcs_last_error(void) { return last_error.c_str(); }

const char* zcs_status_name(int status) {
  if (status < 0 || status > ZCS_TASK_FAILED) return "Unknown";
  // StatusCodeName returns a view of a static string literal: NUL-terminated.
  return zcstore::StatusCodeName(static_cast<StatusCode>(status)).data();
}

int zcs_id_random(zcs_id* out) {
  ZCS_REQUIRE(out);
  *out = FromId(zcstore::ObjectId::Random());
  return ZCS_OK;
}

int zcs_id_to_string(zcs_id id, char out[33]) {
  ZCS_REQUIRE(out);
  std::string s = ToId(id).ToString();
  std::memcpy(out, s.c_str(), 33);
  return ZCS_OK;
}

int zcs_id_from_string(const char* hex, zcs_id* out) {
  ZCS_REQUIRE(hex);
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    auto id = zcstore::ObjectId::FromString(hex);
    if (!id) return Report(id.status());
    *out = FromId(*id);
    return ZCS_OK;
  });
}

int zcs_store_options_init(zcs_store_options* o) {
  ZCS_REQUIRE(o);
  zcstore::StoreOptions d;
  *o = zcs_store_options{};
  o->struct_size = sizeof(zcs_store_options);
  o->backing = static_cast<uint32_t>(d.backing);
  o->capacity = d.capacity;
  o->max_objects = d.max_objects;
  o->max_clients = d.max_clients;
  o->max_pins_per_client = d.max_pins_per_client;
  o->max_names = d.max_names;
  o->checksums = d.checksums;
  o->mode = d.mode;
  o->persistent = d.persistent;
  o->shm_dir = nullptr;
  return ZCS_OK;
}

int zcs_open_options_init(zcs_open_options* o) {
  ZCS_REQUIRE(o);
  zcstore::OpenOptions d;
  *o = zcs_open_options{};
  o->struct_size = sizeof(zcs_open_options);
  o->backing = static_cast<uint32_t>(d.backing);
  o->read_only = d.read_only;
  o->allow_shared_write = d.allow_shared_write;
  o->lock_timeout_ms = static_cast<uint64_t>(d.lock_timeout.count());
  o->shm_dir = nullptr;
  return ZCS_OK;
}

int zcs_store_create(const char* name, const zcs_store_options* options, zcs_store** out) {
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    zcstore::StoreOptions o;
    if (options != nullptr) {
      if (int rc = CheckOptions(__func__, options->struct_size, sizeof(zcs_store_options),
                                "zcs_store_options_init", options->backing)) {
        return rc;
      }
      o.backing = static_cast<zcstore::Backing>(options->backing);
      o.capacity = options->capacity;
      o.max_objects = options->max_objects;
      o.max_clients = options->max_clients;
      o.max_pins_per_client = options->max_pins_per_client;
      o.max_names = options->max_names;
      o.checksums = options->checksums != 0;
      o.mode = static_cast<mode_t>(options->mode);
      o.persistent = options->persistent != 0;
      if (options->shm_dir != nullptr) o.shm_dir = options->shm_dir;
    }
    auto store = zcstore::Store::Create(name == nullptr ? "" : name, o);
    if (!store) return Report(store.status());
    *out = new zcs_store{std::move(*store)};
    return ZCS_OK;
  });
}

int zcs_store_open(const char* name, const zcs_open_options* options, zcs_store** out) {
  ZCS_REQUIRE(name);
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    zcstore::OpenOptions o;
    if (options != nullptr) {
      if (int rc = CheckOptions(__func__, options->struct_size, sizeof(zcs_open_options),
                                "zcs_open_options_init", options->backing)) {
        return rc;
      }
      o.backing = static_cast<zcstore::Backing>(options->backing);
      o.read_only = options->read_only != 0;
      o.allow_shared_write = options->allow_shared_write != 0;
      o.lock_timeout = std::chrono::milliseconds(options->lock_timeout_ms);
      if (options->shm_dir != nullptr) o.shm_dir = options->shm_dir;
    }
    auto store = zcstore::Store::Open(name, o);
    if (!store) return Report(store.status());
    *out = new zcs_store{std::move(*store)};
    return ZCS_OK;
  });
}

int zcs_store_open_fd(int fd, int read_only, zcs_store** out) {
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    auto store = zcstore::Store::OpenFd(fd, read_only != 0);
    if (!store) return Report(store.status());
    *out = new zcs_store{std::move(*store)};
    return ZCS_OK;
  });
}

int zcs_store_close(zcs_store* store) {
  delete store;
  return ZCS_OK;
}

int zcs_store_remove(const char* name, const char* shm_dir) {
  ZCS_REQUIRE(name);
  return Guard([&]() -> int {
    zcstore::OpenOptions o;
    if (shm_dir != nullptr) o.shm_dir = shm_dir;
    if (std::strchr(name, '/') != nullptr) o.backing = zcstore::Backing::kFile;
    return Report(zcstore::Store::Remove(name, o));
  });
}

int zcs_store_name(const zcs_store* store, const char** out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(out);
  *out = store->store.name().c_str();
  return ZCS_OK;
}

int zcs_store_fd(const zcs_store* store, int* out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(out);
  *out = store->store.fd();
  return ZCS_OK;
}

int zcs_store_backing(const zcs_store* store, uint32_t* backing, int* read_only) {
  ZCS_REQUIRE(store);
  if (backing != nullptr) *backing = static_cast<uint32_t>(store->store.backing());
  if (read_only != nullptr) *read_only = store->store.read_only() ? 1 : 0;
  return ZCS_OK;
}

int zcs_stats_get(const zcs_store* store, zcs_stats* out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(out);
  if (out->struct_size != sizeof(zcs_stats)) {
    return Invalid("zcs_stats_get: out->struct_size is " + std::to_string(out->struct_size) +
                   ", not " + std::to_string(sizeof(zcs_stats)) + ": set it to sizeof(zcs_stats)");
  }
  return Guard([&]() -> int {
    auto s = store->store.Stats();
    if (!s) return Report(s.status());
    zcs_stats r{};
    r.struct_size = sizeof(zcs_stats);
    r.objects = s->objects;
    r.capacity = s->capacity;
    r.used = s->used;
    r.largest_free = s->largest_free;
    r.pins = s->pins;
    r.unsealed = s->unsealed;
    r.deleted_pinned = s->deleted_pinned;
    r.clients = s->clients;
    r.max_objects = s->max_objects;
    r.max_clients = s->max_clients;
    r.names = s->names;
    *out = r;
    return ZCS_OK;
  });
}

int zcs_list(const zcs_store* store, zcs_object_info* out, size_t capacity, size_t* count) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(count);
  if (capacity > 0 && out == nullptr) return Invalid("zcs_list: out is NULL with capacity > 0");
  return Guard([&]() -> int {
    auto list = store->store.List();
    if (!list) return Report(list.status());
    for (size_t i = 0; i < list->size() && i < capacity; ++i) {
      const zcstore::ObjectInfo& o = (*list)[i];
      zcs_object_info r{};
      r.id = FromId(o.id);
      r.state = o.state == zcstore::ObjectInfo::State::kUnsealed ? ZCS_UNSEALED
                : o.state == zcstore::ObjectInfo::State::kSealed ? ZCS_SEALED
                                                                 : ZCS_DELETED_PINNED;
      r.num_buffers = o.num_buffers;
      r.extent_bytes = o.extent_bytes;
      r.metadata_bytes = o.metadata_bytes;
      r.data_bytes = o.data_bytes;
      r.pins = o.pins;
      r.has_checksums = o.has_checksums;
      r.sealed_unix_ns = o.sealed_unix_ns;
      out[i] = r;
    }
    *count = list->size();
    return ZCS_OK;
  });
}

int zcs_verify(const zcs_store* store, zcs_id id) {
  ZCS_REQUIRE(store);
  return Guard([&]() -> int { return Report(store->store.Verify(ToId(id))); });
}

int zcs_verify_all(const zcs_store* store) {
  ZCS_REQUIRE(store);
  return Guard([&]() -> int { return Report(store->store.VerifyAll()); });
}

int zcs_put(zcs_store* store, zcs_id id, const void* metadata, size_t metadata_size,
            const zcs_buffer* buffers, size_t num_buffers) {
  ZCS_REQUIRE(store);
  if (metadata == nullptr && metadata_size > 0) {
    return Invalid("zcs_put: metadata is NULL with metadata_size > 0");
  }
  if (buffers == nullptr && num_buffers > 0) {
    return Invalid("zcs_put: buffers is NULL with num_buffers > 0");
  }
  return Guard([&]() -> int {
    std::vector<std::span<const std::byte>> spans(num_buffers);
    for (size_t i = 0; i < num_buffers; ++i) {
      if (buffers[i].data == nullptr && buffers[i].size > 0) {
        return Invalid("zcs_put: buffers[" + std::to_string(i) + "].data is NULL with size " +
                       std::to_string(buffers[i].size));
      }
      spans[i] = {static_cast<const std::byte*>(buffers[i].data), buffers[i].size};
    }
    return Report(store->store.Put(
        ToId(id), {static_cast<const std::byte*>(metadata), metadata_size}, spans));
  });
}

int zcs_create_object(zcs_store* store, zcs_id id, size_t metadata_size,
                      const size_t* buffer_sizes, size_t num_buffers, zcs_builder** out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(out);
  if (buffer_sizes == nullptr && num_buffers > 0) {
    return Invalid("zcs_create_object: buffer_sizes is NULL with num_buffers > 0");
  }
  return Guard([&]() -> int {
    auto b = store->store.CreateObject(ToId(id), metadata_size, {buffer_sizes, num_buffers});
    if (!b) return Report(b.status());
    *out = new zcs_builder{std::move(*b)};
    return ZCS_OK;
  });
}

int zcs_builder_metadata(zcs_builder* builder, void** data, size_t* size) {
  ZCS_REQUIRE(builder);
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  std::span<std::byte> m = builder->builder.metadata();
  *data = m.data();
  *size = m.size();
  return ZCS_OK;
}

int zcs_builder_buffer(zcs_builder* builder, size_t index, void** data, size_t* size) {
  ZCS_REQUIRE(builder);
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  if (index >= builder->builder.num_buffers()) {
    return Invalid("zcs_builder_buffer: index " + std::to_string(index) + " >= " +
                   std::to_string(builder->builder.num_buffers()) + " buffers");
  }
  std::span<std::byte> b = builder->builder.buffer(index);
  *data = b.data();
  *size = b.size();
  return ZCS_OK;
}

int zcs_builder_seal(zcs_builder* builder) {
  ZCS_REQUIRE(builder);
  int rc = Guard([&]() -> int { return Report(builder->builder.Seal()); });
  delete builder;
  return rc;
}

int zcs_builder_abort(zcs_builder* builder) {
  ZCS_REQUIRE(builder);
  int rc = Guard([&]() -> int { return Report(builder->builder.Abort()); });
  delete builder;
  return rc;
}

int zcs_get(const zcs_store* store, zcs_id id, zcs_view** out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    auto v = store->store.Get(ToId(id));
    if (!v) return Report(v.status());
    *out = new zcs_view{std::move(*v)};
    return ZCS_OK;
  });
}

int zcs_view_id(const zcs_view* view, zcs_id* out) {
  ZCS_REQUIRE(view);
  ZCS_REQUIRE(out);
  *out = FromId(view->view.id());
  return ZCS_OK;
}

int zcs_view_metadata(const zcs_view* view, const void** data, size_t* size) {
  ZCS_REQUIRE(view);
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  *data = view->view.metadata().data();
  *size = view->view.metadata().size();
  return ZCS_OK;
}

int zcs_view_num_buffers(const zcs_view* view, size_t* out) {
  ZCS_REQUIRE(view);
  ZCS_REQUIRE(out);
  *out = view->view.num_buffers();
  return ZCS_OK;
}

int zcs_view_buffer(const zcs_view* view, size_t index, const void** data, size_t* size) {
  ZCS_REQUIRE(view);
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  if (index >= view->view.num_buffers()) {
    return Invalid("zcs_view_buffer: index " + std::to_string(index) + " >= " +
                   std::to_string(view->view.num_buffers()) + " buffers");
  }
  *data = view->view.buffer(index).data();
  *size = view->view.buffer(index).size();
  return ZCS_OK;
}

int zcs_view_release(zcs_view* view) {
  if (view == nullptr) return ZCS_OK;
  int rc = Guard([&]() -> int { return Report(view->view.Release()); });
  delete view;
  return rc;
}

int zcs_delete(zcs_store* store, zcs_id id) {
  ZCS_REQUIRE(store);
  return Guard([&]() -> int { return Report(store->store.Delete(ToId(id))); });
}

int zcs_contains(const zcs_store* store, zcs_id id, int* out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    *out = store->store.Contains(ToId(id)) ? 1 : 0;
    return ZCS_OK;
  });
}

int zcs_bind(zcs_store* store, const char* name, zcs_id id) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(name);
  return Guard([&]() -> int { return Report(store->store.Bind(name, ToId(id))); });
}

int zcs_lookup(const zcs_store* store, const char* name, zcs_id* out) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(name);
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    auto id = store->store.Lookup(name);
    if (!id) return Report(id.status());
    *out = FromId(*id);
    return ZCS_OK;
  });
}

int zcs_unbind(zcs_store* store, const char* name) {
  ZCS_REQUIRE(store);
  ZCS_REQUIRE(name);
  return Guard([&]() -> int { return Report(store->store.Unbind(name)); });
}

}  // extern "C"
