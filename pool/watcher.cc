// The watcher: the pool thread, which spawns the workers (so their death
// signal follows a thread that lives as long as the pool) and watches what
// can happen while nobody waits: answers (doorbell), deaths (pidfds), logs
// (pipes), timeouts and progress; and what a death does to the work.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "pool/pool_core_internal.h"
#include "store/platform_internal.h"

namespace zcstore::internal {

// Starts worker `w` (or restarts it). Runs on the pool thread, so that the
// workers' parent-death signal follows this long-lived thread.
Status PoolCore::Spawn(Worker& w) {
  w.requests.Reset();
  w.responses.Reset();
  w.ready = false;
  w.timed_out = false;
  w.partial_line.clear();
  w.spawned = Clock::now();
  if (opts.backend == PoolOptions::Backend::kThreads) {
    w.state = std::make_unique<WorkerState>();
    auto s = Store::OpenFd(store->fd());
    if (!s.ok()) return s.status();
    w.state->store = std::make_shared<Store>(std::move(*s));
    w.state->index = w.index;
    w.state->spin_us = opts.spin_us;
    w.state->control = Header(control);
    w.state->requests = w.requests;
    w.state->responses = w.responses;
    w.state->claims = Claims(control, n, w.index);
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
    const PoolOptions::ForkHooks& hooks = opts.fork_hooks;
    if (hooks.prepare) {
      if (Status st = hooks.prepare(); !st.ok()) {
        ::close(log[0]);
        ::close(log[1]);
        return st;
      }
    }
    pid_t pid = fork();
    if (pid == 0) {
      dup2(log[1], 1);
      dup2(log[1], 2);
      if (!platform::DieWithParent(parent)) _exit(0);
      auto s = Store::OpenFd(store->fd());
      if (!s.ok()) _exit(2);
      WorkerState ws;
      ws.store = std::make_shared<Store>(std::move(*s));
      if (hooks.child) hooks.child(ws.store);
      ws.index = w.index;
      ws.parent = parent;
      ws.spin_us = opts.spin_us;
      ws.control = Header(control);
      ws.requests = w.requests;
      ws.responses = w.responses;
      ws.claims = Claims(control, n, w.index);
      ws.doorbell = doorbell;
      int rc = WorkerLoop(ws);
      if (hooks.child_exit) hooks.child_exit();
      std::fflush(stdout);
      std::fflush(stderr);
      _exit(rc);  // no destructors of the parent's objects in the child
    }
    int fork_errno = errno;
    if (hooks.parent) hooks.parent();
    if (pid < 0) {
      ::close(log[0]);
      ::close(log[1]);
      return platform::ErrnoStatus(fork_errno, "fork");
    }
    w.pid = pid;
  } else {
    std::vector<std::string> argv = {exe};
    argv.insert(argv.end(), opts.worker_args.begin(), opts.worker_args.end());
    for (std::string a : {std::string(kWorkerFlag), std::to_string(w.index),
                          std::to_string(parent), std::to_string(opts.spin_us),
                          std::to_string(n)}) {
      argv.push_back(std::move(a));
    }
    auto pid = platform::SpawnProcess(argv,
                                      {{log[1], 1},
                                       {log[1], 2},
                                       {control_fd, kControlFd},
                                       {store->fd(), kStoreFd},
                                       {doorbell, kDoorbellFd}},
                                      {std::string(kWorkerEnv) + "=" + std::to_string(parent)});
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

Clock::time_point PoolCore::Deadline(const Worker& w) const {
  if (opts.backend == PoolOptions::Backend::kThreads || w.in_flight.empty()) {
    return Clock::time_point::max();
  }
  // Timed from when the worker started the task, not from when it was
  // queued behind others in its ring; per task, so chunks need not be of one.
  const InFlight& f = w.in_flight.front();
  std::chrono::milliseconds limit = TimeoutOf(*f.job);
  if (limit.count() <= 0) return Clock::time_point::max();
  const RingHeader* h = w.requests.header();
  uint64_t item = h->current_item.load(std::memory_order_acquire);
  int64_t started_ns = h->current_started_ns.load(std::memory_order_relaxed);
  if (h->current_job.load(std::memory_order_relaxed) != f.job->seq || item < f.first ||
      item >= f.first + f.count) {
    return Clock::time_point::max();  // not started yet
  }
  auto started = Clock::now() - std::chrono::nanoseconds(platform::MonotonicNanos() - started_ns);
  return started + limit;
}

void PoolCore::HandleDeath(Worker& w) {
  int status = 0;
  platform::ReapResult reaped = platform::TryReap(w.pid, w.pidfd, &status);
  if (reaped == platform::ReapResult::kRunning) return;
  ReadLogs(w, /*draining=*/true);
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
    // Withdrawn items were failed or re-queued when they were withdrawn.
    size_t end = f.live_end();
    if (end <= f.first) continue;
    bool running_here =
        !blamed && cur_job == f.job->seq && cur_item >= f.first && cur_item < end;
    if (!running_here) {
      retries.push_back({f.job, f.first, end - f.first, f.attempt});
      continue;
    }
    blamed = true;
    size_t item = static_cast<size_t>(cur_item);
    if (item > f.first) retries.push_back({f.job, f.first, item - f.first, f.attempt});
    if (item + 1 < end) retries.push_back({f.job, item + 1, end - item - 1, f.attempt});
    std::string task = "task '" + TaskName(*f.job) + "'";
    if (w.timed_out) {
      FailItems(*f.job, item, 1, StatusCode::kTimeout,
                task + " ran longer than " + std::to_string(TimeoutOf(*f.job).count()) + " ms; " +
                    how + " after being stopped");
    } else if (f.attempt < opts.max_retries && !stop) {
      retries.push_back({f.job, item, 1, f.attempt + 1});
    } else {
      FailItems(*f.job, item, 1, StatusCode::kWorkerCrashed, how + " while running " + task);
    }
  }
  w.in_flight.clear();
  w.claims_used = 0;
  w.pending_detaches.clear();  // its replacement has attached nothing yet
  platform::CloseFile(w.pidfd);
  platform::CloseFile(w.log_fd);
  w.pidfd = w.log_fd = -1;
  w.alive = false;
  // Before Create has returned, a death is its error, unless it waits only
  // for the first launch: then a death is the pool's to handle, as later.
  bool starting = hellos < n && !created && start_status.ok() &&
                  opts.create_waits_for != PoolOptions::StartWait::kFirstLaunch;
  if (starting && !w.ready) {
    start_status = WorkerCrashed(
        how + " before it reported in (see its log above; does '" + exe +
        "' call ZCSTORE_WORKER_MAIN(argc, argv) first thing in main?)");
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
      FailItems(*it->job, it->first, it->count, StatusCode::kWorkerCrashed, because);
      it = retries.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = jobs.begin(); it != jobs.end();) {
    std::shared_ptr<Job> j = *it;
    if (j->target_worker == w.index) {
      FailItems(*j, j->next, j->n - j->next, StatusCode::kWorkerCrashed, because);
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
    for (Retry& r : retries) FailItems(*r.job, r.first, r.count, StatusCode::kWorkerCrashed, no_workers);
    retries.clear();
    for (auto& j : jobs) {
      FailItems(*j, j->next, j->n - j->next, StatusCode::kWorkerCrashed, no_workers);
      j->next = j->n;
    }
    jobs.clear();
  }
}

void PoolCore::ReadLogs(Worker& w, bool draining) {
  if (w.log_fd < 0) return;
  char buf[16384];
  while (true) {
    // Back-pressure: while max_log_lines wait, the rest stays in the pipe,
    // and a worker that writes on waits for room. Only `draining` (a dead
    // worker's pipe; a shutdown whose lines wait for TakeLogLines) reads it
    // all, and drops what finds kDrainSlack more lines waiting: a dead
    // worker's pipe holds fewer, so only a taker that stopped taking loses
    // lines, never the pool its shutdown.
    if (!draining && LogsFull()) break;
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
      if (log_lines.size() < opts.max_log_lines + kDrainSlack) {
        log_lines.emplace_back(w.index, w.partial_line.substr(start, end - start));
      } else {
        ++stats.log_lines_dropped;
      }
      start = nl == std::string::npos ? end : nl + 1;
    }
    w.partial_line.erase(0, start);
  }
}

bool PoolCore::LogsFull() {
  std::lock_guard<std::mutex> lock(log_mu);
  return log_lines.size() >= opts.max_log_lines;
}

std::vector<std::pair<int, std::string>> PoolCore::TakeLogLines() {
  std::vector<std::pair<int, std::string>> out;
  bool was_full;
  {
    std::lock_guard<std::mutex> lock(log_mu);
    was_full = log_lines.size() >= opts.max_log_lines;
    out.reserve(log_lines.size());
    for (auto& l : log_lines) out.push_back(std::move(l));
    log_lines.clear();
  }
  if (was_full) platform::RingDoorbell(doorbell);  // read the workers' pipes again
  return out;
}

void PoolCore::DeliverLogs() {
  if (opts.take_logs) return;  // they wait for TakeLogLines
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

// Unless Create waits for every worker, as many workers start at first as
// there are CPUs (a fork: one), and the others one at a time from
// kLateStartGrace after a task first ended (or kLateStartDelay after one
// reported in, if none has). So the first result waits neither for a crowd
// of starting workers sharing the CPUs (8 spawned Python workers on 2 CPUs:
// 0.43 s all at once, 0.15 s as many as the CPUs, 0.10 s now) nor for the
// forks of the others, each holding the GIL and `mu` (8 forked Python
// workers: 13.6 ms when they were forked at the first report).
void PoolCore::LaunchFirst() {
  size_t first = std::max(1u, std::thread::hardware_concurrency());
  if (opts.backend == PoolOptions::Backend::kFork) first = 1;
  launched = opts.create_waits_for == PoolOptions::StartWait::kEveryWorker
                 ? workers.size()
                 : std::min(workers.size(), first);
  Launch(0, launched);
  launched_first = start_status.ok();
}

void PoolCore::Launch(size_t from, size_t to) {
  for (size_t i = from; i < to; ++i) {
    Status st = Spawn(workers[i]);
    if (st.ok()) continue;
    if (!created) {  // Create fails with it
      start_status = st;
      started_cv.notify_all();
      return;
    }
    std::fprintf(stderr, "zcstore pool: cannot start worker %zu: %s\n", i, st.ToString().c_str());
    Retire(workers[i], "it could not be started (" + st.ToString() + ")");
  }
}

void PoolCore::Run() {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!launched_first && start_status.ok()) {  // Create left them to this thread
      LaunchFirst();
      started_cv.notify_all();
    }
  }
  // The workers past those LaunchFirst started start here, late (see there).
  // The grace leaves the caller the moment it needs to take the first
  // result (a fork holds the GIL for a millisecond). Each late start is a
  // pass of the loop of its own, so that Create, Submit and answers get
  // `mu` in between.
  constexpr auto kLateStartDelay = std::chrono::milliseconds(20);
  constexpr auto kLateStartGrace = std::chrono::milliseconds(2);
  Clock::time_point first_ready = Clock::time_point::max();
  auto late_start_due = [&] {  // under mu
    if (first_end != Clock::time_point::max()) return first_end + kLateStartGrace;
    return (first_ready == Clock::time_point::max() ? Clock::now() : first_ready) + kLateStartDelay;
  };
  std::vector<pollfd> fds;
  std::vector<int> owner;  // worker index per fd, -1 for the doorbell
  auto last_progress = Clock::now();
  while (true) {
    fds.clear();
    owner.clear();
    fds.push_back({doorbell, POLLIN, 0});
    owner.push_back(-1);
    int timeout_ms = 100;
    bool logs_full = LogsFull();
    bool draining = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      draining = stop && opts.take_logs;  // a sink is fed below, after each read
      if (launched < workers.size() && hellos > 0) {  // the next late start is due then
        auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(late_start_due() - Clock::now())
                .count();
        timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, timeout_ms));
      }
      for (Worker& w : workers) {
        if (w.pidfd >= 0) {
          fds.push_back({w.pidfd, POLLIN, 0});
          owner.push_back(w.index);
        }
        if (w.log_fd >= 0 && (stop || !logs_full)) {  // full: TakeLogLines rings the doorbell
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
      for (Worker& w : workers) SendDetaches(w);  // a ring that was full may have room now
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
      if (!start_status.ok() && !created) break;
      if (launched < workers.size() && hellos > 0 && start_status.ok()) {
        first_ready = std::min(first_ready, now);
        if (late_start_due() <= now) {
          Launch(launched, launched + 1);
          ++launched;
        }
      }
      // A worker that never reports in (after Create: a late or a
      // replacement one) is killed; its death is handled as any other.
      for (Worker& w : workers) {
        if (created && w.alive && !w.ready && opts.backend != PoolOptions::Backend::kThreads &&
            now - w.spawned > opts.start_timeout) {
          platform::KillProcess(w.pid, SIGKILL);
        }
      }
    }
    for (Worker& w : workers) ReadLogs(w, draining);
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
    ReadLogs(*w, /*draining=*/true);
    platform::CloseFile(w->pidfd);
    platform::CloseFile(w->log_fd);
    w->pidfd = w->log_fd = -1;
    w->alive = false;
  }
  DeliverLogs();
  if (stats.log_lines_dropped > 0) {
    std::fprintf(stderr,
                 "zcstore pool: %llu lines of the workers' output were lost while it shut down "
                 "(%zu lines waited to be taken)\n",
                 static_cast<unsigned long long>(stats.log_lines_dropped),
                 opts.max_log_lines + kDrainSlack);
  }
  std::lock_guard<std::mutex> lock(mu);
  finished = true;
  started_cv.notify_all();
}

}  // namespace zcstore::internal
