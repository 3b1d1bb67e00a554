// zcstore._core.Pool: the C++ pool driving Python workers.
//
// Every Python call travels as one C++ task, "zcstore.python", whose
// argument and result are a PyCall: a pickle-5 stream plus its out-of-band
// buffers as Arrays (so large ones go through the pool's store, and a
// result's arrays reach the caller as read-only views of it). In a worker
// the task takes the GIL and hands the call to the Python runner that
// run_worker was given (zcstore/pool_worker.py); in the parent a collector
// thread (zcstore/pool.py) takes finished tasks with wait().
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "python/src/core_internal.h"
#include "serializer/copy_internal.h"
#include "zcstore/zcstore.h"

namespace zcstore::python {

// A pickled call or result.
struct PyCall {
  std::string stream;
  std::vector<Array<uint8_t>> buffers;
  template <class Ar>
  void Serialize(Ar& ar) {
    ar(stream, buffers);
  }
};

namespace {

// The Python runner of this worker process: (stream, buffers) -> (stream, buffers).
PyObject* runner = nullptr;

// The fork backend forks from the pool thread (the first worker from
// Create's, when that is the main thread), as CPython's os.fork would from
// any thread: that thread holds the GIL across fork() (so no other thread
// is inside the interpreter), the interpreter's own fork hooks run (import
// lock, threading, os.register_at_fork), and the child, whose only thread
// is this one, lets the GIL go before its loop. The forking thread holds
// the pool's mutex and waits for the GIL here; so every call into the pool
// that can take its mutex is made without the GIL (see PyPool).
thread_local PyGILState_STATE fork_gil;

Status BeforeFork() {
#if PY_VERSION_HEX >= 0x030D0000
  bool finalizing = Py_IsFinalizing();
#else
  bool finalizing = _Py_IsFinalizing();
#endif
  if (finalizing) return Cancelled("the Python interpreter is shutting down");
  fork_gil = PyGILState_Ensure();
  // What is buffered in this process's sys.stdout and sys.stderr would
  // otherwise be written again by each child.
  for (const char* name : {"stdout", "stderr"}) {
    PyObject* f = PySys_GetObject(name);  // borrowed
    if (f == nullptr || f == Py_None) continue;
    PyObject* r = PyObject_CallMethod(f, "flush", nullptr);
    if (r == nullptr) PyErr_Clear();
    Py_XDECREF(r);
  }
  PyOS_BeforeFork();
  return Status::OK();
}

void AfterForkParent() {
  PyOS_AfterFork_Parent();
  PyGILState_Release(fork_gil);
}

// `run` becomes this worker's runner; `init(handle)` (zcstore/pool_worker.py)
// is called first, with a Handle over the worker loop's own handle on the
// pool's store. Both are the pool's (PyPool keeps them).
void AfterForkChild(PyObject* run, PyObject* init, const std::shared_ptr<Store>& store) {
  PyOS_AfterFork_Child();
  Py_XDECREF(runner);
  Py_INCREF(run);
  runner = run;
  try {
    py::reinterpret_borrow<py::object>(init)(HandleOf(store));
  } catch (py::error_already_set& e) {
    e.restore();
    PyErr_Print();
    std::fflush(stderr);
    _exit(3);  // a worker that cannot start: the pool reports its death
  }
  // The worker loop runs without the GIL; each task takes it (RunPython)
  // with this thread's state, which stays.
  (void)PyEval_SaveThread();
}

// The child's loop has ended: `init.exit()` (pool_worker.ForkChild) stops
// what Python started in it, as multiprocessing's own fork children do
// before they _exit. Its errors are printed; the worker exits regardless.
void BeforeForkChildExits(PyObject* init) {
  PyGILState_STATE gil = PyGILState_Ensure();
  PyObject* r = PyObject_CallMethod(init, "exit", nullptr);
  if (r == nullptr) PyErr_Print();
  Py_XDECREF(r);
  PyGILState_Release(gil);
}

// Buffers from here on are mapped privately rather than copied.
constexpr size_t kMapFrom = 64 << 10;

// Writable buffer exporters over `call`'s arrays, got through `store`: the
// caller's own copies, as ProcessPoolExecutor's arguments and results are
// (only shared objects are read-only). A large array is a private,
// copy-on-write mapping of its bytes in the store's file: no copy until
// written, and a write changes only this process's pages. The mapping holds
// `call`, and so the object's pin: its unwritten pages show the file, which
// must not be reused under it. A small array (or one not in the store) is
// copied into a bytearray.
py::list Exporters(const std::shared_ptr<PyCall>& call, const Store& store) {
  py::list out;
  for (const Array<uint8_t>& a : call->buffers) {
    size_t n = a.size();
    void* map = MAP_FAILED;
    uint64_t skip = 0, len = 0;
    if (n >= kMapFrom) {
      if (Result<uint64_t> at = store.FileOffsetOf(a.data()); at.ok()) {
        uint64_t page = *at & ~uint64_t{4095};
        skip = *at - page;
        len = (skip + n + 4095) & ~uint64_t{4095};
        map = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, store.fd(),
                   static_cast<off_t>(page));
      }
    }
    if (map == MAP_FAILED) {
      out.append(py::reinterpret_steal<py::object>(PyByteArray_FromStringAndSize(
          reinterpret_cast<const char*>(a.data()), static_cast<Py_ssize_t>(n))));
      if (PyErr_Occurred()) throw py::error_already_set();
      continue;
    }
    std::shared_ptr<void> keeper(map, [call, len](void* p) { munmap(p, len); });
    out.append(NewView(std::move(keeper), static_cast<std::byte*>(map) + skip, n, false));
  }
  return out;
}

// Copies the stream and each buffer of `obj` (a (stream, [buffers]) pair)
// into a PyCall whose arrays live in `store`.
Result<PyCall> ToCall(Store& store, py::handle stream, py::handle buffers) {
  PyCall call;
  {
    py::buffer_info s = py::reinterpret_borrow<py::buffer>(stream).request();
    call.stream.assign(static_cast<const char*>(s.ptr), static_cast<size_t>(s.size * s.itemsize));
  }
  for (py::handle b : buffers) {
    HeldBuffer source;
    source.Take(b.ptr(), PyBUF_ANY_CONTIGUOUS);
    size_t n = static_cast<size_t>(source.view.len);
    auto array = Array<uint8_t>::AllocateIn(store, n);
    if (!array.ok()) return array.status();
    {
      py::gil_scoped_release nogil;
      internal::CopyOut(reinterpret_cast<std::byte*>(array->mutable_data()),
                        static_cast<const std::byte*>(source.view.buf), n, /*drop_source=*/false);
    }
    call.buffers.push_back(std::move(*array));
  }
  return call;
}

PyCall RunPython(TaskContext& ctx, const PyCall& call) {
  py::gil_scoped_acquire gil;
  if (runner == nullptr) throw TaskError(InvalidArgument("no Python runner in this worker"));
  // The exporters hold the arrays (and so their pins); the stream is read
  // once, into the bytes the runner unpickles.
  auto arrays = std::make_shared<PyCall>(PyCall{{}, call.buffers});
  py::object out;
  try {
    out = py::reinterpret_borrow<py::object>(runner)(py::bytes(call.stream),
                                                     Exporters(arrays, internal::WorkerStore(ctx)));
    py::tuple pair = out.cast<py::tuple>();
    auto result = ToCall(internal::WorkerStore(ctx), pair[0], pair[1]);
    if (!result.ok()) throw TaskError(result.status());
    return std::move(*result);
  } catch (py::error_already_set& e) {
    // The runner reports a task's own exceptions in its result; this is a
    // failure of the runner itself (a result it could not hand over).
    throw TaskError(TaskFailed(std::string("zcstore worker: ") + e.what()));
  }
}

ZCSTORE_TASK("zcstore.python", RunPython);

// (token, code, message, stream or None, buffers) of one finished task.
py::tuple Outcome(uint64_t token, Result<PyCall>& r, const Store& store) {
  if (!r.ok()) {
    return py::make_tuple(token, static_cast<int>(r.status().code()), r.status().message(),
                          py::none(), py::list());
  }
  auto call = std::make_shared<PyCall>(std::move(*r));
  return py::make_tuple(token, 0, "", py::bytes(call->stream), Exporters(call, store));
}

using Clock = std::chrono::steady_clock;

// How long a submitted task waits for a thread to wait for it (Take)
// before a collector that is awake anyway (it watches other tasks) takes
// it. A round trip (submit, then result() or concurrent.futures.wait) asks
// within microseconds. Submit does not wake an idle collector: that
// wake-up costs tens of microseconds on a VM, and a second thread's
// wake-up on the way back as much again. Every way Python looks at a task
// asks for it instead: result(), exception(), wait() and as_completed()
// take it on the waiting thread (Take); add_done_callback() and done()
// have the collector watch it at once (WatchNow, python/zcstore/pool.py).
// A task nobody looks at is taken at the collector's next wake, within its
// Wait's timeout.
constexpr std::chrono::microseconds kWaiterFirst{1000};

// A thread that waits for its task (Take) spins this long first: an
// answer within it costs no wake-up (tens of microseconds on a VM).
constexpr std::chrono::microseconds kWaiterSpin{50};

// A thread waiting in Take looks at signals this often: Ctrl-C (a SIGINT
// that the workers may not have got) ends a wait within it.
constexpr std::chrono::milliseconds kSignalSlice{50};

// Ends a thread's Take early (PyPool::Wake): it waits for tasks of this
// pool, but something else may finish what it waits for.
struct Waker {
  std::atomic<bool> stop{false};
};

struct Incoming {
  uint64_t token;
  Future<PyCall> future;
  Clock::time_point queued;
};

class PyPool {
 public:
  PyPool(std::unique_ptr<Pool> pool, py::object keep)
      : keep_(std::move(keep)), pool_(std::move(pool)) {}
  // Without the GIL, as every call that can take the pool's mutex: the
  // fork backend's pool thread may be waiting for the GIL while it holds it.
  ~PyPool() {
    if (getpid() != owner_) {
      // A copy in a child of os.fork(): the pool is the parent's, and its
      // mutexes may have been held by threads the child does not have.
      // Let go of it all without a destructor.
      (void)new std::deque<Incoming>(std::move(incoming_));
      (void)new std::vector<Future<PyCall>>(std::move(pending_));
      (void)pool_.release();
      return;
    }
    py::gil_scoped_release nogil;
    incoming_.clear();
    pending_.clear();
    pool_.reset();
  }

