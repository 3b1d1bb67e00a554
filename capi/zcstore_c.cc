// The C ABI (include/zcstore/zcstore_c.h) over the C++ store.
//
// Each entry point checks its pointers, converts the arguments, calls the
// C++ API and turns its Status into a code plus this thread's message. No
// exception leaves: the only ones the C++ side can throw are the standard
// library's (std::bad_alloc), caught at the boundary by Guard().
#include "zcstore/zcstore_c.h"

#include <atomic>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <type_traits>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "zcstore/store.h"
#include "zcstore/version.h"

// What a handle token stands for. A store keeps the message of the last
// call on it that failed, for zcs_store_last_error from any thread.
struct zcs_store {
  zcstore::Store store;
  std::mutex mu;
  std::string last_error;
};
struct zcs_view {
  zcstore::ObjectView view;
};
struct zcs_builder {
  zcstore::ObjectBuilder builder;
  const void* store;  // the token of the store it was made through
};

namespace {

using zcstore::Status;
using zcstore::StatusCode;

static_assert(ZCS_MISUSE == static_cast<int>(zcstore::kLastStatusCode),
              "the C codes mirror zcstore::StatusCode");
static_assert(ZCS_BACKING_MEMFD == static_cast<int>(zcstore::Backing::kMemfd));

thread_local std::string last_error;

int Fail(StatusCode code, std::string message) {
  last_error = std::move(message);
  return static_cast<int>(code);
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

// ------------------------------------------------------------ handles
//
// What a C caller holds is not a pointer to its object but a token: the
// handle's kind, its slot in that kind's table and the slot's generation,
// packed into a pointer-sized value that is never dereferenced. Every call
// looks the token up and takes a use of the slot for its duration. So a
// closed or freed handle, a handle of another kind or a garbage value is
// ZCS_MISUSE, never a use of freed memory (a garbage-collected binding
// whose finalizer runs after an explicit close does exactly this). A close
// marks the slot closed at once; the object is destroyed when the last call
// still using it returns, so a close racing calls on other threads lets
// them finish. A slot gets a new generation before it is reused, so a stale
// token never reaches the handle that took its place. Slots are never
// freed: the tables hold a few bytes per handle ever open at once.
//
//   token: [kind: 8 bits][generation: 24 bits][slot + 1: 32 bits]
//   slot state: [generation: 24 bits at 32][live: bit 31][uses: bits 0-30]
template <typename T>
class Handles {
 public:
  explicit Handles(uint8_t kind, const char* type) : kind_(kind), type_(type) {}
  const char* type() const { return type_; }

  // A token for `object`, which the table owns from now on; nullptr if
  // every slot is taken.
  void* Add(std::unique_ptr<T> object) {
    uint32_t index;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        index = free_.back();
        free_.pop_back();
      } else {
        if (next_ == kChunk * kMaxChunks) return nullptr;
        index = next_++;
        if (index % kChunk == 0) chunks_[index / kChunk].store(new Slot[kChunk], std::memory_order_release);
      }
    }
    Slot& slot = *At(index);
    uint64_t gen = slot.state.load(std::memory_order_relaxed) >> 32;
    slot.object = object.release();
    slot.state.store(gen << 32 | kLive, std::memory_order_release);
    return reinterpret_cast<void*>(uint64_t{kind_} << 56 | gen << 32 | (uint64_t{index} + 1));
  }

  // The object of `token` with a use taken (Release it), or nullptr if the
  // token is not an open handle of this kind.
  T* Acquire(const void* token) {
    uint32_t index = 0;
    uint64_t before = 0;
    Slot* slot = Update(token, [](uint64_t state) { return state + 1; }, &index, &before);
    return slot == nullptr ? nullptr : slot->object;
  }

  // Ends a use; the last use of a closed handle destroys its object.
  void Release(const void* token) {
    uint32_t index = 0, gen = 0;
    Slot* slot = Find(token, &index, &gen);
    uint64_t before = slot->state.fetch_sub(1, std::memory_order_acq_rel);
    if ((before & kUses) == 1 && !(before & kLive)) Destroy(index, *slot);
  }

  // Closes the handle: false if `token` is not an open handle of this kind.
  // Its object is destroyed now, or when the last call using it returns.
  bool Close(const void* token) {
    uint32_t index = 0;
    uint64_t before = 0;
    Slot* slot = Update(token, [](uint64_t state) { return state & ~kLive; }, &index, &before);
    if (slot == nullptr) return false;
    if ((before & kUses) == 0) Destroy(index, *slot);
    return true;
  }

