"""Objects looked up by hard links only: the one rule of reading and of writing.

HDF5's ``group[name]``, ``group.get(name)`` and ``name in group`` follow soft and external
links.  loomx reads and writes objects stored in the file itself: :func:`hard_child` looks
up one child (the readers, which may follow external links to datasets when asked), and
:func:`hard_get` walks a whole path link by link (every writer, before it stages, replaces,
patches or deletes an object).  A soft or external link where an object is expected is a
:class:`~loomx.errors.LoomFormatError` naming the link and its target.
"""

from __future__ import annotations

import h5py

from loomx.errors import LoomFormatError

__all__ = ["hard_child", "hard_get"]

_WRITE_ADVICE = (
    "loomx writes only objects stored in this file, reached through hard links (replace "
    "the link by a copy of its target, e.g. with h5py's Group.copy, and write again)"
)


def _described(link: h5py.SoftLink | h5py.ExternalLink) -> str:
    if isinstance(link, h5py.ExternalLink):
        return f"an ExternalLink to {link.filename!r}:{link.path}"
    if isinstance(link, h5py.SoftLink):
        return f"a SoftLink to {link.path}"
    return f"a {type(link).__name__}"


class _LinkedDataset(h5py.Dataset):
    """A dataset reached through an external link, named by the link (reads reopen it by
    that name, in this file)."""

    def __init__(self, bind: h5py.h5d.DatasetID, link_name: str) -> None:
        super().__init__(bind)
        self._link_name = link_name

    @property
    def name(self) -> str:
        return self._link_name


def hard_child(
    group: h5py.Group, name: str, path: str, follow_external: bool = False
) -> h5py.Dataset | h5py.Group:
    """``group[name]`` if it is a hard link inside this file (or, with
    ``follow_external``, an external link); a clear error otherwise."""
    link = group.get(name, getlink=True)
    where = f"{group.name.rstrip('/')}/{name}"
    external = isinstance(link, h5py.ExternalLink)
    if not isinstance(link, h5py.HardLink) and not (external and follow_external):
        target = f" to {link.filename!r}:{link.path}" if external else ""
        raise LoomFormatError(
            f"found a {type(link).__name__}{target}, expected a dataset or "
            "group stored in this file (loomx does not follow soft or external links; "
            "open_loom(path, follow_external=True) follows external ones)",
            path=path,
            h5path=where,
        )
    try:
        obj = group[name]
    except (KeyError, OSError) as err:
        if not external:
            raise
        raise LoomFormatError(
            f"the external link to {link.filename!r}:{link.path} cannot be followed ({err})",
            path=path,
            h5path=where,
        ) from err
    if not isinstance(obj, (h5py.Dataset, h5py.Group)):
        raise LoomFormatError(
            f"found a {type(obj).__name__}, expected a dataset or group", path=path, h5path=where
        )
    if external:
        if not isinstance(obj, h5py.Dataset):
            raise LoomFormatError(
                f"found an external link to the group {link.filename!r}:{link.path}; "
                "follow_external follows links to datasets only",
                path=path,
                h5path=where,
            )
        obj = _LinkedDataset(obj.id, where)
    if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual) and not follow_external:
        raise LoomFormatError(
            "found a dataset with external or virtual storage, expected data stored in this "
            "file (open_loom(path, follow_external=True) reads it)",
            path=path,
            h5path=where,
        )
    return obj


def hard_get(group: h5py.Group, h5path: str, path: object) -> h5py.Dataset | h5py.Group | None:
    """The object at ``h5path`` (absolute, or relative to ``group``) walked by hard links
    only, or ``None`` when the path names nothing.

    Raises :class:`~loomx.errors.LoomFormatError` when a soft or external link stands
    anywhere on the path, or the object found is a dataset with external or virtual storage
    (writing it would write outside this file).  ``path`` is the file, for errors.

    Examples
    --------
    >>> with h5py.File("pbmc.loom", "r") as f:  # doctest: +SKIP
    ...     hard_get(f, "/layers/spliced", "pbmc.loom")
    <HDF5 dataset "spliced": shape (2000, 500), type "<f4">
    """
    obj: h5py.Dataset | h5py.Group = group.file["/"] if h5path.startswith("/") else group
    walked = "" if h5path.startswith("/") else obj.name.rstrip("/")
    for name in [part for part in h5path.split("/") if part]:
        if not isinstance(obj, h5py.Group):
            return None
        walked = f"{walked}/{name}"
        link = obj.get(name, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            raise LoomFormatError(
                f"found {_described(link)}, expected a dataset or group stored in this file; "
                + _WRITE_ADVICE,
                path=path,
                h5path=walked,
            )
        obj = obj[name]
    if isinstance(obj, h5py.Dataset) and (obj.external or obj.is_virtual):
        raise LoomFormatError(
            "found a dataset with external or virtual storage, expected data stored in this "
            "file; " + _WRITE_ADVICE,
            path=path,
            h5path=walked or "/",
        )
    return obj
