"""zcstore.Pool keeps the concurrent.futures contract (beside CPython's own
tests, cpython_executor_test.py): running state and cancel, shutdown at
exit and when dropped, broken pools, errors, fork safety, references,
Manager proxies. After each test, no worker process and no pool thread may
be left."""
import concurrent.futures
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import zcstore

TIMEOUT = 60
BACKENDS = ["spawn", "fork", "threads"]
PROCESSES = ["spawn", "fork"]


def _children():
    """Pids of this process's children (zombies too: not yet reaped), but
    multiprocessing's resource tracker, which lives until this process ends."""
    me, found = str(os.getpid()), []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if fields[1] == me and b"resource_tracker" not in cmdline:
            found.append(int(pid))
    return found


def _pool_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("zcstore-pool")]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = set(_children())
    yield
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (set(_children()) - before or _pool_threads()):
        time.sleep(0.05)
    assert not set(_children()) - before, "worker processes left behind"
    assert not _pool_threads(), "pool threads left behind"


def sleep_for(s):
    time.sleep(s)
    return s


def touch(path):
    with open(path, "w"):
        pass
    return path


def square(x):
    return x * x


def fail_init():
    raise ValueError("bad initializer")


class TwoArgError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")  # args is one string, not (code, detail)
        self.code, self.detail = code, detail


def raise_two_arg():
    raise TwoArgError(7, "seven")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def append_to(proxy, value):
    proxy.append(value)
    return value