 private:
  static constexpr uint64_t kLive = uint64_t{1} << 31;
  static constexpr uint64_t kUses = kLive - 1;
  static constexpr uint32_t kGenerations = 1u << 24;
  static constexpr uint32_t kChunk = 4096, kMaxChunks = 1024;  // 4M handles of a kind at once
  struct Slot {
    std::atomic<uint64_t> state{0};
    T* object = nullptr;
  };

  Slot* At(uint32_t index) const {
    Slot* chunk = chunks_[index / kChunk].load(std::memory_order_acquire);
    return chunk == nullptr ? nullptr : &chunk[index % kChunk];
  }

  // Moves the slot of `token` from its state to next(state), atomically, if
  // the token is an open handle of this kind; else changes nothing and
  // returns nullptr. *index: the slot's; *before: its state before.
  template <typename Next>
  Slot* Update(const void* token, Next next, uint32_t* index, uint64_t* before) {
    uint32_t gen = 0;
    Slot* slot = Find(token, index, &gen);
    if (slot == nullptr) return nullptr;
    uint64_t state = slot->state.load(std::memory_order_acquire);
    while (state >> 32 == gen && (state & kLive)) {
      if (slot->state.compare_exchange_weak(state, next(state), std::memory_order_acq_rel)) {
        *before = state;
        return slot;
      }
    }
    return nullptr;
  }

  // The slot `token` names, if it is a token of this kind at all.
  Slot* Find(const void* token, uint32_t* index, uint32_t* gen) const {
    auto t = reinterpret_cast<uintptr_t>(token);
    if (t >> 56 != kind_ || static_cast<uint32_t>(t) == 0) return nullptr;
    *index = static_cast<uint32_t>(t) - 1;
    *gen = static_cast<uint32_t>(t >> 32) & (kGenerations - 1);
    return *index < kChunk * kMaxChunks ? At(*index) : nullptr;
  }

  void Destroy(uint32_t index, Slot& slot) {
    delete slot.object;
    slot.object = nullptr;
    uint64_t gen = ((slot.state.load(std::memory_order_relaxed) >> 32) + 1) % kGenerations;
    slot.state.store(gen << 32, std::memory_order_release);
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(index);
  }

  const uint8_t kind_;
  const char* type_;
  std::atomic<Slot*> chunks_[kMaxChunks] = {};
  std::mutex mu_;
  std::vector<uint32_t> free_;
  uint32_t next_ = 0;
};

// The tables live as long as the process (never destroyed: a finalizer may
// call in during exit).
template <typename T>
Handles<T>& Table();
template <>
Handles<zcs_store>& Table() {
  static auto* t = new Handles<zcs_store>(0xA1, "zcs_store");
  return *t;
}
template <>
Handles<zcs_view>& Table() {
  static auto* t = new Handles<zcs_view>(0xA2, "zcs_view");
  return *t;
}
template <>
Handles<zcs_builder>& Table() {
  static auto* t = new Handles<zcs_builder>(0xA3, "zcs_builder");
  return *t;
}

int NotAHandle(const char* func, const char* arg, const char* type) {
  return Fail(StatusCode::kMisuse, std::string(func) + ": " + arg + " is not an open " + type +
                                       " handle (closed or freed already, or not a handle)");
}

// Runs body(object) with a use of handle `token` held, inside Guard. NULL
// is INVALID_ARGUMENT; a token that is not an open handle of T's kind is
// MISUSE. A store remembers the message of a failed call made on it.
template <typename T, typename F>
int With(const char* func, const char* arg, const void* token, F&& body) {
  if (token == nullptr) return Invalid(std::string(func) + ": " + arg + " is NULL");
  Handles<T>& table = Table<T>();
  T* object = table.Acquire(token);
  if (object == nullptr) return NotAHandle(func, arg, table.type());
  int rc = Guard([&]() -> int { return body(*object); });
  if constexpr (std::is_same_v<T, zcs_store>) {
    if (rc != ZCS_OK) {
      std::lock_guard<std::mutex> lock(object->mu);
      object->last_error = last_error;
    }
  }
  table.Release(token);
  return rc;
}