  // The pool's counters; after Shutdown, as they were at its end (no
  // worker is up then).
  PoolStats Stats() {
    py::gil_scoped_release nogil;
    std::lock_guard lock(mu_);
    if (!pool_) return last_stats_;
    return pool_->Stats();
  }

  // The workers' lines waiting since the last call, as [(worker, line)],
  // and how many were lost in all (only ever while shutting down: the C++
  // pool holds lines back rather than drop them; PoolOptions::take_logs).
  py::tuple TakeLogs() {
    std::vector<std::pair<int, std::string>> taken;
    uint64_t dropped;
    {
      py::gil_scoped_release nogil;
      std::lock_guard lock(mu_);
      if (pool_) {
        taken = pool_->TakeLogLines();
        dropped = pool_->Stats().log_lines_dropped;
      } else {
        taken.swap(last_logs_);
        dropped = last_stats_.log_lines_dropped;
      }
    }
    py::list out;
    for (auto& [w, line] : taken) out.append(py::make_tuple(w, line));
    return py::make_tuple(out, dropped);
  }

  Pool& pool() {
    if (!pool_) Raise(InvalidArgument("the pool is shut down"));
    return *pool_;
  }

  // `label`: what error messages call the task (the Python function's name).
  uint64_t Submit(py::buffer stream, py::list buffers, int64_t timeout_ms, std::string label) {
    Pool& p = pool();
    PyCall call = Check(ToCall(p.store(), stream, buffers));
    SubmitOptions o;
    o.task_timeout = std::chrono::milliseconds(timeout_ms);
    o.label = std::move(label);
    py::gil_scoped_release nogil;
    // Moved: its arrays, already in the pool's store, become the
    // argument's object as they are (an lvalue would be copied again).
    Future<PyCall> f = p.Submit<PyCall>("zcstore.python", std::move(call), o);
    std::lock_guard lock(mu_);
    uint64_t token = ++last_token_;
    handles_.emplace(token, f.handle());
    incoming_.push_back({token, std::move(f), Clock::now()});  // no wake-up: see kWaiterFirst
    return token;
  }

