"""Prequential metrics and decayed counters against naive references."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.decay import DecayedTop
from scoring.metrics import PrequentialMetrics, intra_list_diversity, ndcg_at_k, reciprocal_rank

ITEMS = st.sampled_from([f"i{j}" for j in range(15)])
LISTS = st.lists(ITEMS, max_size=12, unique=True)


def textbook_ndcg(recs: list[str], target: str, k: int) -> float:
    """DCG = Σ relᵢ / log2(i + 1) over positions 1..k; IDCG of one relevant item = 1."""
    dcg = sum((1.0 if item == target else 0.0) / math.log2(i + 1) for i, item in enumerate(recs[:k], start=1))
    idcg = 1.0 / math.log2(2)
    return dcg / idcg


@given(LISTS, ITEMS, st.integers(1, 12))
def test_ndcg_matches_textbook_formula(recs: list[str], target: str, k: int) -> None:
    assert math.isclose(ndcg_at_k(recs, target, k), textbook_ndcg(recs, target, k))


@given(LISTS, ITEMS, st.integers(1, 12))
def test_mrr_matches_naive(recs: list[str], target: str, k: int) -> None:
    expected = next((1.0 / (i + 1) for i, x in enumerate(recs) if x == target and i < k), 0.0)
    assert reciprocal_rank(recs, target, k) == expected


@given(st.lists(st.tuples(LISTS, ITEMS), min_size=1, max_size=30), st.integers(1, 10))
def test_running_metrics_equal_averages(pairs: list[tuple[list[str], str]], k: int) -> None:
    m = PrequentialMetrics(k)
    for recs, target in pairs:
        m.update(recs, target)
    r = m.result(catalog_size=15)
    n = len(pairs)
    assert math.isclose(r["hr"], sum(t in recs[:k] for recs, t in pairs) / n)
    assert math.isclose(r["ndcg"], sum(textbook_ndcg(recs, t, k) for recs, t in pairs) / n, abs_tol=1e-12)
    assert r["coverage"] == len({x for recs, _ in pairs for x in recs[:k]}) / 15


@given(st.lists(st.lists(st.floats(-3, 3), min_size=3, max_size=3), min_size=0, max_size=8))
def test_ild_matches_pairwise_loop(rows: list[list[float]]) -> None:
    v = np.array(rows, dtype=np.float64).reshape(len(rows), 3)
    n = len(rows)
    if n < 2:
        assert intra_list_diversity(v) == 0.0
        return
    dists = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = v[i], v[j]
            na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
            cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
            dists.append(1.0 - cos)
    assert math.isclose(intra_list_diversity(v), sum(dists) / len(dists), abs_tol=1e-9)


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.floats(0.1, 5.0), st.floats(0.0, 20_000.0)), max_size=60
    ),
    st.integers(1, 5),
)
def test_decayed_top_matches_naive(adds: list[tuple[str, float, float]], n: int) -> None:
    h = 3600.0
    c = DecayedTop(h, n=n)
    for key, w, ts in adds:
        c.add(key, w, ts)
    at = 20_000.0
    naive: dict[str, float] = {}
    for key, w, ts in adds:
        naive[key] = naive.get(key, 0.0) + w * 2.0 ** (-(at - ts) / h)
    for key, v in naive.items():
        assert math.isclose(c.value(key, at), v, rel_tol=1e-9)
    got = c.top(at=at)
    assert len(got) == min(n, len(naive))
    best = sorted(naive.values(), reverse=True)[: len(got)]
    for (_, v), b in zip(got, best, strict=True):
        assert math.isclose(v, b, rel_tol=1e-9)
