"""The recommender's view of the catalog: dense item indices, vectors, categories,
decayed popularity, the top items per category and a nearest-neighbour index.

Everything is numpy arrays indexed by a dense item index, so a candidate list becomes one
integer array and its features are gathers, not per-item Python. Popularity is forward
decayed (see `scoring.decay`) with one landmark for all items; per category the best
`per_category` items by popularity are kept exactly (a stored value only grows).

Nearest items to a vector: `BruteForceIndex` (one matrix-vector product, exact) below
`ann_threshold` (50,000) items; above it `FaissIndex`, a FAISS HNSW graph (approximate;
its proposals are re-scored exactly). A batch of users' queries against the brute-force
index is one matrix product (`nearest_many`).

>>> cat = ItemCatalog(dim=2, pop_half_life=3600.0)
>>> cat.add_item("a", np.array([1.0, 0.0]), ("x",))
0
>>> cat.add_item("b", np.array([0.0, 1.0]), ("x", "y"))
1
>>> cat.add_popularity(1, 2.0, ts=0.0)
>>> cat.top_in_category("x", 5)
[1, 0]
>>> cat.nearest(np.array([0.9, 0.1]), 1)[0].tolist()
[0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from scoring.decay import REBASE_HALF_LIVES
from scoring.types import FloatArray

__all__ = ["BruteForceIndex", "FaissIndex", "ItemCatalog", "VectorIndex", "make_vector_index", "top_k_rows"]

IntArray = NDArray[np.int64]
#: Catalogs at least this large use an ANN index (FAISS HNSW).
DEFAULT_ANN_THRESHOLD: Final[int] = 50_000
#: Categories per item that features look at.
MAX_CATEGORIES: Final[int] = 8


def top_k_rows(scores: NDArray[Any], k: int) -> list[IntArray]:
    """Per row of `scores` (2-D), the column indices of its `k` largest values, best first,
    ties by column index. A lower bound on each row's k-th value comes from a strided sample
    of the columns (its k-th largest: at least k values of the row reach it), so only the
    few values above it are sorted.

    >>> [r.tolist() for r in top_k_rows(np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]]), 2)]
    [[1, 3], [0, 1]]
    """
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return [np.zeros(0, np.int64) for _ in range(scores.shape[0])]
    step = max(1, n // max(8 * k, 1024))
    sample = scores[:, ::step]
    m = sample.shape[1]
    bound = np.partition(sample, m - k, axis=1)[:, m - k] if m > k else scores.min(axis=1)
    out = []
    for row, b in zip(scores, bound.tolist(), strict=True):
        c = np.flatnonzero(row >= b)
        out.append(c[np.lexsort((c, -row[c]))[:k]])
    return out


class VectorIndex(Protocol):
    """Nearest rows of the catalog's unit vector matrix to a query vector."""

    def add(self, index: int, vector: FloatArray) -> None: ...

    def query(
        self, vectors: NDArray[Any], n_items: int, q: FloatArray, k: int
    ) -> tuple[IntArray, FloatArray]:
        """Up to `k` (item index, cosine) pairs, best first."""
        ...


class BruteForceIndex:
    """Exact cosine search: `vectors[:n] @ q`, then `argpartition` (vectors are unit rows)."""

    def add(self, index: int, vector: FloatArray) -> None:
        """Nothing to do: the catalog matrix is the index."""

    def query(
        self, vectors: NDArray[Any], n_items: int, q: FloatArray, k: int
    ) -> tuple[IntArray, FloatArray]:
        sims = vectors[:n_items] @ q.astype(vectors.dtype)
        k = min(k, n_items)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        idx = np.argpartition(-sims, k - 1)[:k] if k < n_items else np.arange(n_items)
        order = np.argsort(-sims[idx], kind="stable")
        top = idx[order].astype(np.int64)
        out: FloatArray = sims[top].astype(np.float64)
        return top, out


