// Linux implementation of platform_internal.h.
#include <dirent.h>
#include <linux/futex.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <sstream>

#include "store/platform_internal.h"

namespace zcstore::internal::platform {
namespace {

uint64_t ReadBootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return std::hash<std::string>{}(id) | 1;  // never 0, so 0 means "unknown"
}

// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or 0.
uint64_t ReadStartTicks(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return 0;
  // The command name (field 2) may hold spaces and parentheses: skip past the
  // last ')' and count fields from there (field 3 follows it).
  size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i) {
    if (!(rest >> field)) return 0;
  }
  return std::strtoull(field.c_str(), nullptr, 10);
}

}  // namespace

Status ErrnoStatus(int err, std::string_view what) {
  std::string msg = std::string(what) + ": " + std::strerror(err);
  switch (err) {
    case ENOENT: return NotFound(std::move(msg));
    case EEXIST: return AlreadyExists(std::move(msg));
    case EACCES: case EPERM: case EROFS: return PermissionDenied(std::move(msg));
    case ENOSPC: case EFBIG: case ENOMEM: case EDQUOT: return StoreFull(std::move(msg));
    default: return IOError(std::move(msg));
  }
}

ProcessStamp SelfStamp() {
  static const uint64_t boot_id = ReadBootId();
  ProcessStamp s{};
  s.pid = static_cast<uint32_t>(getpid());
  s.start_ticks = ReadStartTicks(getpid());
  s.boot_id = boot_id;
  return s;
}

bool IsAlive(const ProcessStamp& stamp) {
  static const uint64_t boot_id = ReadBootId();
  if (stamp.pid == 0 || stamp.boot_id != boot_id) return false;
  pid_t pid = static_cast<pid_t>(stamp.pid);
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  uint64_t ticks = ReadStartTicks(pid);
  // 0: /proc does not tell (hidden or absent). Then the PID is all we know.
  return ticks == 0 || stamp.start_ticks == 0 || ticks == stamp.start_ticks;
}

bool LockByte(int fd, uint64_t offset) {
  struct flock l {};
  l.l_type = F_WRLCK;
  l.l_whence = SEEK_SET;
  l.l_start = static_cast<off_t>(offset);
  l.l_len = 1;
  while (fcntl(fd, F_OFD_SETLK, &l) != 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

bool ByteRangeLocked(int fd, uint64_t offset, uint64_t length) {
  struct flock l {};
  l.l_type = F_WRLCK;
  l.l_whence = SEEK_SET;
  l.l_start = static_cast<off_t>(offset);
  l.l_len = static_cast<off_t>(length);
  while (fcntl(fd, F_OFD_GETLK, &l) != 0) {
    if (errno != EINTR) return true;  // cannot tell: say alive, never reap on doubt
  }
  return l.l_type != F_UNLCK;
}

int ReopenFile(int fd, int flags) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  return ::open(path, flags | O_CLOEXEC);
}

Result<int> OpenFile(const std::string& path, int flags, mode_t mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoStatus(errno, "cannot open '" + path + "'");
  if ((flags & O_CREAT) && fchmod(fd, mode) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, "cannot set the mode of '" + path + "'");
  }
  return fd;
}

Status CheckStoreFile(int fd, const std::string& path, bool allow_shared_write) {
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "cannot stat '" + path + "'");
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument("'" + path + "' is not a zcstore store: not a regular file (" +
                           (S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISDIR(st.st_mode) ? "a directory"
                                                                                 : "a special file") +
                           ")");
  }
  if (st.st_uid != UserId()) {
    return PermissionDenied("'" + path + "' belongs to uid " + std::to_string(st.st_uid) +
                            ", not to you (uid " + std::to_string(UserId()) +
                            "): a store is only trusted from its own user; another user may "
                            "have planted it (its owner or root can remove it)");
  }
  if ((st.st_mode & 022) != 0 && !allow_shared_write) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return PermissionDenied("'" + path + "' has mode " + mode +
                            ": its group or others may write it, and so corrupt it; open it with "
                            "OpenOptions::allow_shared_write if that is meant");
  }
  return Status::OK();
}

Result<int> OpenStoreFile(const std::string& path, int flags, bool allow_shared_write) {
  int fd = ::open(path.c_str(), flags | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ELOOP) {
      return PermissionDenied("'" + path + "' is a symbolic link; stores are never opened "
                              "through one (another user may have planted it)");
    }
    return ErrnoStatus(errno, "cannot open '" + path + "'");
  }
  if (Status st = CheckStoreFile(fd, path, allow_shared_write); !st.ok()) {
    ::close(fd);
    return st;
  }
  return fd;
}

