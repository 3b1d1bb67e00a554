// The pool with real worker processes: results, shared objects, and every
// fault the pool promises to survive. This binary is its own worker
// executable (ZCSTORE_WORKER_MAIN) and, with --pool-parent, a pool parent
// that the tests kill.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "tests/process_tree.h"
#include "tests/serializer/test_types.h"
#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

using testing::DescendantsOf;
using testing::Model;

// ------------------------------------------------------------ tasks

int Square(TaskContext&, const int& x) { return x * x; }
ZCSTORE_TASK("square", Square);

struct SumArgs {
  Shared<Model> model;
  uint64_t begin = 0, end = 0;
  template <class Ar>
  void Serialize(Ar& ar) {
    ar(model, begin, end);
  }
};
double SumShared(TaskContext& ctx, const SumArgs& a) {
  const Model& m = ctx.Get(a.model);
  double s = 0;
  for (uint64_t i = a.begin; i < a.end && i < m.factors.size(); ++i) s += m.factors[i];
  return s;
}
ZCSTORE_TASK("sum_shared", SumShared);

// Where a worker sees the shared factors: "pid address mapping".
std::string WhereShared(TaskContext& ctx, const Shared<Model>& ref) {
  const Model& m = ctx.Get(ref);
  return std::to_string(getpid()) + " " + std::to_string(reinterpret_cast<uintptr_t>(m.factors.data())) +
         " " + zcstore::testing::MappingOf(m.factors.data());
}
ZCSTORE_TASK("where_shared", WhereShared);

int CrashOn13(TaskContext&, const int& x) {
  if (x == 13) kill(getpid(), SIGKILL);
  return x;
}
ZCSTORE_TASK("crash_on_13", CrashOn13);

int Die(TaskContext&, const std::string& how) {
  if (how == "abort") std::abort();
  if (how == "exit") std::exit(3);
  return 0;
}
ZCSTORE_TASK("die", Die);

// Crashes the first time (leaving a marker file), succeeds the second.
int CrashOnce(TaskContext&, const std::string& marker) {
  if (access(marker.c_str(), F_OK) != 0) {
    std::ofstream(marker) << "crashed";
    kill(getpid(), SIGKILL);
  }
  return 1;
}
ZCSTORE_TASK("crash_once", CrashOnce);

// An argument too large to travel inline: it goes through the pool's store.
struct BigArg {
  std::string marker;  // crash the first time if set (see CrashOnce)
  std::vector<float> values;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(marker, values);
  }
};
BigArg MakeBigArg(std::string marker) {
  BigArg a{std::move(marker), std::vector<float>(64 << 10)};  // 256 KiB
  for (size_t i = 0; i < a.values.size(); ++i) a.values[i] = static_cast<float>(i % 7);
  return a;
}
double BigSum(TaskContext& ctx, const BigArg& a) {
  if (!a.marker.empty()) CrashOnce(ctx, a.marker);
  double sum = 0;
  for (float v : a.values) sum += v;
  return sum;
}
ZCSTORE_TASK("big_sum", BigSum);

int Throws(TaskContext&, const int&) { throw std::out_of_range("bad index 7"); }
ZCSTORE_TASK("throws", Throws);

int SleepMs(TaskContext&, const int& ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
ZCSTORE_TASK("sleep_ms", SleepMs);

int WriteShared(TaskContext& ctx, const Shared<Model>& ref) {
  const Model& m = ctx.Get(ref);
  *const_cast<volatile float*>(m.factors.data()) = -1.f;
  return 0;
}
ZCSTORE_TASK("write_shared", WriteShared);

int Pid(TaskContext&, const int&) { return getpid(); }
ZCSTORE_TASK("pid", Pid);

uint64_t SlowModelSize(TaskContext&, const Model& m) {
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // holds its argument a while
  return m.factors.size();
}
ZCSTORE_TASK("slow_model_size", SlowModelSize);

// Creates the file `path`: a task whose running leaves a trace.
int Touch(TaskContext&, const std::string& path) {
  if (std::FILE* f = std::fopen(path.c_str(), "w")) std::fclose(f);
  return 1;
}
ZCSTORE_TASK("touch", Touch);

// Waits until the file `path` exists (at most 60 s): a task that runs
// until the test lets it end.
int WaitFile(TaskContext&, const std::string& path) {
  for (int i = 0; i < 60000 && !std::filesystem::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return 7;
}
ZCSTORE_TASK("wait_file", WaitFile);

// Set by the fork hooks' child hook, in the worker only.
int fork_child_mark = 0;
int ForkChildMark(TaskContext&, const int&) { return fork_child_mark; }
ZCSTORE_TASK("fork_child_mark", ForkChildMark);

int LogLines(TaskContext& ctx, const int& n) {
  for (int i = 0; i < n; ++i) ctx.Log("line " + std::to_string(i));
  std::fprintf(stderr, "from stderr\n");
  std::printf("from stdout\n");
  std::fflush(stdout);
  return n;
}
ZCSTORE_TASK("log_lines", LogLines);

int Flood(TaskContext&, const int& n) {
  for (int i = 0; i < n; ++i) std::fprintf(stderr, "flood %d of a worker that talks too much\n", i);
  return n;
}
ZCSTORE_TASK("flood", Flood);

struct Tally {
  std::map<std::string, int> counts;
  template <class Ar>
  void Serialize(Ar& ar) {
    ar(counts);
  }
};
WithUpdate<int, int> Doubler(TaskContext& ctx, const ContextArg<int, Tally>& a) {
  const Tally& t = ctx.Get(a.context);
  return {a.arg * 2 + t.counts.at("offset"), a.arg};
}
ZCSTORE_TASK("doubler", Doubler);

// Starts a pool of its own (two-level parallelism) and reports its pids on
// stdout (which reaches the top parent's log sink), then waits to be killed.
int Nest(TaskContext&, const int&) {
  PoolOptions o;
  o.workers = 1;
  o.store_capacity = 4 << 20;
  auto inner = Pool::Create(o);
  if (!inner.ok()) return -1;
  std::printf("pids %d %d\n", getpid(), (*inner)->worker_pids()[0]);
  std::fflush(stdout);
  pause();
  return 0;
}
ZCSTORE_TASK("nest", Nest);


// ------------------------------------------------------------ fault tasks

// Worker 0 dies; the others answer with their index.
int DieOnWorker0(TaskContext& ctx, const int&) {
  if (ctx.worker_index() == 0) _exit(7);
  return ctx.worker_index();
}
ZCSTORE_TASK("die_on_worker_0", DieOnWorker0);

// Worker 0 crashes the first time (leaving a marker file); every call
// answers with the index of the worker it ran on.
int IndexCrashOnceOn0(TaskContext& ctx, const std::string& marker) {
  if (ctx.worker_index() == 0 && access(marker.c_str(), F_OK) != 0) {
    std::ofstream(marker) << "crashed";
    _exit(7);
  }
  return ctx.worker_index();
}
ZCSTORE_TASK("index_crash_once_on_0", IndexCrashOnceOn0);

// Leaves a background process holding the worker's stderr, then dies.
int DieLeavingAChild(TaskContext&, const int&) {
  if (std::system("sleep 2 &") != 0) return -1;
  _exit(5);
}
ZCSTORE_TASK("die_leaving_a_child", DieLeavingAChild);

int HugeError(TaskContext&, const int& n) { throw std::runtime_error(std::string(n, 'e')); }
ZCSTORE_TASK("huge_error", HugeError);

// A result that goes through the store, or a death for a negative size.
std::vector<float> BigOrDie(TaskContext&, const int& n) {
  if (n < 0) _exit(9);
  return std::vector<float>(n, 1.f);
}
ZCSTORE_TASK("big_or_die", BigOrDie);


// Squares, and the first call in each worker process arms a timer that
// SIGKILLs the process a random 0-4 ms later: wherever it is then (mid-task,
// mid-answer, idle), when ZCSTORE_TEST_SUICIDE is set.
int ArmedSquare(TaskContext&, const int& x) {
  static const bool armed = [] {
    if (std::getenv("ZCSTORE_TEST_SUICIDE") == nullptr) return false;
    unsigned seed = static_cast<unsigned>(getpid());
    std::thread([delay = rand_r(&seed) % 4000] {
      usleep(static_cast<useconds_t>(delay));
      kill(getpid(), SIGKILL);
    }).detach();
    return true;
  }();
  (void)armed;
  for (int spin = 0; spin < 2000; ++spin) asm volatile("" ::: "memory");  // ~a microsecond of work
  return x * x;
}
ZCSTORE_TASK("armed_square", ArmedSquare);


namespace scoring {
// A task in a namespace registers like any other.
int Triple(TaskContext&, const int& x) { return 3 * x; }
}  // namespace scoring
ZCSTORE_TASK("triple", scoring::Triple);

// ------------------------------------------------------------ helpers

PoolOptions Small(int workers = 2) {
  PoolOptions o;
  o.workers = workers;
  o.store_capacity = 64 << 20;
  o.progress_bar = false;
  return o;
}

std::unique_ptr<Pool> MakePool(const PoolOptions& o = Small()) {
  auto p = Pool::Create(o);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(*p) : nullptr;
}

Model SharedModel(size_t n) {
  Model m;
  m.name = "shared";
  m.factors = Array<float>::Uninitialized(n);
  for (size_t i = 0; i < n; ++i) m.factors.mutable_data()[i] = 1.0f;
  return m;
}

// ------------------------------------------------------------ tests

TEST(PoolTest, SubmitAndMapReturnResultsInOrder) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto f = pool->Submit<int>("square", 7);
  auto r = f.Get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 49);
  std::vector<int> args(2000);
  for (int i = 0; i < 2000; ++i) args[i] = i;
  auto squares = pool->Map<int>("square", args);
  ASSERT_TRUE(squares.ok()) << squares.status().ToString();
  for (int i = 0; i < 2000; ++i) ASSERT_EQ((*squares)[i], i * i);
  EXPECT_EQ(pool->Stats().tasks_done, 2001u);
  EXPECT_EQ(pool->workers(), 2);
}

