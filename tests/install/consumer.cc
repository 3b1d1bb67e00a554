// Uses the installed headers and library: creates a memfd store, puts and
// gets one object, and prints the version it was built against.
#include <cstdio>
#include <cstring>

#include "zcstore/zcstore.h"

int main() {
  zcstore::StoreOptions o;
  o.backing = zcstore::Backing::kMemfd;
  o.capacity = 1 << 20;
  auto store = zcstore::Store::Create("consumer", o);
  if (!store.ok()) return 1;
  const char text[] = "installed";
  zcstore::ObjectId id = zcstore::ObjectId::Random();
  if (!store->Put(id, std::as_bytes(std::span(text)), {}).ok()) return 1;
  auto view = store->Get(id);
  if (!view.ok() || std::memcmp(view->metadata().data(), text, sizeof(text)) != 0) return 1;
  std::printf("consumer ok with zcstore %s\n", ZCSTORE_VERSION_STRING);
  return 0;
}
