// Completion: the workers' answers (Done and Hello messages), failing
// items, and the callers that wait for them. A waiting caller takes the
// answers itself, so an answer costs one wake-up: the caller's.
#include <signal.h>

#include <algorithm>
#include <cstdio>

#include "pool/pool_core_internal.h"
#include "store/platform_internal.h"

namespace zcstore::internal {

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
  if (any) Dispatch();  // answers free room, and a hello brings a worker
  return any;
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
    if (!in.U8(&code) || !in.U8(&is_ref) || code > static_cast<uint8_t>(kLastStatusCode)) {
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
        r.error = "task '" + TaskName(job) + "' on worker " + std::to_string(w.index) + ": " +
                  std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      }
    }
    size_t index = first + k;
    if (k < f.arg_refs.size() && !f.arg_refs[k].is_nil()) (void)store->Delete(f.arg_refs[k]);
    if (index >= f.withdrawn_from) {
      // Withdrawn: the parent failed or re-queued it already. (A result
      // stored anyway, by a worker that ran it regardless, is nobody's.)
      if (!r.ref.is_nil()) (void)store->Delete(r.ref);
      continue;
    }
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
  }
  JobMoved(job);
  NoteTaskEnded();
  w.quick_deaths = 0;
  f.first += count;
  f.count -= count;
  f.arg_refs.erase(f.arg_refs.begin(),
                   f.arg_refs.begin() + std::min<size_t>(count, f.arg_refs.size()));
  if (f.count == 0) PopInFlight(w);
}

void PoolCore::PopInFlight(Worker& w) {
  w.claims_used &= ~(uint64_t{1} << w.in_flight.front().slot);
  w.in_flight.pop_front();
}

size_t PoolCore::Withdraw(Worker& w, InFlight& f) {
  if (f.withdrawn_from != SIZE_MAX) return f.withdrawn_from;
  uint64_t claimed = w.claims[f.slot].fetch_or(kWithdrawn, std::memory_order_acq_rel);
  // The worker's count is not trusted past the chunk's end.
  uint64_t started = std::min<uint64_t>(claimed & ~kWithdrawn, f.first + f.count - f.base);
  f.withdrawn_from = f.base + started;
  return f.withdrawn_from;
}

bool PoolCore::RunningLocked(const Job& job) const {
  if (job.done == job.n) return false;
  for (const Worker& w : workers) {
    for (const InFlight& f : w.in_flight) {
      if (f.job.get() != &job) continue;
      // Started and not yet answered: between f.first and what was claimed.
      uint64_t claimed = w.claims[f.slot].load(std::memory_order_acquire) & ~kWithdrawn;
      if (f.base + claimed > f.first && f.first < f.withdrawn_from) return true;
    }
  }
  return false;
}

void PoolCore::FailItems(Job& job, size_t first, size_t count, StatusCode code,
                         const std::string& message) {
  for (size_t i = first; i < first + count; ++i) {
    ItemResult r;
    r.code = code;
    r.error = message;
    job.Put(i, std::move(r));
  }
  job.done += count;
  stats.tasks_failed += count;
  JobMoved(job);
  NoteTaskEnded();
}

void PoolCore::NoteTaskEnded() {
  if (first_end != Clock::time_point::max()) return;
  first_end = Clock::now();
  // Whoever took the answer, the pool thread starts the late workers.
  if (launched < workers.size()) platform::RingDoorbell(doorbell);
}