class FaissIndex:
    """Approximate cosine search: a FAISS HNSW graph over the unit rows (inner product).

    The graph only grows: an item whose vector changes is added again under its index, and
    every query re-scores what the graph proposes with the catalog's current vectors (exact
    cosine, duplicates dropped), so a changed item is found where its new vector is close
    to the query's neighbourhood in the graph."""

    def __init__(self, dim: int, m: int = 16, ef_construction: int = 80, ef_search: int = 128) -> None:
        import faiss  # optional at import time: only large catalogs need it

        self._graph: Any = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self._graph.hnsw.efConstruction = ef_construction
        self._graph.hnsw.efSearch = ef_search
        self._index: Any = faiss.IndexIDMap(self._graph)
        self._count = 0

    def add(self, index: int, vector: FloatArray) -> None:
        self._index.add_with_ids(vector[None, :].astype(np.float32), np.array([index], np.int64))
        self._count += 1

    def query(
        self, vectors: NDArray[Any], n_items: int, q: FloatArray, k: int
    ) -> tuple[IntArray, FloatArray]:
        k = min(k, self._count)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
        _, labels = self._index.search(q[None, :].astype(np.float32), min(2 * k, self._count))
        found = np.unique(labels[0][(labels[0] >= 0) & (labels[0] < n_items)])
        sims = vectors[found] @ q.astype(vectors.dtype)
        order = np.lexsort((found, -sims))[:k]
        out: FloatArray = sims[order].astype(np.float64)
        return found[order].astype(np.int64), out


def make_vector_index(
    dim: int, expected_items: int, ann_threshold: int = DEFAULT_ANN_THRESHOLD
) -> VectorIndex:
    """Brute force for small catalogs, a FAISS HNSW graph for large ones.

    >>> type(make_vector_index(8, 100)).__name__
    'BruteForceIndex'
    """
    if expected_items >= ann_threshold:
        return FaissIndex(dim)
    return BruteForceIndex()


