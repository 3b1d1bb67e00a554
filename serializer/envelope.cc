// The envelope (serializer/schema/envelope.fbs) and the store plumbing of
// the serializer: what the header's templates call once they have walked an
// object.
#include <cstring>
#include <unordered_set>

#include "envelope_generated.h"
#include "serializer/copy_internal.h"
#include "zcstore/serializer.h"

namespace zcstore {
namespace {

namespace fb = zcstore::fb;

// Bytes per element, 0 when unknown.
size_t ElementSize(ElementType t) {
  switch (t) {
    case ElementType::kInt8: case ElementType::kUInt8: case ElementType::kBool:
    case ElementType::kByte: case ElementType::kChar: return 1;
    case ElementType::kInt16: case ElementType::kUInt16: return 2;
    case ElementType::kInt32: case ElementType::kUInt32: case ElementType::kFloat32: return 4;
    case ElementType::kInt64: case ElementType::kUInt64: case ElementType::kFloat64: return 8;
    case ElementType::kUnknown: return 0;
  }
  return 0;
}

// InvalidArgument/Corrupt (per `make`) if a shape disagrees with a length.
template <typename Make>
Status CheckShape(const std::vector<uint64_t>& shape, ElementType type, uint64_t byte_length,
                  size_t i, Make make) {
  if (shape.empty()) return Status::OK();
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (d != 0 && n > UINT64_MAX / d) return make("buffer " + std::to_string(i) + ": shape overflows");
    n *= d;
  }
  size_t es = ElementSize(type);
  if (es != 0 && (n > UINT64_MAX / es || n * es != byte_length)) {
    return make("buffer " + std::to_string(i) + ": shape holds " + std::to_string(n) +
                " elements, but the buffer has " + std::to_string(byte_length) + " bytes");
  }
  return Status::OK();
}

}  // namespace

Result<std::vector<std::byte>> EncodeEnvelope(const EnvelopeFields& f) {
  flatbuffers::FlatBufferBuilder b(1024 + f.inline_data.size() + f.buffers.size() * 64);
  std::vector<flatbuffers::Offset<fb::BufferDescriptor>> descs;
  descs.reserve(f.buffers.size());
  for (size_t i = 0; i < f.buffers.size(); ++i) {
    const BufferInfo& info = f.buffers[i];
    Status st = CheckShape(info.shape, info.element_type, info.byte_length, i,
                           [](std::string m) { return InvalidArgument(std::move(m)); });
    if (!st.ok()) return st;
    auto shape = b.CreateVector(info.shape);
    descs.push_back(fb::CreateBufferDescriptor(
        b, info.index, info.byte_length, info.alignment,
        static_cast<fb::ElementType>(info.element_type), shape, info.checksum.value_or(0),
        info.checksum.has_value()));
  }
  auto buffers = b.CreateVector(descs);
  auto name = b.CreateString(f.type_name);
  auto inline_data = b.CreateVector(reinterpret_cast<const uint8_t*>(f.inline_data.data()),
                                    f.inline_data.size());
  auto env = fb::CreateEnvelope(b, kEnvelopeFormatVersion, name, f.type_version, f.layout_hash,
                                buffers, inline_data);
  fb::FinishEnvelopeBuffer(b, env);
  auto* p = reinterpret_cast<const std::byte*>(b.GetBufferPointer());
  return std::vector<std::byte>(p, p + b.GetSize());
}

Result<DecodedEnvelope> DecodeEnvelope(std::span<const std::byte> bytes) {
  DecodedEnvelope out;
  if (bytes.size() < 8 || bytes.size() > (uint64_t{1} << 31)) {
    return Corrupt("not a zcstore envelope: " + std::to_string(bytes.size()) + " bytes");
  }
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  if (reinterpret_cast<uintptr_t>(data) % 8 != 0) {
    // FlatBuffers needs its scalars aligned: verify an aligned copy.
    out.aligned_copy = std::make_shared<std::vector<uint64_t>>((bytes.size() + 7) / 8);
    std::memcpy(out.aligned_copy->data(), bytes.data(), bytes.size());
    data = reinterpret_cast<const uint8_t*>(out.aligned_copy->data());
  }
  if (!fb::EnvelopeBufferHasIdentifier(data)) {
    return Corrupt("not a zcstore envelope (no ZCSE identifier)");
  }
  flatbuffers::Verifier verifier(data, bytes.size(), /*max_depth=*/16, /*max_tables=*/1u << 20);
  if (!fb::VerifyEnvelopeBuffer(verifier)) {
    return Corrupt("the envelope fails FlatBuffers verification (truncated or corrupt)");
  }
  const fb::Envelope* env = fb::GetEnvelope(data);
  if (env->format_version() != kEnvelopeFormatVersion) {
    return VersionMismatch("envelope format version " + std::to_string(env->format_version()) +
                           "; this build reads version " + std::to_string(kEnvelopeFormatVersion));
  }
  out.type_name = env->type_name()->str();
  out.type_version = env->type_version();
  out.layout_hash = env->layout_hash();
  if (env->inline_data()) {
    out.inline_data = {reinterpret_cast<const std::byte*>(env->inline_data()->data()),
                       env->inline_data()->size()};
  }
  if (env->buffers()) {
    for (uint32_t i = 0; i < env->buffers()->size(); ++i) {
      const fb::BufferDescriptor* d = env->buffers()->Get(i);
      BufferInfo info;
      info.index = d->index();
      info.byte_length = d->byte_length();
      info.alignment = d->alignment();
      if (d->element_type() > fb::ElementType_MAX) {
        return Corrupt("buffer " + std::to_string(i) + ": unknown element type");
      }
      info.element_type = static_cast<ElementType>(d->element_type());
      if (const auto* shape = d->shape()) {
        // FlatBuffers 2.0.8's Verifier checks a vector's 4-byte length prefix
        // but not that 8-byte elements are 8-aligned (found by the fuzzer):
        // copy the raw bytes rather than reading them as uint64_t.
        info.shape.resize(shape->size());
        if (!info.shape.empty()) {
          std::memcpy(info.shape.data(), shape->Data(), shape->size() * sizeof(uint64_t));
        }
      }
      if (d->has_checksum()) info.checksum = d->checksum();
      if (info.alignment == 0 || (info.alignment & (info.alignment - 1)) != 0 ||
          info.alignment > 4096) {
        return Corrupt("buffer " + std::to_string(i) + ": alignment " +
                       std::to_string(info.alignment) + " is not a power of two up to 4096");
      }
      Status st = CheckShape(info.shape, info.element_type, info.byte_length, i,
                             [](std::string m) { return Corrupt("envelope: " + m); });
      if (!st.ok()) return st;
      out.buffers.push_back(std::move(info));
    }
  }
  return out;
}

