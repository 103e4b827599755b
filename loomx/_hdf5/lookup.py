"""The chunk index built as reads need it: which chunk-grid cells a read touches, and their
places looked up in HDF5's chunk index one by one, or all at once when a read needs many.

A :class:`loomx._hdf5.chunks.ChunkIndex` made with ``lazy=True`` starts with every cell
:data:`UNKNOWN`.  Before a read, :func:`resolve` looks up the cells it needs and does not
know yet (``H5Dget_chunk_info_by_coord``: a walk from the B-tree's root to one leaf, the
nodes on the way kept by HDF5's metadata cache), so the first read of a few columns of a
million-chunk layer costs a few hundred lookups, not a walk of the whole tree; a read that
needs more than :data:`LOOKUP_SHARE` of the cells walks the whole tree once
(``H5Dchunk_iter``).  Cells once known stay known for the life of the index (one per
file version, :data:`loomx._hdf5.handles.CHUNK_INDEXES`).

Remote files read the same way, big reads included: each read fetches the B-tree nodes on
the way to its cells that it has not fetched yet, a level at a time, each level's nodes in
flight together, so the first column of a remote layer costs about one request per chunk
row of the index instead of one per leaf of the whole tree, and a read of most of a layer
costs a few round trips, not one per node.

Examples
--------
>>> index = ChunkIndex.from_dataset(dset, lazy=True)  # doctest: +SKIP
>>> resolve(index, dset.id, needed_cells(index, (slice(None), slice(5, 6))))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import h5py
import numpy as np

from loomx._hdf5.chunkio import ReadAt, fetch_runs
from loomx._hdf5.grid import slice_bounds
from loomx.errors import LoomFileError

__all__ = ["LOOKUP_SHARE", "UNKNOWN", "BTree", "check_known", "fill_all", "needed_cells", "resolve"]

UNKNOWN = -2
"""The offset of a cell not looked up yet (``-1`` is an unallocated chunk)."""
LOOKUP_SHARE = 1 / 16
"""A read of a local file needing more than this share of a layer's cells walks the whole
tree (through HDF5)."""
SMALL_GRID = 1024
"""Grids of up to this many cells are indexed whole on their first read."""

Cells = tuple[Any, ...]
"""Per axis, the grid cells a read needs: a ``slice`` or a sorted array of positions."""


class LazyTable(Protocol):
    """What this module reads and fills of a :class:`loomx._hdf5.chunks.ChunkIndex`."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray
    complete: bool


