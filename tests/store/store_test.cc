// The store in one process: lifecycle, backings, limits, names, checksums.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

using testing::FirstMismatch;
using testing::Pattern;
using testing::UniqueName;

StoreOptions SmallOptions(uint64_t capacity = 8 << 20) {
  StoreOptions o;
  o.capacity = capacity;
  o.max_objects = 64;
  o.max_clients = 8;
  o.max_pins_per_client = 32;
  o.max_names = 8;
  return o;
}

Store MakeStore(const StoreOptions& o = SmallOptions()) {
  auto s = Store::Create(o.backing == Backing::kFile ? "" : UniqueName(), o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(*s);
}

Status PutPattern(Store& s, ObjectId id, std::vector<size_t> sizes, std::string_view md = "meta") {
  std::vector<std::vector<std::byte>> data;
  std::vector<std::span<const std::byte>> spans;
  for (size_t i = 0; i < sizes.size(); ++i) data.push_back(Pattern(id, i, sizes[i]));
  for (auto& d : data) spans.emplace_back(d);
  return s.Put(id, std::as_bytes(std::span(md)), spans);
}

TEST(StoreTest, PutThenGetReturnsEveryByte) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {1000, 70000, 0}).ok());
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->num_buffers(), 3u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(v->metadata().data()), v->metadata().size()),
            "meta");
  EXPECT_EQ(v->buffer(0).size(), 1000u);
  EXPECT_EQ(v->buffer(1).size(), 70000u);
  EXPECT_EQ(v->buffer(2).size(), 0u);
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  EXPECT_EQ(FirstMismatch(id, 1, v->buffer(1)), -1);
  EXPECT_TRUE(s.Contains(id));
  auto st = s.Stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->objects, 1u);
  EXPECT_EQ(st->pins, 1u);
  EXPECT_EQ(st->clients, 1u);
  // One extent: header and 3 descriptors (160 bytes), metadata at 192, buffer
  // 0 at 256, buffer 1 (>= 64 KiB) on the next page at 4096 up to 74096,
  // buffer 2 at 74112; rounded up to a page: 77824.
  EXPECT_EQ(st->used, 77824u);
}

TEST(StoreTest, BuffersAreAlignedTo64BytesInShmAndPagesInFiles) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {3, 5, 7}).ok());
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v->buffer(i).data()) % 64, 0u) << i;
  }
  testing::TempDir dir;
  StoreOptions fo = SmallOptions();
  fo.backing = Backing::kFile;
  auto f = Store::Create(dir.path() + "/model.zcs", fo);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE(PutPattern(*f, id, {3, 5}).ok());
  auto fv = f->Get(id);
  ASSERT_TRUE(fv.ok());
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(fv->buffer(i).data()) % 4096, 0u) << i;
  }
}

