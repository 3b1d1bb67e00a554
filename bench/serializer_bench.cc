// Serializer benchmarks. Baselines sit in this binary too (BM_Memcpy in
// store_bench.cc; BM_StoreGet for BM_GetModel).
//
//   BM_SerializeModel            envelope of a model with a 64 MiB array and ~40 fields
//   BM_PutCopyModel/<bytes>      store.Put(model)             peak_ratio ~ 2.0
//   BM_PutMoveModel/<bytes>      store.Put(std::move(model))  peak_ratio <= 1.1
//   BM_GetModel/<bytes>          store.Get<Model>(id)         flat in size
//
// peak_ratio = (peak resident memory during the put - resident memory before
// the model was built) / model bytes, measured for real: each put runs in a
// fresh forked child that resets its high-water mark (/proc/self/clear_refs),
// builds the model, puts it, and reports VmHWM. The store's pages count: the
// child maps them as it fills them.
#include <benchmark/benchmark.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "zcstore/zcstore.h"

namespace {

using zcstore::Array;
using zcstore::ObjectId;
using zcstore::Store;

struct BenchModel {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.bench.Model";
  std::string name;
  uint32_t users = 0, items = 0, dims = 0;
  Array<float> item_factors;            // the bulk
  std::vector<float> item_bias;         // small
  std::map<std::string, double> hyper;  // a few dozen fields
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(name, users, items, dims, item_factors, item_bias, hyper);
  }
};

// A model whose factors are `bytes` long, written (first-touched) if `fill`.
BenchModel MakeModel(size_t bytes, bool fill) {
  BenchModel m;
  m.name = "bench";
  m.dims = 64;
  m.items = static_cast<uint32_t>(bytes / sizeof(float) / m.dims);
  m.item_factors = Array<float>::Uninitialized(bytes / sizeof(float));
  if (fill) std::memset(m.item_factors.mutable_data(), 1, bytes);
  m.item_bias.assign(256, 0.5f);
  for (int i = 0; i < 36; ++i) m.hyper["param_" + std::to_string(i)] = i * 0.1;
  return m;
}

int64_t StatusKib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  size_t n = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, n, field) == 0) return std::stoll(line.substr(n + 1));
  }
  return -1;
}

struct PutResult {
  double seconds;
  double peak_ratio;
  int ok;
};

// Runs one put of a `bytes` model in a fresh child process.
PutResult PutInChild(size_t bytes, bool move) {
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    PutResult r{0, 0, 0};
    zcstore::StoreOptions o;
    o.backing = zcstore::Backing::kMemfd;
    o.capacity = bytes + (8 << 20);
    auto store = Store::Create("bench", o);
    if (store.ok()) {
      std::ofstream("/proc/self/clear_refs") << "5";  // reset VmHWM
      int64_t base = StatusKib("VmRSS:");
      BenchModel m = MakeModel(bytes, true);
      auto t0 = std::chrono::steady_clock::now();
      auto id = move ? store->Put(std::move(m)) : store->Put(m);
      r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.peak_ratio = (StatusKib("VmHWM:") - base) * 1024.0 / static_cast<double>(bytes);
      r.ok = id.ok();
    }
    (void)!write(fds[1], &r, sizeof(r));
    _exit(0);
  }
  close(fds[1]);
  PutResult r{0, 0, 0};
  if (read(fds[0], &r, sizeof(r)) != sizeof(r)) r.ok = 0;
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return r;
}

void PutModel(benchmark::State& state, bool move) {
  size_t bytes = static_cast<size_t>(state.range(0));
  double peak = 0;
  for (auto _ : state) {
    PutResult r = PutInChild(bytes, move);
    if (!r.ok) {
      state.SkipWithError("put failed in the child");
      return;
    }
    state.SetIterationTime(r.seconds);
    peak = std::max(peak, r.peak_ratio);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["peak_ratio"] = peak;
}

void BM_PutCopyModel(benchmark::State& state) { PutModel(state, false); }
void BM_PutMoveModel(benchmark::State& state) { PutModel(state, true); }

void BM_SerializeModel(benchmark::State& state) {
  BenchModel m = MakeModel(64 << 20, /*fill=*/false);  // Serialize never reads the array
  size_t envelope = 0;
  for (auto _ : state) {
    auto s = zcstore::Serialize(m);
    if (!s.ok()) std::abort();
    envelope = s->envelope.size();
    benchmark::DoNotOptimize(s->envelope.data());
  }
  state.counters["envelope_bytes"] = static_cast<double>(envelope);
}

void BM_GetModel(benchmark::State& state) {
  size_t bytes = static_cast<size_t>(state.range(0));
  zcstore::StoreOptions o;
  o.capacity = bytes + (8 << 20);
  auto store = Store::Create("", o);
  if (!store.ok()) std::abort();
  // Build in place and move in: no page of the array is ever touched.
  BenchModel m = MakeModel(0, false);
  m.item_factors = std::move(*Array<float>::AllocateIn(*store, bytes / sizeof(float)));
  ObjectId id = store->Put(std::move(m)).value();
  for (auto _ : state) {
    auto p = store->Get<BenchModel>(id);
    if (!p.ok()) std::abort();
    benchmark::DoNotOptimize((*p)->item_factors.data());
  }
  state.counters["object_bytes"] = static_cast<double>(bytes);
}

BENCHMARK(BM_SerializeModel)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_PutCopyModel)
    ->Arg(64 << 20)->Arg(256 << 20)->Arg(int64_t{1} << 30)
    ->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_PutMoveModel)
    ->Arg(64 << 20)->Arg(256 << 20)->Arg(int64_t{1} << 30)
    ->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GetModel)
    ->Arg(4 << 10)->Arg(1 << 20)->Arg(64 << 20)->Arg(int64_t{1} << 30)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
