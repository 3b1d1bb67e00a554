// The pool's public calls: starting it (workers report in), shutting it
// down, and submitting, waiting for and taking results. The parts of
// PoolCore live beside this file (see pool_core_internal.h).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdio>

#include "pool/pool_core_internal.h"
#include "store/platform_internal.h"

namespace zcstore {
namespace internal {
namespace {

// A process spawned as a worker whose main did not call ZCSTORE_WORKER_MAIN
// would run the program again: make it die with its parent from the first
// instruction of main, and refuse its pools (every generation would spawn
// the next: a process storm).
pid_t started_as_worker_of = 0;
std::atomic<bool> in_worker_loop{false};

__attribute__((constructor)) void NoticeWorkerStart() {
  const char* parent = std::getenv(kWorkerEnv);
  if (parent == nullptr) return;
  started_as_worker_of = static_cast<pid_t>(std::atol(parent));
  unsetenv(kWorkerEnv);  // not for what this process starts in turn
  if (!platform::DieWithParent(started_as_worker_of)) _exit(0);  // the parent is gone
}

}  // namespace

void EnterWorkerLoop() { in_worker_loop = true; }

bool PoolCore::ForkedAway() const { return getpid() != owner; }

void PoolCore::AbandonThreads() {
  // Moved onto the heap and never destroyed: destroying (or joining, or
  // detaching) a std::thread whose thread is not in this process is wrong.
  auto abandon = [](std::thread& t) {
    if (t.joinable()) (void)new std::thread(std::move(t));
  };
  abandon(thread);
  for (Worker& w : workers) abandon(w.thread);
}

PoolCore::~PoolCore() {
  if (ForkedAway()) AbandonThreads();
  platform::Unmap(control, ControlSize(n));
  platform::CloseFile(control_fd);
  platform::CloseFile(doorbell);
}

Status PoolCore::Init() {
  owner = getpid();
  n = opts.workers > 0 ? opts.workers : std::max(1u, std::thread::hardware_concurrency());
  if (opts.store_fd >= 0) {
    auto s = Store::OpenFd(opts.store_fd);
    if (!s.ok()) {
      return Status(s.status().code(),
                    "PoolOptions::store_fd: not a store this process can open (" +
                        s.status().message() + ")");
    }
    // This handle holds one slot already; each worker takes another (a
    // replacement reuses its predecessor's once it is reaped). Not Stats:
    // it would fault in the whole object table here, milliseconds.
    auto free = s->FreeClientSlots();
    if (!free.ok()) return free.status();
    if (*free < static_cast<uint32_t>(n)) {
      return InvalidArgument("the store of PoolOptions::store_fd has " + std::to_string(*free) +
                             " free client slots; " + std::to_string(n) +
                             " workers need one each (StoreOptions::max_clients)");
    }
    store = std::make_unique<Store>(std::move(*s));
  } else {
    StoreOptions so;
    so.backing = Backing::kMemfd;
    so.capacity = opts.store_capacity;
    so.max_clients = static_cast<uint32_t>(4 * n + 16);
    auto s = Store::Create("pool", so);
    if (!s.ok()) return s.status();
    store = std::make_unique<Store>(std::move(*s));
  }
  auto fd = platform::CreateMemoryFile("pool-control");
  if (!fd.ok()) return fd.status();
  control_fd = *fd;
  if (Status st =
          platform::ReserveFile(control_fd, ControlSize(n), "the pool's queues", ControlSize(n));
      !st.ok()) {
    return st;
  }
  auto map = platform::MapFile(control_fd, ControlSize(n), true);
  if (!map.ok()) return map.status();
  control = *map;
  auto bell = platform::CreateDoorbell();
  if (!bell.ok()) return bell.status();
  doorbell = *bell;
  exe = opts.worker_executable.empty() ? "/proc/self/exe" : opts.worker_executable;
  if (opts.backend == PoolOptions::Backend::kSpawn && access(exe.c_str(), X_OK) != 0) {
    return NotFound("worker executable '" + exe + "' cannot be run");
  }
  workers.resize(n);
  for (int i = 0; i < n; ++i) {
    workers[i].index = i;
    workers[i].requests = RequestRing(control, i);
    workers[i].claims = Claims(control, n, i);
    workers[i].responses = ResponseRing(control, i);
  }
  return Status::OK();
}

}  // namespace internal

using internal::PoolCore;

Result<std::unique_ptr<Pool>> Pool::Create(const PoolOptions& options) {
  if (internal::started_as_worker_of != 0 && !internal::in_worker_loop) {
    return InvalidArgument(
        "this process was started as a zcstore worker (by process " +
        std::to_string(internal::started_as_worker_of) +
        "), but its main() did not call ZCSTORE_WORKER_MAIN(argc, argv) before creating a Pool; "
        "put ZCSTORE_WORKER_MAIN(argc, argv) first in main, before any argument parsing");
  }
  if (options.max_in_flight_per_worker < 1 ||
      options.max_in_flight_per_worker > internal::kClaimsPerWorker) {
    return InvalidArgument("max_in_flight_per_worker must be from 1 to " +
                           std::to_string(internal::kClaimsPerWorker) + ", not " +
                           std::to_string(options.max_in_flight_per_worker));
  }
  std::unique_ptr<Pool> pool(new Pool());
  pool->core_ = std::make_shared<PoolCore>(options);
  PoolCore& c = *pool->core_;
  if (Status st = c.Init(); !st.ok()) return st;
  std::unique_lock<std::mutex> lock(c.mu);
  // A worker's parent-death signal follows the thread that started it.
  // On the main thread, which lives as long as the process, Create starts
  // the first workers itself: their processes then need not wait for the
  // pool thread to be scheduled and for Create to be woken (0.1-2 ms each
  // on a busy machine, which a fork pool's first result waited for). Any
  // other thread may end before the pool does, so there the pool thread
  // starts them, as it starts every later one.
  if (internal::platform::OnMainThread()) c.LaunchFirst();
  c.thread = std::thread([&c] { c.Run(); });
  bool in_time = c.started_cv.wait_for(lock, options.start_timeout, [&] {
    using Wait = PoolOptions::StartWait;
    return c.hellos == c.n || (options.create_waits_for == Wait::kFirstWorker && c.hellos > 0) ||
           (options.create_waits_for == Wait::kFirstLaunch && c.launched_first) ||
           !c.start_status.ok() || c.finished;
  });
  Status st = c.start_status;
  if (st.ok() && in_time) c.created = true;
  if (st.ok() && !in_time) {
    st = Timeout("only " + std::to_string(c.hellos) + " of " + std::to_string(c.n) +
                 " workers reported in within " + std::to_string(options.start_timeout.count()) +
                 " ms (does the worker executable call ZCSTORE_WORKER_MAIN?)");
  }
  lock.unlock();
  if (!st.ok()) {
    (void)pool->Shutdown();
    return st;
  }
  return pool;
}

Pool::~Pool() { (void)Shutdown(); }

Status Pool::Shutdown() {
  if (!core_ || core_->shut_down) return Status::OK();
  core_->shut_down = true;
  if (core_->ForkedAway()) {
    // A forked child's copy: the workers, queues and threads are the
    // parent's. Touch nothing; let go of the copies.
    core_->AbandonThreads();
    return Status::OK();
  }
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->stop = true;
    for (auto& r : core_->retries) {
      core_->FailItems(*r.job, r.first, r.count, StatusCode::kCancelled, "the pool was shut down");
    }
    core_->retries.clear();
  }
  CancelAll();
  internal::platform::RingDoorbell(core_->doorbell);
  if (core_->thread.joinable()) core_->thread.join();
  return Status::OK();
}

