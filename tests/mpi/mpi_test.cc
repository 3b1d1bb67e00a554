// zcstore::mpi under a real mpirun: 4 ranks as 2 simulated nodes of 2
// (ZCSTORE_MPI_RANKS_PER_NODE=2, set by the ctest entry). Every rank runs
// every test, in order: the collectives inside them pair up. Only rank 0
// prints; any rank's failure fails the run (its exit code reaches mpirun).
//
// With --kill-a-rank the program is instead a job in which rank 3 kills
// itself mid-map (tests/mpi/killed_rank.sh checks what that leaves behind).
#include <gtest/gtest.h>
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "tests/serializer/test_types.h"
#include "zcstore/mpi.h"

namespace zcstore {
namespace {

using testing::Model;

// ------------------------------------------------------------ tasks

struct RangeArgs {
  Shared<Model> model;
  uint32_t begin = 0, end = 0;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(model, begin, end);
  }
};

double SumRange(TaskContext& ctx, const RangeArgs& a) {
  const Model& m = ctx.Get(a.model);
  double s = 0;
  for (uint32_t i = a.begin; i < a.end; ++i) s += m.factors[i];
  return s;
}
ZCSTORE_TASK("mpi.sum_range", SumRange);

int WhichRank(TaskContext& ctx, const int&) {
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // so that every rank gets some
  return ctx.worker_index();
}
ZCSTORE_TASK("mpi.which_rank", WhichRank);

int FailOn7(TaskContext&, const int& x) {
  if (x == 7) throw std::runtime_error("seven is refused");
  return x * 2;
}
ZCSTORE_TASK("mpi.fail_on_7", FailOn7);

// A large argument and result: they travel as store objects.
Array<float> Scaled(TaskContext&, const Array<float>& a) {
  auto out = Array<float>::Uninitialized(a.size());
  for (size_t i = 0; i < a.size(); ++i) out.mutable_data()[i] = 2 * a[i];
  return out;
}
ZCSTORE_TASK("mpi.scaled", Scaled);

struct Tally {
  std::map<std::string, int> counts;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(counts);
  }
};
WithUpdate<int, int> CountIt(TaskContext& ctx, const ContextArg<int, Tally>& a) {
  const Tally& t = ctx.Get(a.context);
  return {a.arg + t.counts.at("offset"), a.arg};
}
ZCSTORE_TASK("mpi.count_it", CountIt);

// Sums a pool worker's view of the model (the two-level case).
struct SumArgs {
  Shared<Model> model;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(model);
  }
};
double SumAll(TaskContext& ctx, const SumArgs& a) {
  const Model& m = ctx.Get(a.model);
  return std::accumulate(m.factors.begin(), m.factors.end(), 0.0);
}
ZCSTORE_TASK("mpi.sum_all", SumAll);

// ------------------------------------------------------------ helpers

int Rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

Model MakeModel(size_t n) {
  Model m;
  m.name = "mpi model";
  m.dims = 1;
  m.factors = Array<float>::Uninitialized(n);
  for (size_t i = 0; i < n; ++i) m.factors.mutable_data()[i] = static_cast<float>(i % 1000);
  return m;
}


