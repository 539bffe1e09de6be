"""Bounded sparse rows in numpy block pools: the item-kNN's neighbour counts, with a memory
that stops growing.

A row's entries sit sorted by column in the first `len` slots of one block, and blocks
come in size classes of 15, 31, 63, ... slots up to the top class of `2·cap − 1` (column
int32 and value float64: 12 bytes a slot; one pool of blocks per class). There is no
Python object per entry. A row starts in the smallest class its entries fit and moves to
a larger block as it grows, so a row costs what it holds (within 2x), and popular items
can keep hundreds of neighbours while rare ones take 180 bytes.

Two bounds keep the memory finite however long the stream:

- `cap`: a row that would reach `2·cap` entries keeps its `cap` largest values (ties: the
  smaller column) of its old and new entries together, and forgets the rest;
- `budget_slots` (0: none): the slots that blocks above the smallest class may take in
  all (blocks handed out, free ones included; each pool also keeps up to an eighth of spare
  blocks, or ~0.8 MB, to grow into). A row that outgrows its block when the
  budget has no room for the larger one stays in its class and keeps the largest half of
  its width instead (15-slot blocks, which every row gets first, are not counted: at
  most rows × 15 slots).

A forgotten entry that comes back starts again from 0. The rules apply once per
`add_many` call (after the whole batch is merged), to the rows in ascending order (which
row a tight budget serves first), so a batch is not the same as its additions one call at
a time once a row outgrows its block within it. Without a budget the classes change
nothing but the memory: the rows are those of the single rule "a row reaching 2·cap keeps
its cap largest".

>>> r = BoundedRows(cap=2)               # one class: blocks of 3 slots
>>> r.add_many([0, 0, 4], [6, 5, 1], [1.0, 3.0, 2.0])
>>> r.row(0), r.get(4, 1), r.get(4, 9)
((array([5, 6], dtype=int32), array([3., 1.])), 2.0, 0.0)
>>> r.add_many([0, 0], [5, 7], [1.0, 2.0]); r.row(0)[0].tolist()
[5, 6, 7]
>>> r.add_many([0], [8], [1.0]); r.row(0)  # 4 entries = 2 x cap: the 2 largest stay
(array([5, 7], dtype=int32), array([4., 2.]))
>>> r.nnz()
3
>>> big = BoundedRows(cap=100, first_width=3)  # classes of 3, 7, 15, ..., 199 slots
>>> big.add_many([0] * 5, range(5), [1.0] * 5); big.row(0)[0].tolist(), big.slots_charged()
([0, 1, 2, 3, 4], 7)
>>> tight = BoundedRows(cap=100, first_width=3, budget_slots=7)
>>> tight.add_many([0] * 5, range(5), [5.0, 4.0, 3.0, 2.0, 1.0]); tight.add_many([1] * 5, range(5), [1.0] * 5)
>>> tight.row(0)[0].tolist(), tight.row(1)[0].tolist()  # row 1: no room, kept 2 of 3 slots
([0, 1, 2, 3, 4], [0, 1])
"""

from __future__ import annotations

from bisect import bisect_left
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
#: bytes a slot takes (int32 column + float64 value)
SLOT_BYTES: Final = 12
#: a pool grows by at least this many slots at a time (~0.8 MB)
_MIN_GROWTH_SLOTS: Final = 65_536


def class_widths(cap: int, first_width: int = 15) -> list[int]:
    """The block sizes: `first_width`, doubled plus one, ... below `2·cap − 1`, then that.

    >>> class_widths(75), class_widths(2), class_widths(500, 3)[:3]
    ([15, 31, 63, 127, 149], [3], [3, 7, 15])
    """
    top = 2 * cap - 1
    widths = []
    w = first_width
    while w < top:
        widths.append(w)
        w = 2 * w + 1
    return [*widths, top]