Status CheckBuffers(const DecodedEnvelope& env, std::span<const std::span<const std::byte>> buffers,
                    bool verify_checksums) {
  if (env.buffers.size() != buffers.size()) {
    return Corrupt("buffer count mismatch: the envelope describes " +
                   std::to_string(env.buffers.size()) + " buffers, the object has " +
                   std::to_string(buffers.size()));
  }
  std::vector<bool> seen(buffers.size(), false);
  for (size_t i = 0; i < env.buffers.size(); ++i) {
    const BufferInfo& info = env.buffers[i];
    if (info.index >= buffers.size() || seen[info.index]) {
      return Corrupt("buffer " + std::to_string(i) + ": index " + std::to_string(info.index) +
                     " is out of range or used twice");
    }
    seen[info.index] = true;
    std::span<const std::byte> b = buffers[info.index];
    if (b.size() != info.byte_length) {
      return Corrupt("buffer " + std::to_string(i) + ": the envelope says " +
                     std::to_string(info.byte_length) + " bytes, the object holds " +
                     std::to_string(b.size()));
    }
    if (reinterpret_cast<uintptr_t>(b.data()) % info.alignment != 0) {
      return Corrupt("buffer " + std::to_string(i) + " is not aligned to " +
                     std::to_string(info.alignment) + " bytes");
    }
    if (verify_checksums && info.checksum && internal::Checksum(b) != *info.checksum) {
      return Corrupt("buffer " + std::to_string(i) + " checksum mismatch (" +
                     std::to_string(b.size()) + " bytes)");
    }
  }
  return Status::OK();
}

namespace internal {

void PutVarint(std::vector<std::byte>& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<std::byte>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<std::byte>(v));
}

uint64_t HashString(std::string_view s, uint64_t seed) {
  return Checksum(std::as_bytes(std::span(s.data(), s.size()))) ^ seed;
}

Status CheckIdentity(const DecodedEnvelope& env, const TypeIdentity& type) {
  if (env.type_name != type.name) {
    return TypeMismatch("the object is a '" + env.type_name + "', not a '" + type.name + "'");
  }
  if (env.type_version < type.min_version || env.type_version > type.version) {
    std::string reads = type.min_version == type.version
                            ? "version " + std::to_string(type.version)
                            : "versions " + std::to_string(type.min_version) + " to " +
                                  std::to_string(type.version);
    return VersionMismatch("the object is a '" + type.name + "' of version " +
                           std::to_string(env.type_version) + "; this program reads " + reads +
                           (env.type_version < type.min_version
                                ? " (lower kZcstoreMinVersion, and read the old fields by "
                                  "ar.version(), to load it)"
                                : ""));
  }
  if (env.layout_hash != type.layout_hash_at(env.type_version)) {
    return TypeMismatch(
        "the object is a '" + type.name + "' of version " + std::to_string(env.type_version) +
        " with another field layout than this program's Serialize describes for that version "
        "(the type changed without a new kZcstoreVersion, or reads the old version wrongly)");
  }
  return Status::OK();
}

