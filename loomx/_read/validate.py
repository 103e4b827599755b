"""Check a Loom file against the spec (and, optionally, loompy's attribute conventions).

The spec rules are those of loompy's ``LoomValidator`` (groups present, ``/matrix`` and
layer shapes and dtypes, attribute lengths and dtypes, graph vectors), plus what it does not
check: the version's value, graph vertices within ``0 <= v < n``, float graph vertices,
graph groups that are not groups, links that are not datasets, legacy ``row_edges`` groups
and compound attributes.  Every problem is reported with its HDF5 path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from loomx._format import spec as _spec
from loomx._hdf5.files import open_h5

__all__ = [
    "KNOWN_VERSIONS",
    "Problem",
    "validate_loom",
]

KNOWN_VERSIONS = ("2.0.1", "3.0.0")
"""Spec versions loompy and loomx write."""

EMBEDDING_SUFFIXES = ("tsne", "umap", "pca", "embedding")
"""Column attribute names ending (in lower case) with one of these are embeddings."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a file: where (HDF5 path), what, and at which level."""

    h5path: str
    message: str
    level: str = "spec"  # or "conventions"

    def __str__(self) -> str:
        return f"{self.h5path}: {self.message}"


def validate_loom(
    path: str | os.PathLike[str], *, conventions: bool = False, locking: bool | None = None
) -> list[Problem]:
    """Every problem of a Loom file, in file order; an empty list for a valid file.

    Parameters
    ----------
    path
        The file (opened read-only).
    conventions
        Also check loompy's conventions: ``CellID`` and ``Accession`` present, unique
        strings; ``ClusterID`` integers 0, 1, ... with none missing; ``Valid``,
        ``Selected``, ``Outliers`` integers 0 or 1; embeddings ``(M, k)`` numbers.
    locking
        HDF5 file locking.

    Raises
    ------
    LoomFileError, LoomFileNotFoundError
        Not an HDF5 file at all (the one problem that stops the check).

    Examples
    --------
    >>> for problem in validate_loom("pbmc.loom", conventions=True):  # doctest: +SKIP
    ...     print(problem)
    /col_graphs/KNN/b: vertex 5000 out of range; expected 0 <= b < 4998
    """
    with open_h5(os.fspath(path), "r", locking) as f:
        checker = _Checker(f)
        checker.check_spec()
        if conventions:
            checker.check_conventions()
        return checker.problems


