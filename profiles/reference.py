"""Naive recomputation of every user and item feature from the list of events.

Plain loops, sums of `2 ** (-(t_query - t_i) / h)` over kept event lists, no forward-decay
tricks and no shared code with the optimized states beyond names and config: tests hold
`UserState` / `ItemState` / `CovisitationIndex` against these functions (relative 1e-9),
and the crash test holds Redis against them. Outputs have the `to_features()` shape.

Events are taken in the order given (their arrival order), duplicates by `event_id`
dropped (first wins). Decayed counts, totals, seen items, the history (the `history_n`
distinct items with the latest event time) and item features do not depend on that
order; the order-dependent rules (sessions, the bounded category and co-visitation
lists) are applied here in the same order, with the same rules, as the
states apply them: sort the events by `ts` first for the event-time-order answer.
Quadratic time: for tests, not for production.

>>> from profiles.events import Event
>>> from profiles.user_state import ProfileConfig
>>> evs = [Event("e1", "click", "u1", "i1", 0.0), Event("e2", "click", "u1", "i2", 3600.0)]
>>> users = reference_user_features(evs, ProfileConfig())
>>> users["u1"]["click_1h"], users["u1"]["session_length"], users["u1"]["session_id"]
(1.5, 1, 'u1:3600000')
>>> reference_item_features(evs, ProfileConfig())["i1"]["click_1d"]   # as of i1's own latest event
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from profiles import naming as n
from profiles.embeddings import item_vector
from profiles.events import EVENT_TYPES, Event, Item
from profiles.user_state import ProfileConfig

__all__ = [
    "dedupe",
    "reference_covisitation",
    "reference_item_features",
    "reference_user_features",
]

TINY = 1e-300  # values below are reported as 0.0, like the states do

VectorOf = Callable[[str], "NDArray[Any] | None"]


def dedupe(events: Iterable[Event]) -> list[Event]:
    """The events without repeats of an `event_id` (first occurrence kept).

    >>> [e.ts for e in dedupe([Event("a", "view", "u", "i", 1.0), Event("a", "view", "u", "i", 2.0)])]
    [1.0]
    """
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id not in seen:
            seen.add(e.event_id)
            out.append(e)
    return out


def _decayed(terms: Iterable[tuple[float, float]], at: float, h: float) -> float:
    """Σ w · 2^(−(at − t)/h) over (t, w) terms, 0.0 below TINY."""
    total = 0.0
    for t, w in terms:
        total += w * 2 ** (-(at - t) / h)
    return total if total >= TINY else 0.0


def _rank(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


class _NaiveUser:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.categories: dict[str, list[tuple[float, float]]] = {}
        # current session: its explicit id (None: derived) and its events (ts, item, w, vec)
        self.session_sid: str | None = None
        self.session: list[tuple[float, str, float, NDArray[Any] | None]] = []


def _place(u: _NaiveUser, user_id: str, e: Event, gap: float) -> str:
    if not u.session:
        return "new"
    start = min(t for t, *_ in u.session)
    last = max(t for t, *_ in u.session)
    current_id = u.session_sid if u.session_sid is not None else f"{user_id}:{round(start * 1000)}"
    if e.session_id is not None:
        if e.session_id == current_id:
            return "join"
        return "new" if e.ts >= last else "past"
    if e.ts > last + gap:
        return "new"
    if e.ts < start - gap:
        return "past"
    return "join"


def _session_items(u: _NaiveUser) -> list[tuple[float, str]]:
    """(latest ts, item) of every session item, most recent first (ties: larger id)."""
    latest: dict[str, float] = {}
    for t, item, _, _ in u.session:
        latest[item] = max(t, latest.get(item, t))
    return sorted(((t, i) for i, t in latest.items()), reverse=True)


def _users(
    events: Iterable[Event],
    config: ProfileConfig,
    catalog: Mapping[str, Item] | None,
    vector_of: VectorOf | None,
    on_pairs: Callable[[str, tuple[str, ...], Event], None] | None = None,
) -> dict[str, _NaiveUser]:
    catalog = catalog or {}
    if vector_of is None:

        def vector_of(item_id: str) -> NDArray[Any] | None:
            return item_vector(catalog.get(item_id), item_id, config.embedding_dim)

    h_cat = config.category_half_life_s
    users: dict[str, _NaiveUser] = {}
    for e in dedupe(events):
        u = users.setdefault(e.user_id, _NaiveUser())
        u.events.append(e)
        w = config.type_weights[e.type]
        item = catalog.get(e.item_id)
        cats = list(dict.fromkeys(item.categories)) if item is not None else []
        if w > 0.0 and cats:
            for c in cats:
                u.categories.setdefault(c, []).append((e.ts, w))
            if len(u.categories) > config.category_track_n:
                now = max(x.ts for x in u.events)
                scores = {c: _decayed(terms, now, h_cat) for c, terms in u.categories.items()}
                for c, _ in _rank(scores)[config.category_keep_n :]:
                    del u.categories[c]
        place = _place(u, e.user_id, e, config.session_gap_s)
        if place == "past":
            continue
        if place == "new":
            u.session = []
            u.session_sid = e.session_id
            partners: tuple[str, ...] = ()
        else:
            partners = tuple(i for _, i in _session_items(u)[: config.session_last_n] if i != e.item_id)[
                : config.covis_window
            ]
        if on_pairs is not None:
            on_pairs(e.user_id, partners, e)
        u.session.append((e.ts, e.item_id, w, vector_of(e.item_id)))
    return users


def reference_user_features(
    events: Iterable[Event],
    config: ProfileConfig,
    catalog: Mapping[str, Item] | None = None,
    vector_of: VectorOf | None = None,
) -> dict[str, dict[str, Any]]:
    """Every user's features, recomputed from scratch (`UserState.to_features()` shape).

    Item categories come from `catalog` (none for an unknown item); item vectors from
    `vector_of(item_id)`, by default `embeddings.item_vector(catalog.get(id), id, dim)`.
    """
    out: dict[str, dict[str, Any]] = {}
    for user_id, u in _users(events, config, catalog, vector_of).items():
        now = max(e.ts for e in u.events)
        f: dict[str, Any] = {}
        for t in EVENT_TYPES:
            for h in config.half_lives_s:
                f[n.count_name(t, h)] = _decayed(((e.ts, 1.0) for e in u.events if e.type == t), now, h)
        for t in EVENT_TYPES:
            f[n.last_ts_name(t)] = max((e.ts for e in u.events if e.type == t), default=0.0)
        for t in EVENT_TYPES:
            f[n.total_name(t)] = sum(1 for e in u.events if e.type == t)
        f[n.DISTINCT_ITEMS] = len({e.item_id for e in u.events})
        scores = {c: _decayed(terms, now, config.category_half_life_s) for c, terms in u.categories.items()}
        ranked = _rank(scores)
        k = config.category_top_n
        f[n.TOP_CATEGORIES] = [c for c, _ in ranked[:k]]
        f[n.TOP_CATEGORY_SCORES] = [s for _, s in ranked[:k]]
        f[n.NEXT_CATEGORIES] = [c for c, _ in ranked[k:]]
        f[n.NEXT_CATEGORY_SCORES] = [s for _, s in ranked[k:]]
        latest: dict[str, float] = {}
        for e in u.events:
            latest[e.item_id] = max(e.ts, latest.get(e.item_id, e.ts))
        history = sorted(((t, i) for i, t in latest.items()), reverse=True)[: config.history_n]
        f[n.HISTORY_ITEMS] = [i for _, i in history]
        f[n.HISTORY_ITEM_TS] = [t for t, _ in history]
        f.update(_session_features(user_id, u, config))
        f[n.UPDATED_AT] = now
        out[user_id] = f
    return out


def _session_features(user_id: str, u: _NaiveUser, config: ProfileConfig) -> dict[str, Any]:
    start = min(t for t, *_ in u.session)
    last = max(t for t, *_ in u.session)
    items = _session_items(u)[: config.session_last_n]
    h = config.session_embedding_half_life_s
    weight = 0.0
    acc = np.zeros(config.embedding_dim, dtype=np.float64)
    for t, _, w, vec in u.session:
        g = w * 2 ** (-(last - t) / h)
        if vec is not None and g >= TINY:
            weight += g
            acc += g * np.asarray(vec, dtype=np.float64)
    return {
        n.SESSION_ID: u.session_sid if u.session_sid is not None else f"{user_id}:{round(start * 1000)}",
        n.SESSION_START_TS: start,
        n.SESSION_LAST_TS: last,
        n.SESSION_LENGTH: len(u.session),
        n.SESSION_DURATION_S: last - start,
        n.SESSION_ITEMS: [i for _, i in items],
        n.SESSION_ITEM_TS: [t for t, _ in items],
        n.SESSION_EMBEDDING: (acc / weight).tolist() if weight > 0.0 else acc.tolist(),
        n.SESSION_EMBEDDING_WEIGHT: weight if weight >= TINY else 0.0,
    }


def reference_item_features(events: Iterable[Event], config: ProfileConfig) -> dict[str, dict[str, Any]]:
    """Every item's features, recomputed from scratch (`ItemState.to_features()` shape)."""
    by_item: dict[str, list[Event]] = {}
    for e in dedupe(events):
        by_item.setdefault(e.item_id, []).append(e)
    out: dict[str, dict[str, Any]] = {}
    longest = config.longest_half_life_s
    for item_id, evs in by_item.items():
        now = max(e.ts for e in evs)
        f: dict[str, Any] = {}
        for t in EVENT_TYPES:
            for h in config.half_lives_s:
                f[n.count_name(t, h)] = _decayed(((e.ts, 1.0) for e in evs if e.type == t), now, h)
        for t in EVENT_TYPES:
            f[n.total_name(t)] = sum(1 for e in evs if e.type == t)
        for h in config.half_lives_s:
            f[n.popularity_name(h)] = sum(config.type_weights[t] * f[n.count_name(t, h)] for t in EVENT_TYPES)
        a, p = config.conversion_prior_weight, config.conversion_prior
        f[n.CONVERSION_RATE] = (f[n.count_name("purchase", longest)] + a * p) / (
            f[n.count_name("view", longest)] + f[n.count_name("click", longest)] + a
        )
        f[n.UPDATED_AT] = now
        out[item_id] = f
    return out


