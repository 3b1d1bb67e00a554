// A program that forgets ZCSTORE_WORKER_MAIN: its main creates a pool at once.
// Each worker it spawns runs this main too. Prints one line: how Pool::Create
// ended and after how many seconds.
#include <chrono>
#include <cstdio>

#include "zcstore/zcstore.h"

int main() {
  zcstore::PoolOptions o;
  o.workers = 1;
  o.store_capacity = 1 << 20;
  o.progress_bar = false;
  auto t0 = std::chrono::steady_clock::now();
  auto pool = zcstore::Pool::Create(o);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s after %.3f s\n", pool.ok() ? "ok" : pool.status().ToString().c_str(), s);
  std::fflush(stdout);
  return pool.ok() ? 0 : 1;
}
