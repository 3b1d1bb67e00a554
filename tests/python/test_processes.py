"""zcstore across real processes: spawned and forked Python readers, refs
through multiprocessing, concurrent.futures and joblib, a killed reader,
and a C++ process and a Python process reading each other's objects."""
import concurrent.futures
import multiprocessing
import os
import signal
import subprocess

import numpy as np
import pytest

import zcstore
from conftest import child, unique

INTEROP = os.environ.get("ZCSTORE_INTEROP")
MODEL_MIB = 32
TIMEOUT = 60


def make_model():
    n = (MODEL_MIB << 20) // 8 // 4   # two arrays of float32 and float64, 32 MiB in all
    return {"W": np.arange(n * 2, dtype=np.float32), "b": np.ones(n, np.float64), "k": 3}


def memory():
    """This process's Pss and private (unshared) bytes, from the kernel."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def read_in_child(ref, out):
    pss0, private0 = memory()
    m, again = ref.get(), ref.get()
    pss1, _ = memory()
    total = expected_total(m)
    _, private2 = memory()
    try:
        m["W"][0] = 1
        wrote = True
    except ValueError:
        wrote = False
    out.put({"shares": bool(np.shares_memory(m["W"], again["W"])), "total": total,
             "pss_growth": pss1 - pss0, "private_growth": private2 - private0,
             "wrote": wrote, "k": m["k"]})


def expected_total(m):
    """What a reader computes from the model: it reads every byte."""
    return float(m["W"].sum(dtype=np.float64)) + float(m["b"].sum())


def test_spawned_reader_maps_the_model_put_by_the_parent():
    with zcstore.Store.create(unique(), capacity=64 << 20) as store:
        m = make_model()
        ref = store.put(m)
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        with child(ctx, read_in_child, ref, q) as p:
            r = q.get(timeout=TIMEOUT)
            p.join(TIMEOUT)
        assert p.exitcode == 0
        model_bytes = m["W"].nbytes + m["b"].nbytes
        assert r["shares"] and not r["wrote"] and r["k"] == 3
        assert r["total"] == expected_total(m)
        # get maps, never copies: Pss barely moves when the object is got,
        # and reading every byte adds no private page (they are shared).
        assert r["pss_growth"] < 0.05 * model_bytes, r
        assert r["private_growth"] < 0.05 * model_bytes, r


def total_of(ref):
    return expected_total(ref.get())


def test_refs_through_a_process_pool_executor():
    with zcstore.Store.create(unique(), capacity=64 << 20) as store:
        m = make_model()
        ref = store.put(m)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            results = list(ex.map(total_of, [ref] * 4, timeout=TIMEOUT))
        assert results == [expected_total(m)] * 4


def test_refs_through_joblib():
    joblib = pytest.importorskip("joblib")
    with zcstore.Store.create(unique(), capacity=64 << 20) as store:
        m = make_model()
        ref = store.put(m)
        try:
            results = joblib.Parallel(n_jobs=2, timeout=TIMEOUT)(
                joblib.delayed(total_of)(ref) for _ in range(3))
        finally:
            # loky keeps its workers for reuse: stop them, leave nothing behind
            from joblib.externals.loky import get_reusable_executor
            get_reusable_executor().shutdown(wait=True)
        assert results == [expected_total(m)] * 3


def forked_reader(ref, store, out):
    # The inherited handle is the parent's: refused. The ref still resolves,
    # through a handle of the child's own (memfd: the inherited descriptor).
    try:
        store.get(ref)
        inherited = "worked"
    except zcstore.InvalidArgument as e:
        inherited = str(e)
    out.put((inherited, total_of(ref)))


@pytest.mark.parametrize("backing", ["shm", "memfd"])
def test_forked_children_resolve_refs_with_their_own_handle(backing):
    name = unique() if backing == "shm" else "forked"
    with zcstore.Store.create(name, backing=backing, capacity=64 << 20) as store:
        m = make_model()
        ref = store.put(m)
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        with child(ctx, forked_reader, ref, store, q) as p:
            inherited, total = q.get(timeout=TIMEOUT)
            p.join(TIMEOUT)
        assert p.exitcode == 0
        assert "open the store again" in inherited
        assert total == expected_total(m)
        assert store.stats().clients == 1  # the child's handle is gone with it


def hold_and_wait(ref, out):
    m = ref.get()
    out.put(int(m["W"].size))
    signal.pause()


def test_a_killed_reader_leaves_no_pin():
    with zcstore.Store.create(unique(), capacity=64 << 20) as store:
        ref = store.put(make_model())
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        with child(ctx, hold_and_wait, ref, q) as p:
            assert q.get(timeout=TIMEOUT) > 0
            assert store.stats().pins >= 1
            p.kill()
            p.join(TIMEOUT)
        store.delete(ref)
        st = store.stats()   # reclaims the dead handle's pins
        assert st.pins == 0 and st.clients == 1 and st.used == 0


def a_ref_of_a_deleted_object(ref, out):
    try:
        ref.get()
        out.put("found")
    except zcstore.NotFound as e:
        out.put(str(e))


def test_a_ref_to_a_deleted_object_or_a_gone_store():
    ctx = multiprocessing.get_context("spawn")
    with zcstore.Store.create(unique(), capacity=1 << 20) as store:
        ref = store.put(1)
        store.delete(ref)
        q = ctx.Queue()
        with child(ctx, a_ref_of_a_deleted_object, ref, q):
            assert "is not in store" in q.get(timeout=TIMEOUT)
    q = ctx.Queue()  # the store itself is gone now
    with child(ctx, a_ref_of_a_deleted_object, ref, q):
        assert ref.store in q.get(timeout=TIMEOUT)


def test_a_replaced_store_is_not_taken_for_the_old_one():
    name = unique()
    with zcstore.Store.create(name, capacity=1 << 20) as store:
        ref = store.put("old")
    with zcstore.Store.create(name, capacity=1 << 20) as store:
        store.put_raw(b"", [], id=ref.id)  # even the same id
        zcstore.close_attached()
        with pytest.raises(zcstore.NotFound, match="replaced"):
            # a fresh handle, as in another process: the identity differs
            zcstore._live.clear()
            ref.get()


# ------------------------------------------------------------ C++ <-> Python

needs_interop = pytest.mark.skipif(INTEROP is None, reason="ZCSTORE_INTEROP not set")


@needs_interop
def test_python_reads_a_zcstore_array_written_by_cpp():
    with zcstore.Store.create(unique(), capacity=16 << 20) as store:
        n = 1 << 20
        out = subprocess.run([INTEROP, "write", store.name, str(n)], capture_output=True,
                             text=True, timeout=TIMEOUT, check=True)
        ref = store.ref(out.stdout.strip())
        raw = store.get_raw(ref)
        a = raw.array(0, np.float32)
        assert a.shape == (n,) and a[1] == 0.5 and a[-1] == (n - 1) * 0.5
        assert not a.flags.writeable
        assert np.shares_memory(a, store.get_raw(ref).array(0, np.float32))  # no copy
        assert len(raw.metadata) > 0  # the C++ envelope
        with pytest.raises(zcstore.TypeMismatch):
            store.get(ref)  # a C++ envelope, not a pickle


@needs_interop
def test_cpp_reads_a_raw_object_written_by_python():
    with zcstore.Store.create(unique(), capacity=16 << 20) as store:
        x = np.arange(500_000, dtype=np.float64)
        ref = store.put_raw(b"from-python", [x])
        out = subprocess.run([INTEROP, "read", store.name, ref.id], capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ok n=500000"
