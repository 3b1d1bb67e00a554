// Who can open, plant or remove a store: another user's files under our
// names, links, FIFOs and held locks get a clear error at once, never a hang,
// and nothing but our own stores is ever opened, listed or removed.
//
// The other user is real: as root, the helper drops to uid 65534 (nobody)
// before it plants anything. Without root these tests are skipped.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <fstream>
#include <thread>

#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

// A sticky, world-writable directory, as /dev/shm is.
class SharedDir : public testing::TempDir {
 public:
  SharedDir() { chmod(path().c_str(), 01777); }
};

struct Planted {
  testing::Child child;
  std::string line;
};

Planted Plant(const std::string& dir, const std::string& name, const std::string& kind) {
  Planted p{testing::Child::Helper({"plant", dir, std::to_string(geteuid()), name, kind}), ""};
  p.line = p.child.ReadLine();
  return p;
}

class PlantedStoreTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to act as a second user (nobody)";
  }
  SharedDir dir_;
};

TEST_P(PlantedStoreTest, IsRefusedAtOnceAndLeftAlone) {
  std::string kind = GetParam();
  std::string name = testing::UniqueName("victim");
  Planted p = Plant(dir_.path(), name, kind);
  ASSERT_EQ(p.line, "planted");
  std::string path = dir_.path() + "/zcstore." + std::to_string(geteuid()) + "." + name;

  OpenOptions o;
  o.shm_dir = dir_.path();
  // A bound far above what the checks take: a hang would show as Timeout.
  o.lock_timeout = std::chrono::milliseconds(3000);
  for (bool read_only : {false, true}) {
    o.read_only = read_only;
    auto s = Store::Open(name, o);
    ASSERT_FALSE(s.ok()) << kind;
    StatusCode want = kind == "fifo" ? StatusCode::kInvalidArgument : StatusCode::kPermissionDenied;
    EXPECT_EQ(s.status().code(), want) << kind << ": " << s.status().ToString();
    const std::string& msg = s.status().message();
    if (kind == "symlink") {
      EXPECT_NE(msg.find("symbolic link"), std::string::npos) << msg;
    } else if (kind == "fifo") {
      EXPECT_NE(msg.find("FIFO"), std::string::npos) << msg;
    } else {
      EXPECT_NE(msg.find("uid 65534"), std::string::npos) << msg;  // names the owner
    }
  }

  // Create under that name: refused, naming the squatter, not AlreadyExists.
  StoreOptions so;
  so.shm_dir = dir_.path();
  so.capacity = 1 << 20;
  auto created = Store::Create(name, so);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), StatusCode::kPermissionDenied) << created.status().ToString();

  // list, gc and rm never open it, never block on it and never remove it.
  auto listed = Store::ListStores(dir_.path());
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty()) << (*listed)[0];
  auto removed = Store::CollectGarbage(dir_.path());
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(removed->empty());
  Status rm = Store::Remove(name, o);
  EXPECT_FALSE(rm.ok());
  EXPECT_NE(rm.code(), StatusCode::kNotFound) << rm.ToString();
  struct stat st;
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << "the planted file was removed";

  p.child.CloseStdin();
  EXPECT_EQ(p.child.Wait(), 0);
}

INSTANTIATE_TEST_SUITE_P(Kinds, PlantedStoreTest,
                         ::testing::Values("locked-store", "fifo", "symlink", "open-file"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::erase(n, '-');
                           return n;
                         });

TEST(StoreSecurityTest, AGroupWritableStoreOpensOnlyWhenAskedFor) {
  StoreOptions so;
  so.capacity = 1 << 20;
  so.mode = 0660;
  std::string name = testing::UniqueName();
  auto owner = Store::Create(name, so);
  ASSERT_TRUE(owner.ok()) << owner.status().ToString();
  auto refused = Store::Open(name);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.status().message().find("mode 0660"), std::string::npos)
      << refused.status().ToString();
  OpenOptions o;
  o.allow_shared_write = true;
  EXPECT_TRUE(Store::Open(name, o).ok());
}

