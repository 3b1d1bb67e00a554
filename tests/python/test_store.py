"""zcstore.Store in one process: put/get, zero copy and pins, move, in place,
raw access, names, housekeeping, and every bad input the docs promise."""
import array
import fcntl
import gc
import os
import pickle
import re
import threading
import time

import numpy as np
import pytest

import zcstore
from conftest import unique


def model(n=1000):
    return {"W": np.arange(n * 64, dtype=np.float32).reshape(n, 64),
            "b": np.linspace(0, 1, n), "name": "m", "layers": [3, 4]}


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
        else:
            assert a[k] == b[k]


# ------------------------------------------------------------ put / get

def test_put_get_round_trip(store):
    m = model()
    ref = store.put(m)
    same(store.get(ref), m)
    assert store.get(ref)["W"].flags.c_contiguous


def test_arrays_are_read_only_views_of_the_mapping(store):
    ref = store.put(model())
    a, b = store.get(ref), store.get(ref)
    assert np.shares_memory(a["W"], b["W"]) and np.shares_memory(a["b"], b["b"])
    assert not a["W"].flags.writeable and not a["W"].flags.owndata
    with pytest.raises(ValueError):
        a["W"][0, 0] = 1.0
    with pytest.raises(ValueError):
        a["W"].flags.writeable = True


def test_get_copies_no_buffer_byte(store):
    # The metadata is the pickle stream without the arrays: tiny, whatever
    # the array size, and the arrays' bytes are the object's buffers.
    ref = store.put({"big": np.zeros(4 << 20, np.uint8)})
    info = {o.ref: o for o in store.list()}[ref]
    assert info.metadata_bytes < 512 and info.data_bytes == 4 << 20 and info.num_buffers == 1


def test_objects_without_buffers(store):
    obj = {"a": 1, "b": [1.5, "x", None], "c": (b"bytes", bytearray(b"ba"))}
    assert store.get(store.put(obj)) == obj
    assert store.get(store.put(None)) is None


def test_fortran_and_non_contiguous_arrays(store):
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    s = np.arange(20)[::2]
    got = store.get(store.put({"f": f, "s": s}))
    assert np.array_equal(got["f"], f) and got["f"].flags.f_contiguous
    assert np.array_equal(got["s"], s)


def _numpy_rebuild(buffer, dtype, shape, order):
    from numpy.core.numeric import _frombuffer
    return _frombuffer(buffer, dtype, shape, order)


def _same_array(ours, numpys):
    assert type(ours) is np.ndarray and ours.dtype == numpys.dtype
    assert ours.shape == numpys.shape and ours.strides == numpys.strides
    for flag in ("c_contiguous", "f_contiguous", "writeable", "aligned"):
        assert getattr(ours.flags, flag) == getattr(numpys.flags, flag), flag
    assert ours.tobytes() == numpys.tobytes()


@pytest.mark.parametrize("dtype", ["f8", ">f8", "i1", "u2", "?", "c16", "f2", "S5", "U3", "M8[ns]",
                                   "V4", [("a", "i4"), ("b", "f8")]])
@pytest.mark.parametrize("shape,order", [((), "C"), ((0,), "C"), ((3, 0), "F"), ((6,), "C"),
                                         ((2, 3), "C"), ((2, 3), "F"), ((2, 1, 3), "F")])