class _Checker:
    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self.problems: list[Problem] = []
        self.shape: tuple[int, ...] | None = None
        self.version = "0.0.0"
        self.level = "spec"

    def add(self, h5path: str, message: str) -> None:
        self.problems.append(Problem(h5path, message, self.level))

    def dataset(self, h5path: str) -> h5py.Dataset | None:
        """The dataset at ``h5path`` if it is a hard-linked dataset, else a problem."""
        parent, _, name = h5path.rpartition("/")
        link = self.f[parent or "/"].get(name, getlink=True)
        if link is None:
            self.add(h5path, "missing")
            return None
        if not isinstance(link, h5py.HardLink):
            self.add(h5path, f"a {type(link).__name__}; expected a dataset stored in the file")
            return None
        obj = self.f[h5path]
        if not isinstance(obj, h5py.Dataset):
            self.add(h5path, f"a {type(obj).__name__}; expected a dataset")
            return None
        return obj

    # ----------------------------------------------------------------------- spec

    def check_spec(self) -> None:
        self.check_version()
        required = [_spec.LAYERS, _spec.ROW_ATTRS, _spec.COL_ATTRS]
        required += [_spec.ROW_GRAPHS, _spec.COL_GRAPHS]
        if _spec.uses_vlen_utf8(self.version):
            required.append(_spec.GLOBAL_ATTRS)
        for group in required:
            if not isinstance(self.f.get(group), h5py.Group):
                found = "missing" if group not in self.f else "not a group"
                self.add(f"/{group}", f"{found}; expected a group")
        for legacy in _spec.LEGACY_GRAPH_GROUPS.values():
            if legacy in self.f:
                self.add(f"/{legacy}", "legacy graph group; the spec names it *_graphs")
        self.check_layers()
        if self.shape is None:
            return
        for space in (_spec.ROW_ATTRS, _spec.COL_ATTRS):
            self.check_attrs(space, self.shape[_spec.AXIS_OF_ATTRS[space]])
        for space in (_spec.ROW_GRAPHS, _spec.COL_GRAPHS):
            self.check_graphs(space, self.shape[_spec.AXIS_OF_GRAPHS[space]])

    def check_version(self) -> None:
        self.version, location = _spec.read_version(self.f)
        where = f"/{_spec.GLOBAL_ATTRS}/{_spec.VERSION_KEY}"
        if location is None:
            self.add(where, f"no spec version; expected one of {KNOWN_VERSIONS}")
        elif self.version not in KNOWN_VERSIONS:
            where = f"/@{_spec.VERSION_KEY}" if location == "/" else where
            self.add(where, f"version {self.version!r}; expected one of {KNOWN_VERSIONS}")

    def check_layers(self) -> None:
        matrix = self.dataset(f"/{_spec.MATRIX}")
        if matrix is None:
            return
        if matrix.ndim != 2:
            self.add("/matrix", f"{matrix.ndim}-D; expected 2-D (genes x cells)")
            return
        self.shape = matrix.shape
        self.check_dtype("/matrix", matrix.dtype)
        layers = self.f.get(_spec.LAYERS)
        if not isinstance(layers, h5py.Group):
            return
        for name in layers:
            layer = self.dataset(f"/{_spec.LAYERS}/{name}")
            if layer is None:
                continue
            if layer.shape != self.shape:
                self.add(layer.name, f"shape {layer.shape}; expected {self.shape} as /matrix")
            self.check_dtype(layer.name, layer.dtype)

    def check_dtype(self, h5path: str, dtype: np.dtype) -> None:
        if not _spec.is_layer_dtype(dtype):
            allowed = ", ".join(str(t) for t in _spec.LAYER_DTYPES)
            self.add(h5path, f"dtype {dtype} is not a number type; expected one of {allowed}")

    def check_attrs(self, space: str, length: int) -> None:
        group = self.f.get(space)
        if not isinstance(group, h5py.Group):
            return
        legacy = not _spec.uses_vlen_utf8(self.version)
        for name in group:
            attr = self.dataset(f"/{space}/{name}")
            if attr is None:
                continue
            if attr.ndim == 0 or attr.shape[0] != length:
                self.add(attr.name, f"shape {attr.shape}; expected a first dimension of {length}")
            dtype = attr.dtype
            string = h5py.check_string_dtype(dtype)
            if dtype.names:
                self.add(attr.name, f"compound dtype {dtype}; expected numbers or strings")
            elif string is not None:
                expected = "fixed-length ASCII" if legacy else "variable-length UTF-8"
                fixed = string.length is not None
                if fixed != legacy and self.version in KNOWN_VERSIONS:
                    found = "fixed-length" if fixed else "variable-length"
                    self.add(attr.name, f"{found} strings; spec {self.version} stores {expected}")
            elif not _spec.is_layer_dtype(dtype):
                self.add(attr.name, f"dtype {dtype}; expected numbers or strings")

    def check_graphs(self, space: str, n: int) -> None:
        group = self.f.get(space)
        if not isinstance(group, h5py.Group):
            return
        for name in group:
            where = f"/{space}/{name}"
            if not isinstance(group.get(name, getlink=True), h5py.HardLink) or not isinstance(
                group[name], h5py.Group
            ):
                self.add(where, "not a group; expected a group holding a, b and w")
                continue
            vectors = {part: self.dataset(f"{where}/{part}") for part in ("a", "b", "w")}
            lengths = {p: v.shape for p, v in vectors.items() if v is not None}
            if len(set(lengths.values())) > 1 or any(len(s) != 1 for s in lengths.values()):
                found = ", ".join(f"{p} {s}" for p, s in lengths.items())
                self.add(where, f"vectors of shapes {found}; expected 1-D of one length")
            for part in ("a", "b"):
                vector = vectors[part]
                if vector is not None and vector.ndim == 1:
                    self.check_vertices(vector, n)
            w = vectors["w"]
            if w is not None and w.dtype.kind not in "fiu":
                self.add(w.name, f"dtype {w.dtype}; expected float weights")

    def check_vertices(self, vector: h5py.Dataset, n: int) -> None:
        part = vector.name.rsplit("/", 1)[1]
        if vector.dtype.kind not in "iuf":
            self.add(vector.name, f"dtype {vector.dtype}; expected integer vertex indices")
            return
        values = vector[()]
        if vector.dtype.kind == "f":
            self.add(vector.name, f"float vertex indices ({vector.dtype}); expected integers")
            bad = ~np.isfinite(values) | (values != np.round(values))
            if bad.any():
                value = values[bad][0]
                self.add(vector.name, f"vertex {value} is not a whole number")
                values = values[~bad]
        if values.size and (values.min() < 0 or values.max() >= n):
            value = values.min() if values.min() < 0 else values.max()
            self.add(vector.name, f"vertex {value:g} out of range; expected 0 <= {part} < {n}")

    # ----------------------------------------------------------------------- conventions

    def check_conventions(self) -> None:
        self.level = "conventions"
        if self.shape is None:
            return
        self.check_ids(f"/{_spec.COL_ATTRS}/CellID")
        self.check_ids(f"/{_spec.ROW_ATTRS}/Accession")
        cluster = self.read(f"/{_spec.COL_ATTRS}/ClusterID")
        if cluster is not None:
            if cluster.dtype.kind not in "iu":
                self.add(f"/{_spec.COL_ATTRS}/ClusterID", f"dtype {cluster.dtype}; expected ints")
            else:
                found = np.unique(cluster)
                expected = np.arange(found.size)
                if not np.array_equal(found, expected):
                    missing = sorted(set(range(int(found.max()) + 1)) - set(found.tolist()))[:5]
                    self.add(
                        f"/{_spec.COL_ATTRS}/ClusterID",
                        f"values {_few(found)}; expected 0, 1, ... {found.size - 1} with none "
                        f"missing (missing {missing}, min {found.min()})",
                    )
        for space, name in (
            (_spec.COL_ATTRS, "Valid"),
            (_spec.COL_ATTRS, "Outliers"),
            (_spec.ROW_ATTRS, "Valid"),
            (_spec.ROW_ATTRS, "Selected"),
        ):
            values = self.read(f"/{space}/{name}")
            if values is None:
                continue
            if values.dtype.kind not in "iu":
                self.add(f"/{space}/{name}", f"dtype {values.dtype}; expected integers 0 or 1")
            elif not np.isin(values, (0, 1)).all():
                self.add(f"/{space}/{name}", f"values {_few(np.unique(values))}; expected 0 or 1")
        group = self.f.get(_spec.COL_ATTRS)
        for name in group if isinstance(group, h5py.Group) else ():
            if name.lower().endswith(EMBEDDING_SUFFIXES):
                attr = group[name]
                if not isinstance(attr, h5py.Dataset):
                    continue
                if attr.dtype.names:
                    continue  # SCope's compound embeddings: reported by the spec check
                if attr.ndim != 2 or attr.dtype.kind not in "iuf":
                    self.add(
                        attr.name,
                        f"embedding of shape {attr.shape}, dtype {attr.dtype}; expected "
                        f"({self.shape[1]}, k) numbers",
                    )

    def read(self, h5path: str) -> np.ndarray | None:
        obj = self.f.get(h5path)
        if not isinstance(obj, h5py.Dataset):
            return None
        return obj[()]

    def check_ids(self, h5path: str) -> None:
        if h5path not in self.f:
            self.add(h5path, "missing; the conventions expect unique string identifiers")
            return
        values = self.read(h5path)
        if values is None:
            return
        if h5py.check_string_dtype(self.f[h5path].dtype) is None:
            self.add(h5path, f"dtype {values.dtype}; expected strings")
            return
        unique, counts = np.unique(values, return_counts=True)
        if unique.size != values.size:
            duplicate = unique[counts > 1][0]
            if isinstance(duplicate, bytes):
                duplicate = duplicate.decode("utf-8", "replace")
            self.add(
                h5path,
                f"{values.size - unique.size} duplicate value(s), e.g. {duplicate!r}; expected "
                "unique identifiers",
            )


def _few(values: Any) -> str:
    values = list(np.asarray(values).tolist())
    return str(values[:6])[:-1] + (", ...]" if len(values) > 6 else "]")
