// The serializer: a C++ object as a small envelope plus out-of-band buffers.
//
// A type opts in with one member template used for both directions,
//
//   struct Model {
//     std::string name;
//     std::map<std::string, int> vocabulary;
//     zcstore::Array<float> factors;           // loaded zero-copy from a store
//     template <class Archive> void Serialize(Archive& ar) { ar(name, vocabulary, factors); }
//   };
//
// or a free function `template <class Archive> void Serialize(Archive&, Model&)`
// found by argument-dependent lookup. Types nest freely. Built in: arithmetic
// types, enums, std::string, std::vector, std::array, std::map,
// std::unordered_map, std::optional, std::variant, std::pair, std::tuple,
// std::unique_ptr, std::shared_ptr (identity kept: two pointers to one object
// load as two pointers to one object) and zcstore::Array.
//
// A contiguous range of trivially copyable elements of at least
// SerializeOptions::out_of_band_threshold bytes becomes an out-of-band buffer:
// it goes into the store beside the envelope and never through it. When
// loading, an Array views its buffer in place (zero copies); a std::vector or
// std::string must own its memory, so it is copied, and LoadStats counts it.
//
// Identity: the envelope records the type's name (TypeName<T>, override with
// `static constexpr std::string_view kZcstoreTypeName`), its version (override
// with `static constexpr uint32_t kZcstoreVersion`), and a hash of its field
// layout. Loading as another type, or after the layout changed, is
// TypeMismatch; a version the type does not read is VersionMismatch: never
// garbage. A type reads older versions by declaring `static constexpr
// uint32_t kZcstoreMinVersion` and branching on `ar.version()` in Serialize
// (docs/serializer.md, "Reading objects written by an older version").
//
// Loading trusts nothing: the envelope is checked with the FlatBuffers
// Verifier, every length against the bytes that remain, every buffer index,
// size and alignment against the buffers, nesting against max_depth.
//
// Types to load must be default-constructible. Pointers to polymorphic types
// are stored as their static type. Integers are stored little-endian, arrays
// in native layout: envelopes are for machines of one byte order.
#ifndef ZCSTORE_SERIALIZER_H_
#define ZCSTORE_SERIALIZER_H_

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "zcstore/array.h"
#include "zcstore/export.h"
#include "zcstore/serializer_options.h"
#include "zcstore/status.h"
#include "zcstore/store.h"

static_assert(std::endian::native == std::endian::little,
              "zcstore envelopes are little-endian; this machine is not");

