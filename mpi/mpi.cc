// zcstore::mpi: node stores, Share over the leaders, maps over the ranks.
// The contracts are in include/zcstore/mpi.h; the why in docs/mpi.md.
#include "zcstore/mpi.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <string>

#include "pool/pool_internal.h"

namespace zcstore::mpi {

using internal::ItemResult;
using internal::MessageReader;
using internal::MessageWriter;

namespace {

// Point-to-point tags on the context's own communicator.
enum Tag : int {
  kTagTasks = 1,    // rank 0 -> a rank: a chunk of one map
  kTagResults = 2,  // a rank -> rank 0: that chunk's outcomes
  kTagControl = 3,  // rank 0 -> every rank: stop, share, unshare
};
enum Control : uint8_t { kStop = 1, kShare = 2, kUnshare = 3 };
// How an item's value travels: its inline bytes, or the store object it was
// encoded in (metadata and buffers, put again into the receiver's store).
enum Kind : uint8_t { kInline = 0, kObject = 1 };

Status MpiError(int rc, const char* what) {
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, text, &n);
  return IOError(std::string(what) + " failed: " + std::string(text, static_cast<size_t>(n)));
}

// Every rank of `comm` gets the same outcome: OK, or the lowest failing
// rank's error.
Status Agree(MPI_Comm comm, const Status& mine) {
  int me = 0;
  MPI_Comm_rank(comm, &me);
  int bad = mine.ok() ? INT_MAX : me, first = INT_MAX;
  MPI_Allreduce(&bad, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == INT_MAX) return Status::OK();
  int code = static_cast<int>(mine.code());
  std::string message = mine.message();
  uint64_t len = message.size();
  MPI_Bcast(&code, 1, MPI_INT, first, comm);
  MPI_Bcast(&len, 1, MPI_UINT64_T, first, comm);
  message.resize(len);
  MPI_Bcast(message.data(), static_cast<int>(len), MPI_CHAR, first, comm);
  std::string where = me == first ? "" : " (on rank " + std::to_string(first) + ")";
  return Status(static_cast<StatusCode>(code), message + where);
}

// MPI_Bcast of n bytes in pieces of at most `piece` (MPI counts are ints).
void BcastBytes(MPI_Comm comm, int root, void* data, size_t n, size_t piece) {
  auto* p = static_cast<char*>(data);
  for (size_t off = 0; off < n; off += piece) {
    int count = static_cast<int>(std::min(piece, n - off));
    MPI_Bcast(p + off, count, MPI_BYTE, root, comm);
  }
}

int RanksPerNode(const Options& o) {
  if (o.ranks_per_node > 0) return o.ranks_per_node;
  const char* env = std::getenv("ZCSTORE_MPI_RANKS_PER_NODE");
  return env != nullptr ? std::atoi(env) : 0;
}

// An object of `store`, whole, into a message: id, metadata, buffers.
Status PackObject(const Store& store, ObjectId id, MessageWriter& out) {
  auto view = store.Get(id);
  if (!view.ok()) return view.status();
  out.Id(id);
  out.U64(view->metadata().size());
  out.Raw(view->metadata().data(), view->metadata().size());
  out.U32(static_cast<uint32_t>(view->num_buffers()));
  for (const auto& b : view->buffers()) {
    out.U64(b.size());
    out.Raw(b.data(), b.size());
  }
  return Status::OK();
}

// The inverse: the object, put into `store` under a new id (it is a copy).
Result<ObjectId> UnpackObject(Store& store, MessageReader& in) {
  ObjectId sent;
  uint64_t meta_len = 0;
  uint32_t nbuf = 0;
  std::span<const std::byte> meta;
  if (!in.Id(&sent) || !in.U64(&meta_len) || !in.Bytes(meta_len, &meta) || !in.U32(&nbuf)) {
    return Corrupt("mpi: a truncated object in a message");
  }
  std::vector<std::span<const std::byte>> buffers(nbuf);
  for (auto& b : buffers) {
    uint64_t len = 0;
    if (!in.U64(&len) || !in.Bytes(len, &b)) return Corrupt("mpi: a truncated buffer in a message");
  }
  ObjectId id = ObjectId::Random();
  if (Status st = store.Put(id, meta, buffers); !st.ok()) return st;
  return id;
}

// One value (an argument or a result) into a message.
Status PackValue(Store& store, const std::vector<std::byte>& bytes, ObjectId ref,
                 MessageWriter& out) {
  if (ref.is_nil()) {
    out.U8(kInline);
    out.U64(bytes.size());
    out.Raw(bytes.data(), bytes.size());
    return Status::OK();
  }
  out.U8(kObject);
  Status st = PackObject(store, ref, out);
  (void)store.Delete(ref);  // it travels in the message now
  return st;
}

Status UnpackValue(Store& store, MessageReader& in, std::vector<std::byte>* bytes,
                   ObjectId* ref) {
  uint8_t kind = 0;
  if (!in.U8(&kind)) return Corrupt("mpi: a truncated value in a message");
  if (kind == kInline) {
    uint64_t len = 0;
    std::span<const std::byte> b;
    if (!in.U64(&len) || !in.Bytes(len, &b)) return Corrupt("mpi: a truncated value");
    bytes->assign(b.begin(), b.end());
    *ref = ObjectId{};
    return Status::OK();
  }
  if (kind != kObject) return Corrupt("mpi: an unknown kind of value in a message");
  auto id = UnpackObject(store, in);
  if (!id.ok()) return id.status();
  bytes->clear();
  *ref = *id;
  return Status::OK();
}

// An item's failure as a result message carries it (its success carries
// code 0, no text, then its value).
void PackError(MessageWriter& out, const Status& st) {
  out.U32(static_cast<uint32_t>(st.code()));
  out.U64(st.message().size());
  out.Raw(st.message().data(), st.message().size());
}

// Receives the next message from `source` (or any) with `tag` (or any).
std::vector<std::byte> Receive(MPI_Comm comm, int source, int tag, MPI_Status* status) {
  MPI_Probe(source, tag, comm, status);
  int count = 0;
  MPI_Get_count(status, MPI_BYTE, &count);
  std::vector<std::byte> msg(static_cast<size_t>(count));
  MPI_Recv(msg.data(), count, MPI_BYTE, status->MPI_SOURCE, status->MPI_TAG, comm,
           MPI_STATUS_IGNORE);
  return msg;
}

// Rank 0's progress bar (done/total, rate, ETA), on a terminal only.
class Progress {
 public:
  Progress(bool on, size_t total) : on_(on && total > 0 && isatty(2)), total_(total) {}
  void Update(size_t done) {
    if (!on_) return;
    auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - shown_ < std::chrono::milliseconds(100)) return;
    shown_ = now;
    double s = std::chrono::duration<double>(now - start_).count();
    double rate = done / std::max(s, 1e-9);
    double eta = rate > 0 ? (total_ - done) / rate : 0;
    std::fprintf(stderr, "\r%zu/%zu tasks  %.0f/s  ETA %.1f s ", done, total_, rate, eta);
    if (done >= total_) std::fprintf(stderr, "\n");
  }

