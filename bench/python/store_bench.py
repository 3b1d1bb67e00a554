"""Benchmarks of the Python store, each beside its raw baseline in the same run.

  put      a numpy array into the store, vs np.copyto into an already-touched
           array of the same size (the bandwidth floor of one copy)
  get      a model (dict of two float32 arrays) from 1 MiB to 1 GiB, vs
           pickle.loads of the same model pickled in-band
  many     get of a model of 20,000 small arrays (10 floats each), vs
           pickle.loads of it in-band and with its buffers out of band
           (numpy's own rebuild, what get did before zcstore._core.frombuffer)
  memory   peak memory of put, put(move=True), and of the hand-made way
           (multiprocessing.shared_memory + pickle protocol 5), as a multiple
           of the model, each in a fresh process
  shm      the hand-made way's put and get times beside zcstore's

Run:  make bench-python   (or PYTHONPATH=build/python python3 bench/python/store_bench.py)
Writes bench/results/python.json and prints one line per figure. Sizes with
--max-mib (default 1024).
"""
import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from multiprocessing import shared_memory

import numpy as np

import zcstore

MIB = 1 << 20


def model_of(total_bytes):
    n = total_bytes // 8  # two float32 arrays of total_bytes/2 each
    return {"item_factors": np.full(n, 1.0, np.float32),
            "user_factors": np.full(n, 2.0, np.float32), "rank": 64}