// Several threads wait at once, each for its own work. A waiting caller
// takes every worker's answers, so it completes the others' jobs too and must
// wake them; a lost wake-up would surface through the waits' 1 s safety net,
// which the pool counts.
TEST(PoolTest, ManyWaitingCallersAreEachWokenForTheirOwnAnswers) {
  // Also with everything on one CPU, where a woken worker runs at once and
  // answers before its caller waits.
  cpu_set_t all, one;
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &all)) {
      CPU_SET(c, &one);
      break;
    }
  }
  for (int run = 0; run < 4; ++run) {
    int spin_us = run % 2 == 0 ? 0 : 20;
    bool one_cpu = run >= 2;
    SCOPED_TRACE("spin_us=" + std::to_string(spin_us) + (one_cpu ? " on one CPU" : ""));
    ASSERT_EQ(sched_setaffinity(0, sizeof(cpu_set_t), one_cpu ? &one : &all), 0);
    PoolOptions o = Small();
    o.spin_us = spin_us;
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    constexpr int kThreads = 4, kRounds = 40;
    std::atomic<int> wrong{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < kThreads; ++t) {
      callers.emplace_back([&, t] {
        for (int round = 0; round < kRounds; ++round) {
          int x = t * 1000 + round;
          auto square = pool->Submit<int>("square", x);
          auto sleep = pool->Submit<int>("sleep_ms", round % 3);
          auto map = pool->Map<int>("square", std::vector<int>{x, x + 1, x + 2});
          auto r = square.Get();
          if (!r.ok() || *r != x * x) ++wrong;
          if (!sleep.Get().ok()) ++wrong;
          if (!map.ok() || map->size() != 3 || (*map)[2] != (x + 2) * (x + 2)) ++wrong;
        }
      });
    }
    for (auto& c : callers) c.join();
    EXPECT_EQ(wrong.load(), 0);
    PoolStats s = pool->Stats();
    EXPECT_EQ(s.tasks_done, uint64_t{kThreads} * kRounds * 5);
    EXPECT_EQ(s.late_wakeups, 0u);
  }
  sched_setaffinity(0, sizeof(all), &all);
}

TEST(PoolTest, SharedObjectIsAttachedOnceReadOnlyFromTheMemfd) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto model = pool->Share(SharedModel(1 << 20));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  std::vector<SumArgs> args;
  for (uint64_t b = 0; b < (1 << 20); b += 1 << 16) args.push_back({*model, b, b + (1 << 16)});
  auto sums = pool->Map<double>("sum_shared", args);
  ASSERT_TRUE(sums.ok()) << sums.status().ToString();
  for (double s : *sums) EXPECT_EQ(s, 65536.0);
  // Every task on one worker sees the same mapping: attached once, from the
  // pool's memfd store, read-only and shared.
  std::map<std::string, std::set<std::string>> seen;
  std::vector<Shared<Model>> refs(40, *model);
  auto where = pool->Map<std::string>("where_shared", refs, {.chunk_size = 1});
  ASSERT_TRUE(where.ok());
  for (const std::string& w : *where) {
    std::istringstream in(w);
    std::string pid, addr, dev, inode, offset, perms;
    in >> pid >> addr >> dev >> inode >> offset >> perms;
    seen[pid].insert(addr + " " + inode + " " + offset);
    EXPECT_EQ(perms, "r--s") << w;
  }
  for (auto& [pid, places] : seen) EXPECT_EQ(places.size(), 1u) << pid;
}

TEST(PoolTest, ATaskThatThrowsFailsItsOwnFutureOnly) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto bad = pool->Submit<int>("throws", 1);
  auto good = pool->Submit<int>("square", 3);
  auto r = bad.Get();
  EXPECT_EQ(r.status().code(), StatusCode::kTaskFailed);
  EXPECT_NE(r.status().message().find("task threw std::out_of_range: bad index 7"),
            std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("bad index 7"), std::string::npos);
  EXPECT_EQ(*good.Get(), 9);
}

TEST(PoolTest, WorkerKilledMidTaskFailsThatTaskAndIsReplaced) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  std::vector<int> args(50);
  for (int i = 0; i < 50; ++i) args[i] = i;
  std::map<size_t, Status> failures;
  int ok = 0;
  Status st = pool->MapUnordered<int>("crash_on_13", args, [&](size_t i, Result<int> r) {
    if (r.ok()) {
      EXPECT_EQ(*r, static_cast<int>(i));
      ++ok;
    } else {
      failures[i] = r.status();
    }
  }, {.chunk_size = 1});
  EXPECT_EQ(st.code(), StatusCode::kWorkerCrashed);
  EXPECT_EQ(ok, 49);
  ASSERT_EQ(failures.size(), 1u);
  ASSERT_EQ(failures.begin()->first, 13u);
  const std::string& m = failures.begin()->second.message();
  EXPECT_NE(m.find("killed by signal 9"), std::string::npos) << m;
  EXPECT_NE(m.find("crash_on_13"), std::string::npos) << m;
  EXPECT_EQ(pool->Stats().workers_replaced, 1u);
  EXPECT_EQ(pool->Stats().late_wakeups, 0u);
  EXPECT_EQ(*pool->Submit<int>("square", 5).Get(), 25);  // still usable
  for (pid_t p : pool->worker_pids()) EXPECT_GT(p, 0);
}

TEST(PoolTest, AbortAndExitAreReportedAsCrashes) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto a = pool->Submit<int>("die", std::string("abort")).Get();
  EXPECT_EQ(a.status().code(), StatusCode::kWorkerCrashed);
  EXPECT_NE(a.status().message().find("signal 6"), std::string::npos) << a.status().message();
  auto e = pool->Submit<int>("die", std::string("exit")).Get();
  EXPECT_EQ(e.status().code(), StatusCode::kWorkerCrashed);
  EXPECT_NE(e.status().message().find("exited with status 3"), std::string::npos);
  EXPECT_EQ(*pool->Submit<int>("square", 4).Get(), 16);
}

TEST(PoolTest, ACrashedTaskIsRetriedWhenAsked) {
  PoolOptions o = Small();
  o.max_retries = 1;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  std::string marker = "/tmp/" + zcstore::testing::UniqueName("retry");
  auto r = pool->Submit<int>("crash_once", marker).Get();
  unlink(marker.c_str());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 1);
  EXPECT_EQ(pool->Stats().workers_replaced, 1u);
}