TEST(StoreSecurityTest, RemoveTakesOnlyStoresAndStoreNames) {
  for (const char* bad : {"../etc", "a/b", "..", ""}) {
    Status st = Store::Remove(bad);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad << ": " << st.ToString();
  }
  // A file of ours that is not a store stays where it is.
  testing::TempDir dir;
  std::string file = dir.path() + "/notes.txt";
  std::ofstream(file) << "not a store";
  OpenOptions file_store;
  file_store.backing = Backing::kFile;
  Status st = Store::Remove(file, file_store);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_EQ(access(file.c_str(), F_OK), 0);
  // A real store is removed.
  StoreOptions so;
  so.capacity = 1 << 20;
  so.persistent = true;
  std::string name = testing::UniqueName();
  ASSERT_TRUE(Store::Create(name, so).ok());
  EXPECT_TRUE(Store::Remove(name).ok());
  EXPECT_EQ(Store::Remove(name).code(), StatusCode::kNotFound);
}

TEST(StoreSecurityTest, AStuckLockHolderMakesOpenTimeOutNotHang) {
  StoreOptions so;
  so.capacity = 1 << 20;
  std::string name = testing::UniqueName();
  auto owner = Store::Create(name, so);
  ASSERT_TRUE(owner.ok());
  auto holder = testing::Child::Helper({"lock-hang", name});
  ASSERT_EQ(holder.ReadLine(), "locked");
  OpenOptions o;
  o.lock_timeout = std::chrono::milliseconds(200);
  auto s = Store::Open(name, o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kTimeout) << s.status().ToString();
  // Once the holder is gone, the lock is recovered and Open works.
  holder.Kill(SIGKILL);
  holder.Wait();
  auto again = Store::Open(name, o);
  EXPECT_TRUE(again.ok()) << again.status().ToString();
}

// Every call that takes the store's lock gives up after lock_timeout when a
// live process holds the lock and is stopped: Timeout, never a hang. Once
// the holder dies, the lock is recovered and the handle works again.
TEST(StoreSecurityTest, AStoppedLockHolderMakesEveryCallTimeOutNotHang) {
  StoreOptions so;
  so.capacity = 1 << 20;
  std::string name = testing::UniqueName();
  auto owner = Store::Create(name, so);
  ASSERT_TRUE(owner.ok());
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(owner->Put(id, {}, {}).ok());
  OpenOptions o;
  o.lock_timeout = std::chrono::milliseconds(150);
  auto h = Store::Open(name, o);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  auto view = h->Get(id);
  ASSERT_TRUE(view.ok());
  auto holder = testing::Child::Helper({"lock-hang", name});
  ASSERT_EQ(holder.ReadLine(), "locked");
  holder.Kill(SIGSTOP);
  auto timed_out = [](const Status& st) { return st.code() == StatusCode::kTimeout; };
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(timed_out(h->Get(id).status()));
  EXPECT_TRUE(timed_out(h->Put(ObjectId::Random(), {}, {})));
  EXPECT_TRUE(timed_out(h->Delete(id)));
  EXPECT_TRUE(timed_out(h->Bind("n", id)));
  EXPECT_TRUE(timed_out(h->Lookup("n").status()));
  EXPECT_TRUE(timed_out(h->Stats().status()));
  EXPECT_TRUE(timed_out(h->List().status()));
  EXPECT_FALSE(h->Contains(id));
  EXPECT_TRUE(timed_out(view->Release()));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds(5)) << "9 calls of 150 ms each";
  EXPECT_GE(took, std::chrono::milliseconds(8 * 150));
  holder.Kill(SIGKILL);
  holder.Wait();
  // The holder's death is seen at the next lock: recovered, and the handle
  // works again (the view's pin, left by its release, went with the retry).
  auto again = h->Get(id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(h->Contains(id));
}

TEST(StoreSecurityTest, GcNeverRemovesAStoreThatIsBeingOpened) {
  // An abandoned store (its creator was killed) is opened and collected at
  // the same time, many times over: whenever Open succeeds, the store must
  // still be there for others to open by name.
  int opened = 0;
  for (int trial = 0; trial < 60; ++trial) {
    std::string name = testing::UniqueName("race");
    auto creator = testing::Child::Helper({"create-and-hang", name});
    ASSERT_EQ(creator.ReadLine(), "created");
    creator.Kill(SIGKILL);
    creator.Wait();
    std::atomic<bool> go{false};
    std::thread gc([&] {
      while (!go) {
      }
      (void)Store::CollectGarbage();
    });
    go = true;
    auto s = Store::Open(name);
    gc.join();
    if (s.ok()) {
      ++opened;
      auto names = Store::ListStores();
      ASSERT_TRUE(names.ok());
      EXPECT_NE(std::find(names->begin(), names->end(), name), names->end())
          << "trial " << trial << ": gc removed a store while it was opened";
    }
    (void)Store::Remove(name);
  }
  RecordProperty("opened", opened);
}

}  // namespace
}  // namespace zcstore
