// Pool benchmarks, each beside the threads backend and a fork baseline.
//
//   BM_PoolRoundTrip/<backend>      one empty task: Submit -> result
//       spawn (blocking), spawn_spin (spin_us=50), fork, threads, and
//       spawn_1cpu: blocking with the caller and workers on one CPU, where a
//       wake-up is a context switch rather than a cross-CPU interrupt
//   BM_RawRoundTrip/<futex|spin|futex_1cpu>
//                                   the floor under it: two processes
//                                   ping-pong a word in shared memory, each
//                                   sleeping in FUTEX_WAIT (or spinning)
//   BM_PoolMapThroughput/<backend>  trivial tasks/s through Map with chunking
//   BM_PoolStartup/<model bytes>    start a spawned pool, share a model built
//                                   in place, first result (manual time; the
//                                   model's build is not timed)
//   BM_ForkStartup/<model bytes>    the copy-on-write limit: fork a child that
//                                   reads the model, first result over a pipe
//   BM_ParentDeath/<raw|pool>/<load> SIGKILL the top of a two-level tree (two
//                                   workers, one inner worker each) while
//                                   <load> processes spin, until every
//                                   descendant has exited (pidfds): raw is
//                                   fork + PR_SET_PDEATHSIG, the floor; pool
//                                   is nested zcstore pools
#include <benchmark/benchmark.h>
#include <linux/futex.h>
#include <sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "tests/process_tree.h"
#include "zcstore/zcstore.h"

namespace {

using Clock = std::chrono::steady_clock;
using zcstore::Pool;
using zcstore::PoolOptions;

int Echo(zcstore::TaskContext&, const int& x) { return x; }
ZCSTORE_TASK("bench_echo", Echo);

struct BenchModel {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.bench.PoolModel";
  zcstore::Array<float> factors;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(factors);
  }
};
struct Probe {
  zcstore::Shared<BenchModel> model;
  uint64_t index = 0;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(model, index);
  }
};
float ReadModel(zcstore::TaskContext& ctx, const Probe& p) {
  const BenchModel& m = ctx.Get(p.model);
  return m.factors[p.index % m.factors.size()];
}
ZCSTORE_TASK("bench_read_model", ReadModel);

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

PoolOptions Options(int variant) {
  PoolOptions o;
  o.workers = 2;
  o.store_capacity = 64 << 20;
  o.progress_bar = false;
  o.backend = variant == 2 ? PoolOptions::Backend::kFork
            : variant == 3 ? PoolOptions::Backend::kThreads
                           : PoolOptions::Backend::kSpawn;
  if (variant == 1) o.spin_us = 50;
  return o;
}
const char* kVariants[] = {"spawn", "spawn_spin", "fork", "threads", "spawn_1cpu"};

// Runs this thread, and what it starts from now on, on the first CPU it may
// use until destroyed.
class OnOneCpu {
 public:
  OnOneCpu() {
    sched_getaffinity(0, sizeof(saved_), &saved_);
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &saved_)) {
        CPU_SET(c, &one);
        break;
      }
    }
    sched_setaffinity(0, sizeof(one), &one);
  }
  ~OnOneCpu() { sched_setaffinity(0, sizeof(saved_), &saved_); }

 private:
  cpu_set_t saved_;
};

