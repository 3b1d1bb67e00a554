// The parent side of the pool: dispatching work to the workers' rings,
// completing it from their answers, and one thread that watches everything
// that can happen while nobody waits: answers (doorbell), deaths (pidfds),
// logs (pipes), timeouts and progress.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <thread>

#include "pool/pool_internal.h"
#include "store/platform_internal.h"

namespace zcstore {
namespace internal {

using Clock = std::chrono::steady_clock;

// Results of an unordered map waiting for its caller, at most (backpressure).
constexpr size_t kMaxUntakenResults = 4096;


namespace {

struct InFlight {
  std::shared_ptr<Job> job;
  size_t first = 0, count = 0;
  // The worker's results for this chunk go into the store under
  // ResultId(nonce, item): what a worker killed before reporting them leaves
  // behind can be found and deleted.
  uint64_t nonce = 0;
  int attempt = 0;
  // Argument objects that Dispatch put into the store, to delete once
  // answered: item first + k's at [k], nil or past the end for inline ones.
  std::vector<ObjectId> arg_refs;
};

struct Retry {
  std::shared_ptr<Job> job;
  size_t first = 0, count = 0;
  int attempt = 0;
};

struct Worker {
  int index = 0;
  pid_t pid = 0;
  int pidfd = -1;
  int log_fd = -1;
  std::string partial_line;
  Ring requests, responses;
  bool ready = false;
  bool alive = false;
  bool timed_out = false;
  bool retired = false;                // died too often too fast: not replaced
  int quick_deaths = 0;                // deaths without an answer, each within restart_window of the last
  Clock::time_point last_death;
  std::vector<ObjectId> pending_detaches;  // Detach messages the ring had no room for
  std::thread thread;                  // kThreads
  std::unique_ptr<WorkerState> state;  // kThreads
  std::deque<InFlight> in_flight;
};

}  // namespace

class PoolCore {
 public:
  explicit PoolCore(const PoolOptions& o) : opts(o) {}
  ~PoolCore();

  Status Init();
  void Run();  // the pool thread
  // Sends queued work to every ready worker with room. Holds `mu`. The
  // workers it sent to are woken now, or, if `defer_wakes` is given, left
  // there for the caller to wake once it lets go of `mu`.
  void Dispatch(std::vector<Ring>* defer_wakes = nullptr);
  // Takes every answer waiting in the response rings, then dispatches. Holds
  // `mu`. Run by the pool thread, and by callers that spin while they wait.
  bool DrainLocked();
  void Complete(Worker& w, MessageReader& in);
  void HandleDeath(Worker& w);
  // Gives up on worker `w` for good: fails the work only it could run, and,
  // if no worker is left, everything pending and (through `no_workers`)
  // everything submitted later. Holds `mu`.
  void Retire(Worker& w, const std::string& why);
  // When the task at the front of `w`'s queue must be done by (its start,
  // as the worker recorded it, plus task_timeout), or max() if none.
  Clock::time_point Deadline(const Worker& w) const;
  // Sends the Detach messages that found `w`'s ring full. Holds `mu`.
  void SendDetaches(Worker& w);
  void FailItems(const std::shared_ptr<Job>& job, size_t first, size_t count, StatusCode code,
                 const std::string& message);
  void DeleteRefs(std::vector<ObjectId>& refs);
  // True if a response ring holds an answer. Lock-free: a hint for spinners.
  bool AnswersWaiting() const {
    for (const Worker& w : workers) {
      if (!w.responses.Empty()) return true;
    }
    return false;
  }
  // Items of `job` were answered: wakes the callers asleep on it, and lets
  // go of its argument once every item is. Holds `mu`.
  void JobMoved(Job& job);
  // Wakes the workers that Dispatch(&rings) sent work to. Does not hold `mu`.
  void WakeWorkers(const std::vector<Ring>& rings);
  // Waits until `ready()`, holding `lock` (on `mu`) except while asleep.
  template <typename Ready>
  void WaitFor(Job& job, std::unique_lock<std::mutex>& lock, Ready ready);
  Status Spawn(Worker& w);
  void ReadLogs(Worker& w);  // what the pipe holds now; never waits for more
  void DeliverLogs();
  void Progress(bool final);
  std::string TaskName(uint32_t task) const {
    return task < Registry().size() ? Registry()[task].name : "?";
  }

  PoolOptions opts;
  int n = 0;
  std::unique_ptr<Store> store;
  int control_fd = -1;
  std::byte* control = nullptr;
  int doorbell = -1;
  std::vector<Worker> workers;
  std::string exe;

