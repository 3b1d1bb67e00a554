"""zcstore: share large read-only objects between processes, one copy in memory.

A store is a shared-memory segment (or a file, or a memfd) that many
processes map. ``put`` pickles an object with protocol 5: the pickle stream
becomes the object's metadata and every out-of-band buffer (numpy arrays,
``pickle.PickleBuffer``, memoryviews) is copied once, straight into the
store. ``get`` gives the object back with every such array a read-only view
into the mapping: no copy, whatever the size. The pin on the object lives as
long as any array or memoryview from it does.

    >>> import numpy as np, zcstore
    >>> with zcstore.Store.create(capacity=64 << 20) as store:
    ...     ref = store.put({"W": np.ones((1000, 100), np.float32), "lr": 0.1})
    ...     model = store.get(ref)
    ...     model["W"].flags.writeable, float(model["W"].sum()), model["lr"]
    (False, 100000.0, 0.1)

A ``Ref`` pickles to (store, id): send it to another process (through
multiprocessing, concurrent.futures or joblib) and ``ref.get()`` there maps
the same pages. docs/python.md has the whole story.
"""

import array
import io
import math
import os
import pickle
import shutil
import struct
import sys
import tempfile
import warnings
import weakref
from dataclasses import dataclass

from . import _core
from .errors import (AlreadyExists, Cancelled, Corrupt, Error, InvalidArgument,
                     IOError, NotFound, PermissionDenied, StoreFull, TaskFailed,
                     Timeout, TooManyPins, TypeMismatch, VersionMismatch, WorkerCrashed,
                     BY_CODE)

__all__ = [
    "Store", "Ref", "Pool", "Future", "Shared", "RawObject", "StoreStats", "ObjectInfo",
    "Error", "NotFound", "AlreadyExists", "StoreFull", "Corrupt", "TypeMismatch",
    "VersionMismatch", "PermissionDenied", "WorkerCrashed", "Timeout", "Cancelled",
    "InvalidArgument", "TaskFailed", "TooManyPins",
]
__version__ = _core.version

_core.set_error_classes(dict(BY_CODE))

_BACKINGS = {"shm": 1, "file": 2, "memfd": 3}
_BACKING_NAMES = {v: k for k, v in _BACKINGS.items()}
_PICKLE5 = b"\x80\x05"


def _backing_code(backing):
    try:
        return _BACKINGS[backing]
    except (KeyError, TypeError):
        raise InvalidArgument(
            f"backing must be 'shm', 'file' or 'memfd', not {backing!r}") from None


# ---------------------------------------------------------------- refs

class Ref:
    """The name of one object in one store: (store, id).

    A Ref is a small value: compare, hash and pickle it freely. Pickled, it
    carries the store's name and identity, so the process that unpickles it
    can call ``ref.get()`` and map the same object without a copy.
    """

    __slots__ = ("_name", "_backing", "_shm_dir", "_key", "_id")

    def __init__(self, name, backing, shm_dir, key, id):
        self._name = name        # store name (path for file stores, label for memfd)
        self._backing = backing  # 'shm', 'file' or 'memfd'
        self._shm_dir = shm_dir
        self._key = key          # (backing, st_dev, st_ino) of the store file
        self._id = id            # (hi, lo)

    @property
    def id(self):
        """The object's id: 32 lower-case hex digits."""
        return f"{self._id[0]:016x}{self._id[1]:016x}"

    @property
    def store(self):
        """The name of the store the object lives in."""
        return self._name

    def get(self):
        """The object, from this process's handle on its store.

        Uses a handle this process has open on the store, else opens one
        read-only and keeps it (``zcstore.close_attached()`` closes those).
        Raises NotFound if the object was deleted, or if the store is gone
        or was replaced by another of the same name; a memfd store must have
        been opened in this process (``Store.open_fd``) or inherited by fork.
        """
        return _resolve(self).get(self)

    def __reduce__(self):
        return (Ref, (self._name, self._backing, self._shm_dir, self._key, self._id))

    def __eq__(self, other):
        return isinstance(other, Ref) and (self._key, self._id) == (other._key, other._id)

    def __hash__(self):
        return hash((self._key, self._id))

    def __repr__(self):
        return f"zcstore.Ref(store={self._name!r}, id={self.id!r})"


