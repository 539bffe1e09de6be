"""Item-kNN co-occurrence and the (uncapped) co-visitation baseline against plain-Python
references, checkpoints of the sparse rows, and the history the recommender reads."""

from __future__ import annotations

import pickle
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.baselines import CovisitationBaseline, PopularityBaseline
from scoring.knn import CoOccurrence, SparseRows
from scoring.recommender import Recommender, RecommenderConfig
from scoring.types import CandidateInputs, Interaction, UserContext


def _stream(n: int = 3000, users: int = 40, items: int = 120, seed: int = 3) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, users)), int(rng.zipf(1.3) % items)) for _ in range(n)]


@pytest.mark.parametrize("backward", [1.0, 0.5])
def test_cooccurrence_scores_equal_a_plain_python_reference(backward: float) -> None:
    co = CoOccurrence(window=6, alpha=0.4, gap_decay=0.9, n_recent=5, recency_decay=0.8, backward=backward)
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    count: dict[int, float] = defaultdict(float)
    hist: dict[int, list[int]] = defaultdict(list)
    for u, b in _stream():
        h = [a for a in hist[u] if a != b]
        co.add(b, np.array(h, dtype=np.int64))
        count[b] += 1.0
        for p, a in enumerate(h[:6]):
            pairs[a, b] += 0.9**p  # b came after a
            pairs[b, a] += backward * 0.9**p
        if b in hist[u]:
            hist[u].remove(b)
        hist[u].insert(0, b)
    for u in range(0, 40, 7):
        h = hist[u]
        got = co.scores(np.array(h, dtype=np.int64), 120)
        want = np.zeros(120)
        for p, a in enumerate(h[:5]):
            for b in range(120):
                c = pairs.get((a, b), 0.0)
                if c:
                    want[b] += 0.8**p * c / (count[a] ** 0.4 * count[b] ** 0.6)
        assert np.allclose(got, want)
    assert sum(1 for v in pairs.values() if v) == co.pairs.nnz()


def test_sparse_rows_survive_pickle() -> None:
    r = SparseRows()
    for a, b in [(0, 1), (0, 2), (5, 1), (0, 1)]:
        r.add(a, b, 1.5)
    back = pickle.loads(pickle.dumps(r))
    for a in (0, 5, 9):
        assert [x.tolist() for x in back.row(a)] == [x.tolist() for x in r.row(a)]
    back.add(0, 7, 1.0)  # still growable
    assert back.get(0, 7) == 1.0 and back.get(0, 1) == 3.0


def test_covisitation_baseline_is_exact_and_uncapped() -> None:
    pop = PopularityBaseline()
    cov = CovisitationBaseline(last_n=10)
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    recent: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, set[str]] = defaultdict(set)
    for u, b in _stream(items=400):
        user, item = f"u{u}", f"i{b}"
        got = cov.recommend(user, seen[user], 10, pop)
        acc: dict[str, float] = defaultdict(float)
        for a in recent[user]:
            for x, c in counts[a].items():
                acc[x] += c
        ranked = sorted(
            (x for x in acc if x not in seen[user]), key=lambda x: (-acc[x], cov.index.get(x, 0))
        )[:10]
        assert got[: len(ranked)] == ranked
        pop.learn(user, item, 1.0, 0.0)
        cov.learn(user, item, 1.0, 0.0)
        for a in recent[user]:
            if a != item:
                counts[a][item] += 1.0
                counts[item][a] += 1.0
        if item in recent[user]:
            recent[user].remove(item)
        recent[user].insert(0, item)
        del recent[user][10:]
        seen[user].add(item)
    # no neighbour cap: the most connected item keeps every neighbour
    assert max(len(r) for r in counts.values()) == max(len(cov.counts.row(a)[0]) for a in range(400))


def test_knn_candidates_come_from_the_whole_history() -> None:
    rec = Recommender(RecommenderConfig(dim=4, explore=False))
    for i in "abcdxyz":
        rec.add_item(i, None, ("c",))
    # other users: a -> b, and x -> y
    for n, (u, i, hist) in enumerate(
        [("o1", "a", ()), ("o1", "b", ("a",)), ("o2", "x", ()), ("o2", "y", ("x",))]
    ):
        ctx = UserContext(u, float(n), history=hist, seen_items=frozenset(hist), n_events=len(hist))
        rec.learn(Interaction(u, i, float(n), "click"), ctx, CandidateInputs())
    # the user's session holds only "x", but "a" is in the cross-session history
    ctx = UserContext(
        "me", 10.0, recent_items=("x",), history=("x", "a"), seen_items=frozenset("xa"), n_events=2
    )
    cs = rec.candidates(ctx, CandidateInputs())
    got = {rec.catalog.ids[i] for i, s in zip(cs.idx, cs.source, strict=True) if s == 0}
    assert got == {"b", "y"}
    # without a history the session's recent items stand in for it
    ctx = UserContext("me", 10.0, recent_items=("x",), seen_items=frozenset("xa"), n_events=2)
    cs = rec.candidates(ctx, CandidateInputs())
    assert {rec.catalog.ids[i] for i, s in zip(cs.idx, cs.source, strict=True) if s == 0} == {"y"}


