"""Re-engagement (`scoring.repeat`): the exclusion policy per event type, the merge against a
plain sort, calibrated repeat probabilities, and the MovieLens protocol left unchanged."""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.harness import HarnessConfig, Item, replay
from scoring.recommender import Recommender, RecommenderConfig
from scoring.repeat import _RECENCY_S, _TYPES, FEATURES, REPEAT_SOURCE, RepeatConfig, RepeatModel, _Memory
from scoring.rerank import RerankConfig
from scoring.types import Interaction


def _items(n: int = 40) -> list[Item]:
    return [Item(f"i{j}", f"thing {j % 7}", (f"c{j % 4}",)) for j in range(n)]


def _funnel_events(n: int = 1500, seed: int = 0) -> list[Interaction]:
    """Views, each followed by a click on the same item half of the time (a purchase after
    a fifth of the clicks), by 20 users."""
    rng = np.random.default_rng(seed)
    out: list[Interaction] = []
    ts = 0.0
    while len(out) < n:
        user = f"u{int(rng.integers(0, 20))}"
        item = f"i{int(rng.integers(0, 40))}"
        ts += 10.0
        out.append(Interaction(user, item, ts, "view"))
        if rng.random() < 0.5:
            ts += 2.0
            out.append(Interaction(user, item, ts, "click"))
            if rng.random() < 0.2:
                ts += 2.0
                out.append(Interaction(user, item, ts, "purchase"))
    return out[:n]


def test_policy_excludes_bought_items_and_offers_viewed_ones() -> None:
    rec = Recommender(RecommenderConfig(dim=8, explore=False))
    res = replay(_funnel_events(), _items(), k=5, recommender=rec, harness=HarnessConfig(dim=8))
    # a click follows half the views: the repeat source serves those events
    assert res["breakdown"]["by_type"]["click"]["freshrec"] > 0.9
    assert res["breakdown"]["by_type"]["click"]["covisitation"] == 0.0
    bought: dict[str, set[str]] = {}
    for ev in _funnel_events():
        if ev.type == "purchase":
            bought.setdefault(ev.user_id, set()).add(ev.item_id)
    for user, mem in rec.repeat.users.items():
        items, _ = rec.repeat.candidates([user])[0]
        names = {rec.catalog.ids[i] for i in items.tolist()}
        assert not names & bought.get(user, set())
        assert len(names) == mem.excluded.count(False)


def test_repeat_probability_is_calibrated() -> None:
    m = RepeatModel(RepeatConfig(), exclude_types=("purchase",))
    rng = np.random.default_rng(1)
    ts = 0.0
    for _ in range(6000):
        item = int(rng.integers(0, 1000))
        ts += 30.0
        m.learn("u", item, "view", ts)
        if rng.random() < 0.3:
            ts += 3.0
            m.learn("u", item, "click", ts)
    m.learn("u", 1000, "view", ts + 30.0)
    items, p = m.candidates(["u"])[0]
    assert int(items[0]) == 1000
    # the latest item, only viewed, is clicked next 30% of the time
    assert abs(float(p[0]) - 0.3) < 0.08
    assert float(p[1:].max()) < 0.05  # older items are not re-viewed in this stream


def test_merge_equals_a_plain_sort_by_probability() -> None:
    m = RepeatModel(RepeatConfig(slot_prior=0.05, slot_prior_events=1.0), exclude_types=())
    m.slot_hits = np.array([0.5, 0.05, 0.2, 0.0, 0.1, 0.01])  # not monotone
    m.slot_events = 10.0
    rng = np.random.default_rng(2)
    for _ in range(50):
        main = rng.choice(100, size=6, replace=False).tolist()
        reps = np.arange(100, 100 + int(rng.integers(0, 5)), dtype=np.int64)
        p = rng.random(reps.shape[0]) * 0.1
        got = m.merge(main, reps, p, k=6)
        rates = m.slot_rates(6)
        # plain: every (prob, tie-break, item, is_repeat), best first; the main list's items
        # then take the main list's order
        scored = [(rates[j], 0, j, main[j], False) for j in range(6)]
        scored += [(float(p[j]), 1, j, int(reps[j]), True) for j in range(reps.shape[0])]
        top = sorted(scored, key=lambda s: (-s[0], s[1], s[2]))[:6]
        mains = iter(x for x in main)
        want = [(s[3], True) if s[4] else (next(mains), False) for s in top]
        assert got == want


