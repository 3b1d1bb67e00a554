// The worker side of the pool: the task registry, the loop that runs tasks,
// and the entry point of a spawned worker process.
#include <cxxabi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "pool/pool_internal.h"
#include "store/platform_internal.h"

namespace zcstore {
namespace internal {

namespace {
std::vector<TaskInfo>& MutableRegistry() {
  static std::vector<TaskInfo> registry;
  return registry;
}
}  // namespace

bool RegisterTaskInfo(TaskInfo info) {
  auto& r = MutableRegistry();
  auto at = std::lower_bound(r.begin(), r.end(), info.name,
                             [](const TaskInfo& t, const std::string& n) { return t.name < n; });
  if (at != r.end() && at->name == info.name) {
    std::fprintf(stderr, "zcstore: task '%s' is registered twice\n", info.name.c_str());
    std::abort();  // a bug in the program, not an error
  }
  r.insert(at, std::move(info));
  return true;
}

const std::vector<TaskInfo>& Registry() { return MutableRegistry(); }

uint64_t RegistryHash() {
  std::string text = "control-layout-" + std::to_string(kControlLayout) + ";";
  for (const TaskInfo& t : Registry())
    text += t.name + "(" + t.arg_type + ")->" + t.result_type + ";";
  return HashString(text, 0x706F6F6C);
}

Store& WorkerStore(TaskContext& ctx) { return *ctx.w_->store; }
ObjectId ResultIdOf(TaskContext& ctx) { return ctx.w_->result_id; }

std::string DemangledTypeName(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(type.name());
}

const void* AttachedObject(TaskContext& ctx, ObjectId id, std::type_index type) {
  auto it = ctx.w_->attached.find(id);
  if (it == ctx.w_->attached.end()) return nullptr;
  if (it->second.type != type) {
    throw std::runtime_error("shared object " + id.ToString() + " is used as two different types");
  }
  return it->second.value;
}

void RememberAttached(TaskContext& ctx, ObjectId id, std::type_index type,
                      std::shared_ptr<const void> object, const void* value) {
  ctx.w_->attached.insert_or_assign(id, WorkerState::Attached{type, std::move(object), value});
}

namespace {

// Keeps waiting while the parent lives (process workers only).
bool ParentAlive(const WorkerState& w) { return w.parent == 0 || getppid() == w.parent; }

bool Send(WorkerState& w, std::span<const std::byte> msg) {
  if (!w.responses.Push(msg, w.spin_us, 100, [&] { return ParentAlive(w); })) return false;
  // Pairs with the fences in the parent's WaitFor: either a waiting caller's
  // drain sees this answer, or we see that caller here and wake it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  ControlHeader* c = w.control;
  if (c->callers_spinning.load(std::memory_order_relaxed) != 0) return true;
  if (c->callers_sleeping.load(std::memory_order_relaxed) != 0) {
    c->answer_seq.fetch_add(1, std::memory_order_release);
    platform::FutexWake(reinterpret_cast<uint32_t*>(&c->answer_seq));
    return true;
  }
  platform::RingDoorbell(w.doorbell);
  return true;
}

// Runs the items of one Run message and answers, splitting the answer into
// several Done messages if it grows past what a ring message may hold.
bool RunTasks(WorkerState& w, MessageReader& in) {
  uint64_t job, nonce, first;
  uint32_t task, count;
  uint8_t flags, slot;
  if (!in.U64(&job) || !in.U64(&nonce) || !in.U8(&flags) || !in.U8(&slot) || !in.U32(&task) ||
      !in.U64(&first) || !in.U32(&count) || slot >= kClaimsPerWorker) {
    return false;
  }
  std::atomic<uint64_t>& claim = w.claims[slot];
  const auto& registry = Registry();
  MessageWriter& out = w.answer;
  uint64_t out_first = first;
  uint32_t out_count = 0;
  size_t count_at = 0;
  auto start = [&] {
    out.Clear();
    out.U8(kDone);
    out.U64(job);
    out.U64(out_first);
    count_at = out.Placeholder32();
  };
  auto flush = [&] {
    out.Patch32(count_at, out_count);
    bool ok = Send(w, out.bytes());
    out_first += out_count;
    out_count = 0;
    start();
    return ok;
  };
  start();
  for (uint32_t i = 0; i < count; ++i) {
    uint8_t is_ref;
    uint64_t len = 0;
    std::span<const std::byte> arg;
    ObjectId ref;
    if (!in.U8(&is_ref)) return false;
    if (is_ref ? !in.Id(&ref) : !(in.Varint(&len) && in.Bytes(len, &arg))) return false;
    // Claim the item before starting it; once the parent has withdrawn the
    // rest of the chunk, each is answered Cancelled without running.
    uint64_t seen = claim.load(std::memory_order_acquire);
    while (!(seen & kWithdrawn) &&
           !claim.compare_exchange_weak(seen, seen + 1, std::memory_order_acq_rel)) {
    }
    if (seen & kWithdrawn) {
      out.U8(static_cast<uint8_t>(StatusCode::kCancelled));
      out.U8(0);
      out.Varint(0);
      ++out_count;
      if (out.size() > w.responses.max_message() / 2 && !flush()) return false;
      continue;
    }
    std::vector<std::byte>& result = w.result;
    ObjectId result_ref;
    w.result_id = ResultId(nonce, first + i);
    RingHeader* now = w.requests.header();
    now->current_job.store(job, std::memory_order_relaxed);
    // The clock only where a deadline is tracked: untimed tasks skip it.
    if (flags & kRunTimed) {
      now->current_started_ns.store(platform::MonotonicNanos(), std::memory_order_relaxed);
    }
    now->current_item.store(first + i, std::memory_order_release);
    Status st = task < registry.size()
                    ? registry[task].invoke(w.context, arg, ref, &result, &result_ref)
                    : NotFound("task index " + std::to_string(task) + " is not registered");
    out.U8(static_cast<uint8_t>(st.code()));
    if (!st.ok()) {
      // A message must fit a ring: cut a long one rather than fail the worker.
      std::string_view m = st.message();
      std::string cut;
      if (m.size() > kMaxErrorMessage) {
        cut = std::string(m.substr(0, kMaxErrorMessage)) + "... (" +
              std::to_string(m.size() - kMaxErrorMessage) + " more bytes cut)";
        m = cut;
      }
      out.U8(0);
      out.Varint(m.size());
      out.Raw(m.data(), m.size());
    } else if (!result_ref.is_nil()) {
      out.U8(1);
      out.Id(result_ref);
    } else {
      out.U8(0);
      out.Varint(result.size());
      out.Raw(result.data(), result.size());
    }
    ++out_count;
    if (out.size() > w.responses.max_message() / 2 && !flush()) return false;
  }
  return out_count == 0 || flush();
}

}  // namespace

int WorkerLoop(WorkerState& w) {
  MessageWriter hello;
  hello.U8(kHello);
  hello.U32(static_cast<uint32_t>(getpid()));
  hello.U64(RegistryHash());
  hello.U32(static_cast<uint32_t>(w.index));
  if (!Send(w, hello.bytes())) return 1;
  std::vector<std::byte>& msg = w.request;
  while (true) {
    if (!w.requests.WaitForData(w.spin_us, 100)) {
      if (!ParentAlive(w)) return 0;  // orphaned: the parent was killed
      continue;
    }
    Status corrupt;
    if (!w.requests.TryPop(&msg, &corrupt)) {
      if (!corrupt.ok()) {
        std::fprintf(stderr, "zcstore worker %d: %s\n", w.index, corrupt.ToString().c_str());
        return 2;
      }
      continue;
    }
    MessageReader in(msg);
    uint8_t kind;
    if (!in.U8(&kind)) continue;
    if (kind == kStop) return 0;
    if (kind == kDetach) {
      ObjectId id;
      if (in.Id(&id)) w.attached.erase(id);
      continue;
    }
    if (kind == kRun && !RunTasks(w, in)) {
      if (!ParentAlive(w)) return 0;
      std::fprintf(stderr, "zcstore worker %d: malformed request\n", w.index);
      return 2;
    }
  }
}

}  // namespace internal

int TaskContext::worker_index() const { return w_->index; }

void TaskContext::Log(std::string_view line) {
  std::string l(line);
  l += '\n';
  (void)!write(2, l.data(), l.size());
}

bool IsWorkerProcess(int argc, char** argv) {
  return argc >= 2 && std::strcmp(argv[1], internal::kWorkerFlag) == 0;
}

int RunWorkerProcess(int argc, char** argv) {
  // argv: exe --zcstore-worker INDEX PARENT_PID SPIN_US WORKERS
  if (argc < 6) {
    std::fprintf(stderr, "zcstore worker: started without its arguments\n");
    return 2;
  }
  internal::EnterWorkerLoop();  // tasks may start pools of their own
  internal::WorkerState w;
  w.index = std::atoi(argv[2]);
  w.parent = static_cast<pid_t>(std::atol(argv[3]));
  w.spin_us = std::atoi(argv[4]);
  int workers = std::atoi(argv[5]);
  if (!internal::platform::DieWithParent(w.parent)) return 0;  // the parent is already gone
  if (w.index < 0 || w.index >= workers) return 2;
  auto control =
      internal::platform::MapFile(internal::kControlFd, internal::ControlSize(workers), true);
  auto store = Store::OpenFd(internal::kStoreFd);
  if (!control.ok() || !store.ok()) {
    std::fprintf(stderr, "zcstore worker %d: %s\n", w.index,
                 (control.ok() ? store.status() : control.status()).ToString().c_str());
    return 2;
  }
  w.control = internal::Header(*control);
  w.requests = internal::RequestRing(*control, w.index);
  w.responses = internal::ResponseRing(*control, w.index);
  w.claims = internal::Claims(*control, workers, w.index);
  w.doorbell = internal::kDoorbellFd;
  w.store = std::make_shared<Store>(std::move(*store));
  // The handle has a descriptor of its own; the inherited one shares the
  // parent's open file description, and would keep the parent's liveness
  // lock held after the parent died.
  internal::platform::CloseFile(internal::kStoreFd);
  int rc = internal::WorkerLoop(w);
  std::fflush(stdout);
  std::fflush(stderr);
  return rc;
}

}  // namespace zcstore
