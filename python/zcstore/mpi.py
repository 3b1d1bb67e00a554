"""zcstore over mpi4py: one copy of a shared object per node, work balanced
over the ranks, and contexts that stay on their ranks.

    from mpi4py import MPI
    import zcstore.mpi
    model = zcstore.mpi.share(model if rank == 0 else None)   # every rank
    scores = zcstore.mpi.map(score, items)                     # every rank; root gets them

``share`` sends the object once to each node: the root pickles it (pickle
5, arrays out of band) into its node's store, and sends the stream and the
arrays' bytes over MPI to the leader (lowest rank) of each other node, which
receives the arrays straight into its node's store. Every rank of a node
then maps that one copy, read-only and zero-copy. A node's store is a memfd
of its leader's, opened by the node's other ranks through
/proc/<leader>/fd/<n> (so nothing is named in /dev/shm, and nothing is left
behind when a rank dies); its memory goes when the last rank drops the
object. Nodes are the ranks of one host (MPI_COMM_TYPE_SHARED), or, for
tests on one machine, ``ranks_per_node`` consecutive ranks (also the
environment variable ZCSTORE_MPI_RANKS_PER_NODE, as the C++ layer reads it).

Every call is collective: every rank of ``comm`` makes it, and a failure
anywhere (an object that does not pickle, a store that does not fit, a task
that raises) is raised on every rank, so no rank waits for another that
gave up.

It is written in Python over mpi4py's calls, not over the C++ zcstore::mpi
(docs/mpi.md), whose design it follows: mpi4py's communicator is what
Python users hold, and the object's bytes go through mpi4py's buffer
interface with no pickling of the arrays.
"""
import os
import pickle
import sys
import traceback

import numpy as np
from mpi4py import MPI

from . import Store, _dumps

__all__ = ["share", "map", "Contexts", "nodes", "copies_per_node"]

# Largest count of one MPI call: counts are C ints, so bigger buffers go in
# pieces of this many bytes (ZCSTORE_MPI_MAX_CHUNK lowers it, for tests).
MAX_CHUNK = int(os.environ.get("ZCSTORE_MPI_MAX_CHUNK", 1 << 30))


class MPIError(RuntimeError):
    """A collective call failed on some rank; raised on every rank."""


def _agree(comm, error):
    """Every rank's error (or None), gathered: raises the first on every
    rank. `error` is this rank's exception or None."""
    errors = comm.allgather(None if error is None else
                            f"rank {comm.Get_rank()}: {type(error).__name__}: {error}")
    failed = [e for e in errors if e is not None]
    if failed:
        if error is not None:
            raise MPIError("; ".join(failed)) from error
        raise MPIError("; ".join(failed))


