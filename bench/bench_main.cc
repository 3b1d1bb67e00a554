// One main for every benchmark case of zcstore_bench.
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
