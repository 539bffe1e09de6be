"""The item-kNN rows' neighbour cap (`SparseRows(cap=N)`, `knn_max_neighbours`) against a
plain-Python reference, and the bound it gives: memory a function of the configuration
(items × 2N pairs), not of the stream's length."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.knn import CoOccurrence, SparseRows
from scoring.recommender import STATE_FORMAT, Recommender, RecommenderConfig
from streams.config import Settings
from streams.handlers import recommender_config


def naive_capped_rows(adds: list[tuple[int, int, float]], cap: int) -> dict[int, dict[int, float]]:
    """The rule by brute force: add each weight in turn; a row that reaches 2 × cap entries
    keeps its cap largest (ties: smaller column), in the order they were first added."""
    rows: dict[int, dict[int, float]] = {}
    for a, b, w in adds:
        row = rows.setdefault(a, {})
        row[b] = row.get(b, 0.0) + w
        if cap and len(row) >= 2 * cap:
            best = set(sorted(row, key=lambda c: (-row[c], c))[:cap])
            rows[a] = {c: v for c, v in row.items() if c in best}
    return rows


def _as_dicts(r: SparseRows, n_rows: int) -> dict[int, dict[int, float]]:
    out = {}
    for a in range(n_rows):
        idx, val = r.row(a)
        if idx.shape[0]:
            out[a] = dict(zip(idx.tolist(), val.tolist(), strict=True))
    return out


adds_strategy = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 30),
        st.sampled_from([0.25, 0.5, 1.0, 2.0]),  # few values: many ties to break
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(adds=adds_strategy, cap=st.integers(0, 6))
def test_capped_rows_equal_the_naive_rule_one_add_at_a_time(
    adds: list[tuple[int, int, float]], cap: int
) -> None:
    r = SparseRows(cap=cap)
    for a, b, w in adds:
        r.add(a, b, w)
    want = naive_capped_rows(adds, cap)
    got = _as_dicts(r, 4)
    assert got == {a: row for a, row in want.items() if row}
    # same entries in the same (slot) order
    for a, row in want.items():
        assert r.row(a)[0].tolist() == list(row)
    if cap:
        assert all(r.row(a)[0].shape[0] < 2 * cap for a in range(4))


@settings(max_examples=200, deadline=None)
@given(adds=adds_strategy, cap=st.integers(0, 6), cut=st.integers(0, 300))
def test_add_many_equals_one_add_at_a_time(adds: list[tuple[int, int, float]], cap: int, cut: int) -> None:
    ordered = sorted(adds, key=lambda t: t[0])  # add_many takes rows in order
    one, many = SparseRows(cap=cap), SparseRows(cap=cap)
    for a, b, w in ordered:
        one.add(a, b, w)
    for part in (ordered[:cut], ordered[cut:]):
        many.add_many([t[0] for t in part], [t[1] for t in part], [t[2] for t in part])
    assert _as_dicts(many, 4) == _as_dicts(one, 4)
    assert [many.row(a)[0].tolist() for a in range(4)] == [one.row(a)[0].tolist() for a in range(4)]


def test_a_long_stream_stays_within_the_bound_and_keeps_the_strong_pairs() -> None:
    rng = np.random.default_rng(5)
    items, cap = 200, 10
    capped = CoOccurrence(window=10, max_neighbours=cap)
    exact = CoOccurrence(window=10)
    hist: dict[int, list[int]] = {}
    sizes = []
    for n in range(20_000):
        u, b = int(rng.integers(0, 300)), int(rng.zipf(1.2) % items)
        h = [a for a in hist.get(u, []) if a != b]
        capped.add(b, np.array(h, np.int64))
        exact.add(b, np.array(h, np.int64))
        hist[u] = [b, *h][:10]
        if n % 5000 == 4999:
            sizes.append(capped.pairs.nnz())
    assert max(capped.pairs.row(a)[0].shape[0] for a in range(items)) < 2 * cap
    assert sizes[-1] < items * 2 * cap < exact.pairs.nnz()
    # the count of occurrences stays exact; the strongest pair of a busy row survives
    assert np.array_equal(capped.count, exact.count)
    idx, val = exact.pairs.row(0)
    strongest = int(idx[np.argmax(val)])
    assert capped.pair(0, strongest) > 0.0


def test_the_cap_travels_with_a_checkpoint_and_an_old_format_is_refused() -> None:
    rec = Recommender(RecommenderConfig(dim=4, knn_max_neighbours=7))
    assert rec.knn.max_neighbours == 7 and rec.knn.pairs.cap == 7
    state = pickle.loads(pickle.dumps(rec.state()))
    assert Recommender.from_state(state).knn.pairs.cap == 7
    with pytest.raises(ValueError, match=f"state format 3 .*reads {STATE_FORMAT}"):
        Recommender.from_state({**state, "format": 3})


def test_the_setting_reaches_the_recommender() -> None:
    s = Settings.from_env({"FRESHREC_KNN_MAX_NEIGHBOURS": "40"})
    assert recommender_config(s).knn_max_neighbours == 40
    assert recommender_config(Settings()).knn_max_neighbours == RecommenderConfig().knn_max_neighbours