TEST(PoolTest, WritingToASharedObjectKillsOnlyThatWorker) {
  // Under AddressSanitizer, let the workers die of the signal itself.
  setenv("ASAN_OPTIONS", "handle_segv=0", 1);  // let the child die of it, sanitized or not
  setenv("TSAN_OPTIONS", "handle_segv=0", 1);
  auto pool = MakePool();
  unsetenv("ASAN_OPTIONS");
  unsetenv("TSAN_OPTIONS");
  ASSERT_TRUE(pool);
  auto model = pool->Share(SharedModel(4096));
  ASSERT_TRUE(model.ok());
  auto r = pool->Submit<int>("write_shared", *model).Get();
  EXPECT_EQ(r.status().code(), StatusCode::kWorkerCrashed);
  EXPECT_NE(r.status().message().find("signal 11"), std::string::npos) << r.status().message();
  auto m = pool->store().Get<Model>(model->id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->factors[0], 1.0f);  // unchanged
  EXPECT_EQ(*pool->Submit<int>("square", 2).Get(), 4);
}

TEST(PoolTest, ATaskPastItsTimeoutIsKilledAndFailsWithTimeout) {
  PoolOptions o = Small();
  o.task_timeout = std::chrono::milliseconds(300);
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto t0 = std::chrono::steady_clock::now();
  auto r = pool->Submit<int>("sleep_ms", 30000).Get();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  EXPECT_NE(r.status().message().find("300 ms"), std::string::npos) << r.status().message();
  EXPECT_LT(s, 5.0);
  EXPECT_EQ(*pool->Submit<int>("sleep_ms", 10).Get(), 10);
}

TEST(PoolTest, LogsReachTheSinkTaggedAndInOrderPerWorker) {
  std::mutex mu;
  std::vector<std::pair<int, std::string>> lines;
  PoolOptions o = Small(1);
  o.log_sink = [&](int worker, std::string_view line) {
    std::lock_guard<std::mutex> lock(mu);
    lines.emplace_back(worker, std::string(line));
  };
  {
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    EXPECT_EQ(*pool->Submit<int>("log_lines", 50).Get(), 50);
  }  // shutdown drains the logs
  std::vector<std::string> ours;
  for (auto& [w, l] : lines) {
    EXPECT_EQ(w, 0);
    if (l.rfind("line ", 0) == 0) ours.push_back(l);
  }
  ASSERT_EQ(ours.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(ours[i], "line " + std::to_string(i));
  auto has = [&](const std::string& s) {
    return std::any_of(lines.begin(), lines.end(), [&](auto& p) { return p.second == s; });
  };
  EXPECT_TRUE(has("from stderr"));
  EXPECT_TRUE(has("from stdout"));
}

TEST(PoolTest, AFloodingWorkerWaitsForItsLinesToBeTakenAndLosesNone) {
  // The sink is far slower than the worker writes, and at most 100 lines
  // may wait: the worker is held back (its pipe fills), and every line
  // arrives, in order. Before, the lines past the bound were dropped.
  std::vector<std::string> delivered;
  PoolOptions o = Small(1);
  o.max_log_lines = 100;
  o.log_sink = [&](int, std::string_view line) {
    delivered.emplace_back(line);
    if (delivered.size() % 100 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  };
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto r = pool->Submit<int>("flood", 20000).Get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(pool->Shutdown().ok());
  PoolStats st = pool->Stats();
  EXPECT_EQ(st.log_lines, 20000u);
  EXPECT_EQ(st.log_lines_dropped, 0u);
  ASSERT_EQ(delivered.size(), 20000u);
  for (size_t i = 0; i < delivered.size(); i += 997) {
    EXPECT_NE(delivered[i].find(std::to_string(i)), std::string::npos) << delivered[i];
  }
}

TEST(PoolTest, TakenLogsWaitForTheTakerAndTheWorkerWaitsForRoom) {
  PoolOptions o = Small(1);
  o.max_log_lines = 100;
  o.take_logs = true;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto f = pool->Submit<int>("flood", 5000);
  // Nobody takes lines yet: the worker cannot finish 5000 lines through a
  // pipe and 100 waiting lines (a pipe holds 64 KiB, about 3000 of these).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(f.Ready()) << "the worker's lines went somewhere";
  std::vector<std::pair<int, std::string>> lines;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!f.Ready() && std::chrono::steady_clock::now() < until) {
    for (auto& l : pool->TakeLogLines()) lines.push_back(std::move(l));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(f.Get().ok());
  ASSERT_TRUE(pool->Shutdown().ok());
  for (auto& l : pool->TakeLogLines()) lines.push_back(std::move(l));  // the last ones
  EXPECT_EQ(lines.size(), 5000u);
  EXPECT_EQ(pool->Stats().log_lines_dropped, 0u);
}

TEST(PoolTest, UnknownTasksAndWrongTypesAreClearErrors) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto nope = pool->Submit<int>("nope", 1).Get();
  EXPECT_EQ(nope.status().code(), StatusCode::kNotFound);
  EXPECT_NE(nope.status().message().find("square"), std::string::npos);  // lists the known ones
  auto wrong = pool->Submit<float>("square", 1).Get();
  EXPECT_EQ(wrong.status().code(), StatusCode::kTypeMismatch);
  auto map = pool->Map<int>("nope", std::vector<int>{1, 2});
  EXPECT_EQ(map.status().code(), StatusCode::kNotFound);
}

TEST(PoolTest, AnUnsharedObjectIsNotFoundByLaterTasks) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto model = pool->Share(SharedModel(100000));
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(*pool->Submit<double>("sum_shared", SumArgs{*model, 0, 10}).Get(), 10.0);
  ASSERT_TRUE(pool->Unshare(*model).ok());
  EXPECT_EQ(pool->Unshare(*model).code(), StatusCode::kNotFound);
  for (int i = 0; i < 4; ++i) {  // whichever worker runs it
    auto r = pool->Submit<double>("sum_shared", SumArgs{*model, 0, 10}).Get();
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().ToString();
  }
}

TEST(PoolTest, SharingMoreThanTheStoreHoldsIsStoreFull) {
  PoolOptions o = Small();
  o.store_capacity = 1 << 20;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto r = pool->Share(SharedModel(1 << 20));  // 4 MiB
  EXPECT_EQ(r.status().code(), StatusCode::kStoreFull);
  EXPECT_EQ(*pool->Submit<int>("square", 3).Get(), 9);
}

TEST(PoolTest, AWorkerOfAnotherBuildIsRefused) {
  PoolOptions o = Small(1);
  o.worker_executable = ZCSTORE_TEST_HELPER;  // registers other tasks
  auto r = Pool::Create(o);
  EXPECT_EQ(r.status().code(), StatusCode::kVersionMismatch);
  EXPECT_NE(r.status().message().find("another build"), std::string::npos) << r.status().message();
  o.worker_executable = "/nonexistent/worker";
  EXPECT_EQ(Pool::Create(o).status().code(), StatusCode::kNotFound);
}

// A worker started through another program (an interpreter, a wrapper):
// here /bin/sh, whose script execs this test binary with the worker's
// arguments, as a Python worker's script enters the loop.
TEST(PoolTest, WorkersCanBeStartedThroughAnInterpreter) {
  PoolOptions o = Small(2);
  o.worker_executable = "/bin/sh";
  o.worker_args = {"-c", "exec \"$0\" \"$@\"", "/proc/" + std::to_string(getpid()) + "/exe"};
  auto pool = Pool::Create(o);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  auto squares = (*pool)->Map<int>("square", std::vector<int>{1, 2, 3, 4});
  ASSERT_TRUE(squares.ok()) << squares.status().ToString();
  EXPECT_EQ(*squares, (std::vector<int>{1, 4, 9, 16}));
}

// Worker 1 is slow to start, or never does: /bin/sh runs `first` for it
// before it execs this binary as a worker (the script's $2 is the worker's
// index).
// Worker `index` runs `first` (a shell command) before it starts.
PoolOptions SlowWorker(const std::string& first, int index = 1) {
  PoolOptions o = Small(2);
  o.worker_executable = "/bin/sh";
  o.worker_args = {"-c",
                   "[ \"$2\" = " + std::to_string(index) + " ] && " + first +
                       "; exec \"$0\" \"$@\"",
                   "/proc/" + std::to_string(getpid()) + "/exe"};
  o.create_waits_for = PoolOptions::StartWait::kFirstWorker;
  return o;
}

PoolOptions SlowSecondWorker(const std::string& first) { return SlowWorker(first, 1); }

