// Bad input: every malformed file or segment gets a Status a caller can branch
// on, never a crash, a hang or garbage, and no other object is harmed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "store/layout_internal.h"
#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

using internal::BufferDesc;
using internal::ObjectEntry;
using internal::ObjectHeader;
using internal::StoreHeader;
using testing::FirstMismatch;
using testing::Pattern;

template <typename T>
T ReadAt(const std::string& path, uint64_t offset) {
  T v{};
  int fd = open(path.c_str(), O_RDONLY);
  EXPECT_EQ(pread(fd, &v, sizeof(T), static_cast<off_t>(offset)), static_cast<ssize_t>(sizeof(T)));
  close(fd);
  return v;
}

template <typename T>
void WriteAt(const std::string& path, uint64_t offset, const T& v) {
  int fd = open(path.c_str(), O_WRONLY);
  ASSERT_EQ(pwrite(fd, &v, sizeof(T), static_cast<off_t>(offset)), static_cast<ssize_t>(sizeof(T)));
  close(fd);
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A file store with two objects, A (buffers of 5000 and 300 bytes) and B,
// closed; tests then damage A and check that B survives.
class BadFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.path() + "/store.zcs";
    StoreOptions o;
    o.backing = Backing::kFile;
    o.capacity = 4 << 20;
    o.max_objects = 16;
    o.max_clients = 4;
    o.max_pins_per_client = 8;
    o.max_names = 4;
    auto s = Store::Create(path_, o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    for (ObjectId id : {a_, b_}) {
      auto b0 = Pattern(id, 0, 5000), b1 = Pattern(id, 1, 300);
      std::span<const std::byte> bufs[] = {b0, b1};
      ASSERT_TRUE(s->Put(id, std::as_bytes(std::span("md", 2)), bufs).ok());
    }
    header_ = ReadAt<StoreHeader>(path_, 0);
  }

  // File offset of the table entry of `id`.
  uint64_t EntryOffset(ObjectId id) {
    for (uint32_t s = 0; s < header_.max_objects; ++s) {
      uint64_t off = header_.objects_offset + uint64_t{s} * sizeof(ObjectEntry);
      auto e = ReadAt<ObjectEntry>(path_, off);
      if (e.id_hi == id.hi && e.id_lo == id.lo && e.state == internal::kSealed) return off;
    }
    ADD_FAILURE() << "no entry for " << id.ToString();
    return 0;
  }
  // File offset of the ObjectHeader of `id`.
  uint64_t ObjectOffset(ObjectId id) {
    return header_.data_offset + ReadAt<ObjectEntry>(path_, EntryOffset(id)).offset;
  }

  Result<Store> OpenReadOnly() {
    OpenOptions o;
    o.backing = Backing::kFile;
    o.read_only = true;
    return Store::Open(path_, o);
  }
  Result<Store> OpenReadWrite() {
    OpenOptions o;
    o.backing = Backing::kFile;
    return Store::Open(path_, o);
  }
  void ExpectBIntact(Store& s) {
    auto v = s.Get(b_);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(FirstMismatch(b_, 0, v->buffer(0)), -1);
    EXPECT_EQ(FirstMismatch(b_, 1, v->buffer(1)), -1);
    EXPECT_TRUE(s.Verify(b_).ok());
  }

  testing::TempDir dir_;
  std::string path_;
  ObjectId a_ = ObjectId::Random(), b_ = ObjectId::Random();
  StoreHeader header_{};
};