# Handles of this process by store identity (weakly), and the ones opened
# for refs (strongly, until close_attached or exit). A forked child starts
# with neither: the parent's handles are not its own (see _after_fork).
_live = {}
_attached = {}
_inherited_fds = {}


def _after_fork():
    # A memfd store can only be reached through its descriptor, which the
    # child inherited: remember it before forgetting the parent's handles.
    for key, wr in list(_live.items()):
        s = wr()
        if s is not None and not s.closed and s._backing == "memfd":
            _inherited_fds[key] = s._fd
    for key, s in _attached.items():
        if not s.closed and s._backing == "memfd":
            _inherited_fds[key] = s._fd
    _live.clear()
    # The inherited objects refuse every call in the child, and dropping
    # them releases nothing of the parent's.
    _attached.clear()


os.register_at_fork(after_in_child=_after_fork)


def _resolve(ref):
    wr = _live.get(ref._key)
    s = wr() if wr is not None else None
    if s is not None and not s.closed:
        return s
    s = _attached.get(ref._key)
    if s is not None and not s.closed:
        return s
    if ref._backing == "memfd":
        fd = _inherited_fds.get(ref._key)
        if fd is None:
            raise NotFound(
                f"memfd store '{ref._name}' is not open in this process: open it with "
                "zcstore.Store.open_fd(fd) on the descriptor its creator handed down")
        s = Store.open_fd(fd, read_only=True)
    else:
        s = Store.open(ref._name, read_only=True, backing=ref._backing, shm_dir=ref._shm_dir)
    if s._key != ref._key:
        s.close()
        raise NotFound(f"store '{ref._name}' was replaced since {ref!r} was made: "
                       "its object is gone")
    _attached[ref._key] = s
    return s


def close_attached():
    """Closes the handles this process opened to resolve refs."""
    for s in list(_attached.values()):
        s.close()
    _attached.clear()


# ------------------------------------------------------------- pickling

def _rebuild_memoryview(buffer, fmt, shape, dtype=None):
    raw = memoryview(buffer).cast("B")
    if dtype is None:
        return raw.cast(fmt, shape)
    # A format or shape memoryview.cast refuses (big-endian, complex,
    # float16, a zero in the shape): numpy exports it, read-only, zero-copy.
    import numpy as np
    view = memoryview(np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape))
    return view


def _castable(fmt, shape):
    """Whether memoryview.cast can make this view again from bytes."""
    try:
        memoryview(bytearray(struct.calcsize(fmt) * max(1, math.prod(shape)))).cast(fmt, shape)
        return 0 not in shape
    except (TypeError, ValueError, struct.error):
        return False


def _reduce_memoryview(obj):
    """Protocol 5 hands numpy arrays and PickleBuffers out of band by itself;
    a memoryview it cannot pickle at all. Here a C-contiguous one goes out
    of band too, and comes back as a read-only memoryview of the mapping."""
    if not obj.c_contiguous:
        return NotImplemented
    args = (pickle.PickleBuffer(obj), obj.format, obj.shape)
    if not _castable(obj.format, obj.shape):
        import numpy as np
        args += (np.asarray(obj).dtype.str,)
    return _rebuild_memoryview, args


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        return _reduce_memoryview(obj) if type(obj) is memoryview else NotImplemented


class _Unpickler(pickle.Unpickler):
    # numpy rebuilds each out-of-band array with numpy.core.numeric._frombuffer,
    # two calls through Python; _core.frombuffer makes the same array in one C
    # call (python/src/views.cc). The stream itself stays numpy's.
    def find_class(self, module, name):
        if name == "_frombuffer" and module in _NUMPY_NUMERIC:
            return _core.frombuffer
        return super().find_class(module, name)


_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")


