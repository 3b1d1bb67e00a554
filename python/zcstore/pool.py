"""zcstore.Pool: a concurrent.futures executor over the C++ pool.

Workers are spawned Python processes (``sys.executable``) that run the C++
pool's worker loop: calls reach them through the pool's shared-memory rings,
not pipes, and large arguments and results through its store. ``share``
puts an object in that store once; a task that gets the handle gets the
object itself, mapped once per worker, its arrays read-only and zero-copy.
"""

import concurrent.futures
import functools
import io
import logging
import math
import multiprocessing.spawn
import os
import pickle
import sys
import threading
import time
import traceback
import types
import weakref

from concurrent.futures import _base
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

from . import _core
from . import Ref, Store, _loads, _reduce_memoryview, InvalidArgument, NotFound
from . import errors as zcstore_errors
from .errors import BY_CODE, Cancelled

_BACKENDS = {"spawn": 0, "fork": 1, "threads": 2}
# A spawned worker runs _WORKER_CODE with the bound name of its pool's
# start-up data (unique: a pool may work in a store that others use too).
_MAIN_NAME = "zcstore.python.main."
_WORKER_CODE = "from zcstore.pool_worker import main; main({!r})"

@functools.cache
def _cloud():
    """cloudpickle, for lambdas and closures, where Debian's
    python3-cloudpickle is installed; else None. Imported when first
    needed: a worker never needs it to start (a stream that calls
    cloudpickle imports it as it loads), and it costs 8 ms to import."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - depends on the machine
        return None
    return cloudpickle


# ------------------------------------------------------------ shared objects

class Shared:
    """A handle on an object shared with the workers (Pool.share).

    Put it anywhere in a task's arguments: the task receives the object
    itself, its arrays read-only views of the store. By default it is got
    from the pool's store once per worker and cached, so what a task
    changes in its Python objects (a dict's keys, a DataFrame's columns, a
    fitted estimator's attributes) the worker's later tasks see; with
    ``fresh`` each task gets its own unpickled copy of those objects (the
    arrays still zero-copy views), at the cost of unpickling the
    structure once per task.
    """

    __slots__ = ("ref", "fresh")

    def __init__(self, ref, fresh=False):
        self.ref, self.fresh = ref, fresh

    def __reduce__(self):
        if self.fresh:
            return _fresh, (self.ref,)
        return _attach, (self.ref,)

    def __repr__(self):
        return f"zcstore.Shared({self.ref.id})"


_attached = {}  # in a worker: the objects it got, by ref
# In a fork pool's parent: what it shared, as read-only views, for the
# workers it forks later to inherit; a worker pins one (for itself: the
# parent's pins are not its own) when a task first gets its handle.
_inherited = {}
_pins = {}  # in a worker: its pins of the objects it inherited


def _fresh(ref):
    """The object of `ref` unpickled anew, for one task (Shared.fresh)."""
    return _attach(ref, fresh=True)


def _attach(ref, fresh=False):
    try:
        # fresh: unpickled for this task alone, and pinned while it holds it
        # (get raises NotFound once unshared, as the cache's check does).
        return ref.get() if fresh else _attach_here(ref)
    except NotFound as e:
        if "is not open in this process" not in str(e):
            raise  # unshared: its own message
        raise NotFound(
            f"{ref!r} was shared by another zcstore.Pool, whose store this pool's workers "
            "do not have: share the object with the pool that runs the task "
            "(pool.share(obj)); to share one object with several pools, give them one "
            "store: store = zcstore.Store.create(backing='memfd'), "
            "zcstore.Pool(store=store), and store.put(obj) shared with each pool's "
            "share(ref)") from None


def _attach_here(ref):
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
        obj = _attached[ref] = _inherited[ref]
        return obj
    obj = ref.get()
    if type(obj) is _HeldByForkedWorkers:
        raise NotFound(
            f"{ref!r} was shared with a fork pool's workers by inheritance (copy-on-write, "
            "not copied into the store), and this process did not inherit it: share it "
            "with inherit=False to reach other processes")
    _attached[ref] = obj
    return obj


class _HeldByForkedWorkers:
    """What the store holds for an object a fork pool's workers inherit:
    only its name, so that unshare and the checks of a handle work alike."""


_last_sweep = [0.0]


def drop_unshared():
    """In a worker, before each task: lets go of the cached objects that
    were unshared since (their pins keep their space in the store, which
    would fill up over many shares: joblib shares each call's arrays). A
    look per cached object, each about a microsecond; past 64 of them, at
    most every 100 ms."""
    if not _attached:
        return
    now = time.monotonic()
    if len(_attached) > 64 and now - _last_sweep[0] < 0.1:
        return
    _last_sweep[0] = now
    for ref in list(_attached):
        try:
            gone = ref not in _store_of(ref)
        except Exception:
            gone = True
        if gone:
            _attached.pop(ref, None)
            _pins.pop(ref, None)


def _store_of(ref):
    from . import _resolve
    return _resolve(ref)


# ------------------------------------------------------------ pickling

# Buffers (arrays' bytes) smaller than this travel inside the pickle
# stream; larger ones out of band, each an object in the pool's store. So a
# call with 5,000 small arrays is one stream, not 5,000 objects.
IN_BAND_BELOW = 64 << 10


def _main_names(path):
    """The names a spawned worker's __mp_main__ defines: those bound at the
    top level of the script at `path`, outside its `if __name__ ==
    "__main__":` blocks (which a worker does not run). None if unreadable."""
    import ast
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None

    def is_main_guard(node):
        t = node.test
        return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name)
                and t.left.id == "__name__" and len(t.comparators) == 1
                and isinstance(t.comparators[0], ast.Constant)
                and t.comparators[0].value == "__main__")

    names = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, ast.If) and not is_main_guard(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With, ast.For, ast.While)):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(node, part, []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
    visit(tree.body)
    return names


_MISSING = object()


class _MainFunctions:
    """Which functions of ``__main__`` a pool's workers cannot import by
    name, and so get by value (cloudpickle): under spawn, those of an
    interactive session (a REPL, ``python -c``, stdin: no script to import)
    and those not defined at the script's top level (inside its
    ``if __name__ == "__main__":``); under fork, those not in ``__main__``
    as it was when the workers were forked (defined after the first task)."""

    def __init__(self, backend):
        self.backend = backend
        self.forked = None  # fork: __main__'s functions and classes when the workers were forked
        self.script = {}    # spawn: path -> its top-level names

    def snapshot(self):
        if self.backend == "fork":
            # What a qualname can start with, and weakly: a pool must not
            # keep the rest of __main__ (a model, a store) alive.
            self.forked = {name: weakref.ref(obj)
                           for name, obj in vars(sys.modules["__main__"]).items()
                           if isinstance(obj, (types.FunctionType, type))}

    def by_value(self, fn):
        if self.backend == "threads" or _cloud() is None:
            return False
        qualname = getattr(fn, "__qualname__", "")
        if self.backend == "fork":
            if self.forked is None:
                return False
            first, *rest = qualname.split(".")
            held = self.forked.get(first)
            obj = _MISSING if held is None else held()  # None: collected since
            for part in rest:
                obj = getattr(obj, part, _MISSING)
            return obj is not fn
        path = getattr(sys.modules["__main__"], "__file__", None)
        if path is None or not os.path.isfile(path):
            return True
        if path not in self.script:
            self.script[path] = _main_names(path)
        names = self.script[path]
        return names is not None and qualname.split(".")[0] not in names


def _by_value(fn):
    cloudpickle = _cloud()
    return cloudpickle.loads, (cloudpickle.dumps(fn, protocol=5),)


class _CallPickler(pickle.Pickler):
    """The store's pickler (memoryviews out of band), sending ``__main__``'s
    functions that a worker could not import by value."""

    def __init__(self, file, main, extra=None, **kwargs):
        # A plain function, not a method calling its base's: the pickler
        # calls it for every object but ints, floats, strings, bytes and
        # the builtin containers (256 small objects with a __dict__: 141-143
        # us, against 156-162 us with a method calling its base's, and
        # 118-121 us for pickle.dumps). The C pickler looks it up here, in
        # its __init__.
        self.reducer_override = _call_reducer(main, extra)
        super().__init__(file, **kwargs)


def _call_reducer(main, extra):
    function = types.FunctionType

    def reducer_override(obj):
        if extra is not None:
            reduced = extra(obj)
            if reduced is not NotImplemented:
                return reduced
        cls = type(obj)
        if cls is function:
            if obj.__module__ == "__main__" and main is not None and main.by_value(obj):
                return _by_value(obj)
        elif cls is memoryview:
            return _reduce_memoryview(obj)
        return NotImplemented
    return reducer_override


def _cloud_pickler(file, extra, **kwargs):
    """cloudpickle's pickler, with `extra` reducing first (as _CallPickler's)."""
    cloud_pickler = _cloud().CloudPickler
    if extra is None:
        return cloud_pickler(file, **kwargs)

    class Pickler(cloud_pickler):
        def reducer_override(self, obj):
            reduced = extra(obj)
            return reduced if reduced is not NotImplemented else super().reducer_override(obj)
    return Pickler(file, **kwargs)


def dumps(obj, main=None, extra=None):
    """obj as (pickle-5 stream, out-of-band buffers); functions by reference,
    or by value through cloudpickle when plain pickle cannot name them, or
    (`main`, a _MainFunctions) when a worker could not import them.
    `extra(obj)`: a reducer_override asked first (NotImplemented: no)."""
    buffers = []

    def out_of_band(b):  # False: out of band (pickle's convention)
        if memoryview(b).nbytes < IN_BAND_BELOW:
            return True
        buffers.append(b)
        return False
    stream = io.BytesIO()
    try:
        _CallPickler(stream, main, extra, protocol=5, buffer_callback=out_of_band).dump(obj)
    except (pickle.PicklingError, AttributeError, TypeError):
        if _cloud() is None:
            raise
        buffers.clear()
        stream = io.BytesIO()
        _cloud_pickler(stream, extra, protocol=5, buffer_callback=out_of_band).dump(obj)
    return stream.getbuffer(), buffers


loads = _loads  # a task's or a result's (stream, buffers), numpy's arrays built in C


# The worker's traceback, as the __cause__ of a task's exception: the class
# ProcessPoolExecutor uses, so code that looks for it finds it.
RemoteTraceback = _RemoteTraceback


def _rebuild_exception(cls, args, state):
    # An exception whose __init__ cannot take its own args back (one that
    # takes two arguments but passes one to Exception): made without
    # calling __init__, as the same class with the same args and attributes.
    e = cls.__new__(cls, *args)
    e.args = args
    e.__dict__.update(state)
    return e


class _ExceptionByState:
    """Pickles an exception as its class, args and attributes."""

    def __init__(self, e):
        self.e = e

    def __reduce__(self):
        return _rebuild_exception, (type(self.e), self.e.args, dict(vars(self.e)))


def exception_payload(e):
    """(exception, traceback text) for the parent: the exception itself if
    it survives a pickle round trip, else rebuilt from its class and state,
    else a RuntimeError naming it (a class the parent cannot import)."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    for candidate in (e, _ExceptionByState(e)):
        try:
            pickle.loads(pickle.dumps(candidate))
            return candidate, tb
        except Exception:
            pass
    return RuntimeError(f"{type(e).__module__}.{type(e).__qualname__}: {e}"), tb