namespace zcstore {

// ------------------------------------------------------------ type identity

namespace internal {
template <typename T>
constexpr std::string_view PrettyFunction() {
  return __PRETTY_FUNCTION__;
}
}  // namespace internal

// The name recorded in envelopes for T: T::kZcstoreTypeName if declared, else
// the compiler's spelling of T (stable for one compiler and standard library).
template <typename T>
std::string TypeName() {
  if constexpr (requires { T::kZcstoreTypeName; }) {
    return std::string(T::kZcstoreTypeName);
  } else {
    std::string_view f = internal::PrettyFunction<T>();
    size_t start = f.find("T = ");
    if (start == std::string_view::npos) return std::string(f);
    start += 4;
    size_t end = f.find_first_of(";]", start);
    return std::string(f.substr(start, end - start));
  }
}

// The version recorded in envelopes for T: T::kZcstoreVersion, else 0.
template <typename T>
constexpr uint32_t TypeVersion() {
  if constexpr (requires { T::kZcstoreVersion; }) {
    return static_cast<uint32_t>(T::kZcstoreVersion);
  } else {
    return 0;
  }
}

// The oldest version of T this program loads: T::kZcstoreMinVersion, else
// TypeVersion<T>() (only the current one). A type that reads older versions
// branches on `ar.version()` in its Serialize (see docs/serializer.md).
template <typename T>
constexpr uint32_t MinTypeVersion() {
  if constexpr (requires { T::kZcstoreMinVersion; }) {
    static_assert(T::kZcstoreMinVersion <= TypeVersion<T>(),
                  "kZcstoreMinVersion must not be above kZcstoreVersion");
    return static_cast<uint32_t>(T::kZcstoreMinVersion);
  } else {
    return TypeVersion<T>();
  }
}

// ------------------------------------------------------------ the raw layer
// Below the C++ types: (envelope fields, list of buffers) in, and back out.
// For other runtimes: a binding can put its own payload (Python's pickle-5
// bytes, say) and buffers through it.

struct BufferInfo {
  uint32_t index = 0;        // which buffer of the stored object
  uint64_t byte_length = 0;
  uint32_t alignment = 64;
  ElementType element_type = ElementType::kUnknown;
  std::vector<uint64_t> shape;  // empty when unknown
  std::optional<uint64_t> checksum;
};

// What an envelope says (its format version aside).
struct EnvelopeFields {
  std::string type_name;
  uint32_t type_version = 0;
  uint64_t layout_hash = 0;
  std::vector<BufferInfo> buffers;
  std::span<const std::byte> inline_data;
};

// A checked envelope. `inline_data` points into the bytes it was decoded
// from, or into `aligned_copy` when the decoder copied them (Store::Get<T>
// always decodes a private copy).
struct DecodedEnvelope : EnvelopeFields {
  std::shared_ptr<std::vector<uint64_t>> aligned_copy;
};

// The envelope's format version (serializer/schema/envelope.fbs).
inline constexpr uint32_t kEnvelopeFormatVersion = 1;

// Builds the FlatBuffers envelope. InvalidArgument if a shape disagrees with
// its byte length. Cost: proportional to the inline bytes and buffer count.
ZCSTORE_EXPORT Result<std::vector<std::byte>> EncodeEnvelope(const EnvelopeFields& fields);
// Verifies (FlatBuffers Verifier) and checks an envelope this process did not
// build. Corrupt if it is not one or is malformed, VersionMismatch if its
// format version is another.
ZCSTORE_EXPORT Result<DecodedEnvelope> DecodeEnvelope(std::span<const std::byte> bytes);
// Checks the envelope's buffer descriptors against actual buffers: the count,
// each index, length, alignment and shape, and (if asked) each checksum.
ZCSTORE_EXPORT Status CheckBuffers(const DecodedEnvelope& envelope,
                                   std::span<const std::span<const std::byte>> buffers,
                                   bool verify_checksums);

// A raw out-of-band buffer to put.
struct RawBuffer {
  std::span<const std::byte> data;
  ElementType element_type = ElementType::kByte;
  std::vector<uint64_t> shape;
};

// Puts a raw object: `payload` goes into the envelope's inline data (for a
// foreign runtime, its pickle bytes, say), each buffer beside it. Copies.
// Errors: those of Store::CreateObject.
ZCSTORE_EXPORT Status PutRaw(Store& store, ObjectId id, std::string_view type_name,
                             std::span<const std::byte> payload,
                             std::span<const RawBuffer> buffers,
                             const SerializeOptions& options = {});

// A raw object loaded from a store: everything views the pinned object.
struct RawObject {
  std::shared_ptr<const ObjectView> view;  // the pin
  DecodedEnvelope envelope;
  std::vector<std::span<const std::byte>> buffers;  // in envelope-descriptor order
};
// Errors: those of Store::Get, Corrupt, VersionMismatch.
ZCSTORE_EXPORT Result<RawObject> GetRaw(const Store& store, ObjectId id,
                                        const LoadOptions& options = {});

// ------------------------------------------------------------ archives

namespace internal {

// One out-of-band buffer found while saving.
struct OutOfBand {
  const std::byte* data = nullptr;
  size_t size = 0;
  ElementType element_type = ElementType::kUnknown;
  std::vector<uint64_t> shape;
  uint32_t alignment = 1;  // what the source guarantees (alignof the element)
  // Move puts: the source's pages may be dropped as soon as they are copied
  // (the object owns them exclusively), and `release` frees what remains.
  bool releasable = false;
  std::function<void()> release;
  // Move puts of an Array allocated in a store: the builder to adopt.
  std::shared_ptr<ObjectBuilder> adopt;
};

ZCSTORE_EXPORT void PutVarint(std::vector<std::byte>& out, uint64_t v);
ZCSTORE_EXPORT uint64_t HashString(std::string_view s, uint64_t seed);

class SaveArchive {
 public:
  SaveArchive(const SerializeOptions& options, bool move) : options_(options), move_(move) {}
  template <typename... Ts>
  void operator()(Ts&... fields) {
    (Field(fields), ...);
  }
  template <typename T>
  void Field(const T& value);

  static constexpr bool kLoading = false;
  // The version of the object being written: its type's kZcstoreVersion.
  uint32_t version() const { return version_; }
  void set_version(uint32_t v) { version_ = v; }
  bool ok() const { return status_.ok(); }
  void Fail(Status s) {
    if (status_.ok()) status_ = std::move(s);
  }
  const Status& status() const { return status_; }
  // True in a move put, except below a shared_ptr: what other owners may
  // still use is never released.
  bool move() const { return move_ && shared_depth_ == 0; }
  void EnterShared() { ++shared_depth_; }
  void LeaveShared() { --shared_depth_; }
  const SerializeOptions& options() const { return options_; }
  std::vector<std::byte>& bytes() { return bytes_; }
  std::vector<OutOfBand>& buffers() { return buffers_; }
  // Appends a buffer and returns its index.
  uint32_t AddBuffer(OutOfBand b) {
    buffers_.push_back(std::move(b));
    return static_cast<uint32_t>(buffers_.size() - 1);
  }
  void PutVarint(uint64_t v) { internal::PutVarint(bytes_, v); }
  void PutRaw(const void* p, size_t n) {
    auto* b = static_cast<const std::byte*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  // Nesting guard: false (and the archive fails) past max_depth.
  bool Enter() {
    if (++depth_ > options_.max_depth) {
      Fail(InvalidArgument("object nesting is deeper than max_depth " +
                           std::to_string(options_.max_depth)));
      return false;
    }
    return true;
  }
  void Leave() { --depth_; }
  // shared_ptr identity: 0 if `p` is new (and records it), else its id + 1.
  uint64_t SharedId(const void* p) {
    auto [it, inserted] = shared_.emplace(p, shared_.size());
    return inserted ? 0 : it->second + 1;
  }

 private:
  SerializeOptions options_;
  bool move_;
  int shared_depth_ = 0;
  uint32_t version_ = 0;
  Status status_;
  std::vector<std::byte> bytes_;
  std::vector<OutOfBand> buffers_;
  std::unordered_map<const void*, uint64_t> shared_;
  uint32_t depth_ = 0;
};

class LoadArchive {
 public:
  LoadArchive(std::span<const std::byte> bytes, std::span<const std::span<const std::byte>> buffers,
              std::shared_ptr<const void> keepalive, const LoadOptions& options)
      : bytes_(bytes), buffers_(buffers), keepalive_(std::move(keepalive)), options_(options) {}
  template <typename... Ts>
  void operator()(Ts&... fields) {
    (Field(fields), ...);
  }
  template <typename T>
  void Field(T& value);

