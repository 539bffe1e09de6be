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

from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from scoring.active_users import ActiveUsers
from scoring.bounded_rows import SLOT_BYTES, BoundedRows
from scoring.candidates import CandidateConfig, CandidateSet, generate
from scoring.catalog import ItemCatalog
from scoring.explore import SourceExplorer
from scoring.knn import CoOccurrence, SparseRows
from scoring.models import ImplicitMF, PairwiseRanker, RatingModel
from scoring.repeat import RepeatConfig, RepeatModel, merge_lists
from scoring.rerank import RerankConfig, RuleSet, select
from scoring.rowdot import gathered_rowdot
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
#: 3: the implicit MF on numpy matrices (format 2 pickled River's FunkMF); 4: the kNN rows
#: carry their neighbour cap (`knn_max_neighbours`); 5: bounded kNN rows in numpy block
#: pools (`scoring.bounded_rows`; one pool, then size classes: both are read)
STATE_FORMAT: Final = 5

IntArray = NDArray[np.int64]


def _seg_max(values: FloatArray, offsets: IntArray, users: IntArray) -> FloatArray:
    """Each row's divisor: the maximum of its user's `values` (segments of `offsets`), or 1
    where that maximum is not positive (the values are then all 0)."""
    m = np.zeros(offsets.shape[0] - 1)
    full = offsets[1:] > offsets[:-1]
    if values.shape[0]:
        m[full] = np.maximum.reduceat(values, offsets[:-1][full])
    out: FloatArray = np.where(m > 0.0, m, 1.0)[users]
    return out


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
    #: neighbours each item's kNN row keeps: a row that reaches twice as many keeps its
    #: strongest `knn_max_neighbours` (with `knn_memory_mb`, bounds the worker's memory
    #: however long the stream; 0: every pair, growing with the stream)
    knn_max_neighbours: int = 300
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
    #: re-engagement (scoring.repeat): the user's recent items the exclusion policy
    #: (`rerank.exclude_types`) allows, merged into the list by calibrated probability
    repeat: RepeatConfig = field(default_factory=RepeatConfig)
    explore: bool = True
    epsilon: float = 0.1
    negative_buffer: int = 10_000
    seed: int = 0
    #: MB (10^6 bytes, 12 a pair) the kNN rows' blocks above the smallest (15 pairs) may
    #: take in all: rows grow into larger blocks while it lasts, then keep the largest half
    #: of their block (`scoring.bounded_rows`; 0: no limit but `knn_max_neighbours`). Last
    #: field: a checkpoint's config from before it reads with the default
    knn_memory_mb: float = 64.0

    @property
    def knn_budget_slots(self) -> int:
        """`knn_memory_mb` in 12-byte slots."""
        return int(self.knn_memory_mb * 1e6) // SLOT_BYTES

    @classmethod
    def completed(cls, config: RecommenderConfig) -> RecommenderConfig:
        """`config` with the defaults of the fields it lacks (a checkpoint's config, pickled
        before they existed, unpickles without them).

        >>> RecommenderConfig.completed(RecommenderConfig(dim=3)).dim
        3
        """
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


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
            cfg.knn_max_neighbours,
            cfg.knn_budget_slots,
        )
        #: user -> dense item indices of their last `knn_history` distinct items, most recent first
        self.histories: dict[str, NDArray[np.int64]] = {}
        self.explorer = SourceExplorer(cfg.epsilon, seed=cfg.seed)
        #: the users whose state the models keep (`limit_users`; least recently active dropped)
        self.active = ActiveUsers()
        self.rules = RuleSet(cfg.rerank.rules)
        self.repeat = RepeatModel(cfg.repeat, cfg.rerank.exclude_types if cfg.rerank.exclude_seen else None)
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
        return self.candidate_batch([ctx], inputs.covisitation, inputs.trending)

    def candidate_batch(
        self,
        contexts: Sequence[UserContext],
        covisitation: Mapping[str, Sequence[tuple[str, float]]],
        trending: Sequence[tuple[str, float]],
        *,
        score: bool = True,
    ) -> CandidateSet:
        """The candidates of several users at once (user u's are `.user(u)`), with their
        features and ranker logits (`score=False`: without, e.g. for `learn_batch`, which
        computes the few rows it needs). `covisitation` must hold the neighbours of every
        user's recent items (a user's inputs are `CandidateInputs({i: covisitation[i] for i
        in ctx.recent_items if i in covisitation}, trending)`)."""
        cat = self.catalog
        empty = np.zeros(0, np.int64)
        seen = [cat.indices(c.seen_items) if c.seen_items else empty for c in contexts]
        histories = [self.history(c) for c in contexts]
        knn = self.knn.top_many(histories, seen, len(cat), self.config.candidates.n_knn)
        cs = generate(contexts, covisitation, trending, cat, self.config.candidates, knn, seen)
        if score:
            cs.features = self.features(contexts, cs)
            cs.scores = self.ranker.score(cs.features)
        return cs

    def features(
        self, contexts: Sequence[UserContext], cs: CandidateSet, rows: IntArray | None = None
    ) -> FloatArray:
        """The candidate feature matrix (rows = candidates, columns = `FEATURES`) of a set
        of `contexts`' candidates, or of its rows `rows` only (per-user aggregates such as
        the kNN rank are still over each user's whole set). Columns are computed over all
        rows at once; the three that take a per-user vector (session similarity, category
        affinity, MF) user by user, with the per-user expressions."""
        cat = self.catalog
        n_users = len(contexts)
        if rows is None:
            idx, usr = cs.idx, cs.row_user
            pos = np.arange(len(cs)) - cs.offsets[usr]
        else:
            idx, usr = cs.idx[rows], cs.row_user[rows]
            pos = rows - cs.offsets[usr]
        n = idx.shape[0]
        x = np.empty((n, len(FEATURES)), order="F")  # column writes stay contiguous
        kv = cs.knn if rows is None else cs.knn[rows]
        x[:, 0] = kv / _seg_max(cs.knn, cs.offsets, usr)
        x[:, 1] = np.log1p(kv)
        # 1/log2(2 + rank by kNN score) (0 for items the kNN source did not propose): the
        # kNN candidates come first in each user's set, best first, so rank = position
        x[:, 2] = np.where(kv > 0.0, 1.0 / np.log2(pos + 2.0), 0.0)
        covis = cs.covis if rows is None else cs.covis[rows]
        x[:, 3] = np.log1p(covis)
        x[:, 4] = covis / _seg_max(cs.covis, cs.offsets, usr)
        trend = cs.trending if rows is None else cs.trending[rows]
        x[:, 8] = trend / _seg_max(cs.trending, cs.offsets, usr)
        # per-user values
        ts = np.array([c.ts for c in contexts])
        pop_f = np.zeros(n_users)
        pop_den = np.ones(n_users)
        factor = cat.popularity_factors(ts)
        pmax = cat.pop_max_raw * factor  # `max_popularity` of every user
        some = pmax > 0.0
        pop_f[some] = factor[some]
        pop_den[some] = np.log1p(pmax[some])
        x[:, 7] = np.log1p(cat.pop_raw[idx] * pop_f[usr]) / pop_den[usr]
        age = np.maximum(ts[usr] - cat.first_ts[idx], 0.0)
        x[:, 9] = np.nan_to_num(np.exp2(-age / self.config.freshness_half_life_s), nan=0.0)
        x[:, 11] = np.array([1.0 / (1.0 + c.n_events) for c in contexts])[usr]
        x[:, 12] = x[:, 7] * x[:, 11]
        x[:, _N_BASE:] = cs.source_mask if rows is None else cs.source_mask[rows]
        # session similarity and category affinity: each user's query vector and category
        # weights gathered into per-user rows (user by user), then applied to every row at once
        recent_n = self.config.candidates.recent_n
        queries = np.zeros((n_users, cat.vectors.shape[1]))
        affinity = np.zeros((n_users, len(cat.category_ids) + 1))  # the last column: no category
        totals = np.ones(n_users)
        for u, ctx in enumerate(contexts):
            q = ctx.session_embedding
            if q is None and ctx.recent_items:
                ridx = cat.indices(ctx.recent_items[:recent_n])
                q = cat.vectors[ridx].mean(axis=0) if ridx.shape[0] else None
            qn = float(np.linalg.norm(q)) if q is not None else 0.0
            if q is not None and qn > 0.0:
                queries[u] = q / qn
            total = 0.0
            for c, sc in ctx.top_categories:
                cid = cat.category_ids.get(c)
                if cid is not None and sc > 0.0:
                    affinity[u, cid] = sc
                    total += sc
            if total > 0.0:
                totals[u] = total
        x[:, 5] = gathered_rowdot(cat.vectors, idx, queries, usr)
        x[:, 6] = affinity[usr[:, None], cat.cat_matrix[idx]].sum(axis=1) / totals[usr]
        # the MF logit, user by user
        if rows is None:
            perm = None
            seg = cs.offsets.tolist()
            idx_s = idx
        else:
            perm = np.argsort(usr, kind="stable")
            seg = np.searchsorted(usr[perm], np.arange(n_users + 1)).tolist()
            idx_s = idx[perm]
        mf = self.mf.scores_many([c.user_id for c in contexts], idx_s, np.asarray(seg, np.int64))
        if perm is None:
            x[:, 10] = mf
        else:
            x[perm, 10] = mf
        x[:, 10] = np.clip(x[:, 10], -8.0, 8.0)
        return x

    def recommend(
        self, ctx: UserContext, inputs: CandidateInputs, k: int, candidates: CandidateSet | None = None
    ) -> list[RecItem]:
        """The top-`k` list for `ctx` (exclusions, rules, MMR, category cap, exploration)."""
        cs = candidates if candidates is not None else self.candidates(ctx, inputs)
        return self.recommend_batch([ctx], cs, k)[0]

    def recommend_batch(
        self, contexts: Sequence[UserContext], cs: CandidateSet, k: int
    ) -> list[list[RecItem]]:
        """`recommend` for every user of a `candidate_batch` (one list per context)."""
        assert cs.scores is not None
        n_users = len(contexts)
        out: list[list[RecItem]] = [[] for _ in range(n_users)]
        if len(cs) == 0 or k <= 0:
            return out
        cat = self.catalog
        ids = cat.ids
        idx = cs.idx
        rel = 1.0 / (1.0 + np.exp(-np.clip(cs.scores, -30.0, 30.0)))
        rr = self.config.rerank
        allowed, rel = self.rules.apply(cat, idx, rel)
        if rr.exclude_seen:
            allowed = allowed & ~cs.seen
        explore = self.config.explore and k >= 2
        main_k = k - 1 if explore else k
        # the allowed candidates by user, then relevance (ties: candidate order)
        ok = np.flatnonzero(allowed)
        ranked = ok[np.lexsort((-rel[ok], cs.row_user[ok]))]
        owner = cs.row_user[ranked]
        first = np.searchsorted(owner, np.arange(n_users + 1))
        if rr.mmr_lambda >= 1.0 and rr.max_per_category is None:
            place = np.arange(ranked.shape[0]) - first[owner]
            top = ranked[place < main_k]
            chosen = np.split(top, np.searchsorted(cs.row_user[top], np.arange(1, n_users)))
        else:
            primary = cat.cat_matrix[idx, 0]
            vectors = cat.vectors[idx].astype(np.float64)
            chosen = []
            for u in range(n_users):
                a, b = int(cs.offsets[u]), int(cs.offsets[u + 1])
                pos = select(rel[a:b], vectors[a:b], primary[a:b], allowed[a:b], main_k,
                             rr.mmr_lambda, rr.max_per_category, rr.mmr_pool)  # fmt: skip
                chosen.append(pos + a)
        rel_l = rel.tolist()
        idx_l = idx.tolist()
        src_l = cs.source.tolist()
        for u in range(n_users):
            out[u] = [RecItem(ids[idx_l[p]], rel_l[p], SOURCES[src_l[p]]) for p in chosen[u].tolist()]
        if self.repeat.exclude_types is not None:
            out = merge_lists(self.repeat, [c.user_id for c in contexts], out,
                              [idx[c].tolist() for c in chosen], ids, main_k, self._rule_mask)  # fmt: skip
        if not explore:
            return out
        free = allowed.copy()
        for c in chosen:
            free[c] = False
        if rr.max_per_category is not None:
            primary = cat.cat_matrix[idx, 0]
            for u in range(n_users):
                used, counts = np.unique(primary[chosen[u]], return_counts=True)
                a, b = int(cs.offsets[u]), int(cs.offsets[u + 1])
                for c, m in zip(used.tolist(), counts.tolist(), strict=True):
                    if c >= 0 and m >= rr.max_per_category:
                        free[a:b] &= primary[a:b] != c
        # each source's best free candidate per user (the first in `ranked` order)
        best: list[dict[int, int]] = []
        for s in range(len(SOURCES)):
            pick = ranked[free[ranked] & (cs.source_mask[ranked, s] > 0)]
            who = cs.row_user[pick]
            lead = np.ones(pick.shape[0], bool)
            lead[1:] = who[1:] != who[:-1]
            best.append(dict(zip(who[lead].tolist(), pick[lead].tolist(), strict=True)))
        for u, ctx in enumerate(contexts):
            offers: dict[str, str] = {}
            where: dict[str, int] = {}
            for s, name in enumerate(SOURCES):
                p = best[s].get(u)
                if p is not None:
                    offers[name] = ids[idx_l[p]]
                    where[name] = p
            if offers:
                arm, item, prop = self.explorer.choose(ctx.user_id, offers)
                out[u].append(RecItem(item, rel_l[where[arm]], arm, prop))
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
        cs = candidates if candidates is not None else self.candidates(ctx, inputs)
        return self.learn_batch([event], [ctx], cs, [0], None if position is None else [position]) == 1

    def learn_batch(
        self,
        events: Sequence[Interaction],
        contexts: Sequence[UserContext],
        candidates: CandidateSet,
        users: Sequence[int],
        positions: Sequence[tuple[str, int]] | None = None,
        before_learn: Callable[[int], None] | None = None,
    ) -> int:
        """Learn `events` in order, event j given the context `contexts[users[j]]` from
        before it and that user's candidates `candidates.user(users[j])` (a `candidate_batch`
        over `contexts`, computed before any of these events was learned); returns how many
        were learned (an event whose `positions[j]` was learned before is skipped).

        The same as `learn(events[j], ..., candidates.user(users[j]), positions[j])` for
        every j in order, computed model by model over the whole batch (the models are
        independent of each other): the random draws of every event in one call (in event
        order: the ranker's negatives, then the MF's), the ranker's hits and negatives as
        array operations, its features for the rows it learns from only (before the models
        change), the kNN pairs merged once. `before_learn(j)` is called just before event j
        is learned by the rating model and the exploration bandit (e.g. to score it: the
        other models learn after the loop)."""
        self._drop_inactive()
        cfg = self.config
        cat = self.catalog
        cs = candidates
        m = cfg.ranker_negatives
        n_hard = round(m * cfg.ranker_hard_share)
        if n_hard and cs.scores is None:
            cs.features = self.features(contexts, cs)
            cs.scores = self.ranker.score(cs.features)
        # which events are learned, and their items
        todo: list[int] = []
        items: list[int] = []
        ensure = cat.ensure
        for j, event in enumerate(events):
            if positions is not None:
                key, off = positions[j]
                if off <= self.offsets.get(key, -1):
                    continue
                self.offsets[key] = off
            todo.append(j)
            items.append(ensure(event.item_id))
        n_todo = len(todo)
        if n_todo == 0:
            return 0
        t = np.array(items, np.int64)
        ev_user = np.array([users[j] for j in todo], np.int64)
        steps = self._ranker_hits(cs, ev_user, t, m, n_hard)
        # every random draw, in event order: the ranker's negatives, then the MF's
        n_rank = np.zeros(n_todo, np.int64)
        n_rank[steps.event] = m - steps.n_hard
        recent_before = self._recent_n + np.arange(n_todo)
        n_mf = np.where(np.minimum(recent_before, self._recent.shape[0]) > 0, max(cfg.mf_negatives, 0), 0)
        draws = self._rng.random(int(n_rank.sum() + n_mf.sum()))
        start = np.cumsum(n_rank + n_mf) - n_rank - n_mf
        if steps.event.shape[0]:
            steps.draw(draws, start[steps.event], m)
        mf_negs = self._mf_negatives(draws, start + n_rank, n_mf, t)
        # the ranker's rows, with the features as they were before these events
        if steps.event.shape[0]:
            valid = steps.valid
            rows = np.concatenate([steps.pos, steps.neg[valid]])
            feats = cs.features[rows] if cs.features is not None else self.features(contexts, cs, rows)
            n_s = steps.event.shape[0]
            x_neg = np.zeros((n_s, steps.neg.shape[1], feats.shape[1]))
            x_neg[valid] = feats[n_s:]
        # the models that learn event by event
        weights = np.array([float(cfg.type_weights.get(events[j].type, 1.0)) for j in todo])
        reward = self.explorer.reward
        learn_rating = self.rating.learn
        touch = self.active.touch
        for j in todo:
            if before_learn is not None:
                before_learn(j)
            event = events[j]
            reward(event.user_id, event.item_id)
            touch(event.user_id)
            if event.type == "rate" and event.value is not None:
                learn_rating(event.user_id, event.item_id, float(event.value))
        user_ids = [events[j].user_id for j in todo]
        self.repeat.learn_many(user_ids, items, [events[j].type for j in todo], [events[j].ts for j in todo])
        self._learn_histories(user_ids, ev_user, t, contexts)
        self.mf.learn_many(user_ids, t, weights, *mf_negs)
        for j, i, w in zip(todo, items, weights.tolist(), strict=True):
            cat.add_popularity(i, w, events[j].ts)
        self.events_learned += n_todo
        if steps.event.shape[0]:
            pw = np.ones(steps.event.shape[0])
            if cfg.rating_weak_weight != 1.0:
                for s, k in enumerate(steps.event.tolist()):
                    e = events[todo[k]]
                    if e.type == "rate" and e.value is not None and e.value < cfg.rating_strong:
                        pw[s] = cfg.rating_weak_weight
            self.ranker.learn_many(feats[: steps.event.shape[0]], x_neg, steps.n_neg, pw)
        return n_todo

    def _ranker_hits(self, cs: CandidateSet, ev_user: IntArray, t: IntArray, m: int, n_hard: int) -> _Steps:
        """The ranker's steps: the events whose item is among their user's candidates (at
        least two of them), with the unseen rest of those candidates as the negative pool."""
        empty = np.zeros(0, np.int64)
        if m <= 0 or len(cs) == 0:
            return _Steps(empty, empty, empty, empty, empty, empty, empty, np.zeros((0, 0), np.int64))
        offsets = cs.offsets
        width = int(max(int(cs.idx.max()), int(t.max()))) + 1
        cand_key = cs.row_user * width + cs.idx
        order = np.argsort(cand_key, kind="stable")
        sorted_key = cand_key[order]
        at = np.searchsorted(sorted_key, ev_user * width + t)
        inside = at < sorted_key.shape[0]
        at = np.minimum(at, sorted_key.shape[0] - 1)
        hit = inside & (sorted_key[at] == ev_user * width + t)
        hit &= (offsets[ev_user + 1] - offsets[ev_user]) >= 2
        unseen = ~cs.seen
        before = np.concatenate([[0], np.cumsum(unseen)])  # unseen rows before each row
        user_start = before[offsets]  # each user's first unseen row (in `unseen_rows`)
        ev = np.flatnonzero(hit)
        u = ev_user[ev]
        pos = order[at[ev]]
        pos_unseen = unseen[pos]
        pool = user_start[u + 1] - user_start[u] - pos_unseen
        keep = pool > 0
        ev, u, pos, pos_unseen, pool = ev[keep], u[keep], pos[keep], pos_unseen[keep], pool[keep]
        hard = np.zeros(ev.shape[0], np.int64)
        hard_rows = np.zeros((ev.shape[0], 0), np.int64)
        unseen_rows = np.flatnonzero(unseen)
        if n_hard and ev.shape[0]:
            assert cs.scores is not None
            hard_rows = np.full((ev.shape[0], n_hard), -1, np.int64)
            for s in range(ev.shape[0]):
                a, b = int(user_start[u[s]]), int(user_start[u[s] + 1])
                p = unseen_rows[a:b]
                p = p[p != pos[s]]
                best = p[np.argsort(-cs.scores[p], kind="stable")[:n_hard]]
                hard_rows[s, : best.shape[0]] = best
                hard[s] = best.shape[0]
        rank = before[pos] - user_start[u]  # the positive's place among the unseen rows
        return _Steps(
            ev, pos, np.where(pos_unseen, rank, pool + m), pool, hard, user_start[u], unseen_rows, hard_rows
        )

    def _mf_negatives(
        self, draws: FloatArray, start: IntArray, count: IntArray, t: IntArray
    ) -> tuple[IntArray, NDArray[np.bool_]]:
        """Each event's MF negatives (a row each, and which of them count): items drawn
        uniformly from the recent-traffic buffer as it was just before the event (the
        batch's earlier items written into it), minus the event's own item; then the buffer
        moves on past the batch."""
        buf = self._recent
        size = buf.shape[0]
        n0 = self._recent_n
        n_todo = t.shape[0]
        k = np.arange(n_todo)
        fill = np.minimum(n0 + k, size)
        width = int(count.max()) if n_todo else 0
        picked = np.zeros((n_todo, width), np.int64)
        ok = np.zeros((n_todo, width), bool)
        if width:
            cols = np.arange(width)
            take = cols[None, :] < count[:, None]
            u = draws[np.minimum(start[:, None] + cols[None, :], max(draws.shape[0] - 1, 0))]
            slot = np.minimum((u * fill[:, None]).astype(np.int64), np.maximum(fill[:, None] - 1, 0))
            # the latest write to that slot by an earlier event of this batch, if any
            last = k[:, None] - 1 - ((n0 + k[:, None] - 1 - slot) % size)
            picked = np.where(last >= 0, t[np.maximum(last, 0)], buf[slot])
            ok = take & (picked != t[:, None])
        tail = np.arange(max(n_todo - size, 0), n_todo)
        buf[(n0 + tail) % size] = t[tail]
        self._recent_n = n0 + n_todo
        return picked, ok

    def _learn_histories(
        self, user_ids: Sequence[str], ev_user: IntArray, t: IntArray, contexts: Sequence[UserContext]
    ) -> None:
        """The item-kNN counts of every event (its item against the user's history before it)
        and the remembered histories, which move on with each event (a context predates the
        batch); the pairs are merged into the counts once."""
        cfg = self.config
        window = self.knn.window
        keep = cfg.knn_history
        own: dict[str, list[int]] = {}
        pair_a: list[int] = []
        pair_p: list[int] = []
        pair_b: list[int] = []
        for user, u, b in zip(user_ids, ev_user.tolist(), t.tolist(), strict=True):
            hist = own.get(user)
            if hist is None:
                hist = self.history(contexts[u], check=False).tolist()
            hist = [a for a in hist if a != b]
            near = hist[:window]
            pair_a += near
            pair_p += range(len(near))
            pair_b += [b] * len(near)
            if keep > 0:
                own[user] = [b, *hist[: keep - 1]]
        self.knn.add_many(
            t, np.array(pair_a, np.int64), np.array(pair_b, np.int64), np.array(pair_p, np.int64)
        )
        if keep > 0:
            last = dict.fromkeys(reversed(user_ids))  # users by their last event, latest first
            for user in reversed(list(last)):
                self.histories.pop(user, None)  # re-inserted last: least recently active first
                self.histories[user] = np.array(own[user], np.int64)
            while len(self.histories) > cfg.knn_history_users:
                del self.histories[next(iter(self.histories))]

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
            get = self.catalog.index.get
            mine = own.tolist()
            given = [j for j in map(get, ctx.long_history) if j is not None]
            if not set(given).issubset(mine):  # plain Python: ~10 and ~30 items
                have = set(given)
                merged = given + [a for a in mine if a not in have]
                own = np.array(merged[: self.config.knn_history], np.int64)
                self.histories[ctx.user_id] = own
        return own

    def forget(self, user_id: str) -> None:
        """Drop what the recommender remembers of one user (a `forget_user` event): their
        history, pending exploration, MF factors and rating bias/factors."""
        self.active.discard(user_id)
        self._drop_user(user_id)

    def limit_users(self, cap: int) -> None:
        """Keep per-user model state for at most `cap` users (0: no bound), the most
        recently active: the others' state is dropped before the next learning, and such a
        user comes back as a cold user (`scoring.active_users`)."""
        self.active.limit(cap)

    def users_in_models(self) -> int:
        """Users the implicit MF holds factors for (it learns every event's user)."""
        return self.mf.n_users()

    def _drop_inactive(self) -> None:
        for user in self.active.take_dropped():
            self._drop_user(user)

    def _drop_user(self, user_id: str) -> None:
        self.histories.pop(user_id, None)
        self.explorer.pending.pop(user_id, None)
        self.repeat.forget(user_id)
        self.mf.forget_user(user_id)
        self.rating.forget_user(user_id)

    def _rule_mask(self, items: IntArray) -> NDArray[np.bool_]:
        """Which of `items` the business rules keep."""
        return self.rules.apply(self.catalog, items, np.ones(items.shape[0]))[0]

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
            "active": self.active,
            "explorer": self.explorer,
            "repeat": self.repeat,
            "rng": self._rng,
            "recent": (self._recent, self._recent_n),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Recommender:
        """The recommender `state()` described (use a deep copy, e.g. through pickle)."""
        old_knn = state.get("format") == 4  # the same, but bounded kNN rows as per-row dicts
        if state.get("format") != STATE_FORMAT and not old_knn:
            raise ValueError(
                f"unknown recommender state format {state.get('format')!r} (this version reads "
                f"4 and {STATE_FORMAT}: start from an empty model or re-learn from the log)"
            )
        rec = cls(RecommenderConfig.completed(state["config"]))
        rec.offsets = dict(state["offsets"])
        rec.events_learned = state["events_learned"]
        rec.catalog = state["catalog"]
        rec.mf = state["mf"]
        rec.rating = state["rating"]
        rec.ranker = state["ranker"]
        rec.knn = state["knn"]
        cap = rec.config.knn_max_neighbours
        if old_knn and cap > 0 and isinstance(rec.knn.pairs, SparseRows):
            rec.knn.pairs = BoundedRows.from_rows(cap, rec.knn.pairs.rows(), rec.config.knn_budget_slots)
        elif isinstance(rec.knn.pairs, BoundedRows):  # (read from before the budget: it has none)
            rec.knn.pairs.budget_slots = rec.knn.pairs.budget_slots or rec.config.knn_budget_slots
        rec.histories = dict(state.get("histories", {}))
        # (a checkpoint from before the bound: its MF users, in the order it met them)
        rec.active = state.get("active") or ActiveUsers(users=rec.mf.users)
        rec.explorer = state["explorer"]
        rec.repeat = state.get("repeat", rec.repeat)
        rec._rng = state["rng"]
        rec._recent, rec._recent_n = state["recent"]
        return rec


