// Store memory as Python objects, cheaply: zcstore._core.View,
// zcstore._core.frombuffer and zcstore._core.bundle. Store.get of a model of
// 20,000 small arrays makes 20,000 views and arrays, so their cost per
// array is the cost of get.
//
// View: a read-only (or, for the pool's private mappings, writable)
// buffer exporter over memory that its keeper keeps valid: a pinned
// ObjectView, a private mapping. A plain CPython type rather than a pybind11
// class: making one is an allocation and a reference count, where a
// pybind11 instance is also registered in pybind11's instance map (about
// 0.3 us more, and again to free it). It is not instantiable from Python.
//
// frombuffer: numpy's array reconstructor for pickle protocol 5, in one C
// call. numpy pickles a contiguous array out of band as
//   numpy.core.numeric._frombuffer(buffer, dtype, shape, order)
// which is `frombuffer(buffer, dtype).reshape(shape, order=order)`: two
// calls through Python, about 1.9 us an array. zcstore's unpickler
// (python/zcstore/__init__.py, _Unpickler) finds this function under that
// name instead; the stream stays numpy's own and any pickle.loads still
// reads it.
//
// The result is the array numpy's would be: an ndarray of `dtype` and
// `shape` over the buffer's bytes, C or Fortran ordered, writable exactly
// when the buffer is, its flags (alignment, contiguity) computed by numpy.
// Its base keeps the memory valid: a View itself (its keeper pins the
// store object), anything else a new memoryview of it, as numpy's
// does, so that a bytearray cannot be resized under the array. Whatever is
// not the plain case (an odd dtype, a size that does not match, a shape
// that is not a tuple of ints, an order other than "C" or "F") goes to
// numpy's own function, so its results and errors are numpy's.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "python/src/core_internal.h"