  static constexpr bool kLoading = true;
  // The version the object was written at (its envelope's type version):
  // a Serialize that reads older versions branches on it.
  uint32_t version() const { return version_; }
  void set_version(uint32_t v) { version_ = v; }
  bool ok() const { return status_.ok(); }
  void Fail(Status s) {
    if (status_.ok()) status_ = std::move(s);
  }
  void Corrupt(const std::string& what) { Fail(zcstore::Corrupt("envelope: " + what)); }
  const Status& status() const { return status_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  size_t position() const { return pos_; }
  LoadStats& stats() { return stats_; }
  const std::shared_ptr<const void>& keepalive() const { return keepalive_; }

  // Each returns false (and fails the archive) if the bytes run out.
  bool GetVarint(uint64_t* v) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= bytes_.size()) break;
      auto b = static_cast<uint8_t>(bytes_[pos_++]);
      result |= uint64_t{b & 0x7Fu} << shift;
      if (!(b & 0x80)) {
        *v = result;
        return true;
      }
    }
    Corrupt("truncated or overlong varint");
    return false;
  }
  const std::byte* GetRaw(size_t n) {
    if (n > remaining()) {
      Corrupt("needs " + std::to_string(n) + " bytes, " + std::to_string(remaining()) + " remain");
      return nullptr;
    }
    const std::byte* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  // A count of elements each encoded in at least `min_bytes` bytes.
  bool GetCount(uint64_t* n, size_t min_bytes = 1) {
    if (!GetVarint(n)) return false;
    if (min_bytes > 0 && *n > remaining() / min_bytes) {
      Corrupt("a length of " + std::to_string(*n) + " is larger than the " +
              std::to_string(remaining()) + " bytes that remain");
      return false;
    }
    return true;
  }
  // Out-of-band buffer `index`, or nullptr (and the archive fails).
  const std::span<const std::byte>* Buffer(uint64_t index) {
    if (index >= buffers_.size()) {
      Corrupt("buffer index " + std::to_string(index) + " out of range (" +
              std::to_string(buffers_.size()) + " buffers)");
      return nullptr;
    }
    return &buffers_[index];
  }
  bool Enter() {
    if (++depth_ > options_.max_depth) {
      Corrupt("nesting deeper than max_depth " + std::to_string(options_.max_depth));
      return false;
    }
    return true;
  }
  void Leave() { --depth_; }
  std::vector<std::pair<std::shared_ptr<void>, std::type_index>>& shared() { return shared_; }

 private:
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
  std::span<const std::span<const std::byte>> buffers_;
  std::shared_ptr<const void> keepalive_;
  uint32_t version_ = 0;
  LoadOptions options_;
  Status status_;
  LoadStats stats_;
  uint32_t depth_ = 0;
  std::vector<std::pair<std::shared_ptr<void>, std::type_index>> shared_;
};

// Describes a type's serialized layout (for the layout hash) without values.
class SchemaArchive {
 public:
  template <typename... Ts>
  void operator()(Ts&... fields) {
    (Field(fields), ...);
  }
  template <typename T>
  void Field(T& value);
  template <typename T>
  void Type();
  static constexpr bool kLoading = false;
  // The version whose layout is described.
  uint32_t version() const { return version_; }
  void set_version(uint32_t v) { version_ = v; }
  void Token(std::string_view t) {
    text_ += t;
    text_ += ' ';
  }
  const std::string& text() const { return text_; }
  // Guards recursive types: true the first time T is entered.
  bool EnterType(std::type_index t) { return active_.insert(t).second; }
  void LeaveType(std::type_index t) { active_.erase(t); }

