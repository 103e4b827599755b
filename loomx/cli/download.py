"""Commands on remote sources: a local copy of a URL, made where the results go.

A command that writes into its source (``loomx qc``) cannot write into a URL; with an
output it works on a local copy made under a temporary name next to the output and renamed
into place once the command has finished.

Examples
--------
>>> with local_copy("https://example.org/pbmc.loom", "pbmc.loom") as tmp:  # doctest: +SKIP
...     qc_file(tmp)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from loomx._hdf5.filesystem import move_into_place, temporary_file
from loomx._hdf5.remote import RemoteSource

__all__ = ["BLOCK", "local_copy"]

BLOCK = 16 << 20
"""Bytes fetched per request while copying."""


@contextlib.contextmanager
def local_copy(url: str, output: str) -> Iterator[str]:
    """Copy ``url`` to a temporary file next to ``output``; yield its name; rename it to
    ``output`` when the block ends without an error (removed otherwise)."""
    with temporary_file(output, "copy", f"copying {url}") as tmp:
        source = RemoteSource(url)
        size = source.size
        with open(tmp, "wb") as f:
            for offset in range(0, size, BLOCK):
                f.write(source(offset, min(BLOCK, size - offset)))
        yield tmp
        move_into_place(tmp, output)
