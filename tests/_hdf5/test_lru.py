"""loomx._hdf5.lru: the least-recently-used cache of per-process objects (handles,
descriptors, chunk indexes), checked against a plain list model of recency."""

from __future__ import annotations

from loomx._hdf5.lru import LRUCache


def test_lru_evicts_least_recently_used_and_reports_it() -> None:
    evicted: list[int] = []
    cache: LRUCache[int] = LRUCache(2, on_evict=evicted.append)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    assert cache.peek("a") == 1  # now b is the least recently used
    assert cache.get("c", lambda: 3) == 3
    assert evicted == [2]
    assert sorted(cache) == ["a", "c"]
    assert cache.pop("a") == 1
    cache.clear()
    assert evicted == [2]  # pop and clear leave closing to the caller