TEST_F(BadFileTest, FileThatIsNotAStore) {
  WriteFile(path_, std::string(10000, 'x'));
  auto s = OpenReadOnly();
  EXPECT_EQ(s.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(s.status().message().find("not a zcstore store"), std::string::npos);
  WriteFile(path_, "");
  EXPECT_EQ(OpenReadOnly().status().code(), StatusCode::kCorrupt);
  EXPECT_EQ(OpenReadWrite().status().code(), StatusCode::kCorrupt);
}

TEST_F(BadFileTest, WrongMagic) {
  WriteAt(path_, 0, 'Q');
  EXPECT_EQ(OpenReadOnly().status().code(), StatusCode::kCorrupt);
}

TEST_F(BadFileTest, WrongFormatVersion) {
  WriteAt(path_, offsetof(StoreHeader, format_version), uint32_t{99});
  auto s = OpenReadWrite();
  EXPECT_EQ(s.status().code(), StatusCode::kVersionMismatch);
  EXPECT_NE(s.status().message().find("version 99"), std::string::npos) << s.status().message();
}

TEST_F(BadFileTest, TruncatedFile) {
  ASSERT_EQ(truncate(path_.c_str(), static_cast<off_t>(header_.total_size / 2)), 0);
  auto s = OpenReadOnly();
  EXPECT_EQ(s.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(s.status().message().find("truncated"), std::string::npos);
  EXPECT_EQ(OpenReadWrite().status().code(), StatusCode::kCorrupt);
}

TEST_F(BadFileTest, TableOffsetsOrLimitsOutOfRange) {
  WriteAt(path_, offsetof(StoreHeader, objects_offset), header_.objects_offset + 64);
  EXPECT_EQ(OpenReadOnly().status().code(), StatusCode::kCorrupt);
  WriteAt(path_, offsetof(StoreHeader, objects_offset), header_.objects_offset);
  WriteAt(path_, offsetof(StoreHeader, max_objects), uint32_t{0xFFFFFFFF});
  EXPECT_EQ(OpenReadOnly().status().code(), StatusCode::kCorrupt);
  WriteAt(path_, offsetof(StoreHeader, max_objects), header_.max_objects);
  WriteAt(path_, offsetof(StoreHeader, data_size), uint64_t{1} << 60);
  EXPECT_EQ(OpenReadOnly().status().code(), StatusCode::kCorrupt);
}

TEST_F(BadFileTest, ExtentOutOfRange) {
  uint64_t e = EntryOffset(a_);
  WriteAt(path_, e + offsetof(ObjectEntry, offset), header_.data_size + 4096);
  {
    auto s = OpenReadOnly();
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    auto v = s->Get(a_);
    EXPECT_EQ(v.status().code(), StatusCode::kCorrupt);
    EXPECT_NE(v.status().message().find("extent out of range"), std::string::npos);
    ExpectBIntact(*s);
  }
  // A read-write open repairs the table: the bad entry is dropped, B stays.
  auto s = OpenReadWrite();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kNotFound);
  ExpectBIntact(*s);
  EXPECT_EQ(s->Stats()->objects, 1u);
}

TEST_F(BadFileTest, AnExtentThatIsNotWholePagesIsDroppedAndPutsStillWork) {
  // 8192 patched to 4001: the next object would land off a page and its
  // header write would fault.
  uint64_t e = EntryOffset(a_);
  WriteAt(path_, e + offsetof(ObjectEntry, size), uint64_t{4001});
  {
    auto s = OpenReadOnly();
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kCorrupt);
    EXPECT_EQ(s->VerifyAll().code(), StatusCode::kCorrupt);
    ExpectBIntact(*s);
  }
  auto s = OpenReadWrite();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kNotFound);
  ExpectBIntact(*s);
  for (int i = 0; i < 3; ++i) {
    ObjectId c = ObjectId::Random();
    auto bytes = Pattern(c, 0, 3000 + 4096 * i);
    std::span<const std::byte> bufs[] = {bytes};
    ASSERT_TRUE(s->Put(c, {}, bufs).ok());
    auto v = s->Get(c);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(FirstMismatch(c, 0, v->buffer(0)), -1);
  }
  EXPECT_TRUE(s->VerifyAll().ok());
}

TEST_F(BadFileTest, ADamagedEntryNeverEvictsTheIntactObjectItOverlaps) {
  // A's offset moved from 0 to 4096: its extent now overlaps B's. Recovery
  // must drop A (its header is not where its entry says), never B.
  auto a = ReadAt<ObjectEntry>(path_, EntryOffset(a_));
  auto b = ReadAt<ObjectEntry>(path_, EntryOffset(b_));
  ASSERT_EQ(a.offset, 0u);
  ASSERT_LT(b.offset, 4096 + a.size) << "the fixture's objects must overlap once A moves";
  WriteAt(path_, EntryOffset(a_) + offsetof(ObjectEntry, offset), uint64_t{4096});
  {
    auto s = OpenReadWrite();
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    ExpectBIntact(*s);
    EXPECT_NE(s->Get(a_).status().code(), StatusCode::kOk);
  }
  auto s = OpenReadOnly();  // and B is still there for good
  ASSERT_TRUE(s.ok());
  ExpectBIntact(*s);
  EXPECT_TRUE(s->VerifyAll().ok());
}

