"""A user's profile: decayed activity, category affinity, seen items, recent history and
current session.

`UserState.apply(event, item_categories, item_vector)` is the per-event update (plain
floats and dicts, one numpy multiply-add for the session embedding; no dataclass per
event). `to_features()` is exactly what is served through Feast;
`from_features(d, seen_items, config, user_id)` restores the state, given the full set of
seen item ids (kept outside the profile; `distinct_items` is its size).

Fields and rules (`h` ranges over `config.half_lives_s`, `U` = `updated_at` = the latest
event time seen; every decayed value is served as of `U`):

- `{type}_{h}` = `Σ 2^(−(U − tᵢ)/h)` over the user's events of that type (exact in any
  arrival order); `last_{type}_ts` = max event time of that type (0.0 while
  `{type}_total` = 0); `{type}_total` = lifetime count; `distinct_items` = number of
  distinct items ever interacted with (`seen_items`, kept beside the profile).
- Category affinity, half-life `config.category_half_life_s` (the middle half-life):
  every category of the event's item gains the event type's weight `w`
  (`config.type_weights`), decayed. At most `config.category_track_n` (= 2·top-N)
  categories are tracked: when an event takes the count above it, only the
  `config.category_keep_n` (= 1.5·top-N) best are kept (by score, then name; amortised, so
  a user with broad tastes does not pay a scan per event), and a dropped category that
  comes back starts from zero. `top_categories` are the first `category_top_n` tracked ones by
  score (then name), `next_categories` the rest (served so that a state restored from
  features is the same, whatever the batch boundaries). All decay at the same rate, so
  the ranking does not depend on when it is read. With at most 2·N distinct categories
  nothing is dropped and the scores are exact in any order. With more, the result
  depends on the order of arrival (the reference applies the same rule in the same
  order, so the two agree for the same order; a late event may re-enter a category
  that the in-order run had dropped, or drop a different one).
- `history_items` / `history_item_ts`: the user's last `config.history_n` distinct items
  across all sessions, most recent first, each with the event time of its latest event
  (an item seen again moves to the front); ties in time: the larger item id is the more
  recent (the session's rule). Decided by event time alone, so exact in any arrival order:
  a late event enters only if its item is then among the N latest (`sessions.push_recent`).
  Past-session events count too.
- Session fields: see `profiles.sessions` (the late-event rule lives there). A past-session
  event updates everything above but not the session.

>>> cfg = ProfileConfig()
>>> u = UserState("u1", cfg)
>>> from profiles.events import Event
>>> u.apply(Event("e1", "click", "u1", "i1", 0.0), ("Crime",), None)
>>> u.covisit_partners(Event("e2", "view", "u1", "i2", 600.0))
('i1',)
>>> u.apply(Event("e2", "view", "u1", "i2", 3600.0), ("Drama", "Crime"), None)
>>> f = u.to_features()
>>> f["click_1h"], f["click_total"], f["distinct_items"], f["updated_at"]
(0.5, 1, 2, 3600.0)
>>> f["top_categories"], [round(x, 4) for x in f["top_category_scores"]]
(['Crime', 'Drama'], [1.9715, 1.0])
>>> f["history_items"], f["history_item_ts"]
(['i2', 'i1'], [3600.0, 0.0])
>>> UserState.from_features(f, u.seen_items, cfg).to_features() == f
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from profiles import naming as n
from profiles.decay import NEVER, TINY
from profiles.events import DEFAULT_TYPE_WEIGHTS, EVENT_TYPES, Event
from profiles.sessions import JOIN, NEW, Session, push_recent

__all__ = ["ProfileConfig", "UserState"]

#: Category scores are kept as forward-decayed sums relative to a landmark that is rebased
#: once the newest event is this many half-lives past it (growth ≤ 2^64: no overflow).
CATEGORY_REBASE_HALF_LIVES: Final[float] = 64.0


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Hyperparameters of user and item profiles (frozen; built once, passed down).

    >>> c = ProfileConfig()
    >>> c.category_half_life_s, c.longest_half_life_s, c.category_track_n, c.category_keep_n
    (86400.0, 604800.0, 16, 12)
    >>> c.history_n
    10
    """

    half_lives_s: tuple[float, ...] = (3600.0, 86400.0, 604800.0)
    session_gap_s: float = 1800.0
    session_last_n: int = 10
    session_embedding_half_life_s: float = 600.0
    embedding_dim: int = 32
    category_top_n: int = 8
    type_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TYPE_WEIGHTS)
    #: how many of the session's most recent items an event co-visits (≤ session_last_n)
    covis_window: int = 10
    #: conversion rate prior (`p`) and its strength in pseudo-interactions (`a`)
    conversion_prior: float = 0.02
    conversion_prior_weight: float = 10.0
    #: how many distinct items the cross-session history keeps (`history_items`)
    history_n: int = 10
    # derived in __post_init__ (precomputed: the per-event path reads them)
    #: half-life of category affinity: the middle of `half_lives_s`
    category_half_life_s: float = field(init=False, compare=False, repr=False)
    #: the longest half-life (conversion rate uses it)
    longest_half_life_s: float = field(init=False, compare=False, repr=False)
    #: at most this many categories are tracked: 4 × `category_top_n`
    category_track_n: int = field(init=False, compare=False, repr=False)
    #: past `category_track_n`, the best this many are kept: 1.5 × `category_top_n` (rounded up)
    category_keep_n: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        hls = tuple(float(h) for h in self.half_lives_s)
        if not hls or any(not (h > 0.0 and math.isfinite(h)) for h in hls):
            raise ValueError(f"half_lives_s must be positive and finite, got {self.half_lives_s!r}")
        if len({n.half_life_suffix(h) for h in hls}) != len(hls):
            raise ValueError(f"half_lives_s must be distinct, got {self.half_lives_s!r}")
        object.__setattr__(self, "half_lives_s", hls)
        missing = [t for t in EVENT_TYPES if t not in self.type_weights]
        if missing or any(not (w >= 0.0) for w in self.type_weights.values()):
            raise ValueError(
                f"type_weights needs a weight >= 0 for every event type, got {self.type_weights!r}"
            )
        weights = {t: float(self.type_weights[t]) for t in EVENT_TYPES}
        object.__setattr__(self, "type_weights", MappingProxyType(weights))
        for name in ("session_gap_s", "session_embedding_half_life_s"):
            value = getattr(self, name)
            if not (value > 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        for name in ("session_last_n", "embedding_dim", "category_top_n", "history_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.covis_window <= self.session_last_n:
            raise ValueError(
                f"covis_window must be in 0..session_last_n ({self.session_last_n}), "
                f"got {self.covis_window!r}"
            )
        if not (0.0 <= self.conversion_prior <= 1.0 and self.conversion_prior_weight > 0.0):
            raise ValueError(
                "conversion_prior must be in [0, 1] and conversion_prior_weight > 0, got "
                f"{self.conversion_prior!r}, {self.conversion_prior_weight!r}"
            )
        object.__setattr__(self, "category_half_life_s", sorted(hls)[len(hls) // 2])
        object.__setattr__(self, "longest_half_life_s", max(hls))
        object.__setattr__(self, "category_track_n", 2 * self.category_top_n)
        object.__setattr__(self, "category_keep_n", self.category_top_n + (self.category_top_n + 1) // 2)

    def __hash__(self) -> int:
        return hash(
            (
                self.half_lives_s,
                self.session_gap_s,
                self.session_last_n,
                self.session_embedding_half_life_s,
                self.embedding_dim,
                self.category_top_n,
                tuple(sorted(self.type_weights.items())),
                self.covis_window,
                self.conversion_prior,
                self.conversion_prior_weight,
                self.history_n,
            )
        )


def rank_categories(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Categories by score, highest first, equal scores by name.

    >>> rank_categories({"b": 1.0, "a": 1.0, "c": 2.0})
    [('c', 2.0), ('a', 1.0), ('b', 1.0)]
    """
    return sorted(scores.items(), key=_rank_key)


@functools.lru_cache(maxsize=16)
def _names(
    half_lives_s: tuple[float, ...],
) -> tuple[dict[str, tuple[str, ...]], dict[str, str], dict[str, str]]:
    """Per event type: its decayed-count names (one per half-life), last-ts and total names."""
    return (
        {t: tuple(n.count_name(t, h) for h in half_lives_s) for t in EVENT_TYPES},
        {t: n.last_ts_name(t) for t in EVENT_TYPES},
        {t: n.total_name(t) for t in EVENT_TYPES},
    )


def _rank_key(kv: tuple[str, float]) -> tuple[float, str]:
    return (-kv[1], kv[0])


class UserState:
    """The mutable profile of one user (see the module doc for every field's rule)."""

    __slots__ = (
        "_cat",
        "_cat_lm",
        "_count_lm",
        "_counts",
        "_history_order",
        "config",
        "history",
        "last_ts",
        "seen_items",
        "session",
        "totals",
        "updated_at",
        "user_id",
    )

    def __init__(self, user_id: str, config: ProfileConfig) -> None:
        self.user_id = user_id
        self.config = config
        self.updated_at: float = NEVER
        k = len(config.half_lives_s)
        # per type: decayed counts (one per half-life) expressed at _count_lm[type]
        self._counts: dict[str, list[float]] = {t: [0.0] * k for t in EVENT_TYPES}
        self._count_lm: dict[str, float] = dict.fromkeys(EVENT_TYPES, NEVER)
        self.last_ts: dict[str, float] = dict.fromkeys(EVENT_TYPES, NEVER)
        self.totals: dict[str, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.seen_items: set[str] = set()
        # the last history_n distinct items: item -> latest ts, and sorted (ts, item) pairs
        self.history: dict[str, float] = {}
        self._history_order: list[tuple[float, str]] = []
        # category -> Σ w·2^((t − _cat_lm)/h), forward decay with a rebased landmark
        self._cat: dict[str, float] = {}
        self._cat_lm: float = NEVER
        self.session: Session | None = None

    def apply(
        self,
        event: Event,
        item_categories: Sequence[str],
        item_vector: NDArray[np.floating[Any]] | None,
    ) -> None:
        """Apply one event: `item_categories` and `item_vector` describe its item (the
        vector takes the fast path as float64; None leaves the session embedding alone).

        Duplicate events are not detected here (the store's offset fence applies each
        event once). For co-visitation, call `covisit_partners(event)` before this.
        """
        cfg = self.config
        ts = event.ts
        etype = event.type
        # decayed counts of this type, at their own landmark (served as of updated_at)
        vals = self._counts[etype]
        lm = self._count_lm[etype]
        i = 0
        if ts > lm:
            dt = ts - lm
            for h in cfg.half_lives_s:
                f = 2.0 ** (-dt / h)
                vals[i] = vals[i] * f + 1.0 if f >= TINY else 1.0
                i += 1
            self._count_lm[etype] = ts
        elif ts == lm:
            for i in range(len(vals)):
                vals[i] += 1.0
        else:
            dt = lm - ts
            for h in cfg.half_lives_s:
                f = 2.0 ** (-dt / h)
                if f >= TINY:
                    vals[i] += f
                i += 1
        last_ts = self.last_ts
        if ts > last_ts[etype]:
            last_ts[etype] = ts
        self.totals[etype] += 1
        if ts > self.updated_at:
            self.updated_at = ts
        item_id = event.item_id
        self.seen_items.add(item_id)
        push_recent(self.history, self._history_order, item_id, ts, cfg.history_n)

        w = cfg.type_weights[etype]
        if item_categories and w > 0.0:
            self._add_categories(item_categories, ts, w)

        sess = self.session
        place = NEW if sess is None else sess.place(ts, event.session_id, cfg.session_gap_s)
        if place == NEW:
            sess = self.session = Session.start(
                self.user_id, ts, event.session_id, cfg.session_embedding_half_life_s
            )
        elif place != JOIN:
            return  # a past session's event: counters only
        assert sess is not None
        sess.add(ts, item_id, w, item_vector, cfg.session_last_n)

    def covisit_partners(self, event: Event) -> tuple[str, ...]:
        """The items `event` co-visits; call it before `apply(event)`.

        Up to `config.covis_window` items of the current session, most recent first,
        without the event's own item: empty when the event would start a session or
        belongs to a past one (`profiles.covisitation` turns them into pairs).
        """
        sess = self.session
        window = self.config.covis_window
        if sess is None or not window:
            return ()
        if sess.place(event.ts, event.session_id, self.config.session_gap_s) != JOIN:
            return ()
        return sess.recent_items(window, event.item_id)

    def history_items(self, k: int | None = None) -> tuple[str, ...]:
        """Up to `k` (default all kept) history items, most recent event time first."""
        order = self._history_order
        if k is None or k >= len(order):
            return tuple([item for _, item in reversed(order)])
        return tuple([item for _, item in order[: -k - 1 : -1]])

    def _add_categories(self, categories: Sequence[str], ts: float, w: float) -> None:
        h = self.config.category_half_life_s
        cat = self._cat
        lm = self._cat_lm
        if lm == NEVER:
            lm = self._cat_lm = ts
        x = (ts - lm) / h
        if x > CATEGORY_REBASE_HALF_LIVES:
            f = 2.0**-x
            for c, s in cat.items():
                v = s * f
                cat[c] = v if v >= TINY else 0.0
            self._cat_lm = ts
            x = 0.0
        inc = w * 2.0**x
        if inc < TINY:
            inc = 0.0
        if len(categories) == 1:
            c0 = categories[0]
            cat[c0] = cat.get(c0, 0.0) + inc
        else:
            for c in dict.fromkeys(categories):
                cat[c] = cat.get(c, 0.0) + inc
        if len(cat) > self.config.category_track_n:
            keep = sorted(cat.items(), key=_rank_key)[: self.config.category_keep_n]
            cat.clear()
            cat.update(keep)

    # ---- features -------------------------------------------------------------------

    def counts_at_updated(self) -> dict[str, list[float]]:
        """Decayed counts per type, one per half-life, as of `updated_at`."""
        u = self.updated_at
        out: dict[str, list[float]] = {}
        for t, vals in self._counts.items():
            lm = self._count_lm[t]
            if lm == NEVER or u == lm:
                out[t] = [v if v >= TINY else 0.0 for v in vals]
                continue
            dt = u - lm
            row = []
            for v, h in zip(vals, self.config.half_lives_s, strict=True):
                x = v * 2.0 ** (-dt / h)
                row.append(x if x >= TINY else 0.0)
            out[t] = row
        return out

    def category_scores(self) -> list[tuple[str, float]]:
        """Tracked categories with their scores as of `updated_at`, best first."""
        if not self._cat:
            return []
        f = 2.0 ** ((self._cat_lm - self.updated_at) / self.config.category_half_life_s)
        out = []
        for c, s in rank_categories(self._cat):
            v = s * f
            out.append((c, v if v >= TINY else 0.0))
        return out

    def to_features(self) -> dict[str, Any]:
        """The features served through Feast (names and kinds in `profiles.naming`)."""
        cfg = self.config
        feats: dict[str, Any] = {}
        counts = self.counts_at_updated()
        count_names, last_names, total_names = _names(cfg.half_lives_s)
        for t in EVENT_TYPES:
            for name, v in zip(count_names[t], counts[t], strict=True):
                feats[name] = v
        for t in EVENT_TYPES:
            last = self.last_ts[t]
            feats[last_names[t]] = last if last != NEVER else 0.0
        for t in EVENT_TYPES:
            feats[total_names[t]] = self.totals[t]
        feats[n.DISTINCT_ITEMS] = len(self.seen_items)
        ranked = self.category_scores()
        top_n = cfg.category_top_n
        feats[n.TOP_CATEGORIES] = [c for c, _ in ranked[:top_n]]
        feats[n.TOP_CATEGORY_SCORES] = [s for _, s in ranked[:top_n]]
        feats[n.NEXT_CATEGORIES] = [c for c, _ in ranked[top_n:]]
        feats[n.NEXT_CATEGORY_SCORES] = [s for _, s in ranked[top_n:]]
        history = self._history_order
        feats[n.HISTORY_ITEMS] = [item for _, item in reversed(history)]
        feats[n.HISTORY_ITEM_TS] = [ts for ts, _ in reversed(history)]
        if self.session is None:
            feats.update(Session.empty_features(cfg.embedding_dim))
        else:
            feats.update(self.session.to_features(cfg.embedding_dim))
        feats[n.UPDATED_AT] = self.updated_at if self.updated_at != NEVER else 0.0
        return feats

    @classmethod
    def from_features(
        cls,
        d: Mapping[str, Any],
        seen_items: Iterable[str],
        config: ProfileConfig,
        user_id: str | None = None,
    ) -> UserState:
        """The state whose `to_features()` is `d` (with `seen_items` kept beside it).

        Pass `user_id` (the entity key) so that a derived session id keeps following its
        session's start; without it, a session id of the form `user:start_ms` is taken as
        derived (see `Session.from_features`).
        """
        seen = set(seen_items)
        session = Session.from_features(user_id, d, config.session_embedding_half_life_s)
        if user_id is None:
            user_id = session.user_id if session is not None else ""
        s = cls(user_id, config)
        s.session = session
        s.seen_items = seen
        any_event = False
        for t in EVENT_TYPES:
            total = int(d[n.total_name(t)])
            s.totals[t] = total
            if total > 0:
                any_event = True
                s.last_ts[t] = float(d[n.last_ts_name(t)])
        u = float(d[n.UPDATED_AT]) if any_event else NEVER
        s.updated_at = u
        for t in EVENT_TYPES:
            s._counts[t] = [float(d[n.count_name(t, h)]) for h in config.half_lives_s]
            s._count_lm[t] = u if s.totals[t] > 0 else NEVER
        names = list(d[n.TOP_CATEGORIES]) + list(d[n.NEXT_CATEGORIES])
        scores = list(d[n.TOP_CATEGORY_SCORES]) + list(d[n.NEXT_CATEGORY_SCORES])
        if len(names) != len(scores):
            raise ValueError(f"category names and scores differ in length: {len(names)} != {len(scores)}")
        s._cat = {str(c): float(v) for c, v in zip(names, scores, strict=True)}
        s._cat_lm = u if s._cat else NEVER
        # absent in profiles written before the history existed: it starts empty
        items: Sequence[str] = d.get(n.HISTORY_ITEMS) or ()
        stamps: Sequence[float] = d.get(n.HISTORY_ITEM_TS) or ()
        if len(items) != len(stamps):
            raise ValueError(f"history items and times differ in length: {len(items)} != {len(stamps)}")
        pairs = sorted((float(t), str(i)) for i, t in zip(items, stamps, strict=True))
        s._history_order = pairs[len(pairs) - config.history_n :] if len(pairs) > config.history_n else pairs
        s.history = {i: t for t, i in s._history_order}
        return s