def test_frombuffer_makes_the_array_numpy_makes(dtype, shape, order):
    # zcstore._core.frombuffer stands in for numpy's _frombuffer when a
    # stream is unpickled by zcstore: same dtype, shape, strides, flags and
    # bytes, on read-only and writable, aligned and unaligned buffers.
    dt = np.dtype(dtype)
    n = dt.itemsize * int(np.prod(shape, dtype=np.int64))
    raw = bytes(range(256)) * (n // 256 + 2)
    for buffer in (raw[:n], bytearray(raw[:n]), memoryview(bytearray(raw[1:n + 1])),
                   memoryview(raw[:n]).toreadonly(), memoryview(bytearray(raw[:n + 1]))[1:]):
        ours = zcstore._core.frombuffer(buffer, dt, shape, order)
        _same_array(ours, _numpy_rebuild(buffer, dt, shape, order))


def test_frombuffer_gives_numpys_errors_and_odd_cases_to_numpy():
    fb = zcstore._core.frombuffer
    for args in [(b"x" * 12, np.dtype("f8"), (2,), "C"),    # size does not match
                 (b"x" * 16, np.dtype("f8"), (3,), "C"),
                 (b"x" * 16, np.dtype("f8"), (-2,), "C"),   # numpy reads as "the rest"
                 (b"x" * 16, np.dtype("f8"), (2, -1), "C"),
                 (b"x" * 16, np.dtype("f8"), (2,), "K"),    # not an order numpy pickles
                 (b"x" * 16, np.dtype("f8"), (2**62, 2**62), "C")]:
        try:
            numpys = _numpy_rebuild(*args)
        except (ValueError, TypeError) as e:
            with pytest.raises(type(e), match=re.escape(str(e))):
                fb(*args)
        else:
            _same_array(fb(*args), numpys)
    # A shape given as a list, a dtype given as a string or with a subarray
    # (numpy never pickles one: its arrays take the subarray into the shape):
    # numpy's answer.
    _same_array(fb(b"x" * 16, np.dtype("(2,)f4"), (2, 2), "C"),
                _numpy_rebuild(b"x" * 16, np.dtype("(2,)f4"), (2, 2), "C"))
    _same_array(fb(b"x" * 16, np.dtype("f8"), [2], "C"), _numpy_rebuild(b"x" * 16, np.dtype("f8"), [2], "C"))
    _same_array(fb(b"x" * 16, "i4", (4,), "C"), _numpy_rebuild(b"x" * 16, "i4", (4,), "C"))
    with pytest.raises(TypeError):
        fb(b"x" * 16, np.dtype("f8"))
    with pytest.raises(TypeError):
        fb(object(), np.dtype("f8"), (2,), "C")


def test_frombuffer_holds_a_bytearray_so_it_cannot_be_resized_under_the_array():
    ba = bytearray(b"\x01" * 64)
    a = zcstore._core.frombuffer(ba, np.dtype("u1"), (64,), "C")
    with pytest.raises(BufferError):
        ba.extend(b"x" * 4096)
    del a
    gc.collect()
    ba.extend(b"x")


def test_a_model_of_many_small_arrays_comes_back_whole(store):
    # get rebuilds each array in C (zcstore._core.frombuffer); every array of
    # every kind numpy pickles out of band comes back equal, read-only, and
    # a view of the store, and plain pickle.loads still reads the stream.
    rng = np.random.default_rng(7)
    m = {f"p{i}": rng.random(int(rng.integers(0, 40))) for i in range(3000)}
    m.update(f=np.asfortranarray(rng.random((5, 7))), s=np.array([b"ab", b"cd"]),
             be=np.arange(10, dtype=">i4"), z=np.zeros((0, 4)), scalar=np.array(3.5),
             rec=np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]))
    ref = store.put(m)
    got = store.get(ref)
    assert got.keys() == m.keys()
    for k, v in m.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k
        assert got[k].flags.f_contiguous == v.flags.f_contiguous and not got[k].flags.writeable
    assert np.shares_memory(got["p1"], store.get(ref)["p1"]) or m["p1"].size == 0
    metadata, buffers = store._h.get(*ref._id)
    plain = pickle.loads(metadata, buffers=buffers)
    assert all(np.array_equal(plain[k], v) for k, v in m.items())
    ref_id = ref
    del got, plain, buffers
    gc.collect()
    store.delete(ref_id)
    assert store.stats().deleted_pinned == 0


def bundled(store, ref):
    """Whether the object's stream makes its arrays with one _core.bundle call."""
    metadata, _ = store._h.get(*ref._id)
    return b"bundle" in bytes(metadata)


def test_many_plain_arrays_come_back_in_one_bundle(store):
    # A dict or list of 64 or more plain arrays is one _core.bundle call in
    # the stream (get takes half the time): every array comes back equal,
    # read-only, a view of the store, of its dtype and shape.
    rng = np.random.default_rng(3)
    kinds = [lambda i: rng.random(int(rng.integers(0, 40))),
             lambda i: np.arange(6, dtype=">i4").reshape(2, 3),
             lambda i: np.array(float(i)),                      # 0-d
             lambda i: np.zeros((0, 4), np.float32),            # no bytes
             lambda i: np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
             lambda i: np.array([b"ab", b"cd"])]
    m = {f"p{i}": kinds[i % len(kinds)](i) for i in range(600)}
    m[7] = np.ones(3)  # any keys
    as_list = list(m.values())
    for obj in (m, as_list, {"params": m, "n": 3}, (as_list, "x")):
        ref = store.put(obj)
        assert bundled(store, ref)
        got, again = store.get(ref), store.get(ref)
        if type(obj) is dict and "params" in obj:
            assert got["n"] == 3
            obj, got, again = obj["params"], got["params"], again["params"]
        elif type(obj) is tuple:
            assert got[1] == "x"
            obj, got, again = obj[0], got[0], again[0]
        assert type(got) is type(obj) and len(got) == len(obj)
        pairs = zip(obj.values(), got.values(), again.values()) if type(obj) is dict \
            else zip(obj, got, again)
        if type(obj) is dict:
            assert list(got) == list(obj)
        for v, g, a in pairs:
            assert g.dtype == v.dtype and g.shape == v.shape and np.array_equal(g, v)
            assert not g.flags.writeable and g.flags.c_contiguous
            assert v.size == 0 or np.shares_memory(g, a)
    # Plain pickle.loads reads the stream too (it imports zcstore._core).
    metadata, buffers = store._h.get(*store.put(m)._id)
    plain = pickle.loads(metadata, buffers=buffers)
    assert all(np.array_equal(plain[k], v) for k, v in m.items())


