"""Synthetic event streams for `freshrec simulate`: realistic, deterministic, fast.

The world behind the stream:

- categories have latent centroids; an item's latent vector is its category's centroid plus
  noise, and its base popularity follows a Zipf law (random ranks, exponent ~1.1);
- a user's taste is a mix of 1-3 category centroids plus noise, and drifts slowly (a random
  walk of constant norm, `taste_drift_per_day`);
- each user starts sessions as a Poisson process (heavy-tailed rates: some users are far
  more active), so the gap between a user's sessions is exponential with a mean of
  `mean_session_gap_hours`; a share of users (`new_user_share`) arrives during the run;
- a session focuses on 1-3 categories picked from the user's taste; it draws a candidate
  pool of `pool_size` items (80% from those categories, 20% globally, both by popularity,
  so the pool is a popularity-weighted sample) and picks items by softmax(taste·item)
  within it, i.e. ∝ popularity·exp(taste·item), with some re-views of earlier picks;
- every pick is a view that may escalate into click → add_to_cart → purchase (each an
  event on the same item, a few seconds apart; clicks are likelier for liked items);
- the catalog grows: `new_item_share` of the items is created during the run, never
  appears in an event before its `created_at`, and gets a novelty boost when fresh.

Sessions are long enough and focused enough that item co-visitation, session similarity
and matrix factorisation beat plain popularity (see tests/test_simulate.py).

Events come out in non-decreasing event time (`ts` in epoch millis). Generation works on
blocks of ~1000 sessions with numpy and keeps a small carry-over buffer of events that
belong after the next block's first session, so the stream is lazy and memory stays flat.

>>> cfg = SimulationConfig(seed=7, users=200, items=100, categories=5, events=50)
>>> events = list(generate_events(cfg))
>>> len(events), events[0]["event_id"], events[-1]["event_id"]
(50, 'sim-7-0', 'sim-7-49')
>>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
True
>>> events == list(generate_events(cfg))
True
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt

from profiles.events import EVENT_TYPES
from streams.errors import ConfigError

__all__ = [
    "SimulationConfig",
    "SimulationCounts",
    "generate_events",
    "generate_items",
    "simulate_to_files",
    "write_jsonl",
]

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
#: Event type per funnel step (0 = the view that starts a pick) and the code of "rate".
_FUNNEL: Final[tuple[str, ...]] = ("view", "click", "add_to_cart", "purchase")
_RATE: Final = 4
_TYPE_NAMES: Final[tuple[str, ...]] = (*_FUNNEL, "rate")
assert set(_TYPE_NAMES) == set(EVENT_TYPES)
_DEVICES: Final[tuple[str, ...]] = ("mobile", "desktop", "app")
_SESSIONS_PER_BLOCK: Final = 1024
#: Popularity-weighted draws per category and block, from which session pools are filled.
_CATEGORY_SAMPLE: Final = 512
#: Share of a session's pool drawn from its categories (the rest from the whole catalog).
_POOL_CATEGORY_SHARE: Final = 0.8

_CATEGORY_WORDS: Final[tuple[str, ...]] = (
    "books", "garden", "kitchen", "toys", "sports", "music", "movies", "fashion", "shoes",
    "beauty", "health", "laptops", "phones", "cameras", "audio", "gaming", "bedding",
    "furniture", "lighting", "tools", "auto", "pets", "baby", "grocery", "wine", "coffee",
    "outdoor", "camping", "cycling", "fitness", "jewelry", "watches", "bags", "office", "art",
    "crafts", "travel", "bath", "party", "science",
)  # fmt: skip
_TOKENS: Final[tuple[str, ...]] = (
    "classic", "compact", "deluxe", "eco", "essential", "family", "fresh", "handmade", "light",
    "mini", "modern", "organic", "premium", "pro", "retro", "smart", "soft", "sport", "travel",
    "ultra", "vintage", "wireless", "bamboo", "ceramic", "cotton", "glass", "leather", "linen",
    "oak", "steel", "wool", "black", "blue", "green", "grey", "red", "white", "set", "kit",
    "pack", "edition", "series", "basic", "max", "plus", "air", "nova", "terra", "alpine",
    "coastal", "urban", "nordic", "sunny", "quiet", "rapid", "solid", "cosy", "bright", "twin",
)  # fmt: skip
_BRAND_SYLLABLES: Final[tuple[str, ...]] = (
    "ar", "bel", "cor", "da", "el", "fen", "gra", "hal", "is", "jor", "kel", "lu", "mar",
    "nor", "os", "pel", "qua", "ros", "sil", "tor", "ul", "vik", "wen", "zen",
)  # fmt: skip
_COLORS: Final[tuple[str, ...]] = ("black", "white", "grey", "blue", "red", "green", "beige")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Every knob of the simulated world; the same config always gives the same stream.

    >>> SimulationConfig(seed=3).start_ms
    1767225600000
    >>> SimulationConfig(users=0)
    Traceback (most recent call last):
    ...
    streams.errors.ConfigError: simulation users=0: must be >= 1
    """

    seed: int = 0
    users: int = 10_000
    items: int = 2_000
    categories: int = 40
    events: int = 200_000
    latent_dim: int = 8
    #: Base item popularity ∝ rank**-zipf_exponent (heavy-tailed).
    zipf_exponent: float = 1.1
    #: Events per session ~ geometric with this mean (minimum 1).
    mean_session_length: float = 8.0
    #: Gap between one user's sessions ~ exponential with this mean (averaged over users).
    mean_session_gap_hours: float = 24.0
    #: Mean gap between two picks in a session (log-normal, seconds to minutes).
    mean_event_gap_seconds: float = 40.0
    #: Funnel: P(click | view), P(add_to_cart | click), P(purchase | add_to_cart).
    p_click: float = 0.35
    p_add_to_cart: float = 0.25
    p_purchase: float = 0.45
    #: Share of events turned into `rate` events with a 0.5..5 rating from the taste.
    rate_share: float = 0.0
    #: Share of picks (after a session's first) that re-view an earlier pick of the session.
    repeat_share: float = 0.15
    #: Share of the catalog created during the run (the rest exists before `start`).
    new_item_share: float = 0.25
    #: Share of users who arrive during the run (the rest is active from `start`).
    new_user_share: float = 0.2
    #: Random-walk step of a taste vector per sqrt(day), relative to its norm.
    taste_drift_per_day: float = 0.05
    #: How strongly taste steers the pick within a session's pool (0 = popularity only).
    taste_strength: float = 3.0
    #: Share of sessions whose events carry `session_id` (the rest leave it out).
    session_id_share: float = 0.9
    #: Candidate pool drawn per session.
    pool_size: int = 200
    #: Event time of the run's beginning (ISO-8601 with zone).
    start: str = "2026-01-01T00:00:00Z"

    def __post_init__(self) -> None:
        positive_ints = ("users", "items", "categories", "latent_dim", "pool_size")
        for name in positive_ints:
            _check(self, name, getattr(self, name) >= 1, "must be >= 1")
        _check(self, "events", self.events >= 0, "must be >= 0")
        _check(self, "seed", self.seed >= 0, "must be >= 0")
        for name in ("zipf_exponent", "taste_strength", "taste_drift_per_day"):
            _check(self, name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("mean_session_length", "mean_session_gap_hours", "mean_event_gap_seconds"):
            _check(self, name, getattr(self, name) > 0, "must be > 0")
        _check(self, "mean_session_length", self.mean_session_length >= 1, "must be >= 1")
        for f in fields(self):
            if f.name.startswith("p_") or f.name.endswith("_share"):
                value = getattr(self, f.name)
                _check(self, f.name, 0.0 <= value <= 1.0, "must be within 0..1")
        _check(self, "new_user_share", self.new_user_share < 1.0, "must be < 1 (someone starts)")
        initial = self.items - round(self.items * self.new_item_share)
        _check(
            self,
            "categories",
            self.categories <= initial,
            f"must be <= the {initial} items that exist at start (every category needs one)",
        )
        self.start_ms  # noqa: B018 - validates `start`

    @property
    def start_ms(self) -> int:
        """`start` in epoch milliseconds."""
        try:
            parsed = datetime.fromisoformat(self.start)
        except ValueError:
            raise ConfigError(f"simulation start={self.start!r}: not ISO-8601") from None
        if parsed.utcoffset() is None:
            raise ConfigError(f"simulation start={self.start!r}: has no zone (add Z)")
        return round(parsed.timestamp() * 1000)


def _check(cfg: SimulationConfig, name: str, ok: bool, reason: str) -> None:
    if not ok:
        raise ConfigError(f"simulation {name}={getattr(cfg, name)!r}: {reason}")


@dataclass(frozen=True, slots=True)
class SimulationCounts:
    """What `simulate_to_files` wrote."""

    items: int
    events: int
    by_type: Mapping[str, int]
    users: int
    first_ts: int | None
    last_ts: int | None


# --------------------------------------------------------------------------- the world


@dataclass(slots=True)
class _World:
    """Latent state shared by the catalog and the event stream (built from the seed)."""

    centroids: FloatArray  # (C, d)
    item_vec: FloatArray  # (I, d)
    item_vec32: npt.NDArray[np.float32]  # the same in float32, for the per-session pools
    item_cat: IntArray  # (I,) primary category
    item_cat2: IntArray  # (I,) secondary category or -1
    item_pop: FloatArray  # (I,) base Zipf weight
    item_created_ms: IntArray  # (I,) ascending: item ids follow creation order
    item_price: FloatArray  # (I,)
    by_cat: IntArray  # item indices grouped by primary category
    cat_bounds: IntArray  # (C + 1,) segment bounds of `by_cat`
    taste: FloatArray  # (U, d) mutated by drift while events are generated
    user_rate: FloatArray  # (U,) sessions per millisecond
    user_arrival_ms: IntArray  # (U,)
    user_device: IntArray  # (U,)
    span_ms: int  # expected duration of the run


def _build_world(cfg: SimulationConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0])
    d, n_cat, n_items, n_users = cfg.latent_dim, cfg.categories, cfg.items, cfg.users
    centroids = rng.normal(0.0, 1.0 / math.sqrt(d), size=(n_cat, d))

    # Catalog: ids follow creation order; the first `n_cat` items cover every category.
    n_new = round(n_items * cfg.new_item_share)
    n_init = n_items - n_new
    item_cat = rng.integers(0, n_cat, size=n_items)
    item_cat[:n_cat] = rng.permutation(n_cat)
    rng.shuffle(item_cat[:n_init])
    item_vec = centroids[item_cat] + rng.normal(0.0, 0.6 / math.sqrt(d), size=(n_items, d))
    affinity = item_vec @ centroids.T
    affinity[np.arange(n_items), item_cat] = -np.inf
    second = affinity.argmax(axis=1)
    item_cat2 = np.where(rng.random(n_items) < 0.3, second, -1)
    if n_cat == 1:
        item_cat2[:] = -1
    ranks = rng.permutation(n_items) + 1
    item_pop = ranks.astype(np.float64) ** -cfg.zipf_exponent
    cat_price = np.exp(rng.normal(3.3, 0.8, size=n_cat))
    item_price = np.round(cat_price[item_cat] * np.exp(rng.normal(0.0, 0.5, size=n_items)), 2)
    item_price = np.maximum(item_price, 0.99)
    order = np.argsort(item_cat, kind="stable")
    cat_bounds = np.searchsorted(item_cat[order], np.arange(n_cat + 1))

    # Users: taste = normalised mix of 1-3 centroids + noise; heavy-tailed session rates.
    k = rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2], size=n_users)
    favourites = rng.integers(0, n_cat, size=(n_users, 3))
    mix = np.zeros((n_users, d))
    for j in range(3):
        mix += np.where((j < k)[:, None], centroids[favourites[:, j]], 0.0)
    mix /= np.linalg.norm(mix, axis=1, keepdims=True) + 1e-12
    taste = mix + rng.normal(0.0, 0.3 / math.sqrt(d), size=(n_users, d))
    sigma = 1.0
    rel = np.exp(rng.normal(-sigma * sigma / 2, sigma, size=n_users))
    user_rate = rel / (cfg.mean_session_gap_hours * HOUR_MS)
    is_new = rng.random(n_users) < cfg.new_user_share
    arrival_frac = np.where(is_new, rng.random(n_users), 0.0)
    # Expected span: sessions needed / (rate of initial users + half the rate of new ones).
    sessions_needed = max(cfg.events, 1) / cfg.mean_session_length
    mean_rate = float(np.sum(user_rate * np.where(is_new, 0.5, 1.0)))
    span_ms = max(int(sessions_needed / mean_rate), 60_000)
    user_arrival_ms = cfg.start_ms + (arrival_frac * span_ms).astype(np.int64)
    user_device = rng.choice(3, p=[0.55, 0.3, 0.15], size=n_users)

    # Creation times (whole seconds): before start for the initial catalog, during the run
    # for the new items; sorted so that item ids follow creation order.
    past = cfg.start_ms - (rng.random(n_init) * 365 * DAY_MS).astype(np.int64)
    future = cfg.start_ms + (rng.random(n_new) * span_ms).astype(np.int64)
    created = np.concatenate([np.sort(past), np.sort(future)]) // 1000 * 1000

    return _World(
        centroids=centroids,
        item_vec=item_vec,
        item_vec32=item_vec.astype(np.float32),
        item_cat=item_cat.astype(np.int64),
        item_cat2=item_cat2.astype(np.int64),
        item_pop=item_pop,
        item_created_ms=created.astype(np.int64),
        item_price=item_price,
        by_cat=order.astype(np.int64),
        cat_bounds=cat_bounds.astype(np.int64),
        taste=taste,
        user_rate=user_rate,
        user_arrival_ms=user_arrival_ms.astype(np.int64),
        user_device=user_device.astype(np.int64),
        span_ms=span_ms,
    )


