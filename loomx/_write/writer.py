"""Write xarray Datasets as Loom files: complete new files and write-back into existing ones.

``mode="w"`` writes a complete spec 3.0.0 file under a temporary name next to the target,
fsyncs it and renames it into place.  ``mode="a"`` writes what is new or differs from the disk
into an existing file, following its spec version: new data first goes to a spool file next
to the target (the target is not held for writing while blocks are computed), then one ``r+``
transaction copies each object in under a temporary link and commits them all at once
(see :mod:`loomx._write.transaction`).
Everything is validated before the first byte is written (:mod:`loomx._write.plan`); layers
are computed block by block, and gzip layers are compressed into finished HDF5 chunks in the
same tasks (threads, processes or workers in parallel, see :mod:`loomx._write.packing`); the
one process that holds the output open only writes the chunks' bytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dask
import dask.array as da
import h5py
import numpy as np
import xarray as xr

from loomx._format import spec as _spec
from loomx._format import values as _values
from loomx._hdf5.files import locking_in_use, open_h5
from loomx._hdf5.filesystem import move_into_place, refuse_remote, temporary_file
from loomx._write import packing as _packing
from loomx._write import stream as _stream
from loomx._write.plan import WritePlan, plan_dataset
from loomx._write.region import write_region
from loomx._write.storage import create_attr, create_graph, create_layer, make_storage
from loomx._write.transaction import recover_pending, transaction

__all__ = ["to_loom", "write_new_file"]


def _commit(plan: WritePlan, spool_path: str, objects: list[str], client: Any) -> None:
    """Copy ``objects`` from the spool into the target and commit them all at once."""
    parents = {h5path.rpartition("/")[0] or "/" for h5path in objects}
    commit = transaction(
        plan.path, what="write-back", locking=plan.locking, client=client, groups=parents
    )
    with commit as txn, open_h5(spool_path, "r", plan.locking) as spool:
        for h5path in objects:
            parent, tmp = txn.stage(h5path)
            parent.copy(spool[h5path], parent, name=tmp)
        for name, value in plan.root_attrs.items():
            txn.set_root_attr(name, value)


# --------------------------------------------------------------------------- streaming


def write_content(f: h5py.File, plan: WritePlan, reference: h5py.File | None, client: Any) -> list:
    """Write the plan's objects into ``f``; return the HDF5 paths that must be committed.

    With ``reference`` (the target of a write-back), layers marked ``compare`` are compared
    block by block with it and left out of the result when every block is equal.
    """
    for h5path, values in plan.arrays.items():
        parent, _, name = h5path.rpartition("/")
        create_attr(f.require_group(parent or "/"), name, values, plan.array_storage[h5path])
    for h5path, edges in plan.graphs.items():
        parent, _, name = h5path.rpartition("/")
        create_graph(f.require_group(parent or "/"), name, edges)
    lock = threading.Lock()
    lazy: list[tuple[da.Array, _stream.Sink]] = []
    sinks = []
    for layer in plan.layers:
        parent, _, name = layer.h5path.rpartition("/")
        dset = create_layer(
            f.require_group(parent or "/"), name, plan.shape, layer.data.dtype, layer.storage
        )
        ref = reference[layer.h5path] if layer.compare and reference is not None else None
        sink = _stream.Sink(dset, lock, ref)
        sinks.append((layer, sink))
        data, level = layer.data, layer.storage.deflate_level
        if level is not None and not isinstance(data, da.Array) and data.size:
            data = _packing.in_blocks(data, dset.chunks)
        if not isinstance(data, da.Array):
            sink[(slice(None), slice(None))] = data
        elif data.size and level is not None:
            aligned = _stream.aligned(data, dset.chunks)
            lazy.append((_packing.packed(aligned, dset, level, keep_raw=ref is not None), sink))
        elif data.size:
            lazy.append((_stream.aligned(data, dset.chunks or dset.shape), sink))
    _stream.run_queue(lazy, client, overlap=True)  # into a new file or a spool
    skip = {layer.h5path for layer, sink in sinks if sink.equal}
    written = [layer.h5path for layer in plan.layers if layer.h5path not in skip]
    return written + list(plan.arrays) + list(plan.graphs)


def write_new_file(f: h5py.File, plan: WritePlan, client: Any = None) -> None:
    """Write the plan as a complete spec 3.0.0 file into the empty open file ``f``."""
    for group in _spec.REQUIRED_GROUPS_3:
        f.require_group(group)
    f[_spec.GLOBAL_ATTRS].create_dataset(
        _spec.VERSION_KEY, data=_spec.LOOM_SPEC_VERSION, dtype=_values.STRING_DTYPE
    )
    write_content(f, plan, None, client)


# --------------------------------------------------------------------------- execution


def execute(plan: WritePlan) -> None:
    """Write a plan, on the current dask scheduler (a distributed client's workers too)."""
    get = _stream.scheduler()
    if get is None or _stream.scheduler_kind(get) != "distributed":
        return _execute_with(plan, None)
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except ValueError:
        return _execute_with(plan, get.__self__)
    with worker_client() as client:  # running as a task (compute=False): secede meanwhile
        return _execute_with(plan, client)


def _execute_with(plan: WritePlan, client: Any) -> None:
    path = plan.path
    kind = "new" if plan.mode == "w" else "spool"
    with temporary_file(path, kind, "writing") as tmp:
        with open_h5(tmp, "w", plan.locking) as f:
            if plan.mode == "w":
                write_new_file(f, plan, client)
                objects: list[str] = []
            else:
                compare = any(layer.compare for layer in plan.layers)
                ref_file = open_h5(path, "r", plan.locking) if compare else None
                with ref_file or contextlib.nullcontext() as ref:
                    objects = write_content(f, plan, ref, client)
        if plan.mode == "w":
            move_into_place(tmp, path)
        elif objects or plan.root_attrs:
            _commit(plan, tmp, objects, client)


def to_loom(
    ds: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    mode: Literal["w", "a", "r+"] = "w",
    region: Mapping[str, slice] | None = None,
    compute: bool = True,
    dims: Sequence[str] | None = None,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    chunks: tuple[int, int] = (_spec.LOOMPY_LAYER_CHUNKS, _spec.LOOMPY_LAYER_CHUNKS),
    compression: str | None = "gzip",
    compression_opts: int | None = _spec.LOOMPY_COMPRESSION_LEVEL,
    locking: bool | None = None,
) -> Any:
    """Write a Dataset as a Loom file.

    Parameters
    ----------
    ds
        Dataset in loomx's model: ``matrix`` and other ``(row, col)`` data variables are
        layers, variables whose first dim is ``row``/``col`` are attributes, graph
        side-variables (``col_graphs:KNN``, ``...:a``, ``...:b``, ``...:w``) are graphs and
        ``ds.attrs`` are global attributes.
    path
        Output file.
    mode
        ``"w"``: write a complete spec 3.0.0 file (atomically replacing any existing one).
        ``"a"``: write into an existing Loom file, following its spec version, only what is
        new or differs from the disk; may be the file ``ds`` was opened from, while ``ds`` is
        alive.  Everything is committed at once: killed at any moment, the file reads as
        all old or all new (see :func:`loomx.recover`).  A replaced object's old space is
        not reclaimed (:func:`loomx.repack` does that).  A missing file is created as
        with ``"w"``.
        ``"r+"``: write new values into existing layers and attributes only, over
        ``region`` (the whole extent by default), as ``xarray.Dataset.to_zarr`` does:
        ``ds`` holds the region's values; only the HDF5 chunks of each layer that
        intersect the region are rewritten (attributes, which are small, are rewritten
        whole); all at once, as with ``"a"``.  Graphs and ``ds.attrs`` are not written.
    region
        With ``mode="r+"``: ``{dim: slice(start, stop)}`` for the row and/or column dim.
    compute
        False: validate now and return a ``dask.delayed`` object whose ``compute()`` writes.
    dims
        Names of the (row, col) dims; default ``ds.encoding["loom_dims"]``, then the dims of
        ``matrix``, then ``("row", "col")``.
    encoding
        Per-variable storage, as for :meth:`xarray.Dataset.to_netcdf`: ``{"matrix":
        {"chunksizes": (256, 256), "compression": "gzip", "compression_opts": 4,
        "shuffle": False, "fletcher32": False, "dtype": "float32"}}`` (``chunks`` is an
        alias of ``chunksizes``).  It overrides each variable's own ``encoding``, which
        :func:`loomx.open_loom` fills from the file, so a Dataset read and written keeps
        its source's chunks and compression.  A 2-D attribute whose ``dtype`` is
        ``"compound"`` or a structured dtype is stored as a compound attribute (SCope's
        ``RegulonsAUC``, ``Embeddings_X``), one field per label of its second dim, in
        their order; one read from such an attribute keeps its dtype by its own encoding.
        A value its field cannot hold exactly is refused, naming the variable.
    chunks, compression, compression_opts
        Storage of variables that neither ``encoding`` nor their own encoding describe
        (loompy's (64, 64) chunks, gzip level 2 by default); layers are growable along
        columns like loompy's.  Attributes use the same compression, with h5py's chunks.
    locking
        HDF5 file locking for every file this opens; default the setting of the Datasets
        open on ``path`` in this process, else the one ``ds`` was opened with
        (``ds.encoding["loom_locking"]``).  ``False`` on filesystems without locking.

    Returns
    -------
    None, or a ``dask.delayed.Delayed`` when ``compute=False``.

    Raises
    ------
    LoomFormatError, LoomNameError
        The Dataset cannot be stored (found before anything is written; the file is unchanged).
    LoomWriteError
        Writing failed, or the file is held open elsewhere; the previous data stays readable.

    Notes
    -----
    NaN and Inf are stored as they are: the spec allows them, though loompy's own writer
    refuses them.  Bool attributes are stored as uint8, bool layers are refused.  A layer
    or attribute that still reads, unmodified, the dataset :func:`loomx.open_loom` made it
    from (see :func:`loomx._read.backend.unchanged_source`), while the file still holds that
    object (``encoding["loom_object_address"]``), is taken as unchanged without reading it;
    every other variable is compared with the disk, bit for bit.  After a
    write-back that replaced a variable, a Dataset still reading it lazily sees the new data;
    reopen the file to start from a consistent state.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"matrix": (("row", "col"), np.ones((3, 2), "float32"))},
    ...                 coords={"Gene": ("row", ["a", "b", "c"])})
    >>> to_loom(ds, "example.loom")                                   # doctest: +SKIP
    >>> to_loom(ds.assign_coords(Seen=("col", [1, 0])), "example.loom", mode="a")  # doctest: +SKIP
    >>> to_loom(ds, "c.loom", encoding={"matrix": {"chunksizes": (3, 2)}})  # doctest: +SKIP
    >>> part = ds.isel(col=slice(0, 1)).drop_vars("Gene") * 2
    >>> to_loom(part, "example.loom", mode="r+", region={"col": slice(0, 1)})  # doctest: +SKIP
    """
    refuse_remote(path, "write")
    path = os.fspath(path)
    if mode not in ("w", "a", "r+"):
        raise ValueError(f"mode must be 'w', 'a' or 'r+'; got {mode!r}")
    if region is not None and mode != "r+":
        raise ValueError(f"region needs mode='r+'; got mode={mode!r}")
    if locking is None:
        locking = locking_in_use(path) if os.path.exists(path) else None
    if locking is None:
        locking = ds.encoding.get("loom_locking")
    if mode == "r+":
        if not compute:
            raise ValueError("mode='r+' writes at once; compute=False is not supported")
        write_region(ds, path, region, dims=dims, locking=locking)
        return None
    default = make_storage(chunks, compression, compression_opts, ndim=2, path=path)
    if mode == "a" and not os.path.exists(path):
        mode = "w"
    options = {"encoding": encoding, "default_storage": default, "locking": locking}
    if mode == "a":
        recover_pending(path, locking)  # compare with the file as readers see it
        with open_h5(path, "r", locking) as target:
            plan = plan_dataset(ds, path, mode, dims, target, **options)
    else:
        plan = plan_dataset(ds, path, mode, dims, None, **options)
    if compute:
        execute(plan)
        return None
    for layer in plan.layers:  # written as they are now, whatever happens to them meanwhile
        if isinstance(layer.data, np.ndarray):
            layer.data = layer.data.copy()
    plan.arrays = {h5path: values.copy() for h5path, values in plan.arrays.items()}
    return dask.delayed(execute, pure=False)(plan, dask_key_name=f"to_loom-{uuid.uuid4().hex}")
