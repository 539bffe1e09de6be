"""An item's profile: decayed interaction counts, popularity and conversion rate.

This Python class is the reference for the Redis Lua port; the stored state *is* the
feature dict, and an event `(type, t)` updates it as follows (`U` = `updated_at`,
`h` ranges over `config.half_lives_s`, `TINY` = 1e-300):

1. if `t > U` (or the item is new): every `{type'}_{h}` ← `{type'}_{h} · 2^(−(t − U)/h)`
   (skipped for a new item), then `U ← t`;
2. `{type}_{h}` ← `{type}_{h} + 2^(−(U − t)/h)` (that is `+1` unless the event is late;
   a late term below TINY adds nothing);
3. `{type}_total` ← `{type}_total + 1`.

A count below TINY is read (served) as 0.0. Everything else is derived when the features
are read (not stored):

- `popularity_{h}` = `Σ_type w_type · {type}_{h}` (w = `config.type_weights`);
- `conversion_rate` = `(purchase_L + a·p) / (view_L + click_L + a)` with `L` the longest
  half-life (7d), `p` = `config.conversion_prior` (0.02) and `a` =
  `config.conversion_prior_weight` (10 pseudo-interactions): the prior when the item has
  no traffic, tending to purchases per view-or-click as traffic grows.

So `{type}_{h}` = `Σ 2^(−(U − tᵢ)/h)` over the item's events of that type, exact in any
arrival order.

>>> from profiles.events import Event
>>> from profiles.user_state import ProfileConfig
>>> s = ItemState("i1", ProfileConfig())
>>> s.apply(Event("e1", "view", "u1", "i1", 0.0))
>>> s.apply(Event("e2", "purchase", "u2", "i1", 3600.0))
>>> f = s.to_features()
>>> f["view_1h"], f["purchase_1h"], f["view_total"], f["popularity_1h"]
(0.5, 1.0, 1, 5.5)
>>> round(f["conversion_rate"], 6)   # (1 + 10·0.02) / (2^(−1/168) + 0 + 10)
0.109132
>>> ItemState.from_features("i1", f, ProfileConfig()).to_features() == f
True
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import mul
from typing import Any, Final

from profiles import naming as n
from profiles.decay import NEVER, TINY
from profiles.events import EVENT_TYPES, Event
from profiles.user_state import ProfileConfig

__all__ = ["ItemState", "conversion_rate"]

_TYPE_INDEX: Final[dict[str, int]] = {t: i for i, t in enumerate(EVENT_TYPES)}
_N_TYPES: Final[int] = len(EVENT_TYPES)


def conversion_rate(purchases: float, views: float, clicks: float, config: ProfileConfig) -> float:
    """Smoothed purchases per view-or-click: `(purchases + a·p) / (views + clicks + a)`.

    >>> conversion_rate(0.0, 0.0, 0.0, ProfileConfig())
    0.02
    >>> conversion_rate(10.0, 90.0, 0.0, ProfileConfig())
    0.102
    """
    a = config.conversion_prior_weight
    return (purchases + a * config.conversion_prior) / (views + clicks + a)


class ItemState:
    """The mutable profile of one item (rules in the module doc).

    `values` holds the decayed counts type-major (`EVENT_TYPES` order, then
    `half_lives_s` order), all as of `updated_at`; `count(type, i)` reads one.
    """

    __slots__ = ("config", "item_id", "totals", "updated_at", "values")

    def __init__(self, item_id: str, config: ProfileConfig) -> None:
        self.item_id = item_id
        self.config = config
        self.updated_at: float = NEVER
        self.values: list[float] = [0.0] * (len(EVENT_TYPES) * len(config.half_lives_s))
        self.totals: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)

    def count(self, event_type: str, index: int) -> float:
        """Decayed count of `event_type` for half-life `config.half_lives_s[index]`, at
        `updated_at` (0.0 below TINY)."""
        k = len(self.config.half_lives_s)
        v = self.values[_TYPE_INDEX[event_type] * k + index]
        return v if v >= TINY else 0.0

    def apply(self, event: Event) -> None:
        """Apply one event (any arrival order gives the same features)."""
        ts = event.ts
        u = self.updated_at
        hls = self.config.half_lives_s
        k = len(hls)
        base = _TYPE_INDEX[event.type] * k
        vals = self.values
        if ts > u:
            if u != NEVER:
                # rule 1: decay every count to ts (values below TINY read as 0.0)
                dt = ts - u
                fs = [2.0 ** (-dt / h) for h in hls] * _N_TYPES
                vals[:] = map(mul, vals, fs)
            self.updated_at = ts
            for i in range(base, base + k):
                vals[i] += 1.0
        elif ts == u:
            for i in range(base, base + k):
                vals[i] += 1.0
        else:
            dt = u - ts
            i = base
            for h in hls:
                f = 2.0 ** (-dt / h)
                if f >= TINY:
                    vals[i] += f
                i += 1
        self.totals[event.type] += 1

    def to_features(self) -> dict[str, Any]:
        """The item features (names and kinds in `profiles.naming`)."""
        cfg = self.config
        hls = cfg.half_lives_s
        feats: dict[str, Any] = {}
        for t in EVENT_TYPES:
            for i, h in enumerate(hls):
                feats[n.count_name(t, h)] = self.count(t, i)
        for t in EVENT_TYPES:
            feats[n.total_name(t)] = self.totals[t]
        w = cfg.type_weights
        for i, h in enumerate(hls):
            feats[n.popularity_name(h)] = sum(w[t] * self.count(t, i) for t in EVENT_TYPES)
        li = hls.index(cfg.longest_half_life_s)
        feats[n.CONVERSION_RATE] = conversion_rate(
            self.count("purchase", li), self.count("view", li), self.count("click", li), cfg
        )
        feats[n.UPDATED_AT] = self.updated_at if self.updated_at != NEVER else 0.0
        return feats

    @classmethod
    def from_features(cls, item_id: str, d: Mapping[str, Any], config: ProfileConfig) -> ItemState:
        """The state whose `to_features()` is `d` (derived features are recomputed)."""
        s = cls(item_id, config)
        s.values = [float(d[n.count_name(t, h)]) for t in EVENT_TYPES for h in config.half_lives_s]
        for t in EVENT_TYPES:
            s.totals[t] = int(d[n.total_name(t)])
        if any(s.totals.values()):
            s.updated_at = float(d[n.UPDATED_AT])
        return s
