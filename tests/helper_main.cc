// zcstore_test_helper: the other process in multi-process tests.
//
// Each subcommand does one thing against a store and reports on stdout, one
// line per event, so the test can synchronise on what it reads. Exit status 0
// means every check passed; the test asserts it.
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "tests/serializer/test_types.h"
#include "tests/store/store_test_peer.h"
#include "tests/test_util.h"
#include "zcstore/zcstore.h"

using namespace zcstore;
using zcstore::testing::FirstMismatch;
using zcstore::testing::Pattern;

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::printf("error %s\n", what.c_str());
  std::fflush(stdout);
  std::exit(2);
}

Store OpenOrDie(const std::string& name, bool read_only = false) {
  OpenOptions o;
  o.read_only = read_only;
  auto s = Store::Open(name, o);
  if (!s.ok()) Fail(s.status().ToString());
  return std::move(*s);
}

ObjectId IdOrDie(const std::string& hex) {
  auto id = ObjectId::FromString(hex);
  if (!id.ok()) Fail(id.status().ToString());
  return *id;
}

void Say(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void WaitForStdinEof() {
  char c;
  while (std::fread(&c, 1, 1, stdin) == 1) {
  }
}

int Get(const std::vector<std::string>& a) {
  // "fd:N" opens a memfd store handed down as descriptor N.
  auto opened = a[0].rfind("fd:", 0) == 0 ? Store::OpenFd(std::stoi(a[0].substr(3)))
                                         : Store::Open(a[0]);
  if (!opened.ok()) Fail(opened.status().ToString());
  Store s = std::move(*opened);
  ObjectId id = IdOrDie(a[1]);
  auto v = s.Get(id);
  if (!v.ok()) Fail(v.status().ToString());
  for (size_t i = 0; i < v->num_buffers(); ++i) {
    int64_t bad = FirstMismatch(id, i, v->buffer(i));
    if (bad >= 0) Fail("buffer " + std::to_string(i) + " differs at byte " + std::to_string(bad));
  }
  Say("ok " + std::to_string(v->num_buffers()) + " " +
      (v->num_buffers() ? testing::MappingOf(v->buffer(0).data()) : "none"));
  return 0;
}

// Pins an object, says so, and holds the pin until stdin closes (or death).
int Pin(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  auto v = s.Get(IdOrDie(a[1]));
  if (!v.ok()) Fail(v.status().ToString());
  Say("pinned");
  WaitForStdinEof();
  return 0;
}

// Pins object a[1], then ends its main thread (pthread_exit) while another
// thread keeps the pin: the process lives on, but /proc shows its thread
// group leader as a zombie. Says "pinned", then "main exited"; exits at
// stdin's EOF.
int PinWithoutMainThread(const std::vector<std::string>& a) {
  static Store* store = new Store(OpenOrDie(a[0]));
  static ObjectView* view = nullptr;
  auto v = store->Get(IdOrDie(a[1]));
  if (!v.ok()) Fail(v.status().ToString());
  view = new ObjectView(std::move(*v));
  Say("pinned");
  pthread_t main_thread = pthread_self();
  std::thread([main_thread] {
    pthread_join(main_thread, nullptr);
    Say("main exited");
    WaitForStdinEof();
    std::fflush(stdout);
    _exit(0);
  }).detach();
  pthread_exit(nullptr);
}

// Starts writing an object and stops half-way, to be killed there.
int PutHang(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  ObjectId id = IdOrDie(a[1]);
  size_t size = std::stoull(a[2]);
  std::vector<size_t> sizes = {size};
  auto b = s.CreateObject(id, 16, sizes);
  if (!b.ok()) Fail(b.status().ToString());
  std::memset(b->buffer(0).data(), 0xAB, size / 2);
  Say("writing");
  WaitForStdinEof();
  return 0;
}

// Takes the store lock and keeps it, to be killed holding it.
int LockHang(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  internal::StoreTestPeer::Impl(s)->LockForever();
  Say("locked");
  WaitForStdinEof();
  return 0;
}

// Writes through a read-only view; the test expects this process to die of
// SIGSEGV before it can print "wrote".
int WriteView(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  auto v = s.Get(IdOrDie(a[1]));
  if (!v.ok()) Fail(v.status().ToString());
  Say("writing");
  auto* p = const_cast<std::byte*>(v->buffer(0).data());
  *reinterpret_cast<volatile std::byte*>(p) = std::byte{0};
  Say("wrote");
  return 0;
}

// Random put/get/delete of its own objects plus gets of the shared ones
// named on the command line; every byte read is checked.
int Churn(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  unsigned seed = static_cast<unsigned>(std::stoul(a[1]));
  int iters = std::stoi(a[2]);
  std::vector<ObjectId> shared;
  for (size_t i = 3; i < a.size(); ++i) shared.push_back(IdOrDie(a[i]));
  std::mt19937 rng(seed);
  std::vector<ObjectId> mine;
  int puts = 0, gets = 0, deletes = 0, full = 0;
  for (int it = 0; it < iters; ++it) {
    int op = rng() % 4;
    if (op == 0 || mine.empty()) {
      ObjectId id = ObjectId::Random();
      size_t size = 1 + rng() % 200000;
      auto data = Pattern(id, 0, size);
      std::span<const std::byte> bufs[] = {data};
      Status st = s.Put(id, {}, bufs);
      if (st.ok()) {
        mine.push_back(id);
        ++puts;
      } else if (st.code() == StatusCode::kStoreFull) {
        ++full;
      } else {
        Fail("put: " + st.ToString());
      }
    } else if (op == 1) {
      size_t k = rng() % mine.size();
      Status st = s.Delete(mine[k]);
      if (!st.ok()) Fail("delete: " + st.ToString());
      mine.erase(mine.begin() + static_cast<long>(k));
      ++deletes;
    } else {
      ObjectId id = (op == 2 || shared.empty()) ? mine[rng() % mine.size()]
                                                : shared[rng() % shared.size()];
      auto v = s.Get(id);
      if (!v.ok()) Fail("get: " + v.status().ToString());
      int64_t bad = FirstMismatch(id, 0, v->buffer(0));
      if (bad >= 0) Fail("object " + id.ToString() + " differs at byte " + std::to_string(bad));
      ++gets;
    }
  }
  for (ObjectId id : mine) {
    Status st = s.Delete(id);
    if (!st.ok()) Fail("final delete: " + st.ToString());
  }
  Say("done puts=" + std::to_string(puts) + " gets=" + std::to_string(gets) +
      " deletes=" + std::to_string(deletes) + " full=" + std::to_string(full));
  return 0;
}

// Loads a testing::Model and reports what it holds and how it was loaded.
int GetModel(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  auto m = s.Get<testing::Model>(IdOrDie(a[1]));
  if (!m.ok()) Fail(m.status().ToString());
  double sum = 0;
  for (float f : (*m)->factors) sum += f;
  for (float f : (*m)->bias) sum += f;
  char line[256];
  std::snprintf(line, sizeof(line), "ok %s dims=%u n=%zu sum=%.1f view=%d zero_copy=%u copied=%u",
                (*m)->name.c_str(), (*m)->dims, (*m)->factors.size(), sum,
                (*m)->factors.is_view() ? 1 : 0, m->stats().zero_copy_buffers,
                m->stats().copied_buffers);
  Say(line);
  return 0;
}

// Writes through a loaded Array; the test expects death by SIGSEGV.
int WriteArray(const std::vector<std::string>& a) {
  Store s = OpenOrDie(a[0]);
  auto m = s.Get<testing::Model>(IdOrDie(a[1]));
  if (!m.ok()) Fail(m.status().ToString());
  Say("writing");
  auto* p = const_cast<float*>((*m)->factors.data());
  *reinterpret_cast<volatile float*>(p) = -1.f;
  Say("wrote");
  return 0;
}

// Creates a (non-persistent) store, in directory a[1] if given, and waits to
// be killed, leaving it behind.
int CreateAndHang(const std::vector<std::string>& a) {
  StoreOptions so;
  so.capacity = 1 << 20;
  if (a.size() > 1) so.shm_dir = a[1];
  auto s = Store::Create(a[0], so);
  if (!s.ok()) Fail(s.status().ToString());
  Say("created");
  WaitForStdinEof();
  return 0;
}

// Gets an object without reading it and reports how much shared memory this
// process has resident before and after: Get must not touch buffer pages.
int RssAfterGet(const std::vector<std::string>& a) {
  auto rss_shmem_kib = [] {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("RssShmem:", 0) == 0) return std::stol(line.substr(9));
    }
    return -1L;
  };
  Store s = OpenOrDie(a[0]);
  long before = rss_shmem_kib();
  auto v = s.Get(IdOrDie(a[1]));
  if (!v.ok()) Fail(v.status().ToString());
  long after = rss_shmem_kib();
  Say("rss_kib " + std::to_string(before) + " " + std::to_string(after) + " bytes " +
      std::to_string(v->buffer(0).size()));
  return 0;
}