TEST(PoolTest, CreateCanReturnOnceOneWorkerIsReady) {
  auto t0 = std::chrono::steady_clock::now();
  auto pool = MakePool(SlowSecondWorker("sleep 1.5"));
  ASSERT_TRUE(pool);
  EXPECT_EQ(*pool->Submit<int>("square", 6).Get(), 36);  // on the worker that is up
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1200));
  auto pids = pool->Broadcast<int>("pid", 0);  // waits for the late one
  ASSERT_TRUE(pids.ok()) << pids.status().ToString();
  ASSERT_EQ(pids->size(), 2u);
  EXPECT_NE(*(*pids)[0], *(*pids)[1]);
  EXPECT_EQ(pool->Stats().workers_replaced, 0u);
}

TEST(PoolTest, WorkersBeyondTheCpusStartEvenWithoutWork) {
  // The ones past the CPUs wait for the first task, or a moment: with no
  // task at all they must start all the same.
  for (auto backend : {PoolOptions::Backend::kSpawn, PoolOptions::Backend::kFork}) {
    PoolOptions o = Small(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())) + 2);
    o.backend = backend;
    o.create_waits_for = PoolOptions::StartWait::kFirstWorker;
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (pool->Stats().workers_ready < o.workers && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    PoolStats s = pool->Stats();
    EXPECT_EQ(s.workers_ready, o.workers);
    EXPECT_EQ(s.tasks_done, 0u);
    EXPECT_EQ(s.workers_replaced, 0u);
  }
}

TEST(PoolTest, APoolCreatedOnAThreadThatEndsKeepsItsWorkers) {
  // A worker's parent-death signal follows the thread that started it:
  // workers started by a thread that ends would be killed with it.
  for (auto backend : {PoolOptions::Backend::kSpawn, PoolOptions::Backend::kFork}) {
    PoolOptions o = Small(2);
    o.backend = backend;
    o.create_waits_for = PoolOptions::StartWait::kEveryWorker;
    std::unique_ptr<Pool> pool;
    std::thread([&] { pool = MakePool(o); }).join();
    ASSERT_TRUE(pool);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a signal's time to land
    auto pids = pool->Broadcast<int>("pid", 0);
    ASSERT_TRUE(pids.ok()) << pids.status().ToString();
    for (auto& pid : *pids) ASSERT_TRUE(pid.ok()) << pid.status().ToString();
    EXPECT_EQ(*pool->Submit<int>("square", 9).Get(), 81);
    EXPECT_EQ(pool->Stats().workers_replaced, 0u) << "backend " << static_cast<int>(backend);
  }
}

TEST(PoolTest, CreateCanReturnOnceTheFirstWorkerIsLaunched) {
  // Every worker sleeps before it starts: Create returns at once, and the
  // task waits in the queue for the first worker up.
  PoolOptions o = SlowWorker("sleep 1", 0);
  o.workers = 1;
  o.create_waits_for = PoolOptions::StartWait::kFirstLaunch;
  auto t0 = std::chrono::steady_clock::now();
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(800));
  EXPECT_EQ(pool->Stats().workers_ready, 0);
  EXPECT_EQ(*pool->Submit<int>("square", 7).Get(), 49);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(900));

  // A worker that dies before it reports in is no error of Create's then,
  // but a death: replaced, and in the end retired, failing the work.
  o = Small(1);
  o.worker_executable = "/bin/false";
  o.create_waits_for = PoolOptions::StartWait::kFirstLaunch;
  o.restart_window = std::chrono::milliseconds(5000);
  auto doomed = MakePool(o);
  ASSERT_TRUE(doomed);
  auto r = doomed->Submit<int>("square", 2).Get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kWorkerCrashed) << r.status().ToString();
  // Only the launch itself is Create's to fail.
  o.worker_executable = "/nonexistent/worker";
  auto missing = Pool::Create(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().ToString();
}

TEST(PoolTest, AWorkerThatNeverReportsInIsKilledAndInTheEndRetired) {
  PoolOptions o = SlowSecondWorker("exec sleep 600");  // the killed process is sleep
  o.start_timeout = std::chrono::milliseconds(300);
  o.restart_window = std::chrono::milliseconds(5000);
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto squares = pool->Map<int>("square", std::vector<int>{1, 2, 3});
  ASSERT_TRUE(squares.ok()) << squares.status().ToString();
  EXPECT_EQ(*squares, (std::vector<int>{1, 4, 9}));
  // Killed after 300 ms each time, replaced, retired after its third death:
  // a broadcast then fails for it instead of waiting for ever.
  auto pids = pool->Broadcast<int>("pid", 0);
  ASSERT_TRUE(pids.ok()) << pids.status().ToString();
  EXPECT_TRUE((*pids)[0].ok());
  EXPECT_EQ((*pids)[1].status().code(), StatusCode::kWorkerCrashed) << (*pids)[1].status().ToString();
  EXPECT_EQ(pool->Stats().workers_replaced, 2u);
  EXPECT_EQ(*pool->Submit<int>("square", 5).Get(), 25);
}

TEST(PoolTest, ThreadsAndForkBackendsRunTheSameTasks) {
  for (auto backend : {PoolOptions::Backend::kThreads, PoolOptions::Backend::kFork}) {
    PoolOptions o = Small();
    o.backend = backend;
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    auto model = pool->Share(SharedModel(1000));
    ASSERT_TRUE(model.ok());
    auto r = pool->Map<int>("square", std::vector<int>{1, 2, 3});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, (std::vector<int>{1, 4, 9}));
    EXPECT_EQ(*pool->Submit<double>("sum_shared", SumArgs{*model, 0, 1000}).Get(), 1000.0);
  }
}

// An argument moved into Submit whose array lives in the pool's store is
// adopted by the argument's store object; an lvalue is copied into one.
TEST(PoolTest, ASubmittedRvalueAdoptsItsStoreArraysAndAnLvalueIsCopied) {
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  constexpr size_t kFloats = 1 << 20;  // 4 MiB
  auto used = [&] { return static_cast<int64_t>(pool->store().Stats()->used); };
  Model m;
  m.factors = std::move(*Array<float>::AllocateIn(pool->store(), kFloats));
  int64_t before = used();
  auto moved = pool->Submit<uint64_t>("slow_model_size", std::move(m));
  EXPECT_LT(used() - before, int64_t{64} << 10);  // no second 4 MiB
  EXPECT_EQ(*moved.Get(), kFloats);
  Model kept;
  kept.factors = std::move(*Array<float>::AllocateIn(pool->store(), kFloats));
  before = used();
  auto copied = pool->Submit<uint64_t>("slow_model_size", kept);
  EXPECT_GE(used() - before, static_cast<int64_t>(kFloats * sizeof(float)));
  EXPECT_EQ(*copied.Get(), kFloats);
  EXPECT_EQ(kept.factors.size(), kFloats);  // the caller's is untouched
}

TEST(PoolTest, ForkHooksRunAroundEachForkOfAWorker) {
  std::atomic<int> prepared{0}, parented{0};
  std::mutex mu;
  std::vector<std::string> lines;
  PoolOptions o = Small(2);
  o.backend = PoolOptions::Backend::kFork;
  o.fork_hooks.prepare = [&] {
    ++prepared;
    return Status::OK();
  };
  o.fork_hooks.parent = [&] { ++parented; };
  o.fork_hooks.child = [](const std::shared_ptr<Store>& store) {
    // The worker's handle on the pool's store, opened in the child: usable.
    fork_child_mark = store && store->Stats().ok() ? 7 : 1;
    std::printf("child hook ran\n");  // stdout is already the log pipe
    std::fflush(stdout);
  };
  o.fork_hooks.child_exit = [] {  // after the loop, before _exit: still the log pipe
    std::printf("child exit hook ran with mark %d\n", fork_child_mark);
    std::fflush(stdout);
  };
  o.log_sink = [&](int, std::string_view line) {
    std::lock_guard<std::mutex> lock(mu);
    lines.emplace_back(line);
  };
  {
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    auto marks = pool->Broadcast<int>("fork_child_mark", 0);
    ASSERT_TRUE(marks.ok()) << marks.status().ToString();
    for (auto& m : *marks) EXPECT_EQ(*m, 7);
    EXPECT_EQ(fork_child_mark, 0);  // the parent's own is untouched
    EXPECT_EQ(prepared.load(), 2);
    EXPECT_EQ(parented.load(), 2);
  }
  EXPECT_EQ(std::count(lines.begin(), lines.end(), "child hook ran"), 2);
  EXPECT_EQ(std::count(lines.begin(), lines.end(), "child exit hook ran with mark 7"), 2);

  // A prepare hook that refuses: no worker is forked, Create says why.
  o.fork_hooks.prepare = [] { return Cancelled("the runtime is shutting down"); };
  parented = 0;
  auto refused = Pool::Create(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kCancelled);
  EXPECT_NE(refused.status().message().find("shutting down"), std::string::npos);
  EXPECT_EQ(parented.load(), 0);
  EXPECT_TRUE(DescendantsOf(getpid()).empty());
}

