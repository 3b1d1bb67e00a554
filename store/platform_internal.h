// Every operating-system call zcstore makes goes through here, so that a port
// to another OS touches this header's implementation and nothing else.
#ifndef ZCSTORE_STORE_PLATFORM_INTERNAL_H_
#define ZCSTORE_STORE_PLATFORM_INTERNAL_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "store/layout_internal.h"
#include "zcstore/status.h"

namespace zcstore::internal::platform {

// A Status for errno `err` while doing `what`: ENOENT -> NotFound, EEXIST ->
// AlreadyExists, EACCES/EPERM/EROFS -> PermissionDenied, ENOSPC/EFBIG/ENOMEM ->
// StoreFull, anything else IOError. The message ends with strerror(err).
Status ErrnoStatus(int err, std::string_view what);

// The calling process, as stored in client and creator records.
ProcessStamp SelfStamp();
// True unless the process `stamp` names is known to be gone: another PID,
// start time or boot. A process whose /proc entry cannot be read (hidepid,
// no /proc) counts as alive while kill(2) finds its PID, and so does a
// zombie (its mappings go only when it is reaped). The fallback for
// handles that cannot hold a liveness lock (see LockByte).
bool IsAlive(const ProcessStamp& stamp);

// Byte locks owned by an open file description (F_OFD_SETLK): the kernel
// drops them when the last descriptor of that description closes, which
// happens when its process dies, however it dies, in whatever PID
// namespace. A store's clients prove they are alive with them.
// Takes a write lock on byte `offset` without waiting: false if another
// description holds it (or the call failed).
bool LockByte(int fd, uint64_t offset);
// True if a description other than `fd`'s holds a lock on any byte of
// [offset, offset + length). (A lock of `fd`'s own description is not seen.)
bool ByteRangeLocked(int fd, uint64_t offset, uint64_t length);
// A new open file description of the file open as `fd` (through
// /proc/self/fd), close-on-exec; -1 if there is none to be had.
int ReopenFile(int fd, int flags);

// open(2) that, when creating, sets exactly `mode` whatever the umask.
Result<int> OpenFile(const std::string& path, int flags, mode_t mode);
// Opens an existing store file (`flags`: O_RDONLY or O_RDWR) without
// following a symbolic link and without blocking (a FIFO under a store's
// name would block open(2) forever), then checks what it opened with
// CheckStoreFile. Errors: NotFound, PermissionDenied, InvalidArgument.
Result<int> OpenStoreFile(const std::string& path, int flags, bool allow_shared_write);
// A store file must be a regular file owned by the effective user that
// neither its group nor others may write, unless `allow_shared_write`:
// anyone who can write a store's tables can corrupt it or hold its lock.
// PermissionDenied (naming the owner and the mode) or InvalidArgument (not
// a regular file) otherwise.
Status CheckStoreFile(int fd, const std::string& path, bool allow_shared_write);
// The owner of the regular file at `path` (lstat: a link is not followed).
// NotFound if nothing is there; InvalidArgument if it is not a regular file.
Result<uid_t> FileOwner(const std::string& path);
// True if `path` (not following a link) still names the file open as `fd`.
bool NamesFile(const std::string& path, int fd);
void CloseFile(int fd);
// Sets the size and reserves the first `reserve` bytes (posix_fallocate), so
// writes there cannot fail for lack of space. ENOSPC -> StoreFull naming `what`.
Status ReserveFile(int fd, uint64_t size, std::string_view what, uint64_t reserve);
// Bytes free (to this user) and in all on the filesystem holding `dir`.
struct Space {
  uint64_t free = 0, total = 0;
};
Result<Space> SpaceOf(const std::string& dir);
// Reserves [offset, offset + length) of a file already sized.
Status ReserveRange(int fd, uint64_t offset, uint64_t length, std::string_view what);
Result<uint64_t> FileSize(int fd);
// An anonymous memory file whose size is sealed once set (memfd_create).
Result<int> CreateMemoryFile(const std::string& label);
// Forbids any further size change (F_SEAL_GROW | F_SEAL_SHRINK).
Status SealFileSize(int fd);
// flock(2), waiting at most `timeout_ms` for a lock held elsewhere (0: not
// at all; < 0: without limit). A lock still held then is IOError (no wait)
// or Timeout naming `what`.
Status LockFile(int fd, bool exclusive, int timeout_ms, std::string_view what);
void UnlockFile(int fd);
// rename(2) that fails with AlreadyExists instead of replacing `to`.
Status RenameNoReplace(const std::string& from, const std::string& to);
Status RemoveFile(const std::string& path);
Result<std::vector<std::string>> ListDirectory(const std::string& dir);

// mmap(MAP_SHARED) of `size` bytes of the file from `offset` (a multiple of
// the page size); `writable` adds PROT_WRITE.
Result<std::byte*> MapFile(int fd, uint64_t size, bool writable, uint64_t offset = 0);
void Unmap(std::byte* addr, uint64_t size);
// mprotect of a page-aligned range.
Status Protect(std::byte* addr, uint64_t size, bool writable);
// msync(MS_SYNC) of the pages covering [addr, addr+size).
Status SyncRange(std::byte* addr, uint64_t size);

// --- processes and wake-ups (the pool) ---

// futex(FUTEX_WAIT) on a shared word: sleeps while *word == expected, at most
// `timeout_ms` (< 0: no limit). Returns false on timeout.
bool FutexWait(uint32_t* word, uint32_t expected, int timeout_ms);
void FutexWake(uint32_t* word);
// An eventfd (close-on-exec) used as a doorbell; Ring adds 1, Drain reads.
Result<int> CreateDoorbell();
void RingDoorbell(int fd);
void DrainDoorbell(int fd);
// A file descriptor that polls readable when process `pid` exits (pidfd_open).
Result<int> OpenProcessHandle(pid_t pid);
// Starts `argv[0]` with `fds` placed at descriptors 0.. as given (pairs of
// {source fd, target fd}; -1 sources are skipped), and this process's
// environment plus `env` ("NAME=value" entries). Returns the pid.
Result<pid_t> SpawnProcess(const std::vector<std::string>& argv,
                           const std::vector<std::pair<int, int>>& fds,
                           const std::vector<std::string>& env = {});
// Asks the kernel to SIGKILL this process when its parent thread dies, and
// returns false if the parent is already gone (getppid() != parent).
bool DieWithParent(pid_t parent);
// Whether the calling thread is its process's main (first) thread, the one
// that lives as long as the process unless it calls pthread_exit.
bool OnMainThread();
// Reaps child `pid` (whose pidfd is `pidfd`, or -1) if it exited.
enum class ReapResult { kRunning, kReaped, kGone };
// kReaped: it exited and *wait_status says how. kGone: it exited, but its
// status was collected elsewhere (SIGCHLD ignored, or the program reaps its
// children itself). kRunning: it runs on.
ReapResult TryReap(pid_t pid, int pidfd, int* wait_status);
// Monotonic nanoseconds, the same clock in every process of the machine.
int64_t MonotonicNanos();
// "killed by signal 9 (Killed)" or "exited with status 3".
std::string DescribeExit(int wait_status);
// Pipe (both ends close-on-exec), the read end non-blocking.
Status MakeLogPipe(int fds[2]);
void KillProcess(pid_t pid, int signal);

// How many times this process's ancestry forked into it: 0 in the process
// that loaded the library, +1 in each child of fork(2) since (a
// pthread_atfork handler installed at load). A handle remembers it at open,
// so it can tell with one load that it was inherited by a forked child.
extern std::atomic<uint64_t> fork_generation;
inline uint64_t ForkGeneration() { return fork_generation.load(std::memory_order_relaxed); }

void FillRandom(void* out, size_t size);
int64_t UnixNanos();
uid_t UserId();

}  // namespace zcstore::internal::platform

#endif  // ZCSTORE_STORE_PLATFORM_INTERNAL_H_
