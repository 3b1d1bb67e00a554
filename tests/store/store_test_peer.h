// Test-only access to a Store's internals (fault injection).
#ifndef ZCSTORE_TESTS_STORE_STORE_TEST_PEER_H_
#define ZCSTORE_TESTS_STORE_STORE_TEST_PEER_H_

#include "store/store_internal.h"
#include "zcstore/store.h"

namespace zcstore::internal {
struct StoreTestPeer {
  static StoreImpl* Impl(Store& s) { return s.impl_.get(); }
};
}  // namespace zcstore::internal

#endif  // ZCSTORE_TESTS_STORE_STORE_TEST_PEER_H_