  std::mutex mu;  // everything below, and every Job's mutable fields
  std::condition_variable started_cv;
  std::deque<std::shared_ptr<Job>> jobs;
  std::deque<Retry> retries;
  std::vector<std::shared_ptr<Job>> tracked;  // Map jobs shown in the progress bar
  bool stop = false;
  bool finished = false;
  int hellos = 0;
  Status start_status;
  PoolStats stats;
  std::deque<std::pair<int, std::string>> log_lines;
  std::mutex log_mu;  // log_lines and the log stats
  Clock::time_point progress_start;
  std::atomic<bool> progress_shown{false};
  std::mutex progress_mu;  // one progress update at a time
  std::thread thread;
  bool shut_down = false;
  uint64_t jobs_started = 0;  // Job::seq
  uint64_t chunks_sent = 0;   // InFlight::nonce
  std::string no_workers;     // non-empty once every worker is retired: why
  // Buffers reused under `mu`, so that a task costs no allocations here.
  std::vector<std::byte> drain_buffer, encode_scratch;
  MessageWriter dispatch_msg;
};

PoolCore::~PoolCore() {
  platform::Unmap(control, ControlSize(n));
  platform::CloseFile(control_fd);
  platform::CloseFile(doorbell);
}

Status PoolCore::Init() {
  n = opts.workers > 0 ? opts.workers : std::max(1u, std::thread::hardware_concurrency());
  StoreOptions so;
  so.backing = Backing::kMemfd;
  so.capacity = opts.store_capacity;
  so.max_clients = static_cast<uint32_t>(4 * n + 16);
  auto s = Store::Create("pool", so);
  if (!s.ok()) return s.status();
  store = std::make_unique<Store>(std::move(*s));
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
    workers[i].responses = ResponseRing(control, i);
  }
  return Status::OK();
}

// Starts worker `w` (or restarts it). Runs on the pool thread, so that the
// workers' parent-death signal follows this long-lived thread.
Status PoolCore::Spawn(Worker& w) {
  w.requests.Reset();
  w.responses.Reset();
  w.ready = false;
  w.timed_out = false;
  w.partial_line.clear();
  if (opts.backend == PoolOptions::Backend::kThreads) {
    w.state = std::make_unique<WorkerState>();
    auto s = Store::OpenFd(store->fd());
    if (!s.ok()) return s.status();
    w.state->store = std::make_unique<Store>(std::move(*s));
    w.state->index = w.index;
    w.state->spin_us = opts.spin_us;
    w.state->control = Header(control);
    w.state->requests = w.requests;
    w.state->responses = w.responses;
    w.state->doorbell = doorbell;
    WorkerState* state = w.state.get();
    w.thread = std::thread([state] { WorkerLoop(*state); });
    w.alive = true;
    return Status::OK();
  }
  int log[2];
  if (Status st = platform::MakeLogPipe(log); !st.ok()) return st;
  pid_t parent = getpid();
  if (opts.backend == PoolOptions::Backend::kFork) {
    pid_t pid = fork();
    if (pid == 0) {
      dup2(log[1], 1);
      dup2(log[1], 2);
      if (!platform::DieWithParent(parent)) _exit(0);
      WorkerState ws;
      ws.index = w.index;
      ws.parent = parent;
      ws.spin_us = opts.spin_us;
      ws.control = Header(control);
      ws.requests = w.requests;
      ws.responses = w.responses;
      ws.doorbell = doorbell;
      auto s = Store::OpenFd(store->fd());
      if (!s.ok()) _exit(2);
      ws.store = std::make_unique<Store>(std::move(*s));
      int rc = WorkerLoop(ws);
      std::fflush(stdout);
      std::fflush(stderr);
      _exit(rc);  // no destructors of the parent's objects in the child
    }
    if (pid < 0) return platform::ErrnoStatus(errno, "fork");
    w.pid = pid;
  } else {
    std::vector<std::string> argv = {exe,
                                     kWorkerFlag,
                                     std::to_string(w.index),
                                     std::to_string(parent),
                                     std::to_string(opts.spin_us),
                                     std::to_string(n)};
    auto pid = platform::SpawnProcess(argv, {{log[1], 1},
                                             {log[1], 2},
                                             {control_fd, kControlFd},
                                             {store->fd(), kStoreFd},
                                             {doorbell, kDoorbellFd}});
    if (!pid.ok()) {
      ::close(log[0]);
      ::close(log[1]);
      return pid.status();
    }
    w.pid = *pid;
  }
  ::close(log[1]);
  w.log_fd = log[0];
  auto pidfd = platform::OpenProcessHandle(w.pid);
  if (!pidfd.ok()) return pidfd.status();
  w.pidfd = *pidfd;
  w.alive = true;
  return Status::OK();
}

void PoolCore::DeleteRefs(std::vector<ObjectId>& refs) {
  for (ObjectId id : refs) {
    if (!id.is_nil()) (void)store->Delete(id);
  }
  refs.clear();
}

Clock::time_point PoolCore::Deadline(const Worker& w) const {
  if (opts.task_timeout.count() <= 0 || opts.backend == PoolOptions::Backend::kThreads ||
      w.in_flight.empty()) {
    return Clock::time_point::max();
  }
  // Timed from when the worker started the task, not from when it was
  // queued behind others in its ring.
  const InFlight& f = w.in_flight.front();
  const RingHeader* h = w.requests.header();
  uint64_t item = h->current_item.load(std::memory_order_acquire);
  int64_t started_ns = h->current_started_ns.load(std::memory_order_relaxed);
  if (h->current_job.load(std::memory_order_relaxed) != f.job->seq || item < f.first ||
      item >= f.first + f.count) {
    return Clock::time_point::max();  // not started yet
  }
  auto started = Clock::now() - std::chrono::nanoseconds(platform::MonotonicNanos() - started_ns);
  return started + opts.task_timeout;
}

void PoolCore::SendDetaches(Worker& w) {
  MessageWriter detach;
  while (w.alive && !w.pending_detaches.empty()) {
    detach.Clear();
    detach.U8(kDetach);
    detach.Id(w.pending_detaches.front());
    if (!w.requests.TryPush(detach.bytes())) return;
    w.pending_detaches.erase(w.pending_detaches.begin());
  }
}

void PoolCore::FailItems(const std::shared_ptr<Job>& job, size_t first, size_t count,
                         StatusCode code, const std::string& message) {
  for (size_t i = first; i < first + count; ++i) {
    ItemResult r;
    r.code = code;
    r.error = message;
    job->Put(i, std::move(r));
  }
  job->done += count;
  stats.tasks_failed += count;
  JobMoved(*job);
}

void PoolCore::Dispatch(std::vector<Ring>* defer_wakes) {
  if (jobs.empty() && retries.empty()) return;
  for (Worker& w : workers) {
    while (w.alive && w.ready && !w.timed_out &&
           static_cast<int>(w.in_flight.size()) < opts.max_in_flight_per_worker) {
      // Retries first, then the oldest job this worker may take.
      std::shared_ptr<Job> job;
      size_t first = 0, count = 0;
      int attempt = 0;
      // A retry of a job meant for one worker (Broadcast) waits for that one.
      auto retry = std::find_if(retries.begin(), retries.end(), [&](const Retry& r) {
        return r.job->target_worker < 0 || r.job->target_worker == w.index;
      });
      if (retry != retries.end()) {
        job = retry->job;
        first = retry->first;
        count = retry->count;
        attempt = retry->attempt;
        retries.erase(retry);
      } else {
        // An unordered job whose caller has not taken its results yet gets no
        // more work until it does: results never pile up without bound.
        auto it = std::find_if(jobs.begin(), jobs.end(), [&](const std::shared_ptr<Job>& j) {
          return (j->target_worker < 0 || j->target_worker == w.index) &&
                 (j->keep_order || j->completed->size() < kMaxUntakenResults);
        });
        if (it == jobs.end()) break;
        job = *it;
        first = job->next;
        count = std::min({job->chunk, job->ramp, job->n - job->next});
        job->ramp = std::min(job->chunk, job->ramp * 2);
        job->next += count;
        if (job->next == job->n) jobs.erase(it);
      }
      MessageWriter& msg = dispatch_msg;
      msg.Clear();
      InFlight f;
      f.job = job;
      f.first = first;
      f.attempt = attempt;
      f.nonce = ++chunks_sent;
      msg.U8(kRun);
      msg.U64(job->seq);
      msg.U64(f.nonce);
      msg.U32(job->task);
      msg.U64(first);
      size_t count_at = msg.Placeholder32();
      size_t sent = 0;
      while (sent < count) {
        std::span<const std::byte> bytes = job->arg;
        ObjectId ref = job->arg_ref;
        ObjectId made;  // the store object encoding made for this item, if any
        Status st;
        if (job->encode) {
          st = job->encode(first + sent, &encode_scratch, &made);
          bytes = encode_scratch;
          ref = made;
        }
        if (!st.ok()) {
          // An argument that cannot be encoded fails alone; the items before
          // it go now, the ones after it in a later chunk.
          if (sent > 0) break;
          FailItems(job, first, 1, st.code(), st.message());
          f.first = ++first;
          --count;
          continue;
        }
        if (msg.size() + bytes.size() + 32 > w.requests.max_message()) {
          if (!made.is_nil()) (void)store->Delete(made);
          break;  // the rest go in the next chunk
        }
        if (ref.is_nil()) {
          msg.U8(0);
          msg.Varint(bytes.size());
          msg.Raw(bytes.data(), bytes.size());
        } else {
          msg.U8(1);
          msg.Id(ref);
        }
        if (!made.is_nil()) {
          f.arg_refs.resize(sent);  // nil for the inline ones before it
          f.arg_refs.push_back(made);
        }
        ++sent;
      }
      if (sent < count) {
        // Put the rest back at the front.
        retries.push_front({job, first + sent, count - sent, attempt});
      }
      if (sent == 0) continue;
      f.count = sent;
      msg.Patch32(count_at, static_cast<uint32_t>(sent));
      if (!w.requests.TryPush(msg.bytes(), /*wake=*/defer_wakes == nullptr)) {
        // Cannot happen while in-flight chunks are bounded; be safe anyway.
        retries.push_front({job, first, sent, attempt});
        DeleteRefs(f.arg_refs);
        break;
      }
      w.in_flight.push_back(std::move(f));
      if (defer_wakes) defer_wakes->push_back(w.requests);
    }
  }
}

// A Done message from worker `w`: results for the oldest chunk it holds.
void PoolCore::Complete(Worker& w, MessageReader& in) {
  uint64_t job_id, first;
  uint32_t count;
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "zcstore pool: worker %d sent a malformed answer (%s); stopping it\n",
                 w.index, what);
    platform::KillProcess(w.pid, SIGKILL);
  };
  if (!in.U64(&job_id) || !in.U64(&first) || !in.U32(&count)) return fail("header");
  if (w.in_flight.empty()) return fail("nothing in flight");
  InFlight& f = w.in_flight.front();
  if (job_id != f.job->seq || first != f.first || count > f.count) {
    return fail("not the chunk in flight");
  }
  Job& job = *f.job;
  for (uint32_t k = 0; k < count; ++k) {
    uint8_t code, is_ref;
    uint64_t len = 0;
    std::span<const std::byte> bytes;
    ItemResult r;
    if (!in.U8(&code) || !in.U8(&is_ref) || code > static_cast<uint8_t>(StatusCode::kIOError)) {
      return fail("item");
    }
    r.code = static_cast<StatusCode>(code);
    if (is_ref) {
      if (!in.Id(&r.ref)) return fail("item id");
    } else {
      if (!in.Varint(&len) || !in.Bytes(len, &bytes)) return fail("item bytes");
      if (r.code == StatusCode::kOk) {
        r.bytes.assign(bytes.begin(), bytes.end());
      } else {
        r.error = "task '" + TaskName(job.task) + "' on worker " + std::to_string(w.index) + ": " +
                  std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      }
    }
    size_t index = first + k;
    if (r.code == StatusCode::kOk)
      ++stats.tasks_done;
    else
      ++stats.tasks_failed;
    if ((job.cancelled || job.dropped) && !r.ref.is_nil()) {
      (void)store->Delete(r.ref);
      r.ref = ObjectId{};
    }
    job.Put(index, std::move(r));
    ++job.done;
    if (k < f.arg_refs.size() && !f.arg_refs[k].is_nil()) (void)store->Delete(f.arg_refs[k]);
  }
  JobMoved(job);
  w.quick_deaths = 0;
  f.first += count;
  f.count -= count;
  f.arg_refs.erase(f.arg_refs.begin(),
                   f.arg_refs.begin() + std::min<size_t>(count, f.arg_refs.size()));
  if (f.count == 0) w.in_flight.pop_front();
}

