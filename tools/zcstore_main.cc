// zcstore: look at, check and clean up stores from the command line.
//
// A STORE argument containing '/' or ending in ".zcs" is a file store's path;
// anything else names a shared-memory store of the calling user.
// Exit status: 0 success, 1 an operation failed (the reason on stderr),
// 2 wrong usage.
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "zcstore/zcstore.h"

namespace {

using namespace zcstore;

struct Command {
  const char* usage;
  const char* help;
  int (*run)(const std::vector<std::string>& args, const std::string& shm_dir);
  size_t min_args, max_args;
};

// --json: list, stat and inspect print one JSON document instead of text.
bool g_json = false;

// `text` as a JSON string literal.
std::string Json(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// Handles open on the store besides the one this command opened (a read-only
// file store's snapshot handle does not register, others do).
uint32_t OtherHandles(const Store& s, const StoreStats& st) {
  bool registered = s.backing() != Backing::kFile || !s.read_only();
  return registered && st.clients > 0 ? st.clients - 1 : st.clients;
}

int Fail(const Status& st) {
  std::fprintf(stderr, "zcstore: %s\n", st.ToString().c_str());
  return 1;
}

bool IsFilePath(const std::string& s) {
  return s.find('/') != std::string::npos ||
         (s.size() > 4 && s.compare(s.size() - 4, 4, ".zcs") == 0);
}

Result<Store> OpenForReading(const std::string& target, const std::string& shm_dir) {
  OpenOptions o;
  o.read_only = true;
  o.shm_dir = shm_dir;
  o.backing = IsFilePath(target) ? Backing::kFile : Backing::kSharedMemory;
  return Store::Open(target, o);
}

std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string Age(int64_t sealed_unix_ns) {
  if (sealed_unix_ns == 0) return "-";
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  double s = (now.tv_sec * 1e9 + now.tv_nsec - static_cast<double>(sealed_unix_ns)) / 1e9;
  char buf[32];
  if (s < 120) std::snprintf(buf, sizeof(buf), "%.0fs", s);
  else if (s < 7200) std::snprintf(buf, sizeof(buf), "%.0fm", s / 60);
  else std::snprintf(buf, sizeof(buf), "%.1fh", s / 3600);
  return buf;
}

const char* StateName(ObjectInfo::State s) {
  switch (s) {
    case ObjectInfo::State::kUnsealed: return "unsealed";
    case ObjectInfo::State::kSealed: return "sealed";
    case ObjectInfo::State::kDeletedPinned: return "deleted";
  }
  return "?";
}

void PrintObjects(const std::vector<ObjectInfo>& objects) {
  std::printf("  %-32s  %-8s  %10s  %7s  %4s  %5s\n", "ID", "STATE", "SIZE", "BUFFERS", "PINS",
              "AGE");
  for (const ObjectInfo& o : objects) {
    std::printf("  %-32s  %-8s  %10s  %7u  %4u  %5s\n", o.id.ToString().c_str(),
                StateName(o.state), HumanBytes(o.metadata_bytes + o.data_bytes).c_str(),
                o.num_buffers, o.pins, Age(o.sealed_unix_ns).c_str());
  }
}

// One store of `list`: a summary line and its objects (or, with --json, one
// JSON object, into `json`).
int PrintStore(const std::string& target, const std::string& shm_dir, std::string* json) {
  auto s = OpenForReading(target, shm_dir);
  if (!s.ok()) return Fail(s.status());
  auto st = s->Stats();
  if (!st.ok()) return Fail(st.status());
  auto list = s->List();
  if (!list.ok()) return Fail(list.status());
  if (json) {
    *json += "{\"store\": " + Json(target) + ", \"objects\": " + std::to_string(st->objects) +
             ", \"used\": " + std::to_string(st->used) + ", \"capacity\": " +
             std::to_string(st->capacity) + ", \"other_handles\": " +
             std::to_string(OtherHandles(*s, *st)) + ", \"object_list\": [";
    for (size_t i = 0; i < list->size(); ++i) {
      const ObjectInfo& o = (*list)[i];
      *json += std::string(i ? ", " : "") + "{\"id\": " + Json(o.id.ToString()) +
               ", \"state\": " + Json(StateName(o.state)) + ", \"bytes\": " +
               std::to_string(o.metadata_bytes + o.data_bytes) + ", \"buffers\": " +
               std::to_string(o.num_buffers) + ", \"pins\": " + std::to_string(o.pins) +
               ", \"sealed_unix_ns\": " + std::to_string(o.sealed_unix_ns) + "}";
    }
    *json += "]}";
    return 0;
  }
  std::printf("%s: %u objects, %s of %s used, %u other handles open\n", target.c_str(),
              st->objects, HumanBytes(st->used).c_str(), HumanBytes(st->capacity).c_str(),
              OtherHandles(*s, *st));
  PrintObjects(*list);
  return 0;
}

int List(const std::vector<std::string>&, const std::string& shm_dir) {
  auto names = Store::ListStores(shm_dir);
  if (!names.ok()) return Fail(names.status());
  int rc = 0;
  if (g_json) {
    std::string json = "[";
    for (size_t i = 0; i < names->size(); ++i) {
      std::string one;
      rc |= PrintStore((*names)[i], shm_dir, &one);
      if (!one.empty()) json += (json.size() > 1 ? ", " : "") + one;
    }
    std::printf("%s]\n", json.c_str());
    return rc;
  }
  if (names->empty()) std::printf("no stores in %s\n", shm_dir.c_str());
  for (const std::string& n : *names) rc |= PrintStore(n, shm_dir, nullptr);
  return rc;
}

int Stat(const std::vector<std::string>& a, const std::string& shm_dir) {
  auto s = OpenForReading(a[0], shm_dir);
  if (!s.ok()) return Fail(s.status());
  auto st = s->Stats();
  if (!st.ok()) return Fail(st.status());
  if (g_json) {
    std::printf(
        "{\"store\": %s, \"backing\": %s, \"capacity\": %llu, \"used\": %llu, "
        "\"largest_free\": %llu, \"objects\": %u, \"unsealed\": %u, \"deleted_pinned\": %u, "
        "\"max_objects\": %u, \"pins\": %llu, \"other_handles\": %u, \"max_handles\": %u, "
        "\"names\": %u}\n",
        Json(a[0]).c_str(), Json(s->backing() == Backing::kFile ? "file" : "shared memory").c_str(),
        static_cast<unsigned long long>(st->capacity), static_cast<unsigned long long>(st->used),
        static_cast<unsigned long long>(st->largest_free), st->objects, st->unsealed,
        st->deleted_pinned, st->max_objects, static_cast<unsigned long long>(st->pins),
        OtherHandles(*s, *st), st->max_clients, st->names);
    return 0;
  }
  std::printf("store:           %s\n", a[0].c_str());
  std::printf("backing:         %s\n", s->backing() == Backing::kFile ? "file" : "shared memory");
  std::printf("capacity:        %llu (%s)\n", static_cast<unsigned long long>(st->capacity),
              HumanBytes(st->capacity).c_str());
  std::printf("used:            %llu (%s)\n", static_cast<unsigned long long>(st->used),
              HumanBytes(st->used).c_str());
  std::printf("largest free:    %llu\n", static_cast<unsigned long long>(st->largest_free));
  std::printf("objects:         %u sealed, %u unsealed, %u deleted but pinned (max %u)\n",
              st->objects, st->unsealed, st->deleted_pinned, st->max_objects);
  std::printf("pins:            %llu\n", static_cast<unsigned long long>(st->pins));
  std::printf("handles:         %u open besides this one (max %u)\n", OtherHandles(*s, *st),
              st->max_clients);
  std::printf("names:           %u\n", st->names);
  return 0;
}

int Inspect(const std::vector<std::string>& a, const std::string& shm_dir) {
  auto s = OpenForReading(a[0], shm_dir);
  if (!s.ok()) return Fail(s.status());
  auto id = ObjectId::FromString(a[1]);
  if (!id.ok()) {
    auto named = s->Lookup(a[1]);
    if (!named.ok()) return Fail(NotFound("'" + a[1] + "' is neither an object id nor a name"));
    id = *named;
  }
  auto v = s->Get(*id);
  if (!v.ok()) return Fail(v.status());
  // A typed object's envelope names its type and each buffer's element
  // type and shape; a raw object (metadata of another runtime) has none.
  auto env = DecodeEnvelope(v->metadata());
  std::vector<const BufferInfo*> info(v->num_buffers(), nullptr);
  if (env.ok()) {
    for (const BufferInfo& b : env->buffers) {
      if (b.index < info.size()) info[b.index] = &b;
    }
  }
  std::vector<std::string> bound;
  if (auto names = s->ListNames(); names.ok()) {
    for (auto& [name, named] : *names) {
      if (named == *id) bound.push_back(name);
    }
  }
  // Buffer i's dimensions joined by `sep` ("" when the envelope has none).
  auto shape = [&](size_t i, const char* sep) {
    std::string out;
    if (info[i] == nullptr) return out;
    for (size_t d = 0; d < info[i]->shape.size(); ++d) {
      out += (d ? sep : "") + std::to_string(info[i]->shape[d]);
    }
    return out;
  };
  Status verified = s->Verify(*id);
  std::string checks = verified.ok() ? "ok"
                       : verified.code() == StatusCode::kInvalidArgument ? "none"
                                                                         : verified.message();
  if (g_json) {
    std::string json = "{\"object\": " + Json(id->ToString()) + ", \"type\": " +
                       (env.ok() ? Json(env->type_name) : "null") + ", \"type_version\": " +
                       (env.ok() ? std::to_string(env->type_version) : "null") +
                       ", \"metadata_bytes\": " + std::to_string(v->metadata().size()) +
                       ", \"buffers\": [";
    for (size_t i = 0; i < v->num_buffers(); ++i) {
      json += std::string(i ? ", " : "") + "{\"bytes\": " + std::to_string(v->buffer(i).size()) +
              ", \"shape\": [" + shape(i, ", ") + "]}";
    }
    json += "], \"names\": [";
    for (size_t i = 0; i < bound.size(); ++i) json += (i ? ", " : "") + Json(bound[i]);
    json += "], \"checksums\": " + Json(checks) + "}";
    std::printf("%s\n", json.c_str());
  } else {
    std::printf("object:    %s\n", id->ToString().c_str());
    if (env.ok()) {
      std::printf("type:      %s, version %u\n", env->type_name.empty() ? "(raw)" : env->type_name.c_str(),
                  env->type_version);
    } else {
      std::printf("type:      none (the metadata is not a zcstore envelope)\n");
    }
    std::string names;
    for (const std::string& n : bound) names += (names.empty() ? "" : ", ") + n;
    std::printf("names:     %s\n", names.empty() ? "none" : names.c_str());
    std::printf("metadata:  %zu bytes\n", v->metadata().size());
    std::printf("buffers:   %zu\n", v->num_buffers());
    for (size_t i = 0; i < v->num_buffers(); ++i) {
      std::string dims = shape(i, "x");
      std::printf("  [%zu] %zu bytes (%s)%s%s\n", i, v->buffer(i).size(),
                  HumanBytes(v->buffer(i).size()).c_str(), dims.empty() ? "" : ", shape ",
                  dims.c_str());
    }
    std::printf("checksums: %s\n", checks.c_str());
  }
  return verified.ok() || verified.code() == StatusCode::kInvalidArgument ? 0 : 1;
}

int Verify(const std::vector<std::string>& a, const std::string& shm_dir) {
  auto s = OpenForReading(a[0], shm_dir);
  if (!s.ok()) return Fail(s.status());
  // The tables first (a damaged state would hide its object from a walk
  // over the objects), then every object that has checksums.
  if (Status st = s->VerifyAll(); !st.ok()) return Fail(st);
  auto list = s->List();
  if (!list.ok()) return Fail(list.status());
  size_t checked = 0, without = 0;
  for (const ObjectInfo& o : *list) {
    if (o.state != ObjectInfo::State::kSealed) continue;
    (o.has_checksums ? checked : without) += 1;
  }
  if (checked == 0 && without > 0) {
    // Asked to verify checksums that do not exist: say so, and fail.
    std::printf("%s: tables are consistent; none of its %zu objects has checksums (the store "
                "was created without them), so no data could be checked\n",
                a[0].c_str(), without);
    return 1;
  } else {
    std::printf("%s: tables are consistent; %zu objects verified, every checksum matches%s\n",
                a[0].c_str(), checked,
                without ? (" (" + std::to_string(without) + " without checksums not checked)").c_str()
                        : "");
  }
  return 0;
}

int Gc(const std::vector<std::string>&, const std::string& shm_dir) {
  auto removed = Store::CollectGarbage(shm_dir);
  if (!removed.ok()) return Fail(removed.status());
  for (const std::string& n : *removed) std::printf("removed %s\n", n.c_str());
  std::printf("%zu abandoned store%s removed\n", removed->size(), removed->size() == 1 ? "" : "s");
  return 0;
}

int Rm(const std::vector<std::string>& a, const std::string& shm_dir) {
  int rc = 0;
  for (const std::string& name : a) {
    OpenOptions o;
    o.shm_dir = shm_dir;
    o.backing = IsFilePath(name) ? Backing::kFile : Backing::kSharedMemory;
    Status st = Store::Remove(name, o);
    if (!st.ok()) rc = Fail(st);
    else std::printf("removed %s\n", name.c_str());
  }
  return rc;
}

const std::map<std::string, Command>& Commands() {
  static const std::map<std::string, Command> commands = {
      {"list", {"list", "List this user's shared-memory stores and their objects (size, pins, age).",
                List, 0, 0}},
      {"stat", {"stat STORE", "Show a store's capacity, use, objects, pins and handles.", Stat, 1,
                1}},
      {"inspect", {"inspect STORE ID|NAME",
                   "Show one object: its type and version, the names bound to it, metadata "
                   "size, each buffer's size and shape, its checksums.", Inspect,
                   2, 2}},
      {"verify", {"verify STORE",
                  "Check the tables, then every checksum of every object; exit 1 on the first "
                  "problem, naming the object and buffer, or if no object has checksums.",
                  Verify, 1, 1}},
      {"gc", {"gc", "Remove shared-memory stores whose every user has died; say what was removed.",
              Gc, 0, 0}},
      {"rm", {"rm STORE...", "Remove stores by name (or path). Processes using them keep working.",
              Rm, 1, 64}},
  };
  return commands;
}

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: zcstore [--shm-dir DIR] [--json] [--version] COMMAND [ARGS]\n\n"
               "STORE is a shared-memory store's name, or a file store's path (containing '/'\n"
               "or ending in .zcs).\n\ncommands:\n");
  for (auto& [name, c] : Commands()) std::fprintf(out, "  %-24s %s\n", c.usage, c.help);
  std::fprintf(out, "\n'zcstore COMMAND --help' describes one command. zcstore %s\n",
               ZCSTORE_VERSION_STRING);
}

}  // namespace

