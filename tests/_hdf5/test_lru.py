"""loomx._hdf5.lru: the least-recently-used cache of per-process objects (handles,
descriptors, chunk indexes), checked against a plain list model of recency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given
from hypothesis import strategies as st

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


_OPS = st.lists(
    st.tuples(st.sampled_from(["get", "peek", "put", "put_keep", "pop"]), st.integers(0, 3)),
    min_size=4,
    max_size=40,
)


@given(maxsize=st.integers(1, 4), ops=_OPS)
def test_lru_against_a_model(maxsize: int, ops: list[tuple[str, int]]) -> None:
    """Every operation against a list of keys, least recently used first."""
    evicted: list[str] = []
    cache: LRUCache[str] = LRUCache(maxsize, on_evict=evicted.append)
    order: list[int] = []
    values: dict[int, str] = {}
    dropped: list[str] = []
    for step, (op, key) in enumerate(ops):
        value = f"{key}@{step}"
        present = key in values
        if op == "pop":
            assert cache.pop(key) == values.pop(key, None)
            if present:
                order.remove(key)
            continue
        if op == "peek":
            assert cache.peek(key) == values.get(key)
            if not present:
                continue
        elif op == "get":
            assert cache.get(key, lambda v=value: v) == values.setdefault(key, value)
        else:
            keep = op == "put_keep" and present
            stored = cache.put(key, value, replace=op == "put")
            values[key] = values[key] if keep else value
            assert stored == values[key]
        if present:
            order.remove(key)
        order.append(key)
        while len(order) > maxsize:
            dropped.append(values.pop(order.pop(0)))
        assert evicted == dropped
        assert list(cache) == order and len(cache) == len(order)
        assert cache.items() == [(k, values[k]) for k in order]


def test_concurrent_makers_of_one_key_all_get_the_first_stored() -> None:
    cache: LRUCache[object] = LRUCache(4)
    start = threading.Barrier(8)

    def make() -> object:
        start.wait(10)  # all makers run at once, outside the cache's lock
        return object()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: cache.get("k", make), range(8)))
    assert all(g is got[0] for g in got) and cache.peek("k") is got[0]


def test_reset_forgets_unless_told_to_keep() -> None:
    cache: LRUCache[int] = LRUCache(3)
    cache.get("a", lambda: 1)
    cache.reset(keep_values=True)
    assert cache.peek("a") == 1
    cache.reset()
    assert len(cache) == 0 and cache.peek("a") is None