  // Waits up to timeout_ms for tasks to finish; returns each finished one
  // as (token, code, message, stream or None, buffers), or an empty list
  // after timeout_ms or once StopWaiting is called. Called by one collector
  // thread only. It comes back to Python only with something to deliver:
  // a task submitted meanwhile re-arms the wait here, without the GIL
  // (which the submitting thread is about to take back).
  py::list Wait(int64_t timeout_ms) {
    std::vector<std::pair<uint64_t, Result<PyCall>>> done;
    {
      py::gil_scoped_release nogil;
      auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
      while (done.empty() && Clock::now() < end) {
        {
          std::unique_lock lock(mu_);
          if (stop_waiting_ || (stopping_ && pending_.empty() && incoming_.empty())) break;
          if (pending_.empty()) {
            // Until a queued task is due to be watched, or one is queued.
            auto until = end;
            if (!incoming_.empty()) until = std::min(until, incoming_.front().queued + kWaiterFirst);
            wake_.wait_until(lock, until, [&] { return stopping_ || stop_waiting_ || watch_now_; });
            watch_now_ = false;
          }
          TakeDueLocked();
        }
        if (!pending_.empty()) {
          // A task submitted meanwhile is seen at the latest after this wait:
          // keep it short while work is pending.
          auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
          (void)WaitAny<PyCall>(pending_, std::clamp(left, std::chrono::milliseconds(0),
                                                     std::chrono::milliseconds(2)));
        }
        for (size_t i = 0; i < pending_.size();) {
          if (!pending_[i].Ready()) {
            ++i;
            continue;
          }
          done.emplace_back(tokens_[i], pending_[i].Get());
          pending_[i] = std::move(pending_.back());
          tokens_[i] = tokens_.back();
          pending_.pop_back();
          tokens_.pop_back();
        }
      }
    }
    Forget(done);
    py::list out;
    for (auto& [token, r] : done) out.append(Outcome(token, r, pool().store()));
    return out;
  }

