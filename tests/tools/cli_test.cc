// The zcstore command-line tool, run as a real process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>

#include "store/layout_internal.h"
#include "tests/test_util.h"
#include "zcstore/zcstore.h"

namespace zcstore {
namespace {

struct CliRun {
  int exit_code;
  std::string output;  // stdout and stderr together
};

CliRun Cli(const std::string& args) {
  std::string cmd = std::string(ZCSTORE_CLI) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

bool Has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

ObjectId PutPattern(Store& s, size_t size) {
  ObjectId id = ObjectId::Random();
  auto b = testing::Pattern(id, 0, size);
  std::span<const std::byte> bufs[] = {b};
  EXPECT_TRUE(s.Put(id, {}, bufs).ok());
  return id;
}

TEST(CliTest, HelpForTheToolAndEachCommand) {
  CliRun r = Cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* c : {"list", "stat", "inspect", "verify", "gc", "rm"}) {
    EXPECT_TRUE(Has(r.output, std::string("  ") + c)) << c;
    CliRun h = Cli(std::string(c) + " --help");
    EXPECT_EQ(h.exit_code, 0) << c;
    EXPECT_TRUE(Has(h.output, std::string("usage: zcstore ") + c)) << h.output;
  }
  EXPECT_EQ(Cli("frobnicate").exit_code, 2);
  EXPECT_EQ(Cli("stat").exit_code, 2);
  EXPECT_EQ(Cli("").exit_code, 2);
}

TEST(CliTest, ListStatAndInspectAStore) {
  std::string name = testing::UniqueName();
  StoreOptions o;
  o.capacity = 4 << 20;
  o.checksums = true;
  auto s = Store::Create(name, o);
  ASSERT_TRUE(s.ok());
  ObjectId a = PutPattern(*s, 100000), b = PutPattern(*s, 10);
  ASSERT_TRUE(s->Bind("weights", a).ok());
  auto view = s->Get(b);  // one pin, visible in the listing

  CliRun list = Cli("list");
  EXPECT_EQ(list.exit_code, 0) << list.output;
  EXPECT_TRUE(Has(list.output, name + ": 2 objects")) << list.output;
  EXPECT_TRUE(Has(list.output, a.ToString())) << list.output;
  EXPECT_TRUE(Has(list.output, "97.7 KiB")) << list.output;

  CliRun stat = Cli("stat " + name);
  EXPECT_EQ(stat.exit_code, 0);
  EXPECT_TRUE(Has(stat.output, "2 sealed, 0 unsealed")) << stat.output;
  EXPECT_TRUE(Has(stat.output, "pins:            1")) << stat.output;

  CliRun by_id = Cli("inspect " + name + " " + a.ToString());
  EXPECT_EQ(by_id.exit_code, 0) << by_id.output;
  EXPECT_TRUE(Has(by_id.output, "[0] 100000 bytes")) << by_id.output;
  EXPECT_TRUE(Has(by_id.output, "checksums: ok")) << by_id.output;
  CliRun by_name = Cli("inspect " + name + " weights");
  EXPECT_EQ(by_name.output, by_id.output);
  CliRun missing = Cli("inspect " + name + " nothing");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(Has(missing.output, "NotFound")) << missing.output;
  EXPECT_EQ(Cli("stat no-such-store-" + name).exit_code, 1);
}

TEST(CliTest, VerifyPassesThenNamesTheCorruptObjectAndBuffer) {
  testing::TempDir dir;
  std::string path = dir.path() + "/m.zcs";
  ObjectId a, b;
  {
    StoreOptions o;
    o.backing = Backing::kFile;
    o.capacity = 4 << 20;
    auto s = Store::Create(path, o);
    ASSERT_TRUE(s.ok());
    a = PutPattern(*s, 50000);
    b = PutPattern(*s, 70000);
  }
  CliRun ok = Cli("verify " + path);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(Has(ok.output, "2 objects verified")) << ok.output;
  // Flip one byte inside b's only buffer, found by its contents.
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto pattern = testing::Pattern(b, 0, 64);
  size_t at = bytes.find(std::string(reinterpret_cast<const char*>(pattern.data()), 64));
  ASSERT_NE(at, std::string::npos);
  f.seekp(static_cast<std::streamoff>(at + 10));
  f.put(static_cast<char>(bytes[at + 10] ^ 0x40));
  f.close();
  CliRun bad = Cli("verify " + path);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(Has(bad.output, b.ToString())) << bad.output;
  EXPECT_TRUE(Has(bad.output, "buffer 0 checksum mismatch")) << bad.output;
  EXPECT_TRUE(Has(Cli("verify " + dir.path() + "/none.zcs").output, "NotFound"));
}

TEST(CliTest, VerifyOfAStoreWithoutChecksumsSaysNothingWasCheckedAndFails) {
  std::string name = testing::UniqueName();
  StoreOptions o;
  o.capacity = 1 << 20;  // shared memory: no checksums by default
  auto s = Store::Create(name, o);
  ASSERT_TRUE(s.ok());
  PutPattern(*s, 1000);
  CliRun r = Cli("verify " + name);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Has(r.output, "no data could be checked")) << r.output;
  EXPECT_FALSE(Has(r.output, "every checksum matches")) << r.output;
}

TEST(CliTest, VerifySeesAnObjectWhoseStateWasDamaged) {
  // A flipped state used to hide its object from `verify`, which said every
  // checksum matched.
  testing::TempDir dir;
  std::string path = dir.path() + "/s.zcs";
  ObjectId a;
  {
    StoreOptions o;
    o.backing = Backing::kFile;
    o.capacity = 4 << 20;
    o.max_objects = 8;
    auto s = Store::Create(path, o);
    ASSERT_TRUE(s.ok());
    a = PutPattern(*s, 5000);
  }
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::string id(16, '\0');
  std::memcpy(id.data(), &a.hi, 8);
  std::memcpy(id.data() + 8, &a.lo, 8);
  size_t entry = bytes.find(id, 4096);  // the object table starts on page 1
  ASSERT_NE(entry, std::string::npos);
  f.seekp(static_cast<std::streamoff>(entry + 16));  // ObjectEntry::state
  f.put(static_cast<char>(7));
  f.close();
  CliRun bad = Cli("verify " + path);
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_TRUE(Has(bad.output, "unknown state")) << bad.output;
}

TEST(CliTest, GcRemovesAbandonedStoresAndRmRemovesByName) {
  // A private store directory, so that gc runs of other tests cannot race us.
  testing::TempDir dir;
  std::string in_dir = "--shm-dir " + dir.path() + " ";
  std::string dead = testing::UniqueName();
  {
    auto c = testing::Child::Helper({"create-and-hang", dead, dir.path()});
    ASSERT_EQ(c.ReadLine(), "created");
    c.Kill(SIGKILL);
    c.Wait();
  }
  CliRun gc = Cli(in_dir + "gc");
  EXPECT_EQ(gc.exit_code, 0);
  EXPECT_TRUE(Has(gc.output, "removed " + dead)) << gc.output;
  EXPECT_TRUE(Has(gc.output, "1 abandoned store removed")) << gc.output;
  OpenOptions here;
  here.shm_dir = dir.path();
  EXPECT_EQ(Store::Open(dead, here).status().code(), StatusCode::kNotFound);

  std::string kept = testing::UniqueName();
  StoreOptions o;
  o.capacity = 1 << 20;
  o.persistent = true;
  o.shm_dir = dir.path();
  { ASSERT_TRUE(Store::Create(kept, o).ok()); }
  EXPECT_FALSE(Has(Cli(in_dir + "gc").output, kept));  // persistent: not garbage
  CliRun rm = Cli(in_dir + "rm " + kept);
  EXPECT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_EQ(Store::Open(kept, here).status().code(), StatusCode::kNotFound);
  CliRun again = Cli(in_dir + "rm " + kept);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_TRUE(Has(again.output, "NotFound")) << again.output;
}

}  // namespace
}  // namespace zcstore