TEST_F(BadFileTest, AnObjectThatLostItsChecksumsIsCorruptNotSkipped) {
  // In a file store every object has checksums: a cleared flag (and the
  // damaged data it would hide) must not pass as "nothing to verify".
  uint64_t h = ObjectOffset(a_);
  WriteAt(path_, h + offsetof(ObjectHeader, has_checksums), uint32_t{0});
  auto d = ReadAt<BufferDesc>(path_, h + sizeof(ObjectHeader));
  WriteAt(path_, h + d.offset, uint8_t{0xAB});
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  Status st = s->Verify(a_);
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  EXPECT_NE(st.message().find("no checksums"), std::string::npos) << st.message();
  EXPECT_EQ(s->VerifyAll().code(), StatusCode::kCorrupt);
  EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kCorrupt);
  ExpectBIntact(*s);
}

TEST_F(BadFileTest, AnUnknownStateOrADamagedNameIsReportedByVerifyAll) {
  {
    auto s = OpenReadWrite();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(s->Bind("model", b_).ok());
  }
  {
    auto s = OpenReadOnly();
    ASSERT_TRUE(s.ok());
    EXPECT_TRUE(s->VerifyAll().ok());
  }
  uint64_t name_id = header_.names_offset + offsetof(internal::NameEntry, id_lo);
  uint64_t good = ReadAt<uint64_t>(path_, name_id);
  WriteAt(path_, name_id, good ^ 0x10);
  {
    auto s = OpenReadOnly();
    ASSERT_TRUE(s.ok());
    Status st = s->VerifyAll();
    EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
    EXPECT_NE(st.message().find("name entry 0"), std::string::npos) << st.message();
  }
  WriteAt(path_, name_id, good);
  WriteAt(path_, EntryOffset(a_) + offsetof(ObjectEntry, state), uint32_t{9});
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  Status st = s->VerifyAll();
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  EXPECT_NE(st.message().find("unknown state"), std::string::npos) << st.message();
}

TEST_F(BadFileTest, BufferLengthOutOfRange) {
  uint64_t desc = ObjectOffset(a_) + sizeof(ObjectHeader);
  WriteAt(path_, desc + offsetof(BufferDesc, size), uint64_t{1} << 40);
  auto s = OpenReadWrite();
  ASSERT_TRUE(s.ok());
  auto v = s->Get(a_);
  EXPECT_EQ(v.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(v.status().message().find("buffer 0 out of range"), std::string::npos)
      << v.status().message();
  EXPECT_EQ(s->Stats()->pins, 0u);  // the failed Get left no pin behind
  ExpectBIntact(*s);
  // An offset that overflows when the length is added.
  WriteAt(path_, desc + offsetof(BufferDesc, size), uint64_t{16});
  WriteAt(path_, desc + offsetof(BufferDesc, offset), ~uint64_t{0} - 8);
  EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kCorrupt);
}

TEST_F(BadFileTest, BufferCountAndMetadataOutOfRange) {
  uint64_t h = ObjectOffset(a_);
  WriteAt(path_, h + offsetof(ObjectHeader, num_buffers), uint32_t{0x0FFFFFFF});
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kCorrupt);
  WriteAt(path_, h + offsetof(ObjectHeader, num_buffers), uint32_t{2});
  WriteAt(path_, h + offsetof(ObjectHeader, metadata_size), uint64_t{1} << 33);
  EXPECT_EQ(s->Get(a_).status().code(), StatusCode::kCorrupt);
  WriteAt(path_, h + offsetof(ObjectHeader, metadata_size), uint64_t{2});
  WriteAt(path_, h + offsetof(ObjectHeader, id_lo), a_.lo + 1);
  auto v = s->Get(a_);
  EXPECT_EQ(v.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(v.status().message().find("bad header"), std::string::npos);
  ExpectBIntact(*s);
}

