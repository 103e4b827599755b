"""Stored chunk bytes: reading the runs of file-adjacent chunks one read needs, from any
reader (``read_at(offset, nbytes)``, with ``read_ranges`` or ``read_into`` where it has
them: :class:`loomx._hdf5.remote.RemoteSource`, :class:`FileReader`), and the local file
reader on a shared descriptor (``pread``/``preadv``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from loomx._hdf5.handles import FileHandle
from loomx.errors import LoomFileError

__all__ = ["FileReader", "ReadAt", "fetch_runs", "gather_chunks", "run_bounds"]

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, nbytes) -> bytes``: how the chunk reader reads a file."""
_MAX_RUN = 16 << 20  # largest single read_at when coalescing adjacent chunks


def run_bounds(offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Start indices of runs of file-adjacent chunks (sorted by offset), plus the end."""
    n = offsets.size
    new = np.ones(n, bool)
    if n > 1:
        new[1:] = offsets[1:] != offsets[:-1] + sizes[:-1]
        band = np.cumsum(sizes) // _MAX_RUN
        new[1:] |= band[1:] != band[:-1]
    return np.append(np.flatnonzero(new), n)


def fetch_runs(read_at: ReadAt, runs: list[tuple[int, int]]) -> Iterable[Any]:
    """The bytes of each ``(offset, nbytes)`` run: one ``read_at.read_ranges(runs)`` call
    when the reader has it (remote readers fetch the runs concurrently), else one
    ``read_at`` call per run, made as the caller consumes them."""
    read_ranges = getattr(read_at, "read_ranges", None)
    if read_ranges is not None:
        return read_ranges(runs)
    return (read_at(offset, nbytes) for offset, nbytes in runs)


def gather_chunks(
    read_at: ReadAt, offsets: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The stored bytes of chunks at ``offsets`` (increasing) of ``sizes`` bytes, read in
    runs of file-adjacent chunks into one array, and where each chunk starts in it.

    A negative offset or size (a crafted chunk index) raises :class:`LoomFileError`."""
    if offsets.size and (offsets.min() < 0 or sizes.min() < 0):
        at = int(np.flatnonzero((offsets < 0) | (sizes < 0))[0])
        raise LoomFileError(
            f"the chunk index gives a chunk at byte {int(offsets[at])} of {int(sizes[at])} "
            "bytes; expected a non-negative offset and size (the file is corrupt)",
            path=getattr(read_at, "label", None),
        )
    bounds = run_bounds(offsets, sizes)
    first, last = bounds[:-1], bounds[1:] - 1
    run_offsets = offsets[first]
    run_sizes = offsets[last] + sizes[last] - run_offsets
    in_buffer = np.cumsum(run_sizes) - run_sizes
    run_of = np.repeat(np.arange(first.size), np.diff(bounds))
    runs = list(zip(run_offsets.tolist(), run_sizes.tolist(), strict=True))
    src = _gather(read_at, runs, int(run_sizes.sum()))
    return src, in_buffer[run_of] + offsets - run_offsets[run_of]


def _gather(read_at: ReadAt, runs: list[tuple[int, int]], total: int) -> np.ndarray:
    """The bytes of every ``(offset, nbytes)`` run, concatenated into one array."""
    buf = np.empty(total, np.uint8)
    read_into = getattr(read_at, "read_into", None)
    if read_into is not None:
        read_into(runs, buf)
        return buf
    pos = 0
    for (offset, nbytes), got in zip(runs, fetch_runs(read_at, runs), strict=True):
        part = np.frombuffer(got, np.uint8)
        if part.size != nbytes:
            raise LoomFileError(f"short read at byte {offset}: {part.size} bytes")
        buf[pos : pos + nbytes] = part
        pos += nbytes
    return buf


def _check_extent(offset: int, nbytes: int, size: int, label: str) -> None:
    """Raise :class:`LoomFileError` unless bytes ``offset..offset + nbytes`` lie in a file
    of ``size`` bytes."""
    if offset < 0 or nbytes < 0 or offset + nbytes > size:
        raise LoomFileError(
            f"the chunk index points at bytes {offset}..{offset + nbytes} of a file of "
            f"{size} bytes; the file is truncated or corrupt",
            path=label,
        )


def _pread_exact(fd: int, offset: int, nbytes: int, label: str) -> bytes:
    """``nbytes`` bytes at ``offset`` of ``fd``; a short file raises :class:`LoomFileError`."""
    _check_extent(offset, nbytes, os.fstat(fd).st_size, label)
    parts = [os.pread(fd, nbytes, offset)]
    done = len(parts[0])
    while done < nbytes:
        parts.append(os.pread(fd, nbytes - done, offset + done))
        if not parts[-1]:
            raise LoomFileError(f"short read at byte {offset + done}", path=label)
        done += len(parts[-1])
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _pread_into(fd: int, runs: list[tuple[int, int]], buffer: np.ndarray, label: str) -> None:
    """Read every ``(offset, nbytes)`` run of ``fd`` into ``buffer``, one after another,
    without intermediate copies; a run past the end of the file raises
    :class:`LoomFileError`."""
    if not hasattr(os, "preadv"):  # pragma: no cover - platforms without preadv
        pos = 0
        for offset, nbytes in runs:
            buffer[pos : pos + nbytes] = np.frombuffer(
                _pread_exact(fd, offset, nbytes, label), np.uint8
            )
            pos += nbytes
        return
    size = os.fstat(fd).st_size
    view = memoryview(buffer)
    pos = 0
    for offset, nbytes in runs:
        _check_extent(offset, nbytes, size, label)
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [view[pos + done : pos + nbytes]], offset + done)
            if not got:
                raise LoomFileError(f"short read at byte {offset + done}", path=label)
            done += got
        pos += nbytes


class FileReader:
    """``read_at`` on the descriptor of a cached :class:`FileHandle` (kept alive here)."""

    __slots__ = ("handle", "label")

    def __init__(self, handle: FileHandle, label: str) -> None:
        self.handle, self.label = handle, label

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileReader:
        """A reader of the local file ``path`` on a descriptor of its own.

        Examples
        --------
        >>> index.read(FileReader.of("pbmc.loom"), (slice(0, 64),))  # doctest: +SKIP
        """
        return cls(FileHandle(os.fspath(path)), os.fspath(path))

    def __reduce__(self) -> tuple[Any, ...]:
        # a descriptor means nothing in another process: pickle as the file's path
        return (FileReader.of, (self.handle.path,))

    def __call__(self, offset: int, nbytes: int) -> bytes:
        return _pread_exact(self.handle.fd, offset, nbytes, self.label)

    def read_into(self, runs: list[tuple[int, int]], buffer: np.ndarray) -> None:
        _pread_into(self.handle.fd, runs, buffer, self.label)
