// The store across real processes: zero-copy reads, pins, SIGKILL at the
// worst moments, concurrent churn, garbage collection.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <unistd.h>

#include <memory>
#include <random>
#include <sstream>

#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

using testing::Child;
using testing::FirstMismatch;
using testing::Pattern;
using testing::UniqueName;

StoreOptions FixtureOptions(uint64_t capacity) {
  StoreOptions o;
  o.capacity = capacity;
  o.max_objects = 256;
  o.max_clients = 16;
  o.max_pins_per_client = 64;
  return o;
}

// A fresh shared-memory store (creation failing stops the test binary with
// the status: every test here needs one).
struct Fixture {
  std::string name = UniqueName();
  Store store;

  explicit Fixture(uint64_t capacity = 16 << 20)
      : store(std::move(Store::Create(name, FixtureOptions(capacity)).value())) {}
  ObjectId Put(size_t size) {
    ObjectId id = ObjectId::Random();
    auto b = Pattern(id, 0, size);
    std::span<const std::byte> bufs[] = {b};
    Status st = store.Put(id, {}, bufs);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return id;
  }
};

bool ExitedZero(int status) { return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

TEST(MultiProcessTest, GetInAnotherProcessReadsTheSameMemory) {
  Fixture f;
  ObjectId id = f.Put(4 << 20);
  auto mine = f.store.Get(id);
  ASSERT_TRUE(mine.ok());
  Child c = Child::Helper({"get", f.name, id.ToString()});
  std::string line = c.ReadLine();
  ASSERT_TRUE(ExitedZero(c.Wait())) << line;
  // Both processes map the same file at the same offset: one copy in memory.
  // The reader's mapping is read-only and shared ("r--s").
  std::istringstream theirs(line);
  std::string ok, nbufs, dev, inode, offset, perms;
  theirs >> ok >> nbufs >> dev >> inode >> offset >> perms;
  ASSERT_EQ(ok, "ok") << line;
  std::istringstream ours(testing::MappingOf(mine->buffer(0).data()));
  std::string my_dev, my_inode, my_offset, my_perms;
  ours >> my_dev >> my_inode >> my_offset >> my_perms;
  EXPECT_EQ(inode, my_inode);
  EXPECT_EQ(dev, my_dev);
  EXPECT_EQ(offset, my_offset);
  EXPECT_EQ(perms, "r--s");
  struct stat st;
  ASSERT_EQ(fstat(f.store.fd(), &st), 0);
  EXPECT_EQ(inode, std::to_string(st.st_ino));
}

TEST(MultiProcessTest, GetTouchesNoBufferPage) {
  Fixture f(40 << 20);
  ObjectId id = f.Put(32 << 20);
  Child c = Child::Helper({"rss-after-get", f.name, id.ToString()});
  std::string line = c.ReadLine();
  ASSERT_TRUE(ExitedZero(c.Wait())) << line;
  long before = 0, after = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "rss_kib %ld %ld", &before, &after), 2) << line;
  // A 32 MiB object; the Get reads its header page and a few table pages.
  // Each read fault maps up to 16 neighbouring resident pages (the kernel's
  // fault-around, 64 KiB) without touching them, hence the bound of 256 KiB:
  // 1/128 of the object.
  EXPECT_LT(after - before, 256) << line;
}

TEST(MultiProcessTest, MemfdStoreHandedToAChild) {
  StoreOptions o;
  o.backing = Backing::kMemfd;
  o.capacity = 4 << 20;
  auto s = Store::Create("handed", o);
  ASSERT_TRUE(s.ok());
  ObjectId id = ObjectId::Random();
  auto b = Pattern(id, 0, 100000);
  std::span<const std::byte> bufs[] = {b};
  ASSERT_TRUE(s->Put(id, {}, bufs).ok());
  int fd = fcntl(s->fd(), F_DUPFD_CLOEXEC, 100);
  Child c = Child::Helper({"get", "fd:3", id.ToString()}, fd);
  close(fd);
  std::string line = c.ReadLine();
  EXPECT_TRUE(ExitedZero(c.Wait())) << line;
  EXPECT_EQ(line.rfind("ok 1 ", 0), 0u) << line;
}