std::unique_ptr<mpi::Context> MakeContext(mpi::Options o = {}) {
  o.store_capacity = 64 << 20;
  o.progress_bar = false;
  auto c = mpi::Context::Create(MPI_COMM_WORLD, o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

// Rank 0 runs `drive`, then Finish; the others Serve.
template <typename F>
void Drive(mpi::Context& ctx, F drive) {
  if (ctx.rank() == 0) {
    drive();
    EXPECT_TRUE(ctx.Finish().ok());
  } else {
    Status st = ctx.Serve();
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
}

// ------------------------------------------------------------ tests

TEST(MpiTest, RanksAreGroupedIntoSimulatedNodes) {
  auto ctx = MakeContext();
  ASSERT_TRUE(ctx);
  ASSERT_EQ(ctx->size(), 4) << "run with mpirun -np 4";
  EXPECT_EQ(ctx->nodes(), 2);
  EXPECT_EQ(ctx->node_size(), 2);
  EXPECT_EQ(ctx->node(), ctx->rank() / 2);
  EXPECT_EQ(ctx->is_leader(), ctx->rank() % 2 == 0);
  // Each node's store is one store: a name bound on a leader is seen by its
  // node's other rank, and not by the other node.
  if (ctx->is_leader()) {
    auto id = ctx->store().Put(std::string("node ") + std::to_string(ctx->node()));
    ASSERT_TRUE(id.ok());
    ASSERT_TRUE(ctx->store().Bind("whoami", *id).ok());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto id = ctx->store().Lookup("whoami");
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  auto s = ctx->store().Get<std::string>(*id);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->value(), "node " + std::to_string(ctx->node()));
}

TEST(MpiTest, ShareSendsTheModelOnceToEachOtherLeaderAndEveryRankMapsItsNodesCopy) {
  mpi::Options o;
  o.max_message_bytes = 1 << 20;  // the 16 MiB buffer goes in 16 pieces
  auto ctx = MakeContext(o);
  ASSERT_TRUE(ctx);
  constexpr size_t kFloats = 4 << 20;  // 16 MiB
  Model m;
  if (ctx->rank() == 0) m = MakeModel(kFloats);
  uint64_t pss_before = ctx->StorePss();
  auto shared = ctx->Share<Model>(0, ctx->rank() == 0 ? &m : nullptr);
  ASSERT_TRUE(shared.ok()) << shared.status().ToString();
  // The object's bytes (metadata and buffers), as rank 0's store holds them.
  uint64_t object_bytes = 0;
  if (ctx->rank() == 0) {
    auto view = ctx->store().Get(shared->id);
    ASSERT_TRUE(view.ok());
    object_bytes = view->metadata().size();
    for (const auto& b : view->buffers()) object_bytes += b.size();
  }
  MPI_Bcast(&object_bytes, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  const mpi::Stats& st = ctx->stats();
  EXPECT_EQ(st.share_bytes_received, ctx->rank() == 2 ? object_bytes : 0u);  // the other leader
  EXPECT_EQ(st.share_bytes_sent, ctx->rank() == 0 ? object_bytes : 0u);
  // Every rank reads the model from its node's copy...
  {
    auto pinned = ctx->Get(*shared);
    ASSERT_TRUE(pinned.ok()) << pinned.status().ToString();
    const Array<float>& f = pinned->value().factors;
    double sum = std::accumulate(f.begin(), f.end(), 0.0);
    double expected = 0;
    for (size_t i = 0; i < kFloats; ++i) expected += static_cast<double>(i % 1000);
    EXPECT_EQ(sum, expected);
  }
  // ... and each node holds it once: its ranks' PSS of the store adds up to
  // one model (every page was read by both).
  MPI_Barrier(MPI_COMM_WORLD);  // every rank has read every page: PSS is read sequentially
  uint64_t now = ctx->StorePss();
  uint64_t mine = now - std::min(pss_before, now), node_total = 0;
  MPI_Comm node;
  MPI_Comm_split(MPI_COMM_WORLD, ctx->node(), ctx->rank(), &node);
  MPI_Reduce(&mine, &node_total, 1, MPI_UINT64_T, MPI_SUM, 0, node);
  MPI_Comm_free(&node);
  if (ctx->is_leader()) {
    double copies = static_cast<double>(node_total) / static_cast<double>(kFloats * 4);
    EXPECT_GT(copies, 0.95) << "node " << ctx->node();
    EXPECT_LT(copies, 1.05) << "node " << ctx->node();
  }
  EXPECT_TRUE(ctx->Unshare(*shared).ok());
}

TEST(MpiTest, MapRunsOverTheServingRanksAndMatchesASerialRun) {
  auto ctx = MakeContext();
  ASSERT_TRUE(ctx);
  Model m;
  if (ctx->rank() == 0) m = MakeModel(100000);
  auto shared = ctx->Share<Model>(0, ctx->rank() == 0 ? &m : nullptr);
  ASSERT_TRUE(shared.ok()) << shared.status().ToString();
  Drive(*ctx, [&] {
    std::vector<RangeArgs> args;
    for (uint32_t i = 0; i < 100; ++i) args.push_back({*shared, i * 1000, (i + 1) * 1000});
    auto sums = ctx->Map<double>("mpi.sum_range", args);
    ASSERT_TRUE(sums.ok()) << sums.status().ToString();
    for (uint32_t i = 0; i < 100; ++i) {
      double serial = 0;
      for (uint32_t k = i * 1000; k < (i + 1) * 1000; ++k) serial += m.factors[k];
      EXPECT_EQ((*sums)[i], serial) << i;
    }
    // Chunks go to ranks as they finish: every serving rank gets work.
    auto ranks = ctx->Map<int>("mpi.which_rank", std::vector<int>(60, 0),
                               mpi::MapOptions{.chunk_size = 2});
    ASSERT_TRUE(ranks.ok());
    EXPECT_EQ(std::set<int>(ranks->begin(), ranks->end()), (std::set<int>{1, 2, 3}));
    // A task's error comes back on its item; the rest are results.
    std::vector<int> xs(12);
    std::iota(xs.begin(), xs.end(), 0);
    auto some = ctx->MapResults<int>("mpi.fail_on_7", xs);
    ASSERT_TRUE(some.ok());
    for (int i = 0; i < 12; ++i) {
      if (i == 7) {
        EXPECT_EQ((*some)[i].status().code(), StatusCode::kTaskFailed);
        EXPECT_NE((*some)[i].status().message().find("seven is refused"), std::string::npos);
      } else {
        EXPECT_EQ(*(*some)[i], 2 * i);
      }
    }
    EXPECT_EQ(ctx->Map<int>("mpi.fail_on_7", xs).status().code(), StatusCode::kTaskFailed);
    EXPECT_EQ(ctx->Map<int>("no.such.task", xs).status().code(), StatusCode::kNotFound);
    EXPECT_EQ(ctx->Map<double>("mpi.fail_on_7", xs).status().code(), StatusCode::kTypeMismatch);
    // Values with buffers travel as store objects, both ways.
    auto big = Array<float>::Uninitialized(1 << 18);
    for (size_t i = 0; i < big.size(); ++i) big.mutable_data()[i] = static_cast<float>(i);
    auto scaled = ctx->Map<Array<float>>("mpi.scaled", std::vector<Array<float>>{big, big});
    ASSERT_TRUE(scaled.ok()) << scaled.status().ToString();
    EXPECT_EQ((*scaled)[1][12345], 24690.0f);
    std::vector<size_t> order;
    Status un = ctx->MapUnordered<int>("mpi.fail_on_7", std::vector<int>{1, 2, 3},
                                       [&](size_t i, Result<int> r) {
                                         EXPECT_TRUE(r.ok());
                                         order.push_back(i);
                                       });
    EXPECT_TRUE(un.ok());
    EXPECT_EQ(order.size(), 3u);
  });
  EXPECT_TRUE(ctx->Unshare(*shared).ok());
  if (ctx->rank() != 0) {
    EXPECT_GT(ctx->stats().tasks_run, 0u);
  }
  // Nothing of the maps is left in any node's store.
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(ctx->store().Stats()->objects, 0u) << "rank " << ctx->rank();
}

TEST(MpiTest, MapWithContextMergesTheUpdatesInOrder) {
  auto ctx = MakeContext();
  ASSERT_TRUE(ctx);
  Drive(*ctx, [&] {
    Tally tally;
    tally.counts["offset"] = 100;
    std::function<void(Tally&, int&&)> merge = [](Tally& t, int&& u) {
      t.counts["seen"] += u;
      t.counts["order"] = t.counts["order"] * 10 + u;
    };
    auto r = ctx->MapWithContext<int, int>("mpi.count_it", std::vector<int>{1, 2, 3, 4}, tally,
                                           merge);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, (std::vector<int>{101, 102, 103, 104}));
    EXPECT_EQ(tally.counts["seen"], 10);
    EXPECT_EQ(tally.counts["order"], 1234);
  });
}

TEST(MpiTest, ARanksLocalPoolAttachesItsNodesCopy) {
  auto ctx = MakeContext();
  ASSERT_TRUE(ctx);
  Model m;
  if (ctx->rank() == 0) m = MakeModel(1 << 16);
  auto shared = ctx->Share<Model>(0, ctx->rank() == 0 ? &m : nullptr);
  ASSERT_TRUE(shared.ok());
  if (ctx->rank() == 2) {  // node 1's leader: two levels, a pool under a rank
    PoolOptions o;
    o.workers = 2;
    o.store_fd = ctx->store_fd();
    o.progress_bar = false;
    auto pool = Pool::Create(o);
    ASSERT_TRUE(pool.ok()) << pool.status().ToString();
    auto sums = (*pool)->Broadcast<double>("mpi.sum_all", SumArgs{*shared});
    ASSERT_TRUE(sums.ok()) << sums.status().ToString();
    double expected = 0;
    for (size_t i = 0; i < (1 << 16); ++i) expected += static_cast<double>(i % 1000);
    for (auto& s : *sums) EXPECT_EQ(*s, expected);
  }
  EXPECT_TRUE(ctx->Unshare(*shared).ok());
}

// A context of one rank (each rank makes its own over MPI_COMM_SELF): rank 0
// runs the tasks itself, through the same encoding.
TEST(MpiTest, ASingleRankRunsTheTasksItself) {
  mpi::Options o;
  o.store_capacity = 16 << 20;
  o.progress_bar = false;
  auto ctx = mpi::Context::Create(MPI_COMM_SELF, o);
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  EXPECT_EQ((*ctx)->size(), 1);
  EXPECT_EQ((*ctx)->nodes(), 1);
  Model m = MakeModel(10000);
  auto shared = (*ctx)->Share<Model>(0, &m);
  ASSERT_TRUE(shared.ok());
  EXPECT_EQ((*ctx)->stats().share_bytes_received, 0u);
  std::vector<RangeArgs> args = {{*shared, 0, 5000}, {*shared, 5000, 10000}};
  auto sums = (*ctx)->Map<double>("mpi.sum_range", args);
  ASSERT_TRUE(sums.ok()) << sums.status().ToString();
  double serial = 0;
  for (uint32_t k = 0; k < 5000; ++k) serial += m.factors[k];
  EXPECT_EQ((*sums)[0], serial);
  auto big = Array<float>::Uninitialized(1 << 16);
  for (size_t i = 0; i < big.size(); ++i) big.mutable_data()[i] = 1.0f;
  auto scaled = (*ctx)->Map<Array<float>>("mpi.scaled", std::vector<Array<float>>{big});
  ASSERT_TRUE(scaled.ok()) << scaled.status().ToString();
  EXPECT_EQ((*scaled)[0][100], 2.0f);
  auto some = (*ctx)->MapResults<int>("mpi.fail_on_7", std::vector<int>{6, 7});
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(*(*some)[0], 12);
  EXPECT_EQ((*some)[1].status().code(), StatusCode::kTaskFailed);
  EXPECT_TRUE((*ctx)->Finish().ok());
}

TEST(MpiTest, ErrorsAreTheSameOnEveryRankAndLeaveNothingBehind) {
  mpi::Options o;
  o.max_message_bytes = size_t{1} << 40;
  auto bad = mpi::Context::Create(MPI_COMM_WORLD, o);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  auto ctx = MakeContext();
  ASSERT_TRUE(ctx);
  EXPECT_EQ(ctx->Share<Model>(99, nullptr).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ctx->Share<Model>(1, nullptr).status().code(), StatusCode::kInvalidArgument);
  // Too large for the node stores (64 MiB): StoreFull everywhere.
  Model huge;
  if (ctx->rank() == 0) huge = MakeModel(20 << 20);  // 80 MiB
  auto r = ctx->Share<Model>(0, ctx->rank() == 0 ? &huge : nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kStoreFull) << r.status().ToString();
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(ctx->store().Stats()->objects, 0u);
  if (ctx->rank() != 0) {
    EXPECT_EQ(ctx->Map<int>("mpi.fail_on_7", std::vector<int>{1}).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(ctx->Finish().code(), StatusCode::kInvalidArgument);
  } else {
    EXPECT_EQ(ctx->Serve().code(), StatusCode::kInvalidArgument);
  }
}

// What a rank other than 0 prints: its failures, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }

 private:
  int rank_;
};

// ------------------------------------------------------------ --kill-a-rank

int KillARank() {
  auto ctx = mpi::Context::Create(MPI_COMM_WORLD);
  if (!ctx.ok()) return 2;
  Model m;
  if ((*ctx)->rank() == 0) m = MakeModel(1 << 20);
  auto shared = (*ctx)->Share<Model>(0, (*ctx)->rank() == 0 ? &m : nullptr);
  if (!shared.ok()) return 2;
  if ((*ctx)->rank() == 3) {
    std::printf("rank 3 (pid %d) kills itself\n", getpid());
    std::fflush(stdout);
    raise(SIGKILL);
  }
  if ((*ctx)->rank() == 0) {
    std::vector<int> xs(1000, 0);
    (void)(*ctx)->Map<int>("mpi.which_rank", xs);  // never ends: mpirun ends the job
    return 1;
  }
  (void)(*ctx)->Serve();
  return 1;
}

}  // namespace
}  // namespace zcstore

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);  // the local pool's workers are this binary
  MPI_Init(&argc, &argv);
  if (argc > 1 && std::strcmp(argv[1], "--kill-a-rank") == 0) {
    int rc = zcstore::KillARank();
    MPI_Finalize();
    return rc;
  }
  testing::InitGoogleTest(&argc, argv);
  if (zcstore::Rank() != 0) {  // the other ranks print their failures only
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new zcstore::FailurePrinter(zcstore::Rank()));
  }
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
