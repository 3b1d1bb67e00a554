// Pool: worker processes that attach shared objects read-only, without
// copying, and run registered tasks on them.
//
//   // Anywhere at namespace scope, in the program that runs the pool:
//   float Score(zcstore::TaskContext& ctx, const ScoreArgs& a) {
//     const Model& model = ctx.Get(a.model);   // attached once per worker, zero-copy
//     ...
//   }
//   ZCSTORE_TASK("score", Score);
//
//   int main(int argc, char** argv) {
//     ZCSTORE_WORKER_MAIN(argc, argv);          // a worker process stops here
//     auto pool = zcstore::Pool::Create({}).value();
//     auto model = pool->Share(std::move(big_model)).value();
//     auto scores = pool->Map<float>("score", args);
//   }
//
// Workers are started by spawn by default (posix_spawn of this executable, or
// of PoolOptions::worker_executable): a fresh process image, safe from a
// multithreaded parent. Functions travel by name: each worker reports a hash
// of its task registry at start-up, and a mismatch is a VersionMismatch. No
// code or function pointer crosses processes.
//
// Shared objects live in the pool's store, an anonymous memfd handed to the
// workers, so nothing is left behind even if every process is killed. A task
// receives `const T&` to a shared object; each worker maps it once.
//
// Faults (docs/pool.md has the whole model): a worker that dies mid-task fails
// that task with WorkerCrashed (naming the signal and worker) or retries it,
// and is replaced; a task that throws fails with TaskFailed, its type and message; a task
// past PoolOptions::task_timeout is killed with its worker and fails with
// Timeout; if the parent is killed, every worker exits within a second.
//
// Thread-safety: a Pool may be used from many threads at once. Futures too.
#ifndef ZCSTORE_POOL_H_
#define ZCSTORE_POOL_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "zcstore/export.h"
#include "zcstore/serializer.h"
#include "zcstore/status.h"
#include "zcstore/store.h"

namespace zcstore {

class TaskContext;

// Thrown by TaskContext::Get when a shared object cannot be attached; the
// task then fails with `status` (NotFound if the object was unshared).
struct TaskError : std::runtime_error {
  explicit TaskError(Status s) : std::runtime_error(s.ToString()), status(std::move(s)) {}
  Status status;
};

// A handle on an object shared with a pool's workers. A plain value:
// serializable, so it can travel inside task arguments.
template <typename T>
struct Shared {
  ObjectId id;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(id.hi, id.lo);
  }
};