class Sub(np.ndarray):
    pass


def test_what_is_not_all_plain_arrays_is_pickled_as_numpy_does(store):
    base = {f"p{i}": np.full(3, float(i)) for i in range(100)}
    twice = np.ones(4)
    cases = {"fortran": np.asfortranarray(np.ones((3, 4))), "strided": np.ones(10)[::2],
             "subclass": np.ones(3).view(Sub), "objects": np.array([1, "a"], dtype=object),
             "not an array": 5}
    for name, odd in cases.items():
        m = dict(base, odd=odd)
        ref = store.put(m)
        assert not bundled(store, ref), name
        got = store.get(ref)
        assert type(got["odd"]) is type(odd) and np.array_equal(got["odd"], odd), name
    # An array twice stays one array, as pickle keeps it; few arrays: no bundle.
    got = store.get(store.put(dict(base, a=twice, b=twice)))
    assert got["a"] is got["b"]
    assert not bundled(store, store.put(list(base.values())[:63]))


class Mutator:
    """Changes `params` when it is pickled: before the bundle, in a tuple."""

    def __init__(self, params):
        self.params = params

    def __reduce__(self):
        self.params["p3"] = "no longer an array"
        return int, (1,)


def test_a_bundle_changed_while_pickled_is_pickled_as_it_then_is(store):
    params = {f"p{i}": np.full(3, float(i)) for i in range(100)}
    one, got = store.get(store.put((Mutator(params), params)))
    assert one == 1 and got["p3"] == "no longer an array" and float(got["p4"][0]) == 4.0


def test_move_empties_the_arrays_of_a_bundle(store):
    m = {"params": {f"p{i}": np.full(1000, float(i)) for i in range(100)},
         "big": np.ones(1_000_000)}
    kept = m["params"]["p5"]
    ref = store.put(m, move=True)
    assert bundled(store, ref)
    assert m["big"].shape == (0,)  # the top dict's shallow copy did not hold it
    assert all(v.shape == (0,) for k, v in m["params"].items() if k != "p5")
    assert kept.shape == (1000,)   # a variable names it: copied, left as it was
    got = store.get(ref)
    assert float(got["params"]["p7"][0]) == 7.0 and float(got["big"].sum()) == 1_000_000.0


class BadBundle:
    """Pickles as a _core.bundle call with the parts given."""

    def __init__(self, keys, dtypes, layout, arrays):
        self.parts = keys, dtypes, layout, arrays

    def __reduce__(self):
        keys, dtypes, layout, arrays = self.parts
        return zcstore._core.bundle, (keys, dtypes, layout, [pickle.PickleBuffer(a) for a in arrays])


class ClearsOnHash:
    """A key whose hash empties a list: the bundle's own list of buffers,
    which the stream shares with it."""

    def __init__(self, shared):
        self.shared = shared

    def __hash__(self):
        self.shared.clear()
        return 1

    def __eq__(self, other):
        return self is other


class ListSharingBundle:
    def __reduce__(self):
        buffers = [pickle.PickleBuffer(np.full(3, float(i))) for i in range(2)]
        keys = (ClearsOnHash(buffers), ClearsOnHash(buffers))
        layout = array.array("q", [0, 1, 3] * 2).tobytes()
        return zcstore._core.bundle, (keys, (np.dtype("f8"),), layout, buffers)


def test_a_bundle_walks_buffers_that_python_code_cannot_change(store):
    # A key's __hash__ runs Python code while the bundle fills its dict; a
    # stream can make that code empty the very list of buffers being walked.
    # The walk holds the buffers of its own: every array comes back whole.
    buffers = []
    stream = pickle.dumps(ListSharingBundle(), protocol=5, buffer_callback=buffers.append)
    got = store.get(store.put_raw(stream, [b.raw() for b in buffers]))
    assert sorted(float(v[0]) for v in got.values()) == [0.0, 1.0]


