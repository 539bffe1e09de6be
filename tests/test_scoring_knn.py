"""Item-kNN co-occurrence and the (uncapped) co-visitation baseline against plain-Python
references, checkpoints of the sparse rows, and the history the recommender reads."""

from __future__ import annotations

import pickle
from collections import defaultdict

import numpy as np

from scoring.baselines import CovisitationBaseline, PopularityBaseline
from scoring.knn import CoOccurrence, SparseRows
from scoring.recommender import Recommender, RecommenderConfig
from scoring.types import CandidateInputs, Interaction, UserContext


def _stream(n: int = 3000, users: int = 40, items: int = 120, seed: int = 3) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, users)), int(rng.zipf(1.3) % items)) for _ in range(n)]


def test_cooccurrence_scores_equal_a_plain_python_reference() -> None:
    co = CoOccurrence(window=6, alpha=0.4, gap_decay=0.9, n_recent=5, recency_decay=0.8)
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    count: dict[int, float] = defaultdict(float)
    hist: dict[int, list[int]] = defaultdict(list)
    for u, b in _stream():
        h = [a for a in hist[u] if a != b]
        co.add(b, np.array(h, dtype=np.int64))
        count[b] += 1.0
        for p, a in enumerate(h[:6]):
            pairs[a, b] += 0.9**p
            pairs[b, a] += 0.9**p
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