namespace internal {

// One item's outcome as it travels back: a status, and the result's inline
// bytes, or the id of the object the worker put into the pool's store.
struct ItemResult {
  StatusCode code = StatusCode::kOk;
  std::string error;
  std::vector<std::byte> bytes;
  ObjectId ref;  // non-nil: the result is this store object
};

// What the pool keeps per submitted batch of items (a Submit is a batch of
// one). The caller's thread encodes arguments and decodes results; the pool
// only moves bytes.
struct Job {
  uint64_t seq = 0;   // the pool's name for it on the wire (never reused)
  std::chrono::milliseconds timeout{0};  // per task; 0: PoolOptions::task_timeout
  uint32_t task = 0;
  size_t n = 0;
  size_t chunk = 1;   // the largest chunk
  size_t ramp = 1;    // the next chunk: 1, 2, 4, ... up to `chunk`, so the
                      // first results come after one task, not a full chunk
  int target_worker = -1;  // Broadcast: one job per worker
  // Item i's argument, encoded when it is dispatched (Map: into `out`,
  // replacing what it held, or into the store as `ref`, which the pool
  // deletes once the item is answered). Empty for a single item encoded up
  // front (Submit):
  std::function<Status(size_t i, std::vector<std::byte>* out, ObjectId* ref)> encode;
  std::vector<std::byte> arg;  // its inline bytes,
  ObjectId arg_ref;            // or its store object, deleted when the job
  bool owns_arg_ref = true;    // ends if it owns it (Broadcast shares one)
  // Guarded by the pool's mutex:
  size_t next = 0;          // next item to dispatch
  size_t done = 0;
  bool cancelled = false;
  // Ordered jobs (Map, Submit): results by index. Unordered ones
  // (MapUnordered): results in completion order until the caller takes them,
  // so memory follows what is in flight, not the whole map.
  std::vector<ItemResult> results;
  std::optional<std::deque<std::pair<size_t, ItemResult>>> completed;  // unordered only
  // Stores item i's result where the job keeps it.
  void Put(size_t i, ItemResult r) {
    if (keep_order) results[i] = std::move(r);
    else completed->emplace_back(i, std::move(r));
  }
  bool keep_order = true;
  bool cancel_won = false;  // a Cancel found no item started (what later Cancels return)
  std::string label;  // what messages call the task (SubmitOptions::label); empty: its name
  bool dropped = false;  // nobody will take the results: delete them on arrival
  int sleepers = 0;      // callers asleep until this job moves on
};

using TaskInvoker = Status (*)(TaskContext& ctx, std::span<const std::byte> arg, ObjectId arg_ref,
                               std::vector<std::byte>* out, ObjectId* out_ref);

struct TaskInfo {
  std::string name;
  std::string arg_type, result_type;
  TaskInvoker invoke = nullptr;
};

// Adds a task to this program's registry (at static initialisation).
ZCSTORE_EXPORT bool RegisterTaskInfo(TaskInfo info);
// The registry, sorted by name, and its hash.
ZCSTORE_EXPORT const std::vector<TaskInfo>& Registry();
ZCSTORE_EXPORT uint64_t RegistryHash();
// The registry index of task `name`; NotFound if it is not registered,
// TypeMismatch if it takes or returns other types than those named.
ZCSTORE_EXPORT Result<uint32_t> FindTask(std::string_view name, const std::string& arg_type,
                                         const std::string& result_type);

class PoolCore;
struct WorkerState;
// Gives up a job nobody will take results from: results already in the
// store are deleted now, later ones when they arrive.
ZCSTORE_EXPORT void DropJob(PoolCore* core, std::shared_ptr<Job> job);

// Encoding helpers shared by both sides. Values with out-of-band buffers go
// through the store (zero-copy on the other side); the rest inline.
ZCSTORE_EXPORT Store& WorkerStore(TaskContext& ctx);
// "std::out_of_range" rather than "St12out_of_range".
ZCSTORE_EXPORT std::string DemangledTypeName(const std::type_info& type);
// The id the running task's result takes if it goes through the store.
ZCSTORE_EXPORT ObjectId ResultIdOf(TaskContext& ctx);
ZCSTORE_EXPORT const void* AttachedObject(TaskContext& ctx, ObjectId id, std::type_index type);
ZCSTORE_EXPORT void RememberAttached(TaskContext& ctx, ObjectId id, std::type_index type,
                                     std::shared_ptr<const void> object, const void* value);

// Values whose inline encoding is larger travel through the store too.
inline constexpr size_t kMaxInlineItem = 16 << 10;

// Encodes `value` into `out` (replacing what it held, reusing its capacity),
// or puts it into `store` and sets `ref`.
// `id`: the store object's id if the value goes through the store (nil: a
// random one). An rvalue is moved into the store (Store::Put): its arrays
// allocated in that store are adopted, not copied; an lvalue is copied.
template <typename V>
Status EncodeValue(Store& store, V&& value, std::vector<std::byte>* out, ObjectId* ref,
                   ObjectId id = {}) {
  using T = std::remove_cvref_t<V>;
  SaveArchive ar(SerializeOptions{}, /*move=*/false);
  ar.set_version(TypeVersion<T>());
  out->clear();
  ar.bytes().swap(*out);  // write into the caller's buffer: its capacity is reused
  Status st = Guarded([&] {
    ar.Field(value);
    return ar.status();
  });
  if (!st.ok()) return st;
  if (ar.buffers().empty() && ar.bytes().size() <= kMaxInlineItem) {
    out->swap(ar.bytes());
    return Status::OK();
  }
  if (id.is_nil()) id = ObjectId::Random();
  if (Status st = store.Put(id, std::forward<V>(value)); !st.ok()) return st;
  *ref = id;
  return Status::OK();
}

template <typename T>
Result<T> DecodeValue(const Store& store, std::span<const std::byte> bytes, ObjectId ref) {
  if (!ref.is_nil()) {
    auto p = store.Get<T>(ref);
    if (!p.ok()) return p.status();
    return std::move(*p).Take();
  }
  LoadArchive ar(bytes, {}, nullptr, LoadOptions{});
  ar.set_version(TypeVersion<T>());  // the same build on both sides
  T value{};
  Status st = Guarded([&] {
    ar.Field(value);
    if (ar.ok() && ar.remaining() != 0) ar.Corrupt("bytes left over after a task value");
    return ar.status();
  });
  if (!st.ok()) return st;
  return value;
}

// An item's result as the caller's type; a result that came through the
// store is deleted there (Arrays in the value keep it pinned while they live).
template <typename R>
Result<R> TakeResult(Store& store, ItemResult& r) {
  if (r.code != StatusCode::kOk) return Status(r.code, r.error);
  auto value = DecodeValue<R>(store, r.bytes, r.ref);
  if (!r.ref.is_nil()) (void)store.Delete(r.ref);
  r.ref = ObjectId{};
  return value;
}

template <typename R, typename A>
Status Invoke(R (*fn)(TaskContext&, const A&), TaskContext& ctx, std::span<const std::byte> arg,
              ObjectId arg_ref, std::vector<std::byte>* out, ObjectId* out_ref);

}  // namespace internal

// What a task sees: the shared objects, and which worker runs it.
class ZCSTORE_EXPORT TaskContext {
 public:
  // The shared object `ref`, as a T, attached (mapped, pinned) the first time
  // this worker needs it and kept until the pool ends or it is unshared.
  // Throws TaskError (the task then fails with its Status: NotFound if the
  // object was unshared, TypeMismatch if it is no T).
  template <typename T>
  const T& Get(const Shared<T>& ref) {
    if (const void* p = internal::AttachedObject(*this, ref.id, typeid(T))) {
      return *static_cast<const T*>(p);
    }
    auto pinned = internal::WorkerStore(*this).Get<T>(ref.id);
    if (!pinned.ok()) {
      throw TaskError(pinned.status().WithContext("shared object " + ref.id.ToString()));
    }
    auto holder = std::make_shared<Pinned<T>>(std::move(*pinned));
    const T* value = &holder->value();
    internal::RememberAttached(*this, ref.id, typeid(T), holder, value);
    return *value;
  }
  // 0-based index of the worker running this task.
  int worker_index() const;
  // Writes a line to the parent's log sink, tagged with this worker.
  void Log(std::string_view line);

