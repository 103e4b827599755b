"""Region writes: new values for part of existing layers and attributes, in place.

Like ``xarray.Dataset.to_zarr(region=...)``: the Dataset holds the region's values, and only
the HDF5 chunks of each layer that intersect the region are rewritten.  The chunks are
computed into a spool file (old values fill the chunks' parts outside the region), then one
transaction stages them in the target as a *patch* per layer and commits (see
:mod:`loomx._write.transaction`): killed at any moment, the file reads as all old or all
new.  Attributes are small and rewritten whole.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import h5py
import numpy as np
import xarray as xr

from loomx._format import names as conv
from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._hdf5.files import open_h5
from loomx._hdf5.filesystem import temporary_file
from loomx._hdf5.links import hard_get
from loomx._read.backend import open_loom
from loomx._write import stream as _stream
from loomx._write.plan import (
    encode_attr,
    field_names,
    in_field_order,
    layer_data,
    resolve_dims,
)
from loomx._write.storage import create_attr, grows_along, storage_of_dataset
from loomx._write.transaction import recover_pending, transaction
from loomx.errors import LoomFileNotFoundError, LoomFormatError, LoomNameError

__all__ = ["write_region"]


@dataclass
class _LayerPatch:
    h5path: str
    data: Any  # the region's new values, (rows, cols), in the layer's dtype
    start: tuple[int, int]  # first element of the region
    origin: tuple[int, int]  # first element of the patch (on chunk edges)
    extent: tuple[int, int]  # shape of the patch

    def inner(self) -> tuple[slice, slice]:
        """Where the region lies inside the patch."""
        return tuple(  # type: ignore[return-value]
            slice(s - o, s - o + n)
            for s, o, n in zip(self.start, self.origin, self.data.shape, strict=True)
        )


def _bounds(
    region: Mapping[str, Any] | None, dims: tuple[str, str], shape: tuple[int, int], path: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    out = [(0, shape[0]), (0, shape[1])]
    for dim, sel in (region or {}).items():
        if dim not in dims:
            raise LoomNameError(f"region dim {dim!r} is not one of {dims}", path=path)
        axis = dims.index(dim)
        if not isinstance(sel, slice) or sel.step not in (None, 1):
            raise ValueError(f"region[{dim!r}] must be a slice with step 1, found {sel!r}")
        start, stop, _ = sel.indices(shape[axis])
        out[axis] = (start, max(start, stop))
    return out[0], out[1]


def _chunk_aligned(lo: int, hi: int, step: int, total: int) -> tuple[int, int]:
    return lo // step * step, min(total, -(-hi // step) * step)


def _region_values(old: Any, new: Any, inner: tuple[slice, slice]) -> da.Array:
    """``old`` (the patch's extent as on disk) with ``new`` in place of ``old[inner]``."""
    rows, cols = inner
    old = da.asarray(old)
    new = da.asarray(new).rechunk({0: old[rows].chunks[0]}, method="tasks")
    middle = [p for p in (old[rows, : cols.start], new, old[rows, cols.stop :]) if p.shape[1]]
    band = da.concatenate(middle, axis=1) if len(middle) > 1 else middle[0]
    parts = [p for p in (old[: rows.start], band, old[rows.stop :]) if p.shape[0]]
    if len(parts) == 1:
        return parts[0]
    parts = [p.rechunk({1: band.chunks[1]}, method="tasks") for p in parts]
    return da.concatenate(parts, axis=0)


def _new_attr_values(
    path: str,
    h5path: str,
    dset: h5py.Dataset,
    values: np.ndarray,
    span: tuple[int, int],
    legacy: bool,
) -> np.ndarray | None:
    """The whole attribute with ``values`` in ``span``, encoded; None when unchanged."""
    raw = dset[()]
    compound = dset.dtype if dset.dtype.names else None
    if compound is not None:
        raw = _values.compound_to_array(raw)[0]
    if _values.is_string_dtype(dset.dtype):
        old = _values.decode_strings(raw, fixed_length=dset.dtype.kind == "S", legacy=legacy)
        merged = np.asarray(old, dtype=object).copy()
        merged[span[0] : span[1]] = np.asarray(values, dtype=object)
    else:
        values = np.asarray(values)
        if values.dtype.kind not in "biuf" or not np.can_cast(values.dtype, raw.dtype, "same_kind"):
            raise LoomFormatError(
                f"found {values.dtype} values for a {raw.dtype} attribute; expected values "
                f"that fit {raw.dtype} (a region write keeps the file's dtype)",
                path=path,
                h5path=h5path,
            )
        merged = raw.copy()
        merged[span[0] : span[1]] = values
    if compound is not None:
        try:
            encoded = _values.array_to_compound(merged, compound)
        except ValueError as err:
            raise LoomFormatError(str(err), path=path, h5path=h5path) from err
        raw = dset[()]
    else:
        encoded = encode_attr(path, h5path, merged, legacy)
    if encoded.dtype == raw.dtype and encoded.shape == raw.shape and np.array_equal(encoded, raw):
        return None
    return encoded


def write_region(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    region: Mapping[str, slice] | None = None,
    *,
    dims: Sequence[str] | None = None,
    locking: bool | None = None,
) -> None:
    """Write ``ds`` into ``region`` of the existing Loom file ``path`` (see
    :func:`loomx.to_loom` with ``mode="r+"``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoomFileNotFoundError(
            "no such file; a region write needs an existing Loom file", path=path
        )
    recover_pending(path, locking)
    row_dim, col_dim = resolve_dims(ds, dims, path)
    paths = conv.variable_paths(ds, (row_dim, col_dim), path=path)
    graphs = [str(n) for n in ds.variables if conv.parse_graph_var(str(n)) is not None]
    if graphs:
        raise LoomFormatError(
            f"found graph variables {graphs}; a region write changes layers and attributes "
            "only (drop the graphs, or write them with mode='a')",
            path=path,
        )
    layers: list[_LayerPatch] = []
    attrs: dict[str, tuple[np.ndarray, Any]] = {}
    with open_h5(path, "r", locking) as f:
        version, _ = _spec.read_version(f)
        legacy = not _spec.uses_vlen_utf8(version)
        shape = tuple(hard_get(f, f"/{_spec.MATRIX}", path).shape)  # type: ignore[union-attr]
        rows, cols = _bounds(region, (row_dim, col_dim), shape, path)
        spans = {row_dim: rows, col_dim: cols}
        for name, h5path in paths.items():
            var = ds.variables[name]
            dset = hard_get(f, h5path, path)
            if not isinstance(dset, h5py.Dataset):
                raise LoomNameError(
                    f"{name!r} is not in the file; a region write changes existing objects "
                    "(add new ones with mode='a')",
                    path=path,
                    h5path=h5path,
                )
            if conv.path_kind(h5path) == "layer":
                var = var.transpose(row_dim, col_dim)
                expected = (rows[1] - rows[0], cols[1] - cols[0])
                if var.shape != expected:
                    raise LoomFormatError(
                        f"found shape {var.shape} for the region; expected {expected}",
                        path=path,
                        h5path=h5path,
                    )
                data = layer_data(path, h5path, var)
                if dset.chunks is None:  # contiguous: rewritten whole
                    origin, extent = (0, 0), shape
                else:
                    r = _chunk_aligned(*rows, dset.chunks[0], shape[0])
                    c = _chunk_aligned(*cols, dset.chunks[1], shape[1])
                    origin, extent = (r[0], c[0]), (r[1] - r[0], c[1] - c[0])
                start = (rows[0], cols[0])
                layers.append(_LayerPatch(h5path, data.astype(dset.dtype), start, origin, extent))
            else:
                span = spans[var.dims[0]]
                extra = (len(dset.dtype.names),) if dset.dtype.names else dset.shape[1:]
                values = var.values
                if dset.dtype.names and var.ndim == 2:
                    fields = field_names(ds, var)
                    values = in_field_order(values, fields, dset.dtype, (path, h5path))
                if var.shape[0] != span[1] - span[0] or var.shape[1:] != extra:
                    raise LoomFormatError(
                        f"found shape {var.shape}; expected ({span[1] - span[0]}, "
                        f"*{extra}) for the region",
                        path=path,
                        h5path=h5path,
                    )
                encoded = _new_attr_values(path, h5path, dset, values, span, legacy)
                if encoded is not None:
                    attrs[h5path] = (encoded, storage_of_dataset(dset))
    if layers or attrs:
        _commit_region(path, layers, attrs, locking, (row_dim, col_dim))


def _commit_region(
    path: str,
    layers: list[_LayerPatch],
    attrs: dict[str, tuple[np.ndarray, Any]],
    locking: bool | None,
    dims: tuple[str, str],
) -> None:
    client = _stream.current_client()
    with temporary_file(path, "spool", "a region write") as tmp:
        source = open_loom(path, dims=dims, locking=locking) if layers else None
        try:
            by_path = {} if source is None else conv.variable_paths(source, dims)
            names = {h5path: name for name, h5path in by_path.items()}
            jobs: list = []
            lock = threading.Lock()
            with open_h5(tmp, "w", locking) as spool, open_h5(path, "r", locking) as f:
                for k, patch in enumerate(layers):
                    (r0, c0), (nr, nc) = patch.origin, patch.extent
                    old = source[names[patch.h5path]].transpose(*dims).data  # type: ignore[index]
                    old = old[r0 : r0 + nr, c0 : c0 + nc]
                    values = _region_values(old, patch.data, patch.inner())
                    target = f[patch.h5path]
                    limit = h5py.h5s.UNLIMITED if grows_along(target, 1) else patch.extent[1]
                    space = h5py.h5s.create_simple(patch.extent, (patch.extent[0], limit))
                    dcpl = target.id.get_create_plist()
                    dsid = h5py.h5d.create(
                        spool.id, f"p{k}".encode(), target.id.get_type(), space, dcpl=dcpl
                    )
                    _stream.queue_columns(jobs, h5py.Dataset(dsid), values, 0, lock)
                _stream.run_queue(jobs, client, overlap=True)  # into the spool
        finally:
            if source is not None:
                source.close()
        _stage(path, tmp, layers, attrs, locking, client)


def _stage(
    path: str,
    spool_path: str,
    layers: list[_LayerPatch],
    attrs: dict[str, tuple[np.ndarray, Any]],
    locking: bool | None,
    client: Any,
) -> None:
    parents = {h5path.rpartition("/")[0] or "/" for h5path in [*attrs, *(p.h5path for p in layers)]}
    commit = transaction(path, what="region write", locking=locking, client=client, groups=parents)
    with commit as txn, open_h5(spool_path, "r", locking) as spool:
        for k, patch in enumerate(layers):
            whole = patch.origin == (0, 0) and patch.extent == tuple(txn.file[patch.h5path].shape)
            if whole:
                parent, link = txn.stage(patch.h5path)
            else:
                parent, link = txn.stage_patch(patch.h5path, patch.origin)
            parent.copy(spool[f"p{k}"], parent, name=link)
        for h5path, (values, storage) in attrs.items():
            parent, link = txn.stage(h5path)
            create_attr(parent, link, values, storage)
