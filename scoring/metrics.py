"""Prequential ranking metrics: every event is scored against the list served before it.

For one event whose item is `target` and a served list `recs` (best first, length ≤ K):

- HR@K = 1 if `target` is in the list;
- NDCG@K = 1/log2(rank + 1) for the 1-based `rank` of `target` (one relevant item, so the
  ideal DCG is 1), else 0;
- MRR = 1/rank, else 0.

Over a run: catalog coverage = distinct items ever recommended / catalog size, and
intra-list diversity (ILD) = mean over lists of the mean pairwise cosine distance
`1 − cos(vᵢ, vⱼ)` of the listed items' vectors.

>>> m = PrequentialMetrics(k=3)
>>> m.update(["a", "b", "c"], "b")
>>> m.update(["a", "b", "c"], "z")
>>> r = m.result(catalog_size=10)
>>> r["hr"], round(r["ndcg"], 4), r["mrr"], r["coverage"], r["events"]
(0.5, 0.3155, 0.25, 0.3, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from scoring.types import FloatArray

__all__ = ["PrequentialMetrics", "hit_rank", "intra_list_diversity", "ndcg_at_k", "reciprocal_rank"]


def hit_rank(recs: Sequence[str], target: str, k: int) -> int | None:
    """1-based rank of `target` within the first `k` of `recs`, or None.

    >>> hit_rank(["a", "b"], "b", 10), hit_rank(["a", "b"], "b", 1)
    (2, None)
    """
    for i, item in enumerate(recs[:k]):
        if item == target:
            return i + 1
    return None


def ndcg_at_k(recs: Sequence[str], target: str, k: int) -> float:
    """NDCG@k with the single relevant item `target`.

    >>> ndcg_at_k(["a"], "a", 10), round(ndcg_at_k(["x", "a"], "a", 10), 4)
    (1.0, 0.6309)
    """
    r = hit_rank(recs, target, k)
    return 0.0 if r is None else 1.0 / math.log2(r + 1)


def reciprocal_rank(recs: Sequence[str], target: str, k: int) -> float:
    """1/rank of `target` in the first `k`, else 0.

    >>> reciprocal_rank(["x", "y", "a"], "a", 10)
    0.3333333333333333
    """
    r = hit_rank(recs, target, k)
    return 0.0 if r is None else 1.0 / r


def intra_list_diversity(vectors: FloatArray) -> float:
    """Mean pairwise cosine distance of the rows of `vectors` (0.0 below two rows).

    >>> round(intra_list_diversity(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])), 6)
    0.666667
    """
    n = vectors.shape[0]
    if n < 2:
        return 0.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    sim = unit @ unit.T
    pair_sum = (float(sim.sum()) - float(np.trace(sim))) / 2.0
    return float(1.0 - pair_sum / (n * (n - 1) / 2.0))


class PrequentialMetrics:
    """Running HR@k, NDCG@k, MRR, coverage and ILD of one recommender."""

    __slots__ = ("_ild_n", "_ild_sum", "_items", "hits", "k", "mrr_sum", "n", "ndcg_sum")

    def __init__(self, k: int) -> None:
        self.k = k
        self.n = 0
        self.hits = 0
        self.ndcg_sum = 0.0
        self.mrr_sum = 0.0
        self._items: set[str] = set()
        self._ild_sum = 0.0
        self._ild_n = 0

    def update(self, recs: Sequence[str], target: str, vectors: FloatArray | None = None) -> None:
        """Score the list `recs` against the event's item; `vectors` (one row per listed
        item) adds the list to the diversity average."""
        r = hit_rank(recs, target, self.k)
        self.n += 1
        if r is not None:
            self.hits += 1
            self.ndcg_sum += 1.0 / math.log2(r + 1)
            self.mrr_sum += 1.0 / r
        self._items.update(recs[: self.k])
        if vectors is not None and vectors.shape[0] >= 2:
            self._ild_sum += intra_list_diversity(vectors)
            self._ild_n += 1

    def update_many(
        self, lists: Sequence[Sequence[str]], which: Sequence[int], targets: Sequence[str]
    ) -> list[int]:
        """`update(lists[which[e]], targets[e])` for every event e in order (many events
        share a list: each list's ranks are looked up once); returns each event's hit (1/0).

        >>> m = PrequentialMetrics(k=2)
        >>> m.update_many([["a", "b", "c"], ["d"]], [0, 0, 1], ["b", "c", "d"])
        [1, 0, 1]
        >>> m.n, m.hits, m.mrr_sum, sorted(m._items)
        (3, 2, 1.5, ['a', 'b', 'd'])
        """
        k = self.k
        ranks: dict[int, dict[str, int]] = {}
        out = []
        for w, target in zip(which, targets, strict=True):
            rank = ranks.get(w)
            if rank is None:
                top = lists[w][:k]
                rank = ranks[w] = {}
                for i, item in enumerate(top):
                    rank.setdefault(item, i + 1)
                self._items.update(top)
            r = rank.get(target)
            self.n += 1
            if r is None:
                out.append(0)
            else:
                self.hits += 1
                self.ndcg_sum += 1.0 / math.log2(r + 1)
                self.mrr_sum += 1.0 / r
                out.append(1)
        return out

    def result(self, catalog_size: int) -> dict[str, Any]:
        """The averages so far (0.0 before any event)."""
        n = max(self.n, 1)
        return {
            "events": self.n,
            "hr": self.hits / n,
            "ndcg": self.ndcg_sum / n,
            "mrr": self.mrr_sum / n,
            "coverage": len(self._items) / max(catalog_size, 1),
            "ild": self._ild_sum / self._ild_n if self._ild_n else 0.0,
        }
