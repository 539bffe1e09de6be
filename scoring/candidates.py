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

`generate` works on several users at once (the worker's micro-batch): their candidates are
concatenated user after user in one `CandidateSet` (`offsets`, `row_user`), the lists they
share (co-visitation neighbours, trending) are converted to arrays once, the nearest items
to all their queries come from one matrix product, co-visitation sums and de-duplication
are array operations over the whole batch, with the per-user order and sums of the
per-user definition above (`tests/scoring_reference.py` is that definition, per user).

>>> import numpy as np
>>> from scoring.catalog import ItemCatalog
>>> from scoring.types import CandidateInputs, UserContext
>>> cat = ItemCatalog(dim=2, pop_half_life=3600.0)
>>> for i, v in [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 0.1])]:
...     _ = cat.add_item(i, np.array(v), ("x",))
>>> ctx = UserContext("u", ts=0.0, recent_items=("a",), n_events=1)
>>> other = UserContext("v", ts=0.0, top_categories=(("x", 1.0),), n_events=1)
>>> cs = generate([ctx, other], {"a": [("b", 2.0)]}, [("c", 1.0)], cat, CandidateConfig())
>>> [(cat.ids[i], SOURCES[s]) for i, s in zip(cs.idx, cs.source)]
[('b', 'covis'), ('a', 'content'), ('c', 'trending'), ('a', 'category'), ('b', 'category'), ('c', 'category')]
>>> cs.offsets.tolist(), cs.user(1).idx.tolist()
([0, 3, 6], [0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from scoring.catalog import ItemCatalog
from scoring.types import SOURCES, FloatArray, NeighbourLists, UserContext

__all__ = ["CandidateConfig", "CandidateSet", "LoggedCandidates", "from_logged", "generate"]

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
    """The candidates of one or more users, concatenated user after user: user `u`'s are
    rows `offsets[u]:offsets[u + 1]` (dense item indices and per-candidate source data).
    `len()` is the number of candidates; `user(u)` is user u's own set."""

    idx: IntArray
    #: the named source of each candidate (index into SOURCES)
    source: NDArray[np.int8]
    #: (n, len(SOURCES)) 0/1 (uint8: a byte a source, not a float64): which sources
    #: proposed each candidate
    source_mask: NDArray[np.uint8]
    covis: FloatArray
    trending: FloatArray
    #: item-kNN score of each candidate (0 when the kNN source did not propose it)
    knn: FloatArray
    #: (users + 1,) where each user's candidates start; `row_user[r]` = the user of row r
    offsets: IntArray
    row_user: IntArray
    #: the candidate is one of its user's seen items (`UserContext.seen_items`)
    seen: NDArray[np.bool_]
    #: filled by the recommender: features, ranker logits
    features: FloatArray | None = None
    scores: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def user(self, u: int) -> CandidateSet:
        """User `u`'s candidates (views into this batch)."""
        a, b = int(self.offsets[u]), int(self.offsets[u + 1])
        sl = slice(a, b)
        return CandidateSet(
            self.idx[sl],
            self.source[sl],
            self.source_mask[sl],
            self.covis[sl],
            self.trending[sl],
            self.knn[sl],
            np.array([0, b - a], np.int64),
            np.zeros(b - a, np.int64),
            self.seen[sl],
            None if self.features is None else self.features[sl],
            None if self.scores is None else self.scores[sl],
        )

    def logged(self) -> list[LoggedCandidates]:
        """Every user's candidates in the compact form kept to learn from later (see
        `LoggedCandidates`; features and logits are not kept).

        >>> cs = from_logged([LoggedCandidates.of([4, 2], [KNN, TRENDING], [0b10001, 0b10000],
        ...                                      [[0.5, 0.0, 0.0], [0.0, 0.0, 2.0]], [False, True])])
        >>> log = cs.logged()[0]
        >>> log.idx.tolist(), log.bits.tolist(), from_logged([log, log]).offsets.tolist()
        ([4, 2], [17, 16], [0, 2, 4])
        """
        bits = (self.source_mask @ _BIT_VALUES).astype(np.uint8)
        values = np.stack([self.knn, self.covis, self.trending], axis=1).astype(np.float32)
        idx = self.idx.astype(np.int32)
        # copies, not views: a kept user must not pin the whole batch's arrays in memory
        return [
            LoggedCandidates(
                idx[a:b].copy(), self.source[a:b].copy(), bits[a:b].copy(), values[a:b].copy(),
                self.seen[a:b].copy(),
            )
            for a, b in pairwise(self.offsets.tolist())
        ]  # fmt: skip


_BIT_VALUES: FloatArray = np.array([2.0**s for s in range(len(SOURCES))])


@dataclass(frozen=True, slots=True)
class LoggedCandidates:
    """One user's candidate set as it was served, kept compact (int32 items, the sources as
    bits, the kNN / co-visitation / trending values as float32 rows, the seen flags) so the
    events that follow the list can learn from the candidates it was chosen from, without
    generating them again (`from_logged` rebuilds a `CandidateSet`). ~19 bytes a candidate."""

    idx: NDArray[np.int32]
    source: NDArray[np.int8]
    bits: NDArray[np.uint8]
    #: (n, 3) float32: kNN score, co-visitation score, trending score
    values: NDArray[np.float32]
    seen: NDArray[np.bool_]

    @classmethod
    def of(
        cls,
        idx: Sequence[int],
        source: Sequence[int],
        bits: Sequence[int],
        values: Sequence[Sequence[float]],
        seen: Sequence[bool],
    ) -> LoggedCandidates:
        """From plain lists (examples and tests)."""
        return cls(
            np.array(idx, np.int32),
            np.array(source, np.int8),
            np.array(bits, np.uint8),
            np.array(values, np.float32).reshape(len(idx), 3),
            np.array(seen, bool),
        )

    def __len__(self) -> int:
        return int(self.idx.shape[0])


def from_logged(logs: Sequence[LoggedCandidates]) -> CandidateSet:
    """One `CandidateSet` of several users' logged candidates (user u = `logs[u]`), without
    features or logits."""
    lengths = np.array([len(g) for g in logs], np.int64)
    offsets = np.zeros(len(logs) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not logs:
        z = np.zeros(0)
        empty_mask = np.zeros((0, len(SOURCES)), np.uint8)
        return CandidateSet(np.zeros(0, np.int64), np.zeros(0, np.int8), empty_mask,
                            z, z, z, offsets, np.zeros(0, np.int64), np.zeros(0, bool))  # fmt: skip
    bits = np.concatenate([g.bits for g in logs])
    values = np.concatenate([g.values for g in logs]).astype(np.float64)
    mask = ((bits[:, None] >> np.arange(len(SOURCES), dtype=np.uint8)) & 1).astype(np.uint8)
    return CandidateSet(
        np.concatenate([g.idx for g in logs]).astype(np.int64),
        np.concatenate([g.source for g in logs]),
        mask,
        np.ascontiguousarray(values[:, 1]),
        np.ascontiguousarray(values[:, 2]),
        np.ascontiguousarray(values[:, 0]),
        offsets,
        np.repeat(np.arange(len(logs)), lengths),
        np.concatenate([g.seen for g in logs]),
    )


def generate(
    contexts: Sequence[UserContext],
    covisitation: Mapping[str, Sequence[tuple[str, float]]],
    trending: Sequence[tuple[str, float]],
    catalog: ItemCatalog,
    cfg: CandidateConfig,
    knn: Sequence[tuple[IntArray, FloatArray]] | None = None,
    seen: Sequence[IntArray] | None = None,
) -> CandidateSet:
    """The candidates of every user in `contexts` (see the module doc), in one set.

    `covisitation` holds the neighbour lists of (at least) the users' recent items,
    `trending` the trending list (both as in `CandidateInputs`); `knn[u]` = (item indices,
    kNN scores) of user u's kNN source, best first; `seen[u]` = dense indices of the user's
    seen items (to flag them). Each user's candidates are in first-occurrence order of the
    sources in priority order. Neighbours and trending items unknown to the catalog are
    registered (`ensure`).
    """
    n_users = len(contexts)
    index = catalog.index
    ensure = catalog.ensure
    # every list the batch's users share, as arrays, once (once per read when the lists
    # come as `NeighbourLists`, which keep them), and only those the users' recent items use
    covis_arrays: dict[str, tuple[IntArray, FloatArray]] = (
        covisitation.arrays if isinstance(covisitation, NeighbourLists) else {}
    )
    for ctx in contexts:
        for item in ctx.recent_items[: cfg.recent_n]:
            if item in covis_arrays:
                continue
            head = covisitation.get(item, ())[: cfg.covis_per_item]
            if head:
                names = [nb for nb, _ in head]
                found = [index.get(nb) for nb in names]
                if None in found:
                    found = [ensure(nb) if i is None else i for nb, i in zip(names, found, strict=True)]
                covis_arrays[item] = (np.array(found, np.int64), np.array([v for _, v in head], np.float64))
    trend = trending[: cfg.n_trending]
    trend_idx = np.fromiter((ensure(t) if (i := index.get(t)) is None else i for t, _ in trend), np.int64,
                            count=len(trend))  # fmt: skip
    trend_val = np.fromiter((v for _, v in trend), np.float64, count=len(trend))

    # nearest items to the session embedding, or to the recent items' content (one product)
    queries: list[FloatArray | None] = []
    for ctx in contexts:
        q: FloatArray | None = ctx.session_embedding
        if q is None and ctx.recent_items[: cfg.recent_n]:
            ridx = catalog.indices(ctx.recent_items[: cfg.recent_n])
            q = catalog.vectors[ridx].mean(axis=0) if ridx.shape[0] else None
        queries.append(q)
    near = catalog.nearest_many(queries, cfg.n_session)

    # co-visitation of the recent items: (user, neighbour, weight * score) in the order the
    # per-user sum visits them, then summed per (user, neighbour) in that order
    cv_user: list[int] = []
    cv_parts: list[IntArray] = []
    cv_vals: list[FloatArray] = []
    cv_w: list[float] = []
    cv_len: list[int] = []
    for u, ctx in enumerate(contexts):
        w = 1.0
        for item in ctx.recent_items[: cfg.recent_n]:
            arr = covis_arrays.get(item)
            if arr is not None:
                cv_user.append(u)
                cv_parts.append(arr[0])
                cv_vals.append(arr[1])
                cv_w.append(w)
                cv_len.append(arr[0].shape[0])
            w *= cfg.recent_decay
    covis_by_user = _covis_lists(n_users, cv_user, cv_parts, cv_vals, cv_w, cv_len, len(catalog), cfg.n_covis)

    # every user's sources in priority order, concatenated user after user
    parts: list[IntArray] = []
    codes: list[int] = []
    vals: list[FloatArray | None] = []
    counts = np.zeros(n_users, np.int64)
    for u, ctx in enumerate(contexts):
        before = len(parts)
        if knn is not None and knn[u][0].shape[0]:
            parts.append(knn[u][0])
            codes.append(KNN)
            vals.append(knn[u][1])
        cv = covis_by_user.get(u)
        if cv is not None:
            parts.append(cv[0])
            codes.append(COVIS)
            vals.append(cv[1])
        if near[u].shape[0]:
            parts.append(near[u])
            codes.append(SESSION if ctx.session_embedding is not None else CONTENT)
            vals.append(None)
        cat_idx: list[int] = []
        for c, _score in ctx.top_categories[: cfg.n_top_categories]:
            cat_idx.extend(catalog.top_in_category(c, cfg.n_per_category))
        if cat_idx:
            parts.append(np.array(cat_idx, dtype=np.int64))
            codes.append(CATEGORY)
            vals.append(None)
        if trend_idx.shape[0]:
            parts.append(trend_idx)
            codes.append(TRENDING)
            vals.append(trend_val)
        ctx_idx: list[int] = []
        for c in ctx.context_categories:
            ctx_idx.extend(catalog.top_in_category(c, cfg.n_context))
        if ctx_idx:
            parts.append(np.array(ctx_idx, dtype=np.int64))
            codes.append(CONTEXT)
            vals.append(None)
        counts[u] = sum(p.shape[0] for p in parts[before:])
    return _merge(parts, codes, vals, counts, len(catalog), seen)


def _covis_lists(
    n_users: int,
    users: list[int],
    parts: list[IntArray],
    vals: list[FloatArray],
    weights: list[float],
    lengths: list[int],
    n_items: int,
    n_best: int,
) -> dict[int, tuple[IntArray, FloatArray]]:
    """Per user: the neighbours summed over the recent items, in first-visit order, or the
    `n_best` best by sum (ties in first-visit order) when there are more."""
    if not parts:
        return {}
    nb = np.concatenate(parts)
    rep = np.repeat(np.arange(len(parts)), lengths)
    ws = np.array(weights)[rep] * np.concatenate(vals)
    user = np.array(users, np.int64)[rep]
    first, row, uniq = _first_occurrence(user, nb, n_items)
    total: FloatArray = np.bincount(row, weights=ws, minlength=uniq.shape[0])  # type: ignore[assignment]  # sums in visit order
    u_of = user[first]
    n_of = np.bincount(u_of, minlength=n_users)
    many = n_of > n_best
    if many.any():
        key = np.where(many[u_of], -total, 0.0)
        order = np.lexsort((key, u_of))  # stable: ties keep first-visit order
        start = np.zeros(n_users + 1, np.int64)
        np.cumsum(n_of, out=start[1:])
        order = order[np.arange(order.shape[0]) - start[u_of[order]] < n_best]
    else:
        order = np.arange(uniq.shape[0])
    items, sums, owners = nb[first][order], total[order], u_of[order]
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]).tolist()
    ends = [*starts[1:], owners.shape[0]]
    who = owners[starts].tolist()
    return {o: (items[a:b], sums[a:b]) for o, a, b in zip(who, starts, ends, strict=True)}


def _first_occurrence(group: IntArray, item: IntArray, n_items: int) -> tuple[IntArray, IntArray, IntArray]:
    """For (group, item) pairs listed group after group: the positions of each pair's first
    occurrence (in order), each pair's row among them, and their (group, item) keys."""
    key = group * n_items + item
    uniq, first_sorted, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first_sorted, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return first_sorted[order], rank[inverse], uniq[order]


def _merge(
    parts: list[IntArray],
    codes: list[int],
    vals: list[FloatArray | None],
    counts: IntArray,
    n_items: int,
    seen: Sequence[IntArray] | None,
) -> CandidateSet:
    n_users = counts.shape[0]
    if not parts:
        z = np.zeros(0)
        return CandidateSet(
            np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros((0, len(SOURCES)), np.uint8), z, z, z,
            np.zeros(n_users + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, bool),
        )  # fmt: skip
    every = np.concatenate(parts)
    lengths = [p.shape[0] for p in parts]
    code = np.repeat(np.array(codes, np.int64), lengths)
    user = np.repeat(np.arange(n_users), counts)
    first, row, _ = _first_occurrence(user, every, max(n_items, int(every.max()) + 1))
    idx = every[first]
    row_user = user[first]
    n = idx.shape[0]
    source_mask = np.zeros((n, len(SOURCES)), np.uint8)
    source_mask[row, code] = 1
    source = np.argmax(source_mask, axis=1).astype(np.int8)
    value = np.concatenate([np.zeros(ln) if v is None else v for v, ln in zip(vals, lengths, strict=True)])
    knn_val = np.zeros(n)
    covis = np.zeros(n)
    trend = np.zeros(n)
    for target, c in ((knn_val, KNN), (covis, COVIS), (trend, TRENDING)):
        sel = code == c
        target[row[sel]] = value[sel]
    offsets = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(row_user, minlength=n_users), out=offsets[1:])
    flags = np.zeros(n, bool)
    if seen is not None:
        s_user = np.repeat(np.arange(n_users), [s.shape[0] for s in seen])
        if s_user.shape[0]:
            s_key = s_user * (n_items + 1) + np.concatenate(seen)
            flags = np.isin(row_user * (n_items + 1) + idx, s_key)
    return CandidateSet(idx, source, source_mask, covis, trend, knn_val, offsets, row_user, flags)
