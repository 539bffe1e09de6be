"""Gap-based sessions in event time, with a time-decayed session embedding.

A user's *current* session is the only one kept. Where an event goes (`Session.place`):

1. no current session yet → the event starts one;
2. the event carries a `session_id` (it wins over the gap rule):
   - the same id as the current session → it joins it, wherever its time falls;
   - another id and `ts ≥ current.last_ts` → it starts a new current session;
   - another id and `ts < current.last_ts` → it belongs to a past session;
3. no `session_id` (the gap rule, `gap` = 30 min by default):
   - `ts > current.last_ts + gap` → it starts a new current session;
   - `ts < current.start_ts − gap` → it belongs to a past session;
   - otherwise (inside the span widened by `gap` on both sides) → it joins it.

An event of a *past* session updates the user's counters only (decayed counts, totals,
categories, seen items): past sessions are not kept, so it never changes the current
session's fields. A joining event is merged exactly, whatever its place in time: start
and last become min and max, the last-N items are the N items with the latest event time
(ties: the larger item id is the more recent), and the embedding is a sum of decayed
weights. So any permutation of a set of events that all join (for instance any set whose
span is at most `gap`) gives the same session. Sessions are not merged with past ones:
a new session started by a later event drops the current one even if a late event would
have bridged the gap.

The session id is the event's `session_id` when given, else derived as
`f"{user_id}:{start_ms}"` from the session's start in epoch milliseconds; a derived id
follows the start when a late joining event moves the start earlier (so it is a function
of the session's events, not of their arrival order).

The session embedding is the decayed weighted mean of the vectors of the session's
events, `Σ gᵢ·xᵢ / Σ gᵢ` with `gᵢ = wᵢ·2^(−(last_ts − tᵢ)/h)`, `wᵢ` the event type's
weight and `h` the session embedding half-life (600 s); it is served as the mean and the
total weight `Σ gᵢ`, both as of `last_ts`. Internally it is a forward-decayed sum
`S = Σ wᵢ·2^((tᵢ − L)/h)·xᵢ` (and `Σ wᵢ·2^((tᵢ − L)/h)`) for a landmark `L` (the session's
first event, rebased when an event comes 64 half-lives after it): one multiply-add per
event, whatever the order.

>>> s = Session.start("u1", 0.0, None, half_life=600.0)
>>> s.session_id
'u1:0'
>>> for ts, item in [(0.0, "a"), (600.0, "b"), (300.0, "c")]:
...     s.add(ts, item, 1.0, None, last_n=10)
>>> s.start_ts, s.last_ts, s.length, s.recent_items(10)
(0.0, 600.0, 3, ('b', 'c', 'a'))
>>> s.place(2401.0, None, gap=1800.0), s.place(-1801.0, None, gap=1800.0)
('new', 'past')
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from profiles import naming as n
from profiles.decay import TINY

#: the embedding landmark is rebased when an event comes this many half-lives after it
REBASE_HALF_LIVES: Final[float] = 64.0
_F64: Final = np.dtype(np.float64)

__all__ = ["JOIN", "NEW", "PAST", "Placement", "Session", "derived_session_id", "push_recent"]

Placement = Literal["join", "new", "past"]
JOIN: Final[Placement] = "join"
NEW: Final[Placement] = "new"
PAST: Final[Placement] = "past"


def derived_session_id(user_id: str, start_ts: float) -> str:
    """The id of a session that came with none: user id and start in epoch ms.

    >>> derived_session_id("u1", 1_700_000_000.1234)
    'u1:1700000000123'
    """
    return f"{user_id}:{round(start_ts * 1000.0)}"


def push_recent(
    items: dict[str, float], order: list[tuple[float, str]], item_id: str, ts: float, last_n: int
) -> None:
    """Keep `items` (item -> latest event time) the `last_n` items with the latest event time
    (ties: the larger item id is the more recent), `order` the same as sorted `(ts, item)`.

    Exact in any arrival order: an item that drops out only ranks lower from then on, so a
    late event of it re-enters only with a time that beats the kept ones (and so its own).

    >>> items, order = {}, []
    >>> for item, ts in [("a", 1.0), ("b", 3.0), ("a", 2.0), ("c", 0.0)]:
    ...     push_recent(items, order, item, ts, 2)
    >>> order
    [(2.0, 'a'), (3.0, 'b')]
    """
    old = items.get(item_id)
    if old is None:
        items[item_id] = ts
        insort(order, (ts, item_id))
        if len(order) > last_n:
            del items[order.pop(0)[1]]
    elif ts > old:
        order.remove((old, item_id))
        items[item_id] = ts
        insort(order, (ts, item_id))


class Session:
    """A user's current session; mutable, updated in place by `add`.

    `items` maps each of the last-N items to the event time of its latest event;
    `_order` holds the same as sorted `(ts, item_id)` pairs (most recent last).
    """

    __slots__ = (
        "_emb_cached",
        "_emb_lm",
        "_emb_sum",
        "_emb_w",
        "_order",
        "derived",
        "half_life",
        "items",
        "last_ts",
        "length",
        "session_id",
        "start_ts",
        "user_id",
    )

    def __init__(
        self,
        user_id: str,
        session_id: str,
        derived: bool,
        start_ts: float,
        last_ts: float,
        half_life: float,
    ) -> None:
        self.user_id = user_id
        self.half_life = half_life
        self.session_id = session_id
        self.derived = derived
        self.start_ts = start_ts
        self.last_ts = last_ts
        self.length = 0
        self.items: dict[str, float] = {}
        self._order: list[tuple[float, str]] = []
        # embedding: Σ cᵢ·xᵢ and Σ cᵢ with cᵢ = wᵢ·2^((tᵢ − _emb_lm)/h)
        self._emb_sum: NDArray[np.float64] | None = None
        self._emb_w = 0.0
        self._emb_lm = start_ts
        self._emb_cached: list[float] | None = None  # the served mean, until the next add

    @classmethod
    def start(cls, user_id: str, ts: float, session_id: str | None, half_life: float) -> Session:
        """An empty session opened at `ts` (add the opening event with `add`);
        `half_life` is the embedding's, in seconds.
        """
        if session_id is None:
            return cls(user_id, derived_session_id(user_id, ts), True, ts, ts, half_life)
        return cls(user_id, session_id, False, ts, ts, half_life)

    def place(self, ts: float, session_id: str | None, gap: float) -> Placement:
        """Where an event at `ts` goes relative to this session (rules in the module doc)."""
        if session_id is not None:
            if session_id == self.session_id:
                return JOIN
            return NEW if ts >= self.last_ts else PAST
        if ts > self.last_ts + gap:
            return NEW
        if ts < self.start_ts - gap:
            return PAST
        return JOIN

    def add(
        self,
        ts: float,
        item_id: str,
        weight: float,
        vector: NDArray[np.floating[Any]] | None,
        last_n: int,
    ) -> None:
        """Merge one joining event (any order gives the same result)."""
        self.length += 1
        if ts < self.start_ts:
            self.start_ts = ts
            if self.derived:
                self.session_id = derived_session_id(self.user_id, ts)
        if ts > self.last_ts:
            self.last_ts = ts
        if vector is not None and weight > 0.0:
            half_life = self.half_life
            x = (ts - self._emb_lm) / half_life
            if x > REBASE_HALF_LIVES:
                f = 2.0**-x
                self._emb_w *= f
                if self._emb_sum is not None:
                    self._emb_sum *= f
                self._emb_lm = ts
                x = 0.0
            c = weight * 2.0**x
            if c >= TINY:
                # float64 vectors take the fast path; others are widened first (a float32
                # product would round each term to 1e-7 and break order independence)
                term = vector * c if vector.dtype is _F64 else np.multiply(vector, c, dtype=np.float64)
                if self._emb_sum is None:
                    self._emb_sum = term
                else:
                    self._emb_sum += term
                self._emb_w += c
                self._emb_cached = None
        push_recent(self.items, self._order, item_id, ts, last_n)

    def recent_items(self, k: int, exclude: str | None = None) -> tuple[str, ...]:
        """Up to `k` item ids, most recent event time first, without `exclude`."""
        order = self._order
        if exclude is not None and exclude in self.items:
            return tuple([item for _, item in order[::-1] if item != exclude][:k])
        return tuple([item for _, item in order[: -k - 1 : -1]])

    @property
    def embedding_weight(self) -> float:
        """`Σ gᵢ`: the total decayed weight of the embedded events, as of `last_ts`."""
        w = self._emb_w * 2.0 ** ((self._emb_lm - self.last_ts) / self.half_life)
        return w if w >= TINY else 0.0

    def embedding(self, dim: int) -> list[float]:
        """The session embedding: the decayed weighted mean (zeros when nothing is embedded)."""
        if self._emb_cached is not None:
            return list(self._emb_cached)
        if self._emb_sum is None or self._emb_w == 0.0:
            return [0.0] * dim
        mean: list[float] = (self._emb_sum / self._emb_w).tolist()
        return mean

    def to_features(self, dim: int) -> dict[str, Any]:
        """The session features (names in `profiles.naming`)."""
        order = self._order
        weight = self.embedding_weight
        return {
            n.SESSION_ID: self.session_id,
            n.SESSION_START_TS: self.start_ts,
            n.SESSION_LAST_TS: self.last_ts,
            n.SESSION_LENGTH: self.length,
            n.SESSION_DURATION_S: self.last_ts - self.start_ts,
            n.SESSION_ITEMS: [item for _, item in reversed(order)],
            n.SESSION_ITEM_TS: [ts for ts, _ in reversed(order)],
            n.SESSION_EMBEDDING: self.embedding(dim) if weight > 0.0 else [0.0] * dim,
            n.SESSION_EMBEDDING_WEIGHT: weight,
        }

    @staticmethod
    def empty_features(dim: int) -> dict[str, Any]:
        """The session features of a user without any session yet."""
        return {
            n.SESSION_ID: "",
            n.SESSION_START_TS: 0.0,
            n.SESSION_LAST_TS: 0.0,
            n.SESSION_LENGTH: 0,
            n.SESSION_DURATION_S: 0.0,
            n.SESSION_ITEMS: [],
            n.SESSION_ITEM_TS: [],
            n.SESSION_EMBEDDING: [0.0] * dim,
            n.SESSION_EMBEDDING_WEIGHT: 0.0,
        }

    @classmethod
    def from_features(cls, user_id: str | None, d: Mapping[str, Any], half_life: float) -> Session | None:
        """The session `to_features` described (None for a user without session).

        The id counts as derived when it equals `derived_session_id(user_id, start)`; with
        `user_id=None`, when it has that form for some user id.
        """
        if not d[n.SESSION_ID] or int(d[n.SESSION_LENGTH]) == 0:
            return None
        sid = str(d[n.SESSION_ID])
        start = float(d[n.SESSION_START_TS])
        if user_id is None:
            prefix, sep, _ = sid.rpartition(":")
            user_id = prefix if sep else ""
        derived = sid == derived_session_id(user_id, start)
        s = cls(user_id, sid, derived, start, float(d[n.SESSION_LAST_TS]), half_life)
        s.length = int(d[n.SESSION_LENGTH])
        items: Sequence[str] = d[n.SESSION_ITEMS]
        stamps: Sequence[float] = d[n.SESSION_ITEM_TS]
        s._order = sorted((float(t), str(i)) for i, t in zip(items, stamps, strict=True))
        s.items = {i: t for t, i in s._order}
        weight = float(d[n.SESSION_EMBEDDING_WEIGHT])
        s._emb_lm = s.last_ts
        if weight > 0.0:
            s._emb_w = weight
            mean = [float(x) for x in d[n.SESSION_EMBEDDING]]
            s._emb_sum = np.array(mean, dtype=np.float64) * weight
            s._emb_cached = mean
        return s