def _column(iterable):
    """One of map's iterables as a column of its calls' arguments: a list,
    or a private copy of a flat numpy array. A chunk of such an array
    travels as one buffer, where a list of its elements is pickled one numpy
    scalar at a time (20,000 calls over two such columns: 87-160 ms of the
    parent's CPU, which 8 forked workers on 2 CPUs stretched to 600-700 ms
    before the first result); iterated in the worker, it gives the same
    scalars. (Other arrays' elements are views, rows or records,
    where each pickled element is a copy of its own: those go as lists.)"""
    np = sys.modules.get("numpy")
    if (np is not None and type(iterable) is np.ndarray and iterable.ndim == 1
            and iterable.dtype.kind in "biufcmMSU"):  # scalars that are values
        return iterable.copy()  # later changes to the caller's array do not reach a call
    return list(iterable)


def call_chunk(fn, columns):
    """fn over a chunk of map's calls, given as one column (a list or a flat
    array, see _column) per iterable."""
    return list(map(fn, *columns))


def call_with_context(fn, param, context):
    """In a worker: fn(param, context), and the context's state after it,
    with each shared object in it (an object a Shared handle attached
    here) as its handle again, so that it goes back as a handle."""
    result = fn(param, context)
    handles = {id(obj): ref for ref, obj in _attached.items()}
    state = {k: _AsHandle(handles[id(v)]) if id(v) in handles else v
             for k, v in _state_of(context).items()}
    return result, state


