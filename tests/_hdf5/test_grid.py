"""loomx._hdf5.grid: the chunk cells a selection touches and where their parts go, against
brute force with numpy (every position of the selection, its cell and its place in the
cell) on random shapes, chunks and slices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loomx._hdf5.grid import axis_geometry, cell_positions, slice_bounds


@st.composite
def _axis(draw: st.DrawFn) -> tuple[int, int, int]:
    """``start < stop <= n`` and a chunk length."""
    n = draw(st.integers(1, 200))
    start = draw(st.integers(0, n - 1))
    stop = draw(st.integers(start + 1, n))
    return start, stop, draw(st.integers(1, 80))


@given(axis=_axis())
def test_axis_geometry_against_every_position(axis: tuple[int, int, int]) -> None:
    start, stop, chunk = axis
    positions = np.arange(start, stop)
    cell_of = positions // chunk
    first, last, out_at, in_at, count = axis_geometry(start, stop, chunk)
    assert (first, last) == (cell_of.min(), cell_of.max() + 1)
    cells = np.unique(cell_of)
    np.testing.assert_array_equal(cells, np.arange(first, last))  # no cell skipped
    for k, cell in enumerate(cells):
        mine = positions[cell_of == cell]
        assert out_at[k] == mine[0] - start  # where the part goes in the result
        assert in_at[k] == mine[0] - cell * chunk  # where it starts inside the cell
        assert count[k] == mine.size


@st.composite
def _selection(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], tuple[slice, ...]]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 30)) for _ in range(ndim))
    chunks = tuple(draw(st.integers(1, n + 3)) for n in shape)
    key = []
    for n in shape[: draw(st.integers(0, ndim))]:  # trailing axes may be left out
        a = draw(st.one_of(st.none(), st.integers(-n - 3, n + 3)))
        b = draw(st.one_of(st.none(), st.integers(-n - 3, n + 3)))
        key.append(slice(a, b))
    return shape, chunks, tuple(key)


@given(case=_selection())
def test_slice_bounds_are_numpys(case) -> None:
    shape, _, key = case
    expected = np.arange(int(np.prod(shape))).reshape(shape)[key]
    starts, stops = slice_bounds(shape, key)
    assert tuple(b - a for a, b in zip(starts, stops, strict=True)) == expected.shape
    box = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
    np.testing.assert_array_equal(np.arange(int(np.prod(shape))).reshape(shape)[box], expected)


@given(case=_selection())
def test_the_parts_of_the_cells_assemble_the_selection(case) -> None:
    """Cut a numbered array into its chunk cells; copying each cell's part where the grid
    says gives exactly numpy's selection."""
    shape, chunks, key = case
    values = np.arange(int(np.prod(shape))).reshape(shape)
    expected = values[key]
    starts, stops = slice_bounds(shape, key)
    if expected.size == 0:
        return
    padded = np.full([-(-n // c) * c for n, c in zip(shape, chunks, strict=True)], -1)
    padded[tuple(slice(0, n) for n in shape)] = values
    out = np.full(expected.shape, -2)
    geometry = [axis_geometry(a, b, c) for a, b, c in zip(starts, stops, chunks, strict=True)]
    grids = [np.arange(first, last) for first, last, *_ in geometry]
    for cell in np.ndindex(*(g.size for g in grids)):
        src, dst = [], []
        for axis, k in enumerate(cell):
            _, _, out_at, in_at, count = geometry[axis]
            corner = grids[axis][k] * chunks[axis]
            src.append(slice(corner + in_at[k], corner + in_at[k] + count[k]))
            dst.append(slice(out_at[k], out_at[k] + count[k]))
        assert (out[tuple(dst)] == -2).all()  # every element placed once
        out[tuple(dst)] = padded[tuple(src)]
    np.testing.assert_array_equal(out, expected)


@given(n=st.integers(1, 50), data=st.data())
def test_cell_positions(n: int, data: st.DataObject) -> None:
    cells = slice(data.draw(st.integers(0, n)), data.draw(st.integers(0, n)))
    np.testing.assert_array_equal(cell_positions(cells, n), np.arange(n)[cells])
    picked = data.draw(st.lists(st.integers(0, n - 1), max_size=10))
    np.testing.assert_array_equal(cell_positions(np.array(picked, np.int64), n), picked)


def test_slice_bounds_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="step-1"):
        slice_bounds((10, 10), (slice(0, 10, 2),))
    with pytest.raises(TypeError, match="only slices"):
        slice_bounds((10, 10), (3, slice(None)))
    with pytest.raises(IndexError, match="3 indices for a 2-D dataset"):
        slice_bounds((10, 10), (slice(None),) * 3)
    assert slice_bounds((10, 7), slice(2, 5)) == ([2, 0], [5, 7])
    assert slice_bounds((10,), (slice(8, 3),)) == ([8], [8])  # empty: stop == start
