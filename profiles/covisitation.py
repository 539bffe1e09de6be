"""Decayed item co-visitation: items interacted with close together in one session.

Pairs: when a user interacts with item `b` at event time `t`, each item `a` among the
user's recent items (the last `covis_window` = 10 distinct items of the current session,
before this event, `a ≠ b`; `UserState.covisit_partners(event)` gives them) gives two increments,
`a → b` and `b → a`, of weight `w` = the event type's weight (`config.type_weights`:
view 1, click 1, add_to_cart 3, purchase 5, rate 2). An event that starts a session or
belongs to a past session gives no pair.

Score: `score(a → b)` read at time `T` = `Σ wᵢ · 2^(−(T − tᵢ)/h)` over the increments,
default `h` = 1 day. `CovisitationIndex` stores per source item `a` the sums
`Σ wᵢ · 2^((tᵢ − Lₐ)/h)` relative to a landmark `Lₐ` (forward decay: an increment is one
addition whatever its arrival order); `Lₐ` is rebased to `t` (every score of `a` scaled
by `2^(−(t − Lₐ)/h)`) when an increment arrives more than 64 half-lives after it, so
nothing overflows.

Truncation: once `a` has more than `2·cap` neighbours, it keeps the `cap` highest
(equal scores: the smaller id is kept). Scores of `a` decay at one rate, so the rule does
not depend on when it is applied; a neighbour dropped and seen again starts from zero,
which makes a capped index depend on arrival order (like every bounded top-N).

>>> pairs = covisit_pairs(("a", "c"), "b", ts=0.0, weight=1.0)
>>> pairs
[('a', 'b', 0.0, 1.0), ('b', 'a', 0.0, 1.0), ('c', 'b', 0.0, 1.0), ('b', 'c', 0.0, 1.0)]
>>> idx = CovisitationIndex(half_life=3600.0, cap=10)
>>> idx.update(pairs)
>>> idx.update(covisit_pairs(("a",), "b", ts=3600.0, weight=3.0))
>>> idx.neighbors("b", at=3600.0)
[('a', 3.5), ('c', 0.5)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from profiles.decay import NEVER, TINY

__all__ = ["CovisitationIndex", "covisit_pairs"]

REBASE_HALF_LIVES: Final[float] = 64.0

#: (source item, neighbour item, event time, weight)
Pair = tuple[str, str, float, float]


def covisit_pairs(recent_items: Sequence[str], item_id: str, ts: float, weight: float) -> list[Pair]:
    """Symmetric increments between `item_id` and each recent item (itself and repeats skipped).

    >>> covisit_pairs(("b", "x", "x"), "b", 5.0, 2.0)
    [('x', 'b', 5.0, 2.0), ('b', 'x', 5.0, 2.0)]
    """
    out: list[Pair] = []
    seen: set[str] = set()
    for a in recent_items:
        if a == item_id or a in seen:
            continue
        seen.add(a)
        out.append((a, item_id, ts, weight))
        out.append((item_id, a, ts, weight))
    return out


class CovisitationIndex:
    """Pure-Python reference index: per item, decayed co-visitation scores, capped.

    `half_life` in seconds of event time; `cap` neighbours kept per item (trimmed from
    2·cap, see the module doc).
    """

    __slots__ = ("_landmarks", "_scores", "cap", "half_life", "latest_ts")

    def __init__(self, half_life: float = 86400.0, cap: int = 100) -> None:
        if not half_life > 0.0:
            raise ValueError(f"half_life must be positive, got {half_life!r}")
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap!r}")
        self.half_life = half_life
        self.cap = cap
        self._scores: dict[str, dict[str, float]] = {}
        self._landmarks: dict[str, float] = {}
        #: the latest increment time seen (default read time)
        self.latest_ts = NEVER

    def add(self, a: str, b: str, ts: float, weight: float) -> None:
        """Add `weight` at event time `ts` to `score(a → b)`."""
        h = self.half_life
        row = self._scores.get(a)
        if row is None:
            row = self._scores[a] = {}
            self._landmarks[a] = ts
        lm = self._landmarks[a]
        x = (ts - lm) / h
        if x > REBASE_HALF_LIVES:
            f = 2.0**-x
            for k, v in row.items():
                s = v * f
                row[k] = s if s >= TINY else 0.0
            self._landmarks[a] = ts
            x = 0.0
        inc = weight * 2.0**x
        row[b] = row.get(b, 0.0) + (inc if inc >= TINY else 0.0)
        if len(row) > 2 * self.cap:
            keep = sorted(row.items(), key=_rank_key)[: self.cap]
            row.clear()
            row.update(keep)
        if ts > self.latest_ts:
            self.latest_ts = ts

    def update(self, pairs: Iterable[Pair]) -> None:
        """Add every `(a, b, ts, weight)` increment."""
        for a, b, ts, w in pairs:
            self.add(a, b, ts, w)

    def neighbors(
        self, item_id: str, at: float | None = None, k: int | None = None
    ) -> list[tuple[str, float]]:
        """Up to `k` neighbours of `item_id`, best first, scores read at `at`
        (default: the latest increment time seen; not before the item's landmark).
        """
        row = self._scores.get(item_id)
        if not row:
            return []
        t = self.latest_ts if at is None else at
        lm = self._landmarks[item_id]
        if t < lm:
            raise ValueError(f"cannot read {item_id!r} at {t!r}, before its landmark {lm!r}")
        f = 2.0 ** ((lm - t) / self.half_life)
        ranked = sorted(row.items(), key=_rank_key)
        if k is not None:
            ranked = ranked[:k]
        out = []
        for b, s in ranked:
            v = s * f
            out.append((b, v if v >= TINY else 0.0))
        return out

    def __len__(self) -> int:
        return len(self._scores)


def _rank_key(kv: tuple[str, float]) -> tuple[float, str]:
    return (-kv[1], kv[0])
