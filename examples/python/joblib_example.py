"""joblib's Parallel on zcstore (docs/python.md, joblib); run by the tests."""
import joblib
import numpy as np

import zcstore.joblib  # noqa: F401  (registers the "zcstore" backend)


def score(model, user):
    return float((model["items"] @ model["users"][user]).max())


if __name__ == "__main__":
    rng = np.random.default_rng(1)
    model = {"items": rng.random((100_000, 32), np.float32),   # 12 MiB: shared, not pickled
             "users": rng.random((1_000, 32), np.float32)}
    with joblib.parallel_backend("zcstore", n_jobs=2):         # forked workers inherit `model`
        scores = joblib.Parallel()(joblib.delayed(score)(model, u) for u in range(1_000))
    with joblib.parallel_backend("zcstore", n_jobs=2, start_method="spawn"):  # via the store
        again = joblib.Parallel()(joblib.delayed(score)(model, u) for u in range(1_000))
    assert scores == again
    print(f"{len(scores)} scores through joblib; best {max(scores):.2f}")