  // Cancels task `token` if it has not started (TaskHandle::Cancel): true
  // if it will never run. Its future then finishes with Cancelled at once.
  bool Cancel(uint64_t token) {
    py::gil_scoped_release nogil;
    TaskHandle h = HandleOf(token);
    return h.Cancel();
  }

  // Whether a worker runs task `token` now.
  bool Running(uint64_t token) {
    py::gil_scoped_release nogil;
    TaskHandle h = HandleOf(token);
    return h.Running();
  }

  // Makes the collector's Wait return now, and every later one at once.
  void StopWaiting() {
    py::gil_scoped_release nogil;
    std::lock_guard lock(mu_);
    stop_waiting_ = true;
    wake_.notify_all();
  }

  // Waits on this thread for tasks `tokens`, so that an answer wakes this
  // thread directly, not the collector and then this one: takes those
  // still in the collector's queue (the collector's own it settles, which
  // sets this thread's waker). Appends the Outcome of each that finished
  // to `out`, and returns once one has, after timeout_ms (< 0: no limit),
  // or once `waker` is set (Waker.set, by a thread that settled a future
  // this thread waits for too: a waiter of concurrent.futures's that is
  // not only on these tasks). What did not finish goes back to the
  // collector's queue. `out` is the caller's, filled before this returns,
  // so that an exception raised as it returns (a signal's) loses nothing.
  // Signals are looked at every kSignalSlice: a handler that raises (Ctrl-C)
  // ends the wait with its exception, after `out` is filled. Returns how
  // many of the tasks it had to wait for (0: none was in the queue).
  size_t Take(const std::vector<uint64_t>& tokens, int64_t timeout_ms, py::list out,
              std::shared_ptr<Waker> waker) {
    std::vector<Future<PyCall>> mine;
    std::vector<uint64_t> mine_tokens;
    std::vector<std::pair<uint64_t, Result<PyCall>>> done;
    PyObject *type = nullptr, *value = nullptr, *trace = nullptr;  // a signal handler's exception
    {
      py::gil_scoped_release nogil;
      {
        std::lock_guard lock(mu_);
        for (uint64_t token : tokens) {
          for (size_t i = 0; i < incoming_.size(); ++i) {
            if (incoming_[i].token != token) continue;
            mine.push_back(std::move(incoming_[i].future));
            mine_tokens.push_back(token);
            incoming_.erase(incoming_.begin() + static_cast<ptrdiff_t>(i));
            break;
          }
        }
      }
      if (!mine.empty()) {
        WaitOptions o;
        o.spin = kWaiterSpin;
        if (waker) o.stop = &waker->stop;
        auto end = timeout_ms < 0 ? Clock::time_point::max()
                                  : Clock::now() + std::chrono::milliseconds(timeout_ms);
        while (true) {
          auto slice = kSignalSlice;
          if (end != Clock::time_point::max()) {
            slice = std::min(slice, std::chrono::duration_cast<std::chrono::milliseconds>(
                                        end - Clock::now() + std::chrono::microseconds(999)));
            slice = std::max(slice, std::chrono::milliseconds(0));
          }
          Result<size_t> any = WaitAny<PyCall>(mine, slice, o);
          if (any.ok() || any.status().code() != StatusCode::kTimeout) break;
          if (Clock::now() >= end) break;
          py::gil_scoped_acquire gil;
          if (PyErr_CheckSignals() != 0) {
            PyErr_Fetch(&type, &value, &trace);
            break;
          }
        }
        // The finished ones are this thread's; the others go back to the
        // queue, as if queued now: the collector takes them within
        // kWaiterFirst, unless a thread waits for them again first. (Ready
        // and Get take the pool's mutex: not under mu_, which a thread
        // holding the GIL may wait for while the fork backend's pool thread
        // holds the pool's mutex and waits for the GIL.)
        std::vector<bool> ready(mine.size());
        for (size_t i = 0; i < mine.size(); ++i) {
          ready[i] = mine[i].Ready();
          if (ready[i]) done.emplace_back(mine_tokens[i], mine[i].Get());
        }
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < mine.size(); ++i) {
          uint64_t token = mine_tokens[i];
          if (ready[i]) {
            handles_.erase(token);
            watch_asked_.erase(token);
          } else if (watch_asked_.erase(token) != 0) {
            incoming_.push_front({token, std::move(mine[i]), Clock::time_point::min()});
            watch_now_ = true;
            wake_.notify_one();
          } else {
            incoming_.push_back({token, std::move(mine[i]), Clock::now()});
          }
        }
      }
    }
    for (auto& [token, r] : done) out.append(Outcome(token, r, pool().store()));
    if (type != nullptr) {
      PyErr_Restore(type, value, trace);
      throw py::error_already_set();
    }
    return mine_tokens.size();
  }

