"""The recommender: candidates -> features -> pairwise ranker -> re-rank -> exploration slot.

Predict first, then learn. For each event of user u the caller (the worker, or
`scoring.harness`) does:

    cs = rec.candidates(ctx, inputs)          # u's context *before* the event
    served = rec.recommend(ctx, inputs, k, cs)  # (the list the event is scored against)
    rec.learn(event, ctx, inputs, cs, position=("events:3", offset))

`learn` updates, in order: the exploration bandit (was the explored item hit?), the rating
model (`rate` events), the pairwise ranker (the event's item against negatives sampled
uniformly from the candidates, when it was a candidate; a `rate` below `rating_strong`
counts `rating_weak_weight`), the item-kNN co-occurrence counts (the item against the
user's history before it), the implicit MF (the item against sampled recent-traffic
negatives) and the item popularity. `position` makes learning idempotent across restarts: an event at or below
the last offset learned for its partition is skipped (returns False), and `state()` /
`from_state()` carry those offsets with the models.

Features (one row per candidate, computed with numpy over the whole candidate set):
`knn_rel` = item-kNN score / max, `knn_log` = log(1 + kNN score), `knn_rank` =
1/log2(2 + rank by kNN score) (0 when not a kNN candidate),
`covis_log` = log(1 + covis score), `covis_rel` = covis / max covis, `session_sim` =
cos(session embedding, item), `category_aff` = the user's affinity to the item's categories
(share of the user's total), `popularity` = log(1 + pop) / log(1 + max pop), `trending` =
trend / max trend, `freshness` = 2^(−age/30 d), `mf` = implicit MF logit, `cold` =
1/(1 + events of the user), `pop_x_cold`, and one 0/1 indicator per source.

>>> import numpy as np
>>> from scoring.types import CandidateInputs, Interaction, UserContext
>>> rec = Recommender(RecommenderConfig(dim=2, explore=False))
>>> for i, v in [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 0.2])]:
...     rec.add_item(i, np.array(v), ("x",))
>>> ctx = UserContext("u1", ts=10.0, recent_items=("a",), seen_items=frozenset({"a"}), n_events=1)
>>> inputs = CandidateInputs({"a": [("c", 3.0), ("b", 1.0)]}, [("b", 5.0)])
>>> [(r.item_id, r.source) for r in rec.recommend(ctx, inputs, k=2)]
[('c', 'covis'), ('b', 'covis')]
>>> rec.learn(Interaction("u1", "c", 11.0, "click"), ctx, inputs, position=("events:0", 7))
True
>>> rec.learn(Interaction("u1", "c", 11.0, "click"), ctx, inputs, position=("events:0", 7))
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from scoring.candidates import CandidateConfig, CandidateSet, generate
from scoring.catalog import ItemCatalog
from scoring.explore import SourceExplorer
from scoring.knn import CoOccurrence
from scoring.models import ImplicitMF, PairwiseRanker, RatingModel
from scoring.rerank import RerankConfig, RuleSet, select
from scoring.types import (
    DEFAULT_TYPE_WEIGHTS,
    SOURCES,
    CandidateInputs,
    FloatArray,
    Interaction,
    RecItem,
    UserContext,
)

__all__ = ["FEATURES", "Recommender", "RecommenderConfig"]

FEATURES: Final[tuple[str, ...]] = (
    "knn_rel",
    "knn_log",
    "knn_rank",
    "covis_log",
    "covis_rel",
    "session_sim",
    "category_aff",
    "popularity",
    "trending",
    "freshness",
    "mf",
    "cold",
    "pop_x_cold",
    *(f"src_{s}" for s in SOURCES),
)
_N_BASE: Final = 13
#: ranker weights used before it has learned anything (a sensible blend)
_PRIOR: Final[dict[str, float]] = {
    "knn_rel": 2.0,
    "knn_rank": 1.0,
    "covis_rel": 1.0,
    "session_sim": 1.0,
    "category_aff": 1.0,
    "popularity": 2.0,
    "trending": 1.0,
}
STATE_FORMAT: Final = 2


@dataclass(frozen=True, slots=True)
class RecommenderConfig:
    """Hyperparameters of the whole recommender (frozen; stored in checkpoints)."""

    dim: int = 32
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    pop_half_life_s: float = 7 * 86400.0
    freshness_half_life_s: float = 30 * 86400.0
    expected_items: int = 0
    mf_factors: int = 16
    mf_lr: float = 0.05
    mf_l2: float = 0.001
    mf_negatives: int = 3
    rating_factors: int = 10
    rating_bias_lr: float = 0.01
    rating_latent_lr: float = 0.02
    rating_l2_latent: float = 0.1
    ranker_lr: float = 0.05
    ranker_l2: float = 1e-4
    ranker_negatives: int = 16
    #: share of the ranker's negatives taken from the best-scored candidates (rest uniform)
    ranker_hard_share: float = 0.0
    #: item-kNN (scoring.knn): pairs within the last `knn_window` history items (weight
    #: `knn_gap_decay^p`), sim = C(a,b)/(C(a)^α C(b)^(1−α)), scores summed over the last
    #: `knn_recent` items with weight `knn_recency_decay^p`. Tuned on MovieLens-small (the
    #: kNN list alone, prequential HR@10: 0.106 with 10 / 0.5 / 1.0 / 10 / 0.95 and
    #: symmetric pairs -> 0.129; see scoring/README.md)
    knn_window: int = 20
    knn_alpha: float = 0.7
    knn_gap_decay: float = 0.9
    knn_recent: int = 15
    knn_recency_decay: float = 0.9
    #: weight of the reverse pair (b, a) when b came after a (1 = symmetric counts)
    knn_backward: float = 0.5
    #: distinct items of each user's history the recommender remembers itself (in the
    #: worker's memory, with the models; most recent first) for the item-kNN, beyond the
    #: `UserContext.history` its caller serves (10 items in the Redis profile); 0 = only the
    #: caller's. At most `knn_history_users` users are remembered (least recently active
    #: dropped: they fall back to the caller's history)
    knn_history: int = 30
    knn_history_users: int = 1_000_000
    #: positive weight of a `rate` event for the ranker: `rating_pos_weight(value)` =
    #: 1 at or above `rating_strong`, `rating_weak_weight` below it
    rating_strong: float = 3.5
    rating_weak_weight: float = 0.5
    explore: bool = True
    epsilon: float = 0.1
    negative_buffer: int = 10_000
    seed: int = 0


class Recommender:
    """Candidates, online models, re-ranking and exploration for every user (see module doc)."""

    def __init__(self, config: RecommenderConfig | None = None) -> None:
        cfg = self.config = config or RecommenderConfig()
        self.catalog = ItemCatalog(cfg.dim, cfg.pop_half_life_s, expected_items=cfg.expected_items)
        self.mf = ImplicitMF(cfg.mf_factors, lr=cfg.mf_lr, l2=cfg.mf_l2, seed=cfg.seed)
        self.rating = RatingModel(
            cfg.rating_factors,
            bias_lr=cfg.rating_bias_lr,
            latent_lr=cfg.rating_latent_lr,
            l2_latent=cfg.rating_l2_latent,
            seed=cfg.seed,
        )
        self.ranker = PairwiseRanker(
            FEATURES, lr=cfg.ranker_lr, l2=cfg.ranker_l2, prior=[_PRIOR.get(f, 0.0) for f in FEATURES]
        )
        self.knn = CoOccurrence(
            cfg.knn_window,
            cfg.knn_alpha,
            cfg.knn_gap_decay,
            cfg.knn_recent,
            cfg.knn_recency_decay,
            cfg.knn_backward,
        )
        #: user -> dense item indices of their last `knn_history` distinct items, most recent first
        self.histories: dict[str, NDArray[np.int64]] = {}
        self.explorer = SourceExplorer(cfg.epsilon, seed=cfg.seed)
        self.rules = RuleSet(cfg.rerank.rules)
        self.offsets: dict[str, int] = {}
        self.events_learned = 0
        self._rng = np.random.default_rng(cfg.seed)
        self._recent = np.zeros(cfg.negative_buffer, np.int64)
        self._recent_n = 0

    # ---- catalog ----------------------------------------------------------------------

    def add_item(
        self,
        item_id: str,
        vector: FloatArray | None,
        categories: tuple[str, ...] | list[str] = (),
        created_at: float | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Register or update a catalog item (a new item is a candidate at once, through
        content similarity and category lists)."""
        self.catalog.add_item(item_id, vector, tuple(categories), created_at, attributes)

    # ---- scoring ----------------------------------------------------------------------

    def candidates(self, ctx: UserContext, inputs: CandidateInputs) -> CandidateSet:
        """`ctx`'s candidates with their feature matrix and ranker logits."""
        cat = self.catalog
        knn = None
        hist = self.history(ctx)
        if hist.shape[0]:
            dense = self.knn.scores(hist, len(cat))
            if ctx.seen_items:
                dense[cat.indices(ctx.seen_items)] = 0.0
            top = np.flatnonzero(dense > 0.0)
            m = self.config.candidates.n_knn
            if top.shape[0] > m:
                kth = np.partition(dense[top], top.shape[0] - m)[top.shape[0] - m]
                top = top[dense[top] >= kth]
            top = top[np.lexsort((top, -dense[top]))][:m]
            knn = (top, dense[top])
        cs = generate(ctx, inputs, cat, self.config.candidates, knn)
        cs.features = self.features(ctx, cs)
        cs.scores = self.ranker.score(cs.features)
        return cs

    def features(self, ctx: UserContext, cs: CandidateSet) -> FloatArray:
        """The candidate feature matrix (rows = candidates, columns = `FEATURES`)."""
        cat = self.catalog
        idx = cs.idx
        n = idx.shape[0]
        x = np.empty((n, len(FEATURES)))
        kv = cs.knn if cs.knn is not None else np.zeros(n)
        kmax = float(kv.max()) if n else 0.0
        x[:, 0] = kv / kmax if kmax > 0.0 else 0.0
        x[:, 1] = np.log1p(kv)
        # 1/log2(rank + 2) by kNN score (0 for items the kNN source did not propose)
        rank = np.empty(n)
        rank[np.argsort(-kv, kind="stable")] = np.arange(n)
        x[:, 2] = np.where(kv > 0.0, 1.0 / np.log2(rank + 2.0), 0.0)
        covis = cs.covis
        x[:, 3] = np.log1p(covis)
        cmax = float(covis.max()) if n else 0.0
        x[:, 4] = covis / cmax if cmax > 0.0 else 0.0
        q = ctx.session_embedding
        if q is None and ctx.recent_items:
            ridx = cat.indices(ctx.recent_items[: self.config.candidates.recent_n])
            q = cat.vectors[ridx].mean(axis=0) if ridx.shape[0] else None
        qn = float(np.linalg.norm(q)) if q is not None else 0.0
        x[:, 5] = cat.vectors[idx] @ (q / qn) if q is not None and qn > 0.0 else 0.0
        if ctx.top_categories:
            aff = np.zeros(len(cat.category_ids) + 1)
            total = 0.0
            for c, s in ctx.top_categories:
                cid = cat.category_ids.get(c)
                if cid is not None and s > 0.0:
                    aff[cid] = s
                    total += s
            x[:, 6] = aff[cat.cat_matrix[idx]].sum(axis=1) / total if total > 0.0 else 0.0
        else:
            x[:, 6] = 0.0
        pop = cat.popularity(idx, ctx.ts)
        pmax = cat.max_popularity(ctx.ts)
        if pmax > 0.0:
            x[:, 7] = np.log1p(pop) / math.log1p(pmax)
        else:
            x[:, 7] = 0.0
        trend = cs.trending
        tmax = float(trend.max()) if n else 0.0
        x[:, 8] = trend / tmax if tmax > 0.0 else 0.0
        age = np.maximum(ctx.ts - cat.first_ts[idx], 0.0)
        x[:, 9] = np.nan_to_num(np.exp2(-age / self.config.freshness_half_life_s), nan=0.0)
        x[:, 10] = np.clip(self.mf.scores(ctx.user_id, idx), -8.0, 8.0)
        cold = 1.0 / (1.0 + ctx.n_events)
        x[:, 11] = cold
        x[:, 12] = x[:, 7] * cold
        x[:, _N_BASE:] = cs.source_mask
        return x

    def recommend(
        self, ctx: UserContext, inputs: CandidateInputs, k: int, candidates: CandidateSet | None = None
    ) -> list[RecItem]:
        """The top-`k` list for `ctx` (exclusions, rules, MMR, category cap, exploration)."""
        cs = candidates if candidates is not None else self.candidates(ctx, inputs)
        assert cs.scores is not None
        n = len(cs)
        if n == 0 or k <= 0:
            return []
        cat = self.catalog
        ids = cat.ids
        idx = cs.idx
        rel = 1.0 / (1.0 + np.exp(-np.clip(cs.scores, -30.0, 30.0)))
        rr = self.config.rerank
        allowed, rel = self.rules.apply(cat, idx, rel)
        if rr.exclude_seen and ctx.seen_items:
            seen = ctx.seen_items
            allowed = allowed & np.fromiter((ids[i] not in seen for i in idx.tolist()), bool, count=n)
        explore = self.config.explore and k >= 2
        main_k = k - 1 if explore else k
        primary = cat.cat_matrix[idx, 0]
        pos = select(
            rel,
            cat.vectors[idx].astype(np.float64),
            primary,
            allowed,
            main_k,
            rr.mmr_lambda,
            rr.max_per_category,
            rr.mmr_pool,
        )
        out = [RecItem(ids[idx[p]], float(rel[p]), SOURCES[cs.source[p]]) for p in pos.tolist()]
        if explore:
            free = allowed.copy()
            free[pos] = False
            if rr.max_per_category is not None:
                used, counts = np.unique(primary[pos], return_counts=True)
                for c, m in zip(used.tolist(), counts.tolist(), strict=True):
                    if c >= 0 and m >= rr.max_per_category:
                        free &= primary != c
            offers: dict[str, str] = {}
            where: dict[str, int] = {}
            for s, name in enumerate(SOURCES):
                col = free & (cs.source_mask[:, s] > 0.0)
                if col.any():
                    p = int(np.flatnonzero(col)[np.argmax(rel[col])])
                    offers[name] = ids[idx[p]]
                    where[name] = p
            if offers:
                arm, item, prop = self.explorer.choose(ctx.user_id, offers)
                out.append(RecItem(item, float(rel[where[arm]]), arm, prop))
        return out

    def predict_rating(self, user_id: str, item_id: str) -> float:
        """The rating model's prediction (call before `learn` for a prequential error)."""
        return self.rating.predict(user_id, item_id)

    # ---- learning ---------------------------------------------------------------------

    def learn(
        self,
        event: Interaction,
        ctx: UserContext,
        inputs: CandidateInputs,
        candidates: CandidateSet | None = None,
        position: tuple[str, int] | None = None,
    ) -> bool:
        """Learn from `event` given the user's context before it; False if `position`
        (partition key, offset) was already learned."""
        if position is not None:
            key, off = position
            if off <= self.offsets.get(key, -1):
                return False
            self.offsets[key] = off
        cfg = self.config
        user, item = event.user_id, event.item_id
        weight = float(cfg.type_weights.get(event.type, 1.0))
        cat = self.catalog
        t = cat.ensure(item)
        self.explorer.reward(user, item)
        if event.type == "rate" and event.value is not None:
            self.rating.learn(user, item, float(event.value))
        cs = candidates if candidates is not None else self.candidates(ctx, inputs)
        assert cs.features is not None and cs.scores is not None
        hit = np.flatnonzero(cs.idx == t)
        if hit.shape[0]:
            pw = 1.0
            if event.type == "rate" and event.value is not None and event.value < cfg.rating_strong:
                pw = cfg.rating_weak_weight
            self._learn_ranker(cs, int(hit[0]), ctx, pw)
        hist = self.history(ctx, check=False)  # ctx may predate earlier events of its batch
        hist = hist[hist != t]
        self.knn.add(t, hist)
        if cfg.knn_history > 0:
            self.histories.pop(user, None)  # re-inserted last: dict order = least recently active first
            self.histories[user] = np.concatenate((np.array([t], np.int64), hist[: cfg.knn_history - 1]))
            if len(self.histories) > cfg.knn_history_users:
                del self.histories[next(iter(self.histories))]
        negs = self._sample_negatives(cfg.mf_negatives, t)
        self.mf.learn(user, item, t, weight, [(cat.ids[j], j) for j in negs])
        cat.add_popularity(t, weight, event.ts)
        self._recent[self._recent_n % self._recent.shape[0]] = t
        self._recent_n += 1
        self.events_learned += 1
        return True

    def history(self, ctx: UserContext, check: bool = True) -> NDArray[np.int64]:
        """The user's history for the item-kNN (dense indices, most recent first): what the
        recommender remembers itself (`knn_history`), else the caller's `ctx.long_history`.

        With `check`, the remembered history must hold every item of the caller's (the
        profile's last items, authoritative): when it does not — events this recommender did
        not learn, e.g. handled by another worker before a rebalance — it is rebuilt as the
        caller's history followed by the remembered items not in it."""
        own = self.histories.get(ctx.user_id)
        if own is None:
            return self.catalog.indices(ctx.long_history)
        if check and ctx.long_history:
            given = self.catalog.indices(ctx.long_history)
            if not np.isin(given, own).all():
                own = np.concatenate((given, own[~np.isin(own, given)]))[: self.config.knn_history]
                self.histories[ctx.user_id] = own
        return own

    def forget(self, user_id: str) -> None:
        """Drop what the recommender remembers of one user (a `forget_user` event)."""
        self.histories.pop(user_id, None)
        self.explorer.pending.pop(user_id, None)

    def _learn_ranker(self, cs: CandidateSet, pos: int, ctx: UserContext, weight: float) -> None:
        assert cs.features is not None and cs.scores is not None
        n = len(cs)
        m = self.config.ranker_negatives
        if n < 2 or m <= 0:
            return
        ids = self.catalog.ids
        seen = ctx.seen_items
        ok = (
            np.fromiter((ids[i] not in seen for i in cs.idx.tolist()), bool, count=n)
            if seen
            else np.ones(n, bool)
        )
        ok[pos] = False
        pool = np.flatnonzero(ok)
        if pool.shape[0] == 0:
            return
        n_hard = round(m * self.config.ranker_hard_share)
        hard = pool[np.argsort(-cs.scores[pool], kind="stable")[:n_hard]]
        rand = self._rng.choice(pool, size=min(m - hard.shape[0], pool.shape[0]), replace=False)
        negs = np.concatenate([hard, rand])
        self.ranker.learn(cs.features[pos], cs.features[negs], weight)

    def _sample_negatives(self, m: int, exclude: int) -> list[int]:
        n = min(self._recent_n, self._recent.shape[0])
        if n == 0 or m <= 0:
            return []
        picks = self._recent[self._rng.integers(0, n, size=m)]
        return [int(j) for j in picks if j != exclude]

    # ---- checkpoints ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to resume (picklable): config, offsets learned, models."""
        return {
            "format": STATE_FORMAT,
            "config": self.config,
            "offsets": dict(self.offsets),
            "events_learned": self.events_learned,
            "catalog": self.catalog,
            "mf": self.mf,
            "rating": self.rating,
            "ranker": self.ranker,
            "knn": self.knn,
            "histories": self.histories,
            "explorer": self.explorer,
            "rng": self._rng,
            "recent": (self._recent, self._recent_n),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Recommender:
        """The recommender `state()` described (use a deep copy, e.g. through pickle)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown recommender state format {state.get('format')!r}")
        rec = cls(state["config"])
        rec.offsets = dict(state["offsets"])
        rec.events_learned = state["events_learned"]
        rec.catalog = state["catalog"]
        rec.mf = state["mf"]
        rec.rating = state["rating"]
        rec.ranker = state["ranker"]
        rec.knn = state["knn"]
        rec.histories = dict(state.get("histories", {}))
        rec.explorer = state["explorer"]
        rec._rng = state["rng"]
        rec._recent, rec._recent_n = state["recent"]
        return rec
