"""The measured methods of the write operations: a computed layer, one attribute, combine.

Each write method works in a scratch folder made by its setup (under ``$LOOMX_BENCH_SCRATCH``,
default the input's folder) and removed by its teardown.  Before each timed run its
``prepare`` (not timed) makes a fresh copy of the input file, flushed to disk and read once
(so the run measures writing, not copying), and opens it as the method needs; ``combine``
methods remove the previous output instead.  The canonical result is the written file,
which ``reference.digest`` reads back after the timed runs.

``write_layer``: ``norm = log1p(matrix)`` written into the copy by loompy (the array computed
in memory by the setup, as loompy needs it; and loompy's fastest way from the file,
``ds.layers["norm"] = np.log1p(ds[:, :])``, read and computed in the run), by loomx lazily
(read, computed, compressed and written block by block, on dask's default threads or on a
warm ``LocalCluster``) and by loomx from the same in-memory array.  ``write_attr``: loomx's
write-back of one float64 column attribute.  ``combine``: ``loomx.combine`` and
``loompy.combine`` of the files of a folder (``make_data.py --combine``), rows matched by
``Accession``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .operations import Method, ncores
from .read_methods import start_cluster
from .reference import ATTR_NAME, LAYER_NAME, input_files, score_values, warm_page_cache

__all__ = ["SCRATCH_ENV", "write_methods"]

SCRATCH_ENV = "LOOMX_BENCH_SCRATCH"
"""Environment variable: folder for the write methods' copies (default: the input's folder)."""

KEY = "Accession"
"""Row attribute the combine methods match rows by."""


def scratch_root(source: str | os.PathLike) -> str:
    """Folder the write methods of ``source`` work in: ``$LOOMX_BENCH_SCRATCH`` or its folder."""
    return os.environ.get(SCRATCH_ENV) or str(Path(source).resolve().parent)


@dataclass
class WriteContext:
    """A write method's scratch folder, its target file and what it writes from."""

    source: str
    folder: str
    target: str
    inputs: list[str] = field(default_factory=list)
    ds: Any = None
    array: np.ndarray | None = None
    values: np.ndarray | None = None
    size_before: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    cluster: Any = None
    client: Any = None

    def dask_config(self) -> contextlib.AbstractContextManager[Any]:
        """This method's scheduler: with a cluster, its client as the current one (as a
        user's ``Client()`` is); nothing for dask's default threads."""
        import dask

        stack = contextlib.ExitStack()
        if self.client is not None:
            stack.enter_context(self.client.as_current())
        if self.config:
            stack.enter_context(dask.config.set(**self.config))
        return stack

    def close_dataset(self) -> None:
        """Close the Dataset opened on the target, if any."""
        if self.ds is not None:
            self.ds.close()
            self.ds = None


def _write_setup(*, in_memory: bool = False, cluster: bool = False, attr: bool = False) -> Any:
    """Setup of a write method: scratch folder, and the in-memory array, cluster or values."""

    def setup(path: str) -> WriteContext:
        folder = tempfile.mkdtemp(prefix="loomx-bench-write-", dir=scratch_root(path))
        ctx = WriteContext(path, folder, os.path.join(folder, Path(path).name))
        if in_memory:
            with h5py.File(path, "r") as f:
                ctx.array = np.log1p(f["matrix"][:])
        if attr:
            with h5py.File(path, "r") as f:
                ctx.values = score_values(f["matrix"].shape[1])
        if cluster:
            ctx.cluster, ctx.client = start_cluster(ncores())
            ctx.client.run(__import__, "loomx")  # a running, warm cluster, as a user has it
            ctx.config = {"scheduler": ctx.client}
        return ctx

    return setup


def _fresh_copy(ctx: WriteContext, open_it: bool = True) -> None:
    """Replace the target with a fresh copy of the source, on disk and in the page cache."""
    ctx.close_dataset()
    shutil.copyfile(ctx.source, ctx.target)
    with open(ctx.target, "rb+") as fh:
        os.fsync(fh.fileno())
    warm_page_cache(ctx.target)
    ctx.size_before = os.path.getsize(ctx.target)
    if open_it:
        import loomx

        ctx.ds = loomx.open_loom(ctx.target)


def _copy_only(ctx: WriteContext) -> None:
    _fresh_copy(ctx, open_it=False)


