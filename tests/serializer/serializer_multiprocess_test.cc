// Serialized objects across real processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>

#include "tests/serializer/test_types.h"
#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

using testing::Child;
using testing::Model;

struct Shared {
  std::string name = zcstore::testing::UniqueName("ser");
  Store store = std::move(Store::Create(name, [] {
                            StoreOptions o;
                            o.capacity = 16 << 20;
                            return o;
                          }()).value());
  ObjectId Put() {
    Model m;
    m.name = "shared";
    m.dims = 8;
    m.factors = Array<float>::Uninitialized(100000);
    for (size_t i = 0; i < m.factors.size(); ++i) m.factors.mutable_data()[i] = 0.5f;
    m.bias = std::vector<float>(2000, 1.0f);
    return store.Put(std::move(m)).value();
  }
};

TEST(SerializerMultiProcessTest, ObjectPutInOneProcessLoadsZeroCopyInAnother) {
  Shared s;
  ObjectId id = s.Put();
  Child c = Child::Helper({"get-model", s.name, id.ToString()});
  std::string line = c.ReadLine();
  int status = c.Wait();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << line;
  // 100000 * 0.5 + 2000 * 1.0. The Array is a view of the store; the vector
  // (8000 bytes, over the 4 KiB threshold) went out of band and was copied.
  EXPECT_EQ(line, "ok shared dims=8 n=100000 sum=52000.0 view=1 zero_copy=1 copied=1");
}

TEST(SerializerMultiProcessTest, WritingThroughALoadedArrayFaultsAndChangesNothing) {
  Shared s;
  ObjectId id = s.Put();
  setenv("ASAN_OPTIONS", "handle_segv=0", 1);  // let the child die of it, sanitized or not
  setenv("TSAN_OPTIONS", "handle_segv=0", 1);
  Child c = Child::Helper({"write-array", s.name, id.ToString()});
  unsetenv("ASAN_OPTIONS");
  unsetenv("TSAN_OPTIONS");
  EXPECT_EQ(c.ReadLine(), "writing");
  EXPECT_EQ(c.ReadLine(), "");
  int status = c.Wait();
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  auto m = s.store.Get<Model>(id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->factors[0], 0.5f);
}

}  // namespace
}  // namespace zcstore
