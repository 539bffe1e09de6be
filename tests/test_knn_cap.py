"""The item-kNN rows' neighbour cap (`BoundedRows(cap=N)`, `knn_max_neighbours`) against a
plain-Python reference, and the bound it gives: memory a function of the configuration
(items × 2N pairs), not of the stream's length."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.bounded_rows import BoundedRows
from scoring.knn import CoOccurrence, SparseRows
from scoring.recommender import STATE_FORMAT, Recommender, RecommenderConfig
from streams.config import Settings
from streams.handlers import recommender_config


def naive_capped_rows(batches: list[list[tuple[int, int, float]]], cap: int) -> dict[int, dict[int, float]]:
    """The rule by brute force: each batch's weights are summed into the rows, then a row
    with 2 × cap entries or more keeps its cap largest (ties: smaller column)."""
    rows: dict[int, dict[int, float]] = {}
    for batch in batches:
        for a, b, w in batch:
            row = rows.setdefault(a, {})
            row[b] = row.get(b, 0.0) + w
        for a, row in rows.items():
            if len(row) >= 2 * cap:
                best = sorted(row, key=lambda c: (-row[c], c))[:cap]
                rows[a] = {c: row[c] for c in best}
    return rows


def _as_dicts(r: BoundedRows, n_rows: int) -> dict[int, dict[int, float]]:
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


@settings(max_examples=300, deadline=None)
@given(
    adds=adds_strategy,
    cap=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    sort=st.booleans(),
)
def test_bounded_rows_equal_the_naive_rule_batch_by_batch(
    adds: list[tuple[int, int, float]], cap: int, cuts: list[int], sort: bool
) -> None:
    """Any split of the additions into `add_many` calls, sorted by (row, column) or not
    (duplicates then summed): the same rows as the naive rule on the same batches."""
    bounds = [0, *sorted(c for c in cuts if c < len(adds)), len(adds)]
    batches = [adds[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    if sort:
        batches = [sorted(b) for b in batches]
    r = BoundedRows(cap=cap)
    for batch in batches:
        r.add_many([t[0] for t in batch], [t[1] for t in batch], [t[2] for t in batch])
    want = {a: row for a, row in naive_capped_rows(batches, cap).items() if row}
    got = _as_dicts(r, 4)
    assert got.keys() == want.keys()
    for a, row in want.items():
        assert got[a].keys() == row.keys()
        assert np.allclose([got[a][c] for c in row], list(row.values()))
        assert r.row(a)[0].tolist() == sorted(row)  # sorted by column
        assert r.row(a)[0].shape[0] < 2 * cap
    assert r.nnz() == sum(len(row) for row in want.values())
    back = pickle.loads(pickle.dumps(r))
    assert _as_dicts(back, 4) == got and back.nnz() == r.nnz()


def test_bounded_rows_refuse_no_bound() -> None:
    with pytest.raises(ValueError, match=r"cap >= 1 .*got 0"):
        BoundedRows(cap=0)


def test_one_add_at_a_time_equals_the_rule_with_batches_of_one() -> None:
    rng = np.random.default_rng(3)
    pick = rng.integers(0, 5, 2000), rng.integers(0, 40, 2000), rng.choice([0.5, 1.0], 2000)
    adds = list(zip(*(x.tolist() for x in pick), strict=True))
    r = BoundedRows(cap=4)
    for a, b, w in adds:
        r.add(a, b, w)
    want = naive_capped_rows([[t] for t in adds], 4)
    assert _as_dicts(r, 5) == {a: row for a, row in want.items() if row}


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
    with pytest.raises(ValueError, match=f"state format 3 .*reads 4 and {STATE_FORMAT}"):
        Recommender.from_state({**state, "format": 3})


def test_a_format_4_checkpoint_is_read_its_kNN_rows_moved_into_the_block_pool() -> None:
    """Format 4 kept the bounded rows as per-row dicts (`SparseRows`); they are read as they
    were (each row under 2 x cap, so nothing is pruned)."""
    rec = Recommender(RecommenderConfig(dim=4, knn_max_neighbours=3))
    rng = np.random.default_rng(1)
    for _ in range(300):
        rec.knn.add(int(rng.integers(0, 20)), rng.choice(20, size=int(rng.integers(0, 6)), replace=False))
    old = SparseRows()
    for a in range(20):
        idx, val = rec.knn.pairs.row(a)
        for b, w in zip(idx.tolist(), val.tolist(), strict=True):
            old.add(a, b, w)
    state = pickle.loads(pickle.dumps(rec.state()))
    state["knn"].pairs = old
    back = Recommender.from_state({**state, "format": 4}).knn.pairs
    assert isinstance(back, BoundedRows) and back.cap == 3 and back.nnz() == rec.knn.pairs.nnz() > 0
    for a in range(20):
        assert back.row(a)[0].tolist() == rec.knn.pairs.row(a)[0].tolist()
        assert back.row(a)[1].tolist() == rec.knn.pairs.row(a)[1].tolist()


def test_the_setting_reaches_the_recommender() -> None:
    s = Settings.from_env({"FRESHREC_KNN_MAX_NEIGHBOURS": "40"})
    assert recommender_config(s).knn_max_neighbours == 40
    assert recommender_config(Settings()).knn_max_neighbours == RecommenderConfig().knn_max_neighbours
