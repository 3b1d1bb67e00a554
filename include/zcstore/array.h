// Array<T>: the zero-copy array type of the serializer.
//
// An Array is a reference-counted handle on contiguous elements of a
// trivially copyable T, with an N-dimensional shape (as numpy carries). Its
// memory is one of three kinds:
//   owned     built locally (Array<float>(n)); writable; freed with the last
//             handle that shares it.
//   in store  allocated inside a store (Array<float>::AllocateIn(store, n));
//             writable until the object that holds it is put with
//             Store::Put(std::move(obj)), which then adopts it without copying.
//   view      loaded from a store (Store::Get<T>): read-only bytes in the
//             store's PROT_READ mapping, kept alive by the object's pin; writing
//             through the pointer faults. mutable_data() returns nullptr.
// Copies of an Array share its memory (like shared_ptr): copy the elements
// explicitly with ToVector() or Array(span) when you need your own.
//
// Thread-safety: like shared_ptr; concurrent reads are safe.
#ifndef ZCSTORE_ARRAY_H_
#define ZCSTORE_ARRAY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <numeric>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "zcstore/status.h"
#include "zcstore/store.h"

namespace zcstore {

// Element type of a buffer, as recorded in the envelope (serializer/schema).
enum class ElementType : uint8_t {
  kUnknown = 0, kInt8, kUInt8, kInt16, kUInt16, kInt32, kUInt32, kInt64, kUInt64,
  kFloat32, kFloat64, kBool, kByte, kChar,
};

template <typename T>
constexpr ElementType ElementTypeOf() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, bool>) return ElementType::kBool;
  else if constexpr (std::is_same_v<U, char>) return ElementType::kChar;
  else if constexpr (std::is_same_v<U, std::byte>) return ElementType::kByte;
  else if constexpr (std::is_same_v<U, float>) return ElementType::kFloat32;
  else if constexpr (std::is_same_v<U, double>) return ElementType::kFloat64;
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>) {
    return sizeof(U) == 1 ? ElementType::kInt8 : sizeof(U) == 2 ? ElementType::kInt16
         : sizeof(U) == 4 ? ElementType::kInt32 : ElementType::kInt64;
  } else if constexpr (std::is_integral_v<U>) {
    return sizeof(U) == 1 ? ElementType::kUInt8 : sizeof(U) == 2 ? ElementType::kUInt16
         : sizeof(U) == 4 ? ElementType::kUInt32 : ElementType::kUInt64;
  } else {
    return ElementType::kUnknown;  // a struct of scalars, say
  }
}

namespace internal {
struct ArrayAccess;
}  // namespace internal

template <typename T>
class Array {
  static_assert(std::is_trivially_copyable_v<T>, "Array<T> needs a trivially copyable T");

 public:
  using value_type = T;

  // An empty array (size 0, shape {0}).
  Array() = default;
  Array(const Array&) = default;
  Array& operator=(const Array&) = default;
  // Moving leaves the source empty.
  Array(Array&& o) noexcept { *this = std::move(o); }
  Array& operator=(Array&& o) noexcept {
    if (this != &o) {
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      shape_ = std::move(o.shape_);
      o.shape_.clear();
      keep_ = std::move(o.keep_);
      kind_ = std::exchange(o.kind_, Kind::kOwned);
    }
    return *this;
  }
  // `n` value-initialised (zeroed) elements, owned. Zeroing touches every
  // page; use Uninitialized when every element is written anyway.
  explicit Array(size_t n) : Array(Uninitialized(n)) {
    if (n) std::memset(static_cast<void*>(data_), 0, n * sizeof(T));
  }
  Array(std::initializer_list<T> values) : Array(std::span<const T>(values.begin(), values.size())) {}
  // A copy of `values`, owned.
  explicit Array(std::span<const T> values) : Array(Uninitialized(values.size())) {
    if (!values.empty()) std::memcpy(static_cast<void*>(data_), values.data(), values.size_bytes());
  }

  // `n` elements, owned, not initialised (no page is touched). 64-byte aligned.
  // More elements than fit in memory's address range throw
  // std::bad_array_new_length, as new T[n] does.
  static Array Uninitialized(size_t n) {
    Array a;
    if (n == 0) return a;
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_array_new_length();
    auto* p = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64}));
    a.keep_ = std::shared_ptr<void>(p, [](void* q) { ::operator delete(q, std::align_val_t{64}); });
    a.data_ = p;
    a.size_ = n;
    a.kind_ = Kind::kOwned;
    return a;
  }

  // `n` uninitialised elements inside `store`, for in-place construction: the
  // writer fills them, and Store::Put(std::move(obj)) of an object holding
  // this array puts them with zero bytes copied. Until then the space is an
  // unsealed object of the store (freed if the array is dropped). Errors as
  // Store::CreateObject (StoreFull, PermissionDenied).
  static Result<Array> AllocateIn(Store& store, size_t n) {
    if (n > SIZE_MAX / sizeof(T)) {
      return InvalidArgument("Array::AllocateIn: " + std::to_string(n) + " elements of " +
                             std::to_string(sizeof(T)) + " bytes overflow a size");
    }
    size_t bytes[] = {n * sizeof(T)};
    auto builder = store.CreateObject(ObjectId::Random(), 0, bytes);
    if (!builder.ok()) return builder.status();
    Array a;
    auto owner = std::make_shared<ObjectBuilder>(std::move(*builder));
    a.data_ = reinterpret_cast<T*>(owner->buffer(0).data());
    a.size_ = n;
    a.keep_ = std::move(owner);
    a.kind_ = Kind::kInStore;
    return a;
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t size_bytes() const { return size_ * sizeof(T); }
  const T* data() const { return data_; }
  // Writable pointer for owned and in-store arrays; nullptr for views.
  T* mutable_data() { return kind_ == Kind::kView ? nullptr : data_; }
  const T& operator[](size_t i) const { return data_[i]; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  std::span<const T> span() const { return {data_, size_}; }
  std::vector<T> ToVector() const { return std::vector<T>(begin(), end()); }

  bool is_view() const { return kind_ == Kind::kView; }
  bool in_store() const { return kind_ == Kind::kInStore; }

  // Dimensions, outermost first; {size()} unless reshaped.
  std::vector<uint64_t> shape() const {
    return shape_.empty() ? std::vector<uint64_t>{size_} : shape_;
  }
  // Sets the dimensions. InvalidArgument unless their product is size().
  Status Reshape(std::vector<uint64_t> dims) {
    uint64_t product = 1;
    for (uint64_t d : dims) {
      if (d != 0 && product > UINT64_MAX / d) return InvalidArgument("shape overflows");
      product *= d;
    }
    if (dims.empty() || product != size_) {
      return InvalidArgument("a shape's product must equal the array's size (" +
                             std::to_string(size_) + ")");
    }
    shape_ = std::move(dims);
    return Status::OK();
  }

 private:
  friend struct internal::ArrayAccess;
  enum class Kind : uint8_t { kOwned, kInStore, kView };

  T* data_ = nullptr;
  size_t size_ = 0;
  std::vector<uint64_t> shape_;   // empty: one dimension of size_
  std::shared_ptr<void> keep_;    // owns the memory, or the builder, or the pin
  Kind kind_ = Kind::kOwned;
};

}  // namespace zcstore

#endif  // ZCSTORE_ARRAY_H_
