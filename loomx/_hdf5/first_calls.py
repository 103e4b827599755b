"""Which work of a process runs in Python before numba is initialised.

The first call of a compiled function in a process pays numba's initialisation, even with
every kernel cached on disk (:data:`LOAD_SECONDS`); later compiled functions load in
milliseconds.  A process's first small reads and reductions run in Python instead (the
decode kernel's twin, :mod:`loomx._hdf5.pydecode`; NumPy moments in
:mod:`loomx._read.layer`), until a compiled function has run or the Python work reaches
that cost: the first larger piece of work loads the kernels, and after that everything is
compiled.  :func:`loomx._hdf5.kernels.compiled` registers every compiled function here.

Examples
--------
>>> runs_in_python_first(0.01)  # in a process where nothing compiled has run yet  # doctest: +SKIP
True
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["LOAD_SECONDS", "loaded", "register", "runs_in_python_first"]

LOAD_SECONDS = 0.4
"""What the first call of a compiled function costs a process, with every kernel cached on
disk (numba's initialisation: 0.42 s on the 2-core machine of ``benchmarks/README.md``)."""

_DISPATCHERS: list[Any] = []
_python_seconds = 0.0
_lock = threading.Lock()


def register(dispatcher: Any) -> Any:
    """Count ``dispatcher`` (a compiled function) among those :func:`loaded` looks at."""
    _DISPATCHERS.append(dispatcher)
    return dispatcher


def loaded() -> bool:
    """Whether a compiled function has run in this process (numba is initialised: later
    calls pay no :data:`LOAD_SECONDS`)."""
    return any(getattr(d, "signatures", ()) for d in _DISPATCHERS)


def runs_in_python_first(seconds: float) -> bool:
    """Whether work that takes about ``seconds`` in Python runs there rather than compiled:
    no compiled function has run in this process yet, and the process's work in Python so
    far, this included, stays within :data:`LOAD_SECONDS`.  Work that answers yes is
    counted."""
    global _python_seconds
    if loaded():
        return False
    with _lock:
        if _python_seconds + seconds > LOAD_SECONDS:
            return False
        _python_seconds += seconds
        return True
