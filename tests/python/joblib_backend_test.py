"""joblib's own Parallel tests (Debian's python3-joblib ships them as
joblib.test.test_parallel), run on the "zcstore" backend with their
assertions unchanged.

The test module reads joblib's registered backends when it is imported:
zcstore.joblib registers "zcstore" first, so every test parametrized over
all valid backends gets it (by name and as an instance), and the lists of
process backends get it too. Only the cases that involve zcstore are
collected (`select`, which tests/python/conftest.py asks); each skip says
why.
"""
import pytest

import zcstore.joblib  # noqa: F401  (registers "zcstore" before joblib's tests read BACKENDS)

import joblib.test.test_parallel as _joblib_tests

for _name in ("PROCESS_BACKENDS", "PARALLEL_BACKENDS"):
    getattr(_joblib_tests, _name).append("zcstore")

from joblib.test.test_parallel import *  # noqa: F401,F403,E402

# Cases that test something other than the backend, with why.
SKIPS = {
    "test_nested_loop[multiprocessing-zcstore]":
        "a multiprocessing worker never imported zcstore.joblib: a backend registered at "
        "run time is unknown there, whichever it is",
    "test_nested_loop[loky-zcstore]": "the same, in a loky worker",
    "test_nested_loop[back_compat_backend-zcstore]": "the same, in a multiprocessing worker",
    "test_backend_nesting_level[zcstore-loky]": "the same, in a loky worker",
    "test_parallel_with_interactively_defined_functions[zcstore]":
        "its child script names the backend without importing zcstore.joblib, which any "
        "backend registered at run time needs",
    "test_auto_memmap_on_arrays_from_generator[zcstore]":
        "asserts numpy.memmap instances: the zcstore backend hands read-only views of its "
        "store instead (a deliberate difference, in the module's doc)",
    "test_memmapping_leaks[zcstore]": "the same: it reads numpy.memmap's filename",
}


def select(item):
    """What conftest.py asks of each collected test: drop it (False) unless
    it involves zcstore; skip it (the reason) if it is in SKIPS."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if not any(v == "zcstore" or type(v).__name__ == "ZcstoreBackend"
               for v in params.values()):
        return False
    return SKIPS.get(item.name, True)
