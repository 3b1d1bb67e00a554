"""zcstore.Pool: a concurrent.futures executor over the C++ pool.

Workers are spawned Python processes (``sys.executable``) that run the C++
pool's worker loop: calls reach them through the pool's shared-memory rings,
not pipes, and large arguments and results through its store. ``share``
puts an object in that store once; a task that gets the handle gets the
object itself, mapped once per worker, its arrays read-only and zero-copy.
"""

import concurrent.futures
import io
import logging
import multiprocessing.spawn
import os
import pickle
import sys
import threading
import time
import traceback
import weakref

from . import _core
from . import Ref, Store, _Pickler, InvalidArgument, NotFound
from .errors import BY_CODE

_BACKENDS = {"spawn": 0, "fork": 1, "threads": 2}
# A spawned worker runs _WORKER_CODE with the bound name of its pool's
# start-up data (unique: a pool may work in a store that others use too).
_MAIN_NAME = "zcstore.python.main."
_WORKER_CODE = "from zcstore.pool_worker import main; main({!r})"

try:  # lambdas and closures, where Debian's python3-cloudpickle is installed
    import cloudpickle as _cloudpickle
except ImportError:  # pragma: no cover - depends on the machine
    _cloudpickle = None


# ------------------------------------------------------------ shared objects

class Shared:
    """A handle on an object shared with the workers (Pool.share).

    Put it anywhere in a task's arguments: the task receives the object
    itself, got from the pool's store once per worker and cached, its arrays
    read-only views of the store.
    """

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref

    def __reduce__(self):
        return _attach, (self.ref,)

    def __repr__(self):
        return f"zcstore.Shared({self.ref.id})"


_attached = {}  # in a worker: the objects it got, by ref
# In a fork pool's parent: what it shared, as read-only views, for the
# workers it forks later to inherit; a worker pins one (for itself: the
# parent's pins are not its own) when a task first gets its handle.
_inherited = {}
_pins = {}  # in a worker: its pins of the objects it inherited


def _attach(ref):
    # The cache holds the object while it is shared; an unshared one is
    # dropped and reported, never served stale.
    obj = _attached.get(ref)
    if obj is not None:
        if ref in _store_of(ref):
            return obj
        del _attached[ref]
        _pins.pop(ref, None)
    elif ref in _inherited:
        _pins[ref] = _store_of(ref)._pin(ref)  # NotFound once unshared
        obj = _attached[ref] = _inherited.pop(ref)
        return obj
    obj = ref.get()
    _attached[ref] = obj
    return obj


def _store_of(ref):
    from . import _resolve
    return _resolve(ref)


# ------------------------------------------------------------ pickling

def dumps(obj):
    """obj as (pickle-5 stream, out-of-band buffers); functions by reference,
    or by value through cloudpickle when plain pickle cannot name them."""
    buffers = []
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
    except (pickle.PicklingError, AttributeError, TypeError):
        if _cloudpickle is None:
            raise
        buffers = []
        stream = io.BytesIO()
        _cloudpickle.CloudPickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
    return stream.getbuffer(), buffers


def loads(stream, buffers):
    return pickle.loads(stream, buffers=[memoryview(b) for b in buffers])


class RemoteTraceback(Exception):
    """The worker's traceback, as the __cause__ of a task's exception."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def exception_payload(e):
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        pickle.dumps(e)
        return e, tb
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}"), tb


def call_chunk(fn, columns):
    """fn over a chunk of map's calls, given as one list per iterable."""
    return list(map(fn, *columns))


def call_with_context(fn, param, context):
    result = fn(param, context)
    return result, _state_of(context)


def _state_of(context):
    return dict(context) if isinstance(context, dict) else vars(context)


def _apply_state(context, state):
    if isinstance(context, dict):
        context.clear()
        context.update(state)
    else:
        vars(context).update(state)