void PoolCore::HandleDeath(Worker& w) {
  int status = 0;
  platform::ReapResult reaped = platform::TryReap(w.pid, w.pidfd, &status);
  if (reaped == platform::ReapResult::kRunning) return;
  ReadLogs(w);
  std::string how = "worker " + std::to_string(w.index) + " (pid " + std::to_string(w.pid) + ") " +
                    (reaped == platform::ReapResult::kReaped
                         ? platform::DescribeExit(status)
                         : "exited (how is unknown: the program ignores SIGCHLD or reaps its "
                           "children itself)");
  // Only the item the worker was running fails (or is retried); whatever it
  // had not started, or finished without reporting, runs again elsewhere.
  uint64_t cur_job = w.requests.header()->current_job.load(std::memory_order_acquire);
  uint64_t cur_item = w.requests.header()->current_item.load(std::memory_order_acquire);
  bool blamed = false;
  for (InFlight& f : w.in_flight) {
    DeleteRefs(f.arg_refs);
    // Results it stored but never reported are nobody's: delete them.
    for (size_t k = 0; k < f.count; ++k) (void)store->Delete(ResultId(f.nonce, f.first + k));
    bool running_here = !blamed && cur_job == f.job->seq && cur_item >= f.first &&
                        cur_item < f.first + f.count;
    if (!running_here) {
      retries.push_back({f.job, f.first, f.count, f.attempt});
      continue;
    }
    blamed = true;
    size_t item = static_cast<size_t>(cur_item);
    if (item > f.first) retries.push_back({f.job, f.first, item - f.first, f.attempt});
    if (item + 1 < f.first + f.count) {
      retries.push_back({f.job, item + 1, f.first + f.count - item - 1, f.attempt});
    }
    std::string task = "task '" + TaskName(f.job->task) + "'";
    if (w.timed_out) {
      FailItems(f.job, item, 1, StatusCode::kTimeout,
                task + " ran longer than " + std::to_string(opts.task_timeout.count()) + " ms; " +
                    how + " after being stopped");
    } else if (f.attempt < opts.max_retries && !stop) {
      retries.push_back({f.job, item, 1, f.attempt + 1});
    } else {
      FailItems(f.job, item, 1, StatusCode::kWorkerCrashed, how + " while running " + task);
    }
  }
  w.in_flight.clear();
  w.pending_detaches.clear();  // its replacement has attached nothing yet
  platform::CloseFile(w.pidfd);
  platform::CloseFile(w.log_fd);
  w.pidfd = w.log_fd = -1;
  w.alive = false;
  bool starting = hellos < n && start_status.ok();
  if (starting && !w.ready) {
    start_status = WorkerCrashed(how + " before it reported in (see its log above)");
    started_cv.notify_all();
    return;
  }
  // A restart budget: deaths without an answer count only while each comes
  // within restart_window of the last.
  auto now = Clock::now();
  w.quick_deaths = now - w.last_death < opts.restart_window ? w.quick_deaths + 1 : 1;
  w.last_death = now;
  if (stop || !start_status.ok()) {
    // Shutting down: nothing to replace.
  } else if (w.quick_deaths >= opts.max_quick_deaths) {
    std::string why = "it died " + std::to_string(w.quick_deaths) +
                      " times without answering, each within " +
                      std::to_string(opts.restart_window.count()) + " ms of the last (last: " +
                      how + ")";
    std::fprintf(stderr, "zcstore pool: not replacing worker %d: %s\n", w.index, why.c_str());
    Retire(w, why);
  } else {
    ++stats.workers_replaced;
    if (Status st = Spawn(w); !st.ok()) {
      std::fprintf(stderr, "zcstore pool: cannot replace worker %d: %s\n", w.index,
                   st.ToString().c_str());
      Retire(w, "it could not be replaced (" + st.ToString() + ")");
    }
  }
}

