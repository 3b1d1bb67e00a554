// The public handles (Store, ObjectView, ObjectBuilder): each checks that it
// is used in the process that opened it, then hands over to StoreImpl, whose
// parts live beside this file: store_open.cc (creating, opening, mappings,
// the lock), object_table.cc (objects and names), extent_allocator.cc,
// client_registry.cc (handles, pins, liveness) and store_recovery.cc.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <utility>

#include "serializer/copy_internal.h"
#include "store/platform_internal.h"
#include "store/store_internal.h"

namespace zcstore {

// ================================================================ handles

ObjectView::ObjectView(ObjectView&& o) noexcept { *this = std::move(o); }

ObjectView& ObjectView::operator=(ObjectView&& o) noexcept {
  if (this != &o) {
    if (impl_) (void)Release();
    impl_ = std::move(o.impl_);
    slot_ = o.slot_;
    id_ = o.id_;
    metadata_ = o.metadata_;
    buffers_ = std::move(o.buffers_);
    metadata_checksum_ = o.metadata_checksum_;
    o.impl_.reset();
    o.buffers_.clear();
    o.metadata_ = {};
  }
  return *this;
}

ObjectView::~ObjectView() {
  if (impl_) (void)Release();
}

std::span<const std::byte> ObjectView::buffer(size_t i) const {
  if (i >= buffers_.size()) {
    internal::DieWithMessage("ObjectView::buffer: index out of range");
  }
  return buffers_[i];
}

Status ObjectView::Release() {
  if (!impl_) return InvalidArgument("this view was already released (or moved from)");
  Status st = impl_->Release(*this);
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  return st;
}

ObjectBuilder::ObjectBuilder(ObjectBuilder&& o) noexcept { *this = std::move(o); }

ObjectBuilder& ObjectBuilder::operator=(ObjectBuilder&& o) noexcept {
  if (this != &o) {
    if (impl_) (void)Abort();
    impl_ = std::move(o.impl_);
    slot_ = o.slot_;
    id_ = o.id_;
    extent_ = o.extent_;
    metadata_ = o.metadata_;
    buffers_ = std::move(o.buffers_);
    children_ = std::move(o.children_);
    o.impl_.reset();
    o.buffers_.clear();
    o.metadata_ = {};
  }
  return *this;
}

ObjectBuilder::~ObjectBuilder() {
  if (impl_) (void)Abort();
}

std::span<std::byte> ObjectBuilder::buffer(size_t i) const {
  if (i >= buffers_.size()) {
    internal::DieWithMessage("ObjectBuilder::buffer: index out of range");
  }
  return buffers_[i];
}

bool ObjectBuilder::BelongsTo(const Store& store) const {
  return impl_ != nullptr && impl_ == store.impl_;
}

Status ObjectBuilder::Seal() {
  if (!impl_) return InvalidArgument("this object was already sealed or aborted");
  Status st = impl_->Seal(*this);
  if (!st.ok()) {
    (void)impl_->Abort(*this);
  }
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  extent_ = {};
  return st;
}

Result<ObjectView> ObjectBuilder::SealPinned() {
  if (!impl_) return InvalidArgument("this object was already sealed or aborted");
  ObjectView view;
  Status st = impl_->Seal(*this, &view);
  if (st.code() == StatusCode::kTooManyPins) return st;  // nothing sealed: still ours
  // (Abort drops only an object still unsealed: one that failed only its
  // reading back stays sealed.)
  if (!st.ok()) (void)impl_->Abort(*this);
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  extent_ = {};
  if (!st.ok()) return st;
  return view;
}

std::vector<ObjectBuilder> ObjectBuilder::ReleaseAdopted() {
  std::vector<ObjectBuilder> adopted = std::move(children_);
  children_.clear();
  if (impl_) (void)Abort();
  return adopted;
}

Status ObjectBuilder::Abort() {
  if (!impl_) return InvalidArgument("this object was already sealed or aborted");
  Status st = impl_->Abort(*this);
  impl_.reset();
  buffers_.clear();
  metadata_ = {};
  return st;
}

Store::Store(std::shared_ptr<internal::StoreImpl> impl) : impl_(std::move(impl)) {}
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&& o) noexcept {
  if (this != &o) {
    if (impl_) impl_->UnlinkIfOwner();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
Store::~Store() {
  if (impl_) impl_->UnlinkIfOwner();
}

Result<Store> Store::Create(std::string_view name, const StoreOptions& options) {
  auto impl = internal::StoreImpl::Create(name, options);
  if (!impl.ok()) return impl.status();
  return Store(std::move(*impl));
}

Result<Store> Store::Open(std::string_view name, const OpenOptions& options) {
  // A store name never holds '/': a name that does is a file store's path.
  OpenOptions o = options;
  if (o.backing == Backing::kSharedMemory && name.find('/') != std::string_view::npos) {
    o.backing = Backing::kFile;
  }
  auto impl = internal::StoreImpl::Open(name, o);
  if (!impl.ok()) return impl.status();
  return Store(std::move(*impl));
}

Result<Store> Store::OpenOrCreate(std::string_view name, const StoreOptions& options) {
  if (options.backing == Backing::kMemfd) {
    return InvalidArgument("a memfd store has no name to be opened by: use Create and OpenFd");
  }
  OpenOptions o;
  o.backing = options.backing;
  o.shm_dir = options.shm_dir;
  o.allow_shared_write = (options.mode & 022) != 0;
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto opened = Open(name, o);
    if (opened.ok() || opened.status().code() != StatusCode::kNotFound) return opened;
    auto created = Create(name, options);
    if (created.ok() || created.status().code() != StatusCode::kAlreadyExists) return created;
    // Another process created it between our Open and Create: open it.
  }
  return Open(name, o);
}

uint64_t Store::CapacityFor(size_t metadata_size, std::span<const size_t> buffer_sizes,
                            Backing backing) {
  auto plan = internal::PlanExtent(metadata_size, buffer_sizes, 0,
                                   backing == Backing::kFile ? internal::kPageSize
                                                             : internal::kBufferAlignment);
  return plan.ok() ? plan->extent_size : 0;
}

Result<Store> Store::OpenFd(int fd, bool read_only) {
  auto impl = internal::StoreImpl::OpenFd(fd, read_only);
  if (!impl.ok()) return impl.status();
  return Store(std::move(*impl));
}

Status Store::Remove(std::string_view name, const OpenOptions& options) {
  namespace platform = internal::platform;
  bool file = options.backing == Backing::kFile;
  if (!file && !internal::ValidStoreName(name)) {
    return InvalidArgument("store name '" + std::string(name) +
                           "' must be 1-64 characters from [A-Za-z0-9._-] (a file store's path "
                           "needs OpenOptions::backing = Backing::kFile)");
  }
  if (!file) {
    if (Status st = internal::CheckShmDir(options.shm_dir); !st.ok()) return st;
  }
  std::string path = file ? std::string(name) : internal::StoreImpl::SegmentPath(options.shm_dir, name);
  std::string what = std::string(file ? "store file '" : "store '") + std::string(name) + "'";
  // Only a store of this user is removed: open it as Open would (no link,
  // no FIFO, our own file), check its magic, and unlink the name only while
  // it still names the file checked.
  auto fd = platform::OpenStoreFile(path, O_RDONLY, /*allow_shared_write=*/true);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) return NotFound(what + " does not exist");
    return fd.status().WithContext("not removed");
  }
  char magic[sizeof(internal::kStoreMagic)] = {};
  bool is_store = pread(*fd, magic, sizeof(magic), 0) == static_cast<ssize_t>(sizeof(magic)) &&
                  std::memcmp(magic, internal::kStoreMagic, sizeof(magic)) == 0;
  bool same = platform::NamesFile(path, *fd);
  platform::CloseFile(*fd);
  if (!is_store) return InvalidArgument("'" + path + "' is not a zcstore store; not removed");
  if (!same) return NotFound(what + " was replaced or removed meanwhile; not removed");
  Status st = platform::RemoveFile(path);
  if (st.code() == StatusCode::kNotFound) return NotFound(what + " does not exist");
  return st;
}