def test_rated_items_stay_excluded_and_lists_are_unchanged() -> None:
    """MovieLens protocol: every event is a `rate`, so every seen item stays excluded and the
    lists equal those without re-engagement."""
    events = [Interaction(ev.user_id, ev.item_id, ev.ts, "rate", 4.0) for ev in _funnel_events(800, seed=3)]
    with_policy = Recommender(RecommenderConfig(dim=8, seed=4))
    without = Recommender(RecommenderConfig(dim=8, seed=4, rerank=RerankConfig(exclude_types=None)))
    a = replay(events, _items(), k=5, recommender=with_policy, harness=HarnessConfig(dim=8))
    b = replay(events, _items(), k=5, recommender=without, harness=HarnessConfig(dim=8))
    assert a["metrics"] == b["metrics"]
    assert a["breakdown"]["by_target"]["new"] == b["breakdown"]["by_target"]["new"]


def test_repeat_state_survives_a_checkpoint() -> None:
    rec = Recommender(RecommenderConfig(dim=8, explore=False))
    replay(_funnel_events(300), _items(), k=5, recommender=rec, harness=HarnessConfig(dim=8))
    back = Recommender.from_state(pickle.loads(pickle.dumps(rec.state())))
    assert np.array_equal(back.repeat.w, rec.repeat.w)
    user = next(iter(rec.repeat.users))
    got, want = back.repeat.candidates([user])[0], rec.repeat.candidates([user])[0]
    assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1])
    rec.forget(user)
    assert user not in rec.repeat.users
    assert REPEAT_SOURCE == "repeat"


def _naive_features(
    mem_ts: list[float], codes: list[int], counts: list[float], gap: float
) -> list[list[float]]:
    """One user's repeat features, item by item in plain Python (the module doc's definition)."""
    rows = []
    in_session = sum(1 for t in mem_ts if mem_ts[0] - t <= gap)
    for j, (t, code, count) in enumerate(zip(mem_ts, codes, counts, strict=True)):
        dt = max(mem_ts[0] - t, 0.0)
        row = [1.0, 1.0 if j == 0 else 0.0, 1.0 / (1 + j)] + [2.0 ** (-dt / h) for h in _RECENCY_S]
        row += [1.0 if code == c else 0.0 for c in range(len(_TYPES))]
        row += [1.0 if j == 0 and code == c else 0.0 for c in range(3)]
        row += [float(np.log1p(count)), 1.0 / max(in_session, 1)]
        rows.append(row)
    return rows


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 30), st.sampled_from([*_TYPES, "other"]), st.floats(0.0, 5000.0)),
            max_size=25,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_features_of_many_users_at_once_equal_each_users_own(
    users: list[list[tuple[int, str, float]]],
) -> None:
    """The features of several users' memories, computed together, are each user's own (a
    plain-Python reference), and the candidates split back to the right user."""
    model = RepeatModel(RepeatConfig(n_items=8), exclude_types=("purchase",))
    names = [f"u{n}" for n in range(len(users))]
    for name, events in zip(names, users, strict=True):
        ts = 0.0
        for item, kind, gap in events:
            ts += gap
            model._remember(model.users.setdefault(name, _Memory()), item, kind, ts)
    mems = [model.users.get(name) or _Memory() for name in names]
    got = model._features(mems)
    want = [
        row
        for mem in mems
        for row in _naive_features(mem.ts, mem.last_type, mem.count, model.config.session_gap_s)
    ]
    assert got.shape == (len(want), len(FEATURES))
    assert np.allclose(got, np.array(want).reshape(got.shape), rtol=1e-12, atol=0.0)
    for mem, (items, p) in zip(mems, model.candidates(names), strict=True):
        allowed = [i for i, ex in zip(mem.idx, mem.excluded, strict=True) if not ex]
        assert items.tolist() == allowed and p.shape == items.shape