def needed_cells(
    index: LazyTable, key: tuple[slice, ...], picks: tuple[int, np.ndarray] | None = None
) -> Cells:
    """The grid cells that reading ``key`` (step-1 slices) of the dataset touches; with
    ``picks`` ``(axis, positions)``, only the cells holding those positions along ``axis``."""
    starts, stops = slice_bounds(index.shape, key)
    cells: list[Any] = [
        slice(a // c, -(-b // c)) for a, b, c in zip(starts, stops, index.chunks, strict=True)
    ]
    if picks is not None:
        axis, positions = picks
        cells[axis] = np.unique(np.asarray(positions, np.int64) // index.chunks[axis])
    return tuple(cells)


def fill_all(index: LazyTable, dsid: Any) -> None:
    """Fill every cell of ``index`` from HDF5's chunk index of ``dsid`` (one walk)."""
    ndim = len(index.shape)
    grid = index.offsets.shape
    flat: list[int] = []
    extend = flat.extend
    try:
        dsid.chunk_iter(lambda s: extend((*s.chunk_offset, s.byte_offset, s.size, s.filter_mask)))
    except (AttributeError, NotImplementedError):
        for i in range(dsid.get_num_chunks()):
            s = dsid.get_chunk_info(i)
            extend((*s.chunk_offset, s.byte_offset, s.size, s.filter_mask))
    table = np.array(flat, np.int64).reshape(-1, ndim + 3)
    where = table[:, :ndim] // np.array(index.chunks, np.int64)
    inside = (where < np.array(grid, np.int64)).all(axis=1)
    table, where = table[inside], where[inside]
    cell = tuple(where.T)
    offsets = np.full(grid, -1, np.int64)
    offsets[cell] = table[:, -3]
    index.sizes[cell] = table[:, -2]
    index.masks[cell] = table[:, -1]
    index.offsets[...] = offsets  # last: a cell is known once its offset is
    index.complete = True


def resolve(
    index: LazyTable,
    dsid: Any,
    cells: Cells,
    read_at: ReadAt | None = None,
    small_grid: int = SMALL_GRID,
) -> None:
    """Look up the cells of ``cells`` that ``index`` does not know yet.

    Parameters
    ----------
    index
        The (lazy) chunk index of the dataset ``dsid``.
    dsid
        The dataset's HDF5 identifier (open).
    cells
        Per axis, a slice or positions of the grid cells a read needs.
    read_at
        Reads bytes of the file (``read_ranges`` fetching concurrently where it has it):
        the B-tree nodes on the way to the needed cells are read through it, one level at
        a time.  Without it, or for an index other than a version-1 B-tree (files written
        with the newest HDF5 format), or when the read needs more than
        :data:`LOOKUP_SHARE` of the cells of a local file, HDF5 walks the whole tree once
        (:func:`fill_all`).  A remote reader (one with ``read_ranges``) walks to the cells
        of every read itself: each level's nodes in flight together, where HDF5 would fetch
        the whole tree one node per round trip.
    small_grid
        Grids of up to this many cells are indexed whole (default :data:`SMALL_GRID`).
    """
    if index.complete:
        return
    axes = _positions(cells, index.offsets.shape)
    region = index.offsets[np.ix_(*axes)]
    unknown = region == UNKNOWN
    if not unknown.any():
        return
    total = math.prod(index.offsets.shape)
    many = unknown.sum() > LOOKUP_SHARE * total
    if read_at is None or total <= small_grid or (many and not _concurrent(read_at)):
        fill_all(index, dsid)
        return
    tree = getattr(index, "_tree", None)
    if tree is None:
        tree = BTree.of(dsid, read_at, index)
        if tree is None:
            fill_all(index, dsid)
            return
        index._tree = tree  # type: ignore[attr-defined]
    wanted = np.ravel_multi_index(np.nonzero(unknown), region.shape)
    grid_at = [
        axis[i] for axis, i in zip(axes, np.unravel_index(wanted, region.shape), strict=True)
    ]
    tree.find(index, read_at, np.unique(np.ravel_multi_index(grid_at, index.offsets.shape)))
    if many and not (index.offsets == UNKNOWN).any():
        index.complete = True


def _concurrent(read_at: ReadAt) -> bool:
    """Whether ``read_at`` fetches many ranges together (a remote file): a big read then
    walks the B-tree to its own cells a level at a time rather than letting HDF5 walk the
    whole tree node by node, each node a round trip."""
    return getattr(read_at, "read_ranges", None) is not None


class BTree:
    """HDF5's version-1 B-tree of a chunked dataset's chunks, read by this module: nodes
    fetched level by level, only those whose key range holds a needed cell; the inner
    nodes kept, the leaves' entries written into the index."""

    def __init__(self, root: int, ndim: int, size: int) -> None:
        self.root, self.ndim, self.size = root, ndim, size
        self.key = 8 + 8 * ndim  # chunk size, filter mask, ndim offsets
        self.node_bytes = 24 + (2 * _K + 1) * self.key + 2 * _K * 8  # HDF5's default K
        self.inner: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # addr -> (lows, children)

    @classmethod
    def of(cls, dsid: Any, read_at: ReadAt, index: LazyTable) -> BTree | None:
        """The B-tree of ``dsid`` read through ``read_at``, or None when the dataset's
        chunk index is something else (or the object header is one this module does not
        parse: version 2, from files written with ``libver="latest"``)."""
        fid = h5py.h5i.get_file_id(dsid)
        if tuple(fid.get_create_plist().get_sizes()) != (8, 8):
            return None
        size = fid.get_filesize()
        header = h5py.h5g.get_objinfo(dsid, b".").objno[0]  # no B-tree walk (h5o.get_info)
        layout = _layout_message(read_at, header, size)
        if layout is None or len(layout) < 3 or layout[0] != 3 or layout[1] != 2:
            return None  # version 3, chunked
        ndim = layout[2]
        if ndim != len(index.shape) + 1 or len(layout) < 11:
            return None
        return cls(int.from_bytes(layout[3:11], "little"), ndim, size)

    def find(self, index: LazyTable, read_at: ReadAt, wanted: np.ndarray) -> None:
        """Fill the cells ``wanted`` (sorted linear grid positions) of ``index``."""
        grid = np.array(index.offsets.shape, np.int64)
        chunks = np.array(index.chunks, np.int64)
        strides = np.array([math.prod(grid[d + 1 :]) for d in range(len(grid))], np.int64)
        shape = (grid, chunks, strides)
        level: list[tuple[int, np.ndarray]] = []
        if self.root != _UNDEFINED:
            level = [(self.root, wanted)]
        while level:
            missing = [addr for addr, _ in level if addr not in self.inner]
            self._read_level(index, read_at, missing, shape)
            below: list[tuple[int, np.ndarray]] = []
            for addr, cells in level:
                node = self.inner.get(addr)
                if node is None:
                    continue  # a leaf: its entries are in the index now
                lows, children = node
                cut = np.searchsorted(cells, lows)
                for i in np.flatnonzero(cut[1:] > cut[:-1]).tolist():
                    below.append((int(children[i]), cells[cut[i] : cut[i + 1]]))
            level = below
        still = index.offsets.ravel()[wanted] == UNKNOWN
        flat = index.offsets.reshape(-1)
        flat[wanted[still]] = -1  # no entry in the tree: never written

    def _read_level(
        self,
        index: LazyTable,
        read_at: ReadAt,
        addrs: list[int],
        shape: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Fetch the nodes at ``addrs`` together and parse them all at once: the entries of
        leaves go into ``index``, inner nodes into :attr:`inner` (each child's first cell,
        as a linear grid position, and its address)."""
        if not addrs:
            return
        datas = self._nodes(read_at, addrs)
        entry = self.key + 8
        used = np.array([int.from_bytes(d[6:8], "little") for d in datas], np.int64)
        levels = np.array([d[5] for d in datas], np.int64)
        width = 24 + (int(used.max()) + 1) * entry
        buf = np.zeros((len(datas), width), np.uint8)
        for i, data in enumerate(datas):
            size = min(len(data), width)
            buf[i, :size] = np.frombuffer(data, np.uint8, size)
        record = np.dtype(
            [("size", "<u4"), ("mask", "<u4"), ("at", "<u8", (self.ndim,)), ("child", "<u8")]
        )
        recs = np.ascontiguousarray(buf[:, 24:]).view(record)  # (nodes, entries + 1)
        grid, chunks, strides = shape
        first = recs["at"][..., :-1].astype(np.int64) // chunks  # the cell of each key
        entries = np.arange(recs.shape[1])[None, :] < used[:, None]
        leaf = entries & (levels == 0)[:, None]
        cells = first[leaf]
        inside = (cells < grid).all(axis=1)
        at = tuple(cells[inside].T)
        index.sizes[at] = recs["size"][leaf][inside]
        index.masks[at] = recs["mask"][leaf][inside]
        index.offsets[at] = recs["child"][leaf][inside].astype(np.int64)  # last: now known
        lows = np.minimum(first, grid) @ strides
        for i in np.flatnonzero(levels > 0).tolist():
            n = int(used[i])
            self.inner[addrs[i]] = (lows[i, : n + 1], recs["child"][i, :n].astype(np.int64))

    def _nodes(self, read_at: ReadAt, addrs: list[int]) -> list[bytes]:
        """The nodes at ``addrs``, fetched together (a node larger than HDF5's default
        size, from a file made with a larger K, again on its own), checked."""
        runs = [(addr, self._extent(addr, self.node_bytes)) for addr in addrs]
        out = []
        for (addr, _), data in zip(runs, fetch_runs(read_at, runs), strict=True):
            data = bytes(data)
            need = self._node_size(data, addr)
            if need > len(data):
                (data,) = fetch_runs(read_at, [(addr, self._extent(addr, need))])
                data = bytes(data)
                if self._node_size(data, addr) > len(data):
                    raise LoomFileError(
                        f"the B-tree node at byte {addr} holds more entries than the file "
                        "has bytes for; the file is truncated or corrupt"
                    )
            out.append(data)
        return out

    def _extent(self, addr: int, nbytes: int) -> int:
        if not 0 <= addr < self.size:
            raise LoomFileError(
                f"a B-tree node of the chunk index is at byte {addr}, outside the file "
                f"of {self.size} bytes; the file is truncated or corrupt"
            )
        return min(nbytes, self.size - addr)

    def _node_size(self, data: bytes, addr: int) -> int:
        if data[:4] != b"TREE" or len(data) < 24 or data[4] != 1:
            raise LoomFileError(
                f"found no B-tree node of chunks at byte {addr} (the chunk index); the "
                "file is corrupt"
            )
        used = int.from_bytes(data[6:8], "little")
        if not used:
            raise LoomFileError(f"the B-tree node at byte {addr} is empty; the file is corrupt")
        return 24 + used * (self.key + 8) + self.key


_UNDEFINED = (1 << 64) - 1
_K = 32
_LAYOUT, _CONTINUATION = 8, 16
_HEADER_GUESS = 1024


def _layout_message(read_at: ReadAt, header: int, size: int) -> bytes | None:
    """The data layout message of the version-1 object header at ``header``, or None."""
    if not 0 <= header < size - 16:
        return None
    (block,) = fetch_runs(read_at, [(header, min(_HEADER_GUESS, size - header))])
    block = bytes(block)
    if block[0] != 1:
        return None  # version 2 ("OHDR"): not parsed here
    count = int.from_bytes(block[2:4], "little")
    pending = [(header + 16, int.from_bytes(block[8:12], "little"))]
    seen = 0
    while pending and seen < count:
        start, length = pending.pop(0)
        if not (start >= 0 and start + length <= size):
            return None
        if header <= start and start + length <= header + len(block):
            data = block[start - header : start - header + length]
        else:
            (data,) = fetch_runs(read_at, [(start, length)])
            data = bytes(data)
        pos = 0
        while pos + 8 <= len(data) and seen < count:
            kind = int.from_bytes(data[pos : pos + 2], "little")
            size = int.from_bytes(data[pos + 2 : pos + 4], "little")
            body = data[pos + 8 : pos + 8 + size]
            seen += 1
            if kind == _LAYOUT:
                return body
            if kind == _CONTINUATION and size >= 16:
                pending.append(
                    (int.from_bytes(body[:8], "little"), int.from_bytes(body[8:16], "little"))
                )
            pos += 8 + size
    return None


def check_known(index: LazyTable, cells: Cells, where: str = "") -> None:
    """Raise :class:`LoomFileError` if a cell of ``cells`` was not looked up (a lazy index
    read without :func:`resolve`: its unknown cells would read as fill values)."""
    if index.complete:
        return
    region = index.offsets[np.ix_(*_positions(cells, index.offsets.shape))]
    if (region == UNKNOWN).any():
        raise LoomFileError(
            "the chunk index of this read is incomplete (cells not looked up); expected "
            "resolve() before reading",
            path=where or None,
        )


def _positions(cells: Cells, grid: tuple[int, ...]) -> list[np.ndarray]:
    return [
        np.arange(*c.indices(n)) if isinstance(c, slice) else np.asarray(c, np.int64)
        for c, n in zip(cells, grid, strict=True)
    ]