# --------------------------------------------------------------------------- catalog


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _category_names(n: int) -> list[str]:
    words = _CATEGORY_WORDS
    return [words[c % len(words)] + (f"-{c // len(words) + 1}" if c >= len(words) else "") for c in range(n)]


def generate_items(cfg: SimulationConfig) -> list[dict[str, Any]]:
    """The catalog as `items` messages, in creation order (`i0`, `i1`, ...).

    >>> items = generate_items(SimulationConfig(seed=1, items=10, categories=3))
    >>> items[0]["item_id"], sorted(items[0])
    ('i0', ['attributes', 'categories', 'created_at', 'item_id', 'title'])
    >>> [i["created_at"] <= "2026-01-01T00:00:00Z" for i in items].count(True)
    8
    """
    world = _build_world(cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    names = _category_names(cfg.categories)
    cat_tokens = [rng.choice(len(_TOKENS), size=8, replace=False) for _ in range(cfg.categories)]
    brands = [
        [
            "".join(_BRAND_SYLLABLES[s] for s in rng.choice(len(_BRAND_SYLLABLES), size=2)).title()
            for _ in range(6)
        ]
        for _ in range(cfg.categories)
    ]
    items: list[dict[str, Any]] = []
    for i in range(cfg.items):
        c = int(world.item_cat[i])
        c2 = int(world.item_cat2[i])
        brand = brands[c][int(rng.integers(6))]
        toks = [_TOKENS[int(t)] for t in rng.choice(cat_tokens[c], size=2, replace=False)]
        word = names[c].split("-")[0]
        title = f"{brand} {toks[0]} {word} {toks[1]}"
        items.append(
            {
                "item_id": f"i{i}",
                "title": title,
                "categories": [names[c]] if c2 < 0 else [names[c], names[c2]],
                "attributes": {
                    "price": float(world.item_price[i]),
                    "brand": brand,
                    "color": _COLORS[int(rng.integers(len(_COLORS)))],
                },
                "created_at": _iso(int(world.item_created_ms[i])),
            }
        )
    return items


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class _Batch:
    """Events as parallel arrays (generation order within a block)."""

    ts: IntArray
    user: IntArray
    item: IntArray
    kind: IntArray
    session: IntArray
    has_sid: BoolArray
    value: FloatArray  # NaN = no value
    device: IntArray

    @staticmethod
    def empty() -> _Batch:
        z = np.zeros(0, dtype=np.int64)
        return _Batch(z, z, z, z, z, np.zeros(0, bool), np.zeros(0), z)

    def concat(self, other: _Batch) -> _Batch:
        return _Batch(
            *(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(_Batch))
        )

    def take(self, index: IntArray) -> _Batch:
        return _Batch(*(getattr(self, f.name)[index] for f in fields(_Batch)))


def _epoch_sessions(
    world: _World, rng: np.random.Generator, lo_ms: int, hi_ms: int
) -> tuple[IntArray, IntArray]:
    """Session start times (sorted) and users for the window [lo_ms, hi_ms)."""
    begin = np.maximum(world.user_arrival_ms, lo_ms)
    length = np.maximum(hi_ms - begin, 0).astype(np.float64)
    counts = rng.poisson(world.user_rate * length)
    users = np.repeat(np.arange(len(counts)), counts)
    starts = begin[users] + (rng.random(len(users)) * length[users]).astype(np.int64)
    order = np.argsort(starts, kind="stable")
    return starts[order], users[order]


def _segmented_cdf(weights: FloatArray, bounds: IntArray) -> tuple[FloatArray, FloatArray]:
    """Cumulative weights per segment s, offset so that segment s spans [s, top[s]]."""
    csum = np.cumsum(weights)
    seg_start = np.concatenate([[0.0], csum])[bounds[:-1]]
    seg_total = csum[bounds[1:] - 1] - seg_start
    seg_id = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    cdf = seg_id + (csum - seg_start[seg_id]) / seg_total[seg_id]
    top = cdf[bounds[1:] - 1]
    return cdf, top


def _block_events(
    cfg: SimulationConfig,
    world: _World,
    rng: np.random.Generator,
    starts: IntArray,
    users: IntArray,
    first_session: int,
    last_drift_ms: IntArray,
) -> _Batch:
    """Every event of a block of sessions (each session's events in time order)."""
    n_sess = len(starts)
    d = cfg.latent_dim
    now = int(starts[0])

    # Taste drift: a random walk of constant norm, by the time since the last update.
    uniq = np.unique(users)
    dt_days = np.maximum(now - last_drift_ms[uniq], 0) / DAY_MS
    if cfg.taste_drift_per_day > 0:
        old = world.taste[uniq]
        norm = np.linalg.norm(old, axis=1, keepdims=True)
        step = rng.normal(size=old.shape) * (cfg.taste_drift_per_day * np.sqrt(dt_days))[:, None]
        new = old + step * norm / math.sqrt(d)
        world.taste[uniq] = new * norm / (np.linalg.norm(new, axis=1, keepdims=True) + 1e-12)
    last_drift_ms[uniq] = now

    # Item weights now: popularity x novelty boost, zero before creation.
    age = (now - world.item_created_ms) / DAY_MS
    weight = np.where(age >= 0, world.item_pop * (1.0 + 4.0 * np.exp(-np.maximum(age, 0) / 2.0)), 0.0)

    # Session categories: top-k of taste·centroid + Gumbel noise, k in 1..3.
    taste = world.taste[users]
    n_cat = cfg.categories
    cat_score = 6.0 * taste @ world.centroids.T + rng.gumbel(size=(n_sess, n_cat))
    top = np.argsort(-cat_score, axis=1)[:, : min(3, n_cat)]
    k = np.minimum(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2], size=n_sess), top.shape[1])

    # Candidate pool: 80% from the session's categories, 20% global, both by popularity.
    # Each category (and the whole catalog) is sampled once per block by popularity; a
    # session's pool slots then pick uniformly from those samples (a cheap gather).
    n_pool = cfg.pool_size
    n_pool_cat = max(1, round(n_pool * _POOL_CATEGORY_SHARE))
    n_pool_pop = n_pool - n_pool_cat
    m = _CATEGORY_SAMPLE
    cdf, seg_top = _segmented_cdf(weight[world.by_cat], world.cat_bounds)
    cat_ids = np.arange(n_cat)
    q = cat_ids[:, None] + rng.random((n_cat, m)) * (seg_top - cat_ids)[:, None]
    pos = np.minimum(np.searchsorted(cdf, q.ravel(), side="right"), len(cdf) - 1)
    cat_sample = world.by_cat[pos]  # (n_cat * m,): category c at [c*m, (c+1)*m)
    slot = (rng.random((n_sess, n_pool_cat)) * k[:, None]).astype(np.int64)
    slot_cat = np.take_along_axis(top, slot, axis=1)
    pool_cat = cat_sample[slot_cat * m + rng.integers(0, m, size=slot_cat.shape)]
    gcdf = np.cumsum(weight)
    gq = rng.random(4 * m) * gcdf[-1]
    pop_sample = np.minimum(np.searchsorted(gcdf, gq, side="right"), len(gcdf) - 1)
    pool_pop = pop_sample[rng.integers(0, len(pop_sample), size=(n_sess, n_pool_pop))]
    pool = np.concatenate([pool_cat, pool_pop], axis=1)

    # Picks: softmax(strength · intent·item) within the pool, with replacement.
    intent = taste + rng.normal(0.0, 0.3 / math.sqrt(d), size=taste.shape)
    vecs = np.take(world.item_vec32, pool, axis=0)  # np.take: much faster than vec[pool]
    dots = np.matmul(vecs, intent.astype(np.float32)[:, :, None])[..., 0]
    scores = cfg.taste_strength * dots.astype(np.float64)
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    row_cdf = np.cumsum(p, axis=1)
    row_cdf /= row_cdf[:, -1:]
    row_cdf[:, -1] = 1.0
    flat_cdf = (row_cdf + np.arange(n_sess)[:, None]).ravel()
    length = rng.geometric(1.0 / cfg.mean_session_length, size=n_sess).astype(np.int64)
    length = np.minimum(length, 500)
    pick_sess = np.repeat(np.arange(n_sess), length)
    n_picks = len(pick_sess)
    idx = np.searchsorted(flat_cdf, pick_sess + rng.random(n_picks), side="right")
    idx = np.minimum(idx, flat_cdf.size - 1)
    pick_item = pool.ravel()[idx]
    row_mean = scores.mean(axis=1)
    row_std = scores.std(axis=1) + 1e-9
    z = (scores.ravel()[idx] - row_mean[pick_sess]) / row_std[pick_sess]

    # Re-views: a pick may repeat an earlier pick of its session.
    pick_first = np.cumsum(length) - length
    local = np.arange(n_picks) - pick_first[pick_sess]
    repeat = (local > 0) & (rng.random(n_picks) < cfg.repeat_share)
    src = pick_first[pick_sess] + (rng.random(n_picks) * local).astype(np.int64)
    pick_item = np.where(repeat, pick_item[src], pick_item)
    z = np.where(repeat, z[src], z)

    # Funnel: view -> click -> add_to_cart -> purchase; clicks likelier for liked items.
    logit = math.log(max(cfg.p_click, 1e-9) / max(1.0 - cfg.p_click, 1e-9))
    p_click = 1.0 / (1.0 + np.exp(-(logit + 0.7 * z)))
    if cfg.p_click >= 1.0:
        p_click[:] = 1.0
    clicked = rng.random(n_picks) < p_click
    carted = clicked & (rng.random(n_picks) < cfg.p_add_to_cart)
    bought = carted & (rng.random(n_picks) < cfg.p_purchase)
    depth = 1 + clicked.astype(np.int64) + carted + bought
    ev_pick = np.repeat(np.arange(n_picks), depth)
    step = np.arange(len(ev_pick)) - np.repeat(np.cumsum(depth) - depth, depth)
    ev_sess = pick_sess[ev_pick]
    per_sess = np.bincount(ev_sess, minlength=n_sess)
    ev_first = np.cumsum(per_sess) - per_sess
    keep = (np.arange(len(ev_pick)) - ev_first[ev_sess]) < length[ev_sess]
    ev_pick, step, ev_sess = ev_pick[keep], step[keep], ev_sess[keep]
    n_ev = len(ev_pick)

    # Event times: log-normal gaps (funnel steps are quicker), the first at session start.
    sigma = 1.0
    mean_gap = np.where(step == 0, cfg.mean_event_gap_seconds, cfg.mean_event_gap_seconds / 5)
    gap = np.exp(np.log(mean_gap * 1000.0) - sigma * sigma / 2 + sigma * rng.normal(size=n_ev))
    gap = np.maximum(gap.astype(np.int64), 1)
    first = np.r_[True, ev_sess[1:] != ev_sess[:-1]]
    gap[first] = 0
    csum = np.cumsum(gap)
    first_idx = np.flatnonzero(first)
    sess_of_first = np.cumsum(first) - 1
    ts = starts[ev_sess] + csum - csum[first_idx[sess_of_first]]

    kind = step.copy()
    item = pick_item[ev_pick]
    value = np.full(n_ev, np.nan)
    value[kind == 3] = world.item_price[item[kind == 3]]
    if cfg.rate_share > 0:
        rated = rng.random(n_ev) < cfg.rate_share
        kind[rated] = _RATE
        raw = 3.4 + 1.1 * z[ev_pick[rated]] + rng.normal(0.0, 0.6, size=int(rated.sum()))
        value[rated] = np.clip(np.round(raw * 2.0) / 2.0, 0.5, 5.0)
    has_sid = rng.random(n_sess) < cfg.session_id_share
    device = np.where(rng.random(n_sess) < 0.85, world.user_device[users], rng.integers(0, 3, n_sess))
    return _Batch(
        ts=ts.astype(np.int64),
        user=users[ev_sess],
        item=item,
        kind=kind,
        session=first_session + ev_sess,
        has_sid=has_sid[ev_sess],
        value=value,
        device=device[ev_sess],
    )