  // Sets `waker`, and wakes the thread that waits with it (Take).
  void Wake(Waker& waker) {
    waker.stop.store(true);
    py::gil_scoped_release nogil;
    std::lock_guard lock(mu_);
    if (pool_) pool_->WakeWaiters();
  }

  // Runs the call once on every worker; an Outcome per worker (token 0).
  py::list Broadcast(py::buffer stream, py::list buffers) {
    Pool& p = pool();
    PyCall call = Check(ToCall(p.store(), stream, buffers));
    auto results = [&] {
      py::gil_scoped_release nogil;
      return p.Broadcast<PyCall>("zcstore.python", call);
    }();
    py::list out;
    for (Result<PyCall>& r : Check(std::move(results))) out.append(Outcome(0, r, p.store()));
    return out;
  }

  // Something other than a waiting thread wants task `token` (a done
  // callback, done()): the collector watches it now, as Submit does not
  // wake it (kWaiterFirst); or as soon as a thread in Take that has it
  // hands it back unfinished.
  void WatchNow(uint64_t token) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < incoming_.size(); ++i) {
      if (incoming_[i].token != token) continue;
      Incoming in = std::move(incoming_[i]);
      incoming_.erase(incoming_.begin() + static_cast<ptrdiff_t>(i));
      in.queued = Clock::time_point::min();
      incoming_.push_front(std::move(in));
      watch_now_ = true;
      wake_.notify_one();
      return;
    }
    // Not queued: a thread in Take has it (or the collector, or it is done).
    if (handles_.count(token) != 0) watch_asked_.insert(token);
  }

  // Stops the workers. The collector must have stopped calling Wait.
  void Shutdown() {
    py::gil_scoped_release nogil;
    std::unique_ptr<Pool> p;
    std::deque<Incoming> incoming;
    std::vector<Future<PyCall>> pending;
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      wake_.notify_all();
      incoming.swap(incoming_);
      pending.swap(pending_);
      tokens_.clear();
      handles_.clear();
      watch_asked_.clear();
      p = std::move(pool_);
    }
    incoming.clear();  // dropping a future takes the pool's mutex
    pending.clear();
    if (p) {
      (void)p->Shutdown();  // stops the workers, and reads their last lines
      std::lock_guard lock(mu_);
      for (auto& l : p->TakeLogLines()) last_logs_.push_back(std::move(l));
      last_stats_ = p->Stats();
      last_stats_.workers_ready = 0;
    }
    p.reset();
  }

 private:
  TaskHandle HandleOf(uint64_t token) {
    std::lock_guard lock(mu_);
    auto it = handles_.find(token);
    return it == handles_.end() ? TaskHandle() : it->second;
  }

  // Finished tasks no longer need their handles.
  void Forget(const std::vector<std::pair<uint64_t, Result<PyCall>>>& done) {
    if (done.empty()) return;
    std::lock_guard lock(mu_);
    for (const auto& d : done) {
      handles_.erase(d.first);
      watch_asked_.erase(d.first);
    }
  }

  // The queued tasks due to be watched (all of them once stopping) become
  // the collector's.
  void TakeDueLocked() {
    auto due = Clock::now() - kWaiterFirst;
    size_t taken = 0;
    while (taken < incoming_.size() && (stopping_ || incoming_[taken].queued <= due)) {
      tokens_.push_back(incoming_[taken].token);
      pending_.push_back(std::move(incoming_[taken].future));
      ++taken;
    }
    incoming_.erase(incoming_.begin(), incoming_.begin() + static_cast<ptrdiff_t>(taken));
  }

  pid_t owner_ = getpid();  // the process that made the pool
  py::object keep_;  // what the fork hooks call, alive as long as the pool
  std::unique_ptr<Pool> pool_;
  // Taken at Shutdown, for TakeLogs and Stats after it: the lines the
  // workers wrote last, and the pool's counters at its end.
  std::vector<std::pair<int, std::string>> last_logs_;
  PoolStats last_stats_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  bool stop_waiting_ = false;  // StopWaiting was called
  uint64_t last_token_ = 0;
  // Submitted tasks, oldest first, not yet watched by the collector: for
  // kWaiterFirst a thread that waits for one (Take) takes it from here and
  // is woken by its answer directly; then the collector watches it.
  std::deque<Incoming> incoming_;
  bool watch_now_ = false;       // WatchNow put a task at the front of incoming_
  std::vector<Future<PyCall>> pending_;  // the collector's own
  std::vector<uint64_t> tokens_;
  // Every unfinished task's handle, for cancels and running() from any thread.
  std::unordered_map<uint64_t, TaskHandle> handles_;
  // Tasks WatchNow asked for while a thread in Take had them.
  std::unordered_set<uint64_t> watch_asked_;
};

}  // namespace