#: up to this many steps, `_Steps.draw` selects in plain Python (numpy's per-call cost of
#: its m² small operations outweighs it); beyond, in numpy over all steps at once (with 16
#: negatives the two cost the same at ~32 steps: ~1 ms)
_FEW_STEPS = 32


def _select_many(u: FloatArray, pool: IntArray, r: IntArray, chosen: IntArray) -> IntArray:
    """Selection sampling for every step at once (see `_Steps.draw`): draw i of step s picks
    the ⌊u[s, i]·(pool[s] − i)⌋-th row not picked yet, for i < r[s]; `chosen` (filled with a
    sentinel larger than any row) receives the picks in draw order."""
    for i in range(chosen.shape[1]):
        live = i < r
        if not live.any():
            break
        left = np.maximum(pool - i, 1)
        x = np.minimum((u[:, i] * left).astype(np.int64), left - 1)
        prev = np.sort(chosen[:, :i], axis=1)
        for k in range(i):  # the x-th row not picked yet: step over the picked ones below it
            x += prev[:, k] <= x
        chosen[live, i] = x[live]
    return chosen


def _select_few(u: FloatArray, pool: IntArray, r: IntArray, chosen: IntArray) -> IntArray:
    """`_select_many`, step by step in plain Python (the same picks).

    >>> u = np.array([[0.5, 0.5, 0.9], [0.0, 0.99, 0.3]])
    >>> args = (u, np.array([4, 2]), np.array([3, 2]))
    >>> big = np.full((2, 3), 99)
    >>> _select_few(*args, big.copy()).tolist() == _select_many(*args, big.copy()).tolist()
    True
    >>> _select_few(*args, big.copy()).tolist()
    [[2, 1, 3], [0, 1, 99]]
    """
    for s, (us, n, rs) in enumerate(zip(u.tolist(), pool.tolist(), r.tolist(), strict=True)):
        picked: list[int] = []  # sorted
        for i in range(rs):
            left = max(n - i, 1)
            x = min(int(us[i] * left), left - 1)
            for p in picked:  # the x-th row not picked yet: step over the picked ones below it
                if p > x:
                    break
                x += 1
            insort(picked, x)
            chosen[s, i] = x
    return chosen


