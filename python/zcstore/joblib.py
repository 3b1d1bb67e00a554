"""joblib's Parallel on a zcstore.Pool: ``import zcstore.joblib`` registers
the backend "zcstore".

    import joblib, zcstore.joblib
    with joblib.parallel_backend("zcstore", n_jobs=4):
        results = joblib.Parallel()(joblib.delayed(score)(model, x) for x in xs)

What joblib's default backend (loky) does with a memory map on disk, this
one does with zcstore: every numpy array of ``max_nbytes`` or more
(joblib's default, "1M") found in a batch's arguments, alone or inside a
container (a dict, a pandas DataFrame, a scipy sparse matrix, a fitted
estimator), reaches the workers once per object and per Parallel call, and
the tasks get it as a read-only view, with no copy (``mmap_mode`` "r",
joblib's default). How it reaches them is the pool's start method
(``start_method``, given to parallel_backend):

- "fork" (the default): a pool is forked for each Parallel call at its
  first batch, after the caller's arrays exist, and its workers inherit
  them copy-on-write: no copy at all, one copy of the model in memory
  however many workers. Arrays that first appear in later batches go
  through the pool's store. (The caveats of forking a process with threads
  are ProcessPoolExecutor's on Linux, whose default this is too.)
- "spawn": fresh interpreters, as loky's, one pool per n_jobs kept between
  calls (as loky keeps its executor) and stopped at interpreter exit; each
  array is copied into the pool's store once per call: two copies in all,
  the caller's and the store's.

Differences from loky's memory-mapping, each deliberate:

- ``mmap_mode="r+"`` or ``"w+"`` (workers writing into the caller's array)
  is refused: shared arrays are read-only. ``"c"`` gives each task a
  writable copy of each shared array, made in the worker (numpy's "c" maps
  copy-on-write instead).
- ``max_nbytes=None`` turns the sharing off (arrays are pickled with each
  batch, as loky then does).
- Nothing is written to disk, and ``temp_folder`` is unused; arrays are not
  ``numpy.memmap`` instances.

Nested Parallel calls in a worker run on threads, as under loky.
"""
import concurrent.futures
import multiprocessing
import os
import threading

import joblib
from joblib._parallel_backends import (AutoBatchingMixin, FallbackToBackend,
                                       ParallelBackendBase, SafeFunction, SequentialBackend)

from .pool import Pool, _attach

__all__ = ["ZcstoreBackend"]

_pools = {}  # (n_jobs, backend) -> Pool, reused by later Parallel calls
_pools_lock = threading.Lock()


def _pool(n_jobs, backend):
    if backend == "fork":  # forked afresh for each call, after its arrays exist (see above)
        return Pool(n_jobs, backend="fork", progress=False)
    with _pools_lock:
        pool = _pools.get((n_jobs, backend))
        if pool is None or pool._e.stop or pool._e.broken is not None:
            pool = _pools[(n_jobs, backend)] = Pool(n_jobs, backend=backend, progress=False)
        return pool