class ItemCatalog:
    """Dense arrays over every item the recommender knows (see the module doc)."""

    def __init__(
        self,
        dim: int,
        pop_half_life: float,
        per_category: int = 50,
        expected_items: int = 0,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
    ) -> None:
        self.dim = dim
        self.pop_half_life = pop_half_life
        self.per_category = per_category
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        cap = max(expected_items, 64)
        #: unit rows, float32 (scoring precision is plenty; halves the brute-force scan)
        self.vectors: NDArray[np.float32] = np.zeros((cap, dim), dtype=np.float32)
        self.pop_raw: FloatArray = np.zeros(cap)
        #: event time of the item's first interaction or creation (NaN = unknown)
        self.first_ts: FloatArray = np.full(cap, np.nan)
        self.item_categories: list[tuple[str, ...]] = []
        self.item_attributes: list[dict[str, Any]] = []
        #: category name -> dense category id; `cat_matrix[i]` = the ids of item i's first
        #: `MAX_CATEGORIES` categories, padded with -1
        self.category_ids: dict[str, int] = {}
        self.cat_matrix: IntArray = np.full((cap, MAX_CATEGORIES), -1, dtype=np.int64)
        #: bumped whenever an existing item's categories or attributes change
        self.generation = 0
        self.pop_landmark: float | None = None
        #: the largest value of `pop_raw` (kept through rebases)
        self.pop_max_raw = 0.0
        self._cat_top: dict[str, list[int]] = {}
        self._cat_min: dict[str, int] = {}
        self._cat_sorted: dict[str, list[int]] = {}
        self.vector_index: VectorIndex = make_vector_index(dim, expected_items, ann_threshold)

    def __len__(self) -> int:
        return len(self.ids)

    # ---- items ------------------------------------------------------------------------

    def add_item(
        self,
        item_id: str,
        vector: FloatArray | None,
        categories: Sequence[str] = (),
        created_at: float | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> int:
        """Register (or update) an item; returns its dense index. A zero/None vector keeps
        the row at zero (it never shows up as a nearest neighbour)."""
        i = self.index.get(item_id)
        if i is None:
            i = len(self.ids)
            if i >= self.vectors.shape[0]:
                self._grow()
            self.ids.append(item_id)
            self.index[item_id] = i
            self.item_categories.append(())
            self.item_attributes.append({})
            self._set_categories(i, categories)
            self.item_attributes[i] = dict(attributes or {})
        else:
            if categories and tuple(categories) != self.item_categories[i]:
                self._set_categories(i, categories)
                self.generation += 1
            if attributes is not None and attributes != self.item_attributes[i]:
                self.item_attributes[i] = dict(attributes)
                self.generation += 1
        if vector is not None:
            v = np.asarray(vector, dtype=np.float64)
            norm = float(np.linalg.norm(v))
            if norm > 0.0:
                self.vectors[i] = v / norm
                self.vector_index.add(i, self.vectors[i])
        if created_at is not None and np.isnan(self.first_ts[i]):
            self.first_ts[i] = created_at
        return i

    def _set_categories(self, i: int, categories: Sequence[str]) -> None:
        cats = tuple(dict.fromkeys(categories))
        self.item_categories[i] = cats
        row = self.cat_matrix[i]
        row[:] = -1
        for j, c in enumerate(cats[:MAX_CATEGORIES]):
            cid = self.category_ids.get(c)
            if cid is None:
                cid = self.category_ids[c] = len(self.category_ids)
            row[j] = cid
        for c in cats:
            self._offer(c, i)

    def ensure(self, item_id: str) -> int:
        """The index of `item_id`, registering an unknown item without content."""
        i = self.index.get(item_id)
        return self.add_item(item_id, None) if i is None else i

    def indices(self, item_ids: Iterable[str]) -> IntArray:
        """Dense indices of known items (unknown ones are skipped)."""
        get = self.index.get
        return np.fromiter((j for j in (get(x) for x in item_ids) if j is not None), dtype=np.int64)

    def _grow(self) -> None:
        n = self.vectors.shape[0] * 2
        self.vectors = np.vstack([self.vectors, np.zeros_like(self.vectors)])
        self.pop_raw = np.concatenate([self.pop_raw, np.zeros(n - self.pop_raw.shape[0])])
        self.first_ts = np.concatenate([self.first_ts, np.full(n - self.first_ts.shape[0], np.nan)])
        self.cat_matrix = np.vstack([self.cat_matrix, np.full_like(self.cat_matrix, -1)])

    # ---- popularity -------------------------------------------------------------------

    def add_popularity(self, i: int, weight: float, ts: float) -> None:
        """Add `weight` at event time `ts` to item `i`'s decayed popularity."""
        if self.pop_landmark is None:
            self.pop_landmark = ts
        x = (ts - self.pop_landmark) / self.pop_half_life
        if x > REBASE_HALF_LIVES:
            self.pop_raw *= 2.0**-x
            self.pop_max_raw *= 2.0**-x
            self.pop_landmark = ts
            x = 0.0
        self.pop_raw[i] += weight * 2.0**x
        if self.pop_raw[i] > self.pop_max_raw:
            self.pop_max_raw = float(self.pop_raw[i])
        if np.isnan(self.first_ts[i]):
            self.first_ts[i] = ts
        for c in self.item_categories[i]:
            self._offer(c, i)

    def popularity(self, idx: IntArray, at: float) -> FloatArray:
        """Decayed popularity of items `idx` read at `at`."""
        if self.pop_landmark is None:
            return np.zeros(idx.shape[0])
        out: FloatArray = self.pop_raw[idx] * 2.0 ** ((self.pop_landmark - at) / self.pop_half_life)
        return out

    def popularity_factor(self, at: float) -> float:
        """What `pop_raw` is multiplied by to read the popularity at `at` (0 before any)."""
        if self.pop_landmark is None:
            return 0.0
        return float(2.0 ** ((self.pop_landmark - at) / self.pop_half_life))

    def popularity_factors(self, at: FloatArray) -> FloatArray:
        """`popularity_factor` at every time of `at` (zeros before any popularity)."""
        if self.pop_landmark is None:
            return np.zeros(at.shape[0])
        return np.asarray(2.0 ** ((self.pop_landmark - at) / self.pop_half_life), np.float64)

    def max_popularity(self, at: float) -> float:
        """The largest decayed popularity, read at `at`."""
        if self.pop_landmark is None:
            return 0.0
        return float(self.pop_max_raw * 2.0 ** ((self.pop_landmark - at) / self.pop_half_life))

    # ---- categories -------------------------------------------------------------------

    def _offer(self, category: str, i: int) -> None:
        top = self._cat_top.get(category)
        raw = self.pop_raw
        if top is None:
            self._cat_top[category] = [i]
            self._cat_min[category] = i
            self._cat_sorted.pop(category, None)
            return
        if i in top:
            self._cat_sorted.pop(category, None)
            if i == self._cat_min[category]:
                self._cat_min[category] = min(top, key=raw.__getitem__)
            return
        if len(top) < self.per_category:
            top.append(i)
            if raw[i] < raw[self._cat_min[category]]:
                self._cat_min[category] = i
        else:
            m = self._cat_min[category]
            if raw[i] <= raw[m]:
                return
            top[top.index(m)] = i
            self._cat_min[category] = min(top, key=raw.__getitem__)
        self._cat_sorted.pop(category, None)

    def top_in_category(self, category: str, k: int) -> list[int]:
        """Up to `k` most popular items of `category` (dense indices), best first."""
        s = self._cat_sorted.get(category)
        if s is None:
            top = self._cat_top.get(category)
            if top is None:
                return []
            raw = self.pop_raw
            s = self._cat_sorted[category] = sorted(top, key=lambda j: (-raw[j], j))
        return s[:k]

    # ---- vectors ----------------------------------------------------------------------

    def nearest(self, q: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        """Up to `k` items nearest to `q` by cosine (best first) and their cosines."""
        norm = float(np.linalg.norm(q))
        if norm == 0.0 or not self.ids:
            return np.zeros(0, np.int64), np.zeros(0)
        return self.vector_index.query(self.vectors, len(self.ids), q / norm, k)

    def nearest_many(self, queries: Sequence[FloatArray | None], k: int) -> list[IntArray]:
        """`nearest` for several query vectors at once (None or zero: no items): one matrix
        product for all of them with the brute-force index. Exact top `k` by cosine, best
        first, ties by item index (the brute-force `nearest` breaks ties arbitrarily).

        >>> cat = ItemCatalog(dim=2, pop_half_life=3600.0)
        >>> for i, v in [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 1.0])]:
        ...     _ = cat.add_item(i, np.array(v))
        >>> [r.tolist() for r in cat.nearest_many([np.array([2.0, 0.1]), None, np.zeros(2)], 2)]
        [[0, 2], [], []]
        """
        empty = np.zeros(0, np.int64)
        out = [empty] * len(queries)
        rows: list[int] = []
        unit: list[FloatArray] = []
        for r, q in enumerate(queries):
            norm = 0.0 if q is None else float(np.linalg.norm(q))
            if q is not None and norm > 0.0:
                rows.append(r)
                unit.append(q / norm)
        n = len(self.ids)
        if not rows or n == 0 or k <= 0:
            return out
        if not isinstance(self.vector_index, BruteForceIndex):
            for r, q in zip(rows, unit, strict=True):
                out[r] = self.vector_index.query(self.vectors, n, q, k)[0]
            return out
        sims = np.stack(unit).astype(self.vectors.dtype) @ self.vectors[:n].T
        for r, top in zip(rows, top_k_rows(sims, k), strict=True):
            out[r] = top
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "vector_index"}
        state["_ann"] = not isinstance(self.vector_index, BruteForceIndex)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        ann = state.pop("_ann")
        self.__dict__.update(state)
        n = len(self.ids)
        self.vector_index = make_vector_index(self.dim, n, ann_threshold=0 if ann else n + 1)
        if ann:
            for i in range(n):
                if self.vectors[i].any():
                    self.vector_index.add(i, self.vectors[i])