namespace zcstore {
namespace {

struct Typed {
  static constexpr std::string_view kZcstoreTypeName = "cli.Typed";
  static constexpr uint32_t kZcstoreVersion = 3;
  Array<float> weights;
  template <class Ar>
  void Serialize(Ar& ar) {
    ar(weights);
  }
};

TEST(CliTest, VersionJsonAndOptionsAnywhere) {
  CliRun version = Cli("--version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_TRUE(Has(version.output, std::string("zcstore ") + ZCSTORE_VERSION_STRING)) << version.output;

  testing::TempDir dir;  // a private shm_dir, given after the command
  StoreOptions o;
  o.capacity = 4 << 20;
  o.shm_dir = dir.path();
  std::string name = testing::UniqueName();
  auto s = Store::Create(name, o);
  ASSERT_TRUE(s.ok());
  Typed t;
  t.weights = Array<float>(6000);
  ASSERT_TRUE(t.weights.Reshape({2000, 3}).ok());
  auto id = s->Put(t);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(s->Bind("weights", *id).ok());
  auto other = Store::Open(name, OpenOptions{.shm_dir = dir.path()});  // one more handle
  ASSERT_TRUE(other.ok());

  CliRun inspect = Cli("inspect " + name + " weights --shm-dir " + dir.path());
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_TRUE(Has(inspect.output, "type:      cli.Typed, version 3")) << inspect.output;
  EXPECT_TRUE(Has(inspect.output, "names:     weights")) << inspect.output;
  EXPECT_TRUE(Has(inspect.output, "shape 2000x3")) << inspect.output;
  CliRun json = Cli("--json inspect " + name + " " + id->ToString() + " --shm-dir=" + dir.path());
  EXPECT_TRUE(Has(json.output, "\"type\": \"cli.Typed\", \"type_version\": 3")) << json.output;
  EXPECT_TRUE(Has(json.output, "\"shape\": [2000, 3]")) << json.output;
  EXPECT_TRUE(Has(json.output, "\"names\": [\"weights\"]")) << json.output;

  // list and stat agree on the handles: two, besides the command's own.
  CliRun stat = Cli("stat " + name + " --shm-dir " + dir.path());
  EXPECT_TRUE(Has(stat.output, "handles:         2 open besides this one")) << stat.output;
  CliRun list = Cli("list --shm-dir " + dir.path());
  EXPECT_TRUE(Has(list.output, "2 other handles open")) << list.output;
  CliRun stat_json = Cli("stat --json " + name + " --shm-dir " + dir.path());
  EXPECT_TRUE(Has(stat_json.output, "\"other_handles\": 2")) << stat_json.output;
  CliRun list_json = Cli("list --json --shm-dir " + dir.path());
  EXPECT_TRUE(Has(list_json.output, "[{\"store\": \"" + name + "\"")) << list_json.output;
  EXPECT_TRUE(Has(list_json.output, "\"other_handles\": 2")) << list_json.output;
  EXPECT_EQ(Cli("stat " + name + " --no-such-option").exit_code, 2);
}

}  // namespace
}  // namespace zcstore
