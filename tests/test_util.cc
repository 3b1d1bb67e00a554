#include "tests/test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

extern char** environ;

namespace zcstore::testing {

std::string UniqueName(const std::string& tag) {
  static std::atomic<int> counter{0};
  return tag + std::to_string(getpid()) + "-" + std::to_string(counter++);
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "zcstore-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

uint8_t PatternByte(ObjectId id, size_t index, size_t i) {
  uint64_t x = id.lo ^ (index * 0x9E3779B97F4A7C15ull) ^ (i / 8 * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  return static_cast<uint8_t>(x >> (8 * (i % 8)));
}

std::vector<std::byte> Pattern(ObjectId id, size_t index, size_t size) {
  std::vector<std::byte> out(size);
  for (size_t i = 0; i < size; ++i) out[i] = std::byte{PatternByte(id, index, i)};
  return out;
}

int64_t FirstMismatch(ObjectId id, size_t index, std::span<const std::byte> bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != std::byte{PatternByte(id, index, i)}) return static_cast<int64_t>(i);
  }
  return -1;
}

Child Child::Helper(const std::vector<std::string>& args, int pass_fd) {
  return Run(ZCSTORE_TEST_HELPER, args, pass_fd);
}

Child Child::Run(const std::string& exe, const std::vector<std::string>& args, int pass_fd) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  if (pass_fd >= 0) posix_spawn_file_actions_adddup2(&fa, pass_fd, 3);
  std::vector<std::string> argv_s = {exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  Child c;
  int rc = posix_spawn(&c.pid_, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (rc != 0) throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
  c.in_ = in[1];
  c.out_ = out[0];
  return c;
}

Child::Child(Child&& o) noexcept
    : pid_(o.pid_), in_(o.in_), out_(o.out_), buffered_(std::move(o.buffered_)),
      timed_out_(o.timed_out_), reaped_(o.reaped_) {
  o.pid_ = -1;
  o.in_ = o.out_ = -1;
}

Child::~Child() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (in_ >= 0) close(in_);
  if (out_ >= 0) close(out_);
}

std::string Child::ReadLine(int timeout_ms) {
  timed_out_ = false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    size_t nl = buffered_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffered_.substr(0, nl);
      buffered_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out_ = true;
      return "";
    }
    pollfd p{out_, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;
    char buf[4096];
    ssize_t n = read(out_, buf, sizeof(buf));
    if (n <= 0) return "";
    buffered_.append(buf, static_cast<size_t>(n));
  }
}

void Child::WriteLine(const std::string& line) {
  std::string l = line + "\n";
  (void)!write(in_, l.data(), l.size());
}

void Child::CloseStdin() {
  if (in_ >= 0) close(in_);
  in_ = -1;
}

void Child::Kill(int sig) { kill(pid_, sig); }

int Child::Wait(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int status = 0;
  // Poll with a short nap: waitpid has no timeout, and a hung child must fail
  // the test rather than hang it.
  while (true) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      return status;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      reaped_ = true;
      return -1;
    }
    usleep(2000);
  }
}

std::string MappingOf(const void* addr) {
  auto a = reinterpret_cast<uintptr_t>(addr);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t lo, hi;
    unsigned long long off, inode;
    char perms[8], dev[16];
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %7s %llx %15s %llu", &lo, &hi, perms,
                    &off, dev, &inode) == 6 &&
        a >= lo && a < hi) {
      return std::string(dev) + " " + std::to_string(inode) + " " +
             std::to_string(off + (a - lo)) + " " + perms;
    }
  }
  return "none";
}

std::vector<std::string> SegmentsInDevShm() {
  std::vector<std::string> out;
  std::string prefix = "zcstore." + std::to_string(getuid()) + ".";
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) out.push_back(e->d_name);
    }
    closedir(d);
  }
  return out;
}

}  // namespace zcstore::testing
