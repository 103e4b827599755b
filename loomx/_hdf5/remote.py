"""Loom files that are not on a local disk: URLs (``https://``, ``s3://``, any fsspec URL)
and open binary file objects, read-only.

A :class:`RemoteSource` is the picklable recipe of one remote file: the URL and the fsspec
``storage_options`` (or the fsspec filesystem itself), plus the size and version (ETag or
modification time) seen when the file was first opened.  Every process that reads it (dask
threads, processes, ``distributed`` workers) reopens it from the recipe and refuses a file
that changed since (a Dataset never mixes two versions of a file).

Two kinds of reads go over the wire:

- HDF5 metadata (the layout, attributes, the chunk index of a layer) is read by h5py
  through :class:`RangeFile`, a file object that fetches aligned blocks of the file and
  keeps the recent ones: opening a file costs a few requests.
- Layer chunks are read by :class:`loomx._hdf5.chunks.ChunkIndex` through the source itself:
  :meth:`RemoteSource.read_ranges` fetches every run of file-adjacent chunks of one read
  concurrently (fsspec ``cat_ranges``), neighbouring runs coalesced into one request where
  the bytes between them are few (:func:`coalesce`: at most :data:`GAP_BUDGET` times the
  bytes asked for, no gap over :data:`MAX_GAP`).

Each process opens a remote file once, through the handle manager
(:class:`loomx._hdf5.files.CachedFile` with this module's :class:`RemoteSource`).  The
chunk index of a layer is built once per process as reads need it
(:mod:`loomx._hdf5.lookup`: the B-tree nodes on the way to the chunks a read needs, one
level at a time, each level's nodes requested together), or taken from a reference index
(:func:`loomx.to_kerchunk`) passed to :func:`loomx.open_loom` or found beside the file,
which skips reading the HDF5 chunk index remotely altogether.

Examples
--------
>>> ds = loomx.open_loom("https://example.org/pbmc.loom")  # doctest: +SKIP
>>> ds = loomx.open_loom("s3://bucket/pbmc.loom", storage_options={"anon": True})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import h5py
import numpy as np

from loomx._hdf5.filesystem import (
    display_name,
    is_fsspec_file,
    is_url,
    move_into_place,
    signature_error,
    temporary_file,
)
from loomx._hdf5.handles import CHUNK_INDEXES
from loomx.errors import LoomFileError, LoomFileNotFoundError, LoomWriteError

__all__ = [
    "BLOCK_SIZE",
    "COPY_BLOCK",
    "GAP_BUDGET",
    "MAX_GAP",
    "RemoteSource",
    "coalesce",
    "collector_paused",
    "local_copy",
]

BLOCK_SIZE = 1 << 12
"""Bytes h5py's metadata reads fetch at a time (aligned blocks, the recent ones kept).

Small on purpose: the B-tree nodes of a layer's chunk index (about 2.6 KB each for 64 x 64
chunks) lie between the chunks they index, about one per 60 KB of a loompy file, so larger
blocks fetch mostly chunk data (64 KB blocks fetched the whole layer to build its index).
Reads of more than a block (attributes) fetch their blocks in one request."""
_KEPT_BLOCKS = 1024

GAP_BUDGET = 1.0
"""Bytes between neighbouring ranges that one read may fetch to save requests, as a
multiple of the bytes it asks for (1.0: a read fetches at most twice what it needs)."""
MAX_GAP = 1 << 20
"""No gap larger than this is fetched to join two ranges into one request."""
MAX_REQUEST = 64 << 20
"""No request is made larger than this by joining ranges (a single range may be)."""
COPY_BLOCK = 64 << 20
"""Bytes fetched per request when :func:`local_copy` copies a whole remote file."""


def coalesce(
    runs: list[tuple[int, int]],
    budget: float = GAP_BUDGET,
    max_gap: int = MAX_GAP,
    max_request: int = MAX_REQUEST,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Fewer, larger requests covering every ``(offset, nbytes)`` run.

    The gaps between neighbouring runs (in file order) are joined smallest first, as long
    as the bytes of the joined gaps stay within ``budget`` times the bytes of the runs, no
    gap is over ``max_gap`` and no request grows over ``max_request``.

    Returns
    -------
    requests : list of (offset, nbytes)
        In file order.
    placed : list of (request, start)
        For each run, in the order given: which request holds it, and where in it.

    Examples
    --------
    >>> coalesce([(0, 10), (12, 10), (1000, 10)])
    ([(0, 22), (1000, 10)], [(0, 0), (0, 12), (1, 0)])
    """
    if not runs:
        return [], []
    table = np.array(runs, np.int64).reshape(-1, 2)
    order = np.argsort(table[:, 0], kind="stable")
    starts, ends = table[order, 0], table[order].sum(axis=1)
    reach = np.maximum.accumulate(ends)  # overlapping runs: the furthest end so far
    gaps = starts[1:] - reach[:-1]
    join = gaps <= 0  # touching or overlapping: always one request
    allowed = np.flatnonzero((gaps > 0) & (gaps <= max_gap))
    if allowed.size:
        by_size = allowed[np.argsort(gaps[allowed], kind="stable")]
        spent = np.cumsum(gaps[by_size])
        join[by_size[spent <= budget * int(table[:, 1].sum())]] = True
    requests: list[tuple[int, int]] = []
    where = np.empty(len(runs), np.int64)
    start_in = np.empty(len(runs), np.int64)
    lo, hi = int(starts[0]), int(ends[0])
    for k in range(len(runs)):
        s, e = int(starts[k]), int(ends[k])
        if k and not (join[k - 1] and max(hi, e) - lo <= max_request) and s >= hi:
            requests.append((lo, hi - lo))
            lo, hi = s, e
        hi = max(hi, e)
        where[order[k]] = len(requests)
        start_in[order[k]] = s - lo
    requests.append((lo, hi - lo))
    return requests, list(zip(where.tolist(), start_in.tolist(), strict=True))