 private:
  friend class internal::PoolCore;
  friend struct internal::WorkerState;
  friend Store& internal::WorkerStore(TaskContext&);
  friend ObjectId internal::ResultIdOf(TaskContext&);
  friend const void* internal::AttachedObject(TaskContext&, ObjectId, std::type_index);
  friend void internal::RememberAttached(TaskContext&, ObjectId, std::type_index,
                                         std::shared_ptr<const void>, const void*);
  explicit TaskContext(internal::WorkerState* w) : w_(w) {}
  internal::WorkerState* w_;
};

namespace internal {
template <typename R, typename A>
Status Invoke(R (*fn)(TaskContext&, const A&), TaskContext& ctx, std::span<const std::byte> arg,
              ObjectId arg_ref, std::vector<std::byte>* out, ObjectId* out_ref) {
  auto a = DecodeValue<A>(WorkerStore(ctx), arg, arg_ref);
  if (!a.ok()) return a.status();
  try {
    // The result is the task's to give away: moved, so arrays it allocated
    // in the worker's store (Array::AllocateIn) are adopted, not copied.
    return EncodeValue(WorkerStore(ctx), fn(ctx, *a), out, out_ref, ResultIdOf(ctx));
  } catch (const TaskError& e) {
    return e.status;
  } catch (const std::exception& e) {
    return TaskFailed("task threw " + DemangledTypeName(typeid(e)) + ": " + e.what());
  } catch (...) {
    return TaskFailed("task threw an exception that is not a std::exception");
  }
}

}  // namespace internal

// Registers `fn`, a `R fn(zcstore::TaskContext&, const A&)` with A and R
// serializable, under `name`. Use at namespace scope, once per task.
#define ZCSTORE_TASK(name, fn)                                                 \
  [[maybe_unused]] static const bool ZCSTORE_CONCAT_(zcstore_task_, __COUNTER__) = \
      ::zcstore::internal::RegisterTaskFn<&fn>(name)

// In main(), before anything else: a worker process runs its loop and exits
// here; the parent continues.
#define ZCSTORE_WORKER_MAIN(argc, argv)                          \
  do {                                                           \
    if (::zcstore::IsWorkerProcess(argc, argv)) {                \
      return ::zcstore::RunWorkerProcess(argc, argv);            \
    }                                                            \
  } while (0)

ZCSTORE_EXPORT bool IsWorkerProcess(int argc, char** argv);
ZCSTORE_EXPORT int RunWorkerProcess(int argc, char** argv);

namespace internal {
// One thunk per task function: the function pointer is a template argument,
// so the registry holds a plain function pointer.
template <auto Fn>
struct FnThunk;
template <typename R, typename A, R (*Fn)(TaskContext&, const A&)>
struct FnThunk<Fn> {
  static Status Run(TaskContext& ctx, std::span<const std::byte> arg, ObjectId arg_ref,
                    std::vector<std::byte>* out, ObjectId* out_ref) {
    return Invoke(Fn, ctx, arg, arg_ref, out, out_ref);
  }
};
template <typename R, typename A>
bool RegisterFnInfo(std::string name, R (*)(TaskContext&, const A&), TaskInvoker run) {
  return RegisterTaskInfo({std::move(name), TypeName<A>(), TypeName<R>(), run});
}
// True for what ZCSTORE_TASK takes: a pointer to `R fn(TaskContext&, const A&)`.
template <typename F>
struct IsTaskFunction : std::false_type {};
template <typename R, typename A>
struct IsTaskFunction<R (*)(TaskContext&, const A&)> : std::true_type {};
template <auto Fn>
bool RegisterTaskFn(std::string name) {
  static_assert(IsTaskFunction<decltype(Fn)>::value,
                "ZCSTORE_TASK(name, fn): fn must be a function `R fn(zcstore::TaskContext& ctx, "
                "const A& arg)` (a free function, possibly namespaced, or a static member "
                "function; not a lambda; the argument by const reference), with A and R "
                "serializable types");
  if constexpr (IsTaskFunction<decltype(Fn)>::value) {
    return RegisterFnInfo(std::move(name), Fn, &FnThunk<Fn>::Run);
  } else {
    return false;
  }
}
}  // namespace internal

