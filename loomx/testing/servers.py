"""Loopback servers that serve files the way object stores do, counting what they serve.

:class:`RangeHTTPServer` serves a folder over HTTP with ``Range`` requests (the standard
library's ``http.server`` ignores ``Range``); :class:`S3Server` runs moto's S3 API (package
``moto[server]``) behind the same counters.  Both listen on ``127.0.0.1`` on a free port, in
a thread of this process, and stop when their ``with`` block ends.  Tests and benchmarks
use the counters to check how many requests and bytes a read costs, and how many were in
flight at once (:attr:`ServedCounts.max_in_flight`).

Both take ``delay`` (seconds added to every request, before it is answered: an object
store's latency, 20-50 ms on S3) and ``bandwidth`` (bytes per second at which each answer's
body is sent), so tests and benchmarks see what a client of a distant store sees.

Examples
--------
>>> with RangeHTTPServer(folder) as server:  # doctest: +SKIP
...     ds = loomx.open_loom(server.url("pbmc.loom"))
...     ds["matrix"][:, 0].values
...     print(server.requests, server.bytes_sent)
>>> with RangeHTTPServer(folder, delay=0.02) as server:  # doctest: +SKIP
...     ...  # every request answered 20 ms late, as from an object store
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RangeHTTPServer", "S3Server", "ServedCounts", "Throttle"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class ServedCounts:
    """Requests answered and body bytes sent, per request method, and requests in flight
    (received, their answer not yet sent in full); thread-safe."""

    requests: int = 0
    bytes_sent: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self) -> None:
        """A request arrived (its answer is not sent yet)."""
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self) -> None:
        """A request's answer has been sent."""
        with self.lock:
            self.in_flight -= 1

    def add(self, method: str, nbytes: int = 0) -> None:
        """Count a request.  Servers count a request and its bytes *before* sending them:
        a client that has its answer finds it counted."""
        with self.lock:
            self.requests += 1
            self.bytes_sent += nbytes
            self.by_method[method] = self.by_method.get(method, 0) + 1

    def add_bytes(self, nbytes: int) -> None:
        with self.lock:
            self.bytes_sent += nbytes

    def reset(self) -> tuple[int, int]:
        """Zero the counters (``max_in_flight`` restarts from the requests in flight now);
        returns the ``(requests, bytes_sent)`` they held."""
        with self.lock:
            held = (self.requests, self.bytes_sent)
            self.requests = self.bytes_sent = 0
            self.by_method = {}
            self.max_in_flight = self.in_flight
            return held


@dataclass(frozen=True)
class Throttle:
    """What a distant store costs: ``delay`` seconds per request, bodies sent at
    ``bandwidth`` bytes per second (None: as fast as loopback goes)."""

    delay: float = 0.0
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        if self.delay < 0 or (self.bandwidth is not None and self.bandwidth <= 0):
            raise ValueError(
                f"delay must be >= 0 and bandwidth > 0; found {self.delay}, {self.bandwidth}"
            )

    def wait(self) -> None:
        """Sleep for the per-request delay."""
        if self.delay:
            time.sleep(self.delay)

    def pace(self, nbytes: int) -> None:
        """Sleep for the time ``nbytes`` take at the bandwidth."""
        if self.bandwidth is not None and nbytes:
            time.sleep(nbytes / self.bandwidth)