void BM_PoolRoundTrip(benchmark::State& state) {
  std::optional<OnOneCpu> pinned;
  if (state.range(0) == 4) pinned.emplace();
  auto pool = Pool::Create(Options(static_cast<int>(state.range(0))));
  if (!pool.ok()) return state.SkipWithError(pool.status().ToString().c_str());
  state.SetLabel(kVariants[state.range(0)]);
  for (auto _ : state) {
    auto r = (*pool)->Submit<int>("bench_echo", 1).Get();
    if (!r.ok()) return state.SkipWithError(r.status().ToString().c_str());
  }
}
BENCHMARK(BM_PoolRoundTrip)->DenseRange(0, 4)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Two processes, two words in a shared page: the parent writes `ping`, the
// child copies it to `pong`. With futex each side sleeps until woken, which
// is what a blocking round trip can cost at best: two wake-ups.
void BM_RawRoundTrip(benchmark::State& state) {
  bool spin = state.range(0) == 1;
  state.SetLabel(spin ? "spin" : state.range(0) == 2 ? "futex_1cpu" : "futex");
  std::optional<OnOneCpu> pinned;
  if (state.range(0) == 2) pinned.emplace();
  void* page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return state.SkipWithError("mmap");
  auto* ping = static_cast<std::atomic<uint32_t>*>(page);
  auto* pong = ping + 16;  // its own cache line
  auto wait = [spin](std::atomic<uint32_t>* word, uint32_t old) {
    uint32_t v;
    while ((v = word->load(std::memory_order_acquire)) == old) {
      if (spin) continue;
      syscall(SYS_futex, word, FUTEX_WAIT, old, nullptr, nullptr, 0);
    }
    return v;
  };
  auto post = [spin](std::atomic<uint32_t>* word, uint32_t v) {
    word->store(v, std::memory_order_release);
    if (!spin) syscall(SYS_futex, word, FUTEX_WAKE, 1, nullptr, nullptr, 0);
  };
  pid_t pid = fork();
  if (pid == 0) {
    for (uint32_t v = 0; (v = wait(ping, v)) != UINT32_MAX;) post(pong, v);
    _exit(0);
  }
  uint32_t i = 0;
  for (auto _ : state) {
    post(ping, ++i);
    wait(pong, i - 1);
  }
  post(ping, UINT32_MAX);
  waitpid(pid, nullptr, 0);
  munmap(page, 4096);
}
BENCHMARK(BM_RawRoundTrip)->DenseRange(0, 2)->UseRealTime()->Unit(benchmark::kMicrosecond);

