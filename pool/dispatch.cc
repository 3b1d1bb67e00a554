// Dispatch: sending queued work (retries first) to every ready worker's
// request ring, in chunks that ramp up from one task, encoding each
// argument only when its chunk goes, and the Detach messages that wait for
// room. Everything here runs under the pool's mutex.
#include <algorithm>
#include <bit>

#include "pool/pool_core_internal.h"
#include "store/platform_internal.h"

namespace zcstore::internal {

bool PoolCore::CanTake(const Worker& w) const {
  return w.alive && w.ready && !w.timed_out &&
         static_cast<int>(w.in_flight.size()) < opts.max_in_flight_per_worker;
}

void PoolCore::Dispatch(std::vector<Ring>* defer_wakes) {
  // Each chunk goes to the worker with the fewest chunks in flight (an idle
  // one first), never to the first with room: a task must not queue behind
  // a long one while another worker waits. Then, once nothing is left to
  // send, an idle worker takes what waits behind a busy worker's running
  // task (Steal), and that goes out too.
  for (int round = 0; round < 2; ++round) {
    if (!jobs.empty() || !retries.empty()) {
      dispatch_skip.assign(workers.size(), false);
      for (;;) {
        Worker* best = nullptr;
        for (Worker& w : workers) {
          if (!CanTake(w) || dispatch_skip[w.index]) continue;
          if (best == nullptr || w.in_flight.size() < best->in_flight.size()) best = &w;
        }
        if (best == nullptr) break;
        if (!DispatchOne(*best, defer_wakes)) dispatch_skip[best->index] = true;
        if (jobs.empty() && retries.empty()) break;
      }
    }
    if (round == 1 || !Steal()) return;
  }
}

bool PoolCore::Steal() {
  if (!jobs.empty() || !retries.empty()) return false;  // Dispatch sent what any could take
  size_t idle = 0;
  for (const Worker& w : workers) idle += CanTake(w) && w.in_flight.empty();
  bool stole = false;
  for (; idle > 0; --idle) {
    // The chunk with the most items not yet started, behind a task its
    // worker has started (one that has not started is not busy: it is about
    // to run them itself).
    Worker* victim = nullptr;
    InFlight* chunk = nullptr;
    uint64_t most = 0;
    for (Worker& w : workers) {
      if (!w.alive || w.in_flight.empty()) continue;
      const InFlight& front = w.in_flight.front();
      if ((w.claims[front.slot].load(std::memory_order_acquire) & ~kWithdrawn) == 0) continue;
      for (InFlight& f : w.in_flight) {
        if (f.withdrawn_from != SIZE_MAX || f.job->target_worker >= 0 || f.job->cancelled ||
            f.job->dropped) {
          continue;
        }
        uint64_t claimed = w.claims[f.slot].load(std::memory_order_acquire) & ~kWithdrawn;
        uint64_t end = f.first + f.count, started = f.base + std::min<uint64_t>(claimed, end - f.base);
        // The front chunk's last claimed item runs now; a later chunk's runs
        // only if its worker claimed it, which the check above rules out.
        uint64_t unstarted = end - std::max<uint64_t>(started, f.first);
        if (unstarted > most) {
          most = unstarted;
          victim = &w;
          chunk = &f;
        }
      }
    }
    if (victim == nullptr) break;
    size_t end = chunk->first + chunk->count;
    size_t from = std::max(Withdraw(*victim, *chunk), chunk->first);
    if (from >= end) continue;  // started meanwhile: nothing left to take
    retries.push_back({chunk->job, from, end - from, chunk->attempt});
    stole = true;
  }
  return stole;
}

bool PoolCore::DispatchOne(Worker& w, std::vector<Ring>* defer_wakes) {
  // Retries first, then the oldest job this worker may take.
  std::shared_ptr<Job> job;
  size_t first = 0, count = 0;
  int attempt = 0;
  // A retry of a job meant for one worker (Broadcast) waits for that one.
  auto retry = std::find_if(retries.begin(), retries.end(), [&](const Retry& r) {
    return r.job->target_worker < 0 || r.job->target_worker == w.index;
  });
  if (retry != retries.end()) {
    job = retry->job;
    first = retry->first;
    count = retry->count;
    attempt = retry->attempt;
    retries.erase(retry);
  } else {
    // An unordered job whose caller has not taken its results yet gets no
    // more work until it does: results never pile up without bound.
    auto it = std::find_if(jobs.begin(), jobs.end(), [&](const std::shared_ptr<Job>& j) {
      return (j->target_worker < 0 || j->target_worker == w.index) &&
             (j->keep_order || j->completed->size() < kMaxUntakenResults);
    });
    if (it == jobs.end()) return false;
    job = *it;
    first = job->next;
    count = std::min({job->chunk, job->ramp, job->n - job->next});
    job->ramp = std::min(job->chunk, job->ramp * 2);
    job->next += count;
    if (job->next == job->n) jobs.erase(it);
  }
  MessageWriter& msg = dispatch_msg;
  msg.Clear();
  InFlight f;
  f.job = job;
  f.first = first;
  f.attempt = attempt;
  f.nonce = ++chunks_sent;
  // A free claim word: in_flight is below max_in_flight_per_worker,
  // which Create bounds by kClaimsPerWorker.
  f.slot = std::countr_one(w.claims_used);
  msg.U8(kRun);
  msg.U64(job->seq);
  msg.U64(f.nonce);
  bool timed = TimeoutOf(*job).count() > 0 && opts.backend != PoolOptions::Backend::kThreads;
  msg.U8(timed ? kRunTimed : 0);
  msg.U8(static_cast<uint8_t>(f.slot));
  msg.U32(job->task);
  msg.U64(first);
  size_t count_at = msg.Placeholder32();
  size_t sent = 0;
  while (sent < count) {
    std::span<const std::byte> bytes = job->arg;
    ObjectId ref = job->arg_ref;
    ObjectId made;  // the store object encoding made for this item, if any
    Status st;
    if (job->encode) {
      st = job->encode(first + sent, &encode_scratch, &made);
      bytes = encode_scratch;
      ref = made;
    }
    if (!st.ok()) {
      // An argument that cannot be encoded fails alone; the items before
      // it go now, the ones after it in a later chunk.
      if (sent > 0) break;
      FailItems(*job, first, 1, st.code(), st.message());
      f.first = ++first;
      --count;
      continue;
    }
    if (msg.size() + bytes.size() + 32 > w.requests.max_message()) {
      if (!made.is_nil()) (void)store->Delete(made);
      break;  // the rest go in the next chunk
    }
    if (ref.is_nil()) {
      msg.U8(0);
      msg.Varint(bytes.size());
      msg.Raw(bytes.data(), bytes.size());
    } else {
      msg.U8(1);
      msg.Id(ref);
    }
    if (!made.is_nil()) {
      f.arg_refs.resize(sent);  // nil for the inline ones before it
      f.arg_refs.push_back(made);
    }
    ++sent;
  }
  if (sent < count) {
    // Put the rest back at the front.
    retries.push_front({job, first + sent, count - sent, attempt});
  }
  if (sent == 0) return true;  // every item failed to encode: none left in this chunk
  f.count = sent;
  f.base = f.first;
  msg.Patch32(count_at, static_cast<uint32_t>(sent));
  // Reset before the message is published (the push releases it).
  w.claims[f.slot].store(0, std::memory_order_relaxed);
  if (!w.requests.TryPush(msg.bytes(), /*wake=*/defer_wakes == nullptr)) {
    // Cannot happen while in-flight chunks are bounded; be safe anyway.
    retries.push_front({job, first, sent, attempt});
    DeleteRefs(f.arg_refs);
    return false;
  }
  w.claims_used |= uint64_t{1} << f.slot;
  w.in_flight.push_back(std::move(f));
  if (defer_wakes) defer_wakes->push_back(w.requests);
  return true;
}

void PoolCore::SendDetaches(Worker& w) {
  MessageWriter detach;
  while (w.alive && !w.pending_detaches.empty()) {
    detach.Clear();
    detach.U8(kDetach);
    detach.Id(w.pending_detaches.front());
    if (!w.requests.TryPush(detach.bytes())) return;
    w.pending_detaches.erase(w.pending_detaches.begin());
  }
}

}  // namespace zcstore::internal
