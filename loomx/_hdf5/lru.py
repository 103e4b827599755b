"""A small thread-safe least-recently-used cache of per-process objects (open handles,
file descriptors, chunk indexes): the one LRU helper of loomx."""

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
    key at once, the first stored value wins and both get it.  ``on_evict(value)`` runs
    for every value dropped to make room (not for :meth:`pop` or :meth:`clear`), after
    the cache's own lock is released: the owner of an open handle closes it there.

    Examples
    --------
    >>> cache = LRUCache(maxsize=2)
    >>> cache.get("a", lambda: 1), cache.get("b", lambda: 2), cache.get("a", lambda: 3)
    (1, 2, 1)
    >>> cache.get("c", lambda: 4), sorted(cache)
    (4, ['a', 'c'])
    """

    def __init__(self, maxsize: int = 64, on_evict: Callable[[V], object] | None = None) -> None:
        self.maxsize = maxsize
        self.on_evict = on_evict
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, V] = OrderedDict()

    def peek(self, key: Hashable) -> V | None:
        """``self[key]`` (now the most recently used), or None."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        return None

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """``self[key]``, made with ``make()`` on a miss."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        return self.put(key, make(), replace=False)

    def put(self, key: Hashable, value: V, replace: bool = True) -> V:
        """Store ``value`` under ``key`` (``replace=False``: unless a value is there
        already) and return the value stored."""
        with self._lock:
            if replace or key not in self._values:
                self._values[key] = value
            self._values.move_to_end(key)
            value = self._values[key]
            evicted = []
            while len(self._values) > self.maxsize:
                evicted.append(self._values.popitem(last=False)[1])
        if self.on_evict is not None:
            for old in evicted:
                self.on_evict(old)
        return value

    def pop(self, key: Hashable) -> V | None:
        """Forget ``key``; its value, or None."""
        with self._lock:
            return self._values.pop(key, None)

    def items(self) -> list[tuple[Hashable, V]]:
        """The keys and values, least recently used first (a copy)."""
        with self._lock:
            return list(self._values.items())

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._values.clear()

    def reset(self, keep_values: bool = False) -> None:
        """A new lock, for a forked child (another thread of the parent may have held the
        old one at the fork); forgets every value unless ``keep_values``, without taking
        the old lock."""
        self._lock = threading.Lock()
        if not keep_values:
            self._values = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            return iter(list(self._values))