int main(int argc, char** argv) {
  // Options may come anywhere on the line; the rest is COMMAND [ARGS].
  std::vector<std::string> args;
  std::string shm_dir = "/dev/shm";
  bool help = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--shm-dir" && i + 1 < argc) {
      shm_dir = argv[++i];
    } else if (a.rfind("--shm-dir=", 0) == 0) {
      shm_dir = a.substr(10);
    } else if (a == "--json") {
      g_json = true;
    } else if (a == "--version") {
      std::printf("zcstore %s\n", ZCSTORE_VERSION_STRING);
      return 0;
    } else if (a == "--help" || a == "-h") {
      help = true;
    } else if (a.size() > 1 && a[0] == '-' && a != "-") {
      std::fprintf(stderr, "zcstore: unknown option '%s'\n\n", a.c_str());
      Usage(stderr);
      return 2;
    } else {
      args.push_back(std::move(a));
    }
  }
  if (args.empty() || args[0] == "help") {
    Usage(help || !args.empty() ? stdout : stderr);
    return help || !args.empty() ? 0 : 2;
  }
  auto it = Commands().find(args[0]);
  if (it == Commands().end()) {
    std::fprintf(stderr, "zcstore: unknown command '%s'\n\n", args[0].c_str());
    Usage(stderr);
    return 2;
  }
  const Command& c = it->second;
  if (help) {
    std::printf("usage: zcstore %s\n\n%s\n", c.usage, c.help);
    return 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (rest.size() < c.min_args || rest.size() > c.max_args) {
    std::fprintf(stderr, "usage: zcstore %s\n", c.usage);
    return 2;
  }
  return c.run(rest, shm_dir);
}
