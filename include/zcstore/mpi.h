// zcstore over MPI: one copy of a shared object per node, tasks over every
// rank. An optional library (zcstore::mpi), built where Open MPI is found.
//
//   auto ctx = zcstore::mpi::Context::Create(MPI_COMM_WORLD);    // collective
//   auto model = (*ctx)->Share<Model>(0, rank == 0 ? &m : nullptr);  // collective
//   if ((*ctx)->rank() == 0) {
//     auto scores = (*ctx)->Map<float>("score", args);           // rank 0 drives
//     (*ctx)->Finish();                                          // the others leave Serve
//   } else {
//     (*ctx)->Serve();                                           // runs tasks until Finish
//   }
//
// Nodes. Ranks are grouped by host (MPI_COMM_TYPE_SHARED), or into
// simulated nodes of Options::ranks_per_node consecutive ranks. The lowest
// rank of a node is its leader: it creates the node's store (a memfd, so
// nothing is named and nothing outlives the job, whatever kills it) and the
// node's other ranks open it through /proc/<leader>/fd.
//
// Share. The root serializes the object once, into its node's store. The
// leaders then broadcast it among themselves (MPI_Bcast over a communicator
// of leaders, so the bytes between nodes are the object's size times
// nodes - 1 at most), each receiving straight into an object it reserved in
// its own store: no staging copy. Every rank then maps its node's copy.
//
// Work. Rank 0 hands out chunks of a map as ranks finish (two chunks in
// flight per rank), of the tasks registered with ZCSTORE_TASK, whose
// registry every rank must share (checked at Create, as the pool does).
// Values with out-of-band buffers travel as the store objects they are
// encoded in. A task's error comes back on its item.
//
// Faults. Open MPI 4.1 has no fault tolerance: a rank that dies takes the
// job down (mpirun kills the others). The node stores go with the last of
// their processes. No call here has a timeout of its own.
//
// Threads: a Context is used from one thread (MPI_THREAD_FUNNELED suffices).
#ifndef ZCSTORE_MPI_H_
#define ZCSTORE_MPI_H_

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "zcstore/zcstore.h"

namespace zcstore::mpi {

struct Options {
  // Bytes of each node's store: shared objects, and task values that carry
  // out-of-band buffers. Reserved as objects claim it.
  uint64_t store_capacity = uint64_t{1} << 30;
  // Handles each node's store admits: its ranks, plus the workers of any
  // local Pool started over it (PoolOptions::store_fd = store_fd()).
  uint32_t max_clients = 256;
  // Nodes of this many consecutive ranks (rank / ranks_per_node), each with
  // a store of its own, instead of one per host: simulated nodes on one
  // machine. 0: the environment variable ZCSTORE_MPI_RANKS_PER_NODE if it
  // is set, else by host.
  int ranks_per_node = 0;
  // The largest MPI message; a larger buffer travels in pieces (MPI counts
  // are ints).
  size_t max_message_bytes = size_t{256} << 20;
  // A progress bar (done/total, rate, ETA) on rank 0's stderr during maps,
  // when it is a terminal.
  bool progress_bar = true;
};

struct MapOptions {
  // Tasks per message to a rank; 0: about four chunks per rank, at most 256.
  size_t chunk_size = 0;
  // Count this map in the progress bar.
  bool progress = true;
};

struct Stats {
  uint64_t share_bytes_received = 0;  // shared objects' bytes this rank got over MPI
  uint64_t share_bytes_sent = 0;      // ... and sent as a broadcast's root
  uint64_t tasks_run = 0;             // tasks this rank ran in Serve
};

class ZCSTORE_EXPORT Context {
 public:
  // Collective over `comm` (which it duplicates: its traffic never meets
  // the caller's). MPI must be initialized. Every rank gets the same
  // outcome: InvalidArgument (MPI not initialized, bad options),
  // VersionMismatch (ranks of other builds: another task registry), or the
  // errors of creating or opening a node's store (StoreFull, IOError,
  // PermissionDenied where /proc/<leader>/fd cannot be opened).
  static Result<std::unique_ptr<Context>> Create(MPI_Comm comm, const Options& options = {});
  // Not collective; frees the communicators and closes this rank's handle.
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int node() const { return node_; }    // 0-based index of this rank's node
  int nodes() const { return nodes_; }
  int node_rank() const { return node_rank_; }
  int node_size() const { return node_size_; }
  bool is_leader() const { return node_rank_ == 0; }
  // This node's store, and its descriptor (for a local Pool:
  // PoolOptions::store_fd, whose workers then see every shared object).
  Store& store() { return *store_; }
  int store_fd() const { return store_->fd(); }
  const Stats& stats() const { return stats_; }
  // This process's PSS of its node store's mappings, in bytes (from
  // /proc/self/smaps): what a node holds is its ranks' figures added up.
  // Read it on every rank of a node after a barrier: PSS is shared out
  // among the mappers at the moment each process is read.
  uint64_t StorePss() const;