 private:
  std::string text_;
  std::unordered_set<std::type_index> active_;
  uint32_t version_ = 0;
};

template <typename T>
concept MemberSerializable = requires(T& t, SaveArchive& ar) { t.Serialize(ar); };
template <typename T>
concept FreeSerializable = requires(T& t, SaveArchive& ar) { Serialize(ar, t); };

template <typename T, typename Ar>
void CallSerialize(Ar& ar, T& value) {
  if constexpr (MemberSerializable<T>) {
    value.Serialize(ar);
  } else if constexpr (FreeSerializable<T>) {
    Serialize(ar, value);
  } else {
    static_assert(sizeof(T) == 0,
                  "zcstore: this type is not serializable: give it a member "
                  "`template <class Archive> void Serialize(Archive& ar)` or a free "
                  "`Serialize(Archive&, T&)`");
  }
}

// Copyable bytes that may go out of band: trivially copyable, not bool.
template <typename T>
concept Blittable = std::is_trivially_copyable_v<T> && !std::is_same_v<T, bool> &&
                    !std::is_pointer_v<T>;

// ------------------------------------------------------------ codecs
// Codec<T>::Save / Load / Describe. The primary template handles user types.

template <typename T>
struct Codec {
  static void Save(SaveArchive& ar, const T& v) {
    if (!ar.Enter()) return;
    size_t before = ar.bytes().size();
    CallSerialize(ar, const_cast<T&>(v));
    if (ar.bytes().size() == before) ar.PutVarint(0);  // every value takes a byte
    ar.Leave();
  }
  static void Load(LoadArchive& ar, T& v) {
    if (!ar.Enter()) return;
    size_t before = ar.position();
    CallSerialize(ar, v);
    uint64_t pad = 0;
    if (ar.ok() && ar.position() == before && ar.GetVarint(&pad) && pad != 0) {
      ar.Corrupt("bad padding byte");
    }
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    std::type_index t(typeid(T));
    ar.Token(TypeName<T>());
    if (!ar.EnterType(t)) return;  // recursive: the name says it all
    ar.Token("{");
    T sample{};
    CallSerialize(ar, sample);
    ar.Token("}");
    ar.LeaveType(t);
  }
};

template <typename T>
  requires(std::is_arithmetic_v<T> || std::is_enum_v<T>)
struct Codec<T> {
  static void Save(SaveArchive& ar, const T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      uint8_t b = v ? 1 : 0;
      ar.PutRaw(&b, 1);
    } else {
      ar.PutRaw(&v, sizeof(T));
    }
  }
  static void Load(LoadArchive& ar, T& v) {
    if constexpr (std::is_same_v<T, bool>) {
      const std::byte* p = ar.GetRaw(1);
      if (p && static_cast<uint8_t>(*p) > 1) ar.Corrupt("a bool is neither 0 nor 1");
      if (p) v = static_cast<uint8_t>(*p) == 1;
    } else if (const std::byte* p = ar.GetRaw(sizeof(T))) {
      std::memcpy(&v, p, sizeof(T));
    }
  }
  static void Describe(SchemaArchive& ar) {
    if constexpr (std::is_enum_v<T>) ar.Token("enum");
    ar.Token(std::is_floating_point_v<T> ? "f" : std::is_signed_v<T> ? "i" : "u");
    ar.Token(std::to_string(sizeof(T)));
  }
};

// Contiguous elements: inline below the threshold, out of band above it.
// Encoding: varint marker (0 inline, 1 out of band), then either
// varint count + raw bytes, or varint buffer index.
struct Contiguous {
  template <typename E>
  static void Save(SaveArchive& ar, const E* data, size_t n, std::vector<uint64_t> shape,
                   bool releasable, std::function<void()> release,
                   std::shared_ptr<ObjectBuilder> adopt = nullptr) {
    size_t bytes = n * sizeof(E);
    if (bytes < ar.options().out_of_band_threshold || bytes == 0) {
      ar.PutVarint(0);
      ar.PutVarint(n);
      ar.PutRaw(data, bytes);
      return;
    }
    OutOfBand b;
    b.data = reinterpret_cast<const std::byte*>(data);
    b.size = bytes;
    b.element_type = ElementTypeOf<E>();
    b.shape = std::move(shape);
    b.alignment = alignof(E);
    if (ar.move()) {
      b.releasable = releasable;
      b.release = std::move(release);
      b.adopt = std::move(adopt);
    }
    ar.PutVarint(1);
    ar.PutVarint(ar.AddBuffer(std::move(b)));
  }
  // Finds the elements: inline (a pointer into the envelope, maybe
  // unaligned) or out of band. Returns false on error.
  template <typename E>
  static bool Load(LoadArchive& ar, const std::byte** data, uint64_t* n, bool* out_of_band) {
    uint64_t marker;
    if (!ar.GetVarint(&marker)) return false;
    if (marker == 0) {
      if (!ar.GetCount(n, sizeof(E))) return false;
      *data = ar.GetRaw(*n * sizeof(E));
      *out_of_band = false;
      return *data != nullptr;
    }
    uint64_t index;
    if (marker != 1) {
      ar.Corrupt("bad array marker " + std::to_string(marker));
      return false;
    }
    if (!ar.GetVarint(&index)) return false;
    const std::span<const std::byte>* b = ar.Buffer(index);
    if (b == nullptr) return false;
    if (b->size() % sizeof(E) != 0) {
      ar.Corrupt("buffer " + std::to_string(index) + " of " + std::to_string(b->size()) +
                 " bytes is not a whole number of " + std::to_string(sizeof(E)) + "-byte elements");
      return false;
    }
    *data = b->data();
    *n = b->size() / sizeof(E);
    *out_of_band = true;
    return true;
  }
};

template <typename E>
  requires Blittable<E>
struct Codec<std::vector<E>> {
  static void Save(SaveArchive& ar, const std::vector<E>& v) {
    auto* self = const_cast<std::vector<E>*>(&v);
    Contiguous::Save(ar, v.data(), v.size(), {v.size()}, true,
                     [self] { std::vector<E>().swap(*self); });
  }
  static void Load(LoadArchive& ar, std::vector<E>& v) {
    const std::byte* p;
    uint64_t n;
    bool oob;
    if (!Contiguous::Load<E>(ar, &p, &n, &oob)) return;
    v.resize(n);
    if (n) std::memcpy(static_cast<void*>(v.data()), p, n * sizeof(E));
    if (oob) {
      ++ar.stats().copied_buffers;
      ar.stats().copied_bytes += n * sizeof(E);
    }
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("vec");
    ar.Type<E>();
  }
};

template <>
struct Codec<std::string> {
  static void Save(SaveArchive& ar, const std::string& s) {
    auto* self = const_cast<std::string*>(&s);
    Contiguous::Save(ar, s.data(), s.size(), {s.size()}, true,
                     [self] { std::string().swap(*self); });
  }
  static void Load(LoadArchive& ar, std::string& s) {
    const std::byte* p;
    uint64_t n;
    bool oob;
    if (!Contiguous::Load<char>(ar, &p, &n, &oob)) return;
    s.assign(reinterpret_cast<const char*>(p), n);
    if (oob) {
      ++ar.stats().copied_buffers;
      ar.stats().copied_bytes += n;
    }
  }
  static void Describe(SchemaArchive& ar) { ar.Token("str"); }
};

template <typename E, size_t N>
  requires Blittable<E>
struct Codec<std::array<E, N>> {
  static void Save(SaveArchive& ar, const std::array<E, N>& a) {
    Contiguous::Save(ar, a.data(), N, {N}, false, nullptr);
  }
  static void Load(LoadArchive& ar, std::array<E, N>& a) {
    const std::byte* p;
    uint64_t n;
    bool oob;
    if (!Contiguous::Load<E>(ar, &p, &n, &oob)) return;
    if (n != N) {
      ar.Corrupt("a std::array of " + std::to_string(N) + " holds " + std::to_string(n));
      return;
    }
    if (n) std::memcpy(static_cast<void*>(a.data()), p, n * sizeof(E));
    if (oob) {
      ++ar.stats().copied_buffers;
      ar.stats().copied_bytes += n * sizeof(E);
    }
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("arr" + std::to_string(N));
    ar.Type<E>();
  }
};

struct ArrayAccess {
  template <typename E>
  static void Save(SaveArchive& ar, const Array<E>& a) {
    // Shape first (0 dims: one dimension of size()), then the elements.
    ar.PutVarint(a.shape_.size());
    for (uint64_t d : a.shape_) ar.PutVarint(d);
    auto* self = const_cast<Array<E>*>(&a);
    bool exclusive = a.keep_.use_count() == 1;
    std::shared_ptr<ObjectBuilder> adopt;
    if (a.kind_ == Array<E>::Kind::kInStore && exclusive) {
      adopt = std::static_pointer_cast<ObjectBuilder>(a.keep_);
    }
    Contiguous::Save(ar, a.data_, a.size_, a.shape(), exclusive && a.kind_ == Array<E>::Kind::kOwned,
                     [self] { *self = Array<E>(); }, std::move(adopt));
  }
  template <typename E>
  static void Load(LoadArchive& ar, Array<E>& a) {
    uint64_t ndim;
    if (!ar.GetCount(&ndim)) return;
    std::vector<uint64_t> dims(ndim);
    for (uint64_t& d : dims) {
      if (!ar.GetVarint(&d)) return;
    }
    const std::byte* p;
    uint64_t n;
    bool oob;
    if (!Contiguous::Load<E>(ar, &p, &n, &oob)) return;
    if (oob && reinterpret_cast<uintptr_t>(p) % alignof(E) == 0) {
      // Zero copy: a read-only view kept alive by the object's pin.
      a = Array<E>();
      a.data_ = reinterpret_cast<E*>(const_cast<std::byte*>(p));
      a.size_ = n;
      a.keep_ = std::const_pointer_cast<void>(ar.keepalive());
      a.kind_ = Array<E>::Kind::kView;
      ++ar.stats().zero_copy_buffers;
      ar.stats().zero_copy_bytes += n * sizeof(E);
    } else {
      a = Array<E>::Uninitialized(n);
      if (n) std::memcpy(static_cast<void*>(a.data_), p, n * sizeof(E));
      if (oob) {
        ++ar.stats().copied_buffers;
        ar.stats().copied_bytes += n * sizeof(E);
      }
    }
    if (ndim > 0 && !a.Reshape(std::move(dims)).ok()) {
      ar.Corrupt("an array's shape does not match its " + std::to_string(n) + " elements");
    }
  }
};

template <typename E>
struct Codec<Array<E>> {
  static void Save(SaveArchive& ar, const Array<E>& a) { ArrayAccess::Save(ar, a); }
  static void Load(LoadArchive& ar, Array<E>& a) { ArrayAccess::Load(ar, a); }
  static void Describe(SchemaArchive& ar) {
    ar.Token("Array");
    ar.Type<E>();
  }
};

// Elements one by one: varint count, then each element.
template <typename C, typename E>
struct Sequence {
  static void Save(SaveArchive& ar, const C& c) {
    if (!ar.Enter()) return;
    ar.PutVarint(c.size());
    for (const auto& e : c) ar.Field(e);
    ar.Leave();
  }
};

template <typename E>
  requires(!Blittable<E>)
struct Codec<std::vector<E>> {
  static void Save(SaveArchive& ar, const std::vector<E>& v) { Sequence<std::vector<E>, E>::Save(ar, v); }
  static void Load(LoadArchive& ar, std::vector<E>& v) {
    uint64_t n;
    if (!ar.Enter() || !ar.GetCount(&n)) return;
    v.clear();
    v.reserve(n);
    for (uint64_t i = 0; i < n && ar.ok(); ++i) {
      E e{};
      ar.Field(e);
      v.push_back(std::move(e));
    }
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("seq");
    ar.Type<E>();
  }
};

template <typename E, size_t N>
  requires(!Blittable<E>)
struct Codec<std::array<E, N>> {
  static void Save(SaveArchive& ar, const std::array<E, N>& a) {
    for (const E& e : a) ar.Field(e);
  }
  static void Load(LoadArchive& ar, std::array<E, N>& a) {
    for (E& e : a) ar.Field(e);
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("arr" + std::to_string(N));
    ar.Type<E>();
  }
};

template <typename M>
struct MapCodec {
  using K = typename M::key_type;
  using V = typename M::mapped_type;
  static void Save(SaveArchive& ar, const M& m) {
    if (!ar.Enter()) return;
    ar.PutVarint(m.size());
    for (const auto& [k, v] : m) {
      ar.Field(k);
      ar.Field(v);
    }
    ar.Leave();
  }
  static void Load(LoadArchive& ar, M& m) {
    uint64_t n;
    if (!ar.Enter() || !ar.GetCount(&n, 2)) return;
    m.clear();
    for (uint64_t i = 0; i < n && ar.ok(); ++i) {
      K k{};
      V v{};
      ar.Field(k);
      ar.Field(v);
      if (ar.ok() && !m.emplace(std::move(k), std::move(v)).second) ar.Corrupt("duplicate map key");
    }
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("map");
    ar.Type<K>();
    ar.Type<V>();
  }
};
template <typename K, typename V, typename C, typename A>
struct Codec<std::map<K, V, C, A>> : MapCodec<std::map<K, V, C, A>> {};
template <typename K, typename V, typename H, typename E, typename A>
struct Codec<std::unordered_map<K, V, H, E, A>> : MapCodec<std::unordered_map<K, V, H, E, A>> {};

template <typename E>
struct Codec<std::optional<E>> {
  static void Save(SaveArchive& ar, const std::optional<E>& o) {
    if (!ar.Enter()) return;
    ar.PutVarint(o.has_value());
    if (o) ar.Field(*o);
    ar.Leave();
  }
  static void Load(LoadArchive& ar, std::optional<E>& o) {
    uint64_t has;
    if (!ar.Enter() || !ar.GetVarint(&has)) return;
    if (has > 1) return ar.Corrupt("bad optional flag");
    o.reset();
    if (has) ar.Field(o.emplace());
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("opt");
    ar.Type<E>();
  }
};

template <typename... Es>
struct Codec<std::variant<Es...>> {
  using V = std::variant<Es...>;
  static void Save(SaveArchive& ar, const V& v) {
    if (!ar.Enter()) return;
    if (v.valueless_by_exception()) {
      ar.Fail(InvalidArgument("cannot serialize a valueless std::variant"));
      return;
    }
    ar.PutVarint(v.index());
    std::visit([&](const auto& x) { ar.Field(x); }, v);
    ar.Leave();
  }
  template <size_t I = 0>
  static void LoadIndex(LoadArchive& ar, V& v, uint64_t index) {
    if constexpr (I < sizeof...(Es)) {
      if (index == I) {
        ar.Field(v.template emplace<I>());
        return;
      }
      LoadIndex<I + 1>(ar, v, index);
    }
  }
  static void Load(LoadArchive& ar, V& v) {
    uint64_t index;
    if (!ar.Enter() || !ar.GetVarint(&index)) return;
    if (index >= sizeof...(Es)) return ar.Corrupt("variant index " + std::to_string(index) + " out of range");
    LoadIndex(ar, v, index);
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("var");
    (ar.Type<Es>(), ...);
  }
};

template <typename... Es>
struct Codec<std::tuple<Es...>> {
  static void Save(SaveArchive& ar, const std::tuple<Es...>& t) {
    if constexpr (sizeof...(Es) == 0) ar.PutVarint(0);  // every value takes a byte
    std::apply([&](const auto&... x) { (ar.Field(x), ...); }, t);
  }
  static void Load(LoadArchive& ar, std::tuple<Es...>& t) {
    if constexpr (sizeof...(Es) == 0) {
      uint64_t pad;
      ar.GetVarint(&pad);
    }
    std::apply([&](auto&... x) { (ar.Field(x), ...); }, t);
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("tup");
    (ar.Type<Es>(), ...);
  }
};

template <typename A, typename B>
struct Codec<std::pair<A, B>> {
  static void Save(SaveArchive& ar, const std::pair<A, B>& p) {
    ar.Field(p.first);
    ar.Field(p.second);
  }
  static void Load(LoadArchive& ar, std::pair<A, B>& p) {
    ar.Field(p.first);
    ar.Field(p.second);
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("pair");
    ar.Type<A>();
    ar.Type<B>();
  }
};

template <typename E, typename D>
struct Codec<std::unique_ptr<E, D>> {
  static void Save(SaveArchive& ar, const std::unique_ptr<E, D>& p) {
    if (!ar.Enter()) return;
    ar.PutVarint(p != nullptr);
    if (p) ar.Field(*p);
    ar.Leave();
  }
  static void Load(LoadArchive& ar, std::unique_ptr<E, D>& p) {
    uint64_t has;
    if (!ar.Enter() || !ar.GetVarint(&has)) return;
    if (has > 1) return ar.Corrupt("bad pointer flag");
    p.reset();
    if (has) {
      p.reset(new E());
      ar.Field(*p);
    }
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("uptr");
    ar.Type<E>();
  }
};

// shared_ptr: varint tag 0 null, 1 a new object follows, 2 + k the k-th
// object already seen. Loading rebuilds the sharing.
template <typename E>
struct Codec<std::shared_ptr<E>> {
  static void Save(SaveArchive& ar, const std::shared_ptr<E>& p) {
    if (!ar.Enter()) return;
    if (!p) {
      ar.PutVarint(0);
    } else if (uint64_t seen = ar.SharedId(p.get()); seen != 0) {
      ar.PutVarint(seen + 1);
    } else {
      ar.PutVarint(1);
      ar.EnterShared();  // another owner may use *p: a move put copies it
      ar.Field(*p);
      ar.LeaveShared();
    }
    ar.Leave();
  }
  static void Load(LoadArchive& ar, std::shared_ptr<E>& p) {
    uint64_t tag;
    if (!ar.Enter() || !ar.GetVarint(&tag)) return;
    auto& table = ar.shared();
    if (tag == 0) {
      p.reset();
    } else if (tag == 1) {
      using Plain = std::remove_const_t<E>;
      auto fresh = std::make_shared<Plain>();
      table.emplace_back(fresh, std::type_index(typeid(Plain)));
      ar.Field(*fresh);
      p = fresh;
    } else if (tag - 2 >= table.size()) {
      return ar.Corrupt("shared pointer back-reference " + std::to_string(tag - 2) + " out of range");
    } else if (table[tag - 2].second != std::type_index(typeid(std::remove_const_t<E>))) {
      return ar.Corrupt("shared pointer back-reference to an object of another type");
    } else {
      p = std::static_pointer_cast<E>(table[tag - 2].first);
    }
    ar.Leave();
  }
  static void Describe(SchemaArchive& ar) {
    ar.Token("sptr");
    ar.Type<E>();
  }
};

template <typename T>
void SaveArchive::Field(const T& value) {
  if (ok()) Codec<std::remove_cv_t<T>>::Save(*this, value);
}
template <typename T>
void LoadArchive::Field(T& value) {
  if (ok()) Codec<std::remove_cv_t<T>>::Load(*this, value);
}
template <typename T>
void SchemaArchive::Field(T&) {
  Type<std::remove_cv_t<T>>();
}
template <typename T>
void SchemaArchive::Type() {
  Codec<std::remove_cv_t<T>>::Describe(*this);
}

// The hash of T's serialized layout at `version` (what its Serialize
// describes when ar.version() is `version`).
template <typename T>
uint64_t LayoutHashAt(uint32_t version) {
  SchemaArchive ar;
  ar.set_version(version);
  ar.Type<T>();
  return HashString(ar.text(), 0x7A6373746F7265ull) | 1;  // never 0 (0 = raw)
}
// The hash of T's serialized layout recorded in envelopes (at its version).
template <typename T>
uint64_t LayoutHash() {
  static const uint64_t hash = LayoutHashAt<T>(TypeVersion<T>());
  return hash;
}
// LayoutHashAt, cached for the current version: what identity checks call.
template <typename T>
uint64_t LayoutHashOf(uint32_t version) {
  return version == TypeVersion<T>() ? LayoutHash<T>() : LayoutHashAt<T>(version);
}

// Builds the envelope from a saved archive and stores it with its buffers.
ZCSTORE_EXPORT Status PutSaved(Store& store, ObjectId id, const std::string& type_name,
                               uint32_t type_version, uint64_t layout_hash, SaveArchive& ar);
// Loads and checks the envelope of a stored object for type `type_name`.
// What a type accepts: its name, the versions it loads (min..max) and the
// layout hash of each.
struct TypeIdentity {
  std::string name;
  uint32_t min_version = 0, version = 0;
  uint64_t (*layout_hash_at)(uint32_t version) = nullptr;
};
template <typename T>
TypeIdentity IdentityOf() {
  return {TypeName<T>(), MinTypeVersion<T>(), TypeVersion<T>(), &LayoutHashOf<T>};
}
ZCSTORE_EXPORT Result<RawObject> GetChecked(const Store& store, ObjectId id,
                                            const TypeIdentity& type, const LoadOptions& options);
// TypeMismatch (another type, or another layout than the type has at the
// stored version), VersionMismatch (a version outside min..max).
ZCSTORE_EXPORT Status CheckIdentity(const DecodedEnvelope& envelope, const TypeIdentity& type);

// Runs `f`, turning an escaping exception into a Status: no exception crosses
// the public API, even from a user's Serialize.
template <typename F>
Status Guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("exception while (de)serializing: ") + e.what());
  } catch (...) {
    return InvalidArgument("unknown exception while (de)serializing");
  }
}

}  // namespace internal

