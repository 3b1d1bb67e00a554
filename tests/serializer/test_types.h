// Types used by the serializer tests and by the helper process.
#ifndef ZCSTORE_TESTS_SERIALIZER_TEST_TYPES_H_
#define ZCSTORE_TESTS_SERIALIZER_TEST_TYPES_H_

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

#include "zcstore/serializer.h"

namespace zcstore::testing {

enum class Color : uint8_t { kRed = 1, kGreen = 2 };

struct Inner {
  int32_t a = 0;
  std::string s;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(a, s);
  }
  bool operator==(const Inner&) const = default;
};

// Serialized through a free function instead of a member.
struct Point {
  double x = 0, y = 0;
  bool operator==(const Point&) const = default;
};
template <class Archive>
void Serialize(Archive& ar, Point& p) {
  ar(p.x, p.y);
}

struct Empty {
  template <class Archive>
  void Serialize(Archive&) {}
};

// Every built-in codec, and a few out-of-band buffers.
struct Everything {
  bool b = false;
  int8_t i8 = 0;
  uint16_t u16 = 0;
  int64_t i64 = 0;
  float f = 0;
  double d = 0;
  Color color = Color::kRed;
  char c = 0;
  std::string name;
  std::string long_text;                      // >= 4 KiB: out of band, copied on load
  std::vector<int> small_ints;
  std::vector<double> big_doubles;            // out of band, copied on load
  std::vector<std::string> names;
  std::vector<bool> flags;
  std::array<int, 3> arr3{};
  std::array<float, 2048> big_arr{};          // 8 KiB: out of band
  std::map<std::string, int> m;
  std::unordered_map<int, Inner> um;
  std::optional<int> opt_some, opt_none;
  std::variant<int, std::string, Inner> var;
  std::pair<int, std::string> pr;
  std::tuple<int, double, std::string> tup;
  std::unique_ptr<Inner> up, up_null;
  std::shared_ptr<Inner> sp1, sp2, sp_null;   // sp1 and sp2 share one object
  zcstore::Array<float> small_arr;            // inline
  zcstore::Array<float> big_arr_z;            // out of band: zero copy
  zcstore::Array<int64_t> shaped;             // 2-D
  std::vector<Inner> inners;
  Point point;
  Empty empty;
  std::vector<Empty> empties;

  template <class Archive>
  void Serialize(Archive& ar) {
    ar(b, i8, u16, i64, f, d, color, c, name, long_text, small_ints, big_doubles, names, flags,
       arr3, big_arr, m, um, opt_some, opt_none, var, pr, tup, up, up_null, sp1, sp2, sp_null,
       small_arr, big_arr_z, shaped, inners, point, empty, empties);
  }

  static Everything Sample() {
    Everything e;
    e.b = true;
    e.i8 = -7;
    e.u16 = 65000;
    e.i64 = -1234567890123;
    e.f = 1.5f;
    e.d = -2.25;
    e.color = Color::kGreen;
    e.c = 'z';
    e.name = "model";
    e.long_text = std::string(5000, 'x');
    e.small_ints = {1, 2, 3};
    e.big_doubles.resize(10000);
    for (size_t i = 0; i < e.big_doubles.size(); ++i) e.big_doubles[i] = i * 0.5;
    e.names = {"a", "", "ccc"};
    e.flags = {true, false, true};
    e.arr3 = {4, 5, 6};
    for (size_t i = 0; i < e.big_arr.size(); ++i) e.big_arr[i] = static_cast<float>(i);
    e.m = {{"one", 1}, {"two", 2}};
    e.um = {{7, Inner{7, "seven"}}};
    e.opt_some = 42;
    e.var = Inner{3, "variant"};
    e.pr = {9, "nine"};
    e.tup = {1, 2.0, "three"};
    e.up = std::make_unique<Inner>(Inner{5, "unique"});
    e.sp1 = std::make_shared<Inner>(Inner{6, "shared"});
    e.sp2 = e.sp1;
    e.small_arr = {1.f, 2.f, 3.f};
    e.big_arr_z = zcstore::Array<float>::Uninitialized(100000);
    for (size_t i = 0; i < e.big_arr_z.size(); ++i) e.big_arr_z.mutable_data()[i] = i * 0.25f;
    e.shaped = zcstore::Array<int64_t>::Uninitialized(6000);
    for (size_t i = 0; i < e.shaped.size(); ++i) e.shaped.mutable_data()[i] = static_cast<int64_t>(i) * 3;
    (void)e.shaped.Reshape({2000, 3});
    e.inners = {Inner{1, "x"}, Inner{2, "y"}};
    e.point = {1.0, -1.0};
    e.empties.resize(3);
    return e;
  }
};

// The item-factor model of the demo, small: what the pool will share.
struct Model {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.test.Model";
  static constexpr uint32_t kZcstoreVersion = 1;
  std::string name;
  uint32_t dims = 0;
  zcstore::Array<float> factors;
  std::vector<float> bias;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(name, dims, factors, bias);
  }
};

// Same name as Model but another layout, and another version.
struct ModelOtherLayout {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.test.Model";
  static constexpr uint32_t kZcstoreVersion = 1;
  std::string name;
  zcstore::Array<float> factors;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(name, factors);
  }
};
// Model as a later version would write it: same name and fields, version 2.
struct ModelV2 : Model {
  static constexpr uint32_t kZcstoreVersion = 2;
};

// A recursive type: a list as deep as you make it.
struct Node {
  int value = 0;
  std::unique_ptr<Node> next;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(value, next);
  }
  static std::unique_ptr<Node> Chain(int length) {
    std::unique_ptr<Node> head;
    for (int i = length; i > 0; --i) {
      auto n = std::make_unique<Node>();
      n->value = i;
      n->next = std::move(head);
      head = std::move(n);
    }
    return head;
  }
};
struct List {
  std::unique_ptr<Node> head;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(head);
  }
};

}  // namespace zcstore::testing

#endif  // ZCSTORE_TESTS_SERIALIZER_TEST_TYPES_H_
