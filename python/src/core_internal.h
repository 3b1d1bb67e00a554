// What the parts of zcstore._core share: errors, the buffer exporter, and
// the pool's registration (python/src/pool.cc).
#ifndef ZCSTORE_PYTHON_SRC_CORE_INTERNAL_H_
#define ZCSTORE_PYTHON_SRC_CORE_INTERNAL_H_

#include <Python.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <memory>
#include <utility>

#include "zcstore/status.h"
#include "zcstore/store.h"

namespace py = pybind11;

#ifndef ZCSTORE_PY_VERSION
#error "ZCSTORE_PY_VERSION (the project's version) is defined by the build"
#endif

namespace zcstore::python {

// A zcstore._core.Handle over `store`, an open handle of this process's
// (the Python Store of a forked pool worker shares the worker loop's).
py::object HandleOf(std::shared_ptr<Store> store);

// Raises the Python exception registered for st.code(), with its message.
[[noreturn]] void Raise(const Status& st);

template <typename T>
T Check(Result<T> r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}

inline void Check(const Status& st) {
  if (!st.ok()) Raise(st);
}

struct InPlace;

// A buffer-protocol exporter (zcstore._core.Buffer) over memory that
// `keeper` keeps valid: an in-place builder's (Handle.empty). A got
// object's buffers and a pool's results are Views (NewView), which cost
// less to make.
struct Buffer {
  std::shared_ptr<void> keeper;
  std::byte* data = nullptr;
  size_t size = 0;
  bool readonly = true;
  InPlace* inplace = nullptr;  // set for a Buffer from Handle.empty
};

// A Py_buffer held until Release or destruction, which need the GIL (Take
// throws error_already_set if the object exports no such buffer).
struct HeldBuffer {
  Py_buffer view{};
  bool held = false;
  HeldBuffer() = default;
  HeldBuffer(const HeldBuffer&) = delete;
  HeldBuffer& operator=(const HeldBuffer&) = delete;
  void Take(PyObject* obj, int flags) {
    if (PyObject_GetBuffer(obj, &view, flags) != 0) throw py::error_already_set();
    held = true;
  }
  void Release() {
    if (held) PyBuffer_Release(&view);
    held = false;
  }
  ~HeldBuffer() { Release(); }
};

// Adds the pool's classes to the module (python/src/pool.cc).
void RegisterPool(py::module_& m);

// A zcstore._core.View: a buffer exporter over `size` bytes at `data`,
// which `keeper` keeps valid for as long as the View (or anything made
// from it) lives. Registered by RegisterViews (python/src/views.cc).
py::object NewView(std::shared_ptr<void> keeper, std::byte* data, size_t size, bool readonly);

// Adds View and frombuffer, numpy's array reconstructor in C
// (python/src/views.cc).
void RegisterViews(py::module_& m);

}  // namespace zcstore::python

#endif  // ZCSTORE_PYTHON_SRC_CORE_INTERNAL_H_