class _Nodes:
    """How `comm`'s ranks group into nodes, and the communicators for it."""

    def __init__(self, comm, ranks_per_node):
        self.comm = comm
        self.rank = comm.Get_rank()
        env = os.environ.get("ZCSTORE_MPI_RANKS_PER_NODE")
        per = ranks_per_node or (int(env) if env else None)
        if per:
            self.node_comm = comm.Split(self.rank // per, self.rank)
        else:
            self.node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.leader = self.node_comm.Get_rank() == 0
        # The node's index: its leader's rank among the leaders.
        leaders = comm.allgather(self.rank if self.leader else None)
        leader_ranks = sorted(r for r in leaders if r is not None)
        my_leader = self.node_comm.bcast(self.rank if self.leader else None, 0)
        self.node = leader_ranks.index(my_leader)
        self.count = len(leader_ranks)
        self.node_of = comm.allgather(self.node)

    def free(self):
        self.node_comm.Free()


def nodes(comm=None, ranks_per_node=None):
    """(this rank's node, the number of nodes): how ``share`` groups ranks."""
    n = _Nodes(comm or MPI.COMM_WORLD, ranks_per_node)
    try:
        return n.node, n.count
    finally:
        n.free()


def _pss_of_memory_of(address):
    """Pss bytes of what holds `address` in this process: every mapping of
    its file (a store is mapped twice in a process that wrote it), or the
    anonymous mapping itself."""
    vmas, current = [], None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            head = fields[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = [lo, hi, fields[4], 0]  # inode, Pss
                vmas.append(current)
            elif line.startswith("Pss:"):
                current[3] = int(fields[1]) * 1024
    this = next(v for v in vmas if v[0] <= address < v[1])
    if this[2] == "0":
        return this[3]
    return sum(v[3] for v in vmas if v[2] == this[2])


def copies_per_node(array, comm=None, ranks_per_node=None):
    """How many copies of `array` (each rank's own, or its node's shared
    one) are resident on the fullest node: the Pss of the memory that holds
    it, summed over the node's ranks, over its size. Touches every page of
    it first. Collective; Linux only (/proc/self/smaps). A diagnostic, for
    tests and demos: 1.0 after ``share``, ranks-per-node after
    ``comm.bcast``."""
    comm = comm or MPI.COMM_WORLD
    array.sum()
    node, count = nodes(comm, ranks_per_node)
    got = comm.allgather((node, _pss_of_memory_of(array.ctypes.data)))
    return max(sum(p for n, p in got if n == k) for k in range(count)) / array.nbytes


def _chunks(buf):
    view = memoryview(buf).cast("B")
    for start in range(0, len(view), MAX_CHUNK):
        yield view[start:start + MAX_CHUNK]


def _bcast_bytes(comm, buf, root):
    """Bcast of a writable (receivers) or readable (root) byte buffer of
    any size, in pieces that fit a C int."""
    for piece in _chunks(buf):
        comm.Bcast([piece, MPI.BYTE], root)


def _capacity(stream_len, sizes):
    """A store that holds one object of these buffers (each page-aligned
    from 64 KiB, as the store lays them out), with room to spare."""
    need = stream_len + (4 << 20)
    for s in sizes:
        need += s + 4096 + 64
    return need


def share(obj, comm=None, root=0, ranks_per_node=None):
    """``obj`` (given on ``root``; anything on the other ranks, which is
    ignored) on every rank of ``comm``: one copy per node, its numpy arrays
    read-only views of the node's store. Collective.

    Bytes sent over MPI: the pickle stream and the arrays' bytes once to
    each node but the root's (against once to every rank for
    ``comm.bcast``). Raises MPIError on every rank if it fails on any (the
    root's object does not pickle, a node's store cannot be made)."""
    comm = comm or MPI.COMM_WORLD
    me = comm.Get_rank()
    layout = _Nodes(comm, ranks_per_node)
    store = senders = None
    try:
        # 1. What is to be sent: the root pickles, every rank learns the sizes.
        error, stream, buffers, header = None, None, [], None
        if me == root:
            try:
                stream, buffers = _dumps(obj)
                header = (len(stream), [memoryview(b).nbytes for b in buffers])
            except Exception as e:
                error = e
        _agree(comm, error)
        stream_len, sizes = comm.bcast(header, root)

        # 2. Each node's store: its leader's memfd, opened by the others.
        error = None
        try:
            if layout.leader:
                # One object, for the node's ranks: small tables.
                store = Store.create("mpi", backing="memfd",
                                     capacity=_capacity(stream_len, sizes), max_objects=16,
                                     max_clients=layout.node_comm.Get_size() + 8,
                                     max_pins_per_client=64, max_names=1)
        except Exception as e:
            error = e
        _agree(comm, error)
        where = layout.node_comm.bcast((os.getpid(), store.fd) if layout.leader else None, 0)
        error = None
        if not layout.leader:
            try:
                fd = os.open(f"/proc/{where[0]}/fd/{where[1]}", os.O_RDWR | os.O_CLOEXEC)
                try:
                    store = Store.open_fd(fd)
                finally:
                    os.close(fd)
            except Exception as e:
                error = e
        _agree(comm, error)

        # 3. The root's node: the root puts it. The other nodes' leaders:
        # received from the root straight into their store.
        root_node = layout.node_of[root]
        sending = me == root or (layout.leader and layout.node != root_node)
        senders = comm.Split(0 if sending else MPI.UNDEFINED, 0 if me == root else me + 1)
        # Whatever can fail (a put, an allocation) fails before any byte is
        # sent, and every rank agrees on it: a rank that gave up mid-Bcast
        # would leave the others waiting in it.
        receiving = sending and me != root
        error, id, received, arrays = None, None, None, None
        try:
            if me == root:
                id = store._h.put(None, stream, buffers, False)
            elif receiving:
                received = bytearray(stream_len)
                arrays = [store.empty(n, np.uint8) for n in sizes]
        except Exception as e:
            error = e
        _agree(comm, error)
        if senders != MPI.COMM_NULL and senders.Get_size() > 1:
            if me == root:
                _bcast_bytes(senders, stream, 0)
                for b in buffers:
                    _bcast_bytes(senders, b, 0)
            else:
                _bcast_bytes(senders, received, 0)
                for a in arrays:
                    _bcast_bytes(senders, a, 0)
        error = None
        try:
            if receiving:
                id = store._h.put(None, memoryview(received), arrays, False)
        except Exception as e:
            error = e
        del arrays
        _agree(comm, error)

        # 4. Every rank: its node's copy.
        # (The root's node learns the id from the root, the others from
        # their leader.)
        source = _node_rank_of(layout, comm, root) if layout.node == root_node else 0
        id = layout.node_comm.bcast(id, source)
        return store._ref(id).get()
    finally:
        if senders is not None and senders != MPI.COMM_NULL:
            senders.Free()
        # The views hold the object; the handles may go once every rank of
        # the node has opened the store (the leader's fd is what they open).
        layout.node_comm.Barrier()
        if store is not None:
            store.close()
        layout.free()


def _node_rank_of(layout, comm, rank):
    """`rank`'s rank in this rank's node communicator (same node)."""
    return layout.node_comm.allgather(comm.Get_rank()).index(rank)


# ------------------------------------------------------------ map

_READY, _DONE, _FAILED = 0, 1, 2


def map(fn, items=None, comm=None, root=0, chunksize=None):
    """fn(item) for each item (given on ``root``), over the other ranks of
    ``comm``, balanced dynamically: each rank asks for its next chunk when
    it is done with one. Returns the results in order on ``root``, None
    elsewhere. Collective. If a call raises on some rank, no chunk is handed
    out after it, and every rank raises MPIError naming the rank, the item
    and the error (its traceback on the root). On one rank, runs there."""
    comm = comm or MPI.COMM_WORLD
    me, size = comm.Get_rank(), comm.Get_size()
    if size == 1:
        return [fn(x) for x in items]
    if me == root:
        items = list(items)
        n = len(items)
        if chunksize is None:
            chunksize = max(1, min(n // (4 * (size - 1)) or 1, 1024))
        chunks = [(i, items[i:i + chunksize]) for i in range(0, n, chunksize)]
        chunks.reverse()
        results = [None] * n
        failure = None
        working = size - 1
        status = MPI.Status()
        while working:
            kind, payload = comm.recv(source=MPI.ANY_SOURCE, tag=1, status=status)
            source = status.Get_source()
            if kind == _DONE:
                start, values = payload
                results[start:start + len(values)] = values
            elif kind == _FAILED and failure is None:
                failure = payload
            if chunks and failure is None:
                comm.send((fn, *chunks.pop()), dest=source, tag=2)
            else:
                comm.send(None, dest=source, tag=2)
                working -= 1
        comm.bcast(failure, root)
        if failure is not None:
            raise MPIError(failure)
        return results
    comm.send((_READY, None), dest=root, tag=1)
    while True:
        task = comm.recv(source=root, tag=2)
        if task is None:
            break
        fn_, start, chunk = task
        try:
            comm.send((_DONE, (start, [fn_(x) for x in chunk])), dest=root, tag=1)
        except Exception as e:
            tb = traceback.format_exc()
            comm.send((_FAILED, f"rank {me}, in a chunk from item {start}: "
                       f"{type(e).__name__}: {e}\n{tb}"), dest=root, tag=1)
    failure = comm.bcast(None, root)
    if failure is not None:
        raise MPIError(failure.split("\n", 1)[0])
    return None


# ------------------------------------------------------------ contexts

class Contexts:
    """ChemFit's pattern: contexts (per-configuration data and state) sent
    once, each kept on one rank, then many calls with a parameter vector.

        contexts = zcstore.mpi.Contexts(configs if rank == 0 else None)  # every rank
        if rank == 0:
            for step in range(100):
                losses = contexts.map(loss, params)   # loss(params, context) per context
            contexts.close()                          # the other ranks leave serve()
        else:
            contexts.serve()

    ``map`` sends ``fn`` and ``params`` to every rank, each runs
    ``fn(params, context)`` for its contexts, and the root gets the results
    in the contexts' order. What a call changes in a context stays with it on
    its rank, for the next call: no update is lost, and no context travels
    again. A call that raises on a rank raises MPIError on the root (naming
    the rank, the context and the error); the ranks go on serving."""

    def __init__(self, contexts=None, comm=None, root=0):
        self.comm = comm or MPI.COMM_WORLD
        self.root = root
        me, size = self.comm.Get_rank(), self.comm.Get_size()
        workers = [r for r in range(size) if r != root] or [root]
        parts = None
        if me == root:
            contexts = list(contexts)
            self.count = len(contexts)
            parts = [[] for _ in range(size)]
            for i, c in enumerate(contexts):  # round robin over the other ranks
                parts[workers[i % len(workers)]].append((i, c))
        self.count = self.comm.bcast(self.count if me == root else None, root)
        self.mine = self.comm.scatter(parts, root)

    def _run(self, call):
        fn, params = call
        out = []
        for i, c in self.mine:
            try:
                out.append((i, True, fn(params, c)))
            except Exception as e:
                out.append((i, False, f"rank {self.comm.Get_rank()}, context {i}: "
                            f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return out

    def map(self, fn, params):
        """On the root: fn(params, context) for every context, in order."""
        call = self.comm.bcast((fn, params), self.root)
        gathered = self.comm.gather(self._run(call), self.root)
        results = [None] * self.count
        for part in gathered:
            for i, ok, value in part:
                if not ok:
                    raise MPIError(value)
                results[i] = value
        return results

    def serve(self):
        """On the other ranks: runs the root's calls until close()."""
        while True:
            call = self.comm.bcast(None, self.root)
            if call is None:
                return
            self.comm.gather(self._run(call), self.root)

    def close(self):
        """On the root: every rank returns from serve()."""
        self.comm.bcast(None, self.root)