def _to_dicts(batch: _Batch, seed: int, first_n: int, limit: int) -> Iterator[dict[str, Any]]:
    prefix = f"sim-{seed}-"
    sprefix = f"sim-{seed}-s"
    types = _TYPE_NAMES
    devices = _DEVICES
    n = first_n
    rows = zip(
        batch.ts[:limit].tolist(),
        batch.user[:limit].tolist(),
        batch.item[:limit].tolist(),
        batch.kind[:limit].tolist(),
        batch.session[:limit].tolist(),
        batch.has_sid[:limit].tolist(),
        batch.value[:limit].tolist(),
        batch.device[:limit].tolist(),
        strict=True,
    )
    for ts, user, item, kind, session, has_sid, value, device in rows:
        ev: dict[str, Any] = {
            "event_id": f"{prefix}{n}",
            "type": types[kind],
            "user_id": f"u{user}",
            "item_id": f"i{item}",
            "ts": ts,
        }
        if has_sid:
            ev["session_id"] = f"{sprefix}{session}"
        if value == value:  # not NaN
            ev["value"] = value
        ev["context"] = {"device": devices[device]}
        yield ev
        n += 1


def generate_events(cfg: SimulationConfig) -> Iterator[dict[str, Any]]:
    """Exactly `cfg.events` event dicts (the contract), in non-decreasing `ts` (epoch ms).

    `event_id` is `sim-{seed}-{n}` (n counts from 0 in stream order); `session_id` is
    `sim-{seed}-s{k}`, left out for `1 - session_id_share` of the sessions; `context`
    carries the device; `value` is the price on purchases and the rating on rate events.
    """
    world = _build_world(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    last_drift_ms = world.user_arrival_ms.copy()
    carry = _Batch.empty()
    emitted = 0
    session_base = 0
    window = max(world.span_ms * 5 // 4, 60_000)
    lo = cfg.start_ms
    while emitted < cfg.events:
        hi = lo + window
        starts, users = _epoch_sessions(world, rng, lo, hi)
        n_sess = len(starts)
        for s0 in range(0, n_sess, _SESSIONS_PER_BLOCK):
            s1 = min(s0 + _SESSIONS_PER_BLOCK, n_sess)
            block = _block_events(
                cfg, world, rng, starts[s0:s1], users[s0:s1], session_base + s0, last_drift_ms
            )
            # Everything later starts at or after `boundary`: emit what comes before it.
            boundary = int(starts[s1]) if s1 < n_sess else hi
            merged = carry.concat(block)
            order = np.argsort(merged.ts, kind="stable")
            cut = int(np.searchsorted(merged.ts[order], boundary, side="right"))
            ready = merged.take(order[:cut])
            carry = merged.take(order[cut:])
            limit = min(cut, cfg.events - emitted)
            yield from _to_dicts(ready, cfg.seed, emitted, limit)
            emitted += limit
            if emitted >= cfg.events:
                return
        session_base += n_sess
        lo = hi
        if n_sess == 0 and len(carry.ts) == 0 and lo - cfg.start_ms > 1000 * window:
            raise ConfigError("simulation produced no sessions: check users and rates")
    return


# --------------------------------------------------------------------------- files


def _open_write(path: str | Path) -> IO[str]:
    if str(path) == "-":
        return sys.stdout
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".gz":
        return gzip.open(p, "wt", encoding="utf-8")
    return p.open("w", encoding="utf-8")


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write one compact JSON object per line (`.gz` compresses, `-` is stdout); the count."""
    n = 0
    out = _open_write(path)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    try:
        buf: list[str] = []
        for row in rows:
            buf.append(dumps(row))
            n += 1
            if len(buf) >= 4096:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    return n


def simulate_to_files(
    cfg: SimulationConfig,
    events_path: str | Path,
    items_path: str | Path,
    progress: bool = True,
) -> SimulationCounts:
    """Write the catalog and the event stream as JSONL (a tqdm bar on stderr); the counts."""
    from tqdm import tqdm

    n_items = write_jsonl(items_path, generate_items(cfg))
    by_type: Counter[str] = Counter()
    users: set[str] = set()
    span: list[int] = []  # [first ts, last ts] once events were written

    def counted() -> Iterator[dict[str, Any]]:
        with tqdm(total=cfg.events, unit="ev", disable=not progress, mininterval=0.5) as bar:
            pending = 0
            for ev in generate_events(cfg):
                by_type[ev["type"]] += 1
                users.add(ev["user_id"])
                if not span:
                    span.extend((ev["ts"], ev["ts"]))
                span[1] = ev["ts"]
                yield ev
                pending += 1
                if pending == 8192:
                    bar.update(pending)
                    pending = 0
            bar.update(pending)

    n_events = write_jsonl(events_path, counted())
    return SimulationCounts(
        items=n_items,
        events=n_events,
        by_type=dict(by_type),
        users=len(users),
        first_ts=span[0] if span else None,
        last_ts=span[1] if span else None,
    )