TEST(PoolTest, AWaitThatSpinsFirstGetsTheAnswerOrTimesOut) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto quick = pool->Submit<int>("square", 7);
  EXPECT_TRUE(quick.WaitFor(std::chrono::milliseconds(20000), std::chrono::microseconds(200)));
  EXPECT_EQ(*quick.Get(), 49);
  auto slow = pool->Submit<int>("sleep_ms", 300);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(slow.WaitFor(std::chrono::milliseconds(20), std::chrono::microseconds(5000)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(250));
  EXPECT_EQ(*slow.Get(), 300);
}

// A model put in a store of the caller's before the pool starts is shared
// with the workers as it is: the pool works in that store.
TEST(PoolTest, APoolCanWorkInAStoreItIsGiven) {
  StoreOptions so;
  so.backing = Backing::kMemfd;
  so.capacity = 64 << 20;
  auto store = Store::Create("", so);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto id = store->Put(SharedModel(1000));
  ASSERT_TRUE(id.ok());
  uint64_t used = store->Stats()->used;
  {
    PoolOptions o = Small(2);
    o.store_fd = store->fd();
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    EXPECT_EQ(*pool->Submit<double>("sum_shared", SumArgs{Shared<Model>{*id}, 0, 1000}).Get(),
              1000.0);
    EXPECT_EQ(pool->store().Stats()->used, used);  // nothing was copied in
  }
  EXPECT_TRUE(store->Contains(*id));  // the caller's store and object outlive the pool

  PoolOptions bad = Small(2);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  bad.store_fd = pipe_fds[0];
  auto refused = Pool::Create(bad);
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("store_fd"), std::string::npos)
      << refused.status().message();
  close(pipe_fds[0]);
  close(pipe_fds[1]);

  so.max_clients = 2;  // the caller's handle and the pool's: no room for workers
  auto cramped = Store::Create("", so);
  ASSERT_TRUE(cramped.ok());
  bad.store_fd = cramped->fd();
  auto full = Pool::Create(bad);
  EXPECT_EQ(full.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(full.status().message().find("free client slots"), std::string::npos)
      << full.status().message();
}

TEST(PoolTest, MapWithContextMergesUpdatesInOrder) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  Tally tally;
  tally.counts["offset"] = 100;
  std::vector<int> args = {1, 2, 3, 4};
  std::function<void(Tally&, int&&)> merge = [](Tally& t, int&& u) {
    t.counts["seen"] += u;
    t.counts["order"] = t.counts["order"] * 10 + u;
  };
  auto r = pool->MapWithContext<int, int>("doubler", args, tally, merge);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, (std::vector<int>{102, 104, 106, 108}));
  EXPECT_EQ(tally.counts["seen"], 10);
  EXPECT_EQ(tally.counts["order"], 1234);
}

// The argument of a retried task lives in the store: the retry must find it
// there, and nothing may be left once the task is answered.
TEST(PoolTest, ARetriedTaskKeepsItsArgumentFromTheStore) {
  PoolOptions o = Small();
  o.max_retries = 1;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  BigArg arg = MakeBigArg("/tmp/" + zcstore::testing::UniqueName("retry-big"));
  double expected = 0;
  for (float v : arg.values) expected += v;
  auto r = pool->Submit<double>("big_sum", arg).Get();
  unlink(arg.marker.c_str());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, expected);
  EXPECT_EQ(pool->Stats().workers_replaced, 1u);
  EXPECT_EQ(pool->store().Stats()->objects, 0u);
}