 private:
  bool on_;
  size_t total_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), shown_{};
};

}  // namespace

// What runs tasks on this rank: the pool's worker state, over the node store.
struct Context::Worker {
  internal::WorkerState state;
  // Runs one item: its result is left in `r` (inline, or an object of the
  // node store), its argument's object deleted.
  void Invoke(uint32_t task, const std::vector<std::byte>& arg, ObjectId arg_ref,
              ItemResult* r) {
    state.result_id = ObjectId::Random();
    Status st = internal::Registry()[task].invoke(state.context, arg, arg_ref, &r->bytes, &r->ref);
    if (!arg_ref.is_nil()) (void)state.store->Delete(arg_ref);
    r->code = st.code();
    r->error = st.message();
  }
  // Runs one item; its outcome goes into `out`.
  void Run(uint32_t task, const std::vector<std::byte>& arg, ObjectId arg_ref,
           MessageWriter& out) {
    ItemResult r;
    Invoke(task, arg, arg_ref, &r);
    Status st(r.code, r.error);
    if (st.ok()) {
      MessageWriter value;
      st = PackValue(*state.store, r.bytes, r.ref, value);
      if (st.ok()) {
        PackError(out, Status::OK());
        out.Raw(value.bytes().data(), value.size());
        return;
      }
    }
    PackError(out, st);
  }
};

// ------------------------------------------------------------ setup

