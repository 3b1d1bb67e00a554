"""Shared fixtures of the Python tests.

Every test gets a fresh shared-memory store and a watchdog: a test that
hangs (a lock never released, a child that never answers) is stopped with
its stack after WATCHDOG_S, never left to hold the suite. The session fails
if a zcstore segment of this run is left in /dev/shm.
"""
import faulthandler
import os
import sys

import pytest

import zcstore

WATCHDOG_S = 120
TAG = f"py{os.getpid()}"


def unique(tag="s", _n=[0]):
    _n[0] += 1
    return f"{TAG}-{tag}{_n[0]}"


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def store():
    with zcstore.Store.create(unique(), capacity=64 << 20) as s:
        yield s


def pytest_collection_modifyitems(config, items):
    """A test module that adapts another project's tests keeps only some of
    them: its `select(item)` answers True (keep), False (drop) or a string
    (skip, with that reason)."""
    keep = []
    for item in items:
        select = getattr(item.module, "select", None) if hasattr(item, "module") else None
        verdict = True if select is None else select(item)
        if verdict is False:
            config.hook.pytest_deselected(items=[item])
            continue
        if isinstance(verdict, str):
            item.add_marker(pytest.mark.skip(reason=verdict))
        keep.append(item)
    items[:] = keep


def pytest_sessionfinish(session, exitstatus):
    left = [n for n in os.listdir("/dev/shm") if n.startswith(f"zcstore.{os.getuid()}.{TAG}")]
    if left:
        print(f"\nsegments left behind in /dev/shm: {left}", file=sys.stderr)
        session.exitstatus = 1


class child:
    """A multiprocessing Process that is always reaped: daemonic, and killed
    on leaving the block if it still runs (a failed assertion must not leave
    a child that the interpreter then waits for at exit)."""

    def __init__(self, ctx, target, *args):
        self.process = ctx.Process(target=target, args=args, daemon=True)

    def __enter__(self):
        self.process.start()
        return self.process

    def __exit__(self, *exc):
        if self.process.is_alive():
            self.process.kill()
        self.process.join(30)
