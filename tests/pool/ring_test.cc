// The pool's shared-memory ring on its own: order and content through
// wrap-arounds and a full ring, sleeping on both sides, and indexes or lengths
// from a bad peer reported as Corrupt.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "pool/ring_internal.h"

namespace zcstore::internal {
namespace {

constexpr uint64_t kCapacity = 4096;

class RingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_ = mmap(nullptr, Ring::Footprint(kCapacity), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(memory_, MAP_FAILED);
    ring_ = Ring(static_cast<std::byte*>(memory_), kCapacity);
    ring_.Reset();
  }
  void TearDown() override { munmap(memory_, Ring::Footprint(kCapacity)); }

  void* memory_ = nullptr;
  Ring ring_;
};

// Message i: (i * 37) % (max + 1) bytes, each byte (i + k) mod 251.
std::vector<std::byte> Message(uint64_t i, uint64_t max) {
  std::vector<std::byte> m((i * 37) % (max + 1));
  for (size_t k = 0; k < m.size(); ++k) m[k] = std::byte((i + k) % 251);
  return m;
}

TEST_F(RingTest, MessagesArriveInOrderThroughWrapsAndAFullRing) {
  constexpr uint64_t kMessages = 20000;
  const uint64_t max = ring_.max_message();
  // Neither side spins: the consumer sleeps whenever the ring is empty, the
  // producer whenever it is full. Each side also pauses now and then, so
  // that the other surely finds the ring empty (or full) and sleeps.
  std::thread producer([&] {
    for (uint64_t i = 0; i < kMessages; ++i) {
      if (i % 2000 == 1000) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ASSERT_TRUE(ring_.Push(Message(i, max), /*spin_us=*/0, /*slice_ms=*/100, [] { return true; }));
    }
  });
  std::vector<std::byte> got;
  uint64_t wrong = 0;
  for (uint64_t i = 0; i < kMessages; ++i) {
    if (i % 2000 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    Status corrupt;
    while (!ring_.TryPop(&got, &corrupt)) {
      ASSERT_TRUE(corrupt.ok()) << corrupt.ToString();
      ring_.WaitForData(/*spin_us=*/0, /*timeout_ms=*/1000);
    }
    if (got != Message(i, max)) ++wrong;
  }
  producer.join();
  EXPECT_EQ(wrong, 0u);
  EXPECT_TRUE(ring_.Empty());
  // Each side was woken from its futex at least once.
  EXPECT_GT(ring_.header()->data_seq.load(), 0u);
  EXPECT_GT(ring_.header()->space_seq.load(), 0u);
}

TEST_F(RingTest, AMessageOverAQuarterOfTheRingIsRefused) {
  std::vector<std::byte> big(ring_.max_message() + 1);
  EXPECT_FALSE(ring_.Push(big, 0, 1, [] { return true; }));
  EXPECT_TRUE(ring_.Empty());
  EXPECT_TRUE(ring_.TryPush(std::vector<std::byte>(ring_.max_message())));
}

TEST_F(RingTest, IndexesAndLengthsFromABadPeerAreCorrupt) {
  std::vector<std::byte> out;
  Status corrupt;
  // head more than a ring ahead of tail
  ring_.header()->head.store(kCapacity + 8);
  EXPECT_FALSE(ring_.TryPop(&out, &corrupt));
  EXPECT_EQ(corrupt.code(), StatusCode::kCorrupt) << corrupt.ToString();

  // a length past what was published
  ring_.Reset();
  ASSERT_TRUE(ring_.TryPush(std::vector<std::byte>(16)));
  uint32_t len = 1000;
  std::memcpy(static_cast<std::byte*>(memory_) + sizeof(RingHeader), &len, 4);
  corrupt = Status::OK();
  EXPECT_FALSE(ring_.TryPop(&out, &corrupt));
  EXPECT_EQ(corrupt.code(), StatusCode::kCorrupt) << corrupt.ToString();

  // a tail that is not 8-byte aligned
  ring_.Reset();
  ASSERT_TRUE(ring_.TryPush(std::vector<std::byte>(16)));
  ring_.header()->tail.store(3);
  corrupt = Status::OK();
  EXPECT_FALSE(ring_.TryPop(&out, &corrupt));
  EXPECT_EQ(corrupt.code(), StatusCode::kCorrupt) << corrupt.ToString();
}

}  // namespace
}  // namespace zcstore::internal
