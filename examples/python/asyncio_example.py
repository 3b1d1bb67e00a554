"""zcstore.Pool from asyncio (docs/python.md, asyncio); run by the tests."""
import asyncio

import numpy as np

import zcstore


def score(model, user):
    return float((model["items"] @ model["users"][user]).max())


async def main():
    rng = np.random.default_rng(1)
    with zcstore.Pool(2) as pool:
        model = pool.share({"items": rng.random((20_000, 32), np.float32),
                            "users": rng.random((500, 32), np.float32)})
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(pool, score, model, 0)   # one call
        again = await asyncio.wrap_future(pool.submit(score, model, 0))
        scores = [s async for s in pool.amap(score, [model] * 500, range(500))]
        assert scores[0] == first == again
        print(f"{len(scores)} scores through asyncio; best {max(scores):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
