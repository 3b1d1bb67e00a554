"""What a map costs the parent: a fork pool and ProcessPoolExecutor (fork)
over the same heap model, each started and given its first task, then a
map of N scoring tasks timed, with the parent's CPU time (all its threads,
getrusage) over the map; the two alternated, each start a new pool.

Run:  PYTHONPATH=build/python python3 bench/python/map_overhead.py [MiB] [workers] [tasks] [rounds]
"""
import concurrent.futures
import multiprocessing
import os
import resource
import sys
import time

import numpy as np

import zcstore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import USERS, best_item, make_model, score_global, set_model  # noqa: E402


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_map(which, model, workers, users, seeds):
    if which == "zcstore fork":
        pool = zcstore.Pool(workers, backend="fork", progress=False)
        shared = pool.share(model)
        first = lambda: pool.submit(best_item, shared, 1, 2)  # noqa: E731
        run = lambda: pool.map(best_item, [shared] * len(users), users, seeds,  # noqa: E731
                               chunksize=256)
    else:
        set_model(model)
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"))
        first = lambda: pool.submit(score_global, 1, 2)  # noqa: E731
        run = lambda: pool.map(score_global, users, seeds, chunksize=256)  # noqa: E731
    with pool:
        first().result()
        c, t = cpu_s(), time.perf_counter()
        n = sum(1 for _ in run())
        wall, cpu = time.perf_counter() - t, cpu_s() - c
    set_model(None)
    assert n == len(users)
    return wall, cpu


def main():
    defaults = [256, 2, 20000, 3]  # MiB, workers, tasks, rounds
    given = [int(a) for a in sys.argv[1:len(defaults) + 1]]
    mib, workers, tasks, rounds = given + defaults[len(given):]
    model = make_model(mib)
    users, seeds = np.arange(tasks) % USERS, np.arange(tasks) * 7919 + 1
    print(f"{mib} MiB, {workers} workers, a map of {tasks} tasks (chunks of 256), "
          f"{os.cpu_count()} CPUs")
    for _ in range(rounds):
        for which in ("zcstore fork", "ProcessPoolExecutor fork"):
            wall, cpu = one_map(which, model, workers, users, seeds)
            print(f"{which:25s} map {wall * 1e3:5.0f} ms, the parent's CPU {cpu * 1e3:4.0f} ms",
                  flush=True)


if __name__ == "__main__":
    main()
