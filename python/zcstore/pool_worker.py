"""The Python side of a pool worker: what runs a call the C++ loop hands over.

A spawned worker is ``python3 -c "from zcstore.pool_worker import main;
main()" --zcstore-worker ...``: main() opens the pool's store (the
descriptor the pool passed down) and enters the C++ worker loop, which calls
Runner.run for each task with the GIL held. A forked worker (the fork
backend) starts in a ForkChild its pool made ready, run by the C++ pool in
the new child before its loop, and runs the Runner its parent made.
"""
import logging
import multiprocessing.spawn
import sys

from . import Store, _core
from .pool import dumps, exception_payload, loads, record_line

STORE_FD = 4  # where the pool puts its store's descriptor (pool/pool_internal.h)
_store = None  # a forked worker's handle on the pool's store


class Runner:
    """Runs pickled calls: (fn, args, kwargs) in, (ok, value) out."""

    def __init__(self, store=None, initializer=None, initargs=(), main_name=None):
        # A spawned worker reads its start-up data from the pool's store;
        # a forked one (or a thread) has its parent's everything already
        # and runs just the initializer (a forked one: once in each worker).
        self._store, self._main_name = store, main_name
        self._initializer, self._initargs = initializer, initargs
        self._ready = store is None and initializer is None

    def _prepare(self):
        if self._store is not None:
            # What multiprocessing's spawn does for its children: the parent's
            # sys.path and its __main__ (as __mp_main__), so functions defined in
            # the script resolve; then the pool's initializer.
            start = self._store.get(self._store.lookup(self._main_name))
            logging.getLogger().setLevel(start["log_level"])
            multiprocessing.spawn.prepare(start["prepare"])
            self._initializer, self._initargs = start["initializer"], start["initargs"]
        if self._initializer is not None:
            self._initializer(*self._initargs)
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


def _record_handler():
    handler = _RecordHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def _worker_output():
    # Lines reach the parent as they are written, not when a buffer fills;
    # logging records travel whole, to be handled by the parent's logging.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    logging.getLogger().handlers[:] = [_record_handler()]


def _line_file(fd):
    return open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                buffering=1)


class ForkChild:
    """A forked worker's start, made ready in the parent by its pool.

    In the child, stdout and stderr are the pool's log pipe, and the root
    logger's handlers (the parent's, inherited) give way to the one that
    sends records to the parent. sys.stdout and sys.stderr become files on
    those descriptors (in the parent they may be other files: a test
    runner's capture, a redirection). What that takes is made here, before
    any fork, so that a child only installs it: in a child each new object
    costs copy-on-write faults, a millisecond for these.
    """

    def __init__(self):
        try:  # files on descriptor numbers 1 and 2, which are the pipe in a child
            self._files = (_line_file(1), _line_file(2))
        except OSError:  # closed here: made in each child instead
            self._files = None
        self._handler = _record_handler()

    def __call__(self, handle):
        """Called in the child, with the worker's own handle on the pool's
        store (the C++ loop's, opened in this child): made a Store here, so
        that handles of shared objects resolve."""
        sys.stdout, sys.stderr = self._files or (_line_file(1), _line_file(2))
        logging.getLogger().handlers[:] = [self._handler]
        global _store
        _store = Store(handle, "/dev/shm")


def main(main_name):
    """A spawned worker; ``main_name``: where its pool bound its start-up data."""
    _worker_output()
    store = Store.open_fd(STORE_FD, read_only=True)
    sys.exit(_core.run_worker(sys.argv, Runner(store, main_name=main_name).run))
