"""Candidate generation: a few hundred items per user, each tagged with its sources.

Sources (`scoring.types.SOURCES`), in priority order for the item's named source:

- `knn`: item-kNN over the user's whole recent history (`scoring.knn`): the recommender
  passes the best `n_knn` unseen items by kNN score;
- `covis`: neighbours of the user's recent items, `Σ_p decay^p · score(recentₚ → item)`
  over the `recent_n` most recent items (position p = 0 for the latest), from the
  co-visitation lists the caller fetched;
- `session`: the items nearest (cosine) to the session embedding;
- `category`: the most popular items of the user's top categories;
- `trending`: the caller's trending list;
- `context`: the most popular items of the request's categories (cold start);
- `content`: items nearest to the mean vector of the recent items when there is no
  session embedding (how a brand-new item with no traffic can still be found).

An item proposed by several sources keeps all of them (a bit mask) and is named after the
first in priority order.

>>> import numpy as np
>>> from scoring.catalog import ItemCatalog
>>> from scoring.types import CandidateInputs, UserContext
>>> cat = ItemCatalog(dim=2, pop_half_life=3600.0)
>>> for i, v in [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 0.1])]:
...     _ = cat.add_item(i, np.array(v), ("x",))
>>> ctx = UserContext("u", ts=0.0, recent_items=("a",), n_events=1)
>>> cs = generate(ctx, CandidateInputs({"a": [("b", 2.0)]}, [("c", 1.0)]), cat, CandidateConfig())
>>> [(cat.ids[i], SOURCES[s]) for i, s in zip(cs.idx, cs.source)]
[('b', 'covis'), ('a', 'content'), ('c', 'trending')]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from numpy.typing import NDArray

from scoring.catalog import ItemCatalog
from scoring.types import SOURCES, CandidateInputs, FloatArray, UserContext

__all__ = ["CandidateConfig", "CandidateSet", "generate"]

IntArray = NDArray[np.int64]
KNN, COVIS, SESSION, CATEGORY, TRENDING, CONTEXT, CONTENT = range(len(SOURCES))


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    """How many candidates each source may contribute."""

    n_knn: int = 200
    recent_n: int = 10
    recent_decay: float = 0.8
    covis_per_item: int = 50
    n_covis: int = 100
    n_session: int = 50
    n_top_categories: int = 3
    n_per_category: int = 20
    n_trending: int = 50
    n_context: int = 30


@dataclass(slots=True)
class CandidateSet:
    """One user's candidates: dense item indices and per-candidate source data."""

    idx: IntArray
    #: the named source of each candidate (index into SOURCES)
    source: NDArray[np.int8]
    #: (n, len(SOURCES)) 0/1: which sources proposed each candidate
    source_mask: FloatArray
    covis: FloatArray
    trending: FloatArray
    #: item-kNN score of each candidate (0 when the kNN source did not propose it)
    knn: FloatArray | None = None
    #: filled by the recommender: features, ranker logits
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
