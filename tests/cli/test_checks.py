"""The checks a command makes before it computes (:mod:`loomx.cli.checks`)."""

from __future__ import annotations

import errno
import os

import pytest

from loomx.cli import checks
from loomx.errors import LoomWriteError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///data/pbmc.loom", "/data/pbmc.loom"),
        ("file://localhost/data/a%20b.loom", "/data/a b.loom"),
        ("FILE:///x.loom", "/x.loom"),
        ("https://example.org/x.loom", "https://example.org/x.loom"),
        ("plain/x.loom", "plain/x.loom"),
    ],
)
def test_source_path(url, expected):
    assert checks.source_path(url) == expected


def test_urls():
    assert checks.is_url("s3://bucket/x.loom") and checks.is_url("http://h/x.loom")
    assert not checks.is_url("file:///x.loom") and not checks.is_url("/x.loom")


@pytest.mark.parametrize(
    ("code", "expected"),
    [(errno.EROFS, "read-only filesystem"), (errno.EPERM, "immutable"), (errno.EACCES, "chmod")],
)
def test_unwritable_files_are_named_with_what_to_do(tmp_path, monkeypatch, code, expected):
    path = tmp_path / "x.loom"
    path.write_bytes(b"")
    real_open = os.open

    def refuse(name, flags, *args):
        if flags & os.O_WRONLY:
            raise OSError(code, os.strerror(code), name)
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(LoomWriteError, match=expected) as info:
        checks.check_in_place(str(path))
    assert "-o OUT.loom" in str(info.value)


def test_output_checks(tmp_path):
    source = tmp_path / "x.loom"
    source.write_bytes(b"")
    checks.check_output(str(tmp_path / "new.loom"), str(source))
    with pytest.raises(LoomWriteError, match="is the input"):
        checks.check_output(str(source), str(source))
    with pytest.raises(LoomWriteError, match="does not exist"):
        checks.check_output(str(tmp_path / "no" / "y.loom"))
    with pytest.raises(LoomWriteError, match="local files only"):
        checks.check_output("s3://bucket/y.loom")
    with pytest.raises(LoomWriteError, match="a directory"):
        checks.check_output(str(tmp_path))
