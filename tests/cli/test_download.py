"""A local copy of a remote source (:mod:`loomx.cli.download`)."""

from __future__ import annotations

import os

import pytest

from loomx.cli import download as remote
from loomx.testing.servers import RangeHTTPServer


def test_local_copy_is_byte_equal_and_renamed_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "BLOCK", 1000)
    served = tmp_path / "served"
    served.mkdir()
    data = os.urandom(4567)
    (served / "x.loom").write_bytes(data)
    out = tmp_path / "out.loom"
    with RangeHTTPServer(served) as server:
        with remote.local_copy(server.url("x.loom"), str(out)) as tmp:
            assert not out.exists()
            with open(tmp, "rb") as f:
                assert f.read() == data
        assert out.read_bytes() == data
        with pytest.raises(RuntimeError), remote.local_copy(server.url("x.loom"), str(out)):
            raise RuntimeError("failed")
    assert sorted(os.listdir(tmp_path)) == ["out.loom", "served"]
