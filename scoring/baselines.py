"""Baselines that run beside freshrec on the same events: decayed popularity and item
co-visitation over the user's last 10 items.

- `PopularityBaseline`: items by forward-decayed, type-weighted event count (half-life
  `half_life`; `math.inf` = all-time counts), the user's seen items skipped.
- `CovisitationBaseline`: each event on item b adds the type weight to `count(a → b)` and
  `count(b → a)` for every a among the user's previous `last_n` distinct items (sessions
  ignored); the list sums `count(a → ·)` over the user's `last_n` most recent items and
  fills up with popularity. Each item keeps its `cap` best neighbours (trimmed from 2·cap,
  like the Redis index).

>>> pop = PopularityBaseline()
>>> cov = CovisitationBaseline()
>>> for u, i in [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u2", "b")]:
...     pop.learn(u, i, 1.0, 0.0); cov.learn(u, i, 1.0, 0.0)
>>> pop.recommend(set(), 2)
['a', 'b']
>>> cov.recommend("u3", set(), 2, pop), cov.recommend("u1", {"a", "b"}, 2, pop)
(['a', 'b'], ['c'])
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Set
from operator import itemgetter

from scoring.decay import DecayedTop

__all__ = ["CovisitationBaseline", "PopularityBaseline"]


class PopularityBaseline:
    """Most popular items (decayed), excluding the user's seen items."""

    def __init__(self, half_life: float = math.inf, depth: int = 500) -> None:
        self.counts = DecayedTop(half_life, n=depth)

    def learn(self, user_id: str, item_id: str, weight: float, ts: float) -> None:
        self.counts.add(item_id, weight, ts)

    def recommend(self, seen: Set[str], k: int) -> list[str]:
        out: list[str] = []
        for item, _ in self.counts.top():
            if item not in seen:
                out.append(item)
                if len(out) == k:
                    break
        return out


class CovisitationBaseline:
    """Co-visitation with the user's last `last_n` items, filled with popularity."""

    def __init__(self, last_n: int = 10, cap: int = 100) -> None:
        self.last_n = last_n
        self.cap = cap
        self.counts: dict[str, dict[str, float]] = {}
        self.recent: dict[str, list[str]] = {}

    def _add(self, a: str, b: str, w: float) -> None:
        row = self.counts.get(a)
        if row is None:
            row = self.counts[a] = {}
        row[b] = row.get(b, 0.0) + w
        if len(row) > 2 * self.cap:
            keep = heapq.nlargest(self.cap, row.items(), key=itemgetter(1))
            row.clear()
            row.update(keep)

    def learn(self, user_id: str, item_id: str, weight: float, ts: float) -> None:
        recent = self.recent.setdefault(user_id, [])
        for a in recent:
            if a != item_id:
                self._add(a, item_id, weight)
                self._add(item_id, a, weight)
        if item_id in recent:
            recent.remove(item_id)
        recent.insert(0, item_id)
        del recent[self.last_n :]

    def recommend(self, user_id: str, seen: Set[str], k: int, fill: PopularityBaseline) -> list[str]:
        acc: dict[str, float] = {}
        for a in self.recent.get(user_id, ()):
            row = self.counts.get(a)
            if row:
                for b, c in row.items():
                    acc[b] = acc.get(b, 0.0) + c
        fresh = [kv for kv in acc.items() if kv[0] not in seen]
        out = [b for b, _ in heapq.nlargest(k, fresh, key=itemgetter(1))]
        if len(out) < k:
            have = set(out)
            for item in fill.recommend(seen, 2 * k):
                if item not in have:
                    out.append(item)
                    if len(out) == k:
                        break
        return out
