"""Forward-decayed counters with an exact, incrementally kept top-N.

A score read at time `T` is `Σ wᵢ·2^(−(T − tᵢ)/h)`. It is stored as `Σ wᵢ·2^((tᵢ − L)/h)`
for one landmark `L` (forward decay: every update is an addition, exact in any order),
rebased when an update comes more than 64 half-lives after `L`. All keys decay at the same
rate, so the order of keys never changes with time; a stored value only grows, so a key
outside the top-N can enter it only by passing the current minimum: the top-N is kept
exactly with one comparison per update.

>>> c = DecayedTop(half_life=3600.0, n=2)
>>> c.add("a", 1.0, 0.0); c.add("b", 1.0, 3600.0); c.add("c", 0.75, 3600.0)
>>> c.top(at=3600.0)
[('b', 1.0), ('c', 0.75)]
>>> c.value("a", at=3600.0)
0.5
"""

from __future__ import annotations

from typing import Final

__all__ = ["REBASE_HALF_LIVES", "DecayedTop"]

REBASE_HALF_LIVES: Final[float] = 64.0


class DecayedTop:
    """Forward-decayed scores per key plus the exact top `n` keys (`half_life` in seconds;
    `half_life=inf` keeps plain sums)."""

    __slots__ = ("_dirty", "_lm", "_min_key", "_raw", "_sorted", "_top", "half_life", "n")

    def __init__(self, half_life: float, n: int = 100) -> None:
        if not half_life > 0.0:
            raise ValueError(f"half_life must be > 0, got {half_life!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        self.half_life = half_life
        self.n = n
        self._raw: dict[str, float] = {}
        self._lm: float | None = None
        self._top: set[str] = set()
        self._min_key: str | None = None
        self._sorted: list[str] = []
        self._dirty = False

    def add(self, key: str, weight: float, ts: float) -> None:
        """Add `weight` at event time `ts` to `key`."""
        if self._lm is None:
            self._lm = ts
        x = (ts - self._lm) / self.half_life
        if x > REBASE_HALF_LIVES:
            f = 2.0**-x
            for k in self._raw:
                self._raw[k] *= f
            self._lm = ts
            x = 0.0
        raw = self._raw
        v = raw.get(key, 0.0) + weight * 2.0**x
        raw[key] = v
        top = self._top
        if key in top:
            self._dirty = True
            if key == self._min_key:
                self._min_key = min(top, key=raw.__getitem__)
        elif len(top) < self.n:
            top.add(key)
            self._dirty = True
            if self._min_key is None or v < raw[self._min_key]:
                self._min_key = key
        else:
            mk = self._min_key
            assert mk is not None
            if v > raw[mk]:
                top.discard(mk)
                top.add(key)
                self._min_key = min(top, key=raw.__getitem__)
                self._dirty = True

    def _factor(self, at: float | None) -> float:
        if self._lm is None or at is None:
            return 1.0
        return float(2.0 ** ((self._lm - at) / self.half_life))

    def value(self, key: str, at: float | None = None) -> float:
        """The score of `key` read at `at` (default: at the landmark)."""
        return self._raw.get(key, 0.0) * self._factor(at)

    def top(self, k: int | None = None, at: float | None = None) -> list[tuple[str, float]]:
        """Up to `k` (≤ n) best keys with their scores at `at`, best first (ties by key)."""
        if self._dirty:
            raw = self._raw
            self._sorted = sorted(self._top, key=lambda x: (-raw[x], x))
            self._dirty = False
        f = self._factor(at)
        keys = self._sorted if k is None else self._sorted[:k]
        return [(x, self._raw[x] * f) for x in keys]

    def __len__(self) -> int:
        return len(self._raw)