// One argument in the store serves every worker, and goes when all are done.
TEST(PoolTest, BroadcastOfALargeArgumentReachesEveryWorker) {
  auto pool = MakePool(Small(3));
  ASSERT_TRUE(pool);
  BigArg arg = MakeBigArg("");
  double expected = 0;
  for (float v : arg.values) expected += v;
  auto r = pool->Broadcast<double>("big_sum", arg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  for (auto& sum : *r) {
    ASSERT_TRUE(sum.ok()) << sum.status().ToString();
    EXPECT_EQ(*sum, expected);
  }
  EXPECT_EQ(pool->store().Stats()->objects, 0u);
}

TEST(PoolTest, BroadcastRunsOnceOnEveryWorker) {
  auto pool = MakePool(Small(3));
  ASSERT_TRUE(pool);
  auto r = pool->Broadcast<int>("pid", 0);
  ASSERT_TRUE(r.ok());
  std::set<int> pids;
  for (auto& p : *r) pids.insert(p.value());
  auto expected = pool->worker_pids();
  EXPECT_EQ(pids, std::set<int>(expected.begin(), expected.end()));
}

// A caller asleep on a queued task is woken by CancelAll from another thread
// at once, not by its wait's 1 s safety net: the worker is busy for longer
// than that, so no answer can wake it instead.
TEST(PoolTest, ACancelWakesTheCallerAsleepOnThatTask) {
  PoolOptions o = Small(1);
  o.max_in_flight_per_worker = 1;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto busy = pool->Submit<int>("sleep_ms", 1300);
  auto queued = pool->Submit<int>("square", 3);
  std::atomic<bool> asleep{false};
  Status got;
  std::thread waiter([&] {
    asleep = true;
    got = queued.Get().status();
  });
  while (!asleep) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let it fall asleep
  pool->CancelAll();  // only `queued` has not started
  waiter.join();
  EXPECT_EQ(got.code(), StatusCode::kCancelled) << got.ToString();
  EXPECT_EQ(pool->Stats().late_wakeups, 0u);
  EXPECT_TRUE(busy.Get().ok());
}

TEST(PoolTest, CancelledTasksFailWithCancelled) {
  PoolOptions o = Small(1);
  o.max_in_flight_per_worker = 1;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  std::vector<Future<int>> futures;
  for (int i = 0; i < 10; ++i) futures.push_back(pool->Submit<int>("sleep_ms", 50));
  pool->CancelAll();
  int cancelled = 0, done = 0;
  for (auto& f : futures) {
    auto r = f.Get();
    if (r.ok()) ++done;
    else if (r.status().code() == StatusCode::kCancelled) ++cancelled;
  }
  // The one in the worker's ring ran if it had started, else it was
  // withdrawn too: nothing that had not started runs.
  EXPECT_LE(done, 1);
  EXPECT_GE(cancelled, 9);
  EXPECT_EQ(done + cancelled, 10);
  EXPECT_EQ(pool->Submit<int>("square", 6).Get().value(), 36);
}

// A task already sent to a busy worker's queue is taken back by Cancel: its
// future fails at once, and the worker skips it (it never runs). A task
// that has started is Running, and Cancel leaves it to finish.
TEST(PoolTest, CancelTakesATaskBackFromABusyWorkersQueue) {
  for (auto backend : {PoolOptions::Backend::kSpawn, PoolOptions::Backend::kFork,
                       PoolOptions::Backend::kThreads}) {
    SCOPED_TRACE(static_cast<int>(backend));
    PoolOptions o = Small(1);
    o.backend = backend;
    o.max_in_flight_per_worker = 2;  // the second task waits in the worker's ring
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    testing::TempDir dir;
    std::string path = dir.path() + "/ran";
    auto busy = pool->Submit<int>("sleep_ms", 400);
    auto queued = pool->Submit<int>("touch", path);
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!busy.handle().Running() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_TRUE(busy.handle().Running());
    EXPECT_FALSE(queued.handle().Running());
    EXPECT_TRUE(queued.Cancel());
    EXPECT_TRUE(queued.Cancel());  // a second cancel says the same
    EXPECT_TRUE(queued.Ready());   // at once, not after the busy task
    EXPECT_EQ(queued.Get().status().code(), StatusCode::kCancelled);
    auto handle = busy.handle();
    EXPECT_FALSE(handle.Cancel());  // started: it runs to its end
    EXPECT_EQ(busy.Get().value(), 400);
    EXPECT_FALSE(handle.Running());
    EXPECT_EQ(pool->Submit<int>("square", 3).Get().value(), 9);  // the worker goes on
    ASSERT_TRUE(pool->Shutdown().ok());
    EXPECT_FALSE(std::filesystem::exists(path)) << "a withdrawn task ran";
    EXPECT_EQ(pool->Stats().tasks_done, 2u);  // the skipped one is not counted as done
  }
}

// Runs `body` on each backend with a two-worker pool whose workers are both
// up, and `dir` for wait_file's files.
template <typename Body>
void OnEveryBackendWithTwoReadyWorkers(Body body) {
  for (auto backend : {PoolOptions::Backend::kSpawn, PoolOptions::Backend::kFork,
                       PoolOptions::Backend::kThreads}) {
    SCOPED_TRACE(static_cast<int>(backend));
    PoolOptions o = Small(2);
    o.backend = backend;
    o.max_in_flight_per_worker = 2;
    auto pool = MakePool(o);
    ASSERT_TRUE(pool);
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (pool->Stats().workers_ready < 2 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_EQ(pool->Stats().workers_ready, 2u);
    testing::TempDir dir;
    body(*pool, dir.path());
    ASSERT_TRUE(pool->Shutdown().ok());
  }
}

// Waits (at most 20 s) until `f`'s task runs in a worker.
template <typename F>
bool StartsRunning(F& f) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!f.handle().Running() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return f.handle().Running();
}

TEST(PoolTest, AQuickTaskGoesToTheIdleWorkerNotBehindALongOne) {
  OnEveryBackendWithTwoReadyWorkers([](Pool& pool, const std::string& dir) {
    auto slow = pool.Submit<int>("wait_file", dir + "/end");
    ASSERT_TRUE(StartsRunning(slow));
    auto quick = pool.Submit<int>("square", 5);
    EXPECT_EQ(quick.Get().value(), 25);
    EXPECT_FALSE(slow.Ready()) << "the quick task waited for the slow one";
    std::FILE* f = std::fopen((dir + "/end").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
    EXPECT_EQ(slow.Get().value(), 7);
  });
}

TEST(PoolTest, AnIdleWorkerTakesWhatWaitsBehindABusyWorkersTask) {
  OnEveryBackendWithTwoReadyWorkers([](Pool& pool, const std::string& dir) {
    // One long task on each worker, and one quick task queued behind each.
    auto long0 = pool.Submit<int>("wait_file", dir + "/end0");
    auto long1 = pool.Submit<int>("wait_file", dir + "/end1");
    ASSERT_TRUE(StartsRunning(long0));
    ASSERT_TRUE(StartsRunning(long1));
    auto quick0 = pool.Submit<int>("square", 2);
    auto quick1 = pool.Submit<int>("square", 3);
    EXPECT_FALSE(quick0.Ready());
    EXPECT_FALSE(quick1.Ready());
    // One long task ends: its worker runs its own quick task, then takes
    // the other one from behind the long task still running.
    std::FILE* f = std::fopen((dir + "/end1").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
    EXPECT_EQ(long1.Get().value(), 7);
    EXPECT_EQ(quick0.Get().value(), 4);
    EXPECT_EQ(quick1.Get().value(), 9);
    EXPECT_FALSE(long0.Ready()) << "a quick task waited behind a long one";
    f = std::fopen((dir + "/end0").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
    EXPECT_EQ(long0.Get().value(), 7);
    EXPECT_EQ(pool.Stats().tasks_done, 4u);  // the stolen task is counted once
  });
}

std::vector<float> BigResult(TaskContext&, const int& n) { return std::vector<float>(n, 2.f); }
ZCSTORE_TASK("big_result", BigResult);

TEST(PoolTest, LargeResultsComeBackThroughTheStoreAndNeverLeak) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto r = pool->Submit<std::vector<float>>("big_result", 100000).Get();  // 400 KB: via the store
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->size(), 100000u);
  EXPECT_EQ((*r)[99999], 2.f);
  {
    auto dropped = pool->Submit<std::vector<float>>("big_result", 100000);
    auto dropped_late = pool->Submit<std::vector<float>>("big_result", 100000);
    while (!dropped.Ready()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }  // one dropped after its answer came, one (likely) before
  (void)pool->Submit<int>("square", 1).Get();
  ASSERT_TRUE(pool->Shutdown().ok());  // every answer is in
  EXPECT_EQ(pool->store().Stats()->objects, 0u);  // no result object left behind
}

TEST(PoolTest, ProgressCallbackSeesTheEnd) {
  std::atomic<uint64_t> last_done{0}, last_total{0};
  PoolOptions o = Small();
  o.progress = [&](uint64_t d, uint64_t t) {
    last_done = d;
    last_total = t;
  };
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  std::vector<int> args(500, 1);
  ASSERT_TRUE(pool->Map<int>("sleep_ms", args, {.chunk_size = 50}).ok());
  (void)pool->Shutdown();
  EXPECT_EQ(last_total.load(), 500u);
  EXPECT_EQ(last_done.load(), 500u);
}

// ---- the parent killed: its workers (and theirs) go within a second.

bool Gone(pid_t pid) {
  int status;
  waitpid(pid, &status, WNOHANG);  // we are the subreaper: reap what we can
  return kill(pid, 0) != 0 && errno == ESRCH;
}

void ExpectAllGoneWithin1s(const std::vector<pid_t>& pids) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  std::vector<pid_t> left = pids;
  while (!left.empty() && std::chrono::steady_clock::now() < deadline) {
    left.erase(std::remove_if(left.begin(), left.end(), Gone), left.end());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(left.empty()) << left.size() << " processes outlived their parent by 1 s";
}

std::vector<pid_t> ReadPids(zcstore::testing::Child& parent, size_t count) {
  std::vector<pid_t> pids;
  while (pids.size() < count) {
    std::string line = parent.ReadLine(30000);
    if (line.empty()) break;
    std::istringstream in(line);
    std::string word;
    in >> word;
    if (word != "pids") continue;
    pid_t p;
    while (in >> p) pids.push_back(p);
  }
  return pids;
}


// ------------------------------------------------------------ faults

// Kills worker `index` while it idles and waits until it has been replaced
// (its pid changes) or retired (0).
void KillIdleWorker(Pool& pool, int index) {
  pid_t before = pool.worker_pids()[index];
  ASSERT_GT(before, 0);
  kill(before, SIGKILL);
  for (int i = 0; i < 2000 && pool.worker_pids()[index] == before; ++i) usleep(1000);
  ASSERT_NE(pool.worker_pids()[index], before) << "the death was never noticed";
}

TEST(PoolFaultTest, AWorkerInACrashLoopIsRetiredAndNewWorkFailsAtOnce) {
  // One worker killed four times while idle: after the third quick death it
  // is not replaced, and with no worker left nothing may wait for one.
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  for (int i = 0; i < 3; ++i) KillIdleWorker(*pool, 0);
  EXPECT_EQ(pool->worker_pids()[0], 0);
  auto r = pool->Submit<int>("square", 3).Get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kWorkerCrashed);
  EXPECT_NE(r.status().message().find("no worker left"), std::string::npos) << r.status().ToString();
  auto m = pool->Map<int>("square", std::vector<int>{1, 2, 3});
  EXPECT_EQ(m.status().code(), StatusCode::kWorkerCrashed);
}

TEST(PoolFaultTest, DeathsFarApartNeverRetireAWorker) {
  PoolOptions o = Small(1);
  o.restart_window = std::chrono::milliseconds(30);
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  for (int i = 0; i < 5; ++i) {
    KillIdleWorker(*pool, 0);
    ASSERT_GT(pool->worker_pids()[0], 0) << "retired after " << i + 1 << " rare deaths";
    usleep(60 * 1000);  // the time between deaths is what is under test
  }
  EXPECT_EQ(*pool->Submit<int>("square", 4).Get(), 16);
  EXPECT_EQ(pool->Stats().workers_replaced, 5u);
}

TEST(PoolFaultTest, BroadcastNeverWaitsForARetiredWorker) {
  auto pool = MakePool(Small(2));
  ASSERT_TRUE(pool);
  for (int round = 0; round < 4; ++round) {
    auto r = pool->Broadcast<int>("die_on_worker_0", 0);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->size(), 2u);
    EXPECT_EQ((*r)[0].status().code(), StatusCode::kWorkerCrashed);
    ASSERT_TRUE((*r)[1].ok());
    EXPECT_EQ(*(*r)[1], 1);
  }
  auto r = pool->Broadcast<int>("square", 5);
  ASSERT_TRUE(r.ok());
  EXPECT_NE((*r)[0].status().message().find("retired"), std::string::npos)
      << (*r)[0].status().ToString();
  EXPECT_EQ(*(*r)[1], 25);
  EXPECT_EQ(*pool->Submit<int>("square", 6).Get(), 36);  // worker 1 carries on
}

TEST(PoolFaultTest, ARetriedBroadcastItemRunsOnItsOwnWorker) {
  PoolOptions o = Small(2);
  o.max_retries = 1;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  testing::TempDir dir;
  auto r = pool->Broadcast<int>("index_crash_once_on_0", dir.path() + "/marker");
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)[0].ok()) << (*r)[0].status().ToString();
  EXPECT_EQ(*(*r)[0], 0) << "worker 0's item ran on another worker";
  EXPECT_EQ(*(*r)[1], 1);
}

