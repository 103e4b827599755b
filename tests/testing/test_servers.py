"""loomx.testing.servers: the Range HTTP server answers byte ranges as RFC 9110 (HTTP
Semantics, section 14) says, counts requests and body bytes, and serves fsspec's HTTP
filesystem and urllib; the S3 server (moto) serves an uploaded object to s3fs.  Every
server listens on 127.0.0.1 and stops inside its test."""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.error
import urllib.request

import fsspec
import pytest

from loomx.testing.servers import RangeHTTPServer, S3Server, ServedCounts

SIZE = 1000


@pytest.fixture
def served(tmp_path):
    data = bytes(range(256)) * 3 + bytes(SIZE - 768)
    (tmp_path / "blob.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path.parent / f"{tmp_path.name}-secret.bin").write_bytes(b"secret")
    with RangeHTTPServer(tmp_path) as server:
        yield server, data


def request(server, path: str, method: str = "GET", range_: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers={"Range": range_} if range_ else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_listens_on_loopback_and_stops(tmp_path):
    server = RangeHTTPServer(tmp_path).start()
    assert server.endpoint == f"http://127.0.0.1:{server.port}"
    assert server.url("a.loom") == f"{server.endpoint}/a.loom"
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url("a.loom"), timeout=5)


def test_full_get_without_range_is_200(served):
    server, data = served
    status, headers, body = request(server, "/blob.bin")
    assert status == 200
    assert body == data
    assert int(headers["Content-Length"]) == SIZE
    assert headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in headers


@pytest.mark.parametrize(
    ("range_", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=990-", 990, SIZE - 1),  # to the end
        ("bytes=-25", SIZE - 25, SIZE - 1),  # the last 25 bytes
        ("bytes=-5000", 0, SIZE - 1),  # suffix longer than the file: all of it
        ("bytes=900-5000", 900, SIZE - 1),  # last position past the end: clipped
    ],
)
def test_satisfiable_range_is_206_with_content_range(served, range_, first, last):
    server, data = served
    status, headers, body = request(server, "/blob.bin", range_=range_)
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert int(headers["Content-Length"]) == last - first + 1
    assert body == data[first : last + 1]


@pytest.mark.parametrize("range_", ["bytes=abc", "bytes=-", "items=0-5"])
def test_invalid_range_is_rejected_or_ignored(served, range_):
    """RFC 9110 14.2: a server MAY ignore or reject an invalid ranges-specifier."""
    server, data = served
    status, headers, body = request(server, "/blob.bin", range_=range_)
    assert (status, body) in ((416, b""), (200, data))
    if status == 416:
        assert headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("range_", [f"bytes={SIZE}-", f"bytes={SIZE + 10}-{SIZE + 20}", "bytes=-0"])
def test_range_past_the_end_is_416(served, range_):
    """RFC 9110 15.5.17: no byte of the range inside the file is 416, with
    ``Content-Range: bytes */SIZE``."""
    server, _ = served
    status, headers, body = request(server, "/blob.bin", range_=range_)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{SIZE}"
    assert body == b""


def test_head_has_the_length_and_no_body(served):
    server, _ = served
    status, headers, body = request(server, "/blob.bin", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == SIZE
    assert server.bytes_sent == 0 and server.counts.by_method == {"HEAD": 1}


@pytest.mark.parametrize("path", ["/missing.bin", "/", "/%2e%2e/blob.bin"])
def test_missing_files_are_404(served, path):
    server, _ = served
    status, headers, body = request(server, path)
    assert (status, body) == (404, b"")
    assert int(headers["Content-Length"]) == 0


def test_nothing_outside_the_folder_is_served(served, tmp_path):
    server, _ = served
    assert (tmp_path.parent / f"{tmp_path.name}-secret.bin").is_file()
    for path in (f"/../{tmp_path.name}-secret.bin", f"/./../{tmp_path.name}-secret.bin"):
        status, _, body = request(server, path)
        assert (status, body) == (404, b""), path


def test_counts_requests_and_body_bytes(served):
    server, _ = served
    request(server, "/blob.bin")
    request(server, "/blob.bin", range_="bytes=0-99")
    request(server, "/blob.bin", method="HEAD")
    request(server, "/missing.bin")
    assert server.requests == 4
    assert server.bytes_sent == SIZE + 100
    assert server.counts.by_method == {"GET": 3, "HEAD": 1}
    assert server.counts.reset() == (4, SIZE + 100)
    assert (server.requests, server.bytes_sent, server.counts.by_method) == (0, 0, {})


def test_counts_are_exact_under_threads():
    counts = ServedCounts()

    def work():
        for _ in range(2000):
            counts.add("GET", 3)
            counts.add_bytes(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (counts.requests, counts.bytes_sent) == (8000, 8000 * 4)
    assert counts.by_method == {"GET": 8000}


def test_urllib_reads_whole_files_and_ranges(served):
    server, data = served
    with urllib.request.urlopen(server.url("blob.bin"), timeout=10) as response:
        assert response.status == 200 and response.read() == data
    ranged = urllib.request.Request(server.url("blob.bin"), headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(ranged, timeout=10) as response:
        assert response.status == 206 and response.read() == data[100:200]
    with urllib.request.urlopen(server.url("empty.bin"), timeout=10) as response:
        assert response.read() == b""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url("missing.bin"), timeout=10)
    assert info.value.code == 404


def test_fsspec_http_reads_what_the_file_holds(served):
    server, data = served
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    url = server.url("blob.bin")
    assert fs.size(url) == SIZE
    assert fs.cat_file(url) == data
    server.counts.reset()
    assert fs.cat_file(url, start=123, end=456) == data[123:456]
    requests, sent = server.counts.reset()
    assert requests == 1 and sent == 456 - 123  # a single ranged GET, nothing more
    with fs.open(url, "rb", block_size=64, cache_type="none") as fh:
        fh.seek(SIZE - 10)
        assert fh.read() == data[-10:]
        fh.seek(5)
        assert fh.read(7) == data[5:12]


def test_s3_server_serves_an_upload_to_s3fs(tmp_path):
    s3fs = pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    data = bytes(range(256)) * 40
    local = tmp_path / "x.loom"
    local.write_bytes(data)
    with S3Server() as s3:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", s3.endpoint)
        s3.upload("atlas", {"cells/x.loom": local, "other.loom": local})
        assert (s3.requests, s3.bytes_sent) == (0, 0)  # upload() zeroes the counters
        fs = s3fs.S3FileSystem(**s3.storage_options())
        assert sorted(fs.ls("atlas", detail=False)) == ["atlas/cells", "atlas/other.loom"]
        assert fs.size("atlas/cells/x.loom") == len(data)
        assert fs.cat_file("atlas/cells/x.loom", start=1000, end=1500) == data[1000:1500]
        assert fs.cat_file("atlas/cells/x.loom") == data
        assert s3.requests >= 3
        assert s3.bytes_sent >= len(data) + 500
        s3.upload("atlas", {"cells/x.loom": local})  # the bucket exists: kept
        assert fs.cat_file("atlas/other.loom") == data


def _recorded_sleeps(monkeypatch) -> list[float]:
    """The sleeps the servers' throttle takes, recorded instead of slept."""
    import loomx.testing.servers as servers_module

    slept: list[float] = []
    monkeypatch.setattr(servers_module.time, "sleep", slept.append)
    return slept


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_delay_per_request_and_bandwidth_cap(tmp_path, monkeypatch, kind):
    """Every request waits ``delay`` before its answer; each body is paced at
    ``bandwidth``: the sleeps add up to requests x delay + bytes / bandwidth."""
    data = bytes(range(256)) * 400
    (tmp_path / "blob.bin").write_bytes(data)
    if kind == "s3":
        pytest.importorskip("s3fs")
        pytest.importorskip("moto")
        server = S3Server(delay=0.25, bandwidth=1e6)
    else:
        server = RangeHTTPServer(tmp_path, delay=0.25, bandwidth=1e6)
    with server:
        if kind == "s3":
            server.upload("bucket", {"blob.bin": tmp_path / "blob.bin"})
            fs = fsspec.filesystem("s3", **server.storage_options())
            path = "bucket/blob.bin"
        else:
            fs = fsspec.filesystem("http", skip_instance_cache=True)
            path = server.url("blob.bin")
        slept = _recorded_sleeps(monkeypatch)
        assert fs.cat_file(path, start=100, end=60100) == data[100:60100]
        assert fs.cat_file(path, start=0, end=10) == data[:10]
        requests, sent = server.counts.reset()
    assert requests == 2 and sent == 60010
    delays = [s for s in slept if s == 0.25]
    assert len(delays) == requests
    assert sum(s for s in slept if s != 0.25) == pytest.approx(sent / 1e6)


def test_delayed_requests_are_answered_in_parallel(tmp_path):
    """A delayed request holds its connection, not the server: requests sent together are
    in flight together (the backlog takes them all)."""
    (tmp_path / "blob.bin").write_bytes(b"x" * 100)
    with RangeHTTPServer(tmp_path, delay=0.5) as server:
        assert server._httpd.request_queue_size >= 128
        threads = [threading.Thread(target=request, args=(server, "/blob.bin")) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.counts.max_in_flight == 8
        for _ in range(1000):  # a handler counts itself out just after its last byte
            if server.counts.in_flight == 0:
                break
            time.sleep(0.01)
        assert server.counts.in_flight == 0
        server.counts.reset()
        assert server.counts.max_in_flight == 0
        request(server, "/blob.bin")
        assert server.counts.max_in_flight == 1


def test_throttle_refuses_negative_settings(tmp_path):
    with pytest.raises(ValueError, match="delay"):
        RangeHTTPServer(tmp_path, delay=-1)
    with pytest.raises(ValueError, match="bandwidth"):
        RangeHTTPServer(tmp_path, bandwidth=0)
