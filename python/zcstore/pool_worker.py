"""The Python side of a pool worker: what runs a call the C++ loop hands over.

A spawned worker is ``python3 -c "from zcstore.pool_worker import main;
main()" --zcstore-worker ...``: main() opens the pool's store (the
descriptor the pool passed down) and enters the C++ worker loop, which calls
Runner.run for each task with the GIL held.
"""
import multiprocessing.spawn
import sys

from . import Store, _core
from .pool import _MAIN_NAME, call_chunk, dumps, exception_payload, loads  # noqa: F401

STORE_FD = 4  # where the pool puts its store's descriptor (pool/pool_internal.h)


class Runner:
    """Runs pickled calls: (fn, args, kwargs) in, (ok, value) out."""

    def __init__(self, store):
        self._store = store        # None in the threads backend: nothing to prepare
        self._ready = store is None

    def _prepare(self):
        # What multiprocessing's spawn does for its children: the parent's
        # sys.path and its __main__ (as __mp_main__), so functions defined in
        # the script resolve; then the pool's initializer.
        start = self._store.get(self._store.lookup(_MAIN_NAME))
        multiprocessing.spawn.prepare(start["prepare"])
        if start["initializer"] is not None:
            start["initializer"](*start["initargs"])
        self._ready = True

    def run(self, stream, buffers):
        try:
            if not self._ready:
                self._prepare()
            fn, args, kwargs = loads(stream, buffers)
            outcome = (True, fn(*args, **kwargs))
        except BaseException as e:  # the task's own failure: for its future
            outcome = (False, exception_payload(e))
        try:
            return dumps(outcome)
        except Exception as e:  # a result that cannot be pickled
            return dumps((False, exception_payload(
                TypeError(f"the task's result cannot be sent back: {e}"))))


def main():
    store = Store.open_fd(STORE_FD, read_only=True)
    sys.exit(_core.run_worker(sys.argv, Runner(store).run))
