/* The C ABI from a C11 program: every function, and its error paths.
 *
 * Built with -std=c11 -pedantic -Werror, so it also proves the header is
 * plain C. Each CHECK_CODE names the call, the code it got and the message,
 * and the program exits 1 at the first failure. Shared-memory stores are
 * named c<pid>-*, and every one is closed (so removed) before exit. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zcstore/zcstore_c.h"

static int checks = 0;

#define CHECK(cond)                                                       \
  do {                                                                    \
    ++checks;                                                             \
    if (!(cond)) {                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                            \
    }                                                                     \
  } while (0)

#define CHECK_CODE(call, want)                                                      \
  do {                                                                              \
    int got_ = (call);                                                              \
    ++checks;                                                                       \
    if (got_ != (want)) {                                                           \
      fprintf(stderr, "%s:%d: %s returned %s (%d), want %s: %s\n", __FILE__, __LINE__, \
              #call, zcs_status_name(got_), got_, zcs_status_name(want), zcs_last_error()); \
      exit(1);                                                                      \
    }                                                                               \
    if ((want) != ZCS_OK && zcs_last_error()[0] == '\0') {                          \
      fprintf(stderr, "%s:%d: %s failed without a message\n", __FILE__, __LINE__, #call); \
      exit(1);                                                                      \
    }                                                                               \
  } while (0)

#define OK(call) CHECK_CODE(call, ZCS_OK)

static void Name(char* out, size_t size, const char* tag) {
  snprintf(out, size, "c%ld-%s", (long)getpid(), tag);
}

static zcs_id Id(uint64_t lo) {
  zcs_id id;
  id.hi = 0xc0ffee;
  id.lo = lo;
  return id;
}

static zcs_store* CreateShm(const char* tag, uint64_t capacity, int checksums) {
  char name[64];
  zcs_store_options o;
  zcs_store* s = NULL;
  Name(name, sizeof name, tag);
  OK(zcs_store_options_init(&o));
  o.capacity = capacity;
  o.checksums = (uint32_t)checksums;
  OK(zcs_store_create(name, &o, &s));
  CHECK(s != NULL);
  return s;
}

static void TestLibrary(void) {
  CHECK(strlen(zcs_version()) >= 5);
  CHECK(zcs_abi_version() == ZCS_ABI_VERSION);
  CHECK(strcmp(zcs_status_name(ZCS_OK), "OK") == 0);
  CHECK(strcmp(zcs_status_name(ZCS_STORE_FULL), "StoreFull") == 0);
  CHECK(strcmp(zcs_status_name(ZCS_TASK_FAILED), "TaskFailed") == 0);
  CHECK(strcmp(zcs_status_name(-1), "Unknown") == 0);
  CHECK(strcmp(zcs_status_name(ZCS_TOO_MANY_PINS), "TooManyPins") == 0);
  CHECK(strcmp(zcs_status_name(ZCS_MISUSE), "Misuse") == 0);
  CHECK(strcmp(zcs_status_name(16), "Unknown") == 0);
}

static void TestIds(void) {
  zcs_id a, b, parsed;
  char hex[33];
  OK(zcs_id_random(&a));
  OK(zcs_id_random(&b));
  CHECK(a.hi != b.hi || a.lo != b.lo);
  OK(zcs_id_to_string(a, hex));
  CHECK(strlen(hex) == 32);
  OK(zcs_id_from_string(hex, &parsed));
  CHECK(parsed.hi == a.hi && parsed.lo == a.lo);
  CHECK_CODE(zcs_id_from_string("xyz", &parsed), ZCS_INVALID_ARGUMENT);
  CHECK(strstr(zcs_last_error(), "hex") != NULL || strstr(zcs_last_error(), "32") != NULL);
  CHECK_CODE(zcs_id_from_string(NULL, &parsed), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_id_from_string(hex, NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_id_random(NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_id_to_string(a, NULL), ZCS_INVALID_ARGUMENT);
}

static void TestOptionsAndCreate(void) {
  zcs_store_options o;
  zcs_open_options oo;
  zcs_store* s = NULL;
  zcs_store* again = NULL;
  const char* name = NULL;
  char mine[64];
  uint32_t backing = 0;
  int read_only = -1, fd = -1;

  CHECK_CODE(zcs_store_options_init(NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_open_options_init(NULL), ZCS_INVALID_ARGUMENT);
  OK(zcs_store_options_init(&o));
  CHECK(o.struct_size == sizeof o && o.backing == ZCS_BACKING_SHM);
  CHECK(o.capacity == (uint64_t)1 << 30 && o.max_objects == 65536 && o.mode == 0600);
  CHECK(o.persistent == 0 && o.checksums == 0 && o.shm_dir == NULL);
  OK(zcs_open_options_init(&oo));
  CHECK(oo.struct_size == sizeof oo && oo.lock_timeout_ms == 5000 && oo.read_only == 0);

  CHECK_CODE(zcs_store_create("x", NULL, NULL), ZCS_INVALID_ARGUMENT);
  o.struct_size = 8;
  CHECK_CODE(zcs_store_create("x", &o, &s), ZCS_INVALID_ARGUMENT);
  CHECK(strstr(zcs_last_error(), "zcs_store_options_init") != NULL);
  OK(zcs_store_options_init(&o));
  o.backing = 9;
  CHECK_CODE(zcs_store_create("x", &o, &s), ZCS_INVALID_ARGUMENT);
  CHECK(s == NULL); /* out-parameters are written only on success */
  CHECK_CODE(zcs_store_create("bad/../name", NULL, &s), ZCS_INVALID_ARGUMENT);

  /* A generated name, default options. */
  OK(zcs_store_create(NULL, NULL, &s));
  OK(zcs_store_name(s, &name));
  CHECK(strncmp(name, "anon-", 5) == 0);
  OK(zcs_store_backing(s, &backing, &read_only));
  CHECK(backing == ZCS_BACKING_SHM && read_only == 0);
  OK(zcs_store_fd(s, &fd));
  CHECK(fd >= 0);
  CHECK_CODE(zcs_store_name(NULL, &name), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_store_name(s, NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_store_fd(NULL, &fd), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_store_backing(NULL, &backing, &read_only), ZCS_INVALID_ARGUMENT);
  OK(zcs_store_close(s));
  OK(zcs_store_close(NULL));

  /* A taken name; an absent one; a read-only handle. */
  s = CreateShm("taken", 1 << 20, 0);
  Name(mine, sizeof mine, "taken");
  CHECK_CODE(zcs_store_create(mine, NULL, &again), ZCS_ALREADY_EXISTS);
  CHECK(strstr(zcs_last_error(), mine) != NULL);
  CHECK_CODE(zcs_store_open("c-no-such-store", NULL, &again), ZCS_NOT_FOUND);
  CHECK_CODE(zcs_store_open(NULL, NULL, &again), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_store_open(mine, NULL, NULL), ZCS_INVALID_ARGUMENT);
  oo.struct_size = 1;
  CHECK_CODE(zcs_store_open(mine, &oo, &again), ZCS_INVALID_ARGUMENT);
  OK(zcs_open_options_init(&oo));
  oo.backing = 0;
  CHECK_CODE(zcs_store_open(mine, &oo, &again), ZCS_INVALID_ARGUMENT);
  OK(zcs_open_options_init(&oo));
  oo.read_only = 1;
  OK(zcs_store_open(mine, &oo, &again));
  OK(zcs_store_backing(again, NULL, &read_only));
  CHECK(read_only == 1);
  CHECK_CODE(zcs_put(again, Id(1), "m", 1, NULL, 0), ZCS_PERMISSION_DENIED);
  OK(zcs_store_close(again));
  OK(zcs_store_close(s));
}

