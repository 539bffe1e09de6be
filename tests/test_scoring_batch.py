"""The batched scoring path (every user of a micro-batch at once) against the per-user
reference it replaced (`tests/scoring_reference.py`): the same candidates in the same order,
the same features and logits (to float rounding), the same lists, sources and propensities,
and `learn_batch` equal to learning event by event."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import reco

from scoring.candidates import CandidateConfig, CandidateSet, from_logged
from scoring.catalog import ItemCatalog, top_k_rows
from scoring.harness import HarnessConfig, Item, _World, replay
from scoring.knn import CoOccurrence
from scoring.models import ImplicitMF, PairwiseRanker
from scoring.recommender import Recommender, RecommenderConfig, _select_few, _select_many
from scoring.types import CandidateInputs, Interaction, UserContext
from tests import scoring_reference as ref

CATS = ("drama", "comedy", "horror", "action", "docs")


def _world(
    seed: int, n_items: int, n_users: int, n_events: int, explore: bool = True
) -> tuple[Recommender, _World, list[Interaction]]:
    """A recommender after a short random stream, and the harness's stand-ins for Redis
    (then every item gets a random vector, so no two cosines tie)."""
    rng = np.random.default_rng(seed)
    items = [
        Item(f"i{j}", f"title{j} word{j % 7}", (CATS[j % 5], CATS[int(rng.integers(0, 5))]))
        for j in range(n_items)
    ]
    kinds = ["view", "click", "add_to_cart", "purchase", "rate"]
    events = []
    for j in range(n_events):
        u = int(rng.integers(0, n_users))
        i = int(rng.integers(0, n_items)) if rng.random() < 0.5 else int(u * 3 + rng.integers(0, 6)) % n_items
        kind = kinds[int(rng.integers(0, 5))]
        value = float(rng.integers(1, 11)) / 2.0 if kind == "rate" else None
        events.append(Interaction(f"u{u}", f"i{i}", 100.0 * j, kind, value))
    hc = HarnessConfig(dim=16)
    rec = Recommender(RecommenderConfig(dim=16, explore=explore, seed=seed))
    replay(events[: n_events // 2], items, k=5, recommender=rec, harness=hc)
    world = _World(hc, {}, {})
    for it in items:
        v = rng.standard_normal(16)
        world.vectors[it.item_id] = v / np.linalg.norm(v)
        world.cats[it.item_id] = it.categories
        rec.add_item(it.item_id, v)
    for ev in events[: n_events // 2]:
        world.apply(ev)
    return rec, world, events[n_events // 2 :]


def _batch_inputs(
    world: _World, users: list[str], ts: float
) -> tuple[list[UserContext], list[CandidateInputs], dict, list]:
    pairs = [world.context(u, ts) for u in users]
    contexts = [c for c, _ in pairs]
    inputs = [i for _, i in pairs]
    covis: dict = {}
    for i in inputs:
        covis.update(i.covisitation)
    return contexts, inputs, covis, list(inputs[0].trending)


def _twin(rec: Recommender) -> Recommender:
    return Recommender.from_state(pickle.loads(pickle.dumps(rec.state())))


def _assert_same_set(batch: CandidateSet, want: ref.CandidateSet) -> None:
    assert batch.idx.tolist() == want.idx.tolist()
    assert batch.source.tolist() == want.source.tolist()
    assert np.array_equal(batch.source_mask, want.source_mask)
    assert np.array_equal(batch.covis, want.covis)
    assert np.array_equal(batch.trending, want.trending)
    assert np.array_equal(batch.knn, want.knn if want.knn is not None else np.zeros(len(want)))
    assert batch.features is not None and want.features is not None
    assert np.allclose(batch.features, want.features, rtol=1e-12, atol=1e-12)
    assert batch.scores is not None and want.scores is not None
    assert np.allclose(batch.scores, want.scores, rtol=1e-12, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), n_items=st.integers(20, 90), n_users=st.integers(2, 20))
def test_batched_candidates_and_lists_equal_the_per_user_reference(
    seed: int, n_items: int, n_users: int
) -> None:
    rec, world, _ = _world(seed, n_items, n_users, 8 * n_users + 40)
    users = [f"u{u}" for u in range(n_users)] + ["nobody"]
    contexts, inputs, covis, trending = _batch_inputs(world, users, 1e6)
    twin = _twin(rec)
    cs = rec.candidate_batch(contexts, covis, trending)
    assert cs.n_users == len(users)
    want = [ref.candidates(twin, c, i) for c, i in zip(contexts, inputs, strict=True)]
    for u, w in enumerate(want):
        _assert_same_set(cs.user(u), w)
    # lists: items, sources and the explored slot's propensity (the bandit draws in user order)
    got = rec.recommend_batch(contexts, cs, 5)
    for u, (c, i) in enumerate(zip(contexts, inputs, strict=True)):
        expect = ref.recommend(twin, c, i, 5, want[u])
        assert [(r.item_id, r.source, r.propensity) for r in got[u]] == [
            (r.item_id, r.source, r.propensity) for r in expect
        ]
        assert np.allclose([r.score for r in got[u]], [r.score for r in expect], rtol=1e-12)


@pytest.mark.parametrize("rerank", [{"mmr_lambda": 0.6}, {"max_per_category": 1}])
def test_mmr_and_category_cap_lists_equal_the_reference(rerank: dict) -> None:
    from dataclasses import replace

    rec, world, _ = _world(5, 60, 12, 160)
    rec.config = replace(rec.config, rerank=replace(rec.config.rerank, **rerank))
    users = [f"u{u}" for u in range(12)]
    contexts, inputs, covis, trending = _batch_inputs(world, users, 1e6)
    twin = _twin(rec)
    cs = rec.candidate_batch(contexts, covis, trending)
    got = rec.recommend_batch(contexts, cs, 6)
    for u, (c, i) in enumerate(zip(contexts, inputs, strict=True)):
        expect = ref.recommend(twin, c, i, 6)
        assert [(r.item_id, r.source, r.propensity) for r in got[u]] == [
            (r.item_id, r.source, r.propensity) for r in expect
        ]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), hard=st.sampled_from([0.0, 0.25]))
def test_learn_batch_equals_learning_event_by_event(seed: int, hard: float) -> None:
    from dataclasses import replace

    rec, world, later = _world(seed, 50, 10, 200)
    rec.config = replace(rec.config, ranker_hard_share=hard)
    batch = later[:60]
    users = list(dict.fromkeys(e.user_id for e in batch))
    contexts, inputs, covis, trending = _batch_inputs(world, users, batch[0].ts)
    row = {u: r for r, u in enumerate(users)}
    one = _twin(rec)
    # event by event, each with its user's candidates computed before the batch
    sets = [one.candidates(c, i) for c, i in zip(contexts, inputs, strict=True)]
    for n, ev in enumerate(batch):
        r = row[ev.user_id]
        assert one.learn(ev, contexts[r], inputs[r], sets[r], position=("events:0", n))
    # the whole batch at once
    cs = rec.candidate_batch(contexts, covis, trending, score=False)
    seen: list[int] = []
    done = rec.learn_batch(
        batch,
        contexts,
        cs,
        [row[e.user_id] for e in batch],
        [("events:0", n) for n in range(len(batch))],
        before_learn=seen.append,
    )
    assert done == len(batch) and seen == list(range(len(batch)))
    assert rec.offsets == one.offsets and rec.events_learned == one.events_learned
    assert np.allclose(rec.ranker.w, one.ranker.w, rtol=1e-10, atol=1e-12)
    assert np.allclose(rec.ranker._scale, one.ranker._scale, rtol=1e-12)
    assert rec.ranker.n == one.ranker.n
    assert rec.knn.pairs.nnz() == one.knn.pairs.nnz()
    assert np.array_equal(rec.catalog.pop_raw, one.catalog.pop_raw)
    assert rec.mf.users == one.mf.users
    n = len(one.mf.users)
    assert np.allclose(rec.mf.user_matrix[:n], one.mf.user_matrix[:n], rtol=1e-12, atol=1e-15)
    assert rec._rng.bit_generator.state == one._rng.bit_generator.state
    assert rec.explorer.rewards == one.explorer.rewards
    # and learning it again is a no-op
    assert rec.learn_batch(batch, contexts, cs, [row[e.user_id] for e in batch],
                           [("events:0", n) for n in range(len(batch))]) == 0  # fmt: skip


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_logged_candidates_rebuild_the_set_they_were_logged_from(seed: int) -> None:
    """What the stage keeps of a served candidate set (`CandidateSet.logged`) rebuilds it
    (values to float32), in any order of users, and the events learn the same from it."""
    rec, world, later = _world(seed, 50, 10, 200)
    batch = later[:40]
    users = list(dict.fromkeys(e.user_id for e in batch))
    contexts, _, covis, trending = _batch_inputs(world, users, batch[0].ts)
    cs = rec.candidate_batch(contexts, covis, trending, score=False)
    logs = cs.logged()
    # each user's log owns its arrays (a kept user must not pin the batch's)
    assert all(g.idx.base is None and g.values.base is None and g.seen.base is None for g in logs)
    back = from_logged(logs)
    for name in ("idx", "source", "source_mask", "offsets", "row_user", "seen"):
        assert np.array_equal(getattr(back, name), getattr(cs, name)), name
    for name in ("knn", "covis", "trending"):
        assert np.allclose(getattr(back, name), getattr(cs, name), rtol=1e-6, atol=0.0), name
    swapped = from_logged(logs[::-1])
    assert np.array_equal(swapped.user(0).idx, cs.user(len(users) - 1).idx)
    # the ranker's weights move the same from the logged set as from the set itself (to
    # float32 rounding of the kNN / co-visitation / trending features)
    twin = _twin(rec)
    rows = [users.index(e.user_id) for e in batch]
    pos = [("events:0", n) for n in range(len(batch))]
    learned = rec.learn_batch(batch, contexts, cs, rows, pos)
    assert learned == twin.learn_batch(batch, contexts, back, rows, pos) == len(batch)
    assert np.allclose(rec.ranker.w, twin.ranker.w, rtol=1e-4, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_items=st.integers(1, 60), k=st.integers(1, 12))
def test_knn_top_many_equals_dense_scores(seed: int, n_items: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    co = CoOccurrence(window=6, n_recent=5)
    for _ in range(4 * n_items):
        b = int(rng.integers(0, n_items))
        co.add(b, rng.choice(n_items, size=int(rng.integers(0, min(6, n_items) + 1)), replace=False))
    hists = [
        rng.choice(n_items, size=int(rng.integers(0, min(8, n_items) + 1)), replace=False) for _ in range(5)
    ]
    excl = [rng.choice(n_items, size=int(rng.integers(0, n_items + 1)), replace=False) for _ in range(5)]
    got = co.top_many(hists, excl, n_items, k)
    for h, ex, (idx, val) in zip(hists, excl, got, strict=True):
        dense = co.scores(h, n_items)
        dense[ex] = 0.0
        want = sorted((-dense[i], i) for i in range(n_items) if dense[i] > 0.0)[:k]
        assert idx.tolist() == [i for _, i in want]
        assert val.tolist() == [-s for s, _ in want]  # bit for bit: same sums in the same order


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 6), n=st.integers(1, 3000), k=st.integers(1, 80))
def test_top_k_rows_equals_a_full_sort(seed: int, rows: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 50, size=(rows, n)).astype(np.float32)  # many ties
    for r, got in enumerate(top_k_rows(scores, k)):
        want = sorted(range(n), key=lambda c: (-scores[r, c], c))[:k]
        assert got.tolist() == want


def test_nearest_many_equals_nearest_without_ties() -> None:
    rng = np.random.default_rng(3)
    cat = ItemCatalog(dim=8, pop_half_life=3600.0)
    for j in range(500):
        cat.add_item(f"i{j}", rng.standard_normal(8))
    queries = [rng.standard_normal(8) for _ in range(20)] + [None, np.zeros(8)]
    got = cat.nearest_many(queries, 25)
    for q, g in zip(queries, got, strict=True):
        want = cat.nearest(q, 25)[0] if q is not None else np.zeros(0, np.int64)
        assert g.tolist() == want.tolist()


def test_mf_equals_rivers_funk_mf_learning_one_by_one() -> None:
    """The numpy ImplicitMF against `river.reco.FunkMF.learn_one` with the logistic loss:
    the same initial factors (River's initializer, in River's order) and the same steps."""
    from river import optim

    fast = ImplicitMF(8, lr=0.05, l2=0.001, seed=4)
    river = reco.FunkMF(
        n_factors=8,
        optimizer=optim.SGD(0.05),
        loss=optim.losses.Log(),
        l2=0.001,
        initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=4),
        seed=4,
    )
    rng = np.random.default_rng(0)
    for _ in range(400):
        u, i, y = f"u{rng.integers(0, 20)}", int(rng.integers(0, 30)), int(rng.integers(0, 2))
        w = float(rng.choice([1.0, 3.0, 5.0]))
        if y:
            fast.learn(u, i, w, [])
            river.loss.weight_pos = w
            river.learn_one(u, f"i{i}", 1)
        else:  # a negative, through an event whose positive both learn too
            j = (i + 1) % 30
            fast.learn(u, j, w, [i])
            river.loss.weight_pos = w
            river.learn_one(u, f"i{j}", 1)
            river.learn_one(u, f"i{i}", 0)
    assert list(fast.users) == list(river.u_latents)
    for user, r in fast.users.items():
        assert np.allclose(fast.user_matrix[r], river.u_latents[user], rtol=1e-12, atol=1e-15)
    for item, v in river.i_latents.items():
        assert np.allclose(fast.item_matrix[int(item[1:])], v, rtol=1e-12, atol=1e-15)
    assert int(fast.item_known.sum()) == len(river.i_latents)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(1, 8), n_items=st.integers(1, 12))
def test_mf_learn_many_equals_learning_in_order(seed: int, n_users: int, n_items: int) -> None:
    rng = np.random.default_rng(seed)
    waves, in_order = ImplicitMF(4, seed=seed), ImplicitMF(4, seed=seed)
    users: list[str] = []
    items: list[int] = []
    weights: list[float] = []
    negs: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 60))):
        item = int(rng.integers(0, n_items))
        users.append(f"u{rng.integers(0, n_users)}")
        items.append(item)
        weights.append(float(rng.choice([1.0, 5.0])))
        negs.append(rng.integers(0, n_items, size=3))
    neg_m = np.array(negs, np.int64)
    valid = neg_m != np.array(items)[:, None]
    valid[:, 2] &= rng.random(len(items)) < 0.5  # some events with fewer negatives
    for user, item, w, neg, ok in zip(users, items, weights, negs, valid, strict=True):
        in_order.learn(user, item, w, neg[ok].tolist())
    waves.learn_many(users, np.array(items), np.array(weights), neg_m, valid)
    assert waves.users == in_order.users
    n = len(waves.users)
    assert np.allclose(waves.user_matrix[:n], in_order.user_matrix[:n], rtol=1e-12, atol=1e-15)
    assert np.array_equal(waves.item_known, in_order.item_known)
    assert np.allclose(waves.item_matrix, in_order.item_matrix, rtol=1e-12, atol=1e-15)
    assert waves.steps == in_order.steps


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_steps=st.integers(1, 40), chunk=st.integers(1, 9))
def test_ranker_learn_many_in_chunks_equals_steps_one_by_one(seed: int, n_steps: int, chunk: int) -> None:
    """`PairwiseRanker.learn_many` computes the feature scales `STEP_CHUNK` steps at a time:
    any chunk gives the steps of `learn` one by one (steps without negatives skipped)."""
    rng = np.random.default_rng(seed)
    x_pos = rng.normal(size=(n_steps, 3)) * [1.0, 10.0, 0.1]
    x_neg = rng.normal(size=(n_steps, 4, 3)) * [1.0, 10.0, 0.1]
    n_neg = rng.integers(0, 5, size=n_steps)
    weights = rng.choice([1.0, 0.5], size=n_steps)
    one_by_one, chunked = PairwiseRanker("abc"), PairwiseRanker("abc")
    chunked.STEP_CHUNK = chunk
    for s in range(n_steps):
        one_by_one.learn(x_pos[s], x_neg[s, : n_neg[s]], float(weights[s]))
    chunked.learn_many(x_pos, x_neg, n_neg, weights)
    assert chunked.n == one_by_one.n
    assert np.allclose(chunked.w, one_by_one.w, rtol=1e-9, atol=1e-12)
    assert np.allclose(chunked._scale, one_by_one._scale, rtol=1e-9)


def test_an_empty_batch() -> None:
    rec = Recommender(RecommenderConfig(dim=4))
    cs = rec.candidate_batch([UserContext("u", 0.0)], {}, [])
    assert len(cs) == 0 and cs.n_users == 1
    assert rec.recommend_batch([UserContext("u", 0.0)], cs, 5) == [[]]
    assert rec.candidate_batch([], {}, []).n_users == 0
    assert CandidateConfig().n_knn == 200


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_negative_selection_step_by_step_equals_all_steps_at_once(data: st.DataObject) -> None:
    """`_Steps.draw`'s two selection paths (plain Python for a few steps, numpy for many)
    pick the same rows from the same draws, each step's picks distinct and inside its pool."""
    steps = data.draw(st.integers(1, 12))
    m = data.draw(st.integers(1, 20))
    pool = np.array(data.draw(st.lists(st.integers(0, 40), min_size=steps, max_size=steps)), np.int64)
    r = np.minimum(np.array(data.draw(st.lists(st.integers(0, m), min_size=steps, max_size=steps))), pool)
    u = np.array(
        data.draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=steps * m, max_size=steps * m))
    ).reshape(steps, m)
    big = np.iinfo(np.int64).max // 2
    few = _select_few(u, pool, r, np.full((steps, m), big, np.int64))
    many = _select_many(u, pool, r, np.full((steps, m), big, np.int64))
    assert few.tolist() == many.tolist()
    for s in range(steps):
        picks = few[s, : r[s]].tolist()
        assert len(set(picks)) == len(picks) and all(0 <= p < pool[s] for p in picks)
        assert (few[s, r[s] :] == big).all()