# Bundles. numpy pickles each array as a call of its own, about 14 opcodes
# and a call through the unpickler: for a model of 20,000 small arrays, half
# of get's time. A dict or list of at least _BUNDLE_AT_LEAST plain arrays is
# pickled instead as one call of _core.bundle (python/src/views.cc), which
# makes all its arrays, each still over its own out-of-band buffer (zero
# copy, emptied by move=True as before). The C pickler calls no hook for a
# dict or list (reducer_override is skipped for them, and persistent_id,
# which is not, slows all pickling), so _dumps swaps the containers for
# _Bundle wrappers before pickling: the object itself, and the values of a
# top-level dict, list or tuple (one level: a walk of the whole object
# would cost object-heavy data what persistent_id does).
_BUNDLE_AT_LEAST = 64


class _Bundle:
    """A dict or list of plain arrays, pickled as one _core.bundle call."""
    __slots__ = ("container",)

    def __init__(self, container):
        self.container = container

    def __reduce__(self):
        c = self.container
        # Checked again now: what pickled before it (a __reduce__ of the
        # user's) may have changed it. Not plain: as pickle pickles a dict
        # or list.
        layout = _bundle_layout(c) if _bundleable(c) else None
        if layout is None:
            return (dict, (), None, None, iter(c.items())) if type(c) is dict \
                else (list, (), None, iter(c))
        keys = tuple(c) if type(c) is dict else None
        values = c.values() if type(c) is dict else c
        # Made here, not before: a PickleBuffer that outlived pickling would
        # keep move=True from emptying its array.
        return _core.bundle, (keys, *layout, [pickle.PickleBuffer(v) for v in values])


def _bundle_layout(c):
    """(dtypes, layout) for _core.bundle when c's values are all plain arrays:
    C-contiguous, of a dtype without Python objects (the rest _bundleable
    has checked). Else None."""
    dtypes, index, layout = [], {}, array.array("q")
    for v in (c.values() if type(c) is dict else c):
        if not v.flags.c_contiguous:
            return None
        d = v.dtype
        i = index.get(id(d))
        if i is None:
            if d.hasobject or d.subdtype is not None:
                return None
            i = index[id(d)] = len(dtypes)
            dtypes.append(d)
        layout.extend((i, v.ndim, *v.shape))
    return tuple(dtypes), layout.tobytes()


def _bundleable(obj):
    """Whether obj, an exact dict or list, may be a bundle: at least
    _BUNDLE_AT_LEAST values, each a numpy.ndarray itself, none twice (pickle
    would keep them one). Checked at C speed; the rest when it is pickled."""
    if len(obj) < _BUNDLE_AT_LEAST:
        return False
    np = sys.modules.get("numpy")
    if np is None:
        return False
    values = obj.values() if type(obj) is dict else obj
    if type(next(iter(values))) is not np.ndarray:  # most containers: no scan at all
        return False
    return set(map(type, values)) == {np.ndarray} and len(set(map(id, values))) == len(obj)


def _with_bundles(obj):
    """obj with its bundles swapped in (see _BUNDLE_AT_LEAST): obj itself, or
    a shallow copy of a top-level dict, list or tuple whose values are."""
    t = type(obj)
    if (t is dict or t is list) and _bundleable(obj):
        return _Bundle(obj)
    if t is not dict and t is not list and t is not tuple:
        return obj
    swap = {}
    for v in (obj.values() if t is dict else obj):
        tv = type(v)
        if (tv is dict or tv is list) and id(v) not in swap and _bundleable(v):
            swap[id(v)] = _Bundle(v)
    if not swap:
        return obj
    if t is dict:
        return {k: swap.get(id(v), v) for k, v in obj.items()}
    return t(swap.get(id(v), v) for v in obj)


def _loads(data, buffers):
    """pickle.loads(data, buffers=buffers), numpy's arrays built in C."""
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


def _dumps(obj):
    """obj as (pickle-5 stream, out-of-band buffers), for a store: with
    bundles (_with_bundles; the copy it may make is gone when this returns,
    so move=True still finds each array held by its container alone)."""
    buffers = []
    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(_with_bundles(obj))
    return stream.getbuffer(), buffers