@pytest.mark.parametrize("keys,dtypes,layout,arrays,what", [
    (None, (np.dtype("f8"),), [0, 1, 4], [np.ones(3)], "shape does not match"),
    (None, (np.dtype("f8"),), [1, 1, 3], [np.ones(3)], "out of range"),
    (None, (np.dtype("f8"),), [0, 33] + [1] * 33, [np.ones(1)], "out of range"),
    (None, (np.dtype("f8"),), [0, 2, 3], [np.ones(3)], "short"),
    (None, (np.dtype("f8"),), [0, 1, 3, 0], [np.ones(3)], "longer"),
    (None, (np.dtype("f8"),), [0, 2, 1 << 62, 1 << 62], [np.ones(3)], "overflows"),
    (None, (np.dtype("f8"),), [0, 1, -3], [np.ones(3)], "overflows"),
    (("a", "b"), (np.dtype("f8"),), [0, 1, 3], [np.ones(3)], "keys and arrays"),
    (None, (np.dtype(object),), [0, 1, 3], [np.ones(3)], "not plain"),
    (None, ("f8",), [0, 1, 3], [np.ones(3)], "not plain"),
])
def test_a_corrupt_bundle_is_corrupt_not_garbage(store, keys, dtypes, layout, arrays, what):
    buffers = []
    stream = pickle.dumps(BadBundle(keys, dtypes, array.array("q", layout).tobytes(), arrays),
                          protocol=5, buffer_callback=buffers.append)
    ref = store.put_raw(stream, [b.raw() for b in buffers])
    with pytest.raises(zcstore.Corrupt, match=what):
        store.get(ref)


def test_picklebuffer_and_memoryview_go_out_of_band(store):
    data = bytearray(b"x" * 100_000)
    ref = store.put({"pb": pickle.PickleBuffer(data), "mv": memoryview(b"abc" * 1000).cast("B")})
    info = {o.ref: o for o in store.list()}[ref]
    assert info.num_buffers == 2 and info.data_bytes == 103_000
    got = store.get(ref)
    assert bytes(got["pb"]) == bytes(data) and got["mv"].readonly and bytes(got["mv"][:3]) == b"abc"
    mv2 = memoryview(np.arange(6, dtype=np.int32).reshape(2, 3))
    back = store.get(store.put(mv2))
    assert back.format == "i" and back.shape == (2, 3) and back.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_pin_outlives_delete_and_close():
    s = zcstore.Store.create(unique(), capacity=16 << 20)
    ref = s.put({"W": np.full(1 << 20, 7, np.int32)})
    w = s.get(ref)["W"]
    s.delete(ref)
    assert s.stats().deleted_pinned == 1
    s.close()
    assert int(w.sum()) == 7 << 20  # still mapped, still the same bytes
    del w
    gc.collect()


def test_pin_is_released_when_the_last_array_goes(store):
    ref = store.put(model())
    m = store.get(ref)
    w = m["W"]
    del m
    assert store.stats().pins == 1  # w keeps the object pinned
    store.delete(ref)
    del w
    gc.collect()
    st = store.stats()
    assert st.pins == 0 and st.deleted_pinned == 0 and st.used == 0


def test_contains_delete_and_not_found(store):
    ref = store.put(1)
    assert ref in store
    store.delete(ref)
    assert ref not in store
    with pytest.raises(zcstore.NotFound) as e:
        store.get(ref)
    assert isinstance(e.value, KeyError) and ref.id in str(e.value)
    with pytest.raises(zcstore.NotFound):
        store.delete(ref)


def test_a_ref_of_another_store_is_refused(store):
    with zcstore.Store.create(unique(), capacity=1 << 20) as other:
        ref = other.put(1)
        with pytest.raises(zcstore.InvalidArgument, match="belongs to store"):
            store.get(ref)
        with pytest.raises(zcstore.InvalidArgument):
            store.delete(ref)
        assert ref not in store
    with pytest.raises(zcstore.InvalidArgument, match="expected a zcstore.Ref"):
        store.get("0" * 32)


def test_ref_pickles_and_compares(store):
    ref = store.put([1, 2])
    back = pickle.loads(pickle.dumps(ref))
    assert back == ref and hash(back) == hash(ref) and back.id == ref.id
    assert back.store == store.name and len(ref.id) == 32
    assert back.get() == [1, 2]
    assert store.ref(ref.id) == ref
    with pytest.raises(zcstore.InvalidArgument):
        store.ref("xyz")


# ------------------------------------------------------------ move

def test_move_empties_arrays_only_the_object_holds(store):
    m = {"A": np.ones((1000, 500)), "B": np.arange(3_000_000, dtype=np.int64)}
    ref = store.put(m, move=True)
    assert m["A"].shape == (0, 500) and m["A"].dtype == np.float64
    assert m["B"].shape == (0,) and m["B"].dtype == np.int64
    got = store.get(ref)
    assert got["A"].shape == (1000, 500) and float(got["A"].sum()) == 500_000.0
    assert int(got["B"][-1]) == 2_999_999