// A new handle of kind T for `object` into *out.
template <typename T>
int Publish(const char* func, std::unique_ptr<T> object, T** out) {
  void* token = Table<T>().Add(std::move(object));
  if (token == nullptr) {
    return Fail(StatusCode::kStoreFull, std::string(func) + ": too many " + Table<T>().type() +
                                            " handles open at once");
  }
  *out = static_cast<T*>(token);
  return ZCS_OK;
}

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

// What a zcs_store_options or zcs_open_options field means for the C++
// options. lock_timeout_ms from 2^63 up is "no limit" (it would wrap).
std::chrono::milliseconds LockTimeout(uint64_t ms) {
  return ms > static_cast<uint64_t>(INT64_MAX) ? std::chrono::milliseconds::max()
                                               : std::chrono::milliseconds(ms);
}


// The C++ API's names in its messages, as a C caller knows them.
std::string InC(std::string m) {
  static const std::pair<std::string_view, std::string_view> kNames[] = {
      {"StoreOptions::", "zcs_store_options."},
      {"OpenOptions::backing = Backing::kFile", "zcs_open_options.backing = ZCS_BACKING_FILE"},
      {"OpenOptions::", "zcs_open_options."},
      {"Store::CapacityFor", "zcs_capacity_for"},
      {"Store::OpenFd", "zcs_store_open_fd"},
  };
  for (const auto& [cxx, c] : kNames) {
    for (size_t at = m.find(cxx); at != std::string::npos; at = m.find(cxx, at + c.size())) {
      m.replace(at, cxx.size(), c);
    }
  }
  return m;
}

// A C++ status as a code, and this thread's message naming the C function.
int Report(const char* func, const Status& st) {
  if (st.ok()) return ZCS_OK;
  return Fail(st.code(), std::string(func) + ": " + InC(st.message()));
}

// The most buffers an object may have (the C++ store's limit): a larger
// count is refused before anything is sized by it.
constexpr size_t kMaxBuffers = size_t{1} << 20;
int TooManyBuffers(const char* func, size_t n) {
  return Invalid(std::string(func) + ": num_buffers is " + std::to_string(n) +
                 "; an object has at most " + std::to_string(kMaxBuffers) + " buffers");
}

// Runs body(builder) while the builder's store is open: a builder that
// outlives its store is MISUSE (its object went with the store's handle).
template <typename F>
int WithBuilder(const char* func, zcs_builder* builder, F&& body) {
  return With<zcs_builder>(func, "builder", builder, [&](zcs_builder& b) -> int {
    if (Table<zcs_store>().Acquire(b.store) == nullptr) {
      return Fail(StatusCode::kMisuse, std::string(func) +
                                           ": the builder's store was closed; its object is gone "
                                           "(release builders before their store)");
    }
    int rc = body(b);
    Table<zcs_store>().Release(b.store);
    return rc;
  });
}
}  // namespace

