"""A corpus of hostile and broken Loom files, and how loomx must answer each.

:func:`hostile_corpus` writes the files into a folder and returns one
:class:`HostileCase` per file: what the file is, which :mod:`loomx.errors` class loomx must
raise (``None``: the file must open and read), at which step (``"open"`` or ``"read"``)
and which HDF5 path the error must name.  :func:`loomx.testing.fuzz.read_everything` is
the read a case is checked with.

Examples
--------
>>> for case in hostile_corpus("corpus"):  # doctest: +SKIP
...     print(case.name, case.error.__name__ if case.error else "reads")
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numpy as np

from loomx._format import spec as _spec
from loomx._hdf5 import filesystem as _filesystem
from loomx._read.layout import object_address
from loomx.errors import LoomFileError, LoomFormatError, LoomxError
from loomx.testing._example import write_loom_h5py

__all__ = ["DEAD_PID", "HostileCase", "hostile_corpus", "small_loom", "stage_commit"]

DEAD_PID = 2_000_000_000
"""A process id no live process has (below Linux's limit of 2**22 only by accident)."""

N, M = 12, 20


@dataclass(frozen=True)
class HostileCase:
    """One file of the corpus and the answer loomx owes it.

    ``error`` is the :class:`~loomx.errors.LoomxError` subclass expected (``None``: opens
    and reads), ``at`` where (``"open"``, ``"read"``, or ``"any"`` for damage whose first
    victim depends on HDF5), ``h5path`` the HDF5 path the error names (``None``: any or
    none).  ``changes_data`` marks damage no checksum can see: the file may read with
    other values.
    """

    name: str
    path: str
    error: type[LoomxError] | None
    at: str = "open"
    h5path: str | None = None
    changes_data: bool = False


def small_loom(path: str, *, version: str = "3.0.0", **storage: object) -> str:
    """A small valid file (12 x 20, gzip chunks, attributes, graphs, globals)."""
    rng = np.random.default_rng(0)
    write_loom_h5py(
        path,
        {"": rng.random((N, M)).astype(np.float32), "spliced": rng.integers(0, 9, (N, M))},
        {"Gene": np.array([f"g{i}é" for i in range(N)], dtype=object), "Score": rng.random(N)},
        {"CellID": np.array([f"c{j}" for j in range(M)], dtype=object), "X": rng.random((M, 2))},
        col_graphs={"KNN": (np.arange(M - 1), np.arange(1, M), np.ones(M - 1, np.float32))},
        row_graphs={"coexpr": (np.array([0, 1]), np.array([1, 2]), np.array([0.5, 2.0]))},
        global_attrs={"Title": "hostile", "Weights": np.arange(3.0)},
        version=version,
        chunks=storage.pop("chunks", (8, 8)),  # type: ignore[arg-type]
        **storage,  # type: ignore[arg-type]
    )
    return path


def stage_commit(
    path: str,
    rows: list[tuple[str, str, str]],
    *,
    pid: int | str = DEAD_PID,
    token: str = "0badf00d",
    objects: dict[str, np.ndarray] | None = None,
) -> str:
    """Add to ``path`` what an interrupted loomx write leaves: the staged ``objects``
    (``{"/col_attrs/.loomx-tmp-...-Name": values}``) and a pending commit with ``rows``
    of ``(group, staged link, final name)``.  Returns the pending commit's HDF5 path."""
    name = f"{_filesystem.TEMPORARY_TAG}{pid}-{token}.journal"
    with h5py.File(path, "r+") as f:
        for h5path, values in (objects or {}).items():
            f.create_dataset(h5path, data=values)
        data = np.array([list(r) for r in rows], dtype=object).reshape(-1, 3)
        f.create_dataset(name, data=data, dtype=h5py.string_dtype())
    return "/" + name


def hostile_corpus(folder: str | os.PathLike[str], truncations: int = 24) -> list[HostileCase]:
    """Write the corpus into ``folder`` and return its cases.

    Parameters
    ----------
    folder
        An existing folder (files are overwritten).
    truncations
        How many truncated copies of a valid file (at offsets spread over the whole file).
    """
    folder = os.fspath(folder)
    cases: list[HostileCase] = []

    def add(name: str, make: Callable[[str], object], *args: object, **kwargs: object) -> None:
        path = os.path.join(folder, f"{name}.loom")
        if os.path.exists(path):
            os.remove(path)
        make(path)
        cases.append(HostileCase(name, path, *args, **kwargs))  # type: ignore[arg-type]

    base = small_loom(os.path.join(folder, "valid.loom"))
    plain = small_loom(os.path.join(folder, "valid-plain.loom"), chunks=None, compression=None)
    data = open(base, "rb").read()  # noqa: SIM115 - small
    cases.append(HostileCase("valid", base, None))

    def write(blob: bytes) -> Callable[[str], None]:
        def make(path: str) -> None:
            with open(path, "wb") as fh:
                fh.write(blob)

        return make

    rng = random.Random(12)
    add("random-bytes", write(rng.randbytes(4096)), LoomFileError)
    add("empty", write(b""), LoomFileError)
    add("signature-only", write(data[:8] + rng.randbytes(600)), LoomFileError)
    for k in range(truncations):
        at = 1 + k * (len(data) - 2) // max(truncations - 1, 1)
        add(f"truncated-at-{at}", write(data[:at]), LoomFileError)
    _damage_cases(add, write, data, base, plain)
    _structure_cases(add)
    _graph_cases(add)
    _pending_commit_cases(add)
    return cases


def _flip(data: bytes, offsets: list[int], bit: int = 0x10) -> bytes:
    buf = bytearray(data)
    for at in offsets:
        buf[at] ^= bit
    return bytes(buf)


def _chunk_offsets(path: str, h5path: str) -> list[tuple[int, int]]:
    with h5py.File(path, "r") as f:
        dsid = f[h5path].id
        infos = [dsid.get_chunk_info(i) for i in range(dsid.get_num_chunks())]
    return [(int(s.byte_offset), int(s.size)) for s in infos]


def _damage_cases(add, write, data: bytes, base: str, plain: str) -> None:  # type: ignore[no-untyped-def]
    """Byte flips in the superblock, object headers, B-tree nodes, heaps and chunk data."""
    # superblock v0: version bytes, sizes of offsets/lengths, root symbol table entry
    for at in (8, 13, 14, 24, 40, 64, 80):
        add(f"superblock-flip-{at}", write(_flip(data, [at], 0x41)), LoomFileError, "any")
    for sig in (b"TREE", b"HEAP", b"SNOD", b"GCOL"):
        start = data.find(sig)
        for k, delta in enumerate((0, 4, 5, 8, 16, 24)):
            blob = _flip(data, [start + delta], 0x41)
            add(f"{sig.decode().lower()}-flip-{k}", write(blob), LoomxError, "any")
    with h5py.File(base, "r") as f:
        headers = {n: object_address(f, "/" + n) for n in ("matrix", "row_attrs/Gene")}
    for name, addr in headers.items():
        for k, delta in enumerate((0, 1, 2, 12, 16, 20)):  # v1 header prefix, first message
            blob = _flip(data, [addr + delta], 0x41)
            label = name.replace("/", "-")
            add(f"header-{label}-flip-{k}", write(blob), LoomxError, "any")
    offset, size = _chunk_offsets(base, "/matrix")[0]
    blob = _flip(data, [offset + size // 2])
    add("gzip-chunk-flip", write(blob), LoomFileError, "read", "/matrix")
    plain_data = open(plain, "rb").read()  # noqa: SIM115 - small
    with h5py.File(plain, "r") as f:
        start = f["matrix"].id.get_offset()
    if start is not None:  # contiguous and unfiltered: no checksum sees it
        add("raw-data-flip", write(_flip(plain_data, [start + 3])), None, changes_data=True)
    fletcher = os.path.join(os.path.dirname(base), "fletcher-source.loom")
    _fletcher_file(fletcher)
    offset, size = _chunk_offsets(fletcher, "/matrix")[0]
    blob = _flip(open(fletcher, "rb").read(), [offset + 1])  # noqa: SIM115 - small
    add("fletcher32-chunk-flip", write(blob), LoomFileError, "read", "/matrix")


def _fletcher_file(path: str) -> None:
    small_loom(path, compression=None)
    with h5py.File(path, "r+") as f:
        values = f["matrix"][()]
        del f["matrix"]
        f.create_dataset("matrix", data=values, chunks=(8, 8), fletcher32=True)


def _edit(source: Callable[[str], object], change: Callable[[h5py.File], object]):  # type: ignore[no-untyped-def]
    def make(path: str) -> None:
        source(path)
        with h5py.File(path, "r+") as f:
            change(f)

    return make


def _replace(f: h5py.File, h5path: str, **kwargs: object) -> None:
    if h5path in f:
        del f[h5path]
    f.create_dataset(h5path, **kwargs)  # type: ignore[arg-type]


def _structure_cases(add) -> None:  # type: ignore[no-untyped-def]
    def loom(path: str) -> None:
        small_loom(path)

    def nest(f: h5py.File, top: str, depth: int) -> None:
        g = f.require_group(top)
        for i in range(depth):
            g = g.create_group(f"level{i}")

    bad_utf8 = np.array([b"ok"] * (N - 1) + [b"\xff\xfe bad"], dtype=object)
    utf8 = h5py.string_dtype("utf-8")
    table: list[tuple] = [
        (
            "hdf5-without-loom-groups",
            lambda f: [f.__delitem__(k) for k in list(f)],
            LoomFormatError,
            "open",
            "/matrix",
        ),
        (
            "matrix-1d",
            lambda f: _replace(f, "matrix", data=np.arange(5.0)),
            LoomFormatError,
            "open",
            "/matrix",
        ),
        (
            "matrix-3d",
            lambda f: _replace(f, "matrix", data=np.zeros((2, 2, 2))),
            LoomFormatError,
            "open",
            "/matrix",
        ),
        (
            "matrix-group",
            lambda f: (f.__delitem__("matrix"), f.create_group("matrix")),
            LoomFormatError,
            "open",
            "/matrix",
        ),
        (
            "layer-wrong-shape",
            lambda f: _replace(f, "layers/spliced", data=np.zeros((N, M + 1))),
            LoomFormatError,
            "open",
            "/layers/spliced",
        ),
        (
            "layer-strings",
            lambda f: _replace(f, "layers/spliced", data=np.full((N, M), b"x")),
            LoomFormatError,
            "open",
            "/layers/spliced",
        ),
        (
            "layer-compound",
            lambda f: _replace(
                f, "layers/spliced", data=np.zeros((N, M), dtype=[("a", "f4"), ("b", "i2")])
            ),
            LoomFormatError,
            "open",
            "/layers/spliced",
        ),
        (
            "layer-group",
            lambda f: (f.__delitem__("layers/spliced"), f.create_group("layers/spliced")),
            LoomFormatError,
            "open",
            "/layers/spliced",
        ),
        (
            "attr-wrong-length",
            lambda f: _replace(f, "row_attrs/Score", data=np.zeros(N + 3)),
            LoomFormatError,
            "open",
            "/row_attrs/Score",
        ),
        (
            "attr-scalar",
            lambda f: _replace(f, "col_attrs/X", data=1.0),
            LoomFormatError,
            "open",
            "/col_attrs/X",
        ),
        (
            "attr-invalid-utf8",
            lambda f: _replace(f, "row_attrs/Gene", data=bad_utf8, dtype=h5py.vlen_dtype(bytes)),
            LoomFormatError,
            "read",
            "/row_attrs/Gene",
        ),
        (
            "attr-invalid-utf8-declared",
            lambda f: _replace(f, "row_attrs/Gene", shape=(N,), dtype=utf8, data=bad_utf8),
            LoomFormatError,
            "read",
            "/row_attrs/Gene",
        ),
        (
            "global-invalid-utf8",
            lambda f: _replace(f, "attrs/Title", data=b"\xff\xfe", dtype=h5py.vlen_dtype(bytes)),
            LoomFormatError,
            "open",
            "/attrs/Title",
        ),
        (
            "external-link-layer",
            lambda f: f.__setitem__("layers/ext", h5py.ExternalLink("/etc/passwd", "/x")),
            LoomFormatError,
            "open",
            "/layers/ext",
        ),
        (
            "soft-link-layer",
            lambda f: f.__setitem__("layers/soft", h5py.SoftLink("/matrix")),
            LoomFormatError,
            "open",
            "/layers/soft",
        ),
        (
            "external-storage-layer",
            lambda f: f.create_dataset(
                "layers/raw", shape=(N, M), dtype="f4", external=[("/dev/zero", 0, N * M * 4)]
            ),
            LoomFormatError,
            "open",
            "/layers/raw",
        ),
        (
            "virtual-layer",
            _virtual_layer,
            LoomFormatError,
            "open",
            "/layers/virtual",
        ),
        (
            "nan-inf-values",
            lambda f: _replace(
                f, "row_attrs/Score", data=np.array([np.nan, np.inf, -np.inf] + [0.0] * (N - 3))
            ),
            None,
        ),
        ("deep-nesting-outside", lambda f: nest(f, "extra", 200), None),
        (
            "deep-nesting-in-layers",
            lambda f: nest(f, "layers/deep", 200),
            LoomFormatError,
            "open",
            "/layers/deep",
        ),
        (
            "many-attributes",
            lambda f: [f.create_dataset(f"row_attrs/a{i}", data=np.zeros(N)) for i in range(1000)],
            None,
        ),
        (
            "many-hdf5-attributes",
            lambda f: [f["matrix"].attrs.__setitem__(f"k{i}", i) for i in range(5000)],
            None,
        ),
        (
            "huge-matrix-small-layers",
            lambda f: _replace(
                f, "matrix", shape=(10**7, 10**7), dtype="f4", chunks=(64, 64), fillvalue=0.0
            ),
            LoomFormatError,
            "open",
            "/layers/spliced",
        ),
    ]
    for name, change, *expect in table:
        add(name, _edit(loom, change), *expect)

    def plugin_layer(f: h5py.File) -> None:
        """A layer whose pipeline names the Zstandard plugin (optional: written raw)."""
        del f["layers/spliced"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_obj_track_times(False)  # the same bytes on every run
        dcpl.set_chunk((4, 4))
        dcpl.set_filter(32015, h5py.h5z.FLAG_OPTIONAL, (3,))
        space = h5py.h5s.create_simple((N, M))
        dsid = h5py.h5d.create(f["layers"].id, b"spliced", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
        h5py.Dataset(dsid)[...] = np.ones((N, M))

    add(
        "filter-plugin-layer", _edit(loom, plugin_layer), LoomFormatError, "open", "/layers/spliced"
    )

    def absurd(path: str) -> None:
        with h5py.File(path, "w") as f:
            for group in _spec.REQUIRED_GROUPS_3:
                f.create_group(group)
            f.create_dataset("matrix", shape=(10**7, 10**7), dtype="f4", chunks=(64, 64))
            f.create_dataset("attrs/LOOM_SPEC_VERSION", data="3.0.0", dtype=utf8)

    add("absurd-shape-lazy", absurd, LoomFileError, "read", "/matrix")  # reading it all


def _graph_cases(add) -> None:  # type: ignore[no-untyped-def]
    def loom(path: str) -> None:
        small_loom(path)

    knn = "col_graphs/KNN"
    table: list[tuple] = [
        (
            "graph-out-of-range",
            lambda f: _replace(f, f"{knn}/b", data=np.arange(1, M) * 7),
            LoomFormatError,
            "read",
            f"/{knn}/b",
        ),
        (
            "graph-negative",
            lambda f: _replace(f, f"{knn}/a", data=-np.arange(M - 1)),
            LoomFormatError,
            "read",
            f"/{knn}/a",
        ),
        (
            "graph-unequal",
            lambda f: _replace(f, f"{knn}/w", data=np.ones(M)),
            LoomFormatError,
            "open",
            f"/{knn}",
        ),
        (
            "graph-float-fractional",
            lambda f: _replace(f, f"{knn}/a", data=np.arange(M - 1) + 0.5),
            LoomFormatError,
            "read",
            f"/{knn}/a",
        ),
        (
            "graph-float-nan",
            lambda f: _replace(f, f"{knn}/a", data=np.r_[np.nan, np.arange(1.0, M - 1)]),
            LoomFormatError,
            "read",
            f"/{knn}/a",
        ),
        ("graph-float-whole", lambda f: _replace(f, f"{knn}/a", data=np.arange(M - 1.0)), None),
        (
            "graph-string-weights",
            lambda f: _replace(f, f"{knn}/w", data=np.full(M - 1, b"w")),
            LoomFormatError,
            "open",
            f"/{knn}/w",
        ),
        (
            "graph-missing-part",
            lambda f: f.__delitem__(f"{knn}/w"),
            LoomFormatError,
            "open",
            f"/{knn}",
        ),
        (
            "graph-2d-part",
            lambda f: _replace(f, f"{knn}/a", data=np.zeros((M - 1, 2), int)),
            LoomFormatError,
            "open",
            f"/{knn}/a",
        ),
        (
            "graph-dataset",
            lambda f: (f.__delitem__(knn), f.create_dataset(knn, data=[1])),
            LoomFormatError,
            "open",
            f"/{knn}",
        ),
    ]
    for name, change, *expect in table:
        add(name, _edit(loom, change), *expect)


def _pending_commit_cases(add) -> None:  # type: ignore[no-untyped-def]
    tag = f"{_filesystem.TEMPORARY_TAG}{DEAD_PID}-0badf00d-"
    score = np.arange(N, dtype=float)

    def pending_commit(rows, pid: int | str = DEAD_PID, objects=None):  # type: ignore[no-untyped-def]
        def make(path: str) -> None:
            small_loom(path)
            token = "0badf00d"
            prefix = f"{_filesystem.TEMPORARY_TAG}{pid}-{token}-"
            staged = {k.replace(tag, prefix): v for k, v in (objects or {}).items()}
            fixed = [(p, s.replace(tag, prefix), n) for p, s, n in rows]
            stage_commit(path, fixed, pid=pid, token=token, objects=staged)

        return make

    good = [("/row_attrs", tag + "Score", "Score")]
    staged = {f"/row_attrs/{tag}Score": score}
    add("pending-commit-valid", pending_commit(good, objects=staged), None)
    add("pending-commit-missing-object", pending_commit(good), None)
    add("pending-commit-foreign-object", pending_commit([("/", "matrix", "row_attrs")]), None)
    add("pending-commit-foreign-row", pending_commit([("/row_attrs", "Gene", "Score")]), None)
    add("pending-commit-path-final", pending_commit([("/", tag + "x", "row_attrs/Gene")]), None)
    add(
        "pending-commit-relative-parent",
        pending_commit([("row_attrs", tag + "Score", "Score")]),
        None,
    )
    add("pending-commit-pid-zero", pending_commit(good, pid=0, objects=staged), None)
    add("pending-commit-pid-huge", pending_commit(good, pid=10**30, objects=staged), None)
    add("pending-commit-pid-text", pending_commit(good, pid="me", objects=staged), None)
    wrong = {f"/row_attrs/{tag}Score": np.zeros(N + 5)}
    add(
        "pending-commit-wrong-shape",
        pending_commit(good, objects=wrong),
        LoomFormatError,
        "open",
        "/row_attrs/Score",
    )

    def not_a_table(path: str) -> None:
        small_loom(path)
        with h5py.File(path, "r+") as f:
            f.create_group(f"{tag[:-1]}.journal")

    add("pending-commit-group", not_a_table, None)


def _virtual_layer(f: h5py.File) -> None:
    """A virtual layer with no sources, made without a creation time (the same bytes on
    every run; h5py's ``create_virtual_dataset`` records one)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_layout(h5py.h5d.VIRTUAL)
    space = h5py.h5s.create_simple((N, M))
    h5py.h5d.create(f["layers"].id, b"virtual", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
