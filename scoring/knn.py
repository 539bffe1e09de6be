"""Item-kNN over user histories: co-occurrence counts and a normalised similarity.

`CoOccurrence` counts, for every event on item b, one pair (a, b) and (b, a) for each a
among the user's previous `window` distinct items (its history, most recent first; the
pair's weight is `gap_decay^p` for the item at position p, so close neighbours in a
history count more), and one occurrence `C(b)`. The pairs are directed: (a, b) — b came
after a — counts the full weight, (b, a) `backward` times it (1 = symmetric counts). A user
is scored from the items they had, so "what tends to come *after* h" is what the row of h
should hold; the reverse direction still carries plain co-occurrence. The similarity of a
to b is

    sim(a, b) = C(a, b) / (C(a)^α · C(b)^(1−α))

(α = 0.5: cosine). A user's item-kNN score of b sums `w_p · sim(h_p, b)` over the user's
`n_recent` most recent items h_p, with `w_p = recency_decay^p`.

A user's scores are a handful of vectorised gathers of the history items' neighbour rows
into one dense array (no Python loop over neighbours). `max_neighbours` N > 0 bounds each
row (`scoring.bounded_rows.BoundedRows`: numpy blocks of 15, 31, ... up to 2N − 1 slots, a
row moving to a larger block as it grows): a row that reaches 2N neighbours keeps its N
strongest, and `budget_slots` bounds the slots of all blocks but the smallest, so the
memory is at most items × 15 + budget_slots pairs (and each block pool's spare eighth)
however long the stream (the occurrences `C(b)` stay exact); 0 keeps every pair
(`SparseRows`: exact counts, memory growing with the stream, ~1.7 new pairs per event on
the simulated workload).

>>> co = CoOccurrence(window=5)
>>> for hist, b in [((), 0), ((0,), 1), ((), 0), ((0,), 2), ((2, 0), 1)]:
...     co.add(b, np.array(hist, dtype=np.int64))
>>> co.pair(0, 1), co.pair(1, 0), co.pair(2, 1), co.count[:3].tolist()
(2.0, 2.0, 1.0, [2.0, 2.0, 1.0])
>>> s = co.scores(np.array([0], dtype=np.int64), 3)
>>> [round(float(x), 3) for x in s]
[0.0, 1.0, 0.707]
>>> directed = CoOccurrence(window=5, backward=0.5)
>>> directed.add(0, np.array([], dtype=np.int64)); directed.add(1, np.array([0], dtype=np.int64))
>>> directed.pair(0, 1), directed.pair(1, 0)
(1.0, 0.5)
>>> capped = CoOccurrence(window=5, max_neighbours=1)
>>> for b in (1, 2, 1):
...     capped.add(b, np.array([0], dtype=np.int64))
>>> capped.pairs.row(0)[0].tolist(), capped.pair(0, 1)  # row 0 reached 2: kept its best
([1], 2.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import sparse

from scoring.bounded_rows import BoundedRows
from scoring.types import FloatArray

__all__ = ["CoOccurrence", "SparseRows"]

IntArray = NDArray[np.int64]


class SparseRows:
    """Per-row growable sparse vectors with every entry kept: `add(a, b, w)` adds w to
    entry (a, b). Each row is a pair of numpy arrays (column, value) in insertion order and
    a dict from column to slot: an increment is one dict lookup and one array write.

    >>> r = SparseRows()
    >>> r.add(3, 1, 2.0); r.add(3, 1, 1.0); r.add(3, 7, 0.5)
    >>> idx, val = r.row(3)
    >>> idx.tolist(), val.tolist(), r.row(0)[0].tolist(), r.nnz()
    ([1, 7], [3.0, 0.5], [], 2)
    """

    __slots__ = ("_idx", "_len", "_slots", "_val")

    #: one shared int object per column index, the rows' dict keys: a key then costs its
    #: dict entry only, not a 28-byte int of its own per row (~90 -> ~60 bytes per entry)
    _KEYS: ClassVar[list[int]] = []

    _EMPTY_I: IntArray = np.zeros(0, np.int64)
    _EMPTY_V: FloatArray = np.zeros(0)

    def __init__(self) -> None:
        self._slots: list[dict[int, int]] = []
        self._idx: list[IntArray] = []
        self._val: list[FloatArray] = []
        self._len: list[int] = []

    def _ensure(self, a: int) -> None:
        while len(self._slots) <= a:
            self._slots.append({})
            self._idx.append(np.zeros(4, np.int64))
            self._val.append(np.zeros(4))
            self._len.append(0)

    @classmethod
    def _keys(cls, top: int) -> list[int]:
        """The shared key objects, at least up to column `top`."""
        keys = cls._KEYS
        if top >= len(keys):
            keys.extend(range(len(keys), max(top + 1, 2 * len(keys), 1024)))
        return keys

    def add(self, a: int, b: int, w: float) -> None:
        if a >= len(self._slots):
            self._ensure(a)
        slots = self._slots[a]
        s = slots.get(b)
        if s is None:
            s = slots[self._keys(b)[b]] = self._len[a]
            if s >= self._idx[a].shape[0]:
                self._idx[a], self._val[a] = self._grown(self._idx[a], self._val[a], s)
            self._idx[a][s] = b
            self._len[a] = s + 1
        self._val[a][s] += w

    def add_many(self, rows: ArrayLike, cols: ArrayLike, vals: ArrayLike) -> None:
        """`add(rows[k], cols[k], vals[k])` for every k (`rows` sorted: one row's lookups
        and writes together).

        >>> r = SparseRows()
        >>> r.add_many([0, 0, 2], [1, 5, 1], [1.0, 2.0, 3.0]); r.add_many([0], [5], [1.0])
        >>> r.row(0)[1].tolist(), r.get(2, 1)
        ([1.0, 3.0], 3.0)
        """
        row_of: list[int] = np.asarray(rows).tolist()
        col_of: list[int] = np.asarray(cols).tolist()
        val_of: list[float] = np.asarray(vals, np.float64).tolist()
        if not row_of:
            return
        self._ensure(row_of[-1])
        keys = self._keys(max(col_of))
        k, n = 0, len(row_of)
        while k < n:
            a = row_of[k]
            end = k
            while end < n and row_of[end] == a:
                end += 1
            slots, size = self._slots[a], self._len[a]
            idx, val = self._idx[a], self._val[a]
            for b, w in zip(col_of[k:end], val_of[k:end], strict=True):
                s = slots.get(b)
                if s is None:
                    s = slots[keys[b]] = size
                    size += 1
                    if s >= idx.shape[0]:
                        idx, val = self._grown(idx, val, s)
                    idx[s] = b
                val[s] += w
            self._idx[a], self._val[a], self._len[a] = idx, val, size
            k = end

    @staticmethod
    def _grown(idx: IntArray, val: FloatArray, n: int) -> tuple[IntArray, FloatArray]:
        """A row's arrays with room for more than `n` entries: twice `n` (at least 4)."""
        extra = max(4, 2 * n) - idx.shape[0]
        return np.concatenate([idx, np.zeros(extra, np.int64)]), np.concatenate([val, np.zeros(extra)])

    def get(self, a: int, b: int) -> float:
        if a >= len(self._slots):
            return 0.0
        s = self._slots[a].get(b)
        return 0.0 if s is None else float(self._val[a][s])

    def row(self, a: int) -> tuple[IntArray, FloatArray]:
        """Row `a`'s (column indices, values) — views, do not modify."""
        if a >= len(self._slots):
            return self._EMPTY_I, self._EMPTY_V
        n = self._len[a]
        return self._idx[a][:n], self._val[a][:n]

    def nnz(self) -> int:
        return sum(self._len)

    def rows(self) -> list[tuple[IntArray, FloatArray]]:
        """Every row's (column indices, values), row 0 first — views, do not modify."""
        return [self.row(a) for a in range(len(self._slots))]

    def __getstate__(self) -> dict[str, Any]:
        return {
            "slots": self._slots,
            "idx": [x[:n].copy() for x, n in zip(self._idx, self._len, strict=True)],
            "val": [x[:n].copy() for x, n in zip(self._val, self._len, strict=True)],
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        keys = self._keys(max((max(x, default=0) for x in state["slots"]), default=0))
        self._slots = [{keys[b]: k for b, k in x.items()} for x in state["slots"]]
        rows = [self._grown(i, v, i.shape[0]) for i, v in zip(state["idx"], state["val"], strict=True)]
        self._idx = [i for i, _ in rows]
        self._val = [v for _, v in rows]
        self._len = [x.shape[0] for x in state["idx"]]


class CoOccurrence:
    """Item co-occurrence within user histories and the item-kNN score (see module doc)."""

    def __init__(
        self,
        window: int = 30,
        alpha: float = 0.5,
        gap_decay: float = 1.0,
        n_recent: int = 30,
        recency_decay: float = 0.95,
        backward: float = 1.0,
        max_neighbours: int = 0,
        budget_slots: int = 0,
    ) -> None:
        self.window = window
        self.backward = backward
        self.alpha = alpha
        self.gap_decay = gap_decay
        self.n_recent = n_recent
        self.recency_decay = recency_decay
        #: the neighbour rows: bounded (`max_neighbours` kept when a row is pruned at 2x that,
        #: the blocks above the smallest within `budget_slots`) or exact
        self.pairs: BoundedRows | SparseRows = (
            BoundedRows(max_neighbours, budget_slots) if max_neighbours > 0 else SparseRows()
        )
        self.count: FloatArray = np.zeros(64)
        self._drop_inverse()
        self._gap_w: FloatArray = gap_decay ** np.arange(max(window, 1), dtype=np.float64)
        self._rec_w: FloatArray = recency_decay ** np.arange(max(n_recent, 1), dtype=np.float64)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for cached in ("_inv", "_inv_exponent", "_stale"):
            state.pop(cached, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._drop_inverse()

    def _drop_inverse(self) -> None:
        self._inv: FloatArray | None = None
        self._inv_exponent = 0.0
        self._stale: list[IntArray] = []  # items whose count changed since `_inv` was computed

    def inverse_counts(self) -> FloatArray:
        """C(b)^−(1−α) for every item (0 where C(b) = 0), the normalisation of every score:
        kept between calls and recomputed only for the items counted since.

        >>> co = CoOccurrence(window=5, alpha=0.5)
        >>> co.add(2, np.array([], np.int64), weight=4.0)
        >>> co.inverse_counts()[:3].tolist()
        [0.0, 0.0, 0.5]
        >>> co.add(1, np.array([2]), weight=1.0)
        >>> co.inverse_counts()[:3].tolist()
        [0.0, 1.0, 0.5]
        """
        exponent = 1.0 - self.alpha
        inv, cnt = self._inv, self.count
        if inv is None or inv.shape[0] != cnt.shape[0] or self._inv_exponent != exponent:
            inv = self._inv = _inverse_power(cnt, exponent)
            self._inv_exponent = exponent
        elif self._stale:
            items = np.unique(np.concatenate(self._stale))
            inv[items] = _inverse_power(cnt[items], exponent)
        self._stale = []
        return inv

    def _grow(self, i: int) -> None:
        if i >= self.count.shape[0]:
            n = max(i + 1, 2 * self.count.shape[0])
            self.count = np.concatenate([self.count, np.zeros(n - self.count.shape[0])])

    def add(self, b: int, history: IntArray, weight: float = 1.0) -> None:
        """Count an event on item `b` by a user whose previous items are `history` (dense
        indices, most recent first; only the first `window` are paired)."""
        near = np.asarray(history[: self.window], np.int64)
        gap = np.arange(near.shape[0])
        self.add_many(np.array([b]), near, np.full(near.shape[0], b), gap, weight)

    def add_many(self, items: IntArray, a: IntArray, b: IntArray, gap: IntArray, weight: float = 1.0) -> None:
        """`add` for a batch of events at once: one occurrence of each of `items`, and the
        pairs (a[k], b[k]) at history position `gap[k]` (the first `window` of each event's
        history, without b itself), each of `weight`; duplicates are summed before they are
        merged into the rows (whose bound, if any, applies once per call).

        >>> co = CoOccurrence(window=5, backward=0.5)
        >>> co.add_many(np.array([0, 1, 1]), np.array([0, 0]), np.array([1, 1]), np.array([0, 0]))
        >>> co.pair(0, 1), co.pair(1, 0), co.count[:2].tolist()
        (2.0, 1.0, [1.0, 2.0])
        """
        if items.shape[0]:
            self._grow(int(items.max()))
            np.add.at(self.count, items, weight)
            if self._inv is not None:
                self._stale.append(items)
                if len(self._stale) > 256:  # not queried for long: recompute when it is
                    self._drop_inverse()
        near = (gap < self.window) & (a != b)
        if not near.any():
            return
        a, b, w = a[near], b[near], weight * self._gap_w[gap[near]]
        width = int(max(int(a.max()), int(b.max()))) + 1
        # forward (a, b) at full weight, backward (b, a) at `backward` of it, summed per pair
        keys = np.concatenate([a * width + b, b * width + a])
        vals = np.concatenate([w, w * self.backward])
        uniq, inv = np.unique(keys, return_inverse=True)
        total = np.bincount(inv, weights=vals, minlength=uniq.shape[0])
        self.pairs.add_many(uniq // width, uniq % width, total)

    @property
    def max_neighbours(self) -> int:
        """The neighbours a row keeps when it is pruned (`pairs.cap`; 0: every pair)."""
        return self.pairs.cap if isinstance(self.pairs, BoundedRows) else 0

    def rows_nbytes(self) -> int | None:
        """Bytes of the bounded rows' blocks (`BoundedRows.nbytes`; None: exact rows)."""
        return self.pairs.nbytes() if isinstance(self.pairs, BoundedRows) else None

    def pair(self, a: int, b: int) -> float:
        """The co-occurrence count C(a, b) (b after a: full weight; a after b: `backward`)."""
        return self.pairs.get(a, b)

    def scores(self, history: IntArray, n_items: int) -> FloatArray:
        """Dense item-kNN scores (length `n_items`) for a user with `history` (most recent
        first; the first `n_recent` count)."""
        out = np.zeros(max(n_items, self.count.shape[0]))
        h = history[: self.n_recent]
        if h.shape[0] == 0:
            return out[:n_items]
        cnt = self.count
        inv_b = self.inverse_counts()
        rw = self._rec_w
        row = self.pairs.row
        for p, a in enumerate(h.tolist()):
            idx, val = row(a)
            if idx.shape[0] == 0:
                continue
            ca = cnt[a] if a < cnt.shape[0] else 0.0
            if ca <= 0.0:
                continue
            out[idx] += (float(rw[p]) * ca**-self.alpha) * (val * inv_b[idx])
        return out[:n_items]

    def top_many(
        self, histories: Sequence[IntArray], exclude: Sequence[IntArray], n_items: int, m: int
    ) -> list[tuple[IntArray, FloatArray]]:
        """For each user (history, items to exclude), the `m` best items by kNN score with
        their scores (> 0), best first, ties by item index: `scores` for every user at once,
        as one sparse product (users × history items) · (history items × items).

        >>> co = CoOccurrence(window=5)
        >>> for hist, b in [((), 0), ((0,), 1), ((), 0), ((0,), 2), ((2, 0), 1)]:
        ...     co.add(b, np.array(hist, dtype=np.int64))
        >>> [(i.tolist(), [round(float(x), 3) for x in v]) for i, v in co.top_many(
        ...     [np.array([0]), np.array([0]), np.array([], np.int64)],
        ...     [np.array([], np.int64), np.array([1]), np.array([], np.int64)], 3, 2)]
        [([1, 2], [1.0, 0.707]), ([2], [0.707]), ([], [])]
        """
        if len(histories) <= 2:  # a sparse product costs more than it saves for a user or two
            return [
                self._top(self.scores(h, n_items), ex, m) for h, ex in zip(histories, exclude, strict=True)
            ]
        empty = (np.zeros(0, np.int64), np.zeros(0))
        cnt = self.count
        inv_b = self.inverse_counts()
        rw = self._rec_w.tolist()
        local: dict[int, int] = {}  # history item -> its row in the sparse item matrix
        h_ptr = [0]
        h_col: list[int] = []
        h_val: list[float] = []
        row = self.pairs.row
        for history in histories:
            for p, a in enumerate(history[: self.n_recent].tolist()):
                ca = float(cnt[a]) if a < cnt.shape[0] else 0.0
                if ca <= 0.0 or row(a)[0].shape[0] == 0:
                    continue
                j = local.get(a)
                if j is None:
                    j = local[a] = len(local)
                h_col.append(j)
                h_val.append(rw[p] * ca**-self.alpha)
            h_ptr.append(len(h_col))
        if not local:
            return [empty] * len(histories)
        rows = [row(a) for a in local]
        s_idx = np.concatenate([r[0] for r in rows])
        s_val = np.concatenate([r[1] for r in rows]) * inv_b[s_idx]
        s_ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([r[0].shape[0] for r in rows], out=s_ptr[1:])
        width = max(n_items, int(s_idx.max()) + 1)
        hm = sparse.csr_matrix((np.array(h_val), np.array(h_col, np.int64), np.array(h_ptr, np.int64)),
                               shape=(len(histories), len(rows)))  # fmt: skip
        sm = sparse.csr_matrix((s_val, s_idx, s_ptr), shape=(len(rows), width))
        # accumulates, per user, its history items' rows in history order (like `scores`)
        prod = hm @ sm
        ptr, cols, vals = prod.indptr.tolist(), prod.indices, prod.data
        mark = np.zeros(width, bool)
        out: list[tuple[IntArray, FloatArray]] = []
        for u, ex in enumerate(exclude):
            c = cols[ptr[u] : ptr[u + 1]].astype(np.int64)
            v = vals[ptr[u] : ptr[u + 1]]
            keep = (v > 0.0) & (c < n_items)
            if ex.shape[0]:
                mark[ex] = True
                keep &= ~mark[c]
                mark[ex] = False
            out.append(self._best(c[keep], v[keep], m))
        return out

    def _top(self, dense: FloatArray, exclude: IntArray, m: int) -> tuple[IntArray, FloatArray]:
        dense[exclude] = 0.0
        c = np.flatnonzero(dense > 0.0)
        return self._best(c, dense[c], m)

    @staticmethod
    def _best(c: IntArray, v: FloatArray, m: int) -> tuple[IntArray, FloatArray]:
        """The `m` largest values (ties: smaller index first), best first."""
        if c.shape[0] > m:
            kth = np.partition(v, c.shape[0] - m)[c.shape[0] - m]
            c, v = c[v >= kth], v[v >= kth]
        o = np.lexsort((c, -v))[:m]
        return c[o], v[o]


def _inverse_power(counts: FloatArray, exponent: float) -> FloatArray:
    """counts^−exponent where counts > 0, else 0."""
    out = np.zeros(counts.shape[0])
    pos = counts > 0.0
    out[pos] = counts[pos] ** -exponent
    return out