struct PoolOptions {
  enum class Backend {
    kSpawn,    // fresh processes (posix_spawn): the default
    kFork,     // fork() without exec: faster start, inherits the parent's memory
    kThreads,  // threads of this process: no isolation, for comparisons
  };
  Backend backend = Backend::kSpawn;
  // Worker count; 0: the hardware threads.
  int workers = 0;
  // kSpawn: the executable to start (it must call ZCSTORE_WORKER_MAIN);
  // empty: this program (/proc/self/exe).
  std::string worker_executable;
  // kSpawn: arguments given to worker_executable before the worker's own,
  // for an interpreter whose script runs the worker loop (Python:
  // {"-c", "import zcstore.pool_worker as w; w.main()"}). The program must
  // pass RunWorkerProcess the arguments from the worker's flag on, with one
  // in front (as argv[0]). Default: none.
  std::vector<std::string> worker_args;
  // kFork: called on the thread that forks, around each fork() of a worker
  // (the pool thread; for the first workers Create's own, when Create is
  // called on the process's main thread), for a runtime that must get
  // ready for it (an interpreter's locks, its buffered output). `prepare`
  // runs in the parent before fork(); a non-OK status fails that worker's
  // start with it (and nothing is forked).
  // `parent` runs in the parent after fork(), whether it succeeded, and only
  // after a `prepare` that returned OK. `child(store)` runs in the new
  // worker before its loop, its stdout and stderr already the pool's log
  // pipe; `store` is the worker's own handle on the pool's store, opened in
  // the child, which the hook may keep and use for the child's life (one
  // handle, not a second open per worker). `child_exit` runs in the worker
  // after its loop ends, just before it exits with _exit (no destructors or
  // atexit handlers of the parent's run in a child): for what the runtime
  // must stop that the worker started (its threads, its own child
  // processes). Each may be empty. The pool's mutex is held while prepare,
  // parent and child run: a hook must not wait for a thread that may be
  // calling into the pool.
  struct ForkHooks {
    std::function<Status()> prepare;
    std::function<void()> parent;
    std::function<void(const std::shared_ptr<Store>& store)> child;
    std::function<void()> child_exit;
  };
  ForkHooks fork_hooks;
  // Bytes of the pool's store (shared objects, large arguments and results).
  // Storage is reserved as objects claim it, so a large value costs nothing
  // until it is used.
  uint64_t store_capacity = uint64_t{1} << 30;
  // A store this process has open (Store::fd(), typically of a kMemfd
  // store) to be the pool's store instead of a new one of store_capacity:
  // what was built or put in it beforehand is shared with the workers as it
  // is, no copy. The pool opens a handle of its own (the caller's stays the
  // caller's), writable, and each worker takes a client slot: the errors of
  // Store::OpenFd, or InvalidArgument if the store has fewer free slots than
  // workers. -1: a new store.
  int store_fd = -1;
  // A task running longer (timed from when its worker starts it, not from
  // when it was queued) is killed with its worker and fails with Timeout;
  // tasks its chunk had finished but not reported run again. 0: no limit.
  // (kThreads: not enforced.) MapOptions and SubmitOptions set it per call.
  std::chrono::milliseconds task_timeout{0};
  // A task whose worker died is run again up to this many times before it
  // fails with WorkerCrashed.
  int max_retries = 0;
  // Restart budget. A dead worker is replaced, unless it died
  // max_quick_deaths times without answering a single task, each death
  // within restart_window of the one before (a crash loop): then it is
  // retired, and the work only it could run (Broadcast) fails. Deaths
  // further apart never add up. With every worker retired, pending and new
  // tasks fail at once with WorkerCrashed, never wait.
  int max_quick_deaths = 3;
  std::chrono::milliseconds restart_window{10000};
  // Busy-wait this long for work or results before sleeping (futex); lowers
  // latency, burns a core. 0: sleep at once.
  int spin_us = 0;
  // Chunks dispatched to one worker and not yet answered (backpressure).
  int max_in_flight_per_worker = 2;
  // Progress bar (done/total, rate, ETA) on stderr during Map calls, shown
  // only when stderr is a terminal.
  bool progress_bar = true;
  // Called about every 100 ms during Map calls (on the pool's thread), and
  // once at the end of each (on the thread that waited for it).
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Receives each line a worker writes (stdout, stderr, TaskContext::Log), in
  // order per worker, on the pool's thread. Default: the parent's stderr,
  // prefixed "[worker N] ".
  std::function<void(int worker, std::string_view line)> log_sink;
  // Instead of going to log_sink, lines wait in the pool until the caller
  // takes them with Pool::TakeLogLines, on a thread of its own.
  bool take_logs = false;
  // Lines read from the workers and not yet delivered (or taken), at most.
  // While that many wait, the pool reads no more of its workers' output:
  // a worker writing faster than its lines are delivered waits for room
  // (its write blocks on the full pipe), and no line is lost. Only a dead
  // worker's pipe, and with take_logs a shutting-down pool's, are read
  // regardless (the taker must go on taking until Shutdown returns); lines
  // that find 65,536 more than max_log_lines waiting then are dropped,
  // counted in PoolStats::log_lines_dropped and reported on stderr.
  size_t max_log_lines = 10000;
  // Workers must report in within this time at start; one that has not (a
  // replacement too) is killed, and counts as a death without an answer.
  std::chrono::milliseconds start_timeout{20000};
  // What Create waits for before it returns the pool:
  //  kEveryWorker: every worker has reported in; a worker that cannot start
  //    fails Create.
  //  kFirstWorker: one worker has reported in (a first result sooner when
  //    workers are slow to start, as interpreters are); Create's start
  //    errors come from that first worker, which reports in or dies.
  //  kFirstLaunch: the first worker's process exists (spawned or forked),
  //    not that it has reported in: the caller goes on while it starts, and
  //    tasks wait in the queue for it. Create fails only for its own set-up
  //    (the store, the queues) or if that launch fails; a worker that dies
  //    before it reports in is a death like any other (see
  //    max_quick_deaths).
  // Unless kEveryWorker, as many workers start at first as there are CPUs
  // (kFork: one; a fork is quick, and each one makes the parent's next
  // writes to its memory copy-on-write faults), and the others one after
  // another from 2 ms after a task first ended (or 20 ms after the first
  // worker reported in, if none has), so that they are not in the way of
  // the first result or of the caller taking it;
  // tasks run on the ready ones meanwhile, and a later start that fails is
  // a death like any other, or retires the worker if it cannot even be
  // started.
  enum class StartWait { kEveryWorker, kFirstWorker, kFirstLaunch };
  StartWait create_waits_for = StartWait::kEveryWorker;
};

struct MapOptions {
  // Tasks per message to a worker; 0: chosen from the count and the workers.
  size_t chunk_size = 0;
  // Count this call in the progress bar and callback.
  bool progress = true;
  // Each task of this call may run this long (see PoolOptions::task_timeout);
  // 0: the pool's task_timeout.
  std::chrono::milliseconds task_timeout{0};
};

