"""The Python side of a pool worker: what runs a call the C++ loop hands over.

A spawned worker is ``python3 -c "from zcstore.pool_worker import main;
main()" --zcstore-worker ...``: main() opens the pool's store (the
descriptor the pool passed down) and enters the C++ worker loop, which calls
Runner.run for each task with the GIL held.
"""
import logging
import multiprocessing.spawn
import sys

from . import Store, _core
from .pool import _MAIN_NAME, dumps, exception_payload, loads, record_line

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
        logging.getLogger().setLevel(start["log_level"])
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


class _RecordHandler(logging.Handler):
    """Sends each logging record to the parent as one line of stderr."""

    def emit(self, record):
        try:
            sys.stderr.write(record_line(record, self.format(record)) + "\n")
        except Exception:
            self.handleError(record)


def main():
    # Lines reach the parent as they are written, not when a buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    handler = _RecordHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    store = Store.open_fd(STORE_FD, read_only=True)
    sys.exit(_core.run_worker(sys.argv, Runner(store).run))