TEST(PoolFaultTest, DeathsAreSeenWhenTheProgramIgnoresSigchld) {
  // With SIGCHLD ignored the kernel reaps the workers itself: waitpid says
  // ECHILD, and the death must still fail its task rather than hang.
  signal(SIGCHLD, SIG_IGN);
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  std::vector<int> args(30);
  for (int i = 0; i < 30; ++i) args[i] = i;
  auto r = pool->Map<int>("crash_on_13", args, {.chunk_size = 1});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kWorkerCrashed) << r.status().ToString();
  EXPECT_EQ(*pool->Submit<int>("square", 9).Get(), 81);
  pool.reset();
  signal(SIGCHLD, SIG_DFL);
}

TEST(PoolFaultTest, ADescendantHoldingAWorkersLogPipeNeverStallsThePool) {
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  // The orphan holds the pipe for 2 s; the pool must not wait for it to
  // see the death (a bound far above the milliseconds this takes).
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(pool->Submit<int>("die_leaving_a_child", 0).Get().status().code(),
            StatusCode::kWorkerCrashed);
  EXPECT_EQ(*pool->Submit<int>("square", 3).Get(), 9);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1500));
}

TEST(PoolFaultTest, AFutureThatOutlivesItsPoolSaysSo) {
  struct Holder {
    std::optional<Future<int>> future;  // declared before the pool: destroyed after it
    std::unique_ptr<Pool> pool;
  };
  auto h = std::make_unique<Holder>();
  h->pool = MakePool();
  ASSERT_TRUE(h->pool);
  h->future = h->pool->Submit<int>("sleep_ms", 20);
  auto lost = h->pool->Submit<int>("square", 2);
  h->pool.reset();
  auto r = h->future->Get();
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_TRUE(lost.Ready());
  h.reset();  // ~Future after ~Pool: nothing to touch
}

TEST(PoolFaultTest, AHugeTaskErrorIsCutNotACrash) {
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  auto r = pool->Submit<int>("huge_error", 100000).Get();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().code(), StatusCode::kWorkerCrashed) << r.status().ToString().substr(0, 200);
  EXPECT_NE(r.status().message().find("more bytes cut"), std::string::npos);
  EXPECT_EQ(pool->Stats().workers_replaced, 0u);
}

TEST(PoolFaultTest, TaskTimeoutCountsRunningTimeNotQueueTime) {
  // One worker, three 150 ms tasks at once, a 400 ms limit: the third waits
  // 300 ms behind the others, but runs for 150 ms only.
  PoolOptions o = Small(1);
  o.task_timeout = std::chrono::milliseconds(400);
  o.max_in_flight_per_worker = 3;
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto r = pool->Map<int>("sleep_ms", std::vector<int>{150, 150, 150});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(pool->Stats().workers_replaced, 0u);
  // And a task that really runs too long still fails.
  EXPECT_EQ(pool->Submit<int>("sleep_ms", 1000).Get().status().code(), StatusCode::kTimeout);
}

TEST(PoolFaultTest, ResultsAKilledWorkerNeverReportedAreDeleted) {
  // Each chunk's results are reported together at its end: a worker killed
  // by its chunk's last item has stored the others' results already.
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  std::vector<int> args = {20000, 20000, 20000, 20000, 20000, 20000, -1};
  auto r = pool->Map<std::vector<float>>("big_or_die", args, {.chunk_size = 8});
  EXPECT_EQ(r.status().code(), StatusCode::kWorkerCrashed);
  auto stats = pool->store().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->objects, 0u) << "results of the killed worker were left in the store";
}



TEST(PoolFaultTest, AnUnshareNeverGetsLostWhenAWorkersRingIsFull) {
  // The worker attaches X, then sleeps in a task while more Detach messages
  // than its ring holds arrive; X's comes last. Dropped, the worker would
  // keep X pinned (deleted but held) until the pool ended.
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  auto x = pool->Share(SharedModel(1000));
  ASSERT_TRUE(x.ok());
  ASSERT_TRUE(pool->Submit<std::string>("where_shared", *x).Get().ok());  // attached
  auto busy = pool->Submit<int>("sleep_ms", 1500);
  for (int batch = 0; batch < 6; ++batch) {  // 6 x 2000 Detaches: more than the ring's 8192
    std::vector<Shared<Model>> refs;
    for (int i = 0; i < 2000; ++i) refs.push_back(*pool->Share(Model{}));
    for (auto& r : refs) ASSERT_TRUE(pool->Unshare(r).ok());
  }
  ASSERT_TRUE(pool->Unshare(*x).ok());
  EXPECT_EQ(pool->store().Stats()->deleted_pinned, 1u);  // X: the worker holds it still
  ASSERT_TRUE(busy.Get().ok());
  int waited_ms = 0;
  while (pool->store().Stats()->deleted_pinned != 0 && waited_ms < 5000) {
    usleep(10000);
    waited_ms += 10;
  }
  EXPECT_EQ(pool->store().Stats()->deleted_pinned, 0u) << "the worker never let go of X";
}



TEST(PoolFaultTest, AForgottenWorkerMainFailsAtOnceAndStartsNoProcessStorm) {
  // This process adopts every orphan, so that whatever the program leaves
  // behind can be seen, counted and (as a watchdog) killed: as root, a
  // process limit would not hold a storm.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  auto program = testing::Child::Run(ZCSTORE_NO_WORKER_MAIN, {});
  std::string line = program.ReadLine(8000);
  bool timed_out = program.timed_out();
  program.Wait(timed_out ? 1 : 20000);
  // Once the program has exited, whatever it started must be gone soon
  // after (its death signal); what comes back to this subreaper is reaped.
  std::vector<pid_t> left;
  for (int i = 0; i < 400; ++i) {
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    left = DescendantsOf(getpid());
    if (left.empty()) break;
    usleep(5000);
  }
  size_t stragglers = left.size();
  for (int round = 0; round < 50 && !left.empty(); ++round) {  // the watchdog
    for (pid_t p : left) kill(p, SIGKILL);
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    usleep(2000);
    left = DescendantsOf(getpid());
  }
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  ASSERT_FALSE(timed_out) << "no answer within 8 s";
  EXPECT_EQ(line.rfind("WorkerCrashed", 0), 0u) << line;
  EXPECT_NE(line.find("ZCSTORE_WORKER_MAIN"), std::string::npos) << line;
  double seconds = std::atof(line.substr(line.rfind("after ") + 6).c_str());
  EXPECT_LT(seconds, 1.0) << line;  // one clear error within a second, not start_timeout's 20 s
  EXPECT_EQ(stragglers, 0u) << "processes outlived the program";
}