extern "C" {

const char* zcs_version(void) { return ZCSTORE_VERSION_STRING; }
uint32_t zcs_version_number(void) {
  return ZCSTORE_VERSION_MAJOR * 1000000 + ZCSTORE_VERSION_MINOR * 1000 + ZCSTORE_VERSION_PATCH;
}
uint32_t zcs_abi_version(void) { return ZCS_ABI_VERSION; }
const char* zcs_last_error(void) { return last_error.c_str(); }

const char* zcs_status_name(int status) {
  if (status < 0 || status > ZCS_MISUSE) return "Unknown";
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
    if (!id) return Report("zcs_id_from_string", id.status());
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
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    zcstore::StoreOptions o;
    if (options != nullptr) {
      if (int rc = CheckOptions(fn, options->struct_size, sizeof(zcs_store_options),
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
      // Permission bits only: never setuid, setgid or sticky.
      o.mode = static_cast<mode_t>(options->mode & 0777);
      o.persistent = options->persistent != 0;
      if (options->shm_dir != nullptr) o.shm_dir = options->shm_dir;
    }
    auto store = zcstore::Store::Create(name == nullptr ? "" : name, o);
    if (!store) return Report(fn, store.status());
    return Publish(fn, std::make_unique<zcs_store>(std::move(*store)), out);
  });
}

int zcs_store_open(const char* name, const zcs_open_options* options, zcs_store** out) {
  const char* fn = __func__;
  ZCS_REQUIRE(name);
  ZCS_REQUIRE(out);
  return Guard([&]() -> int {
    zcstore::OpenOptions o;
    if (options != nullptr) {
      if (int rc = CheckOptions(fn, options->struct_size, sizeof(zcs_open_options),
                                "zcs_open_options_init", options->backing)) {
        return rc;
      }
      o.backing = static_cast<zcstore::Backing>(options->backing);
      o.read_only = options->read_only != 0;
      o.allow_shared_write = options->allow_shared_write != 0;
      o.lock_timeout = LockTimeout(options->lock_timeout_ms);
      if (options->shm_dir != nullptr) o.shm_dir = options->shm_dir;
    }
    auto store = zcstore::Store::Open(name, o);
    if (!store) return Report(fn, store.status());
    return Publish(fn, std::make_unique<zcs_store>(std::move(*store)), out);
  });
}

int zcs_store_open_fd(int fd, int read_only, zcs_store** out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  if (fd < 0) return Invalid("zcs_store_open_fd: fd " + std::to_string(fd) + " is not a descriptor");
  return Guard([&]() -> int {
    auto store = zcstore::Store::OpenFd(fd, read_only != 0);
    if (!store) return Report(fn, store.status());
    return Publish(fn, std::make_unique<zcs_store>(std::move(*store)), out);
  });
}

int zcs_store_close(zcs_store* store) {
  const char* fn = __func__;
  if (store == nullptr) return ZCS_OK;
  if (!Table<zcs_store>().Close(store)) return NotAHandle(fn, "store", "zcs_store");
  return ZCS_OK;
}

int zcs_store_remove(const char* name, const char* shm_dir) {
  const char* fn = __func__;
  ZCS_REQUIRE(name);
  return Guard([&]() -> int {
    zcstore::OpenOptions o;
    if (shm_dir != nullptr) o.shm_dir = shm_dir;
    std::string_view n = name;
    // As the CLI reads a store name: a path or a name ending in .zcs is a
    // file store. A bare name is a shared-memory store's, else a file of
    // that name in the working directory (where a file store created by the
    // bare name is).
    if (n.find('/') != n.npos || n.ends_with(".zcs")) {
      o.backing = zcstore::Backing::kFile;
      return Report(fn, zcstore::Store::Remove(name, o));
    }
    Status st = zcstore::Store::Remove(name, o);
    if (st.code() == StatusCode::kNotFound) {
      zcstore::OpenOptions file = o;
      file.backing = zcstore::Backing::kFile;
      if (Status f = zcstore::Store::Remove(name, file); f.code() != StatusCode::kNotFound) {
        return Report(fn, f);
      }
    }
    return Report(fn, st);
  });
}

int zcs_store_name(const zcs_store* store, const char** out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& s) {
    *out = s.store.name().c_str();  // the handle's: valid until it is closed
    return ZCS_OK;
  });
}

int zcs_store_fd(const zcs_store* store, int* out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& s) {
    *out = s.store.fd();
    return ZCS_OK;
  });
}

int zcs_store_backing(const zcs_store* store, uint32_t* backing, int* read_only) {
  const char* fn = __func__;
  return With<zcs_store>(fn, "store", store, [&](zcs_store& s) {
    if (backing != nullptr) *backing = static_cast<uint32_t>(s.store.backing());
    if (read_only != nullptr) *read_only = s.store.read_only() ? 1 : 0;
    return ZCS_OK;
  });
}

int zcs_store_last_error(const zcs_store* store, char* buf, size_t size, size_t* length) {
  if (buf == nullptr && size > 0) return Invalid("zcs_store_last_error: buf is NULL with size > 0");
  return With<zcs_store>(__func__, "store", store, [&](zcs_store& s) {
    std::lock_guard<std::mutex> lock(s.mu);
    if (size > 0) {
      size_t n = std::min(size - 1, s.last_error.size());
      std::memcpy(buf, s.last_error.data(), n);
      buf[n] = '\0';
    }
    if (length != nullptr) *length = s.last_error.size();
    return ZCS_OK;
  });
}