def best(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


# ------------------------------------------------------------------ put

def bench_put(size):
    src = np.full(size // 8, 1.5)
    dst = np.empty_like(src)
    dst[:] = 0  # touched: the baseline pays no first-touch fault
    copy_s, _ = best(lambda: np.copyto(dst, src), 5)
    with zcstore.Store.create(capacity=size + 64 * MIB) as store:
        store.delete(store.put(src))  # touch the extent once; later puts reuse it

        def put():
            store.delete(store.put(src))
        put_s, _ = best(put, 5)
    return {"bytes": size, "copyto_s": copy_s, "put_s": put_s,
            "put_gbps": size / put_s / 1e9, "copyto_gbps": size / copy_s / 1e9,
            "ratio_to_copyto": copy_s / put_s}


# ------------------------------------------------------------------ get

def bench_get(size, store):
    m = model_of(size)
    ref = store.put(m)
    reps = 2000
    get_s, get_med = best(lambda: store.get(ref), reps)
    stream = pickle.dumps(m, protocol=5)  # in-band: what a plain pickle pays
    loads_s, _ = best(lambda: pickle.loads(stream), 3 if size >= 256 * MIB else 20)
    del stream
    store.delete(ref)
    return {"bytes": size, "get_us": get_s * 1e6, "get_median_us": get_med * 1e6,
            "pickle_loads_s": loads_s, "speedup_over_pickle": loads_s / get_med}


def bench_many(count=20000, floats=10):
    m = {f"param{i}": np.full(floats, float(i)) for i in range(count)}
    with zcstore.Store.create(capacity=64 * MIB, backing="memfd") as store:
        ref = store.put(m)
        store.get(ref)  # the mapping's pages touched once
        get_s, get_med = best(lambda: store.get(ref), 21)
    stream = pickle.dumps(m, protocol=5)
    loads_s, loads_med = best(lambda: pickle.loads(stream), 21)
    buffers = []
    oob = pickle.dumps(m, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    oob_s, oob_med = best(lambda: pickle.loads(oob, buffers=views), 21)
    return {"arrays": count, "floats_each": floats, "get_ms": get_s * 1e3,
            "get_median_ms": get_med * 1e3, "pickle_loads_median_ms": loads_med * 1e3,
            "pickle_loads_out_of_band_median_ms": oob_med * 1e3,
            "get_us_per_array": get_med / count * 1e6,
            "ratio_to_pickle_loads": get_med / loads_med}


# ----------------------------------------------- the hand-made way: shm + pickle 5

def shm_put(m):
    buffers = []
    meta = pickle.dumps(m, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    seg = shared_memory.SharedMemory(create=True, size=max(1, sum(r.nbytes for r in raws)))
    offsets, off = [], 0
    for r in raws:
        seg.buf[off:off + r.nbytes] = r
        offsets.append((off, r.nbytes))
        off += r.nbytes
    return seg, meta, offsets


def shm_get(seg, meta, offsets):
    return pickle.loads(meta, buffers=[seg.buf[o:o + n] for o, n in offsets])


def bench_shm(size):
    m = model_of(size)
    with zcstore.Store.create(capacity=size + 64 * MIB) as store:
        t = time.perf_counter()
        store.delete(store.put(m))  # into never-touched pages, as each shm segment is
        first_put_s = time.perf_counter() - t

        def zput():
            store.delete(store.put(m))
        zput_s, _ = best(zput, 3)
        ref = store.put(m)
        zget_s, zget_med = best(lambda: store.get(ref), 1000)
    segs = []

    def sput():
        seg, meta, offsets = shm_put(m)
        segs.append((seg, meta, offsets))
    sput_s, _ = best(sput, 3)
    seg, meta, offsets = segs[-1]
    sget_s, sget_med = best(lambda: shm_get(seg, meta, offsets), 1000)
    for s, _, _ in segs:
        s.close()
        s.unlink()
    return {"bytes": size, "zcstore_first_put_s": first_put_s, "zcstore_put_s": zput_s, "shm_pickle_put_s": sput_s,
            "zcstore_get_us": zget_med * 1e6, "shm_pickle_get_us": sget_med * 1e6}


# --------------------------------------------------------------- memory

PEAK_CHILD = r"""
import sys, pickle, numpy as np, zcstore
sys.path.insert(0, sys.argv[3])
from store_bench import model_of, shm_put
size, how = int(sys.argv[1]), sys.argv[2]
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))
rss = lambda: status("VmRSS:")
store = zcstore.Store.create(capacity=size + (64 << 20)) if how != "shm" else None
before = rss()
m = model_of(size)
if how == "put":
    store.put(m)
elif how == "move":
    store.put(m, move=True)
else:
    seg, meta, offsets = shm_put(m)
# VmHWM, not ru_maxrss: after fork+exec the latter still holds the parent's peak.
peak = status("VmHWM:")
print((peak - before) / size)
if how == "shm":
    seg.close(); seg.unlink()
else:
    store.close()
"""


def bench_peak(size):
    out = {"bytes": size}
    here = os.path.dirname(os.path.abspath(__file__))
    for how in ("put", "move", "shm"):
        r = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(size), how, here],
                           capture_output=True, text=True, check=True, timeout=600)
        out[f"{how}_peak_x_model"] = float(r.stdout.strip())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-mib", type=int, default=1024)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "results",
                                                  "python.json"))
    args = ap.parse_args()
    top = args.max_mib * MIB
    results = {"machine": {"cpus": os.cpu_count(), "numpy": np.__version__,
                           "python": sys.version.split()[0]}}

    r = bench_put(top)
    results["put"] = r
    print(f"put {top >> 20} MiB: {r['put_gbps']:.2f} GB/s; np.copyto into a touched array "
          f"{r['copyto_gbps']:.2f} GB/s; ratio {r['ratio_to_copyto']:.2f}x")

    results["get"] = []
    with zcstore.Store.create(capacity=top + 64 * MIB) as store:
        size = MIB
        while size <= top:
            r = bench_get(size, store)
            results["get"].append(r)
            print(f"get model {size >> 20:5d} MiB: {r['get_median_us']:6.2f} us median "
                  f"({r['get_us']:.2f} best); pickle.loads {r['pickle_loads_s'] * 1e3:9.2f} ms "
                  f"({r['speedup_over_pickle']:.0f}x)")
            size *= 4 if size < top // 2 else 2

    r = bench_many()
    results["many_small_arrays"] = r
    print(f"get of {r['arrays']} arrays of {r['floats_each']} floats: {r['get_median_ms']:.1f} ms "
          f"median ({r['get_ms']:.1f} best, {r['get_us_per_array']:.2f} us an array); "
          f"pickle.loads in-band {r['pickle_loads_median_ms']:.1f} ms, out of band "
          f"{r['pickle_loads_out_of_band_median_ms']:.1f} ms; get/pickle.loads "
          f"{r['ratio_to_pickle_loads']:.2f}")

    r = bench_shm(top)
    results["vs_shared_memory"] = r
    print(f"vs shared_memory+pickle5 ({top >> 20} MiB model): put {r['zcstore_put_s'] * 1e3:.1f} ms "
          f"(first into fresh pages {r['zcstore_first_put_s'] * 1e3:.1f} ms) "
          f"vs {r['shm_pickle_put_s'] * 1e3:.1f} ms; get {r['zcstore_get_us']:.1f} us vs "
          f"{r['shm_pickle_get_us']:.1f} us")

    r = bench_peak(top)
    results["peak_memory"] = r
    print(f"peak memory ({top >> 20} MiB model), x the model: put {r['put_peak_x_model']:.2f}, "
          f"put(move=True) {r['move_peak_x_model']:.2f}, shared_memory+pickle5 "
          f"{r['shm_peak_x_model']:.2f}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
