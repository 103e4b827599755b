"""A small thread-safe least-recently-used cache of per-process objects (chunk indexes,
file descriptors): the one LRU helper of loomx."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """At most ``maxsize`` values, the least recently used dropped first.

    ``make`` runs outside the lock (it may read a file); when two threads make the same
    key at once, the first stored value wins and both get it.

    Examples
    --------
    >>> cache = LRUCache(maxsize=2)
    >>> cache.get("a", lambda: 1), cache.get("b", lambda: 2), cache.get("a", lambda: 3)
    (1, 2, 1)
    """

    def __init__(self, maxsize: int = 64) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """``self[key]``, made with ``make()`` on a miss."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()
        with self._lock:
            value = self._values.setdefault(key, value)
            while len(self._values) > self.maxsize:
                self._values.popitem(last=False)
        return value

    def pop(self, key: Hashable) -> V | None:
        """Forget ``key``; its value, or None."""
        with self._lock:
            return self._values.pop(key, None)

    def clear(self) -> None:
        """Forget everything (a forked child's inherited entries, say)."""
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            return iter(list(self._values))