// ------------------------------------------------------------ typed API

// A T loaded from a store, and the pin that keeps its Arrays' bytes in place.
// Move-only. The Arrays inside may outlive this handle: each holds the pin.
template <typename T>
class Pinned {
 public:
  const T& operator*() const { return value_; }
  const T* operator->() const { return &value_; }
  const T& value() const { return value_; }
  // Takes the value out (its Arrays keep the pin alive on their own).
  T Take() && { return std::move(value_); }
  const LoadStats& stats() const { return stats_; }
  ObjectId id() const { return view_ ? view_->id() : ObjectId{}; }

 private:
  template <typename U>
  friend Result<Pinned<U>> LoadPinned(RawObject raw, const LoadOptions& options);
  std::shared_ptr<const ObjectView> view_;
  T value_{};
  LoadStats stats_;
};

// An object serialized in memory: the envelope and spans of the out-of-band
// buffers, which point into the source object and stay valid while it lives
// unchanged.
struct SerializedObject {
  std::vector<std::byte> envelope;
  std::vector<std::span<const std::byte>> buffers;
};

// Serializes without a store. InvalidArgument past max_depth.
template <typename T>
Result<SerializedObject> Serialize(const T& object, const SerializeOptions& options = {}) {
  internal::SaveArchive ar(options, /*move=*/false);
  ar.set_version(TypeVersion<T>());
  Status st = internal::Guarded([&] {
    ar.Field(object);
    return ar.status();
  });
  if (!st.ok()) return st;
  EnvelopeFields fields;
  fields.type_name = TypeName<T>();
  fields.type_version = TypeVersion<T>();
  fields.layout_hash = internal::LayoutHash<T>();
  fields.inline_data = ar.bytes();
  SerializedObject out;
  for (uint32_t i = 0; i < ar.buffers().size(); ++i) {
    const internal::OutOfBand& b = ar.buffers()[i];
    BufferInfo info;
    info.index = i;
    info.byte_length = b.size;
    info.alignment = b.alignment;  // in memory, only the element's own alignment holds
    info.element_type = b.element_type;
    info.shape = b.shape;
    fields.buffers.push_back(std::move(info));
    out.buffers.emplace_back(b.data, b.size);
  }
  auto env = EncodeEnvelope(fields);
  if (!env.ok()) return env.status();
  out.envelope = std::move(*env);
  return out;
}