def test_the_recommender_remembers_a_longer_history_than_its_caller_serves() -> None:
    cfg = RecommenderConfig(
        dim=4, explore=False, knn_window=20, knn_recent=20, knn_gap_decay=1.0, knn_history=30
    )
    rec = Recommender(cfg)
    items = [f"i{j}" for j in range(40)]
    for i in items:
        rec.add_item(i, None, ("c",))
    served: list[str] = []  # what a caller with a 10-item profile history serves
    for n, i in enumerate(items[:25]):
        ctx = UserContext("u", float(n), history=tuple(served), seen_items=frozenset(served), n_events=n)
        rec.learn(Interaction("u", i, float(n), "click"), ctx, CandidateInputs())
        served = [i, *served][:10]
    ctx = UserContext("u", 30.0, history=tuple(served), n_events=25)
    got = [rec.catalog.ids[j] for j in rec.history(ctx).tolist()]
    assert got == items[24::-1]  # 25 items, most recent first, although the caller served 10
    # every pair within the 20-item window was counted, beyond the caller's 10
    assert rec.knn.pair(rec.catalog.index["i3"], rec.catalog.index["i22"]) == 1.0
    # events this recommender never learned (another worker's): the profile's items lead
    moved = ("x1", "x2", *served[:8])
    for i in ("x1", "x2"):
        rec.add_item(i, None, ("c",))
    got = [rec.catalog.ids[j] for j in rec.history(UserContext("u", 31.0, history=moved)).tolist()]
    assert got == [*moved, *items[16::-1]]  # 10 + the 17 older remembered ones
    rec.forget("u")
    assert [rec.catalog.ids[j] for j in rec.history(ctx).tolist()] == served
    # the remembered histories travel with the model state
    rec2 = Recommender.from_state(pickle.loads(pickle.dumps(rec.state())))
    assert (
        "u" not in rec2.histories and rec2.knn.pair(rec.catalog.index["i3"], rec.catalog.index["i22"]) == 1.0
    )


def test_remembered_histories_are_bounded() -> None:
    rec = Recommender(RecommenderConfig(dim=4, explore=False, knn_history=5, knn_history_users=3))
    for n in range(6):
        rec.learn(
            Interaction(f"u{n}", "a", float(n), "click"), UserContext(f"u{n}", float(n)), CandidateInputs()
        )
    assert list(rec.histories) == ["u3", "u4", "u5"]  # the least recently active are dropped


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(0, 200), min_size=1, max_size=6), st.floats(0.1, 3.0), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_inverse_counts_kept_between_queries_equal_a_fresh_computation(
    batches: list[tuple[list[int], float, bool]], alpha: float
) -> None:
    """The normalisation kept between queries (recomputed for the items counted since) is
    exactly what computing it afresh gives, through growth and a checkpoint."""
    co = CoOccurrence(window=4, alpha=alpha)
    for items, weight, query in batches:
        arr = np.array(items, np.int64)
        co.add_many(arr, arr[:-1], arr[1:], np.zeros(arr.shape[0] - 1, np.int64), weight)
        if query:
            fresh = np.zeros(co.count.shape[0])
            pos = co.count > 0.0
            fresh[pos] = co.count[pos] ** -(1.0 - alpha)
            assert co.inverse_counts().tolist() == fresh.tolist()
            back = pickle.loads(pickle.dumps(co))
            assert back.inverse_counts().tolist() == fresh.tolist()
    hist = [np.array(items[::-1], np.int64) for items, _, _ in batches[-3:]]
    back = pickle.loads(pickle.dumps(co))  # a copy that computes the normalisation afresh
    got = co.top_many(hist, [np.zeros(0, np.int64)] * len(hist), 201, 10)
    want = back.top_many(hist, [np.zeros(0, np.int64)] * len(hist), 201, 10)
    assert [(i.tolist(), v.tolist()) for i, v in got] == [(i.tolist(), v.tolist()) for i, v in want]
