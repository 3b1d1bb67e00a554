"""CPython 3.11's own concurrent.futures tests, run against zcstore.Pool.

The tests are Debian's (libpython3.11-testsuite, unpacked by `make test`
into the build tree: ZCSTORE_CPYTHON_TESTS names the folder that holds
test_concurrent_futures.py). Their classes are used as they are: what this
file adds is the mixins that build a zcstore.Pool for each backend
(spawn, fork, threads), in place of CPython's executor mixins. No assertion
is changed. Tests are changed only where they must be:

- SKIPS: tests that read ProcessPoolExecutor's or ThreadPoolExecutor's
  internals (``_processes``, ``_threads``, ``_call_queue``,
  ``_executor_manager_thread``, ``max_tasks_per_child``, ``mp_context``),
  each with its reason;
- ADAPTED: tests whose child interpreter imports its executor from
  concurrent.futures by name; here it builds a zcstore.Pool instead, and
  sees this build's zcstore (PYTHONPATH). Their assertions are CPython's.
- DIFFERENCES: where zcstore.Pool deliberately differs from
  ProcessPoolExecutor (docs/python.md, "Differences from
  ProcessPoolExecutor"); the test of zcstore's own behaviour is in
  test_pool.py, named beside each.

Run one backend with `pytest -p no:logging cpython_executor_test.py -k
Spawn` (Fork, Threads; FutureTest whatever the backend): pytest's logging
plugin would catch what CPython's tests expect on stderr. ctest runs each
backend as its own test.
"""
import functools
import importlib.util
import multiprocessing as mp
import os
import sys
import unittest

from test.support.script_helper import assert_python_ok

import zcstore

_DIR = os.environ.get("ZCSTORE_CPYTHON_TESTS")
if not _DIR or not os.path.exists(os.path.join(_DIR, "test_concurrent_futures.py")):
    raise ImportError(
        "ZCSTORE_CPYTHON_TESTS must name the folder holding CPython's "
        "test_concurrent_futures.py (make test unpacks Debian's libpython3.11-testsuite)")
if _DIR not in sys.path:  # child interpreters import it by this name too
    sys.path.insert(0, _DIR)
_spec = importlib.util.spec_from_file_location(
    "test_concurrent_futures", os.path.join(_DIR, "test_concurrent_futures.py"))
cf = importlib.util.module_from_spec(_spec)
sys.modules["test_concurrent_futures"] = cf
_spec.loader.exec_module(cf)


# ------------------------------------------------------------ the mixins

class _ZcstoreMixin(cf.ExecutorMixin):
    """Builds a zcstore.Pool where CPython builds its executor: with
    ``mp_context`` for the process backends (zcstore.Pool takes it as
    ProcessPoolExecutor does, and picks its backend from it)."""
    executor_type = zcstore.Pool

    def get_context(self):
        return mp.get_context(self.ctx)


class SpawnMixin(_ZcstoreMixin):
    ctx = "spawn"
    backend = "spawn"


class ForkMixin(_ZcstoreMixin):
    ctx = "fork"
    backend = "fork"


class ThreadsMixin(_ZcstoreMixin):
    # No ctx, as CPython's ThreadPoolMixin: the pool is built without one.
    executor_type = functools.partial(zcstore.Pool, backend="threads")
    backend = "threads"


PROCESS_MIXINS = (SpawnMixin, ForkMixin)
ALL_MIXINS = (SpawnMixin, ForkMixin, ThreadsMixin)


# ------------------------------------------------------------ adapted tests

def _script(test, body):
    """A child interpreter's script: CPython's, with a zcstore.Pool of this
    test's backend for its executor."""
    return ("if 1:\n"
            "            import zcstore\n"
            f"            from test_concurrent_futures import sleep_and_print\n"
            f"            Executor = lambda *a, **k: zcstore.Pool(*a, backend={test.backend!r}, **k)\n"
            + body)


def _python_ok(script):
    # The child sees this build's zcstore and the CPython tests (PYTHONPATH),
    # so it is not started isolated (-I), as assert_python_ok would.
    path = os.pathsep.join([_DIR, os.environ.get("PYTHONPATH", "")])
    return assert_python_ok("-c", script, __isolated=False, PYTHONPATH=path)