def test_move_leaves_what_others_can_see(store):
    kept = np.ones(100_000)            # a variable still names it
    viewed = np.ones(100_000)
    view = viewed[10:20]               # a view of it lives
    exported = np.ones(100_000)
    mv = memoryview(exported)          # a memoryview of it lives
    m = {"kept": kept, "viewed": viewed, "exported": exported,
         "not_owner": np.ones(200_000)[::1][:100_000]}
    del viewed, exported
    ref = store.put(m, move=True)
    for k in ("kept", "viewed", "exported", "not_owner"):
        assert m[k].shape == (100_000,) and float(m[k].sum()) == 100_000.0, k
    assert float(view.sum()) == 10.0 and mv.nbytes == 800_000
    same(store.get(ref), m)


def test_move_a_top_level_array_is_a_copy(store):
    a = np.ones(1000)
    store.put(a, move=True)
    assert a.shape == (1000,)


def test_move_empties_a_bytearray_nothing_else_exports(store):
    ba = bytearray(b"y" * 5_000_000)
    ref = store.put({"blob": pickle.PickleBuffer(ba)}, move=True)
    assert len(ba) == 0
    assert bytes(memoryview(store.get(ref)["blob"])[:3]) == b"yyy"
    held = bytearray(b"z" * 1000)
    mv = memoryview(held)
    store.put({"blob": pickle.PickleBuffer(held)}, move=True)
    assert len(held) == 1000 and mv[0] == ord("z")


def test_move_into_a_full_store_loses_nothing():
    with zcstore.Store.create(unique(), capacity=1 << 20) as s:
        m = {"A": np.ones(1 << 20)}  # 8 MiB, the store holds 1
        with pytest.raises(zcstore.StoreFull) as e:
            s.put(m, move=True)
        assert isinstance(e.value, MemoryError) and "capacity" in str(e.value)
        assert m["A"].shape == (1 << 20,) and float(m["A"][-1]) == 1.0
        st = s.stats()
        assert st.objects == 0 and st.unsealed == 0 and st.used == 0


# ------------------------------------------------------------ in place

def test_empty_fill_and_put_copies_nothing(store):
    a = store.empty((1024, 256), np.float32)
    assert a.flags.writeable and a.shape == (1024, 256)
    a[:] = 2.5
    assert store.stats().unsealed == 1 and store.stats().objects == 0
    used = store.stats().used
    ref = store.put({"a": a, "tag": "in place"})
    st = store.stats()
    # One small object (the pickle stream) was added; the 1 MiB array was adopted.
    assert st.used - used <= 8192 and st.unsealed == 0
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1
    got = store.get(ref)
    assert float(got["a"].sum()) == 2.5 * 1024 * 256 and got["tag"] == "in place"


def test_in_place_array_stays_valid_after_its_object_goes(store):
    a = store.empty(1 << 16, np.int64)
    a[:] = 9
    ref = store.put({"a": a})
    store.delete(ref)
    filler = store.put(np.zeros(1 << 16, np.int64))  # may not reuse a's pages: a pins them
    assert int(a.sum()) == 9 << 16
    del a
    gc.collect()
    store.delete(filler)
    assert store.stats().used == 0


def test_in_place_with_a_view_alive_is_copied(store):
    a = store.empty(1000, np.float64)
    a[:] = 1
    v = a[:10]
    used = store.stats().used
    store.put({"a": a})
    assert store.stats().used - used >= 8000  # copied: a view could still write it
    assert a.flags.writeable and v.flags.writeable


def test_an_unput_in_place_array_frees_its_space(store):
    a = store.empty((1000, 1000), np.float64)
    assert store.stats().used >= 8_000_000
    del a
    gc.collect()
    assert store.stats().used == 0 and store.stats().unsealed == 0


def test_in_place_into_a_full_store(store):
    with pytest.raises(zcstore.StoreFull):
        store.empty(1 << 30, np.uint8)
    with pytest.raises(zcstore.InvalidArgument):
        store.empty((-1, 3))


# ------------------------------------------------------------ raw access

def test_raw_round_trip(store):
    x = np.arange(24, dtype=np.float32)
    ref = store.put_raw(b"header", [x, b"tail"])
    raw = store.get_raw(ref)
    assert raw.metadata == b"header" and len(raw) == 2
    assert [len(b) for b in raw.buffers] == [96, 4] and raw.buffers[0].readonly
    a = raw.array(0, np.float32, (4, 6))
    assert a[3, 5] == 23 and not a.flags.writeable
    assert np.shares_memory(a, store.get_raw(ref).array(0, np.float32))
    ref2 = store.put_raw(b"", [], id="00112233445566778899aabbccddeeff")
    assert ref2.id == "00112233445566778899aabbccddeeff"
    with pytest.raises(zcstore.AlreadyExists):
        store.put_raw(b"", [], id=ref2.id)
    with pytest.raises(zcstore.InvalidArgument):
        store.put_raw(b"", [], id="nothex")