// Rebuilds a T from an envelope and its buffers. Arrays view `buffers` in
// place and hold `keepalive` (whatever owns them). Errors: Corrupt,
// TypeMismatch, VersionMismatch.
template <typename T>
Result<T> Deserialize(std::span<const std::byte> envelope,
                      std::span<const std::span<const std::byte>> buffers,
                      std::shared_ptr<const void> keepalive = nullptr,
                      const LoadOptions& options = {}, LoadStats* stats = nullptr) {
  auto env = DecodeEnvelope(envelope);
  if (!env.ok()) return env.status();
  Status st = internal::CheckIdentity(*env, internal::IdentityOf<T>());
  if (st.ok()) st = CheckBuffers(*env, buffers, options.verify_checksums);
  if (!st.ok()) return st;
  std::vector<std::span<const std::byte>> ordered;
  for (const BufferInfo& b : env->buffers) ordered.push_back(buffers[b.index]);
  internal::LoadArchive ar(env->inline_data, ordered, std::move(keepalive), options);
  ar.set_version(env->type_version);
  T value{};
  st = internal::Guarded([&] {
    ar.Field(value);
    if (ar.ok() && ar.remaining() != 0) {
      ar.Corrupt(std::to_string(ar.remaining()) + " bytes left over after the object");
    }
    return ar.status();
  });
  if (!st.ok()) return st;
  if (stats) {
    *stats = ar.stats();
    stats->inline_bytes = env->inline_data.size();
  }
  return value;
}