namespace zcstore::python {
namespace {

PyTypeObject* view_type = nullptr;  // zcstore._core.View

struct ViewObject {
  PyObject_HEAD
  std::shared_ptr<void> keeper;
  std::byte* data;
  Py_ssize_t size;
  bool readonly;
};

void ViewDealloc(PyObject* self) {
  auto* v = reinterpret_cast<ViewObject*>(self);
  PyTypeObject* type = Py_TYPE(self);
  v->keeper.~shared_ptr();
  type->tp_free(self);
  Py_DECREF(type);  // a heap type: each instance holds a reference to it
}

int ViewGetBuffer(PyObject* self, Py_buffer* view, int flags) {
  auto* v = reinterpret_cast<ViewObject*>(self);
  return PyBuffer_FillInfo(view, self, v->data, v->size, v->readonly ? 1 : 0, flags);
}

Py_ssize_t ViewLength(PyObject* self) { return reinterpret_cast<ViewObject*>(self)->size; }

PyObject* ViewReadonly(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<ViewObject*>(self)->readonly);
}

PyObject* ViewAddress(PyObject* self, void*) {
  return PyLong_FromVoidPtr(reinterpret_cast<ViewObject*>(self)->data);
}

PyGetSetDef view_getset[] = {
    {"readonly", ViewReadonly, nullptr, "Whether the memory may not be written.", nullptr},
    {"address", ViewAddress, nullptr, "Where the memory starts in this process (for alignment).",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot view_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(&ViewDealloc)},
    {Py_bf_getbuffer, reinterpret_cast<void*>(&ViewGetBuffer)},
    {Py_sq_length, reinterpret_cast<void*>(&ViewLength)},
    {Py_tp_getset, view_getset},
    {Py_tp_doc, const_cast<char*>("Store memory as a buffer (made by zcstore, not from Python).")},
    {0, nullptr}};

PyType_Spec view_spec = {"zcstore._core.View", sizeof(ViewObject), 0,
                         Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, view_slots};

// numpy's _frombuffer, the fallback; found on first use.
PyObject* NumpyFromBuffer() {
  static PyObject* fn = nullptr;
  if (fn == nullptr) {
    PyObject* mod = PyImport_ImportModule("numpy.core.numeric");
    if (mod == nullptr) return nullptr;
    fn = PyObject_GetAttrString(mod, "_frombuffer");
    Py_DECREF(mod);
  }
  return fn;
}

PyObject* Fallback(PyObject* const* args, Py_ssize_t nargs) {
  PyObject* fn = NumpyFromBuffer();
  return fn == nullptr ? nullptr : PyObject_Vectorcall(fn, args, nargs, nullptr);
}

// The item size of `dtype` when it is a plain dtype this function may build
// arrays of (a numpy dtype, no subarray, no object references, not of size
// zero), or 0. The last answer is kept: a stream names its few dtypes again
// and again (the pickler memoizes them), so this is one pointer compare.
Py_ssize_t PlainItemSize(PyObject* dtype) {
  static PyObject* last = nullptr;  // a strong reference
  static Py_ssize_t last_size = 0;
  if (dtype == last) return last_size;
  auto& api = py::detail::npy_api::get();
  if (!PyObject_TypeCheck(dtype, api.PyArrayDescr_Type_)) return 0;
  Py_ssize_t size = 0;
  py::handle d(dtype);
  try {
    if (d.attr("subdtype").is_none() && !d.attr("hasobject").cast<bool>()) {
      size = d.attr("itemsize").cast<Py_ssize_t>();
    }
  } catch (const py::error_already_set&) {
    PyErr_Clear();
    return 0;
  }
  Py_INCREF(dtype);
  Py_XDECREF(last);
  last = dtype;
  last_size = size;
  return size;
}

constexpr Py_ssize_t kMaxDims = 32;  // numpy 1.x's NPY_MAXDIMS

// *bytes times a dimension `v`, if v is not negative and the product fits.
bool TimesDim(Py_ssize_t* bytes, int64_t v) {
  if (v < 0 || (v > 0 && *bytes > PY_SSIZE_T_MAX / v)) return false;
  *bytes *= static_cast<Py_ssize_t>(v);
  return true;
}

// The order argument: 'C' -> 0, 'F' -> 1, anything else -> -1.
int OrderOf(PyObject* order) {
  if (!PyUnicode_Check(order) || PyUnicode_GET_LENGTH(order) != 1) return -1;
  switch (PyUnicode_READ_CHAR(order, 0)) {
    case 'C': return 0;
    case 'F': return 1;
    default: return -1;
  }
}

// An ndarray of `dtype` (a plain dtype: see PlainItemSize) and shape
// `dims` over all the bytes of `buffer`, which must be `bytes` long and
// contiguous; writable exactly when the buffer is. Its base keeps the memory
// valid: a View itself (its keeper pins the store object), anything else a
// new memoryview of it, so that a bytearray cannot be resized under the
// array. Returns nullptr with no error set when the buffer is not that (the
// caller decides what then), or with an error set when numpy fails.
PyObject* ArrayOver(PyObject* buffer, PyObject* dtype, int ndim, Py_intptr_t* dims,
                    Py_ssize_t bytes, bool fortran) {
  // The memory, and what keeps it valid. A View's fields are read directly
  // (its keeper is immutable); anything else is asked through the buffer
  // protocol and kept by a memoryview that holds its export.
  void* data = nullptr;
  Py_ssize_t len = 0;
  bool readonly = true;
  PyObject* base = nullptr;
  if (Py_TYPE(buffer) == view_type) {
    const auto* v = reinterpret_cast<const ViewObject*>(buffer);
    data = v->data;
    len = v->size;
    readonly = v->readonly;
    Py_INCREF(buffer);
    base = buffer;
  } else {
    base = PyMemoryView_FromObject(buffer);
    if (base == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
    const Py_buffer* view = PyMemoryView_GET_BUFFER(base);
    if (!PyBuffer_IsContiguous(view, 'C')) {
      Py_DECREF(base);
      return nullptr;
    }
    data = view->buf;
    len = view->len;
    readonly = view->readonly != 0;
  }
  if (len != bytes) {
    Py_DECREF(base);
    return nullptr;
  }

  auto& api = py::detail::npy_api::get();
  int flags = (fortran ? api.NPY_ARRAY_F_CONTIGUOUS_ : api.NPY_ARRAY_C_CONTIGUOUS_) |
              (readonly ? 0 : api.NPY_ARRAY_WRITEABLE_);
  Py_INCREF(dtype);  // PyArray_NewFromDescr takes it
  PyObject* array = api.PyArray_NewFromDescr_(api.PyArray_Type_, dtype, ndim, dims, nullptr, data,
                                              flags, nullptr);
  if (array == nullptr) {
    Py_DECREF(base);
    return nullptr;
  }
  if (api.PyArray_SetBaseObject_(array, base) != 0) {  // takes base, even on failure
    Py_DECREF(array);
    return nullptr;
  }
  return array;
}

PyObject* FromBuffer(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4) return Fallback(args, nargs);
  PyObject* buffer = args[0];
  PyObject* dtype = args[1];
  PyObject* shape = args[2];
  const int fortran = OrderOf(args[3]);
  const Py_ssize_t item = PlainItemSize(dtype);
  if (fortran < 0 || item <= 0 || !PyTuple_CheckExact(shape) || PyTuple_GET_SIZE(shape) > kMaxDims) {
    return Fallback(args, nargs);
  }
  const int ndim = static_cast<int>(PyTuple_GET_SIZE(shape));
  Py_intptr_t dims[kMaxDims];
  Py_ssize_t bytes = item;
  for (int i = 0; i < ndim; ++i) {
    PyObject* n = PyTuple_GET_ITEM(shape, i);
    Py_ssize_t v = PyLong_CheckExact(n) ? PyLong_AsSsize_t(n) : -1;
    if (!TimesDim(&bytes, v)) {
      PyErr_Clear();
      return Fallback(args, nargs);
    }
    dims[i] = v;
  }

  PyObject* array = ArrayOver(buffer, dtype, ndim, dims, bytes, fortran != 0);
  if (array == nullptr && !PyErr_Occurred()) return Fallback(args, nargs);
  return array;
}

PyMethodDef frombuffer_def = {
    "frombuffer", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&FromBuffer)),
    METH_FASTCALL,
    "frombuffer(buffer, dtype, shape, order)\n--\n\n"
    "numpy.core.numeric._frombuffer in one C call: the array numpy's pickle\n"
    "protocol 5 makes of an out-of-band buffer (see python/src/views.cc)."};