Result<std::unique_ptr<Context>> Context::Create(MPI_Comm comm, const Options& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return InvalidArgument("zcstore::mpi::Context::Create: call MPI_Init first");
  std::unique_ptr<Context> c(new Context());
  c->opts_ = options;
  if (int rc = MPI_Comm_dup(comm, &c->world_); rc != MPI_SUCCESS) return MpiError(rc, "MPI_Comm_dup");
  MPI_Comm_rank(c->world_, &c->rank_);
  MPI_Comm_size(c->world_, &c->size_);
  Status st;
  if (options.max_message_bytes == 0 || options.max_message_bytes > size_t{INT_MAX}) {
    st = InvalidArgument("Options::max_message_bytes must be within 1 .. INT_MAX");
  }
  // The same build everywhere: tasks travel as registry indices.
  uint64_t hash = internal::RegistryHash(), root_hash = hash;
  MPI_Bcast(&root_hash, 1, MPI_UINT64_T, 0, c->world_);
  if (st.ok() && hash != root_hash) {
    st = VersionMismatch("rank " + std::to_string(c->rank_) +
                         " has another task registry than rank 0: it is another build");
  }
  if (st = Agree(c->world_, st); !st.ok()) return st;

  int per_node = RanksPerNode(options);
  int rc = per_node > 0 ? MPI_Comm_split(c->world_, c->rank_ / per_node, c->rank_, &c->node_comm_)
                        : MPI_Comm_split_type(c->world_, MPI_COMM_TYPE_SHARED, c->rank_,
                                              MPI_INFO_NULL, &c->node_comm_);
  if (rc != MPI_SUCCESS) return MpiError(rc, "splitting the ranks into nodes");
  MPI_Comm_rank(c->node_comm_, &c->node_rank_);
  MPI_Comm_size(c->node_comm_, &c->node_size_);
  MPI_Comm_split(c->world_, c->is_leader() ? 0 : MPI_UNDEFINED, c->rank_, &c->leaders_);
  if (c->is_leader()) {
    MPI_Comm_rank(c->leaders_, &c->node_);
    MPI_Comm_size(c->leaders_, &c->nodes_);
  }
  MPI_Bcast(&c->node_, 1, MPI_INT, 0, c->node_comm_);
  MPI_Bcast(&c->nodes_, 1, MPI_INT, 0, c->node_comm_);

  // The node store: a memfd of the leader's, opened by the others through
  // /proc/<leader>/fd/<fd>. Nothing has a name: it goes with its last user.
  int where[2] = {0, -1};  // leader's pid, fd
  if (c->is_leader()) {
    StoreOptions so;
    so.backing = Backing::kMemfd;
    so.capacity = options.store_capacity;
    so.max_clients = options.max_clients;
    auto s = Store::Create("mpi-node-" + std::to_string(c->node_), so);
    if (s.ok()) {
      c->store_ = std::make_unique<Store>(std::move(*s));
      where[0] = static_cast<int>(getpid());
      where[1] = c->store_->fd();
    } else {
      st = s.status();
    }
  }
  MPI_Bcast(where, 2, MPI_INT, 0, c->node_comm_);
  if (!c->is_leader() && where[1] >= 0) {
    std::string path = "/proc/" + std::to_string(where[0]) + "/fd/" + std::to_string(where[1]);
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      st = PermissionDenied("cannot open the node's store through " + path + ": " +
                            std::strerror(errno) + " (the ranks of a node must run as one user)");
    } else {
      auto s = Store::OpenFd(fd);
      ::close(fd);
      if (s.ok()) c->store_ = std::make_unique<Store>(std::move(*s));
      else st = s.status();
    }
  } else if (!c->is_leader()) {
    st = Cancelled("the node's leader could not create its store");
  }
  // Every rank holds its handle before Create returns: the leader's may
  // then go first without the store going with it.
  if (st = Agree(c->world_, st); !st.ok()) return st;
  return c;
}

Context::~Context() {
  worker_.reset();
  store_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Comm* comm : {&leaders_, &node_comm_, &world_}) {
    if (*comm != MPI_COMM_NULL) MPI_Comm_free(comm);
  }
}

uint64_t Context::StorePss() const {
  // smaps: a header line per mapping ("start-end perms offset dev inode
  // path"), then its fields; a node store's mappings are of its memfd.
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool ours = false;
  uint64_t kib = 0;
  while (std::getline(smaps, line)) {
    std::string first = line.substr(0, line.find(' '));
    if (first.find('-') != std::string::npos &&
        first.find_first_not_of("0123456789abcdef-") == std::string::npos) {
      ours = line.find("memfd:zcstore") != std::string::npos;
    } else if (ours && line.rfind("Pss:", 0) == 0) {
      kib += std::stoull(line.substr(4));
    }
  }
  return kib * 1024;
}

// ------------------------------------------------------------ sharing