Result<ObjectBuilder> Store::CreateObject(ObjectId id, size_t metadata_size,
                                          std::span<const size_t> buffer_sizes,
                                          std::span<ObjectBuilder> adopt) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->CreateObject(id, metadata_size, buffer_sizes, adopt);
}

Status Store::Put(ObjectId id, std::span<const std::byte> metadata,
                  std::span<const std::span<const std::byte>> buffers) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  std::vector<size_t> sizes;
  sizes.reserve(buffers.size());
  for (auto& b : buffers) sizes.push_back(b.size());
  auto builder = impl_->CreateObject(id, metadata.size(), sizes, {});
  if (!builder.ok()) return builder.status();
  if (!metadata.empty()) std::memcpy(builder->metadata().data(), metadata.data(), metadata.size());
  for (size_t i = 0; i < buffers.size(); ++i) {
    if (!buffers[i].empty()) {
      internal::CopyOut(builder->buffer(i).data(), buffers[i].data(), buffers[i].size(),
                        /*drop_source=*/false);
    }
  }
  return builder->Seal();
}

Result<ObjectView> Store::Get(ObjectId id) const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Get(id);
}
Status Store::Delete(ObjectId id) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Delete(id);
}
bool Store::Contains(ObjectId id) const { return impl_->CheckProcess().ok() && impl_->Contains(id); }
Result<std::vector<ObjectInfo>> Store::List() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->List();
}
Result<StoreStats> Store::Stats() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Stats();
}
Result<uint32_t> Store::FreeClientSlots() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->FreeClientSlots();
}
Status Store::Verify(ObjectId id) const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Verify(id);
}

Status Store::VerifyAll() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  if (Status st = impl_->VerifyTables(); !st.ok()) return st;
  auto objects = impl_->List();
  if (!objects.ok()) return objects.status();
  for (const ObjectInfo& o : *objects) {
    if (o.state != ObjectInfo::State::kSealed) continue;
    Status st = impl_->Verify(o.id);
    // NotFound: deleted meanwhile; InvalidArgument: sealed without checksums.
    if (!st.ok() && st.code() != StatusCode::kNotFound && st.code() != StatusCode::kInvalidArgument) {
      return st;
    }
  }
  return Status::OK();
}

Status Store::Bind(std::string_view name, ObjectId id) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Bind(name, id);
}
Result<ObjectId> Store::Lookup(std::string_view name) const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Lookup(name);
}
Status Store::Unbind(std::string_view name) {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->Unbind(name);
}
Result<std::vector<std::pair<std::string, ObjectId>>> Store::ListNames() const {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->ListNames();
}

Result<uint32_t> Store::ReclaimDead() {
  if (Status st = impl_->CheckProcess(); !st.ok()) return st;
  return impl_->ReclaimDead();
}
const std::string& Store::name() const { return impl_->name(); }
bool Store::created() const { return impl_->created(); }
Backing Store::backing() const { return impl_->backing(); }
bool Store::read_only() const { return impl_->read_only(); }
int Store::fd() const { return impl_->fd(); }
Result<uint64_t> Store::FileOffsetOf(const void* p) const { return impl_->FileOffsetOf(p); }

}  // namespace zcstore

