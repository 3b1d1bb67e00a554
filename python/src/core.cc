// zcstore._core: the store for Python, over the C++ API (pybind11).
//
// This layer moves bytes and pins; pickling, refs and the exceptions'
// classes are Python (python/zcstore/__init__.py). Its pieces:
//   Handle   one Store handle; close() drops it, views keep the mapping.
//   View     a buffer-protocol exporter over store memory that owns what
//            keeps that memory valid (a pinned ObjectView, a private
//            mapping; python/src/views.cc): every memoryview and numpy
//            array made from it holds it, so the pin lives exactly as long
//            as they do.
//   Buffer   the same for an in-place builder (Handle.empty), whose root
//            array numpy asks whether it may still be written.
//   put      one copy of each source buffer into a new object, with the
//            GIL released; adopts arrays made by Handle.empty without a
//            copy; with move=True, empties the sources it may (see Put).
//
// Every Status becomes the Python exception registered for its code
// (set_error_classes); the GIL is released wherever the store copies bytes,
// checks them, or may wait for a lock.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/stat.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "python/src/core_internal.h"
#include "serializer/copy_internal.h"
#include "zcstore/store.h"


namespace zcstore::python {

// code -> exception class, from zcstore/__init__.py. Never freed: it must
// outlive every handle, and the interpreter's own teardown.
static PyObject* error_classes = nullptr;

void Raise(const Status& st) {
  PyObject* cls = PyExc_RuntimeError;
  if (error_classes != nullptr) {
    py::int_ code(static_cast<int>(st.code()));
    if (PyObject* c = PyDict_GetItem(error_classes, code.ptr())) cls = c;
  }
  PyErr_SetString(cls, st.message().c_str());
  throw py::error_already_set();
}

// An array filled in place: an unsealed one-buffer object, until a put
// adopts it (then `pin` holds the object that adopted it, so its pages are
// never reused while an array still points at them) or it dies (aborted).
using InPlaceRegistry = std::unordered_map<const std::byte*, InPlace*>;

struct InPlace {
  ObjectBuilder builder;
  std::shared_ptr<ObjectView> pin;  // one pin, shared by the arrays one put adopted
  std::byte* data = nullptr;
  size_t size = 0;
  PyObject* exporter = nullptr;  // the Buffer over it (borrowed: it owns us)
  // The hidden array that every numpy view of this memory has as its base
  // (borrowed: it owns the Buffer, which owns us). Its reference count is
  // the number of arrays over the memory.
  PyObject* root = nullptr;
  std::weak_ptr<InPlaceRegistry> registry;

  ~InPlace() {
    if (auto r = registry.lock()) r->erase(data);
  }
};


namespace {

ObjectId Id(uint64_t hi, uint64_t lo) { return {hi, lo}; }
py::tuple IdTuple(const ObjectId& id) { return py::make_tuple(id.hi, id.lo); }

// The exact types put may empty under move=True (null if numpy is absent).
PyTypeObject* ndarray_type = nullptr;

class Handle {
 public:
  explicit Handle(Store store) : Handle(std::make_shared<Store>(std::move(store))) {}
  explicit Handle(std::shared_ptr<Store> store)
      : store_(std::move(store)), inplace_(std::make_shared<InPlaceRegistry>()) {
    name_ = store_->name();
  }

  // The open store, or InvalidArgument naming it. A caller that releases
  // the GIL holds this copy, so a close() from another thread meanwhile
  // cannot pull the handle from under it.
  std::shared_ptr<Store> Live() const {
    if (!store_) Raise(InvalidArgument("store '" + name_ + "' is closed"));
    return store_;
  }

  void Close() {
    std::shared_ptr<Store> s = std::move(store_);
    store_.reset();
    py::gil_scoped_release nogil;
    s.reset();  // unregisters; may unlink the segment
  }
  bool closed() const { return !store_; }
  const std::string& name() const { return name_; }

