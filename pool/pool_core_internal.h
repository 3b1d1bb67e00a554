// The parent side of the pool: PoolCore and the per-worker state it keeps.
// Its parts: pool.cc (start, shutdown, the public calls), dispatch.cc
// (sending work to the rings), completion.cc (answers, failures, waiting
// callers), watcher.cc (the pool thread: spawning, deaths, timeouts, logs,
// progress).
#ifndef ZCSTORE_POOL_POOL_CORE_INTERNAL_H_
#define ZCSTORE_POOL_POOL_CORE_INTERNAL_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pool/pool_internal.h"

namespace zcstore::internal {

using Clock = std::chrono::steady_clock;

// Lines a draining ReadLogs keeps past max_log_lines: more than a dead
// worker's pipe (64 KiB) can hold.
inline constexpr size_t kDrainSlack = 65536;

// Results of an unordered map waiting for its caller, at most (backpressure).
inline constexpr size_t kMaxUntakenResults = 4096;

// A chunk sent to a worker and not yet (fully) answered.
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
  int slot = 0;     // its claim word (Claims)
  size_t base = 0;  // its first item when sent (`first` moves on as answers come)
  // Items from here on were withdrawn (Withdraw): failed or re-queued by
  // the parent, answered Cancelled by the worker without running.
  size_t withdrawn_from = SIZE_MAX;
  // The end of the items still the worker's to run and answer for real.
  size_t live_end() const { return std::min(first + count, withdrawn_from); }
};

// Items to send again: re-queued after a death, or the rest of a chunk
// whose message was full.
struct Retry {
  std::shared_ptr<Job> job;
  size_t first = 0, count = 0;
  int attempt = 0;
};

// The parent's view of one worker: its process (or thread), its rings, what
// it holds, and its restart budget.
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
  Clock::time_point spawned;           // when it was last started
  std::vector<ObjectId> pending_detaches;  // Detach messages the ring had no room for
  std::atomic<uint64_t>* claims = nullptr;   // its claim words in the control segment
  uint64_t claims_used = 0;                  // bit i: claim word i belongs to a chunk in flight
  std::thread thread;                  // kThreads
  std::unique_ptr<WorkerState> state;  // kThreads
  std::deque<InFlight> in_flight;
};

class PoolCore {
 public:
  explicit PoolCore(const PoolOptions& o) : opts(o) {}
  ~PoolCore();