TEST(MultiProcessTest, PinsHeldByAnotherProcessDeferDelete) {
  Fixture f;
  ObjectId id = f.Put(1 << 20);
  Child c = Child::Helper({"pin", f.name, id.ToString()});
  ASSERT_EQ(c.ReadLine(), "pinned");
  EXPECT_EQ(f.store.Stats()->pins, 1u);
  uint64_t used = f.store.Stats()->used;
  ASSERT_TRUE(f.store.Delete(id).ok());
  EXPECT_EQ(f.store.Stats()->deleted_pinned, 1u);
  EXPECT_EQ(f.store.Stats()->used, used);
  c.CloseStdin();  // the child releases its view and exits cleanly
  ASSERT_TRUE(ExitedZero(c.Wait()));
  auto st = f.store.Stats();
  EXPECT_EQ(st->pins, 0u);
  EXPECT_EQ(st->deleted_pinned, 0u);
  EXPECT_EQ(st->used, 0u);
  EXPECT_EQ(st->clients, 1u);
}

TEST(MultiProcessTest, PinsOfAKilledProcessAreReclaimed) {
  Fixture f(4 << 20);
  ObjectId id = f.Put(3 << 20);
  Child c = Child::Helper({"pin", f.name, id.ToString()});
  ASSERT_EQ(c.ReadLine(), "pinned");
  ASSERT_TRUE(f.store.Delete(id).ok());
  c.Kill(SIGKILL);
  c.Wait();
  // The space held by the dead reader's pin comes back without any call
  // beyond a Put that needs it.
  ObjectId next = f.Put(3 << 20);
  EXPECT_TRUE(f.store.Contains(next));
  auto st = f.store.Stats();
  EXPECT_EQ(st->pins, 0u);
  EXPECT_EQ(st->clients, 1u);
}

TEST(MultiProcessTest, FreeClientSlotsCountsOtherProcessesAndReclaimsTheDead) {
  Fixture f(4 << 20);
  ObjectId id = f.Put(4096);
  auto free = f.store.FreeClientSlots();
  ASSERT_TRUE(free.ok()) << free.status().ToString();
  EXPECT_EQ(*free, 15u);  // 16 slots, this handle holds one
  Child c = Child::Helper({"pin", f.name, id.ToString()});
  ASSERT_EQ(c.ReadLine(), "pinned");
  EXPECT_EQ(f.store.FreeClientSlots().value(), 14u);
  EXPECT_EQ(f.store.FreeClientSlots().value(), f.store.Stats()->max_clients - f.store.Stats()->clients);
  c.Kill(SIGKILL);
  c.Wait();
  EXPECT_EQ(f.store.FreeClientSlots().value(), 15u);  // the dead one's slot is free again
}

