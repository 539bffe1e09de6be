"""Bounded sparse rows in one numpy block pool: the item-kNN's neighbour counts, with a
memory that stops growing.

Every row that has entries owns one block of `2·cap − 1` slots in two shared matrices
(column int32, value float64: 12 bytes a slot), its entries sorted by column in the
block's first `len` slots. There is no Python object per entry: a row costs its block
(~1.8 KB for cap 75) from its first entry on, and the pool is at most rows × block however
long the stream. (Per-row dicts cost ~60 bytes an entry and grew with every new pair until
their rows reached the bound, which on a 10k-item catalog takes millions of events: the
worker's RSS crept.)

`add_many` merges a batch of (row, column, value) additions at once, vectorised over the
batch: one `searchsorted` finds the entries that exist (their values are added), the new
ones are written after each row's entries and the touched rows sorted again. A row that
would reach `2·cap` entries keeps its `cap` largest values (ties: the smaller column) of
its old and new entries together, and forgets the rest: a forgotten entry that comes back
starts again from 0. The rule applies once per `add_many` call (after the whole batch is
merged), so a batch is not the same as its additions one call at a time once a row
overflows within it.

>>> r = BoundedRows(cap=2)               # blocks of 3 slots
>>> r.add_many([0, 0, 4], [6, 5, 1], [1.0, 3.0, 2.0])
>>> r.row(0), r.get(4, 1), r.get(4, 9)
((array([5, 6], dtype=int32), array([3., 1.])), 2.0, 0.0)
>>> r.add_many([0, 0], [5, 7], [1.0, 2.0]); r.row(0)[0].tolist()
[5, 6, 7]
>>> r.add_many([0], [8], [1.0]); r.row(0)  # 4 entries = 2 x cap: the 2 largest stay
(array([5, 7], dtype=int32), array([4., 2.]))
>>> r.nnz()
3
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from scoring.types import FloatArray

__all__ = ["BoundedRows"]

Int32Array = NDArray[np.int32]
Int64Array = NDArray[np.int64]

#: the column of an empty slot: sorts after every real column
_EMPTY: Final = np.iinfo(np.int32).max
_NO_COLUMNS: Final[Int32Array] = np.zeros(0, np.int32)
_NO_VALUES: Final[FloatArray] = np.zeros(0)


class BoundedRows:
    """Rows of at most `2·cap − 1` entries each, in a shared block pool (see module doc)."""

    __slots__ = ("_block", "_idx", "_len", "_used", "_val", "cap")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"BoundedRows needs cap >= 1 (the entries a pruned row keeps), got {cap}")
        #: entries a row keeps when it is pruned (on reaching 2 × cap)
        self.cap = cap
        self._block: Int32Array = np.full(64, -1, np.int32)  # row -> its block, -1: none yet
        self._idx: Int32Array = np.full((0, self.width), _EMPTY, np.int32)
        self._val: FloatArray = np.zeros((0, self.width))
        self._len: Int32Array = np.zeros(0, np.int32)  # entries per block
        self._used = 0  # blocks handed out

    @property
    def width(self) -> int:
        """Slots per block: a row never holds 2 × cap entries (it is pruned on reaching it)."""
        return 2 * self.cap - 1

    def add(self, a: int, b: int, w: float) -> None:
        """Add `w` to entry (a, b) (one `add_many` of one addition)."""
        self.add_many([a], [b], [w])

    def add_many(self, rows: ArrayLike, cols: ArrayLike, vals: ArrayLike) -> None:
        """Add `vals[k]` to entry (rows[k], cols[k]) for every k, then prune the rows that
        reached 2 × cap entries (fastest when the pairs come unique and sorted by row,
        then column, as `np.unique` gives them; duplicates are summed).

        >>> r = BoundedRows(cap=4)
        >>> r.add_many([3, 1, 3, 3], [2, 0, 2, 9], [1.0, 5.0, 0.5, 1.0]); r.row(3)[1].tolist()
        [1.5, 1.0]
        """
        r = np.asarray(rows, np.int64)
        c = np.asarray(cols, np.int64)
        w = np.asarray(vals, np.float64)
        if r.shape[0] == 0:
            return
        key = r * (int(c.max()) + 1) + c
        if r.shape[0] > 1 and not bool((key[1:] > key[:-1]).all()):
            uniq, inv = np.unique(key, return_inverse=True)
            w = np.bincount(inv, weights=w, minlength=uniq.shape[0]).astype(np.float64)
            r, c = np.divmod(uniq, int(c.max()) + 1)
        new_group = np.empty(r.shape[0], bool)
        new_group[0] = True
        np.not_equal(r[1:], r[:-1], out=new_group[1:])
        starts = np.flatnonzero(new_group)
        group = np.cumsum(new_group) - 1  # pair -> its row's group (groups in row order)
        blocks = self._blocks_of(r[starts])  # group -> block
        self._merge(group, blocks, c, w)

    def _blocks_of(self, rows: Int64Array) -> Int32Array:
        """The blocks of `rows` (distinct), new blocks for rows that have none yet."""
        top = int(rows[-1])
        if top >= self._block.shape[0]:
            grown = np.full(max(top + 1, 2 * self._block.shape[0]), -1, np.int32)
            grown[: self._block.shape[0]] = self._block
            self._block = grown
        blocks = self._block[rows]
        fresh = blocks < 0
        if fresh.any():
            n = int(fresh.sum())
            self._reserve(self._used + n)
            blocks[fresh] = np.arange(self._used, self._used + n, dtype=np.int32)
            self._block[rows[fresh]] = blocks[fresh]
            self._used += n
        return blocks

    def _reserve(self, n_blocks: int) -> None:
        """Room for `n_blocks` blocks: the pool grows by an eighth (at least 1,024 blocks)."""
        have = self._len.shape[0]
        if n_blocks <= have:
            return
        size = max(n_blocks, have + max(1024, have // 8))
        extra = size - have
        self._idx = np.concatenate([self._idx, np.full((extra, self.width), _EMPTY, np.int32)])
        self._val = np.concatenate([self._val, np.zeros((extra, self.width))])
        self._len = np.concatenate([self._len, np.zeros(extra, np.int32)])

    def _merge(self, group: Int64Array, blocks: Int32Array, c: Int64Array, w: FloatArray) -> None:
        """Merge the additions (group[k], c[k], w[k]) (unique, sorted by group then column)
        into the groups' blocks."""
        width = self.width
        # every touched block's columns as one sorted key array: (group << 32) | column
        sub = self._idx[blocks].astype(np.int64)
        sub |= np.arange(blocks.shape[0], dtype=np.int64)[:, None] << 32
        flat = sub.ravel()
        q = (group << 32) | c
        pos = np.minimum(np.searchsorted(flat, q), flat.shape[0] - 1)
        hit = flat[pos] == q
        self._val[blocks[group[hit]], pos[hit] % width] += w[hit]
        if hit.all():
            return
        miss = ~hit
        mg, mc, mw = group[miss], c[miss], w[miss]
        length = self._len[blocks]
        after = length + np.bincount(mg, minlength=blocks.shape[0])
        overflow = after > width
        fits = ~overflow[mg]
        if fits.any():
            fg = mg[fits]
            rank = np.arange(fg.shape[0]) - np.searchsorted(fg, fg)  # order within the group
            fb = blocks[fg]
            slot = length[fg] + rank
            self._idx[fb, slot] = mc[fits]
            self._val[fb, slot] = mw[fits]
            touched = np.unique(fg)
            tb = blocks[touched]
            self._len[tb] = after[touched]
            n = int(after[touched].max())
            cols = self._idx[tb, :n]
            order = np.argsort(cols, axis=1, kind="stable")
            self._idx[tb, :n] = np.take_along_axis(cols, order, axis=1)
            self._val[tb, :n] = np.take_along_axis(self._val[tb, :n], order, axis=1)
        for g in np.flatnonzero(overflow).tolist():
            lo, hi = np.searchsorted(mg, [g, g + 1]).tolist()
            self._prune(int(blocks[g]), mc[lo:hi], mw[lo:hi])

    def _prune(self, b: int, new_cols: Int64Array, new_vals: FloatArray) -> None:
        """Block `b`'s entries and the new ones (not in it): keep the `cap` largest (ties:
        the smaller column), sorted by column."""
        n = int(self._len[b])
        cols = np.concatenate([self._idx[b, :n].astype(np.int64), new_cols])
        vals = np.concatenate([self._val[b, :n], new_vals])
        best = np.lexsort((cols, -vals))[: self.cap]
        best = best[np.argsort(cols[best])]
        m = best.shape[0]
        self._idx[b, :m], self._val[b, :m] = cols[best], vals[best]
        self._idx[b, m:] = _EMPTY
        self._val[b, m:] = 0.0
        self._len[b] = m

    def get(self, a: int, b: int) -> float:
        """The value of entry (a, b) (0 when it is not held)."""
        idx, val = self.row(a)
        s = int(np.searchsorted(idx, b))
        return float(val[s]) if s < idx.shape[0] and idx[s] == b else 0.0

    def row(self, a: int) -> tuple[Int32Array, FloatArray]:
        """Row `a`'s (columns, values), sorted by column — views, do not modify."""
        blk = int(self._block[a]) if a < self._block.shape[0] else -1
        if blk < 0:
            return _NO_COLUMNS, _NO_VALUES
        n = int(self._len[blk])
        return self._idx[blk, :n], self._val[blk, :n]

    def nnz(self) -> int:
        """Entries held."""
        return int(self._len[: self._used].sum())

    def __getstate__(self) -> dict[str, Any]:
        """The held entries only (a checkpoint does not carry the blocks' empty slots)."""
        used = self._used
        held = np.arange(self.width)[None, :] < self._len[:used, None]
        return {
            "cap": self.cap,
            "block": self._block.copy(),
            "len": self._len[:used].copy(),
            "idx": self._idx[:used][held],
            "val": self._val[:used][held],
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cap = state["cap"]
        self._block = state["block"]
        length = state["len"]
        self._used = used = length.shape[0]
        held = np.arange(self.width)[None, :] < length[:, None]
        self._idx = np.full((used, self.width), _EMPTY, np.int32)
        self._val = np.zeros((used, self.width))
        self._idx[held], self._val[held] = state["idx"], state["val"]
        self._len = length

    @classmethod
    def from_rows(cls, cap: int, rows: Iterable[tuple[ArrayLike, ArrayLike]]) -> BoundedRows:
        """Rows given as (columns, values), row 0 first, under the bound (one `add_many`).

        >>> r = BoundedRows.from_rows(1, [([4, 2], [1.0, 3.0]), ([], []), ([0], [1.0])])
        >>> r.row(0), r.row(2)[0].tolist(), r.nnz()
        ((array([2], dtype=int32), array([3.])), [0], 2)
        """
        out = cls(cap)
        parts = [(a, np.asarray(c, np.int64), np.asarray(v, np.float64)) for a, (c, v) in enumerate(rows)]
        parts = [(a, c, v) for a, c, v in parts if c.shape[0]]
        if parts:
            out.add_many(
                np.concatenate([np.full(c.shape[0], a, np.int64) for a, c, _ in parts]),
                np.concatenate([c for _, c, _ in parts]),
                np.concatenate([v for _, _, v in parts]),
            )
        return out
