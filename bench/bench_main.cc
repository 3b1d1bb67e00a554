// One main for every benchmark case of zcstore_bench. The binary is also the
// worker executable of the pool benchmarks.
#include <benchmark/benchmark.h>

#include "zcstore/pool.h"

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
