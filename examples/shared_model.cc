// shared_model: the zcstore demo (`make demo`).
//
// Builds a recommendation model (item factors: 256 MiB of float32 by default,
// plus user factors and metadata) directly inside a pool's shared store,
// shares it with spawned worker processes, and runs 100k scoring tasks: each
// reads one user's vector and 100 random items and keeps the best score.
// Prints the time to the first result, the total time, the task rate, the
// memory of parent and workers (PSS), and how many copies of the model that
// memory holds.
//
//   shared_model [--model-mib N] [--workers N] [--tasks N]
//                [--backend spawn|fork|threads] [--no-progress]
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "zcstore/zcstore.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kDims = 64;
constexpr uint32_t kUsers = 4096;
constexpr int kItemsPerTask = 100;

struct RecModel {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.demo.RecModel";
  std::string name;
  uint32_t dims = 0, users = 0, items = 0;
  zcstore::Array<float> user_factors;  // users x dims
  zcstore::Array<float> item_factors;  // items x dims: the bulk
  std::map<std::string, double> hyper;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(name, dims, users, items, user_factors, item_factors, hyper);
  }
};

struct ScoreArgs {
  zcstore::Shared<RecModel> model;
  uint32_t user = 0;
  uint64_t seed = 0;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(model, user, seed);
  }
};

struct Best {
  float score = 0;
  uint32_t item = 0;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(score, item);
  }
};

uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The task: a user's best of 100 random items, read from the shared model.
Best ScoreUser(zcstore::TaskContext& ctx, const ScoreArgs& a) {
  const RecModel& m = ctx.Get(a.model);  // attached once per worker, zero-copy
  const float* u = m.user_factors.data() + uint64_t(a.user % m.users) * m.dims;
  uint64_t rng = a.seed;
  Best best{-1e30f, 0};
  for (int k = 0; k < kItemsPerTask; ++k) {
    uint32_t item = static_cast<uint32_t>(SplitMix(rng) % m.items);
    const float* v = m.item_factors.data() + uint64_t(item) * m.dims;
    float dot = 0;
    for (uint32_t d = 0; d < m.dims; ++d) dot += u[d] * v[d];
    if (dot > best.score) best = {dot, item};
  }
  return best;
}
ZCSTORE_TASK("score_user", ScoreUser);

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Proportional set size of a process, in bytes: each shared page counted once
// across all the processes that map it.
uint64_t PssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pss:", 0) == 0) return std::stoull(line.substr(4)) * 1024;
  }
  return 0;
}

uint64_t PoolPss(zcstore::Pool& pool) {
  uint64_t total = PssBytes(getpid());
  for (pid_t p : pool.worker_pids()) {
    if (p > 0) total += PssBytes(p);
  }
  return total;
}

