"""Hypothesis strategies for Loom content (requires the ``hypothesis`` package)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from loomx._format import spec as _spec
from loomx.testing._example import write_loom_h5py

__all__ = [
    "LoomContent",
    "loom_contents",
]


@dataclass
class LoomContent:
    """Everything a small Loom file holds, as plain numpy arrays."""

    layers: dict[str, np.ndarray]
    row_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    col_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    row_graphs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    col_graphs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    global_attrs: dict[str, Any] = field(default_factory=dict)
    version: str = _spec.LOOM_SPEC_VERSION
    chunks: tuple[int, int] | None = None

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write this content to ``path`` with h5py alone (:func:`write_loom_h5py`)."""
        write_loom_h5py(
            path,
            self.layers,
            self.row_attrs,
            self.col_attrs,
            row_graphs=self.row_graphs,
            col_graphs=self.col_graphs,
            global_attrs=self.global_attrs,
            version=self.version,
            chunks=self.chunks,
        )


def texts(legacy: bool) -> st.SearchStrategy[str]:
    """Unicode text HDF5 can store; legacy files cannot hold a literal ``&`` unambiguously."""
    excluded = "\x00&" if legacy else "\x00"
    return st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=excluded),
        max_size=8,
    )


def names() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True)


@st.composite
def attribute(draw: st.DrawFn, n: int, legacy: bool) -> np.ndarray:
    kind = draw(st.sampled_from(["int", "float", "bool", "str", "2d"]))
    if kind == "str":
        return np.array(draw(st.lists(texts(legacy), min_size=n, max_size=n)), dtype=object)
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, n))
    if kind == "2d":
        k = draw(st.integers(1, 3))
        return draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-1e6, 1e6)))
    dtype = np.int64 if kind == "int" else np.float32
    return draw(hnp.arrays(dtype, n, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False)))


@st.composite
def graph(draw: st.DrawFn, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_edges = draw(st.integers(0, 3 * n))
    vertex = st.integers(0, n - 1)
    a = np.array(draw(st.lists(vertex, min_size=n_edges, max_size=n_edges)), dtype=np.int64)
    b = np.array(draw(st.lists(vertex, min_size=n_edges, max_size=n_edges)), dtype=np.int64)
    if n_edges:  # a duplicate (multigraph) edge
        a, b = np.append(a, a[0]), np.append(b, b[0])
    w = np.array(draw(st.lists(st.floats(0, 1), min_size=len(a), max_size=len(a))))
    return a, b, w


@st.composite
def loom_contents(draw: st.DrawFn, max_side: int = 40) -> LoomContent:
    """Random Loom content: shapes down to 1 x 1, every layer dtype, unicode, N-D
    attributes, graphs with duplicate edges, both spec versions, random HDF5 chunks."""
    n = draw(st.integers(1, max_side))
    m = draw(st.integers(1, max_side))
    version = draw(st.sampled_from(["3.0.0", "2.0.1"]))
    legacy = version != "3.0.0"
    layer_names = draw(st.lists(names(), max_size=2, unique=True))
    layers = {}
    for name in ["", *layer_names]:
        dtype = draw(st.sampled_from(_spec.LAYER_DTYPES))
        layers[name] = draw(hnp.arrays(dtype, (n, m)))
    attr_names = draw(st.lists(names(), max_size=4, unique=True))
    split = draw(st.integers(0, len(attr_names)))
    row_attrs = {k: draw(attribute(n, legacy)) for k in attr_names[:split]}
    col_attrs = {k: draw(attribute(m, legacy)) for k in attr_names[split:]}
    chunks = draw(st.none() | st.tuples(st.integers(1, n), st.integers(1, m)))
    return LoomContent(
        layers=layers,
        row_attrs=row_attrs,
        col_attrs=col_attrs,
        row_graphs={"G": draw(graph(n))} if draw(st.booleans()) else {},
        col_graphs={"KNN": draw(graph(m))} if draw(st.booleans()) else {},
        global_attrs={"Title": draw(texts(legacy)), "Numbers": np.arange(3.0)},
        version=version,
        chunks=chunks,
    )