struct SubmitOptions {
  // The task may run this long (see PoolOptions::task_timeout); 0: the
  // pool's task_timeout.
  std::chrono::milliseconds task_timeout{0};
  // What error messages call the task (a runtime's own function name, say,
  // when every call goes through one registered task); empty: its name.
  std::string label;
};

struct PoolStats {
  int workers = 0;
  // Of those, the ones up now: started and reported in, not since dead.
  int workers_ready = 0;
  uint64_t tasks_done = 0;
  uint64_t tasks_failed = 0;
  uint32_t workers_replaced = 0;
  uint64_t log_lines = 0;
  uint64_t log_lines_dropped = 0;
  // Waits that found their answer only when their 1 s safety net expired: a
  // lost wake-up. Always 0 unless something is wrong.
  uint64_t late_wakeups = 0;
};

template <typename R>
class Future;

// A submitted task, for any thread, while another may be waiting on its
// Future (Future::handle()): whether it runs now, and cancelling it.
// Copyable; holds neither the pool nor the result, and may outlive both
// (it then reports not running, and cancels nothing).
class ZCSTORE_EXPORT TaskHandle {
 public:
  TaskHandle() = default;
  // True while a worker runs the task (for a Map, any of its items): it
  // has claimed it from its queue and not yet answered. Takes the pool's
  // mutex; reads one word per chunk in flight.
  bool Running() const;
  // Cancels every item of the task that has not started, wherever it
  // waits: in the pool's queue, or already sent to a worker (the worker
  // skips it; an item is either started or withdrawn, never both). Those
  // items fail with Cancelled at once. Returns true if no item had
  // started (so none will run); false if one had (it runs to its end) or
  // the task had finished. A second Cancel returns what the first did.
  bool Cancel();

 private:
  template <typename R>
  friend class Future;
  TaskHandle(std::weak_ptr<internal::PoolCore> core, std::weak_ptr<internal::Job> job)
      : core_(std::move(core)), job_(std::move(job)) {}
  std::weak_ptr<internal::PoolCore> core_;
  std::weak_ptr<internal::Job> job_;
};

// How WaitAny waits.
struct WaitOptions {
  // Busy-wait this long first (see Future::WaitFor).
  std::chrono::microseconds spin{0};
  // If set: WaitAny gives up, with Cancelled, once *stop is true. Another
  // thread sets it, then calls Pool::WakeWaiters, so that a sleeping wait
  // sees it at once.
  const std::atomic<bool>* stop = nullptr;
};

// Waits until one of `futures` (of one pool) can be taken without blocking,
// or `timeout` passes: the lowest index of such a future. Errors: Timeout;
// Cancelled once *options.stop is true; InvalidArgument if `futures` is
// empty, holds one already taken, or holds futures of different pools. A
// future whose pool is gone counts as ready.
template <typename R>
Result<size_t> WaitAny(std::span<Future<R>> futures,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds::max(),
                       const WaitOptions& options = {});

// The result of a Submit. Move-only.
template <typename R>
class Future {
 public:
  Future(Future&&) noexcept = default;
  Future& operator=(Future&&) noexcept = default;
  // A future dropped before Get releases its result (and its store object).
  ~Future() {
    if (!job_) return;
    if (auto core = core_.lock()) internal::DropJob(core.get(), std::move(job_));
  }
  // Waits for the task and returns its result, or why there is none
  // (WorkerCrashed, Timeout, Cancelled, a task's error). Call once. A
  // future may outlive its Pool: Get then returns Cancelled (the pool's
  // shutdown ended the task or discarded its result).
  Result<R> Get();
  // True once Get would not block.
  bool Ready() const;
  // Waits at most `timeout` for the task; true if Get would not block now.
  // It busy-waits up to `spin` first (or PoolOptions::spin_us if longer):
  // an answer within it wakes nobody, which saves a wake-up's latency (tens
  // of microseconds where waking a sleeping thread is slow) for a CPU's time.
  bool WaitFor(std::chrono::milliseconds timeout,
               std::chrono::microseconds spin = std::chrono::microseconds(0)) const;
  // Cancels the task if it has not started (it then fails with Cancelled);
  // true if it had not (see TaskHandle::Cancel).
  bool Cancel() { return handle().Cancel(); }
  // A handle other threads may use while this future is waited on.
  TaskHandle handle() const { return TaskHandle(core_, job_); }

 private:
  friend class Pool;
  friend Result<size_t> WaitAny<R>(std::span<Future<R>> futures, std::chrono::milliseconds timeout,
                                   const WaitOptions& options);
  Future(std::weak_ptr<internal::PoolCore> core, std::shared_ptr<internal::Job> job)
      : core_(std::move(core)), job_(std::move(job)) {}
  // The pool's core: a future may outlive its pool (then Get says so).
  std::weak_ptr<internal::PoolCore> core_;
  std::shared_ptr<internal::Job> job_;
};