int Fail(const zcstore::Status& st) {
  std::fprintf(stderr, "shared_model: %s\n", st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);
  uint64_t model_mib = 256;
  int workers = 0;
  size_t tasks = 100000;
  bool progress = true;
  zcstore::PoolOptions::Backend backend = zcstore::PoolOptions::Backend::kSpawn;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--model-mib") model_mib = std::stoull(next());
    else if (a == "--workers") workers = std::stoi(next());
    else if (a == "--tasks") tasks = std::stoull(next());
    else if (a == "--no-progress") progress = false;
    else if (a == "--backend") {
      std::string b = next();
      backend = b == "fork" ? zcstore::PoolOptions::Backend::kFork
              : b == "threads" ? zcstore::PoolOptions::Backend::kThreads
                               : zcstore::PoolOptions::Backend::kSpawn;
    } else {
      std::fprintf(stderr,
                   "usage: shared_model [--model-mib N] [--workers N] [--tasks N] "
                   "[--backend spawn|fork|threads] [--no-progress]\n");
      return 2;
    }
  }
  uint64_t item_bytes = model_mib << 20;
  uint32_t items = static_cast<uint32_t>(item_bytes / (kDims * sizeof(float)));
  uint64_t model_bytes = uint64_t(items) * kDims * 4 + uint64_t(kUsers) * kDims * 4;

  zcstore::PoolOptions o;
  o.workers = workers;
  o.backend = backend;
  o.progress_bar = progress;
  o.store_capacity = model_bytes + (64 << 20);
  auto t_start = Clock::now();
  auto pool_or = zcstore::Pool::Create(o);
  if (!pool_or.ok()) return Fail(pool_or.status());
  zcstore::Pool& pool = **pool_or;
  double startup_s = Seconds(t_start);
  // The tasks' arguments and results, allocated (and touched) now: the
  // baseline below is the same pool doing the same work, without the model.
  std::vector<ScoreArgs> args(tasks);
  for (size_t i = 0; i < tasks; ++i) args[i] = {{}, static_cast<uint32_t>(i % kUsers), i * 7919 + 1};
  std::vector<Best> best(tasks);
  // The memory baseline: the same pool after the same kind of work (20k of the
  // same tasks, against a one-item model, since unshared), without the model.
  {
    RecModel tiny;
    tiny.dims = kDims;
    tiny.users = 1;
    tiny.items = 1;
    tiny.user_factors = zcstore::Array<float>(kDims);
    tiny.item_factors = zcstore::Array<float>(kDims);
    auto t = pool.Share(std::move(tiny));
    if (!t.ok()) return Fail(t.status());
    std::vector<ScoreArgs> warm(args.begin(), args.begin() + std::min<size_t>(tasks, 20000));
    for (ScoreArgs& a : warm) a.model = *t;
    zcstore::Status w = pool.MapUnordered<Best>(
        "score_user", warm, [](size_t, zcstore::Result<Best>) {}, {.progress = false});
    if (!w.ok()) return Fail(w);
    if (auto u = pool.Unshare(*t); !u.ok()) return Fail(u);
  }
  uint64_t pss_without_model = PoolPss(pool);
  std::printf("pool: %d %s workers started in %.3f s; PSS with the parent, warmed up: %.1f MiB\n",
              pool.workers(),
              backend == zcstore::PoolOptions::Backend::kSpawn ? "spawned"
              : backend == zcstore::PoolOptions::Backend::kFork ? "forked" : "thread",
              startup_s, pss_without_model / 1048576.0);

  // Build the model in place, inside the pool's store: the arrays are
  // written once, where the workers will read them.
  auto t_build = Clock::now();
  RecModel model;
  model.name = "item factors";
  model.dims = kDims;
  model.users = kUsers;
  model.items = items;
  auto users = zcstore::Array<float>::AllocateIn(pool.store(), uint64_t(kUsers) * kDims);
  auto item_f = zcstore::Array<float>::AllocateIn(pool.store(), uint64_t(items) * kDims);
  if (!users.ok()) return Fail(users.status());
  if (!item_f.ok()) return Fail(item_f.status());
  uint64_t rng = 42;
  for (float* p = users->mutable_data(), *e = p + users->size(); p < e; ++p) {
    *p = static_cast<float>(SplitMix(rng) % 1000) / 1000.f - 0.5f;
  }
  float* f = item_f->mutable_data();
  for (uint64_t i = 0, n = item_f->size(); i < n; ++i) f[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f - 0.5f;
  model.user_factors = std::move(*users);
  model.item_factors = std::move(*item_f);
  for (int i = 0; i < 40; ++i) model.hyper["hyper_" + std::to_string(i)] = i * 0.01;
  double build_s = Seconds(t_build);
  std::printf("model: %.1f MiB of float32 factors (%u items x %u dims) built in place in %.2f s\n",
              model_bytes / 1048576.0, items, kDims, build_s);

  // Share it (adopted by the store: zero bytes copied) and run the tasks.
  auto t0 = Clock::now();
  auto shared = pool.Share(std::move(model));
  if (!shared.ok()) return Fail(shared.status());
  for (ScoreArgs& a : args) a.model = *shared;
  std::atomic<double> first_result_s{-1};
  size_t failed = 0;
  zcstore::Status st = pool.MapUnordered<Best>(
      "score_user", args,
      [&](size_t i, zcstore::Result<Best> r) {
        if (first_result_s.load() < 0) first_result_s = startup_s + Seconds(t0);
        if (r.ok()) best[i] = *r;
        else ++failed;
      });
  double run_s = Seconds(t0);
  if (!st.ok()) return Fail(st);
  uint64_t pss_with_model = PoolPss(pool);
  double copies = (static_cast<double>(pss_with_model) - pss_without_model) / model_bytes;

  float top = -1e30f;
  for (const Best& b : best) top = std::max(top, b.score);
  double wall_s = startup_s + run_s;
  std::printf("tasks: %zu scored (%zu failed) in %.3f s: %.0f tasks/s; best score %.3f\n", tasks,
              failed, run_s, tasks / run_s, top);
  std::printf("time to the first result: %.3f s (pool start %.3f s + share + first task)\n",
              first_result_s.load(), startup_s);
  std::printf("memory: parent + %d workers hold %.1f MiB (PSS); without the model %.1f MiB\n",
              pool.workers(), pss_with_model / 1048576.0, pss_without_model / 1048576.0);
  std::printf("copies of the model in memory: %.3f\n", copies);
  if (auto s = pool.Shutdown(); !s.ok()) return Fail(s);
  std::printf("RESULT model_mib=%llu workers=%d tasks=%zu first_result_s=%.3f wall_s=%.3f "
              "tasks_per_s=%.0f model_copies=%.3f\n",
              static_cast<unsigned long long>(model_mib), pool.workers(), tasks,
              first_result_s.load(), wall_s, tasks / run_s, copies);
  return failed == 0 ? 0 : 1;
}