void PoolCore::Retire(Worker& w, const std::string& why) {
  w.retired = true;
  std::string because = "worker " + std::to_string(w.index) + " was retired: " + why;
  // Work meant for this worker alone (Broadcast) can never run.
  for (auto it = retries.begin(); it != retries.end();) {
    if (it->job->target_worker == w.index) {
      FailItems(it->job, it->first, it->count, StatusCode::kWorkerCrashed, because);
      it = retries.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = jobs.begin(); it != jobs.end();) {
    std::shared_ptr<Job> j = *it;
    if (j->target_worker == w.index) {
      FailItems(j, j->next, j->n - j->next, StatusCode::kWorkerCrashed, because);
      j->next = j->n;
      it = jobs.erase(it);
    } else {
      ++it;
    }
  }
  if (std::none_of(workers.begin(), workers.end(), [](const Worker& x) { return x.alive; })) {
    // Nobody left to run anything: fail what waits, and what comes later, at
    // once rather than hang.
    no_workers = "the pool has no worker left (" + because + ")";
    for (Retry& r : retries) FailItems(r.job, r.first, r.count, StatusCode::kWorkerCrashed, no_workers);
    retries.clear();
    for (auto& j : jobs) {
      FailItems(j, j->next, j->n - j->next, StatusCode::kWorkerCrashed, no_workers);
      j->next = j->n;
    }
    jobs.clear();
  }
}

void PoolCore::ReadLogs(Worker& w) {
  if (w.log_fd < 0) return;
  char buf[16384];
  while (true) {
    ssize_t got = read(w.log_fd, buf, sizeof(buf));
    if (got <= 0) {
      if (got < 0 && errno == EINTR) continue;
      // EAGAIN: all that is written is read. For a dead worker that is all it
      // wrote (a descendant may hold the pipe open for ever: never wait).
      break;
    }
    w.partial_line.append(buf, static_cast<size_t>(got));
    size_t start = 0, nl;
    std::lock_guard<std::mutex> lock(log_mu);
    while ((nl = w.partial_line.find('\n', start)) != std::string::npos ||
           w.partial_line.size() - start > 65536) {
      size_t end = nl == std::string::npos ? start + 65536 : nl;
      ++stats.log_lines;
      if (log_lines.size() < opts.max_log_lines) {
        log_lines.emplace_back(w.index, w.partial_line.substr(start, end - start));
      } else {
        ++stats.log_lines_dropped;
      }
      start = nl == std::string::npos ? end : nl + 1;
    }
    w.partial_line.erase(0, start);
  }
}

void PoolCore::DeliverLogs() {
  std::deque<std::pair<int, std::string>> lines;
  {
    std::lock_guard<std::mutex> lock(log_mu);
    lines.swap(log_lines);
  }
  for (auto& [worker, line] : lines) {
    if (opts.log_sink) {
      opts.log_sink(worker, line);
    } else {
      std::fprintf(stderr, "%s[worker %d] %s\n", progress_shown ? "\r\033[K" : "", worker,
                   line.c_str());
    }
  }
}

void PoolCore::Progress(bool final) {
  std::lock_guard<std::mutex> progress_lock(progress_mu);
  uint64_t done = 0, total = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& j : tracked) {
      done += j->done;
      total += j->n;
    }
    if (tracked.empty()) return;
    bool all_done = done == total;
    if (all_done) tracked.clear();
    final = final || all_done;
  }
  if (opts.progress) opts.progress(done, total);
  if (!opts.progress_bar || !isatty(2)) return;
  double elapsed = std::chrono::duration<double>(Clock::now() - progress_start).count();
  double rate = elapsed > 0 ? done / elapsed : 0;
  double eta = rate > 0 ? (total - done) / rate : 0;
  int width = 30, filled = total ? static_cast<int>(width * done / total) : 0;
  std::fprintf(stderr, "\r[%s%s] %llu/%llu  %.0f/s  ETA %.0fs ", std::string(filled, '#').c_str(),
               std::string(width - filled, ' ').c_str(), static_cast<unsigned long long>(done),
               static_cast<unsigned long long>(total), rate, eta);
  progress_shown = !final;
  if (final) std::fprintf(stderr, "\n");
}