  // Collective over every rank (or, on rank 0 between its first map and
  // Finish, announced to the serving ranks, which join it). `root` passes
  // the object, the others nullptr. Returns the handle on every rank: the
  // same id in every node's store; pass it in task arguments
  // (TaskContext::Get maps the node's copy) or to Get. Errors, the same on
  // every rank: InvalidArgument (no object at the root, a bad root),
  // StoreFull (a node's store cannot hold it: nothing is left behind), or
  // the root's serialization errors.
  template <typename T>
  Result<Shared<T>> Share(int root, const T* object);
  // As Share, but the root's object is moved into its node's store: arrays
  // it allocated there (Array<T>::AllocateIn(store())) are adopted, not
  // copied, so a model built in place is shared with no copy on its node.
  template <typename T>
  Result<Shared<T>> ShareMoved(int root, T* object);
  // This node's copy, pinned: no copy, no MPI traffic.
  template <typename T>
  Result<Pinned<T>> Get(const Shared<T>& handle) const {
    return store_->Get<T>(handle.id);
  }
  // Deletes a shared object in every node's store (collective, or announced
  // as Share is). Views already taken stay valid.
  template <typename T>
  Status Unshare(const Shared<T>& handle) {
    return UnshareId(handle.id);
  }

  // --- rank 0 drives; the other ranks Serve ---

  // Runs task `name` on each argument over the serving ranks; results in
  // order. The first failed item's Status is returned (the others still
  // ran). With one rank, rank 0 runs the tasks itself. Rank 0 only
  // (InvalidArgument elsewhere).
  template <typename R, typename A>
  Result<std::vector<R>> Map(std::string_view name, const std::vector<A>& args,
                             const MapOptions& options = {});
  // As Map, every item's own Result.
  template <typename R, typename A>
  Result<std::vector<Result<R>>> MapResults(std::string_view name, const std::vector<A>& args,
                                            const MapOptions& options = {});
  // As Map, `on_result(index, result)` as results arrive. Returns the first
  // error, if any.
  template <typename R, typename A>
  Status MapUnordered(std::string_view name, const std::vector<A>& args,
                      const std::function<void(size_t, Result<R>)>& on_result,
                      const MapOptions& options = {});
  // Pool::MapWithContext's semantics: `context` is shared with every node
  // once, each task (`WithUpdate<R, U> fn(TaskContext&, const
  // ContextArg<A, C>&)`) returns its result and an update, and `merge`
  // applies the updates to `context` on rank 0, in argument order.
  template <typename R, typename U, typename A, typename C>
  Result<std::vector<R>> MapWithContext(std::string_view name, const std::vector<A>& args,
                                        C& context, const std::function<void(C&, U&&)>& merge,
                                        const MapOptions& options = {});

  // Ranks other than 0: runs what rank 0 sends (tasks, shares) until rank 0
  // calls Finish. Returns OK then; an error if rank 0 sent what this build
  // cannot read (Corrupt). InvalidArgument on rank 0.
  Status Serve();
  // Rank 0: every serving rank leaves Serve. Idempotent.
  Status Finish();

 private:
  Context() = default;
  // Share's common part: `put()` (on the root) puts the object into its node store.
  template <typename T, typename Put>
  Result<Shared<T>> ShareWith(int root, bool has_object, Put put);
  Result<ObjectId> ShareStored(int root, ObjectId id, Status root_status);
  Status UnshareId(ObjectId id);
  // The type-erased map: `encode(i, bytes, ref)` gives item i's argument,
  // `deliver(i, result)` takes its outcome (on rank 0's thread).
  Status RunMap(std::string_view name, const std::string& arg_type,
                const std::string& result_type, size_t n, const MapOptions& options,
                const std::function<Status(size_t, std::vector<std::byte>*, ObjectId*)>& encode,
                const std::function<void(size_t, internal::ItemResult&)>& deliver);