TEST_F(BadFileTest, ForgedChildLinkIsCorrupt) {
  // Make A's buffer 0 claim to live in B's slot, which is no child of A.
  uint64_t b_slot = (EntryOffset(b_) - header_.objects_offset) / sizeof(ObjectEntry);
  uint64_t desc0 = ObjectOffset(a_) + sizeof(ObjectHeader);
  WriteAt(path_, desc0 + offsetof(BufferDesc, child_slot_plus1), static_cast<uint32_t>(b_slot + 1));
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  auto v = s->Get(a_);
  EXPECT_EQ(v.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(v.status().message().find("child object that is not one"), std::string::npos)
      << v.status().message();
  ExpectBIntact(*s);
}

TEST_F(BadFileTest, ChecksumMismatchNamesObjectAndBuffer) {
  uint64_t desc1 = ObjectOffset(a_) + sizeof(ObjectHeader) + sizeof(BufferDesc);
  auto d = ReadAt<BufferDesc>(path_, desc1);
  uint8_t byte = ReadAt<uint8_t>(path_, ObjectOffset(a_) + d.offset + 17);
  WriteAt(path_, ObjectOffset(a_) + d.offset + 17, static_cast<uint8_t>(byte ^ 1));
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  Status st = s->Verify(a_);
  EXPECT_EQ(st.code(), StatusCode::kCorrupt);
  EXPECT_NE(st.message().find(a_.ToString()), std::string::npos);
  EXPECT_NE(st.message().find("buffer 1 checksum mismatch"), std::string::npos) << st.message();
  EXPECT_EQ(s->VerifyAll().code(), StatusCode::kCorrupt);
  ExpectBIntact(*s);
}

TEST_F(BadFileTest, UnknownIdsAndNames) {
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->Get(ObjectId::Random()).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(s->Lookup("nothing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(s->Verify(ObjectId::Random()).code(), StatusCode::kNotFound);
  EXPECT_EQ(Store::Open(dir_.path() + "/missing.zcs", {Backing::kFile, true}).status().code(),
            StatusCode::kNotFound);
}

TEST(BadInputTest, NamesThatCannotBeStoreNames) {
  for (const char* bad : {"a/b", "..", "name with space", "x.init-1-2"}) {
    EXPECT_EQ(Store::Create(bad, {}).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  for (const char* bad : {"..", "name with space", "x.init-1-2"}) {
    EXPECT_EQ(Store::Open(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  // A name with a '/' is a file store's path to Open.
  auto path = Store::Open("a/b");
  EXPECT_EQ(path.status().code(), StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find("store file 'a/b'"), std::string::npos)
      << path.status().ToString();
  EXPECT_EQ(Store::Create(std::string(65, 'a'), {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Store::Open("no-such-store-" + testing::UniqueName()).status().code(),
            StatusCode::kNotFound);
  StoreOptions o;
  o.max_objects = 0;
  EXPECT_EQ(Store::Create(testing::UniqueName(), o).status().code(), StatusCode::kInvalidArgument);
  o = {};
  o.capacity = 0;
  EXPECT_EQ(Store::Create(testing::UniqueName(), o).status().code(), StatusCode::kInvalidArgument);
}

TEST(BadInputTest, ReadOnlyHandleCannotWrite) {
  std::string name = testing::UniqueName();
  StoreOptions so;
  so.capacity = 1 << 20;
  auto owner = Store::Create(name, so);
  ASSERT_TRUE(owner.ok());
  ObjectId id = ObjectId::Random();
  ASSERT_TRUE(owner->Put(id, {}, {}).ok());
  OpenOptions o;
  o.read_only = true;
  auto reader = Store::Open(name, o);
  ASSERT_TRUE(reader.ok());
  EXPECT_TRUE(reader->Get(id).ok());
  size_t sizes[] = {1};
  EXPECT_EQ(reader->CreateObject(ObjectId::Random(), 0, sizes).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(reader->Delete(id).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(reader->Bind("n", id).code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(owner->Contains(id));
}

TEST(BadInputTest, GarbageInALiveSegmentsTableHarmsNoOtherObject) {
  std::string name = testing::UniqueName();
  StoreOptions so;
  so.capacity = 1 << 20;
  so.max_objects = 8;
  auto s = Store::Create(name, so);
  ASSERT_TRUE(s.ok());
  std::vector<ObjectId> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(ObjectId::Random());
    auto b = Pattern(ids.back(), 0, 100);
    std::span<const std::byte> bufs[] = {b};
    ASSERT_TRUE(s->Put(ids.back(), {}, bufs).ok());
  }
  std::string path = "/dev/shm/zcstore." + std::to_string(getuid()) + "." + name;
  auto h = ReadAt<StoreHeader>(path, 0);
  // Scribble an unknown state over slot 0..7 of whichever entry holds ids[0].
  for (uint32_t slot = 0; slot < h.max_objects; ++slot) {
    uint64_t off = h.objects_offset + slot * sizeof(ObjectEntry);
    auto e = ReadAt<ObjectEntry>(path, off);
    if (e.id_hi == ids[0].hi && e.id_lo == ids[0].lo) {
      WriteAt(path, off + offsetof(ObjectEntry, state), uint32_t{77});
    }
  }
  EXPECT_EQ(s->Get(ids[0]).status().code(), StatusCode::kNotFound);
  for (size_t i = 1; i < ids.size(); ++i) {
    auto v = s->Get(ids[i]);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(FirstMismatch(ids[i], 0, v->buffer(0)), -1);
  }
  EXPECT_TRUE(s->Stats().ok());
  EXPECT_TRUE(s->List().ok());
}

TEST(BadInputTest, NoPermissionIsPermissionDenied) {
  // The helper drops root (which permission bits do not bind), creates a
  // store of mode 0 and opens it again.
  std::string file = "/tmp/" + testing::UniqueName("denied") + ".zcs";
  for (auto [kind, name] : {std::pair{"shm", testing::UniqueName()}, {"file", file}}) {
    auto child = testing::Child::Helper({"open-denied", kind, name});
    std::string line = child.ReadLine();
    EXPECT_EQ(line.rfind("PermissionDenied ", 0), 0u) << kind << ": " << line;
    EXPECT_NE(line.find("Permission denied"), std::string::npos) << line;
    EXPECT_EQ(child.Wait(), 0) << kind;
  }
  EXPECT_NE(access(file.c_str(), F_OK), 0);
}

TEST(BadInputTest, FullDevShmIsStoreFullAtCreateOrPutNeverSigbus) {
  // A small tmpfs in a private mount namespace stands in for a full /dev/shm.
  // Tables that do not fit: StoreFull from Create, and no file left behind.
  auto child = testing::Child::Helper({"create-on-small-tmpfs", "64", std::to_string(8 << 20), "4096"});
  std::string line = child.ReadLine();
  ASSERT_EQ(child.Wait(), 0);
  if (line.rfind("skip", 0) == 0) GTEST_SKIP() << line;
  EXPECT_EQ(line.rfind("create=StoreFull files=0 ", 0), 0u) << line;
  EXPECT_NE(line.find("free space in /dev/shm"), std::string::npos) << line;
  // At once, with the numbers: what it needs, and what is free of what.
  EXPECT_NE(line.find("it needs 8."), std::string::npos) << line;
  EXPECT_NE(line.find(" free of 0.1 MiB"), std::string::npos) << line;
  // A store that fits the 1 MiB tmpfs, then the tmpfs filled by another
  // file: an object that fits the store but not the filesystem is StoreFull
  // from Put (the write never happens, so no SIGBUS), and the store goes on.
  auto second = testing::Child::Helper({"create-on-small-tmpfs", "1024", std::to_string(512 << 10), "64"});
  line = second.ReadLine();
  ASSERT_EQ(second.Wait(), 0);
  EXPECT_EQ(line.rfind("create=OK files=1 small=OK kept=yes big=StoreFull ", 0), 0u) << line;
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

TEST_F(BadFileTest, AFlippedCharacterOfABoundNameIsCaught) {
  {
    auto s = OpenReadWrite();
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(s->Bind("model", b_).ok());
  }
  uint64_t entry = header_.names_offset;
  WriteAt(path_, entry + 1, 'O');  // "model" -> "mOdel"
  auto s = OpenReadOnly();
  ASSERT_TRUE(s.ok());
  auto looked = s->Lookup("mOdel");
  EXPECT_EQ(looked.status().code(), StatusCode::kCorrupt) << looked.status().ToString();
  Status st = s->VerifyAll();
  EXPECT_EQ(st.code(), StatusCode::kCorrupt) << st.ToString();
  EXPECT_NE(st.message().find("name entry 0"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace zcstore