def reference_covisitation(
    events: Iterable[Event],
    config: ProfileConfig,
    half_life: float = 86400.0,
    cap: int = 100,
    catalog: Mapping[str, Item] | None = None,
    weight_of: Callable[[Event], float] | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Every item's co-visitation neighbours, best first, read at the latest event time.

    Pairs come from the naive sessions (an event joining a session co-visits the up to
    `covis_window` most recent other items of it, weight = `weight_of(event)`, by default
    its type weight); the index
    keeps per item the lists of increments and trims to `cap` when over `2·cap`.
    """
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def on_pairs(user_id: str, partners: tuple[str, ...], e: Event) -> None:
        w = weight_of(e) if weight_of is not None else config.type_weights[e.type]
        for a in partners:
            for src, dst in ((a, e.item_id), (e.item_id, a)):
                row = rows.setdefault(src, {})
                row.setdefault(dst, []).append((e.ts, w))
                if len(row) > 2 * cap:
                    at = max(t for terms in row.values() for t, _ in terms)
                    scores = {b: _decayed(terms, at, half_life) for b, terms in row.items()}
                    for b, _ in _rank(scores)[cap:]:
                        del row[b]

    events = list(events)
    _users(events, config, catalog, lambda _item: None, on_pairs)
    latest = max((e.ts for e in events), default=0.0)
    out: dict[str, list[tuple[str, float]]] = {}
    for a, row in rows.items():
        out[a] = _rank({b: _decayed(terms, latest, half_life) for b, terms in row.items()})
    return out


def compare_features(
    actual: Mapping[str, Any],
    expected: Mapping[str, Any],
    rel: float = 1e-9,
    abs_tol: float = 1e-250,
    vector_abs_tol: float = 1e-9,
) -> list[str]:
    """Differences between two feature dicts, as readable lines (empty: they agree).

    Floats agree within `rel` (or `abs_tol`), embeddings element-wise within
    `vector_abs_tol`; strings, ints and id lists exactly. The bounded category lists
    may differ only by categories whose scores tie (within `rel`) at a cut: near-equal
    scores can rank either way after float rounding.

    >>> compare_features({"a": 1.0, "n": 2}, {"a": 1.0 + 1e-12, "n": 3})
    ['n: 2 != 3']
    """
    problems: list[str] = []
    if set(actual) != set(expected):
        return [f"keys differ: {sorted(set(actual) ^ set(expected))}"]

    def close(x: float, y: float, tol: float = abs_tol) -> bool:
        return bool(np.isclose(x, y, rtol=rel, atol=tol)) and np.isfinite(x) == np.isfinite(y)

    category_keys = {
        n.TOP_CATEGORIES,
        n.TOP_CATEGORY_SCORES,
        n.NEXT_CATEGORIES,
        n.NEXT_CATEGORY_SCORES,
    }
    for key in actual:
        a, b = actual[key], expected[key]
        if key in category_keys:
            continue
        if key == n.SESSION_EMBEDDING:
            if len(a) != len(b) or not all(close(x, y, vector_abs_tol) for x, y in zip(a, b, strict=True)):
                problems.append(f"{key}: {a} != {b}")
        elif isinstance(a, float) or isinstance(b, float):
            if not close(float(a), float(b)):
                problems.append(f"{key}: {a!r} != {b!r}")
        elif isinstance(a, list) and a and isinstance(a[0], float):
            if len(a) != len(b) or not all(close(x, y) for x, y in zip(a, b, strict=True)):
                problems.append(f"{key}: {a} != {b}")
        elif a != b:
            problems.append(f"{key}: {a!r} != {b!r}")
    if n.TOP_CATEGORIES in actual:
        problems += _compare_categories(actual, expected, close)
    return problems


def _compare_categories(
    actual: Mapping[str, Any], expected: Mapping[str, Any], close: Callable[[float, float], bool]
) -> list[str]:
    out: list[str] = []
    for names_key, scores_key in (
        (n.TOP_CATEGORIES, n.TOP_CATEGORY_SCORES),
        (n.NEXT_CATEGORIES, n.NEXT_CATEGORY_SCORES),
    ):
        sa, sb = actual[scores_key], expected[scores_key]
        if len(sa) != len(sb) or not all(close(x, y) for x, y in zip(sa, sb, strict=True)):
            out.append(f"{scores_key}: {sa} != {sb}")
            continue
        ra = dict(zip(actual[names_key], sa, strict=True))
        rb = dict(zip(expected[names_key], sb, strict=True))
        for name in set(ra) | set(rb):
            if name in ra and name in rb:
                if not close(ra[name], rb[name]):
                    out.append(f"{names_key} {name!r}: {ra[name]!r} != {rb[name]!r}")
                continue
            # only in one list: allowed when it ties (within rel) with a score of the other
            # list's that is missing from this one, i.e. a near-tie ranked either way
            mine = ra if name in ra else rb
            other = rb if name in ra else ra
            if not any(close(mine[name], s) for c, s in other.items() if c not in mine):
                out.append(f"{names_key}: {name!r} only in one side ({mine[name]!r})")
    return out
