// Bad envelopes and buffers: each is a Status a caller can branch on, never
// a crash or garbage (these also run under AddressSanitizer in CI).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include <fstream>

#include "envelope_generated.h"
#include "tests/serializer/test_types.h"
#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

using testing::Everything;
using testing::Model;

// An envelope claiming to hold a T, with the given inline bytes and buffers.
template <typename T>
std::vector<std::byte> EnvelopeFor(std::vector<uint8_t> inline_bytes,
                                   std::vector<BufferInfo> buffers = {}) {
  static std::vector<uint8_t> keep;
  keep = std::move(inline_bytes);
  EnvelopeFields f;
  f.type_name = TypeName<T>();
  f.type_version = TypeVersion<T>();
  f.layout_hash = internal::LayoutHash<T>();
  f.inline_data = std::as_bytes(std::span(keep));
  f.buffers = std::move(buffers);
  return EncodeEnvelope(f).value();
}

template <typename T>
Status LoadStatus(const std::vector<std::byte>& env,
                  std::vector<std::span<const std::byte>> buffers = {}) {
  return Deserialize<T>(env, buffers).status();
}

TEST(SerializerBadInputTest, TruncatedEnvelopeIsCorrupt) {
  auto s = Serialize(Everything::Sample()).value();
  for (size_t cut : {size_t{0}, size_t{4}, size_t{16}, s.envelope.size() / 2, s.envelope.size() - 1}) {
    std::vector<std::byte> truncated(s.envelope.begin(), s.envelope.begin() + cut);
    auto r = Deserialize<Everything>(truncated, s.buffers);
    EXPECT_EQ(r.status().code(), StatusCode::kCorrupt) << "cut at " << cut;
  }
}

