"""UserState against the naive reference, in any arrival order, and through serialization."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import naming
from profiles.embeddings import item_vector
from profiles.events import EVENT_TYPES, Event, Item
from profiles.reference import compare_features, reference_user_features
from profiles.user_state import ProfileConfig, UserState

CFG = ProfileConfig(
    half_lives_s=(60.0, 3600.0, 86400.0),
    session_gap_s=1800.0,
    session_last_n=4,
    session_embedding_half_life_s=600.0,
    embedding_dim=8,
    category_top_n=4,  # tracks at most 8 categories, keeps 6 past that
    covis_window=3,
    history_n=5,  # of 15 items: the history drops and re-admits items
)
BASE = 1_700_000_000.0


def make_catalog(n_categories: int, seed: int = 3) -> dict[str, Item]:
    rng = random.Random(seed)
    cats = [f"c{i}" for i in range(n_categories)]
    catalog = {
        f"i{k}": Item(f"i{k}", title=f"title {k % 4}", categories=tuple(rng.sample(cats, rng.randint(1, 3))))
        for k in range(12)
    }
    catalog["i12"] = Item("i12")  # known, without content
    return catalog  # i13.. are unknown items


NARROW = make_catalog(8)  # never more categories than tracked: nothing is dropped
WIDE = make_catalog(20)  # the 2N / 1.5N bound is exercised


def vector_of(item_id: str, catalog: dict[str, Item] = NARROW) -> np.ndarray[Any, Any]:
    return item_vector(catalog.get(item_id), item_id, CFG.embedding_dim).astype(np.float64)


def categories_of(item_id: str, catalog: dict[str, Item]) -> Sequence[str]:
    item = catalog.get(item_id)
    return item.categories if item is not None else ()


def run(events: Sequence[Event], catalog: dict[str, Item], cfg: ProfileConfig = CFG) -> dict[str, UserState]:
    states: dict[str, UserState] = {}
    for e in events:
        s = states.get(e.user_id)
        if s is None:
            s = states[e.user_id] = UserState(e.user_id, cfg)
        s.apply(e, categories_of(e.item_id, catalog), vector_of(e.item_id, catalog))
    return states


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 30, max_offset: int = 20_000, users: int = 2) -> list[Event]:
    n = draw(st.integers(1, max_size))
    out = []
    for k in range(n):
        out.append(
            Event(
                event_id=f"e{k}",
                type=draw(st.sampled_from(EVENT_TYPES)),
                user_id=f"u{draw(st.integers(0, users - 1))}",
                item_id=f"i{draw(st.integers(0, 14))}",
                ts=BASE + draw(st.integers(0, max_offset)),
                session_id=draw(st.sampled_from([None, None, None, None, "s1", "s2"])),
            )
        )
    return out


def assert_close(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    problems = compare_features(actual, expected)
    assert not problems, "\n".join(problems)


# ---- hand-checkable --------------------------------------------------------------------


def test_hand_checked_counts_and_categories() -> None:
    cfg = ProfileConfig()
    u = UserState("u1", cfg)
    u.apply(Event("e1", "click", "u1", "i1", 0.0), ("Crime",), None)
    u.apply(Event("e2", "click", "u1", "i2", 3600.0), ("Crime", "Drama"), None)
    u.apply(Event("e3", "purchase", "u1", "i1", 3600.0), ("Crime",), None)
    f = u.to_features()
    assert f["click_1h"] == 1.5  # 1 + 2^-1
    assert f["purchase_1h"] == 1.0
    assert f["click_total"] == 2 and f["purchase_total"] == 1 and f["view_total"] == 0
    assert f["last_click_ts"] == 3600.0 and f["last_view_ts"] == 0.0
    assert f["distinct_items"] == 2
    assert f["updated_at"] == 3600.0
    assert f["top_categories"] == ["Crime", "Drama"]
    crime = 2 ** (-3600 / 86400) + 1.0 + 5.0
    assert f["top_category_scores"] == pytest.approx([crime, 1.0], rel=1e-12)
    assert list(f) == list(naming.user_feature_names(cfg))


def test_feature_kinds_match_values() -> None:
    events = [Event(f"e{k}", "view", "u1", f"i{k}", BASE + 60 * k) for k in range(5)]
    f = run(events, NARROW)["u1"].to_features()
    kinds = naming.user_feature_kinds(CFG)
    assert list(f) == list(kinds)
    for name, kind in kinds.items():
        value = f[name]
        if kind == "float":
            assert isinstance(value, float), name
        elif kind == "int":
            assert isinstance(value, int), name
        elif kind == "str":
            assert isinstance(value, str), name
        else:
            assert isinstance(value, list), name
            inner = float if kind == "list[float]" else str
            assert all(isinstance(x, inner) for x in value), name
    assert len(f["session_embedding"]) == CFG.embedding_dim


def test_empty_state_features_are_zeros() -> None:
    f = UserState("u1", CFG).to_features()
    assert f["updated_at"] == 0.0 and f["click_total"] == 0 and f["session_id"] == ""
    assert UserState.from_features(f, set(), CFG, "u1").to_features() == f


def test_config_is_validated_and_hashable() -> None:
    assert hash(ProfileConfig()) == hash(ProfileConfig())
    with pytest.raises(ValueError, match="distinct"):
        ProfileConfig(half_lives_s=(3600.0, 3600))
    with pytest.raises(ValueError, match="type_weights"):
        ProfileConfig(type_weights={"view": 1.0})
    with pytest.raises(ValueError, match="covis_window"):
        ProfileConfig(covis_window=11)
    with pytest.raises(ValueError, match="history_n"):
        ProfileConfig(history_n=0)
    assert ProfileConfig(history_n=3) != ProfileConfig()
    assert hash(ProfileConfig(history_n=3)) != hash(ProfileConfig())


def test_history_spans_sessions_and_is_decided_by_event_time() -> None:
    cfg = dataclasses.replace(CFG, history_n=3)
    day = 86400.0
    events = [
        Event("e1", "view", "u1", "a", BASE),
        Event("e2", "view", "u1", "b", BASE + 60),
        Event("e3", "view", "u1", "c", BASE + day),  # a new session: the history goes on
        Event("e4", "view", "u1", "a", BASE + day + 60),  # seen again: to the front
        Event("e5", "view", "u1", "d", BASE + day + 120),  # b drops out
        Event("e6", "view", "u1", "b", BASE + 30),  # late and old: does not enter
        Event("e7", "view", "u1", "e", BASE + day + 90),  # late but among the 3 latest: enters
    ]
    s = run(events, NARROW, cfg)["u1"]
    f = s.to_features()
    assert f["history_items"] == ["d", "e", "a"]
    assert f["history_item_ts"] == [BASE + day + 120, BASE + day + 90, BASE + day + 60]
    assert f["session_items"] == ["d", "e", "a", "c"]
    assert s.history_items(2) == ("d", "e")
    for order in (events[::-1], sorted(events, key=lambda e: e.ts)):
        g = run(order, NARROW, cfg)["u1"].to_features()
        assert (g["history_items"], g["history_item_ts"]) == (f["history_items"], f["history_item_ts"])
    expected = reference_user_features(events, cfg, NARROW, lambda i: vector_of(i, NARROW))["u1"]
    assert (expected["history_items"], expected["history_item_ts"]) == (
        f["history_items"],
        f["history_item_ts"],
    )
    # ties in event time: the larger item id is the more recent (as in sessions)
    tied = [Event(f"t{k}", "view", "u1", item, BASE) for k, item in enumerate("xzy")]
    assert run(tied, NARROW, cfg)["u1"].to_features()["history_items"] == ["z", "y", "x"]


def test_history_restores_from_older_or_larger_profiles() -> None:
    events = [Event(f"e{k}", "view", "u1", f"i{k}", BASE + 60 * k) for k in range(5)]
    f = run(events, NARROW)["u1"].to_features()
    old = {k: v for k, v in f.items() if not k.startswith("history_")}  # written before the history
    assert UserState.from_features(old, set(), CFG, "u1").to_features()["history_items"] == []
    small = dataclasses.replace(CFG, history_n=2)  # a smaller history_n keeps the latest
    assert UserState.from_features(f, set(), small, "u1").history_items() == ("i4", "i3")


def test_recommendation_context_passes_history() -> None:
    from profiles.recommend import RecommendationStage, StageConfig

    day = 86400.0
    events = [
        Event("e1", "view", "u1", "i1", BASE),
        Event("e2", "view", "u1", "i2", BASE + day),
        Event("e3", "view", "u1", "i3", BASE + day + 60),
    ]
    s = run(events, NARROW)["u1"]
    ctx = RecommendationStage(None, None).context(s)  # type: ignore[arg-type]  # neither is read
    assert ctx.history == ("i3", "i2", "i1")  # across sessions
    assert ctx.recent_items == ("i3", "i2", "i1")  # the user's last items, not only the session's
    short = RecommendationStage(None, None, StageConfig(recent_n=2)).context(s)  # type: ignore[arg-type]
    assert short.recent_items == ("i3", "i2") and short.history == ("i3", "i2", "i1")


# ---- against the naive reference ------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(events=event_lists())
def test_matches_reference_in_any_arrival_order(events: list[Event]) -> None:
    states = run(events, NARROW)
    expected = reference_user_features(events, CFG, NARROW, lambda i: vector_of(i, NARROW))
    assert set(states) == set(expected)
    for user_id, s in states.items():
        assert_close(s.to_features(), expected[user_id])


@settings(max_examples=100, deadline=None)
@given(events=event_lists(max_size=40, users=1))
def test_matches_reference_with_dropped_categories(events: list[Event]) -> None:
    for order in (events, sorted(events, key=lambda e: e.ts)):
        states = run(order, WIDE)
        expected = reference_user_features(order, CFG, WIDE, lambda i: vector_of(i, WIDE))
        for user_id, s in states.items():
            assert len(s.to_features()["top_categories"]) <= CFG.category_top_n
            assert_close(s.to_features(), expected[user_id])


ORDER_FREE = [
    *(naming.count_name(t, h) for t in EVENT_TYPES for h in CFG.half_lives_s),
    *(naming.last_ts_name(t) for t in EVENT_TYPES),
    *(naming.total_name(t) for t in EVENT_TYPES),
    "distinct_items",
    "updated_at",
    "top_categories",
    "top_category_scores",
    "next_categories",
    "next_category_scores",
    "history_items",
    "history_item_ts",
]


@settings(max_examples=150, deadline=None)
@given(events=event_lists(), seed=st.integers(0, 2**32))
def test_permutations_give_the_same_counters(events: list[Event], seed: int) -> None:
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    a, b = run(events, NARROW), run(shuffled, NARROW)
    for user_id in a:
        fa, fb = a[user_id].to_features(), b[user_id].to_features()
        assert_close({k: fa[k] for k in ORDER_FREE}, {k: fb[k] for k in ORDER_FREE})
        assert a[user_id].seen_items == b[user_id].seen_items


# ---- serialization --------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(events=event_lists(users=1), split=st.integers(0, 30))
def test_round_trip_and_resume(events: list[Event], split: int) -> None:
    split = min(split, len(events))
    whole = run(events, WIDE)["u0"] if any(e.user_id == "u0" for e in events) else None
    first = run(events[:split], WIDE).get("u0", UserState("u0", CFG))
    f = first.to_features()
    restored = UserState.from_features(f, first.seen_items, CFG, "u0")
    assert restored.to_features() == f  # exactly
    assert UserState.from_features(f, first.seen_items, CFG).to_features() == f  # user id inferred
    for e in events[split:]:
        restored.apply(e, categories_of(e.item_id, WIDE), vector_of(e.item_id, WIDE))
    if whole is not None:
        assert_close(restored.to_features(), whole.to_features())


# ---- numerical safety -----------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    offsets=st.lists(st.floats(0.0, 1e9, allow_nan=False), min_size=1, max_size=25),
    seed=st.integers(0, 2**32),
)
def test_years_apart_with_one_second_half_life_stay_finite(offsets: list[float], seed: int) -> None:
    cfg = ProfileConfig(half_lives_s=(1.0, 60.0, 3600.0), session_embedding_half_life_s=1.0, embedding_dim=8)
    rng = random.Random(seed)
    events = [
        Event(f"e{k}", rng.choice(EVENT_TYPES), "u1", f"i{rng.randrange(6)}", t, rng.choice([None, "s"]))
        for k, t in enumerate(offsets)
    ]
    s = run(events, NARROW, cfg)["u1"]
    f = s.to_features()
    decayed = {naming.count_name(t, h) for t in EVENT_TYPES for h in cfg.half_lives_s}
    decayed |= {"top_category_scores", "next_category_scores", "session_embedding_weight"}
    for name, value in f.items():
        for x in value if isinstance(value, list) else [value]:
            if isinstance(x, float):
                assert math.isfinite(x), name
                if name in decayed:  # flushed to zero, never subnormal
                    assert x == 0.0 or x >= 1e-300, name
    expected = reference_user_features(events, cfg, NARROW, lambda i: vector_of(i, NARROW))["u1"]
    assert_close(f, expected)


# ---- micro-benchmark (print only; run: .venv/bin/python tests/test_user_state.py) ------


def benchmark(n_events: int = 200_000, n_users: int = 2_000, n_items: int = 20_000) -> None:
    """Events/s of `UserState.apply` + `ItemState.apply` (CPU time, best of 3)."""
    import time

    from profiles.item_state import ItemState

    cfg = ProfileConfig()
    rng = random.Random(7)
    cats = [f"c{i}" for i in range(60)]
    item_cats = {f"i{i}": tuple(rng.sample(cats, rng.randint(1, 3))) for i in range(n_items)}
    vecs = {f"i{i}": item_vector(None, f"i{i}", cfg.embedding_dim).astype(np.float64) for i in range(n_items)}
    types = rng.choices(EVENT_TYPES, weights=[60, 25, 8, 4, 3], k=n_events)
    events, t = [], BASE
    for k in range(n_events):
        t += rng.expovariate(2.0)
        late = rng.expovariate(1 / 30) if rng.random() < 0.05 else 0.0  # 5% late by ~30 s
        user, item = f"u{rng.randrange(n_users)}", f"i{rng.randrange(n_items)}"
        events.append(Event(f"e{k}", types[k], user, item, t - late))
    for label, with_partners in (("apply", False), ("apply + covisit_partners", True)):
        best = math.inf
        for _ in range(3):
            users = {f"u{i}": UserState(f"u{i}", cfg) for i in range(n_users)}
            items = {f"i{i}": ItemState(f"i{i}", cfg) for i in range(n_items)}
            work = [
                (users[e.user_id], items[e.item_id], e, item_cats[e.item_id], vecs[e.item_id]) for e in events
            ]
            start = time.process_time()
            for u, it, e, c, v in work:
                if with_partners:
                    u.covisit_partners(e)
                u.apply(e, c, v)
                it.apply(e)
            best = min(best, time.process_time() - start)
        print(
            f"UserState.apply + ItemState.apply ({label}): {n_events / best:,.0f} events/s "
            f"({best / n_events * 1e6:.2f} µs/event, {n_events:,} events, {n_users:,} users)"
        )


if __name__ == "__main__":
    benchmark()