def _parse_id(id):
    hexid = id if isinstance(id, str) else ""
    if len(hexid) != 32 or any(c not in "0123456789abcdefABCDEF" for c in hexid):
        raise InvalidArgument(f"an object id is 32 hex digits, not {id!r}")
    return (int(hexid[:16], 16), int(hexid[16:], 16))


# ------------------------------------------------------------- records

@dataclass(frozen=True)
class StoreStats:
    """A store's numbers at one instant (zcstore::StoreStats)."""
    capacity: int        # bytes available to objects
    used: int            # bytes held by objects (deleted-but-pinned too)
    largest_free: int    # the largest object extent that would fit now
    objects: int         # sealed objects visible to get
    unsealed: int        # objects being written (or filled in place)
    deleted_pinned: int  # deleted objects waiting for their last pin
    pins: int            # pins held, all processes together
    clients: int         # open handles, all processes together
    max_objects: int
    max_clients: int
    names: int           # bound names


@dataclass(frozen=True)
class ObjectInfo:
    """One object of Store.list()."""
    ref: Ref
    state: str           # 'sealed', 'unsealed' or 'deleted_pinned'
    extent_bytes: int
    metadata_bytes: int
    data_bytes: int
    num_buffers: int
    pins: int
    has_checksums: bool
    sealed_unix_ns: int