  MPI_Comm world_ = MPI_COMM_NULL, node_comm_ = MPI_COMM_NULL, leaders_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, node_ = 0, nodes_ = 1, node_rank_ = 0, node_size_ = 1;
  Options opts_;
  std::unique_ptr<Store> store_;
  Stats stats_;
  bool driving_ = false;   // rank 0, between its first map and Finish
  bool finished_ = false;  // rank 0: Finish was called since the last map
  struct Worker;          // what runs tasks on this rank
  std::unique_ptr<Worker> worker_;
};

// ------------------------------------------------------------ templates

template <typename T, typename Put>
Result<Shared<T>> Context::ShareWith(int root, bool has_object, Put put) {
  ObjectId id;
  Status st;
  if (rank_ == root) {
    if (!has_object) {
      st = InvalidArgument("Share: the root must pass the object");
    } else if (auto r = put(); r.ok()) {  // serialized once, into the root's node store
      id = *r;
    } else {
      st = r.status();
    }
  }
  auto shared = ShareStored(root, id, st);
  if (!shared.ok()) return shared.status();
  return Shared<T>{*shared};
}

template <typename T>
Result<Shared<T>> Context::Share(int root, const T* object) {
  return ShareWith<T>(root, object != nullptr, [&] { return store_->Put(*object); });
}

template <typename T>
Result<Shared<T>> Context::ShareMoved(int root, T* object) {
  return ShareWith<T>(root, object != nullptr, [&] { return store_->Put(std::move(*object)); });
}

template <typename R, typename A>
Result<std::vector<Result<R>>> Context::MapResults(std::string_view name,
                                                   const std::vector<A>& args,
                                                   const MapOptions& options) {
  std::vector<Result<R>> out;
  out.reserve(args.size());
  for (size_t i = 0; i < args.size(); ++i) out.emplace_back(Cancelled("not run"));
  Status st = RunMap(
      name, internal::CachedTypeName<A>(), internal::CachedTypeName<R>(), args.size(), options,
      [&](size_t i, std::vector<std::byte>* bytes, ObjectId* ref) {
        return internal::EncodeValue(*store_, args[i], bytes, ref);
      },
      [&](size_t i, internal::ItemResult& r) { out[i] = internal::TakeResult<R>(*store_, r); });
  if (!st.ok()) return st;
  return out;
}

template <typename R, typename A>
Result<std::vector<R>> Context::Map(std::string_view name, const std::vector<A>& args,
                                    const MapOptions& options) {
  auto all = MapResults<R>(name, args, options);
  if (!all.ok()) return all.status();
  std::vector<R> out;
  out.reserve(all->size());
  for (Result<R>& r : *all) {
    if (!r.ok()) return r.status();
    out.push_back(std::move(*r));
  }
  return out;
}

template <typename R, typename A>
Status Context::MapUnordered(std::string_view name, const std::vector<A>& args,
                             const std::function<void(size_t, Result<R>)>& on_result,
                             const MapOptions& options) {
  Status first;
  Status st = RunMap(
      name, internal::CachedTypeName<A>(), internal::CachedTypeName<R>(), args.size(), options,
      [&](size_t i, std::vector<std::byte>* bytes, ObjectId* ref) {
        return internal::EncodeValue(*store_, args[i], bytes, ref);
      },
      [&](size_t i, internal::ItemResult& r) {
        Result<R> v = internal::TakeResult<R>(*store_, r);
        if (!v.ok() && first.ok()) first = v.status();
        on_result(i, std::move(v));
      });
  return st.ok() ? first : st;
}

template <typename R, typename U, typename A, typename C>
Result<std::vector<R>> Context::MapWithContext(std::string_view name, const std::vector<A>& args,
                                               C& context,
                                               const std::function<void(C&, U&&)>& merge,
                                               const MapOptions& options) {
  if (rank_ != 0) return InvalidArgument("MapWithContext: rank 0 drives the work");
  driving_ = true;  // the share below is announced to the serving ranks
  auto snapshot = Share(0, static_cast<const C*>(&context));
  if (!snapshot.ok()) return snapshot.status();
  std::vector<ContextArg<A, C>> wrapped;
  wrapped.reserve(args.size());
  for (const A& a : args) wrapped.push_back({a, *snapshot});
  auto results = Map<WithUpdate<R, U>>(name, wrapped, options);
  (void)Unshare(*snapshot);
  if (!results.ok()) return results.status();
  std::vector<R> out;
  out.reserve(results->size());
  for (WithUpdate<R, U>& r : *results) {
    merge(context, std::move(r.update));
    out.push_back(std::move(r.result));
  }
  return out;
}

}  // namespace zcstore::mpi

#endif  // ZCSTORE_MPI_H_