Result<ObjectId> Context::ShareStored(int root, ObjectId id, Status root_status) {
  if (rank_ == 0 && driving_) {
    // The others are serving: announce the share, then all join it.
    MessageWriter m;
    m.U8(kShare);
    m.U32(static_cast<uint32_t>(root));
    for (int r = 1; r < size_; ++r) {
      MPI_Send(m.bytes().data(), static_cast<int>(m.size()), MPI_BYTE, r, kTagControl, world_);
    }
  }
  Status st;
  if (root < 0 || root >= size_) {
    st = InvalidArgument("Share: root " + std::to_string(root) + " is not a rank of the " +
                         std::to_string(size_) + "-rank communicator");
    if (!id.is_nil()) (void)store_->Delete(id);
    return Agree(world_, st);
  }
  // The root's outcome, its id and its node, to every rank.
  if (st = Agree(world_, rank_ == root ? root_status : Status::OK()); !st.ok()) return st;
  uint64_t head[3] = {id.hi, id.lo, static_cast<uint64_t>(node_)};
  MPI_Bcast(head, 3, MPI_UINT64_T, root, world_);
  id = ObjectId{head[0], head[1]};
  int source = static_cast<int>(head[2]);  // the leader whose store has it

  if (is_leader() && nodes_ > 1) {
    // Its layout, then its bytes, each leader receiving into an object of
    // its own store (no staging copy).
    std::vector<uint64_t> layout;
    ObjectView view;
    if (node_ == source) {
      auto v = store_->Get(id);
      if (v.ok()) {
        view = std::move(*v);
        layout.push_back(view.metadata().size());
        for (const auto& b : view.buffers()) layout.push_back(b.size());
      } else {
        st = v.status();
      }
    }
    if (st = Agree(leaders_, st); st.ok()) {
      uint64_t count = layout.size();
      MPI_Bcast(&count, 1, MPI_UINT64_T, source, leaders_);
      layout.resize(count);
      MPI_Bcast(layout.data(), static_cast<int>(count), MPI_UINT64_T, source, leaders_);
      std::vector<size_t> sizes(layout.begin() + 1, layout.end());
      ObjectBuilder builder;
      if (node_ != source) {
        auto b = store_->CreateObject(id, layout[0], sizes);
        if (b.ok()) builder = std::move(*b);
        else st = b.status();
      }
      if (st = Agree(leaders_, st); st.ok()) {
        size_t piece = opts_.max_message_bytes;
        auto move = [&](const std::byte* from, std::byte* into, size_t n) {
          if (node_ == source) {
            BcastBytes(leaders_, source, const_cast<std::byte*>(from), n, piece);
            stats_.share_bytes_sent += n;
          } else {
            BcastBytes(leaders_, source, into, n, piece);
            stats_.share_bytes_received += n;
          }
        };
        move(view.valid() ? view.metadata().data() : nullptr,
             builder.valid() ? builder.metadata().data() : nullptr, layout[0]);
        for (size_t i = 0; i < sizes.size(); ++i) {
          move(view.valid() ? view.buffer(i).data() : nullptr,
               builder.valid() ? builder.buffer(i).data() : nullptr, sizes[i]);
        }
        if (builder.valid()) st = builder.Seal();
      } else if (builder.valid()) {
        (void)builder.Abort();
      }
    }
  }
  // Every node has its copy (or none has: the failing leader's error, and
  // the copies made elsewhere are deleted again).
  st = Agree(world_, st);
  if (!st.ok() && is_leader()) (void)store_->Delete(id);
  if (!st.ok()) return st;
  return id;
}

Status Context::UnshareId(ObjectId id) {
  if (rank_ == 0 && driving_) {
    MessageWriter m;
    m.U8(kUnshare);
    m.Id(id);
    for (int r = 1; r < size_; ++r) {
      MPI_Send(m.bytes().data(), static_cast<int>(m.size()), MPI_BYTE, r, kTagControl, world_);
    }
    return store_->Delete(id);  // rank 0's node; the others' leaders delete theirs
  }
  Status st = is_leader() ? store_->Delete(id) : Status::OK();
  return Agree(world_, st);
}

// ------------------------------------------------------------ the work