bool PoolCore::DrainLocked() {
  bool any = false;
  std::vector<std::byte>& msg = drain_buffer;
  for (Worker& w : workers) {
    Status corrupt;
    while (w.alive && w.responses.TryPop(&msg, &corrupt)) {
      any = true;
      MessageReader in(msg);
      uint8_t kind = 0;
      in.U8(&kind);
      if (kind == kDone) {
        Complete(w, in);
      } else if (kind == kHello) {
        uint32_t pid = 0, index = 0;
        uint64_t hash = 0;
        in.U32(&pid);
        in.U64(&hash);
        in.U32(&index);
        if (hash != RegistryHash() || static_cast<int>(index) != w.index) {
          start_status = VersionMismatch(
              "worker " + std::to_string(w.index) + " ('" + exe + "', pid " + std::to_string(pid) +
              ") has another task registry than this program: it is another build; "
              "rebuild both, or point worker_executable at this build");
          platform::KillProcess(w.pid, SIGKILL);
        } else if (!w.ready) {
          w.ready = true;
          ++hellos;
        }
        started_cv.notify_all();
      }
    }
    if (!corrupt.ok()) platform::KillProcess(w.pid, SIGKILL);
  }
  if (any) {
    for (Worker& w : workers) SendDetaches(w);
    Dispatch();  // answers free room, and a hello brings a worker
  }
  return any;
}

