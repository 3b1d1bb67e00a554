"""The shared-model demo in Python: examples/shared_model.cc's scenario.

A recommender's model (float32 item factors, 256 MiB by default) is built in
place in the pool's store and shared with spawned workers once; each task
scores one user against 100 random items and keeps the best. At the end it
prints how many copies of the model the parent and its workers hold (PSS,
from the kernel) and the same RESULT line as the C++ demo:

    python3 examples/python/shared_model.py --model-mib 256 --workers 2 --tasks 100000
"""
import argparse
import os
import sys
import time

import numpy as np

import zcstore

DIMS, USERS = 64, 1000


def best_item(model, user, seed):
    """A user's best score over 100 random items of the shared model."""
    items = np.random.default_rng(seed).integers(0, model["items"], 100)
    return float((model["item_factors"][items] @ model["user_factors"][user]).max())


def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def pool_pss(pool):
    return pss(os.getpid()) + sum(pss(p) for p in pool.broadcast(os.getpid))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-mib", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--backend", default="spawn", choices=["spawn", "fork", "threads"])
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    items = (a.model_mib << 20) // (DIMS * 4)
    model_bytes = items * DIMS * 4 + USERS * DIMS * 4
    users = np.arange(a.tasks) % USERS
    seeds = np.arange(a.tasks) * 7919 + 1

    t_start = time.perf_counter()
    pool = zcstore.Pool(a.workers, backend=a.backend, progress=not a.no_progress,
                        store_capacity=model_bytes + (256 << 20))
    startup_s = time.perf_counter() - t_start

    # The memory baseline: the same pool after the same kind of work, on a
    # one-item model.
    tiny = pool.share({"items": 1, "item_factors": np.zeros((1, DIMS), np.float32),
                       "user_factors": np.zeros((USERS, DIMS), np.float32)})
    warm = min(a.tasks, 20_000)
    list(pool.map(best_item, [tiny] * warm, users[:warm], seeds[:warm], progress=False))
    pool.unshare(tiny)
    pss_without = pool_pss(pool)
    print(f"pool: {pool.workers} {a.backend} workers started in {startup_s:.3f} s; "
          f"PSS with the parent, warmed up: {pss_without / 2**20:.1f} MiB")

    # The model, built in place in the pool's store: written once, where the
    # workers read it.
    t_build = time.perf_counter()
    item_factors = pool.empty((items, DIMS), np.float32)
    item_factors.reshape(-1)[:] = (np.arange(items * DIMS, dtype=np.uint64) * 2654435761 % 1000
                                   ).astype(np.float32) / 1000 - 0.5
    user_factors = pool.empty((USERS, DIMS), np.float32)
    user_factors[:] = np.random.default_rng(42).random((USERS, DIMS), np.float32) - 0.5
    model = {"items": items, "item_factors": item_factors, "user_factors": user_factors,
             "hyper": {f"hyper_{i}": i * 0.01 for i in range(40)}}
    print(f"model: {model_bytes / 2**20:.1f} MiB of float32 factors ({items} items x {DIMS} "
          f"dims) built in place in {time.perf_counter() - t_build:.2f} s")

    t0 = time.perf_counter()
    shared = pool.share(model)  # adopted by the store: no byte copied
    del model, item_factors, user_factors
    first = None
    scores = []
    for s in pool.map(best_item, [shared] * a.tasks, users, seeds):
        if first is None:
            first = startup_s + time.perf_counter() - t0
        scores.append(s)
    run_s = time.perf_counter() - t0
    pss_with = pool_pss(pool)
    copies = (pss_with - pss_without) / model_bytes
    wall_s = startup_s + run_s
    print(f"tasks: {len(scores)} scored in {run_s:.3f} s: {a.tasks / run_s:.0f} tasks/s; "
          f"best score {max(scores):.3f}")
    print(f"time to the first result: {first:.3f} s (pool start {startup_s:.3f} s + share "
          "+ first chunk)")
    print(f"memory: parent + {pool.workers} workers hold {pss_with / 2**20:.1f} MiB (PSS); "
          f"without the model {pss_without / 2**20:.1f} MiB")
    print(f"copies of the model in memory: {copies:.3f}")
    workers = pool.workers
    pool.shutdown()
    print(f"RESULT model_mib={a.model_mib} workers={workers} tasks={a.tasks} "
          f"first_result_s={first:.3f} wall_s={wall_s:.3f} tasks_per_s={a.tasks / run_s:.0f} "
          f"model_copies={copies:.3f}")
    return 0 if len(scores) == a.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
