#include <gtest/gtest.h>

#include <unordered_set>

#include "zcstore/object_id.h"
#include "zcstore/status.h"

namespace zcstore {
namespace {

TEST(StatusTest, OkHasNoMessageAndErrorsKeepCodeAndMessage) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.ToString(), "OK");
  EXPECT_EQ(Status(StatusCode::kOk, "ignored").message(), "");
  Status full = StoreFull("store 'x' is full");
  EXPECT_FALSE(full.ok());
  EXPECT_EQ(full.code(), StatusCode::kStoreFull);
  EXPECT_EQ(full.ToString(), "StoreFull: store 'x' is full");
  EXPECT_EQ(full.WithContext("put").message(), "put: store 'x' is full");
  EXPECT_EQ(Status().WithContext("put"), Status());
}

TEST(StatusTest, CodesHaveStableNumbersAndNames) {
  EXPECT_EQ(static_cast<int>(StatusCode::kIOError), 12);
  EXPECT_EQ(static_cast<int>(StatusCode::kTaskFailed), 13);
  EXPECT_EQ(StatusCodeName(StatusCode::kTaskFailed), "TaskFailed");
  EXPECT_EQ(StatusCodeName(StatusCode::kVersionMismatch), "VersionMismatch");
  EXPECT_EQ(StatusCodeName(StatusCode::kWorkerCrashed), "WorkerCrashed");
}

TEST(ResultTest, HoldsValueOrStatus) {
  Result<int> v = 7;
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 7);
  Result<int> e = NotFound("nope");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kNotFound);
}

TEST(ResultDeathTest, ValueOfErrorStopsWithTheStatus) {
  Result<int> e = Corrupt("bad bytes");
  EXPECT_DEATH((void)e.value(), "Corrupt: bad bytes");
}

TEST(ObjectIdTest, RoundTripsThroughHexAndRejectsGarbage) {
  ObjectId id{0x0123456789abcdefull, 0xfedcba9876543210ull};
  EXPECT_EQ(id.ToString(), "0123456789abcdeffedcba9876543210");
  auto back = ObjectId::FromString("0123456789ABCDEFfedcba9876543210");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, id);
  EXPECT_EQ(ObjectId::FromString("123").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ObjectId::FromString(std::string(31, '0') + "g").status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ObjectIdTest, RandomIdsAreDistinctAndNeverNil) {
  std::unordered_set<ObjectId> seen;
  for (int i = 0; i < 1000; ++i) {
    ObjectId id = ObjectId::Random();
    EXPECT_FALSE(id.is_nil());
    EXPECT_TRUE(seen.insert(id).second);
  }
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgument(std::to_string(x) + " is odd");
  return x / 2;
}
Status Check(int x) { return x < 0 ? InvalidArgument("negative") : Status::OK(); }

Result<int> Quarter(int x) {
  ZCSTORE_RETURN_IF_ERROR(Check(x));
  ZCSTORE_ASSIGN_OR_RETURN(int half, Half(x));
  ZCSTORE_ASSIGN_OR_RETURN(auto quarter, Half(half));
  return quarter;
}

TEST(ResultTest, ChecksThatNeverStopTheProcess) {
  EXPECT_TRUE(static_cast<bool>(Half(4)));
  EXPECT_FALSE(static_cast<bool>(Half(3)));
  if (auto r = Half(3); !r) {
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Half(8).value_or(-1), 4);
  EXPECT_EQ(Half(7).value_or(-1), -1);
  Result<std::string> text = NotFound("none");
  EXPECT_EQ(std::move(text).value_or("fallback"), "fallback");
}

TEST(ResultTest, MacrosReturnTheFirstError) {
  EXPECT_EQ(*Quarter(12), 3);
  EXPECT_EQ(Quarter(6).status().message(), "3 is odd");  // from the second step
  EXPECT_EQ(Quarter(-4).status().message(), "negative");
}

}  // namespace
}  // namespace zcstore