TEST(MultiProcessTest, ProcessKilledMidPutLeavesNothingVisible) {
  Fixture f;
  ObjectId keep = f.Put(100000);
  ObjectId id = ObjectId::Random();
  Child c = Child::Helper({"put-hang", f.name, id.ToString(), std::to_string(2 << 20)});
  ASSERT_EQ(c.ReadLine(), "writing");
  EXPECT_EQ(f.store.Get(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(f.store.Stats()->unsealed, 1u);
  c.Kill(SIGKILL);
  c.Wait();
  auto reclaimed = f.store.ReclaimDead();
  ASSERT_TRUE(reclaimed.ok());
  EXPECT_EQ(*reclaimed, 1u);
  auto st = f.store.Stats();
  EXPECT_EQ(st->unsealed, 0u);
  EXPECT_EQ(st->objects, 1u);
  EXPECT_EQ(f.store.Get(id).status().code(), StatusCode::kNotFound);
  // The id is free again, and the other object is untouched.
  auto b = Pattern(id, 0, 10);
  std::span<const std::byte> bufs[] = {b};
  EXPECT_TRUE(f.store.Put(id, {}, bufs).ok());
  auto v = f.store.Get(keep);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(keep, 0, v->buffer(0)), -1);
}

TEST(MultiProcessTest, ProcessKilledHoldingTheLockDoesNotDeadlock) {
  Fixture f;
  ObjectId keep = f.Put(100000);
  Child c = Child::Helper({"lock-hang", f.name});
  ASSERT_EQ(c.ReadLine(), "locked");
  c.Kill(SIGKILL);
  c.Wait();
  // The robust lock reports its owner's death; the store repairs itself.
  ObjectId next = f.Put(1000);
  auto v = f.store.Get(keep);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(keep, 0, v->buffer(0)), -1);
  EXPECT_TRUE(f.store.Contains(next));
  EXPECT_EQ(f.store.Stats()->clients, 1u);
}

TEST(MultiProcessTest, WritingThroughAViewKillsOnlyTheWriter) {
  Fixture f;
  ObjectId id = f.Put(8192);
  // Under AddressSanitizer, let the child die of the signal itself.
  setenv("ASAN_OPTIONS", "handle_segv=0", 1);  // let the child die of it, sanitized or not
  setenv("TSAN_OPTIONS", "handle_segv=0", 1);
  Child c = Child::Helper({"write-view", f.name, id.ToString()});
  unsetenv("ASAN_OPTIONS");
  unsetenv("TSAN_OPTIONS");
  EXPECT_EQ(c.ReadLine(), "writing");
  EXPECT_EQ(c.ReadLine(), "");  // never "wrote"
  int status = c.Wait();
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  auto v = f.store.Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  EXPECT_EQ(f.store.Stats()->pins, 1u);  // the dead writer's pin is gone
}

TEST(MultiProcessTest, ConcurrentPutGetDeleteFromSeveralProcesses) {
  Fixture f(32 << 20);
  std::vector<ObjectId> shared;
  for (int i = 0; i < 4; ++i) shared.push_back(f.Put(50000 + i * 1000));
  uint64_t used = f.store.Stats()->used;
  std::vector<Child> children;
  for (int i = 0; i < 3; ++i) {
    std::vector<std::string> args = {"churn", f.name, std::to_string(i + 1), "300"};
    for (ObjectId id : shared) args.push_back(id.ToString());
    children.push_back(Child::Helper(args));
  }
  for (Child& c : children) {
    std::string line = c.ReadLine(60000);
    EXPECT_EQ(line.rfind("done ", 0), 0u) << line;
    EXPECT_TRUE(ExitedZero(c.Wait()));
  }
  auto st = f.store.Stats();
  EXPECT_EQ(st->objects, shared.size());
  EXPECT_EQ(st->used, used);
  EXPECT_EQ(st->pins, 0u);
  EXPECT_EQ(st->clients, 1u);
}

TEST(MultiProcessTest, AbandonedStoreIsRemovedByGcAndByTheNextCreate) {
  // A private store directory: gc sweeps every store of the user, and other
  // tests running at the same time must not sweep ours (nor we theirs).
  testing::TempDir dir;
  OpenOptions here;
  here.shm_dir = dir.path();
  StoreOptions o;
  o.capacity = 1 << 20;
  o.shm_dir = dir.path();
  auto abandon = [&](const std::string& name) {
    Child c = Child::Helper({"create-and-hang", name, dir.path()});
    ASSERT_EQ(c.ReadLine(), "created");
    c.Kill(SIGKILL);
    c.Wait();
  };
  std::string a = UniqueName(), b = UniqueName(), live_name = UniqueName();
  abandon(a);
  abandon(b);
  auto live = Store::Create(live_name, o);  // a store in use must survive gc
  ASSERT_TRUE(live.ok());
  auto removed = Store::CollectGarbage(dir.path());
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, (std::vector<std::string>{std::min(a, b), std::max(a, b)}));
  EXPECT_EQ(Store::Open(a, here).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Store::Open(live_name, here).ok());
  // The next Create of an abandoned name replaces it.
  std::string c_name = UniqueName();
  abandon(c_name);
  EXPECT_EQ(Store::ListStores(dir.path())->size(), 2u);
  auto replaced = Store::Create(c_name, o);
  EXPECT_TRUE(replaced.ok()) << replaced.status().ToString();
}

