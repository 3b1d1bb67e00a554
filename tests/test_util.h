// Helpers shared by the tests: unique store names, deterministic contents,
// and real child processes driven through pipes (never sleeps).
#ifndef ZCSTORE_TESTS_TEST_UTIL_H_
#define ZCSTORE_TESTS_TEST_UTIL_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "zcstore/object_id.h"

namespace zcstore::testing {

// True in a ThreadSanitizer build (GCC and clang define __SANITIZE_THREAD__
// or the feature), for the few checks TSan itself makes impossible.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kThreadSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
#else
inline constexpr bool kThreadSanitizer = false;
#endif

// "t<pid>-<n>": unique within a run and across concurrently running tests.
std::string UniqueName(const std::string& tag = "t");
// A temporary directory for file stores, removed with its contents by the
// destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
 private:
  std::string path_;
};

// Byte i of buffer `index` of object `id`: a pattern a reader can check
// without being told anything but the id.
uint8_t PatternByte(ObjectId id, size_t index, size_t i);
std::vector<std::byte> Pattern(ObjectId id, size_t index, size_t size);
// Index of the first byte that differs from the pattern, or -1.
int64_t FirstMismatch(ObjectId id, size_t index, std::span<const std::byte> bytes);

// A real process running the test helper (or any program), with its stdin
// and stdout as pipes. Destroying it kills and reaps the process.
class Child {
 public:
  // Runs the zcstore_test_helper executable with `args`. If `pass_fd` >= 0,
  // the child gets it as descriptor 3.
  static Child Helper(const std::vector<std::string>& args, int pass_fd = -1);
  // Runs `exe` with `args` the same way.
  static Child Run(const std::string& exe, const std::vector<std::string>& args, int pass_fd = -1);
  Child(Child&&) noexcept;
  Child& operator=(Child&&) = delete;
  ~Child();

  // Next line of the child's stdout without the newline; "" on EOF or if
  // nothing comes within `timeout_ms` (then timed_out() is true).
  std::string ReadLine(int timeout_ms = 20000);
  bool timed_out() const { return timed_out_; }
  void WriteLine(const std::string& line);
  void CloseStdin();
  void Kill(int sig);
  // Waits for exit; returns the raw wait status (WIFEXITED etc.), or -1 if
  // it has not exited after `timeout_ms` (it is then killed).
  int Wait(int timeout_ms = 20000);
  pid_t pid() const { return pid_; }

 private:
  Child() = default;
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string buffered_;
  bool timed_out_ = false;
  bool reaped_ = false;
};

// "<dev> <inode> <file offset> <perms>" of the mapping of this process that
// holds `addr` (from /proc/self/maps): what backs those bytes, not what they
// contain. "none" if no mapping holds it.
std::string MappingOf(const void* addr);

// Names of this user's zcstore segments currently in /dev/shm.
std::vector<std::string> SegmentsInDevShm();

}  // namespace zcstore::testing

#endif  // ZCSTORE_TESTS_TEST_UTIL_H_