Status PutSaved(Store& store, ObjectId id, const std::string& type_name, uint32_t type_version,
                uint64_t layout_hash, SaveArchive& ar) {
  std::vector<OutOfBand>& oob = ar.buffers();
  // Store order: copied buffers first, then adopted ones (arrays allocated
  // in this store, moved in without a copy).
  std::vector<size_t> copied, adopted;
  for (size_t i = 0; i < oob.size(); ++i) {
    bool adopt = oob[i].adopt && oob[i].adopt->valid() && oob[i].adopt->BelongsTo(store);
    (adopt ? adopted : copied).push_back(i);
  }
  EnvelopeFields f;
  f.type_name = type_name;
  f.type_version = type_version;
  f.layout_hash = layout_hash;
  f.inline_data = ar.bytes();
  f.buffers.resize(oob.size());
  for (size_t k = 0; k < copied.size() + adopted.size(); ++k) {
    size_t i = k < copied.size() ? copied[k] : adopted[k - copied.size()];
    BufferInfo& info = f.buffers[i];
    info.index = static_cast<uint32_t>(k);
    info.byte_length = oob[i].size;
    info.alignment = 64;
    info.element_type = oob[i].element_type;
    info.shape = oob[i].shape;
    if (ar.options().checksums) info.checksum = Checksum({oob[i].data, oob[i].size});
  }
  auto env = EncodeEnvelope(f);
  if (!env.ok()) return env.status();
  std::vector<size_t> sizes;
  for (size_t i : copied) sizes.push_back(oob[i].size);
  std::vector<ObjectBuilder> children;
  for (size_t i : adopted) children.push_back(std::move(*oob[i].adopt));
  auto builder = store.CreateObject(id, env->size(), sizes, children);
  if (!builder.ok()) {
    // Nothing was moved: hand the arrays their builders back.
    for (size_t k = 0; k < adopted.size(); ++k) *oob[adopted[k]].adopt = std::move(children[k]);
    return builder.status();
  }
  std::memcpy(builder->metadata().data(), env->data(), env->size());
  PutStats stats;
  stats.envelope_bytes = env->size();
  for (size_t k = 0; k < copied.size(); ++k) {
    OutOfBand& b = oob[copied[k]];
    CopyOut(builder->buffer(k).data(), b.data, b.size, ar.move() && b.releasable);
    if (ar.move() && b.release) b.release();
    ++stats.copied_buffers;
    stats.copied_bytes += b.size;
  }
  for (size_t i : adopted) {
    ++stats.adopted_buffers;
    stats.adopted_bytes += oob[i].size;
    // The Array gives up its writable pointer now that the store owns the
    // bytes, even if its object is then copied rather than moved from.
    if (oob[i].release) oob[i].release();
  }
  Status st = builder->Seal();
  if (st.ok() && ar.options().stats) *ar.options().stats = stats;
  return st;
}

Result<RawObject> GetChecked(const Store& store, ObjectId id, const TypeIdentity& type,
                             const LoadOptions& options) {
  auto raw = GetRaw(store, id, options);
  if (!raw.ok()) return raw.status();
  if (Status st = CheckIdentity(raw->envelope, type); !st.ok()) {
    return st.WithContext("object " + id.ToString());
  }
  return raw;
}

}  // namespace internal

Status PutRaw(Store& store, ObjectId id, std::string_view type_name,
              std::span<const std::byte> payload, std::span<const RawBuffer> buffers,
              const SerializeOptions& options) {
  internal::SaveArchive ar(options, /*move=*/false);
  ar.PutRaw(payload.data(), payload.size());
  for (const RawBuffer& b : buffers) {
    internal::OutOfBand o;
    o.data = b.data.data();
    o.size = b.data.size();
    o.element_type = b.element_type;
    o.shape = b.shape;
    ar.AddBuffer(std::move(o));
  }
  return internal::PutSaved(store, id, std::string(type_name), 0, 0, ar);
}

Result<RawObject> GetRaw(const Store& store, ObjectId id, const LoadOptions& options) {
  auto view = store.Get(id);
  if (!view.ok()) return view.status();
  RawObject out;
  out.view = std::make_shared<const ObjectView>(std::move(*view));
  // Verify and decode a private copy: any process that writes to the store
  // can change the mapped bytes between a check and a use. The envelope is
  // small; the buffers stay where they are (nothing structural is in them).
  std::span<const std::byte> md = out.view->metadata();
  auto copy = std::make_shared<std::vector<uint64_t>>((md.size() + 7) / 8);
  if (!md.empty()) std::memcpy(copy->data(), md.data(), md.size());
  std::span<const std::byte> private_md(reinterpret_cast<const std::byte*>(copy->data()), md.size());
  if (auto sum = out.view->metadata_checksum(); sum && internal::Checksum(private_md) != *sum) {
    return Corrupt("object " + id.ToString() + ": metadata checksum mismatch (the envelope was "
                   "changed after Seal)");
  }
  auto env = DecodeEnvelope(private_md);
  if (!env.ok()) return env.status().WithContext("object " + id.ToString());
  out.envelope = std::move(*env);
  out.envelope.aligned_copy = std::move(copy);  // inline_data points into it
  Status st = CheckBuffers(out.envelope, out.view->buffers(), options.verify_checksums);
  if (!st.ok()) return st.WithContext("object " + id.ToString());
  for (const BufferInfo& b : out.envelope.buffers) out.buffers.push_back(out.view->buffer(b.index));
  return out;
}

}  // namespace zcstore
