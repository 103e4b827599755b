"""One-line error messages (:mod:`loomx.cli.messages`)."""

from __future__ import annotations

import errno

from loomx.cli.messages import describe, without_temporary_names
from loomx.errors import LoomWriteError


def test_temporary_names_become_the_files_they_stand_for():
    found = "'/d/.fresh.loom.loomx-tmp-12-spool-ab12': x; .a.loom.loomx-tmp-1-new-2 y"
    assert without_temporary_names(found) == "'/d/fresh.loom': x; a.loom y"
    assert without_temporary_names("/d/.hidden.loom") == "/d/.hidden.loom"


def test_the_read_only_error_of_the_issue():
    err = OSError(errno.EROFS, "Read-only file system", "/d/.fresh.loom.loomx-tmp-9-spool-1")
    text = describe(err)
    assert (
        text
        == "/d/fresh.loom: read-only file system; give -o OUT.loom to write the results elsewhere"
    )
    wrapped = LoomWriteError(f"writing failed: {err}", path="/d/fresh.loom")
    assert "loomx-tmp" not in describe(wrapped)


def test_every_message_is_one_line_and_names_more_than_the_exception():
    for err in (
        FileNotFoundError(errno.ENOENT, "No such file or directory", "nofolder"),
        KeyError("x"),
        ValueError("bad\nvalue"),
        RuntimeError(),
        ModuleNotFoundError("No module named 's3fs'", name="s3fs"),
        ModuleNotFoundError("No module named 'zzz.sub'", name="zzz.sub"),
    ):
        text = describe(err)
        assert "\n" not in text and text != type(err).__name__
    assert "loomx[remote]" in describe(ModuleNotFoundError("x", name="s3fs"))
    assert "pip install zzz" in describe(ModuleNotFoundError("x", name="zzz.sub"))
    assert describe(FileNotFoundError(2, "x", "nofolder")).startswith("nofolder: no such file")