int zcs_stats_get(const zcs_store* store, zcs_stats* out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  if (out->struct_size != sizeof(zcs_stats)) {
    return Invalid("zcs_stats_get: out->struct_size is " + std::to_string(out->struct_size) +
                   ", not " + std::to_string(sizeof(zcs_stats)) + ": set it to sizeof(zcs_stats)");
  }
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) -> int {
    auto s = h.store.Stats();
    if (!s) return Report(fn, s.status());
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
  const char* fn = __func__;
  ZCS_REQUIRE(count);
  if (capacity > 0 && out == nullptr) return Invalid("zcs_list: out is NULL with capacity > 0");
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) -> int {
    auto list = h.store.List();
    if (!list) return Report(fn, list.status());
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
  const char* fn = __func__;
  return With<zcs_store>(fn, "store", store,
                         [&](zcs_store& h) { return Report(fn, h.store.Verify(ToId(id))); });
}

int zcs_verify_all(const zcs_store* store) {
  const char* fn = __func__;
  return With<zcs_store>(fn, "store", store,
                         [&](zcs_store& h) { return Report(fn, h.store.VerifyAll()); });
}

int zcs_capacity_for(size_t metadata_size, const size_t* buffer_sizes, size_t num_buffers,
                     uint32_t backing, uint64_t* out) {
  ZCS_REQUIRE(out);
  if (buffer_sizes == nullptr && num_buffers > 0) {
    return Invalid("zcs_capacity_for: buffer_sizes is NULL with num_buffers > 0");
  }
  if (backing < ZCS_BACKING_SHM || backing > ZCS_BACKING_MEMFD) {
    return Invalid("zcs_capacity_for: unknown backing " + std::to_string(backing));
  }
  *out = zcstore::Store::CapacityFor(metadata_size, {buffer_sizes, num_buffers},
                                     static_cast<zcstore::Backing>(backing));
  if (*out == 0) return Invalid("zcs_capacity_for: the sizes overflow 64 bits");
  return ZCS_OK;
}

int zcs_put(zcs_store* store, zcs_id id, const void* metadata, size_t metadata_size,
            const zcs_buffer* buffers, size_t num_buffers) {
  const char* fn = __func__;
  if (metadata == nullptr && metadata_size > 0) {
    return Invalid("zcs_put: metadata is NULL with metadata_size > 0");
  }
  if (buffers == nullptr && num_buffers > 0) {
    return Invalid("zcs_put: buffers is NULL with num_buffers > 0");
  }
  if (num_buffers > kMaxBuffers) return TooManyBuffers(fn, num_buffers);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) -> int {
    std::vector<std::span<const std::byte>> spans(num_buffers);
    for (size_t i = 0; i < num_buffers; ++i) {
      if (buffers[i].data == nullptr && buffers[i].size > 0) {
        return Invalid("zcs_put: buffers[" + std::to_string(i) + "].data is NULL with size " +
                       std::to_string(buffers[i].size));
      }
      spans[i] = {static_cast<const std::byte*>(buffers[i].data), buffers[i].size};
    }
    return Report(fn, h.store.Put(
        ToId(id), {static_cast<const std::byte*>(metadata), metadata_size}, spans));
  });
}

int zcs_create_object(zcs_store* store, zcs_id id, size_t metadata_size,
                      const size_t* buffer_sizes, size_t num_buffers, zcs_builder** out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  if (buffer_sizes == nullptr && num_buffers > 0) {
    return Invalid("zcs_create_object: buffer_sizes is NULL with num_buffers > 0");
  }
  if (num_buffers > kMaxBuffers) return TooManyBuffers(fn, num_buffers);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) -> int {
    auto b = h.store.CreateObject(ToId(id), metadata_size, {buffer_sizes, num_buffers});
    if (!b) return Report(fn, b.status());
    return Publish(fn, std::make_unique<zcs_builder>(std::move(*b), store), out);
  });
}

int zcs_builder_metadata(zcs_builder* builder, void** data, size_t* size) {
  const char* fn = __func__;
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  return WithBuilder(fn, builder, [&](zcs_builder& b) {
    std::span<std::byte> m = b.builder.metadata();
    *data = m.data();
    *size = m.size();
    return ZCS_OK;
  });
}

int zcs_builder_buffer(zcs_builder* builder, size_t index, void** data, size_t* size) {
  const char* fn = __func__;
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  return WithBuilder(fn, builder, [&](zcs_builder& b) -> int {
    if (index >= b.builder.num_buffers()) {
      return Invalid("zcs_builder_buffer: index " + std::to_string(index) + " >= " +
                     std::to_string(b.builder.num_buffers()) + " buffers");
    }
    std::span<std::byte> buf = b.builder.buffer(index);
    *data = buf.data();
    *size = buf.size();
    return ZCS_OK;
  });
}

