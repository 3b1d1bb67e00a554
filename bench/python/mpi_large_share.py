"""zcstore.mpi.share of an object over INT_MAX bytes, for real (the tests
take the same path with small pieces): `make bench-mpi-python`, 4 ranks as
2 simulated nodes. Prints the time, whether every rank read it right, and
the copies per node."""
import argparse
import time

import numpy as np
from mpi4py import MPI

import zcstore.mpi as zm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2200, help="the array's size (over 2048: > INT_MAX)")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    n = (a.mib << 20) // 8
    model = None
    if rank == 0:
        w = np.empty(n)
        w[:] = 1.0
        w[-1] = 7.0
        model = {"w": w}
    comm.Barrier()
    t = time.perf_counter()
    m = zm.share(model, comm)
    seconds = time.perf_counter() - t
    w = m["w"]
    right = comm.gather(bool(w.nbytes == n * 8 and w[0] == 1.0 and w[n // 2] == 1.0
                             and w[-1] == 7.0))
    copies = zm.copies_per_node(w, comm)
    if rank == 0:
        print(f"RESULT bytes={n * 8} over_int_max={n * 8 > 2**31 - 1} share_s={seconds:.1f} "
              f"every_rank_right={all(right)} copies_per_node={copies:.2f}", flush=True)


if __name__ == "__main__":
    main()
