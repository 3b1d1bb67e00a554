"""The shared-model scenario through every way Python users run it, in one run.

For each model size and worker count, each system starts its workers with
the model, runs N tasks (each scores one user against 100 random items of
the model), and reports:
  first_s   from starting the pool to the answer of one task (what a user
            waits before anything comes back), in runs of their own, not
            sampled: the median of 5 starts where a start takes under 2 s
            (joblib, whose first result is its last: the median of its
            timed runs)
  copies    copies of the model in memory: the peak PSS of the whole
            process tree, measured from outside (a sampler thread reading
            /proc), above the same tree's peak without the model (a
            one-item model, its run given as many more tasks as make it
            last as long), over the model size; each peak the median of 3
            runs (1 for runs of 10 s or more)
  tasks/s   throughput of a map over the scoring tasks (chunks of 256),
            the map after the first result of a fresh start: the median
            of 3 such runs (1 for runs of 10 s or more)
and, once, trivial tasks (x -> x): throughput with each system's best
chunksize and one empty task's round trip.

Systems: zcstore (spawn, fork, threads), each with the model built in a
memfd store and the pool started over that store (Pool(store=...)), so
share() adopts it; concurrent.futures.ProcessPoolExecutor with the model
pickled to an initializer (spawn) and inherited (fork); the hand-made
multiprocessing.shared_memory + pickle 5 way; joblib (loky). Every system
builds its model the same way (the same generator, the same values) before
its clock starts, each in the memory it is used from.

A system is skipped at a model size where its expected peak memory (its
copies of the model, from the table's figures) would not fit in this
machine's available memory; its row says so.

Run:  make compare   (writes bench/results/compare.md and compare_*.png)
      python3 bench/python/compare.py --sizes 64,256 --workers 2 --tasks 2000
      ... --repeat 3   each figure the median of 3 measurements, systems alternated
"""
import argparse
import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import statistics
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing import shared_memory

import numpy as np

import zcstore

DIMS, USERS = 64, 1000
MIB = 1 << 20