Result<uid_t> FileOwner(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "cannot stat '" + path + "'");
  if (!S_ISREG(st.st_mode)) return InvalidArgument("'" + path + "' is not a regular file");
  return st.st_uid;
}

bool NamesFile(const std::string& path, int fd) {
  struct stat by_name, by_fd;
  return lstat(path.c_str(), &by_name) == 0 && fstat(fd, &by_fd) == 0 &&
         by_name.st_dev == by_fd.st_dev && by_name.st_ino == by_fd.st_ino;
}

void CloseFile(int fd) {
  if (fd >= 0) ::close(fd);
}

Status ReserveRange(int fd, uint64_t offset, uint64_t length, std::string_view what) {
  if (length == 0) return Status::OK();
  int err = posix_fallocate(fd, static_cast<off_t>(offset), static_cast<off_t>(length));
  if (err == ENOSPC || err == EFBIG || err == EDQUOT) {
    char size[32];
    std::snprintf(size, sizeof(size), "%.1f MiB", static_cast<double>(length) / (1 << 20));
    return StoreFull("no room in /dev/shm or on disk for " + std::string(what) + " (" + size +
                     "): " + std::strerror(err) +
                     "; free space in /dev/shm or on disk, or ask for less");
  }
  if (err != 0) return ErrnoStatus(err, "cannot reserve space for " + std::string(what));
  return Status::OK();
}

Status ReserveFile(int fd, uint64_t size, std::string_view what, uint64_t reserve) {
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, "cannot size " + std::string(what));
  }
  return ReserveRange(fd, 0, reserve, what);
}

Result<Space> SpaceOf(const std::string& dir) {
  struct statvfs v;
  if (statvfs(dir.c_str(), &v) != 0) return ErrnoStatus(errno, "statvfs of '" + dir + "'");
  return Space{uint64_t{v.f_bavail} * v.f_frsize, uint64_t{v.f_blocks} * v.f_frsize};
}

Result<uint64_t> FileSize(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat");
  return static_cast<uint64_t>(st.st_size);
}

Result<int> CreateMemoryFile(const std::string& label) {
  int fd = memfd_create(("zcstore:" + label).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ErrnoStatus(errno, "memfd_create");
  return fd;
}

Status SealFileSize(int fd) {
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) {
    return ErrnoStatus(errno, "cannot seal the memfd's size");
  }
  return Status::OK();
}

Status LockFile(int fd, bool exclusive, int timeout_ms, std::string_view what) {
  int op = (exclusive ? LOCK_EX : LOCK_SH) | (timeout_ms < 0 ? 0 : LOCK_NB);
  int64_t start_ns = MonotonicNanos();
  long pause_us = 100;
  while (flock(fd, op) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) return ErrnoStatus(errno, "cannot lock " + std::string(what));
    if (timeout_ms == 0) {
      return IOError(std::string(what) + " is locked by another handle " +
                     (exclusive ? "(it is open elsewhere)" : "(a writer has it open)") +
                     "; close that handle first");
    }
    // flock has no timed form: poll, backing off to 10 ms between tries.
    int64_t waited_ms = (MonotonicNanos() - start_ns) / 1000000;
    if (waited_ms >= timeout_ms) {
      return Timeout(std::string(what) + " has been locked by another process for " +
                     std::to_string(waited_ms) + " ms (it is opening the store, or stuck while "
                     "doing so); try again, or find the process with fuser");
    }
    usleep(static_cast<useconds_t>(pause_us));
    pause_us = std::min(pause_us * 2, 10000L);
  }
  return Status::OK();
}

void UnlockFile(int fd) { flock(fd, LOCK_UN); }

Status RenameNoReplace(const std::string& from, const std::string& to) {
  if (renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0) {
    return ErrnoStatus(errno, "cannot publish '" + to + "'");
  }
  return Status::OK();
}

Status RemoveFile(const std::string& path) {
  if (unlink(path.c_str()) != 0) return ErrnoStatus(errno, "cannot remove '" + path + "'");
  return Status::OK();
}

Result<std::vector<std::string>> ListDirectory(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return ErrnoStatus(errno, "cannot list '" + dir + "'");
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') names.emplace_back(e->d_name);
  }
  closedir(d);
  return names;
}

