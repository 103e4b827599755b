"""Pending commits: objects a writer staged and recorded in the file but has not yet
linked into place, which readers overlay (the record format is shared with
:mod:`loomx._write.transaction`, which writes and carries them out).

A pending commit is a table at the root named ``{TEMPORARY_TAG}{pid}-{token}.journal``
(the on-disk name loomx has always written; not the rollback journal below HDF5,
:mod:`loomx._hdf5.rollback`), one ``(parent group, staged link, final name)`` row per link.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from loomx._hdf5.filesystem import TEMPORARY_TAG
from loomx.errors import LoomFormatWarning, describe

__all__ = [
    "COMMIT_SUFFIX",
    "GENERATION",
    "PATCH_EXTENT",
    "PATCH_ORIGIN",
    "Patch",
    "PendingCommit",
    "apply_patch",
    "committed_path",
    "read_pending_commits",
]

COMMIT_SUFFIX = ".journal"
"""End of the name of a recorded commit at the root (unchanged on disk since loomx began)."""
PATCH_ORIGIN = "loomx_patch_origin"
"""Attribute of a staged patch: where its first element goes in the final dataset."""
PATCH_EXTENT = "loomx_patch_extent"
"""Attribute of a staged patch that grows its dataset: the dataset's shape afterwards."""
GENERATION = "loomx_generation"
"""Attribute of a dataset counting the patches that changed its existing values in place:
readers opened before such a change see it differ and refuse to mix old and new values."""


@dataclass
class PendingCommit:
    """A commit recorded in a file and not yet carried out completely."""

    name: str  # link name at the root
    entries: list[tuple[str, str, str]]  # (parent group, staged link, final name)
    root_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.name[len(TEMPORARY_TAG) : -len(COMMIT_SUFFIX)]

    def pending(self, f: h5py.File) -> dict[str, dict[str, str]]:
        """``{parent: {final name: staged link}}`` for the swaps not yet done; an empty
        staged link for a deletion not yet done.  Patches are left out (see
        :meth:`patches`)."""
        out: dict[str, dict[str, str]] = {}
        for parent, staged, name in self.entries:
            group = f.get(parent)
            if not isinstance(group, h5py.Group):
                continue
            if staged == "" and name in group:
                out.setdefault(parent, {})[name] = ""
            elif staged and staged in group and not _is_patch(group, staged):
                out.setdefault(parent, {})[name] = staged
        return out

    def patches(self, f: h5py.File) -> dict[str, list[Patch]]:
        """``{final dataset path: [patch, ...]}`` for the patches not yet copied in."""
        out: dict[str, list[Patch]] = {}
        for parent, staged, name in self.entries:
            group = f.get(parent)
            if isinstance(group, h5py.Group) and staged and _is_patch(group, staged):
                attrs = group[staged].attrs
                origin = tuple(int(v) for v in attrs[PATCH_ORIGIN])
                extent = attrs.get(PATCH_EXTENT)
                shape = None if extent is None else tuple(int(v) for v in extent)
                final = f"{parent.rstrip('/')}/{name}"
                patch = Patch(f"{parent.rstrip('/')}/{staged}", origin, shape)
                out.setdefault(final, []).append(patch)
        return out


@dataclass(frozen=True)
class Patch:
    """A staged patch: its path, where it goes, and the dataset's shape afterwards (None:
    unchanged)."""

    h5path: str
    origin: tuple[int, ...]
    extent: tuple[int, ...] | None = None


def _is_patch(group: h5py.Group, link: str) -> bool:
    obj = group.get(link)
    return isinstance(obj, h5py.Dataset) and PATCH_ORIGIN in obj.attrs