void PoolCore::Run() {
  {
    std::lock_guard<std::mutex> lock(mu);
    for (Worker& w : workers) {
      if (Status st = Spawn(w); !st.ok()) {
        start_status = st;
        started_cv.notify_all();
        break;
      }
    }
  }
  std::vector<pollfd> fds;
  std::vector<int> owner;  // worker index per fd, -1 for the doorbell
  auto last_progress = Clock::now();
  while (true) {
    fds.clear();
    owner.clear();
    fds.push_back({doorbell, POLLIN, 0});
    owner.push_back(-1);
    int timeout_ms = 100;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (Worker& w : workers) {
        if (w.pidfd >= 0) {
          fds.push_back({w.pidfd, POLLIN, 0});
          owner.push_back(w.index);
        }
        if (w.log_fd >= 0) {
          fds.push_back({w.log_fd, POLLIN, 0});
          owner.push_back(w.index);
        }
        if (auto deadline = Deadline(w); deadline != Clock::time_point::max()) {
          auto left =
              std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
          timeout_ms = static_cast<int>(std::clamp<int64_t>(left + 1, 0, timeout_ms));
        }
      }
    }
    poll(fds.data(), fds.size(), timeout_ms);
    platform::DrainDoorbell(doorbell);
    {
      std::lock_guard<std::mutex> lock(mu);
      DrainLocked();
      bool any_death = false;
      for (size_t i = 0; i < fds.size(); ++i) {
        if (owner[i] >= 0 && fds[i].fd == workers[owner[i]].pidfd && (fds[i].revents & POLLIN)) {
          HandleDeath(workers[owner[i]]);
          any_death = true;
        }
      }
      auto now = Clock::now();
      for (Worker& w : workers) {
        if (w.alive && !w.timed_out && Deadline(w) <= now) {
          w.timed_out = true;
          platform::KillProcess(w.pid, SIGKILL);
        }
      }
      if (any_death) Dispatch();  // re-queued items, and the replacement may take them
      bool idle = jobs.empty() && retries.empty() &&
                  std::all_of(workers.begin(), workers.end(),
                              [](const Worker& w) { return w.in_flight.empty(); });
      if (stop && idle) break;
      if (!start_status.ok() && hellos < n) break;
    }
    for (Worker& w : workers) ReadLogs(w);
    DeliverLogs();
    if (Clock::now() - last_progress > std::chrono::milliseconds(100)) {
      Progress(false);
      last_progress = Clock::now();
    }
  }
  Progress(true);
  // Stop the workers: ask, wait up to 2 s, then SIGKILL; reap every one.
  std::vector<Worker*> alive;
  {
    std::lock_guard<std::mutex> lock(mu);
    MessageWriter bye;
    bye.U8(kStop);
    for (Worker& w : workers) {
      if (w.alive) {
        (void)w.requests.TryPush(bye.bytes());
        alive.push_back(&w);
      }
    }
  }
  auto deadline = Clock::now() + std::chrono::seconds(2);
  for (Worker* w : alive) {
    if (w->thread.joinable()) {
      w->thread.join();
      continue;
    }
    int status;
    while (platform::TryReap(w->pid, w->pidfd, &status) == platform::ReapResult::kRunning) {
      if (Clock::now() > deadline) {
        platform::KillProcess(w->pid, SIGKILL);
        deadline = Clock::time_point::max();
      }
      pollfd p{w->pidfd, POLLIN, 0};
      poll(&p, 1, 50);
    }
    ReadLogs(*w);
    platform::CloseFile(w->pidfd);
    platform::CloseFile(w->log_fd);
    w->pidfd = w->log_fd = -1;
    w->alive = false;
  }
  DeliverLogs();
  if (stats.log_lines_dropped > 0) {
    std::fprintf(stderr,
                 "zcstore pool: %llu log lines from workers were dropped (max_log_lines %zu)\n",
                 static_cast<unsigned long long>(stats.log_lines_dropped), opts.max_log_lines);
  }
  std::lock_guard<std::mutex> lock(mu);
  finished = true;
  started_cv.notify_all();
}