TEST(StoreTest, UnsealedObjectIsInvisibleUntilSealed) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  size_t sizes[] = {4096};
  auto b = s.CreateObject(id, 8, sizes);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  std::memcpy(b->buffer(0).data(), Pattern(id, 0, 4096).data(), 4096);
  std::memcpy(b->metadata().data(), "12345678", 8);
  EXPECT_FALSE(s.Contains(id));
  EXPECT_EQ(s.Get(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(s.Stats()->unsealed, 1u);
  ASSERT_TRUE(b->Seal().ok());
  EXPECT_EQ(b->Seal().code(), StatusCode::kInvalidArgument);
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  EXPECT_EQ(std::memcmp(v->metadata().data(), "12345678", 8), 0);
}

TEST(StoreTest, AbortAndDroppedBuilderReturnTheSpace) {
  Store s = MakeStore();
  size_t sizes[] = {1 << 20};
  {
    auto b = s.CreateObject(ObjectId::Random(), 0, sizes);
    ASSERT_TRUE(b.ok());
    EXPECT_GT(s.Stats()->used, 1u << 20);
    ASSERT_TRUE(b->Abort().ok());
    EXPECT_EQ(b->Abort().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(s.Stats()->used, 0u);
  ObjectId id = ObjectId::Random();
  {
    auto b = s.CreateObject(id, 0, sizes);
    ASSERT_TRUE(b.ok());
  }  // destroyed unsealed: aborted
  EXPECT_EQ(s.Stats()->used, 0u);
  EXPECT_EQ(s.Get(id).status().code(), StatusCode::kNotFound);
}

TEST(StoreTest, DeleteIsDeferredWhilePinnedAndSpaceIsReusedAfter) {
  Store s = MakeStore(SmallOptions(4 << 20));
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {3 << 20}).ok());
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  uint64_t used = s.Stats()->used;
  ASSERT_TRUE(s.Delete(id).ok());
  EXPECT_FALSE(s.Contains(id));
  EXPECT_EQ(s.Get(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(s.Delete(id).code(), StatusCode::kNotFound);
  auto st = s.Stats();
  EXPECT_EQ(st->deleted_pinned, 1u);
  EXPECT_EQ(st->used, used);
  // The pinned bytes are intact, and the space is not handed out again.
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  EXPECT_EQ(PutPattern(s, ObjectId::Random(), {3 << 20}).code(), StatusCode::kStoreFull);
  // The same id cannot be reused while the deleted object is pinned.
  EXPECT_EQ(PutPattern(s, id, {10}).code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(v->Release().ok());
  EXPECT_EQ(s.Stats()->used, 0u);
  EXPECT_TRUE(PutPattern(s, ObjectId::Random(), {3 << 20}).ok());
}

TEST(StoreTest, DoubleReleaseIsAnError) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {10}).ok());
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->Release().ok());
  EXPECT_EQ(v->Release().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(v->valid());
  EXPECT_EQ(s.Stats()->pins, 0u);
}

// Large puts fault their destination in on a second thread ahead of the
// copy (serializer/copy.cc): every byte must still land, whatever the size
// (not a multiple of the chunk or the page) and the source's alignment.
TEST(StoreTest, LargePutsCopyEveryByte) {
  StoreOptions o = SmallOptions();
  o.capacity = 128 << 20;
  Store s = MakeStore(o);
  for (size_t size : {size_t{8} << 20, (size_t{20} << 20) + 4097, (size_t{33} << 20) - 1}) {
    ObjectId id = ObjectId::Random();
    std::vector<std::byte> pattern = testing::Pattern(id, 0, size);
    std::vector<std::byte> data(size + 3);  // copied 3 bytes in: a misaligned source
    std::copy(pattern.begin(), pattern.end(), data.begin() + 3);
    std::span<const std::byte> bufs[] = {{data.data() + 3, size}};
    ASSERT_TRUE(s.Put(id, {}, bufs).ok());
    auto v = s.Get(id);
    ASSERT_TRUE(v.ok());
    ASSERT_EQ(v->buffer(0).size(), size);
    EXPECT_EQ(testing::FirstMismatch(id, 0, v->buffer(0)), -1) << size;
    ASSERT_TRUE(v->Release().ok());
    ASSERT_TRUE(s.Delete(id).ok());
  }
}

TEST(StoreTest, RepeatedGetsOfOneObjectShareOnePinRecord) {
  StoreOptions o = SmallOptions();
  o.max_pins_per_client = 2;
  Store s = MakeStore(o);
  ObjectId a = ObjectId::Random(), b = ObjectId::Random(), c = ObjectId::Random();
  for (ObjectId id : {a, b, c}) ASSERT_TRUE(PutPattern(s, id, {10}).ok());
  std::vector<ObjectView> views;
  for (int i = 0; i < 5; ++i) views.push_back(std::move(*s.Get(a)));
  views.push_back(std::move(*s.Get(b)));
  EXPECT_EQ(s.Stats()->pins, 6u);
  auto third = s.Get(c);
  // Its own code: a full store and a handle at its pin limit need different fixes.
  EXPECT_EQ(third.status().code(), StatusCode::kTooManyPins);
  EXPECT_NE(third.status().message().find("max_pins_per_client"), std::string::npos);
  views.clear();
  EXPECT_TRUE(s.Get(c).ok());
}

TEST(StoreTest, ExistingIdAndNilIdAreRejected) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {10}).ok());
  EXPECT_EQ(PutPattern(s, id, {10}).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(PutPattern(s, ObjectId{}, {10}).code(), StatusCode::kInvalidArgument);
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
}