class _AsHandle:
    """Unpickles as the Shared handle of `ref` (a Shared unpickles as its
    object, attached)."""

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref

    def __reduce__(self):
        return Shared, (self.ref,)


def _state_of(context):
    if isinstance(context, dict):
        return context
    try:
        return vars(context)
    except TypeError:
        raise TypeError(f"a context must be a dict or an object with a __dict__, not "
                        f"{type(context).__qualname__}") from None


def _apply_state(context, state):
    """The state a task left its context in, onto the caller's context: keys
    (or attributes) set, changed and deleted."""
    if isinstance(context, dict):
        context.clear()
        context.update(state)
    else:
        attributes = vars(context)
        for k in [k for k in attributes if k not in state]:
            del attributes[k]
        attributes.update(state)


# A worker's logging record travels as one line on its stderr:
# RECORD levelno RS logger RS message, newlines in the message as US.
RECORD = "\x1dzcstore-record\x1e"
# A line a worker printed to sys.stdout: STDOUT line. It goes to the
# parent's sys.stdout as it is; other lines (its stderr, and what C code
# writes to either descriptor) to the parent's stderr, as "[worker N] line".
STDOUT = "\x1dzcstore-stdout\x1e"


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
        """Ends the line of a bar that stopped short (its map was left or
        interrupted), showing what was done."""
        if self.done < self.total:
            self.shown = 0.0
            self.update(0)
            sys.stderr.write("\n")
            sys.stderr.flush()


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


def _name_of(fn):
    """module.qualname of a task's function, for messages."""
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


class _Waiters(list):
    """A Future's waiters list. concurrent.futures.wait and as_completed add
    their waiter to it (under the future's condition, before they wait on
    the waiter's event): the list gives the waiter a _TakingEvent, so
    that the waiting thread takes the task's answer itself."""

    __slots__ = ("future", "engine")

    def __init__(self, future):
        super().__init__()
        self.future, self.engine = weakref.ref(future), future._engine

    def append(self, waiter):
        list.append(self, waiter)
        future = self.future()
        if future is None:
            return
        event = waiter.event
        if type(event) is _TakingEvent and event.engine is self.engine:
            event.futures.append(future)
        elif type(event) is threading.Event:  # the waiter's own, not waited on yet
            _TakingEvent.adopt(event, self.engine, future)
        else:  # a waiter on another pool's futures too: this pool's collector takes it
            future._watch()


class _TakingEvent(threading.Event):
    """The event of a concurrent.futures waiter (of wait() or
    as_completed()) on a pool's futures. Its wait() waits for their tasks
    on the waiting thread (_Engine.take), so that a worker's answer wakes
    that thread directly, not the pool's collector first and then it: the
    collector is not woken by a submit, and two wake-ups cost tens of
    microseconds each on a VM. Whatever else sets the event (a future of
    another executor in the same wait, a cancel) wakes that thread's take
    through the waker.

    It is the waiter's own threading.Event, its class changed before
    anyone waits on it (_Waiters.append): a second Event would cost a
    Condition more per waiter, and as_completed makes a waiter per call.
    """

    engine = None   # the pool whose futures it takes
    futures = ()    # those futures
    _taker = None   # the thread in wait(), if one is
    _waker = None   # what ends that thread's take early

    @classmethod
    def adopt(cls, event, engine, future):
        event.__class__ = cls
        event.engine, event.futures = engine, [future]

    def set(self):
        super().set()
        taker = self._taker
        if taker is not None and taker != threading.get_ident():
            self.engine.wake(self._waker)

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._waker is None:
            self._waker = _core.Waker()
        self._taker = threading.get_ident()
        try:
            while True:
                # Cleared before the look: a set() after it wakes the take.
                self._waker.clear()
                if self.is_set():
                    return True
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                futures = [f for f in self.futures if f._state not in _FINISHED]
                if not futures or not self.engine.take(futures, left, self._waker):
                    # Not ours to take (the collector has them, or another
                    # thread): whoever settles them sets this event.
                    return super().wait(left)
                if left == 0.0:
                    return self.is_set()
        finally:
            self._taker = None


_FINISHED = (_base.FINISHED, _base.CANCELLED_AND_NOTIFIED)


class Future(concurrent.futures.Future):
    """The Future of a task submitted to a zcstore.Pool.

    A concurrent.futures.Future whose result() and exception() wait for
    the task on the calling thread (the worker's answer wakes that thread
    directly, not the pool's collector first), as do wait() and
    as_completed() over it; which is RUNNING once a worker has started the
    task, and whose cancel() takes the task back from wherever it waits,
    its worker's queue included: cancel() returns True exactly when the
    task will never run.
    """

    def __init__(self, engine=None, token=None, calls=1):
        super().__init__()
        self._engine, self._token = engine, token
        self._calls = calls  # calls of map's chunk it runs
        self._watched = False
        if engine is not None:
            self._waiters = _Waiters(self)

    def _watch(self):
        """Has the pool's collector watch this task now: something other
        than a waiting thread wants it when it finishes."""
        if not self._watched:
            self._watched = True
            self._engine.watch_now(self._token)

    def done(self):
        finished = super().done()
        if not finished and self._engine is not None:
            self._watch()  # polled: it is wanted soon
        return finished

    def add_done_callback(self, fn):
        if self._engine is not None and not super().done():
            self._watch()  # a callback must run when the task ends, not later
        super().add_done_callback(fn)

    def _wait_here(self, timeout):
        if super().done() or self._engine is None:
            return timeout
        if timeout is not None and timeout <= 0:  # a look, not a wait: an answer
            self._engine.take([self], 0)          # already in is taken
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        self._engine.take([self], timeout)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout=None):
        return super().result(self._wait_here(timeout))

    def exception(self, timeout=None):
        return super().exception(self._wait_here(timeout))

    def running(self):
        with self._condition:
            pending = self._state == _base.PENDING
        if pending and self._engine is not None and self._engine.task_running(self._token):
            self._start_running()
        return super().running()

    def cancel(self):
        engine = self._engine
        if engine is not None:
            with self._condition:
                pending = self._state == _base.PENDING
            if pending:
                if not engine.cancel_task(self._token):
                    # Started (it runs to its end) or finished.
                    self._start_running()
                    return super().cancel()
                engine.forget(self._token)
        if not super().cancel():
            return False
        # What an executor does when it takes a cancelled item: wait() and
        # as_completed() count it from now on.
        with self._condition:
            notify = engine is not None and self._state == _base.CANCELLED
        if notify:
            self.set_running_or_notify_cancel()
        return True

    def _start_running(self):
        """PENDING -> RUNNING. False if it was cancelled (and is notified
        now) or is finished."""
        with self._condition:
            if self._state == _base.PENDING:
                self._state = _base.RUNNING
                return True
            if self._state != _base.CANCELLED:
                return self._state == _base.RUNNING
        return self.set_running_or_notify_cancel()

    def __repr__(self):
        self.running()  # the state shown is the task's now
        return super().__repr__()