def _nbytes(limit):
    """joblib's max_nbytes: bytes, a string such as "1M", or None."""
    if limit is None or isinstance(limit, int):
        return limit
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = str(limit).strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class ZcstoreBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ParallelBackend over a zcstore.Pool (see the module's doc).

    ``start_method``: the pool's, "fork" (the default: a pool forked at
    each Parallel call's first batch, whose workers inherit the caller's
    arrays, no copy) or "spawn" (pools kept between calls, each array
    copied into the store once per call)."""

    supports_timeout = True

    def __init__(self, nesting_level=None, inner_max_num_threads=None, start_method="fork",
                 **kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **kwargs)
        if start_method not in ("spawn", "fork"):
            raise ValueError(f"start_method must be 'spawn' or 'fork', not {start_method!r}")
        self._start_method = start_method
        self._pool = None
        self._shared = {}  # id(array) -> (array, Shared): this Parallel call's
        self._futures = set()
        self._lock = threading.Lock()

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None,
                  max_nbytes="1M", mmap_mode="r", **backend_args):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        if mmap_mode not in ("r", "c", None):
            raise ValueError(
                f"mmap_mode={mmap_mode!r}: the zcstore backend shares arrays read-only "
                "('r', the default) or copy-on-write ('c'); workers cannot write into the "
                "caller's arrays")
        self.parallel = parallel
        self._max_nbytes = _nbytes(max_nbytes)
        self._copy_on_write = mmap_mode == "c"
        self._n_jobs = n_jobs
        self._pool = _pool(n_jobs, self._start_method)
        return n_jobs

    # --- arrays in the store

    def _reduce(self, obj):
        """The pickler's first say on each object of a batch: a large numpy
        array goes as the handle of its copy in the store (made once per
        array and per Parallel call)."""
        if (type(obj).__module__ != "numpy" or type(obj).__name__ != "ndarray"
                or obj.nbytes < self._max_nbytes or obj.dtype.hasobject):
            return NotImplemented
        fork = self._start_method == "fork"
        with self._lock:
            held = self._shared.get(id(obj))
            if held is None or held[0] is not obj:
                # A fork pool not yet forked: the workers will inherit the
                # array itself (no copy); else a copy in the store.
                held = self._shared[id(obj)] = (
                    obj, self._pool.share(obj, inherit=None if fork else False))
        ref = held[1].ref
        if self._copy_on_write:
            return _writable_view, (ref,)
        return (_read_only, (ref,)) if fork else (_attach, (ref,))

    # --- joblib's calls

    def apply_async(self, func, callback=None):
        extra = None if self._max_nbytes is None else self._reduce
        # SafeFunction: a KeyboardInterrupt in a task comes back as joblib's
        # WorkerInterrupt, as under loky.
        call = SafeFunction(func)
        future = self._pool._submit(func, (call, (), {}), extra=extra)
        future.get = lambda timeout=None: _result(future, timeout)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future):
        with self._lock:
            self._futures.discard(future)

    def abort_everything(self, ensure_ready=True):
        """A batch raised: what has not started is cancelled, and the pool
        is replaced by a fresh one (as loky restarts its workers), the old
        one stopping once its running tasks end; with ``ensure_ready``
        False, no new one is made."""
        with self._lock:
            futures, self._futures = list(self._futures), set()
        for f in futures:
            f.cancel()
        old, self._pool = self._pool, None
        with _pools_lock:
            for key, pool in list(_pools.items()):
                if pool is old:
                    del _pools[key]
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        if ensure_ready:
            self._pool = _pool(self._n_jobs, self._start_method)

    def terminate(self):
        """The end of a Parallel call: its arrays leave the store (a task
        still holding one keeps it until it ends); the pool stays."""
        with self._lock:
            shared, self._shared = list(self._shared.values()), {}
        pool, self._pool = self._pool, None  # the pool itself stays, for the next call
        if self._start_method == "fork" and pool is not None:
            pool.shutdown()  # each call forks its own (see above)
        else:
            for _, handle in shared:
                try:
                    pool.unshare(handle)
                except Exception:  # the pool was shut down meanwhile: nothing to free
                    pass
        self.reset_batch_stats()


def _result(future, timeout):
    """Future.result as multiprocessing's AsyncResult.get, which joblib
    expects: its TimeoutError on a timeout."""
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as e:
        raise multiprocessing.TimeoutError(str(e)) from e


def _read_only(ref):
    """A fork worker's read-only view of an array it inherited."""
    view = _attach(ref).view()
    view.flags.writeable = False
    return view


def _writable_view(ref):
    """mmap_mode="c": the worker's own copy-on-write copy of a shared array."""
    import numpy as np
    shared = _attach(ref)
    return np.array(shared, copy=True)


joblib.register_parallel_backend("zcstore", ZcstoreBackend)
