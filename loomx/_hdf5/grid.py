"""The chunk grid of a dataset: the bounds of a selection of step-1 slices, and for each
axis which chunk cells it touches and where their parts go."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["axis_geometry", "cell_positions", "slice_bounds"]


def slice_bounds(shape: tuple[int, ...], key: Any) -> tuple[list[int], list[int]]:
    """Start and stop per dimension of a key of step-1 slices."""
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) > len(shape):
        raise IndexError(f"{len(key)} indices for a {len(shape)}-D dataset")
    key = key + (slice(None),) * (len(shape) - len(key))
    starts, stops = [], []
    for k, n in zip(key, shape, strict=True):
        if not isinstance(k, slice):
            raise TypeError(f"only slices are supported here, got {k!r}")
        start, stop, step = k.indices(n)
        if step != 1:
            raise ValueError(f"only step-1 slices are supported here, got {k!r}")
        starts.append(start)
        stops.append(max(start, stop))
    return starts, stops


def cell_positions(cells: Any, n: int) -> np.ndarray:
    """Grid positions of a slice or an index array of cells."""
    return np.arange(n)[cells] if isinstance(cells, slice) else np.asarray(cells)


def axis_geometry(
    start: int, stop: int, chunk: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """For ``start:stop`` along an axis chunked by ``chunk``: the first and last+1 chunk
    cells, and per cell the output position, position inside the chunk and length."""
    first, last = start // chunk, (stop - 1) // chunk + 1
    corner = np.arange(first, last, dtype=np.int64) * chunk
    lo, hi = np.maximum(corner, start), np.minimum(corner + chunk, stop)
    return first, last, lo - start, lo - corner, hi - lo