def make_model(mib, store=None):
    """The model: on the heap, or (store) built in place in a zcstore store."""
    items = max(1, (mib * MIB) // (DIMS * 4))  # 0 MiB: the one-item baseline model
    rng = np.random.default_rng(1)

    def array(shape):
        if store is None:
            return rng.random(shape, np.float32)
        a = store.empty(shape, np.float32)
        rng.random(shape, np.float32, out=a)
        return a
    return {"items": items, "item_factors": array((items, DIMS)),
            "user_factors": array((USERS, DIMS))}


def best_item(model, user, seed):
    items = np.random.default_rng(seed).integers(0, model["items"], 100)
    return float((model["item_factors"][items] @ model["user_factors"][user]).max())


def identity(x):
    return x


# --- the model in each system's workers

_MODEL = None


def set_model(model):       # ProcessPoolExecutor's initializer: the model pickled in
    global _MODEL
    _MODEL = model


def attach_shm(name, meta, offsets):  # the hand-made way: attach the segment, unpickle views
    global _MODEL, _SEG
    _SEG = shared_memory.SharedMemory(name=name)
    _MODEL = pickle.loads(meta, buffers=[_SEG.buf[o:o + n] for o, n in offsets])


def score_global(user, seed):
    return best_item(_MODEL, user, seed)


# --- memory, from outside

def tree_pids(root):
    pids, todo = [], [root]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pids


def pss_of(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f
                              if line.startswith("Pss:"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass
    return total


def live(pids):
    """Those of `pids` that still have their memory (not gone, not zombies)."""
    out = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in "ZXx":
                    out.add(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def tree_pss(root):
    """The PSS of a process tree, never overstated; 0 when it cannot be read.

    The kernel reads one process at a time, so a page that gains a mapper
    between the readings of two processes is counted whole in the first and
    in part in the next: read parent first while workers map the model, a
    tree can seem a tenth larger than it is. Read children first, the error
    goes the other way: the smaller of the two orders is kept (private
    memory, such as unpickled copies, counts the same in both). A page that
    loses a mapper (a worker exiting) is overstated in either order: a
    reading during which a process of the tree started or ended (its
    memory gone: exited, a zombie) is dropped."""
    pids = tree_pids(root)
    before = live(pids)
    reading = min(pss_of(pids), pss_of(pids[::-1]))
    if live(tree_pids(root)) != before:
        return 0
    return reading


class Sampler:
    """The highest PSS of this process tree while running, read as often as
    it can be (every 10 ms, or as soon as the last reading is done: the
    kernel walks every page table to sum a process's PSS, tens of ms for a
    few GiB). It slows the run it samples, which is why the times come from
    a run of their own."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss(os.getpid()))
            self._stop.wait(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, tree_pss(os.getpid()))


# --- one system: start with the model, run the tasks
#
# Each returns (first, seconds): first is the time from starting its pool to
# the answer of one scoring task (what a user waits before anything comes
# back), seconds the time of the map over every task after it, with the
# same chunksize for all.

CHUNK = 256
TIMED_RUNS = 3
FIRST_RUNS = 5
SAMPLED_RUNS = 3


TRACE = False  # --trace


def run_tasks(t0, submit, map_all, args):
    submit(*[a[0] for a in args]).result()
    first = time.perf_counter() - t0
    t = time.perf_counter()
    n = sum(1 for _ in map_all(*args))
    assert n == len(args[0])
    return first, time.perf_counter() - t


class InStore:
    """A zcstore system's model: built in a memfd store of its own."""

    def __init__(self, mib):
        self.store = zcstore.Store.create(backing="memfd",
                                          capacity=mib * MIB + USERS * DIMS * 4 + 256 * MIB)
        self.model = make_model(mib, self.store)
        self.ref = None  # once shared: the object, shared again by its ref


def system_zcstore(backend):
    def run(built, workers, users, seeds):
        t0 = time.perf_counter()
        with zcstore.Pool(workers, backend=backend, progress=False, store=built.store) as pool:
            # Built in the pool's store: adopted, not copied (then shared by its ref).
            shared = pool.share(built.ref or built.model)
            built.ref = shared.ref
            return run_tasks(t0, lambda *a: pool.submit(best_item, *a),
                             lambda *a: pool.map(best_item, *a, chunksize=CHUNK),
                             ([shared] * len(users), users, seeds))
    run.in_store = True
    return run


def system_zcstore_heap(backend, move=False):
    """The model on the heap, as users have it, shared as it is: a fork
    pool's workers inherit it (copy-on-write, nothing copied); a spawn
    pool copies it into its store once (`move`: freeing the heap pages as
    it goes, so the peak stays near one copy; the model is then gone, so
    each run builds its own before its clock starts, and nothing else holds
    it)."""
    def run(model, workers, users, seeds):
        if move:  # given its size only: the model is built here, its one reference
            model = make_model(model.mib)
        t0 = time.perf_counter()
        with zcstore.Pool(workers, backend=backend, progress=False,
                          store_capacity=model_bytes(model) + 256 * MIB) as pool:
            t_pool = time.perf_counter()
            shared = pool.share(model, move=move)
            if TRACE:  # where a start's time goes
                print(f"trace: zcstore {backend} (heap), {workers} workers: pool "
                      f"{t_pool - t0:.3f} s, share {time.perf_counter() - t_pool:.3f} s",
                      file=sys.stderr, flush=True)
            return run_tasks(t0, lambda *a: pool.submit(best_item, *a),
                             lambda *a: pool.map(best_item, *a, chunksize=CHUNK),
                             ([shared] * len(users), users, seeds))
    run.builds_model = move
    return run


class ModelSize:
    """What a system that builds its own model is given (see builds_model):
    nothing else may hold the model that `share(move=True)` empties."""

    def __init__(self, mib):
        self.mib = mib


def system_ppe_pickled(model, workers, users, seeds):
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=set_model,
                                                initargs=(model,)) as ex:
        return run_tasks(t0, lambda *a: ex.submit(score_global, *a),
                         lambda *a: ex.map(score_global, *a, chunksize=CHUNK), (users, seeds))


def system_ppe_fork(model, workers, users, seeds):
    set_model(model)  # inherited copy-on-write
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            return run_tasks(t0, lambda *a: ex.submit(score_global, *a),
                             lambda *a: ex.map(score_global, *a, chunksize=CHUNK), (users, seeds))
    finally:
        set_model(None)


def system_shared_memory(model, workers, users, seeds):
    t0 = time.perf_counter()
    buffers = []
    meta = pickle.dumps(model, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    seg = shared_memory.SharedMemory(create=True, size=sum(r.nbytes for r in raws))
    offsets, off = [], 0
    for r in raws:
        seg.buf[off:off + r.nbytes] = r
        offsets.append((off, r.nbytes))
        off += r.nbytes
    del raws, buffers
    try:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=attach_shm,
                initargs=(seg.name, meta, offsets)) as ex:
            return run_tasks(t0, lambda *a: ex.submit(score_global, *a),
                             lambda *a: ex.map(score_global, *a, chunksize=CHUNK), (users, seeds))
    finally:
        seg.close()
        seg.unlink()


def system_joblib(model, workers, users, seeds):
    import joblib
    t0 = time.perf_counter()
    from joblib.externals.loky import get_reusable_executor
    try:
        with joblib.Parallel(n_jobs=workers, batch_size=CHUNK) as par:
            # joblib memory-maps large numpy arguments for its workers by itself.
            out = par(joblib.delayed(best_item)(model, u, s) for u, s in zip(users, seeds))
    finally:
        get_reusable_executor().shutdown(wait=True)  # loky keeps its workers otherwise
    # joblib returns the list at the end: its first result is its last.
    assert len(out) == len(users)
    wall = time.perf_counter() - t0
    return wall, wall


def system_joblib_zcstore(start_method):
    def run(model, workers, users, seeds):
        return joblib_zcstore(start_method, model, workers, users, seeds)
    return run


def joblib_zcstore(start_method, model, workers, users, seeds):
    """joblib's Parallel as its users write it, on the "zcstore" backend:
    the model passed to every call; its arrays put in the store once
    (spawn), or inherited by workers forked at the first batch (fork)."""
    import joblib
    import zcstore.joblib
    t0 = time.perf_counter()
    try:
        with joblib.parallel_backend("zcstore", n_jobs=workers, start_method=start_method):
            out = joblib.Parallel(batch_size=CHUNK)(
                joblib.delayed(best_item)(model, u, s) for u, s in zip(users, seeds))
    finally:
        for pool in list(zcstore.joblib._pools.values()):  # as loky's, shut down each run
            pool.shutdown()
        zcstore.joblib._pools.clear()
    assert len(out) == len(users)
    wall = time.perf_counter() - t0
    return wall, wall


SYSTEMS = {
    "zcstore spawn (heap)": system_zcstore_heap("spawn"),
    "zcstore spawn move (heap)": system_zcstore_heap("spawn", move=True),
    "zcstore fork (heap)": system_zcstore_heap("fork"),
    "zcstore spawn": system_zcstore("spawn"),
    "zcstore fork": system_zcstore("fork"),
    "zcstore threads": system_zcstore("threads"),
    "ProcessPoolExecutor spawn (pickled)": system_ppe_pickled,
    "ProcessPoolExecutor fork": system_ppe_fork,
    "shared_memory + pickle 5": system_shared_memory,
    "joblib (loky)": system_joblib,
    "joblib (zcstore backend)": system_joblib_zcstore("fork"),
    "joblib (zcstore backend spawn)": system_joblib_zcstore("spawn"),
}


# Copies of the model each system holds at its peak, for the memory check
# (from the table's figures, rounded up): the pickling executor one per
# worker plus the parent's and the pickle's; the hand-made way the caller's
# and the segment's; joblib the caller's and its memory map's, and more.
def expected_copies(name, workers):
    if name.startswith("zcstore") or name == "ProcessPoolExecutor fork":
        return 1.2
    if name == "ProcessPoolExecutor spawn (pickled)":
        return workers + 3
    return 3.0


def available_bytes():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def model_bytes(model):
    return model["item_factors"].nbytes + model["user_factors"].nbytes


def measure(name, mib, workers, tasks):
    """Runs one system in a fresh child process, so each starts from the
    same memory and leaves nothing behind for the next."""
    need = expected_copies(name, workers) * mib * MIB + (2 << 30)
    if need > available_bytes():
        return {"system": name, "model_mib": mib, "workers": workers,
                "error": f"skipped: needs about {need / 2**30:.0f} GiB, "
                         f"{available_bytes() / 2**30:.0f} GiB available"}
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_measure_child, args=(name, mib, workers, tasks, q))
    p.start()
    r = q.get(timeout=1800)
    p.join(60)
    return r


def _measure_child(name, mib, workers, tasks, q):
    try:
        system = SYSTEMS[name]
        in_store = getattr(system, "in_store", False)
        builds = getattr(system, "builds_model", False)

        def tasks_of(n):
            return np.arange(n) % USERS, np.arange(n) * 7919 + 1

        def peak_pss(model, n):
            """The median over SAMPLED_RUNS sampled runs of n tasks (one run
            when it takes 10 s or more) of the tree's peak PSS: a starting
            interpreter's passing memory moves one run's peak by tens of
            MiB."""
            runs = []
            while len(runs) < SAMPLED_RUNS:
                t = time.perf_counter()
                with Sampler() as s:
                    system(model, workers, *tasks_of(n))
                runs.append(s.peak)
                if time.perf_counter() - t >= 10:
                    break
            return statistics.median(runs)

        def model_of(mib):
            if builds:
                return ModelSize(mib)
            return InStore(mib) if in_store else make_model(mib)
        model = model_of(mib)
        mb = (model_bytes(make_model(mib)) if builds else
              model_bytes(model.model if in_store else model))
        # Timed without the sampler (its readings hold each process's mmap
        # lock, which a fork waits for), then sampled. Each timed run
        # starts the system afresh and maps every task; the throughput is
        # the median of TIMED_RUNS of them (one run of a fraction of a
        # second moves by a fifth from run to run on this shared machine;
        # one run when a run takes 10 s or more). The first result is the
        # median of FIRST_RUNS starts (those runs', then runs of one task),
        # when a start is quick. joblib's first result is its last: its
        # timed runs' only.
        firsts, rates, walls = [], [], []
        while len(rates) < TIMED_RUNS and not (walls and walls[-1] >= 10):
            t = time.perf_counter()
            first, seconds = system(model, workers, *tasks_of(tasks))
            walls.append(time.perf_counter() - t)
            firsts.append(first)
            rates.append(tasks / seconds)
        while (len(firsts) < FIRST_RUNS and statistics.median(firsts) < 2.0
               and not name.startswith("joblib")):
            firsts.append(system(model, workers, *tasks_of(1))[0])
        first = statistics.median(firsts)
        wall = statistics.median(walls)
        if TRACE:
            print(f"trace: {name}, {mib} MiB, {workers} workers: first results (ms) "
                  + " ".join(f"{f * 1e3:.1f}" for f in firsts) + "; tasks/s "
                  + " ".join(f"{r:.0f}" for r in rates), file=sys.stderr, flush=True)
        peak = peak_pss(model, tasks)

        # The tree's PSS with the system's workers but no model: the same
        # system on a one-item model, once the model is gone, with as many
        # more tasks as make its run last as long as the model's unsampled
        # run (the sampler slows a run on a large model threefold; a longer
        # run reads a higher peak: more readings, more chances of a page
        # caught gaining a mapper, and more tasks held). A pool that
        # starts its workers as it goes (zcstore's do, one at a time) has
        # then started them all, and each has run a task (the first imports
        # this script: 2.5-3.5 MiB a worker), in both runs; on 5000 tasks
        # alone, the one-item run was over before the last workers took a
        # task, and a spawn pool at 256 MiB, 8 workers seemed to hold
        # 0.05-0.11 copies more than it does.
        # (A system that builds its own model holds none here.)
        held = None if builds else weakref.ref(model.store if in_store else model["item_factors"])
        del model
        gc.collect()
        if held is not None and held() is not None:
            raise RuntimeError("the model is still held: its baseline would be understated")
        t = time.perf_counter()
        system(model_of(0), workers, *tasks_of(tasks))
        n = min(16 * tasks, max(tasks, round(tasks * wall / (time.perf_counter() - t))))
        base = peak_pss(model_of(0), n)
        q.put({"system": name, "model_mib": mib, "workers": workers, "tasks": tasks,
               "first_s": first, "tasks_per_s": statistics.median(rates),
               "copies": (peak - base) / mb})
    except Exception as e:  # reported in the table, not fatal to the run
        q.put({"system": name, "model_mib": mib, "workers": workers, "error": repr(e)})


# --- trivial tasks

def trivial(workers, n):
    """Throughput of x -> x at the best chunksize, and one round trip."""
    out = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        list(ex.map(identity, range(100)))
        best = 0
        for cs in (1, 16, 256, 1024, 4096):
            t = time.perf_counter()
            list(ex.map(identity, range(n), chunksize=cs))
            best = max(best, n / (time.perf_counter() - t))
        out["ProcessPoolExecutor"] = (best, round_trip(ex))
    with zcstore.Pool(workers, progress=False) as pool:
        list(pool.map(identity, range(100)))
        best = 0
        for cs in (None, 256, 1024, 4096):
            t = time.perf_counter()
            list(pool.map(identity, range(n), chunksize=cs))
            best = max(best, n / (time.perf_counter() - t))
        out["zcstore"] = (best, round_trip(pool))
    return out


def round_trip(ex, reps=300):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        ex.submit(identity, 1).result()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --- small windows: an optimizer's loop

def sleep_s(s):
    time.sleep(s)
    return s


def window_rate(ex, window, n, how):
    """Tasks/s of a loop that keeps `window` tasks in flight, taking each
    finished one with wait(FIRST_COMPLETED) or as_completed, then
    submitting the next (an optimizer's loop)."""
    t = time.perf_counter()
    pending = {ex.submit(identity, i) for i in range(window)}
    sent, got = window, 0
    while got < n:
        if how == "wait":
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
        else:
            done = {next(concurrent.futures.as_completed(pending))}
            pending -= done
        got += len(done)
        for _ in done:
            pending.add(ex.submit(identity, sent))
            sent += 1
    concurrent.futures.wait(pending)
    return n / (time.perf_counter() - t)


def quick_behind_slow(ex, slow_s=2.0):
    """Seconds from submitting a quick task, while one worker runs a long
    one and the other is idle, to its result."""
    slow = ex.submit(sleep_s, slow_s)
    time.sleep(0.2)  # the long task has started
    t = time.perf_counter()
    ex.submit(identity, 1).result()
    quick = time.perf_counter() - t
    slow.result()
    return quick


WINDOW_RUNS = 3


def windows(workers, n):
    """The optimizer-loop rates of zcstore and ProcessPoolExecutor (each
    with its default start method), in one run, each the median of
    WINDOW_RUNS runs, the two executors' runs alternated (one run of a
    fraction of a second is at the mercy of this shared machine); and the
    quick task."""
    rows = []
    with concurrent.futures.ProcessPoolExecutor(workers) as ppe, \
            zcstore.Pool(workers, progress=False) as pool:
        for ex in (ppe, pool):
            list(ex.map(identity, range(100)))
        for window in (1, 2, 4, 16):
            for how in ("wait", "as_completed"):
                z, p = [], []
                for _ in range(WINDOW_RUNS):
                    z.append(window_rate(pool, window, n, how))
                    p.append(window_rate(ppe, window, n, how))
                rows.append((window, how, statistics.median(z), statistics.median(p)))
        quick = (quick_behind_slow(pool), quick_behind_slow(ppe))
    return rows, quick


# --- asyncio

def loop_gaps(workers, n):
    """The longest gap, and the 99th percentile, between two iterations of
    a running event loop while `async for` takes n results of pool.amap."""
    import asyncio

    async def main():
        with zcstore.Pool(workers, progress=False) as pool:
            await asyncio.wrap_future(pool.submit(identity, 1))
            gaps, done = [], False

            async def ticker():
                last = time.perf_counter()
                while not done:
                    await asyncio.sleep(0)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
            t = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            got = 0
            async for _ in pool.amap(identity, range(n)):
                got += 1
            seconds = time.perf_counter() - t0
            done = True
            await t
            assert got == n
            gaps.sort()
            return gaps[-1], gaps[int(len(gaps) * 0.99)], seconds
    return asyncio.run(main())


# --- report

def median_row(rs):
    """One setting's measurements as one row: each figure's median (a row
    with an error if any measurement failed)."""
    failed = [r for r in rs if "error" in r]
    if failed:
        return failed[0]
    return dict(rs[0], **{k: statistics.median(r[k] for r in rs)
                          for k in ("first_s", "tasks_per_s", "copies")})


def table(rows):
    lines = ["| system | model MiB | workers | first result (ms) | copies of the model | tasks/s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['model_mib']} | {r['workers']} | "
                         f"failed: {r['error']} | | |")
        else:
            lines.append(f"| {r['system']} | {r['model_mib']} | {r['workers']} | "
                         f"{r['first_s'] * 1e3:.1f} | {r['copies']:.2f} | {r['tasks_per_s']:.0f} |")
    return "\n".join(lines)


def plots(rows, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for metric, label in (("first_s", "time to the first result (s)"),
                          ("copies", "copies of the model in memory")):
        fig, axes = plt.subplots(1, len({r["workers"] for r in rows}), figsize=(12, 4.5),
                                 squeeze=False)
        for ax, workers in zip(axes[0], sorted({r["workers"] for r in rows})):
            for system in SYSTEMS:
                pts = sorted((r["model_mib"], r[metric]) for r in rows
                             if r["system"] == system and r["workers"] == workers
                             and "error" not in r)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=system)
            ax.set_xscale("log", base=2)
            if metric == "first_s":  # milliseconds to tens of seconds
                ax.set_yscale("log")
            ax.set_xlabel("model size (MiB)")
            ax.set_ylabel(label)
            ax.set_title(f"{workers} workers")
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"compare_{metric}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def spawn_floor(workers, mib=0, runs=3):
    """Seconds to start `workers` interpreters at once, each importing numpy
    and zcstore, until the last has exited, while this process puts a
    `mib` MiB model from its heap into a fresh memfd store: what any spawn
    pool given a heap model pays before its first task on this machine
    (the median of `runs`; the model is built before each clock starts)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    times = []
    for _ in range(runs):
        model = make_model(mib) if mib else None
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", "import numpy, zcstore"], env=env)
                 for _ in range(workers)]
        if model is not None:
            with zcstore.Store.create("floor", backing="memfd",
                                      capacity=model_bytes(model) + 64 * MIB) as store:
                store.put(model)
        if any(p.wait() != 0 for p in procs):
            raise RuntimeError("an interpreter could not import numpy and zcstore")
        times.append(time.perf_counter() - t)
        del model
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256,1024,4096", help="model sizes in MiB")
    ap.add_argument("--workers", default="2,8")
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--trivial", type=int, default=20000, help="tasks of the x -> x part (0: skip it)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each setting this many times, the systems alternated, and "
                         "report each figure's median (one map of a few thousand tasks is a "
                         "fraction of a second, at the mercy of a shared machine)")
    ap.add_argument("--window-tasks", type=int, default=3000,
                    help="tasks per run of the optimizer-loop part (0: skip it)")
    ap.add_argument("--trace", action="store_true",
                    help="print where each zcstore heap start's time goes, and each "
                         "measurement's first results and rates (stderr)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "results"))
    a = ap.parse_args()
    global TRACE
    TRACE = a.trace
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for workers in [int(w) for w in a.workers.split(",")]:
        for mib in [int(s) for s in a.sizes.split(",")]:
            runs = {name: [] for name in a.systems.split(",")}
            for _ in range(a.repeat):
                for name in runs:
                    r = measure(name, mib, workers, a.tasks)
                    runs[name].append(r)
                    print(table([r]).splitlines()[-1], flush=True)
            rows += [median_row(rs) for rs in runs.values()]
    md = ["# The shared-model scenario, every system in one run", "",
          (f"Each figure the median of {a.repeat} measurements, the systems alternated. "
           if a.repeat > 1 else "") +
          f"{os.cpu_count()} CPUs; {a.tasks} tasks per run; copies = (peak PSS of the process "
          "tree - its peak with a one-item model, in a run as long) / model size, each "
          "peak the median of "
          f"{SAMPLED_RUNS} runs (1 for runs of 10 s or more); first result: the median of "
          f"{FIRST_RUNS} starts (1 for starts of 2 s or more; joblib's is its last result, "
          f"the median of its timed runs); tasks/s: the median of {TIMED_RUNS} runs, each "
          "started afresh (1 for runs of 10 s or more).", ""]
    # The default scenario: the model on the heap, as users have it (every
    # system but the zcstore ones that build it in their store); then the
    # model built in place, in a table of its own.
    in_place = [r for r in rows if getattr(SYSTEMS[r["system"]], "in_store", False)]
    on_heap = [r for r in rows if r not in in_place]
    if on_heap:
        md += ["## The model on the heap", "", table(on_heap), ""]
        if any("spawn" in r["system"] for r in on_heap):
            settings = sorted({(r["workers"], r["model_mib"]) for r in on_heap})
            floors = {(w, m): spawn_floor(w, m) for w, m in settings}
            md += ["A spawn pool's floor on this machine, for its first result: the workers' "
                   "interpreters importing numpy and zcstore at once while the model is put "
                   "from the heap into a fresh memfd store (the median of 3): " + "; ".join(
                       f"{w} workers, {m} MiB: {f * 1e3:.0f} ms" for (w, m), f in floors.items())
                   + ".", ""]
            spawn = [r for r in on_heap if r["system"].startswith("zcstore spawn")
                     and "first_s" in r]
            if spawn:
                md += ["zcstore spawn's first result over that floor: " + "; ".join(
                    f"{r['system']}, {r['workers']} workers, {r['model_mib']} MiB: "
                    f"{r['first_s'] / floors[(r['workers'], r['model_mib'])]:.2f}x"
                    for r in spawn) + ".", ""]
    if in_place:
        md += ["## The model built in place in zcstore's store (`pool.empty`, `Pool(store=...)`)",
               "", table(in_place), ""]
    tw = int(a.workers.split(",")[0])
    if a.trivial:
        t = trivial(tw, a.trivial)
        md += [f"Trivial tasks (x -> x), {tw} workers, {a.trivial} tasks, best chunksize of each:",
               "", "| system | tasks/s | one round trip (us) |", "|---|---|---|"]
        for name, (rate, rt) in t.items():
            md.append(f"| {name} | {rate:.0f} | {rt * 1e6:.0f} |")
        ppe, zcs = t["ProcessPoolExecutor"], t["zcstore"]
        md += ["", f"zcstore / ProcessPoolExecutor: throughput {zcs[0] / ppe[0]:.2f}x, "
               f"round trip {zcs[1] / ppe[1]:.2f}x", ""]
    if a.window_tasks:
        wrows, (zq, pq) = windows(tw, a.window_tasks)
        md += [f"An optimizer's loop: {tw} workers, {a.window_tasks} tasks (x -> x) per run, "
               "`window` in flight; each finished one taken with `wait(FIRST_COMPLETED)` or "
               "`as_completed`, then the next submitted; tasks/s the median of "
               f"{WINDOW_RUNS} runs each (target: zcstore >= 2x):", "",
               "| window | taken with | zcstore tasks/s | ProcessPoolExecutor tasks/s | ratio |",
               "|---|---|---|---|---|"]
        for window, how, z, p in wrows:
            md.append(f"| {window} | {how} | {z:.0f} | {p:.0f} | {z / p:.2f}x |")
        md += ["", f"A quick task submitted while one worker runs a 2 s task and the other is "
               f"idle: its result after {zq * 1e3:.1f} ms (zcstore) and {pq * 1e3:.1f} ms "
               "(ProcessPoolExecutor).", ""]
    if a.window_tasks:
        longest, p99, seconds = loop_gaps(tw, 10000)
        md += [f"asyncio: `async for` over `pool.amap` of 10000 tasks ({tw} workers) took "
               f"{seconds:.2f} s; the event loop's longest gap between two iterations meanwhile "
               f"was {longest * 1e3:.2f} ms (99th percentile {p99 * 1e3:.3f} ms; target < 5 ms; "
               "Python's GIL switch interval is 5 ms).", ""]
    for path in plots(rows, a.out):
        md.append(f"![{os.path.basename(path)}]({os.path.basename(path)})")
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
