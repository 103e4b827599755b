"""loomx.cli.run: the scheduler the command line computes on (dask's threads, a
``distributed`` LocalCluster of single-threaded processes, dask's processes scheduler
without ``distributed``) and ``compute`` with and without a progress bar; results are
compared with numpy on the same values.
"""

from __future__ import annotations

import sys

import dask
import dask.array as da
import numpy as np
import pytest

from loomx.cli import run as _run
from loomx.errors import LoomxError

VALUES = np.arange(600.0).reshape(20, 30)


def lazy_sums() -> tuple[da.Array, da.Array]:
    arr = da.from_array(VALUES, chunks=(7, 11))
    return arr.sum(axis=0), arr.max()


def test_no_scheduler_given_keeps_dasks_default():
    before = dask.config.get("scheduler", None)
    with _run.scheduler() as client:
        assert client is None
        assert dask.config.get("scheduler", None) == before
    assert dask.config.get("scheduler", None) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "tcp://127.0.0.1:1", "processes": 2}, "either a scheduler address or"),
        ({"processes": 0}, "at least 1, found 0"),
        ({"processes": -3}, "at least 1, found -3"),
    ],
)
def test_unusable_choices_are_refused(kwargs, message):
    with pytest.raises(_run.SchedulerError, match=message) as info, _run.scheduler(**kwargs):
        pass
    assert isinstance(info.value, LoomxError) and isinstance(info.value, RuntimeError)


def test_processes_start_a_local_cluster_of_single_threaded_workers():
    pytest.importorskip("distributed")
    with _run.scheduler(processes=2) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == 2 and {w["nthreads"] for w in workers} == {1}
        sums, peak = _run.compute(*lazy_sums(), client=client)
        assert dask.base.get_scheduler() == client.get  # dask computes there meanwhile
    np.testing.assert_array_equal(sums, VALUES.sum(axis=0))
    assert peak == VALUES.max()
    assert client.status == "closed"


def test_without_distributed_processes_use_dasks_processes_scheduler(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with _run.scheduler(processes=2) as client:
        assert client is None
        assert dask.config.get("scheduler") == "processes"
        assert dask.config.get("num_workers") == 2
    with (
        pytest.raises(_run.SchedulerError, match=r"needs dask\.distributed"),
        _run.scheduler(address="tcp://127.0.0.1:1"),
    ):
        pass


def test_an_unreachable_scheduler_is_refused():
    pytest.importorskip("distributed")
    with (
        pytest.raises(_run.SchedulerError, match=r"cannot connect to the scheduler at tcp://"),
        _run.scheduler(address="tcp://127.0.0.1:1"),
    ):
        pass


def test_compute_without_progress_bar_prints_nothing(capsys):
    sums, peak = _run.compute(*lazy_sums(), progress=False)
    np.testing.assert_array_equal(sums, VALUES.sum(axis=0))
    assert peak == VALUES.max()
    assert capsys.readouterr() == ("", "")


def test_compute_with_progress_bar_reports_on_stderr(capsys):
    (sums,) = _run.compute(lazy_sums()[0], progress=True)
    np.testing.assert_array_equal(sums, VALUES.sum(axis=0))
    out, err = capsys.readouterr()
    assert out == "" and "100%" in err