Result<uint32_t> Pool::TaskIndex(std::string_view name, const std::string& arg_type,
                                 const std::string& result_type) {
  return internal::FindTask(name, arg_type, result_type);
}

namespace internal {
Result<uint32_t> FindTask(std::string_view name, const std::string& arg_type,
                          const std::string& result_type) {
  const auto& r = Registry();
  for (uint32_t i = 0; i < r.size(); ++i) {
    if (r[i].name != name) continue;
    if (r[i].arg_type != arg_type || r[i].result_type != result_type) {
      return TypeMismatch("task '" + std::string(name) + "' takes " + r[i].arg_type +
                          " and returns " + r[i].result_type + ", not " + arg_type + " -> " +
                          result_type);
    }
    return i;
  }
  std::string known;
  for (const auto& t : r) known += (known.empty() ? "" : ", ") + t.name;
  return NotFound(
      "task '" + std::string(name) +
      "' is not registered (ZCSTORE_TASK); registered: " + (known.empty() ? "none" : known));
}
}  // namespace internal

std::shared_ptr<internal::Job> Pool::StartMap(
    uint32_t task, size_t n, size_t chunk, bool keep_order, bool track,
    std::function<Status(size_t, std::vector<std::byte>*, ObjectId*)> encode,
    std::chrono::milliseconds timeout) {
  auto job = std::make_shared<internal::Job>();
  job->timeout = timeout;
  job->task = task;
  job->n = n;
  job->keep_order = keep_order;
  job->encode = std::move(encode);
  if (keep_order) {
    job->results.resize(n);
  } else {
    job->completed.emplace();
  }
  if (chunk == 0) chunk = std::clamp<size_t>(n / (size_t(core_->n) * 8), 1, 256);
  job->chunk = chunk;
  Start(job, track);
  return job;
}