class AdaptedShutdownTests:
    """ExecutorShutdownTest's tests that run a child interpreter."""

    def test_interpreter_shutdown(self):
        rc, out, err = _python_ok(_script(self, """
            if __name__ == "__main__":
                t = Executor(5)
                t.submit(sleep_and_print, 1.0, "apple")
            """))
        # Errors in atexit hooks don't change the process exit code, check
        # stderr manually.
        self.assertFalse(err)
        self.assertEqual(out.strip(), b"apple")

    def test_submit_after_interpreter_shutdown(self):
        rc, out, err = _python_ok(_script(self, """
            import atexit
            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise
            if __name__ == "__main__":
                t = Executor(5)
                t.submit(id, 42).result()
            """))
        # Errors in atexit hooks don't change the process exit code, check
        # stderr manually.
        self.assertIn("RuntimeError: cannot schedule new futures", err.decode())
        self.assertEqual(out.strip(), b"runtime-error")

    def test_hang_gh83386(self):
        """shutdown(wait=False) doesn't hang at exit with running futures.

        CPython skips it for ProcessPoolExecutor ("Hangs"); zcstore.Pool
        must pass it on every backend."""
        rc, out, err = _python_ok(_script(self, """
            if __name__ == "__main__":
                t = Executor(max_workers=3)
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
            """))
        self.assertFalse(err)
        self.assertEqual(out.strip(), b"apple")

    def test_cancel_futures_wait_false(self):
        # CPython runs it for ThreadPoolExecutor only ("PPE often hangs with
        # wait=False"); zcstore.Pool must pass it on every backend.
        rc, out, err = _python_ok(_script(self, """
            if __name__ == "__main__":
                t = Executor()
                t.submit(sleep_and_print, .1, "apple")
                t.shutdown(wait=False, cancel_futures=True)
            """))
        # Errors in atexit hooks don't change the process exit code, check
        # stderr manually.
        self.assertFalse(err)
        self.assertEqual(out.strip(), b"apple")


class ManagerQueueFailingInitializerMixin(cf.FailingInitializerMixin):
    """FailingInitializerMixin, its log queue a Manager's for spawned
    workers: a multiprocessing.Queue reaches a process only by inheritance
    (it refuses to be pickled otherwise), and spawned zcstore workers
    inherit nothing; a Manager's queue is the documented way there."""

    def setUp(self):
        if getattr(self, "ctx", None) == "spawn":
            self.mp_context = self.get_context()
            self._manager = self.mp_context.Manager()
            self.addCleanup(self._manager.shutdown)
            self.log_queue = self._manager.Queue()
            self.executor_kwargs = dict(initializer=cf.init_fail, initargs=(self.log_queue,))
            cf.ExecutorMixin.setUp(self)
        else:
            super().setUp()


class FutureTest(cf.FutureTests, unittest.TestCase):
    """FutureTests over the futures zcstore.Pool hands out (zcstore.Future):
    the module's Future, and the futures made from it, are zcstore's while
    they run. One class, whatever the backend."""

    def setUp(self):
        super().setUp()
        saved = {name: getattr(cf, name) for name in (
            "Future", "PENDING_FUTURE", "RUNNING_FUTURE", "CANCELLED_FUTURE",
            "CANCELLED_AND_NOTIFIED_FUTURE", "EXCEPTION_FUTURE", "SUCCESSFUL_FUTURE")}
        self.addCleanup(lambda: [setattr(cf, k, v) for k, v in saved.items()])
        cf.Future = zcstore.Future
        cf.PENDING_FUTURE = cf.create_future(state=cf.PENDING)
        cf.RUNNING_FUTURE = cf.create_future(state=cf.RUNNING)
        cf.CANCELLED_FUTURE = cf.create_future(state=cf.CANCELLED)
        cf.CANCELLED_AND_NOTIFIED_FUTURE = cf.create_future(state=cf.CANCELLED_AND_NOTIFIED)
        cf.EXCEPTION_FUTURE = cf.create_future(state=cf.FINISHED, exception=OSError())
        cf.SUCCESSFUL_FUTURE = cf.create_future(state=cf.FINISHED, result=42)


# ------------------------------------------------------------ what is skipped