// A bundle's fault: its parts come from a store, so a mismatch is a
// corrupt stream, which Store.get reports as Corrupt.
PyObject* BadBundle(const char* what) {
  PyObject* pickle = PyImport_ImportModule("pickle");
  if (pickle == nullptr) return nullptr;
  PyObject* error = PyObject_GetAttrString(pickle, "UnpicklingError");
  Py_DECREF(pickle);
  if (error == nullptr) return nullptr;
  PyErr_Format(error, "corrupt bundle of arrays: %s", what);
  Py_DECREF(error);
  return nullptr;
}

// Bundle's walk (below), over parts of the types it checked; `buffers`
// is a tuple.
PyObject* Walk(PyObject* keys, PyObject* dtypes, PyObject* layout, PyObject* buffers) {
  const Py_ssize_t n = PyTuple_GET_SIZE(buffers);
  std::vector<Py_ssize_t> items(static_cast<size_t>(PyTuple_GET_SIZE(dtypes)));
  for (size_t d = 0; d < items.size(); ++d) {
    items[d] = PlainItemSize(PyTuple_GET_ITEM(dtypes, static_cast<Py_ssize_t>(d)));
    if (items[d] <= 0) return BadBundle("a dtype that is not plain");
  }
  // The layout, read as it is walked (an immutable bytes object: it cannot
  // change under the walk).
  const char* at = PyBytes_AS_STRING(layout);
  const char* const end = at + PyBytes_GET_SIZE(layout);
  auto next = [&](int64_t* v) {
    if (end - at < static_cast<ptrdiff_t>(sizeof *v)) return false;
    std::memcpy(v, at, sizeof *v);
    at += sizeof *v;
    return true;
  };

  PyObject* out = keys == Py_None ? PyList_New(n) : PyDict_New();
  if (out == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    int64_t d = 0, ndim = 0;
    if (!next(&d) || !next(&ndim) || d < 0 || d >= static_cast<int64_t>(items.size()) ||
        ndim < 0 || ndim > kMaxDims) {
      Py_DECREF(out);
      return BadBundle("its layout is short or out of range");
    }
    Py_intptr_t dims[kMaxDims];
    Py_ssize_t bytes = items[static_cast<size_t>(d)];
    for (int64_t k = 0; k < ndim; ++k) {
      int64_t v = 0;
      if (!next(&v) || !TimesDim(&bytes, v)) {
        Py_DECREF(out);
        return BadBundle("its layout is short or a shape overflows");
      }
      dims[k] = static_cast<Py_intptr_t>(v);
    }
    PyObject* array = ArrayOver(PyTuple_GET_ITEM(buffers, i), PyTuple_GET_ITEM(dtypes, d),
                                static_cast<int>(ndim), dims, bytes, false);
    if (array == nullptr) {
      Py_DECREF(out);
      return PyErr_Occurred() ? nullptr : BadBundle("an array's shape does not match its buffer");
    }
    if (keys == Py_None) {
      PyList_SET_ITEM(out, i, array);  // takes it
    } else {
      const int failed = PyDict_SetItem(out, PyTuple_GET_ITEM(keys, i), array);
      Py_DECREF(array);
      if (failed != 0) {
        Py_DECREF(out);
        return nullptr;
      }
    }
  }
  if (at != end) {
    Py_DECREF(out);
    return BadBundle("its layout is longer than its arrays");
  }
  return out;
}