std::mutex& JobsMutex(PoolCore* core) { return core->mu; }

void DropJob(PoolCore* core, std::shared_ptr<Job> job) {
  std::lock_guard<std::mutex> lock(core->mu);
  job->dropped = true;
  for (ItemResult& r : job->results) {
    if (!r.ref.is_nil()) (void)core->store->Delete(r.ref);
    r.ref = ObjectId{};
  }
}

void PoolCore::JobMoved(Job& job) {
  if (job.done == job.n && job.owns_arg_ref && !job.arg_ref.is_nil()) {
    (void)store->Delete(job.arg_ref);
    job.arg_ref = ObjectId{};
  }
  if (job.sleepers == 0) return;
  ControlHeader* c = Header(control);
  c->answer_seq.fetch_add(1, std::memory_order_release);
  platform::FutexWake(reinterpret_cast<uint32_t*>(&c->answer_seq));
}

// A waiting caller takes the workers' answers itself and dispatches the work
// they make room for, so an answer costs one wake-up: the caller's. It tells
// the workers how to reach it through the control header (pool_internal.h);
// each registration is followed by a fence and a drain, which pairs with the
// fence in the worker's Send: either the drain sees the answer, or the worker
// sees the registration. Callers of another job that this one's drain
// completes are woken through `Job::sleepers`; the pool thread does the same
// for deaths and timeouts.
namespace {
// Registers (delta 1) or unregisters (-1) a caller in a control header
// counter, then fences: pairs with the fence in the worker's Send.
void Enter(std::atomic<uint32_t>& counter, int delta) {
  counter.fetch_add(static_cast<uint32_t>(delta), std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
}  // namespace

void PoolCore::WakeWorkers(const std::vector<Ring>& rings) {
  if (rings.empty()) return;
  // A woken worker may take this CPU at once and answer before we wait for
  // it. Count as a spinning caller meanwhile, so that the worker leaves the
  // answer to us rather than ringing for the pool thread, and take what came.
  ControlHeader* c = Header(control);
  Enter(c->callers_spinning, 1);
  for (const Ring& r : rings) r.WakeConsumer();
  Enter(c->callers_spinning, -1);
  if (AnswersWaiting()) {
    std::lock_guard<std::mutex> lock(mu);
    DrainLocked();
  }
}

template <typename Ready>
void PoolCore::WaitFor(Job& job, std::unique_lock<std::mutex>& lock, Ready ready) {
  if (ready()) return;
  ControlHeader* c = Header(control);
  if (opts.spin_us > 0) {
    // Poll the rings without the lock, and take it only when an answer is
    // there, or every 64 rounds (another caller may have done our work; the
    // clock is read then too).
    Enter(c->callers_spinning, 1);
    auto until = Clock::now() + std::chrono::microseconds(opts.spin_us);
    lock.unlock();
    for (uint32_t round = 1;; ++round) {
      bool answers = AnswersWaiting();
      bool tick = round % 64 == 0;
      if (answers || tick) {
        lock.lock();
        if (answers) DrainLocked();
        if (ready() || (tick && Clock::now() >= until)) break;
        lock.unlock();
      }
      CpuRelax();
    }
    if (ready()) {
      Enter(c->callers_spinning, -1);
      DrainLocked();  // answers whose wake-up was skipped while we spun
      return;
    }
  }
  Enter(c->callers_sleeping, 1);
  if (opts.spin_us > 0) Enter(c->callers_spinning, -1);
  while (true) {
    uint32_t seen = c->answer_seq.load(std::memory_order_acquire);
    DrainLocked();
    if (ready()) break;
    ++job.sleepers;
    lock.unlock();
    // Bounded only as a safety net: every answer, death or cancellation
    // bumps the word.
    bool woken = platform::FutexWait(reinterpret_cast<uint32_t*>(&c->answer_seq), seen, 1000);
    lock.lock();
    --job.sleepers;
    if (!woken && (DrainLocked() || ready())) ++stats.late_wakeups;
  }
  Enter(c->callers_sleeping, -1);
  DrainLocked();  // answers whose doorbell was skipped while we slept
}

void WaitJob(PoolCore* core, Job& job) {
  std::unique_lock<std::mutex> lock(core->mu);
  core->WaitFor(job, lock, [&] { return job.done == job.n; });
}
Store& CoreStore(PoolCore* core) { return *core->store; }

void CancelJob(PoolCore* core, Job& job) {
  std::lock_guard<std::mutex> lock(core->mu);
  if (job.cancelled) return;
  job.cancelled = true;
  size_t left = job.n - job.next;
  for (size_t i = job.next; i < job.n; ++i) {
    ItemResult r;
    r.code = StatusCode::kCancelled;
    r.error = "task '" + core->TaskName(job.task) + "' was cancelled before it started";
    job.Put(i, std::move(r));
  }
  job.done += left;
  job.next = job.n;
  core->jobs.erase(std::remove_if(core->jobs.begin(), core->jobs.end(),
                                  [&](const std::shared_ptr<Job>& j) { return j.get() == &job; }),
                   core->jobs.end());
  core->JobMoved(job);
}

}  // namespace internal

using internal::PoolCore;

Result<std::unique_ptr<Pool>> Pool::Create(const PoolOptions& options) {
  if (options.max_in_flight_per_worker < 1) {
    return InvalidArgument("max_in_flight_per_worker must be at least 1");
  }
  std::unique_ptr<Pool> pool(new Pool());
  pool->core_ = std::make_shared<PoolCore>(options);
  PoolCore& c = *pool->core_;
  if (Status st = c.Init(); !st.ok()) return st;
  c.thread = std::thread([&c] { c.Run(); });
  std::unique_lock<std::mutex> lock(c.mu);
  bool in_time = c.started_cv.wait_for(lock, options.start_timeout, [&] {
    return c.hellos == c.n || !c.start_status.ok() || c.finished;
  });
  Status st = c.start_status;
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
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->stop = true;
    for (auto& r : core_->retries) {
      core_->FailItems(r.job, r.first, r.count, StatusCode::kCancelled, "the pool was shut down");
    }
    core_->retries.clear();
  }
  auto pending = core_->jobs;
  for (auto& j : pending) internal::CancelJob(core_.get(), *j);
  internal::platform::RingDoorbell(core_->doorbell);
  if (core_->thread.joinable()) core_->thread.join();
  return Status::OK();
}

