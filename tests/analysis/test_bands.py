"""Bands of a layer: statistics of a derived layer see the values the dense chain gives,
whether its steps run on the non-zeros or on the dense band."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import loomx
from loomx._format import names
from loomx.analysis import bands


def _band_values(band, valid):
    return band.toarray()[:, valid]


@pytest.mark.parametrize(
    "chain",
    [
        lambda ds: loomx.pp.log1p(loomx.pp.normalize_total(ds)),
        lambda ds: loomx.pp.log1p(loomx.pp.normalize_total(ds, exclude_highly_expressed=True)),
        lambda ds: loomx.pp.scale(loomx.pp.log1p(loomx.pp.normalize_total(ds, target_sum=1e4))),
    ],
    ids=["normalize-log1p", "exclude-high", "scale (no sparse variant)"],
)
def test_bands_given_to_a_statistic_equal_the_dense_layer(counts_loom, chain) -> None:
    with loomx.open_loom(counts_loom) as ds:
        out = chain(ds.chunk({names.dataset_dims(ds)[1]: 128}))
        name = out.attrs[bands.CURRENT_LAYER]
        data = bands.bands(out, name)
        assert data.numblocks[1] > 1  # the per-cell vectors are sliced per band
        valid = np.ones(data.shape[1], bool)
        valid[::3] = False
        parts = bands.band_map(data, _band_values, cells={"valid": valid})
        got = np.concatenate(dask.compute(*parts), axis=1)
        dense = np.asarray(out[name].transpose(*names.dataset_dims(out)).values)
    np.testing.assert_array_equal(got, dense[:, valid])


def test_only_steps_with_a_sparse_variant_run_on_the_nonzeros(counts_loom) -> None:
    with loomx.open_loom(counts_loom) as ds:
        logged = loomx.pp.log1p(loomx.pp.normalize_total(ds))
        scaled = loomx.pp.scale(logged)
        sparse_steps = bands._sparse_chain(bands.bands(logged, "log1p"), fresh=False)
        assert sparse_steps is not None and len(sparse_steps[1]) == 2
        assert bands._sparse_chain(bands.bands(scaled, "scaled"), fresh=False) is None
