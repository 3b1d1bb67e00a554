"""zcstore.joblib: joblib's Parallel on a zcstore.Pool, with real workers.
(joblib's own Parallel tests run on it in joblib_backend_test.py.)"""
import joblib
import numpy as np
import pytest

import zcstore
import zcstore.joblib
from zcstore.joblib import ZcstoreBackend

TIMEOUT = 60


def column_sum(model, i):
    w = model["w"]
    return float(w[:, i].sum()), w.flags.writeable, w.flags.owndata


def mean_of(frame):
    return float(frame["a"].mean())


def scale(x):
    x *= 2  # a writable copy under mmap_mode="c"
    return float(x.sum())


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"bad {x}")
    return x


@pytest.fixture
def shares(monkeypatch):
    """How many arrays the backend put in its pool's store."""
    count = []
    real = zcstore.Pool.share

    def counted(self, obj, *args, **kwargs):
        count.append(getattr(obj, "nbytes", None))
        return real(self, obj, *args, **kwargs)
    monkeypatch.setattr(zcstore.Pool, "share", counted)
    return count


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_model_passed_to_every_call_reaches_the_workers_once(shares, start_method):
    model = {"w": np.ones((1 << 18, 4), np.float32)}  # 4 MiB, over max_nbytes' 1M
    with joblib.parallel_backend("zcstore", n_jobs=2, start_method=start_method):
        out = joblib.Parallel()(joblib.delayed(column_sum)(model, i % 4) for i in range(200))
    assert out[0] == (float(1 << 18), False, False)  # a read-only view of the store
    assert len(out) == 200 and shares == [4 << 20]
    # Under the limit, or with max_nbytes=None: pickled with each batch.
    shares.clear()
    with joblib.parallel_backend("zcstore", n_jobs=2, start_method=start_method):
        out = joblib.Parallel(max_nbytes=None)(
            joblib.delayed(column_sum)(model, 0) for _ in range(4))
    assert shares == [] and out[0][0] == float(1 << 18)


def test_arrays_inside_a_dataframe_are_shared_too(shares):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": np.arange(1 << 18, dtype=np.float64)})  # 2 MiB column
    with joblib.parallel_backend("zcstore", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(mean_of)(frame) for _ in range(20))
    assert out == [float(frame["a"].mean())] * 20 and len(shares) == 1


def test_mmap_modes():
    x = np.ones(1 << 18)
    with joblib.parallel_backend("zcstore", n_jobs=2):
        assert joblib.Parallel(mmap_mode="c")(joblib.delayed(scale)(x) for _ in range(3)) == [
            2.0 * x.size] * 3
        assert x[0] == 1.0
        with pytest.raises(ValueError, match="read-only"):
            joblib.Parallel()(joblib.delayed(scale)(x) for _ in range(3))  # "r": read-only
        with pytest.raises(ValueError, match="cannot write into the caller"):
            joblib.Parallel(mmap_mode="r+")(joblib.delayed(scale)(x) for _ in range(3))


def test_exceptions_n_jobs_and_nesting_behave_as_under_loky():
    with joblib.parallel_backend("zcstore", n_jobs=-1):
        with pytest.raises(KeyError, match="bad 3") as e:
            joblib.Parallel()(joblib.delayed(fail_on)(x, 3) for x in range(10))
        assert "in fail_on" in str(e.value.__cause__)
        assert joblib.Parallel()(joblib.delayed(fail_on)(x, -1) for x in range(5)) == list(range(5))
    backend = ZcstoreBackend(nesting_level=0)
    assert backend.effective_n_jobs(-1) >= 1 and backend.effective_n_jobs(3) == 3
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)
    nested, _ = backend.get_nested_backend()
    assert type(nested).__name__ == "ThreadingBackend"  # as loky's nested calls


def test_the_store_does_not_fill_up_over_parallel_calls():
    # Each call shares its own arrays and unshares them at its end; the
    # workers let go of what was unshared before their next task.
    with joblib.parallel_backend("zcstore", n_jobs=2, start_method="spawn"):
        for _ in range(6):
            model = {"w": np.ones((1 << 20, 4), np.float32)}  # 16 MiB each
            joblib.Parallel()(joblib.delayed(column_sum)(model, 0) for _ in range(10))
    pools = list(zcstore.joblib._pools.values())
    assert pools and all(p._e.store.stats().used < (40 << 20) for p in pools)


def test_the_fork_start_method_the_default_inherits_the_caller_s_arrays_with_no_copy():
    model = {"w": np.ones((1 << 18, 4), np.float32)}
    seen = []
    real = zcstore.Pool.share

    def watched(self, obj, *args, **kwargs):
        shared = real(self, obj, *args, **kwargs)
        seen.append(self._e.store.stats().used)
        return shared
    zcstore.Pool.share = watched
    try:
        with joblib.parallel_backend("zcstore", n_jobs=2):
            out = joblib.Parallel()(joblib.delayed(column_sum)(model, i % 4) for i in range(50))
    finally:
        zcstore.Pool.share = real
    assert out[0][:2] == (float(1 << 18), False) and len(out) == 50  # read-only in the task
    assert seen and max(seen) < (1 << 20)  # a name in the store, not the 4 MiB
    assert zcstore.joblib._pools == {} or all(
        k[1] != "fork" for k in zcstore.joblib._pools)  # forked per call, not kept
    with pytest.raises(ValueError, match="start_method"):
        ZcstoreBackend(start_method="forkserver")