class RawObject:
    """An object's raw parts, pinned: for objects written from C++ or C.

    ``metadata`` is a bytes copy (checked against its checksum where the
    object has one); ``buffers`` are read-only memoryviews of the mapping.
    Every view and array taken from it keeps the object pinned.
    """

    __slots__ = ("ref", "metadata", "_buffers")

    def __init__(self, ref, metadata, buffers):
        self.ref = ref
        self.metadata = metadata
        self._buffers = buffers

    @property
    def buffers(self):
        """Each buffer as a read-only memoryview of format 'B'."""
        return [memoryview(b) for b in self._buffers]

    def __len__(self):
        return len(self._buffers)

    def array(self, index, dtype, shape=None, order="C"):
        """Buffer ``index`` as a read-only numpy array, without a copy.

        ``shape`` defaults to 1-D. InvalidArgument if the index is out of
        range, the buffer's size is not a whole number of ``dtype`` items or
        not the size of ``shape``, or it is not aligned for ``dtype``.
        """
        import numpy as np
        if not 0 <= index < len(self._buffers):
            raise InvalidArgument(
                f"buffer index {index} is out of range: the object has {len(self._buffers)}")
        buf = self._buffers[index]
        dt = np.dtype(dtype)
        size = len(buf)
        if dt.itemsize == 0 or size % dt.itemsize:
            raise InvalidArgument(
                f"buffer {index} holds {size} bytes, not a whole number of {dt} items "
                f"({dt.itemsize} bytes each)")
        count = size // dt.itemsize
        if shape is None:
            shape = (count,)
        shape = tuple(int(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        want = 1
        for n in shape:
            if n < 0:
                raise InvalidArgument(f"shape {shape} has a negative dimension")
            want *= n
        if want != count:
            raise InvalidArgument(
                f"buffer {index} holds {count} {dt} items; shape {shape} needs {want}")
        if buf.address % dt.alignment:
            raise InvalidArgument(f"buffer {index} is not aligned for {dt}")
        return np.frombuffer(buf, dtype=dt, count=count).reshape(shape, order=order)

    def __repr__(self):
        return (f"zcstore.RawObject({self.ref!r}, metadata={len(self.metadata)} bytes, "
                f"buffers={[len(b) for b in self._buffers]})")


# ---------------------------------------------------------------- store

class Store:
    """A handle on one store. Create one with Store.create, open, or open_fd.

    A context manager: leaving the ``with`` block closes the handle. Closing
    releases nothing that objects you got still use: their arrays keep the
    store mapped and their objects pinned. A shared-memory store this handle
    created disappears from /dev/shm when it closes (unless persistent);
    processes that have it open keep working. Safe to use from many threads:
    the GIL is released while bytes are copied and while a lock is awaited.
    """

    def __init__(self, handle, shm_dir):
        self._h = handle
        self._name = handle.name
        self._backing = _BACKING_NAMES[handle.backing]
        self._shm_dir = shm_dir
        self._fd = handle.fd
        self._key = (self._backing,) + tuple(handle.identity())
        _live[self._key] = weakref.ref(self)

    # --- opening and closing

    @classmethod
    def create(cls, name="", *, capacity=1 << 30, backing="shm", persistent=False,
               checksums=False, max_objects=65536, max_clients=128, max_pins_per_client=1024,
               max_names=256, mode=0o600, shm_dir="/dev/shm"):
        """Creates a store and returns the creator's handle.

        ``name``: for "shm", 1-64 characters from [A-Za-z0-9._-] ("" picks a
        unique one: see ``name``); for "file", the file's path; for "memfd",
        a label. ``capacity`` is the bytes available to objects; storage is
        reserved as objects claim it, so a large capacity costs nothing up
        front. ``persistent`` keeps a shm store after its creator closes
        (until ``Store.remove``). ``checksums`` (always on for files) lets
        ``verify`` check every byte. Raises AlreadyExists, PermissionDenied,
        StoreFull, InvalidArgument.

        ``backing="auto"``: a shm store if its filesystem has room for the
        capacity, else (a container's 64 MiB /dev/shm, say) a file store in
        a temporary directory on disk, with one RuntimeWarning saying so;
        that file is removed when the store is closed, unless persistent.
        """
        if backing == "auto":
            args = dict(capacity=capacity, persistent=persistent, checksums=checksums,
                        max_objects=max_objects, max_clients=max_clients,
                        max_pins_per_client=max_pins_per_client, max_names=max_names,
                        mode=mode, shm_dir=shm_dir)
            try:
                return cls.create(name, backing="shm", **args)
            except StoreFull as e:
                directory = tempfile.mkdtemp(prefix="zcstore-")
                path = os.path.join(directory, (name or "anon") + ".zcs")
                warnings.warn(f"{e}; using a file store at {path} instead", RuntimeWarning,
                              stacklevel=2)
                try:
                    store = cls.create(path, backing="file", **args)
                except BaseException:
                    os.rmdir(directory)
                    raise
                if not persistent:
                    store._fallback_dir = directory
                return store
        h = _core.Handle.create(name, _backing_code(backing), int(capacity), max_objects,
                                max_clients, max_pins_per_client, max_names, bool(checksums),
                                mode, bool(persistent), shm_dir)
        return cls(h, shm_dir)

    @classmethod
    def open(cls, name, *, read_only=False, backing=None, shm_dir="/dev/shm",
             allow_shared_write=False, lock_timeout=5.0):
        """Opens an existing store: a shm store by name, a file store by path.

        ``backing`` defaults to "file" for a name with a '/', else "shm". A
        store is opened only if it is a regular file of this user that group
        and others cannot write (``allow_shared_write`` accepts one made with
        a group-writable mode on purpose). Raises NotFound, PermissionDenied,
        Corrupt (not a store, or truncated), VersionMismatch, Timeout
        (another process held its lock longer than ``lock_timeout`` seconds),
        IOError (a file store another handle has open read-write).
        """
        if backing is None:
            backing = "file" if "/" in name else "shm"
        if backing == "memfd":
            raise InvalidArgument("a memfd store has no name to open: use Store.open_fd(fd)")
        h = _core.Handle.open(name, _backing_code(backing), bool(read_only), shm_dir,
                              bool(allow_shared_write), int(lock_timeout * 1000))
        return cls(h, shm_dir)

    @classmethod
    def open_fd(cls, fd, *, read_only=False):
        """Opens a memfd store from the descriptor its creator handed down.

        The handle gets its own open file description; the caller keeps ``fd``.
        """
        return cls(_core.Handle.open_fd(int(fd), bool(read_only)), "/dev/shm")

    @staticmethod
    def remove(name, *, shm_dir="/dev/shm"):
        """Removes a shm store's name, or deletes a file store (a path).

        Processes that have it open keep working. NotFound if absent,
        PermissionDenied for another user's file, InvalidArgument for a
        file that is not a store.
        """
        _core.Handle.remove(name, 2 if "/" in name else 1, shm_dir)

    @staticmethod
    def list_stores(shm_dir="/dev/shm"):
        """Names of this user's shm stores."""
        return _core.Handle.list_stores(shm_dir)

    @staticmethod
    def collect_garbage(shm_dir="/dev/shm"):
        """Removes this user's shm stores whose every user died; returns their names."""
        return _core.Handle.collect_garbage(shm_dir)

    def close(self):
        """Closes the handle. Idempotent. Objects already got stay valid."""
        if not self._h.closed:
            self._h.close()
            if _live.get(self._key) is not None and _live[self._key]() is self:
                del _live[self._key]
            directory = getattr(self, "_fallback_dir", None)
            if directory is not None:  # backing="auto" fell back to a file: it was ours
                shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self._h.closed

    @property
    def name(self):
        """The store's name (generated if created with ""), path for files."""
        return self._name

    @property
    def backing(self):
        """'shm', 'file' or 'memfd'."""
        return self._backing

    @property
    def read_only(self):
        return self._h.read_only

    @property
    def created(self):
        """True if this handle created the store."""
        return self._h.created

    @property
    def fd(self):
        """The store's descriptor: what a child passes to Store.open_fd (memfd)."""
        return self._h.fd

    def __repr__(self):
        state = "closed" if self.closed else ("read-only" if self.read_only else "open")
        return f"zcstore.Store({self._name!r}, backing={self._backing!r}, {state})"

    # --- objects

    def _ref(self, id):
        return Ref(self._name, self._backing, self._shm_dir, self._key, tuple(id))

    def _own(self, ref):
        if not isinstance(ref, Ref):
            raise InvalidArgument(f"expected a zcstore.Ref, not {type(ref).__name__}")
        if ref._key != self._key:
            raise InvalidArgument(
                f"{ref!r} belongs to store '{ref._name}', not to this store '{self._name}'")
        return ref._id

    def put(self, obj, *, move=False):
        """Stores ``obj`` as a new object and returns its Ref.

        Pickles with protocol 5: numpy arrays, PickleBuffers and C-contiguous
        memoryviews go out of band, each copied once into the store with the
        GIL released; everything else is the pickle stream. An array made by
        ``empty()`` and filled in place is adopted with no copy at all (and
        becomes read-only).

        ``move=True`` also gives back the memory of every source buffer
        nothing else can see, as soon as its bytes are in the store, so peak
        memory stays near one copy: a numpy array that owns its data and that
        only ``obj`` refers to (no variable, view or memoryview) becomes an
        empty array of its dtype (shape (0, ...)); a bytearray in a
        PickleBuffer that nothing else exports becomes empty. Every other
        source is copied and left as it was. Do not use ``obj`` from another
        thread during the call.

        Raises what pickling raises (nothing is written then), StoreFull
        (nothing is written or emptied), PermissionDenied (read-only),
        InvalidArgument (a closed store).
        """
        if self._h.closed:
            raise InvalidArgument(f"store '{self._name}' is closed")
        stream, buffers = _dumps(obj)
        try:
            id = self._h.put(None, stream, buffers, bool(move))
        finally:
            stream.release()
            del buffers
        return self._ref(id)

    def get(self, ref):
        """The object ``ref`` names, its arrays read-only views of the store.

        No buffer is copied, whatever its size: every numpy array (and
        memoryview) that was out of band is a view of the mapping, and the
        object stays pinned while any of them lives, even past ``delete``
        or ``close``. Writing into one raises ValueError.

        Unpickling runs code named by the stream, as ``pickle.loads`` does:
        get objects only from stores of processes you trust (your own user;
        for files from elsewhere, use ``get_raw``). Raises NotFound (deleted
        or never there), InvalidArgument (a Ref of another store, a closed
        store), TypeMismatch (not an object put from Python: use get_raw),
        Corrupt (its metadata fails its checksum or does not unpickle).
        """
        id = self._own(ref)
        metadata, buffers = self._h.get(*id)
        if metadata[:2] != _PICKLE5:
            raise TypeMismatch(
                f"object {ref.id} in store '{self._name}' was not put from Python (its metadata "
                "is not a pickle stream): read it with get_raw")
        try:
            return _loads(metadata, buffers)
        except (pickle.UnpicklingError, EOFError) as e:
            raise Corrupt(f"object {ref.id} in store '{self._name}' does not unpickle: {e}") from e

    def _pin(self, ref):
        """Keeps object ``ref`` from being reclaimed while the result lives;
        NotFound if it is gone. For a view this process holds but did not
        get from this handle: a forked child's inherited one, whose pin is
        its parent's."""
        return self._h.get(*self._own(ref))

    def ref(self, id):
        """The Ref of object ``id`` (32 hex digits) in this store: for ids
        that come from C++, C or the ``zcstore`` tool. Checks the form only;
        ``get`` tells whether the object is there."""
        return self._ref(_parse_id(id))

    def put_raw(self, metadata=b"", buffers=(), *, id=None):
        """Stores raw parts: ``metadata`` bytes and each bytes-like buffer,
        copied once. ``id`` (32 hex digits) is chosen at random if None.
        Returns the Ref. For readers in C++ or C (``Store::Get(id)``)."""
        if id is not None:
            id = _parse_id(id)
        return self._ref(self._h.put(id, metadata, list(buffers), False))

    def get_raw(self, ref):
        """The object's raw parts, pinned (see RawObject): no buffer is copied."""
        metadata, buffers = self._h.get(*self._own(ref))
        return RawObject(ref, metadata, buffers)

    def empty(self, shape, dtype=float, order="C"):
        """A writable numpy array living in the store, to fill in place.

        ``put`` of an object holding it (the array itself, not a view of it)
        then copies nothing: the store adopts its pages, and the array
        becomes read-only. Until then it is an unsealed object, invisible to
        ``get``; if it is never put, its space is freed when it dies.
        """
        import numpy as np
        dt = np.dtype(dtype)
        shape = tuple(int(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        count = 1
        for n in shape:
            if n < 0:
                raise InvalidArgument(f"shape {shape} has a negative dimension")
            count *= n
        buf = self._h.empty(count * dt.itemsize)
        # Every view of the returned array has `root` as its base, so the
        # store can tell at put time whether another array shares the memory.
        root = buf._root_array(dt, count)
        return root.reshape(shape, order=order)

    def delete(self, ref):
        """Hides the object from new gets and unbinds its names; its space is
        reused once nothing pins it. NotFound if already deleted."""
        self._h.delete(*self._own(ref))

    def __contains__(self, ref):
        return isinstance(ref, Ref) and ref._key == self._key and self._h.contains(*ref._id)

    # --- names

    def bind(self, name, ref):
        """Binds ``name`` (1-63 bytes) to the object. AlreadyExists if bound."""
        self._h.bind(name, *self._own(ref))

    def lookup(self, name):
        """The Ref bound to ``name``, or NotFound."""
        return self._ref(self._h.lookup(name))

    def unbind(self, name):
        """Removes a binding (the object stays). NotFound if unbound."""
        self._h.unbind(name)

    def names(self):
        """Every bound name and its Ref, sorted by name."""
        return {name: self._ref((hi, lo)) for name, hi, lo in self._h.names()}

    # --- housekeeping

    def stats(self):
        return StoreStats(**self._h.stats())

    def list(self):
        """Every object, also those being written and deleted-but-pinned ones."""
        out = []
        for d in self._h.list():
            d["ref"] = self._ref(d.pop("id"))
            out.append(ObjectInfo(**d))
        return out

    def verify(self, ref=None):
        """Recomputes checksums: of one object, or (None) the tables and every
        object that has them. Corrupt, naming what, on the first mismatch."""
        if ref is None:
            self._h.verify_all()
        else:
            self._h.verify(*self._own(ref))


from .pool import Future, Pool, Shared  # noqa: E402  (the pool builds on the store above)
