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

from scoring.bounded_rows import BoundedRows, class_widths
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


def naive_classed_rows(
    batches: list[list[tuple[int, int, float]]], cap: int, first_width: int, budget: int
) -> tuple[dict[int, dict[int, float]], int]:
    """Size classes and the budget by brute force: after each batch, each touched row (in
    ascending order) that outgrew its block moves to the smallest class it fits (the top
    at most) when that class has a free block, is the smallest, or the budget has room;
    else it stays; a row over its block keeps the largest half of the block's width.
    Returns the rows and the slots charged to the budget."""
    widths = class_widths(cap, first_width)
    rows: dict[int, dict[int, float]] = {}
    cls: dict[int, int] = {}
    used = [0] * len(widths)
    free = [0] * len(widths)

    def charged() -> int:
        return sum(u * w for u, w in zip(used[1:], widths[1:], strict=True))

    for batch in batches:
        for a, b, w in batch:
            row = rows.setdefault(a, {})
            row[b] = row.get(b, 0.0) + w
        for a in sorted({t[0] for t in batch}):
            row, k = rows[a], cls.get(a, -1)
            if len(row) <= (widths[k] if k >= 0 else 0):
                continue
            target = next((t for t, wd in enumerate(widths) if wd >= len(row)), len(widths) - 1)
            room = free[target] > 0 or target == 0 or budget == 0 or charged() + widths[target] <= budget
            if target > k and not room:
                target = max(k, 0)
            if len(row) > widths[target]:
                best = sorted(row, key=lambda c: (-row[c], c))[: (widths[target] + 1) // 2]
                rows[a] = {c: row[c] for c in best}
            if target != k:
                if free[target]:
                    free[target] -= 1
                else:
                    used[target] += 1
                if k >= 0:
                    free[k] += 1
                cls[a] = target
    return rows, charged()


@settings(max_examples=400, deadline=None)
@given(
    adds=adds_strategy,
    cap=st.integers(1, 12),
    first_width=st.integers(1, 4),
    budget=st.one_of(st.just(0), st.integers(1, 60)),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_size_classes_and_the_budget_equal_the_naive_rule(
    adds: list[tuple[int, int, float]], cap: int, first_width: int, budget: int, cuts: list[int]
) -> None:
    """Rows moving through size classes under a slot budget: the same rows and the same
    slots charged as the brute-force rule, batch by batch; without a budget, the same rows
    as the single rule (2 × cap keeps cap); a checkpoint gives them back."""
    bounds = [0, *sorted(c for c in cuts if c < len(adds)), len(adds)]
    batches = [adds[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    r = BoundedRows(cap=cap, budget_slots=budget, first_width=first_width)
    for batch in batches:
        r.add_many([t[0] for t in batch], [t[1] for t in batch], [t[2] for t in batch])
    want, charged = naive_classed_rows(batches, cap, first_width, budget)
    want = {a: row for a, row in want.items() if row}
    got = _as_dicts(r, 4)
    assert got.keys() == want.keys()
    for a, row in want.items():
        assert got[a].keys() == row.keys()
        assert np.allclose([got[a][c] for c in row], list(row.values()))
    assert r.slots_charged() == charged and (budget == 0 or charged <= budget)
    if budget == 0:
        assert got.keys() == {a for a, row in naive_capped_rows(batches, cap).items() if row}
    back = pickle.loads(pickle.dumps(r))
    assert _as_dicts(back, 4) == got and back.slots_charged() == charged
    for rows in (back, r):  # the restored pools keep working as the originals do
        rows.add_many([0, 1, 1], [31, 32, 3], [1.0, 1.0, 0.5])
    assert _as_dicts(back, 4) == _as_dicts(r, 4) and back.slots_charged() == r.slots_charged()


def test_a_single_pool_checkpoint_is_read_into_the_size_classes() -> None:
    """The layout before the size classes (one pool of 2·cap − 1 slot blocks) is read back."""
    r = BoundedRows(cap=20)
    r.add_many([0] * 30 + [2] * 3, [*range(30), 5, 6, 7], [1.0] * 33)
    (c0, v0), (c2, v2) = r.row(0), r.row(2)
    old = {"cap": 20, "block": np.array([0, -1, 1]), "len": np.array([30, 3], np.int32)}
    old |= {"idx": np.concatenate([c0, c2]), "val": np.concatenate([v0, v2])}
    back = BoundedRows.__new__(BoundedRows)
    back.__setstate__(old)
    assert _as_dicts(back, 3) == _as_dicts(r, 3) and back.widths == r.widths


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


def test_a_checkpoint_config_from_before_the_budget_reads_with_its_default() -> None:
    """A config pickled before `knn_memory_mb` existed unpickles without it (dataclass slots
    restore fields by position); `from_state` completes it, and its rows get the budget."""
    rec = Recommender(RecommenderConfig(dim=4, knn_max_neighbours=7, knn_memory_mb=1.0))
    rec.knn.add(1, np.array([0, 2]))
    old_config = RecommenderConfig.__new__(RecommenderConfig)
    old_config.__setstate__(rec.config.__getstate__()[:-1])  # type: ignore[attr-defined]
    assert not hasattr(old_config, "knn_memory_mb")
    state = pickle.loads(pickle.dumps(rec.state()))
    state["config"] = old_config
    state["knn"].pairs.budget_slots = 0  # rows pickled before the budget
    back = Recommender.from_state(state)
    assert back.config.dim == 4 and back.config.knn_memory_mb == RecommenderConfig().knn_memory_mb
    assert back.knn.pairs.budget_slots == back.config.knn_budget_slots > 0
    assert back.knn.pair(0, 1) == rec.knn.pair(0, 1) > 0


def test_the_setting_reaches_the_recommender() -> None:
    s = Settings.from_env({"FRESHREC_KNN_MAX_NEIGHBOURS": "40", "FRESHREC_KNN_MEMORY_MB": "2.5"})
    assert recommender_config(s).knn_max_neighbours == 40
    assert Recommender(recommender_config(s)).knn.pairs.budget_slots == 2_500_000 // 12
    assert recommender_config(Settings()).knn_max_neighbours == RecommenderConfig().knn_max_neighbours
