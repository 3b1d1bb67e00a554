"""zcstore.Pool with real worker processes: results, shared objects,
exceptions, dead and stuck workers, functions that cannot travel; each
with spawned and with forked workers."""
import concurrent.futures
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import zcstore

TIMEOUT = 60
PROCESSES = ["spawn", "fork"]


def square(x):
    return x * x


def total(model, i):
    return float(model["W"].sum()) + i


def scribble(model):
    model["W"][0] = 1.0


def fail(x):
    raise KeyError(f"no item {x}")


def pid_of(_):
    return os.getpid()


def die_on(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def sleep_for(s):
    time.sleep(s)
    return s


def big_result(n):
    return np.arange(n, dtype=np.float64)


def unpicklable_result(_):
    import threading
    return threading.Lock()  # not even cloudpickle can send a lock


def set_flag():
    global FLAG
    FLAG = "initialized"


def read_flag(_):
    return globals().get("FLAG")


@pytest.fixture(scope="module", params=PROCESSES)
def pool(request):
    with zcstore.Pool(2, backend=request.param, initializer=set_flag) as p:
        yield p


def test_submit_and_map(pool):
    assert pool.submit(square, 7).result(TIMEOUT) == 49
    assert list(pool.map(square, range(100), timeout=TIMEOUT)) == [x * x for x in range(100)]
    assert list(pool.map(square, range(10), chunksize=1)) == [x * x for x in range(10)]
    assert len(set(pool.map(pid_of, range(40), chunksize=1))) >= 1
    fs = [pool.submit(square, i) for i in range(20)]
    done, _ = concurrent.futures.wait(fs, timeout=TIMEOUT)
    assert len(done) == 20
    assert sorted(f.result() for f in concurrent.futures.as_completed(fs)) == \
        sorted(i * i for i in range(20))


def test_map_takes_the_shortest_iterable_and_checks_chunksize(pool):
    assert list(pool.map(pow, [2, 3, 4], [1, 2])) == [2, 9]
    assert list(pool.map(square, [])) == []
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(square, range(3), chunksize=0)


def describe(x, y=None):
    return type(x).__name__, repr(x), getattr(x, "dtype", None), y


FLAT_ARRAYS = [np.arange(300, dtype=np.int64), np.linspace(0, 1, 300, dtype=np.float32),
               np.arange(300) % 2 == 0, np.arange(300, dtype=np.uint8),
               (np.arange(300) + 1j).astype(np.complex64),
               np.arange(300).astype("datetime64[s]"), np.arange(300).astype("timedelta64[ms]"),
               np.array([str(i) * 30 for i in range(300)]),  # 'U59': chunks over 64 KiB
               np.array([b"%d" % i for i in range(300)]),
               np.arange(600, dtype=">i4")[::2]]  # big-endian, strided


@pytest.mark.parametrize("array", FLAT_ARRAYS, ids=lambda a: a.dtype.str)
def test_map_over_a_flat_array_calls_with_its_scalars(pool, array):
    # A chunk of a flat array travels as one array: each call must still get
    # the element that iterating the array gives, as if it were a list.
    expected = [describe(x, y) for x, y in zip(array, range(300))]
    assert list(pool.map(describe, array, range(300), chunksize=64)) == expected
    assert list(pool.map(describe, array, range(300))) == expected  # ramped chunks
    assert list(pool.map(describe, array, range(300), chunksize=300)) == expected


@pytest.mark.parametrize("array", [np.arange(12).reshape(6, 2),
                                   np.zeros(6, dtype=[("a", "i4"), ("b", "f8")]),
                                   np.array([{"a": 1}, [2], "3"], dtype=object)],
                         ids=["2-d", "structured", "object"])
def test_map_over_other_arrays_gives_each_call_its_own_element(pool, array):
    # (Each row or record pickled on its own, as ProcessPoolExecutor does.)
    assert list(pool.map(repr, array, chunksize=2)) == [repr(x) for x in array]


def test_map_over_an_array_is_not_changed_by_later_writes_to_it():
    a = np.arange(50)
    with zcstore.Pool(1, backend="threads") as p:
        release = threading.Event()
        p.submit(release.wait, TIMEOUT)  # the one thread is busy: the map's calls wait
        results = p.map(float, a, chunksize=10)
        a[:] = -1
        release.set()
        assert list(results) == [float(x) for x in range(50)]


def test_a_result_that_times_out_is_still_delivered(pool):
    # result(timeout) waits on the calling thread; on timeout the task goes
    # back to the pool's collector, which completes it for everyone else.
    f = pool.submit(sleep_for, 0.3)
    with pytest.raises(concurrent.futures.TimeoutError):
        f.result(timeout=0.05)
    assert f.result(TIMEOUT) == 0.3
    g = pool.submit(sleep_for, 0.2)
    with pytest.raises(concurrent.futures.TimeoutError):
        g.exception(0.01)
    done, _ = concurrent.futures.wait([g], timeout=TIMEOUT)
    assert g in done and g.result() == 0.2


def test_cancelling_a_future_another_thread_waits_for():
    import threading
    with zcstore.Pool(1) as pool:
        busy = pool.submit(sleep_for, 0.5)
        in_flight = pool.submit(pid_of, 0)  # already in the worker's queue: it will run
        queued = pool.submit(pid_of, 0)
        seen = []
        waiter = threading.Thread(target=lambda: seen.append(
            pytest.raises(concurrent.futures.CancelledError, queued.result, TIMEOUT)))
        waiter.start()
        time.sleep(0.1)
        assert queued.cancel()
        waiter.join(TIMEOUT)
        assert seen and not waiter.is_alive()
        assert busy.result(TIMEOUT) == 0.5 and in_flight.result(TIMEOUT) > 0
        assert pool.submit(square, 4).result(TIMEOUT) == 16
        assert pool.stats()["tasks_done"] == 3  # the cancelled task never ran


def test_a_wait_over_other_futures_too_ends_when_they_do(pool):
    # wait() and as_completed() wait for a pool's tasks on the calling
    # thread; a future of something else in the same wait (here a plain
    # one, and another pool's) must still end that wait when it finishes.
    import threading
    slow = pool.submit(sleep_for, 5)
    plain = concurrent.futures.Future()
    threading.Timer(0.2, plain.set_result, (1,)).start()
    t = time.monotonic()
    done, _ = concurrent.futures.wait([slow, plain], timeout=TIMEOUT,
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {plain} and time.monotonic() - t < 3
    with zcstore.Pool(1, backend="threads") as other:
        quick = other.submit(sleep_for, 0.2)
        t = time.monotonic()
        assert next(concurrent.futures.as_completed([slow, quick], timeout=TIMEOUT)) is quick
        assert time.monotonic() - t < 3
    assert not slow.done() and slow.cancel() is False


def test_a_done_callback_runs_while_a_thread_waits_with_a_timeout(pool):
    # A thread's timed wait holds the task; a callback added meanwhile runs
    # as the task ends, not at a later wake of the collector.
    import threading
    f = pool.submit(sleep_for, 0.5)
    waiting = threading.Thread(target=concurrent.futures.wait, args=([f], 0.3))
    waiting.start()
    time.sleep(0.1)
    ran = threading.Event()
    f.add_done_callback(lambda _: ran.set())
    waiting.join(TIMEOUT)
    assert ran.wait(TIMEOUT) and f.result() == 0.5


def test_threads_waiting_for_the_same_futures_all_see_them(pool):
    import threading
    futures = [pool.submit(square, i) for i in range(200)]
    seen = []

    def take(how):
        if how == "wait":
            done, _ = concurrent.futures.wait(futures, timeout=TIMEOUT)
            seen.append(sorted(f.result() for f in done))
        else:
            seen.append(sorted(f.result() for f in
                               concurrent.futures.as_completed(futures, timeout=TIMEOUT)))

    threads = [threading.Thread(target=take, args=(how,)) for how in ("wait", "as_completed") * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert seen == [sorted(i * i for i in range(200))] * 4


def test_initializer_runs_in_each_worker(pool):
    assert set(pool.map(read_flag, range(8), chunksize=1)) == {"initialized"}


def test_shared_objects_reach_tasks_read_only(pool):
    shared = pool.share({"W": np.ones(1 << 20, np.float32)})
    assert list(pool.map(total, [shared] * 4, range(4))) == [float(1 << 20) + i for i in range(4)]
    with pytest.raises(ValueError, match="read-only"):
        pool.submit(scribble, shared).result(TIMEOUT)
    pool.unshare(shared)
    with pytest.raises(zcstore.NotFound):
        pool.submit(total, shared, 0).result(TIMEOUT)


def test_a_task_exception_comes_back_with_its_traceback(pool):
    f = pool.submit(fail, 3)
    with pytest.raises(KeyError, match="no item 3") as e:
        f.result(TIMEOUT)
    assert "in fail" in str(e.value.__cause__) and "Traceback" in str(e.value.__cause__)
    assert pool.submit(square, 2).result(TIMEOUT) == 4  # the pool goes on


def center(x):
    x -= x.mean()
    return x


def count_arrays(xs):
    return len(xs)


def test_arguments_and_results_arrive_writable_only_shared_objects_are_read_only(pool):
    # As with ProcessPoolExecutor: each side gets its own copy. A large one
    # is a private copy-on-write mapping of the store, a small one a copy.
    small, big = np.arange(3.0), np.arange(1 << 17, dtype=np.float64)
    assert pool.submit(center, small).result(TIMEOUT).tolist() == [-1.0, 0.0, 1.0]
    r = pool.submit(center, big).result(TIMEOUT)
    assert r.flags.writeable and r[0] == -((1 << 17) - 1) / 2
    r += 1
    assert small[0] == 0 and big[0] == 0  # the caller's arrays are untouched
    large = pool.submit(big_result, 4 << 20).result(TIMEOUT)  # 32 MiB, through the store
    assert large.shape == (4 << 20,) and large[-1] == (4 << 20) - 1 and large.flags.writeable
    large[:] = -1.0
    again = pool.submit(big_result, 4 << 20).result(TIMEOUT)
    assert again[0] == 0 and again[-1] == (4 << 20) - 1


def test_a_call_with_5000_small_arrays_fits(pool):
    # Small arrays travel inside the call's pickle, not one store object each.
    assert pool.submit(count_arrays, [np.zeros(3) for _ in range(5000)]).result(TIMEOUT) == 5000


def test_stats_count_calls_and_progress_counts_calls_done(pool):
    before = pool.stats()["tasks_done"]
    assert len(list(pool.map(square, range(100), chunksize=10))) == 100
    assert pool.stats()["tasks_done"] - before == 100
    # The first chunk of each worker is one call: the first result (and the
    # first progress) comes after one call, not a whole chunk.
    seen = []
    assert len(list(pool.map(square, range(1000), progress=lambda d, t: seen.append(d)))) == 1000
    assert seen[0] == 1 and seen[-1] == 1000
    # A map left early (as at Ctrl-C): what was cancelled is not shown as done.
    seen.clear()
    it = pool.map(sleep_for, [0.02] * 200, progress=lambda d, t: seen.append(d))
    next(it)
    it.close()
    time.sleep(0.5)  # what had started ends
    assert 1 <= seen[-1] < 200


def test_the_threads_backend_refuses_task_timeout():
    # A thread running a stuck task cannot be stopped: refused, not ignored.
    with pytest.raises(zcstore.InvalidArgument, match="task_timeout"):
        zcstore.Pool(1, backend="threads", task_timeout=1.0)


def test_an_unpicklable_result_is_an_error_on_its_future(pool):
    # The pickling error itself (as ProcessPoolExecutor), with a note that says why.
    with pytest.raises(TypeError, match="cannot pickle") as info:
        pool.submit(unpicklable_result, 0).result(TIMEOUT)
    assert "cannot be sent back" in " ".join(info.value.__notes__)


def test_a_call_that_cannot_travel_fails_its_future(pool):
    # As ProcessPoolExecutor: submit returns, result() raises.
    future = pool.submit(square, threading_lock())
    with pytest.raises(pickle.PicklingError, match="square or its arguments cannot be sent"):
        future.result(TIMEOUT)


def test_lambdas_and_closures_travel_with_cloudpickle(pool):
    pytest.importorskip("cloudpickle")
    k = 3
    assert pool.submit(lambda x: x * k, 5).result(TIMEOUT) == 15
    assert list(pool.map(lambda x: x + k, range(3))) == [3, 4, 5]


def threading_lock():
    import threading
    return threading.Lock()


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_killed_worker_fails_its_task_only_and_is_replaced(backend):
    with zcstore.Pool(2, backend=backend) as pool:
        fs = [pool.submit(die_on, i, 3) for i in range(8)]
        with pytest.raises(zcstore.WorkerCrashed) as e:
            fs[3].result(TIMEOUT)
        assert "signal 9" in str(e.value) or "SIGKILL" in str(e.value) or "killed" in str(e.value)
        assert [f.result(TIMEOUT) for i, f in enumerate(fs) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
        assert pool.submit(square, 5).result(TIMEOUT) == 25
        assert pool.stats()["workers_replaced"] >= 1


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_pool_started_by_a_thread_that_ends_keeps_its_workers(backend):
    # A worker's parent-death signal follows the thread that started it: a
    # worker started on a thread that ends must not die with it.
    started = {}

    def start():
        started["pool"] = pool = zcstore.Pool(2, backend=backend, progress=False)
        started["first"] = pool.submit(square, 3).result(TIMEOUT)  # a fork pool forks here

    t = threading.Thread(target=start)
    t.start()
    t.join()
    with started["pool"] as pool:
        assert started["first"] == 9
        time.sleep(0.3)  # a signal's time to land
        assert list(pool.map(square, range(50), chunksize=1)) == [i * i for i in range(50)]
        assert pool.stats()["workers_replaced"] == 0


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_crashed_task_is_retried_when_asked(backend):
    with zcstore.Pool(1, backend=backend, max_retries=1) as pool:
        assert pool.submit(die_on, 1, 2).result(TIMEOUT) == 1
        with pytest.raises(zcstore.WorkerCrashed):
            pool.submit(die_on, 2, 2).result(TIMEOUT)


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_stuck_task_times_out_and_its_worker_is_replaced(backend):
    with zcstore.Pool(1, backend=backend, task_timeout=0.5) as pool:
        with pytest.raises(zcstore.Timeout):
            pool.submit(sleep_for, 30).result(TIMEOUT)
        assert pool.submit(sleep_for, 0).result(TIMEOUT) == 0


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_pool_works_in_a_store_it_is_given(backend):
    with zcstore.Store.create(backing="memfd", capacity=64 << 20) as store:
        w = store.empty((1 << 20,), np.float32)
        w[:] = 1
        used = store.stats().used
        with zcstore.Pool(2, backend=backend, store=store) as pool:
            shared = pool.share({"W": w})  # built in the pool's store: adopted, not copied
            assert store.stats().used - used < (64 << 10)
            assert pool.submit(total, shared, 1).result(TIMEOUT) == float(1 << 20) + 1
        assert not store.closed and not store.names()  # the pool's start-up data is gone
        assert store.get(shared.ref)["W"][0] == 1  # the shared object stays the caller's
        with zcstore.Pool(1, backend=backend, store=store) as pool:  # shared again, by its ref
            again = pool.share(shared.ref)
            assert pool.submit(total, again, 2).result(TIMEOUT) == float(1 << 20) + 2
            with zcstore.Store.create(backing="memfd", capacity=1 << 20) as other:
                with pytest.raises(zcstore.NotFound, match="not an object of this pool"):
                    pool.share(other.put(1))
    with pytest.raises(zcstore.InvalidArgument):
        zcstore.Pool(1, store="not a store")


def test_threads_backend_runs_the_same_tasks():
    with zcstore.Pool(2, backend="threads") as pool:
        shared = pool.share({"W": np.ones(10, np.float32)})
        assert pool.submit(total, shared, 1).result(TIMEOUT) == 11.0
        assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_bad_arguments_and_shutdown():
    with pytest.raises(zcstore.InvalidArgument):
        zcstore.Pool(0)
    with pytest.raises(zcstore.InvalidArgument):
        zcstore.Pool(1, backend="gpu")
    pool = zcstore.Pool(1)
    f = pool.submit(sleep_for, 0.2)
    pool.shutdown(wait=True)
    assert f.result() == 0.2
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 1)
    pool = zcstore.Pool(1)
    fs = [pool.submit(sleep_for, 0.2) for _ in range(5)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in fs)


# ------------------------------------------------------------ the rest of the API

def chatty(n):
    import logging
    for i in range(n):
        print(f"line {i}")
    logging.getLogger("zcstore.test").warning("warned %d", n)
    return n


def flood(n):
    import sys
    for i in range(n):
        sys.stdout.write(f"flood {i}\n")
    return n


def add_to_context(param, context):
    context["seen"] = context.get("seen", 0) + param
    return param * 10


@pytest.mark.parametrize("backend", PROCESSES)
def test_output_and_logging_reach_the_parent(caplog, backend):
    lines = []
    with zcstore.Pool(1, backend=backend, log=lambda w, line: lines.append((w, line))) as pool:
        with caplog.at_level("WARNING"):
            assert pool.submit(chatty, 50).result(TIMEOUT) == 50
            pool.shutdown()  # drains what the worker wrote
    assert [line for _, line in lines] == [f"line {i}" for i in range(50)]  # in order
    assert {w for w, _ in lines} == {0}
    (record,) = [r for r in caplog.records if r.name == "zcstore.test"]
    assert record.levelname == "WARNING" and record.getMessage() == "[worker 0] warned 50"
    assert record.zcstore_worker == 0


@pytest.mark.parametrize("backend", PROCESSES)
def test_a_flooding_worker_waits_for_its_output_and_loses_no_line(backend):
    # The consumer falls behind (half a second at the first line): the
    # worker's writes wait for room, and every line arrives, in order. (It
    # lost 10,000 of them, with stats() saying 0.)
    seen = []

    def slow_sink(w, line):
        if not seen:
            time.sleep(0.5)
        seen.append(line)

    with zcstore.Pool(1, backend=backend, log=slow_sink) as pool:
        assert pool.submit(flood, 200_000).result(TIMEOUT) == 200_000
        assert list(pool.map(flood, [15_000, 15_000])) == [15_000, 15_000]
        pool.shutdown()
        assert pool.stats()["log_lines_dropped"] == 0 and pool.log_lines_dropped == 0
    assert len(seen) == 230_000
    assert seen[:200_000:9973] == [f"flood {i}" for i in range(0, 200_000, 9973)]


def test_broadcast_map_unordered_and_progress(pool):
    pids = pool.broadcast(pid_of, None)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert sorted(pool.map_unordered(square, range(50))) == sorted(x * x for x in range(50))
    seen = []
    assert list(pool.map(square, range(30), progress=lambda d, t: seen.append((d, t))))[-1] == 841
    assert seen[-1] == (30, 30) and all(t == 30 for _, t in seen)
    with pytest.raises(KeyError):
        pool.broadcast(fail, 1)


def test_map_with_context_applies_the_changes_in_order(pool):
    contexts = [{"seen": 1}, {}, {"other": "x"}]
    assert pool.map_with_context(add_to_context, [1, 2, 3], contexts) == [10, 20, 30]
    assert contexts == [{"seen": 2}, {"seen": 2}, {"other": "x", "seen": 3}]


class Fit:
    def __init__(self, model):
        self.model, self.n_evals, self.best, self.scratch = model, 0, None, "gone after a task"


def evaluate(x, fit):
    fit.n_evals += 1
    value = float(fit.model["W"][:4].sum()) * x
    if fit.best is None or value < fit.best:
        fit.best = value
    vars(fit).pop("scratch", None)
    fit.scratch_seen = fit.n_evals
    return value


def fail_on_3(x, context):
    context["ran"] = context.get("ran", []) + [x]
    if x == 3:
        raise ValueError("bad x 3")
    return x


def test_map_with_context_loses_no_update_and_keeps_handles(pool):
    model = pool.share({"W": np.ones(1 << 16, np.float32)})
    one, other = Fit(model), Fit(model)
    xs = list(range(20)) + [-1, -2]
    contexts = [one] * 20 + [other] * 2
    assert pool.map_with_context(evaluate, xs, contexts) == [4.0 * x for x in xs]
    # Twenty tasks on one context: each saw the one before (it was 1, not 20).
    assert one.n_evals == 20 and one.best == 0.0 and one.scratch_seen == 20
    assert other.n_evals == 2 and other.best == -8.0
    assert not hasattr(one, "scratch")  # deleted in the worker, deleted here
    # The shared model came back as its handle, not as a copy of the object.
    assert isinstance(one.model, zcstore.Shared) and one.model.ref == model.ref
    with pytest.raises(ValueError, match="2 params and 3 contexts"):
        pool.map_with_context(evaluate, [1, 2], [one, one, other])
    with pytest.raises(TypeError, match="dict or an object"):
        pool.map_with_context(evaluate, [1], [5])


def test_map_with_context_applies_what_returned_when_a_task_raises(pool):
    a, b = {}, {}
    with pytest.raises(ValueError, match="bad x 3"):
        pool.map_with_context(fail_on_3, [1, 3, 5, 2], [a, a, a, b])
    # a: the task of 1 returned, 3 raised (its change is not applied), 5 never ran.
    assert a == {"ran": [1]} and b == {"ran": [2]}


# ------------------------------------------------------------ killing the parent

PARENT = r"""
import os, sys, time, zcstore
def pid(_): return os.getpid()
def nested(path, backend):
    inner = zcstore.Pool(1, backend=backend)
    with open(path, "w") as f:
        f.write(str(inner.broadcast(pid, None)[0]))
    time.sleep(600)
if __name__ == "__main__":
    out, shape, backend = sys.argv[1], sys.argv[2], sys.argv[3]
    pool = zcstore.Pool(2, backend=backend)
    pids = pool.broadcast(pid, None)
    if shape == "nested":
        pool.submit(nested, out + ".nested", backend)
    with open(out + ".tmp", "w") as f:
        f.write(" ".join(map(str, pids)))
    os.rename(out + ".tmp", out)
    time.sleep(600)
"""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_file(path, deadline):
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                return [int(x) for x in f.read().split()]
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("backend", PROCESSES)
@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_killing_the_parent_takes_every_worker_down(tmp_path, shape, backend):
    # A nested pool is a task starting a pool of its own: the processes-
    # within-processes case daemonic multiprocessing forbids.
    script, out = tmp_path / "parent.py", str(tmp_path / "pids")
    script.write_text(PARENT)
    p = subprocess.Popen([sys.executable, str(script), out, shape, backend])
    try:
        deadline = time.monotonic() + TIMEOUT
        pids = wait_for_file(out, deadline)
        if shape == "nested":
            pids += wait_for_file(out + ".nested", deadline)
        assert len(pids) == (3 if shape == "nested" else 2), pids
        p.kill()
        p.wait(TIMEOUT)
        killed = time.monotonic()
        while any(alive(x) for x in pids) and time.monotonic() - killed < 5:
            time.sleep(0.02)
        gone_after = time.monotonic() - killed
        assert not any(alive(x) for x in pids)
        assert gone_after < 1.0, gone_after
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(TIMEOUT)


# ------------------------------------------------------------ the fork backend

INHERITED = None


def read_inherited(_):
    return INHERITED


def test_forked_workers_inherit_the_parent_and_a_replacement_is_initialized_again():
    global INHERITED
    INHERITED = "before the pool"
    try:
        with zcstore.Pool(1, backend="fork", initializer=set_flag) as pool:
            assert pool.stats()["workers_ready"] == 0  # forked at the first task, not before
            INHERITED = "at the first task"
            assert pool.submit(read_inherited, 0).result(TIMEOUT) == "at the first task"
            INHERITED = "changed after the fork"
            assert pool.submit(read_inherited, 0).result(TIMEOUT) == "at the first task"
            assert pool.submit(read_flag, 0).result(TIMEOUT) == "initialized"
            with pytest.raises(zcstore.WorkerCrashed):
                pool.submit(die_on, 3, 3).result(TIMEOUT)
            # The replacement is forked now, from the parent as it is now.
            assert pool.submit(read_inherited, 0).result(TIMEOUT) == "changed after the fork"
            assert pool.submit(read_flag, 0).result(TIMEOUT) == "initialized"
        assert globals().get("FLAG") is None  # the initializer ran in the workers only
    finally:
        INHERITED = None


def hold_and_check(model, flag, seconds):
    w = model["W"]
    before = float(w.sum())
    open(flag, "w").close()  # it has the object: the parent may unshare it now
    time.sleep(seconds)
    return before, float(w.sum()), w.flags.writeable


def test_a_fork_pool_s_workers_inherit_what_it_shared_and_pin_it_themselves(tmp_path):
    # Shared before the first task, the object is attached in the parent and
    # inherited by the workers forked then. The parent's pin is not the
    # worker's: unshared while a task holds it, its space must not be reused
    # under the task (the worker pinned it when the task got it).
    n = 1 << 20
    with zcstore.Pool(1, backend="fork") as pool:
        shared = pool.share({"W": np.ones(n, np.float32)}, inherit=False)  # through the store
        flag = tmp_path / "attached"
        f = pool.submit(hold_and_check, shared, str(flag), 1.0)
        deadline = time.monotonic() + TIMEOUT
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        pool.unshare(shared)
        for _ in range(4):  # puts that would take the freed space
            pool.share(np.full(n, 7, np.float32))
        assert f.result(TIMEOUT) == (n, n, False)
        with pytest.raises(zcstore.NotFound):
            pool.submit(total, shared, 0).result(TIMEOUT)


def scribble_and_sum(model):
    model["W"][0] = 5.0  # the worker's own copy-on-write page
    return float(model["W"].sum())


def test_a_fork_pool_s_workers_inherit_a_heap_object_with_no_copy():
    # As ProcessPoolExecutor's fork workers inherit globals: nothing goes
    # into the store (before, the whole object was copied there first).
    w = np.ones(4 << 20, np.float32)  # 16 MiB
    with zcstore.Pool(2, backend="fork") as pool:
        shared = pool.share({"W": w})
        assert pool._e.store.stats().used < (1 << 20)  # a name, not 16 MiB
        assert pool.submit(total, shared, 0).result(TIMEOUT) == float(w.size)
        # A worker's write stays in that worker: neither the parent nor the
        # store sees it.
        assert pool.submit(scribble_and_sum, shared).result(TIMEOUT) == float(w.size) + 4
        assert w[0] == 1.0
        late = pool.share({"W": w})  # the workers exist: through the store
        assert pool._e.store.stats().used > (16 << 20)
        assert pool.submit(total, late, 1).result(TIMEOUT) == float(w.size) + 1
        pool.unshare(shared)
        with pytest.raises(zcstore.NotFound):
            pool.submit(total, shared, 0).result(TIMEOUT)


FORK_OUTPUT = r"""
import logging, sys, zcstore
def work(x):
    logging.getLogger("child").warning("record %d", x)
    return x
if __name__ == "__main__":
    logging.basicConfig(stream=sys.stdout, format="parent-handler %(message)s")
    sys.stdout.write("buffered before the pool\n")  # a pipe: block-buffered, not yet written
    with zcstore.Pool(2, backend="fork") as pool:
        assert list(pool.map(work, range(4), chunksize=1)) == [0, 1, 2, 3]
"""


POOL_LETS_GO = """\
import gc, sys, weakref
import numpy as np
import zcstore
def total(model):
    return float(model["factors"].sum())
def store_mapped():  # the store's shared mappings (a memfd's, or a file's in /dev/shm)
    return sum("zcstore" in line and line.split()[1].endswith("s") for line in open("/proc/self/maps"))
if __name__ == "__main__":
    backend = sys.argv[1]
    model = {"factors": np.ones((1 << 20,), np.float32)}
    held = weakref.ref(model["factors"])
    with zcstore.Pool(2, backend=backend) as pool:
        shared = pool.share(model)
        assert pool.submit(total, shared).result() == 1 << 20
    del model, shared, pool
    gc.collect()
    print(held() is None, store_mapped())
"""


@pytest.mark.parametrize("backend", ["fork", "threads", "spawn"])
def test_a_closed_pool_holds_neither_the_callers_objects_nor_its_store(tmp_path, backend):
    # A fork pool kept a copy of __main__'s namespace as it was when its
    # workers were forked (the model, the pool itself) for as long as the
    # process lived; a threads pool's tasks, run here, left what they got
    # from its store cached here, its pages mapped.
    script = tmp_path / "lets_go.py"
    script.write_text(POOL_LETS_GO)
    r = subprocess.run([sys.executable, str(script), backend], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "0"], r.stdout


def test_forked_workers_neither_repeat_the_parents_buffered_output_nor_its_handlers(tmp_path):
    script = tmp_path / "fork_output.py"
    script.write_text(FORK_OUTPUT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=TIMEOUT, env=dict(os.environ, PYTHONUNBUFFERED=""))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("buffered before the pool") == 1, r.stdout
    assert "buffered before the pool" not in r.stderr, r.stderr  # nor as a worker's line
    # Each record is handled once, by the parent's handler, tagged with its worker.
    records = [re.fullmatch(r"parent-handler \[worker [01]\] record (\d)", line)
               for line in r.stdout.splitlines() if line.startswith("parent-handler")]
    assert all(records) and sorted(int(m[1]) for m in records) == [0, 1, 2, 3], r.stdout
    assert "parent-handler" not in r.stderr, r.stderr  # the workers' inherited handler is gone


NESTED_PROCESSES = r"""
import ctypes, os, signal, sys, time
import multiprocessing, zcstore

def inner(n):
    if {loky!r}:
        from joblib import Parallel, delayed
        return Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(n))
    p = multiprocessing.get_context("fork").Process(target=time.sleep, args=(300,), daemon=True)
    p.start()
    return [p.pid]

def children():
    # This process's live children (not zombies): orphans come here.
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{{d}}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.append(int(d))
    return out

def reap():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return

if __name__ == "__main__":
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    with zcstore.Pool(2, backend={backend!r}, progress=False) as pool:
        print("result", pool.submit(inner, 3).result(60), flush=True)
    deadline = time.monotonic() + 10
    while children() and time.monotonic() < deadline:
        reap()
        time.sleep(0.1)
    left = children()
    print("left", len(left), flush=True)
    for pid in left:  # leave nothing behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    reap()
"""


@pytest.mark.parametrize("backend", PROCESSES)
@pytest.mark.parametrize("loky", [True, False], ids=["loky", "daemon process"])
def test_processes_a_task_started_end_with_its_worker(tmp_path, backend, loky):
    # Two levels of processes: a task's own executor (loky's reusable one,
    # which keeps its workers) or daemonic multiprocessing child ends when
    # the worker does, as in ProcessPoolExecutor's workers. A forked worker
    # used to _exit without stopping them: they were orphaned, alive.
    if loky:
        pytest.importorskip("joblib")
    script = tmp_path / "nested.py"
    script.write_text(NESTED_PROCESSES.format(backend=backend, loky=loky))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert "result [" in r.stdout and "left 0\n" in r.stdout, r.stdout + r.stderr


def grow(model, x):
    model["seen"].append(x)
    model["extra"] = x
    return list(model["seen"]), "extra" in model


def test_a_task_s_changes_to_a_shared_object_stay_in_its_worker_unless_fresh():
    # The documented rule: shared objects are cached per worker, so their
    # Python-level changes reach that worker's later tasks; fresh=True
    # gives each task its own.
    with zcstore.Pool(1) as pool:
        cached = pool.share({"seen": [], "w": np.zeros(4)})
        fresh = pool.share({"seen": [], "w": np.zeros(4)}, fresh=True)
        assert [pool.submit(grow, cached, x).result(TIMEOUT) for x in (1, 2)] == [
            ([1], True), ([1, 2], True)]
        assert [pool.submit(grow, fresh, x).result(TIMEOUT) for x in (1, 2)] == [
            ([1], True), ([2], True)]
        pool.unshare(fresh)
        with pytest.raises(zcstore.NotFound):
            pool.submit(grow, fresh, 3).result(TIMEOUT)


# ------------------------------------------------------------ asyncio

@pytest.mark.parametrize("backend", PROCESSES + ["threads"])
def test_the_pool_under_a_running_event_loop(backend):
    import asyncio

    async def main():
        with zcstore.Pool(2, backend=backend) as pool:
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(pool, square, 7) == 49
            assert await asyncio.wrap_future(pool.submit(square, 3)) == 9
            with pytest.raises(KeyError, match="no item 4"):
                await asyncio.wrap_future(pool.submit(fail, 4))
            ticks = 0

            async def ticker():  # the loop runs other tasks meanwhile
                nonlocal ticks
                while True:
                    await asyncio.sleep(0)
                    ticks += 1
            t = asyncio.create_task(ticker())
            got = [r async for r in pool.amap(square, range(2000))]
            t.cancel()
            assert got == [x * x for x in range(2000)] and ticks > 10
            # Leaving early cancels what has not started; nothing hangs.
            async for r in pool.amap(sleep_for, [0.01] * 200):
                break
            assert [r async for r in pool.amap(square, [])] == []
    asyncio.run(main())