// Drops root (if root: permission bits do not bind root), creates a store of
// mode 0 and opens it again: reports what Open said.
int OpenDenied(const std::vector<std::string>& a) {
  if (getuid() == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0) Fail("cannot drop privileges");
  }
  StoreOptions so;
  so.backing = a[0] == "file" ? Backing::kFile : Backing::kSharedMemory;
  so.capacity = 1 << 20;
  so.mode = 0;
  auto owner = Store::Create(a[1], so);
  if (!owner.ok()) Fail(owner.status().ToString());
  OpenOptions o;
  o.backing = so.backing;
  auto s = Store::Open(a[1], o);
  Say(std::string(StatusCodeName(s.ok() ? StatusCode::kOk : s.status().code())) + " " +
      (s.ok() ? "" : s.status().message()));
  if (so.backing == Backing::kFile) unlink(a[1].c_str());
  return 0;
}

// Plays another user (drops root to nobody) planting something under the
// name that uid `a[1]`'s store `a[2]` would have in directory `a[0]`:
// `a[3]` is "locked-store" (a valid store whose lock this process holds),
// "fifo", "symlink" (to a store of nobody's) or "open-file" (mode 0666).
// Says "planted", then waits for stdin's EOF and removes what it planted.
int Plant(const std::vector<std::string>& a) {
  if (getuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) Fail("cannot drop privileges");
  if (getuid() == 0) Fail("still root");
  std::string target = a[0] + "/zcstore." + a[1] + "." + a[2];
  std::string own = a[0] + "/zcstore." + std::to_string(getuid()) + "." + a[2] + "-own";
  std::unique_ptr<Store> keep;
  StoreOptions so;
  so.capacity = 1 << 20;
  so.shm_dir = a[0];
  so.mode = 0666;
  so.persistent = true;
  const std::string& kind = a[3];
  if (kind == "locked-store" || kind == "symlink") {
    auto s = Store::Create(a[2] + "-own", so);
    if (!s.ok()) Fail(s.status().ToString());
    keep = std::make_unique<Store>(std::move(*s));
    if (kind == "locked-store") {
      internal::StoreTestPeer::Impl(*keep)->LockForever();
      if (rename(own.c_str(), target.c_str()) != 0) Fail("rename: " + std::string(strerror(errno)));
    } else if (symlink(own.c_str(), target.c_str()) != 0) {
      Fail("symlink: " + std::string(strerror(errno)));
    }
  } else if (kind == "fifo") {
    if (mkfifo(target.c_str(), 0666) != 0) Fail("mkfifo: " + std::string(strerror(errno)));
  } else if (kind == "open-file") {
    int fd = open(target.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0666);
    if (fd < 0 || fchmod(fd, 0666) != 0) Fail("create: " + std::string(strerror(errno)));
    close(fd);
  } else {
    Fail("unknown kind " + kind);
  }
  Say("planted");
  WaitForStdinEof();
  unlink(target.c_str());
  unlink(own.c_str());
  _exit(0);  // no destructors: the store's lock is still held by this thread
}