def apply_patch(
    target: h5py.Dataset,
    patch: h5py.Dataset,
    origin: tuple[int, ...],
    extent: tuple[int, ...] | None = None,
) -> None:
    """Copy every chunk of ``patch`` into ``target`` at ``origin``, as stored, after
    resizing ``target`` to ``extent`` (when given).

    ``patch`` has ``target``'s storage, and ``origin`` falls on chunk edges.  Chunks the
    patch never stored (its fill value) are written through the filters.
    """
    if extent is not None and tuple(target.shape) != tuple(extent):
        target.resize(extent)
    else:  # existing values change: readers of the old ones must notice
        target.attrs[GENERATION] = np.int64(target.attrs.get(GENERATION, 0)) + 1
    if target.dtype.kind == "O":  # variable-length strings: chunks refer to heap objects
        box = tuple(slice(o, o + n) for o, n in zip(origin, patch.shape, strict=True))
        target[box] = patch[()]
        return
    stored: set[tuple[int, ...]] = set()
    patch.id.chunk_iter(lambda info: stored.add(tuple(info.chunk_offset)))
    for offset in stored:
        mask, raw = patch.id.read_direct_chunk(offset)
        shifted = tuple(o + s for o, s in zip(offset, origin, strict=True))
        target.id.write_direct_chunk(shifted, raw, mask)
    grid = [range(0, n, c) for n, c in zip(patch.shape, patch.chunks, strict=True)]
    for offset in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, patch.ndim):
        key = tuple(int(o) for o in offset)
        if key not in stored:
            box = tuple(
                slice(o, min(o + c, n))
                for o, c, n in zip(key, patch.chunks, patch.shape, strict=True)
            )
            shifted = tuple(
                slice(b.start + s, b.stop + s) for b, s in zip(box, origin, strict=True)
            )
            target[shifted] = patch[box]


def read_pending_commits(f: h5py.File) -> list[PendingCommit]:
    """Every valid pending commit at the root of ``f`` (normally none).

    A record loomx could not have written (not a table of strings, a row whose staged
    link is not the commit's own ``{tag}{final name}`` or ``{tag}patch-{final name}`` or
    empty (a deletion), a final name that is a path or a
    temporary name, a parent that is not an absolute group path) is ignored with a
    :class:`~loomx.errors.LoomFormatWarning`: its commit is not applied, so nothing it
    names is touched, and :func:`loomx.recover` removes it with the other temporary links.
    """
    found = []
    for name in f:
        if not (name.startswith(TEMPORARY_TAG) and name.endswith(COMMIT_SUFFIX)):
            continue
        commit, problem = _parse_pending_commit(f, name)
        if commit is None:
            warnings.warn(
                f"{describe(f.filename, '/' + name)}: ignored a pending loomx commit that "
                f"loomx did not write ({problem}); expected rows of (group, temporary link, "
                "final name) staged by one write. Its commit is not applied",
                LoomFormatWarning,
                stacklevel=3,
            )
            continue
        found.append(commit)
    return found


def _parse_pending_commit(f: h5py.File, name: str) -> tuple[PendingCommit | None, str]:
    """The pending commit recorded at ``/name``, or ``None`` and what is wrong with it."""
    tag = name[: -len(COMMIT_SUFFIX)] + "-"
    pid = tag[len(TEMPORARY_TAG) :].split("-", 1)[0]
    if not pid.isdigit():
        return None, f"its name has no process id, found {name!r}"
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        return None, f"found a {type(obj).__name__}, expected a dataset"
    if h5py.check_string_dtype(obj.dtype) is None or obj.ndim != 2 or obj.shape[1] != 3:
        return None, f"found {obj.dtype} values of shape {obj.shape}, expected (n, 3) strings"
    try:
        rows = [tuple(_text(v) for v in row) for row in obj[()]]
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        return None, f"its rows cannot be read ({exc})"
    entries = []
    for parent, staged, final in rows:
        ok_final = final and "/" not in final and TEMPORARY_TAG not in final
        ok_parent = parent.startswith("/") and TEMPORARY_TAG not in parent
        # a staged object, a staged patch of the final dataset, or "" (a deletion)
        ok_staged = staged in (tag + final, f"{tag}patch-{final}", "")
        if not (ok_final and ok_parent and ok_staged):
            return None, f"row {(parent, staged, final)!r} does not name an object it staged"
        entries.append((parent, staged, final))
    try:
        attrs = dict(obj.attrs)
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        return None, f"its attributes cannot be read ({exc})"
    return PendingCommit(name, entries, attrs), ""


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def committed_path(h5path: str) -> str:
    """``h5path`` with every staged link name replaced by its final name."""
    parts = h5path.split("/")
    tag = TEMPORARY_TAG
    final = [p[len(tag) :].split("-", 2)[-1] if p.startswith(tag) else p for p in parts]
    return "/".join(final)