TEST(MultiProcessTest, StoreWithALiveUserIsNotReplaced) {
  std::string name = UniqueName();
  Child c = Child::Helper({"create-and-hang", name});
  ASSERT_EQ(c.ReadLine(), "created");
  StoreOptions o;
  o.capacity = 1 << 20;
  EXPECT_EQ(Store::Create(name, o).status().code(), StatusCode::kAlreadyExists);
  c.CloseStdin();
  EXPECT_TRUE(ExitedZero(c.Wait()));
  EXPECT_EQ(Store::Open(name).status().code(), StatusCode::kNotFound);  // closed cleanly: removed
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

TEST(ForkTest, AForkedChildThatDropsWhatItInheritedLeavesTheParentAlone) {
  // The child inherits the parent's handle and view. Dropping them must not
  // release the parent's pins or registration, nor unlink the parent's
  // segment; using the handle is a clear error.
  StoreOptions o;
  o.capacity = 8 << 20;
  std::string name = testing::UniqueName("fork");
  auto store = Store::Create(name, o);
  ASSERT_TRUE(store.ok());
  ObjectId id = ObjectId::Random();
  auto bytes = testing::Pattern(id, 0, 1 << 20);
  std::span<const std::byte> bufs[] = {bytes};
  ASSERT_TRUE(store->Put(id, {}, bufs).ok());
  auto view = store->Get(id);
  ASSERT_TRUE(view.ok());
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    if (store->Get(id).status().code() != StatusCode::kInvalidArgument) code |= 1;
    if (store->Put(ObjectId::Random(), {}, bufs).code() != StatusCode::kInvalidArgument) code |= 2;
    if (testing::FirstMismatch(id, 0, view->buffer(0)) != -1) code |= 4;  // reading is fine
    { ObjectView dropped = std::move(*view); }
    { Store dropped = std::move(*store); }
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto names = Store::ListStores();
  ASSERT_TRUE(names.ok());
  EXPECT_NE(std::find(names->begin(), names->end(), name), names->end())
      << "the child unlinked the parent's segment";
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->clients, 1u);
  EXPECT_EQ(stats->pins, 1u);
  // The view's extent is still held: deleting and refilling the store
  // never reuses it while the view lives.
  ASSERT_TRUE(store->Delete(id).ok());
  for (int i = 0; i < 4; ++i) {
    ObjectId other = ObjectId::Random();
    auto more = testing::Pattern(other, 0, 1 << 20);
    std::span<const std::byte> b[] = {more};
    ASSERT_TRUE(store->Put(other, {}, b).ok());
  }
  EXPECT_EQ(testing::FirstMismatch(id, 0, view->buffer(0)), -1);
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

class LivenessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StoreOptions o;
    o.capacity = 4 << 20;
    auto s = Store::Create(name_, o);
    ASSERT_TRUE(s.ok());
    store_ = std::make_unique<Store>(std::move(*s));
    auto bytes = testing::Pattern(id_, 0, 64 << 10);
    std::span<const std::byte> bufs[] = {bytes};
    ASSERT_TRUE(store_->Put(id_, {}, bufs).ok());
  }
  // The other process's pin must survive every reclaim while it runs.
  void ExpectPinnedByALiveProcess() {
    auto reclaimed = store_->ReclaimDead();
    ASSERT_TRUE(reclaimed.ok());
    EXPECT_EQ(*reclaimed, 0u) << "a live process was judged dead";
    EXPECT_EQ(store_->Stats()->pins, 1u);
    EXPECT_EQ(store_->Stats()->clients, 2u);
  }
  // Once it is gone (by _exit or by a normal exit), its pin goes too.
  void ExpectReleasedOnceGone(testing::Child& child) {
    child.CloseStdin();
    int status = child.Wait();
    EXPECT_TRUE(WIFEXITED(status)) << status;
    auto stats = store_->Stats();  // reclaims the dead
    EXPECT_EQ(stats->pins, 0u);
    EXPECT_EQ(stats->clients, 1u);
  }
  std::string name_ = testing::UniqueName("alive");
  ObjectId id_ = ObjectId::Random();
  std::unique_ptr<Store> store_;
};