TEST(StoreTest, FullStoreSaysHowFullAndHarmsNothing) {
  Store s = MakeStore(SmallOptions(1 << 20));
  ObjectId keep = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, keep, {100000}).ok());
  Status st = PutPattern(s, ObjectId::Random(), {2 << 20});
  EXPECT_EQ(st.code(), StatusCode::kStoreFull);
  EXPECT_NE(st.message().find("raise capacity or delete objects"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("of 1.0 MiB are used"), std::string::npos) << st.message();
  auto v = s.Get(keep);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(keep, 0, v->buffer(0)), -1);
  EXPECT_EQ(s.Stats()->objects, 1u);
}

TEST(StoreTest, FullObjectTableIsStoreFull) {
  StoreOptions o = SmallOptions();
  o.max_objects = 4;
  Store s = MakeStore(o);
  std::vector<ObjectId> ids;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(ObjectId::Random());
    ASSERT_TRUE(PutPattern(s, ids.back(), {100}).ok());
  }
  Status st = PutPattern(s, ObjectId::Random(), {100});
  EXPECT_EQ(st.code(), StatusCode::kStoreFull);
  EXPECT_NE(st.message().find("max_objects"), std::string::npos);
  for (ObjectId id : ids) EXPECT_TRUE(s.Contains(id));
  // Deleting frees a slot, and probing still finds every survivor.
  ASSERT_TRUE(s.Delete(ids[1]).ok());
  ObjectId fresh = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, fresh, {100}).ok());
  for (ObjectId id : {ids[0], ids[2], ids[3], fresh}) EXPECT_TRUE(s.Contains(id));
}

