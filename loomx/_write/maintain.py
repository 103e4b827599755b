"""Deleting objects from a Loom file, and repacking a file to reclaim their space.

:func:`delete` unlinks layers, attributes and graphs in one transaction
(see :mod:`loomx._write.transaction`).
HDF5 does not give the space of unlinked or replaced objects back to the file system;
:func:`repack` copies every live object, as stored (chunks and filters kept, chunk by
chunk), into a new file that atomically replaces the old one (or goes elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import h5py

from loomx._format import spec as _spec
from loomx._hdf5 import filesystem as _filesystem
from loomx._hdf5.files import open_for_writing, open_h5
from loomx._hdf5.filesystem import fsync, move_into_place, temporary_file
from loomx._hdf5.links import hard_get
from loomx._read.backend import open_loom
from loomx._write.stream import current_client
from loomx._write.transaction import recover_pending, transaction
from loomx.errors import LoomFileNotFoundError, LoomNameError

__all__ = ["delete", "repack"]


def _h5paths_of(path: str, names: list[str], locking: bool | None) -> list[str]:
    """HDF5 paths of ``names`` (variable names or HDF5 paths), the file opened once."""
    if all(name.startswith("/") for name in names):
        return [name.rstrip("/") for name in names]
    with open_loom(path, chunks=None, locking=locking) as ds:
        try:
            return [n.rstrip("/") if n.startswith("/") else ds.loom.path_of(n) for n in names]
        except LoomNameError as err:
            raise LoomNameError(err.message, path=path) from None


def delete(
    path: str | os.PathLike[str], names: str | Iterable[str], *, locking: bool | None = None
) -> None:
    """Delete layers, attributes or graphs from a Loom file, all at once.

    Parameters
    ----------
    path
        The Loom file.
    names
        Variable names as :func:`loomx.open_loom` gives them (``"spliced"``, ``"Gene"``,
        ``"row_attrs:X"``, ``"col_graphs:KNN"``), or HDF5 paths (``"/layers/spliced"``).
        ``/matrix`` cannot be deleted.
    locking
        HDF5 file locking; ``False`` on filesystems without it.

    Raises
    ------
    LoomNameError
        A name the file does not hold, or ``/matrix``; nothing is deleted.
    LoomWriteError
        The file could not be written; it keeps its old content.

    Notes
    -----
    The space the objects took stays in the file until :func:`repack`.  Killed at any
    moment, the file holds either all of the objects or none of them.

    Examples
    --------
    >>> loomx.delete("pbmc.loom", ["spliced", "col_graphs:KNN"])  # doctest: +SKIP
    """
    path = os.fspath(path)
    recover_pending(path, locking)
    wanted = [names] if isinstance(names, str) else list(names)
    h5paths = _h5paths_of(path, wanted, locking)
    with open_h5(path, "r", locking) as f:
        for h5path in h5paths:
            if h5path == f"/{_spec.MATRIX}" or h5path.count("/") < 2:
                raise LoomNameError(
                    "cannot delete the main matrix or a spec group; expected a layer, "
                    "attribute or graph",
                    path=path,
                    h5path=h5path,
                )
            if hard_get(f, h5path, path) is None:
                raise LoomNameError("no such object in the file", path=path, h5path=h5path)
    parents = {h5path.rpartition("/")[0] or "/" for h5path in h5paths}
    commit = transaction(
        path, what="delete", locking=locking, client=current_client(), groups=parents
    )
    with commit as txn:
        for h5path in dict.fromkeys(h5paths):
            txn.stage_delete(h5path)


def repack(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    locking: bool | None = None,
) -> None:
    """Copy a Loom file's live objects into a new file, reclaiming unused space.

    Every dataset is copied as stored (HDF5's object copy: chunks, filters and fill values
    kept, chunk by chunk); objects left by an interrupted loomx write are not copied (a
    committed one is finished first).

    Parameters
    ----------
    path
        The Loom file.
    out
        Where to write the repacked file; by default it atomically replaces ``path``
        (held open for writing meanwhile, so no other writer can change it).
    locking
        HDF5 file locking; ``False`` on filesystems without it.

    Examples
    --------
    >>> loomx.delete("pbmc.loom", "spliced")  # doctest: +SKIP
    >>> loomx.repack("pbmc.loom")  # the file shrinks by the layer  # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LoomFileNotFoundError("no such file; expected an existing Loom file", path=path)
    target = path if out is None else os.fspath(out)
    recover_pending(path, locking)
    # holds the writer's lock (no other writer meanwhile) and writes nothing
    src = open_for_writing(path, locking, current_client(), mode="r") if out is None else None
    try:
        with (
            src or open_h5(path, "r", locking) as f,
            temporary_file(target, "new", "repacking") as tmp,
        ):
            with open_h5(tmp, "w", locking) as g:
                for key, value in f.attrs.items():
                    g.attrs[key] = value
                for name in f:
                    if _filesystem.TEMPORARY_TAG not in name:
                        f.copy(f[name], g, name=name, without_attrs=False)
                        _drop_temporary(g[name])
            move_into_place(tmp, target)
    finally:
        if src is not None:
            src.close()
    fsync(target)


def _drop_temporary(obj: h5py.Group | h5py.Dataset) -> None:
    """Remove objects left by interrupted loomx writes from a copied group."""
    if not isinstance(obj, h5py.Group):
        return
    for name in list(obj):
        if _filesystem.TEMPORARY_TAG in name:
            del obj[name]
        else:
            _drop_temporary(obj[name])