def _write_teardown(ctx: WriteContext) -> None:
    ctx.close_dataset()
    if ctx.client is not None:
        ctx.client.close()
        ctx.cluster.close()
    shutil.rmtree(ctx.folder, ignore_errors=True)


def _target(result: Any, ctx: WriteContext) -> str:
    return ctx.target


def _target_and_growth(result: Any, ctx: WriteContext) -> tuple[str, int]:
    return ctx.target, os.path.getsize(ctx.target) - ctx.size_before


def _loompy_write_layer(ctx: WriteContext) -> None:
    import loompy

    with loompy.connect(ctx.target) as ds:
        ds.layers[LAYER_NAME] = ctx.array


def _loompy_write_layer_fastest(ctx: WriteContext) -> None:
    import loompy

    with loompy.connect(ctx.target) as ds:
        ds.layers[LAYER_NAME] = np.log1p(ds[:, :])


def _loomx_write_lazy(ctx: WriteContext) -> None:
    import loomx

    ds = ctx.ds
    with ctx.dask_config():
        loomx.to_loom(ds.assign({LAYER_NAME: np.log1p(ds["matrix"])}), ctx.target, mode="a")


def _loomx_write_memory(ctx: WriteContext) -> None:
    import loomx

    ds = ctx.ds
    layer = (ds["matrix"].dims, ctx.array)
    loomx.to_loom(ds.assign({LAYER_NAME: layer}), ctx.target, mode="a")


def _loomx_write_attr(ctx: WriteContext) -> None:
    import loomx

    ds = ctx.ds
    loomx.to_loom(ds.assign_coords({ATTR_NAME: ("col", ctx.values)}), ctx.target, mode="a")


def _combine_setup(path: str) -> WriteContext:
    folder = tempfile.mkdtemp(prefix="loomx-bench-combine-", dir=scratch_root(path))
    return WriteContext(path, folder, os.path.join(folder, "combined.loom"), input_files(path))


def _remove_output(ctx: WriteContext) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(ctx.target)


def _loomx_combine(ctx: WriteContext) -> None:
    import loomx

    loomx.combine(ctx.inputs, ctx.target, key=KEY)


def _loompy_combine(ctx: WriteContext) -> None:
    import loompy

    loompy.combine(ctx.inputs, ctx.target, key=KEY)


def write_methods() -> list[Method]:
    """Every method of a write operation."""
    n = ncores()
    lazy = 'loomx lazy `to_loom(ds.assign(norm=np.log1p(ds["matrix"])), path, mode="a")`'
    common = dict(teardown=_write_teardown, normalize=_target, prepare=_fresh_copy)
    return [
        Method("loompy_write_layer", 'loompy `ds.layers["norm"] = array` (array in memory)',
               "write_layer", _write_setup(in_memory=True), _loompy_write_layer,
               **{**common, "prepare": _copy_only}),
        Method("loompy_write_layer_fastest", 'loompy `ds.layers["norm"] = np.log1p(ds[:, :])` '
               "(read, computed and written in the run)", "write_layer", _write_setup(),
               _loompy_write_layer_fastest, **{**common, "prepare": _copy_only}),
        Method("loomx_write_layer", f"{lazy}, default threads", "write_layer", _write_setup(),
               _loomx_write_lazy, **common),
        Method("loomx_write_layer_cluster", f"{lazy}, warm `LocalCluster({n} procs x 1 "
               "thread)`", "write_layer", _write_setup(cluster=True), _loomx_write_lazy,
               **common),
        Method("loomx_write_layer_memory", 'loomx in-memory `to_loom(ds.assign(norm=(dims, '
               'array)), path, mode="a")`', "write_layer", _write_setup(in_memory=True),
               _loomx_write_memory, **common),
        Method("loomx_write_attr", 'loomx `to_loom(ds.assign_coords(Score=("col", values)), '
               'path, mode="a")`', "write_attr", _write_setup(attr=True), _loomx_write_attr,
               **{**common, "normalize": _target_and_growth}),
        Method("loomx_combine", f'loomx `combine(files, out, key="{KEY}")`', "combine",
               _combine_setup, _loomx_combine, _write_teardown, _target, _remove_output),
        Method("loompy_combine", f'loompy `combine(files, out, key="{KEY}")`', "combine",
               _combine_setup, _loompy_combine, _write_teardown, _target, _remove_output),
    ]  # fmt: skip