Result<uint32_t> Pool::TaskIndex(std::string_view name, const std::string& arg_type,
                                 const std::string& result_type) {
  const auto& r = internal::Registry();
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

std::shared_ptr<internal::Job> Pool::StartMap(
    uint32_t task, size_t n, size_t chunk, bool keep_order, bool track,
    std::function<Status(size_t, std::vector<std::byte>*, ObjectId*)> encode) {
  auto job = std::make_shared<internal::Job>();
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
  if (c.opts.task_timeout.count() > 0) job->chunk = 1;  // a deadline per task
  // The workers are woken after the lock is let go: a wake-up is a slow
  // system call, and the woken worker may preempt us on this CPU.
  thread_local std::vector<internal::Ring> wakes;
  wakes.clear();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.stop) {
      c.FailItems(job, 0, job->n, StatusCode::kCancelled, "the pool is shut down");
      return;
    }
    if (!c.no_workers.empty()) {
      c.FailItems(job, 0, job->n, StatusCode::kWorkerCrashed, c.no_workers);
      return;
    }
    if (job->target_worker >= 0 && c.workers[job->target_worker].retired) {
      c.FailItems(job, 0, job->n, StatusCode::kWorkerCrashed,
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
  std::unique_lock<std::mutex> lock(core_->mu);
  auto& completed = *job.completed;
  core_->WaitFor(job, lock, [&] { return !completed.empty() || job.done == job.n; });
  if (completed.empty()) {
    lock.unlock();
    core_->Progress(false);  // the final bar before the caller prints anything
    return false;
  }
  *index = completed.front().first;
  *result = std::move(completed.front().second);
  completed.pop_front();
  if (completed.size() + 1 == internal::kMaxUntakenResults) core_->Dispatch();  // room again
  return true;
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

void Pool::CancelAll() {
  std::vector<std::shared_ptr<internal::Job>> pending;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    pending.assign(core_->jobs.begin(), core_->jobs.end());
  }
  for (auto& j : pending) internal::CancelJob(core_.get(), *j);
}

PoolStats Pool::Stats() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  std::lock_guard<std::mutex> log_lock(core_->log_mu);
  PoolStats s = core_->stats;
  s.workers = core_->n;
  return s;
}

int Pool::workers() const { return core_->n; }
Store& Pool::store() { return *core_->store; }

std::vector<pid_t> Pool::worker_pids() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  std::vector<pid_t> pids;
  for (auto& w : core_->workers) pids.push_back(w.alive ? w.pid : 0);
  return pids;
}

}  // namespace zcstore