def test_raw_wrong_dtype_or_shape(store):
    raw = store.get_raw(store.put_raw(b"m", [np.arange(10, dtype=np.int16)]))
    with pytest.raises(zcstore.InvalidArgument, match="whole number"):
        raw.array(0, np.float64)
    with pytest.raises(zcstore.InvalidArgument, match="needs"):
        raw.array(0, np.int16, (3, 4))
    with pytest.raises(zcstore.InvalidArgument, match="out of range"):
        raw.array(1, np.int16)
    with pytest.raises(ValueError):
        raw.array(0, np.int16, (-2, -5))
    assert raw.array(0, "<i2", (2, 5)).shape == (2, 5)


def test_get_of_a_raw_object_is_a_type_mismatch(store):
    ref = store.put_raw(b"not a pickle", [])
    with pytest.raises(zcstore.TypeMismatch, match="get_raw") as e:
        store.get(ref)
    assert isinstance(e.value, TypeError)


# ------------------------------------------------------------ names, stats

def test_names(store):
    a, b = store.put("a"), store.put("b")
    store.bind("model", a)
    with pytest.raises(zcstore.AlreadyExists):
        store.bind("model", b)
    assert store.lookup("model") == a and store.get(store.lookup("model")) == "a"
    store.bind("other", b)
    assert store.names() == {"model": a, "other": b}
    store.unbind("model")
    with pytest.raises(zcstore.NotFound):
        store.lookup("model")
    with pytest.raises(zcstore.NotFound):
        store.unbind("model")
    with pytest.raises(zcstore.InvalidArgument):
        store.bind("x" * 100, b)


def test_stats_and_list(store):
    ref = store.put(model())
    st = store.stats()
    assert isinstance(st, zcstore.StoreStats)
    assert st.objects == 1 and st.clients == 1 and st.capacity == 64 << 20 and st.used > 0
    (info,) = store.list()
    assert info.ref == ref and info.state == "sealed" and info.num_buffers == 2
    assert info.sealed_unix_ns > 0 and info.extent_bytes >= info.data_bytes


def test_verify_with_checksums():
    with zcstore.Store.create(unique(), capacity=8 << 20, checksums=True) as s:
        ref = s.put(model())
        s.verify(ref)
        s.verify()
    with zcstore.Store.create(unique(), capacity=1 << 20) as s:
        with pytest.raises(zcstore.InvalidArgument):
            s.verify(s.put(1))


# ------------------------------------------------------------ backings

def test_file_store_survives_and_reopens_read_only(tmp_path):
    path = str(tmp_path / "model.zcs")
    with zcstore.Store.create(path, backing="file", capacity=8 << 20) as s:
        assert s.backing == "file"
        ref = s.put(model())
    with zcstore.Store.open(path, read_only=True) as r:
        assert r.read_only and r.backing == "file"
        same(r.get(r.ref(ref.id)), model())
        with pytest.raises(zcstore.PermissionDenied) as e:
            r.put(1)
        assert isinstance(e.value, PermissionError)
    zcstore.Store.remove(path)
    with pytest.raises(zcstore.NotFound):
        zcstore.Store.open(path)