class RemoteSource:
    """Picklable recipe of one remote file; reads byte ranges of it.

    Parameters
    ----------
    target
        A URL (``https://...``, ``s3://bucket/key``, any fsspec URL) or an open binary file
        object.  fsspec file objects are read through their filesystem (and pickle);
        other file objects (``open(path, "rb")``, ``io.BytesIO``) are read under a lock in
        this process only.
    storage_options
        Passed to ``fsspec.url_to_fs`` for URLs (credentials, endpoints, ...).

    Examples
    --------
    >>> source = RemoteSource("https://example.org/pbmc.loom")  # doctest: +SKIP
    >>> source(0, 8)  # doctest: +SKIP
    b'\\x89HDF\\r\\n\\x1a\\n'
    """

    def __init__(self, target: Any, storage_options: dict[str, Any] | None = None) -> None:
        self.name = display_name(target)
        self.storage_options = dict(storage_options or {})
        self.fs: Any = None
        self.path: str | None = None
        self.fileobj: Any = None
        self.version: tuple[Any, ...] | None = None  # (size, etag) seen at first open
        self.chunk_indexes: dict[str, Any] = {}  # h5path -> ChunkIndex given by the caller
        if isinstance(target, (str, os.PathLike)):
            self.url: str | None = os.fspath(target)
        elif is_fsspec_file(target):
            self.url, self.fs, self.path = None, target.fs, target.path
        else:
            self.url, self.fileobj = None, target
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        if self.fileobj is not None:
            raise LoomFileError(
                "a Dataset opened from a plain file object reads in this process only (dask "
                "threads); pass a path or URL to compute with processes or a cluster",
                path=self.name,
            )
        state = self.__dict__.copy()
        del state["_lock"]
        if self.url is not None:
            state["fs"] = state["path"] = None  # made again from the URL where it arrives
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteSource({self.name!r})"

    # ------------------------------------------------------------------ the file system

    def _filesystem(self) -> tuple[Any, str]:
        if self.fs is None:
            try:
                import fsspec
            except ImportError as err:
                raise LoomFileError(
                    "reading URLs needs fsspec (pip install 'loomx[remote]')", path=self.name
                ) from err
            try:
                fs, path = fsspec.url_to_fs(self.url, **self.storage_options)
            except (ImportError, ValueError) as err:
                raise LoomFileError(
                    f"cannot read this URL ({err}); install the fsspec implementation of "
                    "its protocol (aiohttp for http(s), s3fs for s3, ...)",
                    path=self.name,
                ) from err
            self.fs, self.path = fs, path
        return self.fs, str(self.path)

    def check_version(self) -> tuple[Any, ...]:
        """The file's ``(size, version)`` now; raises :class:`LoomFileError` when it differs
        from what this recipe saw first (the file was replaced since it was opened)."""
        if self.fileobj is not None:
            with self._lock:
                self.fileobj.seek(0, io.SEEK_END)
                found: tuple[Any, ...] = (self.fileobj.tell(), None)
        else:
            fs, path = self._filesystem()
            with _remote_errors(self.name, "look the file up"):
                info = fs.info(path)
            if info.get("type", "file") != "file":
                raise LoomFileError(
                    f"found a {info.get('type')}, expected a Loom (HDF5) file", path=self.name
                )
            stamp = next(
                (info[k] for k in ("ETag", "etag", "LastModified", "mtime") if info.get(k)), None
            )
            found = (int(info.get("size") or 0), str(stamp) if stamp is not None else None)
        if self.version is None:
            self.version = found
        elif found != self.version:
            raise LoomFileError(
                f"changed since it was opened (size, version {found}; expected "
                f"{self.version}). Open the file again to read the new content",
                path=self.name,
            )
        return found

    @property
    def size(self) -> int:
        if self.version is None:
            self.check_version()
        assert self.version is not None
        return int(self.version[0])

    # ------------------------------------------------------------------ reads

    def __call__(self, offset: int, nbytes: int) -> bytes:
        """``nbytes`` bytes at ``offset`` (one request)."""
        return self.read_ranges([(offset, nbytes)])[0]

    def read_ranges(self, runs: list[tuple[int, int]]) -> list[Any]:
        """The bytes of each ``(offset, nbytes)`` run (bytes-like), fetched concurrently;
        runs with few bytes between them in one request (:func:`coalesce`)."""
        if not runs:
            return []
        requests, placed = coalesce(runs)
        got = [memoryview(part) for part in self._fetch(requests)]
        return [got[r][at : at + nbytes] for (r, at), (_, nbytes) in zip(placed, runs, strict=True)]

    def read_into(self, runs: list[tuple[int, int]], buffer: np.ndarray) -> None:
        """Read every ``(offset, nbytes)`` run into ``buffer``, one after another."""
        pos = 0
        for part, (_, nbytes) in zip(self.read_ranges(runs), runs, strict=True):
            buffer[pos : pos + nbytes] = np.frombuffer(part, np.uint8)
            pos += nbytes

    def _fetch(self, runs: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, nbytes)`` run, one request each, concurrently."""
        size = self.size
        for offset, nbytes in runs:
            if offset < 0 or nbytes < 0 or offset + nbytes > size:
                raise LoomFileError(
                    f"asked for bytes {offset}..{offset + nbytes} of a file of {size} bytes; "
                    "the file is truncated or corrupt",
                    path=self.name,
                )
        if self.fileobj is not None:
            with self._lock:
                out = []
                for offset, nbytes in runs:
                    self.fileobj.seek(offset)
                    out.append(self.fileobj.read(nbytes))
                return out
        fs, path = self._filesystem()
        starts = [offset for offset, _ in runs]
        ends = [offset + nbytes for offset, nbytes in runs]
        with _remote_errors(self.name, "read byte ranges"):
            if len(runs) == 1:
                got = [fs.cat_file(path, start=starts[0], end=ends[0])]
            else:
                got = fs.cat_ranges([path] * len(runs), starts, ends, on_error="raise")
        for (offset, nbytes), part in zip(runs, got, strict=True):
            if isinstance(part, BaseException):
                raise LoomFileError(f"cannot read bytes at {offset}: {part}", path=self.name)
            if len(part) != nbytes:
                raise LoomFileError(
                    f"short read at byte {offset}: {len(part)} bytes, expected {nbytes}",
                    path=self.name,
                )
        return list(got)

    def chunk_index(self, h5path: str, build: Callable[[], Any]) -> Any:
        """The :class:`~loomx._hdf5.chunks.ChunkIndex` of ``h5path``: the one given to
        :func:`loomx.open_loom` (``chunk_index=``, see :func:`loomx.to_kerchunk`), else
        ``build()`` (from the HDF5 metadata), once per process and file version."""
        given = self.chunk_indexes.get(h5path)
        if given is not None:
            return given
        mine = id(self.fileobj) if self.fileobj is not None else None
        return CHUNK_INDEXES.get((self.name, mine, self.version, h5path), build)

    def open_h5(self) -> h5py.File:
        """An :class:`h5py.File` reading this file through a :class:`RangeFile`."""
        self.check_version()
        not_hdf5 = signature_error(self(0, min(8, self.size)), self.name)
        if not_hdf5 is not None:
            raise not_hdf5
        try:
            return h5py.File(RangeFile(self), "r")
        except OSError as err:
            raise LoomFileError(
                f"cannot open as HDF5: {err}. The file may be truncated or corrupt",
                path=self.name,
            ) from err


@contextlib.contextmanager
def local_copy(
    source: str, output: str, storage_options: dict[str, Any] | None = None
) -> Iterator[str]:
    """Copy ``source`` (a URL, read by ranged requests of :data:`COPY_BLOCK` bytes, or a
    local path) to a temporary file next to ``output``; yield its name; rename it to
    ``output`` when the block ends without an error (removed otherwise).

    A remote file replaced while it is copied is refused (:class:`LoomFileError`).

    Examples
    --------
    >>> with local_copy("https://example.org/pbmc.loom", "pbmc.loom") as tmp:  # doctest: +SKIP
    ...     qc_file(tmp)
    """
    with temporary_file(output, "copy", f"copying {source} to {output}") as tmp:
        if is_url(source):
            remote = RemoteSource(source, storage_options)
            size = remote.size
            with open(tmp, "wb") as fh:
                for offset in range(0, size, COPY_BLOCK):
                    fh.write(remote(offset, min(COPY_BLOCK, size - offset)))
            remote.check_version()
        else:
            shutil.copyfile(source, tmp)
        yield tmp
        move_into_place(tmp, output)


@contextlib.contextmanager
def _remote_errors(name: str, what: str) -> Iterator[None]:
    """fsspec's and the store's errors as :class:`LoomFileError` naming the URL."""
    try:
        yield
    except (LoomFileError, LoomWriteError):
        raise
    except FileNotFoundError as err:
        raise LoomFileNotFoundError(
            f"no such file ({err}); expected a Loom (HDF5) file", path=name
        ) from err
    except (OSError, ValueError, RuntimeError, TimeoutError) as err:
        raise LoomFileError(f"cannot {what}: {type(err).__name__}: {err}", path=name) from err


_COLLECTION_LOCK = threading.Lock()
_COLLECTION_PAUSES = [0, False]  # readers inside a fetch, whether they turned the collector off


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while HDF5 waits on a remote fetch.

    HDF5 calls :class:`RangeFile` with h5py's global lock held; the fetch runs on fsspec's
    event-loop thread.  A collection there that frees an h5py object needs that lock, and
    the two threads wait on each other forever (h5py issue 2019).  The collector is back
    on when the last fetch in flight ends, if it was on before the first.

    Examples
    --------
    >>> import gc
    >>> with collector_paused():
    ...     gc.isenabled()
    False
    """
    with _COLLECTION_LOCK:
        if _COLLECTION_PAUSES[0] == 0:
            _COLLECTION_PAUSES[1] = gc.isenabled()
            gc.disable()
        _COLLECTION_PAUSES[0] += 1
    try:
        yield
    finally:
        with _COLLECTION_LOCK:
            _COLLECTION_PAUSES[0] -= 1
            if _COLLECTION_PAUSES[0] == 0 and _COLLECTION_PAUSES[1]:
                gc.enable()