void PoolCore::DeleteRefs(std::vector<ObjectId>& refs) {
  for (ObjectId id : refs) {
    if (!id.is_nil()) (void)store->Delete(id);
  }
  refs.clear();
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
bool PoolCore::WaitFor(std::span<Job* const> jobs, std::unique_lock<std::mutex>& lock, Ready ready,
                       Clock::time_point deadline, int spin_us) {
  if (ready()) return true;
  ControlHeader* c = Header(control);
  spin_us = std::max(spin_us, opts.spin_us);
  if (spin_us > 0) {
    // Poll the rings without the lock, and take it only when an answer is
    // there, or every 64 rounds (another caller may have done our work; the
    // clock is read then too).
    Enter(c->callers_spinning, 1);
    auto until = std::min(deadline, Clock::now() + std::chrono::microseconds(spin_us));
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
    if (ready() || Clock::now() >= deadline) {
      Enter(c->callers_spinning, -1);
      DrainLocked();  // answers whose wake-up was skipped while we spun
      return ready();
    }
  }
  Enter(c->callers_sleeping, 1);
  if (spin_us > 0) Enter(c->callers_spinning, -1);
  while (true) {
    uint32_t seen = c->answer_seq.load(std::memory_order_acquire);
    DrainLocked();
    if (ready()) break;
    // Bounded as a safety net (every answer, death or cancellation bumps
    // the word), or by the caller's deadline (the clock is read only then).
    int timeout_ms = 1000;
    if (deadline != Clock::time_point::max()) {
      auto now = Clock::now();
      if (now >= deadline) break;
      int64_t left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
      timeout_ms = static_cast<int>(std::min<int64_t>(1000, left));
    }
    for (Job* j : jobs) ++j->sleepers;
    lock.unlock();
    bool woken = platform::FutexWait(reinterpret_cast<uint32_t*>(&c->answer_seq), seen, timeout_ms);
    lock.lock();
    for (Job* j : jobs) --j->sleepers;
    if (!woken && timeout_ms == 1000 && (DrainLocked() || ready())) ++stats.late_wakeups;
  }
  Enter(c->callers_sleeping, -1);
  DrainLocked();  // answers whose doorbell was skipped while we slept
  return ready();
}

bool WaitJobUntil(PoolCore* core, Job& job, std::chrono::steady_clock::time_point deadline,
                  int spin_us) {
  std::unique_lock<std::mutex> lock(core->mu);
  Job* one[] = {&job};
  return core->WaitFor(std::span<Job* const>(one), lock, [&] { return job.done == job.n; }, deadline,
                       spin_us);
}

size_t WaitAnyJob(PoolCore* core, std::span<Job* const> jobs,
                  std::chrono::steady_clock::time_point deadline, int spin_us,
                  const std::atomic<bool>* stop) {
  std::unique_lock<std::mutex> lock(core->mu);
  size_t first = SIZE_MAX;
  auto any = [&] {
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (jobs[i]->done == jobs[i]->n) {
        first = i;
        return true;
      }
    }
    return false;
  };
  // Stopped: seen by WaitFor as ready, so it returns (Pool::WakeWaiters).
  core->WaitFor(jobs, lock, [&] { return any() || (stop != nullptr && stop->load()); }, deadline,
                spin_us);
  return any() ? first : SIZE_MAX;
}

void WaitJob(PoolCore* core, Job& job) { (void)WaitJobUntil(core, job, Clock::time_point::max()); }
Store& CoreStore(PoolCore* core) { return *core->store; }

bool CancelJob(PoolCore* core, Job& job) {
  std::lock_guard<std::mutex> lock(core->mu);
  if (job.cancelled) return job.cancel_won;
  if (job.done == job.n) return false;  // finished: nothing to cancel
  job.cancelled = true;
  bool started = job.done > 0;  // an item was answered (or failed) already
  std::string why = "task '" + core->TaskName(job) + "' was cancelled before it started";
  auto cancel = [&](size_t first, size_t count) {
    if (count == 0) return;
    core->FailItems(job, first, count, StatusCode::kCancelled, why);
  };
  // Sent to a worker: what it has not started is withdrawn.
  for (Worker& w : core->workers) {
    for (InFlight& f : w.in_flight) {
      if (f.job.get() != &job) continue;
      size_t from = core->Withdraw(w, f);
      started = started || from > f.first;
      cancel(std::max(from, f.first), f.first + f.count - std::max(from, f.first));
    }
  }
  // Re-queued after a death, or waiting for its first dispatch.
  for (auto it = core->retries.begin(); it != core->retries.end();) {
    if (it->job.get() == &job) {
      cancel(it->first, it->count);
      it = core->retries.erase(it);
    } else {
      ++it;
    }
  }
  cancel(job.next, job.n - job.next);
  job.next = job.n;
  core->jobs.erase(std::remove_if(core->jobs.begin(), core->jobs.end(),
                                  [&](const std::shared_ptr<Job>& j) { return j.get() == &job; }),
                   core->jobs.end());
  core->JobMoved(job);
  job.cancel_won = !started;
  return job.cancel_won;
}

bool JobRunning(PoolCore* core, const Job& job) {
  std::lock_guard<std::mutex> lock(core->mu);
  return core->RunningLocked(job);
}

bool TakeNext(PoolCore* core, Job& job, size_t* index, ItemResult* result) {
  std::unique_lock<std::mutex> lock(core->mu);
  auto& completed = *job.completed;
  Job* one[] = {&job};
  core->WaitFor(std::span<Job* const>(one), lock,
                [&] { return !completed.empty() || job.done == job.n; }, Clock::time_point::max());
  if (completed.empty()) return false;
  *index = completed.front().first;
  *result = std::move(completed.front().second);
  completed.pop_front();
  if (completed.size() + 1 == kMaxUntakenResults) core->Dispatch();  // room again
  return true;
}

}  // namespace zcstore::internal

namespace zcstore {

bool TaskHandle::Running() const {
  auto core = core_.lock();
  auto job = job_.lock();
  return core && job && internal::JobRunning(core.get(), *job);
}

bool TaskHandle::Cancel() {
  auto core = core_.lock();
  auto job = job_.lock();
  return core && job && internal::CancelJob(core.get(), *job);
}

}  // namespace zcstore