# A worker's logging record travels as one line on its stderr:
# RECORD levelno RS logger RS message, newlines in the message as US.
RECORD = "\x1dzcstore-record\x1e"


def record_line(record, message):
    return (f"{RECORD}{record.levelno}\x1e{record.name}\x1e"
            f"{message.replace(chr(10), chr(31))}")


# ------------------------------------------------------------ progress

class _Bar:
    """done/total, rate and ETA on one stderr line (when tqdm is absent)."""

    def __init__(self, total):
        self.total, self.done, self.start, self.shown = total, 0, time.monotonic(), 0.0

    def update(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.shown < 0.1 and self.done < self.total:
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        sys.stderr.write(f"\r{self.done}/{self.total} tasks  {rate:,.0f}/s  ETA {eta:.1f} s ")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self):
        pass


class _Callback:
    def __init__(self, fn, total):
        self.fn, self.total, self.done = fn, total, 0

    def update(self, n):
        self.done += n
        self.fn(self.done, self.total)

    def close(self):
        pass


def _progress(setting, total):
    """What shows progress of `total` tasks: a callback(done, total), tqdm
    or the built-in bar on a terminal, or nothing."""
    if setting is False or total == 0:
        return None
    if callable(setting):
        return _Callback(setting, total)
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit="task")
    except ImportError:
        return _Bar(total)


# ------------------------------------------------------------ the executor

def _results(values, futures, bar):
    """Yields `values`; when the caller stops early (or a result raises),
    the chunks not yet done are cancelled and the bar closed."""
    try:
        yield from values
    finally:
        for f in futures:
            f.cancel()
        if bar is not None:
            bar.close()


class _Future(concurrent.futures.Future):
    """A concurrent.futures.Future whose result() and exception() wait for
    the task on the calling thread: the worker's answer wakes that thread
    directly rather than the pool's collector first."""

    def __init__(self, pool, token):
        super().__init__()
        self._pool, self._token = pool, token

    def _wait_here(self, timeout):
        if self.done():
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._pool._wait_one(self, timeout)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout=None):
        return super().result(self._wait_here(timeout))

    def exception(self, timeout=None):
        return super().exception(self._wait_here(timeout))


_pools = weakref.WeakSet()