// The default table holds what users have: a model of 20,000 arrays and a
// task of 5,000 more, each its own object (4096 slots did not).
TEST(StoreTest, DefaultTableHoldsAModelOf20kArraysAndA5kArgumentTask) {
  StoreOptions o;
  o.backing = Backing::kMemfd;
  o.capacity = 25000 * 4096 + (1 << 20);  // every object takes at least a page
  auto s = Store::Create("", o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  std::vector<ObjectId> ids;
  for (int i = 0; i < 25000; ++i) {
    ids.push_back(ObjectId::Random());
    Status st = PutPattern(*s, ids.back(), {8});
    ASSERT_TRUE(st.ok()) << "object " << i << ": " << st.ToString();
  }
  EXPECT_EQ(s->Stats()->objects, 25000u);
  for (int i = 0; i < 25000; i += 997) {
    auto v = s->Get(ids[i]);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(FirstMismatch(ids[i], 0, v->buffer(0)), -1);
  }
}

TEST(StoreTest, FreeSpaceIsReusedAcrossManyPutsAndDeletes) {
  Store s = MakeStore(SmallOptions(2 << 20));
  std::vector<ObjectId> live;
  for (int round = 0; round < 200; ++round) {
    ObjectId id = ObjectId::Random();
    Status st = PutPattern(s, id, {static_cast<size_t>(1000 + (round * 7919) % 300000)});
    if (st.code() == StatusCode::kStoreFull) {
      ASSERT_FALSE(live.empty());
      ASSERT_TRUE(s.Delete(live.front()).ok());
      live.erase(live.begin());
      continue;
    }
    ASSERT_TRUE(st.ok()) << st.ToString();
    live.push_back(id);
  }
  for (ObjectId id : live) {
    auto v = s.Get(id);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  }
  for (ObjectId id : live) ASSERT_TRUE(s.Delete(id).ok());
  auto st = s.Stats();
  EXPECT_EQ(st->used, 0u);
  EXPECT_EQ(st->largest_free, st->capacity);
}

// Allocation starts after the run of extents without gaps from offset 0;
// a gap that opens inside that run (or at its end) must be found again.
TEST(StoreTest, AGapFreedAnywhereIsFoundByTheNextPut) {
  Store s = MakeStore(SmallOptions(64 * 4096));
  std::vector<ObjectId> ids;
  for (;;) {  // one page each, until full
    ObjectId id = ObjectId::Random();
    Status st = PutPattern(s, id, {100});
    if (st.code() == StatusCode::kStoreFull) break;
    ASSERT_TRUE(st.ok()) << st.ToString();
    ids.push_back(id);
  }
  ASSERT_GE(ids.size(), 40u);
  for (size_t victim : {size_t{0}, ids.size() / 2, ids.size() - 1, size_t{7}}) {
    ASSERT_TRUE(s.Delete(ids[victim]).ok());
    ids[victim] = ObjectId::Random();
    ASSERT_TRUE(PutPattern(s, ids[victim], {100}).ok()) << "gap at object " << victim;
    EXPECT_EQ(PutPattern(s, ObjectId::Random(), {100}).code(), StatusCode::kStoreFull);
  }
  // Random churn keeps every byte and gives all space back.
  uint64_t x = 12345;
  for (int round = 0; round < 2000; ++round) {
    x = x * 6364136223846793005u + 1442695040888963407u;
    size_t i = (x >> 33) % ids.size();
    ASSERT_TRUE(s.Delete(ids[i]).ok());
    ids[i] = ObjectId::Random();
    ASSERT_TRUE(PutPattern(s, ids[i], {static_cast<size_t>(1 + (x >> 20) % 3000)}).ok());
  }
  for (ObjectId id : ids) {
    auto v = s.Get(id);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  }
  for (ObjectId id : ids) ASSERT_TRUE(s.Delete(id).ok());
  EXPECT_EQ(s.Stats()->used, 0u);
  EXPECT_EQ(s.Stats()->largest_free, s.Stats()->capacity);
}

TEST(StoreTest, FileOffsetOfABufferLetsItBeMappedPrivately) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {100000}).ok());
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  auto at = s.FileOffsetOf(v->buffer(0).data());
  ASSERT_TRUE(at.ok()) << at.status().ToString();
  std::vector<std::byte> read(100000);
  ASSERT_EQ(pread(s.fd(), read.data(), read.size(), static_cast<off_t>(*at)), 100000);
  EXPECT_EQ(FirstMismatch(id, 0, read), -1);
  // A private mapping there is writable, and writing it changes nothing shared.
  uint64_t page = *at & ~uint64_t{4095};
  size_t len = (*at - page + 100000 + 4095) & ~size_t{4095};
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, s.fd(), static_cast<off_t>(page));
  ASSERT_NE(m, MAP_FAILED);
  auto* mine = static_cast<std::byte*>(m) + (*at - page);
  EXPECT_EQ(std::memcmp(mine, v->buffer(0).data(), 100000), 0);
  mine[0] = ~mine[0];
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  munmap(m, len);
  int local = 0;
  EXPECT_EQ(s.FileOffsetOf(&local).status().code(), StatusCode::kInvalidArgument);
}