TEST_F(LivenessTest, AProcessWhoseMainThreadExitedIsStillAlive) {
  if (testing::kThreadSanitizer) GTEST_SKIP() << "ThreadSanitizer cannot run a process whose main thread exits";
  auto child = testing::Child::Helper({"pin-without-main-thread", name_, id_.ToString()});
  ASSERT_EQ(child.ReadLine(), "pinned");
  ASSERT_EQ(child.ReadLine(), "main exited");
  ExpectPinnedByALiveProcess();
  ExpectReleasedOnceGone(child);
}

TEST_F(LivenessTest, AProcessInAnotherPidNamespaceIsStillAlive) {
  // Its PID means nothing here; the kernel's lock does.
  auto child = testing::Child::Run("/usr/bin/unshare", {"--pid", "--fork", "--mount-proc",
                                                        ZCSTORE_TEST_HELPER, "pin", name_,
                                                        id_.ToString()});
  std::string line = child.ReadLine();
  if (line != "pinned") GTEST_SKIP() << "cannot start a process in a new PID namespace: " << line;
  ExpectPinnedByALiveProcess();
  ExpectReleasedOnceGone(child);
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

TEST(TortureTest, WritersKilledAtRandomInstantsLeaveAUsableStoreAndGiveTheirSpaceBack) {
  // kill -9 of a writer at random instants (mid-Put, mid-Delete, inside the
  // lock or out of it), twenty times: the store stays usable and consistent,
  // and every byte comes back.
  StoreOptions o;
  o.capacity = 16 << 20;
  o.checksums = true;
  std::string name = UniqueName("torture");
  auto store = Store::Create(name, o);
  ASSERT_TRUE(store.ok());
  std::mt19937 rng(12345);
  for (int round = 0; round < 20; ++round) {
    Child writer = Child::Helper({"churn", name, std::to_string(round + 1), "1000000"});
    usleep(2000 + rng() % 30000);  // the random instant is what is under test
    writer.Kill(SIGKILL);
    writer.Wait();
  }
  ASSERT_TRUE(store->ReclaimDead().ok());
  auto stats = store->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->unsealed, 0u);
  EXPECT_EQ(stats->pins, 0u);
  EXPECT_EQ(stats->clients, 1u);
  auto objects = store->List();
  ASSERT_TRUE(objects.ok()) << objects.status().ToString();
  uint64_t held = 0;
  for (const ObjectInfo& info : *objects) held += info.extent_bytes;
  EXPECT_EQ(held, stats->used) << "bytes held by no object";
  Status verified = store->VerifyAll();
  EXPECT_TRUE(verified.ok()) << verified.ToString();
  for (const ObjectInfo& info : *objects) ASSERT_TRUE(store->Delete(info.id).ok());
  EXPECT_EQ(store->Stats()->used, 0u);
  // And it still takes a large object.
  ObjectId id = ObjectId::Random();
  auto big = Pattern(id, 0, 12 << 20);
  std::span<const std::byte> bufs[] = {big};
  EXPECT_TRUE(store->Put(id, {}, bufs).ok());
}

}  // namespace
}  // namespace zcstore