class ZCSTORE_EXPORT Pool {
 public:
  // Starts the workers and waits until each has reported in with a matching
  // task registry. Errors: VersionMismatch (a worker of another build),
  // WorkerCrashed (a worker died at start, e.g. its main never called
  // ZCSTORE_WORKER_MAIN), Timeout, StoreFull (/dev/shm cannot hold the
  // pool's queues), IOError, InvalidArgument (this process was spawned as a
  // worker and its main did not call ZCSTORE_WORKER_MAIN first).
  // Workers get SIGKILL when the thread that started them ends (their
  // parent-death signal): the pool thread starts them, except that Create
  // called on the process's main thread starts the first ones itself, so
  // a main thread that calls pthread_exit while the pool lives takes those
  // with it (the pool replaces them, failing their tasks).
  static Result<std::unique_ptr<Pool>> Create(const PoolOptions& options = {});
  // Shuts down (see Shutdown).
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Puts `object` into the pool's store (moved: peak memory about one copy)
  // and returns its handle. StoreFull if it does not fit.
  template <typename T>
  Result<Shared<std::remove_cvref_t<T>>> Share(T&& object) {
    auto id = store().Put(std::forward<T>(object));
    if (!id.ok()) return id.status();
    return Shared<std::remove_cvref_t<T>>{*id};
  }
  // Deletes a shared object and tells the workers to let it go. Tasks that
  // use it afterwards fail with NotFound. NotFound if unknown.
  template <typename T>
  Status Unshare(const Shared<T>& ref) {
    return UnshareId(ref.id);
  }

  // Runs task `name` on `arg` (`options`: its timeout). A task not
  // registered, or registered with other argument or result types, fails
  // the future with NotFound/TypeMismatch; with no worker left, with
  // WorkerCrashed at once. `arg` is encoded before Submit returns; one with
  // out-of-band buffers goes into the pool's store: copied from an lvalue,
  // moved from an rvalue (arrays it allocated in store() are then adopted,
  // not copied: Submit(name, std::move(arg))).
  template <typename R, typename A>
  Future<R> Submit(std::string_view name, A&& arg, const SubmitOptions& options = {});

  // Runs task `name` on each argument; the results in order. Items are sent in
  // chunks; at most max_in_flight_per_worker chunks per worker are
  // outstanding, so a huge Map does not fill memory with requests. The first
  // failed item's Status is returned (the others still ran).
  template <typename R, typename A>
  Result<std::vector<R>> Map(std::string_view name, const std::vector<A>& args,
                             const MapOptions& options = {});
  // Map over a braced list: pool->Map<int>("square", {1, 2, 3}).
  template <typename R, typename A>
  Result<std::vector<R>> Map(std::string_view name, std::initializer_list<A> args,
                             const MapOptions& options = {}) {
    return Map<R>(name, std::vector<A>(args), options);
  }

  // As Map, but returns every item's own Result, in order: good results are
  // kept when other items fail. The outer Result fails only when the task
  // is unknown or has other types (NotFound, TypeMismatch).
  template <typename R, typename A>
  Result<std::vector<Result<R>>> MapResults(std::string_view name, const std::vector<A>& args,
                                            const MapOptions& options = {});

  // As Map, but calls `on_result(index, result)` on this thread as results
  // arrive, in completion order. Returns the first error, if any.
  template <typename R, typename A>
  Status MapUnordered(std::string_view name, const std::vector<A>& args,
                      const std::function<void(size_t, Result<R>)>& on_result,
                      const MapOptions& options = {});

  // A map whose tasks also change a context: `context` is shared with the
  // workers once, as a read-only snapshot; each task gets its argument and
  // the snapshot (ContextArg) and returns its result and an update
  // (WithUpdate); the updates come back and `merge` applies them to
  // `context` here, in argument order, so the outcome does not depend on the
  // order the tasks ran in.
  // The task is a `WithUpdate<R, U> fn(TaskContext&, const ContextArg<A, C>&)`.
  template <typename R, typename U, typename A, typename C>
  Result<std::vector<R>> MapWithContext(std::string_view name, const std::vector<A>& args,
                                        C& context, const std::function<void(C&, U&&)>& merge,
                                        const MapOptions& options = {});

  // Runs task `name` once on every worker; one result per worker, in worker
  // order. The item of a worker that is retired (see
  // PoolOptions::max_quick_deaths) fails with WorkerCrashed at once; a
  // retried item runs only on its own worker.
  template <typename R, typename A>
  Result<std::vector<Result<R>>> Broadcast(std::string_view name, const A& arg);

  // Cancels every task not yet started (they fail with Cancelled).
  void CancelAll();
  // Wakes every thread that waits for one of this pool's futures, so that
  // it looks again at what it waits for: a WaitAny whose WaitOptions::stop
  // was set returns. Any thread, for as long as the Pool lives (after
  // Shutdown too); takes no lock.
  void WakeWaiters();
  // Cancels what has not started, waits for what has, stops the workers
  // (SIGKILL after a grace period) and reaps them. Idempotent.
  Status Shutdown();

  PoolStats Stats() const;
  // With PoolOptions::take_logs: every line waiting, oldest first, as
  // (worker, line), and the pool reads its workers' output again. Also
  // after Shutdown, which reads the workers' last lines. Otherwise empty.
  std::vector<std::pair<int, std::string>> TakeLogLines();
  int workers() const;
  // The pool's store (for sharing by hand, or inspecting).
  Store& store();
  // Process ids of the current workers (0 for thread workers).
  std::vector<pid_t> worker_pids() const;

