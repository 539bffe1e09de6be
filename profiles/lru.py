"""A dict as a bounded least-recently-used map: per-user state the worker keeps in memory
(last list served, last list published) must not grow with every user ever seen.

>>> last: dict[str, int] = {}
>>> for user, n in [("a", 1), ("b", 2), ("a", 3), ("c", 4)]:
...     lru_put(last, user, n, cap=2)
>>> last
{'a': 3, 'c': 4}
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def lru_put(store: dict[K, V], key: K, value: V, cap: int) -> None:
    """Set `key` as the most recently used entry; drop the least recently used beyond `cap`
    entries (0: no bound)."""
    store.pop(key, None)
    store[key] = value
    if cap > 0:
        while len(store) > cap:
            del store[next(iter(store))]