template <typename T>
Result<Pinned<T>> LoadPinned(RawObject raw, const LoadOptions& options) {
  internal::LoadArchive ar(raw.envelope.inline_data, raw.buffers, raw.view, options);
  ar.set_version(raw.envelope.type_version);
  Pinned<T> out;
  Status st = internal::Guarded([&] {
    ar.Field(out.value_);
    if (ar.ok() && ar.remaining() != 0) {
      ar.Corrupt(std::to_string(ar.remaining()) + " bytes left over after the object");
    }
    return ar.status();
  });
  if (!st.ok()) return st;
  out.stats_ = ar.stats();
  out.stats_.inline_bytes = raw.envelope.inline_data.size();
  out.view_ = std::move(raw.view);
  return out;
}

template <typename T>
  requires(!RawBytes<T>)
Status Store::Put(ObjectId id, T&& object, const SerializeOptions& options) {
  using Plain = std::remove_cvref_t<T>;
  constexpr bool kMove = std::is_rvalue_reference_v<T&&> && !std::is_const_v<std::remove_reference_t<T>>;
  internal::SaveArchive ar(options, kMove);
  ar.set_version(TypeVersion<Plain>());
  return internal::Guarded([&]() -> Status {
    ar.Field(static_cast<const Plain&>(object));
    if (!ar.ok()) return ar.status();
    Status st = internal::PutSaved(*this, id, TypeName<Plain>(), TypeVersion<Plain>(),
                                   internal::LayoutHash<Plain>(), ar);
    if constexpr (kMove) {
      // What was not released buffer by buffer goes now; the source is left
      // moved-from (valid, empty), as after any C++ move.
      if (st.ok()) [[maybe_unused]] Plain sink(std::move(object));
    }
    return st;
  });
}

template <typename T>
  requires(!RawBytes<T>)
Result<ObjectId> Store::Put(T&& object, const SerializeOptions& options) {
  ObjectId id = ObjectId::Random();
  Status st = Put(id, std::forward<T>(object), options);
  if (!st.ok()) return st;
  return id;
}

template <typename T>
Result<Pinned<T>> Store::Get(ObjectId id, const LoadOptions& options) const {
  auto raw = internal::GetChecked(*this, id, internal::IdentityOf<T>(), options);
  if (!raw.ok()) return raw.status();
  return LoadPinned<T>(std::move(*raw), options);
}

}  // namespace zcstore

#endif  // ZCSTORE_SERIALIZER_H_