 private:
  Pool() = default;
  Status UnshareId(ObjectId id);
  Result<uint32_t> TaskIndex(std::string_view name, const std::string& arg_type,
                             const std::string& result_type);
  // Queues `job` and dispatches what it can; `track`: show it in the
  // progress bar. A job of one item may come encoded (Job::arg).
  void Start(const std::shared_ptr<internal::Job>& job, bool track);
  // A job of `n` items, each encoded by `encode` when it is dispatched,
  // started.
  std::shared_ptr<internal::Job> StartMap(
      uint32_t task, size_t n, size_t chunk, bool keep_order, bool track,
      std::function<Status(size_t, std::vector<std::byte>*, ObjectId*)> encode,
      std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  // A job of one item for `task`, its argument encoded now, not started.
  template <typename A>
  std::shared_ptr<internal::Job> SingleJob(uint32_t task, A&& arg);
  // Waits until the job is done (Map) or a result is ready (unordered).
  void WaitDone(internal::Job& job);
  bool WaitNext(internal::Job& job, size_t* index, internal::ItemResult* result);
  template <typename R>
  Result<R> Take(internal::ItemResult& r);
  template <typename R>
  friend class Future;

  std::shared_ptr<internal::PoolCore> core_;  // futures hold it weakly
};

// MapWithContext's argument and result wrappers.
template <typename A, typename C>
struct ContextArg {
  A arg;
  Shared<C> context;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(arg, context);
  }
};
template <typename R, typename U>
struct WithUpdate {
  R result;
  U update;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(result, update);
  }
};

namespace internal {
// TaskHandle::Cancel and TaskHandle::Running of `job`; each takes `core`'s mutex.
ZCSTORE_EXPORT bool CancelJob(PoolCore* core, Job& job);
ZCSTORE_EXPORT bool JobRunning(PoolCore* core, const Job& job);
ZCSTORE_EXPORT std::mutex& JobsMutex(PoolCore* core);
// Waits until every item of `job` is done (spinning first if the pool spins).
ZCSTORE_EXPORT void WaitJob(PoolCore* core, Job& job);
// WaitJob that gives up at `deadline`, spinning at least `spin_us` first:
// true if the job is done.
ZCSTORE_EXPORT bool WaitJobUntil(PoolCore* core, Job& job,
                                 std::chrono::steady_clock::time_point deadline, int spin_us = 0);
// Waits until one of `jobs` is done, `deadline` passes or *stop is true
// (spinning at least `spin_us` first): the lowest index of a done one, or
// SIZE_MAX.
ZCSTORE_EXPORT size_t WaitAnyJob(PoolCore* core, std::span<Job* const> jobs,
                                 std::chrono::steady_clock::time_point deadline, int spin_us = 0,
                                 const std::atomic<bool>* stop = nullptr);
// now + `timeout`, saturating (milliseconds::max() waits for ever).
inline std::chrono::steady_clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  auto now = std::chrono::steady_clock::now();
  auto room = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::time_point::max() - now);
  return timeout >= room ? std::chrono::steady_clock::time_point::max() : now + timeout;
}
ZCSTORE_EXPORT Store& CoreStore(PoolCore* core);
}  // namespace internal

// ------------------------------------------------------------ templates

template <typename R>
Result<R> Pool::Take(internal::ItemResult& r) {
  return internal::TakeResult<R>(store(), r);
}

namespace internal {
// TypeName<T>(), computed once.
template <typename T>
const std::string& CachedTypeName() {
  static const std::string name = TypeName<T>();
  return name;
}
}  // namespace internal

template <typename A>
std::shared_ptr<internal::Job> Pool::SingleJob(uint32_t task, A&& arg) {
  auto job = std::make_shared<internal::Job>();
  job->task = task;
  job->n = 1;
  job->results.resize(1);
  if (Status st = internal::EncodeValue(store(), std::forward<A>(arg), &job->arg, &job->arg_ref);
      !st.ok()) {
    job->done = 1;
    job->results[0].code = st.code();
    job->results[0].error = st.message();
  }
  return job;
}

template <typename R, typename A>
Future<R> Pool::Submit(std::string_view name, A&& arg, const SubmitOptions& options) {
  using T = std::remove_cvref_t<A>;
  auto task = TaskIndex(name, internal::CachedTypeName<T>(), internal::CachedTypeName<R>());
  std::shared_ptr<internal::Job> job;
  if (!task.ok()) {
    job = std::make_shared<internal::Job>();
    job->n = 1;
    job->done = 1;
    job->results.resize(1);
    job->results[0].code = task.status().code();
    job->results[0].error = task.status().message();
  } else {
    // Encode now: the caller's argument may be gone by the time it is sent.
    job = SingleJob(*task, std::forward<A>(arg));
    job->timeout = options.task_timeout;
    job->label = options.label;
    if (job->done == 0) Start(job, false);
  }
  return Future<R>(core_, job);
}

template <typename R>
Result<R> Future<R>::Get() {
  if (!job_) return InvalidArgument("Future::Get called twice (or on a moved-from future)");
  auto job = std::move(job_);
  auto core = core_.lock();
  if (!core) {
    return Cancelled("the pool this future came from was destroyed before Get: take results "
                     "before the pool goes");
  }
  internal::WaitJob(core.get(), *job);
  internal::ItemResult r = std::move(job->results[0]);
  return internal::TakeResult<R>(internal::CoreStore(core.get()), r);
}

template <typename R>
bool Future<R>::WaitFor(std::chrono::milliseconds timeout, std::chrono::microseconds spin) const {
  if (!job_) return false;
  auto core = core_.lock();
  if (!core) return true;
  return internal::WaitJobUntil(core.get(), *job_, internal::DeadlineAfter(timeout),
                                static_cast<int>(spin.count()));
}

