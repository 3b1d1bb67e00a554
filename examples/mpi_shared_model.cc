// mpi_shared_model: the demo's scenario over MPI (`make demo-mpi`).
//
// Rank 0 builds the recommendation model (float32 item factors, 256 MiB by
// default) in place in its node's store and shares it: each other node's
// leader receives it once, straight into its own node's store, and every
// rank maps its node's copy. Rank 0 then hands out the scoring tasks (a
// user's best of 100 random items) to the other ranks as they finish.
// Prints one line:
//
//   RESULT nodes=.. ranks=.. model_mib=.. bytes_sent=.. copies_per_node=..
//          first_result_s=.. tasks_per_s=..
//
// bytes_sent: the model's bytes that crossed between nodes (every rank's
// Stats::share_bytes_received, added up); copies_per_node: the largest, over
// the nodes, of what its ranks' PSS of the node store grew by since the
// store was created, over the model's size.
//
//   ZCSTORE_MPI_RANKS_PER_NODE=2 mpirun -np 4 mpi_shared_model [--model-mib N] [--tasks N]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "zcstore/mpi.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kDims = 64;
constexpr uint32_t kUsers = 4096;

struct RecModel {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.demo.RecModel";
  uint32_t dims = 0, users = 0, items = 0;
  zcstore::Array<float> user_factors;  // users x dims
  zcstore::Array<float> item_factors;  // items x dims: the bulk
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(dims, users, items, user_factors, item_factors);
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

uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A user's best score over 100 random items of the node's copy of the model.
float ScoreUser(zcstore::TaskContext& ctx, const ScoreArgs& a) {
  const RecModel& m = ctx.Get(a.model);
  const float* u = m.user_factors.data() + uint64_t(a.user % m.users) * m.dims;
  uint64_t rng = a.seed;
  float best = -1e30f;
  for (int k = 0; k < 100; ++k) {
    const float* v = m.item_factors.data() + (SplitMix(rng) % m.items) * m.dims;
    float dot = 0;
    for (uint32_t d = 0; d < m.dims; ++d) dot += u[d] * v[d];
    best = std::max(best, dot);
  }
  return best;
}
ZCSTORE_TASK("mpi_demo.score_user", ScoreUser);


int Fail(const zcstore::Status& st) {
  std::fprintf(stderr, "mpi_shared_model: %s\n", st.ToString().c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);
  MPI_Init(&argc, &argv);
  uint64_t model_mib = 256;
  size_t tasks = 100000;
  bool progress = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--model-mib" && i + 1 < argc) model_mib = std::stoull(argv[++i]);
    else if (a == "--tasks" && i + 1 < argc) tasks = std::stoull(argv[++i]);
    else if (a == "--no-progress") progress = false;
    else {
      std::fprintf(stderr, "usage: mpi_shared_model [--model-mib N] [--tasks N] [--no-progress]\n");
      MPI_Finalize();
      return 2;
    }
  }
  uint32_t items = static_cast<uint32_t>((model_mib << 20) / (kDims * sizeof(float)));
  uint64_t model_bytes = (uint64_t(items) + kUsers) * kDims * sizeof(float);

  zcstore::mpi::Options o;
  o.store_capacity = model_bytes + (64 << 20);
  o.progress_bar = progress;
  auto t_start = Clock::now();
  auto created = zcstore::mpi::Context::Create(MPI_COMM_WORLD, o);
  if (!created.ok()) return Fail(created.status());
  zcstore::mpi::Context& ctx = **created;
  uint64_t pss_empty = ctx.StorePss();  // the store's own pages, before the model

  // The model, built in place in rank 0's node store, then shared.
  RecModel model;
  if (ctx.rank() == 0) {
    model.dims = kDims;
    model.users = kUsers;
    model.items = items;
    auto users = zcstore::Array<float>::AllocateIn(ctx.store(), uint64_t(kUsers) * kDims);
    auto item_f = zcstore::Array<float>::AllocateIn(ctx.store(), uint64_t(items) * kDims);
    if (!users.ok()) return Fail(users.status());
    if (!item_f.ok()) return Fail(item_f.status());
    uint64_t rng = 42;
    for (float *p = users->mutable_data(), *e = p + users->size(); p < e; ++p) {
      *p = static_cast<float>(SplitMix(rng) % 1000) / 1000.f - 0.5f;
    }
    float* f = item_f->mutable_data();
    for (uint64_t i = 0, n = item_f->size(); i < n; ++i) {
      f[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f - 0.5f;
    }
    model.user_factors = std::move(*users);
    model.item_factors = std::move(*item_f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto t0 = Clock::now();
  auto shared = ctx.ShareMoved(0, ctx.rank() == 0 ? &model : nullptr);
  if (!shared.ok()) return Fail(shared.status());
  double share_s = std::chrono::duration<double>(Clock::now() - t0).count();

  double first_s = -1, run_s = 0;
  float top = -1e30f;
  if (ctx.rank() == 0) {
    std::vector<ScoreArgs> args(tasks);
    for (size_t i = 0; i < tasks; ++i) args[i] = {*shared, uint32_t(i % kUsers), i * 7919 + 1};
    auto t_run = Clock::now();
    zcstore::Status st = ctx.MapUnordered<float>(
        "mpi_demo.score_user", args, [&](size_t, zcstore::Result<float> r) {
          if (first_s < 0) first_s = std::chrono::duration<double>(Clock::now() - t0).count();
          if (r.ok()) top = std::max(top, *r);
        });
    run_s = std::chrono::duration<double>(Clock::now() - t_run).count();
    if (!st.ok()) return Fail(st);
    (void)ctx.Finish();
  } else if (zcstore::Status st = ctx.Serve(); !st.ok()) {
    return Fail(st);
  }

  // Every rank maps its node's copy (the serving ranks touched it in their
  // tasks; rank 0 and the leaders wrote it); a node's PSS adds up its ranks'.
  if (auto p = ctx.Get(*shared); p.ok()) {
    volatile float sink = 0;
    const zcstore::Array<float>& f = p->value().item_factors;
    for (size_t i = 0; i < f.size(); i += 1024) sink = sink + f[i];
  }
  MPI_Barrier(MPI_COMM_WORLD);  // all pages touched before any rank reads its PSS
  uint64_t now_pss = ctx.StorePss();
  uint64_t pss = now_pss - std::min(now_pss, pss_empty), node_pss = 0,
           received = ctx.stats().share_bytes_received, bytes_sent = 0;
  MPI_Comm node;
  MPI_Comm_split(MPI_COMM_WORLD, ctx.node(), ctx.rank(), &node);
  MPI_Reduce(&pss, &node_pss, 1, MPI_UINT64_T, MPI_SUM, 0, node);
  MPI_Comm_free(&node);
  double copies = ctx.is_leader() ? static_cast<double>(node_pss) / model_bytes : 0, worst = 0;
  MPI_Reduce(&copies, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Reduce(&received, &bytes_sent, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
  if (ctx.rank() == 0) {
    double total_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    std::printf("model: %.1f MiB shared in %.3f s over %d nodes; best score %.3f; %.1f s in all\n",
                model_bytes / 1048576.0, share_s, ctx.nodes(), top, total_s);
    std::printf("RESULT nodes=%d ranks=%d model_mib=%llu bytes_sent=%llu copies_per_node=%.3f "
                "first_result_s=%.3f tasks_per_s=%.0f\n",
                ctx.nodes(), ctx.size(), static_cast<unsigned long long>(model_mib),
                static_cast<unsigned long long>(bytes_sent), worst, first_s, tasks / run_s);
  }
  created->reset();
  MPI_Finalize();
  return 0;
}