  Status Init();
  // True in a process forked from the one that created the pool: there the
  // workers, queues and threads are the parent's, not to be touched.
  bool ForkedAway() const;
  // Lets go of the std::threads of a pool copied into a forked child
  // (their threads are not in the child) without joining them.
  void AbandonThreads();
  // Starts the workers that start at once (see Run), in the calling
  // thread. Holds `mu`.
  void LaunchFirst();
  // Starts workers[from, to); a failure before Create has returned is
  // Create's (start_status), after it that worker's retirement. Holds `mu`.
  void Launch(size_t from, size_t to);
  void Run();  // the pool thread
  // Sends queued work to every ready worker with room. Holds `mu`. The
  // workers it sent to are woken now, or, if `defer_wakes` is given, left
  // there for the caller to wake once it lets go of `mu`.
  void Dispatch(std::vector<Ring>* defer_wakes = nullptr);
  // Sends `w` one chunk: a retry, else the next items of the oldest job it
  // may take. False when there is none for it (or its ring is full).
  bool DispatchOne(Worker& w, std::vector<Ring>* defer_wakes);
  // Whether `w` is up and has room for another chunk.
  bool CanTake(const Worker& w) const;
  // For each worker with nothing in flight (when nothing waits to be sent):
  // withdraws the chunk with the most items not started from a worker busy
  // with a task, and re-queues them. True if it re-queued any. Holds `mu`.
  bool Steal();
  // Takes every answer waiting in the response rings, then dispatches. Holds
  // `mu`. Run by the pool thread, and by callers that spin while they wait.
  bool DrainLocked();
  void Complete(Worker& w, MessageReader& in);
  // Takes back the items of chunk `f` (held by `w`) that its worker has not
  // started: the worker will answer them Cancelled without running them.
  // Returns the first withdrawn item (f.base + the number started). Holds `mu`.
  size_t Withdraw(Worker& w, InFlight& f);
  // Whether an item of `job` runs in a worker now. Holds `mu`.
  bool RunningLocked(const Job& job) const;
  // Drops the front chunk of `w`, answered in full, and frees its claim word.
  void PopInFlight(Worker& w);
  void HandleDeath(Worker& w);
  // Gives up on worker `w` for good: fails the work only it could run, and,
  // if no worker is left, everything pending and (through `no_workers`)
  // everything submitted later. Holds `mu`.
  void Retire(Worker& w, const std::string& why);
  // When the task at the front of `w`'s queue must be done by (its start,
  // as the worker recorded it, plus task_timeout), or max() if none.
  Clock::time_point Deadline(const Worker& w) const;
  // Notes when the first task ended (Complete, FailItems). Under mu.
  void NoteTaskEnded();
  // How long each task of `job` may run: its own limit, else the pool's.
  std::chrono::milliseconds TimeoutOf(const Job& job) const {
    return job.timeout.count() > 0 ? job.timeout : opts.task_timeout;
  }
  // Sends the Detach messages that found `w`'s ring full. Holds `mu`.
  void SendDetaches(Worker& w);
  void FailItems(Job& job, size_t first, size_t count, StatusCode code,
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
  // Waits until `ready()` or `deadline`, holding `lock` (on `mu`) except
  // while asleep or spinning (the larger of `spin_us` and opts.spin_us
  // first); each of `jobs` wakes the caller when it moves. Returns ready().
  template <typename Ready>
  bool WaitFor(std::span<Job* const> jobs, std::unique_lock<std::mutex>& lock, Ready ready,
               Clock::time_point deadline, int spin_us = 0);
  Status Spawn(Worker& w);
  // What `w`'s pipe holds now, while fewer than max_log_lines lines wait
  // (`draining`: all of it; see the comment inside). Never waits for more.
  void ReadLogs(Worker& w, bool draining);
  bool LogsFull();  // max_log_lines lines wait. Takes log_mu.
  // Lines to log_sink (or stderr), unless opts.take_logs.
  void DeliverLogs();
  std::vector<std::pair<int, std::string>> TakeLogLines();
  void Progress(bool final);
  // What messages call job's task: its label (SubmitOptions::label), else
  // its registered name.
  std::string TaskName(const Job& job) const {
    if (!job.label.empty()) return job.label;
    return job.task < Registry().size() ? Registry()[job.task].name : "?";
  }

  PoolOptions opts;
  int n = 0;
  std::unique_ptr<Store> store;
  int control_fd = -1;
  std::byte* control = nullptr;
  int doorbell = -1;
  std::vector<Worker> workers;
  std::string exe;

  pid_t owner = 0;  // the process that created the pool: a forked child is not it
  std::mutex mu;  // everything below, and every Job's mutable fields
  std::condition_variable started_cv;
  std::deque<std::shared_ptr<Job>> jobs;
  std::deque<Retry> retries;
  std::vector<std::shared_ptr<Job>> tracked;  // Map jobs shown in the progress bar
  bool stop = false;
  bool finished = false;
  int hellos = 0;
  bool launched_first = false;  // the first worker's process exists
  size_t launched = 0;  // workers started so far; the rest start late (see Run)
  Clock::time_point first_end = Clock::time_point::max();  // when a task first ended
  bool created = false;  // Create has returned the pool
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
  std::vector<bool> dispatch_skip;  // Dispatch: workers with nothing to take this round
};

// The next result of unordered job `job`, waiting for it (false once every
// result was taken). Takes `mu`.
bool TakeNext(PoolCore* core, Job& job, size_t* index, ItemResult* result);

}  // namespace zcstore::internal

#endif  // ZCSTORE_POOL_POOL_CORE_INTERNAL_H_
