// Must not compile: a task that takes its argument by value. The build check
// (tests/CMakeLists.txt) expects the static_assert's message, not an error
// deep inside a template.
#include "zcstore/zcstore.h"

int ByValue(zcstore::TaskContext&, int x) { return x; }
ZCSTORE_TASK("by_value", ByValue);
