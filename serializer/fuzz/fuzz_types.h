// The type the fuzz target loads: one of each codec family.
#ifndef ZCSTORE_SERIALIZER_FUZZ_FUZZ_TYPES_H_
#define ZCSTORE_SERIALIZER_FUZZ_FUZZ_TYPES_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "zcstore/serializer.h"

namespace zcstore::fuzz {

struct Leaf {
  int32_t id = 0;
  std::string label;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(id, label);
  }
};

struct FuzzModel {
  static constexpr std::string_view kZcstoreTypeName = "zcstore.fuzz.Model";
  std::string name;
  std::vector<int32_t> ids;
  std::map<std::string, double> params;
  std::optional<Leaf> extra;
  std::variant<int64_t, std::string, Leaf> choice;
  std::shared_ptr<Leaf> a, b;
  std::unique_ptr<Leaf> owned;
  std::vector<Leaf> leaves;
  zcstore::Array<float> weights;
  std::vector<double> history;
  template <class Archive>
  void Serialize(Archive& ar) {
    ar(name, ids, params, extra, choice, a, b, owned, leaves, weights, history);
  }
};

}  // namespace zcstore::fuzz

#endif  // ZCSTORE_SERIALIZER_FUZZ_FUZZ_TYPES_H_