// Seal and abort end the builder: its handle is closed whatever they return
// (closing a token that is no open builder does nothing).
int zcs_builder_seal(zcs_builder* builder) {
  const char* fn = __func__;
  int rc = WithBuilder(fn, builder, [&](zcs_builder& b) { return Report(fn, b.builder.Seal()); });
  if (builder != nullptr) (void)Table<zcs_builder>().Close(builder);
  return rc;
}

int zcs_builder_abort(zcs_builder* builder) {
  const char* fn = __func__;
  int rc = With<zcs_builder>(fn, "builder", builder,
                             [&](zcs_builder& b) { return Report(fn, b.builder.Abort()); });
  if (builder != nullptr) (void)Table<zcs_builder>().Close(builder);
  return rc;
}

int zcs_get(const zcs_store* store, zcs_id id, zcs_view** out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) -> int {
    auto v = h.store.Get(ToId(id));
    if (!v) return Report(fn, v.status());
    return Publish(fn, std::make_unique<zcs_view>(std::move(*v)), out);
  });
}

int zcs_view_id(const zcs_view* view, zcs_id* out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return With<zcs_view>(fn, "view", view, [&](zcs_view& v) {
    *out = FromId(v.view.id());
    return ZCS_OK;
  });
}

int zcs_view_metadata(const zcs_view* view, const void** data, size_t* size) {
  const char* fn = __func__;
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  return With<zcs_view>(fn, "view", view, [&](zcs_view& v) {
    *data = v.view.metadata().data();
    *size = v.view.metadata().size();
    return ZCS_OK;
  });
}

int zcs_view_num_buffers(const zcs_view* view, size_t* out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return With<zcs_view>(fn, "view", view, [&](zcs_view& v) {
    *out = v.view.num_buffers();
    return ZCS_OK;
  });
}

int zcs_view_buffer(const zcs_view* view, size_t index, const void** data, size_t* size) {
  const char* fn = __func__;
  ZCS_REQUIRE(data);
  ZCS_REQUIRE(size);
  return With<zcs_view>(fn, "view", view, [&](zcs_view& v) -> int {
    if (index >= v.view.num_buffers()) {
      return Invalid("zcs_view_buffer: index " + std::to_string(index) + " >= " +
                     std::to_string(v.view.num_buffers()) + " buffers");
    }
    *data = v.view.buffer(index).data();
    *size = v.view.buffer(index).size();
    return ZCS_OK;
  });
}

int zcs_view_release(zcs_view* view) {
  const char* fn = __func__;
  if (view == nullptr) return ZCS_OK;
  // The pin goes when the view's object is destroyed: now, or when a call
  // still reading it on another thread returns.
  if (!Table<zcs_view>().Close(view)) return NotAHandle(fn, "view", "zcs_view");
  return ZCS_OK;
}

int zcs_delete(zcs_store* store, zcs_id id) {
  const char* fn = __func__;
  return With<zcs_store>(fn, "store", store,
                         [&](zcs_store& h) { return Report(fn, h.store.Delete(ToId(id))); });
}

int zcs_contains(const zcs_store* store, zcs_id id, int* out) {
  const char* fn = __func__;
  ZCS_REQUIRE(out);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) {
    *out = h.store.Contains(ToId(id)) ? 1 : 0;
    return ZCS_OK;
  });
}

int zcs_bind(zcs_store* store, const char* name, zcs_id id) {
  const char* fn = __func__;
  ZCS_REQUIRE(name);
  return With<zcs_store>(fn, "store", store,
                         [&](zcs_store& h) { return Report(fn, h.store.Bind(name, ToId(id))); });
}

int zcs_lookup(const zcs_store* store, const char* name, zcs_id* out) {
  const char* fn = __func__;
  ZCS_REQUIRE(name);
  ZCS_REQUIRE(out);
  return With<zcs_store>(fn, "store", store, [&](zcs_store& h) -> int {
    auto id = h.store.Lookup(name);
    if (!id) return Report(fn, id.status());
    *out = FromId(*id);
    return ZCS_OK;
  });
}

int zcs_unbind(zcs_store* store, const char* name) {
  const char* fn = __func__;
  ZCS_REQUIRE(name);
  return With<zcs_store>(fn, "store", store,
                         [&](zcs_store& h) { return Report(fn, h.store.Unbind(name)); });
}

}  // extern "C"
