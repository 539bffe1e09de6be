"""Re-ranking rules, exploration propensities and the catalog's category lists."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scoring.catalog import ItemCatalog
from scoring.explore import SourceExplorer
from scoring.rerank import Rule, RuleSet, select

N = 12


def _inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rel = draw(arrays(np.float64, N, elements=st.floats(0.0, 1.0)))
    vec = draw(arrays(np.float64, (N, 3), elements=st.floats(-1.0, 1.0)))
    vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
    cats = draw(arrays(np.int64, N, elements=st.integers(-1, 3)))
    allowed = draw(arrays(np.bool_, N))
    return rel, vec, cats, allowed


inputs = st.composite(_inputs)


@given(inputs(), st.integers(1, N), st.floats(0.0, 1.0), st.one_of(st.none(), st.integers(1, 3)))
def test_select_respects_exclusions_and_cap(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], k: int, lam: float, cap: int | None
) -> None:
    rel, vec, cats, allowed = data
    pos = select(rel, vec, cats, allowed, k, mmr_lambda=lam, max_per_category=cap, pool=5)
    chosen = pos.tolist()
    assert len(chosen) == len(set(chosen)) <= k
    assert all(allowed[p] for p in chosen)
    if cap is not None:
        counts = Counter(int(cats[p]) for p in chosen if cats[p] >= 0)
        assert all(c <= cap for c in counts.values())
        # nothing allowed was left out while a slot and its category's quota were free
        if len(chosen) < k:
            for p in np.flatnonzero(allowed).tolist():
                if p not in chosen:
                    assert cats[p] >= 0 and counts[int(cats[p])] >= cap
    else:
        assert len(chosen) == min(k, int(allowed.sum()))


@given(inputs(), st.integers(1, N))
def test_mmr_lambda_one_is_relevance_order(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], k: int
) -> None:
    rel, vec, cats, allowed = data
    pos = select(rel, vec, cats, allowed, k, mmr_lambda=1.0)
    ok = np.flatnonzero(allowed)
    expected = ok[np.argsort(-rel[ok], kind="stable")][:k]
    assert pos.tolist() == expected.tolist()


def test_mmr_lower_lambda_diversifies() -> None:
    rel = np.array([1.0, 0.99, 0.98, 0.5])
    vec = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    cats = np.full(4, -1)
    ok = np.ones(4, bool)
    assert select(rel, vec, cats, ok, 2, mmr_lambda=1.0).tolist() == [0, 1]
    assert select(rel, vec, cats, ok, 2, mmr_lambda=0.3).tolist() == [0, 3]


def test_rules_filter_and_boost() -> None:
    cat = ItemCatalog(dim=2, pop_half_life=3600.0)
    cat.add_item("a", np.array([1.0, 0.0]), ("Horror",))
    cat.add_item("b", np.array([0.0, 1.0]), ("Comedy",), attributes={"brand": "acme"})
    cat.add_item("c", np.array([1.0, 1.0]), ("Comedy",))
    rules = RuleSet(
        [Rule("filter", category="Horror"), Rule("boost", attribute="brand", value="acme", factor=2.0)]
    )
    keep, rel = rules.apply(cat, np.array([0, 1, 2]), np.array([0.5, 0.4, 0.3]))
    assert keep.tolist() == [False, True, True]
    assert rel.tolist() == [0.5, 0.8, 0.3]
    cat.add_item("d", None, ("Horror",))  # a new item is compiled incrementally
    keep, _ = rules.apply(cat, np.array([3]), np.array([1.0]))
    assert keep.tolist() == [False]
    cat.add_item("b", None, attributes={"brand": "other"})  # an update recompiles
    _, rel = rules.apply(cat, np.array([1]), np.array([0.4]))
    assert rel.tolist() == [0.4]
    with pytest.raises(ValueError, match="category or an attribute"):
        Rule("boost")


@settings(max_examples=50)
@given(
    st.lists(
        st.sampled_from(["covis", "session", "category", "trending"]), min_size=1, max_size=4, unique=True
    ),
    st.lists(
        st.tuples(st.sampled_from(["covis", "session", "category", "trending"]), st.booleans()), max_size=20
    ),
    st.floats(0.0, 1.0),
)
def test_bandit_propensities_sum_to_one(arms: list[str], history: list[tuple[str, bool]], eps: float) -> None:
    ex = SourceExplorer(epsilon=eps, seed=3)
    for arm, hit in history:
        ex.policy.update(arm, 1.0 if hit else 0.0)
    probs = ex.probabilities(arms)
    assert set(probs) == set(arms)
    assert math.isclose(sum(probs.values()), 1.0)
    offers = {a: f"item-{j % 2}" for j, a in enumerate(arms)}
    _, item, p = ex.choose("u", offers)
    assert math.isclose(p, sum(probs[a] for a in arms if offers[a] == item))


def test_bandit_propensities_match_frequencies() -> None:
    ex = SourceExplorer(epsilon=0.3, seed=5)
    ex.policy.update("covis", 1.0)
    ex.policy.update("trending", 0.0)
    arms = ["covis", "trending", "session"]
    probs = ex.probabilities(arms)
    counts: Counter[str] = Counter()
    for _ in range(4000):
        counts[ex.choose("u", {a: a for a in arms})[0]] += 1
    for a in arms:
        assert abs(counts[a] / 4000 - probs[a]) < 0.03


@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 19), st.floats(0.1, 3.0), st.floats(0.0, 5000.0)), max_size=80))
def test_category_top_lists_match_naive(adds: list[tuple[int, float, float]]) -> None:
    cat = ItemCatalog(dim=2, pop_half_life=1000.0, per_category=4)
    for j in range(20):
        cat.add_item(f"i{j}", np.array([1.0, float(j)]), (f"c{j % 3}", "all"))
    naive = np.zeros(20)
    for j, w, ts in adds:
        cat.add_popularity(j, w, ts)
        naive[j] += w * 2.0 ** (ts / 1000.0)
    for c in ["c0", "c1", "c2", "all"]:
        members = [j for j in range(20) if c == "all" or f"c{j % 3}" == c]
        top = cat.top_in_category(c, 4)
        expected = sorted((naive[j] for j in members), reverse=True)[:4]
        assert np.allclose(sorted((naive[j] for j in top), reverse=True), expected, rtol=1e-9)
