"""A progress bar with an ETA for dask computations, drawn on stderr.

Each redraw goes back to the start of the line and pads with spaces over whatever the
previous, longer text left (no stale characters); the bar ends with a newline.  The
command line draws it only when stderr is a terminal and ``--quiet`` is not given.

Examples
--------
>>> with ProgressBar():  # doctest: +SKIP
...     dask.compute(total)
[##############################] 100% 12/12 tasks, 3.2 s
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from dask.callbacks import Callback

__all__ = ["ProgressBar", "ProgressLine", "format_seconds", "progress_line"]


def format_seconds(seconds: float) -> str:
    """``4.2 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(done: int, total: int, elapsed: float, width: int = 30) -> str:
    """One state of the bar: ``[####  ]  40% 4/10 tasks, 2.0 s, ETA 3.0 s``."""
    fraction = done / total if total else 1.0
    filled = int(width * fraction)
    text = f"[{'#' * filled}{' ' * (width - filled)}] {fraction:4.0%} {done}/{total} tasks"
    text += f", {format_seconds(elapsed)}"
    if 0 < fraction < 1:
        text += f", ETA {format_seconds(elapsed * (1 - fraction) / fraction)}"
    return text


class ProgressLine:
    """One :func:`progress_line` redrawn in place on ``out`` (default stderr), padded so
    that no character of a longer earlier line stays on screen.

    Examples
    --------
    >>> import io
    >>> line = ProgressLine(io.StringIO())
    >>> line.draw(1, 2, 1.0); line.end()
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self._shown = 0  # characters of the line drawn last

    def draw(self, done: int, total: int, elapsed: float) -> None:
        text = progress_line(done, total, elapsed)
        self.out.write("\r" + text + " " * max(0, self._shown - len(text)))
        self.out.flush()
        self._shown = len(text)

    def end(self) -> None:
        """Move past the line: the next one starts on its own."""
        self.out.write("\n")
        self.out.flush()
        self._shown = 0


class ProgressBar(Callback):
    """dask callback that draws :func:`progress_line` every ``interval`` seconds."""

    def __init__(self, out: TextIO | None = None, interval: float = 0.2) -> None:
        super().__init__()
        self._line = ProgressLine(out)
        self._interval = interval
        self._state: dict[str, Any] | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def _start(self, dsk: Any) -> None:
        self._state = None
        self._started = time.perf_counter()
        self._running = True
        self._thread = threading.Thread(target=self._redraw, daemon=True)
        self._thread.start()

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._state = state

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join()
        self._draw()
        self._line.end()

    def _redraw(self) -> None:
        while self._running:
            self._draw()
            time.sleep(self._interval)

    def _draw(self) -> None:
        state = self._state
        if state is None:
            return
        done = len(state["finished"])
        total = done + len(state["ready"]) + len(state["waiting"]) + len(state["running"])
        self._line.draw(done, total, time.perf_counter() - self._started)