TEST(PoolFaultTest, TortureRandomSigkillsDuringMapsLoseNothingAndLeakNothing) {
  // 200 SIGKILLs at random instants of the workers' lives during Maps:
  // every task ends done (with the right value) or WorkerCrashed, the pool
  // stays usable, and nothing is left in its store.
  setenv("ZCSTORE_TEST_SUICIDE", "1", 1);
  PoolOptions o = Small(2);
  o.restart_window = std::chrono::milliseconds(1);  // random kills are no crash loop
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  std::vector<int> args(2000);
  for (int i = 0; i < 2000; ++i) args[i] = i;
  uint64_t done = 0, crashed = 0;
  for (int map = 0; pool->Stats().workers_replaced < 200 && map < 400; ++map) {
    Status st = pool->MapUnordered<int>("armed_square", args, [&](size_t i, Result<int> r) {
      if (r.ok()) {
        EXPECT_EQ(*r, static_cast<int>(i * i));
        ++done;
      } else {
        EXPECT_EQ(r.status().code(), StatusCode::kWorkerCrashed) << r.status().ToString();
        ++crashed;
      }
    });
    EXPECT_TRUE(st.ok() || st.code() == StatusCode::kWorkerCrashed) << st.ToString();
  }
  unsetenv("ZCSTORE_TEST_SUICIDE");
  EXPECT_GE(pool->Stats().workers_replaced, 200u);
  EXPECT_GT(done, crashed);
  EXPECT_EQ(pool->Stats().late_wakeups, 0u);
  auto stats = pool->store().Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->objects, 0u);
  EXPECT_EQ(stats->unsealed, 0u);
  RecordProperty("done", static_cast<int>(done));
  RecordProperty("crashed", static_cast<int>(crashed));
}


TEST(PoolApiTest, MapResultsKeepsEveryItemsResultAndMapTakesABracedList) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  auto all = pool->MapResults<int>("crash_on_13", std::vector<int>{11, 12, 13, 14}, {.chunk_size = 1});
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ(*(*all)[0], 11);
  EXPECT_EQ(*(*all)[1], 12);
  EXPECT_EQ((*all)[2].status().code(), StatusCode::kWorkerCrashed);
  EXPECT_EQ(*(*all)[3], 14);  // Map would have returned only the error
  auto tripled = pool->Map<int>("triple", {1, 2, 3});  // a namespaced task, a braced list
  ASSERT_TRUE(tripled.ok()) << tripled.status().ToString();
  EXPECT_EQ(*tripled, (std::vector<int>{3, 6, 9}));
  EXPECT_EQ(pool->MapResults<int>("no_such_task", std::vector<int>{1}).status().code(),
            StatusCode::kNotFound);
}


TEST(PoolApiTest, TimeoutsPerCallAndChunksLongerThanOneTask) {
  auto pool = MakePool(Small(1));  // no pool-wide timeout
  ASSERT_TRUE(pool);
  auto slow = pool->Submit<int>("sleep_ms", 2000, {.task_timeout = std::chrono::milliseconds(200)});
  auto r = slow.Get();
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout) << r.status().ToString();
  EXPECT_NE(r.status().message().find("longer than 200 ms"), std::string::npos) << r.status().ToString();
  // In a chunk of three, only the slow middle task fails; the others run
  // (again, if they had finished unreported when the worker was stopped).
  auto all = pool->MapResults<int>("sleep_ms", std::vector<int>{20, 2000, 20},
                                   {.chunk_size = 3, .task_timeout = std::chrono::milliseconds(300)});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(*(*all)[0], 20);
  EXPECT_EQ((*all)[1].status().code(), StatusCode::kTimeout);
  EXPECT_EQ(*(*all)[2], 20);
  // Without a per-call limit nothing is timed.
  EXPECT_EQ(*pool->Submit<int>("sleep_ms", 400).Get(), 400);
}


TEST(PoolApiTest, WaitForAndWaitAnyGiveUpOrReturnTheFirstDone) {
  using std::chrono::milliseconds;
  PoolOptions o = Small(2);
  o.max_in_flight_per_worker = 1;  // one task per worker: the short one does not queue
  auto pool = MakePool(o);
  ASSERT_TRUE(pool);
  auto slow = pool->Submit<int>("sleep_ms", 400);
  EXPECT_FALSE(slow.WaitFor(milliseconds(30)));
  EXPECT_TRUE(slow.WaitFor(milliseconds(10000)));
  EXPECT_TRUE(slow.Ready());
  EXPECT_EQ(*slow.Get(), 400);
  std::vector<Future<int>> fs;
  fs.push_back(pool->Submit<int>("sleep_ms", 600));
  fs.push_back(pool->Submit<int>("sleep_ms", 30));
  auto first = WaitAny<int>(fs, milliseconds(10000));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(*first, 1u);
  EXPECT_EQ(*fs[1].Get(), 30);
  EXPECT_EQ(WaitAny<int>(std::span(fs.data(), 1), milliseconds(20)).status().code(),
            StatusCode::kTimeout);
  EXPECT_EQ(WaitAny<int>(fs).status().code(), StatusCode::kInvalidArgument);  // fs[1] was taken
  EXPECT_EQ(*fs[0].Get(), 600);
  EXPECT_EQ(pool->Stats().late_wakeups, 0u);
}

TEST(PoolApiTest, AWaitAnyStoppedByAnotherThreadReturnsCancelled) {
  using std::chrono::milliseconds;
  auto pool = MakePool(Small(1));
  ASSERT_TRUE(pool);
  std::vector<Future<int>> fs;
  fs.push_back(pool->Submit<int>("sleep_ms", 1500));
  std::atomic<bool> stop{false};
  std::thread stopper([&] {
    std::this_thread::sleep_for(milliseconds(100));
    stop = true;
    pool->WakeWaiters();
  });
  auto start = std::chrono::steady_clock::now();
  auto r = WaitAny<int>(fs, milliseconds(10000), {.stop = &stop});
  auto waited = std::chrono::steady_clock::now() - start;
  stopper.join();
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  // Woken, not found by the sleeping waiter's 1 s safety net.
  EXPECT_LT(waited, milliseconds(900));
  // Stopped before it waits: at once, spinning or not.
  EXPECT_EQ(WaitAny<int>(fs, milliseconds(10000), {.spin = std::chrono::microseconds(200), .stop = &stop})
                .status()
                .code(),
            StatusCode::kCancelled);
  stop = false;
  auto done = WaitAny<int>(fs, milliseconds(10000), {.stop = &stop});
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  EXPECT_EQ(*fs[0].Get(), 1500);
}

TEST(PoolTest, KillingTheParentTakesEveryWorkerDownWithin1s) {
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  auto parent = zcstore::testing::Child::Run("/proc/self/exe", {"--pool-parent", "plain"});
  std::vector<pid_t> pids = ReadPids(parent, 2);
  ASSERT_EQ(pids.size(), 2u);
  parent.Kill(SIGKILL);
  parent.Wait();
  ExpectAllGoneWithin1s(pids);
}

TEST(PoolTest, KillingTheTopOfNestedPoolsTakesEveryLevelDown) {
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  auto parent = zcstore::testing::Child::Run("/proc/self/exe", {"--pool-parent", "nested"});
  std::vector<pid_t> pids = ReadPids(parent, 4);  // two workers, one inner worker each
  ASSERT_EQ(pids.size(), 4u);
  parent.Kill(SIGKILL);
  parent.Wait();
  ExpectAllGoneWithin1s(pids);
}

}  // namespace
}  // namespace zcstore

// --pool-parent plain|nested: a process that runs a pool, prints its worker
// pids ("pids A B", or for nested each worker's "pids W INNER"), and waits.
static int PoolParent(const std::string& mode) {
  zcstore::PoolOptions o;
  o.workers = 2;
  o.store_capacity = 4 << 20;
  o.progress_bar = false;
  o.log_sink = [](int, std::string_view line) {
    std::printf("%.*s\n", static_cast<int>(line.size()), line.data());
    std::fflush(stdout);
  };
  auto pool = zcstore::Pool::Create(o);
  if (!pool.ok()) {
    std::printf("error %s\n", pool.status().ToString().c_str());
    return 1;
  }
  if (mode == "plain") {
    auto pids = (*pool)->worker_pids();
    std::printf("pids %d %d\n", pids[0], pids[1]);
    std::fflush(stdout);
  } else {
    (void)(*pool)->Broadcast<int>("nest", 0);  // never returns: the tasks pause
  }
  pause();
  return 0;
}

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);
  if (argc == 3 && std::strcmp(argv[1], "--pool-parent") == 0) return PoolParent(argv[2]);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
