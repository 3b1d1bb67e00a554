// mpi_bench: zcstore::mpi's Share beside the naive way, in one run
// (`make bench-mpi`): the naive way is MPI_Bcast of the model's bytes to
// every rank, each holding a copy of its own. For each model size, both
// report the time (rank 0's view, from before to after a barrier), the bytes
// received over MPI (all ranks together), and the memory per node (its ranks' PSS of
// the model's pages, over the model's size). Writes a Markdown table to
// stdout and bench/results/mpi.json (rank 0).
//
//   ZCSTORE_MPI_RANKS_PER_NODE=2 mpirun -np 4 mpi_bench [--sizes 64,256] [--out FILE]
#include <mpi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "zcstore/mpi.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Blob {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.bench.Blob";
  zcstore::Array<float> data;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(data);
  }
};

// Resident bytes of a private anonymous mapping of this process's (its PSS:
// such pages are nobody else's).
uint64_t ResidentBytes(void* mem, size_t bytes) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in((bytes + page - 1) / page);
  if (mincore(mem, bytes, in.data()) != 0) return 0;
  return static_cast<uint64_t>(std::count_if(in.begin(), in.end(), [](unsigned char c) {
           return c & 1;
         })) * page;
}

uint64_t NodeSum(MPI_Comm node, uint64_t mine) {
  uint64_t total = 0;
  MPI_Allreduce(&mine, &total, 1, MPI_UINT64_T, MPI_SUM, node);
  return total;
}

struct Row {
  std::string way;
  uint64_t mib = 0, bytes_received = 0;
  double seconds = 0, copies_per_node = 0;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  std::vector<uint64_t> sizes = {64, 256};
  std::string out = "bench/results/mpi.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--sizes") == 0) {
      sizes.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string s; std::getline(ss, s, ',');) sizes.push_back(std::stoull(s));
    } else if (std::strcmp(argv[i], "--out") == 0) {
      out = argv[i + 1];
    }
  }
  std::vector<Row> rows;
  int ranks = 0, nodes = 0, node_size = 0;
  for (uint64_t mib : sizes) {
    size_t floats = (mib << 20) / sizeof(float);
    // A fresh context (fresh node stores) per size: pages of an earlier
    // size's object would be counted as already there.
    zcstore::mpi::Options o;
    o.store_capacity = (mib << 20) + (64 << 20);
    auto created = zcstore::mpi::Context::Create(MPI_COMM_WORLD, o);
    if (!created.ok()) {
      std::fprintf(stderr, "mpi_bench: %s\n", created.status().ToString().c_str());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    zcstore::mpi::Context& ctx = **created;
    ranks = ctx.size(), nodes = ctx.nodes(), node_size = ctx.node_size();
    MPI_Comm node;
    MPI_Comm_split(MPI_COMM_WORLD, ctx.node(), ctx.rank(), &node);
    // zcstore: the root builds it in its node store; Share; each rank maps it.
    {
      Blob blob;
      if (ctx.rank() == 0) {
        auto a = zcstore::Array<float>::AllocateIn(ctx.store(), floats);
        if (!a.ok()) MPI_Abort(MPI_COMM_WORLD, 1);
        for (size_t i = 0; i < floats; ++i) a->mutable_data()[i] = static_cast<float>(i & 1023);
        blob.data = std::move(*a);
      }
      uint64_t received_before = ctx.stats().share_bytes_received;
      uint64_t pss_before = ctx.StorePss();
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = Clock::now();
      auto shared = ctx.ShareMoved(0, ctx.rank() == 0 ? &blob : nullptr);
      if (!shared.ok()) MPI_Abort(MPI_COMM_WORLD, 1);
      {
        auto p = ctx.Get(*shared);  // every rank maps it and reads every page
        volatile float sink = 0;
        for (size_t i = 0; i < floats; i += 1024) sink = sink + p->value().data[i];
      }
      MPI_Barrier(MPI_COMM_WORLD);
      double s = std::chrono::duration<double>(Clock::now() - t0).count();
      uint64_t pss = ctx.StorePss();
      uint64_t node_pss = NodeSum(node, pss - std::min(pss, pss_before));
      uint64_t moved = 0, mine = ctx.stats().share_bytes_received - received_before;
      MPI_Reduce(&mine, &moved, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
      double copies = static_cast<double>(node_pss) / (floats * sizeof(float)), worst = 0;
      MPI_Reduce(&copies, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
      rows.push_back({"zcstore::mpi Share", mib, moved, s, worst});
      (void)ctx.Unshare(*shared);
    }
    // Naive: every rank receives its own copy (MPI_Bcast over all ranks).
    {
      size_t bytes = floats * sizeof(float);
      void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) MPI_Abort(MPI_COMM_WORLD, 1);
      auto* f = static_cast<float*>(mem);
      if (ctx.rank() == 0) {
        for (size_t i = 0; i < floats; ++i) f[i] = static_cast<float>(i & 1023);
      }
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = Clock::now();
      for (size_t off = 0; off < bytes; off += size_t{256} << 20) {
        int n = static_cast<int>(std::min(size_t{256} << 20, bytes - off));
        MPI_Bcast(static_cast<char*>(mem) + off, n, MPI_BYTE, 0, MPI_COMM_WORLD);
      }
      MPI_Barrier(MPI_COMM_WORLD);
      double s = std::chrono::duration<double>(Clock::now() - t0).count();
      uint64_t pss = ResidentBytes(mem, bytes);
      double copies = static_cast<double>(NodeSum(node, pss)) / bytes, worst = 0;
      MPI_Reduce(&copies, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
      // Every rank but the root receives every byte.
      uint64_t received = uint64_t(bytes) * static_cast<uint64_t>(ctx.size() - 1);
      rows.push_back({"MPI_Bcast to every rank", mib, received, s, worst});
      munmap(mem, bytes);
    }
    MPI_Comm_free(&node);
  }
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    std::printf("%d ranks, %d nodes of %d\n\n", ranks, nodes, node_size);
    std::printf("| way | model MiB | time (s) | bytes received over MPI | copies per node |\n");
    std::printf("|---|---|---|---|---|\n");
    std::ofstream json(out);
    json << "{\"ranks\": " << ranks << ", \"nodes\": " << nodes << ", \"rows\": [";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf("| %s | %llu | %.3f | %llu | %.2f |\n", r.way.c_str(),
                  static_cast<unsigned long long>(r.mib), r.seconds,
                  static_cast<unsigned long long>(r.bytes_received), r.copies_per_node);
      json << (i ? ", " : "") << "{\"way\": \"" << r.way << "\", \"model_mib\": " << r.mib
           << ", \"seconds\": " << r.seconds << ", \"bytes_received\": "
           << r.bytes_received << ", \"copies_per_node\": " << r.copies_per_node << "}";
    }
    json << "]}\n";
  }
  MPI_Finalize();
  return 0;
}
