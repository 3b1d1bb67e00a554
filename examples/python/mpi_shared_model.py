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


def pss_of_file_of(address):
    """Pss bytes of every mapping in this process of what holds `address`:
    the store's file, or (inode 0) the anonymous mapping itself."""
    vmas, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            head = fields[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = [lo, hi, fields[4], 0]
                vmas.append(current)
            elif line.startswith("Pss:"):
                current[3] = int(fields[1]) * 1024
    this = next(v for v in vmas if v[0] <= address < v[1])
    if this[2] == "0":
        return this[3]
    return sum(v[3] for v in vmas if v[2] == this[2])


def copies_per_node(comm, array, node, nodes, model_bytes):
    array.sum()  # every page resident
    got = comm.allgather((node, pss_of_file_of(array.ctypes.data)))
    return max(sum(p for n, p in got if n == k) for k in range(nodes)) / model_bytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-mib", type=int, default=256)
    ap.add_argument("--tasks", type=int, default=20000)
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node, nodes = zm.nodes(comm)
    model = make_model(a.model_mib) if rank == 0 else None
    model_bytes = comm.bcast(sum(v.nbytes for v in model.values()) if rank == 0 else None)
    tasks = [(u % USERS, u * 7919 + 1) for u in range(a.tasks)] if rank == 0 else None
    global MODEL

    # zcstore.mpi: one copy per node, sent once to each other node.
    comm.Barrier()
    t0 = time.perf_counter()
    MODEL = zm.share(model, comm)
    first = zm.map(score, tasks[:1] if rank == 0 else None, comm)
    first_s = time.perf_counter() - t0
    t = time.perf_counter()
    results = zm.map(score, tasks, comm)
    rate = a.tasks / (time.perf_counter() - t)
    copies = copies_per_node(comm, MODEL["item_factors"], node, nodes,
                             MODEL["item_factors"].nbytes)
    sent = (nodes - 1) * model_bytes
    if rank == 0:
        assert results[0] == first[0]
        print(f"RESULT system=zcstore.mpi nodes={nodes} ranks={size} model_mib={a.model_mib} "
              f"bytes_sent={sent} copies_per_node={copies:.2f} first_result_s={first_s:.3f} "
              f"tasks_per_s={rate:.0f}", flush=True)
    MODEL = None

    # mpi4py's comm.bcast: the pickled model to every rank.
    comm.Barrier()
    t0 = time.perf_counter()
    MODEL = comm.bcast(model, root=0)
    first = zm.map(score, tasks[:1] if rank == 0 else None, comm)
    first_s = time.perf_counter() - t0
    t = time.perf_counter()
    again = zm.map(score, tasks, comm)
    rate = a.tasks / (time.perf_counter() - t)
    copies_b = copies_per_node(comm, MODEL["item_factors"], node, nodes,
                               MODEL["item_factors"].nbytes)
    sent_b = (size - 1) * model_bytes
    if rank == 0:
        assert again == results
        print(f"RESULT system=mpi4py.bcast nodes={nodes} ranks={size} model_mib={a.model_mib} "
              f"bytes_sent={sent_b} copies_per_node={copies_b:.2f} first_result_s={first_s:.3f} "
              f"tasks_per_s={rate:.0f}", flush=True)
        print(f"zcstore.mpi / bcast: bytes sent {sent / sent_b:.2f}x, "
              f"copies per node {copies:.2f} against {copies_b:.2f}", flush=True)


if __name__ == "__main__":
    main()