_engines = weakref.WeakSet()  # every engine still running, for the exit hook


def _backend_of(backend, mp_context):
    """The backend asked for: by name, or by a multiprocessing context's
    start method (ProcessPoolExecutor's mp_context); spawn by default."""
    if mp_context is not None:
        method = mp_context.get_start_method()
        if method not in ("spawn", "fork"):
            raise InvalidArgument(
                f"mp_context's start method {method!r} has no zcstore backend: "
                "use a 'spawn' or 'fork' context, or backend='threads'")
        if backend is not None and backend != method:
            raise InvalidArgument(
                f"backend={backend!r} and an mp_context that starts by {method!r} disagree")
        return method
    backend = "spawn" if backend is None else backend
    if backend not in _BACKENDS:
        raise InvalidArgument(f"backend must be one of {sorted(_BACKENDS)}, not {backend!r}")
    return backend


class _Engine:
    """What runs a Pool's tasks: the C++ pool, the futures, the collector
    thread and the pool's store. Futures and threads hold the engine, never
    the Pool, so a Pool nobody holds is finalized, which shuts its engine
    down once the work submitted is done (as ProcessPoolExecutor does)."""

    def __init__(self, n, backend, store, own_store, main_name, create_args, timeout_ms, log):
        self.n, self.backend, self.store, self.own_store = n, backend, store, own_store
        self.main_name, self.create_args, self.timeout_ms, self.log = (
            main_name, create_args, timeout_ms, log)
        self.pid = os.getpid()
        self.main = _MainFunctions(backend)
        self.log_lines_dropped = 0
        self.calls_done = 0  # calls, not tasks: a map chunk counts its calls
        self.calls_failed = 0
        self.lock = threading.Lock()
        self.start_lock = threading.Lock()  # one start at a time, and none after close
        self.core = None  # the C++ pool, once started
        self.futures = {}
        self.shared = set()  # refs in _inherited, a fork pool's
        self.shutdown_reason = None  # why submit raises RuntimeError now
        self.broken = None  # why the pool is broken (its initializer failed)
        self.broken_cause = None
        self.stop = False
        self.closed = threading.Event()
        self.closer = None
        # Started with the C++ pool (start), after its first workers: a
        # thread's start waits for the new thread to be scheduled (0.1-2 ms
        # on a busy machine), which a fork pool's first result would wait
        # for too if it came first; after the fork, the child is getting
        # ready meanwhile. (A future's result() takes its task's answer
        # itself, so the first result does not wait for the collector.)
        self.collector = threading.Thread(target=self.collect, name="zcstore-pool", daemon=True)
        _engines.add(self)

    # --- starting, and the checks every call makes

    def check_process(self):
        if os.getpid() != self.pid:
            raise RuntimeError(
                f"this zcstore.Pool belongs to process {self.pid}, and process {os.getpid()} "
                "was forked from it: a forked child cannot use its parent's pool (the "
                "workers answer the parent); create a Pool in the child")

    def start(self):
        """The C++ pool, started at the first call that needs it."""
        core = self.core
        if core is not None:
            return core
        with self.start_lock:
            if self.stop:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self.core is None:
                self.main.snapshot()  # what the forked workers will have
                self.core = _core.Pool.create(*self.create_args)
                try:
                    self.collector.start()  # it collects from self.core
                except BaseException:  # no thread to be had: no pool either
                    self.core, core = None, self.core
                    core.shutdown()
                    raise
            return self.core

    def check_open(self):
        """Raises why no task may be submitted now. Holds `lock`."""
        if self.broken is not None:
            raise BrokenProcessPool(self.broken) from self.broken_cause
        if self.shutdown_reason is not None:
            raise RuntimeError(f"cannot schedule new futures after {self.shutdown_reason}")

    # --- tasks

    def submit(self, stream, buffers, name, calls=1):
        """A Future for the pickled call (a chunk of `calls` calls), submitted."""
        core = self.core or self.start()
        with self.lock:  # a submit racing shutdown: refused, or waited for by it
            self.check_open()
            token = core.submit(stream, buffers, self.timeout_ms, name)
            future = self.futures[token] = Future(self, token, calls)
        return future

    def failed(self, error):
        """A Future that failed before it was submitted (its call could not
        be pickled): as ProcessPoolExecutor, the error comes from result()."""
        with self.lock:
            self.check_open()
        future = Future()
        future.set_running_or_notify_cancel()
        future.set_exception(error)
        return future

    # (Not in a forked child: the C++ pool's mutex there is a copy that a
    # thread the child does not have may have held.)
    def cancel_task(self, token):
        core = self.core
        return (core is not None and not self.stop and os.getpid() == self.pid
                and core.cancel(token))

    def task_running(self, token):
        core = self.core
        return (core is not None and not self.stop and os.getpid() == self.pid
                and core.running(token))

    def watch_now(self, token):
        core = self.core
        if core is not None and not self.stop and os.getpid() == self.pid:
            core.watch_now(token)

    def forget(self, token):
        with self.lock:
            self.futures.pop(token, None)

    def take(self, futures, timeout, waker=None):
        """Waits on this thread, up to `timeout` seconds (None: no limit),
        for the first of `futures`' tasks to finish, and settles those
        that did (Take in python/src/pool.cc). False if it had none of
        them to wait for: the collector has them, or another thread."""
        core = self.core
        if core is None or self.stop or os.getpid() != self.pid:
            return False
        out = []
        try:
            return core.take([f._token for f in futures],
                             -1 if timeout is None else math.ceil(timeout * 1000), out,
                             waker) > 0
        finally:
            # Taken, so settled here, even when a signal's exception (Ctrl-C)
            # is on its way out: nobody else would.
            for outcome in out:
                self.settle(*outcome)

    def wake(self, waker):
        core = self.core
        if core is not None and os.getpid() == self.pid:
            core.wake(waker)

    # --- outcomes

    def outcome(self, code, message, stream, buffers):
        """(True, value), (False, exception) or (None, exception): a task's
        result, its exception, or its worker's initializer failed."""
        if code:
            return False, BY_CODE.get(code, RuntimeError)(message)
        try:
            status, value = loads(stream, buffers)
        except BaseException as e:  # a result that does not unpickle here
            return False, e
        if status is True:
            return True, value
        exc, tb = value
        exc.__cause__ = RemoteTraceback(tb)
        return status, exc

    def settle(self, token, code, message, stream, buffers):
        # A finished task onto its future (by the collector, or the thread
        # that waited for it), unless it was cancelled meanwhile.
        with self.lock:
            future = self.futures.pop(token, None)
        if future is None:
            return
        if code == Cancelled.code:  # cancelled by cancel() or shutdown: never ran
            concurrent.futures.Future.cancel(future)
        if not future._start_running():
            return
        ok, value = self.outcome(code, message, stream, buffers)
        if ok is None:  # the worker's initializer failed: the pool is broken
            value = self.break_(value)
        with self.lock:
            if ok:
                self.calls_done += future._calls
            else:  # a chunk stops at its first failing call
                self.calls_failed += 1
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def break_(self, cause):
        """Marks the pool broken by its initializer's `cause`, as
        ProcessPoolExecutor does: every pending task and every later submit
        fails with BrokenProcessPool. Returns that exception."""
        with self.lock:
            if self.broken is None:
                self.broken = ("a worker's initializer raised "
                               f"{type(cause).__name__}: {cause}; the pool is broken")
                self.broken_cause = cause
            pending = list(self.futures.items())
            self.futures.clear()
        error = BrokenProcessPool(self.broken)
        error.__cause__ = self.broken_cause
        for token, f in pending:
            self.cancel_task(token)
            if f._start_running():
                f.set_exception(error)
        return error

    def emit_logs(self):
        if self.core is None:
            return
        lines, self.log_lines_dropped = self.core.take_logs()
        for worker, line in lines:
            if line.startswith(RECORD):
                level, name, message = line[len(RECORD):].split("\x1e", 2)
                logging.getLogger(name).log(int(level), "[worker %d] %s", worker,
                                            message.replace(chr(31), chr(10)),
                                            extra={"zcstore_worker": worker})
            elif self.log is not None:
                self.log(worker, line[len(STDOUT):] if line.startswith(STDOUT) else line)
            elif line.startswith(STDOUT):
                sys.stdout.write(line[len(STDOUT):] + "\n")
            else:
                sys.stderr.write(f"[worker {worker}] {line}\n")

    def collect(self):
        """The collector thread: finished tasks onto their futures, and the
        workers' lines to where they go."""
        while True:
            with self.lock:
                if self.stop:
                    self.emit_logs()
                    return
            for outcome in self.core.wait(50):
                self.settle(*outcome)
            self.emit_logs()

    # --- the end

    def shutdown(self, wait, cancel_futures, reason="shutdown"):
        with self.lock:
            if self.shutdown_reason is None:
                self.shutdown_reason = reason
            pending = list(self.futures.values())
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)
            self.close()
            return
        with self.lock:
            if self.closer is not None or self.stop:
                return
            # Not a daemon: the interpreter waits for it at exit, after the
            # exit hook has finished the work.
            self.closer = threading.Thread(
                target=lambda: (concurrent.futures.wait(pending), self.close()),
                name="zcstore-pool-closer")
            self.closer.start()

    def close(self):
        """Stops the collector, the workers and the store. The first caller
        does it; the others wait until it is done."""
        with self.lock:
            first = not self.stop
            self.stop = True
        if not first:
            if threading.current_thread() not in (self.collector, self.closer):
                self.closed.wait()
            return
        try:
            with self.start_lock:  # no start now, nor after
                core = self.core
            if core is not None:  # the collector too was started with it
                core.stop_waiting()
                if threading.current_thread() is not self.collector:
                    self.collector.join()
                core.shutdown()
                # The workers' last lines reach the queue while they are
                # stopped (a result waited for on its own thread can come
                # back before the lines its task printed first).
                self.emit_logs()
            for ref in self.shared:
                _inherited.pop(ref, None)
            if self.backend == "threads":
                # Its tasks ran in this process: what they got from its store
                # is cached here, and would hold the objects (and the
                # store's pages) as long as this process lives.
                for ref in [r for r in _attached if r._key == self.store._key]:
                    del _attached[ref]
                    _pins.pop(ref, None)
            if self.own_store:
                self.store.close()
            elif not self.store.closed:  # the caller's store: take back what the pool put
                try:
                    self.store.delete(self.store.lookup(self.main_name))
                    self.store.unbind(self.main_name)
                except NotFound:
                    pass
        finally:
            self.closed.set()

    def release(self):
        """The Pool was dropped without shutdown: finish the submitted work,
        then stop (in a forked child: touch nothing of the parent's)."""
        if os.getpid() == self.pid and not self.stop:
            self.shutdown(wait=False, cancel_futures=False)


