// The whole public API of zcstore. Include this, or the one header you need.
#ifndef ZCSTORE_ZCSTORE_H_
#define ZCSTORE_ZCSTORE_H_

#include "zcstore/array.h"
#include "zcstore/object_id.h"
#include "zcstore/pool.h"
#include "zcstore/serializer.h"
#include "zcstore/status.h"
#include "zcstore/store.h"
#include "zcstore/version.h"

#endif  // ZCSTORE_ZCSTORE_H_
