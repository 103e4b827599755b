"""Minibatches of cells (``ds.loom.batches``) against h5py's read of the same file: values,
coverage of every cell once per epoch (both modes, any split into shards, dask and PyTorch
workers), determinism per seed and epoch, and buffers bounded by construction."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import dask
import h5py
import numpy as np
import pytest
from conftest import REGION_SHAPE, make_ds, region_file

import loomx
from loomx.errors import LoomNameError
from loomx.ops import loader as loader_module
from loomx.ops.loader import BatchLoader

N_CELLS = REGION_SHAPE[1]
SETTINGS = [
    {"mode": "block"},
    {"mode": "block", "block_size": 16, "buffer_size": 48},
    {"mode": "uniform", "buffer_size": 40},
    {"mode": "block", "shuffle": False},
    {"mode": "uniform", "shuffle": False},
]


@pytest.fixture(scope="module")
def loom(tmp_path_factory) -> dict:
    path = region_file(tmp_path_factory.mktemp("batches") / "cells.loom")
    with h5py.File(path, "r") as f:
        return {
            "path": path,
            "matrix": f["matrix"][...],
            "spliced": f["layers/spliced"][...],
            "Score": f["col_attrs/Score"][...],
            "CellID": f["col_attrs/CellID"][...].astype(str),
        }


@pytest.fixture
def reads(monkeypatch) -> list[np.ndarray]:
    """The cells of every read the loader makes, in order."""
    seen: list[np.ndarray] = []
    real = loader_module._read_cells
    monkeypatch.setattr(
        loader_module,
        "_read_cells",
        lambda data, cells, out=None: seen.append(cells) or real(data, cells, out),
    )
    return seen


def collect(loader) -> list[dict]:
    return list(loader)


def indices(batches: list[dict]) -> np.ndarray:
    return np.concatenate([b["index"] for b in batches]) if batches else np.zeros(0, int)


@pytest.mark.parametrize("settings", SETTINGS)
def test_values_and_attributes_equal_h5pys_read_of_the_same_cells(loom, settings):
    ds = loomx.open_loom(loom["path"])
    for layer in ("matrix", "spliced"):
        loader = ds.loom.batches(32, layer=layer, attrs=["Score", "CellID"], seed=3, **settings)
        for batch in loader:
            cells = batch["index"]
            assert batch["X"].shape == (len(cells), REGION_SHAPE[0])
            assert batch["X"].flags.c_contiguous and batch["X"].dtype == loom[layer].dtype
            np.testing.assert_array_equal(batch["X"], loom[layer][:, cells].T)
            np.testing.assert_array_equal(batch["Score"], loom["Score"][cells])
            np.testing.assert_array_equal(batch["CellID"], loom["CellID"][cells])


@pytest.mark.parametrize("settings", SETTINGS)
def test_batches_kept_to_the_end_of_the_epoch_keep_their_values(loom, settings):
    """The loader reads into its buffers again: a batch handed out is the caller's own."""
    ds = loomx.open_loom(loom["path"])
    batches = collect(ds.loom.batches(32, seed=5, prefetch=1, **settings))
    assert sum(len(b["index"]) for b in batches) == N_CELLS
    for batch in batches:
        np.testing.assert_array_equal(batch["X"], loom["matrix"][:, batch["index"]].T)


@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "float16", "int64", "uint16", ">f4", "bool"]
)
@pytest.mark.parametrize("shape", [(1, 1), (37, 5), (150, 64), (33, 17)])
def test_blocks_are_transposed_into_rows_as_numpy_transposes(dtype, shape) -> None:
    rng = np.random.default_rng(4)
    block = (rng.random(shape) * 1000).astype(dtype)
    out = (rng.random((shape[1] + 3, shape[0] + 2)) * 1000).astype(dtype)
    expected = out.copy()
    expected[1 : shape[1] + 1, 2:] = block.T
    loader_module._transpose_into(block, out[1 : shape[1] + 1, 2:])
    np.testing.assert_array_equal(out, expected)  # written where it goes, nowhere else
    with pytest.raises(ValueError, match="does not fit"):
        loader_module._transpose_into(block, out[1 : shape[1] + 1, 1:])


def test_a_float16_layer_is_handed_out_in_batches(tmp_path: Path) -> None:
    import xarray as xr

    values = np.random.default_rng(6).random((70, 150)).astype(np.float16)
    loomx.to_loom(xr.Dataset({"matrix": (("row", "col"), values)}), tmp_path / "h.loom")
    ds = loomx.open_loom(tmp_path / "h.loom")
    for batch in ds.loom.batches(32, seed=1):
        np.testing.assert_array_equal(batch["X"], values[:, batch["index"]].T)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("shards", [1, 3, 7])