TEST(StoreTest, NamesBindLookupAndUnbind) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {10}).ok());
  ASSERT_TRUE(s.Bind("model", id).ok());
  EXPECT_EQ(s.Bind("model", id).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(*s.Lookup("model"), id);
  EXPECT_EQ(s.Lookup("other").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(s.Bind("x", ObjectId::Random()).code(), StatusCode::kNotFound);
  EXPECT_EQ(s.Bind("", id).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Bind(std::string(64, 'n'), id).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(s.Unbind("model").ok());
  EXPECT_EQ(s.Unbind("model").code(), StatusCode::kNotFound);
  ASSERT_TRUE(s.Bind("again", id).ok());
  ASSERT_TRUE(s.Delete(id).ok());
  EXPECT_EQ(s.Lookup("again").status().code(), StatusCode::kNotFound);
}

TEST(StoreTest, ChecksumsVerifyWhenOnAndAreRefusedWhenOff) {
  StoreOptions o = SmallOptions();
  o.checksums = true;
  Store s = MakeStore(o);
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, id, {5000, 123}).ok());
  EXPECT_TRUE(s.Verify(id).ok());
  EXPECT_TRUE(s.VerifyAll().ok());
  EXPECT_TRUE(s.List()->at(0).has_checksums);
  Store plain = MakeStore();
  ASSERT_TRUE(PutPattern(plain, id, {10}).ok());
  EXPECT_EQ(plain.Verify(id).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(plain.Verify(ObjectId::Random()).code(), StatusCode::kNotFound);
}

TEST(StoreTest, ListReportsEveryObjectAndItsState) {
  Store s = MakeStore();
  ObjectId sealed = ObjectId::Random(), pinned = ObjectId::Random(), open = ObjectId::Random();
  ASSERT_TRUE(PutPattern(s, sealed, {100, 200}, "abc").ok());
  ASSERT_TRUE(PutPattern(s, pinned, {10}).ok());
  auto view = s.Get(pinned);
  ASSERT_TRUE(s.Delete(pinned).ok());
  size_t sizes[] = {10};
  auto b = s.CreateObject(open, 0, sizes);
  auto list = s.List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 3u);
  for (const ObjectInfo& o : *list) {
    if (o.id == sealed) {
      EXPECT_EQ(o.state, ObjectInfo::State::kSealed);
      EXPECT_EQ(o.num_buffers, 2u);
      EXPECT_EQ(o.data_bytes, 300u);
      EXPECT_EQ(o.metadata_bytes, 3u);
      EXPECT_GT(o.sealed_unix_ns, 0);
    } else if (o.id == pinned) {
      EXPECT_EQ(o.state, ObjectInfo::State::kDeletedPinned);
      EXPECT_EQ(o.pins, 1u);
    } else {
      EXPECT_EQ(o.id, open);
      EXPECT_EQ(o.state, ObjectInfo::State::kUnsealed);
    }
  }
}