def wait_until(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def run_script(body, timeout=TIMEOUT):
    """A child interpreter running `body` as a script file (so that spawned
    workers can import its functions), with this build's zcstore."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "script.py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(body))
        return subprocess.run([sys.executable, path], capture_output=True, text=True,
                              timeout=timeout)


# ------------------------------------------------------------ running and cancel

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_started_task_is_running_and_cannot_be_cancelled(backend):
    with zcstore.Pool(1, backend=backend) as pool:
        f = pool.submit(sleep_for, 0.5)
        assert wait_until(f.running), "the task never showed as running"
        assert "state=running" in repr(f)
        assert not f.cancel()
        assert f.running() and not f.cancelled()
        assert f.result(TIMEOUT) == 0.5
        assert not f.running() and f.done()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_reported_cancelled_never_runs(backend, tmp_path):
    with zcstore.Pool(1, backend=backend) as pool:
        busy = pool.submit(sleep_for, 0.5)
        assert wait_until(busy.running)
        queued = pool.submit(touch, str(tmp_path / "queued"))  # in the worker's queue already
        assert not queued.running()
        assert queued.cancel() and queued.cancelled()
        assert busy.result(TIMEOUT) == 0.5
        assert pool.submit(square, 3).result(TIMEOUT) == 9  # the worker went past it
    assert not (tmp_path / "queued").exists(), "a task reported cancelled ran"


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_cancels_only_what_has_not_started(backend, tmp_path):
    pool = zcstore.Pool(1, backend=backend)
    busy = pool.submit(sleep_for, 0.5)
    assert wait_until(busy.running)
    fs = [pool.submit(touch, str(tmp_path / f"t{i}")) for i in range(6)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert busy.result() == 0.5  # started: finished
    for i, f in enumerate(fs):
        assert f.done()
        assert f.cancelled() == (not (tmp_path / f"t{i}").exists()), i
    assert all(f.cancelled() for f in fs)  # none had started


@pytest.mark.parametrize("timeout", [-1, -0.001, 0])
def test_a_negative_or_zero_timeout_raises_at_once(timeout):
    with zcstore.Pool(1, backend="threads") as pool:
        f = pool.submit(sleep_for, 1.0)
        start = time.monotonic()
        with pytest.raises(concurrent.futures.TimeoutError):
            f.result(timeout=timeout)
        with pytest.raises(concurrent.futures.TimeoutError):
            f.exception(timeout=timeout)
        assert time.monotonic() - start < 0.5
        assert f.result(TIMEOUT) == 1.0


# ------------------------------------------------------------ shutdown

@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_without_waiting_at_exit_neither_aborts_nor_loses_output(backend):
    # Five runs each: the abort this replaces came in 7-14 of 15.
    for _ in range(5):
        r = run_script(f"""
            import time, zcstore
            def work():
                time.sleep(0.2)
                print("apple", flush=True)
            if __name__ == "__main__":
                pool = zcstore.Pool(2, backend={backend!r})
                pool.submit(work)
                pool.shutdown(wait=False)
            """)
        assert (r.returncode, r.stdout, r.stderr) == (0, "apple\n", "")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pool_dropped_without_shutdown_stops(backend):
    threads_before = set(threading.enumerate())
    pool = zcstore.Pool(2, backend=backend)
    pids = [p for p in pool.broadcast(os.getpid) if p != os.getpid()]
    f = pool.submit(sleep_for, 0.2)  # work submitted before the drop still finishes
    results = pool.map(square, range(10))
    del pool
    gc.collect()
    assert f.result(TIMEOUT) == 0.2
    assert list(results) == [x * x for x in range(10)]
    # Its threads end, and its workers are stopped and reaped.
    assert wait_until(lambda: not [t for t in set(threading.enumerate()) - threads_before
                                   if t.name.startswith("zcstore-pool")], timeout=10)
    assert wait_until(lambda: not set(pids) & set(_children()), timeout=10)


class SlowToPickle:
    """Takes 0.3 s to pickle: a submit that has passed its shutdown check
    is still pickling while shutdown runs."""

    def __reduce__(self):
        time.sleep(0.3)
        return int, (1,)


@pytest.mark.parametrize("backend", ["spawn", "threads"])
def test_a_submit_racing_shutdown_is_refused_or_completes(backend):
    pool = zcstore.Pool(1, backend=backend)
    outcome = {}

    def submitter():
        try:
            outcome["future"] = pool.submit(square, SlowToPickle())
        except RuntimeError as e:
            outcome["refused"] = e
        except BaseException as e:  # anything else is the bug
            outcome["other"] = e

    t = threading.Thread(target=submitter)
    t.start()
    time.sleep(0.1)  # the submit is pickling now
    pool.shutdown(wait=True)
    t.join(TIMEOUT)
    assert "other" not in outcome, outcome
    if "refused" in outcome:
        assert "after shutdown" in str(outcome["refused"])
    else:  # accepted before shutdown looked: then it was waited for
        assert outcome["future"].result(timeout=TIMEOUT) == 1


def test_shutdown_without_waiting_still_finishes_the_work():
    pool = zcstore.Pool(2)
    results = pool.map(square, range(10))
    pool.shutdown(wait=False)
    assert list(results) == [x * x for x in range(10)]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(square, 1)


@pytest.mark.parametrize("backend", ["spawn", "threads"])
def test_a_submit_racing_shutdown_is_refused_or_completes(backend):
    for _ in range(5):
        pool = zcstore.Pool(2, backend=backend)
        futures, refused = [], []

        def submitter():
            for i in range(200):
                try:
                    futures.append(pool.submit(square, i))
                except RuntimeError as e:
                    refused.append(e)
                    return

        t = threading.Thread(target=submitter)
        t.start()
        time.sleep(0.005)
        pool.shutdown(wait=True)
        t.join(TIMEOUT)
        done, not_done = concurrent.futures.wait(futures, timeout=TIMEOUT)
        assert not not_done, f"{len(not_done)} futures stayed pending"
        assert all(f.result() == i * i for i, f in enumerate(futures))
        assert all("after shutdown" in str(e) for e in refused)


# ------------------------------------------------------------ Ctrl-C

INTERRUPTED = """
    import concurrent.futures, time
    import zcstore

    def nap(s, started):
        open(started, "w").close()
        time.sleep(s)
        return s

    if __name__ == "__main__":
        with zcstore.Pool(1, backend={backend!r}, progress=False) as pool:
            f = pool.submit(nap, 4, {started!r})
            start = time.monotonic()
            try:
                print("waiting", flush=True)
                {wait}
                print("not interrupted", flush=True)
            except KeyboardInterrupt:
                print("interrupted after %.1f s" % (time.monotonic() - start), flush=True)
            try:
                print("outcome", repr(f.result(timeout=20)), flush=True)
            except BaseException as e:
                print("outcome", type(e).__name__, flush=True)
        print("shut down", flush=True)
"""
WAITS = {"result": "f.result()", "wait": "concurrent.futures.wait([f])",
         "as_completed": "next(concurrent.futures.as_completed([f]))"}


def interrupt_a_wait(backend, how, group, when="running"):
    """Runs INTERRUPTED, and sends SIGINT once it waits and its task runs:
    to its process group (a terminal's Ctrl-C, which reaches the workers
    too) or to it alone. Returns its output."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path, started = os.path.join(d, "script.py"), os.path.join(d, "started")
        with open(path, "w") as f:
            f.write(textwrap.dedent(INTERRUPTED.format(backend=backend, wait=WAITS[how],
                                                       started=started)))
        p = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert p.stdout.readline() == "waiting\n", p.communicate()
            # A spawned worker may still be starting (a slow machine): a
            # Ctrl-C then ends the worker, not the task, and its replacement
            # runs the task to the end. So wait for the task to run.
            if when == "running":
                deadline = time.monotonic() + TIMEOUT
                while not os.path.exists(started) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert os.path.exists(started), "the task never started"
                time.sleep(0.3)  # into the wait
            if group:
                os.killpg(p.pid, signal.SIGINT)
            else:
                os.kill(p.pid, signal.SIGINT)
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert p.returncode == 0, err
    return out


@pytest.mark.parametrize("how", WAITS)
def test_ctrl_c_to_the_caller_ends_its_wait_and_the_result_still_comes(how):
    # SIGINT to the parent alone: its wait ends at once, the task runs on.
    out = interrupt_a_wait("spawn", how, group=False)
    assert "interrupted after" in out, out
    assert float(out.split("interrupted after ")[1].split()[0]) < 3, out
    assert "outcome 4\n" in out and "shut down" in out, out


@pytest.mark.parametrize("backend,how", [("spawn", "result"), ("spawn", "wait"),
                                         ("spawn", "as_completed"), ("fork", "result")])
def test_ctrl_c_to_the_whole_group_loses_no_future(backend, how):
    # The workers' tasks end with KeyboardInterrupt too: each future gets
    # it, and the pool shuts down (an answer taken as the caller's wait
    # was interrupted used to be lost, and shutdown waited for ever).
    out = interrupt_a_wait(backend, how, group=True)
    assert "interrupted after" in out, out
    assert "outcome KeyboardInterrupt" in out and "shut down" in out, out


def test_ctrl_c_while_a_spawned_worker_starts_loses_no_future():
    # The worker may die of it before it takes the task (its replacement
    # then runs the task to the end) or take the task and end it with
    # KeyboardInterrupt: either way the future gets an outcome and the pool
    # shuts down.
    for _ in range(3):
        out = interrupt_a_wait("spawn", "result", group=True, when="starting")
        assert "interrupted after" in out, out
        assert ("outcome 4\n" in out or "outcome KeyboardInterrupt" in out) and "shut down" in out, out


# ------------------------------------------------------------ broken pools, errors

@pytest.mark.parametrize("backend", PROCESSES)
def test_a_dead_worker_is_a_broken_process_pool_but_the_pool_goes_on(backend):
    with zcstore.Pool(1, backend=backend) as pool:
        with pytest.raises(BrokenProcessPool) as info:
            pool.submit(die).result(TIMEOUT)
        assert isinstance(info.value, zcstore.WorkerCrashed)
        assert "test_pool_contract.die" in str(info.value)  # the function, not 'zcstore.python'
        assert pool.submit(square, 5).result(TIMEOUT) == 25  # replaced


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_initializer_breaks_the_pool(backend, caplog):
    pool = zcstore.Pool(2, backend=backend, initializer=fail_init)
    try:
        with caplog.at_level("CRITICAL", logger="concurrent.futures"):
            f = pool.submit(square, 2)
            with pytest.raises(BrokenProcessPool) as info:
                f.result(TIMEOUT)
        assert isinstance(info.value.__cause__, ValueError)
        assert "bad initializer" in str(info.value)
        assert pool._broken
        with pytest.raises(BrokenProcessPool) as again:
            pool.submit(square, 3)
        assert isinstance(again.value.__cause__, ValueError)
    finally:
        with caplog.at_level("CRITICAL", logger="concurrent.futures"):
            pool.shutdown()  # delivers the workers' last records
    # Logged as ProcessPoolExecutor logs it (a worker's record reaches this
    # process's logging).
    assert any("Exception in initializer" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_whose_init_takes_two_arguments_comes_back_as_itself(backend):
    with zcstore.Pool(1, backend=backend) as pool:
        with pytest.raises(TwoArgError) as info:
            pool.submit(raise_two_arg).result(TIMEOUT)
        assert (info.value.code, info.value.detail) == (7, "seven")
        assert str(info.value) == "7: seven"


def _fail_to_load():
    raise pickle.UnpicklingError("cannot be rebuilt here")


class FailsToLoad:
    """Pickles, but fails to unpickle wherever it is loaded."""

    def __reduce__(self):
        return _fail_to_load, ()


def return_fails_to_load():
    return FailsToLoad()


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_call_or_result_that_fails_to_unpickle_fails_its_task_only(backend):
    with zcstore.Pool(1, backend=backend) as pool:
        with pytest.raises(pickle.UnpicklingError, match="cannot be rebuilt"):  # in the worker
            pool.submit(square, FailsToLoad()).result(TIMEOUT)
        with pytest.raises(pickle.UnpicklingError, match="cannot be rebuilt"):  # in the parent
            pool.submit(return_fails_to_load).result(TIMEOUT)
        assert pool.submit(square, 6).result(TIMEOUT) == 36
        assert pool.stats()["workers_replaced"] == 0 and not pool._broken


def test_a_timeout_names_the_function():
    with zcstore.Pool(1, task_timeout=0.3) as pool:
        with pytest.raises(zcstore.Timeout, match="task 'test_pool_contract.sleep_for' ran longer"):
            pool.submit(sleep_for, 5).result(TIMEOUT)


def test_max_workers_and_mp_context_as_process_pool_executor_takes_them():
    import multiprocessing
    with zcstore.Pool(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.workers == 2 and pool.submit(square, 4).result(TIMEOUT) == 16
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        zcstore.Pool(max_workers=0)
    with pytest.raises(zcstore.InvalidArgument, match="disagree"):
        zcstore.Pool(1, backend="spawn", mp_context=multiprocessing.get_context("fork"))
    with pytest.raises(zcstore.InvalidArgument, match="forkserver"):
        zcstore.Pool(1, mp_context=multiprocessing.get_context("forkserver"))


# ------------------------------------------------------------ output

def test_worker_stdout_goes_to_stdout_and_stderr_to_stderr():
    r = run_script("""
        import sys, zcstore
        def talk():
            print("to stdout")
            print("to stderr", file=sys.stderr)
        if __name__ == "__main__":
            with zcstore.Pool(1) as pool:
                pool.submit(talk).result()
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "to stdout\n"
    assert r.stderr == "[worker 0] to stderr\n"


# ------------------------------------------------------------ fork safety

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_child_cannot_use_its_parent_s_pool(backend):
    with zcstore.Pool(1, backend=backend) as pool:
        inherited = pool.submit(square, 2)
        assert inherited.result(TIMEOUT) == 4
        slow = pool.submit(sleep_for, 0.5)
        pid = os.fork()
        if pid == 0:  # the child: a clear error, and nothing sent to the parent's workers
            try:
                pool.submit(square, 3)
                code = 1
            except RuntimeError as e:
                code = 0 if "forked from it" in str(e) else 2
            # Inherited futures are read, never asked of the parent's pool
            # (whose mutex in the child is a copy): a pending one stays so here.
            if code == 0 and not (inherited.done() and "state=finished" in repr(inherited)
                                  and "state=pending" in repr(slow) and not slow.cancel()):
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pool.submit(square, 5).result(TIMEOUT) == 25
        assert slow.result(TIMEOUT) == 0.5  # the child's cancel touched nothing here
        assert pool.stats()["workers_replaced"] == 0


def test_a_child_forked_beside_a_threads_pool_exits_cleanly():
    r = run_script("""
        import os, sys, zcstore
        pool = zcstore.Pool(2, backend="threads")
        assert pool.submit(abs, -3).result() == 3
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # the interpreter's own exit: finalizers, atexit, the pool's copy
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        pool.shutdown()
        """)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "0", "")


# ------------------------------------------------------------ references, proxies

class Token:
    pass


def make_token(_):
    return Token()


@pytest.mark.parametrize("backend", ["spawn", "threads"])
def test_map_results_are_freed_when_the_caller_drops_them(backend):
    import weakref
    with zcstore.Pool(1, backend=backend) as pool:
        for obj in pool.map(make_token, range(10), chunksize=5):  # 5 results per chunk
            wr = weakref.ref(obj)
            del obj
            gc.collect()
            assert wr() is None, "the map still holds a result the caller dropped"


def test_a_manager_proxy_works_in_spawned_workers():
    import multiprocessing
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.list()
        with zcstore.Pool(2) as pool:
            assert list(pool.map(append_to, [shared] * 4, range(4), chunksize=1)) == [0, 1, 2, 3]
        assert sorted(shared) == [0, 1, 2, 3]


# ------------------------------------------------------------ interactive use

INTERACTIVE = """\
import zcstore
def cube(x):
    return x ** 3

with zcstore.Pool(2) as pool:
    print(list(pool.map(cube, range(4))), pool.submit(cube, 5).result())

"""


@pytest.mark.skipif(zcstore.pool._cloud() is None, reason="needs python3-cloudpickle")
@pytest.mark.parametrize("how", ["-c", "stdin", "repl"])
def test_functions_of_a_repl_python_c_or_stdin_reach_spawned_workers(how):
    # A spawned worker cannot import them (there is no script): they travel
    # by value. Before, stdin broke the pool and -c failed every task.
    args = {"-c": ["-c", INTERACTIVE], "stdin": [], "repl": ["-i", "-q"]}[how]
    r = subprocess.run([sys.executable, *args], input=None if how == "-c" else INTERACTIVE,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "[0, 1, 8, 27] 125" in r.stdout, r.stderr


@pytest.mark.skipif(zcstore.pool._cloud() is None, reason="needs python3-cloudpickle")
def test_functions_a_worker_cannot_import_travel_by_value():
    r = run_script("""
        import zcstore
        def top(x):
            return x + 1
        if __name__ == "__main__":
            def inner(x):  # under the guard: not in a spawned worker's __mp_main__
                return x * 2
            with zcstore.Pool(2) as pool:
                print(pool.submit(top, 1).result(), pool.submit(inner, 4).result())
            with zcstore.Pool(2, backend="fork") as pool:
                print(pool.submit(top, 1).result())  # the workers are forked here
                def later(x):  # defined after: not in the workers' __main__
                    return x - 1
                print(pool.submit(later, 10).result(), list(pool.map(later, [3, 4])))
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["2 8", "2", "9 [2, 3]", ""]


def test_a_script_without_its_main_guard_gets_the_guidance_not_nested_pools():
    r = run_script("""
        import os, zcstore
        def pid(_):
            return os.getpid()
        with zcstore.Pool(2) as pool:  # no `if __name__ == "__main__":`
            try:
                pool.submit(pid, 0).result(30)
            except Exception as e:
                print(type(e).__name__, "|", e.__cause__)
        """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("BrokenProcessPool | zcstore.Pool() was called while a spawned "
                               "worker was importing the main module"), r.stdout
    assert "if __name__ == '__main__':" in r.stdout


def total(model):
    return float(model["w"].sum())


def test_another_pool_s_handle_says_what_to_do():
    import numpy as np
    with zcstore.Pool(1) as a, zcstore.Pool(1) as b:
        handle = a.share({"w": np.ones(10)})
        with pytest.raises(zcstore.NotFound, match="shared by another zcstore.Pool") as e:
            b.submit(total, handle).result(TIMEOUT)
        assert "open_fd" not in str(e.value)
    # What it advises: one store for both pools, the object shared with each.
    store = zcstore.Store.create(backing="memfd")
    try:
        with zcstore.Pool(1, store=store) as a, zcstore.Pool(1, store=store) as b:
            ref = store.put({"w": np.ones(10)})
            assert a.submit(total, a.share(ref)).result(TIMEOUT) == 10.0
            assert b.submit(total, b.share(ref)).result(TIMEOUT) == 10.0
    finally:
        store.close()