static void TestPutGet(void) {
  zcs_store* s = CreateShm("putget", 4 << 20, 0);
  static const char meta[] = "metadata";
  float floats[256];
  char bytes[100];
  zcs_buffer bufs[2];
  zcs_buffer bad;
  zcs_view* v = NULL;
  zcs_id got;
  const void* data = NULL;
  size_t size = 0, n = 0;
  int i, yes = -1;
  zcs_id nil;
  nil.hi = 0;
  nil.lo = 0;

  for (i = 0; i < 256; ++i) floats[i] = (float)i * 0.5f;
  memset(bytes, 7, sizeof bytes);
  bufs[0].data = floats;
  bufs[0].size = sizeof floats;
  bufs[1].data = bytes;
  bufs[1].size = sizeof bytes;

  CHECK_CODE(zcs_put(NULL, Id(1), meta, sizeof meta, bufs, 2), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_put(s, nil, meta, sizeof meta, bufs, 2), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_put(s, Id(1), NULL, 4, bufs, 2), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_put(s, Id(1), meta, sizeof meta, NULL, 2), ZCS_INVALID_ARGUMENT);
  bad.data = NULL;
  bad.size = 10;
  CHECK_CODE(zcs_put(s, Id(1), meta, sizeof meta, &bad, 1), ZCS_INVALID_ARGUMENT);
  CHECK(strstr(zcs_last_error(), "buffers[0]") != NULL);

  OK(zcs_put(s, Id(1), meta, sizeof meta, bufs, 2));
  CHECK_CODE(zcs_put(s, Id(1), meta, sizeof meta, bufs, 2), ZCS_ALREADY_EXISTS);
  OK(zcs_put(s, Id(2), NULL, 0, NULL, 0)); /* an empty object is an object */

  CHECK_CODE(zcs_get(NULL, Id(1), &v), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_get(s, Id(1), NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_get(s, Id(99), &v), ZCS_NOT_FOUND);
  CHECK(v == NULL);
  OK(zcs_get(s, Id(1), &v));
  OK(zcs_view_id(v, &got));
  CHECK(got.hi == Id(1).hi && got.lo == 1);
  OK(zcs_view_metadata(v, &data, &size));
  CHECK(size == sizeof meta && memcmp(data, meta, size) == 0);
  OK(zcs_view_num_buffers(v, &n));
  CHECK(n == 2);
  OK(zcs_view_buffer(v, 0, &data, &size));
  CHECK(size == sizeof floats && memcmp(data, floats, size) == 0);
  CHECK(((uintptr_t)data % 64) == 0);
  OK(zcs_view_buffer(v, 1, &data, &size));
  CHECK(size == sizeof bytes && ((const char*)data)[99] == 7);
  CHECK_CODE(zcs_view_buffer(v, 2, &data, &size), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_view_buffer(NULL, 0, &data, &size), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_view_buffer(v, 0, NULL, &size), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_view_metadata(v, &data, NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_view_num_buffers(v, NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_view_id(NULL, &got), ZCS_INVALID_ARGUMENT);

  OK(zcs_contains(s, Id(1), &yes));
  CHECK(yes == 1);
  OK(zcs_contains(s, Id(99), &yes));
  CHECK(yes == 0);
  CHECK_CODE(zcs_contains(s, Id(1), NULL), ZCS_INVALID_ARGUMENT);

  /* Deleting and closing while the view lives: its bytes stay valid. */
  CHECK_CODE(zcs_delete(NULL, Id(1)), ZCS_INVALID_ARGUMENT);
  OK(zcs_delete(s, Id(1)));
  CHECK_CODE(zcs_delete(s, Id(1)), ZCS_NOT_FOUND);
  {
    zcs_view* gone = NULL;
    CHECK_CODE(zcs_get(s, Id(1), &gone), ZCS_NOT_FOUND);
  }
  OK(zcs_store_close(s));
  OK(zcs_view_buffer(v, 0, &data, &size));
  CHECK(memcmp(data, floats, sizeof floats) == 0);
  OK(zcs_view_release(v));
  OK(zcs_view_release(NULL));
}

static void TestFull(void) {
  zcs_store* s = CreateShm("full", 1 << 20, 0);
  static char big[2 << 20];
  zcs_buffer b;
  zcs_stats st;
  b.data = big;
  b.size = sizeof big;
  CHECK_CODE(zcs_put(s, Id(1), NULL, 0, &b, 1), ZCS_STORE_FULL);
  CHECK(strstr(zcs_last_error(), "capacity") != NULL || strstr(zcs_last_error(), "full") != NULL);
  st.struct_size = sizeof st;
  OK(zcs_stats_get(s, &st));
  CHECK(st.objects == 0 && st.used == 0 && st.unsealed == 0); /* nothing half-written */
  OK(zcs_store_close(s));
}

static void TestBuilder(void) {
  zcs_store* s = CreateShm("builder", 4 << 20, 1);
  size_t sizes[2] = {1 << 16, 10};
  zcs_builder* b = NULL;
  zcs_view* v = NULL;
  void* w = NULL;
  const void* data = NULL;
  size_t size = 0;

  CHECK_CODE(zcs_create_object(s, Id(1), 4, NULL, 2, &b), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_create_object(s, Id(1), 4, sizes, 2, NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_create_object(NULL, Id(1), 4, sizes, 2, &b), ZCS_INVALID_ARGUMENT);
  OK(zcs_create_object(s, Id(1), 4, sizes, 2, &b));
  OK(zcs_builder_metadata(b, &w, &size));
  CHECK(size == 4);
  memcpy(w, "meta", 4);
  OK(zcs_builder_buffer(b, 0, &w, &size));
  CHECK(size == sizes[0] && ((uintptr_t)w % 4096) == 0);
  memset(w, 0xab, size);
  OK(zcs_builder_buffer(b, 1, &w, &size));
  memset(w, 0xcd, size);
  CHECK_CODE(zcs_builder_buffer(b, 2, &w, &size), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_builder_buffer(NULL, 0, &w, &size), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_builder_metadata(b, NULL, &size), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_get(s, Id(1), &v), ZCS_NOT_FOUND); /* invisible until sealed */
  {
    zcs_builder* twin = NULL;
    CHECK_CODE(zcs_create_object(s, Id(1), 0, NULL, 0, &twin), ZCS_ALREADY_EXISTS);
  }
  OK(zcs_builder_seal(b));
  CHECK_CODE(zcs_builder_seal(NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_builder_abort(NULL), ZCS_INVALID_ARGUMENT);

  OK(zcs_get(s, Id(1), &v));
  OK(zcs_view_metadata(v, &data, &size));
  CHECK(size == 4 && memcmp(data, "meta", 4) == 0);
  OK(zcs_view_buffer(v, 0, &data, &size));
  CHECK(((const unsigned char*)data)[size - 1] == 0xab);
  OK(zcs_view_release(v));
  OK(zcs_verify(s, Id(1)));
  CHECK_CODE(zcs_verify(s, Id(2)), ZCS_NOT_FOUND);
  CHECK_CODE(zcs_verify(NULL, Id(1)), ZCS_INVALID_ARGUMENT);
  OK(zcs_verify_all(s));
  CHECK_CODE(zcs_verify_all(NULL), ZCS_INVALID_ARGUMENT);

  /* Abort: never visible, space back at once. */
  OK(zcs_create_object(s, Id(2), 0, sizes, 1, &b));
  OK(zcs_builder_abort(b));
  CHECK_CODE(zcs_get(s, Id(2), &v), ZCS_NOT_FOUND);
  OK(zcs_store_close(s));

  /* Verify on an object sealed without checksums. */
  s = CreateShm("nosum", 1 << 20, 0);
  OK(zcs_put(s, Id(3), "x", 1, NULL, 0));
  CHECK_CODE(zcs_verify(s, Id(3)), ZCS_INVALID_ARGUMENT);
  OK(zcs_store_close(s));
}

static void TestNamesStatsList(void) {
  zcs_store* s = CreateShm("names", 1 << 20, 0);
  zcs_id got;
  zcs_stats st;
  zcs_object_info info[4];
  size_t count = 0;
  char long_name[80];

  OK(zcs_put(s, Id(1), "a", 1, NULL, 0));
  OK(zcs_put(s, Id(2), "bb", 2, NULL, 0));
  CHECK_CODE(zcs_bind(s, "model", Id(9)), ZCS_NOT_FOUND);
  OK(zcs_bind(s, "model", Id(1)));
  CHECK_CODE(zcs_bind(s, "model", Id(2)), ZCS_ALREADY_EXISTS);
  CHECK_CODE(zcs_bind(s, NULL, Id(2)), ZCS_INVALID_ARGUMENT);
  memset(long_name, 'n', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  CHECK_CODE(zcs_bind(s, long_name, Id(2)), ZCS_INVALID_ARGUMENT);
  OK(zcs_lookup(s, "model", &got));
  CHECK(got.lo == 1);
  CHECK_CODE(zcs_lookup(s, "absent", &got), ZCS_NOT_FOUND);
  CHECK_CODE(zcs_lookup(s, "model", NULL), ZCS_INVALID_ARGUMENT);

  st.struct_size = 4;
  CHECK_CODE(zcs_stats_get(s, &st), ZCS_INVALID_ARGUMENT);
  st.struct_size = sizeof st;
  CHECK_CODE(zcs_stats_get(NULL, &st), ZCS_INVALID_ARGUMENT);
  OK(zcs_stats_get(s, &st));
  CHECK(st.objects == 2 && st.names == 1 && st.clients == 1 && st.capacity == 1 << 20);
  CHECK(st.used > 0 && st.used <= st.capacity);

  CHECK_CODE(zcs_list(s, NULL, 4, &count), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_list(s, info, 4, NULL), ZCS_INVALID_ARGUMENT);
  OK(zcs_list(s, NULL, 0, &count));
  CHECK(count == 2);
  OK(zcs_list(s, info, 1, &count)); /* a short array: one entry, the total */
  CHECK(count == 2 && info[0].state == ZCS_SEALED);
  OK(zcs_list(s, info, 4, &count));
  CHECK(count == 2 && info[0].metadata_bytes + info[1].metadata_bytes == 3);
  CHECK(info[0].sealed_unix_ns > 0 && info[0].num_buffers == 0);

  OK(zcs_unbind(s, "model"));
  CHECK_CODE(zcs_unbind(s, "model"), ZCS_NOT_FOUND);
  CHECK_CODE(zcs_unbind(NULL, "model"), ZCS_INVALID_ARGUMENT);
  OK(zcs_bind(s, "again", Id(2)));
  OK(zcs_delete(s, Id(2))); /* deleting unbinds */
  CHECK_CODE(zcs_lookup(s, "again", &got), ZCS_NOT_FOUND);
  OK(zcs_store_close(s));
}

static void TestBackings(void) {
  char dir[] = "/tmp/zcs-capi-XXXXXX";
  char path[128];
  zcs_store_options o;
  zcs_open_options oo;
  zcs_store *s = NULL, *r = NULL;
  zcs_view* v = NULL;
  const void* data = NULL;
  size_t size = 0;
  int fd = -1;
  uint32_t backing = 0;
  char shm[64];

  /* memfd, reopened through its descriptor. */
  OK(zcs_store_options_init(&o));
  o.backing = ZCS_BACKING_MEMFD;
  o.capacity = 1 << 20;
  OK(zcs_store_create("label", &o, &s));
  OK(zcs_put(s, Id(5), "memfd", 5, NULL, 0));
  OK(zcs_store_fd(s, &fd));
  OK(zcs_store_open_fd(fd, 1, &r));
  OK(zcs_store_backing(r, &backing, NULL));
  CHECK(backing == ZCS_BACKING_MEMFD);
  OK(zcs_get(r, Id(5), &v));
  OK(zcs_view_metadata(v, &data, &size));
  CHECK(size == 5 && memcmp(data, "memfd", 5) == 0);
  OK(zcs_view_release(v));
  OK(zcs_store_close(r));
  CHECK(zcs_store_open_fd(-1, 0, &r) != ZCS_OK);
  CHECK_CODE(zcs_store_open_fd(fd, 0, NULL), ZCS_INVALID_ARGUMENT);
  OK(zcs_store_close(s));

  /* A file store, opened read-only as a snapshot. */
  CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/store.zcs", dir);
  OK(zcs_store_options_init(&o));
  o.backing = ZCS_BACKING_FILE;
  o.capacity = 1 << 20;
  OK(zcs_store_create(path, &o, &s));
  OK(zcs_put(s, Id(6), "file", 4, NULL, 0));
  OK(zcs_store_close(s));
  OK(zcs_open_options_init(&oo));
  oo.backing = ZCS_BACKING_FILE;
  oo.read_only = 1;
  OK(zcs_store_open(path, &oo, &r));
  OK(zcs_verify(r, Id(6))); /* file stores always have checksums */
  OK(zcs_store_close(r));
  OK(zcs_store_remove(path, NULL));
  CHECK_CODE(zcs_store_open(path, &oo, &r), ZCS_NOT_FOUND);
  CHECK(rmdir(dir) == 0);

  /* A persistent shm store outlives its creator until removed. */
  Name(shm, sizeof shm, "persistent");
  OK(zcs_store_options_init(&o));
  o.capacity = 1 << 20;
  o.persistent = 1;
  OK(zcs_store_create(shm, &o, &s));
  OK(zcs_store_close(s));
  OK(zcs_store_open(shm, NULL, &r));
  OK(zcs_store_close(r));
  OK(zcs_store_remove(shm, NULL));
  CHECK_CODE(zcs_store_remove(shm, NULL), ZCS_NOT_FOUND);
  CHECK_CODE(zcs_store_remove("bad name!", NULL), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_store_remove(NULL, NULL), ZCS_INVALID_ARGUMENT);
}

/* A forked child's calls on the inherited handle are refused; its own
 * handle works. */
static void TestFork(void) {
  zcs_store* s = CreateShm("fork", 1 << 20, 0);
  const char* name = NULL;
  pid_t pid;
  int status = 0;
  OK(zcs_put(s, Id(1), "x", 1, NULL, 0));
  OK(zcs_store_name(s, &name));
  pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    zcs_view* v = NULL;
    zcs_store* mine = NULL;
    int ok = zcs_get(s, Id(1), &v) == ZCS_INVALID_ARGUMENT &&
             strstr(zcs_last_error(), "open the store again") != NULL &&
             zcs_store_open(name, NULL, &mine) == ZCS_OK && zcs_get(mine, Id(1), &v) == ZCS_OK &&
             zcs_view_release(v) == ZCS_OK && zcs_store_close(mine) == ZCS_OK;
    _exit(ok ? 0 : 1);
  }
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  OK(zcs_store_close(s));
}

/* The message is per thread: a failure in one leaves another's alone. */
static void* FailInThread(void* arg) {
  zcs_id id;
  (void)arg;
  if (zcs_id_from_string("not hex", &id) != ZCS_INVALID_ARGUMENT) return (void*)1;
  return NULL;
}

static void TestThreadLocalError(void) {
  pthread_t t;
  void* result = NULL;
  zcs_store* s = NULL;
  char before[256];
  CHECK_CODE(zcs_store_open("c-absent-for-thread-test", NULL, &s), ZCS_NOT_FOUND);
  snprintf(before, sizeof before, "%s", zcs_last_error());
  CHECK(pthread_create(&t, NULL, FailInThread, NULL) == 0);
  CHECK(pthread_join(t, &result) == 0);
  CHECK(result == NULL);
  CHECK(strcmp(before, zcs_last_error()) == 0);
}


/* ---- misuse: every case is ZCS_MISUSE, never a crash (run under ASan in CI) ---- */

static void PutOne(zcs_store* s, uint64_t lo) {
  static const char data[16] = "0123456789abcdef";
  zcs_buffer b;
  b.data = data;
  b.size = sizeof data;
  OK(zcs_put(s, Id(lo), "m", 1, &b, 1));
}

static void TestMisuse(void) {
  zcs_store* s = CreateShm("misuse", 16 << 20, 0);
  zcs_store* s2 = CreateShm("misuse2", 16 << 20, 0);
  zcs_view* v = NULL;
  zcs_view* v2 = NULL;
  zcs_builder* b = NULL;
  size_t size = 8;
  void* data = NULL;
  const void* cdata = NULL;
  zcs_id id;
  int garbage = 0;
  PutOne(s, 1);
  OK(zcs_get(s, Id(1), &v));
  /* A view outlives its store, and keeps working. */
  OK(zcs_store_close(s));
  OK(zcs_view_metadata(v, &cdata, &size));
  CHECK(size == 1 && memcmp(cdata, "m", 1) == 0);
  /* The store: closed twice, used after close. */
  CHECK_CODE(zcs_store_close(s), ZCS_MISUSE);
  CHECK(strstr(zcs_last_error(), "zcs_store_close") == zcs_last_error());
  CHECK_CODE(zcs_get(s, Id(1), &v2), ZCS_MISUSE);
  CHECK(strstr(zcs_last_error(), "zcs_get: store is not an open zcs_store") != NULL);
  CHECK_CODE(zcs_contains(s, Id(1), &garbage), ZCS_MISUSE);
  /* The view: released twice. */
  OK(zcs_view_release(v));
  CHECK_CODE(zcs_view_release(v), ZCS_MISUSE);
  CHECK_CODE(zcs_view_id(v, &id), ZCS_MISUSE);
  /* Handles of another kind, and values that were never handles. */
  CHECK_CODE(zcs_get((zcs_store*)v, Id(1), &v2), ZCS_MISUSE);
  CHECK_CODE(zcs_store_close((zcs_store*)&garbage), ZCS_MISUSE);
  CHECK_CODE(zcs_view_release((zcs_view*)(uintptr_t)0xdeadbeef), ZCS_MISUSE);
  /* A builder: sealed twice; and one that outlives its store. */
  OK(zcs_create_object(s2, Id(2), 4, &size, 1, &b));
  OK(zcs_builder_buffer(b, 0, &data, &size));
  memset(data, 7, size);
  OK(zcs_builder_seal(b));
  CHECK_CODE(zcs_builder_seal(b), ZCS_MISUSE);
  CHECK_CODE(zcs_builder_abort(b), ZCS_MISUSE);
  OK(zcs_create_object(s2, Id(3), 4, &size, 1, &b));
  OK(zcs_store_close(s2));
  CHECK_CODE(zcs_builder_buffer(b, 0, &data, &size), ZCS_MISUSE);
  CHECK_CODE(zcs_builder_seal(b), ZCS_MISUSE);
  CHECK(strstr(zcs_last_error(), "store was closed") != NULL);
  CHECK_CODE(zcs_builder_seal(b), ZCS_MISUSE); /* the seal freed it */
}

/* One thread closes a store while another loops on zcs_get: the calls in
 * flight finish, later ones get ZCS_MISUSE, and nothing crashes. */
struct GetLoop {
  zcs_store* store;
  atomic_int started;
  int ok, misuse, other; /* read once the thread is joined */
};

static void* GetUntilClosed(void* arg) {
  struct GetLoop* g = (struct GetLoop*)arg;
  zcs_view* v = NULL;
  for (int i = 0; i < 2000000; ++i) {
    int rc = zcs_get(g->store, Id(1), &v);
    atomic_store(&g->started, 1);
    if (rc == ZCS_OK) {
      ++g->ok;
      if (zcs_view_release(v) != ZCS_OK) ++g->other; /* (checks is the main thread's) */
    } else if (rc == ZCS_MISUSE) {
      ++g->misuse;
      break;
    } else {
      ++g->other;
      break;
    }
  }
  return NULL;
}

static void TestCloseRacingGets(void) {
  for (int round = 0; round < 20; ++round) {
    struct GetLoop g;
    pthread_t t;
    memset(&g, 0, sizeof g);
    g.store = CreateShm("race", 16 << 20, 0);
    PutOne(g.store, 1);
    CHECK(pthread_create(&t, NULL, GetUntilClosed, &g) == 0);
    while (!atomic_load(&g.started)) sched_yield();
    OK(zcs_store_close(g.store));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(g.misuse == 1 && g.other == 0 && g.ok > 0);
  }
}

/* The last error of a handle, read on another thread than the call's. */
static void* FailOnHandle(void* arg) {
  zcs_view* v = NULL;
  return (void*)(intptr_t)zcs_get((zcs_store*)arg, Id(424242), &v);
}

static void TestLastErrorOfAHandle(void) {
  zcs_store* s = CreateShm("lasterr", 16 << 20, 0);
  pthread_t t;
  void* rc = NULL;
  char buf[256];
  char small[8];
  size_t length = 0;
  OK(zcs_store_last_error(s, buf, sizeof buf, &length));
  CHECK(length == 0 && buf[0] == '\0');
  CHECK(pthread_create(&t, NULL, FailOnHandle, s) == 0);
  CHECK(pthread_join(t, &rc) == 0);
  CHECK((intptr_t)rc == ZCS_NOT_FOUND);
  OK(zcs_store_last_error(s, buf, sizeof buf, &length));
  CHECK(strstr(buf, "zcs_get: ") == buf && length == strlen(buf));
  OK(zcs_store_last_error(s, small, sizeof small, &length)); /* cut, NUL-terminated */
  CHECK(strlen(small) == sizeof small - 1 && length > sizeof small);
  OK(zcs_store_close(s));
  CHECK_CODE(zcs_store_last_error(s, buf, sizeof buf, &length), ZCS_MISUSE);
}

/* ---- the details: arguments refused with their own codes, C names ---- */

static void TestDetails(void) {
  zcs_store_options o;
  zcs_open_options oo;
  zcs_store* s = NULL;
  zcs_store* again = NULL;
  char name[64];
  char path[128];
  char shm_path[160];
  size_t sizes[2] = {100, 1 << 20};
  uint64_t capacity = 0;
  zcs_buffer b;
  struct stat st;
  pid_t holder;
  int pipefd[2];
  char c;
  CHECK(zcs_version_number() >= 1000);
  OK(zcs_capacity_for(10, sizes, 2, ZCS_BACKING_SHM, &capacity));
  CHECK(capacity >= 100 + (1 << 20) && capacity % 4096 == 0);
  CHECK_CODE(zcs_store_open_fd(-1, 0, &s), ZCS_INVALID_ARGUMENT);
  /* shm_dir: "" and relative directories are refused, for create and remove. */
  OK(zcs_store_options_init(&o));
  o.shm_dir = "";
  Name(name, sizeof name, "dir");
  CHECK_CODE(zcs_store_create(name, &o, &s), ZCS_INVALID_ARGUMENT);
  CHECK(strstr(zcs_last_error(), "zcs_store_create: shm_dir") == zcs_last_error());
  o.shm_dir = "relative/dir";
  CHECK_CODE(zcs_store_create(name, &o, &s), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_store_remove(name, ""), ZCS_INVALID_ARGUMENT);
  /* Messages use C names, never C++ ones. */
  CHECK_CODE(zcs_store_remove("bad name!", NULL), ZCS_INVALID_ARGUMENT);
  CHECK(strstr(zcs_last_error(), "zcs_store_remove: ") == zcs_last_error());
  CHECK(strstr(zcs_last_error(), "zcs_open_options.backing = ZCS_BACKING_FILE") != NULL);
  CHECK(strstr(zcs_last_error(), "::") == NULL && strstr(zcs_last_error(), "operator") == NULL);
  /* mode: permission bits only. */
  OK(zcs_store_options_init(&o));
  o.mode = 0xFFFFFFFFu;
  OK(zcs_store_create(name, &o, &s));
  snprintf(shm_path, sizeof shm_path, "/dev/shm/zcstore.%d.%s", (int)getuid(), name);
  CHECK(stat(shm_path, &st) == 0);
  CHECK((st.st_mode & 07777) == 0777);
  OK(zcs_store_close(s));
  OK(zcs_store_create(name, NULL, &s));
  /* Huge buffer counts: INVALID_ARGUMENT, not an out-of-memory IO_ERROR. */
  b.data = "x";
  b.size = 1;
  CHECK_CODE(zcs_put(s, Id(9), NULL, 0, &b, SIZE_MAX / 2), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_create_object(s, Id(9), 0, sizes, SIZE_MAX / 4, NULL), ZCS_INVALID_ARGUMENT);
  /* Names: UTF-8 only. */
  PutOne(s, 10);
  CHECK_CODE(zcs_bind(s, "caf\xc3\xa9", Id(10)), ZCS_OK);
  CHECK_CODE(zcs_bind(s, "bad\xff", Id(10)), ZCS_INVALID_ARGUMENT);
  CHECK_CODE(zcs_bind(s, "\xc0\xaf", Id(10)), ZCS_INVALID_ARGUMENT); /* overlong */
  /* lock_timeout_ms past 2^63 is no limit: it waits for a lock held a while
   * (a wrap to 0 would give up at once). */
  CHECK(pipe(pipefd) == 0);
  holder = fork();
  CHECK(holder >= 0);
  if (holder == 0) {
    int fd = open(shm_path, O_RDONLY);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) _exit(1);
    if (write(pipefd[1], "x", 1) != 1) _exit(1);
    usleep(300 * 1000);
    _exit(0);
  }
  CHECK(read(pipefd[0], &c, 1) == 1);
  OK(zcs_open_options_init(&oo));
  oo.lock_timeout_ms = UINT64_MAX;
  OK(zcs_store_open(name, &oo, &again));
  OK(zcs_store_close(again));
  CHECK(waitpid(holder, NULL, 0) == holder);
  close(pipefd[0]);
  close(pipefd[1]);
  OK(zcs_store_close(s));
  /* A file store created by a bare name is removed by it. */
  snprintf(path, sizeof path, "c%ld-bare", (long)getpid());
  OK(zcs_store_options_init(&o));
  o.backing = ZCS_BACKING_FILE;
  o.capacity = 1 << 20;
  OK(zcs_store_create(path, &o, &s));
  OK(zcs_store_close(s));
  OK(zcs_store_remove(path, NULL));
  CHECK(access(path, F_OK) != 0);
}

int main(void) {
  TestLibrary();
  TestIds();
  TestOptionsAndCreate();
  TestPutGet();
  TestFull();
  TestBuilder();
  TestNamesStatsList();
  TestBackings();
  TestFork();
  TestThreadLocalError();
  TestMisuse();
  TestCloseRacingGets();
  TestLastErrorOfAHandle();
  TestDetails();
  printf("capi_test: %d checks passed\n", checks);
  return 0;
}