def test_every_cell_exactly_once_per_epoch_across_shards(loom, settings, shards):
    ds = loomx.open_loom(loom["path"])
    for epoch in (0, 1):
        loader = ds.loom.batches(25, seed=11, epoch=epoch, **settings)
        parts = loader.split(shards)
        seen = [indices(collect(part)) for part in parts]
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N_CELLS))
        assert [len(part) for part in parts] == [len(part.plan()) for part in parts]
        if loader.mode == "uniform" or shards * loader.block_size <= N_CELLS:
            assert all(len(s) for s in seen)  # fewer blocks than shards leave some empty


def test_split_and_shard_compose_into_disjoint_parts(loom):
    ds = loomx.open_loom(loom["path"])
    halves = [ds.loom.batches(16, shard=(i, 2), mode="uniform") for i in range(2)]
    quarters = [q for h in halves for q in h.split(2)]
    assert sorted(q.shard for q in quarters) == [(i, 4) for i in range(4)]
    seen = np.concatenate([indices(collect(q)) for q in quarters])
    np.testing.assert_array_equal(np.sort(seen), np.arange(N_CELLS))


@pytest.mark.parametrize("mode", ["block", "uniform"])
def test_deterministic_per_seed_and_epoch(loom, mode):
    ds = loomx.open_loom(loom["path"])
    first = collect(ds.loom.batches(20, seed=5, mode=mode, block_size=16))
    again = collect(ds.loom.batches(20, seed=5, mode=mode, block_size=16))
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["X"], b["X"])
    loader = ds.loom.batches(20, seed=5, mode=mode, block_size=16)
    loader.set_epoch(1)
    other_epoch = indices(collect(loader))
    other_seed = indices(collect(ds.loom.batches(20, seed=6, mode=mode, block_size=16)))
    assert not np.array_equal(indices(first), other_epoch)
    assert not np.array_equal(indices(first), other_seed)
    np.testing.assert_array_equal(other_epoch, indices(collect(loader)))  # same epoch again
    explicit = ds.loom.batches(20, seed=5, epoch=1, mode=mode, block_size=16)
    np.testing.assert_array_equal(other_epoch, indices(collect(explicit)))


def test_unshuffled_batches_are_the_file_order(loom):
    ds = loomx.open_loom(loom["path"])
    for mode in ("block", "uniform"):
        got = collect(ds.loom.batches(64, shuffle=False, mode=mode))
        np.testing.assert_array_equal(indices(got), np.arange(N_CELLS))
        assert [len(b["index"]) for b in got] == [64, 64, 64, 64, 44]


def test_block_mode_reads_whole_aligned_blocks_and_shuffles_within_the_buffer(loom, reads):
    ds = loomx.open_loom(loom["path"])
    loader = ds.loom.batches(10, seed=2, block_size=16, buffer_size=32)
    got = collect(loader)
    for cells in reads:  # each read: up to two whole 16-cell blocks
        blocks = np.unique(cells // 16)
        assert len(blocks) <= 2
        expected = np.concatenate([np.arange(b * 16, min(b * 16 + 16, N_CELLS)) for b in blocks])
        np.testing.assert_array_equal(cells, expected)
    assert [int(c[0]) // 16 for c in reads] != sorted(int(c[0]) // 16 for c in reads)
    first = got[0]["index"]
    assert not np.array_equal(first, np.sort(first))  # shuffled within the buffer


def test_uniform_mode_reads_each_buffer_once_sorted(loom, reads):
    ds = loomx.open_loom(loom["path"])
    loader = ds.loom.batches(20, seed=4, mode="uniform", buffer_size=60)
    got = collect(loader)
    assert len(reads) == 5  # 300 cells, 3 batches of 20 per read
    for k, cells in enumerate(reads):
        assert np.all(np.diff(cells) > 0)
        together = np.concatenate([b["index"] for b in got[3 * k : 3 * k + 3]])
        np.testing.assert_array_equal(cells, np.sort(together))
    order = np.random.default_rng([4, 0]).permutation(N_CELLS)
    np.testing.assert_array_equal(indices(got), order)  # the exact uniform permutation


@pytest.mark.parametrize("mode", ["block", "uniform"])
def test_rows_held_never_exceed_the_bound(loom, mode):
    ds = loomx.open_loom(loom["path"])
    for prefetch in (1, 2, 4):
        loader = ds.loom.batches(
            10, mode=mode, block_size=16, buffer_size=32, prefetch=prefetch, seed=1
        )
        assert loader.max_rows == prefetch * 32 + 9
        it = iter(loader)
        for _ in range(3):  # a slow consumer: the readers run ahead as far as they may
            next(it)
        peak_early = loader.rows_held_peak
        rest = list(it)
        assert 0 < peak_early <= loader.rows_held_peak <= loader.max_rows < N_CELLS
        assert rest and loader._gauge.now == 0


def test_stopping_early_releases_the_buffers(loom):
    ds = loomx.open_loom(loom["path"])
    loader = ds.loom.batches(10, buffer_size=64, prefetch=3)
    it = iter(loader)
    next(it)
    assert loader._gauge.now > 0
    it.close()
    assert loader._gauge.now == 0


def test_drop_last_and_lengths(loom):
    ds = loomx.open_loom(loom["path"])
    for mode in ("block", "uniform"):
        for parts in (1, 2):
            for part in ds.loom.batches(32, mode=mode, drop_last=True, seed=8).split(parts):
                got = collect(part)
                assert len(got) == len(part) and all(len(b["index"]) == 32 for b in got)
            kept = ds.loom.batches(32, mode=mode, drop_last=False).split(parts)
            assert sum(len(indices(collect(p))) for p in kept) == N_CELLS


def test_pickled_loader_hands_out_the_same_batches_on_dask_workers(loom):
    ds = loomx.open_loom(loom["path"])
    loader = ds.loom.batches(16, seed=9, attrs=["Score"])
    copy = pickle.loads(pickle.dumps(loader))
    np.testing.assert_array_equal(indices(collect(copy)), indices(collect(loader)))

    def consume(part: BatchLoader) -> np.ndarray:
        return indices(collect(part))

    parts = [dask.delayed(consume)(p) for p in loader.split(3)]
    seen = dask.compute(*parts, scheduler="threads")
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N_CELLS))


