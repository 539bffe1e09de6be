"""In-memory prequential replay: freshrec and both baselines, side by side, on one event list.

The harness plays the worker with plain dicts standing in for what the worker reads from
Redis, under the same rules as `profiles/`:

- co-visitation: forward-decayed scores (half-life `covis_half_life_s`), pairs between an
  event's item and up to `covis_window` previous items of the user's current session
  (gap `session_gap_s`), weight = the event type's weight, `covis_cap` neighbours kept per
  item (trimmed from 2·cap);
- trending: forward-decayed, type-weighted popularity (half-life `trending_half_life_s`),
  the best `trending_n` items;
- per user: the `recent_n` last distinct items, the `history_n` last distinct items
  across sessions (`UserContext.history`), seen items, decayed category affinity
  (half-life `category_half_life_s`, each of the item's categories gains the type weight),
  and the session embedding (decayed weighted mean of the session's item vectors,
  half-life `session_half_life_s`).

For each event, in order: the user's `UserContext` and `CandidateInputs` are built, the
list freshrec serves is scored against the event (then the baselines' lists), the rating
model predicts `rate` values (prequential RMSE), then everything learns from the event.
`replay` returns the metrics; `python -m scoring.harness --movielens DIR` runs MovieLens.

>>> items = [Item(f"i{j}", f"thing {j % 3}", (f"c{j % 3}",)) for j in range(12)]
>>> events = [Interaction(f"u{j % 4}", f"i{(j * 7) % 12}", float(60 * j), "click") for j in range(80)]
>>> res = replay(events, items, k=5)
>>> sorted(res["metrics"]), res["metrics"]["freshrec"]["events"]
(['covisitation', 'freshrec', 'popularity'], 80)
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from scoring.baselines import CovisitationBaseline, PopularityBaseline
from scoring.breakdown import HitBreakdown
from scoring.content import content_vector
from scoring.decay import REBASE_HALF_LIVES, DecayedTop
from scoring.metrics import PrequentialMetrics
from scoring.recommender import Recommender, RecommenderConfig
from scoring.types import DEFAULT_TYPE_WEIGHTS, CandidateInputs, FloatArray, Interaction, Item, UserContext

__all__ = [
    "HarnessConfig",
    "Item",
    "events_from_dicts",
    "items_from_dicts",
    "load_movielens",
    "replay",
]


@dataclass(frozen=True, slots=True)
class HarnessConfig:
    """Decay rules of the in-memory stand-ins (defaults = the profiles' defaults)."""

    covis_half_life_s: float = 86400.0
    covis_window: int = 10
    covis_cap: int = 100
    covis_fetch: int = 50
    session_gap_s: float = 1800.0
    session_half_life_s: float = 600.0
    trending_half_life_s: float = 86400.0
    trending_n: int = 100
    category_half_life_s: float = 86400.0
    category_top_n: int = 8
    recent_n: int = 10
    #: `UserContext.recent_items` from the user's last session only (what the worker serves:
    #: `profiles.recommend.RecommendationStage.context`), not the user's last distinct items
    recent_from_session: bool = False
    #: distinct items kept in a user's cross-session history (`UserContext.history`)
    history_n: int = 50
    baseline_pop_half_life_s: float = 86400.0
    baseline_last_n: int = 10
    dim: int = 32
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    #: events of a user that count as cold start
    cold_events: int = 5


class _Covis:
    """Co-visitation stand-in: forward decay, one landmark, capped neighbour lists."""

    def __init__(self, half_life: float, cap: int) -> None:
        self.h = half_life
        self.cap = cap
        self.lm: float | None = None
        self.rows: dict[str, dict[str, float]] = {}
        self.sorted: dict[str, list[tuple[str, float]]] = {}

    def add(self, a: str, b: str, w: float, ts: float) -> None:
        if self.lm is None:
            self.lm = ts
        x = (ts - self.lm) / self.h
        if x > REBASE_HALF_LIVES:
            f = 2.0**-x
            for row in self.rows.values():
                for key in row:
                    row[key] *= f
            self.sorted.clear()
            self.lm = ts
            x = 0.0
        row = self.rows.setdefault(a, {})
        row[b] = row.get(b, 0.0) + w * 2.0**x
        if len(row) > 2 * self.cap:
            keep = heapq.nlargest(self.cap, row.items(), key=itemgetter(1))
            row.clear()
            row.update(keep)
        self.sorted.pop(a, None)

    def neighbors(self, a: str, k: int, at: float) -> list[tuple[str, float]]:
        s = self.sorted.get(a)
        if s is None:
            found = self.rows.get(a)
            if not found:
                return []
            s = self.sorted[a] = heapq.nlargest(k, found.items(), key=itemgetter(1))
        assert self.lm is not None
        f = 2.0 ** ((self.lm - at) / self.h)
        return [(b, v * f) for b, v in s[:k]]


class _User:
    __slots__ = (
        "cat_lm",
        "cats",
        "emb",
        "emb_lm",
        "emb_w",
        "history",
        "last",
        "n",
        "recent",
        "seen",
        "session_recent",
        "start",
    )

    def __init__(self) -> None:
        self.recent: list[str] = []
        self.history: list[str] = []
        self.session_recent: list[str] = []
        self.seen: set[str] = set()
        self.n = 0
        self.cats: dict[str, float] = {}
        self.cat_lm: float | None = None
        self.emb: FloatArray | None = None
        self.emb_w = 0.0
        self.emb_lm = 0.0
        self.start = -math.inf
        self.last = -math.inf


class _World:
    """The harness's stand-ins for Redis: users, co-visitation, trending."""

    def __init__(
        self, cfg: HarnessConfig, vectors: Mapping[str, FloatArray], cats: Mapping[str, tuple[str, ...]]
    ):
        self.cfg = cfg
        self.vectors = vectors
        self.cats = cats
        self.users: dict[str, _User] = {}
        self.covis = _Covis(cfg.covis_half_life_s, cfg.covis_cap)
        self.trending = DecayedTop(cfg.trending_half_life_s, n=cfg.trending_n)

    def context(self, user_id: str, ts: float) -> tuple[UserContext, CandidateInputs]:
        cfg = self.cfg
        u = self.users.get(user_id)
        trending = self.trending.top(at=ts)
        if u is None:
            return UserContext(user_id, ts), CandidateInputs({}, trending)
        emb = None
        if u.emb is not None and u.emb_w > 0.0:
            emb = u.emb / u.emb_w
        top: tuple[tuple[str, float], ...] = ()
        if u.cats:
            best = sorted(u.cats.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.category_top_n]
            top = tuple(best)
        recent = u.session_recent[: cfg.recent_n] if cfg.recent_from_session else u.recent
        covis = {a: self.covis.neighbors(a, cfg.covis_fetch, ts) for a in recent}
        ctx = UserContext(
            user_id,
            ts,
            recent_items=tuple(recent),
            session_embedding=emb,
            top_categories=top,
            seen_items=u.seen,  # read before this event is applied
            n_events=u.n,
            history=tuple(u.history),
        )
        return ctx, CandidateInputs(covis, trending)

    def apply(self, ev: Interaction) -> None:
        cfg = self.cfg
        w = float(cfg.type_weights.get(ev.type, 1.0))
        u = self.users.get(ev.user_id)
        if u is None:
            u = self.users[ev.user_id] = _User()
        ts, item = ev.ts, ev.item_id
        new_session = ts > u.last + cfg.session_gap_s
        if new_session:
            u.session_recent = []
            u.start = ts
            u.emb = None
            u.emb_w = 0.0
            u.emb_lm = ts
        else:
            for a in u.session_recent[: cfg.covis_window]:
                if a != item:
                    self.covis.add(a, item, w, ts)
                    self.covis.add(item, a, w, ts)
        u.last = max(u.last, ts)
        self.trending.add(item, w, ts)
        # recent items (user level) and session items
        for lst, n in (
            (u.recent, cfg.recent_n),
            (u.session_recent, cfg.covis_window),
            (u.history, cfg.history_n),
        ):
            if item in lst:
                lst.remove(item)
            lst.insert(0, item)
            del lst[n:]
        u.seen.add(item)
        u.n += 1
        # category affinity, forward decay
        cats = self.cats.get(item, ())
        if cats:
            if u.cat_lm is None:
                u.cat_lm = ts
            x = (ts - u.cat_lm) / cfg.category_half_life_s
            if x > REBASE_HALF_LIVES:
                for c in u.cats:
                    u.cats[c] *= 2.0**-x
                u.cat_lm, x = ts, 0.0
            inc = w * 2.0**x
            for c in cats:
                u.cats[c] = u.cats.get(c, 0.0) + inc
        # session embedding: decayed weighted mean (stored relative to the session's last event)
        v = self.vectors.get(item)
        if v is not None:
            if u.emb is None:
                u.emb = np.zeros_like(v)
            f = 2.0 ** (-(ts - u.emb_lm) / cfg.session_half_life_s) if ts > u.emb_lm else 1.0
            g = w * (2.0 ** (-(u.emb_lm - ts) / cfg.session_half_life_s) if ts < u.emb_lm else 1.0)
            u.emb = u.emb * f + g * v
            u.emb_w = u.emb_w * f + g
            u.emb_lm = max(u.emb_lm, ts)


def replay(
    events: Iterable[Interaction],
    items: Sequence[Item],
    k: int = 10,
    config: RecommenderConfig | None = None,
    harness: HarnessConfig | None = None,
    recommender: Recommender | None = None,
    progress_every: int = 0,
) -> dict[str, Any]:
    """Replay `events` prequentially through freshrec and both baselines; the metrics."""
    hc = harness or HarnessConfig()
    rec = recommender or Recommender(config or RecommenderConfig(dim=hc.dim, expected_items=len(items)))
    dim = rec.config.dim
    vectors: dict[str, FloatArray] = {}
    cats: dict[str, tuple[str, ...]] = {}
    for it in items:
        v = content_vector(it.title, it.categories, it.attributes, it.item_id, dim)
        vectors[it.item_id] = v
        cats[it.item_id] = it.categories
        rec.add_item(it.item_id, v, it.categories, it.created_at, dict(it.attributes))
    world = _World(hc, vectors, cats)
    pop = PopularityBaseline(hc.baseline_pop_half_life_s)
    cov = CovisitationBaseline(hc.baseline_last_n)
    names = ("freshrec", "popularity", "covisitation")
    metrics = {n: PrequentialMetrics(k) for n in names}
    cold = {n: PrequentialMetrics(k) for n in names}
    sq_err, n_rated = 0.0, 0
    t_rec = 0.0
    n_rec = 0
    in_candidates = 0
    t0 = time.perf_counter()
    zero = np.zeros((0, dim))
    breakdown = HitBreakdown(names, k, hc.session_gap_s)

    def vecs(ids: Sequence[str]) -> FloatArray:
        rows = [vectors[i] for i in ids if i in vectors]
        return np.array(rows) if rows else zero

    for n, ev in enumerate(events):
        ctx, inputs = world.context(ev.user_id, ev.ts)
        t1 = time.perf_counter()
        cs = rec.candidates(ctx, inputs)
        served = [r.item_id for r in rec.recommend(ctx, inputs, k, cs)]
        t_rec += time.perf_counter() - t1
        n_rec += 1
        seen = ctx.seen_items
        t_idx = rec.catalog.index.get(ev.item_id)
        if ev.item_id not in seen and t_idx is not None and bool((cs.idx == t_idx).any()):
            in_candidates += 1
        lists = {
            "freshrec": served,
            "popularity": pop.recommend(seen, k),
            "covisitation": cov.recommend(ev.user_id, seen, k, pop),
        }
        is_cold = ctx.n_events < hc.cold_events
        for name, lst in lists.items():
            metrics[name].update(lst, ev.item_id, vecs(lst) if n % 10 == 0 else None)
            if is_cold:
                cold[name].update(lst, ev.item_id)
        breakdown.update(ev, seen, lists)
        if ev.type == "rate" and ev.value is not None:
            sq_err += (rec.predict_rating(ev.user_id, ev.item_id) - ev.value) ** 2
            n_rated += 1
        rec.learn(ev, ctx, inputs, cs)
        w = float(hc.type_weights.get(ev.type, 1.0))
        pop.learn(ev.user_id, ev.item_id, w, ev.ts)
        cov.learn(ev.user_id, ev.item_id, w, ev.ts)
        world.apply(ev)
        if progress_every and (n + 1) % progress_every == 0:
            r = metrics["freshrec"].result(len(items))
            print(
                f"  {n + 1} events, {time.perf_counter() - t0:.0f} s, freshrec HR {r['hr']:.4f}",
                file=sys.stderr,
            )
    n_items = len(rec.catalog)
    knn_bytes = rec.knn.rows_nbytes()  # None: exact rows
    return {
        "k": k,
        "metrics": {name: m.result(n_items) for name, m in metrics.items()},
        "cold_start": {name: m.result(n_items) for name, m in cold.items()},
        "breakdown": breakdown.result(),
        "rmse": math.sqrt(sq_err / n_rated) if n_rated else None,
        "rated": n_rated,
        "candidate_recall": in_candidates / max(n_rec, 1),
        "us_per_user": 1e6 * t_rec / max(n_rec, 1),
        "seconds": time.perf_counter() - t0,
        "explore": {"pulls": rec.explorer.pulls, "rewards": rec.explorer.rewards},
        "knn": {"pairs": rec.knn.pairs.nnz(), "mb": None if knn_bytes is None else knn_bytes / 1e6},
    }


# ---- inputs ---------------------------------------------------------------------------


def load_movielens(directory: str | Path, limit: int | None = None) -> tuple[list[Interaction], list[Item]]:
    """MovieLens ratings as `rate` events in time order (ties: file order), and the movies
    (genres split on `|`, "(no genres listed)" dropped)."""
    d = Path(directory)
    items: list[Item] = []
    with (d / "movies.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            genres = tuple(g for g in row["genres"].split("|") if g and g != "(no genres listed)")
            items.append(Item(row["movieId"], row["title"], genres))
    events: list[Interaction] = []
    with (d / "ratings.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            events.append(
                Interaction(
                    row["userId"], row["movieId"], float(row["timestamp"]), "rate", float(row["rating"])
                )
            )
    events.sort(key=lambda e: e.ts)
    return (events[:limit] if limit else events), items


def events_from_dicts(rows: Iterable[Mapping[str, Any]]) -> list[Interaction]:
    """Contract-shaped event dicts (`ts` in epoch ms or ISO-8601) as interactions."""
    out = []
    for r in rows:
        out.append(
            Interaction(str(r["user_id"]), str(r["item_id"]), _seconds(r["ts"]), r["type"], r.get("value"))
        )
    return out


def items_from_dicts(rows: Iterable[Mapping[str, Any]]) -> list[Item]:
    """Contract-shaped item dicts as harness items."""
    out = []
    for r in rows:
        created = r.get("created_at")
        out.append(
            Item(
                str(r["item_id"]),
                r.get("title"),
                tuple(r.get("categories") or ()),
                dict(r.get("attributes") or {}),
                None if created is None else _seconds(created),
            )
        )
    return out


def _seconds(ts: Any) -> float:
    if isinstance(ts, int | float):
        return float(ts) / 1000.0
    from datetime import datetime

    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


#: Decay rules for MovieLens: years of sparse ratings, so long half-lives.
MOVIELENS_HARNESS = HarnessConfig(
    covis_half_life_s=math.inf,
    trending_half_life_s=30 * 86400.0,
    category_half_life_s=365 * 86400.0,
    baseline_pop_half_life_s=math.inf,
)
MOVIELENS_CONFIG = RecommenderConfig(pop_half_life_s=365 * 86400.0, freshness_half_life_s=365 * 86400.0)


#: What `freshrec evaluate` runs on MovieLens with the documented command (the worker's
#: defaults plus FRESHREC_COVIS_HALF_LIFE_S=1e10 FRESHREC_TRENDING_HALF_LIFE_S=1e10):
#: recent items from the user's last session, a 10-item history, category affinity with
#: the profiles' 1-day half-life, all-time trending, `Recommender()`'s default config
#: (`PIPELINE_MOVIELENS_CONFIG`).
PIPELINE_MOVIELENS_HARNESS = replace(
    MOVIELENS_HARNESS,
    trending_half_life_s=math.inf,
    category_half_life_s=86400.0,
    recent_from_session=True,
    history_n=10,
    trending_n=200,
)

PIPELINE_MOVIELENS_CONFIG = RecommenderConfig()


def _override(obj: Any, assignments: Sequence[str]) -> Any:
    """`obj` (a frozen dataclass) with `name=value` (or `nested.name=value`) assignments;
    values are parsed as JSON when they can be (numbers, true/false, null), else strings."""
    for a in assignments:
        name, _, raw = a.partition("=")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        head, _, rest = name.partition(".")
        if rest:
            obj = replace(obj, **{head: _override(getattr(obj, head), [f"{rest}={raw}"])})
        else:
            if not hasattr(obj, head):
                raise SystemExit(f"unknown setting {name!r} for {type(obj).__name__}")
            obj = replace(obj, **{head: value})
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scoring.harness", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--movielens", help="directory with ratings.csv and movies.csv")
    src.add_argument(
        "--jsonl",
        metavar="DIR",
        help="directory with events.jsonl and items.jsonl (`freshrec simulate --out DIR`)",
    )
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--no-explore", action="store_true")
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="emulate what `freshrec evaluate` feeds the recommender "
        "(PIPELINE_MOVIELENS_HARNESS, PIPELINE_MOVIELENS_CONFIG)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a RecommenderConfig field (nested: candidates.n_knn=300, rerank.mmr_lambda=0.9)",
    )
    p.add_argument(
        "--harness-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a HarnessConfig field",
    )
    args = p.parse_args(argv)
    if args.jsonl:
        d = Path(args.jsonl)
        with (d / "events.jsonl").open(encoding="utf-8") as fh:
            events = events_from_dicts(json.loads(line) for line in fh if line.strip())[: args.limit]
        with (d / "items.jsonl").open(encoding="utf-8") as fh:
            items = items_from_dicts(json.loads(line) for line in fh if line.strip())
        base, hc0 = RecommenderConfig(), HarnessConfig()  # the profiles' defaults
    else:
        events, items = load_movielens(args.movielens, args.limit)
        base = PIPELINE_MOVIELENS_CONFIG if args.pipeline else MOVIELENS_CONFIG
        hc0 = PIPELINE_MOVIELENS_HARNESS if args.pipeline else MOVIELENS_HARNESS
    cfg = _override(replace(base, expected_items=len(items), explore=not args.no_explore), args.set)
    hc = _override(hc0, args.harness_set)
    res = replay(events, items, args.k, cfg, hc, progress_every=10_000)
    res["settings"] = {"recommender": args.set, "harness": args.harness_set, "pipeline": args.pipeline}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
