"""Running a computation for the command line: which dask scheduler, and a progress bar."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import dask

from loomx._write.stream import lost_scheduler
from loomx.errors import LoomxError

__all__ = [
    "SchedulerError",
    "compute",
    "scheduler",
]


class SchedulerError(LoomxError, RuntimeError):
    """A scheduler address that cannot be reached, or an unusable ``--processes`` value."""


@contextlib.contextmanager
def scheduler(address: str | None = None, processes: int | None = None) -> Iterator[Any]:
    """Run dask computations inside on the chosen scheduler; yields the ``Client`` or None.

    ``address`` connects a ``dask.distributed`` Client to a running scheduler;
    ``processes`` starts a ``LocalCluster`` of that many single-threaded worker processes
    (dask's processes scheduler when ``distributed`` is not installed); neither: dask's
    default threads.
    """
    if address and processes:
        raise SchedulerError("give either a scheduler address or a number of processes")
    if processes is not None and processes < 1:
        raise SchedulerError(f"--processes must be at least 1, found {processes}")
    if not address and not processes:
        yield None
        return
    try:
        import distributed
    except ImportError:
        if address:
            raise SchedulerError(
                "connecting to a scheduler needs dask.distributed: pip install distributed"
            ) from None
        with dask.config.set(scheduler="processes", num_workers=processes):
            yield None
        return
    if address:
        try:
            client = distributed.Client(address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise SchedulerError(f"cannot connect to the scheduler at {address}: {exc}") from None
        with client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def compute(*collections: Any, client: Any = None, progress: bool = False) -> tuple[Any, ...]:
    """``dask.compute(*collections)`` in one graph, with a progress bar on stderr when
    ``progress`` (:class:`loomx.cli.progress.ProgressBar` locally, ``distributed.progress``
    on a Client)."""
    if client is not None:
        try:
            futures = client.compute(list(collections))
            if progress:
                from distributed import progress as show_progress

                show_progress(futures)
                print(file=sys.stderr)
            return tuple(client.gather(futures))
        except Exception as err:
            lost = lost_scheduler(client, err)
            if lost is not None:
                raise SchedulerError(str(lost)) from err
            raise
    if progress:
        from loomx.cli.progress import ProgressBar

        with ProgressBar(out=sys.stderr):
            return dask.compute(*collections)
    return dask.compute(*collections)
