"""zcstore.mpi under a real mpirun (tests/CMakeLists.txt runs it on 4 ranks
as 2 simulated nodes of 2, with ZCSTORE_MPI_MAX_CHUNK lowered so that every
buffer crosses in many pieces, as one over INT_MAX bytes does). Every rank
runs every check; rank 0 prints PASS once all agree."""
import os
import sys

import numpy as np
from mpi4py import MPI

import zcstore.mpi as zm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def square(x):
    return x * x


def fail_on_37(x):
    if x == 37:
        raise ValueError("no 37")
    return x


def loss(params, context):
    context["calls"] += 1
    return float(context["data"].sum()) * params[0]


def check_share():
    n = (8 << 20) // 8  # 8 MiB of float64
    model = {"w": np.arange(n, dtype=np.float64), "meta": [1, 2, 3]} if rank == 0 else None
    m = zm.share(model)
    assert m["meta"] == [1, 2, 3] and m["w"][-1] == n - 1 and not m["w"].flags.writeable
    m["w"].sum()  # touch every page
    # One copy per node: the Pss of the node's ranks' mappings of its store
    # adds up to one model (and to one per rank after comm.bcast).
    copies = zm.copies_per_node(m["w"])
    assert 0.95 < copies < 1.05, f"a node holds {copies:.2f} copies"
    per_rank = comm.bcast(model if rank == 0 else None)
    bcast_copies = zm.copies_per_node(per_rank["w"])
    assert 1.9 < bcast_copies < 2.1, f"bcast: a node holds {bcast_copies:.2f} copies"
    # A node whose store cannot be made (rank 2, node 1's leader, may not
    # grow a file past 1 MiB): MPIError on every rank, no hang, and the
    # next share works.
    import resource
    import signal
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if rank == 2:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limit[1]))
    try:
        zm.share(model)
    except zm.MPIError as e:
        assert "rank 2" in str(e), e
    else:
        raise AssertionError("a share whose store could not be made succeeded")
    finally:
        if rank == 2:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    assert zm.share(model)["w"][-1] == n - 1
    # Something that does not pickle: MPIError on every rank, no hang.
    try:
        zm.share((lambda: 1) if rank == 0 else None)
    except zm.MPIError as e:
        assert "rank 0" in str(e), e
    else:
        raise AssertionError("an unpicklable share succeeded")


def check_map():
    got = zm.map(square, list(range(1000)) if rank == 0 else None, chunksize=7)
    assert got == ([x * x for x in range(1000)] if rank == 0 else None)
    try:
        zm.map(fail_on_37, list(range(100)) if rank == 0 else None, chunksize=5)
    except zm.MPIError as e:
        assert "no 37" in str(e) and "item 35" in str(e), e
    else:
        raise AssertionError("a failing map succeeded")
    # The ranks go on: the next collective works.
    assert zm.map(square, [3] if rank == 0 else None) == ([9] if rank == 0 else None)


def check_contexts():
    contexts = zm.Contexts([{"data": np.full(10, i, float), "calls": 0} for i in range(7)]
                           if rank == 0 else None)
    if rank == 0:
        assert contexts.map(loss, [1.0]) == [10.0 * i for i in range(7)]
        assert contexts.map(loss, [2.0]) == [20.0 * i for i in range(7)]
        contexts.close()
    else:
        contexts.serve()
    # Each context stayed on one rank and saw both calls.
    assert all(c["calls"] == 2 for _, c in contexts.mine)
    assert sum(comm.allgather(len(contexts.mine))) == 7


def die_on_rank_3(x):
    if rank == 3:
        print(f"rank 3 (pid {os.getpid()}) kills itself", flush=True)
        os.kill(os.getpid(), 9)
    return x


if __name__ == "__main__":
    if "--kill-a-rank" in sys.argv:  # tests/mpi/killed_rank.sh: the job must end
        model = zm.share({"w": np.ones(1 << 20)} if rank == 0 else None)
        zm.map(die_on_rank_3, list(range(1000)) if rank == 0 else None, chunksize=1)
        sys.exit(0)
    assert os.environ.get("ZCSTORE_MPI_MAX_CHUNK"), "run me with a small ZCSTORE_MPI_MAX_CHUNK"
    check_share()
    check_map()
    check_contexts()
    comm.Barrier()
    if rank == 0:
        print(f"PASS: zcstore.mpi on {size} ranks")
    sys.stdout.flush()
