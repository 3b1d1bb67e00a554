// Fuzz target over the store file reader: opening, checking, recovering and
// using a damaged file store must end in clean Statuses, never a crash.
//
// Structure-aware: the input is a list of 4-byte patches
//   [u16 offset low][u8 offset high][u8 value]
// applied to a small valid file store (two objects and a name, built once):
// byte (offset % size) becomes value. The patched file is then opened
// read-only (a snapshot: no recovery) and read-write (recovery runs), and
// every read path is taken: Get, the typed Get, Verify, VerifyAll, List,
// Stats, Lookup; the read-write handle also puts and deletes.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "serializer/fuzz/fuzz_types.h"
#include "zcstore/zcstore.h"

namespace {

using zcstore::Backing;
using zcstore::ObjectId;
using zcstore::Store;

const ObjectId kTyped{0x1111, 0x2222};
const ObjectId kRaw{0x3333, 0x4444};

std::string ScratchPath() {
  return "/dev/shm/zcstore-fuzz-" + std::to_string(getpid()) + ".zcs";
}

// The valid store the patches apply to.
const std::vector<uint8_t>& Image() {
  static const std::vector<uint8_t> image = [] {
    std::string path = ScratchPath();
    unlink(path.c_str());
    zcstore::StoreOptions o;
    o.backing = Backing::kFile;
    o.capacity = 32 << 10;
    o.max_objects = 8;
    o.max_clients = 2;
    o.max_pins_per_client = 4;
    o.max_names = 2;
    {
      auto s = Store::Create(path, o);
      if (!s.ok()) std::abort();
      zcstore::fuzz::FuzzModel m;
      m.name = "fuzz";
      m.ids = {1, 2, 3};
      m.weights = {1.f, 2.f, 3.f};
      if (!s->Put(kTyped, m).ok()) std::abort();
      std::vector<std::byte> b0(1000, std::byte{7}), b1(300, std::byte{9});
      std::span<const std::byte> bufs[] = {b0, b1};
      if (!s->Put(kRaw, std::as_bytes(std::span("meta", 4)), bufs).ok()) std::abort();
      if (!s->Bind("m", kTyped).ok()) std::abort();
    }
    std::ifstream in(path, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
    unlink(path.c_str());
    return bytes;
  }();
  return image;
}

void TouchEverything(Store& s) {
  volatile uint8_t sink = 0;
  for (ObjectId id : {kTyped, kRaw}) {
    if (auto v = s.Get(id); v.ok()) {
      for (auto b : v->buffers()) {
        for (std::byte x : b) sink = sink + static_cast<uint8_t>(x);
      }
      for (std::byte x : v->metadata()) sink = sink + static_cast<uint8_t>(x);
    }
    (void)s.Verify(id);
  }
  if (auto m = s.Get<zcstore::fuzz::FuzzModel>(kTyped); m.ok()) {
    for (float f : (*m)->weights) sink = sink + static_cast<uint8_t>(f);
  }
  (void)s.VerifyAll();
  if (auto l = s.List(); l.ok()) sink = sink + static_cast<uint8_t>(l->size());
  (void)s.Stats();
  (void)s.Lookup("m");
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes = Image();
  for (size_t i = 0; i + 4 <= size; i += 4) {
    size_t offset = (size_t{data[i]} | size_t{data[i + 1]} << 8 | size_t{data[i + 2]} << 16);
    bytes[offset % bytes.size()] = data[i + 3];
  }
  std::string path = ScratchPath();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  zcstore::OpenOptions o;
  o.backing = Backing::kFile;
  o.read_only = true;
  if (auto s = Store::Open(path, o); s.ok()) TouchEverything(*s);
  o.read_only = false;
  if (auto s = Store::Open(path, o); s.ok()) {
    TouchEverything(*s);
    std::vector<std::byte> b(5000, std::byte{1});
    std::span<const std::byte> bufs[] = {b};
    ObjectId fresh{0x5555, 0x6666};
    if (s->Put(fresh, {}, bufs).ok()) (void)s->Get(fresh);
    (void)s->Delete(kRaw);
    TouchEverything(*s);
  }
  unlink(path.c_str());
  return 0;
}