INTERNALS = "reads ProcessPoolExecutor's internals"
SKIPS = {
    # ProcessPoolShutdownTest
    "test_processes_terminate": f"{INTERNALS} (_processes)",
    "test_context_manager_shutdown": f"{INTERNALS} (_processes)",
    "test_del_shutdown": f"{INTERNALS} (_processes, _call_queue, _executor_manager_thread); "
                         "test_pool.py: test_a_pool_dropped_without_shutdown_stops",
    "test_shutdown_no_wait": f"{INTERNALS} (_processes, _call_queue, _executor_manager_thread); "
                             "test_pool.py: test_shutdown_without_waiting_still_finishes_the_work",
    # ProcessPoolExecutorTest
    "test_saturation": f"{INTERNALS} (_processes)",
    "test_idle_process_reuse_one": f"{INTERNALS} (_processes)",
    "test_idle_process_reuse_multiple": f"{INTERNALS} (_processes)",
    "test_max_tasks_per_child": f"{INTERNALS} (max_tasks_per_child, _processes)",
    "test_max_tasks_per_child_defaults_to_spawn_context": f"{INTERNALS} (_mp_context)",
    "test_max_tasks_early_shutdown": f"{INTERNALS} (max_tasks_per_child)",
    "test_killed_child": f"{INTERNALS} (_processes); "
                         "test_pool.py: test_a_killed_worker_fails_its_task_only_and_is_replaced",
    # ExecutorDeadlockTest
    "test_shutdown_deadlock_pickle": f"{INTERNALS} (_executor_manager_thread)",
}
# Deliberate differences (docs/python.md, "Differences from
# ProcessPoolExecutor"): a call or result that fails to unpickle fails its
# own task with that error; the worker lives and the pool is not broken.
UNPICKLING = ("differs on purpose: the task fails with the unpickling error itself and the "
              "pool stays usable (ProcessPoolExecutor: BrokenProcessPool); test_pool.py: "
              "test_a_call_or_result_that_fails_to_unpickle_fails_its_task_only")
SKIPS.update({
    "test_error_at_task_unpickle": UNPICKLING,
    "test_exit_at_task_unpickle": UNPICKLING,
    "test_error_during_result_unpickle_in_result_handler": UNPICKLING,
    "test_exit_during_result_unpickle_in_result_handler": UNPICKLING,
})
# Per backend.
# RUNNING means started in a worker (ProcessPoolExecutor: handed to its call
# queue), and shutdown(cancel_futures=True) cancels everything not started.
# These two tests count on a task having started within microseconds of its
# submit: on a loaded machine the worker (a process, or a thread) may not
# have been scheduled yet (a fork pool's first one is forked only at its
# first task), and then every task is cancelled, as the contract says; seen
# on every backend with two CPU hogs running. Deterministic tests of the
# same: test_pool_contract.py, test_shutdown_cancels_only_what_has_not_started.
NOT_YET_STARTED = ("differs on purpose: counts on a task having started in a worker "
                   "microseconds after submit; zcstore cancels every task not yet started "
                   "(test_pool_contract.py: test_shutdown_cancels_only_what_has_not_started)")
SKIPS.update({"test_cancel_futures_wait_false": NOT_YET_STARTED,
              "test_cancel_futures": NOT_YET_STARTED})


def _skip(cls):
    for name, why in SKIPS.items():
        if hasattr(cls, name):
            setattr(cls, name, unittest.skip(why)(getattr(cls, name)))
    return cls


def _make(prefix, mixin, tests, bases=(cf.BaseTestCase,)):
    name = f"{prefix}{tests.__name__.replace('Mixin', '').replace('Tests', '').replace('Test', '')}Test"
    cls = type(name, (tests, mixin) + bases, {"__module__": __name__})
    globals()[name] = _skip(cls)


_SHUTDOWN = type("ExecutorShutdownTest", (AdaptedShutdownTests, cf.ExecutorShutdownTest), {})
_PROCESS_SHUTDOWN = type("ProcessPoolShutdownTest",
                         (AdaptedShutdownTests, cf.ProcessPoolShutdownTest), {})
for _mixin in ALL_MIXINS:
    _p = _mixin.__name__.replace("Mixin", "")
    _process = _mixin in PROCESS_MIXINS
    # The process classes extend the generic ones (ProcessPoolExecutorTest
    # is an ExecutorTest with more tests).
    _make(_p, _mixin, cf.ProcessPoolExecutorTest if _process else cf.ExecutorTest)
    _make(_p, _mixin, _PROCESS_SHUTDOWN if _process else _SHUTDOWN)
    _make(_p, _mixin, cf.WaitTests)
    _make(_p, _mixin, cf.AsCompletedTests)
    _make(_p, _mixin, cf.InitializerMixin)
    _make(_p, _mixin, ManagerQueueFailingInitializerMixin)
    if _process:
        _make(_p, _mixin, cf.ExecutorDeadlockTest)


def setUpModule():
    cf.setUpModule()
