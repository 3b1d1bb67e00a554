"""The Python side of a pool worker: what runs a call the C++ loop hands over.

A spawned worker is ``python3 -c "from zcstore.pool_worker import main;
main()" --zcstore-worker ...``: main() opens the pool's store (the
descriptor the pool passed down) and enters the C++ worker loop, which calls
Runner.run for each task with the GIL held. A forked worker (the fork
backend) starts in a ForkChild its pool made ready, run by the C++ pool in
the new child before its loop, and runs the Runner its parent made. The
threads backend runs a Runner in each of its threads.
"""
import importlib
import io
import logging
import multiprocessing.process
import multiprocessing.spawn
import multiprocessing.util
import os
import pickle
import sys
import threading

from . import Store, _core
from .pool import STDOUT, drop_unshared, dumps, exception_payload, loads, record_line

STORE_FD = 4  # where the pool puts its store's descriptor (pool/pool_internal.h)
_store = None  # a forked worker's handle on the pool's store

# ProcessPoolExecutor's logger: an initializer's failure is logged there.
_LOGGER = logging.getLogger("concurrent.futures")


class Runner:
    """Runs pickled calls: (fn, args, kwargs) in, (status, value) out, with
    status True (value: the result), False (value: the task's exception)
    or None (this worker's initializer raised value: the pool is broken).

    The initializer runs before the first call, once per worker (per
    thread for the threads backend); if it raises, every call answers
    None, and the failure is logged at CRITICAL on "concurrent.futures", as
    ProcessPoolExecutor does.
    """

    def __init__(self, store=None, initializer=None, initargs=(), main_name=None,
                 process=True):
        # A spawned worker reads its start-up data from the pool's store;
        # a forked one (or a thread) has its parent's everything already
        # and runs just the initializer (a forked one: once in each worker).
        self._store, self._main_name = store, main_name
        self._initializer, self._initargs = initializer, initargs
        self._process = process  # a worker process (not a thread of the parent)
        self._local = threading.local()  # .failure: None once ready, or what the initializer raised

    def _prepare(self):
        if self._store is not None:
            # What multiprocessing's spawn does for its children: the parent's
            # sys.path, authkey and __main__ (as __mp_main__), so functions
            # defined in the script resolve; then the pool's initializer,
            # unpickled only now that its module can be found.
            start = self._store.get(self._store.lookup(self._main_name))
            logging.getLogger().setLevel(start["log_level"])
            # Marked as multiprocessing's spawn marks it, so that a script
            # without its __main__ guard gets the usual RuntimeError (from
            # Pool(), or a ProcessPoolExecutor) rather than start pools.
            me = multiprocessing.process.current_process()
            me._inheriting = True
            try:
                multiprocessing.spawn.prepare(start["prepare"])
            finally:
                me._inheriting = False
            for module in start.get("imports", ()):
                importlib.import_module(module)
            self._initializer, self._initargs = pickle.loads(start["init"])
            self._store = None
        if self._initializer is not None:
            self._initializer(*self._initargs)

    def run(self, stream, buffers):
        local = self._local
        if not hasattr(local, "failure"):
            try:
                self._prepare()
                local.failure = None
            except BaseException as e:
                _LOGGER.critical("Exception in initializer:", exc_info=True)
                local.failure = e
                if self._process:
                    # This worker runs nothing more: wind down as a process
                    # exit would, so that what the initializer set up
                    # (a multiprocessing Queue's feeder, say) is flushed
                    # before the parent hears of the failure.
                    multiprocessing.util._run_finalizers(0)
                    multiprocessing.util._run_finalizers()
        if local.failure is not None:
            outcome = (None, exception_payload(local.failure))
        else:
            if self._process:
                drop_unshared()
            try:
                fn, args, kwargs = loads(stream, buffers)
                outcome = (True, fn(*args, **kwargs))
            except BaseException as e:  # the task's own failure: for its future
                outcome = (False, exception_payload(e))
        try:
            return dumps(outcome)
        except BaseException as e:  # a result that cannot be pickled: that error, for its future
            e.add_note("(the task's result cannot be sent back to the parent)")
            return dumps((False, exception_payload(e)))


def thread_runner(initializer, initargs):
    """The threads backend's runner: the initializer once per thread."""
    return Runner(None, initializer, initargs, process=False).run


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


class _MarkedStdout(io.TextIOBase):
    """sys.stdout of a worker: each whole line goes to descriptor `fd` marked
    as stdout (pool.STDOUT), so that the parent prints it to its own
    sys.stdout; an unfinished line waits for its end (or for close)."""

    def __init__(self, fd):
        self._fd, self._partial = fd, ""

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def write(self, text):
        *lines, self._partial = (self._partial + text).split("\n")
        if lines:
            data = "".join(f"{STDOUT}{line}\n" for line in lines)
            _write_all(self._fd, data.encode("utf-8", "backslashreplace"))
        return len(text)

    def close(self):
        if self._partial:
            self.write("\n")
        super().close()


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _line_file(fd):
    return open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False,
                buffering=1)


def _worker_output():
    # Lines reach the parent as they are written, not when a buffer fills;
    # logging records travel whole, to be handled by the parent's logging.
    sys.stdout = _MarkedStdout(1)
    if sys.stderr is not None and hasattr(sys.stderr, "reconfigure"):
        sys.stderr.reconfigure(line_buffering=True)
    logging.getLogger().handlers[:] = [_record_handler()]


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
        try:  # a file on descriptor number 2, which is the pipe in a child
            self._stderr = _line_file(2)
        except OSError:  # closed here: made in each child instead
            self._stderr = None
        self._stdout = _MarkedStdout(1)
        self._handler = _record_handler()

    def __call__(self, handle):
        """Called in the child, with the worker's own handle on the pool's
        store (the C++ loop's, opened in this child): made a Store here, so
        that handles of shared objects resolve."""
        sys.stdout, sys.stderr = self._stdout, self._stderr or _line_file(2)
        logging.getLogger().handlers[:] = [self._handler]
        # As multiprocessing's own fork children start (Process._bootstrap):
        # the parent's child processes and finalizers are not this one's
        # (exit() would otherwise stop the parent's children), and what was
        # registered to run after a fork runs.
        multiprocessing.process._children = set()
        multiprocessing.util._finalizer_registry.clear()
        multiprocessing.util._run_after_forkers()
        global _store
        _store = Store(handle, "/dev/shm")

    def exit(self):
        """Called in the child when its loop has ended, before it exits with
        _exit (no atexit handlers: they are the parent's). Stops what the
        tasks started here, in the order of an interpreter's exit: first
        threading's (it waits for the threads, then runs its atexit list,
        where a loky executor that a task used stops its workers), then
        multiprocessing's (its finalizers; daemonic children terminated, the
        others joined: loky's workers are such children, so the other order
        waits for them until the pool kills the worker). Before this, a
        forked worker left them all running, orphaned."""
        try:
            threading._shutdown()
        finally:
            multiprocessing.util._exit_function()
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except (AttributeError, OSError, ValueError):
                    pass


def main(main_name):
    """A spawned worker; ``main_name``: where its pool bound its start-up data."""
    _worker_output()
    store = Store.open_fd(STORE_FD, read_only=True)
    rc = _core.run_worker(sys.argv, Runner(store, main_name=main_name).run)
    sys.stdout.close()  # an unfinished last line
    sys.exit(rc)