class Pool(concurrent.futures.Executor):
    """An executor whose workers attach shared objects without copying.

    ``workers``: how many (None: the CPUs). ``backend``: "spawn" (fresh
    Python processes, the default), "fork" (children forked from this
    process, the first at the pool's first task, as ProcessPoolExecutor
    does: they start in milliseconds and inherit its memory copy-on-write,
    its modules and globals as they are when each worker is forked, and the
    objects shared before, attached; the same caveats as os.fork in a
    process with threads) or "threads"
    (threads of this process, for comparisons). ``initializer(*initargs)``
    runs once in each worker
    before its first task (and in a replacement worker). A task whose
    worker dies is retried ``max_retries`` times, then fails with
    WorkerCrashed; one running longer than ``task_timeout`` seconds is
    killed with its worker and fails with Timeout. ``store_capacity``: bytes
    of the pool's store (shared objects, large arguments and results),
    reserved as they are used. ``store``: a memfd Store of the caller's to
    work in instead (store_capacity is then unused): arrays built in it
    with ``store.empty`` before the pool starts are shared by ``share``
    without a copy; it stays open, and the caller's, after the pool
    (keep it open while the pool runs). ``progress``: map's progress bar (tqdm if
    importable, else a built-in one; only on a terminal), False for none,
    or a callable(done, total). ``log``: a callable(worker, line) for the
    workers' output lines; by default they go to stderr as "[worker N]
    line", and their logging records to this process's logging, at their
    level, under their logger's name.
    """

    def __init__(self, workers=None, backend="spawn", initializer=None, initargs=(),
                 max_retries=0, task_timeout=None, store_capacity=1 << 30,
                 store=None, start_timeout=20.0, progress=True, log=None):
        if backend not in _BACKENDS:
            raise InvalidArgument(
                f"backend must be one of {sorted(_BACKENDS)}, not {backend!r}")
        workers = os.cpu_count() if workers is None else int(workers)
        if workers < 1:
            raise InvalidArgument(f"workers must be at least 1, not {workers}")
        self._backend = backend
        self._progress_setting = progress
        self._log = log
        self.log_lines_dropped = 0
        self._timeout_ms = int((task_timeout or 0) * 1000)
        from .pool_worker import ForkChild, Runner
        if store is not None and (not isinstance(store, Store) or store.closed):
            raise InvalidArgument(f"store must be an open zcstore.Store, not {store!r}")
        self._n = workers
        self._main_name = main_name = _MAIN_NAME + os.urandom(8).hex()
        # The pool's store is a memfd of this handle's, or the caller's:
        # put through it, arrays made with its empty() are adopted, not copied.
        self._own_store = store is None
        self._store = store if store is not None else Store.create(
            "pool", backing="memfd", capacity=int(store_capacity), max_clients=4 * workers + 16)
        if backend == "spawn":  # what a fresh interpreter needs first (pool_worker.main)
            prepare = multiprocessing.spawn.get_preparation_data("zcstore-worker")
            prepare.pop("authkey", None)  # multiprocessing's own secret: not ours to pass on
            self._store.bind(main_name, self._store.put({
                "prepare": prepare,
                "initializer": initializer, "initargs": tuple(initargs),
                "log_level": logging.getLogger().getEffectiveLevel()}))
        fork = backend == "fork"
        self._create_args = (  # what _start hands the C++ pool
            workers, _BACKENDS[backend], sys.executable, ["-c", _WORKER_CODE.format(main_name)],
            self._store.fd, int(max_retries), self._timeout_ms, int(start_timeout * 1000),
            Runner(None, initializer, tuple(initargs)).run if fork else None,
            ForkChild() if fork else None)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()  # one _start at a time, and none after _close
        self._core = None  # the C++ pool, once started
        self._started = threading.Event()  # set once it is (or the pool closed first)
        self._futures = {}
        self._shared = set()  # refs in _inherited, a fork pool's
        self._shutdown = False
        self._stop = False
        # Started before the workers are (a thread started after a fork
        # pays a copy-on-write fault for each page it touches).
        self._collector = threading.Thread(target=self._collect, name="zcstore-pool",
                                           daemon=True)
        self._collector.start()
        _pools.add(self)
        # A fork pool forks its workers at its first task, as
        # ProcessPoolExecutor does: they inherit what was shared before it,
        # and nothing forked is in the way of the caller meanwhile.
        if backend != "fork":
            try:
                if backend == "threads":
                    _core.set_runner(Runner().run)
                    if initializer is not None:
                        initializer(*initargs)
                self._start()
            except BaseException:
                self._close()
                raise

    def _start(self):
        """The C++ pool, started at the first call that needs it."""
        core = self._core
        if core is not None:
            return core
        with self._start_lock:
            if self._stop:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._core is None:
                self._core = _core.Pool.create(*self._create_args)
                self._started.set()
            return self._core

    @property
    def workers(self):
        return self._n

    _STATS = ("workers", "workers_ready", "tasks_done", "tasks_failed", "workers_replaced",
              "log_lines", "log_lines_dropped")

    def stats(self):
        """The C++ pool's counters: workers, workers_ready (up now),
        tasks_done, tasks_failed, workers_replaced, log_lines,
        log_lines_dropped (a dict). A fork pool before its first task:
        workers and zeros."""
        core = self._core
        if core is None:
            return dict.fromkeys(self._STATS, 0) | {"workers": self._n}
        return core.stats()

    # --- sharing

    def share(self, obj, move=False):
        """Puts ``obj`` in the pool's store once; returns its Shared handle.

        ``obj`` may also be a Ref of an object already in the pool's store
        (put there through the store given as ``store=``, say): its handle,
        with nothing put."""
        if isinstance(obj, Ref):
            if obj not in self._store:
                raise NotFound(f"{obj!r} is not an object of this pool's store")
            ref = obj
        else:
            ref = self._store.put(obj, move=move)
        if self._backend == "fork":  # attached here once, inherited by every worker
            _inherited[ref] = self._store.get(ref)
            self._shared.add(ref)
        return Shared(ref)

    def empty(self, shape, dtype=float, order="C"):
        """A writable array in the pool's store, to fill and then share with
        no copy (see Store.empty)."""
        return self._store.empty(shape, dtype, order)

    def unshare(self, shared):
        """Deletes a shared object; tasks that get its handle later fail
        with NotFound (a task already holding it keeps it until it ends)."""
        _inherited.pop(shared.ref, None)
        self._shared.discard(shared.ref)
        self._store.delete(shared.ref)

    # --- tasks

    def submit(self, fn, /, *args, **kwargs):
        """Runs fn(*args, **kwargs) in a worker; returns its Future."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        try:
            stream, buffers = dumps((fn, args, kwargs))
        except Exception as e:
            raise pickle.PicklingError(
                f"{getattr(fn, '__qualname__', fn)!r} or its arguments cannot be sent to a "
                f"worker: {e} (a worker imports functions by module and name: define it at "
                "module level, or install python3-cloudpickle for lambdas and closures)") from e
        core = self._core or self._start()
        with self._lock:
            token = core.submit(stream, buffers, self._timeout_ms)
            future = self._futures[token] = _Future(self, token)
        stream.release()
        future.add_done_callback(lambda f, t=token: f.cancelled() and self._cancel(t, f))
        return future

    def _chunks(self, fn, iterables, chunksize, progress):
        # A chunk travels as one list per iterable (cheaper to pickle than
        # a tuple per call), cut to the shortest, as zip and map do.
        columns = [list(it) for it in iterables]
        n = min(map(len, columns), default=0)
        if chunksize is None:  # about four per worker, small enough for a quick first result
            chunksize = max(1, min(-(-n // (4 * self.workers)), 1024))
        chunksize = int(chunksize)
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        bar = _progress(self._progress_setting if progress is None else progress, n)
        futures = []
        for i in range(0, n, chunksize):
            k = min(chunksize, n - i)
            f = self.submit(call_chunk, fn, [c[i:i + k] for c in columns])
            if bar is not None:
                f.add_done_callback(lambda _, k=k: bar.update(k))
            futures.append(f)
        return futures, bar

    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=None):
        """Like Executor.map: results in order, as they are needed. Calls
        travel in chunks of ``chunksize`` (None: about four per worker, at
        most 1024 calls).
        ``progress`` overrides the pool's setting for this call."""
        futures, bar = self._chunks(fn, iterables, chunksize, progress)
        deadline = None if timeout is None else time.monotonic() + timeout

        def in_order():
            for f in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield from f.result(left)
        return _results(in_order(), futures, bar)

    def map_unordered(self, fn, *iterables, timeout=None, chunksize=None, progress=None):
        """As map, but each chunk's results as soon as it is done."""
        futures, bar = self._chunks(fn, iterables, chunksize, progress)
        as_done = (r for f in concurrent.futures.as_completed(futures, timeout) for r in f.result())
        return _results(as_done, futures, bar)

    def broadcast(self, fn, *args):
        """Runs fn(*args) once on every worker; their results, by worker.
        The first failure is raised (after every worker has answered)."""
        stream, buffers = dumps((fn, args, {}))
        outcomes = self._start().broadcast(stream, buffers)
        results = [self._outcome(code, message, st, bufs)
                   for _, code, message, st, bufs in outcomes]
        for ok, value in results:
            if not ok:
                raise value
        return [value for _, value in results]

    def map_with_context(self, fn, params, contexts, timeout=None):
        """fn(param, context) for each pair, in the workers; what each task
        changes in its context (a dict, or an object's attributes) comes
        back and is applied to the caller's context object, in order.
        Returns the results in order."""
        futures = [self.submit(call_with_context, fn, p, c) for p, c in zip(params, contexts)]
        results = []
        for f, context in zip(futures, contexts):
            result, state = f.result(timeout)
            _apply_state(context, state)
            results.append(result)
        return results

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            pending = list(self._futures.values())
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)
            self._close()
        else:
            threading.Thread(target=lambda: (concurrent.futures.wait(pending), self._close()),
                             daemon=True).start()

    def _cancel(self, token, future):
        # The executor's part of a cancel: mark it notified (so wait() and
        # as_completed count it) and drop the task if it has not started.
        future.set_running_or_notify_cancel()
        with self._lock:
            self._futures.pop(token, None)
            if not self._stop:
                self._core.cancel(token)

    def _wait_one(self, future, timeout):
        outcome = self._core.wait_one(future._token, -1 if timeout is None else int(timeout * 1000))
        if outcome is not None:
            self._settle(*outcome)

    def _close(self):
        with self._lock:
            if self._stop:
                return
            self._stop = True
        with self._start_lock:  # no start now, nor after
            core = self._core
            self._started.set()
        if core is not None:
            core.stop_waiting()
        self._collector.join()
        if core is not None:
            core.shutdown()
            # The workers' last lines reach the queue while they are stopped
            # (a result waited for on its own thread can come back before the
            # lines its task printed first): deliver them too.
            self._emit_logs()
        for ref in self._shared:
            _inherited.pop(ref, None)
        if self._own_store:
            self._store.close()
        elif not self._store.closed:  # the caller's store: take back what the pool put there
            try:
                self._store.delete(self._store.lookup(self._main_name))
                self._store.unbind(self._main_name)
            except NotFound:
                pass

    # --- the collector thread: finished tasks onto their futures

    def _outcome(self, code, message, stream, buffers):
        """(True, value) or (False, exception) of one finished task."""
        if code:
            return False, BY_CODE.get(code, RuntimeError)(message)
        try:
            ok, value = loads(stream, buffers)
        except BaseException as e:  # a result that does not unpickle here
            return False, e
        if ok:
            return True, value
        exc, tb = value
        exc.__cause__ = RemoteTraceback(tb)
        return False, exc

    def _emit_logs(self):
        if self._core is None:
            return
        lines, self.log_lines_dropped = self._core.take_logs()
        for worker, line in lines:
            if line.startswith(RECORD):
                level, name, message = line[len(RECORD):].split("\x1e", 2)
                logging.getLogger(name).log(int(level), "[worker %d] %s", worker,
                                            message.replace(chr(31), chr(10)),
                                            extra={"zcstore_worker": worker})
            elif self._log is not None:
                self._log(worker, line)
            else:
                sys.stderr.write(f"[worker {worker}] {line}\n")

    def _collect(self):
        self._started.wait()
        while True:
            with self._lock:
                if self._stop:
                    self._emit_logs()
                    return
            for outcome in self._core.wait(50):
                self._settle(*outcome)
            self._emit_logs()

    def _settle(self, token, code, message, stream, buffers):
        # A finished task onto its future (by the collector, or the thread
        # that waited for it), unless it was cancelled meanwhile.
        with self._lock:
            future = self._futures.pop(token, None)
        if future is None or not future.set_running_or_notify_cancel():
            return
        ok, value = self._outcome(code, message, stream, buffers)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _shutdown_all():
    # At exit: what was not waited for is cancelled, the workers stopped.
    for pool in list(_pools):
        with pool._lock:
            pool._shutdown = True
            pending = list(pool._futures.values())
        for f in pending:
            f.cancel()
        pool._close()


import atexit  # noqa: E402

atexit.register(_shutdown_all)
