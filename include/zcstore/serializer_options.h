// Options and statistics of the serializer, apart so that store.h can name
// them in its typed Put/Get declarations without pulling in the templates.
#ifndef ZCSTORE_SERIALIZER_OPTIONS_H_
#define ZCSTORE_SERIALIZER_OPTIONS_H_

#include <cstddef>
#include <cstdint>

namespace zcstore {

// What a typed Put did, so that copies are visible (SerializeOptions::stats).
struct PutStats {
  uint32_t copied_buffers = 0;   // out-of-band buffers copied into the store
  uint64_t copied_bytes = 0;
  uint32_t adopted_buffers = 0;  // arrays allocated in the store, adopted without a copy
  uint64_t adopted_bytes = 0;
  uint64_t envelope_bytes = 0;   // the metadata: FlatBuffers envelope with the inline fields
};

struct SerializeOptions {
  // A contiguous range of trivially copyable elements (std::vector, std::array,
  // std::string, Array) of at least this many bytes becomes an out-of-band
  // buffer; smaller ones are copied into the envelope. Default 4 KiB.
  size_t out_of_band_threshold = 4096;
  // Deepest nesting of structs, containers, optionals, variants and pointers.
  // Deeper objects are InvalidArgument when saved (and Corrupt when loaded).
  uint32_t max_depth = 64;
  // Record an XXH3-64 checksum of every out-of-band buffer in the envelope.
  // Costs one extra read of every byte at put time. Default off.
  bool checksums = false;
  // If set, a typed Store::Put writes what it did here.
  PutStats* stats = nullptr;
};

struct LoadOptions {
  // Deepest nesting accepted when loading; deeper input is Corrupt.
  uint32_t max_depth = 64;
  // Recompute the checksums recorded in the envelope (if any) and fail with
  // Corrupt on a mismatch. Reads every byte, so a load is no longer O(1).
  bool verify_checksums = false;
};

// What a load did, so that copies are visible.
struct LoadStats {
  uint32_t zero_copy_buffers = 0;  // out-of-band buffers viewed in place (Array)
  uint64_t zero_copy_bytes = 0;
  uint32_t copied_buffers = 0;     // out-of-band buffers copied (std::vector, std::string, ...)
  uint64_t copied_bytes = 0;
  uint64_t inline_bytes = 0;       // bytes decoded from the envelope
};

}  // namespace zcstore

#endif  // ZCSTORE_SERIALIZER_OPTIONS_H_