def _python_exit():
    # At interpreter exit, before its threads are joined (as
    # concurrent.futures does): no new tasks, the submitted ones finish
    # (their output reaches the parent), then every pool stops, so that no
    # thread of ours is inside the C++ pool while the interpreter ends.
    engines = [e for e in list(_engines) if e.pid == os.getpid()]
    for e in engines:
        with e.lock:
            e.shutdown_reason = "interpreter shutdown"
    for e in engines:
        e.shutdown(wait=True, cancel_futures=False, reason="interpreter shutdown")
        if e.closer is not None:
            e.closer.join()


threading._register_atexit(_python_exit)


class Pool(concurrent.futures.Executor):
    """An executor whose workers attach shared objects without copying.

    ``workers`` (or ``max_workers``, ProcessPoolExecutor's name): how many
    (None: the CPUs). ``backend``: "spawn" (fresh Python processes, the
    default), "fork" (children forked from this process, the first at the
    pool's first task, as ProcessPoolExecutor does: they start in
    milliseconds and inherit its memory copy-on-write, its modules and
    globals as they are when each worker is forked, and the objects shared
    before, attached; the same caveats as os.fork in a process with
    threads) or "threads" (threads of this process, for comparisons);
    ``mp_context``, a multiprocessing context, picks spawn or fork by its
    start method instead. ``initializer(*initargs)`` runs once in each
    worker before its first task (and in a replacement worker); if it
    raises, the pool is broken, as ProcessPoolExecutor's: pending and later
    tasks fail with BrokenProcessPool. A task whose worker dies is retried
    ``max_retries`` times, then fails with WorkerCrashed (a
    BrokenProcessPool; the worker is replaced and the pool goes on); one
    running longer than ``task_timeout`` seconds is killed with its worker
    and fails with Timeout. ``store_capacity``: bytes of the pool's store
    (shared objects, large arguments and results), reserved as they are
    used (None: the machine's memory, which then costs nothing up front).
    ``store``: a memfd Store of the caller's to work in instead
    (store_capacity is then unused): arrays built in it with
    ``store.empty`` before the pool starts are shared by ``share`` without
    a copy; it stays open, and the caller's, after the pool (keep it open
    while the pool runs). ``progress``: map's progress bar (tqdm if
    importable, else a built-in one; only on a terminal), False for none,
    or a callable(done, total). ``log``: a callable(worker, line) for the
    workers' output lines; by default what they print to stdout goes to
    this process's sys.stdout, their other lines to its stderr as "[worker
    N] line", and their logging records to this process's logging, at
    their level, under their logger's name.
    """

    def __init__(self, workers=None, backend=None, initializer=None, initargs=(),
                 max_retries=0, task_timeout=None, store_capacity=None,
                 store=None, start_timeout=20.0, progress=True, log=None, *,
                 max_workers=None, mp_context=None):
        if max_workers is not None:  # ProcessPoolExecutor's name for it
            if workers is not None:
                raise InvalidArgument("give workers or max_workers, not both")
            workers = max_workers
        backend = _backend_of(backend, mp_context)
        workers = os.cpu_count() if workers is None else int(workers)
        if workers < 1:
            raise InvalidArgument(f"max_workers must be greater than 0, not {workers}")
        if store is not None and (not isinstance(store, Store) or store.closed):
            raise InvalidArgument(f"store must be an open zcstore.Store, not {store!r}")
        if backend != "threads" and getattr(
                multiprocessing.process.current_process(), "_inheriting", False):
            raise RuntimeError(
                "zcstore.Pool() was called while a spawned worker was importing the main "
                "module: a script that starts a process pool must do so under\n\n"
                "    if __name__ == '__main__':\n\n"
                "(as with multiprocessing's spawn and ProcessPoolExecutor), or each worker "
                "would start a pool of its own")
        if backend == "threads" and task_timeout:
            raise InvalidArgument(
                "task_timeout needs worker processes: a thread running a stuck task cannot "
                "be stopped; use backend='spawn' or 'fork'")
        from .pool_worker import ForkChild, Runner, thread_runner
        self._backend = backend
        self._progress_setting = progress
        timeout_ms = int((task_timeout or 0) * 1000)
        main_name = _MAIN_NAME + os.urandom(8).hex()
        # The pool's store is a memfd of this handle's, or the caller's:
        # put through it, arrays made with its empty() are adopted, not copied.
        own_store = store is None
        if own_store:
            if store_capacity is None:  # reserved as it is used: the machine's memory costs nothing
                store_capacity = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            store = Store.create("pool", backing="memfd", capacity=int(store_capacity),
                                 max_clients=4 * workers + 16)
        try:
            if backend == "spawn":
                # What a fresh interpreter needs first (pool_worker.main):
                # multiprocessing's preparation data (its authkey too, so
                # that Manager proxies in arguments connect), then the
                # initializer, unpickled only once that has set sys.path.
                prepare = multiprocessing.spawn.get_preparation_data("zcstore-worker")
                # As bytes: the key refuses to be pickled outside a spawn
                # (the worker's prepare() makes it an AuthenticationString).
                prepare["authkey"] = bytes(prepare["authkey"])
                # A main module that is no file (stdin reports "<stdin>"): not
                # run in the workers; its functions travel by value instead.
                if not os.path.isfile(prepare.get("init_main_from_path") or ""):
                    prepare.pop("init_main_from_path", None)
                try:
                    init = _dumps_bytes((initializer, tuple(initargs)), _MainFunctions(backend))
                except Exception as e:
                    raise pickle.PicklingError(
                        f"the initializer or its initargs cannot be sent to spawned workers: {e} "
                        "(a multiprocessing Queue or Lock reaches a process only by "
                        "inheritance: use a Manager's, or backend='fork')") from e
                store.bind(main_name, store.put({
                    "prepare": prepare, "init": init,
                    # joblib's "zcstore" backend, registered in the workers too
                    # (for nested Parallel calls that name it)
                    "imports": [m for m in ("zcstore.joblib",) if m in sys.modules],
                    "log_level": logging.getLogger().getEffectiveLevel()}))
            fork = backend == "fork"
            create_args = (
                workers, _BACKENDS[backend], sys.executable,
                ["-c", _WORKER_CODE.format(main_name)], store.fd, int(max_retries),
                timeout_ms, int(start_timeout * 1000),
                Runner(None, initializer, tuple(initargs)).run if fork else None,
                ForkChild() if fork else None)
        except BaseException:
            if own_store:
                store.close()
            raise
        self._e = _Engine(workers, backend, store, own_store, main_name, create_args,
                          timeout_ms, log)
        # Dropped without shutdown: the submitted work finishes, then it stops.
        self._finalizer = weakref.finalize(self, self._e.release)
        # A fork pool forks its workers at its first task, as
        # ProcessPoolExecutor does: they inherit what was shared before it,
        # and nothing forked is in the way of the caller meanwhile.
        if backend != "fork":
            try:
                if backend == "threads":
                    _core.set_runner(thread_runner(initializer, tuple(initargs)))
                self._e.start()
            except BaseException:
                self._e.close()
                raise

    @property
    def workers(self):
        return self._e.n

    @property
    def _broken(self):
        """Why the pool is broken (ProcessPoolExecutor's attribute), or False."""
        return self._e.broken or False

    @property
    def log_lines_dropped(self):
        return self._e.log_lines_dropped

    _STATS = ("workers", "workers_ready", "tasks_done", "tasks_failed", "workers_replaced",
              "log_lines", "log_lines_dropped")

    def stats(self):
        """The pool's counters (a dict): workers, workers_ready (up now),
        tasks_done (calls that returned: each call of a map counts, not
        its chunk), tasks_failed (calls that raised, or were lost with
        their worker; a map chunk stops at its first failing call, so the
        calls after it count nowhere), workers_replaced, log_lines,
        log_lines_dropped. A fork pool before its first task: workers and
        zeros."""
        e = self._e
        core = e.core
        stats = (dict.fromkeys(self._STATS, 0) | {"workers": e.n} if core is None
                 else core.stats())
        with e.lock:
            stats["tasks_done"], stats["tasks_failed"] = e.calls_done, e.calls_failed
        return stats

    # --- sharing

    def share(self, obj, move=False, fresh=False, inherit=None):
        """Puts ``obj`` in the pool's store once; returns its Shared handle.

        ``obj`` may also be a Ref of an object already in the pool's store
        (put there through the store given as ``store=``, say): its handle,
        with nothing put. Its arrays are read-only in the workers. Its other
        objects are cached per worker: a task that changes them (``df["a"]
        = ...``, ``est.fit(...)``, a list's append) changes them for that
        worker's later tasks. ``fresh=True``: each task gets them unpickled
        anew, so no task sees another's changes.

        A fork pool whose workers are not forked yet (before its first
        task) lets them inherit ``obj`` copy-on-write from this process, as
        ProcessPoolExecutor's fork workers inherit globals: nothing is
        copied, and it costs nothing that grows with the object. (A worker
        then shares the object's pages with this process until either
        writes them; Python's reference counts write only object headers,
        never an array's data.) The workers see the object as it is when
        they are forked: do not change it after sharing. ``inherit=False``
        puts it in the store instead, as every later share does, and every
        share of a spawn pool or of a pool given ``store=`` (whose objects
        may be shared with other pools by their Ref), and ``fresh=True``."""
        e = self._e
        e.check_process()
        if isinstance(obj, Ref):
            if obj not in e.store:
                raise NotFound(f"{obj!r} is not an object of this pool's store")
            ref = obj
        elif (self._backend == "fork" and e.core is None and e.own_store and not fresh
                and inherit is not False):
            # Inherited by the workers when they are forked: the store
            # holds only a name for it.
            ref = e.store.put(_HeldByForkedWorkers())
            _inherited[ref] = obj
            e.shared.add(ref)
            return Shared(ref)
        else:
            ref = e.store.put(obj, move=move)
        if self._backend == "fork":  # attached here once, inherited by every worker
            _inherited[ref] = e.store.get(ref)
            e.shared.add(ref)
        return Shared(ref, fresh)

    def empty(self, shape, dtype=float, order="C"):
        """A writable array in the pool's store, to fill and then share with
        no copy (see Store.empty)."""
        return self._e.store.empty(shape, dtype, order)

    def unshare(self, shared):
        """Deletes a shared object; tasks that get its handle later fail
        with NotFound (a task already holding it keeps it until it ends)."""
        _inherited.pop(shared.ref, None)
        self._e.shared.discard(shared.ref)
        self._e.store.delete(shared.ref)

    # --- tasks

    def submit(self, fn, /, *args, **kwargs):
        """Runs fn(*args, **kwargs) in a worker; returns its Future. A call
        that cannot be pickled fails its future (result() raises the
        PicklingError), as with ProcessPoolExecutor."""
        return self._submit(fn, (fn, args, kwargs))

    def _submit(self, fn, call, calls=1, extra=None):
        e = self._e
        e.check_process()
        try:
            stream, buffers = dumps(call, e.main, extra)
        except zcstore_errors.Error:
            raise  # the store's own (a share made while pickling did not fit): as it is
        except Exception as error:
            failure = pickle.PicklingError(
                f"{_name_of(fn)} or its arguments cannot be sent to a worker: {error} "
                "(a worker imports functions by module and name: define it at module "
                "level, or install python3-cloudpickle for lambdas and closures)")
            failure.__cause__ = error
            return e.failed(failure)
        try:
            return e.submit(stream, buffers, _name_of(fn), calls)
        finally:
            stream.release()

    def _plan(self, iterables, chunksize):
        """map's calls as chunks: (columns, [(first, count)]). A chunk
        travels as one column per iterable (cheaper to pickle than a tuple
        per call), cut to the shortest, as zip and map do."""
        columns = [_column(it) for it in iterables]
        n = min(map(len, columns), default=0)
        ramp = chunksize is None
        if ramp:  # about four per worker, reached by doubling from one call
            chunksize = max(1, min(-(-n // (4 * self.workers)), 1024))
        chunksize = int(chunksize)
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        chunks = []
        i, size = 0, 1 if ramp else chunksize
        while i < n:
            # The first chunk of each worker is one call, the next two, and
            # so on up to chunksize: the first result comes after one call,
            # not after a whole chunk (joblib's auto-batching ramps alike).
            k = min(size, n - i)
            chunks.append((i, k))
            i += k
            if len(chunks) % self.workers == 0:
                size = min(chunksize, 2 * size)
        return columns, chunks

    def _submit_chunk(self, fn, columns, i, k, bar=None):
        f = self._submit(fn, (call_chunk, (fn, [c[i:i + k] for c in columns]), {}), k)
        if bar is not None:
            # Calls that returned count: not a chunk cancelled (at Ctrl-C,
            # say) nor one that failed.
            # Not Future.add_done_callback, which has the collector watch the
            # chunk at once: map takes each chunk's result itself, in order.
            concurrent.futures.Future.add_done_callback(
                f, lambda f, k=k: f.cancelled() or f.exception() is not None or bar.update(k))
        return f

    def _chunks(self, fn, iterables, chunksize, progress):
        columns, chunks = self._plan(iterables, chunksize)
        n = sum(k for _, k in chunks)
        bar = _progress(self._progress_setting if progress is None else progress, n)
        return [self._submit_chunk(fn, columns, i, k, bar) for i, k in chunks], bar

    async def amap(self, fn, *iterables, chunksize=None):
        """map for asyncio: ``async for result in pool.amap(fn, items)``,
        results in order. The event loop is never blocked: results come
        through asyncio.wrap_future (a worker's answer is unpickled on the
        pool's collector thread), and chunks are submitted a few at a time
        (at most four per worker ahead of the one awaited), each submit
        followed by a turn of the loop. Leaving the loop early (break, an
        exception, cancellation) cancels what has not started."""
        import asyncio
        columns, chunks = self._plan(iterables, chunksize)
        ahead = 4 * self.workers
        futures = []  # submitted, not yet yielded, oldest first
        chunks.reverse()
        try:
            while chunks or futures:
                while chunks and len(futures) < ahead:
                    i, k = chunks.pop()
                    futures.append(self._submit_chunk(fn, columns, i, k))
                    await asyncio.sleep(0)
                for result in await asyncio.wrap_future(futures[0]):
                    yield result
                futures.pop(0)
        finally:
            for f in futures:
                f.cancel()

    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=None):
        """Like Executor.map: results in order, as they are needed. Calls
        travel in chunks of ``chunksize`` (None: about four per worker, at
        most 1024 calls).
        ``progress`` overrides the pool's setting for this call."""
        futures, bar = self._chunks(fn, iterables, chunksize, progress)
        deadline = None if timeout is None else time.monotonic() + timeout

        def in_order():
            # Each chunk's future and list are let go of as its results are
            # yielded: a result the caller drops is freed (as
            # Executor.map's iterator does).
            futures.reverse()
            while futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                chunk = futures[-1].result(left)
                futures.pop()
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
        return _results(in_order(), futures, bar)

    def map_unordered(self, fn, *iterables, timeout=None, chunksize=None, progress=None):
        """As map, but each chunk's results as soon as it is done."""
        futures, bar = self._chunks(fn, iterables, chunksize, progress)
        as_done = (r for f in concurrent.futures.as_completed(futures, timeout) for r in f.result())
        return _results(as_done, futures, bar)

    def broadcast(self, fn, *args):
        """Runs fn(*args) once on every worker; their results, by worker.
        The first failure is raised (after every worker has answered)."""
        e = self._e
        e.check_process()
        core = e.start()
        stream, buffers = dumps((fn, args, {}), e.main)
        outcomes = core.broadcast(stream, buffers)
        results = [e.outcome(code, message, st, bufs) for _, code, message, st, bufs in outcomes]
        for ok, value in results:
            if not ok:
                raise value
        return [value for _, value in results]

    def map_with_context(self, fn, params, contexts, timeout=None):
        """fn(param, context) for each pair, in the workers; returns the
        results in order.

        A context is a dict, or an object whose attributes are its state
        (its ``__dict__``): per-task state that changes as the work goes on
        (counters, caches, a best value so far). What a task leaves in its
        context (keys or attributes set, changed or deleted, and objects in
        it changed in place) is applied to the caller's context object when
        the task ends. Tasks given the same context object run one after
        another, in the order of ``params``, each getting the context as the
        one before left it, so no update is lost; tasks on different
        contexts run in parallel. A shared object (a ``share`` handle) in a
        context reaches the task as the object, and comes back as its
        handle, never copied. A context travels with each of its tasks:
        share what is large in it.

        If a task raises, no task starts after that; those running finish
        and their changes are applied; then its exception is raised. A
        context is thus updated by each of its tasks that returned, and by
        none that raised or did not run. ``timeout`` (seconds, for the whole
        call): TimeoutError, with the tasks not started cancelled."""
        params, contexts = list(params), list(contexts)
        if len(params) != len(contexts):
            raise ValueError(f"map_with_context needs a context per param: got {len(params)} "
                             f"params and {len(contexts)} contexts")
        for c in contexts:
            _state_of(c)  # a TypeError now, before any task runs
        deadline = None if timeout is None else time.monotonic() + timeout
        chains = {}  # id(context) -> the indices of its tasks not yet submitted
        for i, c in enumerate(contexts):
            chains.setdefault(id(c), []).append(i)
        for chain in chains.values():
            chain.reverse()
        results = [None] * len(params)
        running = {}
        failure = None

        def start(chain):
            i = chain.pop()
            running[self.submit(call_with_context, fn, params[i], contexts[i])] = i
        for chain in chains.values():
            start(chain)
        while running:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = concurrent.futures.wait(running, left, concurrent.futures.FIRST_COMPLETED)
            if not done:
                for f in running:
                    f.cancel()
                raise concurrent.futures.TimeoutError(
                    f"map_with_context: {len(running)} tasks not done after {timeout} s")
            for f in done:
                i = running.pop(f)
                try:
                    results[i], state = f.result()
                except BaseException as e:
                    failure = failure or e
                    continue
                _apply_state(contexts[i], state)
                chain = chains[id(contexts[i])]
                if chain and failure is None:
                    start(chain)
        if failure is not None:
            raise failure
        return results

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Refuses new tasks; with ``cancel_futures``, cancels those not
        started (in a worker's queue too); with ``wait``, returns once the
        others are done and the workers stopped, else that happens on a
        thread of its own (which the interpreter's exit waits for)."""
        self._e.check_process()
        self._e.shutdown(wait, cancel_futures)


def _dumps_bytes(obj, main=None):
    stream, buffers = dumps(obj, main)
    if buffers:  # out-of-band buffers go in band here: this is start-up data
        return pickle.dumps(loads(stream, buffers), protocol=5)
    return bytes(stream)