def test_pytorch_worker_info_splits_an_epoch(loom, monkeypatch):
    ds = loomx.open_loom(loom["path"])
    loader = ds.loom.batches(16, seed=9, mode="uniform")
    fake = types.ModuleType("torch.utils.data")
    seen = []
    for worker in range(3):
        fake.get_worker_info = lambda worker=worker: types.SimpleNamespace(id=worker, num_workers=3)
        monkeypatch.setitem(sys.modules, "torch.utils.data", fake)
        seen.append(indices(collect(loader)))
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N_CELLS))
    assert all(len(s) == N_CELLS // 3 for s in seen)


def test_pytorch_dataloader_workers_hand_out_every_cell_once(loom):
    torch = pytest.importorskip("torch")
    ds = loomx.open_loom(loom["path"])
    loader = ds.loom.batches(16, seed=9, attrs=["Score"])
    dl = torch.utils.data.DataLoader(loader.torch_dataset(), batch_size=None, num_workers=2)
    got = list(dl)
    seen = np.concatenate([b["index"].numpy() for b in got])
    np.testing.assert_array_equal(np.sort(seen), np.arange(N_CELLS))
    for b in got:
        np.testing.assert_array_equal(b["X"].numpy(), loom["matrix"][:, b["index"].numpy()].T)


def test_in_memory_datasets_work_too():
    ds = make_ds()
    values = ds["spliced"].values
    got = collect(ds.loom.batches(17, layer="spliced", attrs=["Valid"], block_size=50))
    np.testing.assert_array_equal(np.sort(indices(got)), np.arange(ds.sizes["col"]))
    for b in got:
        np.testing.assert_array_equal(b["X"], values[:, b["index"]].T)
        np.testing.assert_array_equal(b["Valid"], ds["Valid"].values[b["index"]])
    dask_layer = collect(ds.loom.batches(17, layer="matrix", shuffle=False))
    np.testing.assert_array_equal(dask_layer[0]["X"], ds["matrix"].values[:, :17].T)


def test_bad_arguments_are_refused(loom, tmp_path: Path):
    ds = loomx.open_loom(loom["path"])
    with pytest.raises(LoomNameError, match="no layer 'nope'"):
        ds.loom.batches(8, layer="nope")
    with pytest.raises(LoomNameError, match="no column attribute 'Gene'"):
        ds.loom.batches(8, attrs=["Gene"])
    with pytest.raises(ValueError, match="mode 'random'"):
        ds.loom.batches(8, mode="random")
    with pytest.raises(ValueError, match="batch_size 0"):
        ds.loom.batches(0)
    with pytest.raises(ValueError, match=r"shard \(2, 2\)"):
        ds.loom.batches(8, shard=(2, 2))
    with pytest.raises(ValueError, match="split"):
        ds.loom.batches(8).split(0)


def test_a_layer_computed_from_another_reads_its_own_values(loom):
    ds = loomx.open_loom(loom["path"])
    ds["doubled"] = ds["matrix"] * 2
    view = ds.isel(row=slice(10, 50))
    for data, expected in (
        (ds, loom["matrix"] * 2),
        (view, loom["matrix"][10:50] * 2),
    ):
        for batch in data.loom.batches(64, layer="doubled", seed=1, mode="uniform"):
            np.testing.assert_array_equal(batch["X"], expected[:, batch["index"]].T)
    for batch in view.loom.batches(64, layer="matrix", seed=1):
        np.testing.assert_array_equal(batch["X"], loom["matrix"][10:50, batch["index"]].T)
