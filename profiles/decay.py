"""Forward-decayed counters: a count that halves every `half_life` seconds of event time.

Forward decay (Cormode, Shkapenyuk, Srivastava, Xu, ICDE 2009) weighs an event of weight
`w` at time `tᵢ`, read at time `t`, by `w · 2^(−(t − tᵢ)/h)`. The sum of such terms is kept
as a pair *(value expressed at the landmark T, T)*:

- an event at `t ≥ T` decays the stored value from `T` to `t`, adds `w`, and moves `T`
  to `t` (landmark rebasing: the stored value never exceeds the sum of the weights, so
  nothing overflows, whatever the half-life and the span of the data);
- a late event at `t < T` adds `w · 2^(−(T − t)/h)` and leaves `T` where it is;
- reading at `t ≥ T` multiplies by `2^(−(t − T)/h)`.

Every term ends up as `w · 2^(−(T − tᵢ)/h)` whatever the arrival order, so the result is
exact (up to float rounding, ~1e-15 relative per operation) in any order, and two states
merge by addition once expressed at the same landmark. Factors are powers of two, so a
whole number of half-lives is exact: the doctests can be checked by hand. A value that
decays below `TINY` (1e-300) is flushed to 0.0: no subnormals, no NaN, no overflow.

`DecayedCount` is the small immutable value type; `decay_factor` and `decay_add` are the
allocation-free helpers the per-event hot path uses on plain lists (one value per
half-life, sharing one landmark).

>>> c = DecayedCount(half_life=3600.0).add(ts=0.0).add(ts=0.0)
>>> c.value_at(3600.0)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["NEVER", "TINY", "DecayedCount", "decay_add", "decay_factor", "decay_values"]

#: Values below this are flushed to 0.0 (far below any meaningful count, far above subnormals).
TINY: Final[float] = 1e-300
#: Landmark of a state that has seen no event.
NEVER: Final[float] = -math.inf


def decay_factor(dt: float, half_life: float) -> float:
    """Weight left after `dt` seconds: `2^(−dt/half_life)`; 0.0 once it underflows.

    >>> decay_factor(3600.0, 3600.0)
    0.5
    >>> decay_factor(0.0, 60.0)
    1.0
    >>> decay_factor(86400.0 * 365 * 30, 1.0)  # thirty years at a half-life of 1 s
    0.0
    >>> decay_factor(math.inf, 1.0)
    0.0
    """
    f: float = 2.0 ** (-dt / half_life)
    return f if f >= TINY else 0.0


def decay_add(
    values: list[float],
    landmark: float,
    ts: float,
    weight: float,
    half_lives: Sequence[float],
) -> float:
    """Add `weight` at event time `ts` to `values` (one per half-life, all expressed at
    `landmark`), in place, and return the new landmark (`max(landmark, ts)`).

    This is the per-event hot path: no allocation, one power per half-life.

    >>> v = [0.0, 0.0]
    >>> lm = decay_add(v, NEVER, 0.0, 1.0, (60.0, 3600.0))
    >>> lm = decay_add(v, lm, 60.0, 1.0, (60.0, 3600.0))   # in order: decay, then add
    >>> lm, v[0]
    (60.0, 1.5)
    >>> lm = decay_add(v, lm, 0.0, 2.0, (60.0, 3600.0))    # late: add 2·2^(−1), keep T
    >>> lm, v[0]
    (60.0, 2.5)
    """
    if ts >= landmark:
        if ts == landmark:
            for i in range(len(values)):
                values[i] += weight
            return landmark
        dt = ts - landmark
        for i, h in enumerate(half_lives):
            f = 2.0 ** (-dt / h)
            values[i] = values[i] * f + weight if f >= TINY else weight
        return ts
    dt = landmark - ts
    for i, h in enumerate(half_lives):
        f = 2.0 ** (-dt / h)
        if f >= TINY:
            values[i] += weight * f
    return landmark


def decay_values(values: list[float], dt: float, half_lives: Sequence[float]) -> list[float]:
    """`values` (one per half-life) read `dt ≥ 0` seconds later, as a new list.

    >>> decay_values([4.0, 4.0], 120.0, (60.0, 120.0))
    [1.0, 2.0]
    """
    out = []
    for v, h in zip(values, half_lives, strict=True):
        x = v * 2.0 ** (-dt / h)
        out.append(x if abs(x) >= TINY else 0.0)
    return out


@dataclass(frozen=True, slots=True)
class DecayedCount:
    """Count that halves every `half_life` seconds of event time.

    `value` is the count expressed at `landmark` (the latest event time added so far).

    >>> c = DecayedCount(half_life=3600.0).add(ts=0.0).add(ts=0.0)
    >>> c.value_at(3600.0)
    1.0
    >>> c.add(ts=-3600.0).value_at(0.0)    # a late event, one half-life old
    2.5
    >>> (c + DecayedCount(3600.0).add(ts=3600.0, weight=3.0)).value_at(3600.0)
    4.0
    """

    half_life: float
    value: float = 0.0
    landmark: float = NEVER

    def __post_init__(self) -> None:
        if not (self.half_life > 0.0 and math.isfinite(self.half_life)):
            raise ValueError(f"half_life must be positive and finite, got {self.half_life!r}")

    def add(self, ts: float, weight: float = 1.0) -> DecayedCount:
        """A new count with `weight` added at event time `ts`."""
        if not math.isfinite(ts):
            raise ValueError(f"ts must be finite, got {ts!r}")
        if ts >= self.landmark:
            f = decay_factor(ts - self.landmark, self.half_life) if ts > self.landmark else 1.0
            return DecayedCount(self.half_life, _flush(self.value * f + weight), ts)
        f = decay_factor(self.landmark - ts, self.half_life)
        return DecayedCount(self.half_life, _flush(self.value + weight * f), self.landmark)

    def value_at(self, ts: float) -> float:
        """The count read at event time `ts` (which must not be before the landmark).

        >>> DecayedCount(60.0).value_at(0.0)
        0.0
        >>> DecayedCount(60.0).add(ts=10.0).value_at(5.0)
        Traceback (most recent call last):
        ...
        ValueError: cannot read at ts=5.0, before the landmark 10.0 (events after it are in)
        """
        if self.value == 0.0:
            return 0.0
        if ts < self.landmark:
            raise ValueError(
                f"cannot read at ts={ts!r}, before the landmark {self.landmark!r} (events after it are in)"
            )
        return _flush(self.value * decay_factor(ts - self.landmark, self.half_life))

    def merge(self, other: DecayedCount) -> DecayedCount:
        """The count of both streams of events (same half-life), at the later landmark."""
        if other.half_life != self.half_life:
            raise ValueError(f"cannot merge half-lives {self.half_life!r} and {other.half_life!r}")
        lm = max(self.landmark, other.landmark)
        if lm == NEVER:
            return self
        value = self.value_at(lm) + other.value_at(lm)
        return DecayedCount(self.half_life, _flush(value), lm)

    def __add__(self, other: DecayedCount) -> DecayedCount:
        return self.merge(other)


def _flush(x: float) -> float:
    return x if abs(x) >= TINY else 0.0
