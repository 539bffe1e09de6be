"""The per-user scoring path as it was before it was vectorised across a batch's users
(scoring/candidates.py `generate`, `Recommender.candidates/features/recommend` at commit
3c497be), kept verbatim as the reference the batched implementation is tested against.

Functions take the recommender as `self`; `CandidateSet` is the old per-user set.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from numpy.typing import NDArray

from scoring.candidates import CATEGORY, CONTENT, CONTEXT, COVIS, KNN, SESSION, TRENDING, CandidateConfig
from scoring.catalog import ItemCatalog
from scoring.recommender import _N_BASE, FEATURES, Recommender
from scoring.repeat import merge_lists
from scoring.rerank import select
from scoring.types import SOURCES, CandidateInputs, FloatArray, RecItem, UserContext

IntArray = NDArray[np.int64]


@dataclass(slots=True)
class CandidateSet:
    idx: IntArray
    source: NDArray[np.int8]
    source_mask: FloatArray
    covis: FloatArray
    trending: FloatArray
    knn: FloatArray | None = None
    features: FloatArray | None = None
    scores: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.idx.shape[0])


def generate(
    ctx: UserContext,
    inputs: CandidateInputs,
    catalog: ItemCatalog,
    cfg: CandidateConfig,
    knn: tuple[IntArray, FloatArray] | None = None,
) -> CandidateSet:
    """Candidates for `ctx` from every source that has something (see the module doc);
    `knn` = (item indices, kNN scores) of the kNN source, best first."""
    parts: list[IntArray] = []
    codes: list[int] = []
    n_knn = 0
    if knn is not None and knn[0].shape[0]:
        parts.append(knn[0].astype(np.int64))
        codes.append(KNN)
        n_knn = knn[0].shape[0]
    index = catalog.index
    covis_idx: list[int] = []
    covis_val: list[float] = []
    trend_idx: list[int] = []
    trend_val: list[float] = []
    trend_off = 0

    # co-visitation of the recent items
    recent = ctx.recent_items[: cfg.recent_n]
    if recent and inputs.covisitation:
        acc: dict[str, float] = {}
        w = 1.0
        for item in recent:
            nbrs = inputs.covisitation.get(item)
            if nbrs:
                for nb, s in nbrs[: cfg.covis_per_item]:
                    acc[nb] = acc.get(nb, 0.0) + w * s
            w *= cfg.recent_decay
        best = acc.items()
        if len(acc) > cfg.n_covis:
            best = heapq.nlargest(cfg.n_covis, best, key=itemgetter(1))  # type: ignore[assignment]
        for nb, s in best:
            i = index.get(nb)
            covis_idx.append(catalog.ensure(nb) if i is None else i)
            covis_val.append(s)
        parts.append(np.array(covis_idx, dtype=np.int64))
        codes.append(COVIS)

    # nearest items to the session embedding (or to the recent items' content)
    if ctx.session_embedding is not None:
        parts.append(catalog.nearest(ctx.session_embedding, cfg.n_session)[0])
        codes.append(SESSION)
    elif recent:
        ridx = catalog.indices(recent)
        if ridx.shape[0]:
            parts.append(catalog.nearest(catalog.vectors[ridx].mean(axis=0), cfg.n_session)[0])
            codes.append(CONTENT)

    cat_idx: list[int] = []
    for c, _score in ctx.top_categories[: cfg.n_top_categories]:
        cat_idx.extend(catalog.top_in_category(c, cfg.n_per_category))
    if cat_idx:
        parts.append(np.array(cat_idx, dtype=np.int64))
        codes.append(CATEGORY)

    if inputs.trending:
        for item, s in inputs.trending[: cfg.n_trending]:
            i = index.get(item)
            trend_idx.append(catalog.ensure(item) if i is None else i)
            trend_val.append(s)
        trend_off = sum(p.shape[0] for p in parts)
        parts.append(np.array(trend_idx, dtype=np.int64))
        codes.append(TRENDING)

    ctx_idx: list[int] = []
    for c in ctx.context_categories:
        ctx_idx.extend(catalog.top_in_category(c, cfg.n_context))
    if ctx_idx:
        parts.append(np.array(ctx_idx, dtype=np.int64))
        codes.append(CONTEXT)

    if not parts:
        z = np.zeros(0)
        return CandidateSet(np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros((0, len(SOURCES))), z, z, z)
    every = np.concatenate(parts)
    code = np.repeat(np.array(codes, dtype=np.int64), [p.shape[0] for p in parts])
    # first occurrence order: sources in priority order come first
    uniq, first, inverse = np.unique(every, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    idx = uniq[order]
    row = rank[inverse]
    n = idx.shape[0]
    source_mask = np.zeros((n, len(SOURCES)))
    source_mask[row, code] = 1.0
    source = np.argmax(source_mask, axis=1).astype(np.int8)
    covis = np.zeros(n)
    trend = np.zeros(n)
    knn_val = np.zeros(n)
    if n_knn and knn is not None:
        knn_val[row[:n_knn]] = knn[1]
    if covis_idx:
        covis[row[n_knn : n_knn + len(covis_idx)]] = covis_val
    if trend_idx:
        trend[row[trend_off : trend_off + len(trend_idx)]] = trend_val
    return CandidateSet(idx, source, source_mask, covis, trend, knn_val)


def candidates(self: Recommender, ctx: UserContext, inputs: CandidateInputs) -> CandidateSet:
    """`ctx`'s candidates with their feature matrix and ranker logits."""
    cat = self.catalog
    knn = None
    hist = cat.indices(ctx.long_history)
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
    cs.features = features(self, ctx, cs)
    cs.scores = self.ranker.score(cs.features)
    return cs


def features(self: Recommender, ctx: UserContext, cs: CandidateSet) -> FloatArray:
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
    self: Recommender,
    ctx: UserContext,
    inputs: CandidateInputs,
    k: int,
    candidates: CandidateSet | None = None,
) -> list[RecItem]:
    """The top-`k` list for `ctx` (exclusions, rules, MMR, category cap, exploration)."""
    cs = candidates if candidates is not None else globals()["candidates"](self, ctx, inputs)
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
    if self.repeat.exclude_types is not None:  # the user's repeat items merged in (scoring.repeat)
        out = merge_lists(
            self.repeat, [ctx.user_id], [out], [idx[pos].tolist()], ids, main_k, self._rule_mask
        )[0]
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