class _Pool:
    """The blocks of one size class: `idx` / `val` (blocks × width), `len` per block."""

    __slots__ = ("free", "idx", "len", "used", "val", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.idx: Int32Array = np.full((0, width), _EMPTY, np.int32)
        self.val: FloatArray = np.zeros((0, width))
        self.len: Int32Array = np.zeros(0, np.int32)
        self.used = 0  # blocks handed out (free ones included)
        self.free: list[int] = []  # blocks handed back by rows that moved to a larger class

    def take(self) -> int:
        """A block: a free one, else a new one (the pool grows by an eighth, and by at least
        `_MIN_GROWTH_SLOTS` slots' worth of blocks)."""
        if self.free:
            return self.free.pop()
        have = self.len.shape[0]
        if self.used >= have:
            extra = max(-(-_MIN_GROWTH_SLOTS // self.width), have // 8)
            self.idx = np.concatenate([self.idx, np.full((extra, self.width), _EMPTY, np.int32)])
            self.val = np.concatenate([self.val, np.zeros((extra, self.width))])
            self.len = np.concatenate([self.len, np.zeros(extra, np.int32)])
        self.used += 1
        return self.used - 1

    def give_back(self, b: int) -> None:
        n = int(self.len[b])
        self.idx[b, :n] = _EMPTY
        self.val[b, :n] = 0.0
        self.len[b] = 0
        self.free.append(b)

    def write(self, b: int, cols: Int64Array, vals: FloatArray) -> None:
        """Block `b` holds exactly these entries (sorted by column, at most `width`)."""
        m = cols.shape[0]
        self.idx[b, :m], self.val[b, :m] = cols, vals
        self.idx[b, m:] = _EMPTY
        self.val[b, m:] = 0.0
        self.len[b] = m


def _largest(cols: Int64Array, vals: FloatArray, keep: int) -> tuple[Int64Array, FloatArray]:
    """The `keep` largest values (ties: the smaller column), sorted by column."""
    if cols.shape[0] > keep:
        best = np.lexsort((cols, -vals))[:keep]
        cols, vals = cols[best], vals[best]
    order = np.argsort(cols, kind="stable")
    return cols[order], vals[order]


class BoundedRows:
    """Rows of at most `2·cap − 1` entries each, in size-classed block pools (see module doc)."""

    __slots__ = ("_blk", "_cls", "_pools", "budget_slots", "cap", "widths")

    def __init__(self, cap: int, budget_slots: int = 0, first_width: int = 15) -> None:
        if cap < 1:
            raise ValueError(f"BoundedRows needs cap >= 1 (the entries a pruned row keeps), got {cap}")
        if budget_slots < 0 or first_width < 1:
            raise ValueError(
                f"BoundedRows needs budget_slots >= 0 (0: none) and first_width >= 1, "
                f"got {budget_slots} and {first_width}"
            )
        #: entries a row keeps when it is pruned (on reaching 2 × cap)
        self.cap = cap
        #: slots the blocks above the smallest class may take in all (0: no limit)
        self.budget_slots = budget_slots
        self.widths = class_widths(cap, first_width)
        self._pools = [_Pool(w) for w in self.widths]
        self._cls: NDArray[np.int8] = np.full(64, -1, np.int8)  # row -> its class, -1: no block
        self._blk: Int32Array = np.zeros(64, np.int32)  # row -> its block in that class

    def slots_charged(self) -> int:
        """Slots of the blocks above the smallest class handed out (what `budget_slots` bounds)."""
        return sum(p.used * p.width for p in self._pools[1:])

    def nbytes(self) -> int:
        """Bytes of every block handed out (the pools' spare capacity excluded)."""
        smallest = self._pools[0]
        return SLOT_BYTES * (smallest.used * smallest.width + self.slots_charged())

    def add(self, a: int, b: int, w: float) -> None:
        """Add `w` to entry (a, b) (one `add_many` of one addition)."""
        self.add_many([a], [b], [w])

    def add_many(self, rows: ArrayLike, cols: ArrayLike, vals: ArrayLike) -> None:
        """Add `vals[k]` to entry (rows[k], cols[k]) for every k, then apply the bounds to the
        rows that outgrew their blocks (fastest when the pairs come unique and sorted by
        row, then column, as `np.unique` gives them; duplicates are summed).

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
        urows = r[starts]
        self._ensure_rows(int(urows[-1]))
        cls = self._cls[urows].astype(np.int64)
        blk = self._blk[urows].astype(np.int64)
        hit = np.zeros(r.shape[0], bool)
        length = np.zeros(urows.shape[0], np.int64)
        for k in np.unique(cls[cls >= 0]).tolist():
            self._add_hits(k, cls, blk, group, c, w, hit, length)
        miss = ~hit
        if not miss.any():
            return
        mg, mc, mw = group[miss], c[miss], w[miss]
        after = length + np.bincount(mg, minlength=urows.shape[0])
        room = np.where(cls >= 0, np.asarray(self.widths)[np.maximum(cls, 0)], 0)
        grows = after > room
        fits = ~grows[mg]
        if fits.any():
            for k in np.unique(cls[mg[fits]]).tolist():
                sel = fits & (cls[mg] == k)
                self._insert(k, mg[sel], mc[sel], mw[sel], blk, length, after)
        for g in np.flatnonzero(grows).tolist():  # (a growing row has new entries)
            lo, hi = np.searchsorted(mg, [g, g + 1]).tolist()
            self._outgrown(int(urows[g]), mc[lo:hi], mw[lo:hi])

    def _ensure_rows(self, top: int) -> None:
        if top >= self._cls.shape[0]:
            n = max(top + 1, 2 * self._cls.shape[0])
            self._cls = np.concatenate([self._cls, np.full(n - self._cls.shape[0], -1, np.int8)])
            self._blk = np.concatenate([self._blk, np.zeros(n - self._blk.shape[0], np.int32)])

    def _add_hits(
        self,
        k: int,
        cls: Int64Array,
        blk: Int64Array,
        group: Int64Array,
        c: Int64Array,
        w: FloatArray,
        hit: NDArray[np.bool_],
        length: Int64Array,
    ) -> None:
        """Add the values of the pairs whose row is in class `k` and holds their column;
        mark them in `hit`, and fill the rows' current `length`."""
        pool = self._pools[k]
        gk = np.flatnonzero(cls == k)  # the groups in class k (ascending)
        blocks = blk[gk]
        length[gk] = pool.len[blocks]
        pairs = np.flatnonzero(cls[group] == k)
        local = np.searchsorted(gk, group[pairs])  # pair -> its group's place among gk
        width = pool.width
        # every touched block's columns as one sorted key array: (place << 32) | column
        sub = pool.idx[blocks].astype(np.int64)
        sub |= np.arange(blocks.shape[0], dtype=np.int64)[:, None] << 32
        flat = sub.ravel()
        q = (local << 32) | c[pairs]
        pos = np.minimum(np.searchsorted(flat, q), flat.shape[0] - 1)
        found = flat[pos] == q
        pool.val[blocks[local[found]], pos[found] % width] += w[pairs[found]]
        hit[pairs[found]] = True

    def _insert(
        self,
        k: int,
        mg: Int64Array,
        mc: Int64Array,
        mw: FloatArray,
        blk: Int64Array,
        length: Int64Array,
        after: Int64Array,
    ) -> None:
        """Write new entries (group mg[j], column mc[j]; sorted by group then column) into
        their rows' blocks of class `k`, which have room for them, and sort those rows."""
        pool = self._pools[k]
        rank = np.arange(mg.shape[0]) - np.searchsorted(mg, mg)  # order within the group
        fb = blk[mg]
        slot = length[mg] + rank
        pool.idx[fb, slot] = mc
        pool.val[fb, slot] = mw
        touched = np.unique(mg)
        tb = blk[touched]
        pool.len[tb] = after[touched]
        n = int(after[touched].max())
        cols = pool.idx[tb, :n]
        order = np.argsort(cols, axis=1, kind="stable")
        pool.idx[tb, :n] = np.take_along_axis(cols, order, axis=1)
        pool.val[tb, :n] = np.take_along_axis(pool.val[tb, :n], order, axis=1)

    def _outgrown(self, a: int, new_cols: Int64Array, new_vals: FloatArray) -> None:
        """Row `a` and its new entries (not in it) do not fit its block: a larger block if
        the budget has room for it, else the largest half of its width (of `cap` at the top)."""
        k = int(self._cls[a])
        if k >= 0:
            pool = self._pools[k]
            b = int(self._blk[a])
            n = int(pool.len[b])
            cols = np.concatenate([pool.idx[b, :n].astype(np.int64), new_cols])
            vals = np.concatenate([pool.val[b, :n], new_vals])
        else:
            cols, vals = new_cols, new_vals
        total = cols.shape[0]
        target = min(bisect_left(self.widths, total), len(self.widths) - 1)  # smallest it fits
        if target > k and not self._has_room(target):
            target = max(k, 0)
        keep = total if total <= self.widths[target] else (self.widths[target] + 1) // 2
        cols, vals = _largest(cols, vals, keep)
        if target != k:
            dest = self._pools[target].take()
            if k >= 0:
                self._pools[k].give_back(int(self._blk[a]))
            self._cls[a], self._blk[a] = target, dest
        self._pools[target].write(int(self._blk[a]), cols, vals)

    def _has_room(self, t: int) -> bool:
        """Can class `t` hand out a block (a free one, the smallest class, or budget left)?"""
        pool = self._pools[t]
        if pool.free or t == 0 or self.budget_slots == 0:
            return True
        return self.slots_charged() + pool.width <= self.budget_slots

    def get(self, a: int, b: int) -> float:
        """The value of entry (a, b) (0 when it is not held)."""
        idx, val = self.row(a)
        s = int(np.searchsorted(idx, b))
        return float(val[s]) if s < idx.shape[0] and idx[s] == b else 0.0

    def row(self, a: int) -> tuple[Int32Array, FloatArray]:
        """Row `a`'s (columns, values), sorted by column — views, do not modify."""
        k = int(self._cls[a]) if a < self._cls.shape[0] else -1
        if k < 0:
            return _NO_COLUMNS, _NO_VALUES
        pool = self._pools[k]
        b = int(self._blk[a])
        n = int(pool.len[b])
        return pool.idx[b, :n], pool.val[b, :n]

    def nnz(self) -> int:
        """Entries held."""
        return sum(int(p.len[: p.used].sum()) for p in self._pools)

    def __getstate__(self) -> dict[str, Any]:
        """The held entries only (a checkpoint does not carry the blocks' empty slots)."""
        pools = []
        for p in self._pools:
            held = np.arange(p.width)[None, :] < p.len[: p.used, None]
            pools.append(
                {
                    "len": p.len[: p.used].copy(),
                    "idx": p.idx[: p.used][held],
                    "val": p.val[: p.used][held],
                    "free": list(p.free),
                }
            )
        return {
            "cap": self.cap,
            "budget_slots": self.budget_slots,
            "widths": list(self.widths),
            "cls": self._cls.copy(),
            "blk": self._blk.copy(),
            "pools": pools,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "pools" not in state:  # one pool of 2·cap − 1 slot blocks (before the size classes)
            self._from_single_pool(state)
            return
        self.cap = state["cap"]
        self.budget_slots = state["budget_slots"]
        self.widths = list(state["widths"])
        self._cls, self._blk = state["cls"], state["blk"]
        self._pools = []
        for width, saved in zip(self.widths, state["pools"], strict=True):
            pool = _Pool(width)
            length = saved["len"]
            pool.used = used = length.shape[0]
            held = np.arange(width)[None, :] < length[:, None]
            pool.idx = np.full((used, width), _EMPTY, np.int32)
            pool.val = np.zeros((used, width))
            pool.idx[held], pool.val[held] = saved["idx"], saved["val"]
            pool.len = length
            pool.free = list(saved["free"])
            self._pools.append(pool)

    def _from_single_pool(self, state: dict[str, Any]) -> None:
        """A checkpoint of the single-pool layout: its rows, added again under its cap."""
        cap, block, length = state["cap"], state["block"], state["len"]
        width = 2 * cap - 1
        held = np.arange(width)[None, :] < length[:, None]
        idx = np.full((length.shape[0], width), _EMPTY, np.int32)
        val = np.zeros((length.shape[0], width))
        idx[held], val[held] = state["idx"], state["val"]
        BoundedRows.__init__(self, cap)
        self._add_rows(
            (int(a), idx[block[a], : length[block[a]]], val[block[a], : length[block[a]]])
            for a in np.flatnonzero(block >= 0)
        )

    def _add_rows(self, rows: Iterable[tuple[int, ArrayLike, ArrayLike]]) -> None:
        """Rows given as (row, columns, values), in one `add_many`."""
        parts = [(a, np.asarray(c, np.int64), np.asarray(v, np.float64)) for a, c, v in rows]
        parts = [(a, c, v) for a, c, v in parts if c.shape[0]]
        if parts:
            self.add_many(
                np.concatenate([np.full(c.shape[0], a, np.int64) for a, c, _ in parts]),
                np.concatenate([c for _, c, _ in parts]),
                np.concatenate([v for _, _, v in parts]),
            )

    @classmethod
    def from_rows(
        cls, cap: int, rows: Iterable[tuple[ArrayLike, ArrayLike]], budget_slots: int = 0
    ) -> BoundedRows:
        """Rows given as (columns, values), row 0 first, under the bounds (one `add_many`).

        >>> r = BoundedRows.from_rows(1, [([4, 2], [1.0, 3.0]), ([], []), ([0], [1.0])])
        >>> r.row(0), r.row(2)[0].tolist(), r.nnz()
        ((array([2], dtype=int32), array([3.])), [0], 2)
        """
        out = cls(cap, budget_slots)
        out._add_rows((a, c, v) for a, (c, v) in enumerate(rows))
        return out
