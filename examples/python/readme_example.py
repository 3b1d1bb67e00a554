"""The Python example of README.md, run by the tests so it stays true."""
import concurrent.futures
import multiprocessing

import numpy as np

import zcstore


def score(ref, user):
    model = ref.get()                       # maps the store: no copy, whatever the size
    return float((model["items"] @ model["users"][user]).max())  # best item for the user


if __name__ == "__main__":
    with zcstore.Store.create(capacity=1 << 30) as store:
        model = {"items": np.random.rand(100_000, 64).astype(np.float32),
                 "users": np.random.rand(1_000, 64).astype(np.float32)}
        ref = store.put(model, move=True)   # one copy into the store; model's arrays emptied
        assert model["items"].size == 0 and model["users"].size == 0
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as workers:
            scores = list(workers.map(score, [ref] * 8, range(8)))
        print(f"{len(scores)} scores, model of {store.stats().used >> 20} MiB in the store")