class RangeFile(io.RawIOBase):
    """A read-only, seekable file object over a :class:`RemoteSource`, for h5py.

    Reads fetch aligned blocks of ``block_size`` bytes (the missing blocks of one read in one
    request); the last 1024 are kept, so HDF5's many small metadata reads cost few requests.

    Parameters
    ----------
    source
        The remote file.
    block_size
        Bytes per request (default :data:`BLOCK_SIZE`).
    """

    def __init__(self, source: RemoteSource, block_size: int = BLOCK_SIZE) -> None:
        super().__init__()
        self.source = source
        self.block_size = block_size
        self.size = source.size
        self.pos = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        stop = min(self.pos + view.nbytes, self.size)
        if stop <= self.pos:
            return 0
        first, last = self.pos // self.block_size, (stop - 1) // self.block_size
        wanted = [b for b in range(first, last + 1) if b not in self.blocks]
        if wanted:
            runs = []  # adjacent missing blocks in one request
            for b in wanted:
                if runs and runs[-1][1] == b:
                    runs[-1][1] = b + 1
                else:
                    runs.append([b, b + 1])
            ranges = [
                (a * self.block_size, min(z * self.block_size, self.size) - a * self.block_size)
                for a, z in runs
            ]
            with collector_paused():  # h5py's lock is held: see collector_paused
                fetched = self.source.read_ranges(ranges)
            for (a, z), data in zip(runs, fetched, strict=True):
                for b in range(a, z):
                    lo = (b - a) * self.block_size
                    self.blocks[b] = data[lo : lo + self.block_size]
        done = 0
        for b in range(first, last + 1):
            block = self.blocks[b]
            self.blocks.move_to_end(b)
            lo = self.pos + done - b * self.block_size
            part = block[lo : lo + (stop - self.pos - done)]
            view[done : done + len(part)] = part
            done += len(part)
        while len(self.blocks) > max(_KEPT_BLOCKS, last - first + 1):
            self.blocks.popitem(last=False)
        self.pos += done
        return done