Status Context::RunMap(
    std::string_view name, const std::string& arg_type, const std::string& result_type, size_t n,
    const MapOptions& options,
    const std::function<Status(size_t, std::vector<std::byte>*, ObjectId*)>& encode,
    const std::function<void(size_t, ItemResult&)>& deliver) {
  if (rank_ != 0) return InvalidArgument("Map: rank 0 drives the work; the other ranks Serve");
  auto task = internal::FindTask(name, arg_type, result_type);
  if (!task.ok()) return task.status();
  driving_ = true;
  finished_ = false;  // the others serve again until the next Finish
  if (n == 0) return Status::OK();
  if (!worker_ && size_ == 1) {
    auto s = Store::OpenFd(store_->fd());
    if (!s.ok()) return s.status();
    worker_ = std::make_unique<Worker>();
    worker_->state.store = std::make_unique<Store>(std::move(*s));
  }
  Progress bar(opts_.progress_bar && options.progress, n);
  size_t done = 0;

  // One rank: rank 0 runs every task itself, through the same encoding
  // (values with buffers stay in its node store: nothing travels).
  if (size_ == 1) {
    std::vector<std::byte> arg;
    for (size_t i = 0; i < n; ++i) {
      ItemResult r;
      ObjectId ref;
      if (Status st = encode(i, &arg, &ref); st.ok()) {
        worker_->Invoke(*task, arg, ref, &r);
      } else {
        r.code = st.code();
        r.error = st.message();
      }
      deliver(i, r);
      bar.Update(++done);
    }
    return Status::OK();
  }

  int servers = size_ - 1;
  size_t chunk = options.chunk_size != 0
                     ? options.chunk_size
                     : std::clamp<size_t>(n / (4 * static_cast<size_t>(servers)), 1, 256);
  size_t next = 0;
  struct Sending {
    MPI_Request request;
    MessageWriter message;
  };
  std::deque<Sending> sending;  // deque: a message stays put while MPI reads it
  auto reap_sends = [&](bool all) {
    while (!sending.empty()) {
      int flag = 0;
      if (all) MPI_Wait(&sending.front().request, MPI_STATUS_IGNORE), flag = 1;
      else MPI_Test(&sending.front().request, &flag, MPI_STATUS_IGNORE);
      if (!flag) break;
      sending.pop_front();
    }
  };
  // Sends the next chunk to `rank`; false when there is none.
  auto send_chunk = [&](int rank) {
    while (next < n) {
      size_t first = next, count = std::min(chunk, n - next);
      next += count;
      sending.emplace_back();
      MessageWriter& m = sending.back().message;
      m.U32(*task);
      m.U64(first);
      size_t at = m.Placeholder32();
      uint32_t packed = 0;
      for (size_t i = first; i < first + count; ++i) {
        std::vector<std::byte> bytes;
        ObjectId ref;
        Status st = encode(i, &bytes, &ref);
        if (st.ok()) {
          m.U64(i);
          st = PackValue(*store_, bytes, ref, m);
          if (st.ok()) {
            ++packed;
            continue;
          }
        }
        ItemResult failed;  // never sent: fails here
        failed.code = st.code();
        failed.error = st.message();
        deliver(i, failed);
        bar.Update(++done);
      }
      if (packed != 0 && m.size() > size_t{INT_MAX}) {
        // One MPI message carries a chunk: its count is an int.
        for (size_t i = first; i < first + count; ++i) {
          ItemResult failed;
          failed.code = StatusCode::kInvalidArgument;
          failed.error = "mpi: a chunk of this map needs a message over 2 GiB (" +
                         std::to_string(m.size()) + " bytes): lower MapOptions::chunk_size";
          deliver(i, failed);
          bar.Update(++done);
        }
        packed = 0;
      }
      if (packed == 0) {
        sending.pop_back();
        continue;
      }
      m.Patch32(at, packed);
      MPI_Isend(m.bytes().data(), static_cast<int>(m.size()), MPI_BYTE, rank, kTagTasks, world_,
                &sending.back().request);
      return true;
    }
    return false;
  };
  std::vector<int> in_flight(static_cast<size_t>(size_), 0);
  int outstanding = 0;
  for (int round = 0; round < 2; ++round) {
    for (int r = 1; r < size_; ++r) {
      if (send_chunk(r)) ++in_flight[static_cast<size_t>(r)], ++outstanding;
    }
  }
  Status corrupt;
  while (outstanding > 0) {
    MPI_Status status;
    std::vector<std::byte> msg = Receive(world_, MPI_ANY_SOURCE, kTagResults, &status);
    int from = status.MPI_SOURCE;
    --in_flight[static_cast<size_t>(from)];
    --outstanding;
    MessageReader in(msg);
    uint32_t count = 0;
    if (!in.U32(&count)) corrupt = Corrupt("mpi: a truncated result message");
    for (uint32_t k = 0; k < count && corrupt.ok(); ++k) {
      uint64_t i = 0, len = 0;
      uint32_t code = 0;
      std::span<const std::byte> err;
      if (!in.U64(&i) || i >= n || !in.U32(&code) || !in.U64(&len) || !in.Bytes(len, &err)) {
        corrupt = Corrupt("mpi: a malformed result from rank " + std::to_string(from));
        break;
      }
      ItemResult r;
      r.code = static_cast<StatusCode>(code);
      r.error.assign(reinterpret_cast<const char*>(err.data()), err.size());
      if (r.code == StatusCode::kOk) {
        if (Status st = UnpackValue(*store_, in, &r.bytes, &r.ref); !st.ok()) {
          r.code = st.code();
          r.error = st.message();
        }
      }
      deliver(static_cast<size_t>(i), r);
      bar.Update(++done);
    }
    if (send_chunk(from)) ++in_flight[static_cast<size_t>(from)], ++outstanding;
    reap_sends(false);
  }
  reap_sends(true);
  return corrupt;
}

