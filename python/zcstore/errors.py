"""zcstore's exceptions: one per status code, all under zcstore.Error.

Each also derives from the built-in exception a Python caller would reach for
first, so ``except KeyError`` catches a missing object and ``except
MemoryError`` a full store. ``str(e)`` is the library's message: what went
wrong, naming the store or object, and what to do.
"""
from concurrent.futures.process import BrokenProcessPool


class Error(Exception):
    """Base of every zcstore error. ``code`` is the C++ StatusCode value."""

    code = None

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class NotFound(Error, KeyError):
    """No such object, name, store or file."""
    code = 1


class AlreadyExists(Error):
    """An object id, name or store name is taken."""
    code = 2


class StoreFull(Error, MemoryError):
    """No room: the store's capacity or tables, /dev/shm or the disk."""
    code = 3


class Corrupt(Error):
    """Bytes read from shared memory or a file fail a check."""
    code = 4


class TypeMismatch(Error, TypeError):
    """Data of another kind than the one asked for."""
    code = 5


class VersionMismatch(Error):
    """A format version this build cannot read."""
    code = 6


class PermissionDenied(Error, PermissionError):
    """The OS refused, or a read-only store was asked to write."""
    code = 7


class WorkerCrashed(Error, BrokenProcessPool):
    """A worker process died while running a task. A BrokenProcessPool,
    so that code written for ProcessPoolExecutor catches it; but only that
    task failed: the pool replaced the worker and goes on."""
    code = 8


class Timeout(Error, TimeoutError):
    """A deadline passed (for example, another process held a store's lock)."""
    code = 9


class Cancelled(Error):
    """The caller cancelled the work."""
    code = 10


class InvalidArgument(Error, ValueError):
    """An argument that can never work; also any use of a closed store."""
    code = 11


class IOError(Error, OSError):  # noqa: A001 - the name of the C++ code
    """Any other OS error; the message holds the OS's text."""
    code = 12


class TaskFailed(Error):
    """A task raised: the message names the exception."""
    code = 13


class TooManyPins(Error):
    """This handle already pins max_pins_per_client objects: release some
    (drop views, arrays and objects got from the store), or create the store
    with a larger max_pins_per_client."""
    code = 14


BY_CODE = {cls.code: cls for cls in (
    NotFound, AlreadyExists, StoreFull, Corrupt, TypeMismatch, VersionMismatch,
    PermissionDenied, WorkerCrashed, Timeout, Cancelled, InvalidArgument, IOError,
    TaskFailed, TooManyPins)}