TEST(StoreTest, FileStorePersistsAndReopensReadOnly) {
  testing::TempDir dir;
  std::string path = dir.path() + "/model.zcs";
  StoreOptions o = SmallOptions();
  o.backing = Backing::kFile;
  ObjectId id = ObjectId::Random();
  {
    auto s = Store::Create(path, o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE(PutPattern(*s, id, {50000, 3}).ok());
    ASSERT_TRUE(s->Bind("weights", id).ok());
    // One writer at a time: a second read-write handle is refused.
    OpenOptions rw;
    rw.backing = Backing::kFile;
    auto second = Store::Open(path, rw);
    EXPECT_EQ(second.status().code(), StatusCode::kIOError);
  }
  OpenOptions ro;
  ro.backing = Backing::kFile;
  ro.read_only = true;
  auto s = Store::Open(path, ro);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(s->read_only());
  EXPECT_EQ(*s->Lookup("weights"), id);
  auto v = s->Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  EXPECT_EQ(FirstMismatch(id, 1, v->buffer(1)), -1);
  EXPECT_TRUE(s->VerifyAll().ok());  // file stores always have checksums
  EXPECT_EQ(PutPattern(*s, ObjectId::Random(), {1}).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s->Delete(id).code(), StatusCode::kPermissionDenied);
  // Many read-only handles at once are fine.
  auto s2 = Store::Open(path, ro);
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  EXPECT_TRUE(s2->Contains(id));
}

TEST(StoreTest, FileStoreReopensReadWriteAndKeepsObjects) {
  testing::TempDir dir;
  std::string path = dir.path() + "/m.zcs";
  StoreOptions o = SmallOptions();
  o.backing = Backing::kFile;
  ObjectId a = ObjectId::Random(), b = ObjectId::Random();
  {
    auto s = Store::Create(path, o);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(PutPattern(*s, a, {9000}).ok());
  }
  OpenOptions rw;
  rw.backing = Backing::kFile;
  {
    auto s = Store::Open(path, rw);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ASSERT_TRUE(PutPattern(*s, b, {10}).ok());
    EXPECT_EQ(s->Stats()->objects, 2u);
    EXPECT_EQ(s->Stats()->clients, 1u);  // the first handle's record is gone
  }
  EXPECT_EQ(Store::Create(path, o).status().code(), StatusCode::kAlreadyExists);
}

TEST(StoreTest, MemfdStoreLeavesNothingInDevShm) {
  StoreOptions o = SmallOptions();
  o.backing = Backing::kMemfd;
  auto s = Store::Create("pool", o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  // The store is an anonymous memory file, not a file in /dev/shm.
  char link[256] = {};
  ASSERT_GT(readlink(("/proc/self/fd/" + std::to_string(s->fd())).c_str(), link, sizeof(link) - 1), 0);
  EXPECT_EQ(std::string(link).rfind("/memfd:zcstore:pool", 0), 0u) << link;
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(PutPattern(*s, id, {4096}).ok());
  auto other = Store::OpenFd(s->fd());
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  auto v = other->Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
  EXPECT_EQ(s->Stats()->clients, 2u);
  int not_a_file = open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_EQ(Store::OpenFd(not_a_file).status().code(), StatusCode::kInvalidArgument);
  close(not_a_file);
  int not_a_store = memfd_create("not-a-store", MFD_CLOEXEC);
  ASSERT_EQ(write(not_a_store, "hello", 5), 5);
  EXPECT_EQ(Store::OpenFd(not_a_store).status().code(), StatusCode::kCorrupt);
  close(not_a_store);
}

TEST(StoreTest, SegmentModeIgnoresUmask) {
  mode_t old = umask(0);
  StoreOptions o = SmallOptions();
  {
    Store s = MakeStore(o);
    struct stat st;
    ASSERT_EQ(stat(("/dev/shm/zcstore." + std::to_string(getuid()) + "." + s.name()).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  umask(0077);
  o.mode = 0640;
  {
    Store s = MakeStore(o);
    struct stat st;
    ASSERT_EQ(stat(("/dev/shm/zcstore." + std::to_string(getuid()) + "." + s.name()).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
  }
  umask(old);
}

TEST(StoreTest, NonPersistentStoreGoesWithItsCreatorPersistentOneStays) {
  std::string name = UniqueName();
  OpenOptions open;
  {
    auto s = Store::Create(name, SmallOptions());
    ASSERT_TRUE(s.ok());
    auto reader = Store::Open(name);
    ASSERT_TRUE(reader.ok());
    EXPECT_EQ(Store::Create(name, SmallOptions()).status().code(), StatusCode::kAlreadyExists);
  }
  EXPECT_EQ(Store::Open(name).status().code(), StatusCode::kNotFound);
  StoreOptions p = SmallOptions();
  p.persistent = true;
  ObjectId id = ObjectId::Random();
  {
    auto s = Store::Create(name, p);
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(PutPattern(*s, id, {10}).ok());
  }
  {
    auto again = Store::Open(name);
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(again->Contains(id));
  }
  auto names = Store::ListStores();
  ASSERT_TRUE(names.ok());
  EXPECT_NE(std::find(names->begin(), names->end(), name), names->end());
  EXPECT_TRUE(Store::Remove(name).ok());
  EXPECT_EQ(Store::Remove(name).code(), StatusCode::kNotFound);
}

TEST(StoreTest, ViewOutlivesItsStoreHandle) {
  ObjectId id = ObjectId::Random();
  ObjectView v;
  {
    Store s = MakeStore();
    ASSERT_TRUE(PutPattern(s, id, {20000}).ok());
    v = std::move(*s.Get(id));
  }
  EXPECT_EQ(FirstMismatch(id, 0, v.buffer(0)), -1);
  EXPECT_TRUE(v.Release().ok());
}

TEST(StoreTest, ThreadsShareOneHandle) {
  Store s = MakeStore(SmallOptions(16 << 20));
  std::atomic<int> failures{0};
  auto work = [&](int seed) {
    for (int i = 0; i < 200; ++i) {
      ObjectId id = ObjectId::Random();
      if (!PutPattern(s, id, {static_cast<size_t>(100 + (seed * 31 + i * 17) % 20000)}).ok()) {
        ++failures;
        continue;
      }
      auto v = s.Get(id);
      if (!v.ok() || FirstMismatch(id, 0, v->buffer(0)) != -1) ++failures;
      v = Status(StatusCode::kCancelled, "drop the view");
      if (!s.Delete(id).ok()) ++failures;
    }
  };
  std::thread a(work, 1), b(work, 2);
  a.join();
  b.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(s.Stats()->used, 0u);
}

TEST(StoreTest, ObjectWithNoBuffersAndNoMetadata) {
  Store s = MakeStore();
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(s.Put(id, {}, {}).ok());
  auto v = s.Get(id);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->num_buffers(), 0u);
  EXPECT_EQ(v->metadata().size(), 0u);
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

TEST(StoreAdoptTest, AdoptedBuffersJoinTheObjectWithoutACopy) {
  Store s = MakeStore();
  ObjectId child_id = ObjectId::Random(), id = ObjectId::Random();
  size_t child_size[] = {1 << 20};
  auto child = s.CreateObject(child_id, 0, child_size);
  ASSERT_TRUE(child.ok());
  auto data = Pattern(id, 1, 1 << 20);
  std::memcpy(child->buffer(0).data(), data.data(), data.size());
  const std::byte* where = child->buffer(0).data();
  size_t own[] = {100};
  std::span<ObjectBuilder> adopt(&*child, 1);
  auto parent = s.CreateObject(id, 4, own, adopt);
  ASSERT_TRUE(parent.ok()) << parent.status().ToString();
  EXPECT_FALSE(child->valid());  // moved into the parent
  ASSERT_EQ(parent->num_buffers(), 2u);
  EXPECT_EQ(parent->buffer(1).data(), where);  // the same bytes, not a copy
  std::memcpy(parent->buffer(0).data(), Pattern(id, 0, 100).data(), 100);
  ASSERT_TRUE(parent->Seal().ok());
  EXPECT_EQ(s.Get(child_id).status().code(), StatusCode::kNotFound);  // a child is no object
  {
    auto v = s.Get(id);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    ASSERT_EQ(v->num_buffers(), 2u);
    EXPECT_EQ(FirstMismatch(id, 0, v->buffer(0)), -1);
    EXPECT_EQ(FirstMismatch(id, 1, v->buffer(1)), -1);
    auto st = s.Stats();
    EXPECT_EQ(st->objects, 1u);
    EXPECT_EQ(s.List()->size(), 1u);
    ASSERT_TRUE(s.Delete(id).ok());
    EXPECT_GT(s.Stats()->used, 1u << 20);  // still pinned: parent and child stay
    EXPECT_EQ(FirstMismatch(id, 1, v->buffer(1)), -1);
  }
  EXPECT_EQ(s.Stats()->used, 0u);  // the child went with its parent
}

TEST(StoreAdoptTest, AbortingTheParentAbortsItsChildren) {
  Store s = MakeStore();
  size_t one[] = {5000};
  std::vector<ObjectBuilder> children;
  for (int i = 0; i < 3; ++i) children.push_back(std::move(*s.CreateObject(ObjectId::Random(), 0, one)));
  {
    auto parent = s.CreateObject(ObjectId::Random(), 0, {}, children);
    ASSERT_TRUE(parent.ok());
    EXPECT_EQ(s.Stats()->unsealed, 4u);
  }
  auto st = s.Stats();
  EXPECT_EQ(st->unsealed, 0u);
  EXPECT_EQ(st->used, 0u);
}

TEST(StoreAdoptTest, OnlySingleBufferBuildersOfTheSameHandleCanBeAdopted) {
  Store s = MakeStore(), other = MakeStore();
  size_t two[] = {10, 10}, one[] = {10};
  std::vector<ObjectBuilder> bad;
  bad.push_back(std::move(*s.CreateObject(ObjectId::Random(), 0, two)));
  EXPECT_EQ(s.CreateObject(ObjectId::Random(), 0, {}, bad).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(bad[0].valid());  // nothing was moved
  std::vector<ObjectBuilder> foreign;
  foreign.push_back(std::move(*other.CreateObject(ObjectId::Random(), 0, one)));
  EXPECT_EQ(s.CreateObject(ObjectId::Random(), 0, {}, foreign).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<ObjectBuilder> empty(1);
  EXPECT_EQ(s.CreateObject(ObjectId::Random(), 0, {}, empty).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

TEST(StoreRaceTest, ListAndVerifyAllNeverSeeATornObjectUnderPutAndDelete) {
  // List used to read object headers after letting go of the lock, without
  // a pin: an extent freed and reused meanwhile read as "bad header".
  StoreOptions o;
  o.capacity = 16 << 20;
  o.checksums = true;
  auto store = Store::Create(testing::UniqueName(), o);
  ASSERT_TRUE(store.ok());
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    std::vector<ObjectId> live;
    for (uint32_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      ObjectId id = ObjectId::Random();
      auto bytes = testing::Pattern(id, 0, 100 + (i * 7919) % 30000);
      std::span<const std::byte> bufs[] = {bytes};
      if (store->Put(id, {}, bufs).ok()) live.push_back(id);
      if (live.size() > 8) {
        (void)store->Delete(live.front());
        live.erase(live.begin());
      }
    }
  });
  int lists = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (std::chrono::steady_clock::now() < until) {
    auto l = store->List();
    ASSERT_TRUE(l.ok()) << "after " << lists << " lists: " << l.status().ToString();
    Status v = store->VerifyAll();
    ASSERT_TRUE(v.ok()) << v.ToString();
    ++lists;
  }
  stop = true;
  churn.join();
  EXPECT_GT(lists, 10);
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

TEST(StoreApiTest, OpenOrCreateCreatesOnceThenOpens) {
  std::string name = testing::UniqueName();
  StoreOptions o;
  o.capacity = 1 << 20;
  auto first = Store::OpenOrCreate(name, o);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(first->created());
  auto second = Store::OpenOrCreate(name, o);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_FALSE(second->created());
  EXPECT_EQ(second->Stats()->clients, 2u);
  o.backing = Backing::kMemfd;
  EXPECT_EQ(Store::OpenOrCreate(name, o).status().code(), StatusCode::kInvalidArgument);
}

TEST(StoreApiTest, OpenOfAPathOpensTheFileStore) {
  testing::TempDir dir;
  std::string path = dir.path() + "/model.zcs";
  StoreOptions o;
  o.backing = Backing::kFile;
  o.capacity = 1 << 20;
  { ASSERT_TRUE(Store::Create(path, o).ok()); }
  auto s = Store::Open(path);  // no OpenOptions::backing
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->backing(), Backing::kFile);
}

TEST(StoreApiTest, CapacityForSizesAStoreThatHoldsExactlyTheObject) {
  std::vector<size_t> sizes = {1 << 20, 3000, 100000};
  uint64_t need = Store::CapacityFor(200, sizes);
  ASSERT_GT(need, (1u << 20) + 103000u);
  for (uint64_t capacity : {need, need - 4096}) {
    StoreOptions o;
    o.capacity = capacity;
    auto s = Store::Create(testing::UniqueName(), o);
    ASSERT_TRUE(s.ok());
    auto b = s->CreateObject(ObjectId::Random(), 200, sizes);
    if (capacity == need) {
      EXPECT_TRUE(b.ok()) << b.status().ToString();
    } else {
      ASSERT_FALSE(b.ok());
      EXPECT_EQ(b.status().code(), StatusCode::kStoreFull);
      // The message states the need exactly, and never as what is free.
      const std::string& m = b.status().message();
      EXPECT_NE(m.find(std::to_string(need) + " bytes"), std::string::npos) << m;
      EXPECT_NE(m.find("CapacityFor"), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace zcstore
