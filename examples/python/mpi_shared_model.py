"""The shared-model demo over mpi4py (`make demo-mpi-python`): zcstore.mpi's
share and map beside mpi4py's comm.bcast of the pickled model to every
rank, in one run. Prints a RESULT line for each.

    mpirun -np 4 python3 examples/python/mpi_shared_model.py [--model-mib N] [--tasks N]

(With ZCSTORE_MPI_RANKS_PER_NODE=2, as `make` runs it, the 4 ranks are 2
simulated nodes of 2.) copies_per_node: the model's bytes resident on the
fullest node, summed over its ranks (Pss of the memory that holds its item
factors), over their size; the root's own model, which a program drops
once shared, is not counted for zcstore.mpi (for bcast it is the root's
copy). bytes_sent: what crossed MPI for the model.
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import zcstore.mpi as zm

DIMS, USERS = 64, 1000


def make_model(mib):
    items = max(1, (mib << 20) // (DIMS * 4))
    rng = np.random.default_rng(1)
    return {"item_factors": rng.random((items, DIMS), np.float32),
            "user_factors": rng.random((USERS, DIMS), np.float32)}


def best_item(model, user, seed):
    items = np.random.default_rng(seed).integers(0, len(model["item_factors"]), 100)
    return float((model["item_factors"][items] @ model["user_factors"][user]).max())


MODEL = None


def score(task):
    return best_item(MODEL, *task)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-mib", type=int, default=256)
    ap.add_argument("--tasks", type=int, default=20000)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    _, nodes = zm.nodes(comm)
    model = make_model(a.model_mib) if rank == 0 else None
    model_bytes = comm.bcast(sum(v.nbytes for v in model.values()) if rank == 0 else None)
    tasks = [(u % USERS, u * 7919 + 1) for u in range(a.tasks)] if rank == 0 else None

    def run(system, get_model, bytes_sent):
        """The model on every rank by `get_model`, then one task, then
        every task: a RESULT line on rank 0; the results."""
        global MODEL
        comm.Barrier()
        t0 = time.perf_counter()
        MODEL = get_model()
        first = zm.map(score, tasks[:1] if rank == 0 else None, comm)
        first_s = time.perf_counter() - t0
        t = time.perf_counter()
        results = zm.map(score, tasks, comm)
        rate = a.tasks / (time.perf_counter() - t)
        copies = zm.copies_per_node(MODEL["item_factors"], comm)
        if rank == 0:
            assert results[0] == first[0]
            print(f"RESULT system={system} nodes={nodes} ranks={size} model_mib={a.model_mib} "
                  f"bytes_sent={bytes_sent} copies_per_node={copies:.2f} "
                  f"first_result_s={first_s:.3f} tasks_per_s={rate:.0f}", flush=True)
        MODEL = None
        return results, copies

    # zcstore.mpi: one copy per node, sent once to each other node; then
    # mpi4py's comm.bcast: the pickled model to every rank.
    sent, sent_b = (nodes - 1) * model_bytes, (size - 1) * model_bytes
    ours, copies = run("zcstore.mpi", lambda: zm.share(model, comm), sent)
    theirs, copies_b = run("mpi4py.bcast", lambda: comm.bcast(model, root=0), sent_b)
    if rank == 0:
        assert ours == theirs
        print(f"zcstore.mpi / bcast: bytes sent {sent / sent_b:.2f}x, "
              f"copies per node {copies:.2f} against {copies_b:.2f}", flush=True)

if __name__ == "__main__":
    main()