// In a private mount namespace, mounts a tmpfs of `a[0]` KiB, creates a store
// of `a[1]` bytes and `a[2]` object slots there, and puts a small and a large
// object: reports what each said.
int CreateOnSmallTmpfs(const std::vector<std::string>& a) {
  if (unshare(CLONE_NEWNS) != 0 && unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
    Say("skip cannot unshare a mount namespace");
    return 0;
  }
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    Say("skip cannot make mounts private");
    return 0;
  }
  char dir[] = "/tmp/zcstore-small-XXXXXX";
  if (mkdtemp(dir) == nullptr) Fail("mkdtemp");
  std::string opts = "size=" + a[0] + "k";
  if (mount("tmpfs", dir, "tmpfs", 0, opts.c_str()) != 0) {
    rmdir(dir);
    Say("skip cannot mount tmpfs");
    return 0;
  }
  StoreOptions so;
  so.shm_dir = dir;
  so.capacity = std::stoull(a[1]);
  so.max_objects = static_cast<uint32_t>(std::stoul(a[2]));
  so.max_clients = 4;
  so.max_pins_per_client = 16;
  so.max_names = 4;
  auto s = Store::Create("small", so);
  std::string big = "-", small = "-", kept = "-";
  if (s.ok()) {
    // A small object; then another process's file fills the tmpfs, and an
    // object that fits the store's capacity but not the filesystem must be
    // StoreFull (its space is reserved before a byte is written: never a
    // SIGBUS); the first object must survive.
    ObjectId first = ObjectId::Random();
    std::vector<std::byte> kb(100 << 10, std::byte{7});
    std::span<const std::byte> one[] = {kb};
    small = std::string(StatusCodeName(s->Put(first, {}, one).code()));
    std::string filler = std::string(dir) + "/filler";
    int ffd = open(filler.c_str(), O_RDWR | O_CREAT, 0600);
    struct statvfs v;
    if (ffd >= 0 && statvfs(dir, &v) == 0) {
      uint64_t free = uint64_t{v.f_bavail} * v.f_frsize;
      if (free > (16 << 10)) (void)!posix_fallocate(ffd, 0, static_cast<off_t>(free - (16 << 10)));
    }
    std::vector<std::byte> mb(size_t{256} << 10, std::byte{1});
    std::span<const std::byte> huge[] = {mb};
    Status st = s->Put(ObjectId::Random(), {}, huge);
    big = std::string(StatusCodeName(st.code())) + (st.ok() ? "" : " (" + st.message() + ")");
    auto got = s->Get(first);
    kept = got.ok() && got->buffer(0)[12345] == std::byte{7} ? "yes" : "no";
    if (ffd >= 0) close(ffd);
    unlink(filler.c_str());
  }
  // Count every file, temporaries included: a failed Create must leave none.
  int files = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir)) ++files;
  Say("create=" + std::string(StatusCodeName(s.ok() ? StatusCode::kOk : s.status().code())) +
      " files=" + std::to_string(files) + " small=" + small + " kept=" + kept + " big=" + big +
      (s.ok() ? "" : " " + s.status().message()));
  s = Status(StatusCode::kCancelled, "closed");
  umount(dir);
  rmdir(dir);
  return 0;
}