template <typename R>
Result<size_t> WaitAny(std::span<Future<R>> futures, std::chrono::milliseconds timeout,
                       const WaitOptions& options) {
  if (futures.empty()) return InvalidArgument("WaitAny: no futures");
  std::vector<internal::Job*> jobs;
  std::shared_ptr<internal::PoolCore> core;
  for (size_t i = 0; i < futures.size(); ++i) {
    Future<R>& f = futures[i];
    if (!f.job_) return InvalidArgument("WaitAny: future " + std::to_string(i) + " was already taken");
    auto c = f.core_.lock();
    if (!c) return i;  // its pool is gone: Get returns at once
    if (core && c != core) return InvalidArgument("WaitAny: the futures come from different pools");
    core = std::move(c);
    jobs.push_back(f.job_.get());
  }
  size_t i = internal::WaitAnyJob(core.get(), jobs, internal::DeadlineAfter(timeout),
                                  static_cast<int>(options.spin.count()), options.stop);
  if (i == SIZE_MAX) {
    if (options.stop != nullptr && options.stop->load()) return Cancelled("WaitAny: stopped");
    return Timeout("WaitAny: none of " + std::to_string(futures.size()) + " tasks finished within " +
                   std::to_string(timeout.count()) + " ms");
  }
  return i;
}

template <typename R>
bool Future<R>::Ready() const {
  if (!job_) return false;
  auto core = core_.lock();
  if (!core) return true;  // Get returns at once
  std::lock_guard<std::mutex> lock(internal::JobsMutex(core.get()));
  return job_->done == job_->n;
}


template <typename R, typename A>
Result<std::vector<R>> Pool::Map(std::string_view name, const std::vector<A>& args,
                                 const MapOptions& options) {
  auto all = MapResults<R>(name, args, options);  // every item taken, its store object freed
  if (!all.ok()) return all.status();
  std::vector<R> out;
  out.reserve(all->size());
  for (Result<R>& r : *all) {
    if (!r.ok()) return std::move(r).status();
    out.push_back(std::move(r).value());
  }
  return out;
}

template <typename R, typename A>
Result<std::vector<Result<R>>> Pool::MapResults(std::string_view name, const std::vector<A>& args,
                                                const MapOptions& options) {
  auto task = TaskIndex(name, internal::CachedTypeName<A>(), internal::CachedTypeName<R>());
  if (!task.ok()) return task.status();
  std::vector<Result<R>> out;
  if (args.empty()) return out;
  auto job = StartMap(*task, args.size(), options.chunk_size, true, options.progress,
                      [this, &args](size_t i, std::vector<std::byte>* bytes, ObjectId* ref) {
                        return internal::EncodeValue(store(), args[i], bytes, ref);
                      }, options.task_timeout);
  WaitDone(*job);
  out.reserve(args.size());
  for (internal::ItemResult& r : job->results) out.push_back(Take<R>(r));
  return out;
}

template <typename R, typename A>
Status Pool::MapUnordered(std::string_view name, const std::vector<A>& args,
                          const std::function<void(size_t, Result<R>)>& on_result,
                          const MapOptions& options) {
  auto task = TaskIndex(name, internal::CachedTypeName<A>(), internal::CachedTypeName<R>());
  if (!task.ok()) return task.status();
  if (args.empty()) return Status::OK();
  auto job = StartMap(*task, args.size(), options.chunk_size, false, options.progress,
                   [this, &args](size_t i, std::vector<std::byte>* bytes, ObjectId* ref) {
                     return internal::EncodeValue(store(), args[i], bytes, ref);
                   }, options.task_timeout);
  Status first;
  size_t index;
  internal::ItemResult r;
  while (WaitNext(*job, &index, &r)) {
    Result<R> v = Take<R>(r);
    if (!v.ok() && first.ok()) first = v.status();
    on_result(index, std::move(v));
  }
  return first;
}

template <typename R, typename U, typename A, typename C>
Result<std::vector<R>> Pool::MapWithContext(std::string_view name, const std::vector<A>& args,
                                            C& context, const std::function<void(C&, U&&)>& merge,
                                            const MapOptions& options) {
  auto snapshot = Share(static_cast<const C&>(context));
  if (!snapshot.ok()) return snapshot.status();
  std::vector<ContextArg<A, C>> wrapped;
  wrapped.reserve(args.size());
  for (const A& a : args) wrapped.push_back({a, *snapshot});
  auto results = Map<WithUpdate<R, U>>(name, wrapped, options);
  (void)Unshare(*snapshot);
  if (!results.ok()) return results.status();
  std::vector<R> out;
  out.reserve(results->size());
  for (WithUpdate<R, U>& r : *results) {
    merge(context, std::move(r.update));
    out.push_back(std::move(r.result));
  }
  return out;
}

template <typename R, typename A>
Result<std::vector<Result<R>>> Pool::Broadcast(std::string_view name, const A& arg) {
  auto task = TaskIndex(name, internal::CachedTypeName<A>(), internal::CachedTypeName<R>());
  if (!task.ok()) return task.status();
  // One job per worker, all with the argument encoded once; its store
  // object (if any) is deleted when every job is done.
  auto model = SingleJob(*task, arg);
  if (model->done != 0) return Status(model->results[0].code, model->results[0].error);
  std::vector<std::shared_ptr<internal::Job>> jobs;
  for (int w = 0; w < workers(); ++w) {
    auto job = std::make_shared<internal::Job>(*model);
    job->owns_arg_ref = false;
    job->target_worker = w;
    Start(job, false);
    jobs.push_back(std::move(job));
  }
  std::vector<Result<R>> out;
  for (auto& job : jobs) {
    WaitDone(*job);
    out.push_back(Take<R>(job->results[0]));
  }
  if (!model->arg_ref.is_nil()) (void)store().Delete(model->arg_ref);
  return out;
}

}  // namespace zcstore

#endif  // ZCSTORE_POOL_H_
