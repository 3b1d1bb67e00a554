// The example of README.md, compiled and run by the tests so it stays true.
#include <cstdio>

#include "zcstore/zcstore.h"

struct Model {                                    // any type: one Serialize for both ways
  std::string name;
  zcstore::Array<float> factors;                  // zero-copy when loaded
  template <class Ar> void Serialize(Ar& ar) { ar(name, factors); }
};
float Score(zcstore::TaskContext& ctx, const zcstore::Shared<Model>& m) {
  return ctx.Get(m).factors[0];                   // const Model&, mapped once per worker
}
ZCSTORE_TASK("score", Score);

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);                // spawned workers stop here
  auto pool = zcstore::Pool::Create({}).value();
  auto model = pool->Share(Model{"m", zcstore::Array<float>(1 << 20)}).value();
  auto scores = pool->Map<float>("score", std::vector(100, model));  // Result<std::vector<float>>
  std::printf("%zu scores, first %.1f\n", scores.value().size(), scores.value()[0]);
  return scores.ok() && scores->size() == 100 ? 0 : 1;
}
