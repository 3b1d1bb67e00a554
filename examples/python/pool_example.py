"""The zcstore.Pool example of README.md, run by the tests so it stays true."""
import numpy as np

import zcstore


def score(model, user):
    # `model` is the shared object itself: mapped once per worker, read-only, no copy.
    return float((model["items"] @ model["users"][user]).max())


class Fit:
    def __init__(self, data):
        self.data, self.n_evals = data, 0


def loss(x, fit):
    fit.n_evals += 1
    return float(((fit.data["y"] - x) ** 2).sum())


if __name__ == "__main__":
    with zcstore.Pool(2) as pool:                            # spawned Python workers
        items = pool.empty((100_000, 64), np.float32)        # built in place in the pool's store
        items[:] = np.random.default_rng(1).random(items.shape, np.float32)
        users = np.random.default_rng(2).random((1_000, 64), np.float32)
        model = pool.share({"items": items, "users": users})  # items adopted; users copied once
        scores = list(pool.map(score, [model] * 1_000, range(1_000)))
        first = pool.submit(score, model, 0)
        assert first.result() == scores[0]
        print(f"{len(scores)} scores from {pool.workers} workers; best {max(scores):.2f}")

    # map_with_context: each task's changes to its context come back.
    with zcstore.Pool(2) as pool:
        fits = [Fit(pool.share({"y": np.arange(1e6)})) for _ in range(2)]
        losses = pool.map_with_context(loss, [1.0, 2.0, 3.0, 4.0], fits * 2)
        assert fits[0].n_evals == 2  # fits[0].data is still the shared handle
        assert isinstance(fits[0].data, zcstore.Shared)
        print(f"losses {[f'{v:.3g}' for v in losses]}; evaluations {[f.n_evals for f in fits]}")