def test_memfd_store_by_descriptor():
    with zcstore.Store.create("label", backing="memfd", capacity=1 << 20) as s:
        ref = s.put({"x": np.arange(5)})
        with zcstore.Store.open_fd(s.fd, read_only=True) as r:
            assert r.backing == "memfd"
            assert r.get(r.ref(ref.id))["x"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(zcstore.InvalidArgument):
        zcstore.Store.open("label", backing="memfd")


def test_persistent_store_until_removed():
    name = unique("persist")
    with zcstore.Store.create(name, capacity=1 << 20, persistent=True) as s:
        ref = s.put("kept")
    assert name in zcstore.Store.list_stores()
    with zcstore.Store.open(name) as s:
        assert s.get(s.ref(ref.id)) == "kept" and not s.created
    zcstore.Store.remove(name)
    assert name not in zcstore.Store.list_stores()


# ------------------------------------------------------------ bad input

def test_create_errors(store):
    with pytest.raises(zcstore.AlreadyExists):
        zcstore.Store.create(store.name)
    with pytest.raises(zcstore.InvalidArgument):
        zcstore.Store.create("bad name!")
    with pytest.raises(zcstore.InvalidArgument, match="backing"):
        zcstore.Store.create(unique(), backing="tape")
    with pytest.raises(zcstore.NotFound):
        zcstore.Store.open(unique("absent"))


def test_unpicklable_object_leaves_nothing(store):
    before = store.stats()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        store.put({"ok": np.ones(10), "bad": lambda: 1})
    with pytest.raises(TypeError):
        store.put(threading.Lock())
    after = store.stats()
    assert (after.objects, after.unsealed, after.used) == (before.objects, 0, before.used)


def test_too_full_leaves_nothing():
    with zcstore.Store.create(unique(), capacity=1 << 20) as s:
        s.put(np.ones(10_000))
        before = s.stats()
        with pytest.raises(zcstore.StoreFull):
            s.put([np.ones(100_000), np.ones(100_000)])
        after = s.stats()
        assert (after.objects, after.unsealed, after.used) == (1, 0, before.used)


def test_closed_store(store):
    ref = store.put(1)
    store.close()
    store.close()  # idempotent
    assert store.closed and "closed" in repr(store)
    for call in (lambda: store.get(ref), lambda: store.put(2), lambda: store.stats(),
                 lambda: store.delete(ref), lambda: store.empty(3), lambda: store.list()):
        with pytest.raises(zcstore.InvalidArgument, match="closed"):
            call()


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.zcs"
    junk.write_bytes(os.urandom(64 << 10))
    junk.chmod(0o600)
    with pytest.raises(zcstore.Corrupt):
        zcstore.Store.open(str(junk))
    path = str(tmp_path / "trunc.zcs")
    with zcstore.Store.create(path, backing="file", capacity=1 << 20) as s:
        s.put(np.ones(1000))
    os.truncate(path, 4096)
    with pytest.raises(zcstore.Corrupt):
        zcstore.Store.open(path)
    shared = tmp_path / "shared.zcs"
    shared.write_bytes(b"\0" * 8192)
    shared.chmod(0o666)
    with pytest.raises(zcstore.PermissionDenied):
        zcstore.Store.open(str(shared))


def test_corrupt_metadata_is_detected_with_checksums(store, tmp_path):
    # A file store always has checksums: flip a byte of the pickle stream
    # on disk, and get() reports Corrupt instead of unpickling garbage.
    path = str(tmp_path / "flip.zcs")
    payload = "marker-" + "q" * 50
    with zcstore.Store.create(path, backing="file", capacity=1 << 20) as s:
        ref = s.put({"p": payload})
    data = bytearray(open(path, "rb").read())
    at = data.find(b"marker-")
    assert at > 0
    data[at] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(data)
    with zcstore.Store.open(path, read_only=True) as r:
        with pytest.raises(zcstore.Corrupt, match="checksum"):
            r.get(r.ref(ref.id))


def test_error_classes():
    assert issubclass(zcstore.NotFound, KeyError)
    assert issubclass(zcstore.StoreFull, MemoryError)
    assert issubclass(zcstore.InvalidArgument, ValueError)
    assert issubclass(zcstore.Timeout, TimeoutError)
    assert issubclass(zcstore.PermissionDenied, PermissionError)
    codes = {c.code for c in zcstore.errors.BY_CODE.values()}
    assert codes == set(range(1, 15))  # every code but Misuse (15), which only the C ABI returns
    for c in zcstore.errors.BY_CODE.values():
        assert issubclass(c, zcstore.Error)


# ------------------------------------------------------------ the GIL

def test_the_gil_is_released_while_waiting_for_a_lock(store):
    # Hold the store file's open lock from another open file description:
    # Store.open in a thread waits for it; this thread must keep running.
    path = f"/dev/shm/zcstore.{os.getuid()}.{store.name}"
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    result = {}

    def opener():
        try:
            with zcstore.Store.open(store.name, lock_timeout=30):
                result["ok"] = True
        except Exception as e:  # pragma: no cover - reported below
            result["error"] = e

    t = threading.Thread(target=opener)
    started = time.monotonic()
    t.start()
    t.join(0.3)
    assert t.is_alive() and time.monotonic() - started < 5, "opener holds the GIL or did not wait"
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    t.join(30)
    assert result == {"ok": True}


def test_a_truncated_pickle_stream_is_corrupt(store):
    # Written raw, as a buggy writer in another runtime could: a protocol-5
    # header and then nothing sensible.
    for stream in (b"\x80\x05", b"\x80\x05\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c"):
        with pytest.raises(zcstore.Corrupt, match="does not unpickle"):
            store.get(store.put_raw(stream, []))


def test_the_pin_limit_has_its_own_error(tmp_path):
    with zcstore.Store.create(unique("pins"), capacity=8 << 20, max_pins_per_client=2) as s:
        refs = [s.put(np.arange(10) + i) for i in range(3)]
        held = [s.get(refs[0]), s.get(refs[1])]
        with pytest.raises(zcstore.TooManyPins, match="max_pins_per_client") as e:
            s.get(refs[2])
        assert not isinstance(e.value, zcstore.StoreFull)  # not a full store: another fix
        del held
        assert list(s.get(refs[2])) == list(range(2, 12))


def test_names_are_text(store):
    # Bind takes UTF-8 only (tested from C with bytes Python cannot send);
    # a name out of the store's tables that is not UTF-8 would come as bytes.
    ref = store.put(1)
    store.bind("caf\u00e9", ref)
    assert list(store.names()) == ["caf\u00e9"]


@pytest.mark.parametrize("make", [
    lambda: memoryview(b""),
    lambda: memoryview(np.zeros((0, 3))),
    lambda: memoryview(np.arange(4, dtype=">i4")),
    lambda: memoryview(np.arange(4, dtype=np.complex128)),
    lambda: memoryview(np.arange(4, dtype=np.float16)),
    lambda: memoryview(np.arange(6.0).reshape(2, 3)),
], ids=["empty", "empty-2d", "big-endian", "complex", "float16", "2d"])
def test_every_memoryview_put_accepts_comes_back(store, make):
    view = make()
    got = store.get(store.put(view))
    assert (got.format, got.shape, got.readonly) == (view.format, view.shape, True)
    assert got.tobytes() == view.tobytes()


def test_an_adopted_array_cannot_be_made_writable_again(store):
    a = store.empty((1000,), np.float64)
    a[:] = 7
    ref = store.put(a)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a.flags.writeable = True  # the object is sealed: every reader sees these pages
    assert store.get(ref)[0] == 7.0


def test_an_adopted_array_keeps_its_object_even_if_another_handle_deletes_it(store):
    a = store.empty((1 << 16,), np.float64)
    a[:] = 7
    ref = store.put(a)
    with zcstore.Store.open(store.name) as other:  # another handle, as another process would
        other.delete(other.ref(ref.id))
        for _ in range(8):  # reuse the space: none of it may be the array's
            other.put(np.full(1 << 16, 9.0))
    assert (a == 7.0).all()


def test_an_adoption_past_the_pin_limit_fails_and_loses_nothing():
    with zcstore.Store.create(unique("adopt"), capacity=16 << 20, max_pins_per_client=1) as s:
        held = s.get(s.put(np.arange(3)))  # the one pin this handle may hold
        a = s.empty((1000,), np.float64)
        a[:] = 5
        with pytest.raises(zcstore.TooManyPins):
            s.put(a)
        assert a.flags.writeable and (a == 5.0).all()  # still the caller's, unsealed
        del held
        ref = s.put(a)  # and adoptable once a pin is free
        assert not a.flags.writeable and s.get(ref)[0] == 5.0


SMALL_SHM_SCRIPT = r"""
import os, re, warnings, numpy as np, zcstore

def score(model, i):
    return float(model["w"][i * 1000:(i + 1) * 1000].sum())

if __name__ == "__main__":
    big = 256 << 20
    # /dev/shm is 64 MiB here: a 256 MiB shm store is refused at once, with the numbers.
    try:
        zcstore.Store.create("small-shm", capacity=big)
        print("shm: created")
    except zcstore.StoreFull as e:
        print("shm: StoreFull", bool(re.search(r"it needs 2[56]\d\.\d MiB", str(e))),
              "free of 64.0 MiB" in str(e))
    # backing="auto": a file store on disk instead, with one warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = zcstore.Store.create("small-shm", capacity=big, backing="auto")
    print("auto:", s.backing, len(caught), caught[0].category.__name__)
    a = np.arange(100 << 17, dtype=np.float64)  # 100 MiB: more than /dev/shm has
    print("auto put/get:", bool((s.get(s.put(a)) == a).all()))
    directory = os.path.dirname(s.name)
    s.close()
    print("auto cleaned:", not os.path.exists(directory))
    # The pool's store is a memfd, which /dev/shm's size does not limit.
    w = np.arange(big // 4, dtype=np.float32)
    with zcstore.Pool(2) as pool:
        model = pool.share({"w": w})
        got = list(pool.map(score, [model] * 4, range(4)))
    print("pool:", got == [float(w[i * 1000:(i + 1) * 1000].sum()) for i in range(4)])
"""


def test_a_small_dev_shm_is_said_at_once_and_auto_falls_back_to_a_file(tmp_path):
    import shutil
    import subprocess
    import sys
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    script = tmp_path / "small_shm.py"
    script.write_text(SMALL_SHM_SCRIPT)
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --make-rprivate / && mount -t tmpfs -o size=64m tmpfs /dev/shm && "
         f"exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=120)
    if r.returncode != 0 and ("unshare" in r.stderr or "mount" in r.stderr):
        pytest.skip(f"no private mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "shm: StoreFull True True",
        "auto: file 1 RuntimeWarning",
        "auto put/get: True",
        "auto cleaned: True",
        "pool: True",
    ], r.stdout + r.stderr
