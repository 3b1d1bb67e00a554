// Fuzz target over the envelope reader and the typed loader.
//
// Input layout: byte 0 = number of buffers n (mod 4); then n little-endian
// uint16 buffer lengths; the rest is the envelope. The buffers are filled with
// a fixed pattern. Every input must end in a clean Status or a loaded value.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "serializer/fuzz/fuzz_types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t n = data[0] % 4;
  size_t pos = 1;
  std::vector<std::vector<std::byte>> storage;
  for (size_t i = 0; i < n && pos + 2 <= size; ++i, pos += 2) {
    uint16_t len;
    std::memcpy(&len, data + pos, 2);
    // 64-byte aligned storage, like a store's buffers.
    storage.emplace_back(len + 64, std::byte{0x5A});
  }
  std::vector<std::span<const std::byte>> buffers;
  for (auto& s : storage) {
    auto p = reinterpret_cast<uintptr_t>(s.data());
    size_t skew = (64 - p % 64) % 64;
    buffers.emplace_back(s.data() + skew, s.size() - 64);
  }
  std::span<const std::byte> envelope(reinterpret_cast<const std::byte*>(data) + std::min(pos, size),
                                      size - std::min(pos, size));
  (void)zcstore::DecodeEnvelope(envelope);
  auto loaded = zcstore::Deserialize<zcstore::fuzz::FuzzModel>(envelope, buffers);
  if (loaded.ok()) {
    // Touch what was loaded, so a bad view would be caught by the sanitizer.
    volatile float sink = 0;
    for (float f : loaded->weights) sink = sink + f;
    (void)sink;
  }
  return 0;
}