void BM_PoolMapThroughput(benchmark::State& state) {
  auto pool = Pool::Create(Options(static_cast<int>(state.range(0))));
  if (!pool.ok()) return state.SkipWithError(pool.status().ToString().c_str());
  state.SetLabel(kVariants[state.range(0)]);
  std::vector<int> args(200000, 1);
  for (auto _ : state) {
    auto r = (*pool)->Map<int>("bench_echo", args);
    if (!r.ok()) return state.SkipWithError(r.status().ToString().c_str());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * args.size()));
}
BENCHMARK(BM_PoolMapThroughput)->Arg(0)->Arg(2)->Arg(3)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_PoolStartup(benchmark::State& state) {
  size_t bytes = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    PoolOptions o = Options(0);
    o.store_capacity = bytes + (16 << 20);
    auto t0 = Clock::now();
    auto pool = Pool::Create(o);
    if (!pool.ok()) return state.SkipWithError(pool.status().ToString().c_str());
    double start_s = Since(t0);
    BenchModel m;
    m.factors = std::move(*zcstore::Array<float>::AllocateIn((*pool)->store(), bytes / 4));
    std::memset(m.factors.mutable_data(), 1, bytes);  // building: not timed
    auto t1 = Clock::now();
    auto shared = (*pool)->Share(std::move(m));
    if (!shared.ok()) return state.SkipWithError(shared.status().ToString().c_str());
    auto r = (*pool)->Submit<float>("bench_read_model", Probe{*shared, bytes / 8}).Get();
    if (!r.ok()) return state.SkipWithError(r.status().ToString().c_str());
    state.SetIterationTime(start_s + Since(t1));
  }
  state.counters["model_bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_PoolStartup)
    ->Arg(64 << 20)->Arg(256 << 20)->Arg(int64_t{1} << 30)
    ->UseManualTime()->Iterations(2)->Unit(benchmark::kMillisecond);

void BM_ForkStartup(benchmark::State& state) {
  size_t bytes = static_cast<size_t>(state.range(0));
  std::vector<float> model(bytes / 4, 1.0f);  // built before timing
  for (auto _ : state) {
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    auto t0 = Clock::now();
    pid_t pid = fork();
    if (pid == 0) {
      float v = model[model.size() / 2];
      (void)!write(fds[1], &v, sizeof(v));
      _exit(0);
    }
    float v;
    (void)!read(fds[0], &v, sizeof(v));
    state.SetIterationTime(Since(t0));
    waitpid(pid, nullptr, 0);
    close(fds[0]);
    close(fds[1]);
  }
  state.counters["model_bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_ForkStartup)
    ->Arg(64 << 20)->Arg(256 << 20)->Arg(int64_t{1} << 30)
    ->UseManualTime()->Iterations(2)->Unit(benchmark::kMillisecond);

// An inner pool of one worker inside a worker; never returns.
int Nest(zcstore::TaskContext&, const int&) {
  PoolOptions o;
  o.workers = 1;
  o.store_capacity = 1 << 20;
  o.progress_bar = false;
  auto inner = Pool::Create(o);
  if (!inner.ok()) return 1;
  pause();
  return 0;
}
ZCSTORE_TASK("bench_nest", Nest);


// A process tree like nested pools: two children, one grandchild each,
// every one with PR_SET_PDEATHSIG = SIGKILL, all paused.
[[noreturn]] void RawTree() {
  pid_t top = getpid();
  for (int w = 0; w < 2; ++w) {
    if (fork() == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != top) _exit(0);
      pid_t mid = getpid();
      if (fork() == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != mid) _exit(0);
        for (;;) pause();
      }
      for (;;) pause();
    }
  }
  for (;;) pause();
}

[[noreturn]] void PoolTree() {
  PoolOptions o = Options(0);
  o.store_capacity = 4 << 20;
  auto pool = Pool::Create(o);
  if (!pool.ok()) _exit(1);
  (void)(*pool)->Broadcast<int>("bench_nest", 0);  // never returns
  for (;;) pause();
}

void BM_ParentDeath(benchmark::State& state) {
  bool pool = state.range(0) == 1;
  int load = static_cast<int>(state.range(1));
  // This process adopts the orphans, so it can reap every level.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  std::vector<pid_t> spinners;
  for (int i = 0; i < load; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      for (;;) asm volatile("" ::: "memory");  // a runnable process, for ever
    }
    spinners.push_back(pid);
  }
  for (auto _ : state) {
    pid_t top = fork();
    if (top == 0) {
      if (pool) PoolTree();
      RawTree();
    }
    std::vector<pid_t> tree;
    for (int tries = 0; tries < 20000 && tree.size() < 4; ++tries) {
      usleep(1000);
      tree = zcstore::testing::DescendantsOf(top);
    }
    if (tree.size() < 4) {
      kill(top, SIGKILL);
      return state.SkipWithError("the tree never came up");
    }
    std::vector<pollfd> fds;
    for (pid_t p : tree) {
      int fd = static_cast<int>(syscall(SYS_pidfd_open, p, 0));
      if (fd >= 0) fds.push_back({fd, POLLIN, 0});
    }
    auto t0 = Clock::now();
    kill(top, SIGKILL);
    size_t gone = 0;
    while (gone < fds.size()) {
      if (poll(fds.data(), fds.size(), 10000) <= 0) break;
      gone = 0;
      for (pollfd& p : fds) gone += (p.revents & POLLIN) != 0;
    }
    state.SetIterationTime(Since(t0));
    if (gone < fds.size()) state.SkipWithError("a descendant outlived its killed parent by 10 s");
    for (pollfd& p : fds) close(p.fd);
    while (waitpid(top, nullptr, 0) < 0 && errno == EINTR) {
    }
    for (pid_t p : tree) waitpid(p, nullptr, 0);  // reparented to us
  }
  for (pid_t p : spinners) kill(p, SIGKILL);
  for (pid_t p : spinners) waitpid(p, nullptr, 0);
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  state.counters["load"] = load;
}
BENCHMARK(BM_ParentDeath)
    ->ArgNames({"pool", "load"})
    ->Args({0, 0})->Args({1, 0})->Args({0, 20})->Args({1, 20})
    ->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);

}  // namespace
