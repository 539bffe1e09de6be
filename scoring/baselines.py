"""Baselines that run beside freshrec on the same events: decayed popularity and item
co-visitation over the user's last 10 items.

- `PopularityBaseline`: items by forward-decayed, type-weighted event count (half-life
  `half_life`; `math.inf` = all-time counts), the user's seen items skipped.
- `CovisitationBaseline`: each event on item b adds the type weight to `count(a → b)` and
  `count(b → a)` for every a among the user's previous `last_n` distinct items (sessions
  ignored); the list sums `count(a → ·)` over the user's `last_n` most recent items and
  fills up with popularity. Counts are exact: no neighbour cap (an earlier version kept
  each item's 100 best neighbours like the Redis index, which cost it ~10% of its HR on
  MovieLens; a weak baseline is not a win). Rows are `scoring.knn.SparseRows`, so a list
  is a few vectorised gathers.

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

import math
from collections.abc import Set

import numpy as np

from scoring.decay import DecayedTop
from scoring.knn import SparseRows

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

    def __init__(self, last_n: int = 10) -> None:
        self.last_n = last_n
        self.counts = SparseRows()
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.recent: dict[str, list[int]] = {}

    def _id(self, item: str) -> int:
        i = self.index.get(item)
        if i is None:
            i = self.index[item] = len(self.ids)
            self.ids.append(item)
        return i

    def learn(self, user_id: str, item_id: str, weight: float, ts: float) -> None:
        b = self._id(item_id)
        recent = self.recent.setdefault(user_id, [])
        for a in recent:
            if a != b:
                self.counts.add(a, b, weight)
                self.counts.add(b, a, weight)
        if b in recent:
            recent.remove(b)
        recent.insert(0, b)
        del recent[self.last_n :]

    def recommend(self, user_id: str, seen: Set[str], k: int, fill: PopularityBaseline) -> list[str]:
        out: list[str] = []
        recent = self.recent.get(user_id)
        if recent:
            acc = np.zeros(len(self.ids))
            for a in recent:
                idx, val = self.counts.row(a)
                acc[idx] += val
            get = self.index.get
            for item in seen:
                j = get(item)
                if j is not None:
                    acc[j] = 0.0
            cand = np.flatnonzero(acc > 0.0)
            if cand.shape[0] > k:
                # every item tied with the k-th best stays in (ties: first-seen item order)
                kth = np.partition(acc[cand], cand.shape[0] - k)[cand.shape[0] - k]
                cand = cand[acc[cand] >= kth]
            order = cand[np.lexsort((cand, -acc[cand]))][:k]
            out = [self.ids[j] for j in order.tolist()]
        if len(out) < k:
            have = set(out)
            for item in fill.recommend(seen, 2 * k):
                if item not in have:
                    out.append(item)
                    if len(out) == k:
                        break
        return out
