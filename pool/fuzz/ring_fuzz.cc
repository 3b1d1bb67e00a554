// Fuzz target over the ring reader and the message reader: a ring whose
// header and bytes another process scribbled on must give clean messages or
// a Corrupt status, never a crash or a loop.
//
// Input: [u64 head][u64 tail][ring bytes...] for a 4 KiB ring (the bytes are
// repeated to fill it). Every message popped is then parsed the way a
// Run or Done message is, with every read bounds-checked.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "pool/pool_internal.h"
#include "pool/ring_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using zcstore::internal::MessageReader;
  using zcstore::internal::Ring;
  constexpr uint64_t kCapacity = 4096;
  if (size < 16) return 0;
  alignas(64) static std::byte memory[sizeof(zcstore::internal::RingHeader) + kCapacity];
  std::memset(memory, 0, sizeof(memory));
  Ring ring(memory, kCapacity);
  uint64_t head, tail;
  std::memcpy(&head, data, 8);
  std::memcpy(&tail, data + 8, 8);
  ring.header()->head.store(head);
  ring.header()->tail.store(tail);
  std::byte* bytes = memory + sizeof(zcstore::internal::RingHeader);
  if (size > 16) {
    for (uint64_t i = 0; i < kCapacity; ++i) bytes[i] = std::byte{data[16 + i % (size - 16)]};
  }
  std::vector<std::byte> msg;
  zcstore::Status corrupt;
  // A ring holds at most kCapacity / 8 messages: more pops than that is a loop.
  for (int i = 0; i < 1024 && ring.TryPop(&msg, &corrupt); ++i) {
    MessageReader in(msg);
    uint8_t kind = 0;
    uint64_t a = 0, b = 0, v = 0;
    uint32_t task = 0, count = 0;
    if (!in.U8(&kind) || !in.U64(&a) || !in.U64(&b) || !in.U32(&task) || !in.U32(&count)) continue;
    for (uint32_t k = 0; k < count && k < 4096; ++k) {
      uint8_t is_ref = 0;
      std::span<const std::byte> item;
      zcstore::ObjectId id;
      if (!in.U8(&is_ref)) break;
      if (is_ref ? !in.Id(&id) : !(in.Varint(&v) && in.Bytes(v, &item))) break;
    }
  }
  return 0;
}