class _Server:
    """Common part: a threading HTTP server on a free loopback port, and its counters."""

    counts: ServedCounts
    _httpd: Any

    def start(self) -> _Server:
        """Start serving (in a daemon thread); :meth:`close` stops."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        return self.counts.requests

    @property
    def bytes_sent(self) -> int:
        return self.counts.bytes_sent


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of files under ``server.root`` with single-range ``Range`` support."""

    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between header and body
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _target(self) -> str | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        full = os.path.realpath(os.path.join(self.server.root, name))
        root = os.path.realpath(self.server.root)
        if not full.startswith(root + os.sep) or not os.path.isfile(full):
            return None
        return full

    def do_HEAD(self) -> None:
        self._throttled(body=False)

    def do_GET(self) -> None:
        self._throttled(body=True)

    def _throttled(self, body: bool) -> None:
        self.server.counts.begin()
        try:
            self.server.throttle.wait()
            self._serve(body)
        finally:
            self.server.counts.end()

    def _serve(self, body: bool) -> None:
        target = self._target()
        if target is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.server.counts.add(self.command)
            self.end_headers()
            return
        size = os.path.getsize(target)
        start, stop, status = 0, size, 200
        header = self.headers.get("Range")
        if header:
            match = _RANGE.match(header.strip())
            if match is not None and any(match.groups()):
                first, last = match.groups()
                if first:
                    start, stop = int(first), min(size, int(last) + 1 if last else size)
                else:  # the last N bytes
                    start, stop = max(0, size - int(last)), size
            if match is None or not any(match.groups()) or start >= stop:
                # unsatisfiable (RFC 9110 15.5.17): past the end, reversed, or empty
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.server.counts.add(self.command)
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", f'"{os.stat(target).st_mtime_ns:x}-{size:x}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(max(0, stop - start)))
        self.server.counts.add(self.command)
        self.end_headers()
        if body and stop > start:
            with open(target, "rb") as fh:
                fh.seek(start)
                left = stop - start
                while left:
                    block = fh.read(min(left, 1 << 16))
                    if not block:
                        break
                    self.server.counts.add_bytes(len(block))
                    self.server.throttle.pace(len(block))
                    self.wfile.write(block)
                    left -= len(block)


class RangeHTTPServer(_Server):
    """Serve the files of ``root`` at ``http://127.0.0.1:PORT/NAME``, with ``Range``.

    Parameters
    ----------
    root
        The folder served (files only; nothing outside it).
    delay
        Seconds added to every request before it is answered.
    bandwidth
        Bytes per second at which each answer's body is sent (None: no cap).
    """

    def __init__(
        self, root: str | os.PathLike[str], delay: float = 0.0, bandwidth: float | None = None
    ) -> None:
        self.counts = ServedCounts()
        self.throttle = Throttle(delay, bandwidth)
        http_server = type(
            "_Backlog", (http.server.ThreadingHTTPServer,), {"request_queue_size": 128}
        )  # clients in other processes open many connections (the default backlog is 5)
        self._httpd = http_server(("127.0.0.1", 0), _RangeHandler)
        self._httpd.daemon_threads = True
        self._httpd.root = os.fspath(root)
        self._httpd.counts = self.counts
        self._httpd.throttle = self.throttle

    def url(self, name: str) -> str:
        """The URL of the file ``name`` of the served folder."""
        return f"{self.endpoint}/{name}"


class _CountingApp:
    """WSGI middleware counting the requests and body bytes an application answers, and
    throttling them."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], counts: ServedCounts, throttle: Throttle
    ) -> None:
        self.app = app
        self.counts = counts
        self.throttle = throttle

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.counts.begin()
        try:
            self.throttle.wait()
            self.counts.add(environ.get("REQUEST_METHOD", "?"))
            for part in self.app(environ, start_response):
                self.counts.add_bytes(len(part))
                self.throttle.pace(len(part))
                yield part
        finally:
            self.counts.end()


class S3Server(_Server):
    """moto's S3 API at ``http://127.0.0.1:PORT`` (needs ``moto[server]``), counted.

    :meth:`storage_options` gives what ``s3fs`` needs to reach it; :meth:`upload` puts
    local files into a bucket.  ``delay`` and ``bandwidth`` as for
    :class:`RangeHTTPServer` (the upload too is throttled).
    """

    def __init__(self, delay: float = 0.0, bandwidth: float | None = None) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        self.counts = ServedCounts()
        self.throttle = Throttle(delay, bandwidth)
        app = _CountingApp(
            DomainDispatcherApplication(create_backend_app), self.counts, self.throttle
        )

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        self._httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)

    def storage_options(self) -> dict[str, Any]:
        """``storage_options`` for ``s3fs`` (fake credentials, this endpoint)."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            "skip_instance_cache": True,
        }

    def upload(self, bucket: str, files: dict[str, str | os.PathLike[str]]) -> None:
        """Create ``bucket`` (if needed) and put each local file at its key."""
        import s3fs

        fs = s3fs.S3FileSystem(**self.storage_options())
        if not fs.exists(bucket):
            fs.call_s3("create_bucket", Bucket=bucket)
        for key, local in files.items():
            data = Path(local).read_bytes()
            # one PUT (up to 5 GB): moto loses parts of large multipart uploads under load
            fs.pipe_file(f"{bucket}/{key}", data, chunksize=max(len(data), 5 << 20))
        self.counts.reset()