TEST(SerializerBadInputTest, EveryFlippedByteIsAnErrorOrTheSameTypeNeverACrash) {
  // Flip each byte of a whole envelope in turn. Whatever comes out must be a
  // clean Status or a loaded value; AddressSanitizer checks the rest.
  Model m;
  m.name = "flip";
  m.dims = 3;
  m.factors = {1.f, 2.f, 3.f};
  m.bias = {0.5f};
  auto s = Serialize(m).value();
  int errors = 0;
  for (size_t i = 0; i < s.envelope.size(); ++i) {
    std::vector<std::byte> bad = s.envelope;
    bad[i] ^= std::byte{0xFF};
    auto r = Deserialize<Model>(bad, s.buffers);
    if (!r.ok()) {
      ++errors;
      auto c = r.status().code();
      EXPECT_TRUE(c == StatusCode::kCorrupt || c == StatusCode::kTypeMismatch ||
                  c == StatusCode::kVersionMismatch)
          << i << ": " << r.status().ToString();
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(SerializerBadInputTest, NotAnEnvelopeAndWrongFormatVersion) {
  std::vector<std::byte> junk(100, std::byte{0x42});
  EXPECT_EQ(DecodeEnvelope(junk).status().code(), StatusCode::kCorrupt);
  flatbuffers::FlatBufferBuilder b;
  auto env = fb::CreateEnvelope(b, /*format_version=*/2, b.CreateString(TypeName<Model>()));
  fb::FinishEnvelopeBuffer(b, env);
  std::vector<std::byte> v2(reinterpret_cast<const std::byte*>(b.GetBufferPointer()),
                            reinterpret_cast<const std::byte*>(b.GetBufferPointer()) + b.GetSize());
  auto r = Deserialize<Model>(v2, {});
  EXPECT_EQ(r.status().code(), StatusCode::kVersionMismatch);
  EXPECT_NE(r.status().message().find("version 2"), std::string::npos);
}

TEST(SerializerBadInputTest, BufferCountLengthAndAlignmentMismatches) {
  Model m;
  m.factors = Array<float>(5000);
  auto s = Serialize(m).value();
  ASSERT_EQ(s.buffers.size(), 1u);
  auto missing = Deserialize<Model>(s.envelope, {});
  EXPECT_EQ(missing.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(missing.status().message().find("buffer count mismatch"), std::string::npos);
  std::vector<std::span<const std::byte>> shorter = {s.buffers[0].first(100)};
  EXPECT_EQ(Deserialize<Model>(s.envelope, shorter).status().code(), StatusCode::kCorrupt);
  // A length that exceeds anything real, and a shape that overflows.
  BufferInfo huge;
  huge.byte_length = uint64_t{1} << 62;
  EXPECT_EQ(LoadStatus<Model>(EnvelopeFor<Model>({0, 0, 0, 0, 0, 0}, {huge}), s.buffers).code(),
            StatusCode::kCorrupt);
  EnvelopeFields f;
  f.type_name = "x";
  BufferInfo overflow;
  overflow.byte_length = 8;
  overflow.element_type = ElementType::kFloat64;
  overflow.shape = {uint64_t{1} << 40, uint64_t{1} << 40};
  f.buffers = {overflow};
  EXPECT_EQ(EncodeEnvelope(f).status().code(), StatusCode::kInvalidArgument);
}

TEST(SerializerBadInputTest, LengthsLargerThanTheBytesThatRemain) {
  // std::vector<std::string> claiming a million elements in 5 bytes.
  auto st = LoadStatus<std::vector<std::string>>(EnvelopeFor<std::vector<std::string>>({0xC0, 0x84, 0x3D}));
  EXPECT_EQ(st.code(), StatusCode::kCorrupt);
  EXPECT_NE(st.message().find("larger than the"), std::string::npos) << st.message();
  // A string of 1000 bytes with 3 present.
  st = LoadStatus<std::string>(EnvelopeFor<std::string>({0, 0xE8, 0x07, 'a', 'b', 'c'}));
  EXPECT_EQ(st.code(), StatusCode::kCorrupt);
  // A varint that never ends.
  st = LoadStatus<std::vector<int>>(EnvelopeFor<std::vector<int>>(std::vector<uint8_t>(12, 0xFF)));
  EXPECT_EQ(st.code(), StatusCode::kCorrupt);
  // An out-of-band index past the buffers.
  st = LoadStatus<std::vector<float>>(EnvelopeFor<std::vector<float>>({1, 5}));
  EXPECT_EQ(st.code(), StatusCode::kCorrupt);
  EXPECT_NE(st.message().find("buffer index 5 out of range"), std::string::npos);
}

TEST(SerializerBadInputTest, BadTagsAndLeftovers) {
  using V = std::variant<int, float>;
  EXPECT_EQ(LoadStatus<V>(EnvelopeFor<V>({7, 0, 0, 0, 0})).code(), StatusCode::kCorrupt);
  EXPECT_EQ(LoadStatus<bool>(EnvelopeFor<bool>({2})).code(), StatusCode::kCorrupt);
  EXPECT_EQ(LoadStatus<std::optional<int>>(EnvelopeFor<std::optional<int>>({9})).code(),
            StatusCode::kCorrupt);
  using M = std::map<int8_t, int8_t>;
  EXPECT_EQ(LoadStatus<M>(EnvelopeFor<M>({2, 1, 1, 1, 2})).code(), StatusCode::kCorrupt);
  using S = std::vector<std::shared_ptr<int>>;
  EXPECT_EQ(LoadStatus<S>(EnvelopeFor<S>({1, 5})).code(), StatusCode::kCorrupt);  // back-ref 3
  EXPECT_EQ(LoadStatus<int8_t>(EnvelopeFor<int8_t>({1, 2})).code(), StatusCode::kCorrupt);
  EXPECT_TRUE(LoadStatus<int8_t>(EnvelopeFor<int8_t>({1})).ok());
}

TEST(SerializerBadInputTest, NestingDeeperThanTheLimitIsCorrupt) {
  // Three levels of optional, loaded with a limit of two.
  using O = std::optional<std::optional<std::optional<int>>>;
  std::vector<uint8_t> ok = {1, 1, 1, 5, 0, 0, 0};
  EXPECT_TRUE(LoadStatus<O>(EnvelopeFor<O>(ok)).ok());
  LoadOptions tight;
  tight.max_depth = 2;
  auto r = Deserialize<O>(EnvelopeFor<O>(ok), {}, nullptr, tight);
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find("max_depth 2"), std::string::npos);
}

TEST(SerializerBadInputTest, ChecksumMismatchInAFileStore) {
  testing::TempDir dir;
  std::string path = dir.path() + "/model.zcs";
  Model m;
  m.name = "checked";
  m.factors = Array<float>(std::span<const float>(std::vector<float>(30000, 7.0f)));
  ObjectId id;
  {
    StoreOptions o;
    o.backing = Backing::kFile;
    o.capacity = 4 << 20;
    auto store = Store::Create(path, o);
    ASSERT_TRUE(store.ok());
    SerializeOptions so;
    so.checksums = true;
    id = store->Put(m, so).value();
  }
  // Flip one byte inside the factors, found by their contents.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<float> sevens(1024, 7.0f);
    size_t at = bytes.find(std::string(reinterpret_cast<const char*>(sevens.data()), 4096));
    ASSERT_NE(at, std::string::npos);
    f.seekp(static_cast<std::streamoff>(at + 100));
    f.put('\x01');
  }
  OpenOptions ro;
  ro.backing = Backing::kFile;
  ro.read_only = true;
  auto store = Store::Open(path, ro);
  ASSERT_TRUE(store.ok());
  LoadOptions verify;
  verify.verify_checksums = true;
  auto r = store->Get<Model>(id, verify);
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find("checksum mismatch"), std::string::npos) << r.status().message();
  EXPECT_TRUE(store->Get<Model>(id).ok());  // unverified loads still work
}

TEST(SerializerBadInputTest, AStoreObjectThatIsNoEnvelope) {
  StoreOptions o;
  o.capacity = 1 << 20;
  auto store = Store::Create(testing::UniqueName("ser"), o);
  ASSERT_TRUE(store.ok());
  ObjectId id = ObjectId::Random();
  std::string md = "just some metadata";
  ASSERT_TRUE(store->Put(id, std::as_bytes(std::span(md)), {}).ok());
  auto r = store->Get<Model>(id);
  EXPECT_EQ(r.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(r.status().message().find(id.ToString()), std::string::npos);
  EXPECT_EQ(store->Get<Model>(ObjectId::Random()).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

// Where `needle` sits in [hay, hay + n), or nullptr.
std::byte* Find(std::byte* hay, size_t n, std::span<const std::byte> needle) {
  void* p = memmem(hay, n, needle.data(), needle.size());
  return static_cast<std::byte*>(p);
}

TEST(EnvelopeRaceTest, AWriterChangingTheEnvelopeDuringGetsNeverOverflowsTheReader) {
  // Any process with a writable mapping (every writer has one) can change
  // the envelope while a reader checks it. Here a thread flips the length of
  // the shape vector between 1 and 2^27 as fast as it can while this thread
  // loads the object: each load must be whole or Corrupt, never a crash.
  StoreOptions so;
  so.capacity = 8 << 20;
  std::string name = zcstore::testing::UniqueName("race");
  auto store = Store::Create(name, so);
  ASSERT_TRUE(store.ok());
  constexpr uint64_t kElements = 20011;
  Model m;
  m.name = "race";
  m.factors = Array<float>(kElements);
  auto id = store->Put(m);
  ASSERT_TRUE(id.ok());
  std::vector<std::byte> md;
  {
    auto v = store->Get(*id);
    ASSERT_TRUE(v.ok());
    md.assign(v->metadata().begin(), v->metadata().end());
  }
  // Our own writable mapping of the segment, as another writer would have.
  std::string path = "/dev/shm/zcstore." + std::to_string(geteuid()) + "." + name;
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  off_t size = lseek(fd, 0, SEEK_END);
  auto* base = static_cast<std::byte*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  ASSERT_NE(base, MAP_FAILED);
  std::byte* env = Find(base, size, md);
  ASSERT_NE(env, nullptr);
  // The shape vector: a u32 count of 1, then the u64 element count.
  std::byte* count = nullptr;
  for (size_t off = 4; off + 8 <= md.size(); off += 4) {
    uint32_t c;
    uint64_t d;
    std::memcpy(&c, env + off - 4, 4);
    std::memcpy(&d, env + off, 8);
    if (c == 1 && d == kElements) count = env + off - 4;
  }
  ASSERT_NE(count, nullptr) << "no shape vector in the envelope";
  auto* word = reinterpret_cast<std::atomic<uint32_t>*>(count);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      word->store(1u << 27, std::memory_order_relaxed);
      word->store(1u, std::memory_order_relaxed);
    }
  });
  int whole = 0, corrupt = 0;
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(400);
  while (std::chrono::steady_clock::now() < until) {
    auto p = store->Get<Model>(*id);
    if (p.ok()) {
      ++whole;
      ASSERT_EQ((*p)->factors.size(), kElements);
      ASSERT_EQ((*p)->factors.shape(), std::vector<uint64_t>{kElements});
    } else {
      ++corrupt;
      ASSERT_EQ(p.status().code(), StatusCode::kCorrupt) << p.status().ToString();
    }
  }
  stop = true;
  writer.join();
  munmap(base, size);
  EXPECT_GT(whole + corrupt, 100);
  RecordProperty("whole", whole);
  RecordProperty("corrupt", corrupt);
}

TEST(EnvelopeRaceTest, AChangedInlineFieldFailsTheTypedGetWhenChecksumsAreOn) {
  zcstore::testing::TempDir dir;
  std::string path = dir.path() + "/m.zcs";
  StoreOptions so;
  so.backing = Backing::kFile;
  so.capacity = 1 << 20;
  ObjectId id;
  {
    auto s = Store::Create(path, so);
    ASSERT_TRUE(s.ok());
    Model m;
    m.name = "a name nobody would change";
    m.dims = 7;
    auto put = s->Put(m);
    ASSERT_TRUE(put.ok());
    id = *put;
  }
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  size_t at = bytes.find("nobody");
  ASSERT_NE(at, std::string::npos);
  {
    int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_EQ(pwrite(fd, "N", 1, static_cast<off_t>(at)), 1);
    close(fd);
  }
  OpenOptions o;
  o.backing = Backing::kFile;
  o.read_only = true;
  auto s = Store::Open(path, o);
  ASSERT_TRUE(s.ok());
  auto p = s->Get<Model>(id);
  ASSERT_FALSE(p.ok()) << "the altered name came back: " << (*p)->name;
  EXPECT_EQ(p.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(p.status().message().find("metadata checksum"), std::string::npos)
      << p.status().ToString();
}

}  // namespace
}  // namespace zcstore