void Pool::Start(const std::shared_ptr<internal::Job>& job, bool track) {
  PoolCore& c = *core_;
  // The workers are woken after the lock is let go: a wake-up is a slow
  // system call, and the woken worker may preempt us on this CPU.
  thread_local std::vector<internal::Ring> wakes;
  wakes.clear();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.ForkedAway()) {
      c.FailItems(*job, 0, job->n, StatusCode::kInvalidArgument,
                  "this pool belongs to process " + std::to_string(c.owner) +
                      "; a process forked from it cannot use it: create a Pool in the child");
      return;
    }
    if (c.stop) {
      c.FailItems(*job, 0, job->n, StatusCode::kCancelled, "the pool is shut down");
      return;
    }
    if (!c.no_workers.empty()) {
      c.FailItems(*job, 0, job->n, StatusCode::kWorkerCrashed, c.no_workers);
      return;
    }
    if (job->target_worker >= 0 && c.workers[job->target_worker].retired) {
      c.FailItems(*job, 0, job->n, StatusCode::kWorkerCrashed,
                  "worker " + std::to_string(job->target_worker) + " was retired");
      return;
    }
    job->seq = ++c.jobs_started;
    if (track) {
      if (c.tracked.empty()) c.progress_start = internal::Clock::now();
      c.tracked.push_back(job);
    }
    c.jobs.push_back(job);
    c.Dispatch(&wakes);
  }
  c.WakeWorkers(wakes);
}

void Pool::WaitDone(internal::Job& job) {
  internal::WaitJob(core_.get(), job);
  core_->Progress(false);  // the final bar before the caller prints anything
}

bool Pool::WaitNext(internal::Job& job, size_t* index, internal::ItemResult* result) {
  if (internal::TakeNext(core_.get(), job, index, result)) return true;
  core_->Progress(false);  // the final bar before the caller prints anything
  return false;
}

Status Pool::UnshareId(ObjectId id) {
  if (Status st = core_->store->Delete(id); !st.ok()) return st;
  internal::MessageWriter detach;
  detach.U8(internal::kDetach);
  detach.Id(id);
  std::lock_guard<std::mutex> lock(core_->mu);
  for (auto& w : core_->workers) {
    // A full ring must not drop it (the worker would keep the pin until the
    // pool ends): it waits for room, sent before any later work.
    if (w.alive && (!w.pending_detaches.empty() || !w.requests.TryPush(detach.bytes()))) {
      w.pending_detaches.push_back(id);
    }
  }
  return Status::OK();
}

// A bump of the word that sleeping waiters wait on: each looks again at
// what it waits for (PoolCore::WaitFor), and a WaitAny stopped meanwhile
// returns. The bump comes after the caller's store to `stop` (both
// sequentially consistent), so a waiter that missed the store sees the
// word changed and does not sleep.
void Pool::WakeWaiters() {
  internal::ControlHeader* c = internal::Header(core_->control);
  c->answer_seq.fetch_add(1);
  internal::platform::FutexWake(reinterpret_cast<uint32_t*>(&c->answer_seq));
}

void Pool::CancelAll() {
  // Queued jobs, and jobs with chunks in a worker's ring: what has not
  // started of either is cancelled.
  std::vector<std::shared_ptr<internal::Job>> pending;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    pending.assign(core_->jobs.begin(), core_->jobs.end());
    for (internal::Worker& w : core_->workers) {
      for (internal::InFlight& f : w.in_flight) pending.push_back(f.job);
    }
  }
  for (auto& j : pending) internal::CancelJob(core_.get(), *j);
}

PoolStats Pool::Stats() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  std::lock_guard<std::mutex> log_lock(core_->log_mu);
  PoolStats s = core_->stats;
  s.workers = core_->n;
  s.workers_ready = static_cast<int>(std::count_if(
      core_->workers.begin(), core_->workers.end(),
      [](const internal::Worker& w) { return w.alive && w.ready; }));
  return s;
}

std::vector<std::pair<int, std::string>> Pool::TakeLogLines() { return core_->TakeLogLines(); }
int Pool::workers() const { return core_->n; }
Store& Pool::store() { return *core_->store; }

std::vector<pid_t> Pool::worker_pids() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  std::vector<pid_t> pids;
  for (auto& w : core_->workers) pids.push_back(w.alive ? w.pid : 0);
  return pids;
}

}  // namespace zcstore