Status Context::Serve() {
  if (rank_ == 0) return InvalidArgument("Serve: rank 0 drives; the other ranks serve");
  if (!worker_) {
    auto s = Store::OpenFd(store_->fd());
    if (!s.ok()) return s.status();
    worker_ = std::make_unique<Worker>();
    worker_->state.store = std::make_unique<Store>(std::move(*s));
    worker_->state.index = rank_;
  }
  MessageWriter out;
  std::vector<std::byte> arg;
  std::vector<uint64_t> indices;  // the items of the chunk being run
  while (true) {
    MPI_Status status;
    std::vector<std::byte> msg = Receive(world_, 0, MPI_ANY_TAG, &status);
    MessageReader in(msg);
    if (status.MPI_TAG == kTagControl) {
      uint8_t what = 0;
      if (!in.U8(&what)) return Corrupt("mpi: an empty control message from rank 0");
      if (what == kStop) return Status::OK();
      if (what == kShare) {
        uint32_t root = 0;
        in.U32(&root);
        (void)ShareStored(static_cast<int>(root), ObjectId{}, Status::OK());
      } else if (what == kUnshare) {
        ObjectId id;
        in.Id(&id);
        if (is_leader()) (void)store_->Delete(id);
      } else {
        return Corrupt("mpi: an unknown control message from rank 0");
      }
      continue;
    }
    uint32_t task = 0, count = 0;
    uint64_t first = 0;
    if (!in.U32(&task) || task >= internal::Registry().size() || !in.U64(&first) ||
        !in.U32(&count)) {
      return Corrupt("mpi: a malformed task message from rank 0");
    }
    out.Clear();
    out.U32(count);
    indices.clear();
    for (uint32_t k = 0; k < count; ++k) {
      uint64_t i = 0;
      ObjectId ref;
      if (!in.U64(&i)) return Corrupt("mpi: a truncated task message from rank 0");
      out.U64(i);
      indices.push_back(i);
      if (Status st = UnpackValue(*worker_->state.store, in, &arg, &ref); !st.ok()) {
        PackError(out, st);
        if (st.code() == StatusCode::kCorrupt) return st;
        continue;
      }
      worker_->Run(task, arg, ref, out);
      ++stats_.tasks_run;
    }
    if (out.size() > size_t{INT_MAX}) {
      // One message per chunk, and its count is an int: every item of the
      // chunk fails instead.
      Status too_big = InvalidArgument(
          "mpi: the results of a chunk need a message over 2 GiB: lower MapOptions::chunk_size");
      out.Clear();
      out.U32(static_cast<uint32_t>(indices.size()));
      for (uint64_t i : indices) {
        out.U64(i);
        PackError(out, too_big);
      }
    }
    MPI_Send(out.bytes().data(), static_cast<int>(out.size()), MPI_BYTE, 0, kTagResults, world_);
  }
}

Status Context::Finish() {
  if (rank_ != 0) return InvalidArgument("Finish: rank 0 only");
  if (finished_) return Status::OK();
  finished_ = true;
  MessageWriter m;
  m.U8(kStop);
  for (int r = 1; r < size_; ++r) {
    MPI_Send(m.bytes().data(), static_cast<int>(m.size()), MPI_BYTE, r, kTagControl, world_);
  }
  driving_ = false;
  return Status::OK();
}

}  // namespace zcstore::mpi
