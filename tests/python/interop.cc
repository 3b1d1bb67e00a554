// The C++ side of the Python interop tests (tests/python/test_interop.py).
//
//   interop write STORE N    puts a zcstore::Array<float> of N floats,
//                            element i = i * 0.5, with the typed Put; prints its id
//   interop read STORE ID    reads a raw object a Python process put: checks
//                            metadata "from-python" and buffer 0 = float64 0..n-1,
//                            and that its bytes are read in place; prints "ok n=N"
#include <cstdio>
#include <cstring>
#include <string>

#include "zcstore/zcstore.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: interop write STORE N | read STORE ID\n");
    return 2;
  }
  std::string mode = argv[1];
  auto store = zcstore::Store::Open(argv[2]);
  if (!store) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  if (mode == "write") {
    size_t n = std::stoul(argv[3]);
    zcstore::Array<float> values(n);
    for (size_t i = 0; i < n; ++i) values.mutable_data()[i] = static_cast<float>(i) * 0.5f;
    auto id = store->Put(std::move(values));
    if (!id) {
      std::fprintf(stderr, "%s\n", id.status().ToString().c_str());
      return 1;
    }
    std::printf("%s\n", id->ToString().c_str());
    return 0;
  }
  auto id = zcstore::ObjectId::FromString(argv[3]);
  if (!id) return 1;
  auto view = store->Get(*id);
  if (!view) {
    std::fprintf(stderr, "%s\n", view.status().ToString().c_str());
    return 1;
  }
  auto meta = view->metadata();
  if (meta.size() != 11 || std::memcmp(meta.data(), "from-python", 11) != 0 ||
      view->num_buffers() != 1 || view->buffer(0).size() % sizeof(double) != 0) {
    std::fprintf(stderr, "unexpected object layout\n");
    return 1;
  }
  size_t n = view->buffer(0).size() / sizeof(double);
  const auto* d = reinterpret_cast<const double*>(view->buffer(0).data());
  for (size_t i = 0; i < n; ++i) {
    if (d[i] != static_cast<double>(i)) {
      std::fprintf(stderr, "element %zu is %g\n", i, d[i]);
      return 1;
    }
  }
  std::printf("ok n=%zu\n", n);
  return 0;
}