Result<std::byte*> MapFile(int fd, uint64_t size, bool writable, uint64_t offset) {
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = mmap(nullptr, size, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap of " + std::to_string(size) + " bytes");
  return static_cast<std::byte*>(p);
}

void Unmap(std::byte* addr, uint64_t size) {
  if (addr != nullptr) munmap(addr, size);
}

Status Protect(std::byte* addr, uint64_t size, bool writable) {
  if (size == 0) return Status::OK();
  if (mprotect(addr, size, PROT_READ | (writable ? PROT_WRITE : 0)) != 0) {
    return ErrnoStatus(errno, "mprotect");
  }
  return Status::OK();
}

Status SyncRange(std::byte* addr, uint64_t size) {
  auto start = reinterpret_cast<uintptr_t>(addr) & ~(kPageSize - 1);
  auto end = AlignUp(reinterpret_cast<uintptr_t>(addr) + size, kPageSize);
  if (msync(reinterpret_cast<void*>(start), end - start, MS_SYNC) != 0) {
    return ErrnoStatus(errno, "msync");
  }
  return Status::OK();
}

bool FutexWait(uint32_t* word, uint32_t expected, int timeout_ms) {
  timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_ms < 0 ? nullptr : &ts,
                    nullptr, 0);
  return !(rc != 0 && errno == ETIMEDOUT);
}

void FutexWake(uint32_t* word) { syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0); }

Result<int> CreateDoorbell() {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "eventfd");
  return fd;
}

void RingDoorbell(int fd) {
  uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}

void DrainDoorbell(int fd) {
  uint64_t v;
  (void)!read(fd, &v, sizeof(v));
}

Result<int> OpenProcessHandle(pid_t pid) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return ErrnoStatus(errno, "pidfd_open");
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

extern "C" char** environ;

Result<pid_t> SpawnProcess(const std::vector<std::string>& argv,
                           const std::vector<std::pair<int, int>>& fds,
                           const std::vector<std::string>& env) {
  // Move every source above the targets first: a dup2 onto itself would
  // leave close-on-exec set, and a source could sit on another's target.
  std::vector<int> high;
  for (auto [src, dst] : fds) {
    high.push_back(src < 0 ? -1 : fcntl(src, F_DUPFD_CLOEXEC, 100));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  for (size_t i = 0; i < fds.size(); ++i) {
    if (high[i] >= 0) posix_spawn_file_actions_adddup2(&fa, high[i], fds[i].second);
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  for (int h : high) {
    if (h >= 0) ::close(h);
  }
  if (rc != 0) return ErrnoStatus(rc, "cannot start '" + argv[0] + "'");
  return pid;
}

bool DieWithParent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  return getppid() == parent;
}

bool OnMainThread() { return gettid() == getpid(); }

ReapResult TryReap(pid_t pid, int pidfd, int* wait_status) {
  siginfo_t info{};
  int rc = pidfd >= 0 ? waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG)
                      : waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG);
  if (rc != 0) {
    // ECHILD: not our child to wait for any more; a readable pidfd (or a PID
    // kill(2) no longer finds) means it exited.
    if (errno == ECHILD && (pidfd >= 0 || kill(pid, 0) != 0)) return ReapResult::kGone;
    return ReapResult::kRunning;
  }
  if (info.si_pid == 0) return ReapResult::kRunning;
  *wait_status = info.si_code == CLD_EXITED ? W_EXITCODE(info.si_status, 0) : info.si_status;
  return ReapResult::kReaped;
}

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::string DescribeExit(int st) {
  if (WIFSIGNALED(st)) {
    return "killed by signal " + std::to_string(WTERMSIG(st)) + " (" + strsignal(WTERMSIG(st)) + ")";
  }
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  return "stopped";
}

Status MakeLogPipe(int fds[2]) {
  if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe");
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  return Status::OK();
}

void KillProcess(pid_t pid, int signal) {
  if (pid > 0) kill(pid, signal);
}

std::atomic<uint64_t> fork_generation{0};

namespace {
// Installed when the library is loaded, before any handle can exist.
[[maybe_unused]] const bool fork_counter_installed = pthread_atfork(nullptr, nullptr, [] {
  fork_generation.fetch_add(1, std::memory_order_relaxed);
}) == 0;
}  // namespace

void FillRandom(void* out, size_t size) {
  auto* p = static_cast<unsigned char*>(out);
  while (size > 0) {
    ssize_t n = getrandom(p, size, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      internal::DieWithMessage("getrandom failed");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

int64_t UnixNanos() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

uid_t UserId() { return geteuid(); }

}  // namespace zcstore::internal::platform
