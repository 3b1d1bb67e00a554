// store_demo: one process builds an array in a store, another reads it
// without copying. What `make demo` runs until the pool lands.
//
//   store_demo [--mib N]          writer: builds N MiB of float32 (default 64)
//   store_demo --reader STORE ID  reader: started by the writer
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "zcstore/zcstore.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int Die(const zcstore::Status& st) {
  std::fprintf(stderr, "store_demo: %s\n", st.ToString().c_str());
  return 1;
}

// The path of the file mapped at `addr` in this process, from /proc/self/maps.
std::string MappedFile(const void* addr, char* perms_out) {
  auto a = reinterpret_cast<uintptr_t>(addr);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t lo, hi;
    char perms[8];
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &path_at) >= 3 &&
        a >= lo && a < hi) {
      std::memcpy(perms_out, perms, 5);
      return line.substr(static_cast<size_t>(path_at));
    }
  }
  return "?";
}

int Reader(const std::string& store_name, const std::string& id_hex) {
  auto t0 = Clock::now();
  auto store = zcstore::Store::Open(store_name);
  if (!store.ok()) return Die(store.status());
  double open_s = Since(t0);
  auto id = zcstore::ObjectId::FromString(id_hex);
  if (!id.ok()) return Die(id.status());
  auto t1 = Clock::now();
  auto view = store->Get(*id);
  if (!view.ok()) return Die(view.status());
  double get_s = Since(t1);
  auto bytes = view->buffer(0);
  const auto* floats = reinterpret_cast<const float*>(bytes.data());
  size_t n = bytes.size() / sizeof(float);
  auto t2 = Clock::now();
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += floats[i];
  double read_s = Since(t2);
  char perms[8] = {};
  std::string file = MappedFile(bytes.data(), perms);
  std::printf("reader (pid %d): opened the store in %.1f ms; Get took %.1f us (a table lookup "
              "and a pin, no copy)\n",
              getpid(), open_s * 1e3, get_s * 1e6);
  std::printf("reader: summed %zu floats in place in %.3f s: sum = %.0f (expected %.0f)\n", n,
              read_s, sum, static_cast<double>(n) * (n - 1) / 2 / 1024);
  std::printf("reader: the floats live in %s, mapped %s (read-only, shared): the writer's bytes\n",
              file.c_str(), perms);
  std::printf("reader: metadata says \"%.*s\"\n", static_cast<int>(view->metadata().size()),
              reinterpret_cast<const char*>(view->metadata().data()));
  return 0;
}

int Writer(size_t mib) {
  size_t bytes = mib << 20;
  zcstore::StoreOptions options;
  options.capacity = bytes + (1 << 20);
  auto t0 = Clock::now();
  auto store = zcstore::Store::Create("", options);  // a unique name
  if (!store.ok()) return Die(store.status());
  std::printf("writer (pid %d): created shared-memory store '%s' of %zu MiB in %.3f s\n", getpid(),
              store->name().c_str(), mib + 1, Since(t0));

  // Build the array in place: the store hands out writable memory, the
  // writer fills it, Seal makes it immutable. Nothing is copied.
  zcstore::ObjectId id = zcstore::ObjectId::Random();
  std::string meta = "float32[" + std::to_string(bytes / 4) + "] item factors";
  size_t sizes[] = {bytes};
  auto t1 = Clock::now();
  auto builder = store->CreateObject(id, meta.size(), sizes);
  if (!builder.ok()) return Die(builder.status());
  std::memcpy(builder->metadata().data(), meta.data(), meta.size());
  auto* floats = reinterpret_cast<float*>(builder->buffer(0).data());
  for (size_t i = 0; i < bytes / 4; ++i) floats[i] = static_cast<float>(i) / 1024;
  zcstore::Status sealed = builder->Seal();
  if (!sealed.ok()) return Die(sealed);
  double fill_s = Since(t1);
  std::printf("writer: built object %s in place: %zu MiB in %.3f s (%.2f GB/s, first touch of "
              "fresh pages included)\n",
              id.ToString().c_str(), mib, fill_s, bytes / fill_s / 1e9);

  std::string self = "/proc/self/exe";
  std::string arg_store = store->name(), arg_id = id.ToString();
  char* argv[] = {self.data(), const_cast<char*>("--reader"), arg_store.data(), arg_id.data(),
                  nullptr};
  pid_t pid;
  std::fflush(stdout);
  auto t2 = Clock::now();
  if (int rc = posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv, environ); rc != 0) {
    return Die(zcstore::IOError(std::string("posix_spawn: ") + std::strerror(rc)));
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::printf("writer: reader process exited with %d after %.3f s (spawn included)\n",
              WIFEXITED(status) ? WEXITSTATUS(status) : -1, Since(t2));
  auto stats = store->Stats();
  if (stats.ok()) {
    std::printf("writer: store holds %u object(s), %.1f MiB used, %llu pins now\n", stats->objects,
                stats->used / 1048576.0, static_cast<unsigned long long>(stats->pins));
  }
  std::printf("writer: closing; the store's segment is removed with its creator\n");
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--reader") == 0) return Reader(argv[2], argv[3]);
  size_t mib = 64;
  if (argc == 3 && std::strcmp(argv[1], "--mib") == 0) mib = std::strtoull(argv[2], nullptr, 10);
  else if (argc != 1) {
    std::fprintf(stderr, "usage: store_demo [--mib N]\n");
    return 2;
  }
  if (mib == 0) mib = 1;
  return Writer(mib);
}
