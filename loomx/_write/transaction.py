"""All-or-nothing commits of new objects into an existing Loom file.

A writer first stages every new object complete under a temporary link next to its final
name (``{TEMPORARY_TAG}{pid}-{token}-{name}``; a parent group the file lacks is staged the
same way, with its content inside).  Then it drafts the *pending commit*
(:mod:`loomx._read.pending`) at the root (one ``(parent, staged link, final name)`` row per
staged link, pending root attributes as its attributes), flushes, fsyncs and renames the
draft to ``{TEMPORARY_TAG}{pid}-{token}.journal`` (its name on disk): that rename, flushed
and fsynced, is the commit point.  Only then are the links swapped (old object unlinked,
staged link moved to the final name), the root attributes set and the pending commit
deleted.

Two more kinds of rows: a row whose staged link is empty deletes the final name, and a
staged *patch* (a dataset with the attribute :data:`PATCH_ORIGIN`) holds whole HDF5 chunks
that replace those of the final dataset from that origin on (a region write, or new
columns: then the attribute :data:`PATCH_EXTENT` gives the dataset's new shape): carrying
it out resizes the dataset if needed, copies the chunks in, as they are, and deletes it.
Readers overlay a pending patch on the dataset it belongs to.

Killed before the commit point, the file holds its old content plus temporary links that
readers skip and the next commit deletes.  Killed after, the pending commit says how to finish:
readers apply it as they open the file (without changing it), and the next commit, or
:func:`loomx.recover`, carries it out.  Either way the file reads as all old or all new.
Under HDF5 file locking (the default) a writer holding the file ``r+`` is its only user,
so every temporary object but its own is left over from a writer that is gone; with
locking off, the pid in the name decides.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from loomx._format import spec as _spec
from loomx._hdf5.files import open_for_writing, open_h5
from loomx._hdf5.filesystem import TEMPORARY_TAG, fsync, locking_enforced, owner_alive
from loomx._hdf5.journal import journal_state
from loomx._hdf5.links import hard_get
from loomx._read.layout import H5_ERRORS
from loomx._read.pending import (
    COMMIT_SUFFIX,
    PATCH_EXTENT,
    PATCH_ORIGIN,
    PendingCommit,
    apply_patch,
    read_pending_commits,
)
from loomx._write.stream import current_client
from loomx.errors import LoomNameError, LoomWriteError, LoomxError

__all__ = ["Transaction", "recover", "recover_pending", "transaction"]

_DRAFT = "journal"
"""Link name (after the transaction's tag) of a pending commit being drafted (on disk)."""

_ACTIVE: set[str] = set()
"""Tags of the transactions running in this process (their links are not stale)."""


def _stale(token: str, exclusive: bool) -> bool:
    """Whether the writer of a link named ``{TEMPORARY_TAG}{pid}-{hex}...`` is gone.

    A transaction running in this process is not; holding the file exclusively (HDF5 file
    locking), every other one is.  Without locking, a writer is gone when its process is
    (what an interrupted transaction of this process left behind is stale too).
    """
    pid, _, rest = token.partition("-")
    if f"{TEMPORARY_TAG}{pid}-{rest.split('-', 1)[0]}-" in _ACTIVE:
        return False
    return exclusive or pid == str(os.getpid()) or not owner_alive(token)


def _finish(f: h5py.File, commit: PendingCommit) -> None:
    """Carry out a pending commit: copy patches in, swap every staged link in (or delete),
    set root attributes, drop it.  Each step can be done again after an interruption."""
    for final, patches in commit.patches(f).items():
        for patch in patches:
            apply_patch(f[final], f[patch.h5path], patch.origin, patch.extent)
            del f[patch.h5path]
    for parent, links in commit.pending(f).items():
        group = f[parent]
        for name, staged in links.items():
            if group.get(name, getlink=True) is not None:  # also a dangling link
                del group[name]
            if staged:
                group.move(staged, name)
    for name, value in commit.root_attrs.items():
        f.attrs[name] = value
    del f[commit.name]


def recover_open(
    f: h5py.File, groups: set[str] | frozenset[str] = frozenset(), locking: bool | None = None
) -> int:
    """Finish the pending commits of writers that are gone, then delete their temporary
    links.

    ``groups`` (beyond the root and the spec's groups) are searched for temporary links.
    Returns the number of commits finished.  ``locking`` is the setting ``f`` was opened
    with: under HDF5 file locking, ``f`` is open nowhere else.
    """
    exclusive = locking_enforced(locking)
    finished = 0
    for commit in read_pending_commits(f):
        if _stale(commit.token, exclusive):
            _finish(f, commit)
            finished += 1
    known = {"/", *_spec.REQUIRED_GROUPS_3, *_spec.LEGACY_GRAPH_GROUPS.values(), *groups}
    for path in sorted({"/" + g.strip("/") for g in known}):
        group = f.get(path)
        if isinstance(group, h5py.Group):
            for link in list(group):
                if link.startswith(TEMPORARY_TAG) and _stale(link[len(TEMPORARY_TAG) :], exclusive):
                    del group[link]
    return finished


class Transaction:
    """Stages objects in an open file and commits them all at once (see the module doc).

    Use through :func:`transaction`.
    """

    def __init__(self, f: h5py.File, path: str) -> None:
        self.file = f
        self.path = path
        self.tag = f"{TEMPORARY_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self.staged: list[tuple[str, str, str]] = []
        self.root_attrs: dict[str, Any] = {}
        self.recorded: PendingCommit | None = None  # set at the commit point
        self._new_groups: dict[str, h5py.Group] = {}  # final path -> staged group
        self._origins: dict[tuple[str, str], tuple] = {}  # staged patches: origin, extent

    def stage(self, h5path: str) -> tuple[h5py.Group, str]:
        """The parent group and link name under which to create ``h5path``.

        Staged first, created after: whatever exists under the name when the transaction
        fails is removed.  A parent group the file does not have is staged as well (and
        ``h5path`` is then created inside it under its final name).
        """
        hard_get(self.file, h5path, self.path)  # no soft or external link on the way
        parent_path, _, name = h5path.rpartition("/")
        group, final, inside_new = self.file["/"], "", False
        for part in [p for p in parent_path.split("/") if p]:
            final = f"{final}/{part}"
            if final in self._new_groups:
                group, inside_new = self._new_groups[final], True
            elif not inside_new and part in group:
                group = group[part]
            else:
                if not inside_new:
                    self.staged.append((group.name, self.tag + part, part))
                group = group.create_group(part if inside_new else self.tag + part)
                self._new_groups[final], inside_new = group, True
        if inside_new:
            return group, name
        self.staged.append((group.name, self.tag + name, name))
        return group, self.tag + name

    def stage_patch(
        self, h5path: str, origin: tuple[int, ...], extent: tuple[int, ...] | None = None
    ) -> tuple[h5py.Group, str]:
        """The parent group and link name under which to create a patch of the existing
        dataset ``h5path`` (see the module doc), to be copied in at ``origin`` after the
        dataset is resized to ``extent`` (when given)."""
        self._existing(h5path, h5py.Dataset)
        parent_path, _, name = h5path.rpartition("/")
        group = self.file[parent_path or "/"]
        self.staged.append((group.name, f"{self.tag}patch-{name}", name))
        self._origins[(group.name, f"{self.tag}patch-{name}")] = (origin, extent)
        return group, f"{self.tag}patch-{name}"

    def stage_delete(self, h5path: str) -> None:
        """Delete ``h5path`` as part of the commit."""
        self._existing(h5path, (h5py.Dataset, h5py.Group))
        parent_path, _, name = h5path.rpartition("/")
        self.staged.append((self.file[parent_path or "/"].name, "", name))

    def _existing(self, h5path: str, kind: type | tuple[type, ...]) -> None:
        """Refuse ``h5path`` unless it is a ``kind`` reached through hard links."""
        obj = hard_get(self.file, h5path, self.path)
        if not isinstance(obj, kind):
            found = "nothing" if obj is None else f"a {type(obj).__name__}"
            raise LoomNameError(
                f"found {found}, expected an existing object of the file",
                path=self.path,
                h5path=h5path,
            )

    def set_root_attr(self, name: str, value: Any) -> None:
        """Set a root attribute as part of the commit."""
        self.root_attrs[name] = value

    def commit(self) -> None:
        """Record the pending commit (complete, flushed and fsynced, then renamed to its
        final name: the commit point), then carry it out."""
        f = self.file
        for (parent, staged), (origin, extent) in self._origins.items():
            attrs = f[parent][staged].attrs
            attrs[PATCH_ORIGIN] = np.asarray(origin, dtype=np.int64)
            if extent is not None:
                attrs[PATCH_EXTENT] = np.asarray(extent, dtype=np.int64)
        rows = np.array([list(row) for row in self.staged], dtype=object).reshape(-1, 3)
        draft = f.create_dataset(self.tag + _DRAFT, data=rows, dtype=h5py.string_dtype())
        for key, value in self.root_attrs.items():
            draft.attrs[key] = value
        f.flush()
        fsync(self.path)
        name = self.tag[:-1] + COMMIT_SUFFIX
        f.move(self.tag + _DRAFT, name)
        self.recorded = PendingCommit(name, list(self.staged), dict(self.root_attrs))
        f.flush()
        fsync(self.path)
        _finish(f, self.recorded)
        f.flush()

    def abort(self) -> None:
        """Remove what was staged before the commit point; after it, finish the commit."""
        f = self.file
        if self.recorded is not None and self.recorded.name in f:
            _finish(f, self.recorded)
            return
        if self.recorded is None:
            for parent, staged, _ in [("/", self.tag + _DRAFT, ""), *self.staged]:
                group = f.get(parent)
                if staged and isinstance(group, h5py.Group) and staged in group:
                    del group[staged]


@contextlib.contextmanager
def transaction(
    path: str,
    *,
    what: str,
    locking: bool | None = None,
    client: Any = None,
    groups: set[str] | frozenset[str] = frozenset(),
) -> Iterator[Transaction]:
    """Open ``path`` for writing and yield a :class:`Transaction` committed on exit.

    Interrupted writes of dead writers are recovered first.  An exception in the body or
    in the commit before its commit point removes what was staged (the file keeps its old
    content) and is raised as :class:`~loomx.errors.LoomWriteError` naming ``what`` failed.
    After the commit point the commit is finished: an error there is retried once (and
    then the write has succeeded), a KeyboardInterrupt is raised once it is finished.
    """
    f = open_for_writing(path, locking, client)
    txn = Transaction(f, path)
    _ACTIVE.add(txn.tag)
    try:
        try:
            recover_open(f, groups, locking)
            yield txn
            txn.commit()
        except BaseException as exc:
            committed = txn.recorded is not None
            try:
                txn.abort()  # rolls back before the commit point, finishes the commit after it
            except Exception as cleanup:
                state = (
                    "the commit is recorded: readers see the new content"
                    if committed
                    else "temporary objects remain: readers skip them"
                )
                raise LoomWriteError(
                    f"{what} failed ({exc}) and so did cleaning up ({cleanup}); {state}, and "
                    "loomx.recover(path) makes the file consistent on disk",
                    path=path,
                ) from exc
            if isinstance(exc, LoomxError) or not isinstance(exc, Exception):
                raise
            if not committed:
                message = f"{what} failed, the file is unchanged: {exc}"
                raise LoomWriteError(message, path=path) from exc
            # past the commit point and finished on the second try: the write is complete
        finally:
            f.close()
            with contextlib.suppress(OSError):
                fsync(path)
    finally:
        _ACTIVE.discard(txn.tag)


def recover(path: str | os.PathLike[str], *, locking: bool | None = None) -> int:
    """Bring a Loom file left by an interrupted loomx write to a consistent state.

    A write interrupted before its commit point is rolled back: the original bytes its
    rollback journal (``{file}.loomx-rollback``) saved are written back and the file is
    truncated to its original size (readers refuse a file in that state).  Then a commit
    recorded inside the file but not carried out is finished, and temporary objects are
    deleted: readers already see the file this way; this makes it so on disk, for tools
    that are not loomx (loompy, h5py).  A file another process is writing cannot be
    opened for this (with HDF5 file locking off, the objects of live processes are left
    alone).

    Parameters
    ----------
    path
        The Loom file.
    locking
        HDF5 file locking; pass ``False`` on filesystems without it.

    Returns
    -------
    int
        The number of interrupted writes rolled back or finished (0 when there was
        nothing to do; left-over temporary objects are removed either way).

    Examples
    --------
    >>> loomx.recover("pbmc.loom")  # doctest: +SKIP
    0
    """
    path = os.fspath(path)
    f = open_for_writing(path, locking, current_client())  # workers' read handles too
    try:
        try:
            finished = int(getattr(f, "restored", False))
            finished += recover_open(f, set(_all_groups(f)), locking)
            f.flush()
        finally:
            f.close()
    except LoomxError:
        raise
    except H5_ERRORS as exc:
        raise LoomWriteError(
            f"cannot recover: {type(exc).__name__}: {exc}; the file is damaged beyond what "
            "an interrupted loomx write leaves (expected a readable HDF5 file)",
            path=path,
        ) from exc
    fsync(path)
    return finished


def recover_pending(path: str, locking: bool | None = None) -> bool:
    """Run :func:`recover` when ``path`` holds a commit not yet carried out.

    Writers call this before they compare a Dataset with the disk.  A file that does not
    open is left to the caller's own open to report.  A write left interrupted below
    HDF5 (a rollback journal whose writer is gone) is rolled back first.
    """
    if journal_state(path, locking) == "hot":
        recover(path, locking=locking)
        return True
    try:
        f = open_h5(path, "r", locking)
    except OSError:
        return False
    with f:
        pending = bool(read_pending_commits(f))
    if pending:
        recover(path, locking=locking)
    return pending


def _all_groups(f: h5py.File) -> list[str]:
    """The groups at the root (where, with the root, temporary links can live)."""
    out = []
    for name in f:
        obj = f.get(name)
        if isinstance(obj, h5py.Group) and not name.startswith(TEMPORARY_TAG):
            out.append(obj.name)
    return out