void RegisterPool(py::module_& m) {
  py::class_<Waker, std::shared_ptr<Waker>>(m, "Waker")
      .def(py::init<>())
      .def("clear", [](Waker& w) { w.stop.store(false); })
      .def("is_set", [](const Waker& w) { return w.stop.load(); });

  py::class_<PyPool>(m, "Pool")
      .def_static(
          "create",
          [](int workers, int backend, std::string executable, std::vector<std::string> args,
             int store_fd, int max_retries, int64_t task_timeout_ms, int64_t start_timeout_ms,
             py::object fork_runner, py::object fork_init) {
            PoolOptions o;
            o.workers = workers;
            o.backend = static_cast<PoolOptions::Backend>(backend);
            o.worker_executable = std::move(executable);
            o.worker_args = std::move(args);
            o.store_fd = store_fd;  // the Python pool's memfd store (pool.py)
            o.max_retries = max_retries;
            o.task_timeout = std::chrono::milliseconds(task_timeout_ms);
            o.start_timeout = std::chrono::milliseconds(start_timeout_ms);
            o.progress_bar = false;  // the Python side draws its own
            // Create returns once the first worker is launched: a spawn
            // pool's interpreters start while the caller goes on (sharing a
            // model, say), and tasks wait in the queue for the first one up.
            // A fork pool is started by its first task (pool.py).
            o.create_waits_for = PoolOptions::StartWait::kFirstLaunch;
            if (o.backend == PoolOptions::Backend::kFork) {
              PyObject* run = fork_runner.ptr();
              PyObject* init = fork_init.ptr();
              o.fork_hooks = {BeforeFork, AfterForkParent,
                              [run, init](const std::shared_ptr<Store>& store) {
                                AfterForkChild(run, init, store);
                              },
                              [init] { BeforeForkChildExits(init); }};
            }
            // The collector takes the lines (take_logs): the C++ pool's thread
            // never waits for Python, and a worker that writes faster than
            // Python takes its lines waits, rather than lose them.
            o.take_logs = true;
            auto pool = [&] {
              py::gil_scoped_release nogil;
              return Pool::Create(o);
            }();
            return new PyPool(Check(std::move(pool)), py::make_tuple(fork_runner, fork_init));
          })
      .def("submit", &PyPool::Submit)
      .def("wait", &PyPool::Wait)
      .def("stop_waiting", &PyPool::StopWaiting)
      .def("take", &PyPool::Take)
      .def("wake", &PyPool::Wake)
      .def("cancel", &PyPool::Cancel)
      .def("running", &PyPool::Running)
      .def("shutdown", &PyPool::Shutdown)
      .def("take_logs", &PyPool::TakeLogs)
      .def("watch_now", &PyPool::WatchNow)
      .def("broadcast", &PyPool::Broadcast)
      .def("stats", [](PyPool& p) {
        PoolStats s = p.Stats();
        py::dict d;
        d["workers"] = s.workers;
        d["workers_ready"] = s.workers_ready;
        d["tasks_done"] = s.tasks_done;
        d["tasks_failed"] = s.tasks_failed;
        d["workers_replaced"] = s.workers_replaced;
        d["log_lines"] = s.log_lines;
        d["log_lines_dropped"] = s.log_lines_dropped;
        return d;
      });

  // A worker process: runs the C++ worker loop with `run` as the Python
  // runner, the GIL released except while a task runs. Returns its exit code.
  m.def("run_worker", [](std::vector<std::string> argv, py::object run) {
    Py_XDECREF(runner);
    runner = run.release().ptr();
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    py::gil_scoped_release nogil;
    return RunWorkerProcess(static_cast<int>(argv.size()), args.data());
  });
  m.def("set_runner", [](py::object run) {  // the threads backend's runner
    Py_XDECREF(runner);
    runner = run.release().ptr();
  });
}

}  // namespace zcstore::python