// bundle(keys, dtypes, layout, buffers): what zcstore's pickler makes of a
// dict or list of many plain arrays (python/zcstore/__init__.py, _Bundle),
// in one call: numpy's own pickling spends about 14 opcodes and a call
// through the unpickler on each array, which made Store.get of a model of
// 20,000 small arrays cost twice what making its arrays does.
//   keys     a tuple of len(buffers) keys (a dict is made), or None (a list)
//   dtypes   a tuple of the plain dtypes the arrays use
//   layout   bytes: native int64s, per array its dtype's index in dtypes,
//            its ndim, then its ndim dims (C order)
//   buffers  a list: array i is over all the bytes of buffers[i]
// Every part is checked (the layout against the buffers' lengths, each
// count against overflow); a mismatch raises pickle.UnpicklingError.
PyObject* Bundle(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4) return BadBundle("not 4 arguments");
  PyObject* keys = args[0];
  PyObject* dtypes = args[1];
  PyObject* layout = args[2];
  PyObject* buffers = args[3];
  if (!PyList_CheckExact(buffers) || !PyTuple_CheckExact(dtypes) || !PyBytes_CheckExact(layout) ||
      (keys != Py_None && !PyTuple_CheckExact(keys))) {
    return BadBundle("its parts are not of their types");
  }
  const Py_ssize_t n = PyList_GET_SIZE(buffers);
  if (keys != Py_None && PyTuple_GET_SIZE(keys) != n) return BadBundle("keys and arrays differ");
  // The buffers as a tuple of our own: a key's __hash__ (PyDict_SetItem)
  // runs Python code, which could change the list under the walk.
  PyObject* held = PyList_AsTuple(buffers);
  if (held == nullptr) return nullptr;
  PyObject* out = Walk(keys, dtypes, layout, held);
  Py_DECREF(held);
  return out;
}

PyMethodDef bundle_def = {
    "bundle", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&Bundle)), METH_FASTCALL,
    "bundle(keys, dtypes, layout, buffers)\n--\n\n"
    "A dict (keys a tuple) or list (keys None) of arrays over buffers, in one\n"
    "C call: how zcstore's pickler stores many plain arrays (see\n"
    "python/src/views.cc)."};

}  // namespace

py::object NewView(std::shared_ptr<void> keeper, std::byte* data, size_t size, bool readonly) {
  PyObject* self = view_type->tp_alloc(view_type, 0);
  if (self == nullptr) throw py::error_already_set();
  auto* v = reinterpret_cast<ViewObject*>(self);
  new (&v->keeper) std::shared_ptr<void>(std::move(keeper));
  v->data = data;
  v->size = static_cast<Py_ssize_t>(size);
  v->readonly = readonly;
  return py::reinterpret_steal<py::object>(self);
}

void RegisterViews(py::module_& m) {
  PyObject* type = PyType_FromSpec(&view_spec);
  if (type == nullptr) throw py::error_already_set();
  view_type = reinterpret_cast<PyTypeObject*>(type);
  m.add_object("View", py::reinterpret_borrow<py::object>(type));  // view_type keeps one

  py::object name = py::str("zcstore._core");
  PyObject* fn = PyCFunction_NewEx(&frombuffer_def, nullptr, name.ptr());
  if (fn == nullptr) throw py::error_already_set();
  m.add_object("frombuffer", py::reinterpret_steal<py::object>(fn));
  fn = PyCFunction_NewEx(&bundle_def, nullptr, name.ptr());
  if (fn == nullptr) throw py::error_already_set();
  m.add_object("bundle", py::reinterpret_steal<py::object>(fn));
}

}  // namespace zcstore::python
