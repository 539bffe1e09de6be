"""ItemState against the naive reference, in any arrival order, and through serialization."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiles import naming
from profiles.events import EVENT_TYPES, Event
from profiles.item_state import ItemState, conversion_rate
from profiles.reference import compare_features, reference_item_features
from profiles.user_state import ProfileConfig

CFG = ProfileConfig(half_lives_s=(60.0, 3600.0, 86400.0))
BASE = 1_700_000_000.0

events_st = st.lists(
    st.tuples(
        st.sampled_from(EVENT_TYPES),
        st.integers(0, 3),  # item
        st.integers(0, 200_000),  # seconds after BASE
    ),
    min_size=1,
    max_size=40,
).map(lambda rows: [Event(f"e{k}", t, f"u{k % 3}", f"i{i}", BASE + dt) for k, (t, i, dt) in enumerate(rows)])


def run(events: list[Event], cfg: ProfileConfig = CFG) -> dict[str, ItemState]:
    states: dict[str, ItemState] = {}
    for e in events:
        s = states.get(e.item_id)
        if s is None:
            s = states[e.item_id] = ItemState(e.item_id, cfg)
        s.apply(e)
    return states


def test_hand_checked() -> None:
    cfg = ProfileConfig()
    s = ItemState("i1", cfg)
    for k, (t, ts) in enumerate([("view", 0.0), ("view", 3600.0), ("click", 3600.0), ("purchase", 0.0)]):
        s.apply(Event(f"e{k}", t, "u", "i1", ts))  # type: ignore[arg-type]
    f = s.to_features()
    assert f["view_1h"] == 1.5 and f["click_1h"] == 1.0 and f["purchase_1h"] == 0.5
    assert f["view_total"] == 2 and f["purchase_total"] == 1
    assert f["popularity_1h"] == 1.5 * 1 + 1.0 * 1 + 0.5 * 5
    assert f["updated_at"] == 3600.0
    p7, v7, c7 = f["purchase_7d"], f["view_7d"], f["click_7d"]
    assert f["conversion_rate"] == (p7 + 10 * 0.02) / (v7 + c7 + 10)
    assert list(f) == list(naming.item_feature_names(cfg))


def test_conversion_rate_prior_and_limit() -> None:
    assert conversion_rate(0.0, 0.0, 0.0, CFG) == 0.02
    assert conversion_rate(1e9, 1e10, 0.0, CFG) == pytest.approx(0.1, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(events=events_st, seed=st.integers(0, 2**32))
def test_any_order_matches_reference(events: list[Event], seed: int) -> None:
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    expected = reference_item_features(events, CFG)
    for order in (events, shuffled):
        states = run(order)
        assert set(states) == set(expected)
        for item_id, s in states.items():
            problems = compare_features(s.to_features(), expected[item_id])
            assert not problems, problems


@settings(max_examples=100, deadline=None)
@given(events=events_st, split=st.integers(0, 40))
def test_round_trip_and_resume(events: list[Event], split: int) -> None:
    whole = run(events)
    first = run(events[:split])
    restored = {i: ItemState.from_features(i, s.to_features(), CFG) for i, s in first.items()}
    for i, s in restored.items():
        assert s.to_features() == first[i].to_features()
    for e in events[split:]:
        restored.setdefault(e.item_id, ItemState(e.item_id, CFG)).apply(e)
    for i, s in whole.items():
        assert not compare_features(restored[i].to_features(), s.to_features())


@settings(max_examples=100, deadline=None)
@given(
    offsets=st.lists(st.floats(0.0, 1e9, allow_nan=False), min_size=1, max_size=30),
    types=st.lists(st.sampled_from(EVENT_TYPES), min_size=30, max_size=30),
)
def test_years_apart_with_one_second_half_life_stay_finite(offsets: list[float], types: list[str]) -> None:
    cfg = ProfileConfig(half_lives_s=(1.0, 60.0, 86400.0))
    events = [Event(f"e{k}", types[k], "u", "i", t) for k, t in enumerate(offsets)]  # type: ignore[arg-type]
    f = run(events, cfg)["i"].to_features()
    for name, value in f.items():
        assert math.isfinite(value), name
        if name.endswith(("_1s", "_1m", "_1d")):
            assert value == 0.0 or value >= 1e-300, name
    assert not compare_features(f, reference_item_features(events, cfg)["i"])