@dataclass(slots=True)
class _Steps:
    """The ranker's steps of a batch (one per event whose item was a candidate), as arrays:
    the event, its positive row, the positive's place among its user's unseen rows (past
    the pool when it was seen), the pool size (unseen rows but the positive), the hard
    negatives taken (`hard_rows`, −1 padded), where the user's unseen rows start in
    `unseen_rows`; `draw` adds the negatives (`neg`, `valid`, `n_neg`)."""

    event: IntArray
    pos: IntArray
    pos_rank: IntArray
    pool: IntArray
    n_hard: IntArray
    user_start: IntArray
    unseen_rows: IntArray
    hard_rows: IntArray
    neg: IntArray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    valid: NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, 0), bool))
    n_neg: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))

    def draw(self, draws: FloatArray, start: IntArray, m: int) -> None:
        """Negatives from uniform `draws` (step s reads `m − n_hard[s]` of them from
        `start[s]`): min(m − n_hard, pool) pool rows without replacement, draw i picking
        the ⌊u·(pool − i)⌋-th of the rows not picked yet (selection sampling), all steps at
        once; the hard negatives first."""
        n_steps = self.event.shape[0]
        n_rand = m - self.n_hard
        r = np.minimum(n_rand, self.pool)
        big = np.iinfo(np.int64).max // 2
        cols = np.arange(m)
        u = draws[np.minimum(start[:, None] + cols[None, :], draws.shape[0] - 1)]
        pick = _select_few if n_steps <= _FEW_STEPS else _select_many
        chosen = pick(u, self.pool, r, np.full((n_steps, m), big, np.int64))
        rand_valid = cols[None, :] < r[:, None]
        place = np.where(rand_valid, chosen, 0)
        place += place >= self.pos_rank[:, None]  # the pool skips the positive
        rand_rows = self.unseen_rows[
            np.minimum(self.user_start[:, None] + place, self.unseen_rows.shape[0] - 1)
        ]
        rows = np.concatenate([self.hard_rows, rand_rows], axis=1)
        valid = np.concatenate([self.hard_rows >= 0, rand_valid], axis=1)
        if self.hard_rows.shape[1]:
            order = np.argsort(~valid, axis=1, kind="stable")
            rows = np.take_along_axis(rows, order, axis=1)[:, :m]
            valid = np.take_along_axis(valid, order, axis=1)[:, :m]
        self.neg, self.valid, self.n_neg = rows, valid, valid.sum(axis=1)
