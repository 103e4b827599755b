"""The progress bar of the command line (:mod:`loomx.cli.progress`)."""

from __future__ import annotations

import io

import dask
import dask.array as da
import numpy as np

from loomx.cli.progress import ProgressBar, format_seconds, progress_line


def rendered(text: str) -> list[str]:
    """The lines a terminal shows for ``text`` (``\\r`` returns to the line's start and
    overwrites; nothing is erased)."""
    lines, line, pos = [], [], 0
    for ch in text:
        if ch == "\r":
            pos = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, pos = [], 0
        else:
            line[pos : pos + 1] = [ch]
            pos += 1
    if line:
        lines.append("".join(line))
    return lines


def test_line_has_an_eta_until_done():
    assert progress_line(1, 4, 2.0).endswith("1/4 tasks, 2.0 s, ETA 6.0 s")
    assert "ETA" not in progress_line(4, 4, 8.0) and "100%" in progress_line(4, 4, 8.0)
    assert progress_line(0, 0, 0.0).startswith("[" + "#" * 30 + "]")
    assert format_seconds(125) == "2 min 05 s" and format_seconds(3720) == "1 h 02 min"


def test_no_stale_characters_when_the_text_gets_shorter():
    out = io.StringIO()
    bar = ProgressBar(out=out, interval=0.001)
    bar._started = 0.0
    bar._state = {"finished": [], "ready": [1] * 9, "waiting": [], "running": [1]}
    bar._draw()  # "... 0/10 tasks, ... s" with a long elapsed time: the longest text
    bar._state = {"finished": [1] * 10, "ready": [], "waiting": [], "running": []}
    bar._started = __import__("time").perf_counter()
    bar._draw()
    last = out.getvalue().rsplit("\r", 1)[1]
    assert rendered(out.getvalue())[-1].rstrip() == last.rstrip()


def test_a_computation_ends_with_a_full_bar_and_one_newline():
    out = io.StringIO()
    x = da.from_array(np.arange(100), chunks=10)
    with ProgressBar(out=out, interval=0.001):
        (total,) = dask.compute(x.sum())
    assert total == 4950
    shown = rendered(out.getvalue())
    assert len(shown) == 1 and "100%" in shown[0] and out.getvalue().endswith("\n")