  py::tuple Identity() const {
    struct stat st {};
    if (fstat(Live()->fd(), &st) != 0) Raise(IOError("fstat of store '" + name_ + "' failed"));
    return py::make_tuple(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
  }

  py::tuple Put(py::object id, py::buffer metadata, py::list buffers, bool move);
  py::tuple Get(uint64_t hi, uint64_t lo) const;
  py::object EmptyBuffer(size_t size);

  std::shared_ptr<InPlaceRegistry> inplace() const { return inplace_; }

 private:
  std::shared_ptr<Store> store_;
  std::shared_ptr<InPlaceRegistry> inplace_;
  std::string name_;
};


bool IsOwningArray(PyObject* obj) {
  if (ndarray_type == nullptr || Py_TYPE(obj) != ndarray_type) return false;
  py::handle a(obj);
  static PyObject* weakref_count = py::object(py::module_::import("weakref")
                                      .attr("getweakrefcount")).release().ptr();  // kept
  return a.attr("flags").attr("owndata").cast<bool>() && a.attr("base").is_none() &&
         py::handle(weakref_count)(a).cast<int>() == 0;
}

// What put does with one source buffer.
enum class Fate { kCopy, kCopyAndEmpty, kAdopt };

struct Source {
  HeldBuffer buf;
  PyObject* item = nullptr;  // the list's element (a PickleBuffer, usually)
  Fate fate = Fate::kCopy;
  InPlace* inplace = nullptr;
  const std::byte* data() const { return static_cast<const std::byte*>(buf.view.buf); }
  size_t size() const { return static_cast<size_t>(buf.view.len); }
};

// Which sources may be emptied under move=True: only where nothing but the
// object being put can reach their memory, so emptying them can never leave
// another view pointing at freed pages.
//  - a numpy.ndarray (exact type) that owns its data, reached through a
//    PickleBuffer that numpy's own pickling made (only `buffers` holds it),
//    whose references are that PickleBuffer's, ours and one more: the
//    container in the object being put. A variable, a view (its base) or a
//    memoryview of the array would be another reference.
//  - a bytearray inside a PickleBuffer, exported by nobody but that
//    PickleBuffer and us (Python itself refuses to resize it otherwise).
bool MayEmpty(const Source& s) {
  PyObject* owner = s.buf.view.obj;
  if (owner == nullptr || s.item == owner) return false;
  if (PyByteArray_CheckExact(owner)) {
    return reinterpret_cast<PyByteArrayObject*>(owner)->ob_exports == 2;
  }
  return Py_REFCNT(s.item) == 1 && Py_REFCNT(owner) == 3 && IsOwningArray(owner);
}

// After the copy: gives the memory of `owner` (the source exported through
// `item`) back and leaves it empty: a bytearray of length 0, an array of
// shape (0, ...) of the same dtype.
void EmptySource(PyObject* item, py::object owner) {
  py::handle pickle_buffer(item);
  if (py::hasattr(pickle_buffer, "release")) pickle_buffer.attr("release")();  // its export
  if (PyByteArray_CheckExact(owner.ptr())) {
    if (PyByteArray_Resize(owner.ptr(), 0) != 0) PyErr_Clear();  // exported meanwhile: keep
    return;
  }
  py::tuple shape = owner.attr("shape");
  py::list empty_shape;
  empty_shape.append(0);
  for (size_t i = 1; i < shape.size(); ++i) empty_shape.append(shape[i]);
  owner.attr("resize")(py::tuple(empty_shape), py::arg("refcheck") = false);
}

py::tuple Handle::Put(py::object id_arg, py::buffer metadata, py::list buffers, bool move) {
  std::shared_ptr<Store> store = Live();
  ObjectId id = id_arg.is_none() ? ObjectId::Random()
                                 : Id(id_arg.cast<py::tuple>()[0].cast<uint64_t>(),
                                      id_arg.cast<py::tuple>()[1].cast<uint64_t>());
  HeldBuffer meta;
  meta.Take(metadata.ptr(), PyBUF_SIMPLE);

  std::vector<Source> sources(buffers.size());
  bool any_adopted = false;
  for (size_t i = 0; i < sources.size(); ++i) {
    Source& s = sources[i];
    s.item = buffers[i].ptr();
    s.buf.Take(s.item, PyBUF_ANY_CONTIGUOUS);
    // Filled in place by empty(), and no other array views that memory:
    // adopted, not copied.
    auto found = inplace_->find(s.data());
    if (found != inplace_->end()) {
      InPlace* in = found->second;
      // The array pickled is a view of the hidden root (Store.empty returns
      // one), and the root has no other view: nobody else can write there.
      PyObject* base = PyObject_GetAttrString(s.buf.view.obj, "base");
      if (base == nullptr) PyErr_Clear();
      // (2: the pickled array's base reference and the one `base` holds.)
      bool sole = base != nullptr && base == in->root && Py_REFCNT(in->root) == 2;
      Py_XDECREF(base);
      if (in->builder.valid() && in->size == s.size() && sole) {
        s.fate = Fate::kAdopt;
        s.inplace = in;
        any_adopted = true;
        continue;
      }
    }
    if (move && MayEmpty(s)) s.fate = Fate::kCopyAndEmpty;
  }

  // Reserve everything before a byte is copied or a source emptied: a full
  // store fails here and loses nothing. With an adopted buffer, every other
  // buffer becomes a one-buffer child too, so the object's buffers keep
  // pickle's order (adopted ones can only come after sized ones).
  Status st;
  ObjectBuilder object;
  {
    std::vector<ObjectBuilder> parts;
    std::vector<size_t> sizes;
    if (any_adopted) {
      parts.reserve(sources.size());
      for (Source& s : sources) {
        if (s.fate == Fate::kAdopt) {
          parts.push_back(std::move(s.inplace->builder));
          continue;
        }
        size_t n = s.size();
        py::gil_scoped_release nogil;
        auto child = store->CreateObject(ObjectId::Random(), 0, {&n, 1});
        if (!child.ok()) {
          st = child.status();
          break;
        }
        parts.push_back(std::move(*child));
      }
    } else {
      for (const Source& s : sources) sizes.push_back(s.size());
    }
    if (st.ok()) {
      py::gil_scoped_release nogil;
      auto b = store->CreateObject(id, static_cast<size_t>(meta.view.len), sizes, parts);
      if (b.ok()) object = std::move(*b);
      else st = b.status();
    }
    if (!st.ok()) {
      // Hand in-place builders back to their arrays; the children we made
      // are aborted as `parts` goes.
      size_t k = 0;
      for (Source& s : sources) {
        if (k >= parts.size()) break;
        if (s.fate == Fate::kAdopt) s.inplace->builder = std::move(parts[k]);
        ++k;
      }
      Raise(st);
    }
  }

  // An adopted array keeps pointing into the object: it gets a pin on it
  // taken under the lock that seals it, so no other process can delete the
  // object (and have its pages reused) in between.
  std::shared_ptr<ObjectView> adopted_pin;
  {
    py::gil_scoped_release nogil;
    if (meta.view.len > 0) {
      std::memcpy(object.metadata().data(), meta.view.buf, static_cast<size_t>(meta.view.len));
    }
    for (size_t i = 0; i < sources.size(); ++i) {
      const Source& s = sources[i];
      if (s.fate == Fate::kAdopt) continue;
      internal::CopyOut(object.buffer(i).data(), s.data(), s.size(),
                        s.fate == Fate::kCopyAndEmpty);
    }
    if (any_adopted) {
      auto pinned = object.SealPinned();
      if (pinned.ok()) adopted_pin = std::make_shared<ObjectView>(std::move(*pinned));
      st = pinned.status();
    } else {
      st = object.Seal();
    }
  }
  if (st.code() == StatusCode::kTooManyPins) {
    // Nothing was sealed (and nothing emptied yet): the arrays get their
    // builders back, writable as before, and the put fails.
    std::vector<ObjectBuilder> back = object.ReleaseAdopted();
    size_t k = 0;
    for (Source& s : sources) {
      if (s.fate != Fate::kAdopt) {
        ++k;
        continue;
      }
      if (k < back.size()) s.inplace->builder = std::move(back[k]);
      ++k;
    }
  }
  Check(st);

  meta.Release();
  for (Source& s : sources) {
    py::object owner = py::reinterpret_borrow<py::object>(s.buf.view.obj);
    s.buf.Release();
    if (s.fate == Fate::kAdopt) {
      // The array stays valid (a pin on the object that now holds its
      // pages, so they are never reused under it) and becomes read-only,
      // as the object is.
      InPlace* in = s.inplace;
      inplace_->erase(in->data);
      in->registry.reset();
      in->pin = adopted_pin;
      py::handle(in->exporter).cast<Buffer&>().readonly = true;
      owner.attr("flags").attr("writeable") = false;
      py::handle(in->root).attr("flags").attr("writeable") = false;
    } else if (s.fate == Fate::kCopyAndEmpty) {
      EmptySource(s.item, std::move(owner));
    }
  }
  return IdTuple(id);
}

py::tuple Handle::Get(uint64_t hi, uint64_t lo) const {
  std::shared_ptr<Store> store = Live();
  Result<ObjectView> v = [&] {
    py::gil_scoped_release nogil;
    return store->Get(Id(hi, lo));
  }();
  if (!v.ok()) Raise(v.status());
  auto view = std::make_shared<ObjectView>(std::move(*v));
  // The metadata is copied, then checked and used from the copy: another
  // writer could change the mapping while it is read (it is small: the
  // pickle stream without its out-of-band buffers).
  std::span<const std::byte> m = view->metadata();
  py::bytes metadata(reinterpret_cast<const char*>(m.data()), m.size());
  if (std::optional<uint64_t> sum = view->metadata_checksum()) {
    std::span<const std::byte> copy{reinterpret_cast<const std::byte*>(PyBytes_AS_STRING(metadata.ptr())),
                                    m.size()};
    if (internal::Checksum(copy) != *sum) {
      Raise(Corrupt("object " + view->id().ToString() + " in store '" + name_ +
                    "': its metadata does not match the checksum recorded at Seal"));
    }
  }
  py::list bufs(view->num_buffers());
  for (size_t i = 0; i < view->num_buffers(); ++i) {
    std::span<const std::byte> b = view->buffer(i);
    bufs[i] = NewView(view, const_cast<std::byte*>(b.data()), b.size(), true);
  }
  return py::make_tuple(metadata, bufs);
}

py::object Handle::EmptyBuffer(size_t size) {
  std::shared_ptr<Store> store = Live();
  auto in = std::make_shared<InPlace>();
  {
    auto b = [&] {
      py::gil_scoped_release nogil;
      return store->CreateObject(ObjectId::Random(), 0, {&size, 1});
    }();
    if (!b.ok()) Raise(b.status());
    in->builder = std::move(*b);
  }
  in->data = in->builder.buffer(0).data();
  in->size = size;
  py::object exporter = py::cast(Buffer{in, in->data, size, false, in.get()});
  in->exporter = exporter.ptr();
  in->registry = inplace_;
  (*inplace_)[in->data] = in.get();
  return exporter;
}

py::dict StatsDict(const StoreStats& s) {
  py::dict d;
  d["capacity"] = s.capacity;
  d["used"] = s.used;
  d["largest_free"] = s.largest_free;
  d["objects"] = s.objects;
  d["unsealed"] = s.unsealed;
  d["deleted_pinned"] = s.deleted_pinned;
  d["pins"] = s.pins;
  d["clients"] = s.clients;
  d["max_objects"] = s.max_objects;
  d["max_clients"] = s.max_clients;
  d["names"] = s.names;
  return d;
}

const char* StateName(ObjectInfo::State s) {
  switch (s) {
    case ObjectInfo::State::kUnsealed: return "unsealed";
    case ObjectInfo::State::kSealed: return "sealed";
    case ObjectInfo::State::kDeletedPinned: return "deleted_pinned";
  }
  return "unknown";
}

Backing ToBacking(int b) {
  if (b < 1 || b > 3) Raise(InvalidArgument("unknown backing " + std::to_string(b)));
  return static_cast<Backing>(b);
}

}  // namespace

py::object HandleOf(std::shared_ptr<Store> store) {
  return py::cast(new Handle(std::move(store)), py::return_value_policy::take_ownership);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "zcstore's native layer; use the zcstore package, not this module.";
  try {
    py::object nd = py::module_::import("numpy").attr("ndarray");
    ndarray_type = reinterpret_cast<PyTypeObject*>(nd.release().ptr());
  } catch (const py::error_already_set&) {
    PyErr_Clear();  // without numpy, nothing is emptied by move=True
  }

  m.def("set_error_classes", [](py::dict classes) {
    Py_XDECREF(error_classes);
    error_classes = classes.release().ptr();
  });

  py::class_<Buffer>(m, "Buffer", py::buffer_protocol())
      .def_buffer([](Buffer& b) {
        return py::buffer_info(b.data, 1, "B", 1, {static_cast<py::ssize_t>(b.size)}, {1},
                               b.readonly);
      })
      .def("__len__", [](const Buffer& b) { return b.size; })
      .def_property_readonly("readonly", [](const Buffer& b) { return b.readonly; })
      // The array every view of an in-place buffer has as its base (the
      // "root"), of `count` items of `dtype`. Its own base is this Buffer,
      // not a memoryview: numpy asks it whether the memory may be written
      // (a.flags.writeable = True), and after a put adopts the memory the
      // Buffer says no, as the object is sealed.
      .def("_root_array",
           [](py::object self, py::object dtype, size_t count) {
             Buffer& b = self.cast<Buffer&>();
             if (b.inplace == nullptr) Raise(InvalidArgument("not an in-place buffer"));
             py::dtype dt = py::dtype::from_args(dtype);
             if (count * static_cast<size_t>(dt.itemsize()) > b.size) {
               Raise(InvalidArgument("the array would be larger than its buffer"));
             }
             py::array root(dt, {static_cast<py::ssize_t>(count)}, {}, b.data, self);
             b.inplace->root = root.ptr();
             return root;
           })
      .def_property_readonly("address",
                             [](const Buffer& b) { return reinterpret_cast<uintptr_t>(b.data); });

  py::class_<Handle>(m, "Handle")
      .def_static(
          "create",
          [](const std::string& name, int backing, uint64_t capacity, uint32_t max_objects,
             uint32_t max_clients, uint32_t max_pins, uint32_t max_names, bool checksums,
             uint32_t mode, bool persistent, const std::string& shm_dir) {
            StoreOptions o;
            o.backing = ToBacking(backing);
            o.capacity = capacity;
            o.max_objects = max_objects;
            o.max_clients = max_clients;
            o.max_pins_per_client = max_pins;
            o.max_names = max_names;
            o.checksums = checksums;
            o.mode = static_cast<mode_t>(mode);
            o.persistent = persistent;
            o.shm_dir = shm_dir;
            auto s = [&] {
              py::gil_scoped_release nogil;
              return Store::Create(name, o);
            }();
            return new Handle(Check(std::move(s)));
          })
      .def_static("open",
                  [](const std::string& name, int backing, bool read_only,
                     const std::string& shm_dir, bool allow_shared_write, int64_t timeout_ms) {
                    OpenOptions o;
                    o.backing = ToBacking(backing);
                    o.read_only = read_only;
                    o.shm_dir = shm_dir;
                    o.allow_shared_write = allow_shared_write;
                    o.lock_timeout = std::chrono::milliseconds(timeout_ms);
                    auto s = [&] {
                      py::gil_scoped_release nogil;
                      return Store::Open(name, o);
                    }();
                    return new Handle(Check(std::move(s)));
                  })
      .def_static("open_fd",
                  [](int fd, bool read_only) {
                    auto s = [&] {
                      py::gil_scoped_release nogil;
                      return Store::OpenFd(fd, read_only);
                    }();
                    return new Handle(Check(std::move(s)));
                  })
      .def_static("remove",
                  [](const std::string& name, int backing, const std::string& shm_dir) {
                    OpenOptions o;
                    o.backing = ToBacking(backing);
                    o.shm_dir = shm_dir;
                    Check(Store::Remove(name, o));
                  })
      .def_static("list_stores",
                  [](const std::string& shm_dir) { return Check(Store::ListStores(shm_dir)); })
      .def_static("collect_garbage",
                  [](const std::string& shm_dir) { return Check(Store::CollectGarbage(shm_dir)); })
      .def_static("capacity_for",
                  [](size_t metadata_size, std::vector<size_t> sizes, int backing) {
                    return Store::CapacityFor(metadata_size, sizes, ToBacking(backing));
                  })
      .def("close", &Handle::Close)
      .def_property_readonly("closed", &Handle::closed)
      .def_property_readonly("name", &Handle::name)
      .def_property_readonly("backing",
                             [](const Handle& h) { return static_cast<int>(h.Live()->backing()); })
      .def_property_readonly("read_only", [](const Handle& h) { return h.Live()->read_only(); })
      .def_property_readonly("created", [](const Handle& h) { return h.Live()->created(); })
      .def_property_readonly("fd", [](const Handle& h) { return h.Live()->fd(); })
      .def("identity", &Handle::Identity)
      .def("put", &Handle::Put, py::arg("id"), py::arg("metadata"), py::arg("buffers"),
           py::arg("move") = false)
      .def("get", &Handle::Get)
      .def("empty", &Handle::EmptyBuffer)
      .def("delete",
           [](Handle& h, uint64_t hi, uint64_t lo) {
             auto s = h.Live();
             Status st;
             {
               py::gil_scoped_release nogil;
               st = s->Delete(Id(hi, lo));
             }
             Check(st);
           })
      .def("contains",
           [](const Handle& h, uint64_t hi, uint64_t lo) { return h.Live()->Contains(Id(hi, lo)); })
      .def("bind",
           [](Handle& h, const std::string& name, uint64_t hi, uint64_t lo) {
             Check(h.Live()->Bind(name, Id(hi, lo)));
           })
      .def("lookup",
           [](const Handle& h, const std::string& name) {
             return IdTuple(Check(h.Live()->Lookup(name)));
           })
      .def("unbind", [](Handle& h, const std::string& name) { Check(h.Live()->Unbind(name)); })
      .def("names",
           [](const Handle& h) {
             py::list out;
             for (auto& [name, id] : Check(h.Live()->ListNames())) {
               // Bind takes UTF-8 only, but a store's tables are another
               // process's bytes: a name that is not UTF-8 comes as bytes
               // rather than failing the whole listing.
               PyObject* text = PyUnicode_DecodeUTF8(name.data(), static_cast<Py_ssize_t>(name.size()),
                                                     "strict");
               py::object key;
               if (text != nullptr) {
                 key = py::reinterpret_steal<py::object>(text);
               } else {
                 PyErr_Clear();
                 key = py::bytes(name);
               }
               out.append(py::make_tuple(key, id.hi, id.lo));
             }
             return out;
           })
      .def("stats",
           [](const Handle& h) {
             auto s = h.Live();
             auto r = [&] {
               py::gil_scoped_release nogil;
               return s->Stats();
             }();
             return StatsDict(Check(std::move(r)));
           })
      .def("list",
           [](const Handle& h) {
             py::list out;
             for (const ObjectInfo& o : Check(h.Live()->List())) {
               py::dict d;
               d["id"] = IdTuple(o.id);
               d["state"] = StateName(o.state);
               d["extent_bytes"] = o.extent_bytes;
               d["metadata_bytes"] = o.metadata_bytes;
               d["data_bytes"] = o.data_bytes;
               d["num_buffers"] = o.num_buffers;
               d["pins"] = o.pins;
               d["has_checksums"] = o.has_checksums;
               d["sealed_unix_ns"] = o.sealed_unix_ns;
               out.append(d);
             }
             return out;
           })
      .def("verify",
           [](const Handle& h, uint64_t hi, uint64_t lo) {
             auto s = h.Live();
             Status st;
             {
               py::gil_scoped_release nogil;
               st = s->Verify(Id(hi, lo));
             }
             Check(st);
           })
      .def("verify_all", [](const Handle& h) {
        auto s = h.Live();
        Status st;
        {
          py::gil_scoped_release nogil;
          st = s->VerifyAll();
        }
        Check(st);
      });

  m.def("random_id", [] { return IdTuple(ObjectId::Random()); });
  m.attr("version") = ZCSTORE_PY_VERSION;
  RegisterViews(m);
  RegisterPool(m);
}

}  // namespace zcstore::python