// A task only this binary has: a pool pointed at it as its worker executable
// sees another registry (PoolTest.AWorkerOfAnotherBuildIsRefused).
int HelperOnly(TaskContext&, const int& x) { return x; }
ZCSTORE_TASK("helper_only", HelperOnly);

}  // namespace

int main(int argc, char** argv) {
  ZCSTORE_WORKER_MAIN(argc, argv);
  if (argc < 2) Fail("usage: zcstore_test_helper COMMAND ARGS...");
  std::string cmd = argv[1];
  std::vector<std::string> a(argv + 2, argv + argc);
  if (cmd == "get" && a.size() == 2) return Get(a);
  if (cmd == "pin" && a.size() == 2) return Pin(a);
  if (cmd == "pin-without-main-thread" && a.size() == 2) return PinWithoutMainThread(a);
  if (cmd == "put-hang" && a.size() == 3) return PutHang(a);
  if (cmd == "lock-hang" && a.size() == 1) return LockHang(a);
  if (cmd == "write-view" && a.size() == 2) return WriteView(a);
  if (cmd == "churn" && a.size() >= 3) return Churn(a);
  if (cmd == "create-and-hang" && (a.size() == 1 || a.size() == 2)) return CreateAndHang(a);
  if (cmd == "get-model" && a.size() == 2) return GetModel(a);
  if (cmd == "write-array" && a.size() == 2) return WriteArray(a);
  if (cmd == "rss-after-get" && a.size() == 2) return RssAfterGet(a);
  if (cmd == "open-denied" && a.size() == 2) return OpenDenied(a);
  if (cmd == "create-on-small-tmpfs" && a.size() == 3) return CreateOnSmallTmpfs(a);
  if (cmd == "plant" && a.size() == 4) return Plant(a);
  Fail("unknown command or wrong arguments: " + cmd);
}
